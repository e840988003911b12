//! The conntrack state machine, pure: when an entry expires and how a packet updates it.
//! The eBPF `conntrack` module calls these on `CT` entries; host tests walk the TCP
//! states here.
use crate::{ct_flag, ct_timeout, CtEntry};

/// TCP header flag bits.
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;

/// The idle timeout of an entry in its state: TCP closing (RST, or FIN both ways),
/// established (a reply seen), opening; other protocols one timeout.
#[inline(always)]
#[must_use]
pub fn timeout(e: &CtEntry, proto: u8) -> u64 {
    if proto != IPPROTO_TCP {
        return ct_timeout::OTHER;
    }
    let closing = e.flags & ct_flag::RST != 0
        || e.flags & (ct_flag::FIN_ORIG | ct_flag::FIN_REPLY) == (ct_flag::FIN_ORIG | ct_flag::FIN_REPLY);
    if closing {
        ct_timeout::TCP_CLOSING
    } else if e.flags & ct_flag::SEEN_REPLY != 0 {
        ct_timeout::TCP_ESTABLISHED
    } else {
        ct_timeout::TCP_OPENING
    }
}

/// Whether the entry has been idle longer than its state allows at time `now` (ns).
#[inline(always)]
#[must_use]
pub fn expired(e: &CtEntry, proto: u8, now: u64) -> bool {
    now.wrapping_sub(e.last_seen) > timeout(e, proto)
}

/// Records a packet of a tracked flow: last seen, counts, TCP closing state. A new SYN
/// on a closed tuple (the client reused its port after RST or FIN) starts the
/// connection's states over, so the new connection does not inherit the short closing
/// timeout.
#[inline(always)]
pub fn touch(e: &mut CtEntry, now: u64, tcp_flags: u8, reply: bool) {
    e.last_seen = now;
    if !reply && tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN {
        e.flags &= !(ct_flag::RST | ct_flag::FIN_ORIG | ct_flag::FIN_REPLY | ct_flag::SEEN_REPLY);
    }
    if reply {
        e.packets_reply += 1;
        e.flags |= ct_flag::SEEN_REPLY;
    } else {
        e.packets_orig += 1;
    }
    if tcp_flags & tcp::RST != 0 {
        e.flags |= ct_flag::RST;
    } else if tcp_flags & tcp::FIN != 0 {
        e.flags |= if reply { ct_flag::FIN_REPLY } else { ct_flag::FIN_ORIG };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CtEntry {
        CtEntry {
            last_seen: 0,
            created: 0,
            flags: 0,
            policy_rev: 1,
            src_identity: 256,
            dst_identity: 257,
            cookie: 0,
            _pad: 0,
            packets_orig: 1,
            packets_reply: 0,
        }
    }

    #[test]
    fn tcp_states_and_their_timeouts() {
        let mut e = entry();
        assert_eq!(timeout(&e, 6), ct_timeout::TCP_OPENING, "SYN sent");
        touch(&mut e, 10, tcp::SYN | tcp::ACK, true);
        assert_eq!(timeout(&e, 6), ct_timeout::TCP_ESTABLISHED, "reply seen");
        assert_eq!((e.packets_orig, e.packets_reply, e.last_seen), (1, 1, 10));
        touch(&mut e, 20, tcp::FIN | tcp::ACK, false);
        assert_eq!(timeout(&e, 6), ct_timeout::TCP_ESTABLISHED, "half closed");
        touch(&mut e, 30, tcp::FIN | tcp::ACK, true);
        assert_eq!(timeout(&e, 6), ct_timeout::TCP_CLOSING, "FIN both ways");
        // The client reuses its port: a fresh SYN starts over.
        touch(&mut e, 40, tcp::SYN, false);
        assert_eq!(timeout(&e, 6), ct_timeout::TCP_OPENING);
        touch(&mut e, 50, tcp::RST, true);
        assert_eq!(timeout(&e, 6), ct_timeout::TCP_CLOSING, "RST");
        // A SYN-ACK from the server side does not reset anything.
        touch(&mut e, 60, tcp::SYN | tcp::ACK, true);
        assert_eq!(timeout(&e, 6), ct_timeout::TCP_CLOSING);
    }

    #[test]
    fn expiry_follows_the_state_and_survives_clock_wrap() {
        let mut e = entry();
        e.last_seen = 1_000;
        assert!(!expired(&e, 17, 1_000 + ct_timeout::OTHER));
        assert!(expired(&e, 17, 1_001 + ct_timeout::OTHER));
        assert!(!expired(&e, 6, 1_000 + ct_timeout::TCP_OPENING));
        e.flags |= ct_flag::SEEN_REPLY;
        assert!(
            !expired(&e, 6, 1_001 + ct_timeout::TCP_OPENING),
            "established lives longer"
        );
        e.last_seen = u64::MAX - 5;
        assert!(!expired(&e, 6, 10), "wrapping clock");
    }
}
