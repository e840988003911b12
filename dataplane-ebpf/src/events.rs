//! Flow and drop events to the agent through the `EVENTS` ring buffer.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use moat_dataplane_common::{metric, verdict, DropCount, DropKey, FlowEvent, DROP_EVENTS_PER_SEC};

use crate::maps::{count, DROPS, EVENTS, EVENT_RATE};

/// What the program learned about a packet so far; an event is built from it.
#[derive(Clone, Copy, Default)]
pub struct Meta {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub hook: u8,
    pub direction: u8,
    pub reevaluated: u8,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub cookie: u32,
    pub ifindex: u32,
    pub len: u32,
    /// An ICMP error (unreachable, time exceeded, parameter problem).
    pub icmp_error: bool,
    /// An ICMP error's quoted tuple (`proto` 0: not parseable).
    pub quoted: crate::packet::Quoted,
    /// A first fragment's key and its ports as parsed (before any service translation).
    pub first_fragment: bool,
    pub frag_key: moat_dataplane_common::FragKey,
    pub frag_ports: (u16, u16),
}

#[inline(always)]
pub fn emit(m: &Meta, verdict: u8, reason: u32) {
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        count(metric::EVENTS_LOST);
        return;
    };
    slot.write(FlowEvent {
        // SAFETY: plain helper call.
        ts: unsafe { bpf_ktime_get_ns() },
        saddr: m.saddr,
        daddr: m.daddr,
        sport: m.sport,
        dport: m.dport,
        src_identity: m.src_identity,
        dst_identity: m.dst_identity,
        cookie: m.cookie,
        ifindex: m.ifindex,
        verdict,
        reason: reason as u8,
        proto: m.proto,
        tcp_flags: m.tcp_flags,
        hook: m.hook,
        direction: m.direction,
        reevaluated: m.reevaluated,
        _pad: 0,
        len: m.len,
        orig_daddr: 0,
        orig_dport: 0,
        _pad2: 0,
        netns_cookie: 0,
    });
    slot.submit(0);
}

/// A dropped packet: counted exactly per (pod veth, reason), reported as an event within
/// that pair's budget of `DROP_EVENTS_PER_SEC` per second and CPU. A flood from one pod
/// costs the agent a few events a second instead of one per packet.
#[inline(always)]
pub fn emit_drop(m: &Meta, reason: u32) {
    let key = DropKey {
        ifindex: m.ifindex,
        reason,
    };
    let slot = match DROPS.get_ptr_mut(&key) {
        Some(p) => p,
        None => {
            let _ = DROPS.insert(&key, &DropCount::default(), 0);
            match DROPS.get_ptr_mut(&key) {
                Some(p) => p,
                None => {
                    emit(m, verdict::DROPPED, reason);
                    return;
                }
            }
        }
    };
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    let c = unsafe { &mut *slot };
    c.packets += 1;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(c.window_start) >= 1_000_000_000 {
        c.window_start = now;
        c.events = 0;
    }
    if c.events < DROP_EVENTS_PER_SEC {
        c.events += 1;
        emit(m, verdict::DROPPED, reason);
    } else {
        c.suppressed += 1;
    }
}

/// One event of the per-CPU budget of `per_sec` per second (allowed flows, translations).
#[inline(always)]
pub fn take_token(per_sec: u32, now: u64) -> bool {
    if per_sec == 0 {
        return false;
    }
    let Some(rate) = EVENT_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let r = unsafe { &mut *rate };
    if now.wrapping_sub(r[0]) >= 1_000_000_000 {
        r[0] = now;
        r[1] = 0;
    }
    if r[1] >= u64::from(per_sec) {
        return false;
    }
    r[1] += 1;
    true
}

/// Events for allowed new flows, at most `per_sec` per second on each CPU.
#[inline(always)]
pub fn emit_allowed(m: &Meta, per_sec: u32, now: u64) {
    if take_token(per_sec, now) {
        emit(m, verdict::FORWARDED, 0);
    }
}

/// A service translation: `ev` names the backend as destination and the frontend in
/// `orig_*`. Rate-limited like allowed-flow events (one per new connection otherwise).
#[inline(always)]
pub fn emit_translation(ev: &FlowEvent) {
    if !take_token(crate::maps::config().flow_events_per_sec, ev.ts) {
        return;
    }
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut slot) => {
            slot.write(*ev);
            slot.submit(0);
        }
        None => count(metric::EVENTS_LOST),
    }
}
