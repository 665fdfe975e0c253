//! Protocol-level behaviour of the NBD server, driven by a raw client that
//! builds every message by hand: structured and simple replies, sparse
//! reads, block status, pipelining, multi-conn flush, read-only exports,
//! the legacy export-name path, and export removal.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;

use common::{RawClient, TestServer};
use pmvisor_blk::{BlockDevice, MemDevice};

const READ: u16 = 0;
const WRITE: u16 = 1;
const DISC: u16 = 2;
const FLUSH: u16 = 3;
const TRIM: u16 = 4;
const WRITE_ZEROES: u16 = 6;
const BLOCK_STATUS: u16 = 7;
const FUA: u16 = 1;
const NO_HOLE: u16 = 2;
const DF: u16 = 4;
const REQ_ONE: u16 = 8;
const DONE: u16 = 1;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().unwrap())
}

fn be64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().unwrap())
}

/// Read a structured reply to `handle` and reassemble a READ of `len`
/// bytes at `offset`; returns the data and the chunk kinds seen.
fn structured_read(
    client: &mut RawClient,
    handle: u64,
    offset: u64,
    len: usize,
) -> (Vec<u8>, Vec<u16>) {
    let mut data = vec![0xeeu8; len];
    let mut kinds = Vec::new();
    loop {
        let chunk = client.any_reply();
        assert_eq!(chunk.handle, handle);
        kinds.push(chunk.kind);
        match chunk.kind {
            1 => {
                let at = (be64(&chunk.payload) - offset) as usize;
                data[at..at + chunk.payload.len() - 8].copy_from_slice(&chunk.payload[8..]);
            }
            2 => {
                let at = (be64(&chunk.payload) - offset) as usize;
                let hole = be32(&chunk.payload[8..]) as usize;
                data[at..at + hole].fill(0);
            }
            0 => {}
            other => panic!("unexpected chunk type {other:#x}: {:?}", chunk.payload),
        }
        if chunk.flags & DONE != 0 {
            return (data, kinds);
        }
    }
}

/// An error reply's errno, whether structured or simple.
fn error_of(client: &mut RawClient, handle: u64) -> u32 {
    let chunk = client.any_reply();
    assert_eq!(chunk.handle, handle);
    assert_eq!(chunk.flags & DONE, DONE);
    match chunk.kind {
        u16::MAX => be32(&chunk.payload),
        0x8001 => be32(&chunk.payload),
        other => panic!("expected an error reply, got chunk type {other:#x}"),
    }
}

#[test]
fn structured_reads_send_zero_blocks_as_hole_chunks() {
    let server = TestServer::unix("disk", 1 << 20);
    server.device.write_at(4096, &[7u8; 4096], false).unwrap();
    let mut client = RawClient::open(&server.socket(), "disk", true, false);
    client.request(0, READ, 1, 0, 16384, &[]);
    let (data, kinds) = structured_read(&mut client, 1, 0, 16384);
    assert_eq!(kinds, [2, 1, 2], "hole, data, hole");
    assert_eq!(data, server.device_bytes(0, 16384));
    // With DF the whole read is one data chunk.
    client.request(DF, READ, 2, 0, 16384, &[]);
    let (data, kinds) = structured_read(&mut client, 2, 0, 16384);
    assert_eq!(kinds, [1]);
    assert_eq!(data, server.device_bytes(0, 16384));
}

/// Reads over 128 KiB are served in place, from the device's own memory:
/// the chunks and bytes must be what a buffered read sends.
#[test]
fn large_reads_served_in_place_send_holes_and_data_as_buffered_reads_do() {
    let server = TestServer::unix("disk", 8 << 20);
    let pattern: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + 1).collect();
    server.device.write_at(1 << 20, &pattern, false).unwrap();
    server.device.write_at(3 << 20, &[9u8; 4096], false).unwrap();
    let mut client = RawClient::open(&server.socket(), "disk", true, false);
    // Hole, data (unaligned end), hole, one data block, hole.
    let (offset, len) = ((1 << 20) - 65536, 3 << 20);
    client.request(0, READ, 1, offset, len as u32, &[]);
    let (data, kinds) = structured_read(&mut client, 1, offset, len);
    assert_eq!(kinds, [2, 1, 2, 1, 2]);
    assert_eq!(data, server.device_bytes(offset, len));
    client.request(DF, READ, 2, offset, len as u32, &[]);
    let (data, kinds) = structured_read(&mut client, 2, offset, len);
    assert_eq!(kinds, [1]);
    assert_eq!(data, server.device_bytes(offset, len));

    let mut simple = RawClient::open(&server.socket(), "disk", false, false);
    simple.request(0, READ, 3, offset, len as u32, &[]);
    assert_eq!(simple.simple_reply(), (0, 3));
    assert_eq!(simple.read_data(len), server.device_bytes(offset, len));
}

