//! The agent's view of its node: leases, endpoints and the datapath, kept consistent.
//!
//! Every change is written to the data dir before it is acknowledged, so a restarted
//! agent re-adopts exactly what its predecessor had promised (leases, endpoint ids) and
//! reconciles the pinned maps and links against it.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use moat_dataplane_common::EndpointInfo;
use moat_policy_compiler::compile::Compiled;
use serde::{Deserialize, Serialize};

use crate::endpoint::{EndpointRecord, NewEndpoint};
use crate::ipam::{Cidr, Ipam, Owner};
use crate::kernel::datapath::{Datapath, MapSizes};
use crate::kernel::netdev;
use crate::persist::{read_json_recovering, write_json};
use crate::policy::enforcer::Job;
use crate::policy::{DoesNotFit, Enforcer, Settings};
use crate::services::LoadBalancer;
use crate::source::Snapshot;
use crate::view::View;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_name: String,
    pub pod_cidr: Cidr,
    pub gateway: Ipv4Addr,
    pub pin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub policy: Settings,
    /// ClusterIPs for services that name none.
    pub service_cidr: Cidr,
    /// cgroup v2 directory the socket load balancer attaches to; `None`: socket LB off.
    pub socket_lb_cgroup: Option<PathBuf>,
    /// cgroup v2 directory where HTTP enforcement hooks accepted sockets (sock_ops).
    pub http_cgroup: PathBuf,
    /// Devices NodePort traffic arrives on (XDP `node_ingress`).
    pub node_devices: Vec<String>,
    /// Sizes for maps created at load (pinned maps keep theirs).
    pub map_sizes: MapSizes,
    /// Ranges a delegated IPAM plugin may lease pod addresses from, besides the pod CIDR.
    pub delegated_ranges: Vec<Cidr>,
}

/// Endpoints and leases, in one file so they never disagree after a crash.
#[derive(Debug, Default, Deserialize)]
struct NodeState {
    next_id: u32,
    endpoints: Vec<EndpointRecord>,
    ipam: Option<Ipam>,
}

/// `NodeState` as written (borrowed: no copy of the records per write).
#[derive(Serialize)]
struct NodeStateRef<'a> {
    next_id: u32,
    endpoints: Vec<&'a EndpointRecord>,
    ipam: &'a Ipam,
}

/// Reads the node state, recovering a corrupt or deleted file from its previous
/// version; state written by older agents (two files) is read once and migrated.
fn read_node_state(data_dir: &Path) -> anyhow::Result<NodeState> {
    if let Some(s) = read_json_recovering::<NodeState>(&data_dir.join(STATE_FILE))? {
        return Ok(s);
    }
    #[derive(Default, Deserialize)]
    struct LegacyEndpoints {
        next_id: u32,
        endpoints: Vec<EndpointRecord>,
    }
    let legacy: LegacyEndpoints = read_json_recovering(&data_dir.join(LEGACY_ENDPOINTS_FILE))?.unwrap_or_default();
    Ok(NodeState {
        next_id: legacy.next_id,
        endpoints: legacy.endpoints,
        ipam: read_json_recovering(&data_dir.join(LEGACY_IPAM_FILE))?,
    })
}

/// A full policy compile for the compile thread, with the state it compiles.
pub struct CompileJob {
    pub snapshot: Snapshot,
    pub job: Job,
}

pub struct Node {
    pub cfg: NodeConfig,
    pub ipam: Ipam,
    next_id: u32,
    pub endpoints: BTreeMap<Owner, EndpointRecord>,
    datapath: Datapath,
    pub started: Instant,
    /// The desired state from the state source (services follow it at once).
    pub state: Snapshot,
    /// The newest state whose policy compile has finished (applied, or refused because
    /// it does not fit): what `moatctl status` reports as the state generation.
    pub done_state: Snapshot,
    /// Why the newest state's policy is not enforced, for `moatctl status`.
    pub policy_error: Option<String>,
    /// A full compile is running on the compile thread.
    compiling: bool,
    /// Another full compile is wanted when it ends (a newer state, or the re-sync).
    compile_again: bool,
    pub enforcer: Enforcer,
    pub lb: LoadBalancer,
    last_sync: Instant,
    last_gc: Instant,
    /// Host veths of deleted endpoints, checked again after `RELEASE_GRACE`.
    released: Vec<(Owner, String, Instant)>,
    /// Endpoints deleted by CNI DEL whose release waits for an idle moment.
    to_release: Vec<(EndpointRecord, Instant)>,
}

