//! HTTP (L7) enforcement maps, shared by the sk_skb programs and the agent.
//!
//! A server socket of a local pod whose (address, port) has HTTP rules is put in the
//! `L7_SOCKS` sockhash when it is accepted; from then on a verdict program sees every TCP
//! segment on it before the server can read it, frames the requests in it and matches each
//! request head against the port's rule DFA. A server never receives a complete head that
//! was not judged.

/// Pinned name of the port table.
pub const L7_PORTS_MAP: &str = "moat_l7ports_v1";
/// Pinned name of the DFA rows.
pub const L7_DFA_MAP: &str = "moat_l7dfa_v1";
/// Ports (pod address, port) with HTTP rules, node-wide.
pub const MAX_L7_PORTS: u32 = 4096;
/// DFA rows, node-wide (row 0 is the dead state).
pub const MAX_DFA_ROWS: u32 = 16_384;
/// Sockets under HTTP enforcement at once.
pub const MAX_L7_SOCKS: u32 = 65_536;
/// Heads split across segments being held at once (an LRU: an evicted one fails closed,
/// its connection is reset).
pub const MAX_L7_PARTIAL: u32 = 8192;
/// Most bytes of a head held back from one connection (the kernel prepends at most
/// 4,095 bytes to a segment).
pub const MAX_HELD: u32 = 4095;

/// The first bytes of a head that a segment ended inside of (`L7_PARTIAL`, by socket
/// cookie): taken out of that segment, and put in front of the next one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct L7Held {
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; 4096],
}

/// `L7_PORTS` key: a local pod's address (wire order) and a TCP port (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct L7PortKey {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<L7PortKey>() == 8);

/// `L7_PORTS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L7Port {
    /// First row of the port's DFA in `L7_DFA`.
    pub start: u32,
    /// `L7F_*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<L7Port>() == 8);

/// Audit mode: a request no rule allows is reported and passes.
pub const L7F_AUDIT: u32 = 1;

/// One DFA state. The DFA reads `METHOD SP PATH SP HOST` (the normalised head fields);
/// `accept` is the rule index + 1 when the input may end here, else 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DfaRow {
    pub next: [u16; 256],
    pub accept: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<DfaRow>() == 516);

impl Default for DfaRow {
    fn default() -> Self {
        Self {
            next: [0; 256],
            accept: 0,
            _pad: 0,
        }
    }
}

/// Per-socket framing state (`L7_STATE`, keyed by socket cookie).
///
/// The verdict program sees each TCP segment once, as it arrives (no stream parser: the
/// kernel hands the segment over whole and it is passed, dropped or answered at once).
/// So body framing is byte-incremental (a chunk-size line continues from `left` and
/// `digits`), and a head split across segments is held back in `L7_PARTIAL` until it is
/// whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct L7Sock {
    /// `mode::*`: where the next byte on the connection belongs.
    pub mode: u32,
    /// Requests judged on this connection.
    pub requests: u32,
    /// The port, looked up again for every request: rules applied since the connection
    /// opened are the ones that judge its next request.
    pub port: L7PortKey,
    /// Body or chunk bytes still to pass; in `CHUNK_SIZE`, the size read so far.
    pub left: u64,
    /// Hex digits of the chunk size read so far.
    pub digits: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<L7Sock>() == 32);

/// What the next bytes on an HTTP-rule socket are.
pub mod mode {
    pub const HEAD: u32 = 0;
    pub const BODY: u32 = 1;
    /// Hex digits of a chunk size, up to its CR.
    pub const CHUNK_SIZE: u32 = 2;
    pub const CHUNK_DATA: u32 = 3;
    /// The CR after a chunk's data.
    pub const CHUNK_CRLF: u32 = 4;
    /// After the last chunk: only an empty trailer (`CRLF`) is accepted; this is its CR.
    pub const TRAILER: u32 = 5;
    /// A request was refused: everything after it is dropped.
    pub const DENIED: u32 = 6;
    /// A head began in an earlier segment: its bytes are held in `L7_PARTIAL`.
    pub const HEAD_PARTIAL: u32 = 7;
    /// The LF after a chunk size's CR.
    pub const CHUNK_SIZE_LF: u32 = 8;
    /// The LF after a chunk's data CR.
    pub const CHUNK_CRLF_LF: u32 = 9;
    /// The LF of the empty trailer.
    pub const TRAILER_LF: u32 = 10;
}

