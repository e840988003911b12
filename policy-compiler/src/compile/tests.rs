//! Compiler tests on the upstream e2e layout: namespaces x, y, z with pods a, b, c each.
//!
//! Pod `<ns>/<p>` has labels `pod=<p>`, identity 256 + 3·ns_index + pod_index (x/a = 256,
//! x/b = 257, …, z/c = 264) and address 10.0.<ns_index+1>.<pod_index+1>. Namespaces carry
//! `ns=<name>`. The node's address is 192.168.0.1. Expected values are written by hand.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use moat_dataplane_common::{direction, PolicyKey, PolicyValue, ACTION_ALLOW, ACTION_DENY, ANY_PEER};
use moat_identity::{reserved, LOCAL_SCOPE};

use super::*;
use crate::k8s::{self, ContainerPort, Object};
use crate::lookup::{explain, lookup, Decision, Endpoint};
use crate::world::{Mode, PodInfo, World};

const IN: u8 = direction::INGRESS;
const EG: u8 = direction::EGRESS;
const TCP: u8 = 6;
const UDP: u8 = 17;
const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

fn id(name: &str) -> u32 {
    let (ns, p) = name.split_once('/').expect("ns/pod");
    let n = ["x", "y", "z"].iter().position(|&s| s == ns).expect("namespace");
    let i = ["a", "b", "c"].iter().position(|&s| s == p).expect("pod");
    256 + 3 * n as u32 + i as u32
}

fn ip(name: &str) -> Ipv4Addr {
    let i = id(name) - 256;
    Ipv4Addr::new(10, 0, (i / 3 + 1) as u8, (i % 3 + 1) as u8)
}

fn pod_info(name: &str) -> PodInfo {
    let (ns, p) = name.split_once('/').expect("ns/pod");
    PodInfo {
        pod: k8s::Pod {
            namespace: ns.into(),
            name: p.into(),
            labels: BTreeMap::from([("pod".to_string(), p.to_string())]),
            service_account: "default".into(),
            ports: vec![],
            ip: Some(ip(name)),
        },
        identity: id(name),
        ipv4: Some(ip(name)),
        local: true,
    }
}

const ALL: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

fn policies(yaml: &str) -> Vec<k8s::NetworkPolicy> {
    let (objects, errors) = k8s::parse_documents(std::path::Path::new("test.yaml"), yaml);
    assert!(errors.is_empty(), "{errors:?}");
    objects
        .into_iter()
        .map(|o| match o {
            Object::NetworkPolicy(p) => p,
            other => panic!("not a policy: {other:?}"),
        })
        .collect()
}

fn world(yaml: &str) -> World {
    let namespaces = ["x", "y", "z"]
        .iter()
        .map(|&n| {
            let mut ns = k8s::Namespace::implicit(n);
            ns.labels.insert("ns".into(), n.into());
            (n.to_string(), ns)
        })
        .collect();
    World {
        mode: Mode::Default,
        namespaces,
        pods: ALL.iter().map(|n| pod_info(n)).collect(),
        policies: policies(yaml).into(),
        host_ips: vec![HOST_IP],
    }
}

fn pod_mut<'w>(w: &'w mut World, name: &str) -> &'w mut PodInfo {
    let (ns, p) = name.split_once('/').expect("ns/pod");
    w.pods
        .iter_mut()
        .find(|i| i.pod.namespace == ns && i.pod.name == p)
        .expect("pod")
}

fn ep(name: &str) -> Endpoint {
    let (ns, p) = name.split_once('/').expect("ns/pod");
    Endpoint::Pod {
        namespace: ns.into(),
        name: p.into(),
    }
}

/// Pod-to-pod verdict through `explain` (both directions checked).
fn ok(w: &World, c: &Compiled, from: &str, to: &str, proto: u8, port: u16) -> bool {
    explain(w, c, &ep(from), &ep(to), proto, port)
        .expect("known pods")
        .allowed
}

fn ok_ip(w: &World, c: &Compiled, from: &str, to: Ipv4Addr, port: u16) -> bool {
    explain(w, c, &ep(from), &Endpoint::Ip(to), TCP, port)
        .expect("known pod")
        .allowed
}

/// The set of sources (among ALL) that may reach `to` on TCP/80.
fn reachers(w: &World, c: &Compiled, to: &str) -> Vec<&'static str> {
    ALL.iter()
        .copied()
        .filter(|&f| f != to && ok(w, c, f, to, TCP, 80))
        .collect()
}

fn compile(w: &World) -> Compiled {
    Compiler::new().compile(w)
}

const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

