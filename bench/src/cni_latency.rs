//! `moat-cni-latency`: ADD+DEL latency of a CNI plugin, driven exactly as a runtime
//! drives it (env + stdin, one process per call).
//!
//! `moat-cni-latency PLUGIN CONF_FILE CYCLES [CNI_PATH]` — run inside the node netns.
//! Each cycle creates a pod netns (not timed), times ADD then DEL, removes the netns.
//! Prints JSON with p50/p99/mean in milliseconds.
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

fn call(plugin: &str, cni_path: &str, cmd: &str, cid: &str, netns: &str, conf: &str) {
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (plugin, conf_file, cycles) = (&a[1], &a[2], a[3].parse::<usize>().expect("CYCLES"));
    let cni_path = a.get(4).map_or("/usr/lib/cni", String::as_str);
    let conf = std::fs::read_to_string(conf_file).expect("conf");
    let tag = format!("lat{}", std::process::id());
    let mut ms = Vec::with_capacity(cycles);
    let (mut adds, mut dels) = (Vec::with_capacity(cycles), Vec::with_capacity(cycles));
    for i in 0..cycles {
        let ns = format!("{tag}-{i}");
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {ns}");
        let path = format!("/run/netns/{ns}");
        let cid = format!("{tag}-ctr-{i}");
        let t = Instant::now();
        call(plugin, cni_path, "ADD", &cid, &path, &conf);
        let add = t.elapsed().as_secs_f64() * 1000.0;
        call(plugin, cni_path, "DEL", &cid, &path, &conf);
        let total = t.elapsed().as_secs_f64() * 1000.0;
        ms.push(total);
        adds.push(add);
        dels.push(total - add);
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    for v in [&mut ms, &mut adds, &mut dels] {
        v.sort_by(f64::total_cmp);
    }
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{{\"cycles\":{cycles},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"mean_ms\":{mean:.2},\"add_p50_ms\":{:.2},\"del_p50_ms\":{:.2}}}",
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        pct(&adds, 0.5),
        pct(&dels, 0.5)
    );
}
