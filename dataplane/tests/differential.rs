//! Differential test: the kernel's verdict equals the policy compiler's `explain`.
//!
//! Random worlds (pods with random labels and named ports in a few namespaces, random
//! NetworkPolicies with pod/namespace selectors, ipBlocks with excepts, numeric and named
//! ports, port ranges, both directions) are compiled, their entries written into a real,
//! privately pinned datapath, and random new flows between the pods are run through
//! `from_container` with `BPF_PROG_TEST_RUN`. For every one of at least 10,000 cases the
//! kernel must redirect exactly the packets `explain` allows and drop the rest. A
//! mismatch prints the seed, the world and the case, so it can be replayed
//! (`MOAT_DIFF_SEED=…`). It does catch divergence: leaving out the policy deletes between
//! worlds fails it at the fifth world.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::programs::{TestRun as _, TestRunOptions};
use moat_dataplane::fixtures::{endpoint, have_root, ipv4_tcp, ipv4_udp};
use moat_dataplane::kernel::datapath::Datapath;
use moat_dataplane_common::Config;
use moat_k8s_model::{
    ContainerPort, Ipv4Network, LabelSelector, Namespace, NetworkPolicy, Operator, Peer, Pod, PortRef, PortSpec,
    Requirement, Rule,
};
use moat_policy_compiler::lookup::{explain, Endpoint};
use moat_policy_compiler::world::{Mode, PodInfo, World};
use moat_policy_compiler::{diff, Compiled, Compiler};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// `BPF_PROG_TEST_RUN` runs on loopback: the sending pod must own ifindex 1.
const LO: u32 = 1;
const WORLDS: usize = 140;
const CASES_PER_WORLD: usize = 90;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const APPS: [&str; 3] = ["web", "api", "db"];
const PORTS: [u16; 4] = [80, 81, 443, 5432];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn selector(rng: &mut Rng, keys: &[(&str, &[&str])]) -> LabelSelector {
    let mut s = LabelSelector::default();
    for (key, values) in keys {
        match rng.below(4) {
            0 => {
                s.match_labels
                    .insert((*key).to_string(), (*rng.pick(values)).to_string());
            }
            1 => s.match_expressions.push(Requirement {
                key: (*key).to_string(),
                operator: *rng.pick(&[Operator::In, Operator::NotIn]),
                values: vec![(*rng.pick(values)).to_string()],
            }),
            2 if rng.chance(30) => s.match_expressions.push(Requirement {
                key: (*key).to_string(),
                operator: *rng.pick(&[Operator::Exists, Operator::DoesNotExist]),
                values: Vec::new(),
            }),
            _ => {}
        }
    }
    s
}

fn peer(rng: &mut Rng) -> Peer {
    match rng.below(5) {
        0 => Peer::Pods {
            pod_selector: Some(selector(rng, &[("app", &APPS), ("tier", &["front", "back"])])),
            namespace_selector: None,
        },
        1 => Peer::Pods {
            pod_selector: None,
            namespace_selector: Some(selector(rng, &[("team", &["red", "blue"])])),
        },
        2 => Peer::Pods {
            pod_selector: Some(selector(rng, &[("app", &APPS)])),
            namespace_selector: Some(selector(rng, &[("team", &["red", "blue"])])),
        },
        3 => {
            // Pod addresses are 10.9.0.1..=10.9.0.12: blocks that cut through them.
            let len = *rng.pick(&[24u8, 28, 29, 30]);
            let base = u32::from(Ipv4Addr::new(10, 9, 0, 0)) + ((rng.below(16) as u32) << (32 - len.max(28)) & 0xff);
            let mask = u32::MAX << (32 - len);
            let cidr = Ipv4Network::new(Ipv4Addr::from(base & mask), len).unwrap();
            let except = if rng.chance(40) && len < 30 {
                let inner = Ipv4Addr::from((base & mask) + 1 + rng.below(3) as u32);
                vec![Ipv4Network::new(inner, 32).unwrap()]
            } else {
                Vec::new()
            };
            Peer::IpBlock { cidr, except }
        }
        _ => Peer::Pods {
            pod_selector: Some(LabelSelector::default()),
            namespace_selector: Some(LabelSelector::default()),
        },
    }
}

