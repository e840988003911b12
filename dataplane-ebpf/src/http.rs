//! HTTP rules on a pod's server sockets, enforced in the kernel per request.
//!
//! ```text
//!  accept() ── sock_ops (passive established): port has HTTP rules? ─► L7_SOCKS + L7_STATE
//!  segment ─── http_verdict (sk_skb verdict, no stream parser): walk the requests in it
//!              from the socket's framing state; every head → parse, normalise, DFA
//!                ├─ all allowed (or body bytes) ─────────────► pass
//!                ├─ ends inside a head ─► hold those bytes back (L7_PARTIAL), pass the rest
//!                ├─ refused, and the segment starts with it ─► rewrite into 403, send back
//!                └─ refused behind allowed requests ────────► drop, agent resets
//! ```
//!
//! There is no stream parser: the kernel's strparser cannot read data that arrived before
//! `accept()` (the socket has no `struct socket` yet), and a blocking server's first
//! `recv()` then fails with EAGAIN. The verdict-only path reads such data on that first
//! `recv()`. It cannot wait for more bytes, so a segment that ends inside a head gives
//! those bytes up: they are cut off it and held in `L7_PARTIAL`, and put back in front
//! of the next segment on the connection, which is then judged from the head's start.
//! The server never sees a byte of a head before the whole head is judged (a lenient
//! server would act on a partial one at EOF). The byte-step parser
//! `moat_dataplane_common::http1` runs from a `bpf_loop` callback (the verifier checks
//! one step, not 4,096). Bodies pass by length; nothing after a refused request reaches
//! the server.
use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_loop, bpf_skb_adjust_room, bpf_skb_change_tail,
        bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_sock_ops_cb_flags_set,
    },
    macros::{map, sock_ops, stream_verdict},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{SkBuffContext, SockOpsContext},
    EbpfContext as _,
};
use core::ffi::c_void;
use moat_dataplane_common::{
    direction, hook,
    http1::{self, Step, MAX_HEAD},
    l7::{
        forbidden_byte, mode, DfaRow, L7Event, L7Held, L7Port, L7PortKey, L7Sock, EVENT_HOST, EVENT_PATH,
        FORBIDDEN_MAX, FORBIDDEN_MIN, L7F_AUDIT, MAX_DFA_ROWS, MAX_HELD, MAX_L7_PARTIAL, MAX_L7_PORTS, MAX_L7_SOCKS,
    },
    metric, verdict, FlowEvent,
};

use crate::maps::{count, EVENTS};

/// HTTP-rule server sockets by cookie (the verdict redirects a 403 to the same socket).
/// v2: the verdict program alone (v1 had a stream parser attached as well).
#[map(name = "moat_l7socks_v2")]
static L7_SOCKS: SockHash<u64> = SockHash::pinned(MAX_L7_SOCKS, 0);

/// (pod address, port) → its rule DFA.
#[map(name = "moat_l7ports_v1")]
static L7_PORTS: HashMap<L7PortKey, L7Port> = HashMap::pinned(MAX_L7_PORTS, 0);

/// DFA rows of every HTTP-rule port.
#[map(name = "moat_l7dfa_v1")]
static L7_DFA: Array<DfaRow> = Array::pinned(MAX_DFA_ROWS, 0);

/// Framing state per socket cookie; removed when the socket closes.
#[map(name = "moat_l7state_v2")]
static L7_STATE: HashMap<u64, L7Sock> = HashMap::pinned(MAX_L7_SOCKS, 0);

/// The held-back start of a head split across segments, by socket cookie
/// (`mode::HEAD_PARTIAL`).
#[map(name = "moat_l7partial_v1")]
static L7_PARTIAL: LruHashMap<u64, L7Held> = LruHashMap::pinned(MAX_L7_PARTIAL, 0);

