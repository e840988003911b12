//! Generic JSON value → typed objects, checking each field the way the API server does and
//! naming the exact field path on failure.
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::syntax::{self, Cidr};
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

pub(super) fn as_list<'a>(v: &'a Value, path: &str) -> R<&'a [Value]> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| (path.to_string(), format!("expected a list, got {}", describe(v))))
}

pub(super) fn as_str<'a>(v: &'a Value, path: &str) -> R<&'a str> {
    v.as_str()
        .ok_or_else(|| (path.to_string(), format!("expected a string, got {}", describe(v))))
}

/// A present, non-null field.
pub(super) fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

/// Rejects fields the API does not define (strict field validation, as `kubectl apply`
/// does by default): a misspelt `podSelector` or a `to:` in an ingress rule must not
/// silently widen a policy.
pub(super) fn known(m: &Map<String, Value>, path: &str, fields: &[&str]) -> R<()> {
    match m.keys().find(|k| !fields.contains(&k.as_str())) {
        Some(k) => fail(
            &child(path, k),
            format!("unknown field {k:?} (expected one of {})", fields.join(", ")),
        ),
        None => Ok(()),
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

pub(super) fn opt_list<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> R<Option<&'a [Value]>> {
    get(m, key).map(|v| as_list(v, &child(path, key))).transpose()
}

/// An integer field in `lo..=hi`.
pub(super) fn int_in(v: &Value, path: &str, lo: u64, hi: u64) -> R<u64> {
    let Value::Number(n) = v else {
        return fail(path, format!("expected an integer, got {}", describe(v)));
    };
    match n.as_u64() {
        Some(x) if (lo..=hi).contains(&x) => Ok(x),
        _ if n.is_f64() => fail(path, format!("expected an integer, got {n}")),
        _ => fail(path, format!("{n} must be between {lo} and {hi}, inclusive")),
    }
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
    if matches!(kind, "Pod" | "NetworkPolicy" | "EndpointSlice") {
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
    const KNOWN: [&str; 5] = ["Namespace", "Pod", "NetworkPolicy", "Service", "EndpointSlice"];
    if let Some(k) = KNOWN.iter().find(|k| k.eq_ignore_ascii_case(kind) && **k != kind) {
        return Err(named((
            "kind".into(),
            format!("{kind:?} is not a kind; did you mean {k:?}?"),
        )));
    }
    let group_kinds: &[&str] = match api_version {
        "networking.k8s.io/v1" => &["NetworkPolicy", "Ingress", "IngressClass"],
        "discovery.k8s.io/v1" => &["EndpointSlice"],
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
        "Namespace" | "Pod" | "Service" => "v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
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
    let spec = get(m, "spec");
    Ok(match kind {
        "Namespace" => {
            let mut labels = meta_labels;
            labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
            Object::Namespace(Namespace {
                name: name.into(),
                labels,
            })
        }
        "Pod" => Object::Pod(pod(namespace, name, meta_labels, spec, get(m, "status")).map_err(err)?),
        "NetworkPolicy" => Object::NetworkPolicy(network_policy(namespace, name, spec).map_err(err)?),
        "Service" => {
            syntax::check_dns_label(name).map_err(named_at("metadata.name"))?;
            Object::Service(super::service::service(namespace, name, spec, get(m, "status")).map_err(err)?)
        }
        "EndpointSlice" => {
            Object::EndpointSlice(super::service::endpoint_slice(namespace, name, &meta_labels, m).map_err(err)?)
        }
        _ => Object::Other {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        },
    })
}

pub(super) fn protocol(m: &Map<String, Value>, path: &str) -> R<u8> {
    Ok(match opt_str(m, "protocol", path)? {
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

fn pod(
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    spec: Option<&Value>,
    status: Option<&Value>,
) -> R<Pod> {
    let Some(spec) = spec else {
        return fail("spec", "is required");
    };
    let spec = as_map(spec, "spec")?;
    let containers = match opt_list(spec, "containers", "spec")? {
        None | Some([]) => return fail("spec.containers", "must have at least one container"),
        Some(c) => c,
    };
    let mut ports = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let path = item("spec.containers", i);
        let c = as_map(c, &path)?;
        req_str(c, "name", &path)?;
        for (j, p) in opt_list(c, "ports", &path)?.unwrap_or_default().iter().enumerate() {
            let path = item(&child(&path, "ports"), j);
            let p = as_map(p, &path)?;
            let port = match get(p, "containerPort") {
                None => return fail(&child(&path, "containerPort"), "is required"),
                Some(v) => int_in(v, &child(&path, "containerPort"), 1, 65535)?,
            };
            let name = opt_str(p, "name", &path)?.unwrap_or_default();
            if !name.is_empty() {
                syntax::check_port_name(name).map_err(|e| (child(&path, "name"), e))?;
            }
            ports.push(ContainerPort {
                name: name.into(),
                port: u16::try_from(port).unwrap_or(0),
                protocol: protocol(p, &path)?,
            });
        }
    }
    let service_account = match opt_str(spec, "serviceAccountName", "spec")? {
        Some(sa) if !sa.is_empty() => sa,
        _ => match opt_str(spec, "serviceAccount", "spec")? {
            Some(sa) if !sa.is_empty() => sa,
            _ => "default",
        },
    };
    let mut ip = None;
    if let Some(status) = status {
        let status = as_map(status, "status")?;
        if let Some(s) = opt_str(status, "podIP", "status")?.filter(|s| !s.is_empty()) {
            match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => ip = Some(a),
                Ok(IpAddr::V6(_)) => {}
                Err(_) => return fail("status.podIP", format!("{s:?} is not a valid IP address")),
            }
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

fn network_policy(namespace: &str, name: &str, spec: Option<&Value>) -> R<NetworkPolicy> {
    let Some(spec) = spec else {
        return fail("spec", "is required");
    };
    let spec = as_map(spec, "spec")?;
    known(spec, "spec", &["podSelector", "policyTypes", "ingress", "egress"])?;
    let pod_selector = match get(spec, "podSelector") {
        None => return fail("spec.podSelector", "is required (use {} to select every pod)"),
        Some(s) => selector(s, "spec.podSelector")?,
    };
    let types = opt_list(spec, "policyTypes", "spec")?.unwrap_or_default();
    if types.len() > 2 {
        return fail("spec.policyTypes", "may not specify more than two policyTypes");
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        let path = item("spec.policyTypes", i);
        match as_str(t, &path)? {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => return fail(&path, format!("{other:?} is not one of Ingress, Egress")),
        }
    }
    let ingress_rules = rules(spec, "ingress", "from")?;
    let egress_rules = rules(spec, "egress", "to")?;
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

fn rules(spec: &Map<String, Value>, key: &str, peers_key: &str) -> R<Vec<Rule>> {
    let path = child("spec", key);
    let mut out = Vec::new();
    for (i, r) in opt_list(spec, key, "spec")?.unwrap_or_default().iter().enumerate() {
        let path = item(&path, i);
        let r = as_map(r, &path)?;
        known(r, &path, &[peers_key, "ports"])?;
        let peers = opt_list(r, peers_key, &path)?
            .map(|ps| {
                let base = child(&path, peers_key);
                ps.iter()
                    .enumerate()
                    .map(|(j, p)| peer(p, &item(&base, j)))
                    .collect::<R<Vec<_>>>()
            })
            .transpose()?;
        let ports = opt_list(r, "ports", &path)?
            .map(|ps| {
                let base = child(&path, "ports");
                ps.iter()
                    .enumerate()
                    .map(|(j, p)| port(p, &item(&base, j)))
                    .collect::<R<Vec<_>>>()
            })
            .transpose()?;
        out.push(Rule { peers, ports });
    }
    Ok(out)
}

fn selector(v: &Value, path: &str) -> R<LabelSelector> {
    let m = as_map(v, path)?;
    known(m, path, &["matchLabels", "matchExpressions"])?;
    let match_labels = match get(m, "matchLabels") {
        Some(l) => labels(l, &child(path, "matchLabels"))?,
        None => BTreeMap::new(),
    };
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
    for (i, e) in opt_list(m, "matchExpressions", path)?
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let path = item(&base, i);
        let e = as_map(e, &path)?;
        known(e, &path, &["key", "operator", "values"])?;
        let key = req_str(e, "key", &path)?;
        syntax::check_label_key(key).map_err(|msg| (child(&path, "key"), msg))?;
        volatile(key, child(&path, "key"))?;
        let op = req_str(e, "operator", &path)?;
        let operator = Operator::parse(op).ok_or_else(|| {
            (
                child(&path, "operator"),
                format!("{op:?} is not one of In, NotIn, Exists, DoesNotExist"),
            )
        })?;
        let vpath = child(&path, "values");
        let mut values = Vec::new();
        for (j, v) in opt_list(e, "values", &path)?.unwrap_or_default().iter().enumerate() {
            let s = as_str(v, &item(&vpath, j))?;
            syntax::check_label_value(s).map_err(|msg| (item(&vpath, j), msg))?;
            values.push(s.to_string());
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
            key: key.into(),
            operator,
            values,
        });
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

fn peer(v: &Value, path: &str) -> R<Peer> {
    let m = as_map(v, path)?;
    known(m, path, &["podSelector", "namespaceSelector", "ipBlock"])?;
    let pod_selector = get(m, "podSelector")
        .map(|s| selector(s, &child(path, "podSelector")))
        .transpose()?;
    let namespace_selector = get(m, "namespaceSelector")
        .map(|s| selector(s, &child(path, "namespaceSelector")))
        .transpose()?;
    let Some(block) = get(m, "ipBlock") else {
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
    let b = as_map(block, &bpath)?;
    known(b, &bpath, &["cidr", "except"])?;
    let cpath = child(&bpath, "cidr");
    let cidr_s = req_str(b, "cidr", &bpath)?;
    let cidr = syntax::parse_cidr(cidr_s).map_err(|e| (cpath.clone(), e))?;
    let epath = child(&bpath, "except");
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (i, e) in opt_list(b, "except", &bpath)?.unwrap_or_default().iter().enumerate() {
        let path = item(&epath, i);
        let s = as_str(e, &path)?;
        let inside = match (cidr, syntax::parse_cidr(s).map_err(|e| (path.clone(), e))?) {
            (Cidr::V4(a, al), Cidr::V4(b, bl)) => {
                v4.push((b, bl));
                bl > al && syntax::v4_contains((a, al), (b, bl))
            }
            (Cidr::V6(a, al), Cidr::V6(b, bl)) => {
                v6.push(s.to_string());
                syntax::v6_strictly_contains((a, al), (b, bl))
            }
            _ => false,
        };
        if !inside {
            return fail(&path, format!("{s:?} must be strictly within cidr {cidr_s:?}"));
        }
    }
    Ok(match cidr {
        Cidr::V4(a, l) => Peer::IpBlock {
            cidr: (a, l),
            except: v4,
        },
        Cidr::V6(..) => Peer::IpBlockV6 {
            cidr: cidr_s.into(),
            except: v6,
        },
    })
}

fn port(v: &Value, path: &str) -> R<PortSpec> {
    let m = as_map(v, path)?;
    known(m, path, &["protocol", "port", "endPort"])?;
    let protocol = protocol(m, path)?;
    let ppath = child(path, "port");
    let port = match get(m, "port") {
        None => None,
        Some(Value::String(s)) => {
            syntax::check_port_name(s).map_err(|e| (ppath.clone(), e))?;
            Some(PortRef::Name(s.clone()))
        }
        Some(n @ Value::Number(_)) => Some(PortRef::Number(
            u16::try_from(int_in(n, &ppath, 1, 65535)?).unwrap_or(0),
        )),
        Some(other) => return fail(&ppath, format!("expected a number or a name, got {}", describe(other))),
    };
    let epath = child(path, "endPort");
    let end_port = match (get(m, "endPort"), &port) {
        (None, _) => None,
        (Some(_), None) => return fail(&epath, "may not be specified when port is not specified"),
        (Some(_), Some(PortRef::Name(_))) => return fail(&epath, "may not be specified when port is a name"),
        (Some(e), Some(PortRef::Number(p))) => {
            let e = int_in(e, &epath, 1, 65535)?;
            if e < u64::from(*p) {
                return fail(&epath, format!("{e} must be greater than or equal to port ({p})"));
            }
            Some(u16::try_from(e).unwrap_or(u16::MAX))
        }
    };
    Ok(PortSpec {
        protocol,
        port,
        end_port,
    })
}
