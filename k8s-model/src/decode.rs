//! Generic JSON value → typed objects, checking each field the way the API server does and
//! naming the exact field path on failure.
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use ipnetwork::IpNetwork;

use super::syntax;
use super::{
    ContainerPort, LabelSelector, Namespace, NetworkPolicy, Object, Operator, Peer, Pod, PortRef, PortSpec,
    Requirement, Rule, NAMESPACE_NAME_LABEL,
};

/// Why a document was rejected.
pub(super) struct DecodeError {
    pub object: String,
    pub field: String,
    pub message: String,
}

/// (field path, message).
pub(super) type Fail = (String, String);
pub(super) type R<T> = Result<T, Fail>;

pub(super) fn fail<T>(field: &str, message: impl Into<String>) -> R<T> {
    Err((field.to_string(), message.into()))
}

pub(super) fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

pub(super) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn item(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub(super) fn as_map<'a>(v: &'a Value, path: &str) -> R<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| (path.to_string(), format!("expected a mapping, got {}", describe(v))))
}

pub(super) fn as_str<'a>(v: &'a Value, path: &str) -> R<&'a str> {
    v.as_str()
        .ok_or_else(|| (path.to_string(), format!("expected a string, got {}", describe(v))))
}

/// A present, non-null field.
pub(super) fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

/// Decodes `v` into the k8s-openapi type `T` strictly, as `kubectl apply` validates by
/// default: a field the API does not define (k8s-openapi itself skips those silently) or a
/// value of the wrong type is an error naming the field path. The typed object is then
/// checked semantically by the converters below, the same ones cluster mode uses on the
/// objects its watchers deliver.
pub(super) fn strict<T: DeserializeOwned>(v: &Value) -> R<T> {
    let mut unknown: Option<String> = None;
    let mut on_ignored = |p: serde_ignored::Path<'_>| {
        if unknown.is_none() {
            unknown = Some(ignored_path(&p));
        }
    };
    let de = serde_ignored::Deserializer::new(v, &mut on_ignored);
    let t: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        (
            if path == "." { String::new() } else { path },
            friendly(&e.inner().to_string()),
        )
    })?;
    if let Some(path) = unknown {
        let name = path.rsplit(['.', '[']).next().unwrap_or_default().to_string();
        return fail(&path, format!("unknown field {name:?}"));
    }
    Ok(t)
}

/// serde's "invalid type: sequence, expected IntOrString" in the words the rest of this
/// module uses: "expected a number or a name, got a list".
fn friendly(msg: &str) -> String {
    let Some((got, want)) = msg
        .strip_prefix("invalid type: ")
        .and_then(|m| m.rsplit_once(", expected "))
    else {
        return msg.to_string();
    };
    let integer = |w: &str| matches!(w, "i32" | "i64" | "u16" | "u32" | "u64" | "IntOrString");
    if let Some(v) = got.strip_prefix("floating point ") {
        if integer(want) {
            return format!("expected an integer, got {}", v.trim_matches('`'));
        }
    }
    let got = match got {
        "map" => "a mapping".to_string(),
        "sequence" => "a list".to_string(),
        "unit" | "null" => "null".to_string(),
        g if g.starts_with("string ") => "a string".to_string(),
        g if g.starts_with("integer ") || g.starts_with("floating point ") => "a number".to_string(),
        g if g.starts_with("boolean ") => "a boolean".to_string(),
        g => g.to_string(),
    };
    let want = match want {
        "a sequence" => "a list",
        "IntOrString" => "a number or a name",
        w if integer(w) => "an integer",
        "a string" | "a boolean" => want,
        w if w == "a map" || w.starts_with("struct ") || w.chars().next().is_some_and(char::is_uppercase) => {
            "a mapping"
        }
        w => w,
    };
    format!("expected {want}, got {got}")
}

/// `spec.ingress[0].to` from serde_ignored's path.
fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => item(&ignored_path(parent), *index),
        P::Map { parent, key } => child(&ignored_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// A required non-empty string field.
pub(super) fn req_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> R<&'a str> {
    let field = child(path, key);
    match get(m, key) {
        None => fail(&field, "is required"),
        Some(v) => match as_str(v, &field)? {
            "" => fail(&field, "must not be empty"),
            s => Ok(s),
        },
    }
}

