//! Service load balancing with the socket load balancer, real traffic.
//!
//! ```text
//!   client pods ──connect(VIP:80)──► cgroup connect4 hook ──► backend pod:8080
//!                                     (SERVICES, BACKENDS maps)
//! ```
//! Service addresses are unique per test process (10.250.<pid>.x): the hooks sit at the
//! cgroup root, so every test's agent sees every socket and must only match its own.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use moat_netns_tests::net::{tcp_read, udp_ask, NameServer};
use moat_netns_tests::{root_or_skip, Node, NodeOpts, Pod};
use serde_json::Value;

fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (std::process::id() % 250) as u8, n)
}

fn pods(app_of: &[(&str, &str)]) -> String {
    let mut s = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n".to_string();
    for (name, app) in app_of {
        s += &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec:\n  containers:\n  - name: c\n    ports: [{{name: http, containerPort: 8080}}, {{name: dns, containerPort: 5353, protocol: UDP}}]\n---\n");
    }
    s
}

fn service(name: &str, ip: Ipv4Addr, extra: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80, targetPort: http}}\n  - {{name: dns, port: 53, targetPort: dns, protocol: UDP}}\n{extra}---\n")
}

struct Setup {
    node: Node,
    client: Pod,
    web: Vec<Pod>,
    _servers: Vec<NameServer>,
}

fn setup(services: &str) -> Setup {
    moat_netns_tests::require_root();
    let node = Node::start_with(NodeOpts {
        manifests: vec![
            ("pods.yaml", pods(&SETUP_PODS)),
            ("services.yaml", services.to_string()),
        ],
        ..NodeOpts::default()
    });
    let client = node.add_pod("shop", "client");
    let mut web = Vec::new();
    let mut servers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let p = node.add_pod("shop", name);
        servers.push(NameServer::start(&p.path(), 8080, name));
        servers.push(NameServer::start(&p.path(), 5353, name));
        web.push(p);
    }
    Setup {
        node,
        client,
        web,
        _servers: servers,
    }
}

/// The pods `setup` creates, with their `app` label.
const SETUP_PODS: [(&str, &str); 5] = [
    ("w1", "web"),
    ("w2", "web"),
    ("w3", "web"),
    ("client", "client"),
    ("other", "other"),
];

/// Re-applies the setup's pods with pod `name` labelled `app: {app}` instead.
fn relabel(s: &Setup, name: &str, app: &str) {
    let now: Vec<(&str, &str)> = SETUP_PODS
        .iter()
        .map(|&(n, a)| (n, if n == name { app } else { a }))
        .collect();
    s.node.apply_manifests(&[("pods.yaml", Some(&pods(&now)))]);
}

fn spread(s: &Setup, to: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    let mut hits = BTreeMap::new();
    for _ in 0..n {
        let who = tcp_read(&s.client.path(), to, 80).unwrap_or_else(|e| panic!("connect {to}:80: {e}"));
        *hits.entry(who).or_insert(0) += 1;
    }
    hits
}

#[test]
fn cluster_ip_spreads_over_backends_and_follows_changes() {
    root_or_skip!();
    let s = setup(&service("web", vip(1), ""));
    let hits = spread(&s, vip(1), 60);
    assert_eq!(
        hits.keys().collect::<Vec<_>>(),
        ["w1", "w2", "w3"],
        "every backend gets traffic: {hits:?}"
    );

    // moatctl services shows the frontend and the three backends.
    let svcs: Value = serde_json::from_str(&s.node.moatctl(&["-o", "json", "services"])).unwrap();
    let http = svcs
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web" && v["port"] == "http")
        .expect("web:http");
    assert_eq!(http["frontends"][0]["address"], format!("{}:80", vip(1)));
    assert_eq!(http["frontends"][0]["scope"], "ClusterIP");
    assert_eq!(http["backends"].as_array().unwrap().len(), 3);
    let table = s.node.moatctl(&["services"]);
    assert!(table.contains("shop/web:http") && table.contains("shop/w2"), "{table}");
    // Each translation is a flow event naming client, backend and service.
    let obs = s
        .node
        .moatctl(&["-o", "json", "observe", "--verdict", "translated", "--last", "100"]);
    let f: Value = serde_json::from_str(obs.lines().last().expect("translation events")).unwrap();
    assert_eq!(f["source"]["pod"], "client", "{f}");
    assert!(f["destination"]["pod"].as_str().unwrap().starts_with('w'), "{f}");
    assert_eq!(f["serviceAddress"], format!("{}:80", vip(1)));
    assert_eq!(f["service"], "shop/web:http");
    let line = s.node.moatctl(&["observe", "--verdict", "translated", "--last", "1"]);
    assert!(
        line.contains("TRANSLATED") && line.contains("service shop/web:http"),
        "{line}"
    );

    // w2 leaves the service (relabelled): new connections avoid it within a second.
    relabel(&s, "w2", "old");
    let hits = spread(&s, vip(1), 40);
    assert!(
        !hits.contains_key("w2"),
        "removed backend gets no new connections: {hits:?}"
    );
    assert_eq!(hits.len(), 2, "{hits:?}");
}

