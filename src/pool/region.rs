//! Regions: named, persistent allocations of pool pages, and their on-media
//! entry format (shared by checkpoints and log records).
//!
//! ```text
//! region entry
//! offset size field
//!      0    8 region id (never reused)
//!      8    8 size in pages (equals the sum of the extents)
//!     16    8 creation time, seconds since the Unix epoch
//!     24    1 kind: 1 block, 2 fs, 3 memory
//!     25    1 name length N (1..=64)
//!     26    2 attribute bytes A (0..=4096)
//!     28    4 extent count E
//!     32    N name, UTF-8
//!   32+N    A attributes, a JSON object of strings
//!      -    - zero padding to a multiple of 8
//!      -  16E extents: first page (8), page count (8)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Longest region name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most attribute bytes a region may carry.
pub const MAX_ATTR_BYTES: usize = 4096;
/// Most extents one region may own.
pub const MAX_EXTENTS: usize = 16_384;

/// What a region is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionKind {
    /// An elastic block device (ublk, NBD).
    Block,
    /// An RvmFS filesystem.
    Fs,
    /// VM memory: one contiguous extent.
    Memory,
}

impl RegionKind {
    fn code(self) -> u8 {
        match self {
            RegionKind::Block => 1,
            RegionKind::Fs => 2,
            RegionKind::Memory => 3,
        }
    }

    fn from_code(code: u8) -> Option<RegionKind> {
        match code {
            1 => Some(RegionKind::Block),
            2 => Some(RegionKind::Fs),
            3 => Some(RegionKind::Memory),
            _ => None,
        }
    }

    /// The kind's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Block => "block",
            RegionKind::Fs => "fs",
            RegionKind::Memory => "memory",
        }
    }
}

impl std::fmt::Display for RegionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RegionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(RegionKind::Block),
            "fs" => Ok(RegionKind::Fs),
            "memory" => Ok(RegionKind::Memory),
            other => Err(format!("unknown region kind {other:?}; use block, fs or memory")),
        }
    }
}

/// `count` pages starting at absolute pool page `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Extent {
    pub start: u64,
    pub count: u64,
}

impl Extent {
    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.start + self.count
    }
}

/// A region's persistent record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEntry {
    pub id: u64,
    pub name: String,
    pub kind: RegionKind,
    pub created_unix: u64,
    pub extents: Vec<Extent>,
    pub attrs: BTreeMap<String, String>,
}

impl RegionEntry {
    /// Pages owned.
    pub fn pages(&self) -> u64 {
        self.extents.iter().map(|e| e.count).sum()
    }

    /// Encoded length in bytes.
    #[cfg(test)]
    pub fn encoded_len(&self) -> usize {
        let attrs = self.attrs_json().len();
        (HEADER + self.name.len() + attrs).next_multiple_of(8) + 16 * self.extents.len()
    }

