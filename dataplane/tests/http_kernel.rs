//! HTTP rules enforced by the kernel on a real server's sockets (no proxy process).
//!
//! A Python HTTP/1.1 server (keep-alive) runs in a cgroup of its own; Moat's sock_ops
//! program is attached to that cgroup and the server's port gets the rules
//! `GET /`, `GET|HEAD /public/.*`, `POST /api/items`. Real clients (curl, raw sockets from
//! this test) then send allowed and denied requests: every denied one is answered
//! `403` by the kernel and never appears in the server's request log.
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_dataplane::fixtures::have_root;
use moat_dataplane::kernel::datapath::Datapath;
use moat_dataplane::kernel::http::PortRules;
use moat_dataplane_common::l7::L7PortKey;
use moat_k8s_model::HttpRule;
use moat_policy_compiler::http::dfa;

/// Removed on drop: pins, the cgroup (after its processes), the server.
struct Fixture {
    pin: PathBuf,
    cgroup: PathBuf,
    server: Option<Child>,
    log: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(self.log.with_extension("py"));
        let _ = std::fs::remove_dir_all(self.log.with_extension("www"));
    }
}

/// The test server (`tests/http_server.py`).
const SERVER: &str = include_str!("../../tests/http_server.py");

fn rule(m: &str, p: &str) -> HttpRule {
    HttpRule {
        method: Some(m.into()),
        path: Some(p.into()),
        ..HttpRule::default()
    }
}

fn cgroup2_root() -> PathBuf {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if Path::new(p).join("cgroup.procs").exists() && Path::new(p).join("cgroup.subtree_control").exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no cgroup v2 mount");
}

fn setup(tag: &str) -> Option<(Fixture, Datapath, u16)> {
    setup_serving(tag, |fx, port| {
        let server_py = fx.log.with_extension("py");
        std::fs::write(&server_py, SERVER).unwrap();
        format!("exec python3 {} {port} {}", server_py.display(), fx.log.display())
    })
}

