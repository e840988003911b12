//! The socket load balancer: cgroup `sock_addr` hooks that translate a service address
//! to a backend once per connection (connect) or datagram (sendmsg), before any packet
//! exists, and translate the backend back to the service address where the application
//! can see it (recvmsg for UDP replies, getpeername). Attached at the cgroup root, so pods
//! and the node itself are covered; packets then carry the backend address, and policy
//! applies to the backend's identity like to any pod-to-pod flow.
use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
    EbpfContext as _,
};
use moat_dataplane_common::{hook, metric, verdict, FlowEvent, ServiceKey, SockRevKey, SockRevValue};

use crate::maps::{count, BACKENDS, SERVICES, SOCK_KEYS, SOCK_LB_NETNS, SOCK_REVNAT};
use crate::select;

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const IPPROTO_UDP: u32 = 17;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

/// A socket is gone: its reverse translation goes with it.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: plain helper call on the hook's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    if let Some(key) = unsafe { SOCK_KEYS.get(&cookie) }.copied() {
        let _ = SOCK_REVNAT.remove(&key);
        let _ = SOCK_KEYS.remove(&cookie);
    }
    ALLOW
}

/// Picks the backend for a new connection to a frontend, or rejects when it has none.
#[inline(always)]
fn translate(ctx: &SockAddrContext) -> i32 {
    // SAFETY: plain helper call on the hook's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: only tests presence.
    if unsafe { SOCK_LB_NETNS.get(&netns) }.is_none() {
        return ALLOW; // not this node's namespace
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context the kernel passed; these fields are readable in these hooks.
    let (addr, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol) };
    let master_key = ServiceKey {
        addr,
        port,
        proto: proto as u8,
        _pad: 0,
        slot: 0,
        _pad2: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(master) = (unsafe { SERVICES.get(&master_key) }).copied() else {
        return ALLOW; // not a service address
    };
    // Every client of these hooks is inside the cluster.
    let Some((master_key, master)) = select::in_cluster(master_key, master) else {
        count(metric::DROP_NO_SERVICE_BACKEND);
        return REJECT;
    };
    if master.count == 0 {
        // No eligible backend: refuse now (the caller gets EPERM) instead of sending
        // packets nowhere.
        count(metric::DROP_NO_SERVICE_BACKEND);
        return REJECT;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let aff_key = select::client_netns(netns, &master);
    let Some(backend_id) = select::affine(&aff_key, &master).or_else(|| select::random(&master_key, &master)) else {
        count(metric::DROP_NO_SERVICE_BACKEND);
        return REJECT;
    };
    // SAFETY: copied out at once.
    let Some(be) = (unsafe { BACKENDS.get(&backend_id) }).copied() else {
        count(metric::DROP_NO_SERVICE_BACKEND);
        return REJECT;
    };
    select::remember(&aff_key, &master, backend_id);
    if proto == IPPROTO_UDP || be.addr != addr || be.port != port {
        // SAFETY: plain helper call on the hook's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let key = SockRevKey {
            cookie,
            addr: be.addr,
            port: be.port,
            _pad: 0,
        };
        if SOCK_REVNAT
            .insert(&key, &SockRevValue { addr, port, _pad: 0 }, 0)
            .is_ok()
        {
            // A UDP socket sending to several services keeps only its latest key here;
            // its older entries age out of the LRU.
            let _ = SOCK_KEYS.insert(&cookie, &key, 0);
        }
    }
    // SAFETY: writable fields in connect4/sendmsg4.
    unsafe {
        (*sa).user_ip4 = be.addr;
        (*sa).user_port = u32::from(be.port);
    }
    count(metric::SOCK_LB_TRANSLATED);
    crate::events::emit_translation(&FlowEvent {
        ts: now,
        daddr: be.addr,
        dport: be.port,
        proto: proto as u8,
        verdict: verdict::TRANSLATED,
        hook: hook::SOCKET_LB,
        orig_daddr: addr,
        orig_dport: port,
        netns_cookie: netns,
        ..FlowEvent::default()
    });
    ALLOW
}

/// Shows the service address instead of the backend's where the socket was translated.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: the context the kernel passed; readable in these hooks.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    // SAFETY: plain helper call on the hook's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        addr,
        port,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { SOCK_REVNAT.get(&key) }.copied() {
        // SAFETY: writable fields in recvmsg4/getpeername4.
        unsafe {
            (*sa).user_ip4 = v.addr;
            (*sa).user_port = u32::from(v.port);
        }
        count(metric::SOCK_LB_REVERSED);
    }
}
