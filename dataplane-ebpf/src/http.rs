//! HTTP rules on a pod's server sockets, enforced in the kernel per request.
//!
//! ```text
//!  accept() ── sock_ops (passive established): port has HTTP rules? ─► L7_SOCKS + L7_STATE
//!  bytes ───── http_parser  (stream parser): frame the next message (head, body, chunk)
//!         └─── http_verdict (stream verdict): head → parse, normalise, DFA → pass
//!                                             or rewrite into 403 and send it back
//! ```
//!
//! The parser and the verdict both run the byte-step parser `moat_dataplane_common::http1`
//! from a `bpf_loop` callback (the verifier checks one step, not 4,096), so a request is
//! never judged on bytes the parser framed differently. Bodies pass by length; nothing
//! after a refused request reaches the server.
use aya_ebpf::{
    bindings::{
        sk_action::{SK_DROP, SK_PASS},
        BPF_F_INGRESS,
    },
    helpers::generated::{
        bpf_get_socket_cookie, bpf_loop, bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_sock_ops_cb_flags_set,
    },
    macros::{map, sock_ops, stream_parser, stream_verdict},
    maps::{Array, HashMap, PerCpuArray, SockHash},
    programs::{SkBuffContext, SockOpsContext},
    EbpfContext as _,
};
use core::ffi::c_void;
use moat_dataplane_common::{
    http1::{self, Step, MAX_HEAD},
    l7::{
        forbidden_byte, mode, DfaRow, L7Port, L7PortKey, L7Sock, FORBIDDEN_MIN, L7F_AUDIT, MAX_DFA_ROWS, MAX_L7_PORTS,
        MAX_L7_SOCKS,
    },
    metric,
};

use crate::maps::count;

/// HTTP-rule server sockets by cookie (the verdict redirects a 403 to the same socket).
#[map(name = "moat_l7socks_v1")]
static L7_SOCKS: SockHash<u64> = SockHash::pinned(MAX_L7_SOCKS, 0);

/// (pod address, port) → its rule DFA.
#[map(name = "moat_l7ports_v1")]
static L7_PORTS: HashMap<L7PortKey, L7Port> = HashMap::pinned(MAX_L7_PORTS, 0);

/// DFA rows of every HTTP-rule port.
#[map(name = "moat_l7dfa_v1")]
static L7_DFA: Array<DfaRow> = Array::pinned(MAX_DFA_ROWS, 0);

/// Framing state per socket cookie; removed when the socket closes.
#[map(name = "moat_l7state_v1")]
static L7_STATE: HashMap<u64, L7Sock> = HashMap::pinned(MAX_L7_SOCKS, 0);

/// Per-CPU copy of the bytes being judged.
#[map(name = "moat_l7buf_v1")]
static L7_BUF: PerCpuArray<[u8; MAX_HEAD as usize]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU parser.
#[map(name = "moat_l7head_v1")]
static L7_HEAD: PerCpuArray<http1::Head> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU DFA walk: [state, input length].
#[map(name = "moat_l7walk_v1")]
static L7_WALK: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 4;
const TCP_CLOSE: u32 = 7;
/// Longest chunk-size line (8 hex digits + CRLF; extensions are refused).
const CHUNK_LINE: u32 = 10;

#[sock_ops]
pub fn http_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => track(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // SAFETY: plain helper call on the hook's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = L7_STATE.remove(&cookie);
        }
        _ => {}
    }
    1
}

/// An accepted connection to a port with HTTP rules comes under enforcement.
#[inline(always)]
fn track(ctx: &SockOpsContext) {
    let key = L7PortKey {
        addr: ctx.local_ip4(),
        port: ctx.local_port() as u16,
        _pad: 0,
    };
    // SAFETY: only tests presence.
    if unsafe { L7_PORTS.get(&key) }.is_none() {
        return;
    }
    // SAFETY: plain helper call on the hook's context.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let state = L7Sock {
        mode: mode::HEAD,
        requests: 0,
        port: key,
        left: 0,
    };
    // Without state the verdict drops everything on the socket: failing to track is
    // failing closed, not open.
    let _ = L7_STATE.insert(&cookie, &state, 0);
    // SAFETY: the hook's own bpf_sock_ops.
    unsafe {
        bpf_sock_ops_cb_flags_set(ctx.ops, BPF_SOCK_OPS_STATE_CB_FLAG);
        let _ = L7_SOCKS.update(&mut cookie, &mut *ctx.ops, 0);
    }
}

