//! Everything that touches the kernel: loading and attaching the eBPF programs and
//! owning their maps (`datapath`), device and filesystem queries (`netdev`), read-only
//! map handles for the API (`stats`), and the optional iptables masquerade rule.
pub mod datapath;
pub mod http;
pub mod masquerade;
pub mod netdev;
pub mod stats;
