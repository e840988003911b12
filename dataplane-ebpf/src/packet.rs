//! Bounds-checked access to packet headers, and the flow tuple of a packet.
use aya_ebpf::programs::TcContext;
use moat_dataplane_common::{metric, FragKey, FragPorts};

use crate::maps::FRAGS;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
/// Offset of the IPv4 checksum inside the IP header.
pub const IPV4_CSUM_OFF: usize = 10;
/// Offset of the 16-bit word holding TTL and protocol inside the IP header.
pub const IPV4_TTL_OFF: usize = 8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Big-endian.
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// A pointer to a `T` at `offset`, or `DROP_INVALID` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*mut T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(metric::DROP_INVALID);
    }
    Ok((start + offset) as *mut T)
}

/// What policy and conntrack need from a packet. Addresses and ports in wire order.
#[derive(Clone, Copy, Default)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ttl: u8,
    /// An ICMP error (destination unreachable, time exceeded, parameter problem).
    pub icmp_error: bool,
    /// For an ICMP error: the tuple of the packet it quotes (`proto` 0: not parseable).
    pub quoted: Quoted,
    /// A first fragment (more follow), and its key for `remember_fragment` once the
    /// packet has passed anti-spoofing and policy. (A plain flag and an always-initialised
    /// key, not an `Option`: the verifier rejects copying an enum's uninitialised payload.)
    pub first_fragment: bool,
    pub frag_key: FragKey,
}

/// The tuple an ICMP error quotes (the offending packet as its sender sent it).
#[derive(Clone, Copy, Default)]
pub struct Quoted {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Parses the IPv4 header at `ETH_HLEN` and the first bytes of L4.
///
/// Non-first fragments carry no L4 header: they get the ports their first fragment
/// carried (remembered in `FRAGS` by source, destination, protocol and IP id, see
/// `remember_fragment`), so they
/// pass or fail with their flow. One whose first fragment was not seen is dropped.
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Result<Flow, u32> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (ver_ihl, frag_off, id, proto, saddr, daddr, ttl) = unsafe {
        (
            (*ip).ver_ihl,
            (*ip).frag_off,
            (*ip).id,
            (*ip).protocol,
            (*ip).saddr,
            (*ip).daddr,
            (*ip).ttl,
        )
    };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(metric::DROP_INVALID);
    }
    let mut flow = Flow {
        saddr,
        daddr,
        proto,
        ttl,
        ..Flow::default()
    };
    let frag_off = u16::from_be(frag_off);
    let frag = FragKey {
        saddr,
        daddr,
        id,
        proto,
        _pad: 0,
    };
    if frag_off & IP_OFFSET != 0 {
        // SAFETY: copied out at once.
        let Some(p) = (unsafe { FRAGS.get(&frag) }).copied() else {
            return Err(metric::DROP_FRAG_NOT_FOUND);
        };
        flow.sport = p.sport;
        flow.dport = p.dport;
        return Ok(flow);
    }
    parse_l4(ctx, &mut flow, ETH_HLEN + ihl)?;
    if frag_off & IP_MF != 0 {
        flow.first_fragment = true;
        flow.frag_key = frag;
    }
    Ok(flow)
}

/// Records a first fragment's ports for the fragments that follow. Called only after the
/// packet passed anti-spoofing and policy, so a pod cannot fill the table with entries
/// under addresses that are not its own, nor for flows it may not open. A full table
/// evicts the oldest datagram; its later fragments then drop (fail closed).
#[inline(always)]
pub fn remember_fragment(first: bool, key: &FragKey, sport: u16, dport: u16) {
    if first {
        let _ = FRAGS.insert(key, &FragPorts { sport, dport }, 0);
    }
}

/// Ports (or ICMP echo id), TCP flags and an ICMP error's quoted tuple, from L4 at `l4`.
#[inline(always)]
fn parse_l4(ctx: &TcContext, flow: &mut Flow, l4: usize) -> Result<(), u32> {
    let proto = flow.proto;
    match proto {
        IPPROTO_TCP => {
            let ports: *const [u16; 2] = ptr_at(ctx, l4)?;
            let flags: *const u8 = ptr_at(ctx, l4 + 13)?;
            // SAFETY: bounds checked by `ptr_at`.
            unsafe {
                flow.sport = (*ports)[0];
                flow.dport = (*ports)[1];
                flow.tcp_flags = *flags;
            }
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: *const [u16; 2] = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by `ptr_at`.
            unsafe {
                flow.sport = (*ports)[0];
                flow.dport = (*ports)[1];
            }
        }
        IPPROTO_ICMP => {
            // type, code, checksum, id, sequence
            let hdr: *const [u16; 3] = ptr_at(ctx, l4)?;
            // SAFETY: bounds checked by `ptr_at`.
            let (type_code, id) = unsafe { ((*hdr)[0], (*hdr)[2]) };
            match u16::from_be(type_code) >> 8 {
                8 => flow.sport = id, // echo request
                0 => flow.dport = id, // echo reply
                // destination unreachable, time exceeded, parameter problem
                3 | 11 | 12 => {
                    flow.icmp_error = true;
                    flow.quoted = quoted(ctx, l4 + 8).unwrap_or_default();
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// The quoted header of an ICMP error at `off`: an option-less IPv4 header and the ports
/// of a TCP/UDP/SCTP packet, or the id of an ICMP echo (keyed as conntrack keys echo).
/// Errors quoting anything else relate to nothing we track.
#[inline(always)]
fn quoted(ctx: &TcContext, off: usize) -> Option<Quoted> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, off).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    let (ver_ihl, proto, saddr, daddr) = unsafe { ((*ip).ver_ihl, (*ip).protocol, (*ip).saddr, (*ip).daddr) };
    if ver_ihl != 0x45 {
        return None;
    }
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: *const [u16; 2] = ptr_at(ctx, off + 20).ok()?;
            // SAFETY: bounds checked by `ptr_at`.
            unsafe { ((*ports)[0], (*ports)[1]) }
        }
        IPPROTO_ICMP => {
            let hdr: *const [u16; 3] = ptr_at(ctx, off + 20).ok()?;
            // SAFETY: bounds checked by `ptr_at`.
            let (type_code, id) = unsafe { ((*hdr)[0], (*hdr)[2]) };
            match u16::from_be(type_code) >> 8 {
                8 => (id, 0),
                0 => (0, id),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(Quoted {
        saddr,
        daddr,
        sport,
        dport,
        proto,
    })
}
