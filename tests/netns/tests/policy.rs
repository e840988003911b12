//! NetworkPolicy beyond the matrix: conntrack (replies, cutting established flows),
//! flow events and `moatctl observe`/`drops`/`identities`/`policy explain`, audit and
//! enforcement modes, identities across restarts, and malformed manifests.
use std::time::{Duration, Instant};

use moat_netns_tests::manifest::{namespace, pod};
use moat_netns_tests::net::{tcp_echo, udp_echo, EchoServer, HeldConnection};
use moat_netns_tests::{root_or_skip, Node, NodeOpts, Pod};
use serde_json::Value;

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}\n---\n")
}

const DENY_ALL_INGRESS: &str = "  podSelector: {}\n  policyTypes: [Ingress]";

fn base() -> String {
    namespace("shop")
        + &namespace("ops")
        + &pod("shop", "web", "web")
        + &pod("shop", "db", "db")
        + &pod("ops", "admin", "admin")
}

fn start(agent_args: Vec<&'static str>) -> Node {
    moat_netns_tests::require_root();
    Node::start_with(NodeOpts {
        manifests: vec![("base.yaml", base())],
        agent_args,
        ..NodeOpts::default()
    })
}

/// Pods shop/web and shop/db, with an echo server on db:5432.
fn web_and_db(node: &Node) -> (Pod, Pod, EchoServer) {
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let srv = EchoServer::start(&db.path(), 5432);
    (web, db, srv)
}

fn observe(node: &Node, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["-o", "json", "observe", "--last", "1000"];
    a.extend_from_slice(args);
    node.moatctl(&a)
        .lines()
        .map(|l| serde_json::from_str(l).expect("observe JSON line"))
        .collect()
}

/// `moatctl drops -o json`, after checking it counts drops with reason `code`.
fn drops_with_reason(node: &Node, code: u64) -> Value {
    let drops: Value = serde_json::from_str(&node.moatctl(&["-o", "json", "drops"])).unwrap();
    assert!(
        drops["byReason"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["code"] == code && d["count"].as_u64() > Some(0)),
        "no drops with reason {code}: {drops}"
    );
    drops
}

