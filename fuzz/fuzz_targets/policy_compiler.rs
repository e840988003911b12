//! The policy compiler end to end, against an independent model of NetworkPolicy.
//!
//! The input is decoded (by hand, with `arbitrary::Unstructured`) into a small world:
//! namespaces x, y, z with labels, 1-5 pods with labels, service accounts, named container
//! ports and addresses, 0-4 NetworkPolicies with pod/namespace selectors (matchLabels and
//! every matchExpressions operator), ipBlocks with excepts, numeric, ranged and named ports
//! and every policyTypes form, and an enforcement mode. The world is rendered as YAML
//! manifest text (each document block or flow style), decoded with `k8s::parse_documents`
//! into `Manifests`, turned into a `World` with `World::from_manifests` and compiled with
//! `Compiler::compile`: the same steps as `moatctl policy matrix`. Documents are decoded one
//! at a time and memoised by text (YAML parsing is most of the cost, and most documents
//! repeat between executions); one execution in eight also decodes the whole stream at once
//! and must get the same objects.
//!
//! Then, for every (source pod, destination pod, probe): `matrix` must equal `explain` by
//! pod name, `explain` by address (pods with an IP), the `lookup` of each direction, and the
//! verdict of a reference model written here from the Kubernetes NetworkPolicy rules
//! (with the compiler's documented identity approximations: pods of one identity share
//! named ports, and an identity is inside an ipBlock only when all its addresses are).
//! Also: every generated manifest decodes, identities group exactly the pods with equal
//! labels/namespace/service account, every policy-map key has an allowed prefix length with
//! its host bits cleared, every local subject is managed, and a recompile changes nothing.
//! Any disagreement panics with the manifests and the flow. `MOAT_FUZZ_PRINT=1` prints each
//! input's manifests (to replay a crash: `cargo +nightly fuzz run policy_compiler <file>`).
#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use moat_dataplane_common::direction;
use moat_k8s_model::{parse_documents, ManifestError, Manifests, Object};
use moat_policy_compiler::lookup::{is_stored_prefix, mask_key};
use moat_policy_compiler::{diff, explain, lookup, matrix, Compiler, Decision, Endpoint, Mode, World};
use serde_json::{json, Map, Value};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Label keys and their values. `kubernetes.io/metadata.name` only appears in selectors.
const KEYS: [(&str, &[&str]); 5] = [
    ("app", &["web", "api", "db"]),
    ("tier", &["front", "back"]),
    ("team", &["red", "blue"]),
    ("env", &["prod", "dev"]),
    ("kubernetes.io/metadata.name", &["x", "y", "z"]),
];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];
const PORTS: [u16; 6] = [53, 80, 81, 443, 5432, 8080];
const PROTOS: [u8; 3] = [6, 17, 132];
const OPS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

