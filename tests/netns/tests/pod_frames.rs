//! Raw frames from inside a pod (`AF_PACKET`, as any container with `CAP_NET_RAW` can
//! send): a forged source address, broken headers and other EtherTypes. Each is dropped
//! at the pod's own interface with its reason, and nothing reaches the target.
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use moat_netns_tests::net::{in_netns, send_frame, udp_frame};
use moat_netns_tests::{root_or_skip, Node};
use serde_json::Value;

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    v.try_into().unwrap()
}

#[test]
fn forged_and_malformed_frames_from_a_pod_are_dropped_with_their_reason() {
    root_or_skip!();
    let node = Node::start();
    let web = node.add_pod("default", "web");
    let db = node.add_pod("default", "db");
    let eps: Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    let web_ep = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"]["name"] == "web")
        .expect("web's endpoint")
        .clone();
    let host_mac = mac(web_ep["hostMAC"].as_str().unwrap());
    let pod_mac = mac(web_ep["podMAC"].as_str().unwrap());
    // The pods' own IPv6 chatter (also reason 139) would blur the counts below.
    for p in [&web, &db] {
        moat_netns_tests::sh(
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", p.path()))
                .args([
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ]),
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let receiver = in_netns(&db.path(), || {
        let s = UdpSocket::bind(("0.0.0.0", 7100)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    });

    let udp = |src: Ipv4Addr| udp_frame(host_mac, pod_mac, src, db.ip, 7100, b"forged");
    let mut truncated = udp(web.ip);
    truncated.truncate(14 + 12);
    let mut short_ihl = udp(web.ip);
    short_ihl[14] = 0x44;
    let mut vlan = udp(web.ip);
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    let mut ipv6 = udp(web.ip);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut other_type = udp(web.ip);
    other_type[12..14].copy_from_slice(&[0x88, 0xb5]);
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("another pod's source address", udp(db.ip), 132),
        ("the node's address as source", udp(node.node_ip), 132),
        ("an outside address as source", udp(Ipv4Addr::new(8, 8, 8, 8)), 132),
        ("source 0.0.0.0", udp(Ipv4Addr::UNSPECIFIED), 132),
        ("a truncated IPv4 header", truncated, 134),
        ("an IPv4 header length below 20 bytes", short_ihl, 134),
        ("an 802.1Q VLAN tag", vlan, 139),
        ("IPv6", ipv6, 139),
        ("an unknown EtherType", other_type, 139),
    ];
    for (what, frame, code) in cases {
        let before = node.drop_count(code);
        send_frame(&web.path(), "eth0", &frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        std::thread::sleep(Duration::from_millis(100));
        assert!(node.drop_count(code) > before, "{what}: no drop with reason {code}");
    }
    let mut buf = [0u8; 64];
    assert!(receiver.recv_from(&mut buf).is_err(), "nothing forged reached db");
    // The same frame with web's own address is delivered (the frames are well formed).
    send_frame(&web.path(), "eth0", &udp(web.ip)).unwrap();
    let (n, from) = receiver.recv_from(&mut buf).expect("web's own datagram arrives");
    assert_eq!((&buf[..n], from.ip()), (&b"forged"[..], std::net::IpAddr::V4(web.ip)));
}
