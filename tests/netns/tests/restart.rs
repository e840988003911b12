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
