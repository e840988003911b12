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
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_loop, bpf_skb_load_bytes, bpf_skb_store_bytes,
        bpf_sock_ops_cb_flags_set,
    },
    macros::{map, sock_ops, stream_parser, stream_verdict},
    maps::{Array, HashMap, PerCpuArray, SockHash},
    programs::{SkBuffContext, SockOpsContext},
    EbpfContext as _,
};
use core::ffi::c_void;
use moat_dataplane_common::{
    direction, hook,
    http1::{self, Step, MAX_HEAD},
    l7::{
        forbidden_byte, mode, plan, DfaRow, L7Event, L7Port, L7PortKey, L7Sock, EVENT_HOST, EVENT_PATH, FORBIDDEN_MIN,
        L7F_AUDIT, MAX_DFA_ROWS, MAX_L7_PORTS, MAX_L7_SOCKS,
    },
    metric, verdict, FlowEvent,
};

use crate::maps::{count, EVENTS};

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
static L7_BUF: PerCpuArray<[u8; MAX_HEAD as usize]> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Per-CPU parser.
#[map(name = "moat_l7head_v1")]
static L7_HEAD: PerCpuArray<http1::Head> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Per-CPU DFA walk: [state, input length].
#[map(name = "moat_l7walk_v1")]
static L7_WALK: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Scratch slots per CPU. The stream programs run in process context (the strparser's
/// work) as well as in softirq, and a softirq may run another socket's parser on the same
/// CPU in the middle of one: each run takes its own slot (`Nest`), so one never clobbers
/// the other's parser, walk or buffer.
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

/// Runs the parser over the first `n` loaded bytes.
#[inline(always)]
fn parse(n: u32) -> Option<&'static http1::Head> {
    let head = L7_HEAD.get_ptr_mut(slot())?;
    let mut count = n;
    // SAFETY: the per-CPU slot; the callback reads `count` only.
    unsafe {
        (*head).reset();
        bpf_loop(
            n.div_ceil(PARSE_BATCH),
            parse_batch as *mut c_void,
            (&raw mut count).cast(),
            0,
        );
        Some(&*head)
    }
}

/// Per-CPU walk over the bytes available on one socket (see `http_parser`).
#[repr(C)]
struct Walk {
    /// Next byte to look at, relative to the segment start.
    p: u32,
    /// Bytes available (from the segment start).
    len: u32,
    mode: u32,
    result: u32,
    left: u64,
    reason: u32,
    port: L7PortKey,
    allowed: u32,
    audited: u32,
    /// Where this parser run started (a refusal after it is reported by the next run).
    base: u32,
}

#[map(name = "moat_l7units_v1")]
static L7_UNITS: PerCpuArray<Walk> = PerCpuArray::with_max_entries(SLOTS, 0);

// Walk results.
const GOING: u32 = 0;
const COMPLETE: u32 = 1;
const NEED_MORE: u32 = 2;
const DENY_HERE: u32 = 3;
const ECONNRESET: i32 = 104;
const TCP_RST: u8 = 0x04;
/// Heads, bodies or chunks one parser run walks before it cuts the message there.
const MAX_UNITS: u32 = 64;

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

/// One unit (a head, a run of body bytes, a chunk-size line or a CRLF) at `w.p`: a
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
        mode::CHUNK_CRLF | mode::TRAILER => {
            if avail < 2 {
                return stop(w, NEED_MORE, 0);
            }
            let mut crlf = [0u8; 2];
            // SAFETY: two bytes into a two-byte stack buffer.
            let ok = unsafe { bpf_skb_load_bytes(skb as *const c_void, w.p, crlf.as_mut_ptr().cast(), 2) } == 0;
            if !ok || crlf != *b"\r\n" {
                return stop(w, DENY_HERE, metric::DROP_L7_CHUNK);
            }
            w.p += 2;
            w.mode = if w.mode == mode::TRAILER {
                mode::HEAD
            } else {
                mode::CHUNK_SIZE
            };
            0
        }
        mode::CHUNK_SIZE => chunk_line(w, skb, avail),
        mode::HEAD => head_unit(w, skb, avail),
        _ => stop(w, DENY_HERE, metric::DROP_L7_AFTER_DENY),
    }
}

