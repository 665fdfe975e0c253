//! The decoder's self-check: the body of the `decode` fuzz target
//! (`guest-agent/fuzz`) and of the tests that run the same body over a
//! fixed corpus and random inputs on stable Rust.

use super::{decode, encode, read_frame, Message, ProtocolError};

/// Decodes `bytes` as a whole frame and as a stream, and panics if the two
/// readers disagree or if a decoded message does not survive a round trip.
/// Any input must return without other panics, whatever it holds.
#[doc(hidden)]
pub fn check_decoder(bytes: &[u8]) {
    let whole = decode(bytes);
    let streamed = read_frame(&mut &bytes[..]);
    match (&whole, &streamed) {
        // A whole frame is also the first frame of the stream.
        (Ok(m), Ok(s)) => assert_eq!(m, s, "stream and whole-frame decoders disagree"),
        (Ok(m), Err(e)) => panic!("whole frame decodes to {m:?}, the stream says {e}"),
        // The stream reads only the first frame: stray bytes after it are
        // the whole-frame decoder's concern.
        (Err(ProtocolError::TrailingBytes { .. }), _) | (Err(_), Err(_)) => {}
        (Err(e), Ok(s)) => panic!("stream decodes {s:?}, the whole frame says {e}"),
    }
    if let Ok(message) = whole {
        assert_round_trip(&message);
    }
}

fn assert_round_trip(message: &Message) {
    let frame = match encode(message) {
        Ok(frame) => frame,
        Err(e) => panic!("a decoded {} does not encode: {e}", message.kind()),
    };
    match decode(&frame) {
        Ok(again) => assert_eq!(&again, message, "round trip changed the message"),
        Err(e) => panic!("a re-encoded {} does not decode: {e}", message.kind()),
    }
}
