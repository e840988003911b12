//! `MoatNetworkPolicy` (`moat.io/v1alpha1`): NetworkPolicy with HTTP rules, in the shape
//! of a CiliumNetworkPolicy so that a Cilium user converts one by changing apiVersion and
//! kind (docs/policy.md has the mapping).
//!
//! ```yaml
//! spec:
//!   endpointSelector: {matchLabels: {app: backend}}
//!   ingress:
//!   - fromEndpoints: [{matchLabels: {app: frontend}}]
//!     toPorts:
//!     - ports: [{port: "80", protocol: TCP}]
//!       rules:
//!         http: [{method: GET, path: "/api/.*"}]
//! ```
//!
//! The L3/L4 part is an ordinary [`NetworkPolicy`] (Cilium semantics: an ingress or egress
//! section isolates the selected pods in that direction). The HTTP rules are kept per port
//! in [`HttpPort`]s, in the order written.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde::Deserialize;

use super::decode::{child, fail, item, selector, strict, R};
use super::{proto, LabelSelector, NetworkPolicy, Peer, PortRef, PortSpec, Rule};

pub const API_VERSION: &str = "moat.io/v1alpha1";
pub const KIND: &str = "MoatNetworkPolicy";

/// Cilium's label for an endpoint's namespace.
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Cilium's prefix for labels of an endpoint's namespace.
const NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoatNetworkPolicy {
    /// The L3/L4 meaning, enforced like a NetworkPolicy.
    pub policy: NetworkPolicy,
    /// Ports that carry HTTP rules.
    pub http: Vec<HttpPort>,
}

/// The HTTP rules of one `toPorts[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPort {
    /// `moat_dataplane_common::direction` value: 1 ingress, 2 egress.
    pub direction: u8,
    /// Index of the rule in `spec.ingress` / `spec.egress` (same as in `policy`).
    pub rule: usize,
    /// Field path of the `rules.http` list, for messages.
    pub field: String,
    pub ports: Vec<u16>,
    pub rules: Vec<HttpRule>,
}

/// One `rules.http[]` entry: a request passes when it matches every field given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRule {
    /// Anchored regular expression over the method (Cilium semantics).
    pub method: Option<String>,
    /// Anchored regular expression over the normalised path.
    pub path: Option<String>,
    /// Anchored regular expression over the host (without port, lower case).
    pub host: Option<String>,
    /// `Name` (present) or `Name: value` (equal), names compared without case.
    pub headers: Vec<(String, Option<String>)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(rename = "metadata")]
    _metadata: meta::ObjectMeta,
    spec: Option<Spec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    endpoint_selector: Option<meta::LabelSelector>,
    ingress: Option<Vec<Ingress>>,
    egress: Option<Vec<Egress>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ingress {
    from_endpoints: Option<Vec<meta::LabelSelector>>,
    to_ports: Option<Vec<PortRule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Egress {
    to_endpoints: Option<Vec<meta::LabelSelector>>,
    to_ports: Option<Vec<PortRule>>,
}

#[derive(Deserialize)]
struct PortRule {
    ports: Option<Vec<PortProtocol>>,
    rules: Option<L7Rules>,
}

#[derive(Deserialize)]
struct PortProtocol {
    port: String,
    protocol: Option<String>,
}

#[derive(Deserialize)]
struct L7Rules {
    http: Option<Vec<Http>>,
}

#[derive(Deserialize)]
struct Http {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    headers: Option<Vec<String>>,
}

/// Decodes and checks a `MoatNetworkPolicy` document.
pub(super) fn decode(namespace: &str, name: &str, v: &serde_json::Value) -> R<MoatNetworkPolicy> {
    let raw: Raw = strict(v)?;
    let Some(spec) = raw.spec else {
        return fail("spec", "is required");
    };
    let Some(sel) = &spec.endpoint_selector else {
        return fail("spec.endpointSelector", "is required (use {} to select every pod)");
    };
    let (pod_selector, ns) = endpoint_selector(sel, "spec.endpointSelector")?;
    if ns.is_some() {
        return fail(
            "spec.endpointSelector",
            format!(
                "a MoatNetworkPolicy selects pods of its own namespace ({namespace}) only; remove the namespace label"
            ),
        );
    }
    let mut http = Vec::new();
    let mut ingress_rules = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let path = item("spec.ingress", i);
        let peers = peers(r.from_endpoints.as_deref(), &child(&path, "fromEndpoints"))?;
        let ports = to_ports(r.to_ports.as_deref(), &path, 1, i, &mut http)?;
        ingress_rules.push(Rule { peers, ports });
    }
    let mut egress_rules = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let path = item("spec.egress", i);
        let peers = peers(r.to_endpoints.as_deref(), &child(&path, "toEndpoints"))?;
        let ports = to_ports(r.to_ports.as_deref(), &path, 2, i, &mut http)?;
        egress_rules.push(Rule { peers, ports });
    }
    for h in &http {
        // Egress HTTP rules need the sk_msg half of the kernel path, not built yet: the
        // policy is refused whole (its last good version stays), never applied as a
        // port-level allow.
        if h.direction == 2 {
            return fail(
                &h.field,
                "HTTP rules on egress are not enforced by this version of Moat (ingress ones are); the policy is not applied",
            );
        }
    }
    Ok(MoatNetworkPolicy {
        policy: NetworkPolicy {
            namespace: namespace.into(),
            name: name.into(),
            pod_selector,
            ingress: spec.ingress.is_some(),
            egress: spec.egress.is_some(),
            ingress_rules,
            egress_rules,
        },
        http,
    })
}

