//! Test packets for `BPF_PROG_TEST_RUN` (fixtures, the differential test and
//! `moat-bench-datapath`), built with `etherparse`.
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

/// The MACs every test packet carries (pod → host veth).
const POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0xbb];
const HOST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0xaa];

/// Ethernet + IPv4 + UDP + 8 bytes of payload, every length and checksum filled in.
///
/// # Panics
/// Never: writing into a `Vec` cannot fail.
#[must_use]
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, sport: u16, dport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv4(src.octets(), dst.octets(), ttl)
        .udp(sport, dport);
    let payload = [0u8; 8];
    let mut p = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut p, &payload).expect("writing into a Vec");
    p
}

/// Ethernet + IPv6 (link-local addresses) + UDP + 8 bytes of payload.
///
/// # Panics
/// Never: writing into a `Vec` cannot fail.
#[must_use]
pub fn ipv6_udp(sport: u16, dport: u16) -> Vec<u8> {
    let src = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0xff, 0xfe, 0, 0, 0xbb];
    let dst = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x0c, 0, 0, 0xff, 0xfe, 0, 0, 0xaa];
    let b = etherparse::PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv6(src, dst, 64)
        .udp(sport, dport);
    let payload = [0u8; 8];
    let mut p = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut p, &payload).expect("writing into a Vec");
    p
}

/// Ethernet + IPv4 + a TCP header with `flags` (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08,
/// ACK 0x10), no payload, every length and checksum filled in.
///
/// # Panics
/// Never: writing into a `Vec` cannot fail.
#[must_use]
pub fn ipv4_tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64240);
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    if flags & 0x08 != 0 {
        b = b.psh();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    let mut p = Vec::with_capacity(b.size(0));
    b.write(&mut p, &[]).expect("writing into a Vec");
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
