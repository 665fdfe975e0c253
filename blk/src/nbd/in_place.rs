//! The reply to a READ served in place: our own chunk headers around the
//! bytes where the device holds them ([`BlockDevice::read_in_place`]), laid
//! out as I/O slices for one `sendmsg`, with no copy of the data.
//!
//! Structured replies describe the device's holes as `OFFSET_HOLE` chunks
//! (unless the client asked for one unfragmented chunk) and its data as
//! `OFFSET_DATA` chunks, the last one flagged done; simple replies are the
//! header and every byte, holes sent as zeroes. The layout lives only while
//! the device's lock is held: what the socket does not take at once is
//! copied out ([`InPlaceReply::copy_tail`]) before the lock is let go.
//!
//! [`BlockDevice::read_in_place`]: crate::BlockDevice::read_in_place

use std::io::IoSlice;
use std::ops::Range;

use zerocopy::IntoBytes;

use super::proto::{data_chunk_head, hole_chunk, none_chunk, simple_reply};
use crate::device::ReadRun;

/// Zeroes to point slices at, for holes sent as bytes.
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// One piece of the reply on the wire.
#[derive(Debug, Clone, Copy)]
enum Part<'a> {
    /// Bytes of `InPlaceReply::heads`.
    Head(usize, usize),
    Data(&'a [u8]),
    Zeroes(usize),
}

/// A READ reply over a device's bytes. See the module documentation.
#[derive(Debug)]
pub(crate) struct InPlaceReply<'a> {
    heads: Vec<u8>,
    parts: Vec<Part<'a>>,
}

impl<'a> InPlaceReply<'a> {
    /// The reply to request `handle`, a read at `offset` whose bytes are
    /// `runs`.
    pub fn new(
        handle: u64,
        offset: u64,
        runs: &[ReadRun<'a>],
        df: bool,
        structured: bool,
    ) -> InPlaceReply<'a> {
        let mut reply = InPlaceReply { heads: Vec::new(), parts: Vec::new() };
        let len: usize = runs.iter().map(ReadRun::len).sum();
        if !structured {
            reply.head(simple_reply(handle, 0).as_bytes());
            reply.bytes(runs);
        } else if len == 0 {
            reply.head(none_chunk(handle).as_bytes());
        } else if df {
            reply.head(&data_chunk_head(handle, offset, len as u32, true));
            reply.bytes(runs);
        } else {
            let chunks = chunks(runs);
            let mut at = offset;
            for (i, chunk) in chunks.iter().enumerate() {
                let done = i + 1 == chunks.len();
                let chunk_len: usize = runs[chunk.runs.clone()].iter().map(ReadRun::len).sum();
                if chunk.hole {
                    reply.head(&hole_chunk(handle, at, chunk_len as u32, done));
                } else {
                    reply.head(&data_chunk_head(handle, at, chunk_len as u32, done));
                    reply.bytes(&runs[chunk.runs.clone()]);
                }
                at += chunk_len as u64;
            }
        }
        reply
    }

    fn head(&mut self, bytes: &[u8]) {
        let start = self.heads.len();
        self.heads.extend_from_slice(bytes);
        self.parts.push(Part::Head(start, self.heads.len()));
    }

    fn bytes(&mut self, runs: &[ReadRun<'a>]) {
        for run in runs {
            match *run {
                ReadRun::Data(bytes) if !bytes.is_empty() => self.parts.push(Part::Data(bytes)),
                ReadRun::Zeroes(n) if n > 0 => self.parts.push(Part::Zeroes(n)),
                _ => {}
            }
        }
    }

    /// The reply's bytes in wire order.
    pub fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            match *part {
                Part::Head(start, end) => out.push(IoSlice::new(&self.heads[start..end])),
                Part::Data(bytes) => out.push(IoSlice::new(bytes)),
                Part::Zeroes(mut n) => {
                    while n > 0 {
                        let piece = n.min(ZEROES.len());
                        out.push(IoSlice::new(&ZEROES[..piece]));
                        n -= piece;
                    }
                }
            }
        }
        out
    }

    /// Bytes the reply puts on the wire.
    pub fn wire_len(&self) -> usize {
        self.parts.iter().map(|part| self.part_bytes(part).len()).sum()
    }

    fn part_bytes(&self, part: &Part<'a>) -> PartBytes<'_> {
        match *part {
            Part::Head(start, end) => PartBytes::Bytes(&self.heads[start..end]),
            Part::Data(bytes) => PartBytes::Bytes(bytes),
            Part::Zeroes(n) => PartBytes::Zeroes(n),
        }
    }

    /// A copy of the reply's bytes from wire offset `from` to the end: what
    /// is left to send once the socket took `from` bytes.
    pub fn copy_tail(&self, from: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len().saturating_sub(from));
        let mut pos = 0;
        for part in &self.parts {
            let bytes = self.part_bytes(part);
            let len = bytes.len();
            if pos + len > from {
                let skip = from.saturating_sub(pos);
                match bytes {
                    PartBytes::Bytes(b) => out.extend_from_slice(&b[skip..]),
                    PartBytes::Zeroes(n) => out.resize(out.len() + n - skip, 0),
                }
            }
            pos += len;
        }
        out
    }
}

