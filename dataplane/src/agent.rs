//! The running agent: who owns what, and how requests reach it.
//!
//! ```text
//!  state source thread ── Snapshot ──┐
//!  (reads + decodes manifests)       │
//!  gRPC mutations ── Command ────────┼──► node owner thread: the only owner of `Node`
//!  (CNI ADD/DEL/GC, IP leases)       │    (IPAM, endpoints, BPF maps, policy, services);
//!  periodic tick (GC, re-sync) ──────┤    handles one command at a time
//!  compile thread ── Compiled ───────┘      │ ▲
//!     ▲                                     │ │ a new state's full policy compile
//!     └──────────── CompileJob ─────────────┘ │ runs there; pods added or removed
//!                                              │ recompile only their identities here
//!                                              │ publishes Arc<View> after each change
//!                                              ▼
//!  gRPC reads, event reader ◄──── watch channel (latest View, never waits)
//!  ring buffer ──► event reader task ──► FlowStore ──► `moatctl observe --follow`
//! ```
//!
//! Nothing slow runs under a lock a request waits for: manifests are read and decoded
//! on the source thread, whole-policy compiles run on the compile thread, events are
//! decoded against the published view, and reads are answered from the view. A CNI
//! request waits only for its own command, whose policy work is proportional to the pod
//! it adds or removes.
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::endpoint::{EndpointRecord, NewEndpoint, Owner};
use crate::events::FlowStore;
use crate::kernel::{masquerade, netdev};
use crate::node::{CompileJob, Node, NodeConfig};
use crate::source::manifest_dir::ManifestDir;
use crate::source::{Snapshot, StateSource};
use crate::view::View;
use moat_policy_compiler::compile::Compiled;

/// Everything `moat-agent` needs to run a node.
pub struct AgentConfig {
    pub node: NodeConfig,
    /// Unix socket the API is served on.
    pub socket: PathBuf,
    /// SNAT pod traffic leaving the pod CIDR.
    pub masquerade: bool,
}

type Reply<T> = oneshot::Sender<anyhow::Result<T>>;

/// A request for the node owner.
pub enum Command {
    AllocateIp(Owner, Reply<Ipv4Addr>),
    AddEndpoint(Box<NewEndpoint>, Reply<EndpointRecord>),
    DeleteEndpoint(Owner, Reply<Option<EndpointRecord>>),
    /// CNI GC: the attachments that are still valid.
    Gc(Vec<Owner>, Reply<(Vec<EndpointRecord>, u32)>),
    /// A new desired state from the state source.
    State(Snapshot),
    /// A full policy compile finished on the compile thread (`Err`: it panicked).
    Compiled(Box<CompileJob>, Result<Box<Compiled>, String>),
    /// Finish the current work and stop (the pinned datapath stays).
    Shutdown,
}

/// Why a command got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the node owner is not running")]
    Gone,
    #[error("the node owner did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// How long a request waits for the node owner (a CNI runtime gives up after minutes;
/// an answer this late means something is stuck, and the plugin rolls back).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// How often the owner does its periodic work when no command arrives.
const TICK: Duration = Duration::from_millis(250);
/// How long the owner must be idle before it finishes a CNI DEL's work (the plugin is
/// deleting the veth meanwhile).
const RELEASE_IDLE: Duration = Duration::from_millis(30);

/// The handle the API and the event reader hold: commands in, views out.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<Command>,
    view: watch::Receiver<Arc<View>>,
}

impl NodeHandle {
    /// The latest published view (never waits).
    #[must_use]
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.borrow())
    }

    /// Sends a command to the owner and waits for its answer, up to the deadline.
    ///
    /// # Errors
    /// When the owner is gone, does not answer in time, or the command failed.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| CallError::Gone)?;
        match tokio::time::timeout(COMMAND_DEADLINE, rx).await {
            Err(_) => Err(CallError::Timeout(COMMAND_DEADLINE)),
            Ok(Err(_)) => Err(CallError::Gone),
            Ok(Ok(r)) => r.map_err(CallError::Failed),
        }
    }
}

