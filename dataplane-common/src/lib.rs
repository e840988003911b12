//! Types shared by the eBPF programs and the user-space agent.
//!
//! Every map key and value here is `#[repr(C)]` with explicit padding and a size
//! assertion: a hidden padding byte in a key makes lookups miss at random.
#![no_std]

pub mod conntrack;
pub mod csum;
pub mod http1;
pub mod l7;
pub mod policy;

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
    /// ARP packets passed through untouched (the only non-IPv4 traffic a pod may send or
    /// receive until Moat has IPv6 pods).
    pub const PASS_ARP: u32 = 3;
    /// Source IP does not belong to the veth it came from.
    pub const DROP_INVALID_SIP: u32 = 132;
    /// Malformed or truncated packet.
    pub const DROP_INVALID: u32 = 134;
    /// Neither IPv4 nor ARP (IPv6 included, until Moat has IPv6 pods).
    pub const DROP_UNSUPPORTED_L3: u32 = 139;
    /// The kernel refused a packet rewrite.
    pub const DROP_WRITE_ERROR: u32 = 141;
    /// NetworkPolicy does not allow the flow.
    pub const DROP_POLICY_DENIED: u32 = 133;
    /// The conntrack table refused a new entry.
    pub const DROP_CT_INSERT_FAILED: u32 = 155;
    /// A non-first IPv4 fragment whose first fragment was not seen (its ports, and so
    /// its flow, are unknown).
    pub const DROP_FRAG_NOT_FOUND: u32 = 167;
    /// An ICMP error (unreachable, time exceeded, parameter problem) that belongs to no
    /// tracked flow of its sender and receiver: forged, or about a flow long gone.
    pub const DROP_ICMP_UNRELATED: u32 = 168;
    /// A packet routed by the node's stack towards a pod that claims a local pod's
    /// address as its source (local pods never reach each other through the stack).
    pub const DROP_SPOOFED_LOCAL_SOURCE: u32 = 169;
    /// New flows allowed by policy (or not covered by any policy).
    pub const FLOW_NEW_ALLOWED: u32 = 4;
    /// New flows policy would drop, let through because audit mode is on.
    pub const FLOW_AUDIT: u32 = 5;
    /// Packets of established flows (original direction).
    pub const CT_ESTABLISHED: u32 = 6;
    /// Packets in the reply direction of a tracked flow.
    pub const CT_REPLY: u32 = 7;
    /// Events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 8;
    /// Established flows whose verdict was re-checked after a policy change.
    pub const CT_REEVALUATED: u32 = 9;
    /// Connections/datagrams the socket load balancer sent to a backend.
    pub const SOCK_LB_TRANSLATED: u32 = 10;
    /// Replies and peer names translated back to the service address.
    pub const SOCK_LB_REVERSED: u32 = 11;
    /// A service with no eligible backend refused a connection.
    pub const DROP_NO_SERVICE_BACKEND: u32 = 158;
    /// NodePort/externalIP/LoadBalancer packets translated to a backend (XDP).
    pub const NODEPORT_TRANSLATED: u32 = 12;
    /// Replies of such flows translated back to the frontend address.
    pub const NODEPORT_REVERSED: u32 = 13;
    /// External frontend without a backend: left to the stack, which answers RST/ICMP.
    pub const NODEPORT_NO_BACKEND: u32 = 14;
    /// Packets to a service address translated per packet in `from_container` (the
    /// socket load balancer is off or was bypassed).
    pub const TC_LB_TRANSLATED: u32 = 15;
    /// ICMP errors (unreachable, time exceeded, parameter problem) about a tracked flow,
    /// passed as part of it.
    pub const CT_RELATED: u32 = 16;
    /// HTTP requests a rule allowed (kernel parser, per request).
    pub const L7_ALLOWED: u32 = 17;
    /// HTTP requests no rule allowed, let through because audit mode is on.
    pub const L7_AUDIT: u32 = 18;
    /// HTTP requests no rule allowed: answered 403 by the kernel.
    pub const DROP_L7_DENIED: u32 = 180;
    /// HTTP requests the kernel parser could not frame with certainty, by reason
    /// (`http1::reject::*` added to this base: 181 too large … 187 ambiguous path).
    pub const DROP_L7_UNPARSABLE: u32 = 180;
    /// A chunked body whose framing is wrong (bad size line, missing CRLF, trailers).
    pub const DROP_L7_CHUNK: u32 = 188;
    /// Bytes on an HTTP-rule socket with no framing state (the state table was full).
    pub const DROP_L7_NO_STATE: u32 = 189;
    /// Bytes after a refused request on the same connection.
    pub const DROP_L7_AFTER_DENY: u32 = 190;
    /// Connections to an HTTP-rule port that could not be put under enforcement (the
    /// sockhash was full): counted, since sock_ops cannot refuse a connection.
    pub const L7_UNTRACKED: u32 = 191;
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
        metric::PASS_ARP => "pass_arp",
        metric::DROP_UNSUPPORTED_L3 => "drop_unsupported_l3",
        metric::DROP_INVALID_SIP => "drop_invalid_source_ip",
        metric::DROP_INVALID => "drop_invalid_packet",
        metric::DROP_WRITE_ERROR => "drop_write_error",
        metric::DROP_POLICY_DENIED => "drop_policy_denied",
        metric::DROP_CT_INSERT_FAILED => "drop_ct_insert_failed",
        metric::DROP_FRAG_NOT_FOUND => "drop_fragment_without_first",
        metric::DROP_ICMP_UNRELATED => "drop_icmp_error_unrelated",
        metric::DROP_SPOOFED_LOCAL_SOURCE => "drop_spoofed_local_source",
        metric::FLOW_NEW_ALLOWED => "flow_new_allowed",
        metric::FLOW_AUDIT => "flow_audit",
        metric::CT_ESTABLISHED => "ct_established",
        metric::CT_REPLY => "ct_reply",
        metric::EVENTS_LOST => "events_lost",
        metric::CT_REEVALUATED => "ct_reevaluated",
        metric::SOCK_LB_TRANSLATED => "sock_lb_translated",
        metric::SOCK_LB_REVERSED => "sock_lb_reversed",
        metric::DROP_NO_SERVICE_BACKEND => "drop_no_service_backend",
        metric::NODEPORT_TRANSLATED => "nodeport_translated",
        metric::NODEPORT_REVERSED => "nodeport_reversed",
        metric::NODEPORT_NO_BACKEND => "nodeport_no_backend_rejected",
        metric::TC_LB_TRANSLATED => "tc_lb_translated",
        metric::CT_RELATED => "ct_related",
        metric::L7_ALLOWED => "http_allowed",
        metric::L7_AUDIT => "http_audit",
        metric::DROP_L7_DENIED => "drop_http_denied",
        181 => "drop_http_too_large",
        182 => "drop_http_malformed",
        183 => "drop_http2_preface",
        184 => "drop_http_tls",
        185 => "drop_http_version",
        186 => "drop_http_ambiguous_framing",
        187 => "drop_http_ambiguous_path",
        metric::DROP_L7_CHUNK => "drop_http_bad_chunk",
        metric::DROP_L7_NO_STATE => "drop_http_no_state",
        metric::DROP_L7_AFTER_DENY => "drop_http_after_deny",
        metric::L7_UNTRACKED => "http_untracked_connection",
        _ => return None,
    })
}

