//! HTTP rules end to end: a MoatNetworkPolicy in the agent's state dir, pods wired by the
//! real `moat` plugin, a real keep-alive HTTP server in the backend pod and curl in the
//! frontend pod. The lateral-movement case: `GET /` passes, `GET /admin` gets the
//! kernel's 403 and never reaches the server.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_netns_tests::manifest::{namespace, pod};
use moat_netns_tests::{root_or_skip, Node, NodeOpts, Pod};

/// A keep-alive HTTP/1.1 server on non-blocking sockets (asyncio) that logs each request.
const SERVER: &str = r#"
import asyncio, sys
async def handle(r, w):
    try:
        while True:
            line = await r.readline()
            if not line:
                break
            method, path, _ = line.decode().split(" ", 2)
            n = 0
            while True:
                h = await r.readline()
                if h in (b"\r\n", b""):
                    break
                if h.lower().startswith(b"content-length:"):
                    n = int(h.split(b":")[1])
            body = await r.readexactly(n) if n else b""
            with open(sys.argv[2], "a") as f:
                f.write(f"{method} {path}\n")
            out = f"ok {method} {path}\n".encode()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
            await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]))
    await s.serve_forever()
asyncio.run(main())
"#;

struct Server {
    child: Child,
    log: PathBuf,
    script: PathBuf,
}

