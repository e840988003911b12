//! Rejecting a packet to a service that has no backend: the packet becomes an ICMP
//! destination unreachable (port unreachable) sent straight back into the pod, as
//! kube-proxy's `REJECT --reject-with icmp-port-unreachable` rule does. A TCP connect
//! fails at once with "connection refused", a connected UDP socket sees the error on its
//! next call; nothing waits for a timeout.
use aya_ebpf::{helpers::generated::bpf_redirect_peer, programs::TcContext};
use moat_dataplane_common::{csum, metric};

use crate::packet::{ETH_HLEN, IPPROTO_ICMP};

/// What an ICMP error quotes of the offending packet: its IP header and 8 bytes more.
const QUOTE: usize = 28;
/// IPv4 header + ICMP header + quote.
const IP_LEN: usize = 20 + 8 + QUOTE;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 1 + 2;

/// Turns the packet (from the pod behind `ifindex`, an option-less IPv4 TCP/UDP packet)
/// into the ICMP error and returns the action that delivers it to the pod.
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, ifindex: u32) -> Result<i32, u32> {
    let quote: [u8; QUOTE] = ctx.load(ETH_HLEN).map_err(|_| metric::DROP_INVALID)?;
    if quote[0] != 0x45 {
        return Err(metric::DROP_NO_SERVICE_BACKEND);
    }
    let macs: [u8; 12] = ctx.load(0).map_err(|_| metric::DROP_INVALID)?;
    // SAFETY: helper call on the program's own skb.
    if unsafe { aya_ebpf::helpers::generated::bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + IP_LEN) as u32, 0) } != 0 {
        return Err(metric::DROP_WRITE_ERROR);
    }
    let mut out = [0u8; IP_LEN];
    // IPv4: from the service address (the quoted destination) back to the client.
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(IP_LEN as u16).to_be_bytes());
    out[8] = 64;
    out[9] = IPPROTO_ICMP;
    out[12..16].copy_from_slice(&quote[16..20]);
    out[16..20].copy_from_slice(&quote[12..16]);
    let ip_sum = csum::checksum(&out[..20]);
    out[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    out[20] = ICMP_DEST_UNREACH;
    out[21] = ICMP_PORT_UNREACH;
    out[28..].copy_from_slice(&quote);
    let icmp_sum = csum::checksum(&out[20..]);
    out[22..24].copy_from_slice(&icmp_sum.to_be_bytes());

    let mut eth = [0u8; ETH_HLEN];
    eth[..6].copy_from_slice(&macs[6..12]);
    eth[6..12].copy_from_slice(&macs[..6]);
    eth[12..].copy_from_slice(&0x0800u16.to_be_bytes());
    ctx.store(0, &eth, 0).map_err(|_| metric::DROP_WRITE_ERROR)?;
    ctx.store(ETH_HLEN, &out, 0).map_err(|_| metric::DROP_WRITE_ERROR)?;
    // Into the pod's own eth0, skipping the host side (as for pod-to-pod packets).
    // SAFETY: plain helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}
