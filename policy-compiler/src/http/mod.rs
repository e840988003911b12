//! HTTP (L7) policy, user-space half: request framing and normalisation
//! ([`request`], the reference the kernel parser is held to) and rule patterns compiled to
//! bounded DFAs ([`rules`]). The kernel's byte-step parser (`moat_dataplane_common::http1`)
//! is held to [`request`] by a differential test. The kernel path (sk_skb/sk_msg) is not
//! attached yet: policies
//! with HTTP rules are refused when decoded (see `k8s::moat_policy`).
pub mod corpus;
pub mod dfa;
pub mod ports;
pub mod request;
pub mod rules;

#[cfg(test)]
mod tests;
