//! `moatctl`: observe and inspect a Moat node through the agent's API.
mod table;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use moat_api::v1::{Endpoint, ListEndpointsRequest, StatusReply, StatusRequest};
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
    if !st.counters.is_empty() {
        let rows = st
            .counters
            .iter()
            .map(|c| vec![c.name.clone(), c.value.to_string()])
            .collect::<Vec<_>>();
        print!("\n{}", table::render(&["DATAPATH COUNTER", "PACKETS"], &rows));
    }
}