    fn attrs_json(&self) -> String {
        if self.attrs.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&self.attrs).expect("string map serializes")
        }
    }

    /// Append the on-media form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let attrs = self.attrs_json();
        let head = RawEntry {
            id: self.id.into(),
            pages: self.pages().into(),
            created_unix: self.created_unix.into(),
            kind: self.kind.code(),
            name_len: self.name.len() as u8,
            attr_len: (attrs.len() as u16).into(),
            extent_count: (self.extents.len() as u32).into(),
        };
        let start = out.len();
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(attrs.as_bytes());
        out.resize(start + (out.len() - start).next_multiple_of(8), 0);
        for e in &self.extents {
            out.extend_from_slice(
                RawExtent { start: e.start.into(), count: e.count.into() }.as_bytes(),
            );
        }
    }

    /// Decode one entry from the front of `bytes`; returns it and its length.
    /// Every length is bounded before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<(RegionEntry, usize), String> {
        let (head, _) = RawEntry::read_from_prefix(bytes)
            .map_err(|_| "a region entry is cut short".to_string())?;
        let kind = RegionKind::from_code(head.kind).ok_or_else(|| {
            format!("region {} has unknown kind code {}", head.id.get(), head.kind)
        })?;
        let (name_len, attr_len) = (head.name_len as usize, head.attr_len.get() as usize);
        let extent_count = head.extent_count.get() as usize;
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(format!("region {} has a name of {name_len} bytes", head.id.get()));
        }
        if attr_len > MAX_ATTR_BYTES || extent_count > MAX_EXTENTS {
            return Err(format!("region {} has oversized attributes or extents", head.id.get()));
        }
        let fixed = (HEADER + name_len + attr_len).next_multiple_of(8);
        let total = fixed + 16 * extent_count;
        if bytes.len() < total {
            return Err(format!("region {} entry is cut short", head.id.get()));
        }
        let name = std::str::from_utf8(&bytes[HEADER..HEADER + name_len])
            .map_err(|_| format!("region {} has a name that is not UTF-8", head.id.get()))?
            .to_string();
        let attr_bytes = &bytes[HEADER + name_len..HEADER + name_len + attr_len];
        let attrs = if attr_bytes.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_slice(attr_bytes)
                .map_err(|e| format!("region {name:?} has unreadable attributes ({e})"))?
        };
        let extents = bytes[fixed..total]
            .chunks_exact(16)
            .map(|c| {
                let raw = RawExtent::read_from_bytes(c).expect("16-byte chunk");
                Extent { start: raw.start.get(), count: raw.count.get() }
            })
            .collect();
        let entry = RegionEntry {
            id: head.id.get(),
            name,
            kind,
            created_unix: head.created_unix.get(),
            extents,
            attrs,
        };
        if entry.extents.iter().try_fold(0u64, |acc, e| acc.checked_add(e.count)).is_none() {
            return Err(format!("region {:?} has extents whose sizes overflow", entry.name));
        }
        if entry.pages() != head.pages.get() {
            return Err(format!(
                "region {:?} records {} pages but its extents hold {}",
                entry.name,
                head.pages.get(),
                entry.pages()
            ));
        }
        Ok((entry, total))
    }
}

const HEADER: usize = 32;

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawEntry {
    id: U64,
    pages: U64,
    created_unix: U64,
    kind: u8,
    name_len: u8,
    attr_len: U16,
    extent_count: U32,
}
const _: () = assert!(std::mem::size_of::<RawEntry>() == HEADER);

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawExtent {
    start: U64,
    count: U64,
}
const _: () = assert!(std::mem::size_of::<RawExtent>() == 16);

/// Check a region name: 1–64 bytes of letters, digits and `. _ - : @ +`,
/// not starting with `.` or `-` (names become export names, socket file
/// names and mount sources).
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a name cannot be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("a name can have at most 64 bytes");
    }
    if name.contains('\0') {
        return Err("a name cannot contain NUL");
    }
    if name.contains('/') {
        return Err("a name cannot contain '/'");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("a name cannot start with '.' or '-'");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-:@+".contains(c)) {
        return Err("use only letters, digits and . _ - : @ +");
    }
    Ok(())
}

/// Check an attribute key: 1–64 bytes of lowercase letters, digits, `. _ -`.
pub fn validate_attr_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > 64 {
        return Err("a key has 1 to 64 bytes");
    }
    if !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)) {
        return Err("use only lowercase letters, digits and . _ - in keys");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RegionEntry {
        RegionEntry {
            id: 42,
            name: "vm1-disk".into(),
            kind: RegionKind::Block,
            created_unix: 1_700_000_000,
            extents: vec![Extent { start: 100, count: 3 }, Extent { start: 200, count: 1 }],
            attrs: [("quota".to_string(), "12".to_string())].into(),
        }
    }

    #[test]
    fn region_entry_round_trips() {
        let mut buf = Vec::new();
        entry().encode_into(&mut buf);
        assert_eq!(buf.len(), entry().encoded_len());
        assert_eq!(buf.len() % 8, 0);
        let (back, len) = RegionEntry::decode(&buf).unwrap();
        assert_eq!(back, entry());
        assert_eq!(len, buf.len());
    }

    #[test]
    fn truncated_entry_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        entry().encode_into(&mut buf);
        for cut in 0..buf.len() {
            assert!(RegionEntry::decode(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        assert_eq!(validate_name(""), Err("a name cannot be empty"));
        assert_eq!(validate_name(&"a".repeat(65)), Err("a name can have at most 64 bytes"));
        assert_eq!(validate_name("a/b"), Err("a name cannot contain '/'"));
        assert_eq!(validate_name("a\0b"), Err("a name cannot contain NUL"));
        assert_eq!(validate_name(".."), Err("a name cannot start with '.' or '-'"));
        assert_eq!(validate_name("a b"), Err("use only letters, digits and . _ - : @ +"));
        assert!(validate_name("vm1.disk-0:a@b+c").is_ok());
    }
}
