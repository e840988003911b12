//! NetworkPolicy v1 → policy-map and ipcache entries, in exactly the encoding described on
//! `moat_dataplane_common::PolicyKey`.
//!
//! For every local subject identity and direction there is one prefix-40 entry (ALLOW when
//! no policy isolates the subject, DENY naming the isolating policy otherwise). Each rule of
//! each isolating policy adds ALLOW entries at prefix 72 (peer), 80 (peer + protocol) or
//! 81..=96 (peer + protocol + port block). The union of all rules is the map; when two rules
//! produce the same key the lowest cookie wins. Cookies and CIDR identities are kept in the
//! [`Compiler`] so that a recompile gives unchanged rules unchanged entries.
//!
//! Subjects are identities, not pods: when several local pods share an identity, a policy
//! selects the identity if it selects any of them (pods of one identity have the same labels
//! except the volatile ones `identity` leaves out, such as `pod-template-hash`). The cookie and
//! CIDR-identity tables only grow, so that a policy removed and re-added keeps its numbers.
mod peers;
pub mod ports;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use moat_dataplane_common::{
    direction, PolicyKey, PolicyValue, ACTION_ALLOW, ACTION_DENY, ANY_PEER, PREFIX_FULL, PREFIX_PEER, PREFIX_PROTO,
    PREFIX_SUBJECT_DIR,
};
use moat_identity::{reserved, Identity, LOCAL_SCOPE};

use crate::k8s::{NetworkPolicy, PortRef, Rule};
use crate::world::{Mode, PodInfo, World};

/// Reserved cookies (policy cookies start at [`cookie::FIRST_POLICY`]).
pub mod cookie {
    /// No cookie.
    pub const NONE: u32 = 0;
    /// No policy selects the pod for this direction.
    pub const NOT_ISOLATED: u32 = 1;
    /// Enforcement mode `always`: default deny.
    pub const ALWAYS_MODE: u32 = 2;
    /// Traffic from the node to its local pods is always allowed.
    pub const HOST_ALLOWED: u32 = 3;
    /// Enforcement mode `never`.
    pub const NEVER_MODE: u32 = 4;
    /// First cookie handed to a policy rule.
    pub const FIRST_POLICY: u32 = 16;

    /// What a reserved cookie means.
    #[must_use]
    pub fn reserved_description(c: u32) -> Option<&'static str> {
        Some(match c {
            NONE => "no cookie",
            NOT_ISOLATED => "no policy selects the pod for this direction",
            ALWAYS_MODE => "enforcement mode always: default deny",
            HOST_ALLOWED => "traffic from the node to its local pods is always allowed",
            NEVER_MODE => "enforcement mode never: no enforcement",
            _ => return None,
        })
    }
}

/// `RuleRef::index` of the entry that says a policy isolates the subject.
pub const ISOLATION_INDEX: usize = usize::MAX;

/// `ingress` / `egress`.
#[must_use]
pub fn direction_name(d: u8) -> &'static str {
    match d {
        direction::INGRESS => "ingress",
        direction::EGRESS => "egress",
        _ => "unknown-direction",
    }
}

/// The policy rule behind a cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub namespace: String,
    pub policy: String,
    pub direction: u8,
    /// Index in `spec.ingress` / `spec.egress`, or [`ISOLATION_INDEX`].
    pub index: usize,
    /// Human summary of the rule (peers and ports) or of the isolation.
    pub summary: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = direction_name(self.direction);
        if self.index == ISOLATION_INDEX {
            write!(f, "{}/{} isolates this pod for {dir}", self.namespace, self.policy)
        } else {
            write!(f, "{}/{} {dir} rule {}", self.namespace, self.policy, self.index)
        }
    }
}

/// Policy-map key as stored in the LPM trie: `(prefix length, key)`.
pub type PolicyEntryKey = (u32, PolicyKey);

/// The compiler's output: the desired content of both maps and the cookie table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// Prefix → identity: pod /32s, node /32s (`HOST`), ipBlock prefixes (CIDR identities).
    pub ipcache: BTreeMap<(Ipv4Addr, u8), Identity>,
    /// Shared: it depends on the policies only, so a recompute for changed pods keeps it.
    pub rules: Arc<BTreeMap<u32, RuleRef>>,
}

