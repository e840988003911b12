//! The state dir is untrusted input: hostile entries are never read, and a directory that
//! disappears for a moment never means "no policy".
//!
//! ```text
//!  state dir: base.yaml (shop/web, shop/db) + deny.yaml (db: deny-all ingress)
//!             + fifo.yaml (FIFO) + zero.yaml → /dev/zero + secret.yaml → a 0600 secret
//!  web ──TCP 5432──► db   must stay refused the whole time
//! ```
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use moat_netns_tests::net::{tcp_echo, EchoServer};
use moat_netns_tests::{root_or_skip, Node, NodeOpts};
use serde_json::Value;

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: shop, labels: {app: db}}\nspec: {containers: [{name: c}]}\n";
const DENY_DB: &str =
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-deny, namespace: shop}\n\
spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}\n";
const ALLOW_OTHER: &str =
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: other, namespace: shop}\n\
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}\n";

fn start() -> Node {
    moat_netns_tests::require_root();
    Node::start_with(NodeOpts {
        manifests: vec![("base.yaml", BASE.into()), ("deny.yaml", DENY_DB.into())],
        ..NodeOpts::default()
    })
}

fn manifest_errors(node: &Node) -> Vec<String> {
    node.status()["manifestErrors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[test]
fn fifos_device_links_and_secret_links_are_never_read() {
    root_or_skip!();
    let node = start();
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let _srv = EchoServer::start(&db.path(), 5432);
    assert!(tcp_echo(&web.path(), db.ip, 5432, b"x").is_err(), "db denies ingress");

    let state = node.state_dir();
    let secret = node.dir.join("secret");
    std::fs::write(&secret, "TOP-SECRET-MARKER\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fifo = std::ffi::CString::new(state.join("fifo.yaml").to_str().unwrap()).unwrap();
    // SAFETY: a valid path; creates a FIFO.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", state.join("zero.yaml")).unwrap();
    std::os::unix::fs::symlink(&secret, state.join("secret.yaml")).unwrap();

    // The source keeps working: a legitimate change is applied within seconds.
    let t = Instant::now();
    node.apply_manifests(&[("other.yaml", Some(ALLOW_OTHER))]);
    assert!(t.elapsed() < Duration::from_secs(5));
    let errors = manifest_errors(&node).join("\n");
    assert!(errors.contains("fifo.yaml") && errors.contains("FIFO"), "{errors}");
    assert!(
        errors.contains("zero.yaml") && errors.contains("symbolic link"),
        "{errors}"
    );
    assert!(
        errors.contains("secret.yaml") && errors.contains("symbolic link"),
        "{errors}"
    );
    assert_eq!(node.status()["policies"], 2, "both real policies are in force");

    // The agent answers: a new pod is wired, and the old policy still holds.
    let late = node.add_pod("shop", "late");
    assert!(tcp_echo(&late.path(), db.ip, 5432, b"x").is_err());
    assert!(tcp_echo(&web.path(), db.ip, 5432, b"x").is_err());

    // The last-good cache holds no copy of the secret, and only its owner can read it.
    let cache = node.dir.join("data/last-good-manifests");
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    for e in std::fs::read_dir(&cache).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert!(
            !text.contains("TOP-SECRET-MARKER"),
            "{} holds the secret",
            e.path().display()
        );
        assert_eq!(
            e.metadata().unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            e.path().display()
        );
    }
}

#[test]
fn a_state_dir_moved_away_keeps_the_last_good_policy() {
    root_or_skip!();
    let node = start();
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let _srv = EchoServer::start(&db.path(), 5432);
    assert!(tcp_echo(&web.path(), db.ip, 5432, b"x").is_err());

    // `mv dir old; mv new dir`, caught in between.
    let state = node.state_dir();
    let away = node.dir.join("state.away");
    std::fs::rename(&state, &away).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !manifest_errors(&node).join("").contains("keeping the last good state") {
        assert!(
            Instant::now() < deadline,
            "the missing dir is reported: {:?}",
            node.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let status: Value = node.status();
    assert_eq!(
        status["policies"], 1,
        "the policy stays while the dir is gone: {status}"
    );
    assert!(
        tcp_echo(&web.path(), db.ip, 5432, b"x").is_err(),
        "db still denies ingress"
    );

    std::fs::rename(&away, &state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !manifest_errors(&node).is_empty() {
        assert!(
            Instant::now() < deadline,
            "errors after the dir is back: {:?}",
            manifest_errors(&node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node.status()["policies"], 1);
    assert!(tcp_echo(&web.path(), db.ip, 5432, b"x").is_err());

    // An empty (readable) directory is a real answer: no policy.
    std::fs::remove_file(state.join("deny.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.status()["policies"] != 0 {
        assert!(Instant::now() < deadline, "a deleted policy is removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tcp_echo(&web.path(), db.ip, 5432, b"x").unwrap(), b"x");
}

/// A few kilobytes of YAML aliases that would expand to a billion nodes: refused at once,
/// reported, and the agent goes on serving with its policy in force.
#[test]
fn an_alias_bomb_in_the_state_dir_is_refused() {
    root_or_skip!();
    let node = start();
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let _srv = EchoServer::start(&db.path(), 5432);
    let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb, namespace: shop}\ndata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb += &format!("  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
    }
    let t = Instant::now();
    node.apply_manifests(&[("bomb.yaml", Some(&bomb))]);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    let errors = manifest_errors(&node).join("\n");
    assert!(
        errors.contains("bomb.yaml") && errors.contains("invalid YAML"),
        "{errors}"
    );
    assert_eq!(node.status()["policies"], 1);
    assert!(
        tcp_echo(&web.path(), db.ip, 5432, b"x").is_err(),
        "db still denies ingress"
    );
    let late = node.add_pod("shop", "late");
    assert!(tcp_echo(&late.path(), db.ip, 5432, b"x").is_err());
}
