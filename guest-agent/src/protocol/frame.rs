//! Frames: a 4-byte little-endian payload length, then the postcard
//! payload (see the module doc of [`crate::protocol`]).
//!
//! [`encode`] / [`decode`] work on whole frames in memory (tests, fuzzing);
//! [`read_frame`] / [`write_frame`] on blocking streams; the `_async` pair
//! on tokio streams. Readers check the length against [`MAX_FRAME`] before
//! reading or allocating the body; the body buffer is then exactly the
//! announced length.

use std::io::{ErrorKind, Read, Write};

use super::message::{Message, MESSAGE_KINDS};
use super::{ProtocolError, MAX_FRAME};

const HEADER: usize = 4;

/// Encodes `message` as one frame (length prefix and payload).
///
/// Fails if a list in the message is longer than its bound or the payload
/// would exceed [`MAX_FRAME`]; a peer would refuse such a frame.
pub fn encode(message: &Message) -> Result<Vec<u8>, ProtocolError> {
    if let Some((what, len, max)) = message.longest_list() {
        if len > max {
            return Err(ProtocolError::TooManyEntries { what, len, max });
        }
    }
    let frame = postcard::to_extend(message, vec![0u8; HEADER]).map_err(ProtocolError::Encode)?;
    let payload_len = frame.len() - HEADER;
    let length = u32::try_from(payload_len)
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or(ProtocolError::FrameTooLarge { size: payload_len as u64, max: MAX_FRAME })?;
    let mut frame = frame;
    frame[..HEADER].copy_from_slice(&length.to_le_bytes());
    Ok(frame)
}

/// Decodes one whole frame: `bytes` must be exactly a length prefix and the
/// payload it announces.
pub fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER>() else {
        return Err(ProtocolError::Truncated { expected: HEADER as u64, got: bytes.len() as u64 });
    };
    let length = checked_length(*header)?;
    let got = payload.len() as u64;
    if got < u64::from(length) {
        return Err(ProtocolError::Truncated { expected: u64::from(length), got });
    }
    if got > u64::from(length) {
        return Err(ProtocolError::TrailingBytes { extra: payload.len() - length as usize });
    }
    decode_payload(payload)
}

/// Writes `message` as one frame and flushes `writer`.
pub fn write_frame(writer: &mut impl Write, message: &Message) -> Result<(), ProtocolError> {
    let frame = encode(message)?;
    writer.write_all(&frame).map_err(ProtocolError::Io)?;
    writer.flush().map_err(ProtocolError::Io)
}

