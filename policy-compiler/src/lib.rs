//! NetworkPolicy → the exact BPF map entries, and the tools to reason about them.
//!
//! Pure functions, no kernel: [`k8s`] (the `moat-k8s-model` crate, re-exported) parses and
//! validates manifests, [`world`] is the
//! compiler's input (pods with identities and addresses, namespaces, policies, mode),
//! [`compile`] produces the policy-map and ipcache contents in the encoding documented on
//! `moat_dataplane_common::PolicyKey`, [`lookup`] emulates the datapath decision and explains
//! it, [`diff`] gives the minimal map updates between two compiles and [`matrix`] prints the
//! pod-to-pod reachability table. It depends on `identity` and `dataplane-common`, never on
//! `dataplane`, so it builds and tests without the eBPF toolchain.
pub mod compile;
pub mod diff;
pub mod http;
pub use moat_k8s_model as k8s;
pub mod lookup;
pub mod matrix;
pub mod world;

pub use compile::{cookie, Compiled, Compiler, RuleRef};
pub use diff::{diff, Diff};
pub use lookup::{explain, lookup, Decision, Endpoint, Explanation};
pub use matrix::{matrix, Matrix};
pub use moat_identity::Identity;
pub use world::{Mode, PodInfo, World};

/// Errors of this crate's query functions (manifest problems are [`k8s::ManifestError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown pod {namespace}/{name}")]
    UnknownPod { namespace: String, name: String },
}
