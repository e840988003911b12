//! The compiler's input: pods with their identities and addresses, namespaces, policies, the
//! node's own addresses and the enforcement mode.
//!
//! The agent builds a `World` from the cluster (or the manifest directory) and its identity
//! allocator; offline tools use [`World::from_manifests`], which numbers identities in memory.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use moat_identity::{Identity, LabelSet, FIRST_CLUSTER_IDENTITY};

use crate::k8s::{self, Manifests, Object};

/// Node-wide enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Kubernetes semantics: a pod is isolated for a direction once a policy selects it for it.
    #[default]
    Default,
    /// Every local pod is default-deny in both directions.
    Always,
    /// No enforcement at all.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub pod: k8s::Pod,
    pub identity: Identity,
    pub ipv4: Option<Ipv4Addr>,
    /// An endpoint on this node: the compiler emits entries only for local pods.
    pub local: bool,
}

#[derive(Debug, Clone, Default)]
pub struct World {
    pub mode: Mode,
    pub namespaces: BTreeMap<String, k8s::Namespace>,
    pub pods: Vec<PodInfo>,
    /// Shared: a world rebuilt for changed pods keeps the same policies.
    pub policies: std::sync::Arc<Vec<k8s::NetworkPolicy>>,
    /// The node's addresses: traffic from them carries the reserved `HOST` identity.
    pub host_ips: Vec<Ipv4Addr>,
}

impl World {
    /// The labels of namespace `name`, always including `kubernetes.io/metadata.name`
    /// (a namespace missing from `namespaces` has only that label).
    #[must_use]
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespaces.get(name).map(|n| n.labels.clone()).unwrap_or_default();
        labels.insert(k8s::NAMESPACE_NAME_LABEL.into(), name.into());
        labels
    }

    /// The pod called `namespace/name`.
    #[must_use]
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.pod.namespace == namespace && p.pod.name == name)
    }

    /// Offline world: every Pod is local, identities are numbered from 256 upward over the
    /// distinct canonical label sets in sorted order, `ipv4` is `status.podIP`. A later
    /// object with the same kind, namespace and name replaces an earlier one.
    #[must_use]
    pub fn from_manifests(m: &Manifests, mode: Mode) -> World {
        let mut namespaces = BTreeMap::new();
        let mut pods: BTreeMap<(String, String), k8s::Pod> = BTreeMap::new();
        let mut policies: BTreeMap<(String, String), k8s::NetworkPolicy> = BTreeMap::new();
        for (_, o) in &m.objects {
            match o {
                Object::Namespace(n) => {
                    namespaces.insert(n.name.clone(), n.clone());
                }
                Object::Pod(p) => {
                    pods.insert((p.namespace.clone(), p.name.clone()), p.clone());
                }
                Object::NetworkPolicy(p) => {
                    policies.insert((p.namespace.clone(), p.name.clone()), p.clone());
                }
                // Its L3/L4 meaning (ones with HTTP rules are refused when decoded).
                Object::MoatNetworkPolicy(p) => {
                    let mut np = p.policy.clone();
                    np.name = format!("{}:{}", k8s::moat_policy::KIND, np.name);
                    policies.insert((np.namespace.clone(), np.name.clone()), np);
                }
                Object::Service(_) | Object::EndpointSlice(_) | Object::Node(_) | Object::Other { .. } => {}
            }
        }
        let mut world = World {
            mode,
            namespaces,
            pods: Vec::new(),
            policies: std::sync::Arc::new(policies.into_values().collect()),
            host_ips: Vec::new(),
        };
        let sets: Vec<LabelSet> = pods.values().map(|p| world.label_set(p)).collect();
        let ids: BTreeMap<&LabelSet, Identity> = sets
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .zip(FIRST_CLUSTER_IDENTITY..)
            .collect();
        world.pods = pods
            .into_values()
            .zip(&sets)
            .map(|(pod, set)| PodInfo {
                identity: ids.get(set).copied().unwrap_or(FIRST_CLUSTER_IDENTITY),
                ipv4: pod.ip,
                local: true,
                pod,
            })
            .collect();
        world
    }

    /// The canonical label set of a pod (what its identity stands for).
    #[must_use]
    pub fn label_set(&self, pod: &k8s::Pod) -> LabelSet {
        let ns_labels = self.namespace_labels(&pod.namespace);
        LabelSet::for_pod(
            pod.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &pod.namespace,
            ns_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &pod.service_account,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests(text: &str) -> Manifests {
        let (objects, errors) = k8s::parse_documents(std::path::Path::new("t.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        Manifests {
            objects: objects.into_iter().map(|o| ("t.yaml".into(), o)).collect(),
            errors: vec![],
        }
    }

    const PODS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web, pod-template-hash: abc}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: web}}
spec: {containers: [{name: c}]}
";

    #[test]
    fn offline_identities_are_numbered_from_256() {
        let w = World::from_manifests(&manifests(PODS), Mode::Default);
        let names: Vec<(&str, &str, u32)> = w
            .pods
            .iter()
            .map(|p| (p.pod.namespace.as_str(), p.pod.name.as_str(), p.identity))
            .collect();
        // x/a and x/b share labels (pod-template-hash is volatile). Both sets start with
        // k8s:app=web; next comes k8s:io.kubernetes.pod.namespace, where "x" < "y".
        assert_eq!(names, vec![("x", "a", 256), ("x", "b", 256), ("y", "c", 257)]);
        assert!(w.pods.iter().all(|p| p.local));
        assert_eq!(w.pods[0].ipv4, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(w.pods[2].ipv4, None);
    }

    #[test]
    fn missing_namespace_has_only_the_name_label() {
        let w = World::from_manifests(&manifests(PODS), Mode::Default);
        assert_eq!(
            w.namespace_labels("y"),
            BTreeMap::from([("kubernetes.io/metadata.name".to_string(), "y".to_string())])
        );
        assert_eq!(w.namespace_labels("x").get("team").map(String::as_str), Some("a"));
    }
}
