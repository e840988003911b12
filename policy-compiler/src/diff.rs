//! The map updates that turn one compiled state into another, and the order that
//! applies them without ever opening a window (`Plan`).
//!
//! Only changed entries are listed, so one edited policy costs a handful of map writes
//! rather than a rewrite of the maps.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use moat_dataplane_common::{PolicyValue, ACTION_ALLOW};
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

/// One policy map write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Upsert(PolicyEntryKey, PolicyValue),
    Delete(PolicyEntryKey),
}

/// The policy map writes of a diff in a fail-closed order, and the most entries the map
/// holds at any moment while they are applied:
/// 1. deny entries (a pod's "isolated" entry, `except` blocks) are written first, so a
///    pod that becomes isolated is never left open, even when a later write fails;
/// 2. allow entries that go are removed (a narrowing: closing early is safe);
/// 3. new allow entries are written;
/// 4. deny entries that go are removed last: that is the only step that opens.
///
/// ipcache updates go between 3 and 4 (`Plan::before_deny_deletes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Index in `steps` where the deny deletes start.
    pub before_deny_deletes: usize,
    /// The largest number of policy entries the map holds during the plan.
    pub peak_entries: usize,
}

/// Orders the policy writes of `d` (computed from `old`) as `Plan` describes.
#[must_use]
pub fn plan(old: &Compiled, d: &Diff) -> Plan {
    let is_allow = |v: &PolicyValue| v.action == ACTION_ALLOW;
    let old_allows = |k: &PolicyEntryKey| old.policy.get(k).is_some_and(is_allow);
    let mut steps = Vec::with_capacity(d.policy_upserts.len() + d.policy_deletes.len());
    let (mut len, mut peak) = (old.policy.len(), old.policy.len());
    let add = |steps: &mut Vec<Step>, step: Step, len: &mut usize, peak: &mut usize| {
        match step {
            Step::Upsert(k, _) if !old.policy.contains_key(&k) => *len += 1,
            Step::Delete(_) => *len -= 1,
            Step::Upsert(..) => {}
        }
        *peak = (*peak).max(*len);
        steps.push(step);
    };
    for (k, v) in d.policy_upserts.iter().filter(|(_, v)| !is_allow(v)) {
        add(&mut steps, Step::Upsert(*k, *v), &mut len, &mut peak);
    }
    for k in d.policy_deletes.iter().filter(|k| old_allows(k)) {
        add(&mut steps, Step::Delete(*k), &mut len, &mut peak);
    }
    // Longest prefixes first: of two new allow entries, the more specific lands first.
    let mut allows: Vec<_> = d.policy_upserts.iter().filter(|(_, v)| is_allow(v)).collect();
    allows.sort_by_key(|e| std::cmp::Reverse(e.0 .0));
    for (k, v) in allows {
        add(&mut steps, Step::Upsert(*k, *v), &mut len, &mut peak);
    }
    let before_deny_deletes = steps.len();
    for k in d.policy_deletes.iter().filter(|k| !old_allows(k)) {
        add(&mut steps, Step::Delete(*k), &mut len, &mut peak);
    }
    Plan {
        steps,
        before_deny_deletes,
        peak_entries: peak,
    }
}

/// The most ipcache entries the map holds while `d` is applied (upserts before deletes).
#[must_use]
pub fn peak_ipcache_entries(old: &Compiled, d: &Diff) -> usize {
    old.ipcache.len()
        + d.ipcache_upserts
            .iter()
            .filter(|(k, _)| !old.ipcache.contains_key(k))
            .count()
}

