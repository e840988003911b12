//! Connection tracking and the per-flow policy verdict.
//!
//! A flow's first packet is checked against policy; an allowed flow gets a `CT` entry
//! keyed by its tuple, and later packets in either direction pass on that entry. The
//! entry remembers the policy revision its verdict was made under: after any policy or
//! identity change (the agent bumps `Config::policy_rev`) the next packet re-checks the
//! flow, and a flow that is no longer allowed is dropped and forgotten.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use moat_dataplane_common::conntrack::{expired, touch};
use moat_dataplane_common::{ct_flag, metric, verdict, Config, CtEntry, CtKey};

use crate::events::{emit, emit_allowed, Meta};
use crate::maps::{config, count, CT, ENDPOINTS};
use crate::packet::{TCP_FIN, TCP_RST};
use crate::policy::{decide, identity_of, IDENTITY_WORLD};

/// Re-checks an existing flow (original tuple `orig`) under the current policy.
/// Identities are looked up again: a relabelled pod may have a new one.
#[inline(always)]
fn recheck(cfg: &Config, e: &mut CtEntry, orig: &CtKey, m: &mut Meta, local_src: u32) -> Result<(), u32> {
    count(metric::CT_REEVALUATED);
    let src = identity_of(orig.saddr, local_src);
    let dst = identity_of(orig.daddr, IDENTITY_WORLD);
    let d = decide(
        cfg,
        src,
        dst,
        orig.proto,
        orig.dport,
        e.flags & ct_flag::CHECKED_EGRESS != 0,
        e.flags & ct_flag::CHECKED_INGRESS != 0,
    );
    m.reevaluated = 1;
    m.cookie = d.cookie;
    m.direction = d.direction;
    if !d.allowed && cfg.flags & moat_dataplane_common::config_flag::AUDIT == 0 {
        let _ = CT.remove(orig);
        return Err(metric::DROP_POLICY_DENIED);
    }
    if d.allowed {
        e.flags &= !ct_flag::AUDIT;
    } else if e.flags & ct_flag::AUDIT == 0 {
        // Audit mode: a flow the new policy would cut is reported once, like a new one.
        e.flags |= ct_flag::AUDIT;
        count(metric::FLOW_AUDIT);
        let flow = Meta {
            saddr: orig.saddr,
            daddr: orig.daddr,
            sport: orig.sport,
            dport: orig.dport,
            src_identity: src,
            dst_identity: dst,
            ..*m
        };
        emit(&flow, verdict::AUDIT, metric::DROP_POLICY_DENIED);
    }
    e.src_identity = src;
    e.dst_identity = dst;
    e.cookie = d.cookie;
    e.policy_rev = cfg.policy_rev;
    Ok(())
}

/// An ICMP error about a tracked flow belongs to that flow (as Linux conntrack's
/// RELATED): "port unreachable" for a UDP request, "fragmentation needed" for path MTU
/// discovery, "time exceeded" for traceroute pass wherever the flow itself passes,
/// without a policy rule for ICMP. The quoted packet is one the receiver of the error
/// sent: if it went in the flow's original direction the error travels as a reply.
///
/// Like nf_conntrack, the error must go to the quoted packet's sender. It must also come
/// from that packet's destination or from a router on the way, and a local pod is never
/// a router: a pod may only send errors about its own flows. Otherwise any pod with one
/// allowed flow could push forged errors past policy, or break other pods' flows.
#[inline(always)]
fn related(m: &mut Meta, now: u64) -> bool {
    let q = m.quoted;
    if q.proto == 0 || m.daddr != q.saddr {
        return false;
    }
    // SAFETY: only tests presence.
    if m.saddr != q.daddr && unsafe { ENDPOINTS.get(&m.saddr) }.is_some() {
        return false;
    }
    let quoted = CtKey {
        saddr: q.saddr,
        daddr: q.daddr,
        sport: q.sport,
        dport: q.dport,
        proto: q.proto,
        _pad: [0; 3],
    };
    let reversed = CtKey {
        saddr: q.daddr,
        daddr: q.saddr,
        sport: q.dport,
        dport: q.sport,
        ..quoted
    };
    // SAFETY: copied out at once.
    if let Some(e) = unsafe { CT.get(&quoted) }.copied() {
        if !expired(&e, q.proto, now) {
            (m.src_identity, m.dst_identity, m.cookie) = (e.dst_identity, e.src_identity, e.cookie);
            return true;
        }
    }
    // SAFETY: copied out at once.
    if let Some(e) = unsafe { CT.get(&reversed) }.copied() {
        if !expired(&e, q.proto, now) {
            (m.src_identity, m.dst_identity, m.cookie) = (e.src_identity, e.dst_identity, e.cookie);
            return true;
        }
    }
    false
}

