//! The catalog: the region table in memory, rebuilt at open from the active
//! checkpoint plus the journal, and the invariant checks `pool check` runs.
//!
//! Building it costs a pass over the metadata plus a sort of all extents;
//! nothing is proportional to the pool's size.

use std::collections::BTreeMap;

use super::alloc::FreeSpace;
use super::journal::Change;
use super::region::{validate_name, Extent, RegionEntry, RegionKind};

/// Regions by id and by name, and the free space between them.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub regions: BTreeMap<u64, RegionEntry>,
    pub names: BTreeMap<String, u64>,
    pub free: FreeSpace,
    pub next_id: u64,
    pub data_start: u64,
    pub data_end: u64,
}

impl Catalog {
    /// Rebuild from a checkpoint and the journal's changes. Returns the
    /// catalog and every invariant violation found, in plain words. Free
    /// space is computed only over well-formed, non-overlapping extents.
    pub fn rebuild(
        data_start: u64,
        data_end: u64,
        next_id: u64,
        checkpoint: Vec<RegionEntry>,
        changes: Vec<Change>,
    ) -> (Catalog, Vec<String>) {
        let mut regions: BTreeMap<u64, RegionEntry> = BTreeMap::new();
        let mut problems = Vec::new();
        for entry in checkpoint {
            if regions.insert(entry.id, entry).is_some() {
                problems.push("the checkpoint lists a region id twice".to_string());
            }
        }
        let mut next_id = next_id;
        for change in changes {
            match change {
                Change::Put(entry) => {
                    next_id = next_id.max(entry.id + 1);
                    regions.insert(entry.id, entry);
                }
                Change::Delete { id } => {
                    regions.remove(&id);
                }
            }
        }
        let mut names = BTreeMap::new();
        for (id, r) in &regions {
            if *id >= next_id {
                problems.push(format!("region {:?} has id {id}, not below the next id", r.name));
                next_id = id + 1;
            }
            if let Err(why) = validate_name(&r.name) {
                problems.push(format!("region {:?} has an invalid name: {why}", r.name));
            }
            if names.insert(r.name.clone(), *id).is_some() {
                problems.push(format!("two regions are both named {:?}", r.name));
            }
            if r.kind == RegionKind::Memory && r.extents.len() > 1 {
                problems.push(format!(
                    "memory region {:?} is split into {} extents; it must be contiguous",
                    r.name,
                    r.extents.len()
                ));
            }
        }
        let owned = check_extents(&regions, data_start, data_end, &mut problems);
        let free = FreeSpace::complement(data_start, data_end, &owned);
        (Catalog { regions, names, free, next_id, data_start, data_end }, problems)
    }

    /// Apply a change that has been validated by the caller.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Put(entry) => {
                if let Some(old) = self.regions.insert(entry.id, entry.clone()) {
                    if old.name != entry.name {
                        self.names.remove(&old.name);
                    }
                }
                self.names.insert(entry.name.clone(), entry.id);
                self.next_id = self.next_id.max(entry.id + 1);
            }
            Change::Delete { id } => {
                if let Some(old) = self.regions.remove(id) {
                    self.names.remove(&old.name);
                }
            }
        }
    }

    /// The region called `name`.
    pub fn by_name(&self, name: &str) -> Option<&RegionEntry> {
        self.names.get(name).and_then(|id| self.regions.get(id))
    }

    /// Pages owned by regions.
    pub fn owned_pages(&self) -> u64 {
        self.regions.values().map(RegionEntry::pages).sum()
    }

    /// Every invariant, checked afresh; problems in plain words.
    pub fn verify(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let owned = check_extents(&self.regions, self.data_start, self.data_end, &mut problems);
        let owned_pages: u64 = owned.iter().map(|e| e.count).sum();
        let data_pages = self.data_end - self.data_start;
        if owned_pages + self.free.free_pages() != data_pages {
            problems.push(format!(
                "{} pages are owned and {} free, but the data area has {data_pages}; \
                 {} pages are leaked",
                owned_pages,
                self.free.free_pages(),
                data_pages.saturating_sub(owned_pages + self.free.free_pages())
            ));
        }
        for (name, id) in &self.names {
            if self.regions.get(id).map(|r| &r.name) != Some(name) {
                problems.push(format!("the name index points {name:?} at the wrong region"));
            }
        }
        problems
    }
}

/// Check that every extent is non-empty, inside the data area and owned by
/// one region only. Returns the sound extents sorted by start.
fn check_extents(
    regions: &BTreeMap<u64, RegionEntry>,
    data_start: u64,
    data_end: u64,
    problems: &mut Vec<String>,
) -> Vec<Extent> {
    let mut all: Vec<(Extent, &str)> = Vec::new();
    for r in regions.values() {
        if r.extents.is_empty() {
            problems.push(format!("region {:?} owns no pages", r.name));
        }
        for e in &r.extents {
            let inside = e.count > 0
                && e.start >= data_start
                && e.start.checked_add(e.count).is_some_and(|end| end <= data_end);
            if inside {
                all.push((*e, &r.name));
            } else {
                problems.push(format!(
                    "region {:?} claims pages {}..{} outside the data area {data_start}..{data_end}",
                    r.name,
                    e.start,
                    e.start.saturating_add(e.count)
                ));
            }
        }
    }
    all.sort();
    let mut sound: Vec<Extent> = Vec::with_capacity(all.len());
    let mut last_owner = "";
    for (e, owner) in all {
        match sound.last() {
            Some(prev) if prev.end() > e.start => {
                problems.push(format!(
                    "pages {}..{} are owned by both {last_owner:?} and {owner:?}",
                    e.start,
                    prev.end().min(e.end())
                ));
            }
            _ => {
                sound.push(e);
                last_owner = owner;
            }
        }
    }
    sound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, name: &str, start: u64, count: u64) -> RegionEntry {
        RegionEntry {
            id,
            name: name.into(),
            kind: RegionKind::Block,
            created_unix: 0,
            extents: vec![Extent { start, count }],
            attrs: Default::default(),
        }
    }

    #[test]
    fn rebuild_applies_the_journal_over_the_checkpoint() {
        let (cat, problems) = Catalog::rebuild(
            10,
            100,
            3,
            vec![entry(1, "a", 10, 5), entry(2, "b", 20, 5)],
            vec![Change::Delete { id: 1 }, Change::Put(entry(3, "c", 10, 2))],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cat.names.keys().collect::<Vec<_>>(), vec!["b", "c"]);
        assert_eq!(cat.free.free_pages(), 90 - 7);
        assert_eq!(cat.next_id, 4);
        assert!(cat.verify().is_empty());
    }

    #[test]
    fn doubly_owned_pages_are_reported_by_name() {
        let (_, problems) =
            Catalog::rebuild(10, 100, 9, vec![entry(1, "a", 10, 5), entry(2, "b", 12, 5)], vec![]);
        assert_eq!(problems, vec!["pages 12..15 are owned by both \"a\" and \"b\"".to_string()]);
    }

    #[test]
    fn duplicate_names_and_outside_extents_are_reported() {
        let (_, problems) = Catalog::rebuild(
            10,
            100,
            9,
            vec![entry(1, "a", 10, 5), entry(2, "a", 20, 5), entry(3, "c", 95, 10)],
            vec![],
        );
        assert!(problems.contains(&"two regions are both named \"a\"".to_string()));
        assert!(problems.iter().any(|p| p.contains("outside the data area")));
    }
}