/// Per-CPU staging for bytes on their way into `L7_PARTIAL`.
#[map(name = "moat_l7hold_v1")]
static L7_HOLD: PerCpuArray<L7Held> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Per-CPU copy of the bytes being judged.
#[map(name = "moat_l7buf_v1")]
static L7_BUF: PerCpuArray<[u8; MAX_HEAD as usize]> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Per-CPU parser.
#[map(name = "moat_l7head_v1")]
static L7_HEAD: PerCpuArray<http1::Head> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Per-CPU DFA walk: [state, input length].
#[map(name = "moat_l7walk_v1")]
static L7_WALK: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Scratch slots per CPU. The verdict runs in process context (a `recv()` reading data
/// that arrived before `accept()`) as well as in softirq, and a softirq may run another
/// socket's verdict on the same CPU in the middle of one: each run takes its own slot
/// (`Nest`), so one never clobbers the other's parser, walk or buffer.
const SLOTS: u32 = 2;

/// Per-CPU nesting depth of the stream programs.
#[map(name = "moat_l7nest_v1")]
static L7_NEST: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// This run's scratch slot (the depth it entered at).
#[inline(always)]
fn slot() -> u32 {
    L7_NEST.get(0).map_or(0, |n| n.saturating_sub(1)).min(SLOTS - 1)
}

/// Holds a scratch slot for one program run; gives it back when dropped.
struct Nest;

impl Nest {
    /// `None` when every slot is taken (never expected: process context + softirq).
    #[inline(always)]
    fn enter() -> Option<Self> {
        let n = L7_NEST.get_ptr_mut(0)?;
        // SAFETY: per-CPU counter; a nested run restores it before this one resumes.
        unsafe {
            if *n >= SLOTS {
                return None;
            }
            *n += 1;
        }
        Some(Self)
    }
}

impl Drop for Nest {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(n) = L7_NEST.get_ptr_mut(0) {
            // SAFETY: as in `enter`.
            unsafe { *n = (*n).saturating_sub(1) };
        }
    }
}

const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 4;
const TCP_CLOSE: u32 = 7;
/// Most hex digits in a chunk size (extensions are refused).
const CHUNK_DIGITS: u32 = 8;

#[sock_ops]
pub fn http_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => track(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // SAFETY: plain helper call on the hook's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = L7_STATE.remove(&cookie);
            let _ = L7_PARTIAL.remove(&cookie);
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
        port: key,
        ..L7Sock::default()
    };
    // Without state the verdict drops everything on the socket: failing to track is
    // failing closed, not open.
    let _ = L7_STATE.insert(&cookie, &state, 0);
    // SAFETY: the hook's own bpf_sock_ops.
    let tracked = unsafe {
        bpf_sock_ops_cb_flags_set(ctx.ops, BPF_SOCK_OPS_STATE_CB_FLAG);
        L7_SOCKS.update(&mut cookie, &mut *ctx.ops, 0).is_ok()
    };
    if !tracked {
        // sock_ops cannot refuse the connection: make it visible (moatctl status).
        count(metric::L7_UNTRACKED);
    }
}

#[inline(always)]
fn cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: plain helper call on the program's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Bytes one parser callback takes: fewer `bpf_loop` iterations per head.
const PARSE_BATCH: u32 = 8;

/// `PARSE_BATCH` bytes into the per-CPU parser (a `bpf_loop` callback over batches;
/// `ctx` points at the byte count): 1 stops the loop.
#[inline(never)]
extern "C" fn parse_batch(i: u64, ctx: *mut c_void) -> i64 {
    let (Some(buf), Some(head)) = (L7_BUF.get_ptr(slot()), L7_HEAD.get_ptr_mut(slot())) else {
        return 1;
    };
    // SAFETY: `ctx` is the caller's u32.
    let n = unsafe { *(ctx as *const u32) };
    // SAFETY: per-CPU slot.
    let head = unsafe { &mut *head };
    let mut k = 0;
    while k < PARSE_BATCH {
        let at = i as u32 * PARSE_BATCH + k;
        if at >= n {
            return 1;
        }
        // SAFETY: per-CPU slot; the index is masked into the buffer.
        let b = unsafe { (*buf)[(at as usize) & (MAX_HEAD as usize - 1)] };
        if head.step(b) != Step::More {
            return 1;
        }
        k += 1;
    }
    0
}