/// Starts the owner thread for `node`. Returns the handle and the thread (it ends after
/// `Command::Shutdown`).
///
/// # Errors
/// When the thread cannot be started.
pub fn spawn_owner(node: Node) -> std::io::Result<(NodeHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (view_tx, view_rx) = watch::channel(Arc::new(node.view()));
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<CompileJob>();
    let results = tx.clone();
    // Test hook: a slower compile makes the window in which CNI requests overtake a
    // compile wide enough to test (it only delays; default none).
    let delay = std::env::var("MOAT_TEST_COMPILE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    // The compile thread ends when the owner drops its job sender.
    std::thread::Builder::new()
        .name("policy-compile".into())
        .spawn(move || {
            for job in jobs_rx {
                tracing::info!(
                    generation = job.snapshot.generation,
                    "compiling the policy of a new state"
                );
                let t = std::time::Instant::now();
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                // A compiler bug must not leave the owner waiting for a result forever
                // (it would never apply a newer state): a panic is reported back.
                let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.job.run()))
                    .map(Box::new)
                    .map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(ToString::to_string))
                            .unwrap_or_else(|| "panic".into())
                    });
                tracing::debug!(
                    generation = job.snapshot.generation,
                    compile_ms = t.elapsed().as_secs_f64() * 1e3,
                    "full policy compile"
                );
                if results.send(Command::Compiled(Box::new(job), compiled)).is_err() {
                    return;
                }
            }
        })?;
    let thread = std::thread::Builder::new()
        .name("node-owner".into())
        .spawn(move || owner_loop(node, &rx, &view_tx, &jobs_tx))?;
    Ok((NodeHandle { tx, view: view_rx }, thread))
}

fn owner_loop(mut node: Node, rx: &Receiver<Command>, view: &watch::Sender<Arc<View>>, jobs: &Sender<CompileJob>) {
    let publish = |node: &Node| {
        crate::reap::later(view.send_replace(Arc::new(node.view())));
    };
    let submit = |job: Option<CompileJob>| {
        if let Some(job) = job {
            let _ = jobs.send(job);
        }
    };
    loop {
        // Deleted endpoints are released once no command came for a moment.
        let wait = if node.releases_pending() { RELEASE_IDLE } else { TICK };
        match rx.recv_timeout(wait) {
            Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Command::State(mut s)) => {
                // Only the newest desired state matters: skip ones already superseded.
                let mut others = Vec::new();
                while let Ok(c) = rx.try_recv() {
                    match c {
                        Command::State(newer) => s = newer,
                        c => others.push(c),
                    }
                }
                let t = std::time::Instant::now();
                submit(node.set_state(s));
                publish(&node);
                tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "owner: new state");
                for c in others {
                    if !handle(&mut node, c, &publish, &submit) {
                        return;
                    }
                }
            }
            Ok(c) => {
                if !handle(&mut node, c, &publish, &submit) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if node.release_deleted() {
                    publish(&node);
                }
            }
        }
        let (did, job) = node.tick();
        submit(job);
        if did {
            publish(&node);
        }
    }
}

/// Runs one command; the view is published before the answer is sent, so a client that
/// reads right after its request sees the change. Returns false on shutdown.
fn handle(node: &mut Node, c: Command, publish: &impl Fn(&Node), submit: &impl Fn(Option<CompileJob>)) -> bool {
    match c {
        Command::AllocateIp(owner, reply) => {
            let r = node.allocate_ip(&owner);
            publish(node);
            let _ = reply.send(r);
        }
        Command::AddEndpoint(new, reply) => {
            let t = std::time::Instant::now();
            let r = node.add_endpoint(*new);
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "owner: add endpoint");
            publish(node);
            let _ = reply.send(r);
        }
        Command::DeleteEndpoint(owner, reply) => {
            // Answer once the endpoint is forgotten; detaching its programs happens after
            // the answer, off the CNI DEL's critical path (the plugin deletes the veth
            // meanwhile), and before the next command.
            let r = node.forget_endpoint(&owner);
            let forgotten = r.as_ref().ok().cloned().flatten();
            publish(node);
            let _ = reply.send(r);
            if let Some(rec) = forgotten {
                // The rest (policy of its identity, its netns) waits until the owner is
                // idle: right now the plugin is deleting the veth, and work here would
                // compete with it for the CPU and slow the DEL down.
                tracing::info!(endpoint = rec.id, pod = %rec.pod(), "endpoint deleted by CNI DEL");
                node.defer_release(rec);
            }
        }
        Command::Gc(valid, reply) => {
            let r = node.gc(&valid);
            publish(node);
            let _ = reply.send(r);
        }
        Command::State(s) => {
            submit(node.set_state(s));
            publish(node);
        }
        Command::Compiled(job, compiled) => {
            let t = std::time::Instant::now();
            submit(match compiled {
                Ok(compiled) => node.compiled(*job, *compiled),
                Err(why) => node.compile_failed(*job, &why),
            });
            publish(node);
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "owner: compile applied");
        }
        Command::Shutdown => return false,
    }
    true
}

