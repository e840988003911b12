//! Endpoint garbage collection: a pod whose network namespace disappears without a CNI
//! DEL (a killed container, a runtime that failed after ADD) is removed by the agent
//! within seconds, as DEL would: no endpoint, lease, map entry or link pin is left, and
//! the other pods are untouched.
use std::time::{Duration, Instant};

use moat_netns_tests::net::ping;
use moat_netns_tests::{root_or_skip, Node, Pod};
use serde_json::Value;

fn endpoint_names(node: &Node) -> Vec<String> {
    serde_json::from_str::<Value>(&node.moatctl(&["endpoints", "-o", "json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["pod"]["namespace"].as_str().unwrap_or(""),
                e["pod"]["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Waits until only `keep` is left (the agent checks every two seconds).
fn wait_collected(node: &Node, keep: &Pod, within: Duration) {
    let deadline = Instant::now() + within;
    let want = vec![format!("{}/{}", keep.namespace, keep.name)];
    loop {
        let names = endpoint_names(node);
        if names == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "endpoints after the netns vanished: {names:?} (want {want:?})\nagent log:\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node.persisted_leases(), 1, "the vanished pod's lease was freed");
    assert_eq!(node.map_entries(), 1, "only the live pod's map entry remains");
    assert_eq!(
        node.attachments().len(),
        2,
        "only the live pod's two programs remain attached: {:?}",
        node.attachments()
    );
    assert_eq!(node.host_veths().len(), 1, "{:?}", node.host_veths());
    assert!(
        node.agent_log().contains("endpoint collected"),
        "the collection is logged"
    );
}

#[test]
fn a_pod_netns_deleted_without_del_is_collected_within_seconds() {
    root_or_skip!();
    let node = Node::start();
    let live = node.add_pod("default", "live");
    let gone = node.add_pod("default", "gone");
    assert_eq!(endpoint_names(&node).len(), 2);

    // The runtime dies: the netns goes away and DEL never comes.
    let t = Instant::now();
    node.remove_pod_netns(&gone);
    wait_collected(&node, &live, Duration::from_secs(10));
    eprintln!("collected after {:?}", t.elapsed());

    // The freed address can be leased again and the survivor still works.
    let next = node.add_pod("default", "next");
    assert!(ping(&next.path(), live.ip), "a new pod reaches the survivor");
}

#[test]
fn a_pod_that_vanished_while_the_agent_was_down_is_collected_at_start() {
    root_or_skip!();
    let node = Node::start();
    let live = node.add_pod("default", "live");
    let gone = node.add_pod("default", "gone");
    node.stop_agent();
    node.remove_pod_netns(&gone);
    node.start_agent();
    // At start, before the first periodic check: no "not attached" endpoint lingers.
    wait_collected(&node, &live, Duration::from_secs(3));
    assert!(
        !node.moatctl(&["endpoints"]).contains("not attached"),
        "{}",
        node.moatctl(&["endpoints"])
    );
}