/// A client that reads its replies late gets them whole: what the socket
/// could not take at once was copied and sent after.
#[test]
fn large_replies_to_a_slow_reader_arrive_whole_and_in_order() {
    let server = TestServer::unix("disk", 32 << 20);
    let pattern: Vec<u8> = (0..(16u32 << 20)).map(|i| (i / 4096 % 253) as u8).collect();
    server.device.write_at(0, &pattern, false).unwrap();
    let mut client = RawClient::open(&server.socket(), "disk", true, false);
    for handle in 0..4u64 {
        client.request(DF, READ, handle, handle << 22, 4 << 20, &[]);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let chunk = client.any_reply();
        assert_eq!((chunk.kind, chunk.flags & DONE), (1, DONE));
        let at = be64(&chunk.payload) as usize;
        assert_eq!(at as u64, chunk.handle << 22);
        assert!(chunk.payload[8..] == pattern[at..at + (4 << 20)], "handle {}", chunk.handle);
        seen.insert(chunk.handle);
    }
    assert_eq!(seen.len(), 4);
}

#[test]
fn simple_replies_are_used_without_structured_negotiation() {
    let server = TestServer::unix("disk", 1 << 20);
    let mut client = RawClient::open(&server.socket(), "disk", false, false);
    assert_eq!(client.flags & (1 << 7), 0, "SEND_DF needs structured replies");
    client.request(FUA, WRITE, 9, 100, 5, b"hello");
    assert_eq!(client.simple_reply(), (0, 9));
    client.request(0, READ, 10, 98, 9, &[]);
    assert_eq!(client.simple_reply(), (0, 10));
    assert_eq!(client.read_data(9), b"\0\0hello\0\0");
    assert_eq!(server.device.fua_write_count(), 1);
    // Errors carry no payload: the next reply follows directly.
    client.request(0, READ, 11, 1 << 20, 1, &[]);
    assert_eq!(client.simple_reply(), (EINVAL, 11));
    client.request(0, WRITE, 12, (1 << 20) - 2, 4, b"abcd");
    assert_eq!(client.simple_reply(), (ENOSPC, 12));
    client.request(0, READ, 13, 100, 5, &[]);
    assert_eq!(client.simple_reply(), (0, 13));
    assert_eq!(client.read_data(5), b"hello");
}

#[test]
fn pipelined_requests_are_all_answered_once_with_their_handles() {
    let server = TestServer::unix("disk", 8 << 20);
    let mut client = RawClient::open(&server.socket(), "disk", false, false);
    let mut sender = client.stream.try_clone().unwrap();
    const N: u64 = 300;
    let writer = std::thread::spawn(move || {
        for i in 0..N {
            let mut message = Vec::new();
            for field in
                [&0x2560_9513u32.to_be_bytes()[..], &0u16.to_be_bytes(), &WRITE.to_be_bytes()]
            {
                message.extend_from_slice(field);
            }
            message.extend_from_slice(&i.to_be_bytes());
            message.extend_from_slice(&(i * 16384).to_be_bytes());
            message.extend_from_slice(&16384u32.to_be_bytes());
            message.extend(std::iter::repeat_n(i as u8, 16384));
            sender.write_all(&message).unwrap();
        }
    });
    let mut seen = HashSet::new();
    for _ in 0..N {
        let (error, handle) = client.simple_reply();
        assert_eq!(error, 0);
        assert!(seen.insert(handle), "handle {handle} answered twice");
    }
    writer.join().unwrap();
    assert_eq!(seen.len() as u64, N);
    for i in 0..N {
        assert!(server.device_bytes(i * 16384, 16384).iter().all(|&b| b == i as u8), "write {i}");
    }
}