/// The kernel answers a refused request in place of the segment that carried it, with
/// exactly as many bytes as the segment had: TCP counts the bytes a socket consumed by the
/// length of the segments it passed on, so a segment must not change length on its way
/// back out. The answer is a 403 padded to that length: `HTTP/1.1 403 Forbidden`,
/// `Connection: close`, a Content-Length, and "Access denied" followed by spaces.
/// Segments of 36–66 bytes get a shorter status line; one under 36 bytes cannot hold any
/// complete answer, and its connection is reset.
pub const FORBIDDEN_MIN: u32 = 36;
/// Longest answer: its Content-Length has four digits (longer segments are reset).
pub const FORBIDDEN_MAX: u32 = 9999 + 67;
// Padded to powers of two: the kernel indexes them with a mask, which the verifier
// understands (a clamped index it does not always).
const LONG: &[u8; 64] = b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: _____";
const SHORT: &[u8; 32] = b"HTTP/1.1 403 \r\nContent-Length:__";
const BODY: &[u8; 16] = b"Access denied\r\n ";
const END: &[u8; 4] = b"\r\n\r\n";

/// Byte `i` of the `len`-byte answer (`len` ≥ [`FORBIDDEN_MIN`]).
#[inline(always)]
#[must_use]
pub fn forbidden_byte(len: u32, i: u32) -> u8 {
    // (fixed prefix, digits of the Content-Length)
    let (prefix, digits) = if len >= 67 { (59u32, 4u32) } else { (30, 2) };
    let head = prefix + digits + 4;
    let body = len.saturating_sub(head);
    if i < prefix {
        return if len >= 67 {
            LONG[(i & 63) as usize]
        } else {
            SHORT[(i & 31) as usize]
        };
    }
    if i < prefix + digits {
        let pos = prefix + digits - 1 - i; // 0 = units
        let mut d = body;
        let mut k = 0;
        while k < 4 {
            if k < pos {
                d /= 10;
            }
            k += 1;
        }
        return b'0' + (d % 10) as u8;
    }
    if i < head {
        return END[((i - prefix - digits) & 3) as usize];
    }
    let j = i - head;
    if j < 15 {
        BODY[(j & 15) as usize]
    } else {
        b' '
    }
}

/// Path bytes an HTTP event carries (longer paths are cut).
pub const EVENT_PATH: usize = 192;
/// Host bytes an HTTP event carries.
pub const EVENT_HOST: usize = 64;

/// An HTTP request event in the `EVENTS` ring buffer, told from a `FlowEvent` by its size.
/// `flow.hook` is `hook::HTTP`; `flow.verdict` FORWARDED, AUDIT or DROPPED.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct L7Event {
    pub flow: crate::FlowEvent,
    /// Index of the allowing rule in the port's rules + 1 (0: none).
    pub rule: u16,
    pub method_len: u8,
    pub _pad: u8,
    pub path_len: u16,
    pub host_len: u16,
    pub method: [u8; 16],
    pub path: [u8; EVENT_PATH],
    pub host: [u8; EVENT_HOST],
}
const _: () = assert!(core::mem::size_of::<L7Event>() == core::mem::size_of::<crate::FlowEvent>() + 8 + 16 + 192 + 64);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers with explicit padding.
    unsafe impl aya::Pod for super::L7PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::L7Port {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DfaRow {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    #[test]
    fn the_answer_is_a_complete_403_of_exactly_the_request_length() {
        for len in FORBIDDEN_MIN..=FORBIDDEN_MAX {
            let a: Vec<u8> = (0..len).map(|i| forbidden_byte(len, i)).collect();
            let text = String::from_utf8(a).unwrap();
            assert!(text.starts_with("HTTP/1.1 403 "), "{len}: {text:?}");
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(cl, body.len(), "{len}: {text:?}");
            assert_eq!(text.len() as u32, len);
            if len >= 82 {
                assert!(
                    head.contains("Connection: close") && body.starts_with("Access denied"),
                    "{text:?}"
                );
            }
        }
    }
}