/// Steps the per-CPU parser over the first `n` loaded bytes (from wherever it stands).
#[inline(always)]
fn parse(n: u32) -> Option<&'static http1::Head> {
    let head = L7_HEAD.get_ptr_mut(slot())?;
    let mut count = n;
    // SAFETY: the per-CPU slot; the callback reads `count` only.
    unsafe {
        bpf_loop(
            n.div_ceil(PARSE_BATCH),
            parse_batch as *mut c_void,
            (&raw mut count).cast(),
            0,
        );
        Some(&*head)
    }
}

/// Per-CPU walk over one segment (see `http_verdict`).
#[repr(C)]
struct Walk {
    /// Next byte to look at.
    p: u32,
    /// Segment length.
    len: u32,
    mode: u32,
    result: u32,
    left: u64,
    reason: u32,
    port: L7PortKey,
    allowed: u32,
    audited: u32,
    /// Chunk-size digits read.
    digits: u32,
    /// The refused request starts this segment (nothing before it passes).
    whole: u32,
}

#[map(name = "moat_l7units_v1")]
static L7_UNITS: PerCpuArray<Walk> = PerCpuArray::with_max_entries(SLOTS, 0);

// Walk results.
const GOING: u32 = 0;
const COMPLETE: u32 = 1;
const DENY_HERE: u32 = 3;
/// The segment ends inside the head at `w.p`.
const HOLD: u32 = 4;
const TCP_RST: u8 = 0x04;
/// Units (heads, runs of body bytes, framing bytes of chunks) one segment may hold: a
/// 64 KiB segment of one-byte chunks takes one per byte. More refuses the segment.
const MAX_UNITS: u32 = 1 << 17;

/// The socket's skb, handed to the unit callback through its context pointer.
#[repr(C)]
struct SkbArg {
    skb: *mut aya_ebpf::bindings::__sk_buff,
}

/// Copies up to `MAX_HEAD` bytes from `off` into the per-CPU buffer: how many.
#[inline(always)]
fn load_at(skb: *mut aya_ebpf::bindings::__sk_buff, off: u32, avail: u32) -> u32 {
    let Some(buf) = L7_BUF.get_ptr_mut(slot()) else {
        return 0;
    };
    if avail == 0 {
        return 0;
    }
    // 1..=MAX_HEAD by arithmetic: the helper refuses a zero-sized read, and the
    // verifier keeps these bounds where it loses those of a fused range check.
    let n = (avail - 1).min(MAX_HEAD - 1) + 1;
    // SAFETY: n in 1..=MAX_HEAD bytes into the MAX_HEAD-byte per-CPU buffer.
    let ret = unsafe { bpf_skb_load_bytes(skb as *const c_void, off, buf.cast(), n) };
    if ret == 0 {
        n
    } else {
        0
    }
}

#[inline(always)]
fn stop(w: &mut Walk, result: u32, reason: u32) -> i64 {
    w.result = result;
    w.reason = reason;
    1
}