#[test]
fn udp_request_response_comes_back_from_the_service_address() {
    root_or_skip!();
    let s = setup(&service("web", vip(2), ""));
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (who, from) = udp_ask(&s.client.path(), vip(2), 53).expect("UDP answer through the service");
        assert_eq!(
            from,
            std::net::SocketAddr::from((vip(2), 53)),
            "the reply shows the service address"
        );
        names.insert(who);
    }
    assert!(names.len() >= 2, "datagrams spread over backends: {names:?}");
}

/// A socket's reverse translation (kept so getpeername and UDP replies show the service
/// address) goes when the socket is closed. Before, entries stayed until the shared LRU
/// evicted them, so one pod's connect loop pushed out other pods' live entries.
#[test]
fn closed_sockets_leave_no_reverse_translation_behind() {
    root_or_skip!();
    let s = setup(&service("web", vip(29), ""));
    let hits = spread(&s, vip(29), 200);
    assert_eq!(hits.values().sum::<usize>(), 200);
    for _ in 0..30 {
        let _ = udp_ask(&s.client.path(), vip(29), 53).expect("UDP answer through the service");
    }
    let left = s.node.pinned_map_len("moat_sknat_v1");
    assert!(left <= 2, "{left} reverse translations left after 230 closed sockets");
    // Open sockets keep theirs: a UDP reply still shows the service address.
    let (_, from) = udp_ask(&s.client.path(), vip(29), 53).unwrap();
    assert_eq!(from, std::net::SocketAddr::from((vip(29), 53)));
}

/// A connected UDP socket is translated once; when its backend leaves, the agent
/// closes it (as Cilium does; kube-proxy flushes UDP conntrack) so the application
/// reconnects to a live backend instead of sending to the old one forever.
#[test]
fn a_connected_udp_socket_to_a_removed_backend_is_closed() {
    root_or_skip!();
    let s = setup(&service("web", vip(25), ""));
    let to = vip(25);
    let sock = moat_netns_tests::net::in_netns(&s.client.path(), move || {
        let u = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        u.connect((to, 53)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        u
    });
    let mut buf = [0u8; 64];
    sock.send(b"who").unwrap();
    let n = sock.recv(&mut buf).expect("a reply through the service");
    let who = String::from_utf8_lossy(&buf[..n]).to_string();

    relabel(&s, &who, "old");
    let err = sock
        .send(b"who")
        .and_then(|_| sock.recv(&mut buf))
        .expect_err("the socket to the removed backend is closed");
    assert!(
        [Some(libc::ECONNABORTED), Some(libc::EDESTADDRREQ)].contains(&err.raw_os_error()),
        "{err}"
    );
    assert!(s
        .node
        .agent_log()
        .contains("closed UDP sockets connected to removed backends"));
    let (again, _) = udp_ask(&s.client.path(), to, 53).expect("a new socket");
    assert_ne!(again, who, "a new socket gets a live backend");
}

#[test]
fn session_affinity_sticks_to_one_backend() {
    root_or_skip!();
    // `twin` selects the label a relabelled backend gets: it stays a backend (of twin),
    // active, on the same port.
    let twin = service("twin", vip(22), "").replace("app: web", "app: old");
    let s = setup(
        &(service(
            "web",
            vip(3),
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        ) + &twin),
    );
    let hits = spread(&s, vip(3), 20);
    assert_eq!(hits.len(), 1, "one client, one backend: {hits:?}");
    let sticky = hits.keys().next().unwrap().clone();

    // The sticky backend leaves the service: the client moves on (and sticks again).
    relabel(&s, &sticky, "old");
    let hits = spread(&s, vip(3), 10);
    assert!(!hits.contains_key(&sticky), "affinity to a backend that left: {hits:?}");
    assert_eq!(hits.len(), 1, "sticks to its new backend: {hits:?}");
}

/// An IPv6 socket connecting to the v4-mapped service address (`::ffff:VIP`, as
/// dual-stack runtimes do) passes the v6 socket hooks, not the v4 ones: the per-packet
/// path in `from_container` translates it, and the reply shows the service address.
#[test]
fn a_socket_that_bypasses_the_hooks_is_translated_per_packet() {
    root_or_skip!();
    use std::io::Read as _;
    let s = setup(&service("web", vip(19), ""));
    let to = std::net::SocketAddr::from((vip(19).to_ipv6_mapped(), 80));
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (who, peer) = moat_netns_tests::net::in_netns(&s.client.path(), move || {
            let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("v4-mapped connect");
            let peer = c.peer_addr().unwrap();
            let mut who = String::new();
            c.read_to_string(&mut who).unwrap();
            (who, peer)
        });
        assert_eq!(peer, to, "the application sees the service address");
        names.insert(who);
    }
    assert!(names.len() >= 2, "spread per packet: {names:?}");
    let st = s.node.moatctl(&["status"]);
    assert!(st.contains("tc_lb_translated"), "{st}");
}

