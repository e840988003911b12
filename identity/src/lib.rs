//! Security identities: one number per canonical label set.
//!
//! A pod's identity is derived from its labels, its namespace's name and labels, and
//! its service account; labels that change on every rollout (`pod-template-hash`, …)
//! are left out so a rollout keeps the identity. Reserved identities sit below 256,
//! cluster identities start at 256, node-local CIDR identities carry a high bit.
//! `allocator` hands out numbers on a single node (persisted by the agent); cluster
//! backends (CRD, etcd) plug in behind the same calls. This crate knows nothing about BPF.
pub mod allocator;

pub use allocator::Allocator;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A numeric security identity as stored in BPF maps.
pub type Identity = u32;

/// Reserved identities (same numbers as Cilium, so operators can read them).
pub mod reserved {
    use super::Identity;
    pub const HOST: Identity = 1;
    pub const WORLD: Identity = 2;
    pub const UNMANAGED: Identity = 3;
    pub const HEALTH: Identity = 4;
    pub const INIT: Identity = 5;
    pub const REMOTE_NODE: Identity = 6;
    pub const KUBE_APISERVER: Identity = 7;
}

/// First identity handed out for a label set.
pub const FIRST_CLUSTER_IDENTITY: Identity = 256;
/// Node-local identities (CIDR identities for ipBlock peers) have this bit set.
pub const LOCAL_SCOPE: Identity = 1 << 24;

/// Human name of a reserved identity.
#[must_use]
pub fn reserved_name(id: Identity) -> Option<&'static str> {
    Some(match id {
        reserved::HOST => "reserved:host",
        reserved::WORLD => "reserved:world",
        reserved::UNMANAGED => "reserved:unmanaged",
        reserved::HEALTH => "reserved:health",
        reserved::INIT => "reserved:init",
        reserved::REMOTE_NODE => "reserved:remote-node",
        reserved::KUBE_APISERVER => "reserved:kube-apiserver",
        _ => return None,
    })
}

/// Labels that differ between replicas or rollouts of the same workload.
pub const VOLATILE: [&str; 4] = [
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "pod-template-generation",
];

/// The canonical label set an identity stands for (sorted, prefixed by source).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct LabelSet(BTreeMap<String, String>);

impl LabelSet {
    /// Builds the canonical set for a pod.
    #[must_use]
    pub fn for_pod<'a>(
        pod_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        namespace: &str,
        namespace_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        service_account: &str,
    ) -> Self {
        let mut m = BTreeMap::new();
        for (k, v) in pod_labels {
            if !VOLATILE.contains(&k) {
                m.insert(format!("k8s:{k}"), v.to_string());
            }
        }
        for (k, v) in namespace_labels {
            m.insert(format!("k8s:ns-labels:{k}"), v.to_string());
        }
        m.insert("k8s:io.kubernetes.pod.namespace".into(), namespace.to_string());
        if !service_account.is_empty() {
            m.insert(
                "k8s:io.kubernetes.pod.serviceaccount".into(),
                service_account.to_string(),
            );
        }
        Self(m)
    }

    /// A set for a reserved identity (`reserved:host`, …).
    #[must_use]
    pub fn reserved(name: &str) -> Self {
        Self(BTreeMap::from([(name.to_string(), String::new())]))
    }

    /// Every `key=value`, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_set_ignores_volatile_labels_and_order() {
        let a = LabelSet::for_pod(
            [("app", "web"), ("pod-template-hash", "abc")],
            "shop",
            [("team", "x")],
            "default",
        );
        let b = LabelSet::for_pod(
            [("pod-template-hash", "zzz"), ("app", "web")],
            "shop",
            [("team", "x")],
            "default",
        );
        assert_eq!(a, b);
        assert_eq!(a.get("k8s:app"), Some("web"));
        assert_eq!(a.get("k8s:io.kubernetes.pod.namespace"), Some("shop"));
        assert_eq!(a.get("k8s:ns-labels:team"), Some("x"));
        assert!(a.to_string().contains("k8s:app=web"));
    }

    #[test]
    fn namespace_is_part_of_the_identity() {
        let a = LabelSet::for_pod([("app", "web")], "shop", [], "");
        let b = LabelSet::for_pod([("app", "web")], "billing", [], "");
        assert_ne!(a, b);
    }

    #[test]
    fn reserved_ids_are_below_cluster_range() {
        for id in 1..=7 {
            assert!(reserved_name(id).is_some());
            assert!(id < FIRST_CLUSTER_IDENTITY);
        }
        assert_eq!(reserved_name(FIRST_CLUSTER_IDENTITY), None);
    }
}