/// One unit (a head, a run of body bytes, one framing byte of a chunk) at `w.p`: a
/// `bpf_loop` callback; 1 stops the walk (`w.result` says why).
#[inline(never)]
extern "C" fn walk_unit(_i: u64, arg: *mut c_void) -> i64 {
    let Some(w) = L7_UNITS.get_ptr_mut(slot()) else {
        return 1;
    };
    // SAFETY: per-CPU slot; `arg` is the caller's SkbArg.
    let (w, skb) = unsafe { (&mut *w, (*(arg as *const SkbArg)).skb) };
    if w.p >= w.len {
        return stop(w, COMPLETE, 0);
    }
    let avail = w.len - w.p;
    match w.mode {
        mode::BODY | mode::CHUNK_DATA => {
            let take = if w.left < u64::from(avail) {
                w.left as u32
            } else {
                avail
            };
            w.p += take;
            w.left -= u64::from(take);
            if w.left == 0 {
                w.mode = if w.mode == mode::BODY {
                    mode::HEAD
                } else {
                    mode::CHUNK_CRLF
                };
            }
            0
        }
        mode::HEAD => head_unit(w, skb, avail),
        mode::CHUNK_SIZE
        | mode::CHUNK_SIZE_LF
        | mode::CHUNK_CRLF
        | mode::CHUNK_CRLF_LF
        | mode::TRAILER
        | mode::TRAILER_LF => chunk_byte(w, skb),
        _ => stop(w, DENY_HERE, metric::DROP_L7_AFTER_DENY),
    }
}

/// One framing byte of a chunked body: `HEX CR LF` (1–8 digits, no extensions) before a
/// chunk, `CR LF` after its data, and the empty trailer `CR LF` after the last one.
#[inline(always)]
fn chunk_byte(w: &mut Walk, skb: *mut aya_ebpf::bindings::__sk_buff) -> i64 {
    let mut b = [0u8; 1];
    // SAFETY: one byte into a one-byte stack buffer.
    if unsafe { bpf_skb_load_bytes(skb as *const c_void, w.p, b.as_mut_ptr().cast(), 1) } != 0 {
        return stop(w, DENY_HERE, metric::DROP_L7_CHUNK);
    }
    let b = b[0];
    let next = match (w.mode, b) {
        (mode::CHUNK_SIZE, b'\r') if w.digits > 0 => mode::CHUNK_SIZE_LF,
        (mode::CHUNK_SIZE, _) => {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return stop(w, DENY_HERE, metric::DROP_L7_CHUNK),
            };
            if w.digits >= CHUNK_DIGITS {
                return stop(w, DENY_HERE, metric::DROP_L7_CHUNK);
            }
            w.left = w.left * 16 + u64::from(d);
            w.digits += 1;
            mode::CHUNK_SIZE
        }
        (mode::CHUNK_SIZE_LF, b'\n') => {
            w.digits = 0;
            if w.left == 0 {
                mode::TRAILER
            } else {
                mode::CHUNK_DATA
            }
        }
        (mode::CHUNK_CRLF, b'\r') => mode::CHUNK_CRLF_LF,
        (mode::CHUNK_CRLF_LF, b'\n') => {
            w.left = 0;
            mode::CHUNK_SIZE
        }
        (mode::TRAILER, b'\r') => mode::TRAILER_LF,
        (mode::TRAILER_LF, b'\n') => mode::HEAD,
        _ => return stop(w, DENY_HERE, metric::DROP_L7_CHUNK),
    };
    w.p += 1;
    w.mode = next;
    0
}