#[test]
fn a_service_without_endpoints_refuses_at_once() {
    root_or_skip!();
    let s = setup(&(service("web", vip(4), "") + &service("empty", vip(5), "").replace("app: web", "app: nobody")));
    let t = Instant::now();
    let err = tcp_read(&s.client.path(), vip(5), 80).expect_err("no backend");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refused quickly, took {:?}",
        t.elapsed()
    );
    assert!(err.contains("not permitted") || err.contains("refused"), "{err}");
    let drops: Value = serde_json::from_str(&s.node.moatctl(&["-o", "json", "drops"])).unwrap();
    assert!(
        drops["byReason"].as_array().unwrap().iter().any(|d| d["code"] == 158),
        "counted as no_service_backend: {drops}"
    );
}

#[test]
fn hairpin_a_backend_reaches_its_own_service() {
    root_or_skip!();
    let s = setup(&service("web", vip(6), "").replace("app: web", "app: solo"));
    // Only w1 is selected once relabelled to app=solo.
    relabel(&s, "w1", "solo");
    assert_eq!(
        tcp_read(&s.web[0].path(), vip(6), 80).unwrap(),
        "w1",
        "the pod reaches itself via the service"
    );
}

#[test]
fn network_policy_applies_to_the_backend_after_translation() {
    root_or_skip!();
    let s = setup(&service("web", vip(7), ""));
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-client, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: client}}\n";
    s.node.apply_manifests(&[("policy.yaml", Some(policy))]);
    // The client is allowed to every backend; a pod that is not a client to none.
    let other = s.node.add_pod("shop", "other");
    assert_eq!(
        spread(&s, vip(7), 12).values().sum::<usize>(),
        12,
        "client → service → any backend"
    );
    for _ in 0..4 {
        assert!(
            tcp_read(&other.path(), vip(7), 80).is_err(),
            "other → service → backend is denied by the backend's policy"
        );
    }
    let f = s
        .node
        .moatctl(&["-o", "json", "observe", "--verdict", "dropped", "--last", "50"]);
    assert!(f.contains("web-from-client"), "drop names the policy: {f}");
}

fn node_port_service(name: &str, ip: Ipv4Addr, node_port: u16, app: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  type: NodePort\n  clusterIP: {ip}\n  selector: {{app: {app}}}\n  ports:\n  - {{name: http, port: 80, targetPort: http, nodePort: {node_port}}}\n  - {{name: dns, port: 53, targetPort: dns, protocol: UDP, nodePort: {node_port}}}\n---\n")
}