/// Waits until `observe` with `args` returns something matching `pred`.
fn wait_flow(node: &Node, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(f) = observe(node, args).into_iter().find(|f| pred(f)) {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "no flow matching the filter {args:?}: {:#?}",
            observe(node, &[])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replies_pass_under_deny_all_ingress_on_the_client() {
    root_or_skip!();
    let node = start(vec![]);
    let web = node.add_pod("shop", "web");
    let admin = node.add_pod("ops", "admin");
    let _srv = EchoServer::start(&admin.path(), 8080);
    let _srv_web = EchoServer::start(&web.path(), 8080);
    node.apply_manifests(&[("p.yaml", Some(&policy("shop", "deny-all", DENY_ALL_INGRESS)))]);

    // web's replies-only traffic: its own connections out get their answers back.
    assert_eq!(tcp_echo(&web.path(), admin.ip, 8080, b"tcp").unwrap(), b"tcp");
    assert_eq!(udp_echo(&web.path(), admin.ip, 8080, b"udp").unwrap(), b"udp");
    // An ICMP error about web's own flow is part of that flow: a UDP request to a
    // closed port is refused at once (ICMP port unreachable gets in), not timed out.
    let to = admin.ip;
    let refused = moat_netns_tests::net::in_netns(&web.path(), move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.connect((to, 9999)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
        s.send(b"anyone?").unwrap();
        s.recv(&mut [0u8; 16]).map_err(|e| e.kind())
    });
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "ICMP error of web's flow"
    );
    assert!(node.moatctl(&["status"]).contains("ct_related"));
    // ...while nothing new gets in.
    assert!(
        tcp_echo(&admin.path(), web.ip, 8080, b"in").is_err(),
        "ingress to web is denied"
    );
    // The node itself may still reach its pods (kubelet probes).
    assert_eq!(
        tcp_echo(&node.node_netns_path(), web.ip, 8080, b"probe").unwrap(),
        b"probe",
        "node → pod is allowed under deny-all ingress"
    );
}

/// Pod churn does not make every established flow on the node re-check its verdict: new
/// pods (a known identity, or a new one that a policy isolates) leave the policy revision
/// alone; a removed pod or a removed allow bumps it.
#[test]
fn new_pods_leave_established_flows_alone() {
    root_or_skip!();
    let node = start(vec![]);
    let (web, db, _srv) = web_and_db(&node);
    node.apply_manifests(&[(
        "p.yaml",
        Some(
            &(policy(
                "shop",
                "db-from-web",
                "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: web}}\n    ports:\n    - port: 5432",
            ) + &policy("ops", "deny-all", DENY_ALL_INGRESS)),
        ),
    )]);
    let conn = HeldConnection::open(&web.path(), db.ip, 5432);
    assert_eq!(conn.roundtrip(b"one").unwrap(), b"one");
    let revision = |node: &Node| node.status()["policyRevision"].as_u64().unwrap();
    let before = revision(&node);

    let extra: Vec<_> = (0..3).map(|i| node.add_pod("shop", &format!("extra{i}"))).collect();
    let _admin = node.add_pod("ops", "admin");
    assert_eq!(revision(&node), before, "new pods bumped the policy revision");
    assert_eq!(conn.roundtrip(b"two").unwrap(), b"two");

    let del = node.del_pod(&extra[0]);
    assert!(del.success, "{del:?}");
    // The agent finishes a DEL's policy work once it is idle (tens of ms).
    let deadline = Instant::now() + Duration::from_secs(2);
    while revision(&node) == before {
        assert!(Instant::now() < deadline, "a removed pod's address must re-check flows");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        conn.roundtrip(b"three").unwrap(),
        b"three",
        "the allowed flow survives the re-check"
    );
}

#[test]
fn removing_an_allow_cuts_the_established_flow_and_observe_says_why() {
    root_or_skip!();
    let node = start(vec![]);
    let (web, db, _srv) = web_and_db(&node);
    let allow_web = policy(
        "shop",
        "db-from-web",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: web}}\n    ports:\n    - port: 5432",
    );
    node.apply_manifests(&[("p.yaml", Some(&allow_web))]);
    let conn = HeldConnection::open(&web.path(), db.ip, 5432);
    assert_eq!(conn.roundtrip(b"select 1").unwrap(), b"select 1");

    let f = wait_flow(&node, &["--pod", "shop/db", "--verdict", "forwarded"], |f| {
        f["destination"]["port"] == 5432
    });
    assert_eq!(f["source"]["pod"], "web");
    assert!(
        f["policy"]
            .as_str()
            .unwrap()
            .contains("shop/db-from-web ingress rule 0"),
        "{f}"
    );

    let explain = node.moatctl(&[
        "policy", "explain", "--from", "shop/web", "--to", "shop/db", "--port", "5432/tcp",
    ]);
    assert!(explain.contains("shop/db-from-web"), "{explain}");
    assert!(explain.to_lowercase().contains("allow"), "{explain}");

    // The allow goes away (the policy now only admits another app): the open
    // connection stops at its next packet.
    node.apply_manifests(&[(
        "p.yaml",
        Some(&allow_web.replace("app: web}}\n    ports", "app: batch}}\n    ports")),
    )]);
    assert!(conn.roundtrip(b"select 2").is_err(), "the established flow is cut");
    let f = wait_flow(&node, &["--pod", "shop/db", "--verdict", "dropped"], |f| {
        f["reevaluated"] == true
    });
    assert_eq!(f["dropReason"], 133, "{f}");
    assert_eq!(f["dropReasonName"], "policy_denied");
    assert!(f["policy"].as_str().unwrap().contains("shop/db-from-web"), "{f}");

    let explain = node.moatctl(&[
        "policy", "explain", "--from", "shop/web", "--to", "shop/db", "--port", "5432/tcp",
    ]);
    assert!(explain.to_lowercase().contains("denied"), "{explain}");
    assert!(explain.contains("shop/db-from-web"), "{explain}");

    // Drops by reason and by pod (the pod whose interface dropped it: web's, where a
    // packet to a local pod meets that pod's ingress policy).
    let drops = drops_with_reason(&node, 133);
    assert!(
        drops["byPod"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["pod"] == "shop/web" && d["code"] == 133),
        "{drops}"
    );
    let table = node.moatctl(&["drops"]);
    assert!(table.contains("policy_denied"), "{table}");
    let compact = node.moatctl(&["observe", "--verdict", "dropped", "--pod", "shop/db"]);
    assert!(
        compact.contains("shop/web:") && compact.contains("-> shop/db:5432") && compact.contains("DROPPED"),
        "{compact}"
    );
}

