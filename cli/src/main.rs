//! `moatctl`: observe and inspect a Moat node through the agent's API.
//! `moatctl policy matrix` works offline on a directory of manifests.
mod flows;
mod table;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use moat_api::v1::{
    DropsRequest, Endpoint, ExplainRequest, ListEndpointsRequest, ListIdentitiesRequest, ListServicesRequest,
    ObserveRequest, StatusReply, StatusRequest,
};
use serde_json::json;

#[derive(Parser)]
#[command(name = "moatctl", about = "Inspect a Moat node", version)]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "MOAT_SOCKET", default_value = moat_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Agent health, node summary and datapath counters.
    Status,
    /// Pods wired on this node.
    Endpoints,
    /// Flow and drop events (recent ones, then new ones with --follow).
    Observe(ObserveArgs),
    /// Security identities: numbers, labels and the local pods that carry them.
    Identities,
    /// Drop counts by reason (datapath counters) and by pod.
    Drops,
    /// Services: frontends (ClusterIP, NodePort, …) and backends with their state.
    Services,
    /// NetworkPolicy tools.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(clap::Args)]
struct ObserveArgs {
    /// Keep printing new events.
    #[arg(short, long)]
    follow: bool,
    /// How many recent events to print first.
    #[arg(long, default_value_t = 20)]
    last: u32,
    /// Only flows from or to this pod (namespace/name).
    #[arg(long)]
    pod: Option<String>,
    /// Only flows from or to pods in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only flows with this verdict.
    #[arg(long, value_parser = ["forwarded", "dropped", "audit", "translated"])]
    verdict: Option<String>,
    /// Only flows from or to this identity.
    #[arg(long)]
    identity: Option<u32>,
    /// Only HTTP request events (l7) or only packet events (l3l4).
    #[arg(long = "type", value_parser = ["l7", "l3l4"])]
    kind: Option<String>,
    /// Only flows with this source or destination port.
    #[arg(long)]
    port: Option<u16>,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Which policy and rule decide traffic from one pod (or IP) to another.
    Explain {
        /// namespace/pod or an IPv4 address.
        #[arg(long)]
        from: String,
        /// namespace/pod or an IPv4 address.
        #[arg(long)]
        to: String,
        /// PORT/PROTO, e.g. 80/tcp (protocol defaults to tcp).
        #[arg(long)]
        port: String,
        /// Also judge an HTTP request by the port's HTTP rules: "METHOD TARGET", e.g.
        /// "GET /admin" (normalised as the kernel does).
        #[arg(long)]
        http: Option<String>,
        /// The request's Host (with --http).
        #[arg(long, requires = "http")]
        host: Option<String>,
    },
    /// Offline: the reachability matrix the compiler derives from a manifest directory.
    Matrix {
        /// Directory of Namespace, Pod and NetworkPolicy manifests.
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
        /// PORT/PROTO to probe (repeatable; default 80/tcp).
        #[arg(long = "port")]
        ports: Vec<String>,
        /// Enforcement mode to assume.
        #[arg(long, default_value = "default", value_parser = ["default", "always", "never"])]
        enforcement: String,
    },
}

/// `80/tcp` → (6, 80).
fn parse_port(s: &str) -> anyhow::Result<(u8, u16)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("--port {s:?}: the port must be 1-65535"))?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        other => anyhow::bail!("--port {s:?}: protocol {other:?} is not tcp, udp or sctp"),
    };
    Ok((proto, port))
}

