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

impl PortRules {
    /// Rule `i` as written, with the policies of the port: for flows and `explain`.
    #[must_use]
    pub fn describe(&self, i: usize) -> String {
        let Some(r) = self.rules.get(i) else {
            return String::new();
        };
        let fields = [("method", &r.method), ("path", &r.path), ("host", &r.host)]
            .iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n} {v:?}")))
            .collect::<Vec<_>>()
            .join(", ");
        let fields = if fields.is_empty() {
            "any request".to_string()
        } else {
            fields
        };
        format!("rule {i} ({fields}) of {}", self.sources.join("; "))
    }
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

/// `moatctl policy explain --http`: how the kernel would judge `METHOD TARGET` with
/// `host` on `(ip, port)`. The request is normalised by the reference parser (which the
/// kernel's parser is held to) and matched against the port's table.
#[must_use]
pub fn explain(
    world: &World,
    policies: &[MoatNetworkPolicy],
    ip: Ipv4Addr,
    port: u16,
    request: &str,
    host: &str,
) -> (bool, String) {
    let Some((method, target)) = request.trim().split_once(' ') else {
        return (
            false,
            format!("{request:?}: expected \"METHOD TARGET\", e.g. \"GET /admin\""),
        );
    };
    let host = if host.is_empty() { "backend" } else { host };
    let raw = format!("{method} {} HTTP/1.1\r\nHost: {host}\r\n\r\n", target.trim());
    let head = match super::request::parse_head(raw.as_bytes()) {
        Ok(Some(h)) => h,
        Ok(None) => return (false, "the request head is incomplete".into()),
        Err(why) => return (false, format!("HTTP: refused before any rule is consulted: {why}")),
    };
    let ports = node_ports(world, policies);
    let Some(rules) = ports.get(&(ip, port)) else {
        return (
            true,
            format!("HTTP: {ip}:{port} has no HTTP rules; every request passes"),
        );
    };
    let (table, error) = port_table(rules);
    let shown = format!("{} {} (host {})", head.method, head.path, head.host);
    if let Some(e) = error {
        return (
            false,
            format!("HTTP: {shown} refused: the port's rules do not build ({e}), so it refuses every request"),
        );
    }
    let input = format!("{} {} {}", head.method, head.path, head.host);
    match table.first_match(input.as_bytes()) {
        Some(i) => (true, format!("HTTP: {shown} allowed by {}", rules.describe(i))),
        None => (
            false,
            format!(
                "HTTP: {shown} refused with 403: no rule of {} matches",
                rules.sources.join("; ")
            ),
        ),
    }
}