#[test]
fn block_status_reports_extents_and_honours_req_one() {
    let server = TestServer::unix("disk", 1 << 20);
    server.device.write_at(8192, &[1u8; 8192], false).unwrap();
    server.device.write_zeroes(65536, 4096, false).unwrap();
    let mut client = RawClient::open(&server.socket(), "disk", true, true);
    client.request(0, BLOCK_STATUS, 1, 0, 1 << 20, &[]);
    let chunk = client.any_reply();
    assert_eq!((chunk.kind, chunk.flags & DONE, chunk.handle), (5, DONE, 1));
    assert_eq!(be32(&chunk.payload), 1, "context id of base:allocation");
    let descriptors: Vec<(u32, u32)> =
        chunk.payload[4..].chunks(8).map(|d| (be32(d), be32(&d[4..]))).collect();
    assert_eq!(
        descriptors,
        [(8192, 3), (8192, 0), (65536 - 16384, 3), (4096, 2), ((1 << 20) - 69632, 3)]
    );
    client.request(REQ_ONE, BLOCK_STATUS, 2, 4096, 65536, &[]);
    let chunk = client.any_reply();
    assert_eq!(&chunk.payload[4..], &[0, 0, 0x10, 0, 0, 0, 0, 3]);
    client.request(0, BLOCK_STATUS, 3, (1 << 20) - 4096, 8192, &[]);
    assert_eq!(error_of(&mut client, 3), EINVAL);
}

#[test]
fn block_status_without_a_negotiated_context_is_einval() {
    let server = TestServer::unix("disk", 1 << 20);
    let mut client = RawClient::open(&server.socket(), "disk", true, false);
    client.request(0, BLOCK_STATUS, 1, 0, 4096, &[]);
    assert_eq!(error_of(&mut client, 1), EINVAL);
}

#[test]
fn trim_and_write_zeroes_unmap_or_provision_blocks() {
    let server = TestServer::unix("disk", 1 << 20);
    let mut client = RawClient::open(&server.socket(), "disk", true, true);
    client.request(0, WRITE, 1, 0, 65536, &[9u8; 65536]);
    assert_eq!(client.any_reply().payload, [0, 0, 0, 0]);
    assert_eq!(server.device.mapped_blocks(), 16);
    client.request(FUA, TRIM, 2, 0, 32768, &[]);
    assert_eq!(client.any_reply().payload, [0, 0, 0, 0]);
    assert_eq!(server.device.mapped_blocks(), 8);
    assert_eq!(server.device.flush_count(), 1, "FUA on trim flushes");
    client.request(NO_HOLE, WRITE_ZEROES, 3, 32768, 32768, &[]);
    assert_eq!(client.any_reply().payload, [0, 0, 0, 0]);
    assert_eq!(server.device.mapped_blocks(), 8, "NO_HOLE keeps blocks provisioned");
    client.request(0, WRITE_ZEROES, 4, 32768, 32768, &[]);
    assert_eq!(client.any_reply().payload, [0, 0, 0, 0]);
    assert_eq!(server.device.mapped_blocks(), 0, "write-zeroes may trim");
    assert!(server.device_bytes(0, 65536).iter().all(|&b| b == 0));
}

#[test]
fn unknown_commands_get_einval_and_the_connection_continues() {
    let server = TestServer::unix("disk", 1 << 20);
    let mut client = RawClient::open(&server.socket(), "disk", true, false);
    client.request(0, 5, 1, 0, 4096, &[]); // NBD_CMD_CACHE, not offered
    assert_eq!(error_of(&mut client, 1), EINVAL);
    client.request(0, 0x77, 2, 0, 0, &[]);
    assert_eq!(error_of(&mut client, 2), EINVAL);
    client.request(REQ_ONE, WRITE, 3, 0, 3, b"xyz"); // bad flag: payload still consumed
    assert_eq!(error_of(&mut client, 3), EINVAL);
    client.request(0, READ, 4, 0, 3, &[]);
    let (data, _) = structured_read(&mut client, 4, 0, 3);
    assert_eq!(data, [0, 0, 0]);
}