fn matrix(dir: &std::path::Path, ports: &[String], enforcement: &str, out: Output) -> anyhow::Result<()> {
    use moat_policy_compiler::{
        compile::Compiler,
        k8s,
        matrix::matrix,
        world::{Mode, World},
    };
    if !dir.is_dir() {
        anyhow::bail!("-f {}: not a directory", dir.display());
    }
    let probes = if ports.is_empty() {
        vec![(6, 80)]
    } else {
        ports
            .iter()
            .map(|p| parse_port(p))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let m = k8s::read_dir(dir);
    // A matrix computed without a document the user meant to apply is a wrong answer:
    // report every rejected document and print none.
    if !m.errors.is_empty() {
        for e in &m.errors {
            eprintln!("rejected manifest: {e}");
        }
        anyhow::bail!(
            "{} manifest document(s) in {} rejected; no matrix computed",
            m.errors.len(),
            dir.display()
        );
    }
    let mode = match enforcement {
        "always" => Mode::Always,
        "never" => Mode::Never,
        _ => Mode::Default,
    };
    let world = World::from_manifests(&m, mode);
    let compiled = Compiler::new().compile(&world);
    let mx = matrix(&world, &compiled, &probes);
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&mx.to_json()).unwrap_or_default());
    } else {
        print!("{mx}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Policy(PolicyCmd::Matrix {
        dir,
        ports,
        enforcement,
    }) = &cli.command
    {
        return matrix(dir, ports, enforcement, cli.output);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut client = moat_api::connect(&cli.socket).await.with_context(|| {
            format!(
                "connecting to moat-agent at {} (is it running? see --socket)",
                cli.socket.display()
            )
        })?;
        match cli.command {
            Cmd::Status => {
                let st = client.status(StatusRequest {}).await?.into_inner();
                print_status(&st, cli.output);
            }
            Cmd::Endpoints => {
                let mut eps = client
                    .list_endpoints(ListEndpointsRequest {})
                    .await?
                    .into_inner()
                    .endpoints;
                eps.sort_by_key(|e| e.id);
                print_endpoints(&eps, cli.output);
            }
            Cmd::Observe(a) => {
                let req = ObserveRequest {
                    follow: a.follow,
                    last: a.last,
                    pod: a.pod.unwrap_or_default(),
                    namespace: a.namespace.unwrap_or_default(),
                    verdict: a.verdict.unwrap_or_default(),
                    identity: a.identity.unwrap_or(0),
                    port: u32::from(a.port.unwrap_or(0)),
                    r#type: a.kind.unwrap_or_default(),
                };
                let mut stream = client.observe(req).await?.into_inner();
                while let Some(f) = stream.message().await? {
                    if cli.output == Output::Json {
                        println!("{}", flows::to_json(&f));
                    } else {
                        println!("{}", flows::line(&f));
                    }
                }
            }
            Cmd::Identities => {
                let ids = client.list_identities(ListIdentitiesRequest {}).await?.into_inner().identities;
                if cli.output == Output::Json {
                    let v: Vec<_> = ids
                        .iter()
                        .map(|i| json!({"id": i.id, "labels": i.labels, "inUse": i.in_use, "endpoints": i.endpoints, "reserved": i.reserved}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    let rows: Vec<Vec<String>> = ids
                        .iter()
                        .map(|i| {
                            vec![
                                i.id.to_string(),
                                if i.in_use { "yes".into() } else { "released soon".into() },
                                i.endpoints.join(","),
                                i.labels.join(","),
                            ]
                        })
                        .collect();
                    print!("{}", table::render(&["ID", "IN-USE", "LOCAL PODS", "LABELS"], &rows));
                }
            }
            Cmd::Services => {
                let svcs = client.list_services(ListServicesRequest {}).await?.into_inner().services;
                if cli.output == Output::Json {
                    let v: Vec<_> = svcs
                        .iter()
                        .map(|s| {
                            json!({
                                "namespace": s.namespace, "name": s.name, "port": s.port_name,
                                "frontends": s.frontends.iter().map(|f| json!({"address": f.address, "protocol": f.protocol, "scope": f.scope, "eligible": f.eligible})).collect::<Vec<_>>(),
                                "backends": s.backends.iter().map(|b| json!({"address": b.address, "state": b.state, "local": b.local, "pod": b.pod})).collect::<Vec<_>>(),
                                "affinityTimeout": s.affinity_timeout, "externalLocal": s.external_local, "internalLocal": s.internal_local,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    let mut rows = Vec::new();
                    for s in &svcs {
                        let name = if s.port_name.is_empty() {
                            format!("{}/{}", s.namespace, s.name)
                        } else {
                            format!("{}/{}:{}", s.namespace, s.name, s.port_name)
                        };
                        let backends = if s.backends.is_empty() {
                            "(none: connections are refused)".to_string()
                        } else {
                            s.backends
                                .iter()
                                .map(|b| {
                                    let who = if b.pod.is_empty() { String::new() } else { format!(" {}", b.pod) };
                                    format!("{}{who} ({})", b.address, b.state)
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        for (i, f) in s.frontends.iter().enumerate() {
                            rows.push(vec![
                                if i == 0 { name.clone() } else { String::new() },
                                format!("{} {}", f.address, f.protocol),
                                f.scope.clone(),
                                f.eligible.to_string(),
                                if i == 0 { backends.clone() } else { String::new() },
                            ]);
                        }
                    }
                    print!("{}", table::render(&["SERVICE", "FRONTEND", "TYPE", "ELIGIBLE", "BACKENDS"], &rows));
                }
            }
            Cmd::Drops => {
                let d = client.drops(DropsRequest {}).await?.into_inner();
                if cli.output == Output::Json {
                    let row = |c: &moat_api::v1::DropCount| json!({"reason": c.reason, "code": c.code, "pod": c.pod, "count": c.count});
                    let v = json!({"byReason": d.by_reason.iter().map(row).collect::<Vec<_>>(),
                                   "byPod": d.by_pod.iter().map(row).collect::<Vec<_>>()});
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    let rows: Vec<Vec<String>> = d
                        .by_reason
                        .iter()
                        .map(|c| vec![c.code.to_string(), c.reason.clone(), c.count.to_string()])
                        .collect();
                    print!("{}", table::render(&["CODE", "REASON", "PACKETS"], &rows));
                    let rows: Vec<Vec<String>> = d
                        .by_pod
                        .iter()
                        .map(|c| vec![c.pod.clone(), c.reason.clone(), c.count.to_string()])
                        .collect();
                    print!("\n{}", table::render(&["POD", "REASON", "PACKETS"], &rows));
                }
            }
            Cmd::Policy(PolicyCmd::Explain {
                from,
                to,
                port,
                http,
                host,
            }) => {
                let (proto, port) = parse_port(&port)?;
                let r = client
                    .explain_policy(ExplainRequest {
                        from,
                        to,
                        port: u32::from(port),
                        protocol: match proto {
                            17 => "udp",
                            132 => "sctp",
                            _ => "tcp",
                        }
                        .into(),
                        http: http.unwrap_or_default(),
                        host: host.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                if cli.output == Output::Json {
                    println!("{}", json!({"allowed": r.allowed, "explanation": r.text}));
                } else {
                    println!("{}", r.text.trim_end());
                }
            }
            // Answered offline above, without connecting.
            Cmd::Policy(PolicyCmd::Matrix { .. }) => {}
        }
        Ok(())
    })
}

fn endpoint_json(e: &Endpoint) -> serde_json::Value {
    json!({
        "id": e.id, "containerID": e.container_id, "ifname": e.ifname, "netns": e.netns,
        "pod": { "namespace": e.pod_namespace, "name": e.pod_name, "uid": e.pod_uid },
        "ipv4": e.ipv4, "hostInterface": e.host_ifname, "hostIfindex": e.host_ifindex,
        "podMAC": e.pod_mac, "hostMAC": e.host_mac, "ipam": e.ipam, "created": e.created_unix, "state": e.state,
    })
}

fn pod_name(e: &Endpoint) -> String {
    if e.pod_name.is_empty() {
        // Not a Kubernetes pod (e.g. `ctr run --cni`): show the container.
        format!("container:{}", e.container_id.chars().take(12).collect::<String>())
    } else {
        format!("{}/{}", e.pod_namespace, e.pod_name)
    }
}

fn print_endpoints(eps: &[Endpoint], out: Output) {
    if out == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&eps.iter().map(endpoint_json).collect::<Vec<_>>()).unwrap_or_default()
        );
        return;
    }
    let rows = eps
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                pod_name(e),
                e.ipv4.clone(),
                e.host_ifname.clone(),
                e.host_ifindex.to_string(),
                e.ipam.clone(),
                e.state.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print!(
        "{}",
        table::render(&["ID", "POD", "IPV4", "HOST-IF", "IFINDEX", "IPAM", "STATE"], &rows)
    );
}

fn print_status(st: &StatusReply, out: Output) {
    if out == Output::Json {
        let counters: serde_json::Map<String, serde_json::Value> =
            st.counters.iter().map(|c| (c.name.clone(), json!(c.value))).collect();
        let v = json!({
            "ready": st.ready, "version": st.version, "node": st.node_name, "podCIDR": st.pod_cidr,
            "gateway": st.gateway, "pinDir": st.pin_dir, "datapath": st.datapath, "endpoints": st.endpoints,
            "leases": st.leases, "uptimeSeconds": st.uptime_seconds, "stateDir": st.state_dir, "counters": counters,
            "manifests": st.manifest_kinds, "manifestErrors": st.manifest_errors,
            "enforcement": st.enforcement, "audit": st.audit, "policies": st.policies,
            "identities": st.identities, "policyEntries": st.policy_entries, "policyRevision": st.policy_revision,
            "trackedFlows": st.tracked_flows, "stateGeneration": st.state_generation,
            "policyCapacity": st.policy_capacity,
            "policyError": if st.policy_error.is_empty() { serde_json::Value::Null } else { json!(st.policy_error) },
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    let mode = if st.state_dir.is_empty() {
        "cluster".to_string()
    } else {
        format!("standalone ({})", st.state_dir)
    };
    let rows = vec![
        vec!["Ready".into(), if st.ready { "yes".into() } else { "no".into() }],
        vec!["Version".into(), st.version.clone()],
        vec!["Node".into(), st.node_name.clone()],
        vec!["Mode".into(), mode],
        vec!["Pod CIDR".into(), st.pod_cidr.clone()],
        vec!["Gateway".into(), st.gateway.clone()],
        vec!["Datapath".into(), format!("{} (pins in {})", st.datapath, st.pin_dir)],
        vec!["Endpoints".into(), st.endpoints.to_string()],
        vec!["IP leases".into(), st.leases.to_string()],
        vec!["Uptime".into(), format!("{}s", st.uptime_seconds)],
        vec!["Tracked flows".into(), st.tracked_flows.to_string()],
        vec![
            "Policy".into(),
            format!(
                "enforcement {}{}, {} policies, {} identities, {} of {} map entries, revision {}",
                st.enforcement,
                if st.audit { " (audit)" } else { "" },
                st.policies,
                st.identities,
                st.policy_entries,
                st.policy_capacity,
                st.policy_revision
            ),
        ],
    ];
    let mut rows = rows;
    if !st.state_dir.is_empty() {
        let mut kinds: Vec<_> = st.manifest_kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
        kinds.sort();
        let summary = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        };
        rows.push(vec!["Manifests".into(), summary]);
    }
    print!("{}", table::render(&["FIELD", "VALUE"], &rows));
    for e in &st.manifest_errors {
        println!("rejected manifest: {e}");
    }
    if !st.policy_error.is_empty() {
        println!("POLICY NOT APPLIED: {}", st.policy_error);
    }
    if !st.counters.is_empty() {
        let rows = st
            .counters
            .iter()
            .map(|c| vec![c.name.clone(), c.value.to_string()])
            .collect::<Vec<_>>();
        print!("\n{}", table::render(&["DATAPATH COUNTER", "PACKETS"], &rows));
    }
}