pub(super) fn opt_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> R<Option<&'a str>> {
    get(m, key).map(|v| as_str(v, &child(path, key))).transpose()
}

/// A label map (`metadata.labels`, `matchLabels`) with key and value syntax checked.
pub(super) fn labels(v: &Value, path: &str) -> R<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in as_map(v, path)? {
        let field = child(path, k);
        syntax::check_label_key(k).map_err(|e| (path.to_string(), e))?;
        let v = as_str(v, &field)?;
        syntax::check_label_value(v).map_err(|e| (field.clone(), e))?;
        out.insert(k.clone(), v.to_string());
    }
    Ok(out)
}

/// Kinds that live outside namespaces (their `metadata.namespace` is ignored).
const CLUSTER_SCOPED: [&str; 9] = [
    "Namespace",
    "Node",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "IngressClass",
];

/// Decodes one non-null document.
pub(super) fn object(v: &Value) -> Result<Object, DecodeError> {
    let anon = |(field, message): Fail| DecodeError {
        object: String::new(),
        field,
        message,
    };
    let Some(m) = v.as_object() else {
        return Err(anon((
            String::new(),
            format!(
                "a manifest must be a mapping with apiVersion, kind and metadata, got {}",
                describe(v)
            ),
        )));
    };
    let api_version = req_str(m, "apiVersion", "").map_err(anon)?;
    let kind = req_str(m, "kind", "").map_err(anon)?;
    let named = |(field, message): Fail| DecodeError {
        object: kind.to_string(),
        field,
        message,
    };
    let meta = match get(m, "metadata") {
        None => return Err(named(("metadata".into(), "is required".into()))),
        Some(meta) => as_map(meta, "metadata").map_err(named)?,
    };
    let name = req_str(meta, "name", "metadata").map_err(named)?;
    let cluster_scoped = CLUSTER_SCOPED.contains(&kind);
    let namespace = match opt_str(meta, "namespace", "metadata").map_err(named)? {
        _ if cluster_scoped => "",
        None | Some("") => "default",
        Some(ns) => ns,
    };
    let named_at = |field: &str| {
        let field = field.to_string();
        move |message: String| DecodeError {
            object: kind.to_string(),
            field,
            message,
        }
    };
    if matches!(kind, "Pod" | "NetworkPolicy" | "EndpointSlice" | "MoatNetworkPolicy") {
        syntax::check_object_name(name).map_err(named_at("metadata.name"))?;
    }
    if kind == "Namespace" {
        syntax::check_dns_label(name).map_err(named_at("metadata.name"))?;
    } else if !cluster_scoped {
        syntax::check_dns_label(namespace).map_err(named_at("metadata.namespace"))?;
    }
    let object = if cluster_scoped {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    };
    let err = |(field, message): Fail| DecodeError {
        object: object.clone(),
        field,
        message,
    };
    const KNOWN: [&str; 7] = [
        "Namespace",
        "Pod",
        "NetworkPolicy",
        "Service",
        "EndpointSlice",
        "Node",
        "MoatNetworkPolicy",
    ];
    if let Some(k) = KNOWN.iter().find(|k| k.eq_ignore_ascii_case(kind) && **k != kind) {
        return Err(named((
            "kind".into(),
            format!("{kind:?} is not a kind; did you mean {k:?}?"),
        )));
    }
    let group_kinds: &[&str] = match api_version {
        "networking.k8s.io/v1" => &["NetworkPolicy", "Ingress", "IngressClass"],
        "discovery.k8s.io/v1" => &["EndpointSlice"],
        super::moat_policy::API_VERSION => &["MoatNetworkPolicy"],
        _ => &[],
    };
    if !group_kinds.is_empty() && !group_kinds.contains(&kind) {
        return Err(named((
            "kind".into(),
            format!(
                "{api_version} has no kind {kind:?} (expected one of {})",
                group_kinds.join(", ")
            ),
        )));
    }
    let want_version = match kind {
        "Namespace" | "Pod" | "Service" | "Node" => "v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "MoatNetworkPolicy" => super::moat_policy::API_VERSION,
        _ => api_version,
    };
    if api_version != want_version {
        return Err(err((
            "apiVersion".into(),
            format!("{api_version:?}: {kind} is served as {want_version}"),
        )));
    }
    let meta_labels = match get(meta, "labels") {
        Some(l) => labels(l, "metadata.labels").map_err(err)?,
        None => BTreeMap::new(),
    };
    Ok(match kind {
        "Namespace" => {
            strict::<core::Namespace>(v).map_err(err)?;
            let mut labels = meta_labels;
            labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
            Object::Namespace(Namespace {
                name: name.into(),
                labels,
            })
        }
        "Pod" => Object::Pod(pod(namespace, name, meta_labels, &strict(v).map_err(err)?).map_err(err)?),
        "NetworkPolicy" => {
            Object::NetworkPolicy(network_policy(namespace, name, &strict(v).map_err(err)?).map_err(err)?)
        }
        "Node" => Object::Node(node(name, meta_labels, &strict(v).map_err(err)?).map_err(err)?),
        "MoatNetworkPolicy" => Object::MoatNetworkPolicy(super::moat_policy::decode(namespace, name, v).map_err(err)?),
        "Service" => {
            syntax::check_dns_label(name).map_err(named_at("metadata.name"))?;
            Object::Service(super::service::service(namespace, name, &strict(v).map_err(err)?).map_err(err)?)
        }
        "EndpointSlice" => Object::EndpointSlice(
            super::service::endpoint_slice(namespace, name, &meta_labels, &strict(v).map_err(err)?).map_err(err)?,
        ),
        _ => Object::Other {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        },
    })
}