#[test]
fn no_policy_allows_everything_with_one_entry_per_subject_and_direction() {
    let w = world("");
    let c = compile(&w);
    assert_eq!(c.policy.len(), 18);
    assert_eq!(
        c.policy.get(&(40, PolicyKey::new(256, IN, 0, 0, 0))),
        Some(&PolicyValue {
            action: ACTION_ALLOW,
            cookie: cookie::NOT_ISOLATED
        })
    );
    assert_eq!(reachers(&w, &c, "x/a").len(), 8);
    // ipcache: 9 pods and the node.
    assert_eq!(c.ipcache.len(), 10);
    assert_eq!(c.ipcache.get(&(Ipv4Addr::new(10, 0, 1, 1), 32)), Some(&256));
    assert_eq!(c.ipcache.get(&(HOST_IP, 32)), Some(&reserved::HOST));
}

#[test]
fn deny_all_ingress_with_empty_list() {
    let w = world(&format!(
        "{NP}metadata: {{name: deny-all, namespace: x}}\nspec: {{podSelector: {{}}, ingress: []}}\n"
    ));
    let c = compile(&w);
    // The isolating cookie of the first (only) policy is the first policy cookie.
    assert_eq!(
        c.policy.get(&(40, PolicyKey::new(256, IN, 0, 0, 0))),
        Some(&PolicyValue {
            action: ACTION_DENY,
            cookie: 16
        })
    );
    assert_eq!(
        c.policy.get(&(72, PolicyKey::new(256, IN, reserved::HOST, 0, 0))),
        Some(&PolicyValue {
            action: ACTION_ALLOW,
            cookie: cookie::HOST_ALLOWED
        })
    );
    // 18 subject entries + 3 host entries for x/a, x/b, x/c.
    assert_eq!(c.policy.len(), 21);
    assert_eq!(c.rules[&16].to_string(), "x/deny-all isolates this pod for ingress");
    for to in ["x/a", "x/b", "x/c"] {
        assert!(reachers(&w, &c, to).is_empty(), "{to}");
    }
    assert_eq!(reachers(&w, &c, "y/a").len(), 8);
    assert!(ok(&w, &c, "x/a", "y/b", TCP, 80), "egress is not isolated");
}

#[test]
fn deny_all_ingress_via_policy_types_only() {
    let w = world(&format!(
        "{NP}metadata: {{name: deny, namespace: y}}\nspec: {{podSelector: {{matchLabels: {{pod: b}}}}, policyTypes: [Ingress]}}\n"
    ));
    let c = compile(&w);
    assert!(reachers(&w, &c, "y/b").is_empty());
    assert_eq!(reachers(&w, &c, "y/a").len(), 8);
}

#[test]
fn allow_all_ingress_with_one_empty_rule() {
    let w = world(&format!(
        "{NP}metadata: {{name: allow-all, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n"
    ));
    let c = compile(&w);
    assert_eq!(
        c.policy.get(&(72, PolicyKey::new(257, IN, ANY_PEER, 0, 0))),
        Some(&PolicyValue {
            action: ACTION_ALLOW,
            cookie: 17
        })
    );
    assert_eq!(c.rules[&17].to_string(), "x/allow-all ingress rule 0");
    assert_eq!(reachers(&w, &c, "x/b").len(), 8);
    assert!(ok(&w, &c, "y/c", "x/b", UDP, 53));
}

#[test]
fn pod_selector_peer_is_limited_to_the_policy_namespace() {
    let w = world(&format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    ));
    let c = compile(&w);
    assert_eq!(reachers(&w, &c, "x/a"), vec!["x/b"]);
    assert_eq!(reachers(&w, &c, "x/b").len(), 8, "x/b is not selected");
}

#[test]
fn namespace_selector_peer_selects_every_pod_there() {
    let w = world(&format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]\n"
    ));
    let c = compile(&w);
    assert_eq!(reachers(&w, &c, "x/a"), vec!["y/a", "y/b", "y/c"]);
}

#[test]
fn namespace_selector_matches_the_metadata_name_label() {
    let w = world(&format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: z}}}}}}]}}]\n"
    ));
    let c = compile(&w);
    assert_eq!(reachers(&w, &c, "x/c"), vec!["z/a", "z/b", "z/c"]);
}

#[test]
fn both_selectors_in_one_peer_are_anded() {
    let w = world(&format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{ns: y}}}}\n      podSelector: {{matchLabels: {{pod: b}}}}\n"
    ));
    let c = compile(&w);
    assert_eq!(reachers(&w, &c, "x/a"), vec!["y/b"]);
}

#[test]
fn two_peers_are_ored() {
    let w = world(&format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{ns: y}}}}\n    - podSelector: {{matchLabels: {{pod: b}}}}\n"
    ));
    let c = compile(&w);
    assert_eq!(reachers(&w, &c, "x/a"), vec!["x/b", "y/a", "y/b", "y/c"]);
}

