//! Test harness: a Moat node in a network namespace, pods wired by the real `moat`
//! CNI binary, real sockets for traffic. Everything a test creates is owned by a guard
//! whose `Drop` removes it, so a failing test leaves nothing behind.
//!
//! ```text
//!   ext netns (10.x.y.2) ── uplink ── node netns (10.x.y.1, moat-agent) ── lxc… ── pod netns (eth0)
//! ```
//! Names carry the test process id and a counter, so parallel tests and a previous
//! failed run never collide. Requires root and the binaries from `cargo build --release`.
pub mod containerd;
pub mod manifest;
pub mod net;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Locks a harness mutex even if a panicking test poisoned it: cleanup in `Drop` must
/// still run (a second panic there would abort and leave namespaces and pins behind).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A name unique to this process and call: `mt<pid>x<n>`.
#[must_use]
pub fn unique(tag: &str) -> String {
    format!(
        "mt{}x{}{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Directory holding `moat`, `moat-agent` and `moatctl` (same profile as the test).
#[must_use]
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MOAT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    assert!(
        dir.join("moat-agent").is_file(),
        "{}/moat-agent missing: run `cargo build --release` first",
        dir.display()
    );
    dir
}

#[must_use]
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip` in the given named netns (or the current one).
pub fn ip(netns: Option<&str>, args: &[&str]) -> String {
    let mut c = Command::new("ip");
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    sh(c.args(args))
}

pub fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Whether a named netns has a link called `ifname`.
#[must_use]
pub fn link_exists(netns: &str, ifname: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", ifname])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A network namespace that is deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    #[must_use]
    pub fn new(name: &str) -> Self {
        sh(Command::new("ip").args(["netns", "add", name]));
        ip(Some(name), &["link", "set", "lo", "up"]);
        Self { name: name.to_string() }
    }

    #[must_use]
    pub fn path(&self) -> String {
        netns_path(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// What a CNI invocation returned.
#[derive(Debug)]
pub struct CniOut {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOut {
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The spec error code, panicking if the call succeeded.
    #[must_use]
    pub fn error_code(&self) -> u64 {
        assert!(!self.success, "expected a CNI error, got success: {}", self.stdout);
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }
}

/// Options for a test node.
#[derive(Clone)]
pub struct NodeOpts {
    /// Extra fields merged into the plugin's network configuration.
    pub conf_extra: Value,
    pub cni_version: &'static str,
    /// Run the agent in the root netns (needed when a real runtime such as containerd
    /// calls the plugin there). No uplink/ext namespace then.
    pub root_netns: bool,
    /// Files (name, content) put into the agent's `--state-dir` before it starts.
    pub manifests: Vec<(&'static str, String)>,
    /// Extra `moat-agent` flags.
    pub agent_args: Vec<&'static str>,
    /// Run the agent and the plugin with an empty `PATH`: no iproute2, no tools at all.
    pub bare_path: bool,
    /// Extra environment for `moat-agent`.
    pub agent_env: Vec<(&'static str, String)>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        Self {
            conf_extra: json!({}),
            cni_version: "1.1.0",
            root_netns: false,
            manifests: Vec::new(),
            agent_args: Vec::new(),
            bare_path: false,
            agent_env: Vec::new(),
        }
    }
}

/// A Moat node: its own netns with an uplink to an "external" netns, a running agent
/// with private socket, pin dir and data dir, and the pods wired on it.
pub struct Node {
    pub id: String,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub pod_cidr: String,
    /// The node's own address on its uplink.
    pub node_ip: Ipv4Addr,
    /// An address outside the node (in `ext`).
    pub ext_ip: Ipv4Addr,
    pub opts: NodeOpts,
    agent: Mutex<Option<Child>>,
    pod_netns: Mutex<Vec<String>>,
    // Dropped last (fields drop in order): pods first, then the node, then outside.
    pub node_ns: Option<Netns>,
    pub ext_ns: Option<Netns>,
}

impl Node {
    /// Starts a node with default options.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(NodeOpts::default())
    }

    #[must_use]
    pub fn start_with(opts: NodeOpts) -> Self {
        let id = unique("");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) % 200 + 20;
        let dir = std::env::temp_dir().join(format!("moat-test-{id}"));
        std::fs::create_dir_all(dir.join("state")).expect("test dir");
        std::fs::create_dir_all(dir.join("empty-path")).expect("test dir");
        for (name, content) in &opts.manifests {
            std::fs::write(dir.join("state").join(name), content).expect("write manifest");
        }
        let third = (std::process::id() % 200) as u8 + 20;
        let node_ip = Ipv4Addr::new(10, 201, third, n as u8);
        let ext_ip = Ipv4Addr::new(10, 202, third, n as u8);
        let pod_cidr = format!("10.{}.{third}.0/24", 100 + n % 100);
        let (node_ns, ext_ns) = if opts.root_netns {
            (None, None)
        } else {
            let ext_ns = Netns::new(&format!("{id}-ext"));
            let node_ns = Netns::new(&format!("{id}-node"));
            // Uplink: a /32 each side plus host routes, like a point-to-point link.
            ip(
                None,
                &[
                    "link",
                    "add",
                    "uplink",
                    "netns",
                    &node_ns.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "uplink",
                    "netns",
                    &ext_ns.name,
                ],
            );
            for (ns, me, peer) in [(&node_ns.name, node_ip, ext_ip), (&ext_ns.name, ext_ip, node_ip)] {
                ip(Some(ns), &["addr", "add", &format!("{me}/32"), "dev", "uplink"]);
                ip(Some(ns), &["link", "set", "uplink", "up"]);
                ip(Some(ns), &["route", "add", &format!("{peer}/32"), "dev", "uplink"]);
            }
            ip(
                Some(&ext_ns.name),
                &["route", "add", &pod_cidr, "via", &node_ip.to_string()],
            );
            (Some(node_ns), Some(ext_ns))
        };
        let node = Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/moat-test-{id}")),
            socket: dir.join("agent.sock"),
            id,
            dir,
            pod_cidr,
            node_ip,
            ext_ip,
            opts,
            agent: Mutex::new(None),
            pod_netns: Mutex::new(Vec::new()),
            node_ns,
            ext_ns,
        };
        node.start_agent();
        node
    }

    /// A command that runs `program` in the node's netns.
    #[must_use]
    pub fn in_node(&self, program: &Path) -> Command {
        let mut c = match &self.node_ns {
            Some(ns) => {
                // By absolute path: `PATH` may be empty for the program (`bare_path`).
                let mut c = Command::new(which("nsenter"));
                c.arg(format!("--net={}", ns.path())).arg(program);
                c
            }
            None => Command::new(program),
        };
        if self.opts.bare_path {
            c.env("PATH", self.dir.join("empty-path"));
        }
        c
    }

    /// Name of the node netns for `ip -n` (None: the root netns).
    #[must_use]
    pub fn node_netns(&self) -> Option<&str> {
        self.node_ns.as_ref().map(|n| n.name.as_str())
    }

    #[must_use]
    pub fn node_netns_path(&self) -> String {
        self.node_ns
            .as_ref()
            .map_or_else(|| "/proc/1/ns/net".to_string(), Netns::path)
    }

    /// Starts `moat-agent` inside the node netns and waits for its socket.
    pub fn start_agent(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        let child = self
            .in_node(&bin("moat-agent"))
            .args(["--state-dir", &self.dir.join("state").to_string_lossy()])
            .args(["--socket", &self.socket.to_string_lossy()])
            .args(["--pin-dir", &self.pin_dir.to_string_lossy()])
            .args(["--data-dir", &self.dir.join("data").to_string_lossy()])
            .args(["--pod-cidr", &self.pod_cidr])
            .args(["--node-name", &self.id])
            .args(&self.opts.agent_args)
            .envs(self.opts.agent_env.iter().map(|(k, v)| (k, v)))
            // In the root netns the devices are the machine's own: no NodePort XDP there.
            .args(if self.node_ns.is_none() {
                &["--node-device", "none"][..]
            } else {
                &[][..]
            })
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning moat-agent");
        *locked(&self.agent) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            // Take the status before panicking: the guard must not be held (and the
            // mutex poisoned) while the test unwinds into `Drop`.
            let exited = locked(&self.agent).as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("moat-agent exited with {status}: {}", self.agent_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "moat-agent did not listen on {} within 20s: {}",
            self.socket.display(),
            self.agent_log()
        );
    }

    /// Stops the agent we started (SIGTERM to its pid) and waits for it.
    pub fn stop_agent(&self) -> Option<std::process::ExitStatus> {
        let child = locked(&self.agent).take();
        if let Some(mut child) = child {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().ok().flatten() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }

    #[must_use]
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The plugin's network configuration, as a runtime would pass it.
    #[must_use]
    pub fn conf(&self) -> Value {
        let mut c =
            json!({ "cniVersion": self.opts.cni_version, "name": "moat-test", "type": "moat", "socket": self.socket });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), self.opts.conf_extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    /// Executes the real `moat` binary in the node netns, the way a runtime does.
    #[must_use]
    pub fn cni(&self, env: &[(&str, &str)], stdin: &str) -> CniOut {
        self.cni_with(&bin("moat"), env, stdin)
    }

    #[must_use]
    pub fn cni_with(&self, plugin: &Path, env: &[(&str, &str)], stdin: &str) -> CniOut {
        use std::io::Write as _;
        let mut cmd = self.in_node(plugin);
        cmd.env_clear().env(
            "PATH",
            if self.opts.bare_path {
                self.dir.join("empty-path").into_os_string()
            } else {
                "/usr/sbin:/usr/bin:/sbin:/bin".into()
            },
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moat");
        // A plugin that refuses oversized input stops reading it: a broken pipe is its
        // answer, not the harness's failure.
        match child.stdin.take().expect("stdin").write_all(stdin.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("write stdin: {e}"),
        }
        let out: Output = child.wait_with_output().expect("wait moat");
        CniOut {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Standard CNI env for an attachment.
    #[must_use]
    pub fn env<'a>(command: &'a str, container_id: &'a str, netns: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", args),
        ]
    }

    /// Creates a pod netns named after `ns/name` and runs CNI ADD for it.
    #[must_use]
    pub fn add_pod(&self, namespace: &str, name: &str) -> Pod {
        let netns = format!("{}-{namespace}-{name}", self.id);
        sh(Command::new("ip").args(["netns", "add", &netns]));
        locked(&self.pod_netns).push(netns.clone());
        let container_id = format!("{}-{namespace}-{name}", self.id);
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}");
        let path = netns_path(&netns);
        let out = self.cni(&Self::env("ADD", &container_id, &path, &args), &self.conf().to_string());
        assert!(
            out.success,
            "CNI ADD {namespace}/{name} failed: {} {}\nagent log:\n{}",
            out.stdout,
            out.stderr,
            self.agent_log()
        );
        let result = out.json();
        let ip = result_ip(&result);
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            netns,
            container_id,
            ip,
            result,
        }
    }

    /// CNI DEL for a pod; the pod's netns stays until the node is dropped.
    pub fn del_pod(&self, pod: &Pod) -> CniOut {
        self.cni(
            &Self::env("DEL", &pod.container_id, &netns_path(&pod.netns), ""),
            &self.conf().to_string(),
        )
    }

    /// Deletes a pod netns now (as a runtime does after DEL).
    pub fn remove_pod_netns(&self, pod: &Pod) {
        let _ = Command::new("ip").args(["netns", "del", &pod.netns]).status();
        locked(&self.pod_netns).retain(|n| n != &pod.netns);
    }

    /// The agent's `--state-dir`.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Runs `call` with a gRPC client of the agent, as a plugin would (root peer).
    pub fn api<T, F>(&self, call: impl FnOnce(moat_api::AgentClient<tonic::transport::Channel>) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let socket = self.socket.clone();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(async move {
                let client = moat_api::connect(&socket).await.expect("connect to the agent");
                call(client).await
            })
    }

    /// `moatctl status -o json`.
    #[must_use]
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.moatctl(&["-o", "json", "status"])).expect("status JSON")
    }

    /// Writes (or with `None` removes) manifest files in the state dir, then waits until
    /// the agent has re-read the directory and applied the result.
    pub fn apply_manifests(&self, files: &[(&str, Option<&str>)]) {
        let before = self.status()["stateGeneration"].as_u64().unwrap_or(0);
        for (name, content) in files {
            let path = self.state_dir().join(name);
            match content {
                Some(c) => std::fs::write(&path, c).expect("write manifest"),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.status()["stateGeneration"].as_u64().unwrap_or(0) > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the agent did not re-read {} within 5s", self.state_dir().display());
    }

    /// Packets dropped with reason `code` (`moatctl drops`, the kernel's counters).
    #[must_use]
    pub fn drop_count(&self, code: u64) -> u64 {
        let drops: Value = serde_json::from_str(&self.moatctl(&["-o", "json", "drops"])).expect("drops JSON");
        drops["byReason"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["code"] == code)
            .and_then(|d| d["count"].as_u64())
            .unwrap_or(0)
    }

    /// Runs `moatctl` against this node's agent.
    #[must_use]
    pub fn moatctl(&self, args: &[&str]) -> String {
        sh(Command::new(bin("moatctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args))
    }

    /// Entries in the pinned endpoint map, via bpftool (what the kernel really holds).
    #[must_use]
    pub fn map_entries(&self) -> usize {
        self.pinned_map_len("moat_endpts_v1")
    }

    /// Entries in the pinned map `name`, via bpftool.
    #[must_use]
    pub fn pinned_map_len(&self, name: &str) -> usize {
        let map = self.pin_dir.join(name);
        let out = sh(Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&map));
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// Moat's pod programs attached in the node's netns, as "ifname/kind" (e.g.
    /// "lxc0123/clsact/ingress"), from `bpftool net show`: what the kernel really runs.
    #[must_use]
    pub fn attachments(&self) -> Vec<String> {
        let out = sh(self.in_node(Path::new("bpftool")).args(["-j", "net", "show"]));
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        let mut found: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|section| section["tc"].as_array().cloned().unwrap_or_default())
            .filter(|f| matches!(f["name"].as_str(), Some("from_container" | "to_container")))
            .map(|f| {
                format!(
                    "{}/{}",
                    f["devname"].as_str().unwrap_or_default(),
                    f["kind"].as_str().unwrap_or_default()
                )
            })
            .collect();
        found.sort();
        found
    }

    /// Host-side pod veths (`lxc…`) in the node netns.
    #[must_use]
    pub fn host_veths(&self) -> Vec<String> {
        let out = ip(self.node_netns(), &["-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("lxc"))
            .collect()
    }

    /// The leases the agent persisted.
    #[must_use]
    pub fn persisted_leases(&self) -> usize {
        let text = std::fs::read_to_string(self.dir.join("data/node-state.json")).unwrap_or_default();
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["ipam"]["leases"].as_object().map(serde_json::Map::len))
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agent();
        for ns in locked(&self.pod_netns).drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if self.node_ns.is_none() {
            // Host veths live in the root netns here: remove any a failed test left.
            let text = std::fs::read_to_string(self.dir.join("data/node-state.json")).unwrap_or_default();
            let eps = serde_json::from_str::<Value>(&text).unwrap_or_default();
            for ep in eps["endpoints"].as_array().into_iter().flatten() {
                if let Some(ifname) = ep["host_ifname"].as_str() {
                    let _ = Command::new("ip").args(["link", "del", ifname]).output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if std::thread::panicking() {
            eprintln!("agent log of {}:\n{}", self.id, self.agent_log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A wired pod.
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub container_id: String,
    pub ip: Ipv4Addr,
    /// The CNI ADD result.
    pub result: Value,
}

impl Pod {
    #[must_use]
    pub fn path(&self) -> String {
        netns_path(&self.netns)
    }
}

/// The pod address in a CNI result (`ips[0].address` without its prefix length).
#[must_use]
pub fn result_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[0].address in {result}"));
    addr.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// The absolute path of `program` on this process's `PATH` (or the bare name).
#[must_use]
pub fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

/// Whether a root test may run here. Without root it prints why and the test returns
/// (a plain `cargo test` as a user runs the pure tests); under CI (`CI=true`) a missing
/// root is a failure, so CI never skips.
#[must_use]
pub fn have_root(test: &str) -> bool {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: needs root (network namespaces, eBPF), and CI must run every test"
    );
    eprintln!("skipped {test}: needs root (network namespaces, eBPF); run `sudo bash install/test.sh`");
    false
}

/// Returns from the calling test when it cannot run (see [`have_root`]).
#[macro_export]
macro_rules! root_or_skip {
    () => {
        if !$crate::have_root(module_path!()) {
            return;
        }
    };
}

/// Whether we run as root (every test here needs it).
pub fn require_root() {
    // SAFETY: trivial libc call.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the netns tests need root (they create namespaces and load eBPF)"
    );
}
