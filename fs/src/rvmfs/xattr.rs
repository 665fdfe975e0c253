//! Extended attributes: one page per inode, packed name/value records.
//!
//! Small and bounded, as ext4's in-inode/one-block xattrs: all of an inode's
//! attributes share one 4 KiB page, so a set that does not fit is `ENOSPC`.
//! Names are at most 255 bytes (`ERANGE` beyond, as Linux), values at most
//! 4 KiB. The page is allocated at the first set and freed when the last
//! attribute is removed.
//!
//! ```text
//! 0 magic u16 | 2 count u16 | 4 bytes used after header u16 | 6 reserved u16
//! record: 0 name len u8 | 1 reserved u8 | 2 value len u16 | 4 name | value
//! ```

use crate::{PageRange, PageRef, PageStore, Transaction, PAGE_SIZE};

use super::error::{posix, FsError, FsResult};
use super::page_map::alloc_page;

const MAGIC: u16 = 0xA77E;
const HEADER: usize = 8;
const RECORD_HEADER: usize = 4;
/// Longest attribute name.
pub const XATTR_NAME_MAX: usize = 255;

/// An inode's attributes, in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XattrSet {
    /// `(name, value)` pairs.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl XattrSet {
    fn encoded_len(&self) -> usize {
        HEADER + self.entries.iter().map(|(n, v)| RECORD_HEADER + n.len() + v.len()).sum::<usize>()
    }

    /// The value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// Sets `name`, honouring `XATTR_CREATE` / `XATTR_REPLACE` in `flags`.
    pub fn set(&mut self, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        check_name(name)?;
        if value.len() > PAGE_SIZE {
            return Err(posix(libc::E2BIG));
        }
        let at = self.entries.iter().position(|(n, _)| n == name);
        match at {
            Some(_) if flags & libc::XATTR_CREATE != 0 => return Err(posix(libc::EEXIST)),
            None if flags & libc::XATTR_REPLACE != 0 => return Err(posix(libc::ENODATA)),
            _ => {}
        }
        let mut next = self.clone();
        match at {
            Some(i) => next.entries[i].1 = value.to_vec(),
            None => next.entries.push((name.to_vec(), value.to_vec())),
        }
        if next.encoded_len() > PAGE_SIZE {
            return Err(posix(libc::ENOSPC));
        }
        *self = next;
        Ok(())
    }

    /// Removes `name`; `ENODATA` if absent.
    pub fn remove(&mut self, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let at = self.entries.iter().position(|(n, _)| n == name).ok_or(posix(libc::ENODATA))?;
        self.entries.remove(at);
        Ok(())
    }

    /// The NUL-terminated list of names, as `listxattr` returns it.
    pub fn names(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, _) in &self.entries {
            out.extend_from_slice(name);
            out.push(0);
        }
        out
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&((self.encoded_len() - HEADER) as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        for (name, value) in &self.entries {
            out.push(name.len() as u8);
            out.push(0);
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(value);
        }
        out
    }

    fn decode(bytes: &[u8], page: u64) -> FsResult<XattrSet> {
        let corrupt = |reason: String| FsError::corrupt("xattr page", page, reason);
        let half = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
        if half(0) != usize::from(MAGIC) {
            return Err(corrupt(format!("bad magic {:#06x}", half(0))));
        }
        let (count, used) = (half(2), half(4));
        if HEADER + used > bytes.len() {
            return Err(corrupt(format!("{used} bytes used")));
        }
        let end = HEADER + used;
        let mut entries = Vec::with_capacity(count.min(used / RECORD_HEADER));
        let mut at = HEADER;
        for _ in 0..count {
            if at + RECORD_HEADER > end {
                return Err(corrupt("record runs past the page".into()));
            }
            let (name_len, value_len) = (usize::from(bytes[at]), half(at + 2));
            let start = at + RECORD_HEADER;
            if name_len == 0 || start + name_len + value_len > end {
                return Err(corrupt(format!("record of {name_len} + {value_len} bytes")));
            }
            let name = bytes[start..start + name_len].to_vec();
            let value = bytes[start + name_len..start + name_len + value_len].to_vec();
            entries.push((name, value));
            at = start + name_len + value_len;
        }
        Ok(XattrSet { entries })
    }
}

/// Checks an attribute name: length and a namespace Linux knows.
pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(posix(libc::ERANGE));
    }
    let known = [&b"user."[..], b"trusted.", b"security."];
    if known.iter().any(|prefix| name.starts_with(prefix) && name.len() > prefix.len()) {
        Ok(())
    } else {
        Err(posix(libc::EOPNOTSUPP))
    }
}

/// Reads the attributes stored in `page` (none when `page` is 0).
pub fn load<S: PageStore>(tx: &Transaction<S>, page: u64) -> FsResult<XattrSet> {
    if page == 0 {
        return Ok(XattrSet::default());
    }
    let mut bytes = vec![0u8; PAGE_SIZE];
    tx.read(PageRef::page_start(page), &mut bytes)?;
    XattrSet::decode(&bytes, page)
}

/// Stores `set`; returns the page now holding it (0 when empty).
pub fn store<S: PageStore>(tx: &mut Transaction<S>, page: u64, set: &XattrSet) -> FsResult<u64> {
    if set.entries.is_empty() {
        if page != 0 {
            tx.free_pages(PageRange { start: page, count: 1 })?;
        }
        return Ok(0);
    }
    let page = if page == 0 { alloc_page(tx)? } else { page };
    tx.write(PageRef::page_start(page), &set.encode())?;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_replace_flags_follow_linux() {
        let mut set = XattrSet::default();
        assert_eq!(
            set.set(b"user.a", b"1", libc::XATTR_REPLACE).unwrap_err().errno(),
            libc::ENODATA
        );
        set.set(b"user.a", b"1", libc::XATTR_CREATE).unwrap();
        assert_eq!(set.set(b"user.a", b"2", libc::XATTR_CREATE).unwrap_err().errno(), libc::EEXIST);
        set.set(b"user.a", b"22", libc::XATTR_REPLACE).unwrap();
        assert_eq!(set.get(b"user.a"), Some(&b"22"[..]));
        assert_eq!(set.names(), b"user.a\0");
        assert_eq!(set.remove(b"user.b").unwrap_err().errno(), libc::ENODATA);
    }

    #[test]
    fn oversized_and_badly_named_attributes_are_refused() {
        let mut set = XattrSet::default();
        let long = vec![b'x'; 300];
        assert_eq!(set.set(&long, b"", 0).unwrap_err().errno(), libc::ERANGE);
        assert_eq!(set.set(b"other.a", b"", 0).unwrap_err().errno(), libc::EOPNOTSUPP);
        assert_eq!(set.set(b"user.big", &[0; 5000], 0).unwrap_err().errno(), libc::E2BIG);
        set.set(b"user.a", &[1; 3000], 0).unwrap();
        assert_eq!(set.set(b"user.b", &[2; 3000], 0).unwrap_err().errno(), libc::ENOSPC);
        assert_eq!(set.entries.len(), 1, "a refused set changes nothing");
    }

    #[test]
    fn a_set_survives_encode_and_decode_and_truncation_is_corruption() {
        let mut set = XattrSet::default();
        set.set(b"user.a", b"one", 0).unwrap();
        set.set(b"trusted.b", b"", 0).unwrap();
        let mut bytes = set.encode();
        bytes.resize(PAGE_SIZE, 0);
        assert_eq!(XattrSet::decode(&bytes, 4).unwrap(), set);
        bytes[4] = 0xFF;
        bytes[5] = 0x0F;
        assert!(XattrSet::decode(&bytes, 4).is_err());
    }
}
