//! An agent restart neither breaks established pod-to-pod connections nor forgets
//! endpoints and leases: maps and tcx links are pinned, state is persisted.
use moat_netns_tests::net::{tcp_echo, EchoServer, HeldConnection};
use moat_netns_tests::{root_or_skip, Node};
use serde_json::Value;

#[test]
fn established_connection_survives_agent_restart() {
    root_or_skip!();
    let node = Node::start();
    let client = node.add_pod("default", "client");
    let server = node.add_pod("default", "server");
    let _srv = EchoServer::start(&server.path(), 9000);
    let conn = HeldConnection::open(&client.path(), server.ip, 9000);
    assert_eq!(conn.roundtrip(b"before").unwrap(), b"before");
    let eps_before: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();

    node.stop_agent();
    // No agent at all: the pinned datapath keeps forwarding.
    assert_eq!(conn.roundtrip(b"while down").unwrap(), b"while down");
    assert_eq!(
        tcp_echo(&client.path(), server.ip, 9000, b"new while down").unwrap(),
        b"new while down"
    );

    node.start_agent();
    assert_eq!(conn.roundtrip(b"after").unwrap(), b"after");
    let eps_after: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| (e["id"].clone(), e["ipv4"].clone(), e["state"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&eps_before),
        ids(&eps_after),
        "endpoints re-adopted with the same ids and addresses"
    );
    assert_eq!(node.map_entries(), 2);

    // The restarted agent keeps leasing without handing out a used address.
    let third = node.add_pod("default", "third");
    assert!(third.ip != client.ip && third.ip != server.ip);
    assert_eq!(tcp_echo(&third.path(), server.ip, 9000, b"third").unwrap(), b"third");
    assert_eq!(conn.roundtrip(b"still").unwrap(), b"still");
}

/// A node whose db admits nobody, with web and db wired.
fn isolated_db() -> (Node, moat_netns_tests::Pod, moat_netns_tests::Pod) {
    let world = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c, image: i}]}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: shop, labels: {app: db}}\nspec: {containers: [{name: c, image: i}]}\n---\n\
        apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\n\
        spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}\n";
    let node = Node::start_with(moat_netns_tests::NodeOpts {
        manifests: vec![("world.yaml", world.to_string())],
        ..moat_netns_tests::NodeOpts::default()
    });
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    (node, web, db)
}

/// The agent's state file is lost while it is down (deleted with its previous version,
/// as a wiped data dir would be). The pods' veths are still up with Moat's programs, but
/// no record says whose they are: the agent must not detach and leave them open. It
/// deletes them (the pods are cut off; their runtime re-creates them), and frees the
/// addresses.
#[test]
fn lost_state_deletes_orphaned_veths_instead_of_opening_them() {
    root_or_skip!();
    let (node, web, db) = isolated_db();
    let _srv = EchoServer::start(&db.path(), 9000);
    assert!(tcp_echo(&web.path(), db.ip, 9000, b"x").is_err(), "db admits nobody");
    let host_veths = node.host_veths();
    assert_eq!(host_veths.len(), 2);

    node.stop_agent();
    let data = node.dir.join("data");
    for f in ["node-state.json", "node-state.json.prev"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    node.start_agent();
    assert!(
        tcp_echo(&web.path(), db.ip, 9000, b"x").is_err(),
        "db is still unreachable after the restart"
    );
    assert!(
        node.host_veths().is_empty(),
        "orphaned veths deleted: {:?}",
        node.host_veths()
    );
    assert!(node.agent_log().contains("deleted an orphaned pod interface"));
    let eps: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 0);
    // The pods come back through the runtime: a new ADD works and is enforced.
    node.remove_pod_netns(&db);
    let db2 = node.add_pod("shop", "db");
    let _srv2 = EchoServer::start(&db2.path(), 9000);
    node.remove_pod_netns(&web);
    let web2 = node.add_pod("shop", "web");
    assert!(
        tcp_echo(&web2.path(), db2.ip, 9000, b"x").is_err(),
        "the new db is isolated"
    );
    assert_eq!(
        tcp_echo(&node.node_netns_path(), db2.ip, 9000, b"probe").unwrap(),
        b"probe",
        "the new db is wired"
    );
}

/// A corrupt state file (a disk error, a bad hand edit) is kept aside and the previous
/// version is used: every pod is re-adopted with its policy, nothing is opened or lost.
#[test]
fn a_corrupt_state_file_is_recovered_from_its_previous_version() {
    root_or_skip!();
    let (node, web, db) = isolated_db();
    let _srv = EchoServer::start(&db.path(), 9000);
    let _srv_web = EchoServer::start(&web.path(), 9000);
    // A restart rewrites the state, so its previous version holds both pods too.
    node.stop_agent();
    node.start_agent();
    node.stop_agent();
    let data = node.dir.join("data");
    std::fs::write(data.join("node-state.json"), b"{\"next_id\": 3, \"endpoints\": [tru").unwrap();
    node.start_agent();
    assert!(
        node.agent_log().contains("state file is corrupt"),
        "{}",
        node.agent_log()
    );
    assert!(
        data.join("node-state.json.corrupt").exists(),
        "kept aside for inspection"
    );
    let eps: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    let ready = eps.as_array().unwrap().iter().filter(|e| e["state"] == "ready").count();
    assert_eq!(ready, 2, "both endpoints re-adopted: {eps}");
    assert!(
        tcp_echo(&web.path(), db.ip, 9000, b"x").is_err(),
        "db still admits nobody"
    );
    assert_eq!(
        tcp_echo(&db.path(), web.ip, 9000, b"ok").unwrap(),
        b"ok",
        "web still open"
    );
    assert_eq!(node.host_veths().len(), 2, "no veth deleted");
}
