//! `moat-policy-compile`: how long the NetworkPolicy compiler takes at cluster scale, and how
//! few map writes one policy change costs.
//!
//! Synthesizes 1,000 pods in 50 namespaces (~500 identities), all local to the node, and
//! 10,000 NetworkPolicies mixing pod/namespace selectors, matchExpressions, numeric and
//! named ports, endPort ranges and ipBlocks with excepts. Prints the full compile time and
//! entry counts, then edits one policy and prints the recompile time and the diff size.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use moat_k8s_model::{
    ContainerPort, LabelSelector, Namespace, NetworkPolicy, Operator, Peer, Pod, PortRef, PortSpec, Requirement, Rule,
};
use moat_policy_compiler::{diff, Compiler, Mode, PodInfo, World};

const NAMESPACES: usize = 50;
const PODS_PER_NS: usize = 20;
const POLICIES_PER_NS: usize = 200;
const APPS: usize = 10;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn sel(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: vec![],
    }
}

fn expr(key: &str, operator: Operator, values: &[String]) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![Requirement {
            key: key.into(),
            operator,
            values: values.to_vec(),
        }],
    }
}

fn port(protocol: u8, p: Option<PortRef>, end_port: Option<u16>) -> PortSpec {
    PortSpec {
        protocol,
        port: p,
        end_port,
    }
}

fn world() -> World {
    let mut w = World {
        mode: Mode::Default,
        host_ips: vec![Ipv4Addr::new(192, 168, 0, 1)],
        ..World::default()
    };
    for n in 0..NAMESPACES {
        let name = format!("ns-{n:02}");
        let mut ns = Namespace::implicit(&name);
        ns.labels.insert("team".into(), format!("t{}", n % 5));
        ns.labels.insert("env".into(), ["prod", "staging", "dev"][n % 3].into());
        w.namespaces.insert(name.clone(), ns);
        for j in 0..PODS_PER_NS {
            // 10 label sets per namespace: 2 replicas each → 500 identities.
            let app = j % APPS;
            let ip = Ipv4Addr::new(10, 0, n as u8, j as u8 + 1);
            w.pods.push(PodInfo {
                pod: Pod {
                    namespace: name.clone(),
                    name: format!("pod-{j:02}"),
                    labels: labels(&[
                        ("app", format!("app-{app}")),
                        ("tier", ["fe", "be"][app % 2].into()),
                        ("pod-template-hash", format!("h{j}")),
                    ]),
                    service_account: "default".into(),
                    ports: vec![
                        ContainerPort {
                            name: "http".into(),
                            port: 8080 + app as u16,
                            protocol: 6,
                        },
                        ContainerPort {
                            name: "metrics".into(),
                            port: 9090,
                            protocol: 6,
                        },
                    ],
                    ip: Some(ip),
                },
                identity: 256 + (n * APPS + app) as u32,
                ipv4: Some(ip),
                local: true,
            });
        }
    }
    for n in 0..NAMESPACES {
        for k in 0..POLICIES_PER_NS {
            std::sync::Arc::make_mut(&mut w.policies).push(policy(n, k));
        }
    }
    w
}

