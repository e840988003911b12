//! Peer resolution: which identities a rule's `from`/`to` list stands for, and which port
//! numbers a named port stands for.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::rc::Rc;

use moat_dataplane_common::direction;
use moat_identity::{reserved, Identity};

use crate::k8s::syntax::v4_contains;
use crate::k8s::{Peer, Rule};
use crate::world::{PodInfo, World};

/// Resolves peers against one world, caching per (policy namespace, peer).
pub struct Resolver<'a> {
    ns_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
    /// The pods resolved among (all, local or not, or those of some identities).
    pods: Vec<&'a PodInfo>,
    /// Those pods by identity.
    by_identity: BTreeMap<Identity, Vec<&'a PodInfo>>,
    /// ipcache prefixes by identity.
    prefixes: BTreeMap<Identity, Vec<(Ipv4Addr, u8)>>,
    cache: HashMap<(String, Peer), Rc<BTreeSet<Identity>>>,
}

impl<'a> Resolver<'a> {
    /// A resolver over every pod of `world`, or with `among`, over the pods (and prefixes)
    /// of those identities only: it then finds only those identities as peers.
    pub fn new(
        world: &'a World,
        ipcache: &BTreeMap<(Ipv4Addr, u8), Identity>,
        among: Option<&BTreeSet<Identity>>,
    ) -> Self {
        let mut ns_labels = BTreeMap::new();
        let mut by_identity: BTreeMap<Identity, Vec<&PodInfo>> = BTreeMap::new();
        let counts = |id: &Identity| among.is_none_or(|a| a.contains(id));
        let pods: Vec<&PodInfo> = world.pods.iter().filter(|p| counts(&p.identity)).collect();
        for &p in &pods {
            ns_labels
                .entry(p.pod.namespace.as_str())
                .or_insert_with(|| world.namespace_labels(&p.pod.namespace));
            by_identity.entry(p.identity).or_default().push(p);
        }
        let mut prefixes: BTreeMap<Identity, Vec<(Ipv4Addr, u8)>> = BTreeMap::new();
        for (&prefix, &id) in ipcache.iter().filter(|(_, id)| counts(id)) {
            prefixes.entry(id).or_default().push(prefix);
        }
        Self {
            pods,
            ns_labels,
            by_identity,
            prefixes,
            cache: HashMap::new(),
        }
    }

    /// Every identity that some pod has.
    pub fn pod_identities(&self) -> impl Iterator<Item = Identity> + '_ {
        self.by_identity.keys().copied()
    }

    /// The pods holding `id` (empty for CIDR and reserved identities).
    pub fn pods_of(&self, id: Identity) -> &[&'a PodInfo] {
        self.by_identity.get(&id).map(Vec::as_slice).unwrap_or_default()
    }

    /// Union of the identities of `peers` for a policy in namespace `ns`.
    pub fn peers(&mut self, ns: &str, peers: &[Peer]) -> BTreeSet<Identity> {
        let mut out = BTreeSet::new();
        for p in peers {
            out.extend(self.peer(ns, p).iter().copied());
        }
        out
    }

    fn peer(&mut self, ns: &str, peer: &Peer) -> Rc<BTreeSet<Identity>> {
        let key = (ns.to_string(), peer.clone());
        if let Some(hit) = self.cache.get(&key) {
            return Rc::clone(hit);
        }
        let ids = match peer {
            Peer::Pods {
                pod_selector,
                namespace_selector,
            } => self
                .pods
                .iter()
                .filter(|p| match namespace_selector {
                    None => p.pod.namespace == ns,
                    Some(sel) => self
                        .ns_labels
                        .get(p.pod.namespace.as_str())
                        .is_some_and(|labels| sel.matches(labels)),
                })
                .filter(|p| pod_selector.as_ref().is_none_or(|sel| sel.matches(&p.pod.labels)))
                .map(|p| p.identity)
                .collect(),
            Peer::IpBlock { cidr, except } => {
                // An identity is in the block when every prefix carrying it is inside the
                // cidr and outside every except (conservative for identities shared by
                // several pods).
                let inside = |p: &(Ipv4Addr, u8)| v4_contains(*cidr, *p) && !except.iter().any(|e| v4_contains(*e, *p));
                let mut ids: BTreeSet<Identity> = self
                    .prefixes
                    .iter()
                    .filter(|(_, ps)| ps.iter().all(inside))
                    .map(|(&id, _)| id)
                    .collect();
                if cidr.prefix() == 0 {
                    ids.insert(reserved::WORLD);
                }
                ids
            }
            Peer::IpBlockV6 { .. } => BTreeSet::new(),
        };
        let ids = Rc::new(ids);
        self.cache.insert(key, Rc::clone(&ids));
        ids
    }
}

/// The IPv4 ipBlock prefixes (cidr and excepts) a rule mentions.
pub fn ip_prefixes(rule: &Rule) -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    for p in rule.peers.iter().flatten() {
        if let Peer::IpBlock { cidr, except } = p {
            out.push((cidr.network(), cidr.prefix()));
            out.extend(except.iter().map(|e| (e.network(), e.prefix())));
        }
    }
    out
}

/// Port numbers of the container ports called `name` with protocol `proto` on `pods`.
pub fn named_ports<'p>(pods: impl Iterator<Item = &'p PodInfo>, name: &str, proto: u8) -> BTreeSet<u16> {
    pods.flat_map(|p| &p.pod.ports)
        .filter(|cp| cp.name == name && cp.protocol == proto)
        .map(|cp| cp.port)
        .collect()
}

/// One-line summary of a rule: `from podSelector app=web; ports TCP/80`.
pub fn summary(rule: &Rule, dir: u8) -> String {
    let word = if dir == direction::INGRESS { "from" } else { "to" };
    let peers = match &rule.peers {
        Some(ps) if !ps.is_empty() => ps
            .iter()
            .map(|p| match p {
                Peer::Pods {
                    pod_selector,
                    namespace_selector,
                } => {
                    let mut parts = Vec::new();
                    if let Some(s) = namespace_selector {
                        parts.push(format!("namespaceSelector {s}"));
                    }
                    if let Some(s) = pod_selector {
                        parts.push(format!("podSelector {s}"));
                    }
                    parts.join(" and ")
                }
                Peer::IpBlock { cidr, except } => {
                    let mut s = format!("ipBlock {cidr}");
                    if !except.is_empty() {
                        let e: Vec<String> = except.iter().map(ToString::to_string).collect();
                        s.push_str(&format!(" except {}", e.join(",")));
                    }
                    s
                }
                Peer::IpBlockV6 { cidr, .. } => format!("ipBlock {cidr} (IPv6, not enforced)"),
            })
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any peer".into(),
    };
    let ports = match &rule.ports {
        Some(ps) if !ps.is_empty() => ps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        _ => "all ports".into(),
    };
    format!("{word} {peers}; {ports}")
}