#[test]
fn match_expressions_in_subject_and_peer() {
    let w = world(&format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchExpressions: [{{key: pod, operator: NotIn, values: [a]}}]}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchExpressions: [{{key: ns, operator: In, values: [y, z]}}]}}\n      podSelector: {{matchExpressions: [{{key: pod, operator: Exists}}, {{key: pod, operator: NotIn, values: [c]}}]}}\n"
    ));
    let c = compile(&w);
    assert_eq!(reachers(&w, &c, "x/a").len(), 8, "x/a is excluded by NotIn");
    assert_eq!(reachers(&w, &c, "x/b"), vec!["y/a", "y/b", "z/a", "z/b"]);
    assert_eq!(reachers(&w, &c, "x/c"), vec!["y/a", "y/b", "z/a", "z/b"]);
}

const IPBLOCK_EGRESS: &str = "metadata: {name: out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}
";

#[test]
fn ip_block_with_except() {
    let w = world(&format!("{NP}{IPBLOCK_EGRESS}"));
    let c = compile(&w);
    let cidr_a = LOCAL_SCOPE | 1;
    let cidr_b = LOCAL_SCOPE | 2;
    assert_eq!(c.ipcache.get(&(Ipv4Addr::new(10, 0, 0, 0), 16)), Some(&cidr_a));
    assert_eq!(c.ipcache.get(&(Ipv4Addr::new(10, 0, 2, 0), 24)), Some(&cidr_b));
    for to in ["x/b", "x/c", "z/a", "z/c"] {
        assert!(ok(&w, &c, "x/a", to, TCP, 80), "{to}");
    }
    for to in ["y/a", "y/b", "y/c"] {
        assert!(!ok(&w, &c, "x/a", to, TCP, 80), "{to} is in the except");
    }
    assert!(
        ok_ip(&w, &c, "x/a", Ipv4Addr::new(10, 0, 9, 9), 443),
        "inside cidr, no pod"
    );
    assert!(!ok_ip(&w, &c, "x/a", Ipv4Addr::new(10, 0, 2, 99), 443), "inside except");
    assert!(!ok_ip(&w, &c, "x/a", Ipv4Addr::new(8, 8, 8, 8), 443), "outside cidr");
    assert!(!ok_ip(&w, &c, "x/a", HOST_IP, 443), "node is outside cidr");
    // Peer entries: x/a egress to the cidr identity and the 6 pods outside the except.
    let peers: Vec<u32> = c
        .policy
        .keys()
        .filter(|(p, k)| *p == 72 && k.subject == 256 && k.direction == EG)
        .map(|(_, k)| u32::from_be_bytes(k.peer))
        .collect();
    assert_eq!(peers, vec![256, 257, 258, 262, 263, 264, cidr_a]);
}

#[test]
fn ip_block_everything_except_the_cluster() {
    let w = world(&format!(
        "{NP}metadata: {{name: out, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}}}]}}]\n"
    ));
    let c = compile(&w);
    assert_eq!(c.ipcache.get(&(Ipv4Addr::UNSPECIFIED, 0)), None, "WORLD needs no entry");
    assert!(ok_ip(&w, &c, "x/a", Ipv4Addr::new(8, 8, 8, 8), 443));
    assert!(ok_ip(&w, &c, "x/b", HOST_IP, 22), "the node is outside 10/8");
    assert!(!ok_ip(&w, &c, "x/a", Ipv4Addr::new(10, 9, 9, 9), 443));
    assert!(!ok(&w, &c, "x/a", "y/a", TCP, 80));
}

#[test]
fn ip_block_shared_identity_needs_every_pod_inside() {
    // y/a moves to 10.0.1.9 but keeps sharing identity with z/a (10.0.3.1): the block
    // 10.0.1.0/24 contains y/a's address but not z/a's, so the identity is left out.
    let mut w = world(&format!(
        "{NP}metadata: {{name: out, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.1.0/24}}}}]}}]\n"
    ));
    let z_a = id("z/a");
    let y_a = pod_mut(&mut w, "y/a");
    y_a.identity = z_a;
    y_a.ipv4 = Some(Ipv4Addr::new(10, 0, 1, 9));
    let c = compile(&w);
    assert!(ok(&w, &c, "x/a", "x/b", TCP, 80));
    assert!(!ok(&w, &c, "x/a", "y/a", TCP, 80));
    assert!(!ok(&w, &c, "x/a", "z/a", TCP, 80));
}

#[test]
fn ipv6_block_allows_nothing() {
    let w = world(&format!(
        "{NP}metadata: {{name: v6, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 'fd00::/8'}}}}]}}]\n"
    ));
    let c = compile(&w);
    assert!(reachers(&w, &c, "x/a").is_empty());
}

fn with_ports(w: &mut World, name: &str, ports: &[(&str, u16, u8)]) {
    pod_mut(w, name).pod.ports = ports
        .iter()
        .map(|&(n, port, protocol)| ContainerPort {
            name: n.into(),
            port,
            protocol,
        })
        .collect();
}

