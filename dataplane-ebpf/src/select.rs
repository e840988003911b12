//! Backend selection for a new connection, shared by the socket load balancer, the
//! per-packet DNAT and the NodePort path.
//!
//! - `random`: a uniformly random slot of the frontend's eligible backends (ClusterIP).
//! - `maglev`: the frontend's Maglev table slot of the flow's hash (NodePort,
//!   externalIPs, LoadBalancer: every node picks the same backend for a flow).
//! - ClientIP session affinity (`sessionAffinity: ClientIP`) comes first in all three
//!   paths: a client's new connection goes to the backend of its previous one while that
//!   backend is active and the timeout has not passed since that connection
//!   (kube-proxy's `recent` match semantics).
//!
//! The socket load balancer knows the client by its network namespace (one pod); the
//! per-packet and NodePort paths know it by its source address, tagged so the two kinds
//! of keys never collide. Frontends reached from outside keep their own entries
//! (`external`), because they may have fewer eligible backends
//! (`externalTrafficPolicy: Local`).
use aya_ebpf::helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use moat_dataplane_common::{
    backend_state, svc_flag, AffinityKey, AffinityValue, MaglevKey, ServiceKey, ServiceValue, IN_CLUSTER_SLOTS,
    MAGLEV_M,
};

use crate::maps::{AFFINITY, BACKENDS, MAGLEV, SERVICES};

/// The master entry clients inside the cluster (pods, the node) use for the frontend
/// `master_key`: its own, or the in-cluster view when outside clients see fewer
/// backends (`externalTrafficPolicy: Local`; inside traffic is not limited by it, as
/// with kube-proxy and Cilium).
#[inline(always)]
pub fn in_cluster(master_key: ServiceKey, master: ServiceValue) -> Option<(ServiceKey, ServiceValue)> {
    if master.flags & svc_flag::IN_CLUSTER_VIEW == 0 {
        return Some((master_key, master));
    }
    let key = ServiceKey {
        slot: IN_CLUSTER_SLOTS,
        ..master_key
    };
    // SAFETY: copied out at once.
    unsafe { SERVICES.get(&key) }.copied().map(|v| (key, v))
}

/// A random eligible backend of the frontend `master_key` (whose master entry is
/// `master`; the slots follow the master's own slot number).
#[inline(always)]
pub fn random(master_key: &ServiceKey, master: &ServiceValue) -> Option<u32> {
    if master.count == 0 {
        return None;
    }
    // SAFETY: plain helper call.
    let slot = master_key.slot + (unsafe { bpf_get_prandom_u32() } % u32::from(master.count)) as u16 + 1;
    // SAFETY: copied out at once.
    unsafe { SERVICES.get(&ServiceKey { slot, ..*master_key }) }.map(|v| v.backend_id)
}

/// The Maglev choice for a flow whose client side hashes to `hash`.
#[inline(always)]
pub fn maglev(master: &ServiceValue, hash: u32) -> Option<u32> {
    let key = MaglevKey {
        svc_id: master.svc_id,
        slot: hash % MAGLEV_M,
    };
    // SAFETY: copied out at once.
    unsafe { MAGLEV.get(&key) }.copied()
}

/// Marks a client key that is an IPv4 address (netns cookies never reach bit 63).
const CLIENT_IP: u64 = 1 << 63;

#[inline(always)]
pub fn client_netns(cookie: u64, master: &ServiceValue) -> AffinityKey {
    key(cookie, master)
}

#[inline(always)]
pub fn client_address(saddr: u32, master: &ServiceValue) -> AffinityKey {
    key(CLIENT_IP | u64::from(saddr), master)
}

#[inline(always)]
fn key(client: u64, master: &ServiceValue) -> AffinityKey {
    AffinityKey {
        client,
        svc_id: master.svc_id,
        _pad: u32::from(master.flags & svc_flag::EXTERNAL),
    }
}

/// The backend this client's last connection got, if affinity applies and it is still
/// valid.
#[inline(always)]
pub fn affine(key: &AffinityKey, master: &ServiceValue) -> Option<u32> {
    if master.affinity_timeout == 0 {
        return None;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: copied out at once.
    let a = unsafe { AFFINITY.get(key) }.copied()?;
    let fresh = now.wrapping_sub(a.last_used) < u64::from(master.affinity_timeout) * 1_000_000_000;
    // SAFETY: copied out at once.
    let active = unsafe { BACKENDS.get(&a.backend_id) }.is_some_and(|b| b.state == backend_state::ACTIVE);
    (fresh && active).then_some(a.backend_id)
}

/// Records the backend a new connection got (when the service has affinity).
#[inline(always)]
pub fn remember(key: &AffinityKey, master: &ServiceValue, backend_id: u32) {
    if master.affinity_timeout != 0 {
        let _ = AFFINITY.insert(
            key,
            &AffinityValue {
                // SAFETY: plain helper call.
                last_used: unsafe { bpf_ktime_get_ns() },
                backend_id,
                _pad: 0,
            },
            0,
        );
    }
}
