//! 200 ADD/DEL cycles through the real plugin leave nothing behind: no veth, no IP
//! lease, no endpoint map entry, no link pin.
use moat_netns_tests::net::ping;
use moat_netns_tests::{root_or_skip, Netns, Node};

#[test]
fn two_hundred_add_del_cycles_leave_nothing_behind() {
    root_or_skip!();
    let node = Node::start();
    let anchor = node.add_pod("default", "anchor");
    let conf = node.conf().to_string();
    for i in 0..200 {
        let ns = Netns::new(&moat_netns_tests::unique(&format!("-churn{i}")));
        let cid = format!("{}-churn-{i}", node.id);
        let args = format!("K8S_POD_NAMESPACE=churn;K8S_POD_NAME=p{i}");
        let add = node.cni(&Node::env("ADD", &cid, &ns.path(), &args), &conf);
        assert!(add.success, "cycle {i} ADD: {add:?}");
        if i % 50 == 0 {
            // Every so often prove the pod really works before tearing it down.
            let ip = moat_netns_tests::result_ip(&add.json());
            assert!(
                ping(&ns.path(), anchor.ip),
                "cycle {i}: pod {ip} cannot reach the anchor pod"
            );
        }
        let del = node.cni(&Node::env("DEL", &cid, &ns.path(), ""), &conf);
        assert!(del.success, "cycle {i} DEL: {del:?}");
    }
    assert_eq!(
        node.host_veths().len(),
        1,
        "only the anchor's veth remains: {:?}",
        node.host_veths()
    );
    assert_eq!(node.persisted_leases(), 1, "only the anchor's lease remains");
    assert_eq!(node.map_entries(), 1, "only the anchor's map entry remains");
    assert_eq!(
        node.attachments().len(),
        2,
        "only the anchor's two programs remain attached: {:?}",
        node.attachments()
    );
    let eps = node.moatctl(&["endpoints", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&eps)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