/// Policy `k` of namespace `n`: the subject app comes from `k % 10`, the rule shape from
/// `(k / 10) % 5`, so every identity gets a mix of shapes.
fn policy(n: usize, k: usize) -> NetworkPolicy {
    let app = |i: usize| format!("app-{}", i % APPS);
    let pod_selector = if k.is_multiple_of(7) {
        expr("app", Operator::In, &[app(k), app(k + 5)])
    } else {
        sel(&[("app", app(k))])
    };
    let b = (k / 10) % 256;
    let (ingress_rules, egress_rules) = match (k / 10) % 5 {
        0 => (
            vec![Rule {
                peers: Some(vec![Peer::Pods {
                    pod_selector: Some(sel(&[("app", app(k + 1))])),
                    namespace_selector: None,
                }]),
                ports: Some(vec![port(6, Some(PortRef::Number(8080 + (k % 50) as u16)), None)]),
            }],
            vec![],
        ),
        1 => (
            vec![Rule {
                peers: Some(vec![Peer::Pods {
                    pod_selector: Some(sel(&[("app", app(k + 2))])),
                    namespace_selector: Some(sel(&[("team", format!("t{}", k % 5))])),
                }]),
                ports: Some(vec![port(6, Some(PortRef::Name("http".into())), None)]),
            }],
            vec![],
        ),
        2 => (
            vec![Rule {
                peers: Some(vec![Peer::Pods {
                    pod_selector: Some(sel(&[("app", app(k + 4))])),
                    namespace_selector: Some(expr("env", Operator::In, &["prod".into()])),
                }]),
                ports: Some(vec![port(
                    6,
                    Some(PortRef::Number(8000 + (k % 4) as u16 * 8)),
                    Some(8000 + (k % 4) as u16 * 8 + 9),
                )]),
            }],
            vec![],
        ),
        3 => (
            vec![Rule {
                peers: Some(vec![Peer::IpBlock {
                    cidr: net(Ipv4Addr::new(172, 16, b as u8, 0), 24),
                    except: vec![net(Ipv4Addr::new(172, 16, b as u8, 128), 25)],
                }]),
                ports: Some(vec![port(17, Some(PortRef::Number(53)), None)]),
            }],
            vec![],
        ),
        _ => (
            vec![Rule {
                peers: Some(vec![Peer::Pods {
                    pod_selector: Some(sel(&[("app", app(k + 3))])),
                    namespace_selector: None,
                }]),
                ports: None,
            }],
            vec![
                Rule {
                    peers: Some(vec![Peer::IpBlock {
                        cidr: net(Ipv4Addr::new(10, 0, (k % NAMESPACES) as u8, 0), 24),
                        except: vec![net(Ipv4Addr::new(10, 0, (k % NAMESPACES) as u8, 16), 28)],
                    }]),
                    ports: Some(vec![port(6, Some(PortRef::Number(443)), None), port(17, None, None)]),
                },
                Rule {
                    peers: Some(vec![Peer::Pods {
                        pod_selector: None,
                        namespace_selector: Some(sel(&[(
                            "kubernetes.io/metadata.name",
                            format!("ns-{:02}", (n + 1) % NAMESPACES),
                        )])),
                    }]),
                    ports: Some(vec![port(6, Some(PortRef::Name("metrics".into())), None)]),
                },
            ],
        ),
    };
    let egress = !egress_rules.is_empty();
    NetworkPolicy {
        namespace: format!("ns-{n:02}"),
        name: format!("np-{k:03}"),
        pod_selector,
        ingress: true,
        egress,
        ingress_rules,
        egress_rules,
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let w = world();
    let identities: std::collections::BTreeSet<u32> = w.pods.iter().map(|p| p.identity).collect();
    println!(
        "world: {} namespaces, {} pods, {} identities, {} NetworkPolicies",
        w.namespaces.len(),
        w.pods.len(),
        identities.len(),
        w.policies.len()
    );
    let mut compiler = Compiler::new();
    let t = Instant::now();
    let full = compiler.compile(&w);
    let full_ms = ms(t);
    let total = full.policy.len() + full.ipcache.len();
    println!("full compile: {full_ms:.1} ms");
    println!(
        "entries: {} policy, {} ipcache, {} rule cookies",
        full.policy.len(),
        full.ipcache.len(),
        full.rules.len()
    );

    // Edit one policy: ns-00/np-000 now allows port 9999 instead of 8080.
    let mut changed = w.clone();
    if let Some(r) = std::sync::Arc::make_mut(&mut changed.policies)[0]
        .ingress_rules
        .first_mut()
    {
        r.ports = Some(vec![port(6, Some(PortRef::Number(9999)), None)]);
    }
    let t = Instant::now();
    let again = compiler.compile(&changed);
    let recompile_ms = ms(t);
    let t = Instant::now();
    let d = diff(&full, &again);
    let diff_ms = ms(t);
    println!("recompile after one policy change: {recompile_ms:.1} ms, diff: {diff_ms:.1} ms");
    println!(
        "map updates: {} ({} policy upserts, {} policy deletes, {} ipcache upserts, {} ipcache deletes)",
        d.len(),
        d.policy_upserts.len(),
        d.policy_deletes.len(),
        d.ipcache_upserts.len(),
        d.ipcache_deletes.len()
    );
    println!(
        "incremental/full: {} / {} entries = {:.6}",
        d.len(),
        total,
        d.len() as f64 / total.max(1) as f64
    );

    // A pod added with a new identity (what a CNI ADD does): recompute only its entries.
    let mut more = w.clone();
    let mut pod = more.pods.iter().find(|p| p.local).expect("a local pod").clone();
    pod.pod.name = "added".into();
    pod.pod.labels.insert("added".into(), "yes".into());
    pod.identity = 99_999;
    pod.ipv4 = Some(Ipv4Addr::new(10, 200, 0, 1));
    more.pods.push(pod);
    let t = Instant::now();
    let want = compiler.compile(&more);
    let full_add_ms = ms(t);
    let t = Instant::now();
    let got = compiler.recompute(&more, &full, &std::collections::BTreeSet::from([99_999]));
    let add_ms = ms(t);
    assert_eq!(got, want, "recompute must equal a full compile");
    println!(
        "pod added with a new identity: recompute {add_ms:.1} ms, full compile {full_add_ms:.1} ms, ratio {:.3}",
        add_ms / full_add_ms
    );
}

/// An IPv4 prefix for an ipBlock.
fn net(addr: Ipv4Addr, len: u8) -> moat_policy_compiler::k8s::Ipv4Network {
    moat_policy_compiler::k8s::Ipv4Network::new(addr, len).expect("a valid prefix")
}