#[inline(always)]
fn cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: plain helper call on the program's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Copies up to `MAX_HEAD` bytes of the message into the per-CPU buffer: how many.
#[inline(always)]
fn load(ctx: &SkBuffContext) -> u32 {
    let Some(buf) = L7_BUF.get_ptr_mut(0) else {
        return 0;
    };
    let n = ctx.len().min(MAX_HEAD);
    if n == 0 {
        return 0; // the helper refuses a zero-sized read
    }
    // SAFETY: the per-CPU slot holds MAX_HEAD bytes; n is in 1..=MAX_HEAD.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const c_void, 0, buf.cast(), n) };
    if ret == 0 { n } else { 0 }
}

/// One byte into the per-CPU parser (a `bpf_loop` callback): 1 stops the loop.
#[inline(never)]
extern "C" fn parse_byte(i: u64, _ctx: *mut c_void) -> i64 {
    let (Some(buf), Some(head)) = (L7_BUF.get_ptr(0), L7_HEAD.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: per-CPU slots; the index is masked into the buffer.
    let (b, head) = unsafe { ((*buf)[(i as usize) & (MAX_HEAD as usize - 1)], &mut *head) };
    match head.step(b) {
        Step::More => 0,
        _ => 1,
    }
}

/// Runs the parser over the first `n` loaded bytes.
#[inline(always)]
fn parse(n: u32) -> Option<&'static http1::Head> {
    let head = L7_HEAD.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot.
    unsafe {
        (*head).reset();
        bpf_loop(n, parse_byte as *mut c_void, core::ptr::null_mut(), 0);
        Some(&*head)
    }
}

#[stream_parser]
pub fn http_parser(ctx: SkBuffContext) -> u32 {
    let len = ctx.len();
    // SAFETY: copied out at once.
    let Some(state) = (unsafe { L7_STATE.get(&cookie(&ctx)) }).copied() else {
        return len; // the verdict drops it
    };
    match state.mode {
        mode::HEAD => {
            let n = load(&ctx);
            let Some(head) = parse(n) else {
                return len;
            };
            match head.outcome() {
                Step::Done => head.len,
                Step::Reject => len,
                // Not yet a whole head: wait (the parser refuses at MAX_HEAD itself).
                Step::More => 0,
            }
        }
        mode::BODY | mode::CHUNK_DATA => {
            if state.left < u64::from(len) {
                state.left as u32
            } else {
                len
            }
        }
        mode::CHUNK_SIZE => {
            let n = load(&ctx).min(CHUNK_LINE);
            let Some(buf) = L7_BUF.get_ptr(0) else {
                return len;
            };
            let mut i = 0;
            while i < CHUNK_LINE {
                if i >= n {
                    break;
                }
                // SAFETY: per-CPU slot, index below CHUNK_LINE.
                if unsafe { (*buf)[i as usize] } == b'\n' {
                    return i + 1;
                }
                i += 1;
            }
            if n < CHUNK_LINE { 0 } else { len }
        }
        mode::CHUNK_CRLF | mode::TRAILER => {
            if len >= 2 {
                2
            } else {
                0
            }
        }
        _ => len,
    }
}

