//! `moat`, the Moat CNI plugin (spec 1.0.0 and 1.1.0).
//!
//! The runtime executes it with CNI_* variables and the network configuration on
//! stdin. ADD wires a veth pair (see `wire`), gets an address from the agent or a
//! delegated IPAM plugin, and registers the endpoint with the agent, which attaches
//! the eBPF datapath. stdout carries only the protocol (result or error JSON).
pub mod agent;
pub use moat_api::naming;
pub mod config;
pub mod delegate;
pub mod error;
pub mod result;
pub mod wire;

use std::path::Path;

use moat_api::v1::{AddEndpointRequest, GcRequest, StatusRequest};
use serde_json::{json, Value};

use crate::config::{parse_env, parse_netconf, Command, Env, NetConf, SUPPORTED_VERSIONS};
use crate::error::{code, CniError, Result};

/// Runs one CNI command. `Ok(Some(json))` is printed on stdout.
///
/// # Errors
/// A spec error to print on stdout (the caller exits non-zero).
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>> {
    let cmd = config::parse_command(&var)?;
    if cmd == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = parse_netconf(stdin)?;
    let env = parse_env(cmd, &var)?;
    match cmd {
        Command::Add => add(&conf, &env, stdin).map(Some),
        Command::Del => del(&conf, &env, stdin).map(|()| None),
        Command::Check => check(&conf, &env, stdin).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(&conf, &env, stdin).map(|()| None),
        Command::Version => unreachable!("handled above"),
    }
}

/// The pod address and gateway, checked before anything is wired with them: replies
/// from the agent or an IPAM plugin are input too.
fn checked_addresses(ip: &str, gateway: &str) -> Result<(String, String)> {
    let bad = |what: &str, v: &str| {
        CniError::new(
            code::AGENT_ERROR,
            format!("invalid {what} in the IPAM reply"),
            format!("{v:?} is not a usable IPv4 address"),
        )
    };
    let addr: std::net::Ipv4Addr = ip.parse().map_err(|_| bad("pod address", ip))?;
    let gw: std::net::Ipv4Addr = gateway.parse().map_err(|_| bad("gateway", gateway))?;
    let usable =
        |a: std::net::Ipv4Addr| !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast());
    if !usable(addr) || addr == gw {
        return Err(bad("pod address", ip));
    }
    if !usable(gw) {
        return Err(bad("gateway", gateway));
    }
    Ok((addr.to_string(), gw.to_string()))
}

fn version(stdin: &[u8]) -> Value {
    json!({ "cniVersion": config::sniff_version(stdin), "supportedVersions": SUPPORTED_VERSIONS })
}

fn raw(stdin: &[u8]) -> Value {
    serde_json::from_slice(stdin).unwrap_or_default()
}