#[derive(Debug, Clone, Default)]
struct Sel {
    labels: BTreeMap<String, String>,
    /// (key, operator, values)
    exprs: Vec<(String, &'static str, Vec<String>)>,
}

#[derive(Debug, Clone)]
enum GPeer {
    Pods {
        pod: Option<Sel>,
        ns: Option<Sel>,
    },
    /// cidr as written (host bits may be set), excepts as written.
    Block {
        cidr: (Ipv4Addr, u8),
        except: Vec<(Ipv4Addr, u8)>,
        except_key: bool,
    },
}

#[derive(Debug, Clone)]
enum GPortRef {
    Num(u16),
    Name(&'static str),
}

#[derive(Debug, Clone)]
struct GPort {
    proto: Option<u8>,
    port: Option<GPortRef>,
    end: Option<u16>,
}

#[derive(Debug, Clone)]
struct GRule {
    peers: Option<Vec<GPeer>>,
    ports: Option<Vec<GPort>>,
}

#[derive(Debug, Clone)]
struct GPolicy {
    ns: &'static str,
    name: String,
    sel: Sel,
    types: Option<Vec<&'static str>>,
    ingress: Option<Vec<GRule>>,
    egress: Option<Vec<GRule>>,
}

#[derive(Debug, Clone)]
struct GPod {
    ns: &'static str,
    name: String,
    labels: BTreeMap<String, String>,
    sa: Option<&'static str>,
    /// (name, port, protocol; None = default TCP), per container.
    containers: Vec<Vec<(Option<&'static str>, u16, Option<u8>)>>,
    ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
struct GWorld {
    mode: Mode,
    /// Declared namespaces (others exist implicitly) with their labels.
    namespaces: BTreeMap<&'static str, BTreeMap<String, String>>,
    pods: Vec<GPod>,
    policies: Vec<GPolicy>,
    probes: Vec<(u8, u16)>,
}

fn pick<T: Copy>(u: &mut Unstructured<'_>, items: &[T]) -> Result<T> {
    Ok(*u.choose(items)?)
}

fn sel(u: &mut Unstructured<'_>) -> Result<Sel> {
    let mut s = Sel::default();
    for _ in 0..u.int_in_range(0..=2)? {
        let (k, vals) = pick(u, &KEYS)?;
        s.labels.insert(k.into(), pick(u, vals)?.into());
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let (k, vals) = pick(u, &KEYS)?;
        let op = pick(u, &OPS)?;
        let values = if matches!(op, "In" | "NotIn") {
            let mut v = vec![pick(u, vals)?.to_string()];
            if u.ratio(1, 3)? {
                v.push(pick(u, vals)?.into());
            }
            v
        } else {
            Vec::new()
        };
        s.exprs.push((k.into(), op, values));
    }
    Ok(s)
}

fn net(ip: Ipv4Addr, len: u8) -> u32 {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    u32::from(ip) & mask
}

fn inside(ip: Ipv4Addr, (a, len): (Ipv4Addr, u8)) -> bool {
    net(ip, len) == net(a, len)
}

fn peer(u: &mut Unstructured<'_>, pod_ips: &[Ipv4Addr]) -> Result<GPeer> {
    Ok(match u.int_in_range(0..=5)? {
        0 => GPeer::Pods {
            pod: Some(sel(u)?),
            ns: None,
        },
        1 => GPeer::Pods {
            pod: None,
            ns: Some(sel(u)?),
        },
        2 | 3 => GPeer::Pods {
            pod: Some(sel(u)?),
            ns: Some(sel(u)?),
        },
        _ => {
            let mut bases = vec![
                Ipv4Addr::new(10, 0, 0, 0),
                Ipv4Addr::new(10, 0, 1, 0),
                Ipv4Addr::new(192, 168, 0, 0),
                Ipv4Addr::new(0, 0, 0, 0),
            ];
            bases.extend_from_slice(pod_ips);
            let base = u32::from(pick(u, &bases)?) ^ u32::from(u.int_in_range(0..=15u8)?);
            let len = pick(u, &[0u8, 8, 16, 23, 24, 28, 29, 30, 31, 32])?;
            let cidr = (Ipv4Addr::from(base), len);
            let mut except = Vec::new();
            if len < 32 {
                for _ in 0..u.int_in_range(0..=2)? {
                    let elen = u.int_in_range(len + 1..=32)?;
                    // Prefer an except that cuts through a pod address inside the block.
                    let inner: Vec<Ipv4Addr> = pod_ips.iter().copied().filter(|&ip| inside(ip, cidr)).collect();
                    let a = if !inner.is_empty() && u.ratio(2, 3)? {
                        u32::from(pick(u, &inner)?)
                    } else {
                        let hostmask = if len == 0 {
                            u32::MAX
                        } else {
                            !(u32::MAX << (32 - u32::from(len)))
                        };
                        net(cidr.0, len) | (u.arbitrary::<u32>()? & hostmask)
                    };
                    except.push((Ipv4Addr::from(a), elen));
                }
            }
            let except_key = !except.is_empty() || u.ratio(1, 4)?;
            GPeer::Block {
                cidr,
                except,
                except_key,
            }
        }
    })
}

fn port(u: &mut Unstructured<'_>) -> Result<GPort> {
    let proto = if u.ratio(1, 3)? { None } else { Some(pick(u, &PROTOS)?) };
    Ok(match u.int_in_range(0..=4)? {
        0 => GPort {
            proto,
            port: None,
            end: None,
        },
        1 => GPort {
            proto,
            port: Some(GPortRef::Name(pick(u, &PORT_NAMES)?)),
            end: None,
        },
        2 => {
            let p = if u.ratio(1, 4)? {
                u.int_in_range(1..=65535)?
            } else {
                pick(u, &PORTS)?
            };
            let end = p.saturating_add(u.int_in_range(0..=u16::MAX)? % 600);
            GPort {
                proto,
                port: Some(GPortRef::Num(p)),
                end: Some(end),
            }
        }
        _ => GPort {
            proto,
            port: Some(GPortRef::Num(pick(u, &PORTS)?)),
            end: None,
        },
    })
}

fn rules(u: &mut Unstructured<'_>, pod_ips: &[Ipv4Addr]) -> Result<Option<Vec<GRule>>> {
    if u.ratio(1, 4)? {
        return Ok(None);
    }
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let peers = match u.int_in_range(0..=5)? {
            0 => None,
            1 => Some(Vec::new()),
            _ => Some(
                (0..u.int_in_range(1..=2)?)
                    .map(|_| peer(u, pod_ips))
                    .collect::<Result<_>>()?,
            ),
        };
        let ports = match u.int_in_range(0..=4)? {
            0 | 1 => None,
            2 => Some(Vec::new()),
            _ => Some((0..u.int_in_range(1..=2)?).map(|_| port(u)).collect::<Result<_>>()?),
        };
        out.push(GRule { peers, ports });
    }
    Ok(Some(out))
}

fn world(u: &mut Unstructured<'_>) -> Result<GWorld> {
    let mode = match u.int_in_range(0..=9)? {
        8 => Mode::Always,
        9 => Mode::Never,
        _ => Mode::Default,
    };
    let mut namespaces = BTreeMap::new();
    for ns in NAMESPACES {
        if u.ratio(3, 4)? {
            let mut l = BTreeMap::new();
            if u.ratio(3, 4)? {
                l.insert("team".to_string(), pick(u, &["red", "blue"])?.to_string());
            }
            if u.ratio(1, 2)? {
                l.insert("env".to_string(), pick(u, &["prod", "dev"])?.to_string());
            }
            namespaces.insert(ns, l);
        }
    }
    let mut pods = Vec::new();
    for i in 0..u.int_in_range(1..=5u8)? {
        let mut labels = BTreeMap::new();
        if u.ratio(4, 5)? {
            labels.insert("app".to_string(), pick(u, &["web", "api", "db"])?.to_string());
        }
        if u.ratio(1, 2)? {
            labels.insert("tier".to_string(), pick(u, &["front", "back"])?.to_string());
        }
        if u.ratio(1, 4)? {
            // Volatile: left out of identities, so pods differing only here share one.
            labels.insert(
                "pod-template-hash".to_string(),
                pick(u, &["abc12", "def34"])?.to_string(),
            );
        }
        let sa = match u.int_in_range(0..=5)? {
            0 => Some("default"),
            1 => Some("robot"),
            _ => None,
        };
        let mut containers = vec![Vec::new()];
        for _ in 0..u.int_in_range(0..=3)? {
            if u.ratio(1, 4)? {
                containers.push(Vec::new());
            }
            let name = if u.ratio(2, 3)? {
                Some(pick(u, &PORT_NAMES)?)
            } else {
                None
            };
            let num = pick(u, &PORTS)?;
            let proto = if u.ratio(1, 2)? { None } else { Some(pick(u, &PROTOS)?) };
            containers.last_mut().expect("one container").push((name, num, proto));
        }
        let ip = match u.int_in_range(0..=7)? {
            0 => None,
            1 => Some(Ipv4Addr::new(10, 0, 1, i + 1)),
            2 => Some(Ipv4Addr::new(192, 168, i, 7)),
            _ => Some(Ipv4Addr::new(10, 0, 0, i + 1)),
        };
        pods.push(GPod {
            ns: pick(u, &NAMESPACES)?,
            name: format!("p{i}"),
            labels,
            sa,
            containers,
            ip,
        });
    }
    let pod_ips: Vec<Ipv4Addr> = pods.iter().filter_map(|p| p.ip).collect();
    let mut policies = Vec::new();
    for i in 0..u.int_in_range(0..=4)? {
        let types = match u.int_in_range(0..=6)? {
            0 => Some(vec!["Ingress"]),
            1 => Some(vec!["Egress"]),
            2 => Some(vec!["Ingress", "Egress"]),
            3 => Some(vec!["Egress", "Ingress"]),
            4 => Some(vec!["Egress", "Egress"]),
            _ => None,
        };
        policies.push(GPolicy {
            ns: pick(u, &NAMESPACES)?,
            name: format!("np{i}"),
            sel: if u.ratio(1, 3)? { Sel::default() } else { sel(u)? },
            types,
            ingress: rules(u, &pod_ips)?,
            egress: rules(u, &pod_ips)?,
        });
    }
    // 1-4 probes on the ports the world mentions and just outside its ranges (every probe
    // multiplies the flows checked, so they are few and chosen where answers change).
    let mut ports = vec![80u16, 53];
    for p in &pods {
        ports.extend(p.containers.iter().flatten().map(|c| c.1));
    }
    for r in policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress).flatten())
    {
        for spec in r.ports.iter().flatten() {
            if let Some(GPortRef::Num(n)) = spec.port {
                let end = spec.end.unwrap_or(n);
                ports.extend([n, n.saturating_sub(1).max(1), end, end.saturating_add(1)]);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    let mut probes = Vec::new();
    for _ in 0..u.int_in_range(1..=4)? {
        let probe = (pick(u, &PROTOS)?, pick(u, &ports)?);
        if !probes.contains(&probe) {
            probes.push(probe);
        }
    }
    Ok(GWorld {
        mode,
        namespaces,
        pods,
        policies,
        probes,
    })
}

// ---- rendering as manifests -------------------------------------------------------------

fn proto_name(p: u8) -> &'static str {
    match p {
        17 => "UDP",
        132 => "SCTP",
        _ => "TCP",
    }
}

fn sel_json(s: &Sel) -> Value {
    let mut m = Map::new();
    if !s.labels.is_empty() {
        m.insert("matchLabels".into(), json!(s.labels));
    }
    if !s.exprs.is_empty() {
        let exprs: Vec<Value> = s
            .exprs
            .iter()
            .map(|(k, op, vals)| {
                let mut e = json!({"key": k, "operator": op});
                if !vals.is_empty() {
                    e["values"] = json!(vals);
                }
                e
            })
            .collect();
        m.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Value::Object(m)
}

fn cidr_str((a, len): (Ipv4Addr, u8)) -> String {
    format!("{a}/{len}")
}

fn rule_json(r: &GRule, peers_key: &str) -> Value {
    let mut m = Map::new();
    if let Some(peers) = &r.peers {
        let ps: Vec<Value> = peers
            .iter()
            .map(|p| match p {
                GPeer::Pods { pod, ns } => {
                    let mut m = Map::new();
                    if let Some(s) = pod {
                        m.insert("podSelector".into(), sel_json(s));
                    }
                    if let Some(s) = ns {
                        m.insert("namespaceSelector".into(), sel_json(s));
                    }
                    Value::Object(m)
                }
                GPeer::Block {
                    cidr,
                    except,
                    except_key,
                } => {
                    let mut b = json!({"cidr": cidr_str(*cidr)});
                    if *except_key {
                        b["except"] = json!(except.iter().map(|e| cidr_str(*e)).collect::<Vec<_>>());
                    }
                    json!({"ipBlock": b})
                }
            })
            .collect();
        m.insert(peers_key.into(), Value::Array(ps));
    }
    if let Some(ports) = &r.ports {
        let ps: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut m = Map::new();
                if let Some(proto) = p.proto {
                    m.insert("protocol".into(), json!(proto_name(proto)));
                }
                match &p.port {
                    Some(GPortRef::Num(n)) => {
                        m.insert("port".into(), json!(n));
                    }
                    Some(GPortRef::Name(n)) => {
                        m.insert("port".into(), json!(n));
                    }
                    None => {}
                }
                if let Some(e) = p.end {
                    m.insert("endPort".into(), json!(e));
                }
                Value::Object(m)
            })
            .collect();
        m.insert("ports".into(), Value::Array(ps));
    }
    Value::Object(m)
}

fn documents(w: &GWorld) -> Vec<Value> {
    let mut docs = Vec::new();
    for (ns, labels) in &w.namespaces {
        let mut meta = json!({"name": ns});
        if !labels.is_empty() {
            meta["labels"] = json!(labels);
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}));
    }
    for p in &w.pods {
        let mut meta = json!({"name": p.name, "namespace": p.ns});
        if !p.labels.is_empty() {
            meta["labels"] = json!(p.labels);
        }
        let containers: Vec<Value> = p
            .containers
            .iter()
            .enumerate()
            .map(|(i, ports)| {
                let mut c = json!({"name": format!("c{i}")});
                if !ports.is_empty() {
                    c["ports"] = Value::Array(
                        ports
                            .iter()
                            .map(|(name, num, proto)| {
                                let mut cp = json!({"containerPort": num});
                                if let Some(n) = name {
                                    cp["name"] = json!(n);
                                }
                                if let Some(pr) = proto {
                                    cp["protocol"] = json!(proto_name(*pr));
                                }
                                cp
                            })
                            .collect(),
                    );
                }
                c
            })
            .collect();
        let mut spec = json!({"containers": containers});
        if let Some(sa) = p.sa {
            spec["serviceAccountName"] = json!(sa);
        }
        let mut doc = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec});
        if let Some(ip) = p.ip {
            doc["status"] = json!({"podIP": ip.to_string()});
        }
        docs.push(doc);
    }
    for p in &w.policies {
        let mut spec = json!({"podSelector": sel_json(&p.sel)});
        if let Some(t) = &p.types {
            spec["policyTypes"] = json!(t);
        }
        if let Some(rs) = &p.ingress {
            spec["ingress"] = Value::Array(rs.iter().map(|r| rule_json(r, "from")).collect());
        }
        if let Some(rs) = &p.egress {
            spec["egress"] = Value::Array(rs.iter().map(|r| rule_json(r, "to")).collect());
        }
        docs.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": p.name, "namespace": p.ns},
            "spec": spec,
        }));
    }
    docs
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::String(s)
            if !s.is_empty()
                && s.chars().all(|c| c.is_ascii_lowercase())
                && !matches!(s.as_str(), "true" | "false" | "null") =>
        {
            s.clone()
        }
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        // A JSON string or number is also a valid YAML scalar.
        other => other.to_string(),
    }
}

