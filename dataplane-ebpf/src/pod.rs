//! Programs on the host side of each pod's veth.
//!
//! `from_container` runs on tcx ingress: every packet a pod sends arrives here first.
//! It checks that the source address belongs to this veth, runs conntrack and policy
//! (the pod's egress policy, and for a local destination that pod's ingress policy too,
//! because `bpf_redirect_peer` skips the destination veth's programs), then either
//! redirects the packet straight into the local destination pod or hands it to the
//! stack (node, other nodes, outside). `to_container` runs on tcx egress for what the
//! stack routes to a pod: conntrack and the pod's ingress policy.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use moat_dataplane_common::{hook, metric};

use crate::{
    conntrack::track,
    events::{emit_drop, Meta},
    maps::{count, ENDPOINTS},
    nodeport::Dnat,
    packet::{
        parse_ipv4, ptr_at, remember_fragment, EthHdr, ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPV4_CSUM_OFF, IPV4_TTL_OFF,
    },
    policy::{IDENTITY_INIT, IDENTITY_WORLD},
};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    let mut m = Meta {
        hook: hook::FROM_CONTAINER,
        ..Meta::default()
    };
    match try_from_container(&ctx, &mut m) {
        Ok(action) => action,
        Err(reason) => drop_packet(&m, reason),
    }
}

/// Counts and reports a drop (events per pod and reason are rate-limited; counts are
/// exact).
#[inline(always)]
fn drop_packet(m: &Meta, reason: u32) -> i32 {
    count(reason);
    emit_drop(m, reason);
    TC_ACT_SHOT
}

#[inline(always)]
fn fill_meta(ctx: &TcContext, m: &mut Meta) -> Result<u8, u32> {
    // SAFETY: reading fields of the skb the program was given.
    m.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    m.len = ctx.len();
    let flow = parse_ipv4(ctx)?;
    m.saddr = flow.saddr;
    m.daddr = flow.daddr;
    m.sport = flow.sport;
    m.dport = flow.dport;
    m.proto = flow.proto;
    m.tcp_flags = flow.tcp_flags;
    m.icmp_error = flow.icmp_error;
    m.quoted = flow.quoted;
    m.first_fragment = flow.first_fragment;
    m.frag_key = flow.frag_key;
    m.frag_ports = (flow.sport, flow.dport);
    Ok(flow.ttl)
}

/// Whether the frame is IPv4 (go on) or ARP (pass untouched); anything else, IPv6 and
/// VLAN-tagged frames included, is dropped with its own reason: it would skip policy, and until Moat has
/// IPv6 pods there is nothing it may legitimately reach.
#[inline(always)]
fn is_ipv4(ctx: &TcContext) -> Result<bool, u32> {
    // A VLAN tag the stack already took off (it is metadata by now): pods send untagged
    // frames only, and a tagged one would reach its peer with the tag still attached.
    // SAFETY: reading a field of the skb the program was given.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Err(metric::DROP_UNSUPPORTED_L3);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked the header lies inside the packet.
    let proto = unsafe { (*eth).proto };
    if proto == ETH_P_IP.to_be() {
        Ok(true)
    } else if proto == ETH_P_ARP.to_be() {
        count(metric::PASS_ARP);
        Ok(false)
    } else {
        Err(metric::DROP_UNSUPPORTED_L3)
    }
}

#[inline(always)]
fn try_from_container(ctx: &TcContext, m: &mut Meta) -> Result<i32, u32> {
    if !is_ipv4(ctx)? {
        return Ok(TC_ACT_OK);
    }
    let ttl = fill_meta(ctx, m)?;

    // Anti-spoofing: the source must be the address the agent gave this veth's pod.
    // SAFETY: the map value is only read.
    match unsafe { ENDPOINTS.get(&m.saddr) } {
        Some(src) if src.ifindex == m.ifindex => {}
        _ => return Err(metric::DROP_INVALID_SIP),
    }

    // A service address the socket load balancer did not translate (it is off, or the
    // socket bypassed it): per-packet DNAT to a backend, before policy sees the flow. A
    // service without backends is answered with ICMP port unreachable.
    if let Dnat::NoBackend = crate::nodeport::service_dnat(ctx, m)? {
        emit_drop(m, metric::DROP_NO_SERVICE_BACKEND);
        return crate::reject::port_unreachable(ctx, m.ifindex);
    }

    // SAFETY: the map value is only read; copied out before any map update.
    let dst = unsafe { ENDPOINTS.get(&m.daddr) }.map(|d| (d.ifindex, d.pod_mac, d.host_mac));
    track(m, true, dst.is_some(), IDENTITY_INIT)?;
    remember_fragment(m.first_fragment, &m.frag_key, m.frag_ports.0, m.frag_ports.1);
    // A reply of a translated flow: the frontend becomes the source again. A NodePort
    // client's reply leaves through the device the request came in on.
    let ifindex = crate::nodeport::reverse(ctx, m)?;
    if ifindex != crate::nodeport::NOT_REVERSED {
        if ifindex != 0 && dst.is_none() {
            count(metric::FWD_STACK);
            // SAFETY: plain helper call; no neighbour parameters (the kernel resolves).
            return Ok(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32);
        }
    }

    let Some((ifindex, pod_mac, host_mac)) = dst else {
        count(metric::FWD_STACK);
        return Ok(TC_ACT_OK);
    };
    if ttl <= 1 {
        // Let the stack answer with ICMP time exceeded.
        count(metric::FWD_STACK);
        return Ok(TC_ACT_OK);
    }

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
    let mut m = Meta {
        hook: hook::TO_CONTAINER,
        ..Meta::default()
    };
    match try_to_container(&ctx, &mut m) {
        Ok(action) => action,
        Err(reason) => drop_packet(&m, reason),
    }
}

#[inline(always)]
fn try_to_container(ctx: &TcContext, m: &mut Meta) -> Result<i32, u32> {
    count(metric::TO_CONTAINER);
    if !is_ipv4(ctx)? {
        return Ok(TC_ACT_OK);
    }
    fill_meta(ctx, m)?;
    // The source is the node, another node or the outside; the destination is this pod.
    // Never a local pod: `from_container` delivers pod-to-pod packets itself, so a local
    // pod's address here was claimed by someone else (a host on the node's L2 segment).
    // SAFETY: only tests presence.
    if unsafe { ENDPOINTS.get(&m.saddr) }.is_some() {
        return Err(metric::DROP_SPOOFED_LOCAL_SOURCE);
    }
    track(m, false, true, IDENTITY_WORLD)?;
    remember_fragment(m.first_fragment, &m.frag_key, m.frag_ports.0, m.frag_ports.1);
    // The reply of a flow this pod sent to a service and `from_container` translated per
    // packet, from a backend that is not a local pod (another node, the host network):
    // the frontend becomes the source again.
    let _ = crate::nodeport::reverse(ctx, m)?;
    Ok(TC_ACT_OK)
}
