//! Plumbing the pod's interface over rtnetlink (`moat-netlink`; no iproute2 processes).
//!
//! ```text
//!  pod netns                          node netns
//!  eth0 (IP/32, MAC from naming)  ── lxcXXXXXXXXXXXX (no IP)
//!    default via 169.254.1.1           route IP/32 dev lxc…
//!    neigh 169.254.1.1 → lxc MAC       neigh IP → eth0 MAC (permanent)
//! ```
//! The permanent neighbour entries mean neither side ever ARPs: every packet the pod
//! sends enters the host veth's tcx ingress with the right MACs already in place.
//! One netlink socket in the node's namespace and one opened in the pod's (from a helper
//! thread, so this process never changes namespace) carry nine requests in all.
use std::fs::File;
use std::net::Ipv4Addr;

use moat_netlink::{Netlink, VethEnd};

use crate::error::{code, CniError, Result};

pub struct Plan<'a> {
    pub netns: &'a str,
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub pod_mac: &'a str,
    pub host_mac: &'a str,
    pub ip: &'a str,
    pub gateway: &'a str,
    pub mtu: Option<u32>,
}

fn failed(what: &str) -> impl Fn(moat_netlink::Error) -> CniError + '_ {
    move |e| CniError::new(code::WIRING_FAILED, what.to_string(), e.to_string())
}

fn open_netns(netns: &str) -> Result<File> {
    File::open(netns).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "container unknown",
            format!("CNI_NETNS {netns}: {e}"),
        )
    })
}

fn mac(s: &str, field: &str) -> Result<[u8; 6]> {
    moat_netlink::parse_mac(s)
        .ok_or_else(|| CniError::new(code::WIRING_FAILED, "invalid MAC address", format!("{field} {s:?}")))
}

fn ipv4(s: &str, field: &str) -> Result<Ipv4Addr> {
    s.parse()
        .map_err(|_| CniError::new(code::WIRING_FAILED, "invalid IPv4 address", format!("{field} {s:?}")))
}

fn node_netlink() -> Result<Netlink> {
    Netlink::open().map_err(failed("opening a netlink socket"))
}

/// Creates and configures both ends. On failure the host end (and with it the pod
/// end) is removed again.
///
/// # Errors
/// `WIRING_FAILED` with the kernel's answer.
pub fn wire(p: &Plan<'_>) -> Result<()> {
    let (pod_mac, host_mac) = (mac(p.pod_mac, "pod MAC")?, mac(p.host_mac, "host MAC")?);
    let (ip, gw) = (ipv4(p.ip, "pod address")?, ipv4(p.gateway, "gateway")?);
    let ns = open_netns(p.netns)?;
    let mut node = node_netlink()?;
    node.add_veth(
        &VethEnd {
            name: p.host_ifname,
            mac: host_mac,
        },
        &VethEnd {
            name: p.ifname,
            mac: pod_mac,
        },
        &ns,
        p.mtu,
    )
    .map_err(failed(&format!(
        "creating veth {} with peer {} in {}",
        p.host_ifname, p.ifname, p.netns
    )))?;
    let result = (|| {
        let what = format!("configuring {} in {}", p.ifname, p.netns);
        let mut pod = Netlink::open_in(&ns).map_err(failed(&what))?;
        let eth = pod.require_link(p.ifname).map_err(failed(&what))?;
        // In the pod: lo up, the address, the link up, an on-link route to the gateway,
        // the default route through it and the gateway's MAC.
        pod.set_up(1).map_err(failed(&what))?;
        pod.add_address(eth, ip, 32).map_err(failed(&what))?;
        pod.set_up(eth).map_err(failed(&what))?;
        pod.replace_route(gw, 32, None, eth).map_err(failed(&what))?;
        pod.replace_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), eth)
            .map_err(failed(&what))?;
        pod.replace_neighbour(eth, gw, host_mac).map_err(failed(&what))?;
        // On the node: the host end up, a /32 route to the pod and the pod's MAC.
        let what = format!("configuring host side {}", p.host_ifname);
        let host = node.require_link(p.host_ifname).map_err(failed(&what))?;
        node.set_up(host).map_err(failed(&what))?;
        node.replace_route(ip, 32, None, host).map_err(failed(&what))?;
        node.replace_neighbour(host, ip, pod_mac).map_err(failed(&what))
    })();
    if result.is_err() {
        let _ = node.delete_link(p.host_ifname);
    }
    result
}

/// Deletes the host veth (the kernel removes its peer). Missing is not an error.
///
/// # Errors
/// `WIRING_FAILED` when the link exists but cannot be deleted.
pub fn unwire(host_ifname: &str) -> Result<bool> {
    node_netlink()?
        .delete_link(host_ifname)
        .map_err(failed(&format!("deleting {host_ifname}")))
}

/// Whether `host_ifname` exists in the node's namespace.
#[must_use]
pub fn host_link_exists(host_ifname: &str) -> bool {
    node_netlink()
        .ok()
        .and_then(|mut n| n.link_index(host_ifname).ok().flatten())
        .is_some()
}

/// What CHECK compares: the addresses on `ifname` and whether a default route exists.
///
/// # Errors
/// `CHECK_MISMATCH` when the interface is gone.
pub fn pod_state(netns: &str, ifname: &str) -> Result<(Vec<String>, bool)> {
    let ns = open_netns(netns)?;
    let mismatch = |e: moat_netlink::Error| {
        CniError::new(
            code::CHECK_MISMATCH,
            format!("interface {ifname} in {netns} is missing"),
            e.to_string(),
        )
    };
    let mut pod = Netlink::open_in(&ns).map_err(mismatch)?;
    let eth = pod.require_link(ifname).map_err(mismatch)?;
    let addrs = pod
        .addresses(eth)
        .map_err(mismatch)?
        .into_iter()
        .map(|(ip, len)| format!("{ip}/{len}"))
        .collect();
    let has_default = pod.has_default_route().unwrap_or(false);
    Ok((addrs, has_default))
}
