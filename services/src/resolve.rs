//! Services + endpoints → frontends and backends.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use moat_k8s_model::service::{EndpointSlice, Service, ServiceType};
use moat_k8s_model::{ContainerPort, PortRef};

/// A pod that can back services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
    pub ip: Ipv4Addr,
    /// Wired on this node.
    pub local: bool,
    /// Receives new connections (a local pod is ready once CNI wired it).
    pub ready: bool,
}

/// Everything the resolver reads.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub pods: Vec<PodEndpoint>,
    /// This node's name (EndpointSlice `nodeName` = this node means local).
    pub node_name: String,
    /// Addresses NodePorts listen on.
    pub node_ips: Vec<Ipv4Addr>,
    /// ClusterIPs the agent allocated for services that named none ("ns/name" → IP).
    pub allocated_ips: BTreeMap<String, Ipv4Addr>,
    /// NodePorts the agent allocated ("ns/name/port-name" → port).
    pub allocated_node_ports: BTreeMap<String, u16>,
}

/// How a frontend is reached; decides which traffic policy applies and which selection
/// (random or Maglev) the datapath uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl Scope {
    /// Traffic from outside the cluster: externalTrafficPolicy applies, Maglev selects.
    #[must_use]
    pub fn external(self) -> bool {
        !matches!(self, Self::ClusterIp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub scope: Scope,
}

/// Endpoint conditions as the load balancer uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    /// Ready: receives new connections.
    Active,
    /// Terminating but still serving: keeps its existing connections, gets no new ones.
    Terminating,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub state: BackendState,
    pub local: bool,
    /// "ns/name" when the address is a known pod.
    pub pod: Option<String>,
}

/// One service port: its frontends and backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbService {
    pub namespace: String,
    pub name: String,
    /// The service port's name (may be empty for a single-port service).
    pub port_name: String,
    pub proto: u8,
    pub frontends: Vec<Frontend>,
    /// Sorted; deduplicated by address and port.
    pub backends: Vec<Backend>,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
}

impl LbService {
    /// Backends new connections through a frontend of `scope` may go to: active ones,
    /// and only local ones when the scope's traffic policy is `Local`. When none is
    /// active, the terminating ones that still serve take new connections rather than
    /// the service refusing them (a one-replica rollout; kube-proxy and Cilium do the
    /// same, KEP-1669).
    #[must_use]
    pub fn eligible(&self, scope: Scope) -> Vec<&Backend> {
        // Outside clients reach only this node's endpoints whatever the policy says: a
        // remote endpoint would need SNAT to this node for its reply to come back here
        // (designed in docs/services.md, not built), and without it the connection is
        // lost. With no local endpoint the frontend refuses instead.
        let local_only = if scope.external() { true } else { self.internal_local };
        let in_state = |state| {
            self.backends
                .iter()
                .filter(|b| b.state == state && (!local_only || b.local))
                .collect::<Vec<_>>()
        };
        let active = in_state(BackendState::Active);
        if active.is_empty() {
            in_state(BackendState::Terminating)
        } else {
            active
        }
    }
}

