//! Transmission replies: how one request's answer is laid out on the wire
//! (a simple reply, or structured chunks).
//!
//! A `ReplyFrame` is built completely before it is written, so chunks of one
//! reply are never interleaved with another's bytes and the final chunk can
//! carry `NBD_REPLY_FLAG_DONE` safely (no error can occur once the data is in
//! memory). A frame is written as I/O slices (headers, then the data where
//! it lies), so a reply is one `writev` however many chunks it has. Each
//! frame holds the in-flight permit of its request until it has been
//! written, which is what bounds a connection's memory.

use std::io::IoSlice;
use std::ops::Range;

use zerocopy::IntoBytes;

use super::budget::Permit;
use super::proto::{
    block_status_chunk, data_chunk_head, error_chunk, hole_chunk, none_chunk, simple_reply,
};

/// Granularity of hole detection in structured reads.
const HOLE_GRANULE: u64 = 4096;

/// One piece of a frame.
#[derive(Debug)]
enum Part {
    Bytes(Vec<u8>),
    Data(Range<usize>),
}

/// The complete reply to one request.
#[derive(Debug)]
pub(crate) struct ReplyFrame {
    parts: Vec<Part>,
    data: Vec<u8>,
    permit: Option<Permit>,
}

impl ReplyFrame {
    fn from_bytes(bytes: Vec<u8>) -> Self {
        ReplyFrame { parts: vec![Part::Bytes(bytes)], data: Vec::new(), permit: None }
    }

    /// A simple reply without payload (success or error).
    pub fn simple(handle: u64, error: u32) -> Self {
        Self::from_bytes(simple_reply(handle, error).as_bytes().to_vec())
    }

    /// An error: a structured error chunk with a message when structured
    /// replies were negotiated, else a simple reply.
    pub fn error(handle: u64, error: u32, message: &str, structured: bool) -> Self {
        if structured {
            Self::from_bytes(error_chunk(handle, error, message))
        } else {
            Self::simple(handle, error)
        }
    }

    /// A successful READ as a simple reply: header, then all the data.
    pub fn simple_read(handle: u64, data: Vec<u8>) -> Self {
        let head = simple_reply(handle, 0).as_bytes().to_vec();
        let parts = vec![Part::Bytes(head), Part::Data(0..data.len())];
        ReplyFrame { parts, data, permit: None }
    }

    /// A successful READ as structured chunks. Zero-filled, 4 KiB-aligned
    /// runs go out as `OFFSET_HOLE` chunks unless the client asked for one
    /// unfragmented chunk (`df`).
    pub fn structured_read(handle: u64, offset: u64, data: Vec<u8>, df: bool) -> Self {
        if data.is_empty() {
            return Self::from_bytes(none_chunk(handle).as_bytes().to_vec());
        }
        let runs =
            if df { vec![ContentRun::Data(0..data.len())] } else { content_runs(offset, &data) };
        let last = runs.len() - 1;
        let mut parts = Vec::with_capacity(runs.len() * 2);
        for (i, run) in runs.into_iter().enumerate() {
            let done = i == last;
            match run {
                ContentRun::Data(range) => {
                    let at = offset + range.start as u64;
                    let len = range.len() as u32;
                    parts.push(Part::Bytes(data_chunk_head(handle, at, len, done)));
                    parts.push(Part::Data(range));
                }
                ContentRun::Hole(range) => {
                    let at = offset + range.start as u64;
                    parts.push(Part::Bytes(hole_chunk(handle, at, range.len() as u32, done)));
                }
            }
        }
        ReplyFrame { parts, data, permit: None }
    }

    /// A successful BLOCK_STATUS: one chunk for the one selected context.
    pub fn block_status(handle: u64, context: u32, descriptors: &[(u32, u32)]) -> Self {
        Self::from_bytes(block_status_chunk(handle, context, descriptors))
    }

    /// Keep `permit` until this frame has been written.
    pub fn holding(mut self, permit: Permit) -> Self {
        self.permit = Some(permit);
        self
    }

    /// Append this frame's bytes, in wire order, to `out`.
    pub fn slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) {
        for part in &self.parts {
            out.push(IoSlice::new(match part {
                Part::Bytes(bytes) => bytes,
                Part::Data(range) => &self.data[range.clone()],
            }));
        }
    }

    /// This frame's bytes, in wire order, in one buffer.
    pub fn slices_owned(&self) -> Vec<u8> {
        let mut slices = Vec::new();
        self.slices(&mut slices);
        slices.iter().flat_map(|s| s.iter().copied()).collect()
    }

    /// Bytes this frame puts on the wire.
    pub fn wire_len(&self) -> usize {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Bytes(bytes) => bytes.len(),
                Part::Data(range) => range.len(),
            })
            .sum()
    }

    /// The read buffer this frame carried (for reuse), releasing its permit.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

/// A run of a read buffer: data to send, or zeroes to describe as a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContentRun {
    Data(Range<usize>),
    Hole(Range<usize>),
}