/// `protocol` of a port (default TCP).
pub(super) fn protocol_of(p: Option<&str>, path: &str) -> R<u8> {
    Ok(match p {
        None | Some("TCP") => super::proto::TCP,
        Some("UDP") => super::proto::UDP,
        Some("SCTP") => super::proto::SCTP,
        Some(other) => {
            return fail(
                &child(path, "protocol"),
                format!("{other:?} is not one of TCP, UDP, SCTP"),
            )
        }
    })
}

/// A label map with key and value syntax checked.
pub(super) fn checked_labels(m: Option<&BTreeMap<String, String>>, path: &str) -> R<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in m.into_iter().flatten() {
        syntax::check_label_key(k).map_err(|e| (path.to_string(), e))?;
        syntax::check_label_value(v).map_err(|e| (child(path, k), e))?;
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// An integer field in `lo..=hi`.
fn in_range(n: i32, path: &str, lo: i32, hi: i32) -> R<u16> {
    if (lo..=hi).contains(&n) {
        Ok(u16::try_from(n).unwrap_or(0))
    } else {
        fail(path, format!("{n} must be between {lo} and {hi}, inclusive"))
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

pub(super) fn pod(namespace: &str, name: &str, labels: BTreeMap<String, String>, p: &core::Pod) -> R<Pod> {
    let Some(spec) = &p.spec else {
        return fail("spec", "is required");
    };
    if spec.containers.is_empty() {
        return fail("spec.containers", "must have at least one container");
    }
    let mut ports = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let path = item("spec.containers", i);
        if c.name.is_empty() {
            return fail(&child(&path, "name"), "is required");
        }
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let path = item(&child(&path, "ports"), j);
            if p.container_port == 0 {
                return fail(&child(&path, "containerPort"), "is required (1-65535)");
            }
            let port = in_range(p.container_port, &child(&path, "containerPort"), 1, 65535)?;
            let name = p.name.as_deref().unwrap_or_default();
            if !name.is_empty() {
                syntax::check_port_name(name).map_err(|e| (child(&path, "name"), e))?;
            }
            ports.push(ContainerPort {
                name: name.into(),
                port,
                protocol: protocol_of(p.protocol.as_deref(), &path)?,
            });
        }
    }
    let service_account = non_empty(spec.service_account_name.as_deref())
        .or_else(|| non_empty(spec.service_account.as_deref()))
        .unwrap_or("default");
    let mut ip = None;
    if let Some(s) = p.status.as_ref().and_then(|s| non_empty(s.pod_ip.as_deref())) {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => ip = Some(a),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => return fail("status.podIP", format!("{s:?} is not a valid IP address")),
        }
    }
    Ok(Pod {
        namespace: namespace.into(),
        name: name.into(),
        labels,
        service_account: service_account.into(),
        ports,
        ip,
    })
}