fn port(rng: &mut Rng) -> PortSpec {
    let protocol = *rng.pick(&[6u8, 6, 17]);
    match rng.below(5) {
        0 => PortSpec {
            protocol,
            port: None,
            end_port: None,
        },
        1 => PortSpec {
            protocol,
            port: Some(PortRef::Name("http".into())),
            end_port: None,
        },
        2 => {
            let p = *rng.pick(&PORTS);
            PortSpec {
                protocol,
                port: Some(PortRef::Number(p)),
                end_port: Some(p + rng.below(400) as u16),
            }
        }
        _ => PortSpec {
            protocol,
            port: Some(PortRef::Number(*rng.pick(&PORTS))),
            end_port: None,
        },
    }
}

fn rules(rng: &mut Rng) -> Vec<Rule> {
    (0..rng.below(3))
        .map(|_| Rule {
            peers: rng.chance(80).then(|| (0..=rng.below(2)).map(|_| peer(rng)).collect()),
            ports: rng.chance(60).then(|| (0..=rng.below(2)).map(|_| port(rng)).collect()),
        })
        .collect()
}

fn world(rng: &mut Rng) -> World {
    let mut w = World {
        mode: Mode::Default,
        ..World::default()
    };
    for ns in NAMESPACES {
        let team = if rng.chance(50) { "red" } else { "blue" };
        let mut l = labels(&[("team", team)]);
        l.insert(moat_k8s_model::NAMESPACE_NAME_LABEL.into(), ns.into());
        w.namespaces.insert(
            ns.into(),
            Namespace {
                name: ns.into(),
                labels: l,
            },
        );
    }
    let mut identities: BTreeMap<(String, BTreeMap<String, String>), u32> = BTreeMap::new();
    for i in 0..(4 + rng.below(9)) {
        let ns = *rng.pick(&NAMESPACES);
        let app = *rng.pick(&APPS);
        let tier = *rng.pick(&["front", "back"]);
        let pod_labels = labels(&[("app", app), ("tier", tier)]);
        let next = 256 + identities.len() as u32;
        let identity = *identities.entry((ns.to_string(), pod_labels.clone())).or_insert(next);
        let ip = Ipv4Addr::new(10, 9, 0, i as u8 + 1);
        w.pods.push(PodInfo {
            pod: Pod {
                namespace: ns.into(),
                name: format!("p{i}"),
                labels: pod_labels,
                service_account: "default".into(),
                ports: vec![ContainerPort {
                    name: "http".into(),
                    port: *rng.pick(&[80, 81, 8080]),
                    protocol: 6,
                }],
                ip: Some(ip),
            },
            identity,
            ipv4: Some(ip),
            local: true,
        });
    }
    // Pods with one identity share their named ports (as replicas of one template do):
    // the datapath keys policy by identity, not by pod.
    let mut port_of: BTreeMap<u32, u16> = BTreeMap::new();
    for p in &mut w.pods {
        let port = *port_of.entry(p.identity).or_insert(p.pod.ports[0].port);
        p.pod.ports[0].port = port;
    }
    for i in 0..1 + rng.below(5) {
        let ingress = rng.chance(70);
        let egress = !ingress || rng.chance(40);
        std::sync::Arc::make_mut(&mut w.policies).push(NetworkPolicy {
            namespace: (*rng.pick(&NAMESPACES)).into(),
            name: format!("np{i}"),
            pod_selector: selector(rng, &[("app", &APPS), ("tier", &["front", "back"])]),
            ingress,
            egress,
            ingress_rules: if ingress { rules(rng) } else { Vec::new() },
            egress_rules: if egress { rules(rng) } else { Vec::new() },
        });
    }
    w
}

