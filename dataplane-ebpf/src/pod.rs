//! Programs on the host side of each pod's veth.
//!
//! `from_container` runs on tcx ingress: every packet a pod sends arrives here first.
//! It checks that the source address belongs to this veth, then either redirects the
//! packet straight into a local destination pod (`bpf_redirect_peer`: no second trip
//! through the node's stack, no backlog queue) or hands it to the stack (node, other
//! nodes, outside). `to_container` runs on tcx egress for what the stack routes to a pod.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use moat_dataplane_common::metric;

use crate::{
    maps::{count, ENDPOINTS},
    packet::{ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, IPV4_CSUM_OFF, IPV4_TTL_OFF},
};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    match try_from_container(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Result<i32, u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked the header lies inside the packet.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        count(metric::PASS_NON_IPV4);
        return Ok(TC_ACT_OK);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (saddr, daddr, ttl) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).ttl) };

    // Anti-spoofing: the source must be the address the agent gave this veth's pod.
    // SAFETY: the map value is only read.
    let ingress_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match unsafe { ENDPOINTS.get(&saddr) } {
        Some(src) if src.ifindex == ingress_ifindex => {}
        _ => return Err(metric::DROP_INVALID_SIP),
    }

    // SAFETY: the map value is only read.
    let Some(dst) = (unsafe { ENDPOINTS.get(&daddr) }) else {
        count(metric::FWD_STACK);
        return Ok(TC_ACT_OK);
    };
    if ttl <= 1 {
        // Let the stack answer with ICMP time exceeded.
        count(metric::FWD_STACK);
        return Ok(TC_ACT_OK);
    }
    let (ifindex, pod_mac, host_mac) = (dst.ifindex, dst.pod_mac, dst.host_mac);

    // We route like the stack would: decrement TTL (fixing the checksum), then write
    // the L2 header the destination pod expects (its MAC; our veth as the source).
    let ttl_off = ETH_HLEN + IPV4_TTL_OFF;
    let old: u16 = ctx.load(ttl_off).map_err(|_| metric::DROP_INVALID)?;
    let new = u16::from_be(old).wrapping_sub(0x100).to_be();
    ctx.l3_csum_replace(ETH_HLEN + IPV4_CSUM_OFF, u64::from(old), u64::from(new), 2)
        .map_err(|_| metric::DROP_WRITE_ERROR)?;
    ctx.store(ttl_off, &new, 0).map_err(|_| metric::DROP_WRITE_ERROR)?;
    // The helpers above may move packet data: take the Ethernet pointer again.
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        (*eth).dst = pod_mac;
        (*eth).src = host_mac;
    }
    count(metric::FWD_REDIRECT_PEER);
    // SAFETY: plain helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}

#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    // Policy for traffic the stack routes to a pod lands here (NetworkPolicy issue);
    // today every such packet is delivered and counted.
    let _ = &ctx;
    count(metric::TO_CONTAINER);
    TC_ACT_OK
}