#[stream_verdict]
pub fn http_verdict(ctx: SkBuffContext) -> u32 {
    let mut key = cookie(&ctx);
    let Some(state) = L7_STATE.get_ptr_mut(&key) else {
        count(metric::DROP_L7_NO_STATE);
        return SK_DROP;
    };
    // SAFETY: this socket's entry; its messages are judged one at a time.
    let state = unsafe { &mut *state };
    let len = u64::from(ctx.len());
    match state.mode {
        mode::HEAD => judge(&ctx, state, &mut key),
        mode::BODY => {
            state.left = state.left.saturating_sub(len);
            if state.left == 0 {
                state.mode = mode::HEAD;
            }
            SK_PASS
        }
        mode::CHUNK_DATA => {
            state.left = state.left.saturating_sub(len);
            if state.left == 0 {
                state.mode = mode::CHUNK_CRLF;
            }
            SK_PASS
        }
        mode::CHUNK_SIZE => match chunk_size(&ctx) {
            Some(0) => {
                state.mode = mode::TRAILER;
                SK_PASS
            }
            Some(size) => {
                state.mode = mode::CHUNK_DATA;
                state.left = size;
                SK_PASS
            }
            None => deny(&ctx, state, &mut key, metric::DROP_L7_CHUNK),
        },
        mode::CHUNK_CRLF | mode::TRAILER => {
            let mut crlf = [0u8; 2];
            // SAFETY: two bytes into a two-byte stack buffer (the parser framed two).
            let ok = ctx.len() == 2
                && unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const c_void, 0, crlf.as_mut_ptr().cast(), 2) } == 0;
            if !ok || crlf != *b"\r\n" {
                return deny(&ctx, state, &mut key, metric::DROP_L7_CHUNK);
            }
            state.mode = if state.mode == mode::TRAILER { mode::HEAD } else { mode::CHUNK_SIZE };
            SK_PASS
        }
        _ => {
            count(metric::DROP_L7_AFTER_DENY);
            SK_DROP
        }
    }
}

/// `HEX CRLF` (1–8 digits, no extensions) → the chunk size.
#[inline(always)]
fn chunk_size(ctx: &SkBuffContext) -> Option<u64> {
    let n = load(ctx).min(CHUNK_LINE);
    let buf = L7_BUF.get_ptr(0)?;
    if n < 3 {
        return None;
    }
    let mut size = 0u64;
    let mut i = 0;
    while i < CHUNK_LINE {
        if i + 2 >= n {
            break;
        }
        // SAFETY: per-CPU slot, index below CHUNK_LINE.
        let b = unsafe { (*buf)[i as usize] };
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        size = size * 16 + u64::from(d);
        i += 1;
    }
    let at = (n - 2) as usize & 15;
    // SAFETY: per-CPU slot, index below 16.
    let (cr, lf) = unsafe { ((*buf)[at], (*buf)[(at + 1) & 15]) };
    (cr == b'\r' && lf == b'\n').then_some(size)
}

/// A request head: parse, match, pass or answer 403.
#[inline(always)]
fn judge(ctx: &SkBuffContext, state: &mut L7Sock, key: &mut u64) -> u32 {
    let n = load(ctx);
    let Some(head) = parse(n) else {
        return deny(ctx, state, key, metric::DROP_L7_UNPARSABLE + 2);
    };
    if head.outcome() != Step::Done || head.len != ctx.len() {
        let why = if head.reject == 0 { http1::reject::MALFORMED } else { head.reject };
        return deny(ctx, state, key, metric::DROP_L7_UNPARSABLE + u32::from(why));
    }
    state.requests += 1;
    let (body, content_length) = (head.body, head.content_length);
    // SAFETY: copied out at once.
    let port = unsafe { L7_PORTS.get(&state.port) }.copied();
    // No entry: the port's HTTP rules were removed since the connection opened.
    let allowed = port.is_none_or(|p| walk(p.start, head) != 0);
    if !allowed {
        if port.is_some_and(|p| p.flags & L7F_AUDIT == 0) {
            return deny(ctx, state, key, metric::DROP_L7_DENIED);
        }
        count(metric::L7_AUDIT);
    } else {
        count(metric::L7_ALLOWED);
    }
    state.mode = match body {
        http1::body::LENGTH => {
            state.left = content_length;
            mode::BODY
        }
        http1::body::CHUNKED => mode::CHUNK_SIZE,
        _ => mode::HEAD,
    };
    deliver(ctx, key)
}

/// Hands an allowed message to the server.
#[inline(always)]
fn deliver(ctx: &SkBuffContext, key: &mut u64) -> u32 {
    L7_SOCKS.redirect_skb(ctx, key, u64::from(BPF_F_INGRESS)) as u32
}