impl fmt::Display for LbService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// Two services claiming one frontend (an explicit `clusterIP` or `nodePort` already in
/// use): the one `incumbent` says holds it now keeps it (else the first in `services`),
/// the other loses that frontend, and each conflict is reported naming both services
/// and the field. Without this the newcomer would silently take the other's traffic.
pub fn drop_conflicting_frontends(
    services: &mut [LbService],
    incumbent: impl Fn(&LbService, &Frontend) -> bool,
) -> Vec<String> {
    let mut owner: BTreeMap<(Ipv4Addr, u16, u8), String> = BTreeMap::new();
    for lb in services.iter() {
        for fe in lb.frontends.iter().filter(|fe| incumbent(lb, fe)) {
            owner
                .entry((fe.addr, fe.port, fe.proto))
                .or_insert_with(|| lb.to_string());
        }
    }
    let mut conflicts = Vec::new();
    for lb in services.iter_mut() {
        let name = lb.to_string();
        lb.frontends.retain(|fe| {
            let claimed = owner
                .entry((fe.addr, fe.port, fe.proto))
                .or_insert_with(|| name.clone());
            if *claimed == name {
                return true;
            }
            let field = match fe.scope {
                Scope::ClusterIp => "spec.clusterIP",
                Scope::NodePort => "spec.ports[].nodePort",
                Scope::ExternalIp => "spec.externalIPs",
                Scope::LoadBalancer => "status.loadBalancer.ingress",
            };
            let proto = match fe.proto {
                6 => "TCP",
                17 => "UDP",
                _ => "SCTP",
            };
            conflicts.push(format!(
                "Service {name}: {field} {}:{}/{proto} already belongs to {claimed}; this frontend is ignored",
                fe.addr, fe.port
            ));
            false
        });
    }
    conflicts
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    // An empty selector in a Service selects nothing (unlike NetworkPolicy).
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Resolves every non-headless, non-ExternalName service. Services without a ClusterIP
/// and no allocation in `input.allocated_ips` are skipped (the agent allocates first).
#[must_use]
pub fn resolve(input: &Input) -> Vec<LbService> {
    let pods_by_ip: BTreeMap<Ipv4Addr, &PodEndpoint> = input.pods.iter().map(|p| (p.ip, p)).collect();
    let mut out = Vec::new();
    for svc in &input.services {
        if svc.headless || svc.kind == ServiceType::ExternalName {
            continue;
        }
        let key = format!("{}/{}", svc.namespace, svc.name);
        let Some(cluster_ip) = svc.cluster_ip.or_else(|| input.allocated_ips.get(&key).copied()) else {
            continue;
        };
        for sp in &svc.ports {
            let mut frontends = vec![Frontend {
                addr: cluster_ip,
                port: sp.port,
                proto: sp.protocol,
                scope: Scope::ClusterIp,
            }];
            if matches!(svc.kind, ServiceType::NodePort | ServiceType::LoadBalancer) {
                let np = sp
                    .node_port
                    .or_else(|| input.allocated_node_ports.get(&format!("{key}/{}", sp.name)).copied());
                if let Some(np) = np {
                    for &ip in &input.node_ips {
                        frontends.push(Frontend {
                            addr: ip,
                            port: np,
                            proto: sp.protocol,
                            scope: Scope::NodePort,
                        });
                    }
                }
            }
            for &ip in &svc.external_ips {
                frontends.push(Frontend {
                    addr: ip,
                    port: sp.port,
                    proto: sp.protocol,
                    scope: Scope::ExternalIp,
                });
            }
            if svc.kind == ServiceType::LoadBalancer {
                for &ip in &svc.load_balancer_ips {
                    frontends.push(Frontend {
                        addr: ip,
                        port: sp.port,
                        proto: sp.protocol,
                        scope: Scope::LoadBalancer,
                    });
                }
            }
            let mut backends = BTreeSet::new();
            // The endpoint controller: pods the selector matches.
            if let Some(sel) = &svc.selector {
                for p in input
                    .pods
                    .iter()
                    .filter(|p| p.namespace == svc.namespace && p.ready && selects(sel, &p.labels))
                {
                    let port = match &sp.target_port {
                        PortRef::Number(n) => Some(*n),
                        PortRef::Name(n) => p
                            .ports
                            .iter()
                            .find(|c| &c.name == n && c.protocol == sp.protocol)
                            .map(|c| c.port),
                    };
                    if let Some(port) = port {
                        backends.insert(Backend {
                            addr: p.ip,
                            port,
                            state: BackendState::Active,
                            local: p.local,
                            pod: Some(format!("{}/{}", p.namespace, p.name)),
                        });
                    }
                }
            }
            // EndpointSlices (explicit ones, or a controller's elsewhere).
            for slice in input
                .slices
                .iter()
                .filter(|s| s.namespace == svc.namespace && s.service == svc.name)
            {
                let Some(&(_, port, _)) = slice
                    .ports
                    .iter()
                    .find(|(n, _, proto)| n == &sp.name && *proto == sp.protocol)
                else {
                    continue;
                };
                for e in &slice.endpoints {
                    let state = if e.ready {
                        BackendState::Active
                    } else if e.serving && e.terminating {
                        BackendState::Terminating
                    } else {
                        continue;
                    };
                    for &addr in &e.addresses {
                        let pod = pods_by_ip.get(&addr);
                        let local = e
                            .node_name
                            .as_deref()
                            .map_or_else(|| pod.is_some_and(|p| p.local), |n| n == input.node_name);
                        backends.insert(Backend {
                            addr,
                            port,
                            state,
                            local,
                            pod: pod.map(|p| format!("{}/{}", p.namespace, p.name)),
                        });
                    }
                }
            }
            // One entry per address:port: an active one wins over a terminating duplicate.
            let mut seen = BTreeMap::new();
            for b in backends {
                seen.entry((b.addr, b.port))
                    .and_modify(|old: &mut Backend| {
                        if b.state == BackendState::Active {
                            *old = b.clone();
                        }
                    })
                    .or_insert(b);
            }
            out.push(LbService {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                port_name: sp.name.clone(),
                proto: sp.protocol,
                frontends,
                backends: seen.into_values().collect(),
                affinity_timeout: svc.affinity_timeout,
                external_local: svc.external_local,
                internal_local: svc.internal_local,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_k8s_model::{parse_documents, Object};
    use std::path::Path;

    fn objects(text: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
        let (objs, errors) = parse_documents(Path::new("t.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        let mut s = (Vec::new(), Vec::new());
        for o in objs {
            match o {
                Object::Service(x) => s.0.push(x),
                Object::EndpointSlice(x) => s.1.push(x),
                _ => {}
            }
        }
        s
    }

    fn pod(name: &str, app: &str, ip: [u8; 4], local: bool) -> PodEndpoint {
        PodEndpoint {
            namespace: "shop".into(),
            name: name.into(),
            labels: BTreeMap::from([("app".into(), app.into())]),
            ports: vec![ContainerPort {
                name: "http".into(),
                port: 8080,
                protocol: 6,
            }],
            ip: Ipv4Addr::from(ip),
            local,
            ready: true,
        }
    }

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  externalIPs: [192.0.2.1]\n  ports:\n  - {name: http, port: 80, targetPort: http, nodePort: 30080}\n  - {name: alt, port: 81, targetPort: 9090}\n";

    #[test]
    fn selector_backends_named_target_port_and_frontends() {
        let (services, slices) = objects(WEB);
        let input = Input {
            services,
            slices,
            pods: vec![
                pod("w1", "web", [10, 0, 0, 1], true),
                pod("w2", "web", [10, 0, 0, 2], false),
                pod("db", "db", [10, 0, 0, 3], true),
            ],
            node_ips: vec![Ipv4Addr::new(172, 16, 0, 1)],
            ..Input::default()
        };
        let lbs = resolve(&input);
        assert_eq!(lbs.len(), 2);
        let http = &lbs[0];
        assert_eq!(http.to_string(), "shop/web:http");
        assert_eq!(
            http.frontends,
            vec![
                Frontend {
                    addr: Ipv4Addr::new(10, 96, 0, 10),
                    port: 80,
                    proto: 6,
                    scope: Scope::ClusterIp
                },
                Frontend {
                    addr: Ipv4Addr::new(172, 16, 0, 1),
                    port: 30080,
                    proto: 6,
                    scope: Scope::NodePort
                },
                Frontend {
                    addr: Ipv4Addr::new(192, 0, 2, 1),
                    port: 80,
                    proto: 6,
                    scope: Scope::ExternalIp
                },
            ]
        );
        let addrs: Vec<(Ipv4Addr, u16, bool)> = http.backends.iter().map(|b| (b.addr, b.port, b.local)).collect();
        assert_eq!(
            addrs,
            vec![
                (Ipv4Addr::new(10, 0, 0, 1), 8080, true),
                (Ipv4Addr::new(10, 0, 0, 2), 8080, false)
            ]
        );
        assert_eq!(lbs[1].backends[0].port, 9090, "numeric targetPort");
    }

    #[test]
    fn a_frontend_claimed_twice_stays_with_the_first_service() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: shop}\nspec:\n  clusterIP: 10.96.0.30\n  selector: {app: web}\n  ports: [{name: http, port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: shop}\nspec:\n  clusterIP: 10.96.0.30\n  selector: {app: db}\n  ports: [{name: http, port: 80}, {name: alt, port: 81}]\n";
        let (services, slices) = objects(text);
        let mut lbs = resolve(&Input {
            services,
            slices,
            ..Input::default()
        });
        let conflicts = drop_conflicting_frontends(&mut lbs.clone(), |lb, _| lb.name == "b");
        assert_eq!(
            conflicts,
            vec!["Service shop/a:http: spec.clusterIP 10.96.0.30:80/TCP already belongs to shop/b:http; this frontend is ignored"],
            "the service holding the frontend keeps it"
        );
        let conflicts = drop_conflicting_frontends(&mut lbs, |_, _| false);
        assert_eq!(
            conflicts,
            vec!["Service shop/b:http: spec.clusterIP 10.96.0.30:80/TCP already belongs to shop/a:http; this frontend is ignored"]
        );
        let fronts: Vec<(String, usize)> = lbs.iter().map(|l| (l.to_string(), l.frontends.len())).collect();
        assert_eq!(
            fronts,
            vec![
                ("shop/a:http".into(), 1),
                ("shop/b:http".into(), 0),
                ("shop/b:alt".into(), 1)
            ],
            "only the clashing port loses its frontend"
        );
    }

    #[test]
    fn slices_terminating_and_traffic_policies() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.20\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Cluster\n  ports: [{name: http, port: 80, nodePort: 30081}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- {addresses: [10.0.1.1], nodeName: me}\n- {addresses: [10.0.1.2], nodeName: other}\n- {addresses: [10.0.1.3], nodeName: me, conditions: {ready: false, serving: true, terminating: true}}\n- {addresses: [10.0.1.4], nodeName: me, conditions: {ready: false, serving: false}}\n";
        let (services, slices) = objects(text);
        let input = Input {
            services,
            slices,
            node_name: "me".into(),
            node_ips: vec![Ipv4Addr::new(172, 16, 0, 1)],
            ..Input::default()
        };
        let lb = &resolve(&input)[0];
        let states: Vec<(u8, BackendState, bool)> = lb
            .backends
            .iter()
            .map(|b| (b.addr.octets()[3], b.state, b.local))
            .collect();
        assert_eq!(
            states,
            vec![
                (1, BackendState::Active, true),
                (2, BackendState::Active, false),
                (3, BackendState::Terminating, true),
            ],
            "not-ready, not-serving endpoints are left out"
        );
        let inside: Vec<u8> = lb
            .eligible(Scope::ClusterIp)
            .iter()
            .map(|b| b.addr.octets()[3])
            .collect();
        assert_eq!(inside, vec![1, 2], "internal Cluster: every active backend");
        let outside: Vec<u8> = lb
            .eligible(Scope::NodePort)
            .iter()
            .map(|b| b.addr.octets()[3])
            .collect();
        assert_eq!(outside, vec![1], "external Local: local active backends only");
        let cluster = LbService {
            external_local: false,
            ..lb.clone()
        };
        let outside: Vec<u8> = cluster
            .eligible(Scope::NodePort)
            .iter()
            .map(|b| b.addr.octets()[3])
            .collect();
        assert_eq!(
            outside,
            vec![1],
            "external Cluster: still local only until remote SNAT exists"
        );

        // The active endpoints go away: the terminating one that still serves takes new
        // connections instead of the service refusing them.
        let only_terminating = LbService {
            backends: lb
                .backends
                .iter()
                .filter(|b| b.state == BackendState::Terminating)
                .cloned()
                .collect(),
            ..lb.clone()
        };
        let fallback: Vec<u8> = only_terminating
            .eligible(Scope::ClusterIp)
            .iter()
            .map(|b| b.addr.octets()[3])
            .collect();
        assert_eq!(fallback, vec![3], "no active backend: serving terminating ones");
    }

    #[test]
    fn headless_external_name_and_unallocated_services_are_skipped() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: h, namespace: shop}\nspec: {clusterIP: None, selector: {app: web}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: e, namespace: shop}\nspec: {type: ExternalName}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: u, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n";
        let (services, _) = objects(text);
        let mut input = Input {
            services,
            ..Input::default()
        };
        assert!(resolve(&input).is_empty());
        input
            .allocated_ips
            .insert("shop/u".into(), Ipv4Addr::new(10, 96, 0, 99));
        let lbs = resolve(&input);
        assert_eq!(lbs.len(), 1);
        assert_eq!(lbs[0].frontends[0].addr, Ipv4Addr::new(10, 96, 0, 99));
        assert!(lbs[0].backends.is_empty(), "no pods: no backends");
    }

    #[test]
    fn an_empty_selector_selects_nothing() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\nspec: {clusterIP: 10.96.0.5, selector: {}, ports: [{port: 80}]}\n";
        let (services, _) = objects(text);
        let input = Input {
            services,
            pods: vec![pod("w1", "web", [10, 0, 0, 1], true)],
            ..Input::default()
        };
        assert!(resolve(&input)[0].backends.is_empty());
    }
}