/// Whether applying `d` on top of `old` may deny a flow that `old` allowed: only then must
/// established flows re-check their cached verdicts (the datapath's policy revision is
/// bumped). Widening changes and new pods do not touch established flows, so pod churn
/// elsewhere does not make every flow on the node re-verify.
///
/// Narrowing, conservatively:
/// - a policy entry removed or changed that allowed something (a deny removed only widens);
/// - a deny entry added or changed whose subject identity was in use (some address had it
///   in the old ipcache): a subject no address had has no established flows;
/// - an ipcache entry removed or re-pointed (an address changes identity), or a new prefix
///   shorter than /32 (CIDR identities re-classify addresses that flows already use).
///
/// A new /32 (a new pod's address) only names an address that no established flow used
/// with another identity: its previous owner's removal already counted.
#[must_use]
pub fn narrows(old: &Compiled, d: &Diff) -> bool {
    let in_use: std::collections::BTreeSet<Identity> = old.ipcache.values().copied().collect();
    let was_allow = |k: &PolicyEntryKey| old.policy.get(k).is_some_and(|v| v.action == ACTION_ALLOW);
    d.policy_deletes.iter().any(was_allow)
        || d.policy_upserts
            .iter()
            .any(|(k, v)| v.action != ACTION_ALLOW && (in_use.contains(&k.1.subject) || was_allow(k)))
        || !d.ipcache_deletes.is_empty()
        || d.ipcache_upserts
            .iter()
            .any(|(k, _)| old.ipcache.contains_key(k) || k.1 < 32)
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

    #[test]
    fn the_plan_isolates_first_opens_last_and_counts_the_peak() {
        let val = |action| val(action, 0);
        let isolate_new = (40, PolicyKey::new(300, 1, 0, 0, 0));
        let allow_new = (96, PolicyKey::new(300, 1, 5, 6, 80));
        let allow_gone = (96, PolicyKey::new(256, 1, 5, 6, 80));
        let isolate_gone = (40, PolicyKey::new(256, 1, 0, 0, 0));
        let mut old = Compiled::default();
        old.policy.insert(allow_gone, val(ACTION_ALLOW));
        old.policy.insert(isolate_gone, val(ACTION_DENY));
        let mut new = Compiled::default();
        new.policy.insert(allow_new, val(ACTION_ALLOW));
        new.policy.insert(isolate_new, val(ACTION_DENY));
        let p = plan(&old, &diff(&old, &new));
        assert_eq!(
            p.steps,
            vec![
                Step::Upsert(isolate_new, val(ACTION_DENY)),
                Step::Delete(allow_gone),
                Step::Upsert(allow_new, val(ACTION_ALLOW)),
                Step::Delete(isolate_gone),
            ]
        );
        assert_eq!(p.before_deny_deletes, 3);
        // 2 entries, +1 (isolate), -1 (allow gone), +1 (allow new) = 3 at most.
        assert_eq!(p.peak_entries, 3);
    }

    #[test]
    fn only_narrowing_changes_re_check_established_flows() {
        let pod = |n: u8| (Ipv4Addr::new(10, 0, 0, n), 32);
        let allow_a = (40, PolicyKey::new(256, 1, 0, 0, 0));
        let mut old = Compiled::default();
        old.ipcache.insert(pod(1), 256);
        old.policy.insert(allow_a, val(ACTION_ALLOW, 1));
        let narrows_to = |new: &Compiled| narrows(&old, &diff(&old, new));

        // A new pod with an existing identity, and a new identity's own entries
        // (isolation deny included): nothing established can be affected.
        let mut new = old.clone();
        new.ipcache.insert(pod(2), 256);
        new.ipcache.insert(pod(3), 300);
        new.policy
            .insert((40, PolicyKey::new(300, 1, 0, 0, 0)), val(ACTION_DENY, 2));
        new.policy
            .insert((72, PolicyKey::new(256, 1, 300, 0, 0)), val(ACTION_ALLOW, 3));
        assert!(!narrows_to(&new), "churn of new pods");
        // A cookie change of an allow, a removed deny: no.
        let mut new = old.clone();
        new.policy.insert(allow_a, val(ACTION_ALLOW, 9));
        assert!(!narrows_to(&new));

        // An allow removed, or turned into a deny: yes.
        let mut new = old.clone();
        new.policy.remove(&allow_a);
        assert!(narrows_to(&new));
        let mut new = old.clone();
        new.policy.insert(allow_a, val(ACTION_DENY, 1));
        assert!(narrows_to(&new));
        // A deny for an identity in use (a pod becomes isolated): yes.
        let mut new = old.clone();
        new.policy
            .insert((40, PolicyKey::new(256, 2, 0, 0, 0)), val(ACTION_DENY, 4));
        assert!(narrows_to(&new));
        // A pod removed, an address re-pointed, a new CIDR identity: yes.
        let mut new = old.clone();
        new.ipcache.remove(&pod(1));
        assert!(narrows_to(&new));
        let mut new = old.clone();
        new.ipcache.insert(pod(1), 257);
        assert!(narrows_to(&new));
        let mut new = old.clone();
        new.ipcache.insert((Ipv4Addr::new(192, 168, 0, 0), 16), 0x0100_0001);
        assert!(narrows_to(&new));
    }
}
