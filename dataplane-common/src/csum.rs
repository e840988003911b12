//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624), on values as
//! they sit in packet memory. Pure: the eBPF programs call it for NAT and TTL rewrites and
//! for the ICMP/RST replies they build; host tests check it against full recomputation.

/// One's-complement checksum update for a 32-bit field change, on the raw (network order)
/// values as they sit in memory.
#[inline(always)]
#[must_use]
pub fn replace4(csum: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!csum);
    sum += u32::from(!(old as u16)) + u32::from(!((old >> 16) as u16));
    sum += (new & 0xffff) + (new >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// One's-complement checksum update for a 16-bit field change.
#[inline(always)]
#[must_use]
pub fn replace2(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The Internet checksum of an even number of bytes (big-endian words).
#[inline(always)]
#[must_use]
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header with a valid checksum.
    fn header() -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn a_valid_header_sums_to_zero() {
        assert_eq!(checksum(&header()), 0);
        // RFC 1071's example words.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn incremental_updates_equal_recomputation() {
        // Many address and TTL rewrites, each compared with a full recomputation.
        let mut seed = 0x1234_5678u32;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let mut h = header();
            // Rewrite the destination address (as DNAT does). Everything is read as it
            // sits in memory (network order read natively), as the programs read it.
            let old = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            h[16..20].copy_from_slice(&seed.to_be_bytes());
            let new = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            let stored = replace4(u16::from_ne_bytes([h[10], h[11]]), old, new);
            h[10..12].copy_from_slice(&stored.to_ne_bytes());
            assert_eq!(checksum(&h), 0, "dst {seed:#x}");
            // Decrement the TTL (the high byte of the TTL/protocol word).
            let old_word = u16::from_ne_bytes([h[8], h[9]]);
            h[8] = h[8].wrapping_sub(1);
            let new_word = u16::from_ne_bytes([h[8], h[9]]);
            let stored = replace2(u16::from_ne_bytes([h[10], h[11]]), old_word, new_word);
            h[10..12].copy_from_slice(&stored.to_ne_bytes());
            assert_eq!(checksum(&h), 0, "ttl");
        }
    }
}