/// Policy directions (`PolicyKey::direction`).
pub mod direction {
    /// Traffic arriving at the subject pod.
    pub const INGRESS: u8 = 1;
    /// Traffic the subject pod sends.
    pub const EGRESS: u8 = 2;
}

/// Pinned name of the policy LPM trie.
pub const POLICY_MAP: &str = "moat_policy_v1";
/// Pinned name of the ipcache LPM trie.
pub const IPCACHE_MAP: &str = "moat_ipcache_v1";

/// Policy entries one node can hold: 1,000 policies over 500 identities with room to spare.
pub const MAX_POLICY_ENTRIES: u32 = 262_144;
/// ipcache prefixes: every pod and node address plus ipBlock CIDRs.
pub const MAX_IPCACHE_ENTRIES: u32 = 65_536;

/// Peer identity that stands for "any peer" in a policy key.
pub const ANY_PEER: u32 = 0;

/// The data part of a `POLICY` LPM-trie key (the trie adds a `u32` prefix length in front).
///
/// Lookup, as done by the datapath and mirrored by `moat_policy_compiler::lookup`:
///
/// 1. key `{subject, direction, peer = the real peer identity, proto, dport}` with the full
///    96-bit prefix; the trie returns the longest stored prefix that matches;
/// 2. the same key with `peer = ANY_PEER`;
/// 3. the flow is allowed when either lookup returns an entry whose action is
///    `ACTION_ALLOW`; otherwise it is denied, and the cookie of the entry found (the
///    "isolated by" entry at prefix 40) names the policy that isolated the subject. No entry
///    at all means no policy covers the subject: the node-wide default applies.
///
/// Stored prefixes (bits counted from the first byte of this struct):
/// - 40 (`PREFIX_SUBJECT_DIR`): subject + direction. One per known subject identity and
///   direction: `ACTION_ALLOW` when no policy isolates it, `ACTION_DENY` (cookie = the
///   isolating policy) when one does. It matches any peer, proto and port.
/// - 72 (`PREFIX_PEER`): + peer: every protocol and port to/from that peer.
/// - 80 (`PREFIX_PROTO`): + protocol: every port of that protocol.
/// - 81..=96: + the high bits of the destination port: a port (96) or an aligned block of a
///   range (`endPort`); a range is stored as the minimal set of such blocks.
///
/// The peer and port are stored big-endian so that prefixes line up with numeric order.
/// There is no padding: 4 + 1 + 4 + 1 + 2 = 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Identity of the local pod the rule protects (native byte order).
    pub subject: u32,
    /// `direction::INGRESS` or `direction::EGRESS`.
    pub direction: u8,
    /// Peer identity, big-endian; `ANY_PEER` for a rule that matches every peer.
    pub peer: [u8; 4],
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    /// Destination port, big-endian (as on the wire).
    pub dport: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