#[test]
fn named_port_ingress_resolves_on_the_subject() {
    let mut w = world(&format!(
        "{NP}metadata: {{name: web, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: http}}]}}]\n"
    ));
    with_ports(&mut w, "x/a", &[("http", 8080, TCP), ("dns", 53, UDP)]);
    with_ports(&mut w, "x/b", &[("http", 9090, TCP)]);
    let c = compile(&w);
    assert!(ok(&w, &c, "y/a", "x/a", TCP, 8080));
    assert!(!ok(&w, &c, "y/a", "x/a", TCP, 9090));
    assert!(!ok(&w, &c, "y/a", "x/a", UDP, 8080));
    assert!(ok(&w, &c, "y/a", "x/b", TCP, 9090));
    assert!(!ok(&w, &c, "y/a", "x/b", TCP, 8080));
    assert!(!ok(&w, &c, "y/a", "x/c", TCP, 8080), "x/c has no port named http");
}

#[test]
fn named_port_egress_resolves_per_destination() {
    let mut w = world(&format!(
        "{NP}metadata: {{name: out, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{podSelector: {{}}}}]\n    ports: [{{port: http}}]\n  - ports: [{{port: metrics}}]\n"
    ));
    with_ports(&mut w, "x/b", &[("http", 8080, TCP)]);
    with_ports(&mut w, "x/c", &[("http", 9090, TCP)]);
    with_ports(&mut w, "y/b", &[("http", 7070, TCP), ("metrics", 9100, TCP)]);
    let c = compile(&w);
    assert!(ok(&w, &c, "x/a", "x/b", TCP, 8080));
    assert!(!ok(&w, &c, "x/a", "x/b", TCP, 9090));
    assert!(ok(&w, &c, "x/a", "x/c", TCP, 9090));
    assert!(!ok(&w, &c, "x/a", "x/c", TCP, 8080));
    assert!(!ok(&w, &c, "x/a", "y/b", TCP, 7070), "first rule: pods of x only");
    assert!(
        ok(&w, &c, "x/a", "y/b", TCP, 9100),
        "second rule: any peer with the name"
    );
    assert!(!ok(&w, &c, "x/a", "y/a", TCP, 9100));
    assert!(!ok_ip(&w, &c, "x/a", Ipv4Addr::new(1, 1, 1, 1), 9100));
    assert_eq!(
        c.policy.get(&(96, PolicyKey::new(256, EG, id("y/b"), TCP, 9100))),
        Some(&PolicyValue {
            action: ACTION_ALLOW,
            cookie: 18
        })
    );
}

fn range_world(spec_ports: &str) -> (World, Compiled) {
    let w = world(&format!(
        "{NP}metadata: {{name: r, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{ports: [{spec_ports}]}}]\n"
    ));
    let c = compile(&w);
    (w, c)
}

/// Every port 0..=65535 on TCP and UDP: allowed exactly on TCP `lo..=hi`.
fn assert_exact_range(c: &Compiled, lo: u16, hi: u16) {
    for port in 0..=u16::MAX {
        let tcp = lookup(&c.policy, 256, IN, id("y/b"), TCP, port);
        assert_eq!(
            matches!(tcp, Decision::Allowed { .. }),
            (lo..=hi).contains(&port),
            "TCP {port}"
        );
        let udp = lookup(&c.policy, 256, IN, id("y/b"), UDP, port);
        assert!(matches!(udp, Decision::Denied { .. }), "UDP {port}");
    }
}

#[test]
fn end_port_80_81() {
    let (_, c) = range_world("{port: 80, endPort: 81}");
    assert_exact_range(&c, 80, 81);
    assert!(c.policy.contains_key(&(95, PolicyKey::new(256, IN, ANY_PEER, TCP, 80))));
}

#[test]
fn end_port_everything() {
    let (_, c) = range_world("{port: 1, endPort: 65535}");
    assert_exact_range(&c, 1, 65535);
}

#[test]
fn end_port_1000_2000() {
    let (_, c) = range_world("{port: 1000, endPort: 2000}");
    assert_exact_range(&c, 1000, 2000);
    // 18 subject entries, x/a's host entry, 8 blocks.
    assert_eq!(c.policy.len(), 27);
}

#[test]
fn protocol_only_port_allows_every_port_of_it() {
    let (w, c) = range_world("{protocol: UDP}");
    assert!(c.policy.contains_key(&(80, PolicyKey::new(256, IN, ANY_PEER, UDP, 0))));
    assert!(ok(&w, &c, "y/b", "x/a", UDP, 1));
    assert!(ok(&w, &c, "y/b", "x/a", UDP, 65535));
    assert!(!ok(&w, &c, "y/b", "x/a", TCP, 80));
}

