//! A read-only snapshot of the node, published by the node owner after every change.
//!
//! The API's read requests (`moatctl endpoints`, `identities`, `services`, `policy
//! explain`, `status`) and the event reader (naming pods, identities, policies and
//! services in flows) read the latest `View` and never wait for the owner, which may be
//! busy compiling policy or wiring a pod. Large parts (the compiled policy, the world,
//! the services) are shared `Arc`s, so publishing a view costs little.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use moat_identity::{reserved_name, Identity};
use moat_policy_compiler::compile::Compiled;
use moat_policy_compiler::world::{Mode, World};
use moat_services::LbService;

use crate::endpoint::{EndpointRecord, Owner};
use crate::node::Node;
use crate::source::Snapshot;

pub struct View {
    pub node_name: String,
    pub pod_cidr: String,
    pub gateway: Ipv4Addr,
    pub pin_dir: String,
    pub state_dir: String,
    pub started: Instant,
    pub endpoints: Vec<EndpointRecord>,
    pub leases: usize,
    /// The newest state whose policy compile finished.
    pub state: Snapshot,
    pub world: Arc<World>,
    pub compiled: Arc<Compiled>,
    /// MoatNetworkPolicies with HTTP rules, as enforced.
    pub http: Arc<Vec<moat_k8s_model::MoatNetworkPolicy>>,
    /// (identity, labels, in use, local pods "ns/name"), reserved ones included.
    pub identities: Arc<Vec<crate::policy::enforcer::IdentityRow>>,
    identity_names: Arc<BTreeMap<Identity, String>>,
    pub services: Arc<Vec<LbService>>,
    pub mode: Mode,
    pub audit: bool,
    pub revision: u32,
    /// Why the newest state's policy is not enforced (it does not fit the maps).
    pub policy_error: Option<String>,
    /// Entries the policy map can hold.
    pub policy_capacity: usize,
}

impl View {
    #[must_use]
    pub fn new(node: &Node) -> Self {
        Self {
            node_name: node.cfg.node_name.clone(),
            pod_cidr: node.cfg.pod_cidr.to_string(),
            gateway: node.cfg.gateway,
            pin_dir: node.cfg.pin_dir.display().to_string(),
            state_dir: node
                .cfg
                .state_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            started: node.started,
            endpoints: node.endpoints.values().cloned().collect(),
            leases: node.ipam.len(),
            state: node.done_state.clone(),
            world: Arc::clone(&node.enforcer.world),
            http: node.enforcer.inputs.http(),
            compiled: Arc::clone(&node.enforcer.compiled),
            identities: Arc::clone(&node.enforcer.identities),
            identity_names: Arc::clone(&node.enforcer.identity_names),
            services: Arc::clone(&node.lb.services),
            mode: node.enforcer.settings.mode,
            audit: node.enforcer.settings.audit,
            revision: node.enforcer.revision,
            policy_error: node.policy_error.clone(),
            policy_capacity: node.datapath().capacity().0,
        }
    }

    /// An empty view (before the node has opened).
    #[must_use]
    pub fn empty() -> Self {
        Self {
            node_name: String::new(),
            pod_cidr: String::new(),
            gateway: Ipv4Addr::UNSPECIFIED,
            pin_dir: String::new(),
            state_dir: String::new(),
            started: Instant::now(),
            endpoints: Vec::new(),
            leases: 0,
            state: Snapshot::default(),
            world: Arc::default(),
            compiled: Arc::default(),
            http: Arc::default(),
            identities: Arc::default(),
            identity_names: Arc::default(),
            services: Arc::default(),
            mode: Mode::Default,
            audit: false,
            policy_error: None,
            policy_capacity: 0,
            revision: 0,
        }
    }

    #[must_use]
    pub fn endpoint(&self, owner: &Owner) -> Option<&EndpointRecord> {
        self.endpoints
            .iter()
            .find(|e| e.container_id == owner.container_id && e.ifname == owner.ifname)
    }

    /// ("namespace", "name") of the pod with this address (local endpoints first).
    #[must_use]
    pub fn pod_of(&self, ip: Ipv4Addr) -> Option<(String, String)> {
        if let Some(e) = self.endpoints.iter().find(|e| e.ipv4 == ip) {
            return Some((e.pod_namespace.clone(), e.pod_name.clone()));
        }
        self.world
            .pods
            .iter()
            .find(|p| p.ipv4 == Some(ip))
            .map(|p| (p.pod.namespace.clone(), p.pod.name.clone()))
    }

    /// ("namespace", "name") of the local pod whose network namespace has this cookie.
    #[must_use]
    pub fn pod_of_netns(&self, cookie: u64) -> Option<(String, String)> {
        self.endpoints
            .iter()
            .find(|e| e.netns_cookie == cookie)
            .map(|e| (e.pod_namespace.clone(), e.pod_name.clone()))
    }

    /// The identity of a pod, 0 when unknown.
    #[must_use]
    pub fn identity_of_pod(&self, namespace: &str, name: &str) -> u32 {
        self.world.pod(namespace, name).map_or(0, |p| p.identity)
    }

    /// "ns/name:port" of the service with this frontend.
    #[must_use]
    pub fn service_at(&self, ip: Ipv4Addr, port: u16, proto: u8) -> String {
        self.services
            .iter()
            .find(|s| {
                s.frontends
                    .iter()
                    .any(|f| f.addr == ip && f.port == port && f.proto == proto)
            })
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Human name of an identity: reserved name, CIDR, or its labels.
    #[must_use]
    pub fn identity_name(&self, id: Identity) -> String {
        if let Some(n) = reserved_name(id) {
            return n.to_string();
        }
        self.identity_names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("identity {id}"))
    }

    #[must_use]
    pub fn describe_cookie(&self, cookie: u32) -> String {
        self.compiled.describe(cookie)
    }

    #[must_use]
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}
