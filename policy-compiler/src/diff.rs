//! The map updates that turn one compiled state into another.
//!
//! The agent applies `*_upserts` before `*_deletes` (make-before-break): while a policy
//! changes, a flow allowed by both the old and the new state never sees a moment where
//! neither entry exists. Only changed entries are listed, so one edited policy costs a
//! handful of map writes rather than a rewrite of the maps.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use moat_dataplane_common::PolicyValue;
use moat_identity::Identity;

use crate::compile::{Compiled, PolicyEntryKey};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// New entries and entries whose value (action or cookie) changed.
    pub policy_upserts: Vec<(PolicyEntryKey, PolicyValue)>,
    pub policy_deletes: Vec<PolicyEntryKey>,
    pub ipcache_upserts: Vec<((Ipv4Addr, u8), Identity)>,
    pub ipcache_deletes: Vec<(Ipv4Addr, u8)>,
}

impl Diff {
    /// Number of map updates.
    #[must_use]
    pub fn len(&self) -> usize {
        self.policy_upserts.len() + self.policy_deletes.len() + self.ipcache_upserts.len() + self.ipcache_deletes.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn changes<K: Ord + Copy, V: PartialEq + Copy>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> (Vec<(K, V)>, Vec<K>) {
    let upserts = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let deletes = old.keys().filter(|k| !new.contains_key(k)).copied().collect();
    (upserts, deletes)
}

/// Only the entries that differ between `old` and `new`.
#[must_use]
pub fn diff(old: &Compiled, new: &Compiled) -> Diff {
    let (policy_upserts, policy_deletes) = changes(&old.policy, &new.policy);
    let (ipcache_upserts, ipcache_deletes) = changes(&old.ipcache, &new.ipcache);
    Diff {
        policy_upserts,
        policy_deletes,
        ipcache_upserts,
        ipcache_deletes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_dataplane_common::{PolicyKey, ACTION_ALLOW, ACTION_DENY};

    fn val(action: u32, cookie: u32) -> PolicyValue {
        PolicyValue { action, cookie }
    }

    #[test]
    fn identical_states_give_an_empty_diff() {
        let mut c = Compiled::default();
        c.policy
            .insert((40, PolicyKey::new(256, 1, 0, 0, 0)), val(ACTION_ALLOW, 1));
        c.ipcache.insert((Ipv4Addr::new(10, 0, 0, 1), 32), 256);
        let d = diff(&c, &c.clone());
        assert!(d.is_empty());
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn changed_added_and_removed_entries() {
        let a_key = (40, PolicyKey::new(256, 1, 0, 0, 0));
        let b_key = (72, PolicyKey::new(256, 1, 257, 0, 0));
        let c_key = (72, PolicyKey::new(256, 1, 258, 0, 0));
        let mut old = Compiled::default();
        old.policy.insert(a_key, val(ACTION_ALLOW, 1));
        old.policy.insert(b_key, val(ACTION_ALLOW, 16));
        old.ipcache.insert((Ipv4Addr::new(10, 0, 0, 1), 32), 256);
        let mut new = Compiled::default();
        new.policy.insert(a_key, val(ACTION_DENY, 17));
        new.policy.insert(c_key, val(ACTION_ALLOW, 16));
        new.ipcache.insert((Ipv4Addr::new(10, 0, 0, 2), 32), 256);
        let d = diff(&old, &new);
        assert_eq!(
            d.policy_upserts,
            vec![(a_key, val(ACTION_DENY, 17)), (c_key, val(ACTION_ALLOW, 16))]
        );
        assert_eq!(d.policy_deletes, vec![b_key]);
        assert_eq!(d.ipcache_upserts, vec![((Ipv4Addr::new(10, 0, 0, 2), 32), 256)]);
        assert_eq!(d.ipcache_deletes, vec![(Ipv4Addr::new(10, 0, 0, 1), 32)]);
        assert_eq!(d.len(), 5);
    }
}
