//! The agent's view of its node: leases, endpoints and the datapath, kept consistent.
//!
//! Every change is written to the data dir before it is acknowledged, so a restarted
//! agent re-adopts exactly what its predecessor had promised (leases, endpoint ids) and
//! reconciles the pinned maps and links against it.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use moat_dataplane_common::EndpointInfo;
use serde::{Deserialize, Serialize};

use crate::datapath::Datapath;
use crate::enforce::{Enforcer, Settings};
use crate::ipam::{Cidr, Ipam, Owner};
use crate::lb::LoadBalancer;
use crate::netdev;
use crate::state::StateDir;

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
    /// Devices NodePort traffic arrives on (XDP `node_ingress`).
    pub node_devices: Vec<String>,
}

/// One wired pod interface, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRecord {
    pub id: u32,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub ipv4: Ipv4Addr,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub pod_mac: String,
    pub host_mac: String,
    /// "agent" or "delegated".
    pub ipam: String,
    pub created_unix: i64,
    /// "ready", or why the datapath is not attached.
    pub state: String,
    /// Cookie of the pod's network namespace (the socket load balancer serves it).
    #[serde(default)]
    pub netns_cookie: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct EndpointFile {
    next_id: u32,
    endpoints: Vec<EndpointRecord>,
}

/// What the CNI plugin reports after wiring a pod.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub owner: Owner,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub ipv4: Ipv4Addr,
    pub host_ifname: String,
    pub pod_mac: String,
    pub ipam: String,
}

pub struct Node {
    pub cfg: NodeConfig,
    ipam: Ipam,
    next_id: u32,
    endpoints: BTreeMap<Owner, EndpointRecord>,
    datapath: Datapath,
    started: Instant,
    pub state: StateDir,
    pub enforcer: Enforcer,
    pub lb: LoadBalancer,
    last_sync: Instant,
}

const ENDPOINTS_FILE: &str = "endpoints.json";
const IPAM_FILE: &str = "ipam.json";

impl Node {
    /// Loads persisted state and the datapath, then reconciles them.
    ///
    /// # Errors
    /// When persisted state is unreadable, was made for another pod CIDR, or the
    /// datapath cannot be loaded.
    pub fn open(cfg: NodeConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let ipam: Ipam = match read_json(&cfg.data_dir.join(IPAM_FILE))? {
            Some(ipam) => ipam,
            None => Ipam::new(cfg.pod_cidr),
        };
        let ipam: Ipam = ipam;
        if ipam.cidr() != cfg.pod_cidr {
            bail!(
                "{}: leases were made from pod CIDR {} but --pod-cidr is {}; release them or keep the CIDR",
                cfg.data_dir.join(IPAM_FILE).display(),
                ipam.cidr(),
                cfg.pod_cidr
            );
        }
        let file: EndpointFile = read_json(&cfg.data_dir.join(ENDPOINTS_FILE))?.unwrap_or_default();
        let datapath = Datapath::load(&cfg.pin_dir).context("loading the eBPF datapath")?;
        let endpoints = file.endpoints.into_iter().map(|e| (owner_of(&e), e)).collect();
        let enforcer = Enforcer::open(cfg.policy, &cfg.data_dir, &datapath)?;
        let lb = LoadBalancer::open(cfg.service_cidr, &cfg.data_dir, &datapath)?;
        let mut datapath = datapath;
        match &cfg.socket_lb_cgroup {
            Some(cg) => datapath
                .attach_socket_lb(cg)
                .with_context(|| format!("attaching the socket load balancer to cgroup {}", cg.display()))?,
            None => datapath.detach_socket_lb(),
        }
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
        let state = StateDir::new(cfg.state_dir.clone(), Some(cfg.data_dir.join("last-good-manifests")));
        let mut node = Self {
            cfg,
            ipam,
            next_id: file.next_id.max(1),
            endpoints,
            datapath,
            started: Instant::now(),
            state,
            enforcer,
            lb,
            last_sync: Instant::now(),
        };
        // Policy first: re-adopted endpoints keep the policy the maps already hold, and
        // the recompiled one replaces it make-before-break.
        node.sync_policy().context("applying policy")?;
        node.reconcile();
        node.sync_policy().context("applying policy")?;
        node.persist()?;
        Ok(node)
    }