/// As `setup`, with the server started by the shell command `serve(fixture, port)`.
fn setup_serving(tag: &str, serve: impl Fn(&Fixture, u16) -> String) -> Option<(Fixture, Datapath, u16)> {
    if !have_root(&format!("HTTP kernel enforcement test {tag}")) {
        return None;
    }
    moat_dataplane::kernel::netdev::ensure_bpffs(Path::new("/sys/fs/bpf")).unwrap();
    let id = format!("moat-http-{tag}-{}", std::process::id());
    // Distinct per test (they run in parallel) and per run.
    let salt = tag
        .bytes()
        .fold(0u16, |h, b| h.wrapping_mul(31).wrapping_add(u16::from(b)))
        % 512;
    let port = 20_000 + (std::process::id() % 20_000) as u16 + salt;
    let mut fx = Fixture {
        pin: PathBuf::from(format!("/sys/fs/bpf/{id}")),
        cgroup: cgroup2_root().join(&id),
        server: None,
        log: std::env::temp_dir().join(format!("{id}.log")),
    };
    std::fs::create_dir_all(&fx.cgroup).unwrap();
    let mut dp = Datapath::load(&fx.pin).expect("load the datapath");
    dp.attach_http(&fx.cgroup).expect("attach HTTP enforcement");
    let rules = [
        rule("GET", "/"),
        rule("GET|HEAD", "/public/.*"),
        rule("POST", "/api/items"),
    ];
    let mut ports = BTreeMap::new();
    ports.insert(
        L7PortKey {
            addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            port,
            _pad: 0,
        },
        PortRules {
            dfa: dfa::build(&rules, "test").unwrap(),
            flags: 0,
        },
    );
    dp.apply_http(&ports).expect("install the rules");
    // The server joins the cgroup before it opens its listening socket (accepted
    // sockets belong to the listener's cgroup).
    let script = format!("echo $$ > {}/cgroup.procs && {}", fx.cgroup.display(), serve(&fx, port));
    fx.server = Some(
        Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((fx, dp, port))
}

/// Sends `chunks` (with `gap` between them) on one connection; returns all it reads
/// until the peer closes or goes quiet.
fn exchange(port: u16, chunks: &[&[u8]], gap: Duration) -> String {
    exchange_waiting(port, chunks, gap, Duration::from_millis(700))
}

/// As `exchange`, reading until `quiet` passes without a byte.
fn exchange_waiting(port: u16, chunks: &[&[u8]], gap: Duration, quiet: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(quiet)).unwrap();
    for c in chunks {
        s.write_all(c).unwrap();
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn log(fx: &Fixture) -> String {
    std::fs::read_to_string(&fx.log).unwrap_or_default()
}

const GET_ROOT: &[u8] = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n";
const GET_ADMIN: &[u8] = b"GET /admin HTTP/1.1\r\nHost: backend\r\nUser-Agent: test/1.0\r\nAccept: */*\r\n\r\n";

#[test]
fn allowed_requests_pass_and_denied_ones_get_403_from_the_kernel() {
    let Some((fx, dp, port)) = setup("basic") else {
        return;
    };
    if let Ok(secs) = std::env::var("MOAT_HTTP_HOLD") {
        eprintln!("holding: port {port} pin {}", fx.pin.display());
        std::thread::sleep(Duration::from_secs(secs.parse().unwrap()));
    }
    let ok = exchange(port, &[GET_ROOT], Duration::ZERO);
    assert!(
        ok.starts_with("HTTP/1.1 200"),
        "GET /: {ok:?} {:?} log {:?}",
        dp.counters(),
        log(&fx)
    );
    let denied = exchange(port, &[GET_ADMIN], Duration::ZERO);
    assert!(denied.starts_with("HTTP/1.1 403 Forbidden"), "GET /admin: {denied:?}");
    assert!(
        denied.contains("Connection: close") && denied.contains("\r\n\r\nAccess"),
        "{denied:?}"
    );
    // A request too short for any complete answer gets none, and never reaches the server
    // (the agent then resets the connection: `tests/netns/tests/http_policy.rs`).
    let tiny = exchange(port, &[b"GET /admin HTTP/1.0\r\n\r\n"], Duration::ZERO);
    assert!(tiny.is_empty(), "{tiny:?}");
    // A short request gets the short form of the answer, still a complete response.
    let short = exchange(port, &[b"GET /admin HTTP/1.1\r\nHost: backend\r\n\r\n"], Duration::ZERO);
    assert!(
        short.starts_with("HTTP/1.1 403 \r\nContent-Length:02\r\n\r\nAc"),
        "{short:?}"
    );
    // curl, as a user would run it.
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("/public/app.css"), "200");
    assert_eq!(curl("/admin"), "403");
    assert_eq!(curl("/public/../admin"), "403", "normalised before matching");
    assert_eq!(curl("/%61dmin"), "403");
    let seen = log(&fx);
    assert!(!seen.contains("admin"), "the server saw a denied request: {seen}");
    assert!(
        seen.contains("GET / 0") && seen.contains("GET /public/app.css 0"),
        "{seen}"
    );
}

#[test]
fn keep_alive_pipelining_bodies_and_slow_clients_are_framed_exactly() {
    let Some((fx, _dp, port)) = setup("framing") else {
        return;
    };
    // Keep-alive: allowed, allowed, then denied on the same connection.
    let out = exchange(
        port,
        &[GET_ROOT, b"GET /public/x HTTP/1.1\r\nHost: b\r\n\r\n", GET_ADMIN],
        Duration::from_millis(150),
    );
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out:?}");
    assert!(out.contains("HTTP/1.1 403 Forbidden"), "{out:?}");
    // Pipelined in one write: the second request is found exactly after the first. Two
    // allowed ones are both answered, in order.
    let mut two = GET_ROOT.to_vec();
    two.extend_from_slice(b"GET /public/y HTTP/1.1\r\nHost: b\r\n\r\n");
    let out = exchange(port, &[&two], Duration::ZERO);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("ok GET /public/y"),
        "{out:?}"
    );
    // A refused one behind an allowed one: a 403 now would overtake the server's answer
    // to the first, so the connection is reset; the first may still be answered, the
    // refused one never reaches the server and nothing answers it with a 200.
    let mut two = GET_ROOT.to_vec();
    two.extend_from_slice(GET_ADMIN);
    let out = exchange(port, &[&two], Duration::ZERO);
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        out.matches("ok GET / 0").count(),
        "{out:?}"
    );
    // A body that looks like a denied request is body, not a request.
    let body = b"GET /admin HTTP/1.1\r\nHost: b\r\n\r\n";
    let post = format!(
        "POST /api/items HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let out = exchange(port, &[post.as_bytes(), body, GET_ROOT], Duration::from_millis(100));
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out:?}");
    // Chunked upload, then a denied request after it on the same connection.
    let out = exchange(
        port,
        &[
            b"POST /api/items HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n",
            b"6\r\n world\r\n0\r\n\r\n",
            GET_ADMIN,
        ],
        Duration::from_millis(100),
    );
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("ok POST /api/items 11") && out.contains("HTTP/1.1 403"),
        "{out:?}"
    );
    // One byte at a time: the head is held back and assembled before the decision.
    let bytes: Vec<&[u8]> = GET_ADMIN.chunks(1).collect();
    let out = exchange(port, &bytes, Duration::from_millis(5));
    assert!(out.starts_with("HTTP/1.1 403"), "{out:?}");
    let bytes: Vec<&[u8]> = GET_ROOT.chunks(1).collect();
    let out = exchange(port, &bytes, Duration::from_millis(5));
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    let seen = log(&fx);
    assert!(!seen.contains("admin"), "the server saw a denied request: {seen}");
}