/// `HEX CRLF` (1–8 digits, no extensions) at `w.p`.
#[inline(always)]
fn chunk_line(w: &mut Walk, skb: *mut aya_ebpf::bindings::__sk_buff, avail: u32) -> i64 {
    let mut line = [0u8; 16];
    // 1..=CHUNK_LINE by arithmetic: the verifier keeps these bounds (avail is ≥ 1 here).
    let n = avail.saturating_sub(1).min(CHUNK_LINE - 1) + 1;
    // SAFETY: n in 1..=CHUNK_LINE bytes into a 16-byte stack buffer.
    if unsafe { bpf_skb_load_bytes(skb as *const c_void, w.p, line.as_mut_ptr().cast(), n) } != 0 {
        return stop(w, DENY_HERE, metric::DROP_L7_CHUNK);
    }
    let mut size = 0u64;
    let mut digits = 0u32;
    let mut cr = 0u32; // index of the CR + 1
    let mut k = 0u32;
    while k < CHUNK_LINE {
        if k >= n {
            break;
        }
        let b = line[(k & 15) as usize];
        if b == b'\r' {
            cr = k + 1;
            break;
        }
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return stop(w, DENY_HERE, metric::DROP_L7_CHUNK),
        };
        if digits >= 8 {
            return stop(w, DENY_HERE, metric::DROP_L7_CHUNK);
        }
        size = size * 16 + u64::from(d);
        digits += 1;
        k += 1;
    }
    if cr == 0 {
        return if n < CHUNK_LINE {
            stop(w, NEED_MORE, 0)
        } else {
            stop(w, DENY_HERE, metric::DROP_L7_CHUNK)
        };
    }
    if digits == 0 {
        return stop(w, DENY_HERE, metric::DROP_L7_CHUNK);
    }
    if cr >= n {
        return stop(w, NEED_MORE, 0); // the LF has not arrived
    }
    if line[(cr & 15) as usize] != b'\n' {
        return stop(w, DENY_HERE, metric::DROP_L7_CHUNK);
    }
    w.p += cr + 1;
    if size == 0 {
        w.mode = mode::TRAILER;
    } else {
        w.mode = mode::CHUNK_DATA;
        w.left = size;
    }
    0
}

/// A request head at `w.p`: parse, match, advance past it or stop.
#[inline(always)]
fn head_unit(w: &mut Walk, skb: *mut aya_ebpf::bindings::__sk_buff, avail: u32) -> i64 {
    let n = load_at(skb, w.p, avail);
    let Some(head) = parse(n) else {
        return stop(
            w,
            DENY_HERE,
            metric::DROP_L7_UNPARSABLE + u32::from(http1::reject::MALFORMED),
        );
    };
    match head.outcome() {
        Step::More if avail < MAX_HEAD => return stop(w, NEED_MORE, 0),
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
                // Reported once: by the run in which the refused request comes first.
                if w.p == w.base {
                    emit_http(w, skb, head, verdict::DROPPED, metric::DROP_L7_DENIED, 0);
                }
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
        http1::body::CHUNKED => w.mode = mode::CHUNK_SIZE,
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

/// Frames the next message: walks the units from the socket's committed state and
/// records the plan for the verdict. A message ends where the bytes available end, or
/// just before a refused request (the requests before it still pass), or after
/// `MAX_UNITS` units.
#[stream_parser]
pub fn http_parser(ctx: SkBuffContext) -> u32 {
    let len = ctx.len();
    let Some(_nest) = Nest::enter() else {
        // No scratch slot: refuse the bytes rather than pass them unjudged.
        count(metric::DROP_L7_NO_STATE);
        return ECONNRESET.wrapping_neg() as u32;
    };
    let Some(state) = L7_STATE.get_ptr_mut(&cookie(&ctx)) else {
        return len; // the verdict drops it
    };
    // SAFETY: this socket's entry; its messages are framed one at a time.
    let state = unsafe { &mut *state };
    let base = state.base;
    if base >= len {
        return 0;
    }
    if state.mode == mode::DENIED {
        state.plan = plan::DROP;
        state.msg_len = len - base;
        state.next_base = 0;
        state.next_mode = mode::DENIED;
        return len - base;
    }
    let Some(w) = L7_UNITS.get_ptr_mut(slot()) else {
        return len;
    };
    // SAFETY: per-CPU slot.
    unsafe {
        (*w).p = base;
        (*w).len = len;
        (*w).mode = state.mode;
        (*w).left = state.left;
        (*w).result = GOING;
        (*w).reason = 0;
        (*w).port = state.port;
        (*w).allowed = 0;
        (*w).audited = 0;
        (*w).base = base;
    }
    let mut arg = SkbArg { skb: ctx.skb.skb };
    // SAFETY: the callback reads `arg` only.
    unsafe { bpf_loop(MAX_UNITS, walk_unit as *mut c_void, (&raw mut arg).cast(), 0) };
    // SAFETY: per-CPU slot, read after the callbacks wrote it.
    let w = unsafe { &*w };
    let p = w.p.min(len);
    let cut = match w.result {
        COMPLETE => len,
        DENY_HERE if p <= base && base > 0 => {
            // A refused request pipelined behind requests that just passed: their answers
            // are still to come from the server, and a 403 now would overtake them (the
            // client would take it for the answer to an allowed request). The kernel
            // cannot hold it back, so the connection is reset instead: the stream parser
            // stops for good and the socket reports ECONNRESET.
            return reset(&ctx, state, w.reason);
        }
        DENY_HERE if p <= base && len - base < FORBIDDEN_MIN => {
            // Too short to be rewritten into any complete answer: the connection is reset
            // instead of left waiting.
            return reset(&ctx, state, w.reason);
        }
        DENY_HERE if p <= base => {
            // The refused request starts this message: it is answered, and what follows
            // it (up to MAX_HEAD bytes in this message) goes with it.
            let msg = (len - base).min(MAX_HEAD);
            state.plan = plan::DENY;
            state.reason = w.reason;
            state.msg_len = msg;
            state.next_base = if base + msg < len { base + msg } else { 0 };
            state.next_mode = mode::DENIED;
            return msg;
        }
        NEED_MORE if p <= base => return 0,
        // A refused request, a partial unit or the unit budget after whole units: those
        // pass now; the rest is a message of its own in the same segment.
        _ => p,
    };
    state.plan = plan::PASS;
    state.msg_len = cut - base;
    state.next_base = if cut < len { cut } else { 0 };
    state.next_mode = w.mode;
    state.next_left = w.left;
    state.next_requests = w.allowed + w.audited;
    add(metric::L7_ALLOWED, w.allowed);
    add(metric::L7_AUDIT, w.audited);
    cut - base
}

/// Stops the stream parser for good (nothing more reaches the server) and asks the agent
/// to reset the connection: a `FlowEvent` on the HTTP hook with RST in its flags. The
/// kernel gives sk_skb programs no way to reset a socket; the agent destroys it through
/// sock_diag in the pod's netns.
#[inline(always)]
fn reset(ctx: &SkBuffContext, state: &mut L7Sock, reason: u32) -> u32 {
    count(reason);
    state.mode = mode::DENIED;
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
            netns_cookie: cookie(ctx),
            ..FlowEvent::default()
        });
        slot.submit(0);
    } else {
        count(metric::EVENTS_LOST);
    }
    ECONNRESET.wrapping_neg() as u32
}