impl PolicyKey {
    #[must_use]
    pub const fn new(subject: u32, direction: u8, peer: u32, proto: u8, dport: u16) -> Self {
        Self {
            subject,
            direction,
            peer: peer.to_be_bytes(),
            proto,
            dport: dport.to_be_bytes(),
        }
    }
}

/// `PolicyKey` prefix lengths (see the comment on `PolicyKey`).
pub const PREFIX_SUBJECT_DIR: u32 = 40;
pub const PREFIX_PEER: u32 = 72;
pub const PREFIX_PROTO: u32 = 80;
pub const PREFIX_FULL: u32 = 96;

/// `PolicyValue::action`.
pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;

/// Value of `POLICY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValue {
    /// `ACTION_ALLOW` or `ACTION_DENY`.
    pub action: u32,
    /// Names the policy rule that produced this entry (the agent keeps cookie → rule).
    pub cookie: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);

/// Pinned name of the conntrack table.
pub const CT_MAP: &str = "moat_ct4_v1";
/// Pinned name of the flow/drop event ring buffer.
pub const EVENTS_MAP: &str = "moat_events_v1";
/// Pinned name of the one-element datapath configuration array.
pub const CONFIG_MAP: &str = "moat_config_v1";

/// Tracked flows per node: Cilium's default order of magnitude for a small node. LRU: the
/// oldest flows are evicted when full.
pub const MAX_CT_ENTRIES: u32 = 262_144;
/// Event ring buffer size: ~40,000 events of 48 bytes between two reads.
pub const EVENTS_BYTES: u32 = 2 * 1024 * 1024;