/// ```text
///   ext netns (client) ── uplink ──► node: XDP node_ingress (DNAT to a backend, Maglev)
///                                     └─► stack ─► lxc ─► backend pod
///   reply: backend ─► from_container (source back to node_ip:nodePort) ─► uplink ─► client
/// ```
#[test]
fn node_port_from_outside_the_node() {
    root_or_skip!();
    let closed = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: closed, namespace: shop}}\nspec:\n  type: NodePort\n  clusterIP: {}\n  selector: {{app: web}}\n  ports:\n  - {{port: 53, targetPort: 5454, protocol: UDP, nodePort: 30085}}\n---\n",
        vip(21)
    );
    let s = setup(
        &(node_port_service("web", vip(8), 30080, "web")
            + &node_port_service("none", vip(9), 30081, "nobody")
            + &closed),
    );
    let ext = s.node.ext_ns.as_ref().expect("ext netns").path();
    let mut hits = BTreeMap::new();
    for _ in 0..40 {
        let who = tcp_read(&ext, s.node.node_ip, 30080).unwrap_or_else(|e| {
            panic!(
                "NodePort TCP: {e}\n{}\n{}",
                s.node.moatctl(&["services"]),
                s.node.moatctl(&["status"])
            )
        });
        *hits.entry(who).or_insert(0) += 1;
    }
    assert!(
        hits.len() >= 2,
        "connections from many source ports spread over backends: {hits:?}"
    );
    let (who, from) = udp_ask(&ext, s.node.node_ip, 30080).expect("NodePort UDP");
    assert!(who.starts_with('w'), "{who}");
    assert_eq!(
        from,
        std::net::SocketAddr::from((s.node.node_ip, 30080)),
        "the reply comes from the NodePort"
    );

    // No endpoints: the node answers at once (RST), nothing is black-holed.
    let t = Instant::now();
    let err = tcp_read(&ext, s.node.node_ip, 30081).expect_err("no backend");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refused quickly: {err} after {:?}",
        t.elapsed()
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    // A backend with nothing on the target port: its "port unreachable" leaves the node
    // as the NodePort's, so the outside client's connected socket sees it.
    assert_eq!(
        connected_udp(&ext, s.node.node_ip, 30085),
        Err(std::io::ErrorKind::ConnectionRefused),
        "a backend's port unreachable reaches the outside client"
    );

    let svcs = s.node.moatctl(&["services"]);
    assert!(
        svcs.contains(&format!("{}:30080 TCP", s.node.node_ip)) && svcs.contains("NodePort"),
        "{svcs}"
    );
    let obs = s
        .node
        .moatctl(&["-o", "json", "observe", "--verdict", "translated", "--port", "30080"]);
    let flows: Vec<Value> = obs.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let tcp = flows
        .iter()
        .find(|f| f["protocol"] == "TCP")
        .expect("a TCP NodePort translation");
    assert_eq!(tcp["source"]["ip"], s.node.ext_ip.to_string(), "{tcp}");
    assert_eq!(tcp["hook"], "node-device");
    assert_eq!(tcp["service"], "shop/web:http");
    assert!(flows
        .iter()
        .any(|f| f["protocol"] == "UDP" && f["service"] == "shop/web:dns"));
    let st = s.node.moatctl(&["status"]);
    assert!(
        st.contains("nodeport_translated") && st.contains("nodeport_reversed"),
        "{st}"
    );
}

/// NodePorts keep working across an agent restart, and a service deleted while the
/// agent was down is gone afterwards, its Maglev tables too (ids are persisted; the
/// tables a previous run left are found and cleaned up).
#[test]
fn node_ports_across_an_agent_restart() {
    root_or_skip!();
    let a = node_port_service("np-a", vip(26), 30120, "web");
    let b = node_port_service("np-b", vip(27), 30121, "web");
    let s = setup(&(a.clone() + &b));
    let ext = s.node.ext_ns.as_ref().expect("ext netns").path();
    for port in [30120, 30121] {
        tcp_read(&ext, s.node.node_ip, port).unwrap_or_else(|e| panic!("NodePort {port}: {e}"));
    }
    let table = 32_749; // MAGLEV_M in dataplane-common
                        // Two services × two ports (TCP http, UDP dns) = four tables.
    assert_eq!(s.node.pinned_map_len("moat_maglev_v2"), 4 * table);

    s.node.stop_agent();
    std::fs::write(s.node.state_dir().join("services.yaml"), &a).unwrap();
    s.node.start_agent();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp_read(&ext, s.node.node_ip, 30121).is_ok() {
        assert!(Instant::now() < deadline, "the deleted NodePort still answers");
        std::thread::sleep(Duration::from_millis(100));
    }
    let who = tcp_read(&ext, s.node.node_ip, 30120).expect("the kept NodePort after the restart");
    assert!(who.starts_with('w'), "{who}");
    assert_eq!(
        s.node.pinned_map_len("moat_maglev_v2"),
        2 * table,
        "the deleted service's Maglev tables are gone"
    );
}

/// `sessionAffinity: ClientIP` on a NodePort: an outside client's connections (new source
/// port each time, so Maglev alone would spread them) all reach one backend.
#[test]
fn session_affinity_on_a_node_port_from_outside() {
    root_or_skip!();
    let sticky = node_port_service("sticky", vip(16), 30082, "web").replace(
        "  type: NodePort\n",
        "  type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n",
    );
    let s = setup(&(node_port_service("spread", vip(17), 30083, "web") + &sticky));
    let ext = s.node.ext_ns.as_ref().expect("ext netns").path();
    let hits = |port: u16| {
        let mut hits = BTreeMap::new();
        for _ in 0..30 {
            let who = tcp_read(&ext, s.node.node_ip, port).unwrap_or_else(|e| panic!("NodePort {port}: {e}"));
            *hits.entry(who).or_insert(0) += 1;
        }
        hits
    };
    let spread = hits(30083);
    assert!(
        spread.len() >= 2,
        "without affinity the same client spreads: {spread:?}"
    );
    let sticky = hits(30082);
    assert_eq!(sticky.len(), 1, "with affinity one backend: {sticky:?}");
    // Each service port keeps its own affinity (as in kube-proxy): the UDP port sticks too.
    let mut udp = std::collections::BTreeSet::new();
    for _ in 0..10 {
        udp.insert(udp_ask(&ext, s.node.node_ip, 30082).expect("NodePort UDP").0);
    }
    assert_eq!(udp.len(), 1, "UDP with affinity: {udp:?}");
}

