//! Service and EndpointSlice: what the load balancer needs, validated like the API server.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::decode::{checked_labels, child, fail, item, protocol_of, Fail, R};
use super::{syntax, PortRef};

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Required when the service has more than one port.
    pub name: String,
    pub protocol: u8,
    pub port: u16,
    /// Defaults to `port`.
    pub target_port: PortRef,
    /// Set for NodePort and LoadBalancer services (allocated by the agent when absent).
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceType,
    /// `spec.clusterIP` when it is an IPv4 address; `None` when unset (the agent allocates)
    /// or headless.
    pub cluster_ip: Option<Ipv4Addr>,
    /// `clusterIP: None`: no virtual IP, nothing to balance.
    pub headless: bool,
    /// `None`: endpoints come from EndpointSlice objects only.
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[*].ip`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` → its timeout in seconds (default 10800).
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<Ipv4Addr>,
    /// `conditions.ready` (absent means ready).
    pub ready: bool,
    /// `conditions.serving` (absent means the value of ready).
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// Label `kubernetes.io/service-name`.
    pub service: String,
    /// (name, port, protocol).
    pub ports: Vec<(String, u16, u8)>,
    pub endpoints: Vec<SliceEndpoint>,
}

fn ipv4(s: &str, path: &str) -> R<Option<Ipv4Addr>> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(Some(a)),
        Ok(IpAddr::V6(_)) => Ok(None),
        Err(_) => fail(path, format!("{s:?} is not a valid IP address")),
    }
}

fn ip_list(list: Option<&[String]>, path: &str) -> R<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for (i, s) in list.unwrap_or_default().iter().enumerate() {
        if let Some(a) = ipv4(s, &item(path, i))? {
            out.push(a);
        }
    }
    Ok(out)
}

fn port_number(n: i32, path: &str) -> R<u16> {
    match u16::try_from(n) {
        Ok(0) => fail(path, "is required (1-65535)"),
        Ok(p) => Ok(p),
        Err(_) => fail(path, format!("{n} must be between 1 and 65535, inclusive")),
    }
}

fn port_ref(v: &IntOrString, path: &str) -> R<PortRef> {
    match v {
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => Ok(PortRef::Number(port_number(n, path)?)),
            Err(_) => {
                syntax::check_port_name(s).map_err(|e| (path.to_string(), e))?;
                Ok(PortRef::Name(s.clone()))
            }
        },
        IntOrString::Int(n) => Ok(PortRef::Number(port_number(*n, path)?)),
    }
}

/// The default NodePort range of the API server.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// A Service, checked like the API server checks it.
pub(super) fn service(namespace: &str, name: &str, svc: &core::Service) -> R<Service> {
    let Some(spec) = &svc.spec else {
        return fail("spec", "is required");
    };
    let kind = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return fail(
                "spec.type",
                format!("{other:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"),
            )
        }
    };
    let (mut cluster_ip, mut headless) = (None, false);
    match spec.cluster_ip.as_deref() {
        None | Some("") => {}
        Some("None") => headless = true,
        Some(s) => cluster_ip = ipv4(s, "spec.clusterIP")?,
    }
    if headless && kind != ServiceType::ClusterIp {
        return fail("spec.clusterIP", "may be None only when spec.type is ClusterIP");
    }
    let selector = match &spec.selector {
        None => None,
        Some(m) => Some(checked_labels(Some(m), "spec.selector")?),
    };
    let node_ports_allowed = matches!(kind, ServiceType::NodePort | ServiceType::LoadBalancer);
    let mut ports = Vec::new();
    let list = spec.ports.as_deref().unwrap_or_default();
    if list.is_empty() && !headless && kind != ServiceType::ExternalName {
        return fail("spec.ports", "must have at least one port");
    }
    let mut names = BTreeSet::new();
    for (i, p) in list.iter().enumerate() {
        let path = item("spec.ports", i);
        let port = port_number(p.port, &child(&path, "port"))?;
        let name = p.name.clone().unwrap_or_default();
        if list.len() > 1 && name.is_empty() {
            return fail(
                &child(&path, "name"),
                "is required when the service has more than one port",
            );
        }
        if !name.is_empty() {
            syntax::check_dns_label(&name).map_err(|e| (child(&path, "name"), e))?;
            if !names.insert(name.clone()) {
                return fail(&child(&path, "name"), format!("{name:?} is used by another port"));
            }
        }
        let target_port = match &p.target_port {
            None => PortRef::Number(port),
            Some(v) => port_ref(v, &child(&path, "targetPort"))?,
        };
        let node_port = match p.node_port {
            None => None,
            Some(_) if !node_ports_allowed => {
                return fail(
                    &child(&path, "nodePort"),
                    "may be set only for NodePort and LoadBalancer services",
                )
            }
            Some(n) => {
                let f = child(&path, "nodePort");
                let n = port_number(n, &f)?;
                if !NODE_PORT_RANGE.contains(&n) {
                    return fail(&f, format!("{n} is outside the node port range 30000-32767"));
                }
                Some(n)
            }
        };
        ports.push(ServicePort {
            name,
            protocol: protocol_of(p.protocol.as_deref(), &path)?,
            port,
            target_port,
            node_port,
        });
    }
    let external_ips = ip_list(spec.external_ips.as_deref(), "spec.externalIPs")?;
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            Some(match timeout {
                None => 10_800,
                Some(t) if (1..=86_400).contains(&t) => u32::try_from(t).unwrap_or(10_800),
                Some(t) => {
                    return fail(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{t} must be between 1 and 86400, inclusive"),
                    )
                }
            })
        }
        Some(other) => {
            return fail(
                "spec.sessionAffinity",
                format!("{other:?} is not one of None, ClientIP"),
            )
        }
    };
    let external_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") if node_ports_allowed || !external_ips.is_empty() => true,
        Some("Local") => {
            return fail(
                "spec.externalTrafficPolicy",
                "may be set only for NodePort and LoadBalancer services (or with externalIPs)",
            )
        }
        Some(other) => {
            return fail(
                "spec.externalTrafficPolicy",
                format!("{other:?} is not one of Cluster, Local"),
            )
        }
    };
    let internal_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return fail(
                "spec.internalTrafficPolicy",
                format!("{other:?} is not one of Cluster, Local"),
            )
        }
    };
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for (i, ing) in ingress.iter().enumerate() {
        if let Some(s) = &ing.ip {
            if let Some(a) = ipv4(s, &child(&item("status.loadBalancer.ingress", i), "ip"))? {
                load_balancer_ips.push(a);
            }
        }
    }
    Ok(Service {
        namespace: namespace.into(),
        name: name.into(),
        kind,
        cluster_ip,
        headless,
        selector,
        ports,
        external_ips,
        load_balancer_ips,
        affinity_timeout,
        external_local,
        internal_local,
    })
}

