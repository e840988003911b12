//! `moat-bench-datapath [POLICIES IDENTITIES PACKETS]`: the per-packet cost of `from_container`, measured in the
//! kernel with `BPF_PROG_TEST_RUN` on a private copy of the datapath (own pin dir).
//!
//! Cases: an established flow with no policy loaded (the baseline), then with
//! `--policies` rules over `--identities` identities loaded: an established flow (conntrack
//! hit), a new allowed flow (conntrack miss, two policy lookups, conntrack insert) and a
//! denied flow (policy lookups, drop event). Each figure is the kernel-reported run time
//! averaged over `--packets` single runs, so every case pays the same harness overhead.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions};
use moat_dataplane_common::{
    direction, Config, PolicyKey, PolicyValue, ACTION_ALLOW, ACTION_DENY, PREFIX_FULL, PREFIX_PEER, PREFIX_SUBJECT_DIR,
};

use moat_dataplane::fixtures::endpoint;
use moat_dataplane::kernel::datapath::Datapath;

struct PinDir(PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    moat_dataplane::fixtures::ipv4_udp(src, dst, 64, sport, dport)
}

fn time(dp: &mut Datapath, packets: impl Iterator<Item = Vec<u8>>, want: u32) -> anyhow::Result<f64> {
    let prog = dp.program_mut("from_container")?;
    let (mut total, mut n) = (Duration::ZERO, 0u32);
    let mut out = vec![0u8; 256];
    for pkt in packets {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&pkt);
        opts.data_out = Some(&mut out);
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        anyhow::ensure!(r.return_value == want, "verdict {} instead of {want}", r.return_value);
        total += r.duration;
        n += 1;
    }
    Ok(total.as_nanos() as f64 / f64::from(n.max(1)))
}

/// Runs the benchmark and prints one line per case plus ratios to the baseline.
///
/// # Errors
/// When the datapath cannot be loaded or a run fails.
fn run(policies: u32, identities: u32, packets: u32) -> anyhow::Result<()> {
    const TC_ACT_SHOT: u32 = 2;
    const TC_ACT_REDIRECT: u32 = 7;
    moat_dataplane::kernel::netdev::ensure_bpffs(Path::new("/sys/fs/bpf"))?;
    let pin = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/moat-bench-prog-{}",
        std::process::id()
    )));
    let mut dp = Datapath::load(&pin.0)?;
    let (a, b): (Ipv4Addr, Ipv4Addr) = ("10.3.0.1".parse()?, "10.3.0.2".parse()?);
    dp.upsert_endpoint(a, endpoint(1, 1))?;
    dp.upsert_endpoint(b, endpoint(77, 2))?;
    dp.set_config(Config {
        policy_rev: 1,
        ..Config::default()
    })?;
    let established = |i: u32| udp(a, b, 10_000 + (i % 8) as u16, 80);
    let baseline = time(&mut dp, (0..packets).map(established), TC_ACT_REDIRECT)?;

    // Load identities (one /32 each) and policies: every identity is isolated both ways;
    // each policy adds an allow from some identity on some port.
    let (id_a, id_b) = (256, 257);
    for i in 0..identities {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 3, 0, 1)) + i);
        dp.upsert_ipcache(ip, 32, 256 + i)?;
        for dir in [direction::INGRESS, direction::EGRESS] {
            dp.upsert_policy(
                PREFIX_SUBJECT_DIR,
                PolicyKey::new(256 + i, dir, 0, 0, 0),
                PolicyValue {
                    action: ACTION_DENY,
                    cookie: 5,
                },
            )?;
        }
    }
    for p in 0..policies {
        let subject = 256 + p % identities.max(1);
        let peer = 256 + (p * 7 + 3) % identities.max(1);
        let port = 1000 + (p % 5000) as u16;
        for (dir, prefix) in [(direction::INGRESS, PREFIX_FULL), (direction::EGRESS, PREFIX_PEER)] {
            dp.upsert_policy(
                prefix,
                PolicyKey::new(subject, dir, peer, if prefix == PREFIX_FULL { 17 } else { 0 }, port),
                PolicyValue {
                    action: ACTION_ALLOW,
                    cookie: 16 + p,
                },
            )?;
        }
    }
    // a → b allowed on UDP/80 (egress of a, ingress of b); 81 is not.
    dp.upsert_policy(
        PREFIX_PEER,
        PolicyKey::new(id_a, direction::EGRESS, id_b, 0, 0),
        PolicyValue {
            action: ACTION_ALLOW,
            cookie: 9,
        },
    )?;
    dp.upsert_policy(
        PREFIX_FULL,
        PolicyKey::new(id_b, direction::INGRESS, id_a, 17, 80),
        PolicyValue {
            action: ACTION_ALLOW,
            cookie: 10,
        },
    )?;
    dp.set_config(Config {
        policy_rev: 2,
        ..Config::default()
    })?;
    let entries = dp.policy_entries().len();
    // Warm the established flows under the new revision, then measure.
    time(&mut dp, (0..8).map(established), TC_ACT_REDIRECT)?;
    let est = time(&mut dp, (0..packets).map(established), TC_ACT_REDIRECT)?;
    // A fresh source port per packet: every one is a new flow.
    let new = time(
        &mut dp,
        (0..packets).map(|i| udp(a, b, 20_000 + (i % 40_000) as u16, 80)),
        TC_ACT_REDIRECT,
    )?;
    let denied = time(
        &mut dp,
        (0..packets).map(|i| udp(a, b, 20_000 + (i % 40_000) as u16, 81)),
        TC_ACT_SHOT,
    )?;
    println!(
        "from_container, BPF_PROG_TEST_RUN, {packets} packets per case, {policies} policies over {identities} identities ({entries} policy entries):"
    );
    for (what, ns) in [
        ("baseline: established, no policy loaded", baseline),
        ("established flow (conntrack hit)", est),
        ("new allowed flow (egress+ingress lookups, CT insert)", new),
        ("denied flow (lookups, drop event)", denied),
    ] {
        println!("  {what:<55} {ns:8.1} ns/packet   ratio {:.2}", ns / baseline);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments: POLICIES IDENTITIES PACKETS (numbers)"))
        .collect::<anyhow::Result<_>>()?;
    let arg = |i: usize, default: u32| args.get(i).copied().unwrap_or(default);
    run(arg(0, 1000), arg(1, 500), arg(2, 20_000))
}
