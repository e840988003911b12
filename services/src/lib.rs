//! Service load balancing, the pure part: Kubernetes Services and their endpoints (from
//! EndpointSlices, or from the pods a selector matches — in standalone mode the agent is
//! its own endpoint controller) → one [`LbService`] per service port, with every frontend
//! (ClusterIP, NodePort, externalIPs, LoadBalancer IPs) and its backends in the state the
//! datapath needs. Plus Maglev tables for consistent backend selection.
//!
//! No kernel, no I/O: the agent turns the result into map entries.
pub mod maglev;
pub mod resolve;

pub use resolve::{
    drop_conflicting_frontends, resolve, Backend, BackendState, Frontend, Input, LbService, PodEndpoint, Scope,
};