/// An EndpointSlice, checked like the API server checks it.
pub(super) fn endpoint_slice(
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    slice: &discovery::EndpointSlice,
) -> R<EndpointSlice> {
    let service = labels
        .get("kubernetes.io/service-name")
        .cloned()
        .ok_or_else(|| -> Fail {
            (
                "metadata.labels".into(),
                "kubernetes.io/service-name is required (it names the Service this slice belongs to)".into(),
            )
        })?;
    match slice.address_type.as_str() {
        "IPv4" | "IPv6" | "FQDN" => {}
        "" => return fail("addressType", "is required"),
        other => return fail("addressType", format!("{other:?} is not one of IPv4, IPv6, FQDN")),
    }
    let ipv4_slice = slice.address_type == "IPv4";
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let path = item("ports", i);
        let port = match p.port {
            None => return fail(&child(&path, "port"), "is required"),
            Some(n) => port_number(n, &child(&path, "port"))?,
        };
        let pname = p.name.clone().unwrap_or_default();
        ports.push((pname, port, protocol_of(p.protocol.as_deref(), &path)?));
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        let path = item("endpoints", i);
        if e.addresses.is_empty() {
            return fail(&child(&path, "addresses"), "must have at least one address");
        }
        let mut addresses = Vec::new();
        for (j, s) in e.addresses.iter().enumerate() {
            let ap = item(&child(&path, "addresses"), j);
            if ipv4_slice {
                match ipv4(s, &ap)? {
                    Some(a) => addresses.push(a),
                    None => return fail(&ap, format!("{s:?} is not an IPv4 address (addressType IPv4)")),
                }
            }
        }
        let c = e.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        endpoints.push(SliceEndpoint {
            addresses,
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(ready),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            node_name: e.node_name.clone(),
        });
    }
    Ok(EndpointSlice {
        namespace: namespace.into(),
        name: name.into(),
        service,
        ports,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse_documents, Object};
    use super::*;
    use std::path::Path;

    fn one(text: &str) -> Result<Object, String> {
        let (mut objects, errors) = parse_documents(Path::new("s.yaml"), text);
        match errors.first() {
            Some(e) => Err(e.to_string()),
            None => Ok(objects.remove(0)),
        }
    }

    fn svc(spec: &str) -> Result<Service, String> {
        match one(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n{spec}"
        ))? {
            Object::Service(s) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn cluster_ip_service_with_named_ports() {
        let s = svc("  selector: {app: web}\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 80, targetPort: web-http}\n  - {name: dns, port: 53, protocol: UDP}\n").unwrap();
        assert_eq!(s.kind, ServiceType::ClusterIp);
        assert_eq!(s.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(
            s.selector,
            Some(BTreeMap::from([("app".to_string(), "web".to_string())]))
        );
        assert_eq!(
            s.ports,
            vec![
                ServicePort {
                    name: "http".into(),
                    protocol: 6,
                    port: 80,
                    target_port: PortRef::Name("web-http".into()),
                    node_port: None
                },
                ServicePort {
                    name: "dns".into(),
                    protocol: 17,
                    port: 53,
                    target_port: PortRef::Number(53),
                    node_port: None
                },
            ]
        );
        assert_eq!(s.affinity_timeout, None);
        assert!(!s.headless && !s.external_local && !s.internal_local);
    }

    #[test]
    fn node_port_affinity_and_traffic_policies() {
        let s = svc("  type: NodePort\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080, nodePort: 30080}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n  externalIPs: [192.0.2.10]\n").unwrap();
        assert_eq!(s.kind, ServiceType::NodePort);
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.ports[0].target_port, PortRef::Number(8080));
        assert_eq!(s.affinity_timeout, Some(30));
        assert!(s.external_local && s.internal_local);
        assert_eq!(s.external_ips, vec![Ipv4Addr::new(192, 0, 2, 10)]);
        let d = svc("  ports: [{port: 80}]\n  sessionAffinity: ClientIP\n").unwrap();
        assert_eq!(d.affinity_timeout, Some(10_800), "the API server's default timeout");
    }

    #[test]
    fn headless_and_load_balancer_status() {
        let h = svc("  clusterIP: None\n  selector: {app: db}\n").unwrap();
        assert!(h.headless && h.cluster_ip.is_none());
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: shop}\nspec:\n  type: LoadBalancer\n  ports: [{port: 443}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.7}]\n";
        let Ok(Object::Service(lb)) = one(text) else { panic!() };
        assert_eq!(lb.load_balancer_ips, vec![Ipv4Addr::new(203, 0, 113, 7)]);
    }

    #[test]
    fn invalid_services_name_the_field() {
        let cases = [
            ("  ports:\n  - {port: 80}\n  - {port: 81}\n", "spec.ports[0].name"),
            ("  ports: [{port: 80, nodePort: 30080}]\n", "spec.ports[0].nodePort"),
            ("  type: NodePort\n  ports: [{port: 80, nodePort: 80}]\n", "spec.ports[0].nodePort"),
            ("  ports: [{port: 0}]\n", "spec.ports[0].port"),
            ("  ports: [{port: 80, targetPort: Not_A_Name}]\n", "spec.ports[0].targetPort"),
            ("  ports: [{port: 80}]\n  sessionAffinity: Cookie\n", "spec.sessionAffinity"),
            ("  ports: [{port: 80}]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n", "timeoutSeconds"),
            ("  ports: [{port: 80}]\n  clusterIP: 10.96.0.300\n", "spec.clusterIP"),
            ("  ports: [{port: 80}]\n  externalTrafficPolicy: Local\n", "spec.externalTrafficPolicy"),
            ("  type: Balanced\n  ports: [{port: 80}]\n", "spec.type"),
            ("  selector: {app: web}\n", "spec.ports"),
            ("  ports: [{name: a, port: 80}, {name: a, port: 81}]\n", "spec.ports[1].name"),
        ];
        for (spec, field) in cases {
            let err = svc(spec).expect_err(spec);
            assert!(
                err.contains("Service shop/web") && err.contains(field),
                "{spec:?}: {err}"
            );
        }
    }

    #[test]
    fn endpoint_slices() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- addresses: [10.0.0.1]\n- addresses: [10.0.0.2]\n  conditions: {ready: false, serving: true, terminating: true}\n  nodeName: n1\n";
        let Ok(Object::EndpointSlice(s)) = one(text) else {
            panic!("{:?}", one(text))
        };
        assert_eq!(s.service, "web");
        assert_eq!(s.ports, vec![("http".to_string(), 8080, 6)]);
        assert_eq!(s.endpoints.len(), 2);
        assert!(s.endpoints[0].ready && s.endpoints[0].serving && !s.endpoints[0].terminating);
        assert!(!s.endpoints[1].ready && s.endpoints[1].serving && s.endpoints[1].terminating);
        assert_eq!(s.endpoints[1].node_name.as_deref(), Some("n1"));

        let no_label = text.replace("  labels: {kubernetes.io/service-name: web}\n", "");
        assert!(one(&no_label).unwrap_err().contains("kubernetes.io/service-name"));
        let bad_addr = text.replace("10.0.0.1", "10.0.0.999");
        assert!(one(&bad_addr).unwrap_err().contains("endpoints[0].addresses[0]"));
        let v6 = text.replace("10.0.0.1", "fd00::1");
        assert!(one(&v6).unwrap_err().contains("IPv4"));
    }
}