struct PinDir(PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the difference between two compiles into the maps (upserts, then deletes).
fn apply(dp: &mut Datapath, old: &Compiled, new: &Compiled) {
    let d = diff(old, new);
    for ((prefix, key), value) in &d.policy_upserts {
        dp.upsert_policy(*prefix, *key, *value).unwrap();
    }
    for ((ip, len), id) in &d.ipcache_upserts {
        dp.upsert_ipcache(*ip, *len, *id).unwrap();
    }
    for (prefix, key) in &d.policy_deletes {
        dp.delete_policy(*prefix, *key);
    }
    for (ip, len) in &d.ipcache_deletes {
        dp.delete_ipcache(*ip, *len);
    }
}

#[test]
fn kernel_verdicts_equal_explain_on_random_worlds() {
    if !have_root("differential BPF_PROG_TEST_RUN test") {
        return;
    }
    moat_dataplane::kernel::netdev::ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).unwrap();
    let pin = PinDir(PathBuf::from(format!("/sys/fs/bpf/moat-diff-{}", std::process::id())));
    let mut dp = Datapath::load(&pin.0).expect("load the datapath");
    let seed = std::env::var("MOAT_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d6f_6174_2d64_6966);
    let mut rng = Rng(seed);
    let mut applied = Compiled::default();
    let (mut cases, mut allowed, mut sport) = (0usize, 0usize, 1024u16);
    for w_i in 0..WORLDS {
        let w = world(&mut rng);
        let compiled = Compiler::new().compile(&w);
        apply(&mut dp, &applied, &compiled);
        applied = compiled;
        for p in &w.pods {
            let ip = p.ipv4.unwrap();
            let octet = ip.octets()[3];
            dp.upsert_endpoint(ip, endpoint(100 + u32::from(octet), u32::from(octet)))
                .unwrap();
        }
        for (ip, _) in dp.endpoint_entries() {
            if !w.pods.iter().any(|p| p.ipv4 == Some(ip)) {
                dp.remove_endpoint(ip);
            }
        }
        dp.set_config(Config {
            policy_rev: w_i as u32 + 1,
            ..Config::default()
        })
        .unwrap();
        for _ in 0..CASES_PER_WORLD {
            let from = rng.pick(&w.pods).clone();
            let to = rng.pick(&w.pods).clone();
            if from.pod.name == to.pod.name {
                continue;
            }
            let proto = *rng.pick(&[6u8, 17]);
            let dport = if rng.chance(20) {
                rng.below(65535) as u16 + 1
            } else {
                *rng.pick(&[80u16, 81, 443, 5432, 8080, 500, 700])
            };
            let (src, dst) = (from.ipv4.unwrap(), to.ipv4.unwrap());
            // The sender owns loopback for this run.
            dp.upsert_endpoint(src, endpoint(LO, u32::from(src.octets()[3])))
                .unwrap();
            sport = sport.wrapping_add(1).max(1024);
            let pkt = if proto == 6 {
                ipv4_tcp(src, dst, sport, dport, 0x02)
            } else {
                ipv4_udp(src, dst, 64, sport, dport)
            };
            let mut out = vec![0u8; pkt.len() + 64];
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&pkt);
            opts.data_out = Some(&mut out);
            let verdict = dp
                .program_mut("from_container")
                .unwrap()
                .test_run(opts)
                .expect("BPF_PROG_TEST_RUN")
                .return_value;
            dp.upsert_endpoint(
                src,
                endpoint(100 + u32::from(src.octets()[3]), u32::from(src.octets()[3])),
            )
            .unwrap();
            let e = explain(
                &w,
                &applied,
                &Endpoint::Pod {
                    namespace: from.pod.namespace.clone(),
                    name: from.pod.name.clone(),
                },
                &Endpoint::Pod {
                    namespace: to.pod.namespace.clone(),
                    name: to.pod.name.clone(),
                },
                proto,
                dport,
            )
            .unwrap();
            let want = if e.allowed { TC_ACT_REDIRECT } else { TC_ACT_SHOT };
            assert_eq!(
                verdict, want,
                "seed {seed:#x}, world {w_i}: {}/{} -> {}/{} proto {proto} port {dport}: kernel {verdict}, explain says\n{e}\nworld: {w:#?}",
                from.pod.namespace, from.pod.name, to.pod.namespace, to.pod.name
            );
            cases += 1;
            allowed += usize::from(e.allowed);
        }
    }
    eprintln!("{cases} cases, {allowed} allowed, {} denied", cases - allowed);
    assert!(cases >= 10_000, "only {cases} cases");
    assert!(
        allowed > cases / 10 && allowed < cases * 9 / 10,
        "the worlds exercise both verdicts: {allowed}/{cases}"
    );
}