fn add(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<Value> {
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "invalid environment",
            format!("CNI_NETNS {} does not exist", env.netns),
        ));
    }
    let host_ifname = naming::host_ifname(&env.container_id, &env.ifname);
    let (pod_mac, host_mac) = naming::macs(&env.container_id, &env.ifname);
    let att = agent::attachment(&env.container_id, &env.ifname);
    let delegated = conf.ipam_type();
    agent::with_agent(&conf.socket(), |mut client| async move {
        // 0. An attachment that is already wired stays as it is: a repeated ADD fails
        // before it changes anything, so its failure cannot undo the first ADD's endpoint,
        // lease or programs (the rollback below only undoes what this call created).
        let already = client.get_endpoint(att.clone()).await.is_ok();
        if already || wire::host_link_exists(&host_ifname) {
            return Err(CniError::new(
                code::WIRING_FAILED,
                "the attachment is already wired",
                format!(
                    "container {} interface {} already has {} (host interface {host_ifname}); DEL it first",
                    env.container_id,
                    env.ifname,
                    if already { "an endpoint" } else { "a veth" }
                ),
            ));
        }
        // 1. An address: from the agent's pod CIDR, or from the delegated IPAM plugin.
        let (ip, gateway) = if let Some(ipam) = delegated {
            let st = client
                .status(StatusRequest {})
                .await
                .map_err(|s| agent::status_error("asking the agent for its status", &s))?;
            let res = delegate::exec(ipam, "ADD", env, &raw(stdin))?;
            // From here a failure must give the lease back to the IPAM plugin.
            match delegate::first_ipv4(&res).and_then(|ip| checked_addresses(&ip, &st.into_inner().gateway)) {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = delegate::exec(ipam, "DEL", env, &raw(stdin));
                    return Err(e);
                }
            }
        } else {
            let lease = client
                .allocate_ip(att.clone())
                .await
                .map_err(|s| agent::status_error("leasing a pod address", &s))?
                .into_inner();
            match checked_addresses(&lease.ipv4, &lease.gateway) {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = client.delete_endpoint(att.clone()).await;
                    return Err(e);
                }
            }
        };
        let release = |client: &mut agent::Client| {
            let att = att.clone();
            let mut client = client.clone();
            async move {
                if let Some(ipam) = delegated {
                    let _ = delegate::exec(ipam, "DEL", env, &raw(stdin));
                }
                let _ = client.delete_endpoint(att).await;
            }
        };
        // 2. The veth pair, addresses, routes and neighbours.
        let plan = wire::Plan {
            netns: &env.netns,
            ifname: &env.ifname,
            host_ifname: &host_ifname,
            pod_mac: &pod_mac,
            host_mac: &host_mac,
            ip: &ip,
            gateway: &gateway,
            mtu: conf.mtu,
        };
        if let Err(e) = wire::wire(&plan) {
            release(&mut client).await;
            return Err(e);
        }
        // 3. The endpoint: the agent attaches the datapath to the host veth.
        let req = AddEndpointRequest {
            attachment: Some(att.clone()),
            netns: env.netns.clone(),
            pod_namespace: env.arg("K8S_POD_NAMESPACE").into(),
            pod_name: env.arg("K8S_POD_NAME").into(),
            pod_uid: env.arg("K8S_POD_UID").into(),
            ipv4: ip.clone(),
            host_ifname: host_ifname.clone(),
            pod_mac: pod_mac.clone(),
            ipam: if delegated.is_some() {
                "delegated".into()
            } else {
                "agent".into()
            },
        };
        if let Err(s) = client.add_endpoint(req).await {
            let _ = wire::unwire(&host_ifname);
            release(&mut client).await;
            return Err(agent::status_error(
                &format!("registering endpoint {host_ifname} with the agent"),
                &s,
            ));
        }
        Ok(result::add_result(&result::Wired {
            cni_version: &conf.cni_version,
            host_ifname: &host_ifname,
            host_mac: &host_mac,
            ifname: &env.ifname,
            pod_mac: &pod_mac,
            netns: &env.netns,
            address: &format!("{ip}/32"),
            gateway: &gateway,
        }))
    })
}

