//! Every map the datapath uses. User space (`dataplane/src/maps.rs`) owns their contents.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use moat_dataplane_common::{metric, EndpointInfo, MAX_ENDPOINTS};

/// Local pods by IPv4 (wire order): where to redirect, and which veth owns the address.
#[map(name = "moat_endpts_v1")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Per-CPU packet counters indexed by `metric::*` (forward paths and drop reasons).
#[map(name = "moat_metrics_v1")]
pub static METRICS: PerCpuArray<u64> = PerCpuArray::pinned(metric::SLOTS, 0);

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(c) = METRICS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}
