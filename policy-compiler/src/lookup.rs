//! A pure emulation of the datapath's policy decision, and `explain(from, to, port)`.
//!
//! [`lookup`] follows the contract written on `moat_dataplane_common::PolicyKey` step by
//! step: a longest-prefix match with the real peer, another with `ANY_PEER`, allowed when
//! either hit is an ALLOW entry. The LPM trie is emulated over the key's bytes in memory
//! order, so it also checks that the compiler stored keys with their host bits cleared.
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use moat_dataplane_common::{
    direction, PolicyKey, PolicyValue, ANY_PEER, PREFIX_FULL, PREFIX_PEER, PREFIX_PROTO, PREFIX_SUBJECT_DIR,
};
use moat_identity::{reserved_name, Identity};

use crate::compile::{direction_name, Compiled, PolicyEntryKey, RuleRef};
use crate::k8s::proto;
use crate::world::{PodInfo, World};
use crate::Error;

/// The datapath's verdict for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        cookie: u32,
    },
    Denied {
        cookie: u32,
    },
    /// No entry for the subject: the node-wide default applies (the datapath lets it pass).
    Unmanaged,
}

impl Decision {
    /// Allowed or unmanaged.
    #[must_use]
    pub fn passes(self) -> bool {
        !matches!(self, Self::Denied { .. })
    }
}

fn key_bytes(k: &PolicyKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&k.subject.to_ne_bytes());
    b[4] = k.direction;
    b[5..9].copy_from_slice(&k.peer);
    b[9] = k.proto;
    b[10..].copy_from_slice(&k.dport);
    b
}

fn key_from_bytes(b: [u8; 12]) -> PolicyKey {
    PolicyKey {
        subject: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        direction: b[4],
        peer: [b[5], b[6], b[7], b[8]],
        proto: b[9],
        dport: [b[10], b[11]],
    }
}

/// `k` with every bit past `prefix` cleared (as the LPM trie compares it).
#[must_use]
pub fn mask_key(k: &PolicyKey, prefix: u32) -> PolicyKey {
    let mut b = key_bytes(k);
    for (i, byte) in b.iter_mut().enumerate() {
        let start = u32::try_from(i).unwrap_or(u32::MAX).saturating_mul(8);
        if prefix <= start {
            *byte = 0;
        } else if prefix < start + 8 {
            *byte &= 0xffu8 << (8 - (prefix - start));
        }
    }
    key_from_bytes(b)
}

/// The prefix lengths the contract allows in the map, longest first: 96..=80, 72, 40.
fn stored_prefixes() -> impl Iterator<Item = u32> {
    (PREFIX_PROTO..=PREFIX_FULL)
        .rev()
        .chain([PREFIX_PEER, PREFIX_SUBJECT_DIR])
}

/// Longest stored prefix matching `key` (the compiler stores no other prefix lengths; a
/// test checks it).
fn lpm(policy: &BTreeMap<PolicyEntryKey, PolicyValue>, key: &PolicyKey) -> Option<PolicyValue> {
    stored_prefixes()
        .find_map(|prefix| policy.get(&(prefix, mask_key(key, prefix))))
        .copied()
}

/// Whether `prefix` is one the contract on `PolicyKey` allows.
#[must_use]
pub fn is_stored_prefix(prefix: u32) -> bool {
    stored_prefixes().any(|p| p == prefix)
}

/// The datapath decision for `subject` talking to `peer` in `direction` on `proto`/`dport`.
#[must_use]
pub fn lookup(
    policy: &BTreeMap<PolicyEntryKey, PolicyValue>,
    subject: u32,
    direction: u8,
    peer: u32,
    proto: u8,
    dport: u16,
) -> Decision {
    let exact = lpm(policy, &PolicyKey::new(subject, direction, peer, proto, dport));
    let any = lpm(policy, &PolicyKey::new(subject, direction, ANY_PEER, proto, dport));
    // The datapath's own combine step (dataplane-common), so the two cannot drift apart.
    let d = moat_dataplane_common::policy::combine(exact.as_ref(), any.as_ref(), false, direction);
    match (exact.or(any), d.allowed) {
        (None, _) => Decision::Unmanaged,
        (Some(_), true) => Decision::Allowed { cookie: d.cookie },
        (Some(_), false) => Decision::Denied { cookie: d.cookie },
    }
}

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Pod { namespace: String, name: String },
    Ip(Ipv4Addr),
}

/// An endpoint resolved against the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `pod x/a (10.0.0.1)` or `10.2.3.4`.
    pub label: String,
    pub identity: Identity,
    /// A local pod (policy applies to it).
    pub local: bool,
    /// `namespace/name` when the endpoint is a pod.
    pub pod: Option<String>,
}

