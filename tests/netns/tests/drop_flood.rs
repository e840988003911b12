//! A pod floods denied traffic for 30 seconds. The agent keeps serving: pods are created
//! meanwhile, another pod's drop is still reported, drop events from the flooder are
//! rate-limited, and `moatctl drops` still counts every dropped packet.
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use moat_netns_tests::net::in_netns;
use moat_netns_tests::{root_or_skip, Node, NodeOpts};
use serde_json::Value;

const WORLD: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
    apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c, image: i}]}\n---\n\
    apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: shop, labels: {app: db}}\nspec: {containers: [{name: c, image: i}]}\n---\n\
    apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: shop, labels: {app: other}}\nspec: {containers: [{name: c, image: i}]}\n---\n\
    apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\n\
    spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}\n";

fn drops_of(node: &Node, pod: &str, code: u64) -> u64 {
    let drops: Value = serde_json::from_str(&node.moatctl(&["-o", "json", "drops"])).unwrap();
    drops["byPod"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["pod"] == pod && d["code"] == code)
        .filter_map(|d| d["count"].as_u64())
        .sum()
}

fn dropped_events_from(node: &Node, ip: std::net::Ipv4Addr) -> usize {
    node.moatctl(&["-o", "json", "observe", "--last", "8192", "--verdict", "dropped"])
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|f| f["source"]["ip"] == ip.to_string())
        .count()
}

#[test]
fn a_drop_flood_is_counted_in_full_but_cannot_starve_the_agent() {
    root_or_skip!();
    let node = Node::start_with(NodeOpts {
        manifests: vec![("world.yaml", WORLD.to_string())],
        ..NodeOpts::default()
    });
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let other = node.add_pod("shop", "other");
    let (path, to) = (web.path(), db.ip);
    let flood = std::thread::spawn(move || {
        in_netns(&path, move || {
            let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            let end = Instant::now() + Duration::from_secs(30);
            let mut sent = 0u64;
            while Instant::now() < end {
                for _ in 0..256 {
                    if s.send_to(b"flood", (to, 7001)).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        })
    });

    // Pods keep coming up while the flood runs.
    std::thread::sleep(Duration::from_secs(2));
    let mut slowest = Duration::ZERO;
    for i in 0..8 {
        let t = Instant::now();
        let _p = node.add_pod("shop", &format!("new{i}"));
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("slowest CNI ADD during the flood: {slowest:?}");
    // Another pod's drop is still reported while web floods.
    let to = db.ip;
    in_netns(&other.path(), move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.send_to(b"one", (to, 7002)).unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        node.moatctl(&["-o", "json", "observe", "--last", "8192", "--verdict", "dropped"])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|f| f["source"]["ip"] == other.ip.to_string() && f["destination"]["port"] == 7002),
        "the other pod's drop is reported during the flood"
    );

    let sent = flood.join().expect("flood thread");
    std::thread::sleep(Duration::from_millis(500));
    let counted = drops_of(&node, "shop/web", 133);
    let events = dropped_events_from(&node, web.ip);
    eprintln!("flood: {sent} datagrams sent, {counted} drops counted, {events} drop events kept");
    assert!(sent > 100_000, "the flood ran ({sent} datagrams)");
    // Counted in the kernel per pod and reason: every datagram that reached the veth (the
    // stack may shed a few before it under load, never add any).
    assert!(
        counted <= sent && counted * 100 >= sent * 99,
        "{counted} of {sent} counted"
    );
    // 50 events per second and CPU at most, over ~31 s: far fewer than the drops.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(events <= 50 * cpus * 33, "{events} drop events from the flooder");
}