/// A request head at `w.p`: parse, match, advance past it; stop where the segment ends
/// inside it (`HOLD`).
#[inline(always)]
fn head_unit(w: &mut Walk, skb: *mut aya_ebpf::bindings::__sk_buff, avail: u32) -> i64 {
    let Some(head) = L7_HEAD.get_ptr_mut(slot()) else {
        return stop(w, DENY_HERE, metric::DROP_L7_NO_STATE);
    };
    // SAFETY: per-CPU slot.
    unsafe { (*head).reset() };
    // A refusal can be answered only if nothing has passed before it in this segment.
    w.whole = u32::from(w.p == 0);
    let n = load_at(skb, w.p, avail);
    let Some(head) = parse(n) else {
        return stop(w, DENY_HERE, metric::DROP_L7_NO_STATE);
    };
    match head.outcome() {
        Step::More if n == avail => return stop(w, HOLD, 0),
        Step::Done => {}
        _ => {
            let why = if head.reject == 0 {
                http1::reject::TOO_LARGE
            } else {
                head.reject
            };
            return stop(w, DENY_HERE, metric::DROP_L7_UNPARSABLE + u32::from(why));
        }
    }
    // SAFETY: copied out at once.
    let port = unsafe { L7_PORTS.get(&w.port) }.copied();
    // No entry: the port's HTTP rules were removed since the connection opened.
    if let Some(port) = port {
        let rule = walk(port.start, head);
        if rule == 0 {
            if port.flags & L7F_AUDIT == 0 {
                emit_http(w, skb, head, verdict::DROPPED, metric::DROP_L7_DENIED, 0);
                return stop(w, DENY_HERE, metric::DROP_L7_DENIED);
            }
            w.audited += 1;
            emit_http(w, skb, head, verdict::AUDIT, metric::DROP_L7_DENIED, 0);
        } else {
            w.allowed += 1;
            emit_http(w, skb, head, verdict::FORWARDED, 0, rule);
        }
    }
    w.p += head.len;
    match head.body {
        http1::body::LENGTH => {
            w.mode = mode::BODY;
            w.left = head.content_length;
        }
        http1::body::CHUNKED => {
            w.mode = mode::CHUNK_SIZE;
            w.left = 0;
            w.digits = 0;
        }
        _ => w.mode = mode::HEAD,
    }
    0
}

/// One HTTP request event (allowed ones within the flow-event budget).
#[inline(always)]
fn emit_http(w: &Walk, skb: *mut aya_ebpf::bindings::__sk_buff, head: &http1::Head, v: u8, reason: u32, rule: u32) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if v == verdict::FORWARDED && !crate::events::take_token(crate::maps::config().flow_events_per_sec, now) {
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<L7Event>(0) else {
        count(metric::EVENTS_LOST);
        return;
    };
    // SAFETY: `skb` is the program's context; these fields are readable in sk_skb. The
    // remote port is in network order in the upper 16 bits.
    let (raddr, rport) = unsafe { ((*skb).remote_ip4, ((*skb).remote_port >> 16) as u16) };
    let e = slot.as_mut_ptr();
    // SAFETY: the reserved record, written field by field (it is larger than the stack).
    unsafe {
        (*e).flow = FlowEvent {
            ts: now,
            saddr: raddr,
            daddr: w.port.addr,
            sport: rport,
            dport: w.port.port.to_be(),
            verdict: v,
            reason: reason as u8,
            proto: 6,
            hook: hook::HTTP,
            direction: direction::INGRESS,
            len: head.len,
            ..FlowEvent::default()
        };
        (*e).rule = rule as u16;
        (*e).method_len = head.method_len;
        (*e)._pad = 0;
        (*e).method = head.method;
        let uri = head.uri_host != 0;
        (*e).path_len = head.path_len.min(EVENT_PATH as u16);
        (*e).host_len = if uri { head.host_len } else { head.hdr_host_len }.min(EVENT_HOST as u16);
        let mut i = 0;
        while i < EVENT_PATH {
            (*e).path[i] = head.path[i];
            i += 1;
        }
        let mut i = 0;
        while i < EVENT_HOST {
            (*e).host[i] = if uri { head.host[i] } else { head.hdr_host[i] };
            i += 1;
        }
    }
    slot.submit(0);
}

