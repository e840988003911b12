//! The Moat node agent as a library; `moat-agent` (main.rs) only parses flags.
//!
//! Layout, by concern (docs/ARCHITECTURE.md has the picture):
//! - [`agent`]: the running agent: the node owner thread, the state source thread, the
//!   event reader and the API server, and how they talk (commands in, views out).
//! - [`node`]: the node's mutable state, owned by one thread: IPAM, endpoints, the
//!   datapath, policy and services, kept consistent and persisted.
//! - [`view`]: the read-only snapshot the owner publishes for readers.
//! - [`endpoint`], [`ipam`], [`persist`]: leaf types, address management, state files.
//! - [`reap`]: frees large replaced values on a background thread.
//! - [`source`]: where desired state comes from (the manifest directory now).
//! - [`policy`], [`services`]: desired state → map entries (agent side).
//! - [`kernel`]: eBPF loading, maps, attachment, device queries.
//! - [`events`]: the ring-buffer reader and the flow store.
//! - [`api`]: the gRPC service.
//! - [`install_cni`], [`fixtures`]: `install-cni`; test packets for `BPF_PROG_TEST_RUN`.
pub mod agent;
pub mod api;
pub mod endpoint;
pub mod events;
pub mod fixtures;
pub mod install_cni;
pub mod ipam;
pub mod kernel;
pub mod node;
pub mod persist;
pub mod policy;
pub mod reap;
pub mod services;
pub mod source;
pub mod view;