#[test]
fn egress_deny_all_leaves_ingress_open() {
    let w = world(&format!("{NP}metadata: {{name: no-out, namespace: x}}\nspec: {{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress]}}\n"));
    let c = compile(&w);
    for to in ALL.iter().filter(|&&t| t != "x/a") {
        assert!(!ok(&w, &c, "x/a", to, TCP, 80), "{to}");
    }
    assert_eq!(reachers(&w, &c, "x/a").len(), 8);
    assert!(!c
        .policy
        .contains_key(&(72, PolicyKey::new(256, EG, reserved::HOST, 0, 0))));
}

#[test]
fn egress_rule_to_namespace_and_port() {
    let w = world(&format!(
        "{NP}metadata: {{name: out, namespace: x}}\nspec:\n  podSelector: {{}}\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}}}], ports: [{{port: 443}}]}}]\n"
    ));
    let c = compile(&w);
    // policyTypes defaulted to Ingress + Egress: x is also closed for ingress.
    assert!(reachers(&w, &c, "x/a").is_empty());
    assert!(ok(&w, &c, "x/b", "z/c", TCP, 443));
    assert!(!ok(&w, &c, "x/b", "z/c", TCP, 80));
    assert!(!ok(&w, &c, "x/b", "y/c", TCP, 443));
}

#[test]
fn union_of_two_policies() {
    let w = world(&format!(
        "{NP}metadata: {{name: one, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n---\n\
         {NP}metadata: {{name: two, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}, podSelector: {{matchLabels: {{pod: c}}}}}}]}}]\n"
    ));
    let c = compile(&w);
    assert_eq!(reachers(&w, &c, "x/a"), vec!["x/b", "z/c"]);
    assert_eq!(reachers(&w, &c, "x/b"), vec!["z/c"]);
    // x/a's isolating cookie names the first policy by name: x/one.
    let Decision::Denied { cookie } = lookup(&c.policy, 256, IN, id("y/a"), TCP, 80) else {
        panic!("y/a → x/a must be denied");
    };
    assert_eq!(c.rules[&cookie].to_string(), "x/one isolates this pod for ingress");
}

#[test]
fn policies_in_another_namespace_do_not_select() {
    let w = world(&format!(
        "{NP}metadata: {{name: deny, namespace: y}}\nspec: {{podSelector: {{}}}}\n"
    ));
    let c = compile(&w);
    assert_eq!(reachers(&w, &c, "x/a").len(), 8);
    assert!(reachers(&w, &c, "y/a").is_empty());
}

#[test]
fn lowest_cookie_wins_on_collision() {
    let w = world(&format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]\n  - from: [{{podSelector: {{}}}}]\n"
    ));
    let c = compile(&w);
    // Cookies: 16 isolation, 17 rule 0, 18 rule 1; x/b's entry comes from both rules.
    assert_eq!(c.policy[&(72, PolicyKey::new(256, IN, id("x/b"), 0, 0))].cookie, 17);
    assert_eq!(c.policy[&(72, PolicyKey::new(256, IN, id("x/c"), 0, 0))].cookie, 18);
}

#[test]
fn mode_always_denies_without_policies() {
    let mut w = world("");
    w.mode = Mode::Always;
    let c = compile(&w);
    assert_eq!(
        c.policy.get(&(40, PolicyKey::new(260, EG, 0, 0, 0))),
        Some(&PolicyValue {
            action: ACTION_DENY,
            cookie: cookie::ALWAYS_MODE
        })
    );
    assert!(reachers(&w, &c, "x/a").is_empty());
    let e = explain(&w, &c, &Endpoint::Ip(HOST_IP), &ep("y/b"), TCP, 80).expect("explain");
    assert!(e.allowed, "{e}");
    assert_eq!(e.ingress.map(|i| i.decision), Some(Decision::Allowed { cookie: 3 }));
}

#[test]
fn mode_always_keeps_policy_allows() {
    let mut w = world(&format!(
        "{NP}metadata: {{name: open, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n"
    ));
    w.mode = Mode::Always;
    let c = compile(&w);
    // x/open: 16 isolation, 17 rule 0. Ingress to x/a is allowed by the rule, but y/a's own
    // egress is default-deny in this mode.
    assert_eq!(
        lookup(&c.policy, 256, IN, id("y/a"), TCP, 80),
        Decision::Allowed { cookie: 17 }
    );
    assert!(!ok(&w, &c, "y/a", "x/a", TCP, 80));
    assert_eq!(
        lookup(&c.policy, id("y/a"), EG, 256, TCP, 80),
        Decision::Denied {
            cookie: cookie::ALWAYS_MODE
        }
    );
}