/// Split a buffer read at `offset` into data runs and hole runs. A hole run
/// is made of whole zero-filled granules aligned to the export, so partial
/// granules at either end are always data.
pub(crate) fn content_runs(offset: u64, data: &[u8]) -> Vec<ContentRun> {
    let mut runs: Vec<ContentRun> = Vec::new();
    let end = offset + data.len() as u64;
    let mut pos = offset;
    while pos < end {
        let granule_end = ((pos / HOLE_GRANULE) + 1) * HOLE_GRANULE;
        let piece_end = granule_end.min(end);
        let range = (pos - offset) as usize..(piece_end - offset) as usize;
        let whole = pos.is_multiple_of(HOLE_GRANULE) && piece_end == granule_end;
        let hole = whole && data[range.clone()].iter().all(|&b| b == 0);
        match (runs.last_mut(), hole) {
            (Some(ContentRun::Hole(last)), true) | (Some(ContentRun::Data(last)), false) => {
                last.end = range.end;
            }
            (_, true) => runs.push(ContentRun::Hole(range)),
            (_, false) => runs.push(ContentRun::Data(range)),
        }
        pos = piece_end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_all_data_read_is_one_data_run() {
        let data = vec![1u8; 8192];
        assert_eq!(content_runs(0, &data), vec![ContentRun::Data(0..8192)]);
    }

    #[test]
    fn aligned_zero_granules_become_one_hole_run() {
        let mut data = vec![0u8; 4 * 4096];
        data[0] = 1;
        assert_eq!(
            content_runs(0, &data),
            vec![ContentRun::Data(0..4096), ContentRun::Hole(4096..16384)]
        );
    }

    #[test]
    fn partial_granules_at_the_ends_stay_data() {
        let data = vec![0u8; 8192];
        assert_eq!(
            content_runs(100, &data),
            vec![
                ContentRun::Data(0..3996),
                ContentRun::Hole(3996..8092),
                ContentRun::Data(8092..8192)
            ]
        );
    }

    fn wire(frame: &ReplyFrame) -> Vec<u8> {
        let mut slices = Vec::new();
        frame.slices(&mut slices);
        let wire: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(wire.len(), frame.wire_len());
        wire
    }

    #[test]
    fn structured_read_marks_only_the_last_chunk_done() {
        let mut data = vec![0u8; 8192];
        data[5000] = 9;
        let frame = ReplyFrame::structured_read(3, 0, data, false);
        let wire = wire(&frame);
        // hole chunk (32 bytes), then data chunk header (28) + 4096 bytes.
        assert_eq!(wire.len(), 32 + 28 + 4096);
        assert_eq!(&wire[4..8], &[0, 0, 0, 2], "first chunk: hole, not done");
        assert_eq!(&wire[32 + 4..32 + 8], &[0, 1, 0, 1], "second chunk: data, done");
        assert_eq!(&wire[32 + 20..32 + 28], &4096u64.to_be_bytes());
        assert_eq!(wire[32 + 28 + 5000 - 4096], 9);
    }

    #[test]
    fn an_unfragmented_read_is_a_single_data_chunk() {
        let frame = ReplyFrame::structured_read(3, 0, vec![0u8; 8192], true);
        let wire = wire(&frame);
        assert_eq!(wire.len(), 28 + 8192);
        assert_eq!(&wire[4..8], &[0, 1, 0, 1]);
    }

    #[test]
    fn simple_read_is_header_then_data() {
        let frame = ReplyFrame::simple_read(0xabcd, vec![7u8; 10]);
        let wire = wire(&frame);
        assert_eq!(&wire[..4], &0x6744_6698u32.to_be_bytes());
        assert_eq!(&wire[4..8], &[0; 4]);
        assert_eq!(&wire[8..16], &0xabcdu64.to_be_bytes());
        assert_eq!(&wire[16..], &[7u8; 10]);
    }

    proptest! {
        #[test]
        fn content_runs_tile_the_buffer_and_holes_are_zero(
            offset in 0u64..20_000,
            blocks in proptest::collection::vec(any::<bool>(), 1..12),
            tail in 0usize..4096,
        ) {
            let mut data = Vec::new();
            for nonzero in &blocks {
                data.extend(std::iter::repeat_n(u8::from(*nonzero), 4096));
            }
            data.truncate(data.len() - tail.min(data.len() - 1));
            let runs = content_runs(offset, &data);
            let mut pos = 0;
            for (i, run) in runs.iter().enumerate() {
                let range = match run { ContentRun::Data(r) | ContentRun::Hole(r) => r.clone() };
                prop_assert_eq!(range.start, pos);
                prop_assert!(!range.is_empty());
                if let ContentRun::Hole(r) = run {
                    prop_assert!(data[r.clone()].iter().all(|&b| b == 0));
                    prop_assert_eq!((offset + r.start as u64) % 4096, 0);
                }
                if i > 0 {
                    let same_kind = matches!(
                        (&runs[i - 1], run),
                        (ContentRun::Data(_), ContentRun::Data(_)) | (ContentRun::Hole(_), ContentRun::Hole(_))
                    );
                    prop_assert!(!same_kind, "adjacent runs of one kind are merged");
                }
                pos = range.end;
            }
            prop_assert_eq!(pos, data.len());
        }
    }
}
