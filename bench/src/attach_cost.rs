//! `moat-bench-attach [CYCLES]`: what attaching the two pod programs to a host veth, and
//! deleting that veth again, costs with tcx links against legacy TC (a `clsact` qdisc
//! and two `cls_bpf` filters over netlink: what Moat uses), against a veth with no
//! programs at all. Run as root in a scratch netns (bench/run.sh section 9).
//!
//! Each cycle creates a veth pair (not timed), times the attach of `from_container`
//! (ingress) and `to_container` (egress), then times the deletion of the veth. Medians
//! and p99s in milliseconds.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use aya::programs::tc::{qdisc_add_clsact, NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, TcAttachType};
use moat_dataplane::kernel::datapath::Datapath;
use moat_dataplane::kernel::netdev;

struct PinDir(PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    None,
    Tcx,
    LegacyTc,
}

fn veth(name: &str) -> anyhow::Result<()> {
    let st = Command::new("ip")
        .args(["link", "add", name, "type", "veth", "peer", "name", &format!("{name}p")])
        .status()?;
    anyhow::ensure!(st.success(), "ip link add {name}");
    let st = Command::new("ip").args(["link", "set", name, "up"]).status()?;
    anyhow::ensure!(st.success(), "ip link set {name} up");
    Ok(())
}

fn attach(dp: &mut Datapath, ifname: &str, mode: Mode) -> anyhow::Result<()> {
    if mode == Mode::LegacyTc {
        qdisc_add_clsact(ifname).context("clsact")?;
    }
    for (name, hook) in [
        ("from_container", TcAttachType::Ingress),
        ("to_container", TcAttachType::Egress),
    ] {
        let opts = match mode {
            Mode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
            Mode::LegacyTc => TcAttachOptions::Netlink(NlOptions::default()),
            Mode::None => return Ok(()),
        };
        let prog = dp.program_mut(name)?;
        let id = prog.attach_with_options(ifname, hook, opts).context("attach")?;
        // The attachment outlives our handle (a tcx link stays until its veth goes; a
        // cls_bpf filter lives in the qdisc), as with the agent's pinned links.
        let link = prog.take_link(id)?;
        std::mem::forget(link);
    }
    Ok(())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let cycles: usize = std::env::args()
        .nth(1)
        .map_or(Ok(50), |a| a.parse())
        .context("CYCLES")?;
    netdev::ensure_bpffs(Path::new("/sys/fs/bpf"))?;
    let pin = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/moat-bench-attach-{}",
        std::process::id()
    )));
    let mut dp = Datapath::load(&pin.0)?;
    let mut rows = Vec::new();
    for (label, mode) in [
        ("tcx links", Mode::Tcx),
        ("legacy TC (Moat)", Mode::LegacyTc),
        ("no programs", Mode::None),
    ] {
        let (mut att, mut del) = (Vec::new(), Vec::new());
        for i in 0..cycles {
            let name = format!("mab{}x{i}", std::process::id() % 100_000);
            veth(&name)?;
            let t = Instant::now();
            attach(&mut dp, &name, mode)?;
            att.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            netdev::delete_link(&name)?;
            del.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (a50, a99, d50, d99) = (
            pct(&mut att, 0.5),
            pct(&mut att, 0.99),
            pct(&mut del, 0.5),
            pct(&mut del, 0.99),
        );
        println!(
            "  {label:<20}  attach p50 {a50:6.2} ms  p99 {a99:6.2} ms   delete veth p50 {d50:6.2} ms  p99 {d99:6.2} ms   sum p50 {:6.2} ms",
            a50 + d50
        );
        rows.push(a50 + d50);
    }
    println!(
        "  ratio tcx/legacy TC (attach + delete, p50): {:.2}   tcx/no programs: {:.2}",
        rows[0] / rows[1],
        rows[0] / rows[2]
    );
    Ok(())
}