/// Conntrack timeouts (nanoseconds of `bpf_ktime_get_ns`).
pub mod ct_timeout {
    const SEC: u64 = 1_000_000_000;
    /// TCP after a reply was seen (Linux nf_conntrack and Cilium use hours too).
    pub const TCP_ESTABLISHED: u64 = 21_600 * SEC;
    /// TCP before the peer answered (SYN sent).
    pub const TCP_OPENING: u64 = 60 * SEC;
    /// TCP after a RST, or a FIN from both sides.
    pub const TCP_CLOSING: u64 = 10 * SEC;
    /// UDP, ICMP and every other protocol: idle timeout.
    pub const OTHER: u64 = 60 * SEC;
}

/// Conntrack key: the flow's tuple as the initiator sent it (addresses and ports in wire
/// order). ICMP echo uses the echo id as `sport` on requests and `dport` on replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

/// A fragmented datagram: its first fragment's ports are remembered under this key so
/// later fragments (which carry no L4 header) join the same flow, as Cilium does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    /// The IPv4 identification field (wire order).
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// The ports of a fragmented datagram (wire order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Drops per (pod veth, reason): exact packet counts, and the per-second budget of drop
/// events (a flood from one pod is counted in full but reported only a few times a
/// second, so it cannot starve the agent or other pods' events).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// The pod veth's ifindex (the source pod on `from_container`, the destination on
    /// `to_container`).
    pub ifindex: u32,
    pub reason: u32,
}

const _: () = assert!(core::mem::size_of::<DropKey>() == 8);

/// Per-CPU value of `DropKey` (summed over CPUs by readers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCount {
    pub packets: u64,
    /// Start of the current one-second event window (ns) and events sent in it.
    pub window_start: u64,
    pub events: u64,
    /// Drops counted but not reported as events.
    pub suppressed: u64,
}

/// Drop events per (pod, reason) per second and CPU; the rest are only counted.
pub const DROP_EVENTS_PER_SEC: u64 = 50;
/// (pod, reason) pairs tracked (LRU).
pub const MAX_DROP_KEYS: u32 = 16_384;
/// Pinned name of the drop counters.
pub const DROPS_MAP: &str = "moat_drops_v1";

/// Datagrams in flight as fragments, node-wide (an LRU: old datagrams are evicted).
pub const MAX_FRAGS: u32 = 8192;

/// `CtEntry::flags` bits.
pub mod ct_flag {
    /// A packet in the reply direction has been seen.
    pub const SEEN_REPLY: u32 = 1;
    pub const FIN_ORIG: u32 = 2;
    pub const FIN_REPLY: u32 = 4;
    pub const RST: u32 = 8;
    /// The verdict includes the source pod's egress policy.
    pub const CHECKED_EGRESS: u32 = 16;
    /// The verdict includes the destination pod's ingress policy.
    pub const CHECKED_INGRESS: u32 = 32;
    /// The flow was let through in audit mode.
    pub const AUDIT: u32 = 64;
}

/// Conntrack value. The policy verdict is decided when the entry is created and cached
/// here with the policy revision it was made under; a packet that finds an older revision
/// re-checks the flow, so removing an allow stops established flows at their next packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns` of the last packet in either direction.
    pub last_seen: u64,
    pub created: u64,
    /// `ct_flag::*`.
    pub flags: u32,
    /// `Config::policy_rev` the verdict was made under.
    pub policy_rev: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Cookie of the policy entry that allowed the flow.
    pub cookie: u32,
    pub _pad: u32,
    pub packets_orig: u64,
    pub packets_reply: u64,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 56);

/// `Config::flags` bits.
pub mod config_flag {
    /// Report would-be policy drops as AUDIT events and let the packets through.
    pub const AUDIT: u32 = 1;
    /// A pod no policy entry covers is denied (enforcement mode `always`).
    pub const DENY_UNMANAGED: u32 = 2;
}

/// The single element of `CONFIG`, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bumped after every policy/ipcache change; conntrack entries made under an older
    /// revision are re-checked.
    pub policy_rev: u32,
    /// `config_flag::*`.
    pub flags: u32,
    /// Events for allowed new flows per second and CPU (0: none; drops are always reported).
    pub flow_events_per_sec: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 16);