impl Compiled {
    /// Readable meaning of a cookie (reserved or policy rule).
    #[must_use]
    pub fn describe(&self, c: u32) -> String {
        if let Some(d) = cookie::reserved_description(c) {
            return d.to_string();
        }
        match self.rules.get(&c) {
            Some(r) if r.summary.is_empty() => r.to_string(),
            Some(r) => format!("{r} ({})", r.summary),
            None => format!("unknown cookie {c}"),
        }
    }

    /// Identity of `ip` as the datapath finds it: longest ipcache prefix, else `WORLD`.
    #[must_use]
    pub fn identity_of(&self, ip: Ipv4Addr) -> Identity {
        (0..=32u8)
            .rev()
            .find_map(|len| self.ipcache.get(&(crate::k8s::syntax::mask_v4(ip, len), len)))
            .copied()
            .unwrap_or(reserved::WORLD)
    }
}

/// Whether a policy entry names one of `ids` as its subject or its peer.
#[must_use]
pub fn involves(key: &PolicyKey, ids: &BTreeSet<Identity>) -> bool {
    ids.contains(&key.subject) || ids.contains(&u32::from_be_bytes(key.peer))
}

/// Cookies by policy namespace, policy name, and (direction, rule index).
type CookieTable = BTreeMap<String, BTreeMap<String, BTreeMap<(u8, usize), u32>>>;

/// Keeps cookies and CIDR identities stable across compiles.
///
/// Numbering (`prepare`, needs `&mut`) is separate from compiling (`compile_prepared`,
/// `recompute`, `&self`), so one owner can number a new set of policies and hand a copy
/// to a thread that compiles it, while the owner keeps recomputing for pod changes.
#[derive(Debug, Clone)]
pub struct Compiler {
    cookies: CookieTable,
    next_cookie: u32,
    cidr_ids: BTreeMap<(Ipv4Addr, u8), Identity>,
    next_cidr: Identity,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

/// Inserts an ALLOW entry, keeping the lowest cookie on a collision.
fn allow(out: &mut BTreeMap<PolicyEntryKey, PolicyValue>, prefix: u32, key: PolicyKey, c: u32) {
    out.entry((prefix, key))
        .and_modify(|v| v.cookie = v.cookie.min(c))
        .or_insert(PolicyValue {
            action: ACTION_ALLOW,
            cookie: c,
        });
}

/// Policies in compile order (namespace, name): cookies are handed out in this order.
fn sorted(policies: &[NetworkPolicy]) -> Vec<&NetworkPolicy> {
    let mut v: Vec<&NetworkPolicy> = policies.iter().collect();
    v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    v
}

/// The directions a policy isolates, with their rules.
fn directions(p: &NetworkPolicy) -> impl Iterator<Item = (u8, &[Rule])> {
    [
        (direction::INGRESS, p.ingress, p.ingress_rules.as_slice()),
        (direction::EGRESS, p.egress, p.egress_rules.as_slice()),
    ]
    .into_iter()
    .filter(|(_, on, _)| *on)
    .map(|(d, _, r)| (d, r))
}

impl Compiler {
    #[must_use]
    pub fn new() -> Self {
        Self {
            cookies: BTreeMap::new(),
            next_cookie: cookie::FIRST_POLICY,
            cidr_ids: BTreeMap::new(),
            next_cidr: 1,
        }
    }

    /// Numbers every rule and ipBlock prefix of `policies` that has no number yet.
    pub fn prepare(&mut self, policies: &[NetworkPolicy]) {
        for p in sorted(policies) {
            for rule in p.ingress_rules.iter().chain(&p.egress_rules) {
                for prefix in peers::ip_prefixes(rule) {
                    if prefix.1 > 0 && !self.cidr_ids.contains_key(&prefix) {
                        self.cidr_ids.insert(prefix, LOCAL_SCOPE | self.next_cidr);
                        self.next_cidr += 1;
                    }
                }
            }
            for (dir, rules) in directions(p) {
                let table = self
                    .cookies
                    .entry(p.namespace.clone())
                    .or_default()
                    .entry(p.name.clone())
                    .or_default();
                for index in std::iter::once(ISOLATION_INDEX).chain(0..rules.len()) {
                    table.entry((dir, index)).or_insert_with(|| {
                        self.next_cookie += 1;
                        self.next_cookie - 1
                    });
                }
            }
        }
    }

