//! Closing UDP sockets that the socket load balancer connected to a backend which is
//! now gone.
//!
//! A connected UDP socket is translated once, at `connect`. When its backend is removed,
//! its datagrams would keep going to a dead address, or to whichever pod gets that IP
//! next. kube-proxy solves this by flushing the UDP conntrack entries; Cilium destroys
//! the sockets. We do what Cilium does. Through `sock_diag` in each served network
//! namespace we list IPv4 UDP sockets whose peer is the removed backend. Only the ones
//! the socket LB translated (they have a `SOCK_REVNAT` entry for that cookie and
//! backend) are destroyed. The application's next call then fails with ECONNABORTED,
//! and resolvers and clients retry on a new socket, which gets a live backend.
use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// `struct inet_diag_sockid`: ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// The start of `struct inet_diag_msg` (what we read of it).
#[repr(C)]
#[derive(Clone, Copy)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

/// A UDP socket connected to a backend: its identity for `SOCK_DESTROY`.
#[derive(Clone, Copy)]
pub struct Connected {
    id: SockId,
    pub cookie: u64,
}

fn send(fd: &OwnedFd, kind: u16, flags: u16, req: &Request) -> io::Result<()> {
    let mut buf = vec![0u8; 16 + std::mem::size_of::<Request>()];
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&kind.to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: `Request` is plain old data of exactly this size.
    let body =
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(req).cast::<u8>(), std::mem::size_of::<Request>()) };
    buf[16..].copy_from_slice(body);
    // SAFETY: valid fd and buffer.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads netlink replies until DONE (a dump) or the first ERROR/ack. `on_msg` gets
/// each message's type and payload.
fn receive(fd: &OwnedFd, mut on_msg: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..usize::try_from(n).unwrap_or(0)];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < 16 || len > rest.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink message"));
            }
            let payload = &rest[16..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = payload
                        .get(0..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-errno))
                    };
                }
                _ => on_msg(kind, payload),
            }
            // Messages are 4-byte aligned.
            rest = &rest[(len.div_ceil(4) * 4).min(rest.len())..];
        }
    }
}

fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// IPv4 UDP sockets in the current network namespace whose peer is one of `peers`.
fn connected_to(peers: &[(Ipv4Addr, u16)]) -> io::Result<Vec<(Connected, Ipv4Addr, u16)>> {
    let fd = diag_socket()?;
    let req = Request {
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_UDP as u8,
        states: u32::MAX,
        ..Request::default()
    };
    send(
        &fd,
        SOCK_DIAG_BY_FAMILY,
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        &req,
    )?;
    let mut found = Vec::new();
    receive(&fd, |kind, payload| {
        if kind != SOCK_DIAG_BY_FAMILY || payload.len() < std::mem::size_of::<DiagMsg>() {
            return;
        }
        // SAFETY: length checked; `DiagMsg` is plain old data (read unaligned).
        let msg: DiagMsg = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
        let peer = (Ipv4Addr::from(u32::from_be(msg.id.dst[0])), u16::from_be(msg.id.dport));
        if peers.contains(&peer) {
            let cookie = u64::from(msg.id.cookie[0]) | (u64::from(msg.id.cookie[1]) << 32);
            found.push((Connected { id: msg.id, cookie }, peer.0, peer.1));
        }
    })?;
    Ok(found)
}

fn destroy(c: &Connected) -> io::Result<()> {
    let fd = diag_socket()?;
    let req = Request {
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_UDP as u8,
        states: u32::MAX,
        id: c.id,
        ..Request::default()
    };
    send(&fd, SOCK_DESTROY, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, &req)?;
    receive(&fd, |_, _| {})
}

/// In each network namespace (`None`: the agent's own), destroys the UDP sockets the
/// socket LB connected to a removed backend: `translated` holds (socket cookie,
/// backend address, port) of each. Returns how many were destroyed; failures are
/// logged, never fatal.
pub fn destroy_connected_udp(netns: &[Option<PathBuf>], translated: &BTreeSet<(u64, Ipv4Addr, u16)>) -> usize {
    let backends: Vec<(Ipv4Addr, u16)> = translated
        .iter()
        .map(|&(_, a, p)| (a, p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if backends.is_empty() {
        return 0;
    }
    let mut destroyed = 0;
    for ns in netns {
        match in_netns(ns.as_deref(), || {
            let mut n = 0;
            for (c, addr, port) in connected_to(&backends)? {
                if translated.contains(&(c.cookie, addr, port)) {
                    match destroy(&c) {
                        Ok(()) => n += 1,
                        Err(e) => tracing::warn!(error = %e, %addr, port, "destroying a UDP socket"),
                    }
                }
            }
            Ok(n)
        }) {
            Ok(n) => destroyed += n,
            Err(e) => tracing::warn!(netns = ?ns, error = %e, "listing UDP sockets connected to removed backends"),
        }
    }
    destroyed
}

/// Runs `f` in the network namespace at `path` (a scoped thread; `None`: right here).
fn in_netns<T: Send>(path: Option<&Path>, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let Some(path) = path else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(path)?;
            // SAFETY: a netns fd; only this short-lived thread moves.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}
