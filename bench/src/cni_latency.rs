//! `moat-cni-latency`: ADD+DEL latency of CNI plugins, driven exactly as a runtime
//! drives them (env + stdin, one process per call).
//!
//! `moat-cni-latency PLUGIN CONF_FILE CYCLES [CNI_PATH]` — run inside the node netns.
//! `moat-cni-latency --interleave CYCLES NETNS PLUGIN CONF [NETNS PLUGIN CONF]...` —
//!   several plugins, each called in its own node netns (`/run/netns/NETNS`), one cycle
//!   of each in turn, so all of them meet the same machine state (a bridge DEL's timing
//!   here varies by 50 % between minutes; measured back to back the ratio moved with it).
//!
//! Each cycle creates a pod netns (not timed), times ADD then DEL, removes the netns.
//! Prints JSON with p50/p99/mean in milliseconds (one line per plugin, in argument order).
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Instant;

struct Plugin {
    /// Node netns the plugin runs in; `None` = the caller's.
    node: Option<std::fs::File>,
    path: String,
    conf: String,
    ms: Vec<f64>,
    adds: Vec<f64>,
    dels: Vec<f64>,
}

impl Plugin {
    fn call(&self, cni_path: &str, cmd: &str, cid: &str, netns: &str) {
        let mut command = Command::new(&self.path);
        command
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(node) = &self.node {
            use std::os::fd::AsRawFd as _;
            let fd = node.as_raw_fd();
            // SAFETY: setns(2) is async-signal-safe; it only moves the child.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawn plugin");
        child.stdin.take().unwrap().write_all(self.conf.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cycle(&mut self, cni_path: &str, tag: &str, i: usize) {
        let ns = format!("{tag}-{i}");
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {ns}");
        let path = format!("/run/netns/{ns}");
        let cid = format!("{tag}-ctr-{i}");
        let t = Instant::now();
        self.call(cni_path, "ADD", &cid, &path);
        let add = t.elapsed().as_secs_f64() * 1000.0;
        self.call(cni_path, "DEL", &cid, &path);
        let total = t.elapsed().as_secs_f64() * 1000.0;
        self.ms.push(total);
        self.adds.push(add);
        self.dels.push(total - add);
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }

    fn report(mut self) -> String {
        for v in [&mut self.ms, &mut self.adds, &mut self.dels] {
            v.sort_by(f64::total_cmp);
        }
        let pct = |v: &[f64], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
        let mean = self.ms.iter().sum::<f64>() / self.ms.len() as f64;
        format!(
            "{{\"cycles\":{},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"mean_ms\":{mean:.2},\"add_p50_ms\":{:.2},\"del_p50_ms\":{:.2}}}",
            self.ms.len(),
            pct(&self.ms, 0.5),
            pct(&self.ms, 0.99),
            pct(&self.adds, 0.5),
            pct(&self.dels, 0.5)
        )
    }
}

fn plugin(node: Option<&str>, path: &str, conf_file: &str) -> Plugin {
    Plugin {
        node: node.map(|n| std::fs::File::open(format!("/run/netns/{n}")).expect("node netns")),
        path: path.to_string(),
        conf: std::fs::read_to_string(conf_file).expect("conf"),
        ms: Vec::new(),
        adds: Vec::new(),
        dels: Vec::new(),
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let cni_path = "/usr/lib/cni";
    let (cycles, mut plugins) = if a.get(1).map(String::as_str) == Some("--interleave") {
        let cycles = a[2].parse::<usize>().expect("CYCLES");
        let specs = &a[3..];
        assert!(
            !specs.is_empty() && specs.len().is_multiple_of(3),
            "NETNS PLUGIN CONF triples"
        );
        let plugins: Vec<Plugin> = specs.chunks(3).map(|s| plugin(Some(&s[0]), &s[1], &s[2])).collect();
        (cycles, plugins)
    } else {
        (a[3].parse::<usize>().expect("CYCLES"), vec![plugin(None, &a[1], &a[2])])
    };
    let cni_path = a
        .get(4)
        .filter(|_| plugins.len() == 1 && a[1] != "--interleave")
        .map_or(cni_path, String::as_str);
    let tag = format!("lat{}", std::process::id());
    for i in 0..cycles {
        for (k, p) in plugins.iter_mut().enumerate() {
            p.cycle(cni_path, &format!("{tag}p{k}"), i);
        }
    }
    for p in plugins {
        println!("{}", p.report());
    }
}
