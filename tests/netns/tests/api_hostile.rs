//! The agent's gRPC socket under hostile use: a non-root peer, and AddEndpoint requests
//! that try to attach the datapath to a node interface, claim the node's or another
//! pod's address, or name a netns that is not a pod's. Each is refused with an error that
//! names the field, and nothing already enforced changes.
use std::net::Ipv4Addr;
use std::process::Command;

use moat_api::v1::{AddEndpointRequest, AttachmentRef};
use moat_netns_tests::{bin, root_or_skip, Node};
use serde_json::Value;

/// One AddEndpoint call; the error message, or "ok".
fn add_endpoint(node: &Node, req: AddEndpointRequest) -> Result<(), (tonic::Code, String)> {
    node.api(|mut client| async move {
        client
            .add_endpoint(req)
            .await
            .map(drop)
            .map_err(|s| (s.code(), s.message().to_string()))
    })
}

fn request(node: &Node, container_id: &str, ipv4: Ipv4Addr) -> AddEndpointRequest {
    AddEndpointRequest {
        attachment: Some(AttachmentRef {
            container_id: container_id.into(),
            ifname: "eth0".into(),
        }),
        netns: node.node_netns_path(),
        pod_namespace: "default".into(),
        pod_name: "intruder".into(),
        pod_uid: "u-1".into(),
        ipv4: ipv4.to_string(),
        host_ifname: moat_api::naming::host_ifname(container_id, "eth0"),
        pod_mac: "0a:00:00:00:00:01".into(),
        ipam: "delegated".into(),
    }
}

fn refused(node: &Node, what: &str, req: AddEndpointRequest, expect: &str) {
    match add_endpoint(node, req) {
        Ok(()) => panic!("{what}: accepted"),
        Err((_, msg)) => assert!(msg.contains(expect), "{what}: expected {expect:?} in {msg:?}"),
    }
}

#[test]
fn hostile_add_endpoint_requests_are_refused() {
    root_or_skip!();
    let node = Node::start();
    let web = node.add_pod("default", "web");
    let st = node.status();
    let gateway: Ipv4Addr = st["gateway"].as_str().unwrap().parse().unwrap();
    let free = Ipv4Addr::from(u32::from(web.ip) + 20);
    let id = format!("{}-intruder", node.id);

    // Attach to the node's uplink, or to web's veth under another attachment.
    let mut r = request(&node, &id, free);
    r.host_ifname = "uplink".into();
    refused(&node, "a node interface", r, "host_ifname \"uplink\"");
    let mut r = request(&node, &id, free);
    r.host_ifname = moat_api::naming::host_ifname(&web.container_id, "eth0");
    refused(&node, "another pod's veth", r, "host_ifname");

    // Addresses a pod must never have.
    refused(&node, "the node's address", request(&node, &id, node.node_ip), "ipv4");
    refused(&node, "the gateway", request(&node, &id, gateway), "ipv4");
    refused(
        &node,
        "outside the pod CIDR",
        request(&node, &id, Ipv4Addr::new(8, 8, 8, 8)),
        "outside the pod ranges",
    );
    refused(&node, "web's address", request(&node, &id, web.ip), "already belongs");
    let mut r = request(&node, &id, free);
    r.ipam = "agent".into();
    refused(&node, "an address the agent did not lease", r, "not leased");

    // A netns that is not a pod's.
    let mut r = request(&node, &id, free);
    r.netns = "/etc/passwd".into();
    refused(&node, "a file as netns", r, "not a network namespace");
    refused(
        &node,
        "the node's own netns",
        request(&node, &id, free),
        "the node's own network namespace",
    );

    // Malformed fields.
    let mut r = request(&node, &id, free);
    r.attachment.as_mut().unwrap().container_id = "../../etc".into();
    refused(&node, "a container id with /", r, "attachment.container_id");
    let mut r = request(&node, &id, free);
    r.attachment.as_mut().unwrap().ifname = "eth0:1".into();
    refused(&node, "an alias ifname", r, "attachment.ifname");
    let mut r = request(&node, &id, free);
    r.pod_mac = "not-a-mac".into();
    refused(&node, "a bad MAC", r, "pod_mac");
    let mut r = request(&node, &id, free);
    r.pod_name = "a\nb".into();
    refused(&node, "a pod name with a newline", r, "pod_name");

    // Nothing changed: one endpoint, web still reaches the node, uplink has no programs.
    let eps: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 1, "{eps}");
    assert!(moat_netns_tests::net::ping(&web.path(), node.node_ip));
    let tcx = moat_netns_tests::sh(
        Command::new("nsenter")
            .arg(format!("--net={}", node.node_netns_path()))
            .args(["bpftool", "net", "show", "dev", "uplink"]),
    );
    assert!(!tcx.contains("from_container"), "{tcx}");
}

#[test]
fn a_non_root_peer_is_refused() {
    root_or_skip!();
    let node = Node::start();
    // Even with the socket file opened up, a non-root peer gets no answer.
    std::fs::set_permissions(&node.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("moatctl"))
        .arg("--socket")
        .arg(&node.socket)
        .arg("status")
        .output()
        .expect("run moatctl as nobody");
    assert!(
        !out.status.success(),
        "nobody got a status: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(node.agent_log().contains("non-root peer"), "{}", node.agent_log());
    assert!(node.moatctl(&["status"]).contains("Ready"), "root still gets answers");
}
