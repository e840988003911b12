//! CNI spec behaviour of the real `moat` binary: every command, every error code,
//! idempotent DEL, GC, CHECK after tampering, delegated IPAM and chaining.
use moat_netns_tests::net::{tcp_echo, EchoServer};
use moat_netns_tests::{ip, link_exists, netns_path, root_or_skip, sh, Node, NodeOpts};
use serde_json::{json, Value};
use std::process::Command;

fn conf_with(node: &Node, extra: Value) -> String {
    let mut c = node.conf();
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c.to_string()
}

#[test]
fn version_lists_supported_versions() {
    root_or_skip!();
    let node = Node::start();
    let out = node.cni(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.1.0"}"#);
    assert!(out.success, "{out:?}");
    let v = out.json();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(v["supportedVersions"], json!(["1.0.0", "1.1.0"]));
}

#[test]
fn add_wires_the_pod_and_returns_a_spec_result() {
    root_or_skip!();
    let node = Node::start();
    let pod = node.add_pod("shop", "web-0");
    let r = &pod.result;
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], pod.path());
    assert!(r["interfaces"][0]["name"].as_str().unwrap().starts_with("lxc"));
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["ips"][0]["address"], format!("{}/32", pod.ip));
    assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));

    // Inside the pod: /32 address, default route via the link-local gateway, and a
    // permanent neighbour entry for it pointing at the host veth's MAC.
    let host_if = r["interfaces"][0]["name"].as_str().unwrap();
    let host_mac = r["interfaces"][0]["mac"].as_str().unwrap();
    assert!(ip(Some(&pod.netns), &["-4", "addr", "show", "eth0"]).contains(&format!("inet {}/32", pod.ip)));
    assert!(ip(Some(&pod.netns), &["route", "show", "default"]).contains("via 169.254.1.1 dev eth0"));
    let neigh = ip(Some(&pod.netns), &["neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains(host_mac) && neigh.contains("PERMANENT"), "{neigh}");
    // On the node: /32 route to the pod via its veth.
    assert!(ip(node.node_netns(), &["route", "show", &pod.ip.to_string()]).contains(&format!("dev {host_if}")));

    // The agent knows the endpoint with the pod's Kubernetes identity.
    let eps: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 1);
    assert_eq!(eps[0]["pod"]["namespace"], "shop");
    assert_eq!(eps[0]["pod"]["name"], "web-0");
    assert_eq!(eps[0]["pod"]["uid"], "uid-web-0");
    assert_eq!(eps[0]["ipv4"], pod.ip.to_string());
    assert_eq!(eps[0]["hostInterface"], host_if);
    assert_eq!(eps[0]["state"], "ready");
    let table = node.moatctl(&["endpoints"]);
    assert!(
        table.contains("shop/web-0") && table.contains(&pod.ip.to_string()),
        "{table}"
    );
    assert_eq!(node.map_entries(), 1, "the kernel's endpoint map holds the pod");
}