    /// Recompiles policy from the endpoints and the state source and applies the diff.
    ///
    /// # Errors
    /// When a map update fails (what is enforced stays; the next sync retries).
    pub fn sync_policy(&mut self) -> anyhow::Result<usize> {
        let host_ips = netdev::host_ipv4s();
        self.last_sync = Instant::now();
        // Node addresses that NodePorts listen on: not loopback, not link-local.
        let node_ips: Vec<Ipv4Addr> = host_ips
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback() && !ip.is_link_local())
            .collect();
        let updates = self.enforcer.sync(
            &mut self.datapath,
            self.endpoints.values(),
            self.state.objects(),
            host_ips,
        )?;
        let lb_updates = self
            .lb
            .sync(
                &mut self.datapath,
                self.endpoints.values(),
                self.state.objects(),
                self.state.generation,
                &self.cfg.node_name,
                node_ips,
            )
            .context("applying services")?;
        let removed_udp = std::mem::take(&mut self.lb.removed_udp);
        if !removed_udp.is_empty() {
            // Connected UDP sockets translated to a removed backend would keep sending to
            // it: close them so their applications reconnect.
            let sockets = self.datapath.translated_sockets(&removed_udp);
            let pods: std::collections::BTreeSet<std::path::PathBuf> = self
                .endpoints
                .values()
                .map(|e| std::path::PathBuf::from(&e.netns))
                .collect();
            let netns: Vec<Option<std::path::PathBuf>> =
                std::iter::once(None).chain(pods.into_iter().map(Some)).collect();
            let n = crate::sock_destroy::destroy_connected_udp(&netns, &sockets);
            if n > 0 {
                tracing::info!(sockets = n, "closed UDP sockets connected to removed backends");
            }
        }
        Ok(updates + lb_updates)
    }

    /// Re-reads the state source if it changed, and re-applies policy. Also run
    /// periodically so identities past their grace period are released.
    /// Re-reads the state source (`settled`: files whose change is known to be complete)
    /// and applies what changed; also re-syncs every few seconds.
    pub fn refresh(&mut self, settled: &std::collections::BTreeSet<std::path::PathBuf>) {
        let changed = self.state.refresh_with(settled);
        if !changed && self.last_sync.elapsed() < std::time::Duration::from_secs(5) {
            return;
        }
        if let Err(e) = self.sync_policy() {
            tracing::error!("applying policy: {e:#}");
        }
    }

    /// The event ring buffer (once).
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.datapath.take_events()
    }

    /// ("namespace", "name") of the local pod with this address.
    #[must_use]
    pub fn pod_of(&self, ip: Ipv4Addr) -> Option<(String, String)> {
        if let Some(e) = self.endpoints.values().find(|e| e.ipv4 == ip) {
            return Some((e.pod_namespace.clone(), e.pod_name.clone()));
        }
        self.enforcer
            .world
            .pods
            .iter()
            .find(|p| p.ipv4 == Some(ip))
            .map(|p| (p.pod.namespace.clone(), p.pod.name.clone()))
    }

    /// ("namespace", "name") of the local pod whose network namespace has this cookie.
    #[must_use]
    pub fn pod_of_netns(&self, cookie: u64) -> Option<(String, String)> {
        self.endpoints
            .values()
            .find(|e| e.netns_cookie == cookie)
            .map(|e| (e.pod_namespace.clone(), e.pod_name.clone()))
    }

    /// The identity of a local pod, 0 when unknown.
    #[must_use]
    pub fn identity_of_pod(&self, namespace: &str, name: &str) -> u32 {
        self.enforcer.world.pod(namespace, name).map_or(0, |p| p.identity)
    }

    /// "ns/name:port" of the service with this frontend.
    #[must_use]
    pub fn service_at(&self, ip: Ipv4Addr, port: u16, proto: u8) -> String {
        self.lb
            .services
            .iter()
            .find(|s| {
                s.frontends
                    .iter()
                    .any(|f| f.addr == ip && f.port == port && f.proto == proto)
            })
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[must_use]
    pub fn identity_name(&self, id: u32) -> String {
        self.enforcer.identity_name(id)
    }

    #[must_use]
    pub fn describe_cookie(&self, cookie: u32) -> String {
        self.enforcer.compiled.describe(cookie)
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
                    self.datapath.remove_endpoint(rec.ipv4);
                    self.datapath.detach(&rec.host_ifname);
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
                tracing::info!(%ifname, "removing links of an interface no endpoint owns");
                self.datapath.detach(&ifname);
            }
        }
        let live_ips: Vec<Ipv4Addr> = self
            .endpoints
            .values()
            .filter(|e| e.state == "ready")
            .map(|e| e.ipv4)
            .collect();
        for (ip, _) in self.datapath.endpoint_entries() {
            if !live_ips.contains(&ip) {
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
        if rec.netns_cookie != 0 {
            self.datapath.serve_netns(rec.netns_cookie)?;
        }
        Ok(info)
    }

    fn persist(&self) -> anyhow::Result<()> {
        let file = EndpointFile {
            next_id: self.next_id,
            endpoints: self.endpoints.values().cloned().collect(),
        };
        write_json(&self.cfg.data_dir.join(ENDPOINTS_FILE), &file)?;
        write_json(&self.cfg.data_dir.join(IPAM_FILE), &self.ipam)
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
            .find(|e| e.ipv4 == new.ipv4 && owner_of(e) != new.owner)
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
        match netdev::netns_cookie(Some(Path::new(&rec.netns))) {
            Ok(c) => rec.netns_cookie = c,
            Err(e) => {
                tracing::warn!(netns = %rec.netns, error = %e, "no netns cookie; the pod's sockets are not load-balanced")
            }
        }
        // Identity and policy for the pod go in before its programs are attached, so its
        // first packet already meets its policy.
        let previous = self.endpoints.insert(new.owner.clone(), rec.clone());
        let installed = self
            .sync_policy()
            .context("applying policy for the new endpoint")
            .and_then(|_| self.install(&rec));
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
                let _ = self.sync_policy();
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
        let rec = self.endpoints.remove(owner);
        if let Some(rec) = &rec {
            self.datapath.remove_endpoint(rec.ipv4);
            self.datapath.detach(&rec.host_ifname);
            if rec.netns_cookie != 0 && !self.endpoints.values().any(|e| e.netns_cookie == rec.netns_cookie) {
                self.datapath.forget_netns(rec.netns_cookie);
            }
            tracing::info!(endpoint = rec.id, ip = %rec.ipv4, "endpoint deleted");
            if let Err(e) = self.sync_policy() {
                tracing::error!("applying policy after deleting an endpoint: {e:#}");
            }
        }
        self.ipam.release(owner);
        self.persist()?;
        Ok(rec)
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

fn owner_of(e: &EndpointRecord) -> Owner {
    Owner {
        container_id: e.container_id.clone(),
        ifname: e.ifname.clone(),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Write-then-rename so a crash never leaves a half-written state file.
fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