impl Server {
    fn start(pod: &Pod, port: u16) -> Self {
        // The pod netns name is unique per test node: tests running at once do not share files.
        let base = std::env::temp_dir().join(format!("moat-http-{}", pod.netns));
        let (script, log) = (base.with_extension("py"), base.with_extension("log"));
        std::fs::write(&script, SERVER).unwrap();
        let _ = std::fs::remove_file(&log);
        let child = Command::new("nsenter")
            .arg(format!("--net={}", pod.path()))
            .args([
                "python3",
                &script.to_string_lossy(),
                &port.to_string(),
                &log.to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let s = Self { child, log, script };
        let t = Instant::now();
        while !Command::new("nsenter")
            .arg(format!("--net={}", pod.path()))
            .args(["sh", "-c", &format!("ss -ltn | grep -q ':{port} '")])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(t.elapsed() < Duration::from_secs(10), "HTTP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn seen(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.script);
    }
}

/// curl from `from`: the status codes of `urls`, fetched on one keep-alive connection.
fn curl(from: &Pod, urls: &[String]) -> Vec<String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", from.path()))
        .args(["curl", "-s", "--max-time", "3", "-w", "%{http_code}\\n"]);
    for u in urls {
        cmd.args(["-o", "/dev/null", u]);
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

const POLICY: &str = "apiVersion: moat.io/v1alpha1
kind: MoatNetworkPolicy
metadata: {name: backend-http, namespace: shop}
spec:
  endpointSelector: {matchLabels: {'k8s:app': backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {'k8s:app': frontend}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /}
        - {method: 'GET|HEAD', path: '/public/.*'}
";

#[test]
fn lateral_movement_get_admin_is_answered_403_by_the_kernel() {
    root_or_skip!();
    let node = Node::start_with(NodeOpts {
        manifests: vec![(
            "base.yaml",
            namespace("shop") + &pod("shop", "backend", "backend") + &pod("shop", "frontend", "frontend"),
        )],
        ..NodeOpts::default()
    });
    let backend = node.add_pod("shop", "backend");
    let frontend = node.add_pod("shop", "frontend");
    let srv = Server::start(&backend, 8080);
    let url = |p: &str| format!("http://{}:8080{p}", backend.ip);
    assert_eq!(curl(&frontend, &[url("/admin")]), ["200"], "no policy yet: open");

    node.apply_manifests(&[("http.yaml", Some(POLICY))]);
    let status = node.status();
    assert_eq!(status["manifestErrors"].as_array().map(Vec::len), Some(0), "{status}");
    // One keep-alive connection: allowed, refused (the kernel answers and closes), then
    // curl reconnects for the next URL.
    assert_eq!(
        curl(
            &frontend,
            &[
                url("/"),
                url("/admin"),
                url("/public/app.js"),
                url("/public/../admin"),
                url("/%61dmin")
            ]
        ),
        ["200", "403", "200", "403", "403"]
    );
    let seen = srv.seen();
    assert!(seen.contains("GET /public/app.js"), "{seen}");
    assert_eq!(
        seen.lines().filter(|l| l.contains("admin")).count(),
        1,
        "only the request from before the policy reached /admin: {seen}"
    );
    // `moatctl observe --type l7` shows each request with its verdict and rule.
    let deadline = Instant::now() + Duration::from_secs(5);
    let events = loop {
        let out = node.moatctl(&["-o", "json", "observe", "--type", "l7", "--last", "100"]);
        let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if events.len() >= 5 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let allowed = events
        .iter()
        .find(|e| e["http"]["path"] == "/public/app.js")
        .unwrap_or_else(|| panic!("no event for /public/app.js: {events:?}"));
    assert_eq!(allowed["verdict"], "FORWARDED");
    assert_eq!(allowed["source"]["pod"], "frontend");
    assert_eq!(allowed["destination"]["pod"], "backend");
    assert!(
        allowed["http"]["rule"]
            .as_str()
            .unwrap()
            .contains("rule 1 (method \"GET|HEAD\", path \"/public/.*\")"),
        "{allowed}"
    );
    let denied: Vec<_> = events.iter().filter(|e| e["verdict"] == "DROPPED").collect();
    assert_eq!(denied.len(), 3, "{events:?}");
    assert!(
        denied
            .iter()
            .all(|e| e["http"]["path"] == "/admin" && e["dropReasonName"] == "http_denied"),
        "{denied:?}"
    );
    let table = node.moatctl(&["observe", "--type", "l7", "--last", "100"]);
    assert!(table.contains("GET /admin") && table.contains("DROPPED"), "{table}");
    // `moatctl policy explain --http` names the rule, or says none matches.
    let explain = |req: &str| {
        node.moatctl(&[
            "policy",
            "explain",
            "--from",
            "shop/frontend",
            "--to",
            "shop/backend",
            "--port",
            "8080/tcp",
            "--http",
            req,
        ])
    };
    let allowed = explain("GET /public/app.js");
    assert!(
        allowed.contains("allowed by rule 1") && allowed.contains("MoatNetworkPolicy shop/backend-http"),
        "{allowed}"
    );
    let denied = explain("GET /public/../admin");
    assert!(
        denied.contains("GET /admin") && denied.contains("no rule"),
        "normalised first: {denied}"
    );
    assert!(explain("GET /%2fadmin").contains("refused before any rule"));
    // Denied requests are counted with their reason (drop_http_denied = 180).
    assert!(node.drop_count(180) >= 3, "{}", node.moatctl(&["drops"]));
    // Port-level policy still applies: a pod the policy does not name cannot connect.
    let other = node.add_pod("shop", "other");
    assert_eq!(curl(&other, &[url("/")]), ["000"], "not allowed at L3/L4");

    // Removing the policy removes the HTTP rules with it.
    node.apply_manifests(&[("http.yaml", None)]);
    assert_eq!(curl(&frontend, &[url("/admin")]), ["200"]);
}

/// Audit mode (`moat-agent --audit`): a request no rule allows is reported as AUDIT and
/// passes.
#[test]
fn audit_mode_reports_would_be_403s_and_lets_them_pass() {
    root_or_skip!();
    let node = Node::start_with(NodeOpts {
        manifests: vec![(
            "base.yaml",
            namespace("shop") + &pod("shop", "backend", "backend") + &pod("shop", "frontend", "frontend"),
        )],
        agent_args: vec!["--audit"],
        ..NodeOpts::default()
    });
    let backend = node.add_pod("shop", "backend");
    let frontend = node.add_pod("shop", "frontend");
    let srv = Server::start(&backend, 8080);
    node.apply_manifests(&[("http.yaml", Some(POLICY))]);
    let url = |p: &str| format!("http://{}:8080{p}", backend.ip);
    assert_eq!(curl(&frontend, &[url("/admin"), url("/")]), ["200", "200"]);
    assert!(srv.seen().contains("GET /admin"), "{}", srv.seen());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = node.moatctl(&["-o", "json", "observe", "--type", "l7", "--verdict", "audit"]);
        if out.contains("\"/admin\"") {
            assert!(out.contains("http_denied"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "no AUDIT event for /admin: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