/// The bytes of one part.
enum PartBytes<'a> {
    Bytes(&'a [u8]),
    Zeroes(usize),
}

impl PartBytes<'_> {
    fn len(&self) -> usize {
        match self {
            PartBytes::Bytes(b) => b.len(),
            PartBytes::Zeroes(n) => *n,
        }
    }
}

/// Consecutive runs of one kind: one structured chunk.
struct Chunk {
    hole: bool,
    runs: Range<usize>,
}

fn chunks(runs: &[ReadRun<'_>]) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    for (i, run) in runs.iter().enumerate().filter(|(_, run)| !run.is_empty()) {
        let hole = matches!(run, ReadRun::Zeroes(_));
        match out.last_mut() {
            Some(chunk) if chunk.hole == hole => chunk.runs.end = i + 1,
            _ => out.push(Chunk { hole, runs: i..i + 1 }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::reply::ReplyFrame;

    fn wire(reply: &InPlaceReply<'_>) -> Vec<u8> {
        let wire: Vec<u8> = reply.slices().iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(wire.len(), reply.wire_len());
        wire
    }

    fn frame_wire(frame: &ReplyFrame) -> Vec<u8> {
        let mut slices = Vec::new();
        frame.slices(&mut slices);
        slices.iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn holes_and_data_become_the_chunks_a_buffered_read_would_send() {
        let a = vec![1u8; 4096];
        let b = vec![2u8; 4096];
        let runs = [ReadRun::Zeroes(8192), ReadRun::Data(&a), ReadRun::Data(&b)];
        let reply = InPlaceReply::new(7, 4096, &runs, false, true);
        let mut buffered = vec![0u8; 8192];
        buffered.extend_from_slice(&a);
        buffered.extend_from_slice(&b);
        let frame = ReplyFrame::structured_read(7, 4096, buffered, false);
        assert_eq!(wire(&reply), frame_wire(&frame));
    }

    #[test]
    fn simple_and_unfragmented_replies_carry_every_byte() {
        let a = vec![5u8; 100];
        let runs = [ReadRun::Data(&a), ReadRun::Zeroes(70_000), ReadRun::Data(&a)];
        let mut bytes = a.clone();
        bytes.resize(70_100, 0);
        bytes.extend_from_slice(&a);
        for structured in [false, true] {
            let reply = InPlaceReply::new(9, 0, &runs, true, structured);
            let frame = if structured {
                ReplyFrame::structured_read(9, 0, bytes.clone(), true)
            } else {
                ReplyFrame::simple_read(9, bytes.clone())
            };
            assert_eq!(wire(&reply), frame_wire(&frame));
        }
    }

    #[test]
    fn an_empty_structured_read_is_one_none_chunk() {
        let reply = InPlaceReply::new(1, 0, &[], false, true);
        assert_eq!(wire(&reply), none_chunk(1).as_bytes());
    }

    #[test]
    fn the_tail_after_any_sent_prefix_completes_the_wire() {
        let a = vec![3u8; 5000];
        let runs = [ReadRun::Data(&a), ReadRun::Zeroes(4096), ReadRun::Data(&a[..10])];
        for structured in [false, true] {
            let reply = InPlaceReply::new(2, 0, &runs, false, structured);
            let whole = wire(&reply);
            for sent in [0, 1, 16, 28, 5000, whole.len() - 1, whole.len()] {
                let mut joined = whole[..sent].to_vec();
                joined.extend(reply.copy_tail(sent));
                assert_eq!(joined, whole, "sent {sent}");
            }
        }
    }
}
