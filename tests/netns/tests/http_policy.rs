//! HTTP rules end to end: a MoatNetworkPolicy in the agent's state dir, pods wired by the
//! real `moat` plugin, a real keep-alive HTTP server in the backend pod and curl in the
//! frontend pod. The lateral-movement case: `GET /` passes, `GET /admin` gets the
//! kernel's 403 and never reaches the server.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_netns_tests::manifest::{namespace, pod};
use moat_netns_tests::{root_or_skip, Node, NodeOpts, Pod};

/// The test server (`tests/http_server.py`).
const SERVER: &str = include_str!("../../http_server.py");

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
                "0.0.0.0",
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

/// A node with pods shop/backend and shop/frontend (agent flags `agent_args`).
fn shop(agent_args: Vec<&'static str>) -> (Node, Pod, Pod) {
    let node = Node::start_with(NodeOpts {
        manifests: vec![(
            "base.yaml",
            namespace("shop") + &pod("shop", "backend", "backend") + &pod("shop", "frontend", "frontend"),
        )],
        agent_args,
        ..NodeOpts::default()
    });
    let backend = node.add_pod("shop", "backend");
    let frontend = node.add_pod("shop", "frontend");
    (node, backend, frontend)
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
    let (node, backend, frontend) = shop(vec![]);
    let srv = Server::start(&backend, 8080);
    let url = |p: &str| format!("http://{}:8080{p}", backend.ip);
    assert_eq!(curl(&frontend, &[url("/admin")]), ["200"], "no policy yet: open");

    // An attacker's keep-alive connection opened before the policy: it must not carry a
    // refused request past the rules later.
    let early = {
        let script = format!(
            "import socket,time\ns=socket.create_connection(('{}',8080))\ns.settimeout(5)\ns.sendall(b'GET / HTTP/1.1\\r\\nHost: b\\r\\n\\r\\n')\nprint(s.recv(4096)[:12])\ntime.sleep(3)\ntry:\n  s.sendall(b'GET /admin HTTP/1.1\\r\\nHost: b\\r\\nUser-Agent: early-bird/1.0\\r\\nAccept: */*\\r\\n\\r\\n')\n  print(s.recv(4096)[:12])\nexcept OSError as e:\n  print('error', e.errno)",
            backend.ip
        );
        Command::new("nsenter")
            .arg(format!("--net={}", frontend.path()))
            .args(["python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));
    node.apply_manifests(&[("http.yaml", Some(POLICY))]);
    let status = node.status();
    assert_eq!(status["manifestErrors"].as_array().map(Vec::len), Some(0), "{status}");
    let early = String::from_utf8_lossy(&early.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        early.starts_with("b'HTTP/1.1 200") && !early.lines().nth(1).unwrap_or("").contains("200"),
        "the connection from before the policy was reset, not left unjudged: {early}"
    );
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
        "only the request from before the policy reached /admin (the early connection's did not): {seen}"
    );
    // A refused request too short for a 403 of its own length: the kernel stops the
    // connection and the agent resets it at once; the server never sees it.
    let probe = Command::new("nsenter")
        .arg(format!("--net={}", frontend.path()))
        .args(["python3", "-c"])
        .arg(format!(
            "import socket,time\ns=socket.create_connection(('{}',8080))\nt=time.time()\ns.sendall(b'GET /admin HTTP/1.0\\r\\n\\r\\n')\ns.settimeout(5)\ntry:\n  d=s.recv(100)\nexcept OSError as e:\n  d=b''\nprint(len(d), round(time.time()-t,2))",
            backend.ip
        ))
        .output()
        .unwrap();
    let probe = String::from_utf8_lossy(&probe.stdout).into_owned();
    let (got, secs) = probe.trim().split_once(' ').unwrap_or(("?", "9"));
    assert_eq!(got, "0", "no answer: {probe}");
    assert!(
        secs.parse::<f64>().unwrap_or(9.0) < 2.0,
        "reset at once, not after a timeout: {probe}"
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
    assert!(
        allowed["source"]["port"].as_u64().unwrap_or(0) > 1024,
        "the client's port: {allowed}"
    );
    assert_eq!(allowed["destination"]["port"], 8080);
    assert_eq!(allowed["destination"]["pod"], "backend");
    assert!(
        allowed["http"]["rule"]
            .as_str()
            .unwrap()
            .contains("rule 1 (method \"GET|HEAD\", path \"/public/.*\")"),
        "{allowed}"
    );
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e["verdict"] == "DROPPED" && !e["http"].is_null())
        .collect();
    assert_eq!(denied.len(), 4, "three 403s and the reset one: {events:?}");
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
    let (node, backend, frontend) = shop(vec!["--audit"]);
    let srv = Server::start(&backend, 8080);
    node.apply_manifests(&[("http.yaml", Some(POLICY))]);
    let url = |p: &str| format!("http://{}:8080{p}", backend.ip);
    assert_eq!(curl(&frontend, &[url("/admin")]), ["200"]);
    assert_eq!(curl(&frontend, &[url("/")]), ["200"]);
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

/// nginx from Debian as the server pod, wrk and curl as clients: keep-alive load on an
/// allowed path sees only 200s; large headers pass up to the inspectable size and are
/// refused beyond it; a chunked upload passes.
#[test]
fn nginx_server_wrk_keep_alive_large_headers_and_chunked_uploads() {
    root_or_skip!();
    let node = Node::start_with(NodeOpts {
        manifests: vec![(
            "base.yaml",
            namespace("web") + &pod("web", "nginx", "nginx") + &pod("web", "client", "client"),
        )],
        ..NodeOpts::default()
    });
    let server = node.add_pod("web", "nginx");
    let client = node.add_pod("web", "client");
    let dir = std::env::temp_dir().join(format!("moat-nginx-{}", server.netns));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 512; }}\nhttp {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  large_client_header_buffers 4 16k;\n  server {{ listen 8080; client_max_body_size 1m; location / {{ return 200 \"ok\\n\"; }} location /upload {{ return 200 \"got\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    // One process (master_process off), ended and its files removed even on failure.
    struct Nginx(Child, PathBuf);
    impl Drop for Nginx {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _nginx = Nginx(
        Command::new("nsenter")
            .arg(format!("--net={}", server.path()))
            .args(["nginx", "-c", &format!("{d}/nginx.conf"), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        dir.clone(),
    );
    let url = |p: &str| format!("http://{}:8080{p}", server.ip);
    let t = Instant::now();
    while curl(&client, &[url("/")]) != ["200"] {
        assert!(t.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    node.apply_manifests(&[(
        "http.yaml",
        Some(
            "apiVersion: moat.io/v1alpha1\nkind: MoatNetworkPolicy\nmetadata: {name: nginx-http, namespace: web}\nspec:\n  endpointSelector: {matchLabels: {app: nginx}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts:\n    - ports: [{port: '8080', protocol: TCP}]\n      rules:\n        http:\n        - {method: GET, path: '/(index\\.html)?'}\n        - {method: POST, path: /upload}\n",
        ),
    )]);
    // wrk: keep-alive load, all answered 200 by nginx.
    let wrk = Command::new("nsenter")
        .arg(format!("--net={}", client.path()))
        .args(["wrk", "-t1", "-c4", "-d2s", &url("/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&wrk.stdout);
    let requests: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .map(|(n, _)| n.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    assert!(
        requests > 100 && !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "{text}"
    );
    // A 3 KB header passes; a head over the inspectable 4 KiB is refused.
    let header = |n: usize| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", client.path()))
            .args(["curl", "-s", "-o", "/dev/null", "--max-time", "3", "-w", "%{http_code}"])
            .args(["-H", &format!("X-Big: {}", "b".repeat(n)), &url("/")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(header(3000), "200");
    assert_eq!(header(5000), "403");
    // Chunked upload of 100 KB to an allowed POST path.
    let upload = Command::new("nsenter")
        .arg(format!("--net={}", client.path()))
        .args(["sh", "-c"])
        .arg(format!(
            "head -c 100000 /dev/zero | curl -s --max-time 5 -H 'Transfer-Encoding: chunked' --data-binary @- {}",
            url("/upload")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&upload.stdout).trim(), "got", "{upload:?}");
    // A denied path on the same server.
    assert_eq!(curl(&client, &[url("/admin")]), ["403"]);
    let access = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    assert!(!access.contains("/admin"), "nginx saw a denied request");
}

/// The HTTP rules outlive the agent: while it is stopped, and after it restarts, a new
/// connection's `GET /admin` is still answered 403 by the kernel (sock_ops link pinned,
/// stream programs attached to the pinned sockhash, tables pinned).
#[test]
fn http_rules_hold_while_the_agent_is_down_and_after_it_restarts() {
    root_or_skip!();
    let (node, backend, frontend) = shop(vec![]);
    let srv = Server::start(&backend, 8080);
    node.apply_manifests(&[("http.yaml", Some(POLICY))]);
    let url = |p: &str| format!("http://{}:8080{p}", backend.ip);
    assert_eq!(curl(&frontend, &[url("/"), url("/admin")]), ["200", "403"]);
    node.stop_agent();
    assert_eq!(
        curl(&frontend, &[url("/"), url("/admin")]),
        ["200", "403"],
        "agent down"
    );
    node.start_agent();
    assert_eq!(
        curl(&frontend, &[url("/"), url("/admin")]),
        ["200", "403"],
        "agent restarted"
    );
    // The restarted agent keeps applying changes to the rules.
    node.apply_manifests(&[("http.yaml", Some(&POLICY.replace("path: /}", "path: '/|/admin'}")))]);
    assert_eq!(
        curl(&frontend, &[url("/admin")]),
        ["200"],
        "new rules after the restart"
    );
    assert!(
        srv.seen().lines().filter(|l| l.contains("admin")).count() == 1,
        "{}",
        srv.seen()
    );
}
