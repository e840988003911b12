//! Every map the datapath uses. User space (`dataplane/src/datapath.rs`) owns their contents.
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use moat_dataplane_common::{
    metric, AffinityKey, AffinityValue, Backend4, Config, CtEntry, CtKey, DropCount, DropKey, EndpointInfo, FragKey,
    FragPorts, IpcacheInfo, MaglevKey, NatKey, NatValue, PolicyKey, PolicyValue, ServiceKey, ServiceValue, SockRevKey,
    SockRevValue, EVENTS_BYTES, MAX_AFFINITY, MAX_BACKENDS, MAX_CT_ENTRIES, MAX_DROP_KEYS, MAX_ENDPOINTS, MAX_FRAGS,
    MAX_IPCACHE_ENTRIES, MAX_MAGLEV_ENTRIES, MAX_NAT_ENTRIES, MAX_POLICY_ENTRIES, MAX_SERVICE_ENTRIES, MAX_SOCK_REVNAT,
};

/// Local pods by IPv4 (wire order): where to redirect, and which veth owns the address.
#[map(name = "moat_endpts_v1")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Per-CPU packet counters indexed by `metric::*` (forward paths and drop reasons).
#[map(name = "moat_metrics_v1")]
pub static METRICS: PerCpuArray<u64> = PerCpuArray::pinned(metric::SLOTS, 0);

/// IPv4 prefix (wire order) → security identity: local pods, the node, ipBlock CIDRs.
/// A miss means `reserved:world`.
#[map(name = "moat_ipcache_v1")]
pub static IPCACHE: LpmTrie<u32, IpcacheInfo> = LpmTrie::pinned(MAX_IPCACHE_ENTRIES, 0);

/// Compiled NetworkPolicy; the key layout and lookup order are documented on `PolicyKey`.
#[map(name = "moat_policy_v1")]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(MAX_POLICY_ENTRIES, 0);

/// Connection tracking: one entry per flow, keyed by the initiator's tuple. LRU so a full
/// table evicts the least recently used flow instead of refusing new ones.
#[map(name = "moat_ct4_v1")]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(MAX_CT_ENTRIES, 0);

/// Fragmented datagrams: the first fragment's ports, for the fragments that follow.
#[map(name = "moat_frag4_v1")]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(MAX_FRAGS, 0);

/// Drops per (pod veth, reason): exact counts and the drop-event budget.
#[map(name = "moat_drops_v1")]
pub static DROPS: LruPerCpuHashMap<DropKey, DropCount> = LruPerCpuHashMap::pinned(MAX_DROP_KEYS, 0);

/// Flow and drop events for the agent.
#[map(name = "moat_events_v1")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// Node-wide datapath settings (one element), written by the agent.
#[map(name = "moat_config_v1")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Per-CPU `[window start ns, events sent in window]` for rate-limiting allowed-flow events.
#[map(name = "moat_evrate_v1")]
pub static EVENT_RATE: PerCpuArray<[u64; 2]> = PerCpuArray::pinned(1, 0);

/// Service frontends and their backend slots (layout on `ServiceKey`).
#[map(name = "moat_svc_v1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICE_ENTRIES, 0);

/// Backend id → address, port, state.
#[map(name = "moat_backend_v1")]
pub static BACKENDS: HashMap<u32, Backend4> = HashMap::pinned(MAX_BACKENDS, 0);

/// (socket, backend) → the service address the application asked for.
#[map(name = "moat_sknat_v1")]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::pinned(MAX_SOCK_REVNAT, 0);

/// Socket cookie → its `SOCK_REVNAT` key, so the entry goes when the socket is released
/// (one socket's churn must not evict other pods' entries from the shared LRU).
#[map(name = "moat_skkeys_v1")]
pub static SOCK_KEYS: LruHashMap<u64, SockRevKey> = LruHashMap::pinned(MAX_SOCK_REVNAT, 0);

/// Network namespace cookies the socket load balancer serves: the node's and its pods'.
/// Sockets elsewhere (another node's namespaces on a shared host, a test's "outside")
/// are left alone, as they would be on a different machine.
#[map(name = "moat_sknetns_v1")]
pub static SOCK_LB_NETNS: HashMap<u64, u32> = HashMap::pinned(MAX_ENDPOINTS + 1, 0);

/// (client netns, service) → the backend of its last connection (ClientIP affinity).
#[map(name = "moat_affin_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY, 0);

/// (service, slot) → backend: Maglev tables of external frontends.
#[map(name = "moat_maglev_v2")]
pub static MAGLEV: HashMap<MaglevKey, u32> = HashMap::pinned(MAX_MAGLEV_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// NodePort flows: client tuple → backend (keeps established flows on their backend).
#[map(name = "moat_natfwd_v1")]
pub static NAT_FWD: LruHashMap<NatKey, NatValue> = LruHashMap::pinned(MAX_NAT_ENTRIES, 0);

/// NodePort replies: backend → client tuple ⇒ frontend address and port.
#[map(name = "moat_natrev_v1")]
pub static NAT_REV: LruHashMap<NatKey, NatValue> = LruHashMap::pinned(MAX_NAT_ENTRIES, 0);

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(c) = METRICS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn config() -> Config {
    CONFIG.get(0).copied().unwrap_or_default()
}
