//! The Kubernetes upstream network-policy e2e model, on one Moat node with real traffic.
//!
//! ```text
//!   namespaces x, y, z (label ns=<name>), pods a, b, c in each (label pod=<name>),
//!   every pod serving TCP and UDP echo on ports 80 and 81 (named serve-80-tcp, …)
//!
//!   x/a x/b x/c   y/a y/b y/c   z/a z/b z/c   ── veths ── node netns (moat-agent)
//! ```
//! Each case writes NetworkPolicy manifests into the agent's state dir, probes all
//! 9 × 9 pairs on 80/tcp, 81/tcp, 80/udp and 81/udp at once, and compares with a matrix
//! written by hand below (rows = from, columns = to, `.` reachable, `X` not).
use std::net::Ipv4Addr;
use std::time::Duration;

use moat_netns_tests::net::{reachability, EchoServer, TCP, UDP};
use moat_netns_tests::{root_or_skip, Node, NodeOpts, Pod};

const NAMES: [&str; 9] = ["xa", "xb", "xc", "ya", "yb", "yc", "za", "zb", "zc"];
const P80T: (u8, u16) = (TCP, 80);
const P81T: (u8, u16) = (TCP, 81);
const P80U: (u8, u16) = (UDP, 80);
const P81U: (u8, u16) = (UDP, 81);
const PROBES: [(u8, u16); 4] = [P80T, P81T, P80U, P81U];

fn pod_yaml(ns: &str, name: &str, extra_labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{pod: {name}{extra_labels}}}\n\
         spec:\n  containers:\n  - name: server\n    image: agnhost\n    ports:\n\
         \x20   - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n\
         \x20   - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n\
         \x20   - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n\
         \x20   - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n---\n"
    )
}

/// Namespaces and pods; `ns_extra`/`pod_extra` add labels (`, key: value`) to one object.
fn base(ns_extra: (&str, &str), pod_extra: (&str, &str)) -> String {
    let mut s = String::new();
    for ns in ["x", "y", "z"] {
        let extra = if ns == ns_extra.0 { ns_extra.1 } else { "" };
        s += &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}{extra}}}\n---\n");
        for pod in ["a", "b", "c"] {
            let extra = if format!("{ns}{pod}") == pod_extra.0 {
                pod_extra.1
            } else {
                ""
            };
            s += &pod_yaml(ns, pod, extra);
        }
    }
    s
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}\n---\n")
}

/// Parses a hand-written grid: a header line of the 9 names, then one row per source.
fn grid(text: &str) -> [[bool; 9]; 9] {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(header, NAMES, "grid header");
    let mut g = [[false; 9]; 9];
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], NAMES[i], "grid row {i}");
        assert_eq!(cells.len(), 10, "grid row {}", NAMES[i]);
        for (j, c) in cells[1..].iter().enumerate() {
            g[i][j] = match *c {
                "." => true,
                "X" => false,
                other => panic!("grid cell {other:?}"),
            };
        }
    }
    g
}

const ALL: &str = "
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  .  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  .";

/// Nothing reaches x/a except itself.
const XA_ISOLATED: &str = "
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  X  .  .  .  .  .  .  .  .
yb  X  .  .  .  .  .  .  .  .
yc  X  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  X  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  .";

/// x/a reaches nothing except itself.
const XA_NO_EGRESS: &str = "
    xa xb xc ya yb yc za zb zc
xa  .  X  X  X  X  X  X  X  X
xb  .  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  .";

