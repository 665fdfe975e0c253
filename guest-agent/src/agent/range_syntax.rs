//! The command line's range syntax, in 4 KiB blocks: a comma-separated
//! list of `FIRST-LAST` (both included), `START+COUNT` or a single block
//! `N`; for example `0-1023,4096+16,9000`. Spaces around items are allowed.

use thiserror::Error;

use crate::protocol::{BlockRange, MAX_RANGES};

/// A range list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RangeSyntaxError {
    /// The list is empty.
    #[error("no ranges given (write e.g. 0-1023,4096+16)")]
    Empty,
    /// An item is not `FIRST-LAST`, `START+COUNT` or `N`.
    #[error("{item:?} is not a range (write FIRST-LAST, START+COUNT or a block number)")]
    Item {
        /// The item.
        item: String,
    },
    /// `FIRST-LAST` with LAST before FIRST, or `START+0`.
    #[error("{item:?} names no blocks")]
    NoBlocks {
        /// The item.
        item: String,
    },
    /// A range ends past the largest block number.
    #[error("{item:?} runs past the largest block number")]
    Overflow {
        /// The item.
        item: String,
    },
    /// More items than one message can carry.
    #[error("{count} ranges exceed the bound of {MAX_RANGES}")]
    TooMany {
        /// How many items.
        count: usize,
    },
}

/// Parses a range list.
pub fn parse_ranges(text: &str) -> Result<Vec<BlockRange>, RangeSyntaxError> {
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    if items.iter().all(|i| i.is_empty()) {
        return Err(RangeSyntaxError::Empty);
    }
    if items.len() > MAX_RANGES {
        return Err(RangeSyntaxError::TooMany { count: items.len() });
    }
    items.into_iter().map(parse_item).collect()
}

fn parse_item(item: &str) -> Result<BlockRange, RangeSyntaxError> {
    let bad = || RangeSyntaxError::Item { item: item.to_owned() };
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    let range = if let Some((first, last)) = item.split_once('-') {
        let (first, last) = (number(first)?, number(last)?);
        if last < first {
            return Err(RangeSyntaxError::NoBlocks { item: item.to_owned() });
        }
        let count = (last - first)
            .checked_add(1)
            .ok_or_else(|| RangeSyntaxError::Overflow { item: item.to_owned() })?;
        BlockRange { start: first, count }
    } else if let Some((start, count)) = item.split_once('+') {
        BlockRange { start: number(start)?, count: number(count)? }
    } else {
        BlockRange { start: number(item)?, count: 1 }
    };
    if range.count == 0 {
        return Err(RangeSyntaxError::NoBlocks { item: item.to_owned() });
    }
    if range.end().is_none() {
        return Err(RangeSyntaxError::Overflow { item: item.to_owned() });
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn br(start: u64, count: u64) -> BlockRange {
        BlockRange { start, count }
    }

    #[test]
    fn inclusive_spans_counts_and_single_blocks_parse() {
        assert_eq!(
            parse_ranges("0-1023,4096+16, 9000"),
            Ok(vec![br(0, 1024), br(4096, 16), br(9000, 1)])
        );
    }

    #[test]
    fn bad_ranges_say_how_to_write_them() {
        let cases = [
            ("", "no ranges given (write e.g. 0-1023,4096+16)"),
            ("1-x", "\"1-x\" is not a range (write FIRST-LAST, START+COUNT or a block number)"),
            ("5-4", "\"5-4\" names no blocks"),
            ("3+0", "\"3+0\" names no blocks"),
            ("1,,2", "\"\" is not a range (write FIRST-LAST, START+COUNT or a block number)"),
            (
                "18446744073709551615+2",
                "\"18446744073709551615+2\" runs past the largest block number",
            ),
            (
                "0-18446744073709551615",
                "\"0-18446744073709551615\" runs past the largest block number",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(parse_ranges(input).unwrap_err().to_string(), message, "{input:?}");
        }
    }
}
