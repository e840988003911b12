//! The gRPC API (moat.v1.Agent) over a root-only unix socket.
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use moat_api::v1::{
    AddEndpointRequest, AttachmentRef, Counter, DeleteEndpointReply, DropCount, DropsReply, DropsRequest, Endpoint,
    ExplainReply, ExplainRequest, Flow, GcReply, GcRequest, IdentityInfo, IpLease, ListEndpointsReply,
    ListEndpointsRequest, ListIdentitiesReply, ListIdentitiesRequest, ListServicesReply, ListServicesRequest,
    ObserveRequest, ServiceBackend, ServiceFrontend, ServiceInfo, StatusReply, StatusRequest,
};
use moat_dataplane_common::metric_name;
use moat_policy_compiler::lookup::{explain, Endpoint as PolicyEndpoint};
use tonic::{Request, Response, Status};

use crate::agent::{CallError, Command, NodeHandle};
use crate::endpoint::{EndpointRecord, NewEndpoint, Owner};
use crate::events::FlowStore;
use crate::kernel::stats::Stats;

pub struct AgentService {
    node: NodeHandle,
    flows: Arc<Mutex<FlowStore>>,
    stats: Option<Stats>,
}

impl AgentService {
    #[must_use]
    pub fn new(node: NodeHandle, flows: Arc<Mutex<FlowStore>>, stats: Option<Stats>) -> Self {
        Self { node, flows, stats }
    }
}

/// A failed command as a gRPC status: `failed` for the command's own failure.
fn call_status(e: CallError, failed: fn(String) -> Status) -> Status {
    match e {
        CallError::Failed(e) => failed(format!("{e:#}")),
        CallError::Gone => Status::unavailable(e.to_string()),
        CallError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
    }
}

/// Whether a flow passes `moatctl observe`'s filters.
fn matches(f: &Flow, r: &ObserveRequest) -> bool {
    let peers = [f.source.as_ref(), f.destination.as_ref()];
    let any = |p: &dyn Fn(&moat_api::v1::FlowPeer) -> bool| peers.iter().flatten().any(|x| p(x));
    (r.pod.is_empty() || any(&|p| format!("{}/{}", p.namespace, p.pod) == r.pod))
        && (r.namespace.is_empty() || any(&|p| p.namespace == r.namespace))
        && (r.verdict.is_empty() || f.verdict.eq_ignore_ascii_case(&r.verdict))
        && (r.identity == 0 || any(&|p| p.identity == r.identity))
        && match r.r#type.as_str() {
            "l7" => f.hook == "http",
            "l3l4" => f.hook != "http",
            _ => true,
        }
        && (r.port == 0
            || any(&|p| p.port == r.port)
            || f.service_address
                .rsplit_once(':')
                .is_some_and(|(_, p)| p == r.port.to_string()))
}

fn parse_endpoint(s: &str, field: &str) -> Result<PolicyEndpoint, Status> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(PolicyEndpoint::Ip(ip));
    }
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(PolicyEndpoint::Pod {
            namespace: ns.into(),
            name: name.into(),
        }),
        _ => Err(Status::invalid_argument(format!(
            "{field} {s:?}: expected namespace/pod or an IPv4 address"
        ))),
    }
}

/// The address of a pod (from the world) or the address given.
fn to_address(world: &moat_policy_compiler::world::World, e: &PolicyEndpoint) -> Option<Ipv4Addr> {
    match e {
        PolicyEndpoint::Ip(ip) => Some(*ip),
        PolicyEndpoint::Pod { namespace, name } => world
            .pods
            .iter()
            .find(|p| &p.pod.namespace == namespace && &p.pod.name == name)
            .and_then(|p| p.ipv4),
    }
}

fn parse_proto(s: &str) -> Result<u8, Status> {
    match s.to_ascii_lowercase().as_str() {
        "" | "tcp" => Ok(6),
        "udp" => Ok(17),
        "sctp" => Ok(132),
        other => Err(Status::invalid_argument(format!(
            "protocol {other:?}: expected tcp, udp or sctp"
        ))),
    }
}

fn owner(r: Option<&AttachmentRef>) -> Result<Owner, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("attachment is required"))?;
    super::validate::attachment(&r.container_id, &r.ifname).map_err(Status::invalid_argument)?;
    Ok(Owner {
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
    })
}