struct Case {
    name: &'static str,
    /// Policy manifests (one file).
    policies: String,
    /// (probes, expected grid); every probe of `PROBES` must be covered exactly once.
    expect: Vec<(Vec<(u8, u16)>, &'static str)>,
}

fn all_probes(g: &'static str) -> Vec<(Vec<(u8, u16)>, &'static str)> {
    vec![(PROBES.to_vec(), g)]
}

struct Cluster {
    node: Node,
    pods: Vec<Pod>,
    _servers: Vec<EchoServer>,
}

fn cluster() -> Cluster {
    moat_netns_tests::require_root();
    let node = Node::start_with(NodeOpts {
        manifests: vec![("base.yaml", base(("", ""), ("", "")))],
        ..NodeOpts::default()
    });
    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for n in NAMES {
        let (ns, name) = n.split_at(1);
        let pod = node.add_pod(ns, name);
        servers.push(EchoServer::start(&pod.path(), 80));
        servers.push(EchoServer::start(&pod.path(), 81));
        pods.push(pod);
    }
    Cluster {
        node,
        pods,
        _servers: servers,
    }
}

impl Cluster {
    fn ip(&self, n: &str) -> Ipv4Addr {
        self.pods[NAMES.iter().position(|x| *x == n).expect("pod name")].ip
    }

    fn probe(&self) -> Vec<Vec<Vec<bool>>> {
        let sources: Vec<String> = self.pods.iter().map(Pod::path).collect();
        let targets: Vec<Ipv4Addr> = self.pods.iter().map(|p| p.ip).collect();
        reachability(&sources, &targets, &PROBES, Duration::from_millis(800))
    }

    /// Compares probes with the expectation; returns a readable diff when they differ.
    fn check(&self, case: &Case) -> Result<(), String> {
        let got = self.probe();
        let mut diffs = Vec::new();
        for (pi, probe) in PROBES.iter().enumerate() {
            let (_, text) = case
                .expect
                .iter()
                .find(|(ps, _)| ps.contains(probe))
                .unwrap_or_else(|| panic!("case {}: no expectation for {probe:?}", case.name));
            let want = grid(text);
            for (i, from) in NAMES.iter().enumerate() {
                for (j, to) in NAMES.iter().enumerate() {
                    if got[i][pi][j] != want[i][j] {
                        let proto = if probe.0 == TCP { "tcp" } else { "udp" };
                        diffs.push(format!(
                            "{from} -> {to} {}/{proto}: expected {}, got {}",
                            probe.1,
                            if want[i][j] { "reachable" } else { "blocked" },
                            if got[i][pi][j] { "reachable" } else { "blocked" }
                        ));
                    }
                }
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs.join("\n"))
        }
    }