    /// The cookie of a rule of a prepared policy.
    fn cookie(&self, p: &NetworkPolicy, dir: u8, index: usize) -> u32 {
        self.cookies
            .get(&p.namespace)
            .and_then(|t| t.get(&p.name))
            .and_then(|t| t.get(&(dir, index)))
            .copied()
            .unwrap_or_else(|| panic!("policy {}/{} was not prepared", p.namespace, p.name))
    }

    /// Compiles `world` into map contents.
    pub fn compile(&mut self, world: &World) -> Compiled {
        self.prepare(&world.policies);
        self.compile_prepared(world)
    }

    /// Compiles a world whose policies were `prepare`d.
    ///
    /// # Panics
    /// When they were not.
    #[must_use]
    pub fn compile_prepared(&self, world: &World) -> Compiled {
        let policies = sorted(&world.policies);
        let mut rules = BTreeMap::new();
        for p in &policies {
            for (dir, rs) in directions(p) {
                rules.insert(
                    self.cookie(p, dir, ISOLATION_INDEX),
                    RuleRef {
                        namespace: p.namespace.clone(),
                        policy: p.name.clone(),
                        direction: dir,
                        index: ISOLATION_INDEX,
                        summary: format!("selects pods {}", p.pod_selector),
                    },
                );
                for (index, rule) in rs.iter().enumerate() {
                    rules.insert(
                        self.cookie(p, dir, index),
                        RuleRef {
                            namespace: p.namespace.clone(),
                            policy: p.name.clone(),
                            direction: dir,
                            index,
                            summary: peers::summary(rule, dir),
                        },
                    );
                }
            }
        }
        let ipcache = self.ipcache(world, &policies);
        let policy = self.entries(world, &policies, &ipcache, None);
        Compiled {
            policy,
            ipcache,
            rules: Arc::new(rules),
        }
    }

    /// Compiles `world` when it differs from the world `prev` was compiled from only in
    /// pods whose identity is in `changed` (pods added or removed, their addresses; the
    /// policies, namespaces, node addresses and mode are the same). Entries naming no
    /// changed identity cannot differ, so only those naming one are recompiled: a pod added
    /// to a node with 10,000 policies costs what its own identity needs. Equal to
    /// `compile_prepared(world)` (a property test holds it to that).
    ///
    /// # Panics
    /// When the policies of `world` were not `prepare`d.
    #[must_use]
    pub fn recompute(&self, world: &World, prev: &Compiled, changed: &BTreeSet<Identity>) -> Compiled {
        let policies = sorted(&world.policies);
        let ipcache = self.ipcache(world, &policies);
        // An identity whose prefixes changed may enter or leave an ipBlock: a pod's /32
        // can shadow an ipBlock /32 (its CIDR identity then has no prefix).
        let mut changed = changed.clone();
        for (prefix, id) in &prev.ipcache {
            if ipcache.get(prefix) != Some(id) {
                changed.insert(*id);
                changed.extend(ipcache.get(prefix));
            }
        }
        for (prefix, id) in &ipcache {
            if !prev.ipcache.contains_key(prefix) {
                changed.insert(*id);
            }
        }
        let mut policy = prev.policy.clone();
        policy.retain(|(_, key), _| !involves(key, &changed));
        policy.extend(self.entries(world, &policies, &ipcache, Some(&changed)));
        Compiled {
            policy,
            ipcache,
            rules: Arc::clone(&prev.rules),
        }
    }