/// The check made for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub direction: u8,
    pub subject: Identity,
    pub peer: Identity,
    pub decision: Decision,
    /// The policy rule behind the deciding cookie (`None` for reserved cookies).
    pub rule: Option<RuleRef>,
    /// What the deciding cookie stands for.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub from: Resolved,
    pub to: Resolved,
    pub proto: u8,
    pub dport: u16,
    /// Present when `from` is a local pod.
    pub egress: Option<Check>,
    /// Present when `to` is a local pod.
    pub ingress: Option<Check>,
    pub allowed: bool,
    /// Extra remark (e.g. a pod talking to itself).
    pub note: Option<String>,
}

fn identity_name(id: Identity) -> String {
    match reserved_name(id) {
        Some(n) => format!("{id} ({n})"),
        None => id.to_string(),
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "ALLOWED" } else { "DENIED" };
        writeln!(
            f,
            "{}/{} from {} [identity {}] to {} [identity {}]: {verdict}",
            proto::name(self.proto),
            self.dport,
            self.from.label,
            identity_name(self.from.identity),
            self.to.label,
            identity_name(self.to.identity),
        )?;
        if let Some(n) = &self.note {
            writeln!(f, "  {n}")?;
        }
        for c in self.egress.iter().chain(&self.ingress) {
            let (who, arrow) = if c.direction == direction::EGRESS {
                (&self.from.label, "to")
            } else {
                (&self.to.label, "from")
            };
            let what = match (c.decision, &c.rule) {
                (Decision::Allowed { .. }, Some(_)) => format!("allowed by {}", c.reason),
                (Decision::Allowed { .. }, None) => format!("allowed: {}", c.reason),
                (Decision::Denied { .. }, _) => format!(
                    "denied: {}; no rule allows this peer on {}/{}",
                    c.reason,
                    proto::name(self.proto),
                    self.dport
                ),
                (Decision::Unmanaged, _) => format!("not managed, the node default applies: {}", c.reason),
            };
            writeln!(
                f,
                "  {:<7} {who} {arrow} identity {}: {what}",
                direction_name(c.direction),
                identity_name(c.peer),
            )?;
        }
        if self.egress.is_none() && self.ingress.is_none() && self.note.is_none() {
            writeln!(f, "  neither end is a local pod: no policy on this node applies")?;
        }
        Ok(())
    }
}

