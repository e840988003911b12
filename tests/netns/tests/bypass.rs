//! Adversarial tests: a pod, or a host next to the node, tries to get packets past
//! policy with forged ICMP errors, a claimed pod address or IP fragments. Each test
//! checks the safe outcome a user would check (nothing arrives, `moatctl drops` names
//! the reason) and that the legitimate traffic of the same kind still works.
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use moat_netns_tests::manifest::{namespace, pod};
use moat_netns_tests::net::{icmp_error, icmp_messages, in_netns, udp_echo, EchoServer, RawSocket};
use moat_netns_tests::{ip, root_or_skip, Node, NodeOpts};

/// shop/db accepts only UDP 7001 and 7002 from shop/web; web and ops/admin are open.
fn world() -> String {
    namespace("shop")
        + &namespace("ops")
        + &pod("shop", "web", "web")
        + &pod("shop", "db", "db")
        + &pod("ops", "admin", "admin")
        + "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\n\
           spec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]\n  ingress:\n\
           \x20 - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{protocol: UDP, port: 7001}, {protocol: UDP, port: 7002}]\n"
}

fn start() -> Node {
    Node::start_with(NodeOpts {
        manifests: vec![("world.yaml", world())],
        ..NodeOpts::default()
    })
}

/// Sends one UDP datagram from `netns` (bound to `from`) and waits for the echo.
fn udp_flow(netns: &str, from: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> Result<(), String> {
    in_netns(netns, move || {
        let s = UdpSocket::bind(from).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        for _ in 0..4 {
            s.send_to(b"flow", to).map_err(|e| e.to_string())?;
            if s.recv_from(&mut [0u8; 64]).is_ok() {
                return Ok(());
            }
        }
        Err("no echo".into())
    })
}

/// A pod with one allowed flow (web → admin) forges "port unreachable" errors that
/// quote that flow, to a pod whose policy admits no ICMP from it (db). Before the fix
/// the quoted tuple alone made the error "related" and it was delivered.
#[test]
fn a_forged_icmp_error_does_not_reach_an_isolated_pod() {
    root_or_skip!();
    let node = start();
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let admin = node.add_pod("ops", "admin");
    let _admin_srv = EchoServer::start(&admin.path(), 7000);
    udp_flow(&web.path(), (Ipv4Addr::UNSPECIFIED, 40001), (admin.ip, 7000)).expect("web → admin is allowed");

    let sniff = RawSocket::open(&db.path(), libc::IPPROTO_ICMP);
    let forger = RawSocket::open(&web.path(), libc::IPPROTO_ICMP);
    for (t, code) in [(3, 3), (11, 0), (12, 0)] {
        let msg = icmp_error(t, code, (web.ip, 40001, admin.ip, 7000, 17));
        forger.send_to(db.ip, &msg).expect("send forged error");
    }
    let got = icmp_messages(&sniff.received(Duration::from_secs(1)));
    assert!(
        got.iter().all(|(_, src)| *src != web.ip),
        "forged ICMP errors reached the isolated pod: {got:?}"
    );
    assert!(
        node.drop_count(168) >= 3,
        "drops name reason 168 (unrelated ICMP error)"
    );

    // A real error about web's own flow still comes back: UDP to a closed port on
    // admin is refused at once.
    let to = admin.ip;
    let refused = in_netns(&web.path(), move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.connect((to, 7999)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.send(b"anyone?").unwrap();
        s.recv(&mut [0u8; 16]).map_err(|e| e.kind())
    });
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "the real error passes"
    );
}

/// A pod that is not part of a flow (admin) sends errors quoting another pod's flow
/// (web → db) to that pod, to break it. Only the flow's peer or a router may.
#[test]
fn a_pod_cannot_send_errors_about_flows_it_is_not_part_of() {
    root_or_skip!();
    let node = start();
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let admin = node.add_pod("ops", "admin");
    let _db_srv = EchoServer::start(&db.path(), 7001);
    udp_flow(&web.path(), (Ipv4Addr::UNSPECIFIED, 40002), (db.ip, 7001)).expect("web → db:7001 is allowed");

    let sniff = RawSocket::open(&web.path(), libc::IPPROTO_ICMP);
    let forger = RawSocket::open(&admin.path(), libc::IPPROTO_ICMP);
    for (t, code) in [(3, 3), (3, 4), (11, 0)] {
        let msg = icmp_error(t, code, (web.ip, 40002, db.ip, 7001, 17));
        forger.send_to(web.ip, &msg).expect("send forged error");
    }
    let got = icmp_messages(&sniff.received(Duration::from_secs(1)));
    assert!(
        got.iter().all(|(_, src)| *src != admin.ip),
        "errors forged by a third pod reached web: {got:?}"
    );
    assert!(
        node.drop_count(168) >= 3,
        "drops name reason 168 (unrelated ICMP error)"
    );
    udp_flow(&web.path(), (Ipv4Addr::UNSPECIFIED, 40002), (db.ip, 7001)).expect("the flow still works");
}

