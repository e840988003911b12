//! NodePort, externalIPs and LoadBalancer IPs for clients outside the node.
//!
//! `node_ingress` (XDP on the node's devices) sees a packet for an external frontend,
//! picks a backend — the one this flow already has (`NAT_FWD`), else the client's
//! session-affinity backend, else the Maglev table slot of the flow's hash — rewrites destination address and port (checksums fixed
//! incrementally) and passes it to the stack, which routes it to the backend pod like any
//! other packet (its ingress policy applies in `to_container`). The reply leaves the pod
//! through `from_container`, where `reverse` puts the frontend back as the source.
//! A frontend without backends is passed untouched: nothing listens on it, so the stack
//! answers with a TCP RST or an ICMP port unreachable instead of black-holing the packet.
//! Remote backends (other nodes) would need SNAT to this node so replies return here;
//! that path is designed in docs/services.md and arrives with multi-node support.
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use moat_dataplane_common::{csum, hook, metric, svc_flag, verdict, FlowEvent, NatKey, NatValue, ServiceKey};

use crate::maps::{count, BACKENDS, NAT_FWD, NAT_REV, SERVICES};
use crate::packet::{EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN};
use crate::select;

#[xdp]
pub fn node_ingress(ctx: XdpContext) -> u32 {
    try_node_ingress(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn ptr<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn flow_hash(saddr: u32, sport: u16, proto: u8) -> u32 {
    // A cheap integer mix (murmur3 finalizer) of the client side of the tuple.
    let mut h = saddr ^ (u32::from(sport) << 16) ^ u32::from(proto);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The backend a translated flow already has (`NAT_FWD`), if it still exists.
#[inline(always)]
fn flow_backend(fwd: &NatKey) -> (u32, Option<moat_dataplane_common::Backend4>) {
    // SAFETY: copied out at once.
    let id = unsafe { NAT_FWD.get(fwd) }.map_or(0, |v| v.backend_id);
    // SAFETY: copied out at once.
    (id, unsafe { BACKENDS.get(&id) }.copied())
}

/// Remembers a new translated flow: its backend (forward) and, for the reply, the
/// frontend to restore and the device to send it out of (0: route normally).
#[inline(always)]
fn record_nat(fwd: &NatKey, be: &moat_dataplane_common::Backend4, backend_id: u32, ifindex: u32) {
    let _ = NAT_FWD.insert(
        fwd,
        &NatValue {
            addr: be.addr,
            port: be.port,
            _pad: 0,
            backend_id,
            ifindex: 0,
        },
        0,
    );
    let _ = NAT_REV.insert(
        &nat_key(be.addr, fwd.saddr, be.port, fwd.sport, fwd.proto),
        &NatValue {
            addr: fwd.daddr,
            port: fwd.dport,
            _pad: 0,
            backend_id,
            ifindex,
        },
        0,
    );
}

#[inline(always)]
fn try_node_ingress(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = ptr(ctx, 0)?;
    // SAFETY: bounds checked by `ptr`.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return None;
    }
    let ip: *mut Ipv4Hdr = ptr(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `ptr`.
    let (ver_ihl, frag, proto, saddr, daddr) =
        unsafe { ((*ip).ver_ihl, (*ip).frag_off, (*ip).protocol, (*ip).saddr, (*ip).daddr) };
    // Options and fragments are left to the stack.
    if ver_ihl != 0x45 || u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let l4 = ETH_HLEN + 20;
    let ports: *mut [u16; 2] = ptr(ctx, l4)?;
    // SAFETY: bounds checked by `ptr`.
    let (sport, dport) = unsafe { ((*ports)[0], (*ports)[1]) };
    let key = ServiceKey {
        addr: daddr,
        port: dport,
        proto,
        _pad: 0,
        slot: 0,
        _pad2: 0,
    };
    // SAFETY: copied out at once.
    let master = unsafe { SERVICES.get(&key) }.copied()?;
    if master.flags & svc_flag::EXTERNAL == 0 {
        return None;
    }
    let fwd_key = nat_key(saddr, daddr, sport, dport, proto);
    // An established flow keeps its backend while that backend exists; a new one gets
    // its client's affinity backend, else the Maglev choice.
    let (mut backend_id, mut be) = flow_backend(&fwd_key);
    let fwd_new = be.is_none();
    let aff_key = select::client_address(saddr, &master);
    if fwd_new && master.count == 0 {
        // Checked only for new flows: a flow whose backend is terminating keeps it even
        // after the last ready backend is gone.
        count(metric::NODEPORT_NO_BACKEND);
        return None;
    }
    if fwd_new {
        // Random when the service got no Maglev table (more than `MAGLEV_TABLES`).
        backend_id = select::affine(&aff_key, &master)
            .or_else(|| select::maglev(&master, flow_hash(saddr, sport, proto)))
            .or_else(|| select::random(&key, &master))?;
        // SAFETY: copied out at once.
        be = unsafe { BACKENDS.get(&backend_id) }.copied();
    }
    // (An established flow keeps a terminating backend; Maglev slots hold the eligible ones.)
    let be = be?;
    record_nat(&fwd_key, &be, backend_id, ctx.ingress_ifindex() as u32);
    if fwd_new {
        select::remember(&aff_key, &master, backend_id);
    }
    // Rewrite destination address and port, fixing the IP and L4 checksums.
    // SAFETY: bounds checked above; the packet is not moved in XDP.
    unsafe {
        (*ip).check = csum::replace4((*ip).check, daddr, be.addr);
        (*ip).daddr = be.addr;
        (*ports)[1] = be.port;
    }
    if proto == IPPROTO_TCP {
        let csum: *mut u16 = ptr(ctx, l4 + 16)?;
        // SAFETY: bounds checked by `ptr`.
        unsafe {
            let c = csum::replace4(*csum, daddr, be.addr);
            *csum = csum::replace2(c, dport, be.port);
        }
    } else {
        let csum: *mut u16 = ptr(ctx, l4 + 6)?;
        // SAFETY: bounds checked by `ptr`. A zero UDP checksum means "none".
        unsafe {
            if *csum != 0 {
                let c = csum::replace2(csum::replace4(*csum, daddr, be.addr), dport, be.port);
                *csum = if c == 0 { 0xffff } else { c };
            }
        }
    }
    count(metric::NODEPORT_TRANSLATED);
    if fwd_new {
        crate::events::emit_translation(&FlowEvent {
            // SAFETY: plain helper call.
            ts: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
            saddr,
            daddr: be.addr,
            sport,
            dport: be.port,
            proto,
            verdict: verdict::TRANSLATED,
            hook: hook::NODE_DEVICE,
            ifindex: ctx.ingress_ifindex() as u32,
            orig_daddr: daddr,
            orig_dport: dport,
            ..FlowEvent::default()
        });
    }
    Some(xdp_action::XDP_PASS)
}

/// Rewrites one address (at `ip_off` in the IPv4 header) and one port (at `l4_off` in
/// the TCP/UDP header) of an option-less IPv4 packet, fixing the IP and L4 checksums.
/// Returns false (nothing changed) for a header with options.
#[inline(always)]
fn rewrite(
    ctx: &aya_ebpf::programs::TcContext,
    proto: u8,
    ip_off: usize,
    l4_off: usize,
    addr: (u32, u32),
    port: (u16, u16),
) -> Result<bool, u32> {
    use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
    let ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| metric::DROP_INVALID)?;
    if ihl != 0x45 {
        return Ok(false);
    }
    let l4 = ETH_HLEN + 20;
    let csum_off = if proto == IPPROTO_TCP { l4 + 16 } else { l4 + 6 };
    // A zero UDP checksum means "none" and must stay zero.
    let mangled0 = if proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let err = |_| metric::DROP_WRITE_ERROR;
    ctx.l4_csum_replace(
        csum_off,
        u64::from(addr.0),
        u64::from(addr.1),
        u64::from(BPF_F_PSEUDO_HDR) | mangled0 | 4,
    )
    .map_err(err)?;
    ctx.l4_csum_replace(csum_off, u64::from(port.0), u64::from(port.1), mangled0 | 2)
        .map_err(err)?;
    ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(addr.0), u64::from(addr.1), 4)
        .map_err(err)?;
    ctx.store(ETH_HLEN + ip_off, &addr.1, 0).map_err(err)?;
    ctx.store(l4 + l4_off, &port.1, 0).map_err(err)?;
    Ok(true)
}

/// `reverse`: the packet is not the reply of a translated flow.
pub const NOT_REVERSED: u32 = u32::MAX;

/// In `from_container`: a reply of a translated NodePort flow gets the frontend back as
/// its source address and port. Returns the device the request came in on: the reply
/// is sent straight out of it (`bpf_redirect_neigh`), because the stack would drop a
/// forwarded packet whose source is one of its own addresses. `NOT_REVERSED` when the
/// packet is not such a reply (a plain integer: an `Option` leaves its payload undefined
/// on the `None` path, and LLVM then fills it from whatever register is at hand — once a
/// map pointer, which the verifier refuses to shift).
#[inline(always)]
pub fn reverse(ctx: &aya_ebpf::programs::TcContext, m: &crate::events::Meta) -> Result<u32, u32> {
    if m.proto == IPPROTO_ICMP {
        return reverse_icmp_error(ctx, m);
    }
    if m.proto != IPPROTO_TCP && m.proto != IPPROTO_UDP {
        return Ok(NOT_REVERSED);
    }
    let Some(v) = nat_rev(m.saddr, m.daddr, m.sport, m.dport, m.proto) else {
        return Ok(NOT_REVERSED);
    };
    // Source address and port (at IP offset 12, L4 offset 0) become the frontend's.
    if !rewrite(ctx, m.proto, 12, 0, (m.saddr, v.addr), (m.sport, v.port))? {
        return Ok(NOT_REVERSED);
    }
    count(metric::NODEPORT_REVERSED);
    Ok(v.ifindex)
}

/// The frontend (and device) to restore for a reply tuple backend → client.
#[inline(always)]
fn nat_rev(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> Option<NatValue> {
    // SAFETY: copied out at once.
    unsafe { NAT_REV.get(&nat_key(saddr, daddr, sport, dport, proto)) }.copied()
}

#[inline(always)]
fn nat_key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> NatKey {
    NatKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// In `from_container`: an ICMP error a backend sends about a translated flow (UDP port
/// unreachable, fragmentation needed). The client sent its packet to the frontend, so
/// its socket only recognises an error that comes from the frontend and quotes the
/// frontend: the outer source and the quoted destination address and port are put back,
/// with the outer IP, quoted IP and ICMP checksums. The quoted L4 checksum is left as
/// is: receivers of ICMP errors do not check it (Linux NAT does the same for TCP).
#[inline(always)]
fn reverse_icmp_error(ctx: &aya_ebpf::programs::TcContext, m: &crate::events::Meta) -> Result<u32, u32> {
    let q = m.quoted;
    if q.proto != IPPROTO_TCP && q.proto != IPPROTO_UDP {
        return Ok(NOT_REVERSED);
    }
    // The quoted packet went client → backend; its reply tuple keys `NAT_REV`.
    let Some(v) = nat_rev(q.daddr, q.saddr, q.dport, q.sport, q.proto) else {
        return Ok(NOT_REVERSED);
    };
    // `parse_ipv4` found the quoted header right after an ICMP header; offsets below
    // assume an option-less outer header.
    let ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| metric::DROP_INVALID)?;
    if ihl != 0x45 {
        return Ok(NOT_REVERSED);
    }
    const ICMP_CSUM: usize = ETH_HLEN + 20 + 2;
    const INNER: usize = ETH_HLEN + 20 + 8;
    let err = |_| metric::DROP_WRITE_ERROR;
    // Quoted destination address: the quoted IP checksum changes with it, and the ICMP
    // checksum (over the whole message) with both.
    let inner_csum_old: u16 = ctx.load(INNER + 10).map_err(|_| metric::DROP_INVALID)?;
    ctx.l3_csum_replace(INNER + 10, u64::from(q.daddr), u64::from(v.addr), 4)
        .map_err(err)?;
    let inner_csum_new: u16 = ctx.load(INNER + 10).map_err(|_| metric::DROP_INVALID)?;
    ctx.store(INNER + 16, &v.addr, 0).map_err(err)?;
    ctx.l4_csum_replace(ICMP_CSUM, u64::from(q.daddr), u64::from(v.addr), 4)
        .map_err(err)?;
    ctx.l4_csum_replace(ICMP_CSUM, u64::from(inner_csum_old), u64::from(inner_csum_new), 2)
        .map_err(err)?;
    // Quoted destination port.
    ctx.store(INNER + 20 + 2, &v.port, 0).map_err(err)?;
    ctx.l4_csum_replace(ICMP_CSUM, u64::from(q.dport), u64::from(v.port), 2)
        .map_err(err)?;
    // The error's own source, when the backend itself sent it.
    if m.saddr == q.daddr {
        ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(m.saddr), u64::from(v.addr), 4)
            .map_err(err)?;
        ctx.store(ETH_HLEN + 12, &v.addr, 0).map_err(err)?;
    }
    count(metric::NODEPORT_REVERSED);
    Ok(v.ifindex)
}

/// In `from_container`: a packet to a service frontend (the socket load balancer did not
/// translate its socket) gets a backend — the flow's own if it has one, else a random
/// eligible one — and its destination rewritten; the reply is translated back by
/// `reverse`. A frontend without backends is `Dnat::NoBackend`: the caller rejects the
/// packet (the client gets an error, not silence).
#[inline(always)]
pub fn service_dnat(ctx: &aya_ebpf::programs::TcContext, m: &mut crate::events::Meta) -> Result<Dnat, u32> {
    if m.proto != IPPROTO_TCP && m.proto != IPPROTO_UDP {
        return Ok(Dnat::NotService);
    }
    let key = ServiceKey {
        addr: m.daddr,
        port: m.dport,
        proto: m.proto,
        _pad: 0,
        slot: 0,
        _pad2: 0,
    };
    // SAFETY: copied out at once.
    let Some(master) = (unsafe { SERVICES.get(&key) }).copied() else {
        if m.proto == IPPROTO_TCP && m.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            // A new direct connection may reuse the tuple an earlier translated one had
            // with this backend: its replies must not get the old frontend as source.
            // The old flow's forward entry goes too, so that a later connection through
            // the frontend on this tuple is treated as new (and gets its reverse entry).
            if let Some(old) = nat_rev(m.daddr, m.saddr, m.dport, m.sport, m.proto) {
                let _ = NAT_FWD.remove(&nat_key(m.saddr, old.addr, m.sport, old.port, m.proto));
                let _ = NAT_REV.remove(&nat_key(m.daddr, m.saddr, m.dport, m.sport, m.proto));
            }
        }
        return Ok(Dnat::NotService);
    };
    // The client is a pod: inside the cluster.
    let Some((key, master)) = select::in_cluster(key, master) else {
        count(metric::DROP_NO_SERVICE_BACKEND);
        return Ok(Dnat::NoBackend);
    };
    let fwd_key = nat_key(m.saddr, m.daddr, m.sport, m.dport, m.proto);
    let (mut backend_id, mut be) = flow_backend(&fwd_key);
    let fresh = be.is_none();
    let aff_key = select::client_address(m.saddr, &master);
    if fresh {
        let Some(id) = select::affine(&aff_key, &master).or_else(|| select::random(&key, &master)) else {
            count(metric::DROP_NO_SERVICE_BACKEND);
            return Ok(Dnat::NoBackend);
        };
        backend_id = id;
        // SAFETY: copied out at once.
        be = unsafe { BACKENDS.get(&backend_id) }.copied();
    }
    let Some(be) = be else {
        count(metric::DROP_NO_SERVICE_BACKEND);
        return Ok(Dnat::NoBackend);
    };
    if fresh {
        record_nat(&fwd_key, &be, backend_id, 0);
        select::remember(&aff_key, &master, backend_id);
    }
    // Destination address and port (at IP offset 16, L4 offset 2) become the backend's.
    if !rewrite(ctx, m.proto, 16, 2, (m.daddr, be.addr), (m.dport, be.port))? {
        return Ok(Dnat::NotService);
    }
    if fresh {
        crate::events::emit_translation(&FlowEvent {
            // SAFETY: plain helper call.
            ts: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
            saddr: m.saddr,
            daddr: be.addr,
            sport: m.sport,
            dport: be.port,
            proto: m.proto,
            verdict: verdict::TRANSLATED,
            hook: hook::FROM_CONTAINER,
            ifindex: m.ifindex,
            orig_daddr: m.daddr,
            orig_dport: m.dport,
            ..FlowEvent::default()
        });
    }
    m.daddr = be.addr;
    m.dport = be.port;
    count(metric::TC_LB_TRANSLATED);
    Ok(Dnat::Translated)
}

/// What `service_dnat` did with a packet.
pub enum Dnat {
    /// Not addressed to a service frontend (or not translatable): unchanged.
    NotService,
    /// The destination is now the flow's backend.
    Translated,
    /// A service frontend with no eligible backend.
    NoBackend,
}