/// Runs the agent until SIGINT/SIGTERM. The datapath stays in place afterwards, so pods
/// keep talking while the agent restarts.
///
/// # Errors
/// When the node cannot start or the API cannot be served.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    if let Some(dir) = &cfg.node.state_dir {
        if !dir.is_dir() {
            bail!("--state-dir {}: not a directory", dir.display());
        }
    }
    if netdev::ensure_bpffs(Path::new("/sys/fs/bpf")).context("mounting bpffs at /sys/fs/bpf")? {
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    match netdev::ensure_tracefs(Path::new("/sys/kernel/tracing")) {
        Ok(true) => tracing::info!("mounted tracefs at /sys/kernel/tracing"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "tracefs unavailable (runtime hooks will need it)"),
    }
    // Pods reach other nodes and the outside through this node's stack.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(error = %e, "could not enable net.ipv4.ip_forward; pod traffic leaving the node will not be routed");
    }
    if cfg.masquerade {
        masquerade::ensure(&cfg.node.pod_cidr.to_string()).context("--masquerade")?;
        tracing::info!(cidr = %cfg.node.pod_cidr, "masquerading pod traffic that leaves the pod CIDR");
    }
    let source = ManifestDir::open(
        cfg.node.state_dir.clone(),
        Some(cfg.node.data_dir.join("last-good-manifests")),
    );
    let pin_dir = cfg.node.pin_dir.clone();
    let mut node = Node::open(cfg.node, source.snapshot()).context("starting the node")?;
    tracing::info!(kinds = ?node.state.kinds(), enforcement = crate::policy::mode_name(node.enforcer.settings.mode), audit = node.enforcer.settings.audit, "policy in force");
    let events = node.take_events();
    let (handle, owner) = spawn_owner(node).context("starting the node owner")?;
    let stats = crate::kernel::stats::Stats::open(&pin_dir)
        .map_err(|e| tracing::warn!("no counters for the API: {e}"))
        .ok();

    let tx = handle.tx.clone();
    crate::source::spawn(Box::new(source), move |s| tx.send(Command::State(s)).is_ok())
        .context("starting the state source")?;
    let flows = Arc::new(Mutex::new(FlowStore::default()));
    if let Some(rb) = events {
        tokio::spawn(crate::events::run(rb, handle.clone(), flows.clone()));
    }

    let listener = bind(&cfg.socket)?;
    tracing::info!(socket = %cfg.socket.display(), "serving the agent API");
    let incoming = root_only(tokio_stream::wrappers::UnixListenerStream::new(listener));
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down; pinned datapath stays in place");
    };
    let service = crate::api::AgentService::new(handle.clone(), flows, stats);
    let served = tonic::transport::Server::builder()
        // Every call ends: a unary call within its deadline (mutations wait at most
        // COMMAND_DEADLINE for the owner), and a stream whose client went away is noticed
        // by HTTP/2 keepalive even when no event would be sent to it.
        .timeout(COMMAND_DEADLINE + Duration::from_secs(5))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .concurrency_limit_per_connection(64)
        .add_service(moat_api::AgentServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving the API");
    let _ = std::fs::remove_file(&cfg.socket);
    // Let the owner finish what it is doing (a map update half-applied would be redone
    // by the next agent, but there is no reason to cut it).
    let _ = handle.tx.send(Command::Shutdown);
    let _ = tokio::task::spawn_blocking(move || owner.join()).await;
    served
}

/// Accepts only root peers (`SO_PEERCRED`): the socket file is 0600, but a socket passed
/// or bind-mounted elsewhere must not give a pod or a user the node's endpoint API.
fn root_only(
    incoming: tokio_stream::wrappers::UnixListenerStream,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    use tokio_stream::StreamExt as _;
    incoming.filter(|conn| match conn {
        Ok(s) => match s.peer_cred() {
            Ok(cred) if cred.uid() == 0 => true,
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused an API connection from a non-root peer");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused an API connection whose peer is unknown");
                false
            }
        },
        Err(_) => true,
    })
}

fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!("{}: another agent is already serving on this socket", socket.display());
        }
        std::fs::remove_file(socket).with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