/// A host on the node's L2 segment (the `ext` namespace on the node's uplink) claims
/// web's address and sends to db, which admits only web. The stack would route it to
/// db like any packet; `to_container` knows a local pod never arrives that way.
#[test]
fn a_neighbour_claiming_a_local_pod_address_is_dropped() {
    root_or_skip!();
    let node = start();
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let ext = node.ext_ns.as_ref().expect("ext netns");
    ip(
        Some(&ext.name),
        &["addr", "add", &format!("{}/32", web.ip), "dev", "uplink"],
    );

    let receiver = in_netns(&db.path(), || {
        let s = UdpSocket::bind(("0.0.0.0", 7002)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    });
    let recv_from = |s: &UdpSocket| {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
        got
    };
    let (web_ip, db_ip) = (web.ip, db.ip);
    in_netns(&ext.path(), move || {
        let s = UdpSocket::bind((web_ip, 0)).expect("bind the claimed address");
        for _ in 0..5 {
            s.send_to(b"spoofed", (db_ip, 7002)).expect("send");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let got = recv_from(&receiver);
    assert!(got.is_empty(), "a spoofed datagram reached db: {got:?}");
    assert!(
        node.drop_count(169) >= 1,
        "drops name reason 169 (spoofed local source)"
    );

    // The real web gets through (the receiver works).
    in_netns(&web.path(), move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.send_to(b"real", (db_ip, 7002)).unwrap();
    });
    let got = recv_from(&receiver);
    assert!(
        got.iter().any(|(d, _)| d == b"real"),
        "web's own datagram arrives: {got:?}"
    );
}

/// A UDP datagram larger than the MTU travels as IP fragments; only the first carries
/// ports. An allowed flow (web → db:7001, a port rule) passes whole, both ways; a denied
/// one (admin → db) does not; a fragment whose first fragment never came is dropped.
#[test]
fn fragments_follow_their_flow() {
    root_or_skip!();
    let node = start();
    let web = node.add_pod("shop", "web");
    let db = node.add_pod("shop", "db");
    let admin = node.add_pod("ops", "admin");
    let _db_srv = EchoServer::start(&db.path(), 7001);
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();

    let echoed = udp_echo(&web.path(), db.ip, 7001, &big).expect("a fragmented datagram of an allowed flow");
    assert_eq!(echoed, big, "the echo (fragmented too) arrives whole");
    assert!(
        udp_echo(&admin.path(), db.ip, 7001, &big).is_err(),
        "fragments of a denied flow are dropped"
    );

    // A first fragment under another pod's address is dropped by anti-spoofing and
    // leaves nothing in the fragment table (a pod must not fill it for others).
    let frags_before = node.pinned_map_len("moat_frag4_v1");
    let eps: serde_json::Value = serde_json::from_str(&node.moatctl(&["endpoints", "-o", "json"])).unwrap();
    let web_ep = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"]["name"] == "web")
        .unwrap()
        .clone();
    let mac = |s: &str| -> [u8; 6] {
        let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
        v.try_into().unwrap()
    };
    let (host_mac, pod_mac) = (
        mac(web_ep["hostMAC"].as_str().unwrap()),
        mac(web_ep["podMAC"].as_str().unwrap()),
    );
    for id in 0..50u16 {
        let mut f = moat_netns_tests::net::udp_frame(host_mac, pod_mac, admin.ip, db.ip, 7001, &[0u8; 64]);
        f[18..20].copy_from_slice(&(0x7000 + id).to_be_bytes());
        f[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
        f[24..26].copy_from_slice(&[0, 0]);
        let sum = moat_netns_tests::net::inet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        moat_netns_tests::net::send_frame(&web.path(), "eth0", &f).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        node.pinned_map_len("moat_frag4_v1"),
        frags_before,
        "spoofed first fragments left entries"
    );

    // A lone non-first fragment (offset 1480) with a fresh IP id.
    let before = node.drop_count(167);
    let raw = RawSocket::open(&web.path(), libc::IPPROTO_RAW);
    let mut pkt = vec![0x45, 0, 0, 120, 0xbe, 0xef, 0x00, 185, 64, 17, 0, 0];
    pkt.extend_from_slice(&web.ip.octets());
    pkt.extend_from_slice(&db.ip.octets());
    pkt.resize(120, 0x5a);
    raw.send_to(db.ip, &pkt).expect("send a lone fragment");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        node.drop_count(167) > before,
        "a fragment without its first is dropped (reason 167)"
    );
}