#[test]
fn errors_use_the_spec_codes_and_name_the_field() {
    root_or_skip!();
    let node = Node::start();
    let ns = moat_netns_tests::Netns::new(&moat_netns_tests::unique("-errpod"));
    let path = ns.path();
    let env = Node::env("ADD", "err-ctr", &path, "");
    let good = node.conf().to_string();

    // (what, env, stdin, expected code, text the error must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64, &'a str);
    let with_ifname = |name: &'static str| -> Vec<(&str, &str)> {
        env.iter()
            .map(|&(k, v)| if k == "CNI_IFNAME" { (k, name) } else { (k, v) })
            .collect()
    };
    let cases: Vec<Case> = vec![
        ("undecodable stdin", env.clone(), "{not json".into(), 6, "decode"),
        (
            "missing name",
            env.clone(),
            r#"{"cniVersion":"1.1.0","type":"moat"}"#.into(),
            7,
            "name",
        ),
        (
            "wrong mtu type",
            env.clone(),
            conf_with(&node, json!({"mtu": "big"})),
            7,
            "mtu",
        ),
        (
            "unsupported version",
            env.clone(),
            conf_with(&node, json!({"cniVersion": "0.3.1"})),
            1,
            "0.3.1",
        ),
        (
            "no container id",
            env.iter().filter(|(k, _)| *k != "CNI_CONTAINERID").copied().collect(),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "no ifname",
            env.iter().filter(|(k, _)| *k != "CNI_IFNAME").copied().collect(),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname with a colon",
            with_ifname("eth0:1"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        ("ifname ..", with_ifname(".."), good.clone(), 4, "CNI_IFNAME"),
        (
            "ifname with a leading dash",
            with_ifname("-eth0"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname of 16 bytes",
            with_ifname("abcdefghijklmnop"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "container id starting with a dash",
            Node::env("ADD", "-err-ctr", &path, ""),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "container id with a slash",
            Node::env("ADD", "err/ctr", &path, ""),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "oversized stdin",
            env.clone(),
            format!(
                "{{\"cniVersion\":\"1.1.0\",\"name\":\"x\",\"type\":\"moat\",\"pad\":\"{}\"}}",
                "x".repeat(2 << 20)
            ),
            6,
            "larger than",
        ),
        (
            "deeply nested stdin",
            env.clone(),
            format!(
                "{{\"cniVersion\":\"1.1.0\",\"name\":\"x\",\"type\":\"moat\",\"deep\":{}1{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            ),
            6,
            "decode",
        ),
        (
            "netns does not exist",
            Node::env("ADD", "err-ctr", "/run/netns/moat-no-such-ns", ""),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "unknown command",
            vec![("CNI_COMMAND", "FROB")],
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "agent unreachable",
            env.clone(),
            conf_with(&node, json!({"socket": "/run/moat-no-such.sock"})),
            11,
            "moat-no-such.sock",
        ),
        (
            "CHECK of an unknown container",
            {
                let mut e = Node::env("CHECK", "never-added", &path, "");
                e.retain(|(k, _)| *k != "CNI_ARGS");
                e
            },
            conf_with(
                &node,
                json!({"prevResult": {"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": path}], "ips": [{"address": "10.9.9.9/32", "interface": 0}]}}),
            ),
            3,
            "never-added",
        ),
        (
            "GC on a 1.0.0 config",
            vec![("CNI_COMMAND", "GC")],
            conf_with(&node, json!({"cniVersion": "1.0.0"})),
            1,
            "GC",
        ),
        (
            "GC without valid-attachments",
            vec![("CNI_COMMAND", "GC")],
            good.clone(),
            7,
            "valid-attachments",
        ),
    ];
    for (what, env, stdin, code, names) in cases {
        let out = node.cni(&env, &stdin);
        assert_eq!(out.error_code(), code, "{what}: {}", out.stdout);
        let v = out.json();
        let text = format!("{} {}", v["msg"], v["details"]);
        assert!(text.contains(names), "{what}: error {text} does not name {names}");
        assert!(v["cniVersion"].is_string(), "{what}: error lacks cniVersion");
    }
    assert!(
        node.host_veths().is_empty(),
        "failed ADDs left veths: {:?}",
        node.host_veths()
    );
    assert_eq!(node.persisted_leases(), 0, "failed ADDs left leases");
}

#[test]
fn del_is_idempotent_even_after_the_netns_is_gone() {
    root_or_skip!();
    let node = Node::start();
    let a = node.add_pod("default", "a");
    let b = node.add_pod("default", "b");
    assert_eq!(node.persisted_leases(), 2);

    let first = node.del_pod(&a);
    assert!(first.success, "{first:?}");
    assert!(first.stdout.trim().is_empty(), "DEL prints nothing on success");
    let second = node.del_pod(&a);
    assert!(second.success, "second DEL: {second:?}");

    // Runtime removed the netns first (its veth went with it), then calls DEL.
    node.remove_pod_netns(&b);
    let gone = node.cni(
        &Node::env("DEL", &b.container_id, &netns_path(&b.netns), ""),
        &node.conf().to_string(),
    );
    assert!(gone.success, "DEL after netns removal: {gone:?}");
    // DEL without CNI_NETNS at all is allowed by the spec.
    let no_ns = node.cni(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", &b.container_id),
            ("CNI_IFNAME", "eth0"),
        ],
        &node.conf().to_string(),
    );
    assert!(no_ns.success, "{no_ns:?}");

    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert_eq!(node.persisted_leases(), 0);
    assert_eq!(node.map_entries(), 0);
    assert!(node.attachments().is_empty(), "{:?}", node.attachments());
    assert!(node.moatctl(&["endpoints", "-o", "json"]).trim() == "[]");
}

#[test]
fn check_passes_then_fails_after_tampering() {
    root_or_skip!();
    let node = Node::start();
    let pod = node.add_pod("default", "checked");
    let conf = conf_with(&node, json!({"prevResult": pod.result}));
    let path = pod.path();
    let env = Node::env("CHECK", &pod.container_id, &path, "");
    let ok = node.cni(&env, &conf);
    assert!(ok.success, "CHECK of an intact pod: {ok:?}");

    ip(
        Some(&pod.netns),
        &["addr", "del", &format!("{}/32", pod.ip), "dev", "eth0"],
    );
    let bad = node.cni(&env, &conf);
    assert_eq!(bad.error_code(), 100, "{bad:?}");
    assert!(
        bad.stdout.contains(&pod.ip.to_string()),
        "error names the missing address: {}",
        bad.stdout
    );

    // CHECK without prevResult is an invalid configuration.
    let none = node.cni(&env, &node.conf().to_string());
    assert_eq!(none.error_code(), 7);
    assert!(none.stdout.contains("prevResult"));
}

#[test]
fn status_follows_agent_readiness() {
    root_or_skip!();
    let node = Node::start();
    let env = [("CNI_COMMAND", "STATUS")];
    assert!(node.cni(&env, &node.conf().to_string()).success);
    node.stop_agent();
    let down = node.cni(&env, &node.conf().to_string());
    assert_eq!(down.error_code(), 50, "{down:?}");
    // ADD while the agent is down: try again later, and nothing is left wired.
    let ns = moat_netns_tests::Netns::new(&moat_netns_tests::unique("-late"));
    let add = node.cni(&Node::env("ADD", "late-ctr", &ns.path(), ""), &node.conf().to_string());
    assert_eq!(add.error_code(), 11, "{add:?}");
    assert!(node.host_veths().is_empty());
    node.start_agent();
    assert!(node.cni(&env, &node.conf().to_string()).success);
}

#[test]
fn gc_removes_attachments_not_listed() {
    root_or_skip!();
    let node = Node::start();
    let keep = node.add_pod("default", "keep");
    let drop1 = node.add_pod("default", "drop1");
    let drop2 = node.add_pod("default", "drop2");
    let _server = EchoServer::start(&keep.path(), 7000);
    let conf = conf_with(
        &node,
        json!({"cni.dev/valid-attachments": [{"containerID": keep.container_id, "ifname": "eth0"}]}),
    );
    let out = node.cni(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")], &conf);
    assert!(out.success, "{out:?}");
    let veths = node.host_veths();
    assert_eq!(veths.len(), 1, "{veths:?}");
    assert_eq!(veths[0], keep.result["interfaces"][0]["name"].as_str().unwrap());
    assert!(!link_exists(&drop1.netns, "eth0") && !link_exists(&drop2.netns, "eth0"));
    assert_eq!(node.persisted_leases(), 1);
    assert_eq!(node.map_entries(), 1);
    let eps = node.moatctl(&["endpoints"]);
    assert!(
        eps.contains("default/keep") && !eps.contains("drop1") && !eps.contains("drop2"),
        "{eps}"
    );
    // The kept pod still works.
    assert_eq!(
        tcp_echo(&node.node_netns_path(), keep.ip, 7000, b"still here").unwrap(),
        b"still here"
    );
}

#[test]
fn delegated_host_local_ipam() {
    root_or_skip!();
    let dir = std::env::temp_dir().join(moat_netns_tests::unique("-hostlocal"));
    let subnet = format!("10.250.{}.0/24", std::process::id() % 250);
    let node = Node::start_with(NodeOpts {
        conf_extra: json!({"ipam": {"type": "host-local", "dataDir": dir, "ranges": [[{"subnet": subnet}]]}}),
        // Addresses outside --pod-cidr are refused unless the range is allowed.
        agent_args: vec!["--delegated-ipam-range", Box::leak(subnet.clone().into_boxed_str())],
        ..NodeOpts::default()
    });
    let a = node.add_pod("default", "hl-a");
    let b = node.add_pod("default", "hl-b");
    let prefix = subnet.trim_end_matches(".0/24");
    assert!(a.ip.to_string().starts_with(prefix), "{} not from {subnet}", a.ip);
    let _s = EchoServer::start(&b.path(), 7001);
    assert_eq!(tcp_echo(&a.path(), b.ip, 7001, b"hi").unwrap(), b"hi");
    let eps: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    assert_eq!(eps[0]["ipam"], "delegated");
    // host-local keeps a file per lease; DEL must release it through host-local.
    let leases = || {
        std::fs::read_dir(dir.join("moat-test"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(leases(), 2);
    assert!(node.del_pod(&a).success);
    assert_eq!(leases(), 1);
    assert!(node.del_pod(&b).success);
    assert_eq!(leases(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chained_with_portmap_serves_a_host_port() {
    root_or_skip!();
    // Debian's portmap speaks CNI up to 1.0.0, so this conflist is a 1.0.0 one.
    let node = Node::start_with(NodeOpts {
        cni_version: "1.0.0",
        ..NodeOpts::default()
    });
    let ns = moat_netns_tests::Netns::new(&moat_netns_tests::unique("-pm"));
    let cid = moat_netns_tests::unique("-pmctr");
    let conf = node.conf();
    let add = node.cni(
        &Node::env("ADD", &cid, &ns.path(), "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pm"),
        &conf.to_string(),
    );
    assert!(add.success, "{add:?}");
    let prev = add.json();
    let pod_ip = moat_netns_tests::result_ip(&prev);
    let host_port = 30000 + (std::process::id() % 2000) as u16;
    // What the runtime sends the next plugin of the conflist: same name/version, our result as prevResult.
    let pm_conf = json!({"cniVersion": "1.0.0", "name": "moat-test", "type": "portmap", "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": host_port, "containerPort": 7002, "protocol": "tcp"}]},
        "prevResult": prev});
    let pm = std::path::Path::new("/usr/lib/cni/portmap");
    let out = node.cni_with(pm, &Node::env("ADD", &cid, &ns.path(), ""), &pm_conf.to_string());
    assert!(out.success, "portmap ADD after moat: {out:?}");
    let chained = out.json();
    assert_eq!(chained["ips"], prev["ips"], "prevResult passes through portmap");
    let _s = EchoServer::start(&ns.path(), 7002);
    let ext = node.ext_ns.as_ref().unwrap().path();
    assert_eq!(
        tcp_echo(&ext, node.node_ip, host_port, b"via hostPort").unwrap(),
        b"via hostPort"
    );
    assert_eq!(tcp_echo(&ext, pod_ip, 7002, b"direct").unwrap(), b"direct");
    assert!(
        node.cni_with(pm, &Node::env("DEL", &cid, &ns.path(), ""), &pm_conf.to_string())
            .success
    );
    assert!(
        node.cni(&Node::env("DEL", &cid, &ns.path(), ""), &conf.to_string())
            .success
    );
    let rules = sh(Command::new("nsenter")
        .arg(format!("--net={}", node.node_netns_path()))
        .args(["iptables-save", "-t", "nat"]));
    assert!(
        !rules.contains(&host_port.to_string()),
        "portmap DEL left rules: {rules}"
    );
}

/// A repeated ADD for an attachment that is already wired fails and leaves the first
/// one exactly as it was: endpoint, lease, map entry, programs, connectivity.
#[test]
fn a_repeated_add_leaves_the_first_attachment_intact() {
    root_or_skip!();
    let node = Node::start();
    let a = node.add_pod("default", "a");
    let b = node.add_pod("default", "b");
    let again = node.cni(
        &Node::env(
            "ADD",
            &a.container_id,
            &a.path(),
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a",
        ),
        &node.conf().to_string(),
    );
    assert_eq!(again.error_code(), 102, "{again:?}");
    let eps: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    let first = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["containerID"] == a.container_id.as_str())
        .unwrap_or_else(|| panic!("the first endpoint is gone: {eps}"));
    assert_eq!(first["state"], "ready", "{first}");
    assert_eq!(first["ipv4"], a.ip.to_string());
    assert_eq!(node.persisted_leases(), 2);
    assert_eq!(node.map_entries(), 2);
    assert_eq!(node.attachments().len(), 4, "{:?}", node.attachments());
    assert!(
        moat_netns_tests::net::ping(&b.path(), a.ip),
        "the first pod still works"
    );
    assert!(
        again.json()["details"].as_str().unwrap().contains("DEL it first"),
        "{again:?}"
    );
}

/// A delegated IPAM lease is given back when the ADD fails after it was taken: the agent
/// refuses an address outside its allowed ranges, or the IPAM result has no IPv4 address.
/// Nothing is left behind (no lease file, no veth).
#[test]
fn a_failed_delegated_add_gives_its_lease_back() {
    root_or_skip!();
    for (tag, subnet, expect) in [
        (
            "-hl-range",
            format!("10.251.{}.0/24", std::process::id() % 250),
            "--delegated-ipam-range",
        ),
        ("-hl-v6", "fd00:77::/64".to_string(), "no IPv4 address"),
    ] {
        let dir = std::env::temp_dir().join(moat_netns_tests::unique(tag));
        let node = Node::start_with(NodeOpts {
            conf_extra: json!({"ipam": {"type": "host-local", "dataDir": dir, "ranges": [[{"subnet": subnet}]]}}),
            ..NodeOpts::default()
        });
        let ns = moat_netns_tests::Netns::new(&moat_netns_tests::unique("-hlpod"));
        let id = format!("{}-refused", node.id);
        let out = node.cni(
            &Node::env(
                "ADD",
                &id,
                &ns.path(),
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
            ),
            &node.conf().to_string(),
        );
        assert!(!out.success, "{subnet}: ADD succeeded: {}", out.stdout);
        assert!(out.stdout.contains(expect), "{subnet}: {}", out.stdout);
        let leases = std::fs::read_dir(dir.join("moat-test"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        !e.file_name().to_string_lossy().starts_with("last_reserved") && e.file_name() != "lock"
                    })
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(leases, 0, "{subnet}: the lease was given back");
        assert!(node.host_veths().is_empty(), "{subnet}: no veth left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
