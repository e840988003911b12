//! Test packets for `BPF_PROG_TEST_RUN` (fixtures and `bench-datapath`).
use std::net::Ipv4Addr;

use moat_dataplane_common::EndpointInfo;

/// A test pod behind host interface `ifindex` (`BPF_PROG_TEST_RUN` runs on loopback,
/// ifindex 1: the pod sending the test packets "owns" it).
#[must_use]
pub fn endpoint(ifindex: u32, endpoint_id: u32) -> EndpointInfo {
    EndpointInfo {
        ifindex,
        endpoint_id,
        pod_mac: [0x0a, 1, 2, 3, 4, 5],
        host_mac: [0x0e, 1, 2, 3, 4, 5],
        flags: 0,
    }
}

/// The Internet checksum of `h` (0 when `h` already holds a valid checksum).
#[must_use]
pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 (valid header checksum) + UDP header + 8 bytes of payload.
#[must_use]
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 8 + 8];
    p[0..6].copy_from_slice(&[0x0e, 0, 0, 0, 0, 0xaa]);
    p[6..12].copy_from_slice(&[0x0a, 0, 0, 0, 0, 0xbb]);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&36u16.to_be_bytes());
    ip[8] = ttl;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p[34..36].copy_from_slice(&sport.to_be_bytes());
    p[36..38].copy_from_slice(&dport.to_be_bytes());
    p
}

/// Ethernet + IPv4 + a 20-byte TCP header with `flags` (no payload; the TCP checksum is
/// not filled in: the programs never verify it).
#[must_use]
pub fn ipv4_tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = ipv4_udp(src, dst, 64, sport, dport);
    p.truncate(14 + 20);
    p.resize(14 + 20 + 20, 0);
    p[14 + 2..14 + 4].copy_from_slice(&40u16.to_be_bytes());
    p[14 + 9] = 6;
    p[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&p[14..34]);
    p[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    p[34..36].copy_from_slice(&sport.to_be_bytes());
    p[36..38].copy_from_slice(&dport.to_be_bytes());
    p[34 + 12] = 5 << 4;
    p[34 + 13] = flags;
    p
}

/// Whether a root-only test may run. Without root it prints why and the test returns, so
/// a plain `cargo test` as a user runs the pure tests; under CI (`CI=true`) a missing
/// root is a failure, so CI never skips.
///
/// # Panics
/// Without root when `CI=true`.
#[must_use]
pub fn have_root(what: &str) -> bool {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{what}: need root, and CI must run every test"
    );
    eprintln!("skipped {what}: need root (eBPF); run `sudo bash install/test.sh`");
    false
}