#[test]
fn observe_filters_and_follow() {
    root_or_skip!();
    let node = start(vec![]);
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let admin = node.add_pod("ops", "admin");
    let _s1 = EchoServer::start(&db.path(), 7000);
    let _s2 = EchoServer::start(&admin.path(), 7001);
    node.apply_manifests(&[("p.yaml", Some(&policy("ops", "deny-all", DENY_ALL_INGRESS)))]);

    // Follow in the background, filtered to drops into ops.
    let mut follow = std::process::Command::new(moat_netns_tests::bin("moatctl"))
        .args(["--socket"])
        .arg(&node.socket)
        .args([
            "-o",
            "json",
            "observe",
            "--follow",
            "--last",
            "0",
            "--namespace",
            "ops",
            "--verdict",
            "dropped",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tcp_echo(&web.path(), db.ip, 7000, b"ok").unwrap(), b"ok");
    assert!(tcp_echo(&web.path(), admin.ip, 7001, b"no").is_err());
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(5)).expect("a followed drop event");
    let _ = follow.kill();
    let _ = follow.wait();
    // The agent ends the stream at once, without waiting for another event to send.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !node.agent_log().contains("observe stream closed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the follow stream outlived its client"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let f: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(f["verdict"], "DROPPED");
    assert_eq!(f["destination"]["namespace"], "ops");
    assert_eq!(f["direction"], "ingress");
    assert!(f["policy"].as_str().unwrap().contains("ops/deny-all"), "{f}");

    // Filters: port, identity, verdict.
    let by_port = observe(&node, &["--port", "7000"]);
    assert!(
        !by_port.is_empty()
            && by_port
                .iter()
                .all(|f| f["destination"]["port"] == 7000 || f["source"]["port"] == 7000)
    );
    let db_id = by_port[0]["destination"]["identity"].as_u64().unwrap();
    let by_id = observe(&node, &["--identity", &db_id.to_string()]);
    assert!(by_id
        .iter()
        .all(|f| f["destination"]["identity"] == db_id || f["source"]["identity"] == db_id));
    assert!(
        observe(&node, &["--verdict", "forwarded", "--namespace", "ops"]).is_empty(),
        "no allowed flow into ops"
    );

    // Identities: one per label set, with the pods that carry them.
    let ids: Value = serde_json::from_str(&node.moatctl(&["-o", "json", "identities"])).unwrap();
    let db_entry = ids
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["endpoints"].as_array().unwrap().iter().any(|e| e == "shop/db"))
        .expect("db's identity");
    assert!(db_entry["id"].as_u64().unwrap() >= 256);
    assert!(
        db_entry["labels"].as_array().unwrap().iter().any(|l| l == "k8s:app=db"),
        "{db_entry}"
    );
    assert!(ids
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == 2 && i["labels"][0] == "reserved:world"));
}

