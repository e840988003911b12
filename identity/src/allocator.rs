//! The node-local identity allocator.
//!
//! The same label set always gets the same number: numbers are remembered (the agent
//! persists this struct as JSON) and a label set that stops being used keeps its number
//! for a grace period, so a pod that is recreated or relabelled back within it — or an
//! agent restart — does not churn identities and policy entries. After the grace period
//! the number is released and may later be reused for another label set.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Identity, LabelSet, FIRST_CLUSTER_IDENTITY, LOCAL_SCOPE};

/// How long an unused identity keeps its number.
pub const DEFAULT_GRACE_SECS: u64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    labels: LabelSet,
    /// Unix seconds since the label set is unused; `None` while in use.
    unused_since: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocator {
    by_id: BTreeMap<Identity, Entry>,
    grace_secs: u64,
    #[serde(skip)]
    by_labels: BTreeMap<LabelSet, Identity>,
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new(DEFAULT_GRACE_SECS)
    }
}

impl Allocator {
    #[must_use]
    pub fn new(grace_secs: u64) -> Self {
        Self {
            by_id: BTreeMap::new(),
            grace_secs,
            by_labels: BTreeMap::new(),
        }
    }

    /// Rebuilds the reverse index after deserializing.
    #[must_use]
    pub fn restored(mut self) -> Self {
        self.by_labels = self.by_id.iter().map(|(id, e)| (e.labels.clone(), *id)).collect();
        self
    }

    pub fn set_grace_secs(&mut self, secs: u64) {
        self.grace_secs = secs;
    }

    /// The identity for `labels`, allocating the lowest free cluster number if new.
    /// Marks it in use.
    pub fn allocate(&mut self, labels: &LabelSet) -> Identity {
        if let Some(&id) = self.by_labels.get(labels) {
            if let Some(e) = self.by_id.get_mut(&id) {
                e.unused_since = None;
            }
            return id;
        }
        let mut id = FIRST_CLUSTER_IDENTITY;
        for &used in self.by_id.keys() {
            if used != id {
                break;
            }
            id += 1;
        }
        debug_assert!(id < LOCAL_SCOPE);
        self.by_id.insert(
            id,
            Entry {
                labels: labels.clone(),
                unused_since: None,
            },
        );
        self.by_labels.insert(labels.clone(), id);
        id
    }

    #[must_use]
    pub fn lookup(&self, labels: &LabelSet) -> Option<Identity> {
        self.by_labels.get(labels).copied()
    }

    #[must_use]
    pub fn labels(&self, id: Identity) -> Option<&LabelSet> {
        self.by_id.get(&id).map(|e| &e.labels)
    }

    /// Declares which identities are in use now: the others start (or continue) their
    /// grace period; those whose grace period is over are released and returned.
    pub fn sweep(&mut self, in_use: &BTreeSet<Identity>, now_unix: u64) -> Vec<Identity> {
        let mut released = Vec::new();
        for (id, e) in &mut self.by_id {
            if in_use.contains(id) {
                e.unused_since = None;
                continue;
            }
            let since = *e.unused_since.get_or_insert(now_unix);
            if now_unix.saturating_sub(since) >= self.grace_secs {
                released.push(*id);
            }
        }
        for id in &released {
            if let Some(e) = self.by_id.remove(id) {
                self.by_labels.remove(&e.labels);
            }
        }
        released
    }

    /// Every allocated identity with its labels and whether it is in use.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &LabelSet, bool)> {
        self.by_id
            .iter()
            .map(|(id, e)| (*id, &e.labels, e.unused_since.is_none()))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(app: &str) -> LabelSet {
        LabelSet::for_pod([("app", app)], "x", [], "")
    }

    #[test]
    fn same_labels_same_identity_and_numbers_from_256() {
        let mut a = Allocator::default();
        assert_eq!(a.allocate(&set("web")), 256);
        assert_eq!(a.allocate(&set("db")), 257);
        assert_eq!(a.allocate(&set("web")), 256);
        assert_eq!(a.lookup(&set("db")), Some(257));
        assert_eq!(a.labels(257), Some(&set("db")));
    }

    #[test]
    fn survives_a_restart_through_json() {
        let mut a = Allocator::default();
        a.allocate(&set("web"));
        a.allocate(&set("db"));
        let json = serde_json::to_string(&a).unwrap();
        let mut b: Allocator = serde_json::from_str::<Allocator>(&json).unwrap().restored();
        assert_eq!(b.allocate(&set("db")), 257);
        assert_eq!(b.allocate(&set("api")), 258);
    }

    #[test]
    fn unused_identities_are_released_after_the_grace_period() {
        let mut a = Allocator::new(60);
        let web = a.allocate(&set("web"));
        let db = a.allocate(&set("db"));
        assert!(a.sweep(&BTreeSet::from([web]), 1000).is_empty(), "grace starts");
        assert!(a.sweep(&BTreeSet::from([web]), 1059).is_empty(), "still in grace");
        // Reused within the grace period: keeps its number.
        assert_eq!(a.allocate(&set("db")), db);
        assert!(a.sweep(&BTreeSet::from([web]), 1100).is_empty(), "grace restarts");
        assert_eq!(a.sweep(&BTreeSet::from([web]), 1160), vec![db]);
        assert_eq!(a.lookup(&set("db")), None);
        // The freed number is handed out again.
        assert_eq!(a.allocate(&set("api")), db);
    }
}
