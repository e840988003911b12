//! A real runtime: containerd's `ctr run --cni` calls the installed `moat` plugin
//! (the default conflist from `moat-agent install-cni`, no flags); two containers reach
//! each other over HTTP, and removing them leaves no endpoint, lease or veth behind.
//! A runtime that fails after ADD and never calls DEL leaves nothing behind either.
use std::time::{Duration, Instant};

use moat_netns_tests::containerd::{Containerd, SystemFiles, INDEX_BODY};
use moat_netns_tests::{bin, root_or_skip, sh, unique, Node, NodeOpts};
use serde_json::Value;

/// Both tests write the fixed CNI paths and wire veths in the root netns: one at a time.
static SYSTEM_PATHS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn containerd_containers_reach_each_other_and_clean_up() {
    root_or_skip!();
    let _one = SYSTEM_PATHS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // ctr's CNI library reads these fixed paths; restore whatever was there.
    let _files = SystemFiles::guard(&["/opt/cni/bin/moat", "/etc/cni/net.d/05-moat.conflist"]);
    let node = Node::start_with(NodeOpts {
        root_netns: true,
        ..NodeOpts::default()
    });
    // The conflist a user gets: no version flag.
    sh(std::process::Command::new(bin("moat-agent"))
        .args(["install-cni", "--socket"])
        .arg(&node.socket));
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string("/etc/cni/net.d/05-moat.conflist").unwrap()).unwrap();
    assert_eq!(conf["plugins"][0]["type"], "moat");

    let mut ctrd = Containerd::start(&std::env::temp_dir().join(unique("-containerd")));
    let web = unique("-web");
    ctrd.run_background(&web, &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let endpoints = || endpoints(&node);
    let deadline = Instant::now() + Duration::from_secs(30);
    let web_ip = loop {
        if let Some(ep) = endpoints()
            .into_iter()
            .find(|e| e["containerID"] == format!("default-{web}"))
        {
            break ep["ipv4"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "web container never got an endpoint: {}",
            ctrd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // A second container fetches the page from the first, pod to pod.
    let cli = unique("-cli");
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {web_ip} 8080");
    let mut page = String::new();
    for _ in 0..20 {
        page = ctrd.run(&cli, &["sh", "-c", &script]);
        if page.contains(INDEX_BODY) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        page.contains("200 OK") && page.contains(INDEX_BODY),
        "HTTP from the second container: {page:?}"
    );

    ctrd.stop(&web);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !endpoints().is_empty() {
        assert!(
            Instant::now() < deadline,
            "endpoints left after removal: {:?}",
            endpoints()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        node.persisted_leases(),
        0,
        "leases left after the containers were removed"
    );
    assert_eq!(node.map_entries(), 0);
    assert!(node.attachments().is_empty());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(
        node.agent_log().contains("endpoint deleted by CNI DEL"),
        "the runtime's DEL removed the endpoints:\n{}",
        node.agent_log()
    );
}

fn endpoints(node: &Node) -> Vec<Value> {
    serde_json::from_str::<Value>(&node.moatctl(&["endpoints", "-o", "json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the agent lists no endpoint, then checks nothing else is left.
fn assert_all_gone(node: &Node, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !endpoints(node).is_empty() {
        assert!(
            Instant::now() < deadline,
            "endpoints left {what}: {:?}\nagent log:\n{}",
            endpoints(node),
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(node.persisted_leases(), 0, "lease left {what}");
    assert_eq!(node.map_entries(), 0, "map entry left {what}");
    assert!(node.attachments().is_empty(), "{what}: {:?}", node.attachments());
    assert!(node.host_veths().is_empty(), "{what}: {:?}", node.host_veths());
}

fn node_with_conflist(version: Option<&str>) -> Node {
    let node = Node::start_with(NodeOpts {
        root_netns: true,
        ..NodeOpts::default()
    });
    let mut cmd = std::process::Command::new(bin("moat-agent"));
    cmd.arg("install-cni");
    if let Some(v) = version {
        cmd.args(["--cni-version", v]);
    }
    sh(cmd.arg("--socket").arg(&node.socket));
    node
}

/// A container killed before its runtime could call DEL (the `ctr` client dies first,
/// then the container): its netns dies with it, and the agent collects the endpoint.
#[test]
fn a_container_killed_without_del_is_collected() {
    root_or_skip!();
    let _one = SYSTEM_PATHS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let _files = SystemFiles::guard(&["/opt/cni/bin/moat", "/etc/cni/net.d/05-moat.conflist"]);
    let node = node_with_conflist(None);
    let mut ctrd = Containerd::start(&std::env::temp_dir().join(unique("-containerd")));
    let web = unique("-crash");
    ctrd.run_background(&web, &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoints(&node).is_empty() {
        assert!(Instant::now() < deadline, "no endpoint: {}", ctrd.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    ctrd.crash(&web);
    assert_all_gone(&node, Duration::from_secs(10), "after the crash");
    let log = node.agent_log();
    assert!(
        log.contains("endpoint collected"),
        "collected by the agent, not a DEL:\n{log}"
    );
    assert!(
        !log.contains("endpoint deleted by CNI DEL"),
        "no DEL reached the agent:\n{log}"
    );
}

/// containerd 1.6 refuses a 1.1.0 result after the plugin has wired the pod (which is why
/// the default conflist says 1.0.0); `ctr` then tears the network down itself. A runtime
/// that speaks 1.1.0 runs the container and `--rm` cleans up through DEL. Either way
/// nothing is left behind.
#[test]
fn a_runtime_that_fails_after_add_leaves_nothing_behind() {
    root_or_skip!();
    let _one = SYSTEM_PATHS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let _files = SystemFiles::guard(&["/opt/cni/bin/moat", "/etc/cni/net.d/05-moat.conflist"]);
    let node = node_with_conflist(Some("1.1.0"));
    let mut ctrd = Containerd::start(&std::env::temp_dir().join(unique("-containerd")));
    let id = unique("-v11");
    // A container whose start failed keeps a task and a shim: removed on drop.
    ctrd.adopt(&id);
    let out = ctrd
        .ctr()
        .args([
            "run",
            "--rm",
            "--cni",
            moat_netns_tests::containerd::IMAGE,
            &id,
            "sh",
            "-c",
            "exit 0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("this containerd speaks CNI 1.1.0: the container ran");
    } else {
        assert!(
            stderr.contains("unsupported CNI result version"),
            "ctr run failed for another reason: {stderr}\n{}",
            ctrd.log()
        );
        assert!(
            node.agent_log().contains("endpoint added"),
            "the plugin wired the pod before the runtime failed:\n{}",
            node.agent_log()
        );
    }
    assert_all_gone(&node, Duration::from_secs(15), "by the failed runtime");
}
