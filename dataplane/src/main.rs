//! `moat-agent`: the Moat node agent.
//!
//! `moat-agent --state-dir DIR` runs a standalone node: it loads the eBPF datapath
//! (re-adopting pinned maps and links), serves the API on a unix socket for the CNI
//! plugin and `moatctl`, and keeps running until SIGINT/SIGTERM. The datapath stays in
//! place after the agent exits, so pods keep talking while it restarts.
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use moat_dataplane::agent::{self, AgentConfig};
use moat_dataplane::kernel::netdev;
use moat_dataplane::{install_cni, ipam, node, policy};

/// The conflist's default cniVersion (see `install-cni --cni-version`).
const DEFAULT_CNI_VERSION: &str = "1.0.0";

#[derive(Parser)]
#[command(
    name = "moat-agent",
    about = "Moat node agent: eBPF pod datapath, IPAM and the node API",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Install the `moat` CNI plugin binary and write the conflist (what an init-container does).
    InstallCni {
        #[arg(long, default_value = "/opt/cni/bin")]
        cni_bin_dir: PathBuf,
        #[arg(long, default_value = "/etc/cni/net.d/05-moat.conflist")]
        conf_path: PathBuf,
        /// The plugin binary to install (default: `moat` next to this binary).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Agent socket the plugin should dial (written into the conflist).
        #[arg(long, default_value = moat_api::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, default_value = "moat")]
        network_name: String,
        /// Chain the reference `portmap` plugin after moat (hostPort support).
        #[arg(long)]
        with_portmap: bool,
        /// cniVersion of the conflist. 1.0.0 by default: every supported runtime speaks it
        /// (containerd 1.6 rejects 1.1.0 results). 1.1.0 adds STATUS and GC for runtimes
        /// that speak it (containerd ≥ 2.0, CRI-O ≥ 1.31); the agent collects vanished
        /// endpoints by itself either way.
        #[arg(long, default_value = DEFAULT_CNI_VERSION, value_parser = ["1.0.0", "1.1.0"])]
        cni_version: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Standalone mode: a directory of Kubernetes manifests (may be empty).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Unix socket the API is served on (root-only).
    #[arg(long, default_value = moat_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// bpffs directory for pinned maps and links.
    #[arg(long, default_value = moat_dataplane_common::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Where leases and endpoints are persisted.
    #[arg(long, default_value = "/var/lib/moat")]
    data_dir: PathBuf,
    /// This node's pod CIDR.
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: String,
    /// Link-local gateway address every pod routes through.
    #[arg(long, default_value = "169.254.1.1")]
    gateway: Ipv4Addr,
    #[arg(long)]
    node_name: Option<String>,
    /// Source-NAT pod traffic that leaves the pod CIDR to the node's address (for
    /// networks that do not route the pod CIDR back to this node).
    #[arg(long)]
    masquerade: bool,
    /// Policy enforcement: `default` (Kubernetes semantics), `always` (every pod default
    /// deny: zero trust), `never`.
    #[arg(long, default_value = "default", value_parser = ["default", "always", "never"])]
    enforcement: String,
    /// Report would-be policy drops as AUDIT events and let the traffic through.
    #[arg(long)]
    audit: bool,
    /// Events for allowed new flows per second and CPU (0: only drops and audits).
    #[arg(long, default_value_t = 1000)]
    flow_events_per_sec: u32,
    /// ClusterIPs for Services that do not name one.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: String,
    /// Socket load balancing (translate service addresses once per connect/sendmsg). Off:
    /// services are translated per packet in the pod programs instead.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    socket_lb: bool,
    /// cgroup v2 directory the socket load balancer attaches to (default: the cgroup2 mount).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Device NodePort traffic arrives on (repeatable; default: every interface with a
    /// routable IPv4 address that is not a pod veth; `none`: no NodePort XDP).
    #[arg(long = "node-device")]
    node_devices: Vec<String>,
    /// Seconds an identity no pod uses keeps its number before it is released.
    #[arg(long, default_value_t = moat_identity::allocator::DEFAULT_GRACE_SECS)]
    identity_grace_secs: u64,
    /// Size of the policy map (entries). Applies when the map is created: a map already
    /// pinned keeps its size until its pin is removed.
    #[arg(long, default_value_t = moat_dataplane_common::MAX_POLICY_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    policy_map_entries: u32,
    /// Size of the ipcache map (prefixes with an identity); created-time like the above.
    #[arg(long, default_value_t = moat_dataplane_common::MAX_IPCACHE_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    ipcache_map_entries: u32,
    /// A range a delegated IPAM plugin (e.g. host-local) may hand out pod addresses
    /// from, besides --pod-cidr (repeatable). Other addresses are refused.
    #[arg(long = "delegated-ipam-range")]
    delegated_ipam_ranges: Vec<String>,
    /// Size of the connection tracking table (flows); created-time like the above.
    #[arg(long, default_value_t = moat_dataplane_common::MAX_CT_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    ct_map_entries: u32,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::InstallCni {
            cni_bin_dir,
            conf_path,
            plugin,
            socket,
            network_name,
            with_portmap,
            cni_version,
        }) => install_cni::run(&install_cni::InstallCni {
            cni_bin_dir,
            conf_path,
            plugin,
            socket,
            network_name,
            with_portmap,
            cni_version,
        }),
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(cli.run)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let pod_cidr = ipam::parse_cidr(&args.pod_cidr).context("--pod-cidr")?;
    let mode = match args.enforcement.as_str() {
        "always" => moat_policy_compiler::world::Mode::Always,
        "never" => moat_policy_compiler::world::Mode::Never,
        _ => moat_policy_compiler::world::Mode::Default,
    };
    let service_cidr = ipam::parse_cidr(&args.service_cidr).context("--service-cidr")?;
    // HTTP rules hook accepted sockets with sock_ops at the cgroup root, whatever the
    // socket load balancer setting.
    let http_cgroup = match &args.cgroup_root {
        Some(p) => p.clone(),
        None => netdev::cgroup2_root().context(
            "finding the cgroup v2 mount for HTTP enforcement and the socket load balancer (or pass --cgroup-root)",
        )?,
    };
    let socket_lb_cgroup = if args.socket_lb {
        Some(http_cgroup.clone())
    } else {
        tracing::info!("--socket-lb=false: services are translated per packet in from_container");
        None
    };
    let node = node::NodeConfig {
        node_name: args.node_name.unwrap_or_else(hostname),
        pod_cidr,
        gateway: args.gateway,
        pin_dir: args.pin_dir,
        data_dir: args.data_dir,
        state_dir: args.state_dir,
        policy: policy::Settings {
            mode,
            audit: args.audit,
            flow_events_per_sec: args.flow_events_per_sec,
            identity_grace_secs: args.identity_grace_secs,
        },
        service_cidr,
        socket_lb_cgroup,
        http_cgroup,
        delegated_ranges: args
            .delegated_ipam_ranges
            .iter()
            .map(|r| ipam::parse_cidr(r).with_context(|| format!("--delegated-ipam-range {r}")))
            .collect::<anyhow::Result<_>>()?,
        map_sizes: moat_dataplane::kernel::datapath::MapSizes {
            policy: args.policy_map_entries,
            ipcache: args.ipcache_map_entries,
            conntrack: args.ct_map_entries,
        },
        node_devices: if args.node_devices.is_empty() {
            netdev::node_devices()
        } else {
            args.node_devices.into_iter().filter(|d| d != "none").collect()
        },
    };
    agent::run(AgentConfig {
        node,
        socket: args.socket,
        masquerade: args.masquerade,
    })
    .await
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "node".into(), |s| s.trim().to_string())
}