pub(super) fn network_policy(namespace: &str, name: &str, np: &net::NetworkPolicy) -> R<NetworkPolicy> {
    let Some(spec) = &np.spec else {
        return fail("spec", "is required");
    };
    let pod_selector = match &spec.pod_selector {
        None => return fail("spec.podSelector", "is required (use {} to select every pod)"),
        Some(s) => selector(s, "spec.podSelector")?,
    };
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.len() > 2 {
        return fail("spec.policyTypes", "may not specify more than two policyTypes");
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => {
                return fail(
                    &item("spec.policyTypes", i),
                    format!("{other:?} is not one of Ingress, Egress"),
                )
            }
        }
    }
    let ingress_rules = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(r.from.as_deref(), r.ports.as_deref(), &item("spec.ingress", i), "from"))
        .collect::<R<Vec<_>>>()?;
    let egress_rules = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(r.to.as_deref(), r.ports.as_deref(), &item("spec.egress", i), "to"))
        .collect::<R<Vec<_>>>()?;
    // Kubernetes defaulting (SetDefaults_NetworkPolicy): no policyTypes means Ingress, plus
    // Egress when the policy has at least one egress rule.
    if types.is_empty() {
        ingress = true;
        egress = !egress_rules.is_empty();
    }
    Ok(NetworkPolicy {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector,
        ingress,
        egress,
        ingress_rules,
        egress_rules,
    })
}

fn rule(
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    path: &str,
    peers_key: &str,
) -> R<Rule> {
    let peers = peers
        .map(|ps| {
            let base = child(path, peers_key);
            ps.iter()
                .enumerate()
                .map(|(j, p)| peer(p, &item(&base, j)))
                .collect::<R<Vec<_>>>()
        })
        .transpose()?;
    let ports = ports
        .map(|ps| {
            let base = child(path, "ports");
            ps.iter()
                .enumerate()
                .map(|(j, p)| port(p, &item(&base, j)))
                .collect::<R<Vec<_>>>()
        })
        .transpose()?;
    Ok(Rule { peers, ports })
}

pub(super) fn selector(s: &meta::LabelSelector, path: &str) -> R<LabelSelector> {
    let match_labels = checked_labels(s.match_labels.as_ref(), &child(path, "matchLabels"))?;
    // Identities leave these per-replica labels out, so a selector on them could not be
    // enforced per pod: refuse it rather than widen it to every replica.
    let volatile = |key: &str, field: String| -> R<()> {
        if moat_identity::VOLATILE.contains(&key) {
            return fail(
                &field,
                format!("selecting on {key:?} is not supported: it differs per replica and is not part of security identities"),
            );
        }
        Ok(())
    };
    for k in match_labels.keys() {
        volatile(k, child(&child(path, "matchLabels"), k))?;
    }
    let mut match_expressions = Vec::new();
    let base = child(path, "matchExpressions");
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let path = item(&base, i);
        if e.key.is_empty() {
            return fail(&child(&path, "key"), "is required");
        }
        syntax::check_label_key(&e.key).map_err(|msg| (child(&path, "key"), msg))?;
        volatile(&e.key, child(&path, "key"))?;
        if e.operator.is_empty() {
            return fail(&child(&path, "operator"), "is required");
        }
        let operator = Operator::parse(&e.operator).ok_or_else(|| {
            (
                child(&path, "operator"),
                format!("{:?} is not one of In, NotIn, Exists, DoesNotExist", e.operator),
            )
        })?;
        let vpath = child(&path, "values");
        let values = e.values.clone().unwrap_or_default();
        for (j, v) in values.iter().enumerate() {
            syntax::check_label_value(v).map_err(|msg| (item(&vpath, j), msg))?;
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return fail(&vpath, format!("must be non-empty when operator is {operator}"));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return fail(&vpath, format!("must be empty when operator is {operator}"));
            }
            _ => {}
        }
        match_expressions.push(Requirement {
            key: e.key.clone(),
            operator,
            values,
        });
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

