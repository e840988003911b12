//! Checks on what an API client asks for, before anything reaches the node. The socket
//! is root-only, so a hostile request means a compromised or buggy node component: it
//! must still not attach the datapath to a node interface, claim the node's or the
//! gateway's address for a pod, or point a pod at the node's own netns.
use std::net::Ipv4Addr;

use moat_api::attachment::{check_ifname, valid_container_id};
use moat_api::naming;

use crate::ipam::Cidr;

/// Container id and interface name of an attachment: the CNI spec's rules.
///
/// # Errors
/// Which field is refused, and why.
pub fn attachment(container_id: &str, ifname: &str) -> Result<(), String> {
    if container_id.is_empty() || container_id.len() > 255 || !valid_container_id(container_id) {
        return Err(format!(
            "attachment.container_id {container_id:?}: must be 1 to 255 characters of [A-Za-z0-9_.-], starting with a letter or digit"
        ));
    }
    check_ifname(ifname).map_err(|why| format!("attachment.ifname {ifname:?}: {why}"))
}

/// The host veth must be the one the plugin names for this attachment: never `eth0`,
/// another pod's veth or any other node interface.
///
/// # Errors
/// When `host_ifname` is not that name.
pub fn host_ifname(container_id: &str, ifname: &str, host_ifname: &str) -> Result<(), String> {
    let expected = naming::host_ifname(container_id, ifname);
    if host_ifname != expected {
        return Err(format!(
            "host_ifname {host_ifname:?}: the host veth of attachment {container_id}/{ifname} is {expected}"
        ));
    }
    Ok(())
}

/// A pod's name, namespace and uid: printable, bounded (Kubernetes' own limits).
///
/// # Errors
/// Which field is refused.
pub fn pod_ref(namespace: &str, name: &str, uid: &str) -> Result<(), String> {
    for (field, value, max) in [
        ("pod_namespace", namespace, 63),
        ("pod_name", name, 253),
        ("pod_uid", uid, 128),
    ] {
        if value.len() > max || value.contains(|c: char| c.is_control() || c.is_whitespace() || c == '/') {
            return Err(format!(
                "{field} {value:?}: at most {max} characters, no whitespace, control characters or /"
            ));
        }
    }
    Ok(())
}

/// Where pod addresses may come from and what they must never be.
#[derive(Debug, Clone)]
pub struct AddressRules {
    pub pod_cidr: Cidr,
    /// Extra ranges a delegated IPAM plugin may hand out (`--delegated-ipam-range`).
    pub delegated_ranges: Vec<Cidr>,
    pub gateway: Ipv4Addr,
    pub node_ips: Vec<Ipv4Addr>,
}

/// A pod address: a unicast address inside the pod CIDR (or, for a delegated lease, a
/// configured range), not a range's network or broadcast address, not the gateway and
/// not one of the node's own addresses.
///
/// # Errors
/// Why the address is refused.
pub fn pod_address(ip: Ipv4Addr, delegated: bool, rules: &AddressRules) -> Result<(), String> {
    let ranges: Vec<&Cidr> = std::iter::once(&rules.pod_cidr)
        .chain(rules.delegated_ranges.iter().filter(|_| delegated))
        .collect();
    let Some(range) = ranges.iter().find(|r| r.contains(ip)) else {
        let list: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        return Err(format!(
            "ipv4 {ip}: outside the pod ranges ({}){}",
            list.join(", "),
            if delegated {
                "; allow a delegated IPAM range with --delegated-ipam-range"
            } else {
                ""
            }
        ));
    };
    if range.prefix() < 31 && (ip == range.network() || ip == range.broadcast()) {
        return Err(format!("ipv4 {ip}: the network or broadcast address of {range}"));
    }
    if ip == rules.gateway {
        return Err(format!("ipv4 {ip}: the pods' gateway address"));
    }
    if rules.node_ips.contains(&ip) {
        return Err(format!("ipv4 {ip}: an address of the node itself"));
    }
    if ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() || ip.is_broadcast() {
        return Err(format!("ipv4 {ip}: not a unicast address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> AddressRules {
        AddressRules {
            pod_cidr: "10.1.0.0/24".parse().unwrap(),
            delegated_ranges: vec!["10.9.0.0/24".parse().unwrap()],
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            node_ips: vec![Ipv4Addr::new(10, 1, 0, 7)],
        }
    }

    #[test]
    fn pod_addresses() {
        let r = rules();
        assert!(pod_address(Ipv4Addr::new(10, 1, 0, 5), false, &r).is_ok());
        assert!(pod_address(Ipv4Addr::new(10, 9, 0, 5), true, &r).is_ok());
        let refused = |ip: [u8; 4], delegated: bool, why: &str| {
            let e = pod_address(Ipv4Addr::from(ip), delegated, &r).unwrap_err();
            assert!(e.contains(why), "{ip:?}: {e}");
        };
        refused([10, 9, 0, 5], false, "outside the pod ranges");
        refused([192, 168, 0, 1], true, "--delegated-ipam-range");
        refused([10, 1, 0, 0], false, "network or broadcast");
        refused([10, 1, 0, 255], false, "network or broadcast");
        refused([10, 1, 0, 7], false, "the node itself");
        let mut r2 = r.clone();
        r2.gateway = Ipv4Addr::new(10, 1, 0, 1);
        assert!(pod_address(Ipv4Addr::new(10, 1, 0, 1), false, &r2)
            .unwrap_err()
            .contains("gateway"));
    }

    #[test]
    fn attachments_and_names() {
        assert!(attachment("abc123", "eth0").is_ok());
        assert!(attachment("-abc", "eth0").unwrap_err().contains("container_id"));
        assert!(attachment("abc", "eth0:1").unwrap_err().contains("ifname"));
        let good = naming::host_ifname("abc", "eth0");
        assert!(host_ifname("abc", "eth0", &good).is_ok());
        assert!(host_ifname("abc", "eth0", "eth0").unwrap_err().contains("lxc"));
        assert!(pod_ref("default", "web", "u-1").is_ok());
        assert!(pod_ref("a b", "web", "").unwrap_err().contains("pod_namespace"));
        assert!(pod_ref("ns", &"x".repeat(300), "").unwrap_err().contains("pod_name"));
    }
}