/// A service whose endpoints come from an EndpointSlice: `ready` ones take new
/// connections, a `terminating` one keeps its open connection but gets no new one, and
/// `internalTrafficPolicy: Local` keeps traffic on this node's endpoints.
#[test]
fn endpoint_slices_terminating_and_internal_traffic_policy() {
    root_or_skip!();
    use moat_netns_tests::net::HeldConnection;
    let s = setup("");
    let ext = s.node.ext_ns.as_ref().expect("ext netns").path();
    let _remote = NameServer::start(&ext, 8080, "remote");
    let (w1, w2) = (s.web[0].ip, s.web[1].ip);
    let slice = |w2_conditions: &str, itp: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: shop}}\nspec:\n  clusterIP: {vip}\n  internalTrafficPolicy: {itp}\n  ports: [{{name: http, port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: api-1\n  namespace: shop\n  labels: {{kubernetes.io/service-name: api}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n\
             - {{addresses: [{w1}], nodeName: {node}}}\n- {{addresses: [{w2}], nodeName: {node}{w2_conditions}}}\n- {{addresses: [{remote}], nodeName: elsewhere}}\n",
            vip = vip(10),
            node = s.node.id,
            remote = s.node.ext_ip,
        )
    };
    s.node.apply_manifests(&[("api.yaml", Some(&slice("", "Cluster")))]);
    let hits = spread(&s, vip(10), 60);
    assert_eq!(
        hits.keys().collect::<Vec<_>>(),
        ["remote", "w1", "w2"],
        "ready endpoints on and off the node: {hits:?}"
    );

    // Open a connection that lands on w2 (an echo server answers there too).
    let _echo = moat_netns_tests::net::EchoServer::start(&s.web[1].path(), 9090);
    let held = HeldConnection::open(&s.client.path(), w2, 9090);
    assert_eq!(held.roundtrip(b"before").unwrap(), b"before");

    // w2 terminates: no new connections, the open one keeps working.
    s.node.apply_manifests(&[(
        "api.yaml",
        Some(&slice(
            ", conditions: {ready: false, serving: true, terminating: true}",
            "Cluster",
        )),
    )]);
    let hits = spread(&s, vip(10), 40);
    assert!(
        !hits.contains_key("w2"),
        "a terminating endpoint gets no new connections: {hits:?}"
    );
    assert_eq!(
        held.roundtrip(b"after").unwrap(),
        b"after",
        "its existing connection stays"
    );
    let svcs = s.node.moatctl(&["services"]);
    assert!(svcs.contains("terminating"), "{svcs}");

    // internalTrafficPolicy Local: only endpoints on this node.
    s.node.apply_manifests(&[("api.yaml", Some(&slice("", "Local")))]);
    let hits = spread(&s, vip(10), 40);
    assert!(
        !hits.contains_key("remote"),
        "Local keeps traffic on the node: {hits:?}"
    );
    assert!(hits.contains_key("w1") && hits.contains_key("w2"), "{hits:?}");
}

/// Changing one service (backend added, port changed) applies within a second and does
/// not disturb established connections of another.
#[test]
fn service_changes_apply_quickly_without_breaking_other_connections() {
    root_or_skip!();
    use moat_netns_tests::net::{EchoServer, HeldConnection};
    let echo_svc = |ip: Ipv4Addr, port: u16| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: shop}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: web}}\n  ports: [{{port: {port}, targetPort: 9000}}]\n---\n")
    };
    let s = setup(&(service("web", vip(11), "") + &echo_svc(vip(12), 90)));
    let _echo: Vec<_> = s.web.iter().map(|p| EchoServer::start(&p.path(), 9000)).collect();
    let held = HeldConnection::open(&s.client.path(), vip(12), 90);
    assert_eq!(held.roundtrip(b"one").unwrap(), b"one");

    // Port change of the echo service, and the web service loses two backends.
    let t = Instant::now();
    s.node.apply_manifests(&[
        (
            "services.yaml",
            Some(&(service("web", vip(11), "").replace("app: web", "app: solo") + &echo_svc(vip(12), 91))),
        ),
        (
            "pods.yaml",
            Some(&pods(&[
                ("w1", "solo"),
                ("w2", "web"),
                ("w3", "web"),
                ("client", "client"),
                ("other", "other"),
            ])),
        ),
    ]);
    let deadline = t + Duration::from_secs(1);
    loop {
        let ok = moat_netns_tests::net::tcp_echo(&s.client.path(), vip(12), 91, b"new port").is_ok()
            && spread(&s, vip(11), 5).keys().all(|k| k == "w1");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "changes not in effect within a second");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        moat_netns_tests::net::tcp_echo(&s.client.path(), vip(12), 90, b"old port").is_err(),
        "the old port is gone"
    );
    assert_eq!(
        held.roundtrip(b"two").unwrap(),
        b"two",
        "the established connection is untouched"
    );
}