fn yaml_key(k: &str) -> String {
    if k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "./-".contains(c))
    {
        k.to_string()
    } else {
        Value::String(k.into()).to_string()
    }
}

/// Block-style YAML. `first_inline`: the first key goes on the current line (after `- `).
fn yaml_map(m: &Map<String, Value>, indent: usize, first_inline: bool, out: &mut String) {
    for (i, (k, v)) in m.iter().enumerate() {
        if !(i == 0 && first_inline) {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&yaml_key(k));
        out.push(':');
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                yaml_map(inner, indent + 2, false, out);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                yaml_seq(items, indent + 2, out);
            }
            _ => {
                let _ = writeln!(out, " {}", yaml_scalar(v));
            }
        }
    }
}

fn yaml_seq(items: &[Value], indent: usize, out: &mut String) {
    for v in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                out.push(' ');
                yaml_map(inner, indent + 2, true, out);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                yaml_seq(inner, indent + 2, out);
            }
            _ => {
                let _ = writeln!(out, " {}", yaml_scalar(v));
            }
        }
    }
}

/// Flow-style YAML (`{name: p0, labels: {app: web}}`), as most of Moat's test manifests.
fn yaml_flow(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&yaml_key(k));
                out.push_str(": ");
                yaml_flow(v, out);
            }
            out.push('}');
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                yaml_flow(v, out);
            }
            out.push(']');
        }
        _ => out.push_str(&yaml_scalar(v)),
    }
}

