//! A real runtime: containerd's `ctr run --cni` calls the installed `moat` plugin
//! (conflist from `moat-agent install-cni`); two containers reach each other over
//! HTTP, and removing them leaves no endpoint, lease or veth behind.
use std::time::{Duration, Instant};

use moat_netns_tests::containerd::{Containerd, SystemFiles, INDEX_BODY};
use moat_netns_tests::{bin, require_root, sh, unique, Node, NodeOpts};
use serde_json::Value;

#[test]
fn containerd_containers_reach_each_other_and_clean_up() {
    require_root();
    // ctr's CNI library reads these fixed paths; restore whatever was there.
    let _files = SystemFiles::guard(&["/opt/cni/bin/moat", "/etc/cni/net.d/05-moat.conflist"]);
    let node = Node::start_with(NodeOpts {
        root_netns: true,
        ..NodeOpts::default()
    });
    // containerd 1.6's CNI library understands results up to 1.0.0.
    sh(std::process::Command::new(bin("moat-agent"))
        .args(["install-cni", "--cni-version", "1.0.0", "--socket"])
        .arg(&node.socket));
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string("/etc/cni/net.d/05-moat.conflist").unwrap()).unwrap();
    assert_eq!(conf["plugins"][0]["type"], "moat");

    let mut ctrd = Containerd::start(&std::env::temp_dir().join(unique("-containerd")));
    let web = unique("-web");
    ctrd.run_background(&web, &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let endpoints = || -> Vec<Value> {
        serde_json::from_str::<Value>(&node.moatctl(&["endpoints", "-o", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
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
    assert!(node.link_pins().is_empty());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}