#[test]
fn mode_never_ignores_policies() {
    let mut w = world(&format!(
        "{NP}metadata: {{name: deny, namespace: x}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}\n"
    ));
    w.mode = Mode::Never;
    let c = compile(&w);
    assert_eq!(c.policy.len(), 18);
    assert!(c.policy.values().all(|v| *v
        == PolicyValue {
            action: ACTION_ALLOW,
            cookie: cookie::NEVER_MODE
        }));
    assert_eq!(reachers(&w, &c, "x/a").len(), 8);
}

#[test]
fn node_reaches_isolated_pods() {
    let w = world(&format!(
        "{NP}metadata: {{name: deny, namespace: x}}\nspec: {{podSelector: {{}}}}\n"
    ));
    let c = compile(&w);
    let e = explain(&w, &c, &Endpoint::Ip(HOST_IP), &ep("x/a"), TCP, 8080).expect("explain");
    assert!(e.allowed);
    assert!(
        e.to_string()
            .contains("traffic from the node to its local pods is always allowed"),
        "{e}"
    );
    let e = explain(&w, &c, &ep("y/a"), &ep("x/a"), TCP, 8080).expect("explain");
    assert!(!e.allowed);
    assert!(e.to_string().contains("x/deny isolates this pod for ingress"), "{e}");
}

#[test]
fn non_local_subjects_get_no_entries() {
    let mut w = world(&format!(
        "{NP}metadata: {{name: deny, namespace: x}}\nspec: {{podSelector: {{}}}}\n"
    ));
    for p in &mut w.pods {
        p.local = p.pod.namespace == "y";
    }
    let c = compile(&w);
    assert_eq!(c.policy.len(), 6, "y/a, y/b, y/c × 2 directions");
    assert!(c.policy.keys().all(|(_, k)| (259..=261).contains(&k.subject)));
    // Remote pods are still peers and still in the ipcache.
    assert_eq!(c.ipcache.get(&(ip("x/a"), 32)), Some(&256));
    assert!(ok(&w, &c, "y/a", "x/a", TCP, 80), "not enforced on this node");
}

#[test]
fn one_changed_policy_gives_a_minimal_diff() {
    let before = format!(
        "{NP}metadata: {{name: web, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{{port: 80}}]}}]\n---\n\
         {NP}metadata: {{name: other, namespace: y}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n"
    );
    let after = before.replacen("port: 80", "port: 81", 1);
    let mut compiler = Compiler::new();
    let old = compiler.compile(&world(&before));
    let new = compiler.compile(&world(&after));
    let d = crate::diff::diff(&old, &new);
    assert_eq!(
        d.policy_upserts,
        vec![(
            (96, PolicyKey::new(256, IN, id("x/b"), TCP, 81)),
            PolicyValue {
                action: ACTION_ALLOW,
                cookie: 17
            }
        )]
    );
    assert_eq!(
        d.policy_deletes,
        vec![(96, PolicyKey::new(256, IN, id("x/b"), TCP, 80))]
    );
    assert!(d.ipcache_upserts.is_empty() && d.ipcache_deletes.is_empty());
    assert_eq!(d.len(), 2);
}

#[test]
fn cookies_are_stable_across_recompiles() {
    let base = format!(
        "{NP}metadata: {{name: m, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n---\n\
         {NP}metadata: {{name: n, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n"
    );
    let mut compiler = Compiler::new();
    let first = compiler.compile(&world(&base));
    // x/m: 16 isolation, 17 rule 0; x/n: 18, 19.
    assert_eq!(first.rules[&17].to_string(), "x/m ingress rule 0");
    assert_eq!(first.rules[&19].to_string(), "x/n ingress rule 0");
    let more =
        format!("{NP}metadata: {{name: a, namespace: x}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n---\n{base}");
    let second = compiler.compile(&world(&more));
    assert_eq!(second.rules[&17].to_string(), "x/m ingress rule 0");
    assert_eq!(second.rules[&19].to_string(), "x/n ingress rule 0");
    assert_eq!(second.rules[&21].to_string(), "x/a ingress rule 0");
    // A recompile of the same world is identical.
    assert_eq!(compiler.compile(&world(&more)), second);
}

#[test]
fn cidr_identities_are_stable_across_recompiles() {
    let mut compiler = Compiler::new();
    let a = compiler.compile(&world(&format!("{NP}{IPBLOCK_EGRESS}")));
    let other = IPBLOCK_EGRESS.replace("10.0.0.0/16", "10.0.0.0/15");
    let b = compiler.compile(&world(&format!("{NP}{other}")));
    assert_eq!(a.ipcache[&(Ipv4Addr::new(10, 0, 2, 0), 24)], LOCAL_SCOPE | 2);
    assert_eq!(b.ipcache[&(Ipv4Addr::new(10, 0, 2, 0), 24)], LOCAL_SCOPE | 2);
    assert_eq!(b.ipcache[&(Ipv4Addr::new(10, 0, 0, 0), 15)], LOCAL_SCOPE | 3);
    assert!(!b.ipcache.contains_key(&(Ipv4Addr::new(10, 0, 0, 0), 16)));
}