/// One YAML document (starting with `---`): block style, or top-level keys in block style
/// with flow-style values.
fn render(doc: &Value, block: bool) -> String {
    let mut out = String::from("---\n");
    if let Value::Object(m) = doc {
        if block {
            yaml_map(m, 0, false, &mut out);
        } else {
            for (k, v) in m {
                out.push_str(&yaml_key(k));
                out.push_str(": ");
                yaml_flow(v, &mut out);
                out.push('\n');
            }
        }
    }
    out
}

type Parsed = (Vec<Object>, Vec<ManifestError>);

thread_local! {
    /// Parsed documents by text. YAML parsing is most of an execution's cost and most
    /// documents repeat between executions (a mutation changes a few), so each distinct
    /// document is parsed once: like a manifest directory with one object per file.
    static PARSED: RefCell<HashMap<String, Parsed>> = RefCell::new(HashMap::new());
}

fn parse_cached(doc: &str) -> Parsed {
    PARSED.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(hit) = c.get(doc) {
            return hit.clone();
        }
        if c.len() > 20_000 {
            c.clear();
        }
        let parsed = parse_documents(Path::new("fuzz.yaml"), doc);
        c.insert(doc.to_string(), parsed.clone());
        parsed
    })
}

// ---- the reference model -----------------------------------------------------------------

