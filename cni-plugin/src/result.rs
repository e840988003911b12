//! The ADD result, in the spec's format (1.0.0 and 1.1.0 share it).
use serde_json::{json, Value};

pub struct Wired<'a> {
    pub cni_version: &'a str,
    pub host_ifname: &'a str,
    pub host_mac: &'a str,
    pub ifname: &'a str,
    pub pod_mac: &'a str,
    pub netns: &'a str,
    /// CIDR notation, e.g. 10.244.0.5/32.
    pub address: &'a str,
    pub gateway: &'a str,
}

#[must_use]
pub fn add_result(w: &Wired<'_>) -> Value {
    json!({
        "cniVersion": w.cni_version,
        "interfaces": [
            { "name": w.host_ifname, "mac": w.host_mac },
            { "name": w.ifname, "mac": w.pod_mac, "sandbox": w.netns },
        ],
        "ips": [ { "address": w.address, "gateway": w.gateway, "interface": 1 } ],
        "routes": [ { "dst": "0.0.0.0/0", "gw": w.gateway } ],
        "dns": {},
    })
}

/// The pod interface's address in a previous result (`prevResult` of CHECK).
#[must_use]
pub fn prev_address(prev: &Value, ifname: &str, netns: &str) -> Option<String> {
    let ifaces = prev.get("interfaces")?.as_array()?;
    let idx = ifaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname) && i.get("sandbox").and_then(Value::as_str) == Some(netns)
    })?;
    prev.get("ips")?
        .as_array()?
        .iter()
        .find(|ip| ip.get("interface").and_then(Value::as_u64) == Some(idx as u64))
        .and_then(|ip| ip.get("address")?.as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_points_ips_at_the_sandbox_interface() {
        let r = add_result(&Wired {
            cni_version: "1.1.0",
            host_ifname: "lxc1",
            host_mac: "0e:00:00:00:00:01",
            ifname: "eth0",
            pod_mac: "0a:00:00:00:00:01",
            netns: "/run/netns/p",
            address: "10.0.0.5/32",
            gateway: "169.254.1.1",
        });
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(prev_address(&r, "eth0", "/run/netns/p").as_deref(), Some("10.0.0.5/32"));
        assert_eq!(prev_address(&r, "eth1", "/run/netns/p"), None);
    }
}