#[test]
fn stored_keys_use_contract_prefixes_without_bits_past_them() {
    let (_, c) = range_world("{port: 1000, endPort: 2000}, {protocol: UDP}, {port: 53, protocol: UDP}");
    for (prefix, key) in c.policy.keys() {
        assert!(crate::lookup::is_stored_prefix(*prefix), "{prefix}");
        assert_eq!(crate::lookup::mask_key(key, *prefix), *key, "{prefix} {key:?}");
    }
    let prefixes: std::collections::BTreeSet<u32> = c.policy.keys().map(|(p, _)| *p).collect();
    assert_eq!(prefixes, [40, 72, 80, 87, 88, 89, 90, 92, 93, 96].into_iter().collect());
}

#[test]
fn explain_names_policy_and_rule() {
    let w = world(&format!(
        "{NP}metadata: {{name: allow-web, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{{port: 80}}]}}]\n"
    ));
    let c = compile(&w);
    let e = explain(&w, &c, &ep("x/b"), &ep("x/a"), TCP, 80).expect("explain");
    assert!(e.allowed);
    let text = e.to_string();
    assert!(text.contains("x/allow-web ingress rule 0"), "{text}");
    assert!(text.contains("from podSelector pod=b; TCP/80"), "{text}");
    let rule = e
        .ingress
        .as_ref()
        .and_then(|i| i.rule.clone())
        .expect("a policy rule decided");
    assert_eq!((rule.policy.as_str(), rule.index), ("allow-web", 0));
    assert_eq!(e.egress.map(|c| c.decision), Some(Decision::Allowed { cookie: 1 }));
    let e = explain(&w, &c, &ep("x/b"), &Endpoint::Ip(ip("x/a")), TCP, 81).expect("explain");
    assert!(!e.allowed && e.to_string().contains("DENIED"));
    let err = explain(&w, &c, &ep("x/b"), &ep("x/zz"), TCP, 80).expect_err("unknown pod");
    assert_eq!(err.to_string(), "unknown pod x/zz");
}

#[test]
fn a_pod_always_reaches_itself() {
    let w = world(&format!(
        "{NP}metadata: {{name: deny, namespace: x}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}\n"
    ));
    let c = compile(&w);
    assert!(ok(&w, &c, "x/a", "x/a", TCP, 80));
    assert!(!ok(&w, &c, "x/a", "x/b", TCP, 80));
}

#[test]
fn explain_display_reads_as_a_sentence_per_direction() {
    let w = world(&format!(
        "{NP}metadata: {{name: allow-web, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{{port: 80}}]}}]\n"
    ));
    let c = compile(&w);
    let allowed = explain(&w, &c, &ep("x/b"), &ep("x/a"), TCP, 80).expect("explain");
    assert_eq!(
        allowed.to_string(),
        "TCP/80 from pod x/b (10.0.1.2) [identity 257] to pod x/a (10.0.1.1) [identity 256]: ALLOWED
  egress  pod x/b (10.0.1.2) to identity 256: allowed: no policy selects the pod for this direction
  ingress pod x/a (10.0.1.1) from identity 257: allowed by x/allow-web ingress rule 0 (from podSelector pod=b; TCP/80)
"
    );
    let denied = explain(&w, &c, &ep("y/b"), &ep("x/a"), TCP, 80).expect("explain");
    assert_eq!(
        denied.to_string(),
        "TCP/80 from pod y/b (10.0.2.2) [identity 260] to pod x/a (10.0.1.1) [identity 256]: DENIED
  egress  pod y/b (10.0.2.2) to identity 256: allowed: no policy selects the pod for this direction
  ingress pod x/a (10.0.1.1) from identity 260: denied: x/allow-web isolates this pod for ingress (selects pods pod=a); no rule allows this peer on TCP/80
"
    );
    let out = explain(&w, &c, &ep("x/a"), &Endpoint::Ip(Ipv4Addr::new(8, 8, 8, 8)), UDP, 53).expect("explain");
    assert_eq!(
        out.to_string(),
        "UDP/53 from pod x/a (10.0.1.1) [identity 256] to 8.8.8.8 [identity 2 (reserved:world)]: ALLOWED
  egress  pod x/a (10.0.1.1) to identity 2 (reserved:world): allowed: no policy selects the pod for this direction
"
    );
}

