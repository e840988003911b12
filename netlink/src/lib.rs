//! Network wiring over rtnetlink, synchronously: the CNI plugin and the agent create veth
//! pairs, addresses, routes and neighbour entries and query links without spawning
//! iproute2. A request is one netlink message and its acknowledgement; a [`Netlink`]
//! socket belongs to the network namespace it was opened in ([`Netlink::open_in`] opens
//! one in a pod's namespace from a short-lived thread, so the caller's thread never
//! changes namespace).
//!
//! Errors carry the kernel's errno ([`Error::errno`]), so callers match `ENODEV`,
//! `EEXIST`, … instead of parsing messages.
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A failed netlink request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the request.
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be opened, or its replies could not be read.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The errno the kernel answered with (`libc::ENODEV`, …), if it answered.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            Self::Io { .. } => None,
        }
    }

    /// Whether the object the request named does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV | libc::ENOENT | libc::ESRCH))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A route socket in one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the caller's network namespace.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io("opening a netlink route socket"))?;
        socket.bind_auto().map_err(io("binding the netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connecting the netlink socket"))?;
        // Failed requests are reported in full (extended ack), lost replies are errors.
        let _ = socket.set_ext_ack(true);
        Ok(Self { socket, seq: 0 })
    }

    /// A socket in the network namespace `netns` (an nsfs file such as `/run/netns/x` or
    /// `/proc/PID/ns/net`). A netlink socket stays in the namespace it was created in, so
    /// a helper thread joins `netns`, opens the socket and ends.
    ///
    /// # Errors
    /// When the namespace cannot be joined or the socket opened.
    pub fn open_in(netns: &File) -> Result<Self> {
        let fd = netns.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this helper thread only; `fd` is a valid open nsfs fd.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io("joining the network namespace")(std::io::Error::last_os_error()));
                }
                Self::open()
            })
            .join()
            .unwrap_or_else(|_| Err(io("netlink helper thread")(std::io::Error::other("panicked"))))
        })
    }

    /// Sends one request and collects the replies until the acknowledgement (or, for a
    /// dump, the end of the dump).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io(format!("{what}: sending")))?;
        let mut replies = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full().map_err(io(format!("{what}: receiving")))?;
            let mut offset = 0;
            while offset < bytes.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|e| io(format!("{what}: decoding the reply"))(std::io::Error::other(e.to_string())))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(Error::Kernel {
                                what: what.to_string(),
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Creates a veth pair: `host` here, `peer` moved into the namespace `peer_netns`.
    /// Fails with `EEXIST` when `host` exists.
    ///
    /// # Errors
    /// What the kernel answered.
    pub fn add_veth(
        &mut self,
        host: &VethEnd<'_>,
        peer: &VethEnd<'_>,
        peer_netns: &File,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.name.to_string()));
        peer_msg.attributes.push(LinkAttribute::Address(peer.mac.to_vec()));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.name.to_string()));
        msg.attributes.push(LinkAttribute::Address(host.mac.to_vec()));
        if let Some(mtu) = mtu {
            peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("creating veth {} with peer {}", host.name, peer.name),
        )
        .map(drop)
    }

    /// The ifindex of `name`; `Ok(None)` when there is no such link.
    ///
    /// # Errors
    /// Other kernel errors.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, &format!("looking up link {name}")) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ifindex and MAC address of `name`; `Ok(None)` when there is no such link.
    ///
    /// # Errors
    /// Other kernel errors.
    pub fn link(&mut self, name: &str) -> Result<Option<(u32, Option<[u8; 6]>)>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, &format!("looking up link {name}")) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let mac = l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::Address(b) => b.as_slice().try_into().ok(),
                        _ => None,
                    });
                    Some((l.header.index, mac))
                }
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ifindex of `name`, which must exist.
    ///
    /// # Errors
    /// `ENODEV` when it does not.
    pub fn require_link(&mut self, name: &str) -> Result<u32> {
        self.link_index(name)?.ok_or_else(|| Error::Kernel {
            what: format!("looking up link {name}"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    /// Sets link `index` up.
    ///
    /// # Errors
    /// What the kernel answered.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("setting link {index} up"),
        )
        .map(drop)
    }

    /// Deletes the link `name`. `Ok(false)` when it did not exist.
    ///
    /// # Errors
    /// Other kernel errors.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(msg), 0, &format!("deleting link {name}")) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `ip/prefix` to link `index`.
    ///
    /// # Errors
    /// What the kernel answered (`EEXIST` when present).
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(ip.into()));
        msg.attributes.push(AddressAttribute::Address(ip.into()));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding address {ip}/{prefix}"),
        )
        .map(drop)
    }

    /// The IPv4 addresses (`a.b.c.d/len`) on link `index`.
    ///
    /// # Errors
    /// What the kernel answered.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP, "listing addresses")?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds or replaces a route in the main table: `dst/len` via `gateway` (none: on
    /// link) out of link `oif`.
    ///
    /// # Errors
    /// What the kernel answered.
    pub fn replace_route(&mut self, dst: Ipv4Addr, len: u8, gateway: Option<Ipv4Addr>, oif: u32) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gw) = gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("adding route {dst}/{len}"),
        )
        .map(drop)
    }

    /// Whether the main table has an IPv4 default route.
    ///
    /// # Errors
    /// What the kernel answered.
    pub fn has_default_route(&mut self) -> Result<bool> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP, "listing routes")?;
        Ok(replies.iter().any(|m| {
            matches!(m, RouteNetlinkMessage::NewRoute(r)
                if r.header.destination_prefix_length == 0 && r.header.table == RouteHeader::RT_TABLE_MAIN)
        }))
    }

    /// A permanent neighbour entry `ip` → `mac` on link `index` (added or replaced).
    ///
    /// # Errors
    /// What the kernel answered.
    pub fn replace_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("adding neighbour {ip}"),
        )
        .map(drop)
    }
}

/// One end of a veth pair.
pub struct VethEnd<'a> {
    pub name: &'a str,
    pub mac: [u8; 6],
}

/// Parses `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("0a:00:00:00:00:01"), Some([0x0a, 0, 0, 0, 0, 1]));
        assert_eq!(parse_mac("0a:00:00:00:00"), None);
        assert_eq!(parse_mac("0a:00:00:00:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:01"), None);
    }

    /// Queries need no privilege: loopback is index 1 in every namespace.
    #[test]
    fn loopback_is_found_and_a_missing_link_is_none() {
        let mut nl = Netlink::open().unwrap();
        assert_eq!(nl.link_index("lo").unwrap(), Some(1));
        assert_eq!(nl.link("lo").unwrap(), Some((1, Some([0; 6]))));
        assert_eq!(nl.link_index("moat-no-such0").unwrap(), None);
        // SAFETY: trivial libc call.
        if unsafe { libc::geteuid() } == 0 {
            assert!(
                !nl.delete_link("moat-no-such0").unwrap(),
                "a missing link is not an error"
            );
        }
    }
}