/// `FlowEvent::verdict`.
pub mod verdict {
    pub const FORWARDED: u8 = 1;
    pub const DROPPED: u8 = 2;
    pub const AUDIT: u8 = 3;
    /// A service frontend was translated to a backend (socket LB or NodePort).
    pub const TRANSLATED: u8 = 4;
}

/// `FlowEvent::hook`: where the event was produced.
pub mod hook {
    /// tcx ingress of a pod's host veth (packets the pod sends).
    pub const FROM_CONTAINER: u8 = 1;
    /// tcx egress of a pod's host veth (packets the stack delivers to the pod).
    pub const TO_CONTAINER: u8 = 2;
    /// The socket load balancer (cgroup connect/sendmsg).
    pub const SOCKET_LB: u8 = 3;
    /// XDP on a node device (NodePort).
    pub const NODE_DEVICE: u8 = 4;
    /// The sk_skb HTTP verdict of a server socket (one event per request, `l7::L7Event`).
    pub const HTTP: u8 = 5;
}

/// One record of `EVENTS`: a dropped packet, an audited flow or an allowed new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns`.
    pub ts: u64,
    /// Addresses and ports in wire order.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Policy entry cookie that decided (0: none).
    pub cookie: u32,
    /// Host veth the packet was seen on.
    pub ifindex: u32,
    /// `verdict::*`.
    pub verdict: u8,
    /// Drop reason (`metric::DROP_*`), 0 when not dropped.
    pub reason: u8,
    pub proto: u8,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// `hook::*`.
    pub hook: u8,
    /// `direction::*` of the policy check that decided (0: none).
    pub direction: u8,
    /// 1 when the event concerns an established flow re-checked after a policy change.
    pub reevaluated: u8,
    pub _pad: u8,
    /// Packet length in bytes.
    pub len: u32,
    /// `TRANSLATED` events: the service frontend the flow was sent to (wire order).
    pub orig_daddr: u32,
    pub orig_dport: u16,
    pub _pad2: u16,
    /// Socket load balancer events: the client's network namespace cookie (its pod).
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 64);

/// Pinned names of the service load-balancing maps.
pub const SERVICES_MAP: &str = "moat_svc_v1";
pub const BACKENDS_MAP: &str = "moat_backend_v1";
pub const SOCK_REVNAT_MAP: &str = "moat_sknat_v1";
pub const AFFINITY_MAP: &str = "moat_affin_v1";

/// Service frontends × (1 + backends): 10,000 services with a few backends each.
pub const MAX_SERVICE_ENTRIES: u32 = 131_072;
/// Distinct backends (address, port, protocol).
pub const MAX_BACKENDS: u32 = 65_536;
/// Sockets translated by the socket load balancer that may still ask for their peer.
pub const MAX_SOCK_REVNAT: u32 = 262_144;
/// (service, client) session-affinity entries.
pub const MAX_AFFINITY: u32 = 65_536;

/// Key of `SERVICES`: a frontend (VIP or node address, port, protocol) and a slot.
///
/// Slot 0 is the frontend's master entry (`ServiceValue::count` eligible backends, the
/// service id, affinity timeout); slots `1..=count` each name one eligible backend. A
/// new connection picks a slot at random (or its affinity entry's backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Wire order.
    pub addr: u32,
    /// Wire order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub slot: u16,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);

/// `ServiceValue::flags`.
pub mod svc_flag {
    /// A frontend reached from outside (NodePort, externalIP, LoadBalancer).
    pub const EXTERNAL: u16 = 1;
    /// An external frontend whose backends differ for clients inside the cluster
    /// (`externalTrafficPolicy: Local` limits only outside clients): pods and the node
    /// use the master at slot `IN_CLUSTER_SLOTS` and the slots after it.
    pub const IN_CLUSTER_VIEW: u16 = 2;
}

