//! Types shared by the eBPF programs and the user-space agent.
//!
//! Every map key and value here is `#[repr(C)]` with explicit padding and a size
//! assertion: a hidden padding byte in a key makes lookups miss at random.
#![no_std]

/// Pin directory (under bpffs) used when the agent is given no other.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/moat";

/// Pinned name of the endpoint map (≤15 bytes: the kernel's object-name limit).
/// Bump the suffix when `EndpointInfo` changes layout.
pub const ENDPOINTS_MAP: &str = "moat_endpts_v1";
/// Pinned name of the per-CPU datapath counters.
pub const METRICS_MAP: &str = "moat_metrics_v1";

/// Most endpoints one node can hold: a /22 of pods plus headroom.
pub const MAX_ENDPOINTS: u32 = 4096;

/// Value of `ENDPOINTS`, keyed by the pod's IPv4 address as it appears on the wire
/// (network byte order, read as a native `u32`).
///
/// `from_container` uses it twice: the source entry proves the packet came from the
/// veth that owns that address (anti-spoofing), the destination entry says where to
/// redirect a pod-to-pod packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// ifindex of the host-side veth.
    pub ifindex: u32,
    /// Agent-assigned endpoint id (stable for the endpoint's life).
    pub endpoint_id: u32,
    /// MAC of the pod's `eth0`.
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth (the pod's gateway neighbour entry points here).
    pub host_mac: [u8; 6],
    /// `ENDPOINT_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 24);

/// Counter slots of `METRICS` (a per-CPU array indexed by these numbers).
///
/// Drop reasons reuse Cilium's well-known numbering so operators can read them.
pub mod metric {
    /// Packets from a pod redirected straight into a local pod (`bpf_redirect_peer`).
    pub const FWD_REDIRECT_PEER: u32 = 0;
    /// Packets from a pod handed to the node's stack (node, outside, unknown local).
    pub const FWD_STACK: u32 = 1;
    /// Packets the stack routed to a pod (seen on the host veth's egress).
    pub const TO_CONTAINER: u32 = 2;
    /// Non-IPv4 packets passed through untouched (ARP, IPv6 for now).
    pub const PASS_NON_IPV4: u32 = 3;
    /// Source IP does not belong to the veth it came from.
    pub const DROP_INVALID_SIP: u32 = 132;
    /// Malformed or truncated packet.
    pub const DROP_INVALID: u32 = 134;
    /// The kernel refused a packet rewrite.
    pub const DROP_WRITE_ERROR: u32 = 141;
    /// Number of slots in the counter array.
    pub const SLOTS: u32 = 256;
}

/// Human name of a counter slot, for `moatctl` and logs.
#[must_use]
pub fn metric_name(slot: u32) -> Option<&'static str> {
    Some(match slot {
        metric::FWD_REDIRECT_PEER => "forward_redirect_peer",
        metric::FWD_STACK => "forward_stack",
        metric::TO_CONTAINER => "to_container",
        metric::PASS_NON_IPV4 => "pass_non_ipv4",
        metric::DROP_INVALID_SIP => "drop_invalid_source_ip",
        metric::DROP_INVALID => "drop_invalid_packet",
        metric::DROP_WRITE_ERROR => "drop_write_error",
        _ => return None,
    })
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data without padding (size asserted above).
unsafe impl aya::Pod for EndpointInfo {}