/// A Cilium endpoint selector → (pod selector, namespace selector if it names one).
/// Label keys may carry Cilium's `k8s:` or `any:` source prefix.
fn endpoint_selector(s: &meta::LabelSelector, path: &str) -> R<(LabelSelector, Option<LabelSelector>)> {
    let source = |key: &str, field: &str| -> R<String> {
        match key.split_once(':') {
            Some(("k8s" | "any", rest)) => Ok(rest.to_string()),
            Some((src, _)) => fail(
                field,
                format!("label source {src:?} is not supported (only k8s: and any:, which mean the same here)"),
            ),
            None => Ok(key.to_string()),
        }
    };
    let mut pods = meta::LabelSelector::default();
    let mut nss = meta::LabelSelector::default();
    let mut named_ns = false;
    for (k, v) in s.match_labels.iter().flatten() {
        let key = source(k, &child(&child(path, "matchLabels"), k))?;
        if key == POD_NAMESPACE {
            named_ns = true;
            nss.match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(super::NAMESPACE_NAME_LABEL.into(), v.clone());
        } else if let Some(ns_key) = key.strip_prefix(NAMESPACE_LABELS) {
            named_ns = true;
            nss.match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(ns_key.into(), v.clone());
        } else {
            pods.match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(key, v.clone());
        }
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let key = source(&e.key, &child(&item(&child(path, "matchExpressions"), i), "key"))?;
        let mut e = e.clone();
        let on_namespace = if key == POD_NAMESPACE {
            e.key = super::NAMESPACE_NAME_LABEL.into();
            true
        } else if let Some(ns_key) = key.strip_prefix(NAMESPACE_LABELS) {
            e.key = ns_key.into();
            true
        } else {
            e.key = key;
            false
        };
        named_ns |= on_namespace;
        let target = if on_namespace { &mut nss } else { &mut pods };
        target.match_expressions.get_or_insert_with(Vec::new).push(e);
    }
    let pods = selector(&pods, path)?;
    let nss = if named_ns { Some(selector(&nss, path)?) } else { None };
    Ok((pods, nss))
}

/// `fromEndpoints` / `toEndpoints`: absent means every peer (Cilium: an empty list too).
fn peers(sels: Option<&[meta::LabelSelector]>, path: &str) -> R<Option<Vec<Peer>>> {
    let Some(sels) = sels else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (j, s) in sels.iter().enumerate() {
        let (pods, nss) = endpoint_selector(s, &item(path, j))?;
        out.push(Peer::Pods {
            pod_selector: Some(pods),
            namespace_selector: nss,
        });
    }
    Ok(Some(out))
}

