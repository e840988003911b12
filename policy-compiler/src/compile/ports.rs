//! Port ranges (`port`..=`endPort`) as the minimal set of aligned power-of-two blocks, each
//! one LPM-trie entry: a block of 2^k ports starting at a multiple of 2^k is the prefix
//! `80 + 16 - k` of the key (the port is the last 16 bits).
use moat_dataplane_common::PREFIX_PROTO;

/// `(first port of the block, prefix length)` for each block covering `lo..=hi`, in order.
#[must_use]
pub fn blocks(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut cur, hi) = (u32::from(lo), u32::from(hi));
    while cur <= hi {
        // Largest k with cur aligned to 2^k and the block not passing hi.
        let mut k = if cur == 0 { 16 } else { cur.trailing_zeros().min(16) };
        while cur + (1 << k) - 1 > hi {
            k -= 1;
        }
        out.push((u16::try_from(cur).unwrap_or(u16::MAX), PREFIX_PROTO + 16 - k));
        cur += 1 << k;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_port_is_one_full_prefix() {
        assert_eq!(blocks(80, 80), vec![(80, 96)]);
    }

    #[test]
    fn aligned_pair() {
        assert_eq!(blocks(80, 81), vec![(80, 95)]);
    }

    #[test]
    fn unaligned_pair() {
        assert_eq!(blocks(81, 82), vec![(81, 96), (82, 96)]);
    }

    #[test]
    fn whole_range_minus_zero() {
        // 1, 2-3, 4-7, ..., 32768-65535: one block per bit.
        let b = blocks(1, 65535);
        assert_eq!(b.len(), 16);
        assert_eq!(b[0], (1, 96));
        assert_eq!(b[1], (2, 95));
        assert_eq!(b[15], (32768, 81));
    }

    #[test]
    fn thousand_to_two_thousand() {
        // 1000-1007 (8), 1008-1023 (16), 1024-1535 (512), 1536-1791 (256), 1792-1919 (128),
        // 1920-1983 (64), 1984-1999 (16), 2000 (1).
        assert_eq!(
            blocks(1000, 2000),
            vec![
                (1000, 93),
                (1008, 92),
                (1024, 87),
                (1536, 88),
                (1792, 89),
                (1920, 90),
                (1984, 92),
                (2000, 96)
            ]
        );
    }

    #[test]
    fn zero_start_covers_everything() {
        assert_eq!(blocks(0, 65535), vec![(0, 80)]);
    }
}