/// Judges one TCP segment on an HTTP-rule socket before the server can read it: walks
/// the units in it from the socket's framing state (held-back head bytes first). All
/// allowed: it passes. It ends inside a head: those bytes are held back and the rest
/// passes. A refused request that starts the segment: the segment becomes the 403. A
/// refused request behind allowed ones: the segment is dropped and the connection reset.
#[stream_verdict]
pub fn http_verdict(ctx: SkBuffContext) -> u32 {
    let mut key = cookie(&ctx);
    let Some(state) = L7_STATE.get_ptr_mut(&key) else {
        // Not tracked (sock_ops could not keep up): nothing passes unjudged.
        count(metric::DROP_L7_NO_STATE);
        return SK_DROP;
    };
    // SAFETY: this socket's entry; its segments are judged one at a time (socket lock).
    let state = unsafe { &mut *state };
    if state.mode == mode::DENIED {
        count(metric::DROP_L7_AFTER_DENY);
        return SK_DROP;
    }
    if ctx.len() == 0 {
        return SK_PASS; // a FIN: nothing to judge, and held bytes stay held
    }
    let Some(_nest) = Nest::enter() else {
        // No scratch slot: refuse the bytes rather than pass them unjudged.
        return reset(&ctx, state, metric::DROP_L7_NO_STATE);
    };
    if state.mode == mode::HEAD_PARTIAL {
        if !prepend_held(&ctx, key) {
            return reset(&ctx, state, metric::DROP_L7_NO_STATE);
        }
        state.mode = mode::HEAD;
    }
    let Some(w) = L7_UNITS.get_ptr_mut(slot()) else {
        return reset(&ctx, state, metric::DROP_L7_NO_STATE);
    };
    // SAFETY: per-CPU slot.
    unsafe {
        (*w).p = 0;
        (*w).len = ctx.len();
        (*w).mode = state.mode;
        (*w).left = state.left;
        (*w).digits = state.digits;
        (*w).result = GOING;
        (*w).reason = 0;
        (*w).port = state.port;
        (*w).allowed = 0;
        (*w).audited = 0;
        (*w).whole = 0;
    }
    let mut arg = SkbArg { skb: ctx.skb.skb };
    // SAFETY: the callback reads `arg` only.
    unsafe { bpf_loop(MAX_UNITS, walk_unit as *mut c_void, (&raw mut arg).cast(), 0) };
    // SAFETY: per-CPU slot, read after the callbacks wrote it.
    let w = unsafe { &*w };
    let verdict = match w.result {
        COMPLETE => SK_PASS,
        HOLD => match hold(&ctx, key, w.p) {
            Some(v) => {
                state.mode = mode::HEAD_PARTIAL;
                v
            }
            None => {
                return reset(
                    &ctx,
                    state,
                    metric::DROP_L7_UNPARSABLE + u32::from(http1::reject::TOO_LARGE),
                )
            }
        },
        DENY_HERE if w.whole != 0 => return deny(&ctx, state, &mut key, w.reason),
        DENY_HERE => return reset(&ctx, state, w.reason),
        // The unit budget ran out: the rest of the segment cannot be judged.
        _ => return reset(&ctx, state, metric::DROP_L7_CHUNK),
    };
    if state.mode != mode::HEAD_PARTIAL {
        state.mode = w.mode;
    }
    state.left = w.left;
    state.digits = w.digits;
    state.requests += w.allowed + w.audited;
    add(metric::L7_ALLOWED, w.allowed);
    add(metric::L7_AUDIT, w.audited);
    verdict
}

/// Puts the bytes held back from the last segment in front of this one: false when they
/// are gone (evicted) or the kernel refuses.
#[inline(always)]
fn prepend_held(ctx: &SkBuffContext, key: u64) -> bool {
    // SAFETY: the helper copies out of the map value below; it is removed afterwards.
    let Some(held) = (unsafe { L7_PARTIAL.get(&key) }) else {
        return false;
    };
    // 1..=MAX_HELD by arithmetic (see `load_at`).
    let k = (held.len.wrapping_sub(1) & 4095).min(MAX_HELD - 1) + 1;
    if k != held.len {
        return false;
    }
    let skb = ctx.skb.skb;
    // SAFETY: the program's own skb; k ≤ 4,095 bytes, copied from the map value.
    let ok = unsafe {
        bpf_skb_adjust_room(skb, k as i32, 0, 0) == 0
            && bpf_skb_store_bytes(skb.cast(), 0, held.bytes.as_ptr().cast(), k, 0) == 0
    };
    let _ = L7_PARTIAL.remove(&key);
    ok
}

