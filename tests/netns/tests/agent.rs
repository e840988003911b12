//! The agent as an operator meets it: standalone manifests, status, bad flags.
use moat_netns_tests::{bin, root_or_skip, Node, NodeOpts};
use serde_json::Value;

#[test]
fn standalone_manifests_are_read_and_bad_documents_named() {
    root_or_skip!();
    let good = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  labels: {app: web}\n\
                spec:\n  containers: [{name: web, image: nginx}]\n";
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: shop\n";
    let node = Node::start_with(NodeOpts {
        manifests: vec![
            ("10-shop.yaml", good.into()),
            ("20-broken.yaml", bad.into()),
            ("notes.txt", "ignored".into()),
        ],
        ..NodeOpts::default()
    });
    let st: Value = serde_json::from_str(&node.moatctl(&["status", "-o", "json"])).unwrap();
    assert_eq!(st["manifests"], serde_json::json!({"Namespace": 1, "Pod": 1}));
    let errors = st["manifestErrors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].as_str().unwrap();
    assert!(e.contains("20-broken.yaml") && e.contains("metadata.name"), "{e}");
    let table = node.moatctl(&["status"]);
    assert!(
        table.contains("Namespace=1, Pod=1") && table.contains("rejected manifest"),
        "{table}"
    );
    // The node keeps working with a bad manifest in its directory.
    let pod = node.add_pod("shop", "web");
    assert!(moat_netns_tests::net::ping(&node.node_netns_path(), pod.ip));
}

#[test]
fn bad_flags_are_named() {
    root_or_skip!();
    let out = std::process::Command::new(bin("moat-agent"))
        .args([
            "--state-dir",
            "/nonexistent/moat-dir",
            "--socket",
            "/tmp/moat-never.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--state-dir") && err.contains("/nonexistent/moat-dir"),
        "{err}"
    );
    let out = std::process::Command::new(bin("moat-agent"))
        .args(["--pod-cidr", "10.1.2.3/40", "--socket", "/tmp/moat-never.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pod-cidr") && err.contains("10.1.2.3/40"), "{err}");
}

/// Neither the agent nor the plugin runs any program: with an empty `PATH` (no
/// iproute2, no iptables, nothing) pods are wired, talk, pass CHECK and go with DEL.
#[test]
fn no_tools_are_needed_at_run_time() {
    root_or_skip!();
    let node = Node::start_with(NodeOpts {
        bare_path: true,
        ..NodeOpts::default()
    });
    let a = node.add_pod("default", "a");
    let b = node.add_pod("default", "b");
    let _srv = moat_netns_tests::net::EchoServer::start(&b.path(), 7000);
    assert_eq!(
        moat_netns_tests::net::tcp_echo(&a.path(), b.ip, 7000, b"bare").unwrap(),
        b"bare"
    );
    let mut conf = node.conf();
    conf["prevResult"] = a.result.clone();
    let check = node.cni(&Node::env("CHECK", &a.container_id, &a.path(), ""), &conf.to_string());
    assert!(check.success, "{check:?}");
    assert!(node.del_pod(&a).success);
    assert!(node.del_pod(&b).success);
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    let log = node.agent_log();
    assert!(
        !log.contains("No such file"),
        "the agent tried to run something:\n{log}"
    );
}

/// SIGTERM: the agent stops serving, removes its socket and exits 0; the pinned
/// datapath stays and keeps forwarding.
#[test]
fn sigterm_shuts_down_cleanly_and_leaves_the_datapath() {
    root_or_skip!();
    let node = Node::start();
    let a = node.add_pod("default", "a");
    let b = node.add_pod("default", "b");
    let _srv = moat_netns_tests::net::EchoServer::start(&b.path(), 7000);
    let status = node.stop_agent().expect("the agent exited within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!node.socket.exists(), "socket removed");
    assert!(node.agent_log().contains("shutting down"), "{}", node.agent_log());
    assert_eq!(
        moat_netns_tests::net::tcp_echo(&a.path(), b.ip, 7000, b"on").unwrap(),
        b"on",
        "pods still talk with no agent"
    );
}