struct Model<'a> {
    w: &'a GWorld,
    /// Per pod: its namespace's labels (with `kubernetes.io/metadata.name`).
    ns_labels: Vec<BTreeMap<String, String>>,
    /// Per pod: the indices of the pods sharing its identity (itself included).
    group: Vec<Vec<usize>>,
}

impl<'a> Model<'a> {
    fn new(w: &'a GWorld) -> Self {
        let ns_labels: Vec<BTreeMap<String, String>> = w
            .pods
            .iter()
            .map(|p| {
                let mut l = w.namespaces.get(p.ns).cloned().unwrap_or_default();
                l.insert("kubernetes.io/metadata.name".into(), p.ns.into());
                l
            })
            .collect();
        // Identity: namespace, labels without the volatile ones, service account.
        let key = |i: usize| {
            let p = &w.pods[i];
            let labels: BTreeMap<&String, &String> =
                p.labels.iter().filter(|(k, _)| *k != "pod-template-hash").collect();
            (p.ns, labels, p.sa.unwrap_or("default"))
        };
        let group = (0..w.pods.len())
            .map(|i| (0..w.pods.len()).filter(|&j| key(i) == key(j)).collect())
            .collect();
        Self { w, ns_labels, group }
    }

    fn sel_matches(s: &Sel, labels: &BTreeMap<String, String>) -> bool {
        s.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && s.exprs.iter().all(|(k, op, vals)| {
                let v = labels.get(k);
                match *op {
                    "In" => v.is_some_and(|v| vals.contains(v)),
                    "NotIn" => v.is_none_or(|v| !vals.contains(v)),
                    "Exists" => v.is_some(),
                    _ => v.is_none(),
                }
            })
    }