/// The byte `i` of `METHOD SP PATH SP HOST`.
#[inline(always)]
fn input_byte(head: &http1::Head, i: u32) -> u8 {
    let m = u32::from(head.method_len);
    let p = u32::from(head.path_len);
    if i < m {
        head.method[(i & 15) as usize]
    } else if i == m || i == m + 1 + p {
        b' '
    } else if i < m + 1 + p {
        head.path[((i - m - 1) & 1023) as usize]
    } else {
        let h = i - m - 2 - p;
        if head.uri_host != 0 {
            head.host[(h & 255) as usize]
        } else {
            head.hdr_host[(h & 255) as usize]
        }
    }
}

/// One DFA transition (a `bpf_loop` callback): 1 stops at the dead state.
#[inline(never)]
extern "C" fn walk_byte(i: u64, _ctx: *mut c_void) -> i64 {
    let (Some(head), Some(walk)) = (L7_HEAD.get_ptr(0), L7_WALK.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: per-CPU slots.
    let (head, walk) = unsafe { (&*head, &mut *walk) };
    let b = input_byte(head, i as u32);
    // SAFETY: copied out at once.
    let Some(row) = (unsafe { L7_DFA.get(walk[0]) }) else {
        walk[0] = 0;
        return 1;
    };
    walk[0] = u32::from(row.next[b as usize]);
    i64::from(walk[0] == 0)
}

/// Runs the port's DFA over the head: the matching rule + 1, or 0.
#[inline(always)]
fn walk(start: u32, head: &http1::Head) -> u32 {
    let Some(w) = L7_WALK.get_ptr_mut(0) else {
        return 0;
    };
    let total = u32::from(head.method_len)
        + 1
        + u32::from(head.path_len)
        + 1
        + if head.uri_host != 0 {
            u32::from(head.host_len)
        } else {
            u32::from(head.hdr_host_len)
        };
    // SAFETY: per-CPU slot.
    unsafe {
        (*w)[0] = start;
        bpf_loop(total, walk_byte as *mut c_void, core::ptr::null_mut(), 0);
        let state = (*w)[0];
        if state == 0 {
            return 0;
        }
        L7_DFA.get(state).map_or(0, |r| u32::from(r.accept))
    }
}

/// One byte of the 403 answer into the per-CPU buffer (a `bpf_loop` callback).
#[inline(never)]
extern "C" fn answer_byte(i: u64, ctx: *mut c_void) -> i64 {
    let Some(buf) = L7_BUF.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: `ctx` points at the caller's u32 length; per-CPU slot, masked index.
    unsafe {
        let len = *(ctx as *const u32);
        (*buf)[(i as usize) & (MAX_HEAD as usize - 1)] = forbidden_byte(len, i as u32);
    }
    0
}

/// Overwrites the message with the 403 answer (same length: see `l7::FORBIDDEN_MIN`),
/// sends it back out of the same socket, and drops everything after it on this
/// connection. A message too short for an answer is dropped unanswered.
#[inline(always)]
fn deny(ctx: &SkBuffContext, state: &mut L7Sock, key: &mut u64, reason: u32) -> u32 {
    count(reason);
    state.mode = mode::DENIED;
    let len = ctx.len();
    if !(FORBIDDEN_MIN..=MAX_HEAD).contains(&len) {
        return SK_DROP;
    }
    let Some(buf) = L7_BUF.get_ptr(0) else {
        return SK_DROP;
    };
    let mut arg = len;
    // SAFETY: the callback reads `arg` only.
    unsafe { bpf_loop(len, answer_byte as *mut c_void, (&raw mut arg).cast(), 0) };
    // Bounds checked again after the call: the compiler may reload the length.
    // (Written as min + one-sided check: a fused range check loses the bounds.)
    let n = ctx.len().min(MAX_HEAD);
    if n < FORBIDDEN_MIN {
        return SK_DROP;
    }
    // SAFETY: n bytes of the MAX_HEAD-byte buffer, n in FORBIDDEN_MIN..=MAX_HEAD.
    let stored = unsafe { bpf_skb_store_bytes(ctx.skb.skb.cast(), 0, buf.cast(), n, 0) };
    if stored != 0 {
        return SK_DROP; // no answer possible: the request still never reaches the server
    }
    // Flags 0: to the socket's egress, i.e. back to the client.
    if L7_SOCKS.redirect_skb(ctx, key, 0) as u32 == SK_PASS {
        return SK_PASS;
    }
    SK_DROP
}