    /// The policy-map entries of `world`; with `only`, just those whose subject or peer
    /// is one of `only`.
    fn entries(
        &self,
        world: &World,
        policies: &[&NetworkPolicy],
        ipcache: &BTreeMap<(Ipv4Addr, u8), Identity>,
        only: Option<&BTreeSet<Identity>>,
    ) -> BTreeMap<PolicyEntryKey, PolicyValue> {
        let mut out = BTreeMap::new();
        let wanted = |s: Identity| only.is_none_or(|o| o.contains(&s));
        // Subjects: local pods grouped by identity, and by namespace for selection.
        let mut subjects: BTreeMap<Identity, Vec<&PodInfo>> = BTreeMap::new();
        for p in world.pods.iter().filter(|p| p.local) {
            subjects.entry(p.identity).or_default().push(p);
        }
        if world.mode == Mode::Never {
            for &s in subjects.keys().filter(|&&s| wanted(s)) {
                for d in [direction::INGRESS, direction::EGRESS] {
                    out.insert(
                        (PREFIX_SUBJECT_DIR, PolicyKey::new(s, d, 0, 0, 0)),
                        PolicyValue {
                            action: ACTION_ALLOW,
                            cookie: cookie::NEVER_MODE,
                        },
                    );
                }
            }
            return out;
        }
        let mut by_ns: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
        for p in world.pods.iter().filter(|p| p.local) {
            by_ns.entry(p.pod.namespace.as_str()).or_default().push(p);
        }
        // isolation[(subject, dir)] = cookie of the first isolating policy.
        let mut isolation: BTreeMap<(Identity, u8), u32> = BTreeMap::new();
        let mut resolver = peers::Resolver::new(world, ipcache, None);
        // For a policy that selects none of `only`, entries can only name one of them as
        // the peer: peers are resolved among their pods alone.
        let mut only_resolver = only.map(|o| peers::Resolver::new(world, ipcache, Some(o)));
        for p in policies {
            let selected: BTreeSet<Identity> = by_ns
                .get(p.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|pod| p.pod_selector.matches(&pod.pod.labels))
                .map(|pod| pod.identity)
                .collect();
            if selected.is_empty() {
                continue;
            }
            let r = match (&mut only_resolver, only) {
                (Some(r), Some(o)) if selected.is_disjoint(o) => r,
                _ => &mut resolver,
            };
            for (dir, rules) in directions(p) {
                let iso = self.cookie(p, dir, ISOLATION_INDEX);
                for &s in &selected {
                    isolation.entry((s, dir)).or_insert(iso);
                }
                for (index, rule) in rules.iter().enumerate() {
                    let c = self.cookie(p, dir, index);
                    let mut emit = Emit { out: &mut out, only };
                    emit.rule(r, &subjects, &selected, p, dir, rule, c);
                }
            }
        }
        for &s in subjects.keys() {
            for d in [direction::INGRESS, direction::EGRESS] {
                let iso = isolation.get(&(s, d)).copied();
                let value = match (iso, world.mode) {
                    (Some(c), _) => PolicyValue {
                        action: ACTION_DENY,
                        cookie: c,
                    },
                    (None, Mode::Always) => PolicyValue {
                        action: ACTION_DENY,
                        cookie: cookie::ALWAYS_MODE,
                    },
                    (None, _) => PolicyValue {
                        action: ACTION_ALLOW,
                        cookie: cookie::NOT_ISOLATED,
                    },
                };
                let mut emit = Emit { out: &mut out, only };
                if value.action == ACTION_DENY && d == direction::INGRESS {
                    let key = PolicyKey::new(s, d, reserved::HOST, 0, 0);
                    emit.allow(PREFIX_PEER, key, cookie::HOST_ALLOWED);
                }
                if wanted(s) {
                    out.insert((PREFIX_SUBJECT_DIR, PolicyKey::new(s, d, 0, 0, 0)), value);
                }
            }
        }
        out
    }