    fn run(&self, case: &Case) {
        self.node
            .apply_manifests(&[("policies.yaml", Some(case.policies.as_str()))]);
        // One retry absorbs a lost datagram; a policy bug fails both times.
        if let Err(first) = self.check(case) {
            std::thread::sleep(Duration::from_millis(300));
            if let Err(second) = self.check(case) {
                panic!(
                    "case {:?}:\n{second}\n(first attempt:\n{first})\nagent log tail:\n{}",
                    case.name,
                    self.node
                        .agent_log()
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
        eprintln!("case {:?}: matrix as expected", case.name);
    }
}

fn cases(c: &Cluster) -> Vec<Case> {
    let pod_cidr = &c.node.pod_cidr;
    let (yb, zc) = (c.ip("yb"), c.ip("zc"));
    vec![
        Case { name: "no policy: everything reachable", policies: String::new(), expect: all_probes(ALL) },
        Case {
            name: "deny all ingress in x",
            policies: policy("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress]"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  X  X  .  .  .  .  .  .
xb  X  .  X  .  .  .  .  .  .
xc  X  X  .  .  .  .  .  .  .
ya  X  X  X  .  .  .  .  .  .
yb  X  X  X  .  .  .  .  .  .
yc  X  X  X  .  .  .  .  .  .
za  X  X  X  .  .  .  .  .  .
zb  X  X  X  .  .  .  .  .  .
zc  X  X  X  .  .  .  .  .  ."),
        },
        Case {
            name: "deny all ingress (ingress: []) plus allow all (ingress: [{}]) in x: union allows",
            policies: policy("x", "deny-all", "  podSelector: {}\n  ingress: []")
                + &policy("x", "allow-all", "  podSelector: {}\n  ingress:\n  - {}"),
            expect: all_probes(ALL),
        },
        Case {
            name: "deny all egress in x",
            policies: policy("x", "deny-egress", "  podSelector: {}\n  policyTypes: [Egress]"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  X  X  X  X  X  X  X  X
xb  X  .  X  X  X  X  X  X  X
xc  X  X  .  X  X  X  X  X  X
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "deny all both directions in z",
            policies: policy("z", "deny-both", "  podSelector: {}\n  policyTypes: [Ingress, Egress]"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  X  X  X
xb  .  .  .  .  .  .  X  X  X
xc  .  .  .  .  .  .  X  X  X
ya  .  .  .  .  .  .  X  X  X
yb  .  .  .  .  .  .  X  X  X
yc  .  .  .  .  .  .  X  X  X
za  X  X  X  X  X  X  .  X  X
zb  X  X  X  X  X  X  X  .  X
zc  X  X  X  X  X  X  X  X  ."),
        },
        Case {
            name: "x/a: ingress from pod=b in its own namespace (podSelector only)",
            policies: policy("x", "from-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  .  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  X  .  .  .  .  .  .  .  .
yb  X  .  .  .  .  .  .  .  .
yc  X  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  X  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: ingress from namespace ns=y (namespaceSelector only)",
            policies: policy("x", "from-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  X  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: ingress from pod=b AND ns in (y, z) in one peer",
            policies: policy("x", "and", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: ns, operator: In, values: [y, z]}]\n      podSelector: {matchLabels: {pod: b}}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  X  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  X  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: ingress from pod=b OR ns in (y, z) as two peers",
            policies: policy("x", "or", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: ns, operator: In, values: [y, z]}]\n    - podSelector: {matchLabels: {pod: b}}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  .  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: ingress from namespaces NotIn (y)",
            policies: policy("x", "not-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: ns, operator: NotIn, values: [y]}]"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  .  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  X  .  .  .  .  .  .  .  .
yb  X  .  .  .  .  .  .  .  .
yc  X  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: ingress from pod In (b, c) in every namespace (namespaceSelector {})",
            policies: policy("x", "bc-anywhere", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector:\n        matchExpressions: [{key: pod, operator: In, values: [b, c]}]"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  .  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  X  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: ingress from pods where label pod DoesNotExist (none)",
            policies: policy("x", "no-pod-label", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions: [{key: pod, operator: DoesNotExist}]\n      namespaceSelector:\n        matchExpressions: [{key: ns, operator: Exists}]"),
            expect: all_probes(XA_ISOLATED),
        },
        Case {
            name: "x/a: ingress on 80/tcp only, from anywhere",
            policies: policy("x", "port-80", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - port: 80"),
            expect: vec![(vec![P80T], ALL), (vec![P81T, P80U, P81U], XA_ISOLATED)],
        },
        Case {
            name: "x/a: ingress on 81/udp only",
            policies: policy("x", "udp-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - {protocol: UDP, port: 81}"),
            expect: vec![(vec![P81U], ALL), (vec![P80T, P81T, P80U], XA_ISOLATED)],
        },
        Case {
            name: "x/a: ingress on the named port serve-81-tcp",
            policies: policy("x", "named-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - port: serve-81-tcp"),
            expect: vec![(vec![P81T], ALL), (vec![P80T, P80U, P81U], XA_ISOLATED)],
        },
        Case {
            name: "x/a: ingress on the named UDP port serve-80-udp",
            policies: policy("x", "named-80-udp", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - {protocol: UDP, port: serve-80-udp}"),
            expect: vec![(vec![P80U], ALL), (vec![P80T, P81T, P81U], XA_ISOLATED)],
        },
        Case {
            name: "x/a: ingress on ports 80-81/tcp (endPort)",
            policies: policy("x", "range", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports:\n    - {port: 80, endPort: 81}"),
            expect: vec![(vec![P80T, P81T], ALL), (vec![P80U, P81U], XA_ISOLATED)],
        },
        Case {
            name: "x/a: ingress on ports 81-90/tcp (endPort), from namespace y",
            policies: policy("x", "range-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    ports:\n    - {port: 81, endPort: 90, protocol: TCP}"),
            expect: vec![
                (vec![P81T], "
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  X  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  ."),
                (vec![P80T, P80U, P81U], XA_ISOLATED),
            ],
        },
        Case {
            name: "x/a: egress only to namespace y",
            policies: policy("x", "egress-y", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: y}}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  X  X  .  .  .  X  X  X
xb  .  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: egress only to 80/tcp",
            policies: policy("x", "egress-80", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports:\n    - {protocol: TCP, port: 80}"),
            expect: vec![(vec![P80T], ALL), (vec![P81T, P80U, P81U], XA_NO_EGRESS)],
        },
        Case {
            name: "x/a: egress only to the named port serve-81-udp",
            policies: policy("x", "egress-named", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports:\n    - {protocol: UDP, port: serve-81-udp}"),
            expect: vec![(vec![P81U], ALL), (vec![P80T, P81T, P80U], XA_NO_EGRESS)],
        },
        Case {
            name: "x/a: both directions: ingress from x/b, egress to x/c",
            policies: policy("x", "both", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n  egress:\n  - to:\n    - podSelector: {matchLabels: {pod: c}}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  X  .  X  X  X  X  X  X
xb  .  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  X  .  .  .  .  .  .  .  .
yb  X  .  .  .  .  .  .  .  .
yc  X  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  X  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: union of two policies (from namespace y; from x/c)",
            policies: policy("x", "from-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}")
                + &policy("x", "from-c", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: c}}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  X  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: ingress from an ipBlock of the pod CIDR except y/b",
            policies: policy("x", "ipblock", &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: {pod_cidr}\n        except: [{yb}/32]")),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  .  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  X  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: egress only to the ipBlock z/c/32",
            policies: policy("x", "egress-ipblock", &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {{cidr: {zc}/32}}")),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  X  X  X  X  X  X  X  .
xb  .  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: ingress from 0.0.0.0/0 except the pod CIDR (no pod)",
            policies: policy("x", "world-only", &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 0.0.0.0/0\n        except: [{pod_cidr}]")),
            expect: all_probes(XA_ISOLATED),
        },
        Case {
            name: "deny all in x, then allow x/a from every namespace",
            policies: policy("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress]")
                + &policy("x", "a-open", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  X  X  .  .  .  .  .  .
xb  .  .  X  .  .  .  .  .  .
xc  .  X  .  .  .  .  .  .  .
ya  .  X  X  .  .  .  .  .  .
yb  .  X  X  .  .  .  .  .  .
yc  .  X  X  .  .  .  .  .  .
za  .  X  X  .  .  .  .  .  .
zb  .  X  X  .  .  .  .  .  .
zc  .  X  X  .  .  .  .  .  ."),
        },
        Case {
            name: "z: default deny both ways, allow within z",
            policies: policy("z", "deny-both", "  podSelector: {}\n  policyTypes: [Ingress, Egress]")
                + &policy("z", "within", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - podSelector: {}\n  egress:\n  - to:\n    - podSelector: {}"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  X  X  X
xb  .  .  .  .  .  .  X  X  X
xc  .  .  .  .  .  .  X  X  X
ya  .  .  .  .  .  .  X  X  X
yb  .  .  .  .  .  .  X  X  X
yc  .  .  .  .  .  .  X  X  X
za  X  X  X  X  X  X  .  .  .
zb  X  X  X  X  X  X  .  .  .
zc  X  X  X  X  X  X  .  .  ."),
        },
        Case {
            name: "y: deny all egress; x/a: deny all ingress",
            policies: policy("y", "no-egress", "  podSelector: {}\n  policyTypes: [Egress]")
                + &policy("x", "a-closed", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]"),
            expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  X  X  X  .  X  X  X  X  X
yb  X  X  X  X  .  X  X  X  X
yc  X  X  X  X  X  .  X  X  X
za  X  .  .  .  .  .  .  .  .
zb  X  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  ."),
        },
        Case {
            name: "x/a: egress to namespace z on 81/tcp only",
            policies: policy("x", "egress-z-81", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: z}}\n    ports:\n    - port: 81"),
            expect: vec![
                (vec![P81T], "
    xa xb xc ya yb yc za zb zc
xa  .  X  X  X  X  X  .  .  .
xb  .  .  .  .  .  .  .  .  .
xc  .  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
                (vec![P80T, P80U, P81U], XA_NO_EGRESS),
            ],
        },
    ]
}

#[test]
fn upstream_model_policy_matrix() {
    root_or_skip!();
    let c = cluster();
    let cases = cases(&c);
    assert!(cases.len() >= 30 - 4, "the update cases below bring the total past 30");
    for case in &cases {
        c.run(case);
    }

    // Updates while traffic flows: the manifests change under a running node.
    let from_ns2 = policy(
        "x",
        "from-ns2",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns2: on}}",
    );
    c.run(&Case {
        name: "update 1/2: ingress from namespaces labelled ns2=on (none yet)",
        policies: from_ns2.clone(),
        expect: all_probes(XA_ISOLATED),
    });
    c.node
        .apply_manifests(&[("base.yaml", Some(&base(("y", ", ns2: on"), ("", ""))))]);
    c.run(&Case {
        name: "update 2/2: namespace y gains ns2=on",
        policies: from_ns2,
        expect: all_probes(
            "
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  .  .  .  .  .  .  .  .  .
yb  .  .  .  .  .  .  .  .  .
yc  .  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  X  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  .",
        ),
    });
    let from_pod2 = policy(
        "x",
        "from-pod2",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector: {matchLabels: {pod2: on}}",
    );
    c.node
        .apply_manifests(&[("base.yaml", Some(&base(("", ""), ("", ""))))]);
    c.run(&Case {
        name: "update: ingress from pods labelled pod2=on (none yet)",
        policies: from_pod2.clone(),
        expect: all_probes(XA_ISOLATED),
    });
    c.node
        .apply_manifests(&[("base.yaml", Some(&base(("", ""), ("zb", ", pod2: on"))))]);
    c.run(&Case {
        name: "update: pod z/b gains pod2=on and is re-identified",
        policies: from_pod2,
        expect: all_probes(
            "
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  X  .  .  .  .  .  .  .  .
yb  X  .  .  .  .  .  .  .  .
yc  X  .  .  .  .  .  .  .  .
za  X  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  X  .  .  .  .  .  .  .  .",
        ),
    });
    c.node
        .apply_manifests(&[("base.yaml", Some(&base(("", ""), ("", ""))))]);
    c.run(&Case {
        name: "update: the policy now allows namespace z instead",
        policies: policy(
            "x",
            "from-ns2",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: z}}",
        ),
        expect: all_probes("
    xa xb xc ya yb yc za zb zc
xa  .  .  .  .  .  .  .  .  .
xb  X  .  .  .  .  .  .  .  .
xc  X  .  .  .  .  .  .  .  .
ya  X  .  .  .  .  .  .  .  .
yb  X  .  .  .  .  .  .  .  .
yc  X  .  .  .  .  .  .  .  .
za  .  .  .  .  .  .  .  .  .
zb  .  .  .  .  .  .  .  .  .
zc  .  .  .  .  .  .  .  .  ."),
    });
    c.run(&Case {
        name: "update: all policies deleted, enforcement stops",
        policies: String::new(),
        expect: all_probes(ALL),
    });
}