/// How often endpoints are checked for a vanished host veth.
const GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long after a delete a host veth that still exists is deleted.
const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// How often policy and services are re-synced without a change of desired state.
const RESYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

const STATE_FILE: &str = "node-state.json";
const LEGACY_ENDPOINTS_FILE: &str = "endpoints.json";
const LEGACY_IPAM_FILE: &str = "ipam.json";

impl Node {
    /// Loads persisted state and the datapath, then reconciles them.
    ///
    /// # Errors
    /// When persisted state is unreadable, was made for another pod CIDR, or the
    /// datapath cannot be loaded.
    pub fn open(cfg: NodeConfig, state: Snapshot) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let file = read_node_state(&cfg.data_dir)?;
        let ipam = file.ipam.unwrap_or_else(|| Ipam::new(cfg.pod_cidr));
        if ipam.cidr() != cfg.pod_cidr {
            bail!(
                "{}: leases were made from pod CIDR {} but --pod-cidr is {}; release them or keep the CIDR",
                cfg.data_dir.join(STATE_FILE).display(),
                ipam.cidr(),
                cfg.pod_cidr
            );
        }
        let datapath = Datapath::load_sized(&cfg.pin_dir, cfg.map_sizes).context("loading the eBPF datapath")?;
        let (policy_cap, _) = datapath.capacity();
        if policy_cap != cfg.map_sizes.policy as usize {
            tracing::warn!(
                pinned = policy_cap,
                requested = cfg.map_sizes.policy,
                "the pinned policy map keeps its size; remove its pin (or reboot) to resize"
            );
        }
        let endpoints = file.endpoints.into_iter().map(|e| (e.owner(), e)).collect();
        let enforcer = Enforcer::open(cfg.policy, &cfg.data_dir, &datapath)?;
        let lb = LoadBalancer::open(cfg.service_cidr, &cfg.data_dir, &datapath)?;
        let mut datapath = datapath;
        match &cfg.socket_lb_cgroup {
            Some(cg) => datapath
                .attach_socket_lb(cg)
                .with_context(|| format!("attaching the socket load balancer to cgroup {}", cg.display()))?,
            None => datapath.detach_socket_lb(),
        }
        datapath
            .attach_http(&cfg.http_cgroup)
            .with_context(|| format!("attaching HTTP enforcement to cgroup {}", cfg.http_cgroup.display()))?;
        // The node's own sockets use the socket load balancer too.
        match netdev::netns_cookie(None) {
            Ok(c) => datapath.serve_netns(c)?,
            Err(e) => tracing::warn!(error = %e, "no netns cookie for the node; its sockets are not load-balanced"),
        }
        for dev in &cfg.node_devices {
            datapath
                .attach_node_device(dev)
                .with_context(|| format!("attaching NodePort XDP to node device {dev}"))?;
        }
        let mut node = Self {
            cfg,
            ipam,
            next_id: file.next_id.max(1),
            endpoints,
            datapath,
            started: Instant::now(),
            done_state: state.clone(),
            policy_error: None,
            compiling: false,
            compile_again: false,
            state,
            enforcer,
            lb,
            last_sync: Instant::now(),
            last_gc: Instant::now(),
            released: Vec::new(),
            to_release: Vec::new(),
        };
        // Endpoints whose pod vanished while no agent ran go first: their leases and
        // entries are freed instead of lingering as "not attached".
        node.collect_vanished();
        // Policy first: re-adopted endpoints keep the policy the maps already hold, and
        // the recompiled one replaces it make-before-break.
        node.sync_policy_at_start()?;
        node.reconcile();
        node.sync_policy_at_start()?;
        node.persist()?;
        Ok(node)
    }

    /// A policy that does not fit the maps does not stop the agent: the maps keep what
    /// the previous agent enforced, status reports it, and ADDs fail until it fits.
    fn sync_policy_at_start(&mut self) -> anyhow::Result<()> {
        let inputs = Arc::clone(&self.state.policy);
        let r = self.enforcer.sync(
            &mut self.datapath,
            self.endpoints.values(),
            inputs,
            netdev::host_ipv4s(),
        );
        self.reset_unjudged();
        match r {
            Err(e) if e.is::<DoesNotFit>() => {
                tracing::error!("applying policy: {e:#}; the maps keep what they hold");
                self.policy_error = Some(format!("{e:#}"));
            }
            r => {
                r.context("applying policy")?;
            }
        }
        self.sync_services().context("applying services")?;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Recompiles policy for pods that came or went (only their identities' entries),
    /// under the state whose policy is in force.
    ///
    /// # Errors
    /// When the change does not fit the maps or a map update fails (what is enforced
    /// stays).
    pub fn refresh_policy(&mut self) -> anyhow::Result<usize> {
        let r = self
            .enforcer
            .refresh(&mut self.datapath, self.endpoints.values(), netdev::host_ipv4s());
        self.reset_unjudged();
        Ok(r? + self.sync_services()?)
    }

    /// Connections to ports that just came under HTTP rules were accepted before the rules
    /// existed, so sock_ops never put them under enforcement: a client could keep one
    /// open and send `GET /admin` later. They are reset (off the owner thread); clients
    /// reconnect into enforcement.
    fn reset_unjudged(&mut self) {
        let targets: Vec<(String, (Ipv4Addr, u16))> = self
            .enforcer
            .http_new
            .drain(..)
            .filter_map(|(ip, port)| {
                let ep = self.endpoints.values().find(|e| e.ipv4 == ip)?;
                Some((ep.netns.clone(), (ip, port)))
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        std::thread::spawn(move || {
            for (netns, local) in targets {
                match crate::services::sock_destroy::destroy_tcp_to(std::path::Path::new(&netns), local) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(?local, n, "reset connections opened before the port's HTTP rules"),
                    Err(e) => tracing::warn!(?local, error = %e, "resetting connections opened before HTTP rules"),
                }
            }
        });
    }

    /// Services follow the newest state and the endpoints at once (their compile is
    /// cheap); UDP sockets connected to removed backends are closed.
    fn sync_services(&mut self) -> anyhow::Result<usize> {
        // Node addresses that NodePorts listen on: not loopback, not link-local.
        let node_ips: Vec<Ipv4Addr> = netdev::host_ipv4s()
            .into_iter()
            .filter(|ip| !ip.is_loopback() && !ip.is_link_local())
            .collect();
        let lb_updates = self.lb.sync(
            &mut self.datapath,
            self.endpoints.values(),
            self.state.objects.iter(),
            self.state.generation,
            &self.cfg.node_name,
            node_ips,
        )?;
        let removed_udp = std::mem::take(&mut self.lb.removed_udp);
        if !removed_udp.is_empty() {
            // Connected UDP sockets translated to a removed backend would keep sending to
            // it: close them so their applications reconnect.
            let sockets = self.datapath.translated_sockets(&removed_udp);
            let pods: std::collections::BTreeSet<PathBuf> =
                self.endpoints.values().map(|e| PathBuf::from(&e.netns)).collect();
            let netns: Vec<Option<PathBuf>> = std::iter::once(None).chain(pods.into_iter().map(Some)).collect();
            let n = crate::services::sock_destroy::destroy_connected_udp(&netns, &sockets);
            if n > 0 {
                tracing::info!(sockets = n, "closed UDP sockets connected to removed backends");
            }
        }
        Ok(lb_updates)
    }

    /// Takes a new desired state from the state source: services follow at once; the
    /// policy compile is returned to run on the compile thread (or queued behind the one
    /// running there).
    pub fn set_state(&mut self, state: Snapshot) -> Option<CompileJob> {
        crate::reap::later(std::mem::replace(&mut self.state, state));
        if let Err(e) = self.sync_services() {
            tracing::error!("applying services: {e:#}");
        }
        self.start_compile()
    }

    /// A full compile of the newest state, unless one is running (then it follows it).
    fn start_compile(&mut self) -> Option<CompileJob> {
        if self.compiling {
            self.compile_again = true;
            return None;
        }
        self.compiling = true;
        self.compile_again = false;
        self.last_sync = Instant::now();
        let inputs = Arc::clone(&self.state.policy);
        let job = self
            .enforcer
            .prepare(inputs, self.endpoints.values(), netdev::host_ipv4s());
        Some(CompileJob {
            snapshot: self.state.clone(),
            job,
        })
    }

    /// Applies a finished compile (brought up to the endpoints of now). Returns the next
    /// compile when one was asked for meanwhile.
    pub fn compiled(&mut self, done: CompileJob, compiled: Compiled) -> Option<CompileJob> {
        self.compiling = false;
        let generation = done.snapshot.generation;
        let r = self.enforcer.finish(
            &mut self.datapath,
            done.job,
            compiled,
            self.endpoints.values(),
            netdev::host_ipv4s(),
        );
        self.reset_unjudged();
        match r {
            Ok(_) => self.policy_error = None,
            Err(e) if e.is::<DoesNotFit>() => {
                // Keep enforcing the last state that fit (kept up to date with the
                // endpoints); the newer one waits for a change that fits.
                let msg = format!(
                    "state generation {generation}: {e:#}; enforcing the policy of generation {} instead",
                    self.enforcer.inputs.generation
                );
                if self.policy_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!("{msg}");
                }
                self.policy_error = Some(msg);
            }
            Err(e) => {
                tracing::error!("applying policy: {e:#}");
                self.policy_error = Some(format!("{e:#}"));
            }
        }
        if generation >= self.done_state.generation {
            crate::reap::later(std::mem::replace(&mut self.done_state, done.snapshot));
        }
        if self.compile_again {
            self.start_compile()
        } else {
            None
        }
    }

    /// A full compile that failed (a compiler bug): the maps keep the policy in force,
    /// status says why, and the next state or re-sync tries again.
    pub fn compile_failed(&mut self, done: CompileJob, why: &str) -> Option<CompileJob> {
        self.compiling = false;
        let msg = format!(
            "state generation {}: the policy compiler failed ({why}); enforcing the policy of generation {} instead",
            done.snapshot.generation, self.enforcer.inputs.generation
        );
        tracing::error!("{msg}");
        self.policy_error = Some(msg);
        if done.snapshot.generation >= self.done_state.generation {
            crate::reap::later(std::mem::replace(&mut self.done_state, done.snapshot));
        }
        if self.compile_again {
            self.start_compile()
        } else {
            None
        }
    }

    /// Periodic work: endpoint garbage collection, and a full re-compile every few
    /// seconds (node addresses may change, identities past their grace period are
    /// released). Returns whether anything was done that readers may see, and the
    /// compile to run.
    pub fn tick(&mut self) -> (bool, Option<CompileJob>) {
        let mut did = false;
        if self
            .to_release
            .first()
            .is_some_and(|(_, at)| at.elapsed() >= RELEASE_GRACE)
        {
            did |= self.release_deleted();
        }
        if !self.released.is_empty() {
            self.sweep_released();
        }
        if self.last_gc.elapsed() >= GC_INTERVAL {
            self.last_gc = Instant::now();
            did |= !self.collect_vanished().is_empty();
        }
        let mut job = None;
        if self.last_sync.elapsed() >= RESYNC_INTERVAL && !self.compiling {
            if let Err(e) = self.sync_services() {
                tracing::error!("applying services: {e:#}");
            }
            job = self.start_compile();
            did = true;
        }
        (did, job)
    }

    /// The event ring buffer (once).
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.datapath.take_events()
    }

    /// A read-only snapshot for the API and the event reader.
    #[must_use]
    pub fn view(&self) -> View {
        View::new(self)
    }

    #[must_use]
    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    /// Makes maps and links match the endpoint records: re-attach live endpoints
    /// (swapping in this agent's programs), drop what belongs to no endpoint.
    fn reconcile(&mut self) {
        let owners: Vec<Owner> = self.endpoints.keys().cloned().collect();
        for owner in owners {
            let rec = self.endpoints[&owner].clone();
            let state = match self.install(&rec) {
                Ok(info) => {
                    let e = self.endpoints.get_mut(&owner).expect("present");
                    e.host_ifindex = info.ifindex;
                    e.host_mac = netdev::format_mac(&info.host_mac);
                    "ready".to_string()
                }
                Err(err) => {
                    // Never leave a pod's veth up without its programs: remove it (the
                    // pod loses its network, and its runtime re-creates it).
                    self.datapath.remove_endpoint(rec.ipv4);
                    self.datapath.detach(&rec.host_ifname);
                    delete_orphan(&rec.host_ifname);
                    format!("not attached: {err:#}")
                }
            };
            tracing::info!(endpoint = rec.id, pod = %format!("{}/{}", rec.pod_namespace, rec.pod_name), %state, "re-adopted endpoint");
            self.endpoints.get_mut(&owner).expect("present").state = state;
        }
        let live_ifs: Vec<String> = self
            .endpoints
            .values()
            .filter(|e| e.state == "ready")
            .map(|e| e.host_ifname.clone())
            .collect();
        for ifname in self.datapath.pinned_interfaces() {
            if !live_ifs.contains(&ifname) {
                // Moat attached to it, but no record says whose it is (state lost or
                // rolled back): detaching alone would leave the pod open.
                delete_orphan(&ifname);
                self.datapath.detach(&ifname);
            }
        }
        let live_ips: Vec<Ipv4Addr> = self
            .endpoints
            .values()
            .filter(|e| e.state == "ready")
            .map(|e| e.ipv4)
            .collect();
        for (ip, info) in self.datapath.endpoint_entries() {
            if !live_ips.contains(&ip) {
                // Attached to (the entry goes in before the filters) but owned by no
                // record: the pod's veth must not stay without its programs. Only a pod
                // veth name, and none a live endpoint uses (the index may be reused).
                if let Some(ifname) = netdev::link_name(info.ifindex) {
                    if ifname.starts_with("lxc") && !live_ifs.contains(&ifname) {
                        delete_orphan(&ifname);
                    }
                }
                self.datapath.remove_endpoint(ip);
            }
        }
    }

    /// Map entry + tcx attachment for one endpoint. The map entry goes in first so
    /// the program never sees its own pod as unknown (it would drop it as spoofed).
    fn install(&mut self, rec: &EndpointRecord) -> anyhow::Result<EndpointInfo> {
        let ifindex =
            netdev::ifindex(&rec.host_ifname).with_context(|| format!("host interface {}", rec.host_ifname))?;
        let host_mac =
            netdev::mac(&rec.host_ifname).with_context(|| format!("MAC of host interface {}", rec.host_ifname))?;
        let pod_mac = netdev::parse_mac(&rec.pod_mac)
            .with_context(|| format!("endpoint {}: podMac {:?} is not a MAC address", rec.id, rec.pod_mac))?;
        let info = EndpointInfo {
            ifindex,
            endpoint_id: rec.id,
            pod_mac,
            host_mac,
            flags: 0,
        };
        self.datapath.upsert_endpoint(rec.ipv4, info)?;
        self.datapath.attach(&rec.host_ifname)?;
        netdev::disable_ipv6(&rec.host_ifname)
            .with_context(|| format!("turning IPv6 off on host interface {}", rec.host_ifname))?;
        if rec.netns_cookie != 0 {
            self.datapath.serve_netns(rec.netns_cookie)?;
        }
        Ok(info)
    }

    fn persist(&self) -> anyhow::Result<()> {
        let state = NodeStateRef {
            next_id: self.next_id,
            endpoints: self.endpoints.values().collect(),
            ipam: &self.ipam,
        };
        write_json(&self.cfg.data_dir.join(STATE_FILE), &state)?;
        for legacy in [LEGACY_ENDPOINTS_FILE, LEGACY_IPAM_FILE] {
            let _ = std::fs::remove_file(self.cfg.data_dir.join(legacy));
        }
        Ok(())
    }

    /// # Errors
    /// When the CIDR is exhausted or the lease cannot be persisted.
    pub fn allocate_ip(&mut self, owner: &Owner) -> anyhow::Result<Ipv4Addr> {
        let ip = self.ipam.allocate(owner)?;
        self.persist()?;
        Ok(ip)
    }

    /// Registers a wired interface and attaches the datapath to it. Registering the
    /// same attachment again replaces the old record (a retried ADD).
    ///
    /// # Errors
    /// When the host interface is missing or the datapath cannot attach.
    pub fn add_endpoint(&mut self, new: NewEndpoint) -> anyhow::Result<EndpointRecord> {
        let rules = crate::api::validate::AddressRules {
            pod_cidr: self.cfg.pod_cidr,
            delegated_ranges: self.cfg.delegated_ranges.clone(),
            gateway: self.cfg.gateway,
            node_ips: netdev::host_ipv4s(),
        };
        crate::api::validate::pod_address(new.ipv4, new.ipam != "agent", &rules).map_err(anyhow::Error::msg)?;
        if new.ipam == "agent" && self.ipam.lookup(&new.owner) != Some(new.ipv4) {
            bail!(
                "endpoint {}/{}: ipv4 {} is not leased to this attachment",
                new.owner.container_id,
                new.owner.ifname,
                new.ipv4
            );
        }
        if let Some(other) = self
            .endpoints
            .values()
            .find(|e| e.ipv4 == new.ipv4 && e.owner() != new.owner)
        {
            bail!(
                "ipv4 {} already belongs to endpoint {} ({}/{})",
                new.ipv4,
                other.id,
                other.pod_namespace,
                other.pod_name
            );
        }
        let id = match self.endpoints.get(&new.owner) {
            Some(old) => {
                // A retried ADD may come with another address (delegated IPAM).
                if old.ipv4 != new.ipv4 {
                    self.datapath.remove_endpoint(old.ipv4);
                }
                old.id
            }
            None => {
                self.next_id += 1;
                self.next_id - 1
            }
        };
        let mut rec = EndpointRecord {
            id,
            container_id: new.owner.container_id.clone(),
            ifname: new.owner.ifname.clone(),
            netns: new.netns,
            pod_namespace: new.pod_namespace,
            pod_name: new.pod_name,
            pod_uid: new.pod_uid,
            ipv4: new.ipv4,
            host_ifname: new.host_ifname,
            host_ifindex: 0,
            pod_mac: new.pod_mac,
            host_mac: String::new(),
            ipam: new.ipam,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            state: "ready".into(),
            netns_cookie: 0,
        };
        // The path must be a network namespace, and not the node's own.
        rec.netns_cookie = netdev::netns_cookie(Some(Path::new(&rec.netns)))
            .with_context(|| format!("netns {}: not a network namespace", rec.netns))?;
        if netdev::netns_cookie(None).is_ok_and(|own| own == rec.netns_cookie) {
            bail!("netns {}: the node's own network namespace, not a pod's", rec.netns);
        }
        // Identity and policy for the pod go in before its programs are attached, so its
        // first packet already meets its policy.
        let previous = self.endpoints.insert(new.owner.clone(), rec.clone());
        let t = Instant::now();
        let synced = self.refresh_policy().context("applying policy for the new endpoint");
        let policy_ms = t.elapsed().as_secs_f64() * 1e3;
        let installed = synced.and_then(|_| self.install(&rec));
        tracing::debug!(
            policy_ms,
            attach_ms = t.elapsed().as_secs_f64() * 1e3 - policy_ms,
            "add_endpoint timing"
        );
        match installed {
            Ok(info) => {
                rec.host_ifindex = info.ifindex;
                rec.host_mac = netdev::format_mac(&info.host_mac);
            }
            Err(e) => {
                self.datapath.remove_endpoint(rec.ipv4);
                self.datapath.detach(&rec.host_ifname);
                match previous {
                    Some(p) => self.endpoints.insert(new.owner, p),
                    None => self.endpoints.remove(&new.owner),
                };
                let _ = self.refresh_policy();
                return Err(e);
            }
        }
        self.endpoints.insert(new.owner, rec.clone());
        self.persist()?;
        tracing::info!(endpoint = rec.id, pod = %format!("{}/{}", rec.pod_namespace, rec.pod_name), ip = %rec.ipv4, ifname = %rec.host_ifname, "endpoint added");
        Ok(rec)
    }

    /// Removes an attachment's endpoint, datapath state and lease. Idempotent.
    ///
    /// # Errors
    /// When the change cannot be persisted.
    pub fn delete_endpoint(&mut self, owner: &Owner) -> anyhow::Result<Option<EndpointRecord>> {
        let rec = self.forget_endpoint(owner)?;
        if let Some(rec) = &rec {
            self.release_endpoint(rec);
        }
        Ok(rec)
    }

    /// The part of a delete that the CNI DEL waits for: the endpoint's record, its
    /// endpoint-map entry (its address no longer leads to its veth) and its lease, persisted.
    /// `release_endpoint` must follow.
    ///
    /// # Errors
    /// When the change cannot be persisted.
    pub fn forget_endpoint(&mut self, owner: &Owner) -> anyhow::Result<Option<EndpointRecord>> {
        let rec = self.endpoints.remove(owner);
        if let Some(rec) = &rec {
            self.datapath.remove_endpoint(rec.ipv4);
        }
        self.ipam.release(owner);
        self.persist()?;
        Ok(rec)
    }

    /// The rest of a delete, which the CNI DEL need not wait for: the policy of the pod's
    /// identity and its netns. The owner runs it right after answering, before its next
    /// command. The programs stay on the host veth: the plugin deletes the veth (which
    /// takes its filters along), and detaching them here would contend with that deletion
    /// for the RTNL lock. A veth still there a moment later, owned by no endpoint, is
    /// deleted then (`sweep_released`): never left up without its programs.
    pub fn release_endpoint(&mut self, rec: &EndpointRecord) {
        if rec.netns_cookie != 0 && !self.endpoints.values().any(|e| e.netns_cookie == rec.netns_cookie) {
            self.datapath.forget_netns(rec.netns_cookie);
        }
        self.released
            .push((rec.owner(), rec.host_ifname.clone(), Instant::now()));
        tracing::info!(endpoint = rec.id, ip = %rec.ipv4, "endpoint released");
        if let Err(e) = self.refresh_policy() {
            tracing::error!("applying policy after deleting an endpoint: {e:#}");
        }
    }

    /// Queues the rest of a CNI DEL (`release_endpoint`) for when the owner is idle, or
    /// a second at most.
    pub fn defer_release(&mut self, rec: EndpointRecord) {
        self.to_release.push((rec, Instant::now()));
    }

    #[must_use]
    pub fn releases_pending(&self) -> bool {
        !self.to_release.is_empty()
    }

    /// Releases queued endpoints. Returns whether there were any.
    pub fn release_deleted(&mut self) -> bool {
        let queued = std::mem::take(&mut self.to_release);
        for (rec, _) in &queued {
            self.release_endpoint(rec);
        }
        !queued.is_empty()
    }

    /// Host veths of released endpoints, a second after their release: one that still
    /// exists and that no endpoint owns again (a retried ADD re-creates the same name) is
    /// deleted, and its filters and pins with it. A retried ADD that holds a lease again
    /// but has not registered its endpoint yet (its veth is being wired) is left alone.
    fn sweep_released(&mut self) {
        let due: Vec<(Owner, String)> = self
            .released
            .iter()
            .filter(|(.., at)| at.elapsed() >= RELEASE_GRACE)
            .map(|(owner, ifname, _)| (owner.clone(), ifname.clone()))
            .collect();
        self.released.retain(|(.., at)| at.elapsed() < RELEASE_GRACE);
        for (owner, ifname) in due {
            if self.endpoints.values().any(|e| e.host_ifname == ifname) || self.ipam.lookup(&owner).is_some() {
                continue;
            }
            delete_orphan(&ifname);
            self.datapath.detach(&ifname);
        }
    }

    /// Endpoint garbage collection: removes, as DEL would, every endpoint whose host veth
    /// is gone. A runtime that never calls DEL (a container killed first, containerd 1.6
    /// failing after ADD) leaves such endpoints; deleting a network namespace destroys
    /// both veth ends, so a missing host veth means the pod is gone. An endpoint whose
    /// veth still exists keeps its programs and policy (fail closed), even when its
    /// netns file was unmounted: a process may still hold the namespace.
    pub fn collect_vanished(&mut self) -> Vec<EndpointRecord> {
        let gone: Vec<Owner> = self
            .endpoints
            .iter()
            .filter(|(_, e)| host_veth_gone(e))
            .map(|(o, _)| o.clone())
            .collect();
        let mut removed = Vec::new();
        for owner in gone {
            match self.delete_endpoint(&owner) {
                Ok(Some(rec)) => {
                    tracing::warn!(
                        endpoint = rec.id,
                        pod = %format!("{}/{}", rec.pod_namespace, rec.pod_name),
                        container = %rec.container_id,
                        ip = %rec.ipv4,
                        reason = "host veth gone without a CNI DEL",
                        "endpoint collected"
                    );
                    removed.push(rec);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(container = %owner.container_id, "collecting a vanished endpoint: {e:#}"),
            }
        }
        removed
    }

    #[must_use]
    pub fn endpoint(&self, owner: &Owner) -> Option<&EndpointRecord> {
        self.endpoints.get(owner)
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.values()
    }

    /// CNI GC: removes every endpoint and lease whose attachment is not in `valid`.
    ///
    /// # Errors
    /// When the change cannot be persisted.
    pub fn gc(&mut self, valid: &[Owner]) -> anyhow::Result<(Vec<EndpointRecord>, u32)> {
        let stale: Vec<Owner> = self.endpoints.keys().filter(|o| !valid.contains(o)).cloned().collect();
        let mut removed = Vec::new();
        for owner in &stale {
            if let Some(rec) = self.delete_endpoint(owner)? {
                removed.push(rec);
            }
        }
        // Leases whose ADD never registered an endpoint (a crashed plugin).
        let orphan: Vec<Owner> = self
            .ipam
            .leases()
            .map(|(_, o)| o.clone())
            .filter(|o| !valid.contains(o))
            .collect();
        for owner in &orphan {
            self.ipam.release(owner);
        }
        self.persist()?;
        Ok((removed, u32::try_from(stale.len() + orphan.len()).unwrap_or(u32::MAX)))
    }

    #[must_use]
    pub fn leases(&self) -> usize {
        self.ipam.len()
    }

    #[must_use]
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    #[must_use]
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.datapath.counters()
    }
}

/// Whether the endpoint's host veth no longer exists (only "no such device" counts: any
/// other error keeps the endpoint).
/// Deletes a host veth that no endpoint record owns, so its pod is cut off rather than
/// left without policy.
fn delete_orphan(ifname: &str) {
    match netdev::delete_link(ifname) {
        Ok(true) => tracing::warn!(%ifname, "deleted an orphaned pod interface (no endpoint owns it)"),
        Ok(false) => {}
        Err(e) => tracing::error!(%ifname, error = %e, "could not delete an orphaned pod interface"),
    }
}

fn host_veth_gone(e: &EndpointRecord) -> bool {
    matches!(netdev::ifindex(&e.host_ifname), Err(err) if err.raw_os_error() == Some(libc::ENODEV) || err.kind() == std::io::ErrorKind::NotFound)
}