#[test]
fn writes_to_a_read_only_export_are_eperm() {
    let server = TestServer::unix("disk", 1 << 20);
    server.server.add_export("ro", Arc::new(MemDevice::new(1 << 20)), true).unwrap();
    let mut client = RawClient::open(&server.socket(), "ro", false, false);
    assert_eq!(client.flags & 0b10, 0b10, "READ_ONLY flag");
    client.request(0, WRITE, 1, 0, 4, b"nope");
    assert_eq!(client.simple_reply(), (EPERM, 1));
    client.request(0, TRIM, 2, 0, 4096, &[]);
    assert_eq!(client.simple_reply(), (EPERM, 2));
    client.request(0, READ, 3, 0, 4, &[]);
    assert_eq!(client.simple_reply(), (0, 3));
    assert_eq!(client.read_data(4), [0; 4]);
}

#[test]
fn flush_on_one_connection_covers_writes_completed_on_another() {
    let server = TestServer::unix("disk", 1 << 20);
    let mut first = RawClient::open(&server.socket(), "disk", false, false);
    let mut second = RawClient::open(&server.socket(), "disk", false, false);
    assert_ne!(first.flags & (1 << 8), 0, "CAN_MULTI_CONN");
    first.request(0, WRITE, 1, 4096, 4, b"data");
    assert_eq!(first.simple_reply(), (0, 1));
    let flushes = server.device.flush_count();
    second.request(0, FLUSH, 2, 0, 0, &[]);
    assert_eq!(second.simple_reply(), (0, 2));
    assert_eq!(server.device.flush_count(), flushes + 1);
    second.request(0, READ, 3, 4096, 4, &[]);
    assert_eq!(second.simple_reply(), (0, 3));
    assert_eq!(second.read_data(4), b"data");
}

#[test]
fn legacy_export_name_enters_transmission_with_or_without_zeroes() {
    let server = TestServer::unix("disk", 1 << 20);
    for (client_flags, reply_len) in [(3u32, 10usize), (1, 134)] {
        let mut stream = RawClient::connect(&server.socket());
        stream.write_all(&client_flags.to_be_bytes()).unwrap();
        RawClient::send_option(&mut stream, 1, b"disk");
        let mut reply = vec![0u8; reply_len];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(be64(&reply), 1 << 20);
        let mut client = RawClient { stream, size: 1 << 20, flags: 0 };
        client.request(0, READ, 5, 0, 8, &[]);
        assert_eq!(client.simple_reply(), (0, 5));
        assert_eq!(client.read_data(8), [0; 8]);
        client.request(0, DISC, 6, 0, 0, &[]);
        assert!(RawClient::closed_by_server(&mut client.stream));
    }
}

#[test]
fn removing_an_export_closes_its_connections_and_hides_it() {
    let server = TestServer::unix("disk", 1 << 20);
    let mut client = RawClient::open(&server.socket(), "disk", false, false);
    server.server.remove_export("disk").unwrap();
    assert!(RawClient::closed_by_server(&mut client.stream));
    let mut stream = RawClient::connect(&server.socket());
    stream.write_all(&3u32.to_be_bytes()).unwrap();
    let mut payload = 4u32.to_be_bytes().to_vec();
    payload.extend_from_slice(b"disk\0\0");
    RawClient::send_option(&mut stream, 7, &payload);
    let (_, kind, message) = RawClient::read_option_reply(&mut stream);
    assert_eq!(kind, 0x8000_0006, "NBD_REP_ERR_UNKNOWN");
    assert_eq!(message, b"no export named \"disk\"");
}

#[test]
fn stopping_the_listener_closes_clients_and_removes_the_socket() {
    let mut server = TestServer::unix("disk", 1 << 20);
    let socket = server.socket();
    let mut client = RawClient::open(&socket, "disk", false, false);
    client.request(0, WRITE, 1, 0, 4, b"last");
    assert_eq!(client.simple_reply(), (0, 1));
    server.stop();
    assert!(RawClient::closed_by_server(&mut client.stream));
    assert!(!socket.exists());
    assert_eq!(server.device_bytes(0, 4), b"last");
}