fn resolve(world: &World, compiled: &Compiled, e: &Endpoint) -> Result<Resolved, Error> {
    match e {
        Endpoint::Pod { namespace, name } => {
            world
                .pod(namespace, name)
                .map(resolve_pod)
                .ok_or_else(|| Error::UnknownPod {
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
        }
        Endpoint::Ip(ip) => Ok(match world.pods.iter().find(|p| p.ipv4 == Some(*ip)) {
            Some(p) => resolve_pod(p),
            None => Resolved {
                label: if world.host_ips.contains(ip) {
                    format!("node {ip}")
                } else {
                    ip.to_string()
                },
                identity: compiled.identity_of(*ip),
                local: false,
                pod: None,
            },
        }),
    }
}

fn check(compiled: &Compiled, dir: u8, subject: Identity, peer: Identity, proto: u8, dport: u16) -> Check {
    let decision = lookup(&compiled.policy, subject, dir, peer, proto, dport);
    let (rule, reason) = match decision {
        Decision::Allowed { cookie } | Decision::Denied { cookie } => {
            (compiled.rules.get(&cookie).cloned(), compiled.describe(cookie))
        }
        Decision::Unmanaged => (None, "no entry for this identity".into()),
    };
    Check {
        direction: dir,
        subject,
        peer,
        decision,
        rule,
        reason,
    }
}

/// Whether a flow between two resolved endpoints passes both directions' checks.
pub(crate) fn verdict(compiled: &Compiled, from: &Resolved, to: &Resolved, proto: u8, dport: u16) -> bool {
    let egress = !from.local
        || lookup(
            &compiled.policy,
            from.identity,
            direction::EGRESS,
            to.identity,
            proto,
            dport,
        )
        .passes();
    let ingress = !to.local
        || lookup(
            &compiled.policy,
            to.identity,
            direction::INGRESS,
            from.identity,
            proto,
            dport,
        )
        .passes();
    egress && ingress
}

pub(crate) fn resolve_pod(p: &PodInfo) -> Resolved {
    let name = format!("{}/{}", p.pod.namespace, p.pod.name);
    Resolved {
        label: match p.ipv4 {
            Some(ip) => format!("pod {name} ({ip})"),
            None => format!("pod {name}"),
        },
        identity: p.identity,
        local: p.local,
        pod: Some(name),
    }
}

/// Explains the verdict for `from` → `to` on `proto`/`dport`.
///
/// # Errors
/// [`Error::UnknownPod`] when an endpoint names a pod the world does not hold.
pub fn explain(
    world: &World,
    compiled: &Compiled,
    from: &Endpoint,
    to: &Endpoint,
    proto: u8,
    dport: u16,
) -> Result<Explanation, Error> {
    let from = resolve(world, compiled, from)?;
    let to = resolve(world, compiled, to)?;
    if from.pod.is_some() && from.pod == to.pod {
        return Ok(Explanation {
            from,
            to,
            proto,
            dport,
            egress: None,
            ingress: None,
            allowed: true,
            note: Some("a pod can always reach itself (traffic stays inside the pod)".into()),
        });
    }
    let egress = from
        .local
        .then(|| check(compiled, direction::EGRESS, from.identity, to.identity, proto, dport));
    let ingress = to
        .local
        .then(|| check(compiled, direction::INGRESS, to.identity, from.identity, proto, dport));
    let allowed = egress.iter().chain(&ingress).all(|c| c.decision.passes());
    Ok(Explanation {
        from,
        to,
        proto,
        dport,
        egress,
        ingress,
        allowed,
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_dataplane_common::{ACTION_ALLOW, ACTION_DENY};

    const IN: u8 = direction::INGRESS;

    fn v(action: u32, cookie: u32) -> PolicyValue {
        PolicyValue { action, cookie }
    }

    #[test]
    fn no_entry_is_unmanaged() {
        assert_eq!(lookup(&BTreeMap::new(), 256, IN, 257, 6, 80), Decision::Unmanaged);
    }

    #[test]
    fn subject_entry_decides_alone() {
        let mut m = BTreeMap::new();
        m.insert(
            (PREFIX_SUBJECT_DIR, PolicyKey::new(256, IN, 0, 0, 0)),
            v(ACTION_DENY, 20),
        );
        assert_eq!(lookup(&m, 256, IN, 257, 6, 80), Decision::Denied { cookie: 20 });
        assert_eq!(lookup(&m, 256, direction::EGRESS, 257, 6, 80), Decision::Unmanaged);
        assert_eq!(lookup(&m, 300, IN, 257, 6, 80), Decision::Unmanaged);
    }

    #[test]
    fn exact_peer_then_any_peer() {
        let mut m = BTreeMap::new();
        m.insert(
            (PREFIX_SUBJECT_DIR, PolicyKey::new(256, IN, 0, 0, 0)),
            v(ACTION_DENY, 20),
        );
        m.insert((PREFIX_PEER, PolicyKey::new(256, IN, 257, 0, 0)), v(ACTION_ALLOW, 21));
        m.insert(
            (PREFIX_PROTO, PolicyKey::new(256, IN, ANY_PEER, 17, 0)),
            v(ACTION_ALLOW, 22),
        );
        m.insert((95, PolicyKey::new(256, IN, 258, 6, 80)), v(ACTION_ALLOW, 23));
        assert_eq!(lookup(&m, 256, IN, 257, 132, 9), Decision::Allowed { cookie: 21 });
        assert_eq!(lookup(&m, 256, IN, 999, 17, 53), Decision::Allowed { cookie: 22 });
        assert_eq!(lookup(&m, 256, IN, 999, 6, 53), Decision::Denied { cookie: 20 });
        assert_eq!(lookup(&m, 256, IN, 258, 6, 80), Decision::Allowed { cookie: 23 });
        assert_eq!(lookup(&m, 256, IN, 258, 6, 81), Decision::Allowed { cookie: 23 });
        assert_eq!(lookup(&m, 256, IN, 258, 6, 82), Decision::Denied { cookie: 20 });
        assert_eq!(lookup(&m, 256, IN, 258, 6, 79), Decision::Denied { cookie: 20 });
    }

    #[test]
    fn mask_clears_bits_past_prefix() {
        let k = PolicyKey::new(256, IN, 257, 6, 0x1234);
        assert_eq!(mask_key(&k, 96), k);
        assert_eq!(mask_key(&k, 80), PolicyKey::new(256, IN, 257, 6, 0));
        assert_eq!(mask_key(&k, 72), PolicyKey::new(256, IN, 257, 0, 0));
        assert_eq!(mask_key(&k, 40), PolicyKey::new(256, IN, 0, 0, 0));
        assert_eq!(mask_key(&k, 84), PolicyKey::new(256, IN, 257, 6, 0x1000));
    }
}
