//! Plumbing the pod's interface with iproute2.
//!
//! ```text
//!  pod netns                          node netns
//!  eth0 (IP/32, MAC from naming)  ── lxcXXXXXXXXXXXX (no IP)
//!    default via 169.254.1.1           route IP/32 dev lxc…
//!    neigh 169.254.1.1 → lxc MAC       neigh IP → eth0 MAC (permanent)
//! ```
//! The permanent neighbour entries mean neither side ever ARPs: every packet the pod
//! sends enters the host veth's tcx ingress with the right MACs already in place.
//! Three `ip` invocations (one link add, one batch per namespace) keep ADD cheap; the
//! pod-side one joins the pod's netns itself (`setns` before exec), no `nsenter`.
use std::io::Write as _;
use std::process::{Command, Stdio};

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

fn run(cmd: &mut Command, stdin: Option<&str>, what: &str) -> Result<String> {
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(code::WIRING_FAILED, what.to_string(), format!("spawning {cmd:?}: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::WIRING_FAILED, what.to_string(), e.to_string()))?;
    if !out.status.success() {
        return Err(CniError::new(
            code::WIRING_FAILED,
            what.to_string(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                stdin.map(|s| format!(" (batch: {s:?})")).unwrap_or_default()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip() -> Command {
    Command::new("ip")
}

/// `ip` running inside the network namespace at `netns`: the child joins it with
/// `setns` between fork and exec (cheaper than spawning `nsenter` first).
fn ip_in(netns: &str) -> Result<Command> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let ns = std::fs::File::open(netns).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "container unknown",
            format!("CNI_NETNS {netns}: {e}"),
        )
    })?;
    let mut c = Command::new("ip");
    // SAFETY: setns is async-signal-safe; the closure only makes that one syscall.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c)
}

/// Creates and configures both ends. On failure the host end (and with it the pod
/// end) is removed again.
///
/// # Errors
/// `WIRING_FAILED` with iproute2's message.
pub fn wire(p: &Plan<'_>) -> Result<()> {
    let mut add = ip();
    add.args(["link", "add", p.host_ifname, "address", p.host_mac]);
    if let Some(mtu) = p.mtu {
        add.args(["mtu", &mtu.to_string()]);
    }
    add.args(["type", "veth", "peer", "name", p.ifname, "address", p.pod_mac]);
    if let Some(mtu) = p.mtu {
        add.args(["mtu", &mtu.to_string()]);
    }
    add.args(["netns", p.netns]);
    run(
        &mut add,
        None,
        &format!("creating veth {} with peer {} in {}", p.host_ifname, p.ifname, p.netns),
    )?;

    let result = (|| {
        let pod = format!(
            "link set lo up\n\
             addr add {ip}/32 dev {ifname}\n\
             link set {ifname} up\n\
             route add {gw}/32 dev {ifname} scope link\n\
             route add default via {gw} dev {ifname}\n\
             neigh replace {gw} lladdr {hmac} dev {ifname} nud permanent\n",
            ip = p.ip,
            ifname = p.ifname,
            gw = p.gateway,
            hmac = p.host_mac
        );
        run(
            ip_in(p.netns)?.args(["-batch", "-"]),
            Some(&pod),
            &format!("configuring {} in {}", p.ifname, p.netns),
        )?;
        let host = format!(
            "link set {h} up\n\
             route replace {ip}/32 dev {h} scope link\n\
             neigh replace {ip} lladdr {pmac} dev {h} nud permanent\n",
            h = p.host_ifname,
            ip = p.ip,
            pmac = p.pod_mac
        );
        run(
            ip().args(["-batch", "-"]),
            Some(&host),
            &format!("configuring host side {}", p.host_ifname),
        )?;
        Ok(())
    })();
    if result.is_err() {
        let _ = unwire(p.host_ifname);
    }
    result
}

/// Deletes the host veth (the kernel removes its peer). Missing is not an error.
///
/// # Errors
/// `WIRING_FAILED` when the link exists but cannot be deleted.
pub fn unwire(host_ifname: &str) -> Result<bool> {
    match run(
        ip().args(["link", "del", host_ifname]),
        None,
        &format!("deleting {host_ifname}"),
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.details.contains("Cannot find device") || e.details.contains("does not exist") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `host_ifname` exists in the node's namespace.
#[must_use]
pub fn host_link_exists(host_ifname: &str) -> bool {
    run(ip().args(["link", "show", host_ifname]), None, "").is_ok()
}

/// What CHECK compares: the addresses on `ifname` and whether a default route exists.
///
/// # Errors
/// `CHECK_MISMATCH` when the interface is gone.
pub fn pod_state(netns: &str, ifname: &str) -> Result<(Vec<String>, bool)> {
    let addrs = run(ip_in(netns)?.args(["-j", "addr", "show", "dev", ifname]), None, "").map_err(|e| {
        CniError::new(
            code::CHECK_MISMATCH,
            format!("interface {ifname} in {netns} is missing"),
            e.details,
        )
    })?;
    let parsed: serde_json::Value = serde_json::from_str(&addrs).unwrap_or_default();
    let mut out = Vec::new();
    for link in parsed.as_array().into_iter().flatten() {
        for a in link.get("addr_info").and_then(|a| a.as_array()).into_iter().flatten() {
            if let (Some(local), Some(len)) = (
                a.get("local").and_then(|v| v.as_str()),
                a.get("prefixlen").and_then(serde_json::Value::as_u64),
            ) {
                out.push(format!("{local}/{len}"));
            }
        }
    }
    let routes = run(ip_in(netns)?.args(["-j", "route", "show", "default"]), None, "").unwrap_or_default();
    let has_default = serde_json::from_str::<serde_json::Value>(&routes)
        .ok()
        .and_then(|v| v.as_array().map(|a| !a.is_empty()))
        .unwrap_or(false);
    Ok((out, has_default))
}