/// DEL is idempotent: a missing netns, veth, endpoint or lease is success.
fn del(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<()> {
    let host_ifname = naming::host_ifname(&env.container_id, &env.ifname);
    // Agent first: detaching the tcx links while the veth still exists makes the veth
    // teardown that follows much cheaper (see docs/benchmarks.md). The veth goes even
    // when the agent is unreachable; the error then asks the runtime to retry.
    let att = agent::attachment(&env.container_id, &env.ifname);
    let agent_result = agent::with_agent(&conf.socket(), |mut client| async move {
        client
            .delete_endpoint(att)
            .await
            .map_err(|s| agent::status_error("removing the endpoint", &s))?;
        Ok(())
    });
    wire::unwire(&host_ifname)?;
    if let Some(ipam) = conf.ipam_type() {
        delegate::exec(ipam, "DEL", env, &raw(stdin))?;
    }
    agent_result
}

fn check(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "field prevResult is required for CHECK",
        )
    })?;
    let want = result::prev_address(prev, &env.ifname, &env.netns).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            format!(
                "field prevResult has no address for interface {} in {}",
                env.ifname, env.netns
            ),
        )
    })?;
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "container unknown",
            format!("CNI_NETNS {} does not exist", env.netns),
        ));
    }
    let att = agent::attachment(&env.container_id, &env.ifname);
    let ep = agent::with_agent(&conf.socket(), |mut client| async move {
        client
            .get_endpoint(att)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    CniError::new(code::UNKNOWN_CONTAINER, "container unknown", s.message().to_string())
                } else {
                    agent::status_error("asking the agent for the endpoint", &s)
                }
            })
    })?;
    let mismatch = |what: String| {
        CniError::new(
            code::CHECK_MISMATCH,
            "container network does not match prevResult",
            what,
        )
    };
    if format!("{}/32", ep.ipv4) != want {
        return Err(mismatch(format!(
            "agent has {} for this attachment, prevResult says {want}",
            ep.ipv4
        )));
    }
    if !wire::host_link_exists(&ep.host_ifname) {
        return Err(mismatch(format!("host interface {} is missing", ep.host_ifname)));
    }
    let (addrs, has_default) = wire::pod_state(&env.netns, &env.ifname)?;
    if !addrs.contains(&want) {
        return Err(mismatch(format!(
            "interface {} in {} has addresses {addrs:?}, expected {want}",
            env.ifname, env.netns
        )));
    }
    if !has_default {
        return Err(mismatch(format!("no default route in {}", env.netns)));
    }
    if let Some(ipam) = conf.ipam_type() {
        delegate::exec(ipam, "CHECK", env, &raw(stdin))?;
    }
    Ok(())
}

fn require_1_1(conf: &NetConf, what: &str) -> Result<()> {
    if conf.cni_version == "1.1.0" {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "{what} needs cniVersion 1.1.0, the configuration says {}",
                conf.cni_version
            ),
        ))
    }
}

fn status(conf: &NetConf) -> Result<()> {
    require_1_1(conf, "STATUS")?;
    let not_available = |e: CniError| {
        CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            "the moat plugin is not available",
            e.to_string(),
        )
    };
    let reply = agent::with_agent(&conf.socket(), |mut client| async move {
        client
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| agent::status_error("agent status", &s))
    })
    .map_err(not_available)?;
    if !reply.ready {
        return Err(not_available(CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            "agent",
            "moat-agent is not ready",
        )));
    }
    Ok(())
}

fn gc(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<()> {
    require_1_1(conf, "GC")?;
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "field cni.dev/valid-attachments is required for GC",
        )
    })?;
    let valid = valid
        .iter()
        .map(|v| agent::attachment(&v.container_id, &v.ifname))
        .collect();
    let removed = agent::with_agent(&conf.socket(), |mut client| async move {
        client
            .gc(GcRequest { valid })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| agent::status_error("agent GC", &s))
    })?;
    for ep in &removed.removed {
        wire::unwire(&ep.host_ifname)?;
        eprintln!(
            "moat: GC removed {} ({}/{})",
            ep.host_ifname, ep.container_id, ep.ifname
        );
    }
    if let Some(ipam) = conf.ipam_type() {
        if delegate::supports(ipam, env, "1.1.0") {
            delegate::exec(ipam, "GC", env, &raw(stdin))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_before_use() {
        assert_eq!(
            checked_addresses("10.1.0.5", "169.254.1.1").unwrap(),
            ("10.1.0.5".to_string(), "169.254.1.1".to_string())
        );
        for (ip, gw) in [
            ("10.1.0.5; rm -rf /", "169.254.1.1"),
            ("10.1.0.5", "fe80::1"),
            ("0.0.0.0", "169.254.1.1"),
            ("224.0.0.1", "169.254.1.1"),
            ("169.254.1.1", "169.254.1.1"),
            ("", ""),
        ] {
            assert!(checked_addresses(ip, gw).is_err(), "{ip} {gw}");
        }
    }
}