/// Conntrack and policy for one packet. `egress`/`ingress` say which policies a new
/// flow is checked against here (source pod's egress, destination pod's ingress).
/// `src_fallback` is the identity of the source when the ipcache has none.
#[inline(always)]
pub fn track(m: &mut Meta, egress: bool, ingress: bool, src_fallback: u32) -> Result<(), u32> {
    let cfg = config();
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = CtKey {
        saddr: m.saddr,
        daddr: m.daddr,
        sport: m.sport,
        dport: m.dport,
        proto: m.proto,
        _pad: [0; 3],
    };
    let fin_rst = m.tcp_flags & (TCP_FIN | TCP_RST);

    if m.icmp_error {
        // An error passes with its flow or not at all: policy has no ICMP rules, so a
        // new-flow check would let any error through to a pod that is not isolated.
        if related(m, now) {
            count(metric::CT_RELATED);
            return Ok(());
        }
        return Err(metric::DROP_ICMP_UNRELATED);
    }

    if let Some(p) = CT.get_ptr_mut(&key) {
        // SAFETY: the entry stays valid while this program runs (RCU).
        let e = unsafe { &mut *p };
        if !expired(e, m.proto, now) {
            m.cookie = e.cookie;
            // Checks this hook requires that the entry's verdict did not include (the
            // destination became a local pod after the flow started): make them now.
            let mut required = 0;
            if egress {
                required |= ct_flag::CHECKED_EGRESS;
            }
            if ingress {
                required |= ct_flag::CHECKED_INGRESS;
            }
            if e.policy_rev != cfg.policy_rev || required & !e.flags != 0 {
                e.flags |= required;
                recheck(&cfg, e, &key, m, src_fallback)?;
            }
            m.src_identity = e.src_identity;
            m.dst_identity = e.dst_identity;
            touch(e, now, m.tcp_flags, false);
            count(metric::CT_ESTABLISHED);
            return Ok(());
        }
    }

    let rkey = CtKey {
        saddr: m.daddr,
        daddr: m.saddr,
        sport: m.dport,
        dport: m.sport,
        proto: m.proto,
        _pad: [0; 3],
    };
    if let Some(p) = CT.get_ptr_mut(&rkey) {
        // SAFETY: as above.
        let e = unsafe { &mut *p };
        if !expired(e, m.proto, now) {
            m.cookie = e.cookie;
            if e.policy_rev != cfg.policy_rev {
                recheck(&cfg, e, &rkey, m, IDENTITY_WORLD)?;
            }
            // A reply travels against the flow: its source is the flow's destination.
            m.src_identity = e.dst_identity;
            m.dst_identity = e.src_identity;
            touch(e, now, m.tcp_flags, true);
            count(metric::CT_REPLY);
            return Ok(());
        }
    }

    // A new flow: decide once, remember the verdict.
    m.src_identity = identity_of(m.saddr, src_fallback);
    m.dst_identity = identity_of(m.daddr, IDENTITY_WORLD);
    let d = decide(&cfg, m.src_identity, m.dst_identity, m.proto, m.dport, egress, ingress);
    m.cookie = d.cookie;
    m.direction = d.direction;
    let audit = !d.allowed && cfg.flags & moat_dataplane_common::config_flag::AUDIT != 0;
    if !d.allowed && !audit {
        return Err(metric::DROP_POLICY_DENIED);
    }
    let mut flags = 0;
    if egress {
        flags |= ct_flag::CHECKED_EGRESS;
    }
    if ingress {
        flags |= ct_flag::CHECKED_INGRESS;
    }
    if audit {
        flags |= ct_flag::AUDIT;
    }
    if fin_rst & TCP_RST != 0 {
        flags |= ct_flag::RST;
    }
    let entry = CtEntry {
        last_seen: now,
        created: now,
        flags,
        policy_rev: cfg.policy_rev,
        src_identity: m.src_identity,
        dst_identity: m.dst_identity,
        cookie: d.cookie,
        _pad: 0,
        packets_orig: 1,
        packets_reply: 0,
    };
    if CT.insert(&key, &entry, 0).is_err() {
        return Err(metric::DROP_CT_INSERT_FAILED);
    }
    if audit {
        count(metric::FLOW_AUDIT);
        emit(m, verdict::AUDIT, metric::DROP_POLICY_DENIED);
    } else {
        count(metric::FLOW_NEW_ALLOWED);
        emit_allowed(m, cfg.flow_events_per_sec, now);
    }
    Ok(())
}
