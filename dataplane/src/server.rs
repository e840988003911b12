//! The gRPC API (moat.v1.Agent) over a root-only unix socket.
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use moat_api::v1::{
    AddEndpointRequest, AttachmentRef, Counter, DeleteEndpointReply, Endpoint, GcReply, GcRequest, IpLease,
    ListEndpointsReply, ListEndpointsRequest, StatusReply, StatusRequest,
};
use tonic::{Request, Response, Status};

use crate::ipam::Owner;
use crate::node::{EndpointRecord, NewEndpoint, Node};

pub struct AgentService {
    pub node: Arc<Mutex<Node>>,
    /// What the standalone manifest directory held at start.
    pub manifests: Arc<crate::manifests::Inventory>,
}

fn owner(r: Option<&AttachmentRef>) -> Result<Owner, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("attachment is required"))?;
    if r.container_id.is_empty() {
        return Err(Status::invalid_argument("attachment.container_id is empty"));
    }
    if r.ifname.is_empty() {
        return Err(Status::invalid_argument("attachment.ifname is empty"));
    }
    Ok(Owner {
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
    })
}

fn internal(e: &anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

impl AgentService {
    fn node(&self) -> std::sync::MutexGuard<'_, Node> {
        // A panic while holding the lock is a bug; keep serving with the state as is.
        self.node.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let node = self.node();
        Ok(Response::new(StatusReply {
            ready: true,
            version: env!("CARGO_PKG_VERSION").into(),
            node_name: node.cfg.node_name.clone(),
            pod_cidr: node.cfg.pod_cidr.to_string(),
            gateway: node.cfg.gateway.to_string(),
            pin_dir: node.cfg.pin_dir.display().to_string(),
            datapath: "tcx".into(),
            endpoints: u32::try_from(node.endpoints().count()).unwrap_or(u32::MAX),
            leases: u32::try_from(node.leases()).unwrap_or(u32::MAX),
            uptime_seconds: node.uptime_seconds(),
            state_dir: node
                .cfg
                .state_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            counters: node
                .counters()
                .into_iter()
                .map(|(name, value)| Counter {
                    name: name.into(),
                    value,
                })
                .collect(),
            manifest_kinds: self.manifests.kinds().into_iter().collect(),
            manifest_errors: self.manifests.errors.clone(),
        }))
    }

    async fn allocate_ip(&self, req: Request<AttachmentRef>) -> Result<Response<IpLease>, Status> {
        let owner = owner(Some(req.get_ref()))?;
        let mut node = self.node();
        let ip = node
            .allocate_ip(&owner)
            .map_err(|e| Status::resource_exhausted(format!("{e:#}")))?;
        Ok(Response::new(IpLease {
            ipv4: ip.to_string(),
            prefix_len: 32,
            gateway: node.cfg.gateway.to_string(),
        }))
    }

    async fn add_endpoint(&self, req: Request<AddEndpointRequest>) -> Result<Response<Endpoint>, Status> {
        let r = req.into_inner();
        let owner = owner(r.attachment.as_ref())?;
        let ipv4: Ipv4Addr = r
            .ipv4
            .parse()
            .map_err(|_| Status::invalid_argument(format!("ipv4 {:?} is not an IPv4 address", r.ipv4)))?;
        if r.host_ifname.is_empty() {
            return Err(Status::invalid_argument("host_ifname is empty"));
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
            .node()
            .add_endpoint(new)
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(to_api(&rec)))
    }

    async fn delete_endpoint(&self, req: Request<AttachmentRef>) -> Result<Response<DeleteEndpointReply>, Status> {
        let owner = owner(Some(req.get_ref()))?;
        let rec = self.node().delete_endpoint(&owner).map_err(|e| internal(&e))?;
        Ok(Response::new(DeleteEndpointReply {
            existed: rec.is_some(),
            endpoint: rec.as_ref().map(to_api),
        }))
    }

    async fn get_endpoint(&self, req: Request<AttachmentRef>) -> Result<Response<Endpoint>, Status> {
        let owner = owner(Some(req.get_ref()))?;
        let node = self.node();
        let rec = node.endpoint(&owner).ok_or_else(|| {
            Status::not_found(format!(
                "no endpoint for container {} interface {}",
                owner.container_id, owner.ifname
            ))
        })?;
        Ok(Response::new(to_api(rec)))
    }

    async fn list_endpoints(&self, _: Request<ListEndpointsRequest>) -> Result<Response<ListEndpointsReply>, Status> {
        Ok(Response::new(ListEndpointsReply {
            endpoints: self.node().endpoints().map(to_api).collect(),
        }))
    }

    async fn gc(&self, req: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let valid = req
            .get_ref()
            .valid
            .iter()
            .map(|v| owner(Some(v)))
            .collect::<Result<Vec<_>, _>>()?;
        let (removed, leases_released) = self.node().gc(&valid).map_err(|e| internal(&e))?;
        Ok(Response::new(GcReply {
            removed: removed.iter().map(to_api).collect(),
            leases_released,
        }))
    }
}