/// Holds back the bytes from `cut` to the segment's end (the start of a head) and cuts
/// them off it: the verdict for what is left, or `None` when they cannot be held.
///
/// The segment shrinks rather than being replaced: TCP counts what the socket consumed by
/// the length of the segments it passes on or drops, and the held bytes are counted once,
/// in the segment they are put in front of.
#[inline(always)]
fn hold(ctx: &SkBuffContext, key: u64, cut: u32) -> Option<u32> {
    let len = ctx.len();
    let k = len.checked_sub(cut)?;
    if k == 0 || k > MAX_HELD {
        return None;
    }
    let stage = L7_HOLD.get_ptr_mut(slot())?;
    let k = (k - 1).min(MAX_HELD - 1) + 1;
    let skb = ctx.skb.skb;
    // SAFETY: per-CPU slot; k in 1..=4,095 bytes into its 4,096-byte buffer.
    unsafe {
        if bpf_skb_load_bytes(skb as *const c_void, cut, (*stage).bytes.as_mut_ptr().cast(), k) != 0 {
            return None;
        }
        (*stage).len = k;
        L7_PARTIAL.insert(&key, &*stage, 0).ok()?;
    }
    // SAFETY: the program's own skb.
    let cut_off = unsafe {
        if cut == 0 {
            bpf_skb_adjust_room(skb, -(k as i32), 0, 0)
        } else {
            bpf_skb_change_tail(skb, cut, 0)
        }
    };
    if cut_off != 0 {
        let _ = L7_PARTIAL.remove(&key);
        return None;
    }
    // An empty segment has nothing for the server.
    Some(if cut == 0 { SK_DROP } else { SK_PASS })
}

/// Drops the segment and everything after it (nothing more reaches the server) and asks
/// the agent to reset the connection: a `FlowEvent` on the HTTP hook with RST in its
/// flags. The kernel gives sk_skb programs no way to reset a socket; the agent destroys it
/// through sock_diag in the pod's netns.
#[inline(always)]
fn reset(ctx: &SkBuffContext, state: &mut L7Sock, reason: u32) -> u32 {
    count(reason);
    state.mode = mode::DENIED;
    let key = cookie(ctx);
    let _ = L7_PARTIAL.remove(&key);
    if let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) {
        // SAFETY: the program's context; these fields are readable in sk_skb. The remote
        // port is in network order in the upper 16 bits.
        let (raddr, rport) = unsafe { ((*ctx.skb.skb).remote_ip4, ((*ctx.skb.skb).remote_port >> 16) as u16) };
        slot.write(FlowEvent {
            // SAFETY: plain helper call.
            ts: unsafe { bpf_ktime_get_ns() },
            saddr: raddr,
            daddr: state.port.addr,
            sport: rport,
            dport: state.port.port.to_be(),
            verdict: verdict::DROPPED,
            reason: reason as u8,
            proto: 6,
            tcp_flags: TCP_RST,
            hook: hook::HTTP,
            direction: direction::INGRESS,
            // The socket's cookie: the agent destroys exactly this socket, never another
            // one (a listener) found by the same addresses.
            netns_cookie: key,
            ..FlowEvent::default()
        });
        slot.submit(0);
    } else {
        count(metric::EVENTS_LOST);
    }
    SK_DROP
}

#[inline(always)]
fn add(slot: u32, n: u32) {
    if let Some(c) = crate::maps::METRICS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += u64::from(n) };
    }
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
    let (Some(head), Some(walk)) = (L7_HEAD.get_ptr(slot()), L7_WALK.get_ptr_mut(slot())) else {
        return 1;
    };
    // SAFETY: per-CPU slots.
    let (head, walk) = unsafe { (&*head, &mut *walk) };
    let b = input_byte(head, i as u32);
    let Some(row) = L7_DFA.get(walk[0]) else {
        walk[0] = 0;
        return 1;
    };
    walk[0] = u32::from(row.next[b as usize]);
    i64::from(walk[0] == 0)
}

