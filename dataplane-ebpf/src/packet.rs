//! Bounds-checked access to packet headers.
use aya_ebpf::programs::TcContext;
use moat_dataplane_common::metric;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
/// Offset of the IPv4 checksum inside the IP header.
pub const IPV4_CSUM_OFF: usize = 10;
/// Offset of the 16-bit word holding TTL and protocol inside the IP header.
pub const IPV4_TTL_OFF: usize = 8;

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
