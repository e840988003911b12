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
    pub rules: BTreeMap<u32, RuleRef>,
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

/// Keeps cookies and CIDR identities stable across compiles.
#[derive(Debug, Clone)]
pub struct Compiler {
    cookies: BTreeMap<(String, String, u8, usize), u32>,
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

    fn cookie(&mut self, p: &NetworkPolicy, dir: u8, index: usize) -> u32 {
        let key = (p.namespace.clone(), p.name.clone(), dir, index);
        if let Some(&c) = self.cookies.get(&key) {
            return c;
        }
        let c = self.next_cookie;
        self.next_cookie += 1;
        self.cookies.insert(key, c);
        c
    }

    fn cidr_identity(&mut self, prefix: (Ipv4Addr, u8)) -> Identity {
        if let Some(&id) = self.cidr_ids.get(&prefix) {
            return id;
        }
        let id = LOCAL_SCOPE | self.next_cidr;
        self.next_cidr += 1;
        self.cidr_ids.insert(prefix, id);
        id
    }

    /// Compiles `world` into map contents.
    pub fn compile(&mut self, world: &World) -> Compiled {
        let mut policies: Vec<&NetworkPolicy> = world.policies.iter().collect();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut out = Compiled {
            ipcache: self.ipcache(world, &policies),
            ..Compiled::default()
        };
        // Subjects: local pods grouped by identity, and by namespace for selection.
        let mut subjects: BTreeMap<Identity, Vec<&PodInfo>> = BTreeMap::new();
        for p in world.pods.iter().filter(|p| p.local) {
            subjects.entry(p.identity).or_default().push(p);
        }
        if world.mode == Mode::Never {
            for &s in subjects.keys() {
                for d in [direction::INGRESS, direction::EGRESS] {
                    out.policy.insert(
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
        let mut resolver = peers::Resolver::new(world, &out.ipcache);
        for p in &policies {
            let selected: BTreeSet<Identity> = by_ns
                .get(p.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|pod| p.pod_selector.matches(&pod.pod.labels))
                .map(|pod| pod.identity)
                .collect();
            for (dir, on, rules) in [
                (direction::INGRESS, p.ingress, &p.ingress_rules),
                (direction::EGRESS, p.egress, &p.egress_rules),
            ] {
                if !on {
                    continue;
                }
                let iso = self.cookie(p, dir, ISOLATION_INDEX);
                out.rules.insert(
                    iso,
                    RuleRef {
                        namespace: p.namespace.clone(),
                        policy: p.name.clone(),
                        direction: dir,
                        index: ISOLATION_INDEX,
                        summary: format!("selects pods {}", p.pod_selector),
                    },
                );
                for &s in &selected {
                    isolation.entry((s, dir)).or_insert(iso);
                }
                for (index, rule) in rules.iter().enumerate() {
                    let c = self.cookie(p, dir, index);
                    out.rules.insert(
                        c,
                        RuleRef {
                            namespace: p.namespace.clone(),
                            policy: p.name.clone(),
                            direction: dir,
                            index,
                            summary: peers::summary(rule, dir),
                        },
                    );
                    if !selected.is_empty() {
                        emit_rule(&mut out.policy, &mut resolver, &subjects, &selected, p, dir, rule, c);
                    }
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
                if value.action == ACTION_DENY && d == direction::INGRESS {
                    let key = PolicyKey::new(s, d, reserved::HOST, 0, 0);
                    allow(&mut out.policy, PREFIX_PEER, key, cookie::HOST_ALLOWED);
                }
                out.policy
                    .insert((PREFIX_SUBJECT_DIR, PolicyKey::new(s, d, 0, 0, 0)), value);
            }
        }
        out
    }

    /// ipBlock prefixes (CIDR identities), then pod /32s, then node /32s (later wins).
    fn ipcache(&mut self, world: &World, policies: &[&NetworkPolicy]) -> BTreeMap<(Ipv4Addr, u8), Identity> {
        let mut m = BTreeMap::new();
        for p in policies {
            for rule in p.ingress_rules.iter().chain(&p.egress_rules) {
                for prefix in peers::ip_prefixes(rule) {
                    // 0.0.0.0/0 needs no entry: an ipcache miss already means WORLD.
                    if prefix.1 > 0 {
                        m.insert(prefix, self.cidr_identity(prefix));
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

/// Emits the ALLOW entries of one rule for every selected subject.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn emit_rule(
    out: &mut BTreeMap<PolicyEntryKey, PolicyValue>,
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
                    allow(out, PREFIX_PEER, PolicyKey::new(s, dir, peer, 0, 0), c);
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
                        allow(out, PREFIX_PROTO, PolicyKey::new(s, dir, peer, proto, 0), c);
                    }
                }
            }
            (Some(PortRef::Number(n)), end) => {
                let blocks = ports::blocks(*n, end.unwrap_or(*n));
                for &s in selected {
                    for &peer in &peer_ids {
                        for &(start, prefix) in &blocks {
                            allow(out, prefix, PolicyKey::new(s, dir, peer, proto, start), c);
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
                            allow(out, PREFIX_FULL, PolicyKey::new(s, dir, peer, proto, port), c);
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
                            allow(out, PREFIX_FULL, PolicyKey::new(s, dir, peer, proto, port), c);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
