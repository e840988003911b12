//! Optional SNAT for pod traffic leaving the pod CIDR (`moat-agent --masquerade`).
//!
//! One iptables rule in its own chain, added idempotently. This is the only iptables
//! Moat uses; it is off by default because routed pod CIDRs need no NAT.
use std::process::Command;

use anyhow::{bail, Context as _};

const CHAIN: &str = "MOAT-MASQ";

fn iptables(args: &[&str]) -> anyhow::Result<bool> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat"])
        .args(args)
        .output()
        .context("running iptables")?;
    Ok(out.status.success())
}

/// Ensures `POSTROUTING → MOAT-MASQ`, and in it: traffic from `cidr` to anywhere
/// outside `cidr` is masqueraded.
///
/// # Errors
/// When iptables is missing or refuses the rules.
pub fn ensure(cidr: &str) -> anyhow::Result<()> {
    if !iptables(&["-L", CHAIN, "-n"])? && !iptables(&["-N", CHAIN])? {
        bail!("cannot create iptables chain nat/{CHAIN}");
    }
    let jump = [
        "POSTROUTING",
        "-j",
        CHAIN,
        "-m",
        "comment",
        "--comment",
        "moat: masquerade pod traffic",
    ];
    if !iptables(&[&["-C"][..], &jump[..]].concat())? && !iptables(&[&["-A"][..], &jump[..]].concat())? {
        bail!("cannot add the POSTROUTING jump to {CHAIN}");
    }
    let rule = [CHAIN, "-s", cidr, "!", "-d", cidr, "-j", "MASQUERADE"];
    if !iptables(&[&["-C"][..], &rule[..]].concat())? && !iptables(&[&["-A"][..], &rule[..]].concat())? {
        bail!("cannot add the MASQUERADE rule for {cidr}");
    }
    Ok(())
}