#[inline(always)]
fn add(slot: u32, n: u32) {
    if let Some(c) = crate::maps::METRICS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += u64::from(n) };
    }
}

/// Applies the parser's plan to the message it framed.
#[stream_verdict]
pub fn http_verdict(ctx: SkBuffContext) -> u32 {
    let mut key = cookie(&ctx);
    let Some(_nest) = Nest::enter() else {
        count(metric::DROP_L7_NO_STATE);
        return SK_DROP;
    };
    let Some(state) = L7_STATE.get_ptr_mut(&key) else {
        count(metric::DROP_L7_NO_STATE);
        return SK_DROP;
    };
    // SAFETY: this socket's entry; its messages are judged one at a time.
    let state = unsafe { &mut *state };
    let base = state.base;
    state.base = state.next_base;
    state.mode = state.next_mode;
    match state.plan {
        plan::PASS => {
            state.left = state.next_left;
            state.requests += state.next_requests;
            SK_PASS
        }
        plan::DENY => deny(&ctx, state, &mut key, base),
        _ => {
            count(metric::DROP_L7_AFTER_DENY);
            SK_DROP
        }
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

/// Overwrites the message (at `base` in its segment) with the 403 answer, same length
/// (see `l7::FORBIDDEN_MIN`), and sends it back out of the same socket. A message too
/// short for an answer is dropped unanswered.
#[inline(always)]
fn deny(ctx: &SkBuffContext, state: &mut L7Sock, key: &mut u64, base: u32) -> u32 {
    count(state.reason);
    state.mode = mode::DENIED;
    let len = state.msg_len;
    if !(FORBIDDEN_MIN..=MAX_HEAD).contains(&len) {
        return SK_DROP;
    }
    let Some(buf) = L7_BUF.get_ptr(slot()) else {
        return SK_DROP;
    };
    let mut arg = len;
    // SAFETY: the callback reads `arg` only.
    unsafe { bpf_loop(len, answer_byte as *mut c_void, (&raw mut arg).cast(), 0) };
    // Bounds by arithmetic (the same value as `len`, checked above): the verifier keeps
    // these where it loses those of a fused range check.
    let n = ((len.wrapping_sub(FORBIDDEN_MIN) & (MAX_HEAD - 1)).min(MAX_HEAD - FORBIDDEN_MIN)) + FORBIDDEN_MIN;
    // SAFETY: n bytes of the MAX_HEAD-byte buffer, n in FORBIDDEN_MIN..=MAX_HEAD.
    let stored = unsafe { bpf_skb_store_bytes(ctx.skb.skb.cast(), base, buf.cast(), n, 0) };
    if stored != 0 {
        return SK_DROP; // no answer possible: the request still never reaches the server
    }
    // Flags 0: to the socket's egress, i.e. back to the client.
    if L7_SOCKS.redirect_skb(ctx, key, 0) as u32 == SK_PASS {
        return SK_PASS;
    }
    SK_DROP
}