/// Many external service ports (more than the 16 Maglev tables the map once held) all
/// work and do not hold up later changes; a service naming a ClusterIP another service
/// already has does not take that service's traffic.
#[test]
fn many_node_ports_and_a_clashing_cluster_ip() {
    root_or_skip!();
    let s = setup(&service("web", vip(1), ""));
    assert_eq!(spread(&s, vip(1), 30).len(), 3);
    let mut more = String::new();
    for i in 0..20u8 {
        more += &node_port_service(&format!("np{i}"), vip(30 + i), 30100 + u16::from(i), "web");
    }
    // Sorts before "web", so order alone would hand it the address.
    more += &service("clash", vip(1), "").replace("app: web", "app: other");
    s.node.apply_manifests(&[("more.yaml", Some(&more))]);
    let ext = s.node.ext_ns.as_ref().expect("ext netns").path();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp_read(&ext, s.node.node_ip, 30119).is_err() {
        assert!(Instant::now() < deadline, "the 20th NodePort never worked");
        std::thread::sleep(Duration::from_millis(100));
    }
    for port in [30100, 30110, 30119] {
        let who = tcp_read(&ext, s.node.node_ip, port).unwrap_or_else(|e| panic!("NodePort {port}: {e}"));
        assert!(who.starts_with('w'), "{who}");
    }
    let hits = spread(&s, vip(1), 30);
    assert_eq!(
        hits.keys().collect::<Vec<_>>(),
        ["w1", "w2", "w3"],
        "web keeps its ClusterIP: {hits:?}"
    );
    assert!(
        s.node.agent_log().contains("spec.clusterIP")
            && s.node.agent_log().contains("already belongs to shop/web:http"),
        "the conflict is reported naming both services and the field"
    );
    // A later change still applies (the Maglev tables did not stall the sync).
    relabel(&s, "w2", "old");
    let deadline = Instant::now() + Duration::from_secs(3);
    while spread(&s, vip(1), 20).contains_key("w2") {
        assert!(Instant::now() < deadline, "a backend change did not apply");
    }
}

