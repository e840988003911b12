//! A policy larger than the policy map: nothing of it is written, the last policy that
//! fit stays enforced (new pods included), `moatctl status` says why, and the map size
//! is a flag.
use std::time::{Duration, Instant};

use moat_netns_tests::manifest::{namespace, pod};
use moat_netns_tests::net::{tcp_echo, EchoServer};
use moat_netns_tests::{root_or_skip, Node, NodeOpts};
use serde_json::Value;

/// web admits TCP 8080 from namespace ops only.
fn world() -> String {
    namespace("shop")
        + &namespace("ops")
        + &pod("shop", "web", "web")
        + &pod("shop", "web2", "web")
        + &pod("shop", "db", "db")
        + &pod("ops", "admin", "admin")
        + "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\n\
           spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n\
           \x20 - from: [{namespaceSelector: {matchLabels: {team: ops}}}]\n    ports: [{protocol: TCP, port: 8080}]\n"
}

/// 600 peers × 500 ports = 300,000 policy entries for db, and a deny-all for ops.
fn huge() -> String {
    let peers: Vec<String> = (0..600)
        .map(|i| format!("{{ipBlock: {{cidr: 172.16.{}.{}/32}}}}", i / 250, i % 250 + 1))
        .collect();
    let ports: Vec<String> = (0..500)
        .map(|i| format!("{{protocol: TCP, port: {}}}", 20000 + i))
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: huge, namespace: shop}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from: [{}]\n    ports: [{}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: ops}}\n\
         spec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n",
        peers.join(", "),
        ports.join(", ")
    )
}

fn start(agent_args: Vec<&'static str>) -> Node {
    Node::start_with(NodeOpts {
        manifests: vec![("world.yaml", world())],
        agent_args,
        ..NodeOpts::default()
    })
}

/// Polls `moatctl status` until `pred` holds (the agent applies a large policy in the
/// background of the directory re-read).
fn wait_status(node: &Node, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = node.status();
        if pred(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}; status: {st:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_policy_that_does_not_fit_leaves_the_last_good_one_enforced() {
    root_or_skip!();
    let node = start(vec![]);
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let admin = node.add_pod("ops", "admin");
    let _srv = EchoServer::start(&web.path(), 8080);
    let _srv_admin = EchoServer::start(&admin.path(), 8080);
    assert!(tcp_echo(&admin.path(), web.ip, 8080, b"a").is_ok(), "ops → web allowed");
    assert!(tcp_echo(&db.path(), web.ip, 8080, b"d").is_err(), "db → web denied");
    let before = node.status();
    assert_eq!(before["policyCapacity"], 262_144, "default size: {before}");
    assert!(before["policyError"].is_null());

    std::fs::write(node.state_dir().join("huge.yaml"), huge()).unwrap();
    let st = wait_status(&node, "the oversized policy is reported", |st| {
        st["policyError"].as_str().is_some_and(|e| e.contains("policy map"))
    });
    let err = st["policyError"].as_str().unwrap();
    assert!(
        err.contains("holds 262144") && err.contains("--policy-map-entries"),
        "{err}"
    );
    assert_eq!(
        st["policyEntries"], before["policyEntries"],
        "nothing of it was written"
    );
    assert!(node.moatctl(&["status"]).contains("POLICY NOT APPLIED"));

    // The last good policy stays, for existing pods and new ones: no part of the new
    // state (its deny-all for ops included) was applied, and web2 is isolated like web.
    assert!(
        tcp_echo(&web.path(), admin.ip, 8080, b"w").is_ok(),
        "ops is not isolated yet"
    );
    assert!(
        tcp_echo(&db.path(), web.ip, 8080, b"d").is_err(),
        "db → web still denied"
    );
    let web2 = node.add_pod("shop", "web2");
    let _srv2 = EchoServer::start(&web2.path(), 8080);
    assert!(
        tcp_echo(&admin.path(), web2.ip, 8080, b"a").is_ok(),
        "ops → web2 allowed"
    );
    assert!(
        tcp_echo(&db.path(), web2.ip, 8080, b"d").is_err(),
        "a new pod gets the enforced policy"
    );

    // A state that fits again replaces it and the error goes.
    std::fs::remove_file(node.state_dir().join("huge.yaml")).unwrap();
    wait_status(&node, "the error clears", |st| st["policyError"].is_null());
}

#[test]
fn the_policy_map_size_is_a_flag() {
    root_or_skip!();
    let node = start(vec!["--policy-map-entries", "400000"]);
    let web = node.add_pod("shop", "web");
    let _db = node.add_pod("shop", "db");
    let admin = node.add_pod("ops", "admin");
    let _srv_admin = EchoServer::start(&admin.path(), 8080);
    assert_eq!(node.status()["policyCapacity"], 400_000);
    std::fs::write(node.state_dir().join("huge.yaml"), huge()).unwrap();
    let st = wait_status(&node, "the large policy is applied", |st| {
        st["policyEntries"].as_u64() > Some(300_000)
    });
    assert!(st["policyError"].is_null(), "{st}");
    // Its deny-all for ops is enforced too.
    assert!(tcp_echo(&web.path(), admin.ip, 8080, b"w").is_err(), "ops is isolated");
}
