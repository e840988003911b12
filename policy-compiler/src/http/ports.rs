//! Which local server ports carry HTTP rules, and the kernel table for each.
//!
//! Every ingress `rules.http` list of a MoatNetworkPolicy applies to the ports it names
//! on every local pod the policy selects. Rules of several policies on the same port are
//! one set: a request passes when any of them matches (like Cilium). One difference from
//! Cilium: the rules apply to every client of the port, not only to the peers of the
//! policy rule that carries them (Moat judges at the server socket, where the peer's
//! identity is not looked up yet). A port that some policy opens without HTTP rules and
//! another with them is therefore held to the HTTP rules: stricter, never looser.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use moat_k8s_model::{HttpRule, MoatNetworkPolicy};

use super::dfa::{self, PortDfa};
use crate::world::World;

/// One port's rules and where they come from (`MoatNetworkPolicy ns/name field`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRules {
    pub rules: Vec<HttpRule>,
    pub sources: Vec<String>,
}

/// (local pod address, TCP port) → its HTTP rules.
#[must_use]
pub fn node_ports(world: &World, policies: &[MoatNetworkPolicy]) -> BTreeMap<(Ipv4Addr, u16), PortRules> {
    let mut out: BTreeMap<(Ipv4Addr, u16), PortRules> = BTreeMap::new();
    for p in policies {
        let np = &p.policy;
        for h in p.http.iter().filter(|h| h.direction == 1) {
            let source = format!("MoatNetworkPolicy {}/{} {}", np.namespace, np.name, h.field);
            for pod in world.pods.iter().filter(|pod| {
                pod.local && pod.pod.namespace == np.namespace && np.pod_selector.matches(&pod.pod.labels)
            }) {
                let Some(ip) = pod.ipv4 else { continue };
                for &port in &h.ports {
                    let e = out.entry((ip, port)).or_default();
                    e.rules.extend(h.rules.iter().cloned());
                    e.sources.push(source.clone());
                }
            }
        }
    }
    out
}

/// The kernel table of one port. When the rules cannot be built (too many DFA states
/// together) the port gets a table that matches nothing: every request is refused until
/// the rules are simplified, and the error names the policies. Never an open port.
#[must_use]
pub fn port_table(rules: &PortRules) -> (PortDfa, Option<String>) {
    match dfa::build(&rules.rules, &rules.sources.join(", ")) {
        Ok(d) => (d, None),
        Err(e) => (dfa::deny_all(), Some(e.to_string())),
    }
}