/// `ServiceKey::slot` of the in-cluster view's master entry (see
/// `svc_flag::IN_CLUSTER_VIEW`); its backends are at the slots after it.
pub const IN_CLUSTER_SLOTS: u16 = 0x8000;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceValue {
    /// Slot entries: the backend. Master entry: 0.
    pub backend_id: u32,
    /// Master entry: eligible backends (0: the service rejects new connections).
    pub count: u16,
    /// `svc_flag::*`.
    pub flags: u16,
    /// Stable id of the service port (affinity and reverse NAT refer to it).
    pub svc_id: u32,
    /// ClientIP affinity timeout in seconds (0: no affinity).
    pub affinity_timeout: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// `Backend4::state`.
pub mod backend_state {
    pub const ACTIVE: u8 = 0;
    /// Keeps existing connections, gets no new ones.
    pub const TERMINATING: u8 = 1;
}

/// Value of `BACKENDS`, keyed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend4 {
    /// Wire order.
    pub addr: u32,
    /// Wire order.
    pub port: u16,
    pub proto: u8,
    /// `backend_state::*`.
    pub state: u8,
}
const _: () = assert!(core::mem::size_of::<Backend4>() == 8);

/// Key of `SOCK_REVNAT`: a socket the socket LB translated, and the backend it now
/// talks to; the value is the frontend the application asked for, so `recvmsg` and
/// `getpeername` show the service address, not the backend's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 8);

/// Key of `AFFINITY`: (service, client). The socket LB identifies a client by its
/// network namespace cookie (one per pod, and one for the node).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: u64,
    pub svc_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` of the last connection.
    pub last_used: u64,
    pub backend_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Pinned name of the set of network namespaces the socket load balancer serves.
pub const SOCK_LB_NETNS_MAP: &str = "moat_sknetns_v1";

/// Pinned names of the NodePort maps.
pub const MAGLEV_MAP: &str = "moat_maglev_v2";
pub const NAT_FWD_MAP: &str = "moat_natfwd_v1";
pub const NAT_REV_MAP: &str = "moat_natrev_v1";

/// Maglev table size per external service (prime; see `moat_services::maglev`).
pub const MAGLEV_M: u32 = 32_749;
/// External service ports that get a Maglev table; the ones beyond fall back to random
/// selection (still load balanced, just not consistent across nodes).
pub const MAGLEV_TABLES: u32 = 128;
/// Maglev entries. The map is not preallocated: a table costs memory (~2.5 MB) only
/// while its service exists.
pub const MAX_MAGLEV_ENTRIES: u32 = MAGLEV_M * MAGLEV_TABLES;
/// NodePort flows being translated (forward and reverse).
pub const MAX_NAT_ENTRIES: u32 = 262_144;

/// Key of `MAGLEV`: a service's table slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevKey {
    pub svc_id: u32,
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<MaglevKey>() == 8);

/// A flow tuple for the NodePort NAT maps (addresses and ports in wire order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NatKey>() == 16);

/// `NAT_FWD`: client → frontend flow ⇒ the backend it was given (so a Maglev table change
/// does not move established flows). `NAT_REV`: backend → client reply ⇒ the frontend
/// address and port to put back as the source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatValue {
    /// Wire order.
    pub addr: u32,
    /// Wire order.
    pub port: u16,
    pub _pad: u16,
    pub backend_id: u32,
    /// `NAT_REV`: the device the request came in on (the reply leaves through it).
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 16);

/// Value of `IPCACHE` (LPM trie keyed by IPv4 prefix in wire order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpcacheInfo {
    pub identity: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<IpcacheInfo>() == 8);

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data without padding (size asserted above).
unsafe impl aya::Pod for EndpointInfo {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for PolicyKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for PolicyValue {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for IpcacheInfo {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for CtKey {}
#[cfg(feature = "user")]
// SAFETY: plain-old-data, no padding.
unsafe impl aya::Pod for DropKey {}
#[cfg(feature = "user")]
// SAFETY: plain-old-data, no padding.
unsafe impl aya::Pod for DropCount {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for CtEntry {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Config {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for ServiceKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for ServiceValue {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Backend4 {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SockRevKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SockRevValue {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for AffinityKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for AffinityValue {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for MaglevKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for NatKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for NatValue {}