#[test]
fn pod_relabel_changes_identity_and_policy_follows() {
    root_or_skip!();
    let node = start(vec![]);
    let (web, db, _srv) = web_and_db(&node);
    node.apply_manifests(&[(
        "p.yaml",
        Some(&policy(
            "shop",
            "db-from-frontend",
            "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {tier: frontend}}",
        )),
    )]);
    assert!(tcp_echo(&web.path(), db.ip, 5432, b"x").is_err());
    let id_of = |node: &Node| -> u64 {
        let ids: Value = serde_json::from_str(&node.moatctl(&["-o", "json", "identities"])).unwrap();
        ids.as_array()
            .unwrap()
            .iter()
            .find(|i| i["endpoints"].as_array().unwrap().iter().any(|e| e == "shop/web"))
            .expect("web's identity")["id"]
            .as_u64()
            .unwrap()
    };
    let before = id_of(&node);
    let t = Instant::now();
    std::fs::write(
        node.state_dir().join("base.yaml"),
        base().replace("{app: web}", "{app: web, tier: frontend}"),
    )
    .unwrap();
    // The relabel is in force within a second of the edit (short probes: a dropped SYN
    // would otherwise wait for TCP's 1 s retransmission).
    let reachable = || {
        moat_netns_tests::net::reachability(&[web.path()], &[db.ip], &[(6, 5432)], Duration::from_millis(100))[0][0][0]
    };
    while !reachable() {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "relabel not applied within a second"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "relabel applied after {:?}",
        t.elapsed()
    );
    assert_ne!(id_of(&node), before, "new labels, new identity");

    // Identities survive a restart: same labels, same numbers.
    let snapshot = node.moatctl(&["-o", "json", "identities"]);
    node.stop_agent();
    node.start_agent();
    assert_eq!(node.moatctl(&["-o", "json", "identities"]), snapshot);
    assert_eq!(tcp_echo(&web.path(), db.ip, 5432, b"y").unwrap(), b"y");
}

#[test]
fn audit_mode_reports_without_dropping() {
    root_or_skip!();
    let node = start(vec!["--audit"]);
    let (web, db, _srv) = web_and_db(&node);
    let held = HeldConnection::open(&web.path(), db.ip, 5432);
    assert_eq!(held.roundtrip(b"before").unwrap(), b"before");
    node.apply_manifests(&[("p.yaml", Some(&policy("shop", "deny-all", DENY_ALL_INGRESS)))]);
    assert_eq!(
        tcp_echo(&web.path(), db.ip, 5432, b"x").unwrap(),
        b"x",
        "audit lets it through"
    );
    let f = wait_flow(&node, &["--verdict", "audit"], |f| f["destination"]["pod"] == "db");
    assert!(f["policy"].as_str().unwrap().contains("shop/deny-all"), "{f}");
    // The connection opened before the policy would be cut in enforcing mode: audit
    // mode reports it (re-evaluated) and keeps it open.
    assert_eq!(held.roundtrip(b"after").unwrap(), b"after", "audit keeps the open flow");
    let f = wait_flow(&node, &["--verdict", "audit"], |f| f["reevaluated"] == true);
    assert_eq!(f["destination"]["port"], 5432, "{f}");
    // Audit mode concerns policy: nothing was dropped by policy (a pod's own IPv6
    // chatter is still dropped, with reason 139, whatever the mode).
    let policy_drops: Vec<Value> = observe(&node, &["--verdict", "dropped"])
        .into_iter()
        .filter(|f| f["dropReason"] != 139)
        .collect();
    assert!(policy_drops.is_empty(), "{policy_drops:#?}");
}