    fn peer_matches(&self, policy_ns: &str, peers: &Option<Vec<GPeer>>, pod: usize) -> bool {
        let Some(peers) = peers.as_ref().filter(|p| !p.is_empty()) else {
            return true;
        };
        let p = &self.w.pods[pod];
        peers.iter().any(|peer| match peer {
            GPeer::Pods { pod: ps, ns } => {
                let ns_ok = match ns {
                    None => p.ns == policy_ns,
                    Some(s) => Self::sel_matches(s, &self.ns_labels[pod]),
                };
                ns_ok && ps.as_ref().is_none_or(|s| Self::sel_matches(s, &p.labels))
            }
            GPeer::Block { cidr, except, .. } => {
                // The identity is inside when every address it has is (and it has one).
                let ips: Vec<Ipv4Addr> = self.group[pod].iter().filter_map(|&j| self.w.pods[j].ip).collect();
                !ips.is_empty()
                    && ips
                        .iter()
                        .all(|&ip| inside(ip, *cidr) && !except.iter().any(|&e| inside(ip, e)))
            }
        })
    }

    /// `owner`: the pod whose named ports count (the destination).
    fn ports_match(&self, ports: &Option<Vec<GPort>>, owner: usize, proto: u8, port: u16) -> bool {
        let Some(ports) = ports.as_ref().filter(|p| !p.is_empty()) else {
            return true;
        };
        ports.iter().any(|spec| {
            spec.proto.unwrap_or(6) == proto
                && match &spec.port {
                    None => true,
                    Some(GPortRef::Num(n)) => (*n..=spec.end.unwrap_or(*n)).contains(&port),
                    Some(GPortRef::Name(name)) => self.group[owner].iter().any(|&j| {
                        self.w.pods[j]
                            .containers
                            .iter()
                            .flatten()
                            .any(|(n, num, pr)| *n == Some(*name) && pr.unwrap_or(6) == proto && *num == port)
                    }),
                }
        })
    }

