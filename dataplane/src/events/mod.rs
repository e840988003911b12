//! Events from the kernel: the ring-buffer reader and the flow store behind `moatctl
//! observe` and `moatctl drops`.
mod flows;

pub use flows::{proto_name, run, FlowStore};