#[must_use]
pub fn to_api(e: &EndpointRecord) -> Endpoint {
    Endpoint {
        id: e.id,
        container_id: e.container_id.clone(),
        ifname: e.ifname.clone(),
        netns: e.netns.clone(),
        pod_namespace: e.pod_namespace.clone(),
        pod_name: e.pod_name.clone(),
        pod_uid: e.pod_uid.clone(),
        ipv4: e.ipv4.to_string(),
        host_ifname: e.host_ifname.clone(),
        host_ifindex: e.host_ifindex,
        pod_mac: e.pod_mac.clone(),
        host_mac: e.host_mac.clone(),
        ipam: e.ipam.clone(),
        created_unix: e.created_unix,
        state: e.state.clone(),
    }
}

#[tonic::async_trait]
impl moat_api::Agent for AgentService {
    type ObserveStream = tokio_stream::wrappers::ReceiverStream<Result<Flow, Status>>;

    async fn observe(&self, req: Request<ObserveRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let r = req.into_inner();
        if !r.verdict.is_empty()
            && !["forwarded", "dropped", "audit", "translated"].contains(&r.verdict.to_ascii_lowercase().as_str())
        {
            return Err(Status::invalid_argument(format!(
                "verdict {:?}: expected forwarded, dropped, audit or translated",
                r.verdict
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        // Subscribe before reading the recent events so none falls in between.
        let (mut live, recent) = {
            let store = self.flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let last = if r.last == 0 { 20 } else { r.last as usize };
            let mut recent: Vec<Flow> = store
                .recent()
                .rev()
                .filter(|f| matches(f, &r))
                .take(last)
                .cloned()
                .collect();
            recent.reverse();
            (store.tx.subscribe(), recent)
        };
        tokio::spawn(async move {
            for f in recent {
                if tx.send(Ok(f)).await.is_err() {
                    return;
                }
            }
            if !r.follow {
                return;
            }
            loop {
                // The client going away ends the stream at once, not at the next event.
                let next = tokio::select! {
                    () = tx.closed() => {
                        tracing::info!("observe stream closed: the client went away");
                        return;
                    }
                    next = live.recv() => next,
                };
                match next {
                    Ok(f) if matches(&f, &r) => {
                        if tx.send(Ok(f)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn list_identities(
        &self,
        _: Request<ListIdentitiesRequest>,
    ) -> Result<Response<ListIdentitiesReply>, Status> {
        let view = self.node.view();
        let identities = view
            .identities
            .iter()
            .map(|(id, labels, in_use, endpoints)| IdentityInfo {
                id: *id,
                labels: labels.clone(),
                in_use: *in_use,
                endpoints: endpoints.clone(),
                reserved: *id < moat_identity::FIRST_CLUSTER_IDENTITY,
            })
            .collect();
        Ok(Response::new(ListIdentitiesReply { identities }))
    }

    async fn explain_policy(&self, req: Request<ExplainRequest>) -> Result<Response<ExplainReply>, Status> {
        let r = req.into_inner();
        let from = parse_endpoint(&r.from, "from")?;
        let to = parse_endpoint(&r.to, "to")?;
        let proto = parse_proto(&r.protocol)?;
        let port = u16::try_from(r.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Status::invalid_argument(format!("port {}: expected 1-65535", r.port)))?;
        let view = self.node.view();
        let e = explain(&view.world, &view.compiled, &from, &to, proto, port)
            .map_err(|e| Status::not_found(e.to_string()))?;
        let (mut allowed, mut text) = (e.allowed, e.to_string());
        if !r.http.is_empty() {
            let Some(ip) = to_address(&view.world, &to) else {
                return Err(Status::not_found(format!(
                    "{}: no IPv4 address to look up HTTP rules for",
                    r.to
                )));
            };
            let (ok, why) =
                moat_policy_compiler::http::ports::explain(&view.world, &view.http, ip, port, &r.http, &r.host);
            allowed &= ok;
            text = format!("{}\n{why}\n", text.trim_end());
        }
        Ok(Response::new(ExplainReply { allowed, text }))
    }

    async fn list_services(&self, _: Request<ListServicesRequest>) -> Result<Response<ListServicesReply>, Status> {
        use moat_services::{BackendState, Scope};
        let view = self.node.view();
        let services = view
            .services
            .iter()
            .map(|s| ServiceInfo {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                port_name: s.port_name.clone(),
                frontends: s
                    .frontends
                    .iter()
                    .map(|f| ServiceFrontend {
                        address: format!("{}:{}", f.addr, f.port),
                        protocol: crate::events::proto_name(f.proto),
                        scope: match f.scope {
                            Scope::ClusterIp => "ClusterIP",
                            Scope::NodePort => "NodePort",
                            Scope::ExternalIp => "ExternalIP",
                            Scope::LoadBalancer => "LoadBalancer",
                        }
                        .into(),
                        eligible: u32::try_from(s.eligible(f.scope).len()).unwrap_or(u32::MAX),
                    })
                    .collect(),
                backends: s
                    .backends
                    .iter()
                    .map(|b| ServiceBackend {
                        address: format!("{}:{}", b.addr, b.port),
                        state: match b.state {
                            BackendState::Active => "active",
                            BackendState::Terminating => "terminating",
                        }
                        .into(),
                        local: b.local,
                        pod: b.pod.clone().unwrap_or_default(),
                    })
                    .collect(),
                affinity_timeout: s.affinity_timeout.unwrap_or(0),
                external_local: s.external_local,
                internal_local: s.internal_local,
            })
            .collect();
        Ok(Response::new(ListServicesReply { services }))
    }

    async fn drops(&self, _: Request<DropsRequest>) -> Result<Response<DropsReply>, Status> {
        let by_reason = self
            .stats
            .as_ref()
            .map(Stats::counter_slots)
            .unwrap_or_default()
            .into_iter()
            .filter(|(slot, _)| metric_name(*slot).is_some_and(|n| n.starts_with("drop_")))
            .map(|(code, count)| DropCount {
                reason: metric_name(code).unwrap_or_default().trim_start_matches("drop_").into(),
                code,
                pod: String::new(),
                count,
            })
            .collect();
        // Exact kernel counts per pod veth (events are rate-limited; counts are not).
        let view = self.node.view();
        let by_pod = self
            .stats
            .as_ref()
            .map(Stats::drops)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, count, _)| DropCount {
                reason: metric_name(k.reason)
                    .unwrap_or("unknown")
                    .trim_start_matches("drop_")
                    .into(),
                code: k.reason,
                pod: view.endpoints.iter().find(|e| e.host_ifindex == k.ifindex).map_or_else(
                    || format!("ifindex {}", k.ifindex),
                    |e| format!("{}/{}", e.pod_namespace, e.pod_name),
                ),
                count,
            })
            .collect();
        Ok(Response::new(DropsReply { by_reason, by_pod }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let view = self.node.view();
        let stats = self.stats.as_ref();
        Ok(Response::new(StatusReply {
            ready: true,
            version: env!("CARGO_PKG_VERSION").into(),
            node_name: view.node_name.clone(),
            pod_cidr: view.pod_cidr.clone(),
            gateway: view.gateway.to_string(),
            pin_dir: view.pin_dir.clone(),
            datapath: "tc".into(),
            endpoints: u32::try_from(view.endpoints.len()).unwrap_or(u32::MAX),
            leases: u32::try_from(view.leases).unwrap_or(u32::MAX),
            uptime_seconds: view.uptime_seconds(),
            state_dir: view.state_dir.clone(),
            counters: stats
                .map(Stats::counters)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| Counter {
                    name: name.into(),
                    value,
                })
                .collect(),
            manifest_kinds: view.state.kinds().into_iter().collect(),
            manifest_errors: view.state.errors.to_vec(),
            enforcement: crate::policy::mode_name(view.mode).into(),
            audit: view.audit,
            policies: u32::try_from(view.world.policies.len()).unwrap_or(u32::MAX),
            identities: u32::try_from(view.identities.len()).unwrap_or(u32::MAX),
            policy_entries: u32::try_from(view.compiled.policy.len()).unwrap_or(u32::MAX),
            policy_revision: view.revision,
            state_generation: view.state.generation,
            policy_error: view.policy_error.clone().unwrap_or_default(),
            policy_capacity: u32::try_from(view.policy_capacity).unwrap_or(u32::MAX),
            tracked_flows: u32::try_from(stats.map_or(0, Stats::tracked_flows)).unwrap_or(u32::MAX),
        }))
    }

    async fn allocate_ip(&self, req: Request<AttachmentRef>) -> Result<Response<IpLease>, Status> {
        let owner = owner(Some(req.get_ref()))?;
        let ip = self
            .node
            .call(|r| Command::AllocateIp(owner, r))
            .await
            .map_err(|e| call_status(e, Status::resource_exhausted))?;
        Ok(Response::new(IpLease {
            ipv4: ip.to_string(),
            prefix_len: 32,
            gateway: self.node.view().gateway.to_string(),
        }))
    }

    async fn add_endpoint(&self, req: Request<AddEndpointRequest>) -> Result<Response<Endpoint>, Status> {
        let r = req.into_inner();
        let owner = owner(r.attachment.as_ref())?;
        let ipv4: Ipv4Addr = r
            .ipv4
            .parse()
            .map_err(|_| Status::invalid_argument(format!("ipv4 {:?} is not an IPv4 address", r.ipv4)))?;
        super::validate::host_ifname(&owner.container_id, &owner.ifname, &r.host_ifname)
            .map_err(Status::invalid_argument)?;
        super::validate::pod_ref(&r.pod_namespace, &r.pod_name, &r.pod_uid).map_err(Status::invalid_argument)?;
        if crate::kernel::netdev::parse_mac(&r.pod_mac).is_none() {
            return Err(Status::invalid_argument(format!(
                "pod_mac {:?} is not a MAC address",
                r.pod_mac
            )));
        }
        if !matches!(r.ipam.as_str(), "" | "agent" | "delegated") {
            return Err(Status::invalid_argument(format!(
                "ipam {:?}: expected agent or delegated",
                r.ipam
            )));
        }
        if !r.netns.starts_with('/') {
            return Err(Status::invalid_argument(format!(
                "netns {:?} is not an absolute path",
                r.netns
            )));
        }
        let new = NewEndpoint {
            owner,
            netns: r.netns,
            pod_namespace: r.pod_namespace,
            pod_name: r.pod_name,
            pod_uid: r.pod_uid,
            ipv4,
            host_ifname: r.host_ifname,
            pod_mac: r.pod_mac,
            ipam: if r.ipam.is_empty() { "agent".into() } else { r.ipam },
        };
        let rec = self
            .node
            .call(|r| Command::AddEndpoint(Box::new(new), r))
            .await
            .map_err(|e| call_status(e, Status::failed_precondition))?;
        Ok(Response::new(to_api(&rec)))
    }

    async fn delete_endpoint(&self, req: Request<AttachmentRef>) -> Result<Response<DeleteEndpointReply>, Status> {
        let owner = owner(Some(req.get_ref()))?;
        let rec = self
            .node
            .call(|r| Command::DeleteEndpoint(owner, r))
            .await
            .map_err(|e| call_status(e, Status::internal))?;
        Ok(Response::new(DeleteEndpointReply {
            existed: rec.is_some(),
            endpoint: rec.as_ref().map(to_api),
        }))
    }

    async fn get_endpoint(&self, req: Request<AttachmentRef>) -> Result<Response<Endpoint>, Status> {
        let owner = owner(Some(req.get_ref()))?;
        let view = self.node.view();
        let rec = view.endpoint(&owner).ok_or_else(|| {
            Status::not_found(format!(
                "no endpoint for container {} interface {}",
                owner.container_id, owner.ifname
            ))
        })?;
        Ok(Response::new(to_api(rec)))
    }

    async fn list_endpoints(&self, _: Request<ListEndpointsRequest>) -> Result<Response<ListEndpointsReply>, Status> {
        Ok(Response::new(ListEndpointsReply {
            endpoints: self.node.view().endpoints.iter().map(to_api).collect(),
        }))
    }

    async fn gc(&self, req: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let valid = req
            .get_ref()
            .valid
            .iter()
            .map(|v| owner(Some(v)))
            .collect::<Result<Vec<_>, _>>()?;
        let (removed, leases_released) = self
            .node
            .call(|r| Command::Gc(valid, r))
            .await
            .map_err(|e| call_status(e, Status::internal))?;
        Ok(Response::new(GcReply {
            removed: removed.iter().map(to_api).collect(),
            leases_released,
        }))
    }
}
