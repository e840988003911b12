//! Stable names and addresses derived from the attachment (container id + ifname).
//!
//! The same attachment always maps to the same host veth name, so DEL and GC can find
//! the interface even when the agent has forgotten it.

/// 64-bit FNV-1a: small, stable across releases and platforms.
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    fnv1a(format!("{container_id}/{ifname}").as_bytes())
}

/// Host-side veth name: `lxc` + 12 hex digits (15 bytes, the kernel's limit).
#[must_use]
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("lxc{:012x}", attachment_hash(container_id, ifname) & 0xffff_ffff_ffff)
}

fn mac(prefix: u8, h: u64) -> String {
    let b = h.to_be_bytes();
    // Locally administered, unicast.
    format!(
        "{prefix:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

/// (pod `eth0` MAC, host veth MAC). Chosen up front so wiring needs no read-back.
#[must_use]
pub fn macs(container_id: &str, ifname: &str) -> (String, String) {
    let h = attachment_hash(container_id, ifname);
    (mac(0x0a, h), mac(0x0e, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_distinct() {
        let a = host_ifname("0123456789abcdef0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("lxc"));
        assert_ne!(a, host_ifname("0123456789abcdef0123456789abcdef", "net1"));
        assert_ne!(a, host_ifname("other", "eth0"));
    }

    #[test]
    fn macs_are_local_unicast_and_differ() {
        let (pod, host) = macs("c", "eth0");
        assert_ne!(pod, host);
        for m in [&pod, &host] {
            let first = u8::from_str_radix(&m[..2], 16).unwrap();
            assert_eq!(first & 0x03, 0x02, "{m} must be locally administered unicast");
            assert_eq!(m.split(':').count(), 6);
        }
    }
}