/// Python's `http.server` as users run it: blocking sockets, and the request usually
/// there before `accept()` returns (a stream parser could not read such data, and the
/// server's first `recv()` failed with EAGAIN). Every allowed request is served, every
/// refused one gets the 403 and never appears in the server's log.
#[test]
fn python_http_server_with_blocking_sockets() {
    let Some((fx, _dp, port)) = setup_serving("pyhttp", |fx, port| {
        let www = fx.log.with_extension("www");
        std::fs::create_dir_all(www.join("public")).unwrap();
        std::fs::write(www.join("index.html"), "home\n").unwrap();
        std::fs::write(www.join("public/app.css"), "body{}\n").unwrap();
        std::fs::write(www.join("admin"), "secret\n").unwrap();
        format!(
            "cd {} && exec python3 -m http.server --bind 127.0.0.1 {port} 2> {}",
            www.display(),
            fx.log.display()
        )
    }) else {
        return;
    };
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                "-w",
                " %{http_code}",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for i in 0..20 {
        assert_eq!(curl("/"), "home\n 200", "request {i}: {}", log(&fx));
        assert_eq!(curl("/public/app.css"), "body{}\n 200");
        let denied = curl("/admin");
        assert!(denied.ends_with(" 403") && !denied.contains("secret"), "{denied:?}");
    }
    // http.server acts on a partial head at EOF (an HTTP/0.9 line, or headers cut short):
    // a head the kernel has not judged whole must never reach it, whole or in part. (Sent a
    // byte at a time, the blocking server may give up first: every segment held back wakes
    // its `recv()` with nothing to read, which fails with EAGAIN; docs/http.md.)
    for partial in [
        &b"GET /admin"[..],
        b"GET /admin HTTP/1.1\r\nHost: x\r\n",
        b"GET /admin HTTP/1.0\r\n",
    ] {
        for split in [false, true] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            if split {
                for b in partial.chunks(1) {
                    let _ = s.write_all(b);
                    std::thread::sleep(Duration::from_millis(2));
                }
            } else {
                s.write_all(partial).unwrap();
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            assert!(!out.contains("secret"), "{partial:?} then EOF: {out:?}");
        }
    }
    let seen = log(&fx);
    assert_eq!(seen.matches("\"GET / HTTP/1.1\" 200").count(), 20, "{seen}");
    assert!(!seen.contains("admin"), "the server saw a denied request: {seen}");
}

