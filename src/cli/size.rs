//! Sizes as people type and read them.
//!
//! [`parse_size`] accepts a number of bytes (`4096`) or a number with a
//! binary unit (`64M`, `64MiB`, `64mb`, `1.5G`, `2T`): every unit is a power
//! of 1024, whichever spelling is used, because pool sizes are page
//! multiples. A fraction must come out as a whole number of bytes.
//! [`format_size`] prints sizes with one decimal and an IEC unit (`64.0 MiB`).

use std::fmt;

/// A size that could not be parsed; the message shows what sizes look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid size `{}`: {}; use a number of bytes or a number with a binary unit, \
             such as 4096, 64M, 512MiB, 1.5G or 2T",
            self.input, self.reason
        )
    }
}

impl std::error::Error for SizeError {}

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Parse a size such as `4096`, `64M`, `64MiB`, `1.5G` or `2T` into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let fail = |reason| SizeError { input: input.to_string(), reason };
    let text = input.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(fail(if text.starts_with('-') {
            "sizes cannot be negative"
        } else {
            "it does not start with a number"
        }));
    }
    let shift =
        unit_shift(unit.trim()).ok_or_else(|| fail("the unit is not one of K, M, G, T, P, E"))?;

    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(fail("the number is malformed"));
    }
    if fraction.len() > 18 {
        return Err(fail("the fraction has too many digits"));
    }
    let too_big = || fail("it is larger than 16 EiB");
    let whole: u128 = whole.parse().map_err(|_| too_big())?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| fail("the number is malformed"))?
    };
    let denominator = 10u128.pow(fraction.len() as u32);

    let multiplier = 1u128 << shift;
    let scaled_fraction = fraction_value * multiplier;
    if scaled_fraction % denominator != 0 {
        return Err(fail("it is not a whole number of bytes"));
    }
    let bytes = whole
        .checked_mul(multiplier)
        .and_then(|b| b.checked_add(scaled_fraction / denominator))
        .ok_or_else(too_big)?;
    u64::try_from(bytes).map_err(|_| too_big())
}

/// The power of two a unit stands for, or `None` for an unknown unit.
fn unit_shift(unit: &str) -> Option<u32> {
    let lower = unit.to_ascii_lowercase();
    let prefix = match lower.as_str() {
        "" | "b" => return Some(0),
        u => u.strip_suffix("ib").or_else(|| u.strip_suffix('b')).unwrap_or(u),
    };
    let index = ["k", "m", "g", "t", "p", "e"].iter().position(|p| *p == prefix)?;
    Some(10 * (index as u32 + 1))
}

/// Humanize a size: `4096` → `4.0 KiB`, `1536` → `1.5 KiB`, `100` → `100 B`.
pub fn format_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    // Avoid "1024.0 MiB" after rounding.
    if format!("{value:.1}") == "1024.0" && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size(" 12 "), Ok(12));
    }

    #[test]
    fn every_unit_spelling_is_binary() {
        for text in ["64M", "64MiB", "64MB", "64m", "64mib", "64 MiB"] {
            assert_eq!(parse_size(text), Ok(64 << 20), "{text}");
        }
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("3K"), Ok(3 << 10));
        assert_eq!(parse_size("5B"), Ok(5));
    }

    #[test]
    fn fractions_must_be_whole_bytes() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert!(parse_size("0.1K")
            .unwrap_err()
            .to_string()
            .contains("not a whole number of bytes"));
        assert!(parse_size("1.5").unwrap_err().to_string().contains("not a whole number of bytes"));
    }

    #[test]
    fn bad_sizes_explain_what_a_size_looks_like() {
        for (text, reason) in [
            ("", "does not start with a number"),
            ("lots", "does not start with a number"),
            ("-1G", "cannot be negative"),
            ("12X", "unit is not one of"),
            ("1..5G", "malformed"),
            ("1.G", "malformed"),
            (".5G", "malformed"),
            ("17E", "larger than 16 EiB"),
            ("99999999999999999999999999999999999999999", "larger than 16 EiB"),
        ] {
            let err = parse_size(text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid size `{text}`")), "{err}");
            assert!(err.contains(reason), "{text}: {err}");
            assert!(err.contains("such as 4096, 64M"), "{err}");
        }
    }

    #[test]
    fn sizes_are_humanized_with_one_decimal() {
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(4096), "4.0 KiB");
        assert_eq!(format_size(64 << 20), "64.0 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size((1 << 30) - 1), "1.0 GiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
    }

    proptest! {
        #[test]
        fn whole_units_round_trip(n in 0u64..1_000_000, shift in 0usize..5) {
            let text = format!("{n}{}", ["", "K", "M", "G", "T"][shift]);
            prop_assert_eq!(parse_size(&text), Ok(n << (10 * shift)));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = parse_size(&text);
        }
    }
}