#[test]
fn enforcement_always_and_never() {
    root_or_skip!();
    let always = start(vec!["--enforcement", "always"]);
    let web = always.add_pod("shop", "web");
    let db = always.add_pod("shop", "db");
    let _srv = EchoServer::start(&db.path(), 5432);
    assert!(
        tcp_echo(&web.path(), db.ip, 5432, b"x").is_err(),
        "zero trust: no policy, no traffic"
    );
    always.apply_manifests(&[(
        "p.yaml",
        Some(
            &(policy(
                "shop",
                "web-out",
                "  podSelector: {matchLabels: {app: web}}\n  egress:\n  - {}",
            ) + &policy(
                "shop",
                "db-in",
                "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - {}",
            )),
        ),
    )]);
    assert_eq!(
        tcp_echo(&web.path(), db.ip, 5432, b"x").unwrap(),
        b"x",
        "explicitly allowed both ways"
    );
    drop(_srv);
    drop(always);

    let never = start(vec!["--enforcement", "never"]);
    let web = never.add_pod("shop", "web");
    let db = never.add_pod("shop", "db");
    let _srv = EchoServer::start(&db.path(), 5432);
    never.apply_manifests(&[("p.yaml", Some(&policy("shop", "deny-all", DENY_ALL_INGRESS)))]);
    assert_eq!(
        tcp_echo(&web.path(), db.ip, 5432, b"x").unwrap(),
        b"x",
        "enforcement off"
    );
}

/// Malformed manifests: each is rejected with an error naming file, object and field,
/// and what was enforced before stays enforced.
#[test]
fn malformed_manifests_are_rejected_and_enforcement_is_unchanged() {
    root_or_skip!();
    let node = start(vec![]);
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let admin = node.add_pod("ops", "admin");
    let _srv = EchoServer::start(&db.path(), 5432);
    let good = policy(
        "shop",
        "db-policy",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: web}}",
    );
    node.apply_manifests(&[("db-policy.yaml", Some(&good))]);
    let enforced = |why: &str| {
        assert_eq!(
            tcp_echo(&web.path(), db.ip, 5432, b"x").unwrap(),
            b"x",
            "web → db stays allowed ({why})"
        );
        assert!(
            tcp_echo(&admin.path(), db.ip, 5432, b"x").is_err(),
            "admin → db stays denied ({why})"
        );
    };
    enforced("before");

    let np = |spec: &str| policy("shop", "db-policy", spec);
    // (description, file content, words the error must contain)
    let bad: Vec<(&str, String, Vec<&str>)> = vec![
        ("YAML syntax error", "apiVersion: networking.k8s.io/v1\nkind: [NetworkPolicy\n".into(), vec!["invalid YAML"]),
        ("missing podSelector", np("  ingress: []"), vec!["NetworkPolicy shop/db-policy", "spec.podSelector"]),
        ("unknown operator", np("  podSelector:\n    matchExpressions: [{key: app, operator: Inn, values: [db]}]"), vec!["shop/db-policy", "matchExpressions[0].operator", "Inn"]),
        ("In without values", np("  podSelector:\n    matchExpressions: [{key: app, operator: In}]"), vec!["shop/db-policy", "matchExpressions[0]"]),
        ("bad protocol", np("  podSelector: {}\n  ingress:\n  - ports:\n    - {protocol: ICMP, port: 80}"), vec!["spec.ingress[0].ports[0].protocol", "ICMP"]),
        ("port out of range", np("  podSelector: {}\n  ingress:\n  - ports:\n    - port: 70000"), vec!["spec.ingress[0].ports[0].port"]),
        ("endPort below port", np("  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 90, endPort: 80}"), vec!["spec.ingress[0].ports[0].endPort"]),
        ("endPort with a named port", np("  podSelector: {}\n  ingress:\n  - ports:\n    - {port: http, endPort: 90}"), vec!["spec.ingress[0].ports[0].endPort"]),
        ("bad CIDR", np("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/33}"), vec!["spec.ingress[0].from[0].ipBlock.cidr"]),
        ("except outside cidr", np("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}"), vec!["spec.ingress[0].from[0].ipBlock.except[0]"]),
        ("ipBlock with a selector", np("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}"), vec!["spec.ingress[0].from[0]"]),
        ("bad policyType", np("  podSelector: {}\n  policyTypes: [Inbound]"), vec!["spec.policyTypes[0]", "Inbound"]),
        ("bad label value", np("  podSelector: {matchLabels: {app: \"-db-\"}}"), vec!["spec.podSelector.matchLabels"]),
        ("ingress is not a list", np("  podSelector: {}\n  ingress: {from: []}"), vec!["spec.ingress"]),
        ("missing metadata.name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: shop}\nspec: {podSelector: {}}\n".into(), vec!["metadata.name"]),
    ];
    assert!(bad.len() >= 10);
    for (what, content, words) in &bad {
        node.apply_manifests(&[("db-policy.yaml", Some(content))]);
        let status = node.status();
        let errors: Vec<String> = status["manifestErrors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect();
        let msg = errors
            .iter()
            .find(|e| e.contains("db-policy.yaml"))
            .unwrap_or_else(|| panic!("{what}: no error reported for db-policy.yaml: {errors:?}"));
        for w in words {
            assert!(msg.contains(w), "{what}: error {msg:?} should mention {w:?}");
        }
        enforced(what);
    }
    // An agent restarted while the file is broken starts from the last good copy.
    node.stop_agent();
    node.start_agent();
    enforced("agent restarted while the file is broken");
    // Fixing the file clears the error; deleting it removes the policy.
    node.apply_manifests(&[("db-policy.yaml", Some(&good))]);
    assert!(node.status()["manifestErrors"].as_array().unwrap().is_empty());
    enforced("fixed");
    node.apply_manifests(&[("db-policy.yaml", None)]);
    assert_eq!(
        tcp_echo(&admin.path(), db.ip, 5432, b"x").unwrap(),
        b"x",
        "deleted policy no longer enforced"
    );
}