/// Runs the port's DFA over the head: the matching rule + 1, or 0.
#[inline(always)]
fn walk(start: u32, head: &http1::Head) -> u32 {
    let Some(w) = L7_WALK.get_ptr_mut(slot()) else {
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
    let Some(buf) = L7_BUF.get_ptr_mut(slot()) else {
        return 1;
    };
    // SAFETY: `ctx` points at the caller's u32 length; per-CPU slot, masked index.
    unsafe {
        let len = *(ctx as *const u32);
        (*buf)[(i as usize) & (MAX_HEAD as usize - 1)] = forbidden_byte(len, i as u32);
    }
    0
}

/// One space into the per-CPU buffer (a `bpf_loop` callback): the answer's padding.
#[inline(never)]
extern "C" fn space_byte(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(buf) = L7_BUF.get_ptr_mut(slot()) else {
        return 1;
    };
    // SAFETY: per-CPU slot, masked index.
    unsafe { (*buf)[(i as usize) & (MAX_HEAD as usize - 1)] = b' ' };
    0
}

/// Overwrites the segment (which starts with the refused request) with the 403 answer,
/// same length (see `l7::FORBIDDEN_MIN`), and sends it back out of the same socket. A
/// segment too short or too long for that is dropped and the connection reset.
#[inline(always)]
fn deny(ctx: &SkBuffContext, state: &mut L7Sock, key: &mut u64, reason: u32) -> u32 {
    let len = ctx.len();
    if !(FORBIDDEN_MIN..=FORBIDDEN_MAX).contains(&len) {
        return reset(ctx, state, reason);
    }
    let Some(buf) = L7_BUF.get_ptr(slot()) else {
        return reset(ctx, state, reason);
    };
    let skb = ctx.skb.skb;
    let first = len.min(MAX_HEAD);
    let mut arg = len;
    // SAFETY: the callback reads `arg` only.
    unsafe { bpf_loop(first, answer_byte as *mut c_void, (&raw mut arg).cast(), 0) };
    // Bounds by arithmetic (the same value as `first`): the verifier keeps these where it
    // loses those of a fused range check.
    let n = ((first.wrapping_sub(FORBIDDEN_MIN) & (MAX_HEAD - 1)).min(MAX_HEAD - FORBIDDEN_MIN)) + FORBIDDEN_MIN;
    // SAFETY: n bytes of the MAX_HEAD-byte buffer, n in FORBIDDEN_MIN..=MAX_HEAD.
    let mut stored = unsafe { bpf_skb_store_bytes(skb.cast(), 0, buf.cast(), n, 0) };
    if len > MAX_HEAD {
        // The rest is padding: spaces, a buffer at a time.
        // SAFETY: the callback writes the per-CPU buffer only.
        unsafe { bpf_loop(MAX_HEAD, space_byte as *mut c_void, core::ptr::null_mut(), 0) };
        let mut at = MAX_HEAD;
        while at < FORBIDDEN_MAX && stored == 0 {
            if at >= len {
                break;
            }
            let m = ((len - at - 1) & (MAX_HEAD - 1)).min(MAX_HEAD - 1) + 1;
            let m = if len - at < MAX_HEAD { m } else { MAX_HEAD };
            // SAFETY: m in 1..=MAX_HEAD bytes of the buffer.
            stored = unsafe { bpf_skb_store_bytes(skb.cast(), at, buf.cast(), m, 0) };
            at += MAX_HEAD;
        }
    }
    if stored != 0 {
        return reset(ctx, state, reason); // no answer possible
    }
    count(reason);
    state.mode = mode::DENIED;
    // Flags 0: to the socket's egress, i.e. back to the client.
    if L7_SOCKS.redirect_skb(ctx, key, 0) as u32 == SK_PASS {
        return SK_PASS;
    }
    SK_DROP
}