/// `recompute` after pods of some identities come or go equals a full compile, over many
/// random worlds: selectors on pods and namespaces, ipBlocks with excepts around pod
/// addresses, named and numbered ports, ranges, and each mode.
#[test]
fn recompute_for_changed_pods_equals_a_full_compile() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let apps = ["a", "b", "c", "d"];
    for case in 0..2000 {
        let mut yaml = String::new();
        for i in 0..1 + rnd(6) {
            let ns = ["x", "y", "z"][rnd(3)];
            let sel = |r: usize| match r {
                0 => "{}".to_string(),
                _ => format!("{{matchLabels: {{app: {}}}}}", apps[r % 4]),
            };
            let peer = |r: &mut dyn FnMut(usize) -> usize| match r(5) {
                0 => format!("podSelector: {}", sel(r(5))),
                1 => format!("namespaceSelector: {{matchLabels: {{ns: {}}}}}", ["x", "y", "z"][r(3)]),
                2 => format!("namespaceSelector: {{}}\n      podSelector: {}", sel(r(5))),
                3 => format!(
                    "ipBlock: {{cidr: 10.0.0.0/{}, except: [10.0.{}.0/24]}}",
                    8 + r(9),
                    1 + r(3)
                ),
                _ => format!("ipBlock: {{cidr: 10.0.{}.{}/32}}", 1 + r(3), 1 + r(4)),
            };
            let ports = |r: &mut dyn FnMut(usize) -> usize| match r(4) {
                0 => String::new(),
                1 => format!("    ports: [{{port: {}}}]\n", 80 + r(3)),
                2 => format!("    ports: [{{port: {}, endPort: {}}}]\n", 1000, 1000 + r(40)),
                _ => "    ports: [{port: web}]\n".to_string(),
            };
            let mut spec = format!("  podSelector: {}\n", sel(rnd(5)));
            for (dir, word) in [("ingress", "from"), ("egress", "to")] {
                match rnd(3) {
                    0 => {}
                    1 => spec.push_str(&format!("  {dir}: []\n")),
                    _ => {
                        spec.push_str(&format!("  {dir}:\n"));
                        for _ in 0..1 + rnd(2) {
                            spec.push_str(&format!("  - {word}:\n    - {}\n{}", peer(&mut rnd), ports(&mut rnd)));
                        }
                    }
                }
            }
            let types = ["[Ingress]", "[Egress]", "[Ingress, Egress]"][rnd(3)];
            yaml.push_str(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec:\n{spec}  policyTypes: {types}\n---\n"
            ));
        }
        let mut full = world(&yaml);
        full.mode = [Mode::Default, Mode::Always, Mode::Never][rnd(3)];
        // Pods: labels app=<a..d> (identity per namespace and app), some remote, some
        // with a named port.
        full.pods.clear();
        for k in 0..2 + rnd(12) {
            let ns = rnd(3);
            let app = rnd(4);
            let mut info = pod_info(&format!("{}/a", ["x", "y", "z"][ns]));
            info.pod.name = format!("p{k}");
            info.pod.labels = BTreeMap::from([("app".to_string(), apps[app].to_string())]);
            info.identity = 300 + (ns * 4 + app) as u32;
            let addr = Ipv4Addr::new(10, 0, 1 + rnd(3) as u8, 1 + k as u8);
            info.ipv4 = Some(addr);
            info.pod.ip = Some(addr);
            info.local = rnd(3) > 0;
            if rnd(2) == 0 {
                info.pod.ports = vec![ContainerPort {
                    name: "web".into(),
                    port: 8000 + rnd(3) as u16,
                    protocol: TCP,
                }];
            }
            full.pods.push(info);
        }
        // Take some pods away: `less` is the world before they came (or after they left).
        let mut less = full.clone();
        let mut changed = BTreeSet::new();
        for _ in 0..1 + rnd(3) {
            if less.pods.is_empty() {
                break;
            }
            let gone = less.pods.remove(rnd(less.pods.len()));
            changed.insert(gone.identity);
        }
        if rnd(4) == 0 {
            // The node gains an address (found through the ipcache, not `changed`).
            less.host_ips
                .push(Ipv4Addr::new(10, 0, 1 + rnd(3) as u8, 1 + rnd(6) as u8));
        }
        let mut compiler = Compiler::new();
        compiler.prepare(&full.policies);
        for (from, to, what) in [(&less, &full, "added"), (&full, &less, "removed")] {
            let prev = compiler.compile_prepared(from);
            let want = compiler.compile_prepared(to);
            let got = compiler.recompute(to, &prev, &changed);
            let differ: Vec<_> = got
                .policy
                .iter()
                .filter(|(k, v)| want.policy.get(k) != Some(v))
                .map(|(k, v)| ("extra", *k, *v))
                .chain(
                    want.policy
                        .iter()
                        .filter(|(k, v)| got.policy.get(k) != Some(v))
                        .map(|(k, v)| ("missing", *k, *v)),
                )
                .collect();
            assert!(
                differ.is_empty() && got == want,
                "case {case}: pods of {changed:?} {what}: {differ:?}\n{:?}\n{yaml}",
                to.pods
            );
        }
    }
}