    /// ipBlock prefixes (CIDR identities), then pod /32s, then node /32s (later wins).
    fn ipcache(&self, world: &World, policies: &[&NetworkPolicy]) -> BTreeMap<(Ipv4Addr, u8), Identity> {
        let mut m = BTreeMap::new();
        for p in policies {
            for rule in p.ingress_rules.iter().chain(&p.egress_rules) {
                for prefix in peers::ip_prefixes(rule) {
                    // 0.0.0.0/0 needs no entry: an ipcache miss already means WORLD.
                    if prefix.1 > 0 {
                        let id = self.cidr_ids.get(&prefix).copied();
                        m.insert(
                            prefix,
                            id.unwrap_or_else(|| panic!("ipBlock {prefix:?} was not prepared")),
                        );
                    }
                }
            }
        }
        for pod in &world.pods {
            if let Some(ip) = pod.ipv4 {
                m.insert((ip, 32), pod.identity);
            }
        }
        for &ip in &world.host_ips {
            m.insert((ip, 32), reserved::HOST);
        }
        m
    }
}

/// Where one rule's entries go; with `only`, just entries naming one of those identities.
struct Emit<'o> {
    out: &'o mut BTreeMap<PolicyEntryKey, PolicyValue>,
    only: Option<&'o BTreeSet<Identity>>,
}

impl Emit<'_> {
    fn allow(&mut self, prefix: u32, key: PolicyKey, c: u32) {
        if self.only.is_none_or(|o| involves(&key, o)) {
            allow(self.out, prefix, key, c);
        }
    }
    /// Emits the ALLOW entries of one rule for every selected subject.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename them"
    )]
    fn rule(
        &mut self,
        resolver: &mut peers::Resolver<'_>,
        subjects: &BTreeMap<Identity, Vec<&PodInfo>>,
        selected: &BTreeSet<Identity>,
        p: &NetworkPolicy,
        dir: u8,
        rule: &Rule,
        c: u32,
    ) {
        let peer_ids: Vec<Identity> = match &rule.peers {
            None => vec![ANY_PEER],
            Some(ps) if ps.is_empty() => vec![ANY_PEER],
            Some(ps) => resolver.peers(&p.namespace, ps).iter().copied().collect(),
        };
        let ports = match &rule.ports {
            Some(ports) if !ports.is_empty() => ports,
            _ => {
                for &s in selected {
                    for &peer in &peer_ids {
                        self.allow(PREFIX_PEER, PolicyKey::new(s, dir, peer, 0, 0), c);
                    }
                }
                return;
            }
        };
        for spec in ports {
            let proto = spec.protocol;
            match (&spec.port, spec.end_port) {
                (None, _) => {
                    for &s in selected {
                        for &peer in &peer_ids {
                            self.allow(PREFIX_PROTO, PolicyKey::new(s, dir, peer, proto, 0), c);
                        }
                    }
                }
                (Some(PortRef::Number(n)), end) => {
                    let blocks = ports::blocks(*n, end.unwrap_or(*n));
                    for &s in selected {
                        for &peer in &peer_ids {
                            for &(start, prefix) in &blocks {
                                self.allow(prefix, PolicyKey::new(s, dir, peer, proto, start), c);
                            }
                        }
                    }
                }
                (Some(PortRef::Name(name)), _) if dir == direction::INGRESS => {
                    // The port is the subject's own container port of that name.
                    for &s in selected {
                        let pods = subjects.get(&s).map(Vec::as_slice).unwrap_or_default();
                        for port in peers::named_ports(pods.iter().copied(), name, proto) {
                            for &peer in &peer_ids {
                                self.allow(PREFIX_FULL, PolicyKey::new(s, dir, peer, proto, port), c);
                            }
                        }
                    }
                }
                (Some(PortRef::Name(name)), _) => {
                    // Egress: the port is the destination's container port of that name, so
                    // each peer gets its own entries; "any peer" expands to every pod identity.
                    let targets: Vec<Identity> = if peer_ids == [ANY_PEER] {
                        resolver.pod_identities().collect()
                    } else {
                        peer_ids.clone()
                    };
                    for peer in targets {
                        let ports = peers::named_ports(resolver.pods_of(peer).iter().copied(), name, proto);
                        for &s in selected {
                            for &port in &ports {
                                self.allow(PREFIX_FULL, PolicyKey::new(s, dir, peer, proto, port), c);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