/// Reads one frame from `reader`. A connection closed before the first
/// byte of the frame gives [`ProtocolError::Closed`].
pub fn read_frame(reader: &mut impl Read) -> Result<Message, ProtocolError> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..]) {
            Ok(0) => return Err(closed_or_truncated(got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    let length = checked_length(header)?;
    let mut payload = Vec::with_capacity(initial_capacity(length));
    loop {
        let remaining = u64::from(length) - payload.len() as u64;
        match (&mut *reader).take(remaining).read_to_end(&mut payload) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    finish_body(length, &payload)
}

/// Writes `message` as one frame and flushes `writer`.
#[cfg(feature = "tokio")]
pub async fn write_frame_async<W>(writer: &mut W, message: &Message) -> Result<(), ProtocolError>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncWriteExt;
    let frame = encode(message)?;
    writer.write_all(&frame).await.map_err(ProtocolError::Io)?;
    writer.flush().await.map_err(ProtocolError::Io)
}

/// Reads one frame from `reader`. A connection closed before the first
/// byte of the frame gives [`ProtocolError::Closed`].
///
/// Not cancel-safe: dropping the future mid-frame loses the bytes read so
/// far, and the stream is then out of step; close it.
#[cfg(feature = "tokio")]
pub async fn read_frame_async<R>(reader: &mut R) -> Result<Message, ProtocolError>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
{
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..]).await {
            Ok(0) => return Err(closed_or_truncated(got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    let length = checked_length(header)?;
    let mut payload = Vec::with_capacity(initial_capacity(length));
    loop {
        let mut body = (&mut *reader).take(u64::from(length) - payload.len() as u64);
        match body.read_to_end(&mut payload).await {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    finish_body(length, &payload)
}

fn checked_length(header: [u8; HEADER]) -> Result<u32, ProtocolError> {
    let length = u32::from_le_bytes(header);
    if length > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge { size: u64::from(length), max: MAX_FRAME });
    }
    Ok(length)
}

fn closed_or_truncated(got: usize) -> ProtocolError {
    if got == 0 {
        ProtocolError::Closed
    } else {
        ProtocolError::Truncated { expected: HEADER as u64, got: got as u64 }
    }
}

/// The body buffer is reserved up to this size and then grows with the
/// bytes that arrive, so a peer announcing a large frame and sending little
/// costs little memory.
const INITIAL_BODY: u32 = 64 << 10;

fn initial_capacity(length: u32) -> usize {
    length.min(INITIAL_BODY) as usize
}

fn finish_body(length: u32, payload: &[u8]) -> Result<Message, ProtocolError> {
    if payload.len() < length as usize {
        return Err(ProtocolError::Truncated {
            expected: u64::from(length),
            got: payload.len() as u64,
        });
    }
    decode_payload(payload)
}

fn decode_payload(payload: &[u8]) -> Result<Message, ProtocolError> {
    match postcard::take_from_bytes::<Message>(payload) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(ProtocolError::TrailingBytes { extra: rest.len() }),
        Err(e) => match leading_varint(payload) {
            Some(tag) if tag >= MESSAGE_KINDS => Err(ProtocolError::UnknownMessage { tag }),
            _ => Err(ProtocolError::Garbage(e)),
        },
    }
}

/// The LEB128 varint (postcard's enum tag encoding) at the start of
/// `bytes`, if there is a complete one that fits in a u32.
fn leading_varint(bytes: &[u8]) -> Option<u32> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().take(5).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(value).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Disposition, EvictAnswer, EvictRange, MAX_RANGES};

    #[test]
    fn frame_is_little_endian_length_then_payload() {
        let frame = encode(&Message::Ping { nonce: 5 }).unwrap();
        // Ping is variant 9, nonce 5 is one varint byte.
        assert_eq!(frame, [2, 0, 0, 0, 9, 5]);
        assert_eq!(decode(&frame).unwrap(), Message::Ping { nonce: 5 });
    }

    #[test]
    fn oversized_length_is_refused_with_its_size_and_the_bound() {
        let err = decode(&[0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.to_string(), "frame of 4294967295 bytes exceeds the 4194304-byte bound");
    }

    #[test]
    fn unknown_message_kind_is_named() {
        let err = decode(&[1, 0, 0, 0, 60]).unwrap_err();
        assert_eq!(err.to_string(), "unknown message kind 60 (the peer speaks a newer protocol)");
    }

    #[test]
    fn stray_bytes_after_the_message_are_refused() {
        let err = decode(&[3, 0, 0, 0, 9, 5, 0]).unwrap_err();
        assert_eq!(err.to_string(), "1 stray bytes after the message in a frame");
        let err = decode(&[2, 0, 0, 0, 9, 5, 0]).unwrap_err();
        assert_eq!(err.to_string(), "1 stray bytes after the message in a frame");
    }

    #[test]
    fn truncated_frames_say_how_much_is_missing() {
        let err = decode(&[9, 0, 0, 0, 9, 5]).unwrap_err();
        assert_eq!(err.to_string(), "frame truncated: expected 9 bytes, got 2");
        let err = read_frame(&mut &[9u8, 0][..]).unwrap_err();
        assert_eq!(err.to_string(), "frame truncated: expected 4 bytes, got 2");
        assert!(matches!(read_frame(&mut &[][..]), Err(ProtocolError::Closed)));
    }

    #[test]
    fn encoder_refuses_lists_over_the_bound() {
        let range = EvictRange { start: 0, count: 1, disposition: Disposition::Keep };
        let answer = EvictAnswer { id: 1, serial: "s".into(), ranges: vec![range; MAX_RANGES + 1] };
        let err = encode(&Message::EvictAnswer(answer)).unwrap_err();
        assert_eq!(err.to_string(), "ranges list of 131073 entries exceeds the bound of 131072");
    }

    #[test]
    fn decoder_refuses_a_declared_list_length_over_the_bound() {
        // EvictAnswer (4), id 1, serial "" (0), then 131073 ranges declared.
        let mut payload = vec![4, 1, 0];
        let mut n = MAX_RANGES as u64 + 1;
        while n >= 0x80 {
            payload.push((n as u8) | 0x80);
            n >>= 7;
        }
        payload.push(n as u8);
        payload.extend(std::iter::repeat_n([0u8, 1, 0], MAX_RANGES + 1).flatten());
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend(&payload);
        assert!(matches!(decode(&frame), Err(ProtocolError::Garbage(_))));
    }
}