fn peer(p: &net::NetworkPolicyPeer, path: &str) -> R<Peer> {
    let pod_selector = p
        .pod_selector
        .as_ref()
        .map(|s| selector(s, &child(path, "podSelector")))
        .transpose()?;
    let namespace_selector = p
        .namespace_selector
        .as_ref()
        .map(|s| selector(s, &child(path, "namespaceSelector")))
        .transpose()?;
    let Some(block) = &p.ip_block else {
        if pod_selector.is_none() && namespace_selector.is_none() {
            return fail(path, "must specify a peer: podSelector, namespaceSelector or ipBlock");
        }
        return Ok(Peer::Pods {
            pod_selector,
            namespace_selector,
        });
    };
    let bpath = child(path, "ipBlock");
    if pod_selector.is_some() || namespace_selector.is_some() {
        return fail(
            &bpath,
            "may not be combined with podSelector or namespaceSelector in one peer",
        );
    }
    let cpath = child(&bpath, "cidr");
    let cidr_s = block.cidr.as_str();
    if cidr_s.is_empty() {
        return fail(&cpath, "is required");
    }
    let cidr = syntax::parse_cidr(cidr_s).map_err(|e| (cpath.clone(), e))?;
    let epath = child(&bpath, "except");
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (i, s) in block.except.iter().flatten().enumerate() {
        let path = item(&epath, i);
        let e = syntax::parse_cidr(s).map_err(|e| (path.clone(), e))?;
        if !syntax::strictly_contains(cidr, e) {
            return fail(&path, format!("{s:?} must be strictly within cidr {cidr_s:?}"));
        }
        match e {
            IpNetwork::V4(n) => v4.push(n),
            IpNetwork::V6(_) => v6.push(s.clone()),
        }
    }
    Ok(match cidr {
        IpNetwork::V4(n) => Peer::IpBlock { cidr: n, except: v4 },
        IpNetwork::V6(_) => Peer::IpBlockV6 {
            cidr: cidr_s.into(),
            except: v6,
        },
    })
}

fn port(p: &net::NetworkPolicyPort, path: &str) -> R<PortSpec> {
    let protocol = protocol_of(p.protocol.as_deref(), path)?;
    let ppath = child(path, "port");
    let port = match &p.port {
        None => None,
        Some(IntOrString::String(s)) => {
            syntax::check_port_name(s).map_err(|e| (ppath.clone(), e))?;
            Some(PortRef::Name(s.clone()))
        }
        Some(IntOrString::Int(n)) => Some(PortRef::Number(in_range(*n, &ppath, 1, 65535)?)),
    };
    let epath = child(path, "endPort");
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(_), None) => return fail(&epath, "may not be specified when port is not specified"),
        (Some(_), Some(PortRef::Name(_))) => return fail(&epath, "may not be specified when port is a name"),
        (Some(e), Some(PortRef::Number(p))) => {
            let e = in_range(e, &epath, 1, 65535)?;
            if e < *p {
                return fail(&epath, format!("{e} must be greater than or equal to port ({p})"));
            }
            Some(e)
        }
    };
    Ok(PortSpec {
        protocol,
        port,
        end_port,
    })
}

/// A Node: its name, labels, pod CIDRs and addresses.
pub(super) fn node(name: &str, labels: BTreeMap<String, String>, n: &core::Node) -> R<super::Node> {
    let mut pod_cidrs = Vec::new();
    let spec = n.spec.as_ref();
    let cidrs = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    for (i, c) in cidrs.iter().enumerate() {
        if let IpNetwork::V4(n) = syntax::parse_cidr(c).map_err(|e| (item("spec.podCIDRs", i), e))? {
            pod_cidrs.push(n);
        }
    }
    let mut addresses = Vec::new();
    for (i, a) in n.status.iter().flat_map(|s| s.addresses.iter().flatten()).enumerate() {
        match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if a.type_ == "InternalIP" || a.type_ == "ExternalIP" => addresses.push(ip),
            Ok(_) => {}
            Err(_) if a.type_ == "InternalIP" || a.type_ == "ExternalIP" => {
                return fail(
                    &child(&item("status.addresses", i), "address"),
                    format!("{:?} is not a valid IP address", a.address),
                )
            }
            Err(_) => {}
        }
    }
    Ok(super::Node {
        name: name.into(),
        labels,
        pod_cidrs,
        addresses,
    })
}
