//! Exports: the named devices an NBD server offers, and the table that the
//! handshake resolves names against.
//!
//! An export is shared by every connection attached to it; its device is the
//! one `Arc<dyn BlockDevice>`, so a flush on any connection covers writes
//! completed on all of them (the multi-conn promise). Removing an export
//! signals its connections to drain and close.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use super::proto::{
    MAX_PAYLOAD, MAX_STRING_LEN, PREFERRED_BLOCK, TX_CAN_MULTI_CONN, TX_HAS_FLAGS, TX_READ_ONLY,
    TX_SEND_DF, TX_SEND_FLUSH, TX_SEND_FUA, TX_SEND_TRIM, TX_SEND_WRITE_ZEROES,
};
use crate::device::BlockDevice;

/// One exported device.
pub(crate) struct Export {
    pub name: String,
    pub device: Arc<dyn BlockDevice>,
    pub read_only: bool,
    removed: watch::Sender<bool>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.device.size())
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Export {
    /// The transmission flags this export is offered with. `SEND_DF` needs
    /// structured replies; write features are not offered read-only.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut flags = TX_HAS_FLAGS | TX_SEND_FLUSH | TX_CAN_MULTI_CONN;
        if self.read_only {
            flags |= TX_READ_ONLY;
        } else {
            flags |= TX_SEND_FUA | TX_SEND_TRIM | TX_SEND_WRITE_ZEROES;
        }
        if structured {
            flags |= TX_SEND_DF;
        }
        flags
    }

    /// The block size advertised as preferred: the device's, when the
    /// protocol allows it (a power of two from 512 up), else 4096.
    pub fn preferred_block_size(&self) -> u32 {
        let size = self.device.block_size();
        if size.is_power_of_two() && (512..=MAX_PAYLOAD).contains(&size) {
            size
        } else {
            PREFERRED_BLOCK
        }
    }

    /// Becomes true when the export is removed.
    pub fn removed(&self) -> watch::Receiver<bool> {
        self.removed.subscribe()
    }
}

/// Why an export could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameProblem {
    Empty,
    TooLong,
    ContainsNul,
    Taken,
}

/// The exports of one server, by name.
#[derive(Debug, Default)]
pub(crate) struct ExportTable {
    exports: RwLock<BTreeMap<String, Arc<Export>>>,
}

impl ExportTable {
    pub fn add(
        &self,
        name: &str,
        device: Arc<dyn BlockDevice>,
        read_only: bool,
    ) -> Result<(), NameProblem> {
        if name.is_empty() {
            return Err(NameProblem::Empty);
        }
        if name.len() > MAX_STRING_LEN {
            return Err(NameProblem::TooLong);
        }
        if name.contains('\0') {
            return Err(NameProblem::ContainsNul);
        }
        let mut exports = self.exports.write().unwrap_or_else(PoisonError::into_inner);
        if exports.contains_key(name) {
            return Err(NameProblem::Taken);
        }
        let (removed, _) = watch::channel(false);
        let export = Export { name: name.to_owned(), device, read_only, removed };
        exports.insert(name.to_owned(), Arc::new(export));
        Ok(())
    }

    /// Remove an export and tell its connections to close; false if absent.
    pub fn remove(&self, name: &str) -> bool {
        let removed = self.exports.write().unwrap_or_else(PoisonError::into_inner).remove(name);
        match removed {
            Some(export) => {
                export.removed.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// The export a client's name refers to. The empty name is the default
    /// export, which exists when exactly one export does.
    pub fn resolve(&self, name: &str) -> Option<Arc<Export>> {
        let exports = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        if name.is_empty() && exports.len() == 1 {
            return exports.values().next().cloned();
        }
        exports.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.exports.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    fn device() -> Arc<dyn BlockDevice> {
        Arc::new(MemDevice::new(4096))
    }

    #[test]
    fn empty_name_resolves_to_the_only_export() {
        let table = ExportTable::default();
        assert!(table.resolve("").is_none());
        table.add("disk", device(), false).unwrap();
        assert_eq!(table.resolve("").unwrap().name, "disk");
        table.add("other", device(), false).unwrap();
        assert!(table.resolve("").is_none(), "two exports: no default");
        assert_eq!(table.resolve("other").unwrap().name, "other");
    }

    #[test]
    fn names_must_be_non_empty_bounded_unique() {
        let table = ExportTable::default();
        assert_eq!(table.add("", device(), false), Err(NameProblem::Empty));
        assert_eq!(table.add(&"x".repeat(4097), device(), false), Err(NameProblem::TooLong));
        assert_eq!(table.add("a\0b", device(), false), Err(NameProblem::ContainsNul));
        table.add("disk", device(), false).unwrap();
        assert_eq!(table.add("disk", device(), false), Err(NameProblem::Taken));
    }

    #[test]
    fn removing_an_export_signals_its_connections() {
        let table = ExportTable::default();
        table.add("disk", device(), false).unwrap();
        let removed = table.resolve("disk").unwrap().removed();
        assert!(!*removed.borrow());
        assert!(table.remove("disk"));
        assert!(*removed.borrow());
        assert!(!table.remove("disk"));
        assert!(table.names().is_empty());
    }

    #[test]
    fn read_only_exports_do_not_offer_write_features() {
        let table = ExportTable::default();
        table.add("ro", device(), true).unwrap();
        let flags = table.resolve("ro").unwrap().transmission_flags(false);
        assert_eq!(flags & TX_READ_ONLY, TX_READ_ONLY);
        assert_eq!(flags & (TX_SEND_TRIM | TX_SEND_FUA | TX_SEND_WRITE_ZEROES | TX_SEND_DF), 0);
    }
}
