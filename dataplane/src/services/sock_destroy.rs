//! Closing UDP sockets that the socket load balancer connected to a backend which is
//! now gone.
//!
//! A connected UDP socket is translated once, at `connect`. When its backend is removed,
//! its datagrams would keep going to a dead address, or to whichever pod gets that IP
//! next. kube-proxy solves this by flushing the UDP conntrack entries; Cilium destroys
//! the sockets. We do what Cilium does. Through `sock_diag` (the netlink-packet-sock-diag
//! messages over a netlink-sys socket) in each served network namespace we list IPv4 UDP
//! sockets whose peer is the removed backend. Only the ones the socket LB translated
//! (they have a `SOCK_REVNAT` entry for that cookie and backend) are destroyed. The
//! application's next call then fails with ECONNABORTED, and resolvers and clients
//! retry on a new socket, which gets a live backend.
use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// A UDP socket connected to a backend: its identity for `SOCK_DESTROY`.
#[derive(Clone)]
pub struct Connected {
    id: SocketId,
    pub cookie: u64,
}

fn diag_socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

/// Sends `msg` and hands each reply to `on_reply` until the dump ends or the request is
/// acknowledged; a netlink error is the kernel's errno.
fn request<T>(s: &Socket, msg: T, flags: u16, mut on_reply: impl FnMut(T)) -> io::Result<()>
where
    T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    s.send(&buf, 0)?;
    loop {
        let (bytes, _) = s.recv_from_full()?;
        let mut offset = 0;
        while offset < bytes.len() {
            let reply = NetlinkMessage::<T>::deserialize(&bytes[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "empty netlink message"));
            }
            offset += (len + 3) & !3;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    }
                }
                NetlinkPayload::InnerMessage(m) => on_reply(m),
                _ => {}
            }
        }
    }
}

fn udp_request(socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_UDP as u8,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    })
}

/// IPv4 UDP sockets in the current network namespace whose peer is one of `peers`.
fn connected_to(peers: &[(Ipv4Addr, u16)]) -> io::Result<Vec<(Connected, Ipv4Addr, u16)>> {
    let s = diag_socket()?;
    let mut found = Vec::new();
    request(&s, udp_request(SocketId::new_v4()), NLM_F_REQUEST | NLM_F_DUMP, |m| {
        let SockDiagMessage::InetResponse(r) = m else { return };
        let id = &r.header.socket_id;
        let IpAddr::V4(addr) = id.destination_address else {
            return;
        };
        let peer = (addr, id.destination_port);
        if peers.contains(&peer) {
            found.push((
                Connected {
                    id: id.clone(),
                    cookie: u64::from_ne_bytes(id.cookie),
                },
                peer.0,
                peer.1,
            ));
        }
    })?;
    Ok(found)
}

fn destroy(c: &Connected) -> io::Result<()> {
    let s = diag_socket()?;
    request(
        &s,
        SockDiagDestroy::new(udp_request(c.id.clone())),
        NLM_F_REQUEST | NLM_F_ACK,
        |_| {},
    )
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

/// Destroys the TCP socket `local` ↔ `remote` with socket cookie `cookie` in the network
/// namespace at `netns` (the
/// peer gets a reset): what the HTTP path asks for when the kernel cannot answer a
/// refused request.
///
/// # Errors
/// The socket is gone already (ENOENT), or sock_diag refused.
pub fn destroy_tcp(netns: &Path, local: (Ipv4Addr, u16), remote: (Ipv4Addr, u16), cookie: u64) -> io::Result<()> {
    in_netns(Some(netns), || {
        let mut id = SocketId::new_v4();
        id.source_address = IpAddr::V4(local.0);
        id.source_port = local.1;
        id.destination_address = IpAddr::V4(remote.0);
        id.destination_port = remote.1;
        // The exact socket: without its cookie the kernel would fall back to the
        // listener on the same port.
        id.cookie = cookie.to_ne_bytes();
        let req = SockDiagMessage::InetRequest(InetRequest {
            family: libc::AF_INET as u8,
            protocol: libc::IPPROTO_TCP as u8,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: id,
        });
        request(
            &diag_socket()?,
            SockDiagDestroy::new(req),
            NLM_F_REQUEST | NLM_F_ACK,
            |_| {},
        )
    })
}

/// Destroys every TCP connection (not listeners) whose local end is `local`, in the
/// network namespace at `netns`: connections to a server port opened before it came
/// under HTTP rules were never put under them, so they are reset and the clients
/// reconnect into enforcement. Returns how many were destroyed.
///
/// # Errors
/// When sock_diag cannot list the sockets.
pub fn destroy_tcp_to(netns: &Path, local: (Ipv4Addr, u16)) -> io::Result<usize> {
    in_netns(Some(netns), || {
        let s = diag_socket()?;
        let mut found = Vec::new();
        let dump = SockDiagMessage::InetRequest(InetRequest {
            family: libc::AF_INET as u8,
            protocol: libc::IPPROTO_TCP as u8,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all() & !StateFlags::LISTEN,
            socket_id: SocketId::new_v4(),
        });
        request(&s, dump, NLM_F_REQUEST | NLM_F_DUMP, |m| {
            let SockDiagMessage::InetResponse(r) = m else { return };
            let id = &r.header.socket_id;
            if id.source_address == IpAddr::V4(local.0) && id.source_port == local.1 {
                found.push(id.clone());
            }
        })?;
        let mut n = 0;
        for id in found {
            let req = SockDiagMessage::InetRequest(InetRequest {
                family: libc::AF_INET as u8,
                protocol: libc::IPPROTO_TCP as u8,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: id,
            });
            if request(
                &diag_socket()?,
                SockDiagDestroy::new(req),
                NLM_F_REQUEST | NLM_F_ACK,
                |_| {},
            )
            .is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    })
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
