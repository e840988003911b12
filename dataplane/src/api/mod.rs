//! The gRPC API (`moat.v1.Agent`) on a root-only unix socket: CNI plugin requests go to
//! the node owner; reads are answered from the latest view.
mod server;
pub mod validate;

pub use server::{to_api, AgentService};