#[test]
fn unused_identities_are_released_after_the_grace_period() {
    root_or_skip!();
    let node = start(vec!["--identity-grace-secs", "1"]);
    let web = node.add_pod("shop", "web");
    let _db = node.add_pod("shop", "db");
    let ids = |node: &Node| -> Vec<Value> {
        serde_json::from_str::<Value>(&node.moatctl(&["-o", "json", "identities"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let web_id = ids(&node)
        .into_iter()
        .find(|i| i["endpoints"].as_array().unwrap().iter().any(|e| e == "shop/web"))
        .expect("web's identity")["id"]
        .clone();
    assert!(node.del_pod(&web).success);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ids(&node).iter().any(|i| i["id"] == web_id) {
        assert!(
            Instant::now() < deadline,
            "identity {web_id} still allocated: {:#?}",
            ids(&node)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        ids(&node)
            .iter()
            .any(|i| i["endpoints"].as_array().unwrap().iter().any(|e| e == "shop/db")),
        "the identity in use stays"
    );
}

/// Until Moat has IPv6 pods only ARP passes besides IPv4: a pod cannot reach a node
/// service listening on `[::]` through the host veth's link-local address (IPv6 used to
/// skip the datapath, policy included), and the host veth takes no router advertisements.
/// The drops carry reason 139 (unsupported L3 protocol).
#[test]
fn ipv6_from_a_pod_is_dropped_and_reported() {
    root_or_skip!();
    let node = start(vec![]);
    let web = node.add_pod("shop", "web");
    let node_ns = node.node_netns_path();
    let listener = moat_netns_tests::net::in_netns(&node_ns, || {
        std::net::TcpListener::bind("[::]:7300").expect("bind [::]:7300 in the node netns")
    });
    listener.set_nonblocking(true).unwrap();
    let ep: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    let (host_if, host_mac) = (
        ep[0]["hostInterface"].as_str().unwrap().to_string(),
        ep[0]["hostMAC"].as_str().unwrap().to_string(),
    );
    let sysctl = |key: &str| {
        moat_netns_tests::sh(
            std::process::Command::new("nsenter")
                .arg(format!("--net={node_ns}"))
                .args(["cat", &format!("/proc/sys/net/ipv6/conf/{host_if}/{key}")]),
        )
        .trim()
        .to_string()
    };
    // The link-local address the host veth would have (EUI-64 of its MAC).
    let m: Vec<u8> = host_mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let link_local = format!(
        "fe80::{:02x}{:02x}:{:02x}ff:fe{:02x}:{:02x}{:02x}",
        m[0] ^ 2,
        m[1],
        m[2],
        m[3],
        m[4],
        m[5]
    );
    let attempt = moat_netns_tests::net::in_netns(&web.path(), move || {
        let eth0 = std::ffi::CString::new("eth0").unwrap();
        // SAFETY: a valid NUL-terminated name.
        let scope = unsafe { libc::if_nametoindex(eth0.as_ptr()) };
        let addr: std::net::SocketAddr = format!("[{link_local}%{scope}]:7300").parse().unwrap();
        // The pod's own link-local address needs a moment (duplicate address detection)
        // before anything is sent: keep trying for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let r = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            if r.is_ok() || Instant::now() > deadline {
                return r.map(drop);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(attempt.is_err(), "TCP over IPv6 from a pod reached the node");
    assert!(listener.accept().is_err(), "the node service saw no connection");
    assert_eq!(sysctl("disable_ipv6"), "1", "no IPv6 address on the host veth");
    assert_eq!(sysctl("accept_ra"), "0", "no router advertisements taken");
    drops_with_reason(&node, 139);
    // IPv4 to the node still works (ARP passes).
    assert!(
        moat_netns_tests::net::ping(&web.path(), node.node_ip),
        "IPv4 to the node"
    );
}

/// Pods added and removed while the agent compiles a large new state on its compile
/// thread end up with exactly the new state's policy: the finished compile is brought
/// up to the endpoints of the moment it is applied (pods that came meanwhile get their
/// labels' identity and entries, pods that left lose theirs).
#[test]
fn pods_changed_during_a_large_compile_get_the_new_policy() {
    root_or_skip!();
    moat_netns_tests::require_root();
    // Each full compile takes 1.5 s longer: the pods below are added while it runs.
    let node = Node::start_with(NodeOpts {
        manifests: vec![("base.yaml", base())],
        agent_env: vec![("MOAT_TEST_COMPILE_DELAY_MS", "1500".into())],
        ..NodeOpts::default()
    });
    let (web, db, _srv) = web_and_db(&node);
    let gone = node.add_pod("shop", "gone");
    let generation = |node: &Node| node.status()["stateGeneration"].as_u64().unwrap_or(0);
    let before = generation(&node);

    // 5,000 policies elsewhere (a compile of tens of ms, after a longer read), and the
    // policy that matters: db admits only app=late, on 5432.
    let mut big = namespace("filler");
    for i in 0..5000 {
        big += &policy(
            "filler",
            &format!("np{i}"),
            &format!(
                "  podSelector: {{matchLabels: {{app: f{}}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: f{}}}}}\n    ports:\n    - port: {}",
                i % 300,
                (i * 7) % 300,
                1000 + i % 3000
            ),
        );
    }
    big += &policy(
        "shop",
        "db-from-late",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: late}}\n    ports:\n    - port: 5432",
    );
    for i in 0..4 {
        big += &pod("shop", &format!("late{i}"), "late");
    }
    let compiles = |node: &Node| node.agent_log().matches("compiling the policy of a new state").count();
    let compiles_before = compiles(&node);
    std::fs::write(node.state_dir().join("big.yaml"), &big).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while compiles(&node) == compiles_before {
        assert!(
            Instant::now() < deadline,
            "the agent never started compiling the big state"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // While the agent compiles it: pods come and go (and status still reports the
    // generation before it).
    let late: Vec<_> = (0..4).map(|i| node.add_pod("shop", &format!("late{i}"))).collect();
    let stranger = node.add_pod("shop", "stranger");
    assert!(node.del_pod(&gone).success);

    assert_eq!(
        generation(&node),
        before,
        "applied before the pods came: the test proves nothing"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while generation(&node) <= before {
        assert!(Instant::now() < deadline, "the big state was never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.status()["policyError"], Value::Null, "{}", node.status());
    for p in &late {
        assert_eq!(
            tcp_echo(&p.path(), db.ip, 5432, b"hi").as_deref(),
            Ok(&b"hi"[..]),
            "{} (app=late, added during the compile) must reach db",
            p.name
        );
    }
    for p in [&web, &stranger] {
        assert!(
            tcp_echo(&p.path(), db.ip, 5432, b"hi").is_err(),
            "{} must not reach db under db-from-late",
            p.name
        );
    }
    let ids: Value = serde_json::from_str(&node.moatctl(&["-o", "json", "identities"])).unwrap();
    let late_identity = ids
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["labels"].as_array().unwrap().iter().any(|l| l == "k8s:app=late"))
        .unwrap_or_else(|| panic!("no identity for app=late: {ids}"));
    assert_eq!(
        late_identity["endpoints"].as_array().map(Vec::len),
        Some(4),
        "{late_identity}"
    );
}

/// A MoatNetworkPolicy (a CiliumNetworkPolicy with apiVersion and kind changed) is
/// enforced by its L3/L4 meaning; one with HTTP rules, which this version cannot enforce,
/// is refused with the field named, and what was enforced stays.
#[test]
fn moat_network_policy_is_enforced_and_unenforceable_http_rules_are_refused() {
    root_or_skip!();
    let node = start(vec![]);
    let (web, db, _srv) = web_and_db(&node);
    let admin = node.add_pod("ops", "admin");
    let mnp = |rules: &str| {
        format!(
            "apiVersion: moat.io/v1alpha1\nkind: MoatNetworkPolicy\nmetadata: {{name: db-access, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{'k8s:app': db}}}}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {{'k8s:app': web}}\n    - matchLabels: {{'k8s:io.kubernetes.pod.namespace': ops, app: admin}}\n    toPorts:\n    - ports: [{{port: '5432', protocol: TCP}}]\n{rules}"
        )
    };
    node.apply_manifests(&[("m.yaml", Some(&mnp("")))]);
    assert_eq!(
        node.status()["manifestErrors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        node.status()
    );
    assert_eq!(tcp_echo(&web.path(), db.ip, 5432, b"a").as_deref(), Ok(&b"a"[..]));
    assert_eq!(
        tcp_echo(&admin.path(), db.ip, 5432, b"b").as_deref(),
        Ok(&b"b"[..]),
        "the namespace label selects ops/admin"
    );
    let other = node.add_pod("shop", "other");
    assert!(
        tcp_echo(&other.path(), db.ip, 5432, b"c").is_err(),
        "not selected: denied"
    );
    let f = wait_flow(&node, &["--pod", "shop/db", "--verdict", "dropped"], |f| {
        f["destination"]["port"] == 5432
    });
    assert!(
        f["policy"]
            .as_str()
            .unwrap_or_default()
            .contains("shop/MoatNetworkPolicy:db-access"),
        "{f}"
    );

    // HTTP rules the kernel cannot enforce yet (header conditions): refused whole, the
    // L3/L4 version above stays in force.
    node.apply_manifests(&[(
        "m.yaml",
        Some(&mnp(
            "      rules:\n        http: [{method: GET, headers: ['X-Token: a']}]\n",
        )),
    )]);
    let status = node.status();
    let errors = status["manifestErrors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| {
            let e = e.as_str().unwrap_or_default();
            e.contains("MoatNetworkPolicy shop/db-access")
                && e.contains("spec.ingress[0].toPorts[0].rules.http[0].headers")
                && e.contains("not enforced")
        }),
        "{status}"
    );
    assert_eq!(tcp_echo(&web.path(), db.ip, 5432, b"d").as_deref(), Ok(&b"d"[..]));
    assert!(tcp_echo(&other.path(), db.ip, 5432, b"e").is_err(), "still denied");
}