/// The bypass corpus (`policy-compiler::http::corpus`, ≥ 40 techniques) against the
/// kernel: each is sent whole, and again one byte per write; none gets a 200 and none
/// reaches `/admin` on the server.
#[test]
fn bypass_corpus_never_reaches_the_server() {
    let Some((fx, dp, port)) = setup("corpus") else {
        return;
    };
    let corpus = moat_policy_compiler::http::corpus::bypass_corpus();
    assert!(corpus.len() >= 40);
    for (name, req, _) in &corpus {
        let quiet = Duration::from_millis(200);
        let whole = exchange_waiting(port, &[req], Duration::ZERO, quiet);
        assert!(!whole.contains(" 200 "), "{name}: answered {whole:?}");
        if req.len() < 200 {
            let bytes: Vec<&[u8]> = req.chunks(1).collect();
            let split = exchange_waiting(port, &bytes, Duration::from_millis(1), quiet);
            assert!(!split.contains(" 200 "), "{name} (byte by byte): answered {split:?}");
        }
    }
    let seen = log(&fx);
    assert!(!seen.contains("admin"), "the server saw: {seen}");
    // Refusals are counted by reason: denied by rule (180), malformed (182), framing (186),
    // ambiguous path (187).
    let counters = dp.counters();
    for reason in [
        "drop_http_denied",
        "drop_http_malformed",
        "drop_http_ambiguous_framing",
        "drop_http_ambiguous_path",
    ] {
        assert!(
            counters.iter().any(|(n, c)| *n == reason && *c > 0),
            "{reason}: {counters:?}"
        );
    }
}

/// Reads one complete answer (head + Content-Length body), or until `quiet` passes.
fn one_answer(port: u16, req: &[u8], quiet: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(quiet)).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let cl = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + cl {
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kernel path against user space on generated requests: the reference parser
/// (`http::request`), its normalisation and the rules' user-space DFAs decide allowed or
/// refused; the kernel, on real sockets, must agree on every one (allowed: the server
/// answers 200; refused: no 200).
#[test]
fn kernel_verdicts_equal_the_user_space_reference() {
    use moat_policy_compiler::http::request::parse_head;
    use moat_policy_compiler::http::rules::{first_match, CompiledRule};
    let Some((_fx, _dp, port)) = setup("differential") else {
        return;
    };
    let rules: Vec<CompiledRule> = [
        rule("GET", "/"),
        rule("GET|HEAD", "/public/.*"),
        rule("POST", "/api/items"),
    ]
    .iter()
    .enumerate()
    .map(|(i, r)| CompiledRule::compile(r, &format!("http[{i}]")).unwrap())
    .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rnd = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let methods = ["GET", "GET", "HEAD", "POST", "get", "DELETE"];
    let segs = [
        "public", "public", "admin", "..", ".", "", "%61dmin", "%70ublic", "api", "items", "x%2Fy", "a;b", "%7e", "A",
    ];
    let hosts = ["backend", "BACKEND:80", "[::1]", "h.example"];
    let (mut allowed, mut refused) = (0, 0);
    for case in 0..400 {
        let mut path = String::new();
        for _ in 0..1 + rnd(3) {
            path.push('/');
            path.push_str(segs[rnd(segs.len())]);
        }
        if rnd(4) == 0 {
            path = "/".into();
        }
        let method = methods[rnd(methods.len())];
        let body = if method == "POST" {
            "Content-Length: 2\r\n\r\n{}"
        } else {
            "\r\n"
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: moat-differential/{case}\r\n{body}",
            hosts[rnd(hosts.len())]
        );
        let want = match parse_head(req.as_bytes()) {
            Ok(Some(h)) => first_match(&rules, &h).is_some(),
            Ok(None) => panic!("incomplete: {req:?}"),
            Err(_) => false,
        };
        let got = one_answer(port, req.as_bytes(), Duration::from_millis(300));
        let passed = got.starts_with("HTTP/1.1 200");
        assert_eq!(passed, want, "case {case}: {req:?} answered {got:?}");
        if want {
            allowed += 1;
        } else {
            refused += 1;
            assert!(
                got.is_empty() || got.starts_with("HTTP/1.1 403"),
                "case {case}: {got:?}"
            );
        }
    }
    assert!(
        allowed > 40 && refused > 40,
        "both verdicts exercised: {allowed} allowed, {refused} refused"
    );
}