    fn types(p: &GPolicy) -> (bool, bool) {
        match &p.types {
            Some(t) => (t.contains(&"Ingress"), t.contains(&"Egress")),
            None => (true, p.egress.as_ref().is_some_and(|r| !r.is_empty())),
        }
    }

    /// Whether `subject` lets the flow pass in `ingress` or egress direction.
    fn direction_ok(&self, subject: usize, peer: usize, owner: usize, ingress: bool, proto: u8, port: u16) -> bool {
        let s = &self.w.pods[subject];
        let mut isolated = self.w.mode == Mode::Always;
        let mut allowed = false;
        for p in &self.w.policies {
            let (ti, te) = Self::types(p);
            if p.ns != s.ns || !Self::sel_matches(&p.sel, &s.labels) || !(if ingress { ti } else { te }) {
                continue;
            }
            isolated = true;
            let rules = if ingress { &p.ingress } else { &p.egress };
            allowed |= rules
                .iter()
                .flatten()
                .any(|r| self.peer_matches(p.ns, &r.peers, peer) && self.ports_match(&r.ports, owner, proto, port));
        }
        !isolated || allowed
    }

    fn allowed(&self, src: usize, dst: usize, proto: u8, port: u16) -> bool {
        src == dst
            || self.w.mode == Mode::Never
            || (self.direction_ok(src, dst, dst, false, proto, port)
                && self.direction_ok(dst, src, dst, true, proto, port))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(g) = world(&mut u) else {
        return;
    };
    // Each document in block or flow style (a flag per document, from the input).
    let docs: Vec<String> = documents(&g)
        .iter()
        .map(|d| render(d, u.ratio(1, 4).unwrap_or(false)))
        .collect();
    let text = docs.concat();
    if std::env::var_os("MOAT_FUZZ_PRINT").is_some() {
        eprintln!("# mode {:?}, probes {:?}\n{text}", g.mode, g.probes);
    }
    let file = Path::new("fuzz.yaml");
    let mut objects = Vec::new();
    for d in &docs {
        let (o, errors) = parse_cached(d);
        assert!(errors.is_empty(), "generated manifest rejected: {errors:#?}\n{d}");
        objects.extend(o);
    }
    // Now and then the whole stream in one file, uncached: the same objects.
    if u.ratio(1, 8).unwrap_or(false) {
        let (whole, errors) = parse_documents(file, &text);
        assert!(errors.is_empty(), "generated manifests rejected: {errors:#?}\n{text}");
        assert_eq!(
            whole, objects,
            "one stream and one file per document decode differently\n{text}"
        );
    }
    let errors = Vec::new();
    let m = Manifests {
        objects: objects.into_iter().map(|o| (file.to_path_buf(), o)).collect(),
        errors,
    };
    let world = World::from_manifests(&m, g.mode);
    let mut compiler = Compiler::new();
    let compiled = compiler.compile(&world);
    let ctx = || format!("mode {:?}\n{text}", g.mode);

    // Recompiling the same world changes nothing.
    let again = compiler.compile(&world);
    assert!(diff(&compiled, &again).is_empty(), "recompile differs\n{}", ctx());
    assert_eq!(compiled, again, "recompile differs\n{}", ctx());

    // The map holds only contract prefixes, with host bits cleared.
    for (prefix, key) in compiled.policy.keys() {
        assert!(is_stored_prefix(*prefix), "prefix {prefix} stored\n{}", ctx());
        assert_eq!(
            &mask_key(key, *prefix),
            key,
            "key {key:?}/{prefix} has host bits\n{}",
            ctx()
        );
    }

    // World pods in the generator's order, and identities grouping like the model's.
    let model = Model::new(&g);
    let info: Vec<_> = g
        .pods
        .iter()
        .map(|p| {
            world
                .pod(p.ns, &p.name)
                .unwrap_or_else(|| panic!("pod {}/{} missing from the world\n{}", p.ns, p.name, ctx()))
        })
        .collect();
    assert_eq!(world.pods.len(), g.pods.len());
    for i in 0..g.pods.len() {
        for j in 0..g.pods.len() {
            assert_eq!(
                info[i].identity == info[j].identity,
                model.group[i].contains(&j),
                "identities of {} and {} disagree with their labels\n{}",
                g.pods[i].name,
                g.pods[j].name,
                ctx()
            );
        }
        assert_eq!(info[i].ipv4, g.pods[i].ip);
    }

    let mx = matrix(&world, &compiled, &g.probes);
    let _ = mx.to_string();
    let row = |i: usize| {
        let name = format!("{}/{}", g.pods[i].ns, g.pods[i].name);
        mx.pods
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name} missing from the matrix"))
    };
    for (pi, &(proto, port)) in g.probes.iter().enumerate() {
        for s in 0..g.pods.len() {
            for d in 0..g.pods.len() {
                let cell = mx.allowed[pi][row(s)][row(d)];
                let flow = || {
                    format!(
                        "{}/{} -> {}/{} {}/{port}",
                        g.pods[s].ns,
                        g.pods[s].name,
                        g.pods[d].ns,
                        g.pods[d].name,
                        proto_name(proto)
                    )
                };
                let from = Endpoint::Pod {
                    namespace: g.pods[s].ns.into(),
                    name: g.pods[s].name.clone(),
                };
                let to = Endpoint::Pod {
                    namespace: g.pods[d].ns.into(),
                    name: g.pods[d].name.clone(),
                };
                let ex = explain(&world, &compiled, &from, &to, proto, port)
                    .unwrap_or_else(|e| panic!("explain {}: {e}\n{}", flow(), ctx()));
                if pi == 0 {
                    let _ = ex.to_string();
                }
                assert_eq!(
                    ex.allowed,
                    cell,
                    "matrix says {cell}, explain says {} for {}\n{ex}\n{}",
                    ex.allowed,
                    flow(),
                    ctx()
                );
                // Each direction's check is the plain lookup, and every local pod is managed.
                let directions = if pi == 0 { 2 } else { 0 };
                for (check, dir, subject, peer) in [
                    (&ex.egress, direction::EGRESS, info[s].identity, info[d].identity),
                    (&ex.ingress, direction::INGRESS, info[d].identity, info[s].identity),
                ]
                .into_iter()
                .take(directions)
                {
                    if s == d {
                        assert!(check.is_none());
                        continue;
                    }
                    let c = check
                        .as_ref()
                        .unwrap_or_else(|| panic!("no check for a local pod: {}\n{}", flow(), ctx()));
                    let l = lookup(&compiled.policy, subject, dir, peer, proto, port);
                    assert_eq!(c.decision, l, "explain and lookup differ: {}\n{}", flow(), ctx());
                    assert_ne!(l, Decision::Unmanaged, "local pod unmanaged: {}\n{}", flow(), ctx());
                }
                // By address: the same answer (first probe only: lookups dominate the cost).
                if let (0, Some(a), Some(b)) = (pi, g.pods[s].ip, g.pods[d].ip) {
                    let by_ip = explain(&world, &compiled, &Endpoint::Ip(a), &Endpoint::Ip(b), proto, port)
                        .unwrap_or_else(|e| panic!("explain {}: {e}\n{}", flow(), ctx()));
                    assert_eq!(by_ip.allowed, cell, "explain by IP differs: {}\n{}", flow(), ctx());
                }
                // The reference model.
                let want = model.allowed(s, d, proto, port);
                assert_eq!(
                    cell,
                    want,
                    "compiler says {cell}, the NetworkPolicy model says {want} for {}\n{ex}\n{}",
                    flow(),
                    ctx()
                );
            }
        }
    }
});
