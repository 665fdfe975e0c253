//! Payload buffers of one connection, kept for reuse: a 1 MiB request then
//! costs neither a fresh mapping from the allocator (and its page faults)
//! nor zeroing, and a 4 KiB one no `calloc`. What is kept is bounded in
//! count and bytes; buffers are always fully initialised, so handing one
//! out of a given length never exposes stale bytes to the type system (the
//! device or the socket overwrites them before anyone reads them).

use std::sync::{Mutex, PoisonError};

/// Most bytes one connection keeps for reuse.
const KEEP_BYTES: usize = 16 << 20;
/// Most buffers one connection keeps for reuse.
const KEEP_COUNT: usize = 64;

/// The spare buffers of one connection.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    spare: Mutex<Spare>,
}

#[derive(Debug, Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl Buffers {
    /// A buffer of exactly `len` bytes (contents unspecified).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let reused = {
            let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
            let fit = spare
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            fit.map(|i| {
                let buffer = spare.buffers.swap_remove(i);
                spare.bytes -= buffer.capacity();
                buffer
            })
        };
        match reused {
            Some(mut buffer) => {
                // Shrinking keeps initialised bytes; growing zeroes the tail.
                buffer.resize(len, 0);
                buffer
            }
            None => vec![0u8; len],
        }
    }

    /// Keep `buffer` for a later [`take`](Buffers::take), if there is room.
    pub fn give_back(&self, buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity == 0 || capacity > KEEP_BYTES {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.buffers.len() < KEEP_COUNT && spare.bytes + capacity <= KEEP_BYTES {
            spare.bytes += capacity;
            spare.buffers.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_buffer_is_reused_by_the_smallest_fit() {
        let buffers = Buffers::default();
        let big = buffers.take(1 << 20);
        let small = buffers.take(4096);
        let (big_ptr, small_ptr) = (big.as_ptr(), small.as_ptr());
        buffers.give_back(big);
        buffers.give_back(small);
        let again = buffers.take(4000);
        assert_eq!((again.len(), again.as_ptr()), (4000, small_ptr));
        let large = buffers.take(8192);
        assert_eq!((large.len(), large.as_ptr()), (8192, big_ptr));
    }

    #[test]
    fn what_is_kept_is_bounded_in_bytes() {
        let buffers = Buffers::default();
        for _ in 0..3 {
            buffers.give_back(vec![0u8; KEEP_BYTES / 2]);
        }
        buffers.give_back(vec![0u8; KEEP_BYTES + 1]);
        let spare = buffers.spare.lock().unwrap();
        assert_eq!(spare.buffers.len(), 2);
        assert_eq!(spare.bytes, KEEP_BYTES);
    }
}
