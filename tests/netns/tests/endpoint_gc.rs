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

/// A plugin that dies after the agent forgot the endpoint but before it deleted the veth
/// (DeleteEndpoint answered, no RTM_DELLINK): the agent does not detach the programs on
/// DEL, so the veth is never open, and it deletes the veth itself a moment later.
#[test]
fn a_veth_left_after_delete_is_deleted_not_opened() {
    root_or_skip!();
    let node = Node::start();
    let keep = node.add_pod("default", "keep");
    let gone = node.add_pod("default", "half-deleted");
    let host_if = gone.result["interfaces"][0]["name"].as_str().unwrap().to_string();
    let attachment = moat_api::v1::AttachmentRef {
        container_id: gone.container_id.clone(),
        ifname: "eth0".into(),
    };
    node.api(|mut client| async move { client.delete_endpoint(attachment).await })
        .expect("DeleteEndpoint");
    // Right after the answer the veth still exists: it must still carry its filters.
    if node.host_veths().contains(&host_if) {
        let attached = node.attachments();
        assert!(
            attached.iter().filter(|a| a.contains(&host_if)).count() == 2,
            "{host_if} lost its programs before it was deleted: {attached:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.host_veths().contains(&host_if) {
        assert!(
            Instant::now() < deadline,
            "{host_if} was left behind: {:?}",
            node.host_veths()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !moat_netns_tests::link_exists(&gone.netns, "eth0"),
        "the pod side goes with it"
    );
    assert_eq!(endpoint_names(&node), vec!["default/keep".to_string()]);
    let next = node.add_pod("default", "next");
    assert!(ping(&next.path(), keep.ip), "the other pod is untouched");
}