fn to_ports(
    rules: Option<&[PortRule]>,
    rule_path: &str,
    direction: u8,
    rule: usize,
    http: &mut Vec<HttpPort>,
) -> R<Option<Vec<PortSpec>>> {
    let Some(rules) = rules else {
        return Ok(None);
    };
    let mut specs = Vec::new();
    for (k, pr) in rules.iter().enumerate() {
        let path = item(&child(rule_path, "toPorts"), k);
        let mut numbers = Vec::new();
        let ports = pr.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            return fail(&child(&path, "ports"), "must list at least one port");
        }
        for (j, p) in ports.iter().enumerate() {
            let ppath = item(&child(&path, "ports"), j);
            let number: u16 = match p.port.parse() {
                Ok(n) if n > 0 => n,
                _ => {
                    return fail(
                        &child(&ppath, "port"),
                        format!(
                            "{:?} is not a port number 1-65535 (named ports are not supported here)",
                            p.port
                        ),
                    )
                }
            };
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => proto::TCP,
                "UDP" => proto::UDP,
                "SCTP" => proto::SCTP,
                other => {
                    return fail(
                        &child(&ppath, "protocol"),
                        format!("{other:?} is not one of TCP, UDP, SCTP"),
                    )
                }
            };
            if pr.rules.is_some() && protocol != proto::TCP {
                return fail(&child(&ppath, "protocol"), "HTTP rules need protocol TCP");
            }
            numbers.push(number);
            specs.push(PortSpec {
                protocol,
                port: Some(PortRef::Number(number)),
                end_port: None,
            });
        }
        if let Some(l7) = &pr.rules {
            let field = child(&child(&path, "rules"), "http");
            let Some(list) = &l7.http else {
                return fail(&child(&path, "rules"), "must hold http rules");
            };
            let mut out = Vec::new();
            for (j, h) in list.iter().enumerate() {
                out.push(http_rule(h, &item(&field, j))?);
            }
            http.push(HttpPort {
                direction,
                rule,
                field,
                ports: numbers,
                rules: out,
            });
        }
    }
    Ok(Some(specs))
}

fn http_rule(h: &Http, path: &str) -> R<HttpRule> {
    let mut headers = Vec::new();
    for (i, line) in h.headers.iter().flatten().enumerate() {
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (line.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(is_token) {
            return fail(
                &item(&child(path, "headers"), i),
                format!("{line:?}: not a header name (and value)"),
            );
        }
        headers.push((name.to_ascii_lowercase(), value));
    }
    if !headers.is_empty() {
        return fail(
            &child(path, "headers"),
            "header conditions are not enforced in the kernel yet; the policy is refused rather than applied without them",
        );
    }
    for (field, v) in [("method", &h.method), ("path", &h.path), ("host", &h.host)] {
        if v.as_deref() == Some("") {
            return fail(&child(path, field), "must not be empty (leave it out to match any)");
        }
        if let Some(v) = v {
            if let Err(m) = check_pattern(v) {
                return fail(&child(path, field), m);
            }
        }
    }
    Ok(HttpRule {
        method: h.method.clone(),
        path: h.path.clone(),
        host: h.host.clone(),
        headers,
    })
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// DFA states one pattern may have: the kernel walks the port's table in a bounded loop,
/// and a port's rules share one table of at most 4,096 rows.
pub const MAX_PATTERN_STATES: usize = 256;

/// Whether `pattern` compiles, anchored, to a byte DFA within [`MAX_PATTERN_STATES`].
/// The same syntax the kernel tables are built with (`policy-compiler::http`).
///
/// # Errors
/// A message for the user: not a regular expression, or too large.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    use regex_automata::dfa::{dense, StartKind};
    let dfa = dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Anchored)
                .minimize(true)
                .dfa_size_limit(Some(1 << 20))
                .determinize_size_limit(Some(1 << 22)),
        )
        .syntax(regex_automata::util::syntax::Config::new().unicode(false).utf8(false))
        .build(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("{pattern:?} is not a regular expression Moat can compile: {e}"))?;
    // The transition table dominates the DFA's memory: this slightly over-counts, which
    // errs on the refusing side.
    let states = dfa.memory_usage() / (dfa.stride() * 4);
    if states > MAX_PATTERN_STATES {
        return Err(format!(
            "{pattern:?} needs {states} DFA states; the kernel walks at most {MAX_PATTERN_STATES} per pattern (simplify the pattern or split the rule)"
        ));
    }
    Ok(())
}
