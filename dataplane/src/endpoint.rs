//! Endpoint types: one wired pod interface, as the CNI plugin reports it and as the
//! agent persists it. A leaf module: everything else may use it, it uses nothing of the
//! agent.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Who holds a lease: one CNI attachment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

/// One wired pod interface, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    pub id: u32,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub ipv4: Ipv4Addr,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub pod_mac: String,
    pub host_mac: String,
    /// "agent" or "delegated".
    pub ipam: String,
    pub created_unix: i64,
    /// "ready", or why the datapath is not attached.
    pub state: String,
    /// Cookie of the pod's network namespace (the socket load balancer serves it).
    #[serde(default)]
    pub netns_cookie: u64,
}

/// What the CNI plugin reports after wiring a pod.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub owner: Owner,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub ipv4: Ipv4Addr,
    pub host_ifname: String,
    pub pod_mac: String,
    pub ipam: String,
}

impl EndpointRecord {
    /// The CNI attachment this endpoint belongs to.
    #[must_use]
    pub fn owner(&self) -> Owner {
        Owner {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// "namespace/name" of the pod.
    #[must_use]
    pub fn pod(&self) -> String {
        format!("{}/{}", self.pod_namespace, self.pod_name)
    }
}
