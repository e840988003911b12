//! NetworkPolicy (and later L7 and runtime rules) → the exact BPF map entries.
//!
//! Pure functions, no kernel: given policies and the current pods and namespaces,
//! produce the policy-map entries and `explain(from, to, port)`. The dataplane agent
//! diffs these against the maps. This crate is the home of the NetworkPolicy issue's
//! compiler; the foundation only fixes the boundary: it depends on `identity`, never on
//! `dataplane`, so it builds and tests without the eBPF toolchain.
pub use moat_identity::Identity;