/// externalIPs and LoadBalancer ingress IPs are served like NodePorts (XDP), and
/// `externalTrafficPolicy: Local` sends outside clients only to this node's endpoints.
#[test]
fn external_ips_load_balancer_ips_and_external_traffic_policy_local() {
    root_or_skip!();
    let s = setup("");
    let ext = s.node.ext_ns.as_ref().expect("ext netns");
    let (eip, lbip) = (Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(203, 0, 113, 10));
    for ip in [eip, lbip] {
        moat_netns_tests::ip(
            Some(&ext.name),
            &["route", "add", &format!("{ip}/32"), "via", &s.node.node_ip.to_string()],
        );
    }
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: edge, namespace: shop}}\nspec:\n  type: LoadBalancer\n  clusterIP: {vip}\n  externalIPs: [{eip}]\n  externalTrafficPolicy: Local\n  ports: [{{name: http, port: 80, nodePort: 30090}}]\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {lbip}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: edge-1\n  namespace: shop\n  labels: {{kubernetes.io/service-name: edge}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n\
         - {{addresses: [{w1}], nodeName: {node}}}\n- {{addresses: [{remote}], nodeName: elsewhere}}\n",
        vip = vip(13),
        w1 = s.web[0].ip,
        node = s.node.id,
        remote = Ipv4Addr::new(10, 203, 0, 1),
    );
    s.node.apply_manifests(&[("edge.yaml", Some(&manifest))]);
    for (ip, port) in [(eip, 80), (lbip, 80), (s.node.node_ip, 30090)] {
        for _ in 0..10 {
            assert_eq!(
                tcp_read(&ext.path(), ip, port).unwrap_or_else(|e| panic!("{ip}:{port}: {e}")),
                "w1",
                "external traffic stays on the local endpoint ({ip}:{port})"
            );
        }
    }
    // Inside the cluster (ClusterIP, internalTrafficPolicy Cluster) both endpoints count.
    let svcs: Value = serde_json::from_str(&s.node.moatctl(&["-o", "json", "services"])).unwrap();
    let edge = svcs.as_array().unwrap().iter().find(|v| v["name"] == "edge").unwrap();
    let eligible = |scope: &str| -> Vec<u64> {
        edge["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["scope"] == scope)
            .map(|f| f["eligible"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(eligible("ClusterIP"), vec![2]);
    assert_eq!(eligible("ExternalIP"), vec![1]);
    assert_eq!(eligible("LoadBalancer"), vec![1]);
    assert_eq!(eligible("NodePort"), vec![1]);

    // `Local` limits outside clients only. A service whose one endpoint is on another
    // node (here: a server in the outside netns) refuses outside clients on this node,
    // while a pod reaching its external IP or NodePort goes to that endpoint, as with
    // kube-proxy and Cilium.
    let _remote = NameServer::start(&ext.path(), 8080, "remote");
    let eip2 = Ipv4Addr::new(192, 0, 2, 11);
    let far = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: far, namespace: shop}}\nspec:\n  type: NodePort\n  clusterIP: {vip}\n  externalIPs: [{eip2}]\n  externalTrafficPolicy: Local\n  ports: [{{name: http, port: 80, nodePort: 30091}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: far-1\n  namespace: shop\n  labels: {{kubernetes.io/service-name: far}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n\
         - {{addresses: [{remote}], nodeName: elsewhere}}\n",
        vip = vip(23),
        remote = s.node.ext_ip,
    );
    s.node.apply_manifests(&[("far.yaml", Some(&far))]);
    for (ip, port) in [(eip2, 80), (s.node.node_ip, 30091)] {
        assert_eq!(
            tcp_read(&s.client.path(), ip, port).unwrap_or_else(|e| panic!("pod → {ip}:{port}: {e}")),
            "remote",
            "in-cluster traffic ignores externalTrafficPolicy"
        );
    }
    let err = tcp_read(&ext.path(), s.node.node_ip, 30091).expect_err("outside client, no local endpoint");
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

/// With the socket load balancer switched off, services still work: `from_container`
/// translates per packet (DNAT) and replies are translated back.
#[test]
fn per_packet_dnat_when_the_socket_load_balancer_is_off() {
    root_or_skip!();
    let node = Node::start_with(NodeOpts {
        manifests: vec![
            ("pods.yaml", pods(&[("w1", "web"), ("w2", "web"), ("client", "client")])),
            (
                "services.yaml",
                service("web", vip(14), "")
                    + &service("empty", vip(15), "").replace("app: web", "app: nobody")
                    + &node_port_service("sticky", vip(18), 30084, "web")
                        .replace("  type: NodePort\n", "  type: NodePort\n  sessionAffinity: ClientIP\n")
                    + &format!(
                        "apiVersion: v1\nkind: Service\nmetadata: {{name: closed, namespace: shop}}\nspec:\n  clusterIP: {}\n  selector: {{app: web}}\n  ports:\n  - {{port: 53, targetPort: 5454, protocol: UDP}}\n---\n",
                        vip(20)
                    )
                    + &format!(
                        "apiVersion: v1\nkind: Service\nmetadata: {{name: far, namespace: shop}}\nspec:\n  clusterIP: {}\n  ports: [{{name: http, port: 80}}]\n",
                        vip(24)
                    ),
            ),
        ],
        agent_args: vec!["--socket-lb=false"],
        ..NodeOpts::default()
    });
    let client = node.add_pod("shop", "client");
    let mut servers = Vec::new();
    let mut ips = BTreeMap::new();
    for name in ["w1", "w2"] {
        let p = node.add_pod("shop", name);
        ips.insert(name, p.ip);
        servers.push(NameServer::start(&p.path(), 8080, name));
        servers.push(NameServer::start(&p.path(), 5353, name));
    }
    // `far`'s only endpoint is off the node (a server in the outside netns): its reply
    // reaches the client through `to_container`, which must translate it back too.
    let ext = node.ext_ns.as_ref().expect("ext netns").path();
    let _remote = NameServer::start(&ext, 8080, "remote");
    node.apply_manifests(&[(
        "far-slice.yaml",
        Some(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: far-1\n  namespace: shop\n  labels: {{kubernetes.io/service-name: far}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- {{addresses: [{}], nodeName: elsewhere}}\n",
            node.ext_ip
        )),
    )]);
    assert_eq!(
        tcp_read(&client.path(), vip(24), 80).unwrap_or_else(|e| panic!("per-packet DNAT to a remote endpoint: {e}")),
        "remote"
    );
    // The same endpoint behind a NodePort with externalTrafficPolicy Local: outside
    // clients of this node have no endpoint, but a pod is inside the cluster and takes
    // the in-cluster view on the per-packet path too.
    node.apply_manifests(&[(
        "farnp.yaml",
        Some(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: farnp, namespace: shop}}\nspec:\n  type: NodePort\n  clusterIP: {vip}\n  externalTrafficPolicy: Local\n  ports: [{{name: http, port: 80, nodePort: 30092}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: farnp-1\n  namespace: shop\n  labels: {{kubernetes.io/service-name: farnp}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- {{addresses: [{remote}], nodeName: elsewhere}}\n",
            vip = vip(28),
            remote = node.ext_ip
        )),
    )]);
    assert_eq!(
        tcp_read(&client.path(), node.node_ip, 30092).unwrap_or_else(|e| panic!("pod → ETP=Local NodePort: {e}")),
        "remote"
    );
    let mut hits = BTreeMap::new();
    for _ in 0..30 {
        let who = tcp_read(&client.path(), vip(14), 80).unwrap_or_else(|e| panic!("TCP via per-packet DNAT: {e}"));
        *hits.entry(who).or_insert(0) += 1;
    }
    assert_eq!(hits.len(), 2, "both backends: {hits:?}");
    let (who, from) = udp_ask(&client.path(), vip(14), 53).expect("UDP via per-packet DNAT");
    assert!(who.starts_with('w'));
    assert_eq!(
        from,
        std::net::SocketAddr::from((vip(14), 53)),
        "the reply comes from the service address"
    );
    let st = node.moatctl(&["status"]);
    assert!(
        st.contains("tc_lb_translated") && !st.contains("sock_lb_translated"),
        "{st}"
    );
    // A pod reaching a NodePort on the node's address, with ClientIP affinity: every
    // connection lands on the same backend (per-packet path, keyed by the pod's address).
    let mut sticky = std::collections::BTreeSet::new();
    for _ in 0..20 {
        sticky.insert(tcp_read(&client.path(), node.node_ip, 30084).unwrap_or_else(|e| panic!("pod → NodePort: {e}")));
    }
    assert_eq!(sticky.len(), 1, "affinity on the per-packet path: {sticky:?}");

    // A client port used for a translated connection, then for a direct connection to
    // the backend that served it: the backend's replies to the direct one must not be
    // rewritten to come from the service (the new SYN retires the old reverse entry).
    let who = moat_netns_tests::net::tcp_read_from(&client.path(), 41999, vip(14), 80).expect("via the service");
    let backend = ips[who.as_str()];
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        moat_netns_tests::net::tcp_read_from(&client.path(), 41999, backend, 8080).expect("direct, same client port"),
        who
    );
    // And through the service again from that port: a new translated flow.
    std::thread::sleep(Duration::from_millis(100));
    let again = moat_netns_tests::net::tcp_read_from(&client.path(), 41999, vip(14), 80)
        .expect("via the service again, same client port");
    assert!(again.starts_with('w'), "{again}");

    // No backend: the pod gets ICMP port unreachable at once (connection refused), as
    // from kube-proxy's REJECT rule, and the drop is counted with its reason.
    let t = Instant::now();
    let err = tcp_read(&client.path(), vip(15), 80).expect_err("no backend");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(t.elapsed() < Duration::from_millis(500), "took {:?}", t.elapsed());
    // A connected UDP socket sees the same error on its next receive.
    assert_eq!(
        connected_udp(&client.path(), vip(15), 53),
        Err(std::io::ErrorKind::ConnectionRefused),
        "UDP to a service without backends"
    );
    // A backend with nothing on the target port answers "port unreachable" about the
    // translated packet; the client's socket, connected to the service address, must
    // get it as coming from the service (reverse-translated inside the ICMP error).
    assert_eq!(
        connected_udp(&client.path(), vip(20), 53),
        Err(std::io::ErrorKind::ConnectionRefused),
        "a backend's port unreachable reaches the client as the service's"
    );
    let drops: Value = serde_json::from_str(&node.moatctl(&["-o", "json", "drops"])).unwrap();
    assert!(
        drops["byReason"].as_array().unwrap().iter().any(|d| d["code"] == 158),
        "counted as no_service_backend: {drops}"
    );
}

/// One request on a UDP socket connected to `to:port`; the receive's outcome.
fn connected_udp(netns: &str, to: Ipv4Addr, port: u16) -> Result<usize, std::io::ErrorKind> {
    moat_netns_tests::net::in_netns(netns, move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.connect((to, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s.send(b"who").unwrap();
        s.recv(&mut [0u8; 64]).map_err(|e| e.kind())
    })
}
