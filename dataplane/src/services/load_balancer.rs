//! Service load balancing, agent side: Services and endpoints from the state source →
//! `moat_services::resolve` → the `SERVICES`/`BACKENDS` maps the socket load balancer
//! reads. In standalone mode this is also the endpoint controller: a Service's selector
//! picks ready pods (a local pod is ready once CNI wired it).
//!
//! Services without a `clusterIP` get one from `--service-cidr`, NodePort services
//! without a `nodePort` get one from 30000-32767; both allocations are persisted.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use moat_dataplane_common::{
    backend_state, svc_flag, Backend4, MaglevKey, ServiceKey, ServiceValue, IN_CLUSTER_SLOTS, MAGLEV_M, MAGLEV_TABLES,
};
use moat_k8s_model::service::{ServiceType, NODE_PORT_RANGE};
use moat_k8s_model::Object;
use moat_services::{resolve, BackendState, Input, LbService, PodEndpoint};
use serde::{Deserialize, Serialize};

use crate::endpoint::EndpointRecord;
use crate::ipam::Cidr;
use crate::kernel::datapath::Datapath;
use crate::persist::{read_json, write_json};

/// Allocations that must survive a restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Allocations {
    cluster_ips: BTreeMap<String, Ipv4Addr>,
    node_ports: BTreeMap<String, u16>,
    /// Service port ("ns/name:port") → id. Affinity entries and Maglev tables are keyed
    /// by it, so an id must not move to another service across a restart.
    #[serde(default)]
    service_ids: BTreeMap<String, u32>,
    /// Ids are never reused: a flow or affinity entry that outlives its service or
    /// backend must miss, not land on whoever got the id next.
    #[serde(default)]
    next_service_id: u32,
    #[serde(default)]
    next_backend_id: u32,
}

pub struct LoadBalancer {
    service_cidr: Cidr,
    file: PathBuf,
    alloc: Allocations,
    /// `alloc` changed since it was last written.
    dirty: bool,
    backend_ids: BTreeMap<(Ipv4Addr, u16, u8), u32>,
    applied_services: BTreeMap<ServiceKey, ServiceValue>,
    applied_backends: BTreeMap<u32, Backend4>,
    /// Maglev table per service id (external frontends).
    applied_maglev: BTreeMap<u32, Vec<u32>>,
    /// What the last sync resolved (for `moatctl services`).
    pub services: std::sync::Arc<Vec<LbService>>,
    /// UDP backends (address, port) the last sync removed: connected sockets the socket
    /// LB pointed at them are to be closed (`sock_destroy`).
    pub removed_udp: Vec<(Ipv4Addr, u16)>,
    /// The inputs of the last successful sync: an unchanged input needs no work (the
    /// agent re-syncs periodically for identities; 10,000 services need not follow).
    last_input: Option<SyncInput>,
}

/// (state generation, ready endpoints (id, address), node addresses).
type SyncInput = (u64, Vec<(u32, Ipv4Addr)>, Vec<Ipv4Addr>);

fn fnv(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

/// A Maglev slot whose map value is not known (restored after a restart, or a failed
/// write): it differs from every backend id, so the next sync writes it.
const UNKNOWN_SLOT: u32 = u32::MAX;

/// What a `SERVICES` entry is, by its slot number.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    Slot,
    ViewMaster,
    Master,
}

fn entry_kind(k: &ServiceKey) -> Entry {
    match k.slot {
        0 => Entry::Master,
        IN_CLUSTER_SLOTS => Entry::ViewMaster,
        _ => Entry::Slot,
    }
}

/// The `SERVICES` key of a frontend's master entry.
fn master_key(fe: &moat_services::Frontend) -> ServiceKey {
    ServiceKey {
        addr: wire(fe.addr),
        port: fe.port.to_be(),
        proto: fe.proto,
        _pad: 0,
        slot: 0,
        _pad2: 0,
    }
}

impl LoadBalancer {
    /// # Errors
    /// When the persisted allocations cannot be read.
    pub fn open(service_cidr: Cidr, data_dir: &std::path::Path, dp: &Datapath) -> anyhow::Result<Self> {
        let file = data_dir.join("services.json");
        let alloc = read_json::<Allocations>(&file)?.unwrap_or_default();
        // Keep ids stable across a restart: read them back from the maps.
        let applied_services: BTreeMap<_, _> = dp.service_entries().into_iter().collect();
        let applied_backends: BTreeMap<_, _> = dp.backend_entries().into_iter().collect();
        let backend_ids = applied_backends
            .iter()
            .map(|(id, b)| {
                (
                    (Ipv4Addr::from(u32::from_be(b.addr)), u16::from_be(b.port), b.proto),
                    *id,
                )
            })
            .collect();
        let mut alloc = alloc;
        // Ids in the maps are taken even if the file predates them (or was lost).
        let in_maps = applied_backends.keys().max().map_or(1, |m| m + 1);
        alloc.next_backend_id = alloc.next_backend_id.max(in_maps);
        let in_maps = applied_services.values().map(|v| v.svc_id).max().map_or(1, |m| m + 1);
        alloc.next_service_id = alloc.next_service_id.max(in_maps);
        // Maglev tables a previous run left (of services deleted since, too): known by
        // their slot 0; their contents are rewritten or deleted by the first sync.
        let applied_maglev = (1..alloc.next_service_id)
            .filter(|&id| dp.maglev_table_exists(id))
            .map(|id| (id, vec![UNKNOWN_SLOT; MAGLEV_M as usize]))
            .collect();
        Ok(Self {
            service_cidr,
            file,
            alloc,
            dirty: false,
            backend_ids,
            applied_services,
            applied_backends,
            applied_maglev,
            services: std::sync::Arc::default(),
            removed_udp: Vec::new(),
            last_input: None,
        })
    }

    fn allocate(&mut self, objects: &[&Object]) -> bool {
        let mut changed = false;
        let mut live_ips = BTreeSet::new();
        let mut live_ports = BTreeSet::new();
        // Addresses and ports manifests name themselves are never handed out.
        let services = || {
            objects.iter().filter_map(|o| match o {
                Object::Service(s) => Some(s),
                _ => None,
            })
        };
        let explicit_ips: BTreeSet<Ipv4Addr> = services().filter_map(|s| s.cluster_ip).collect();
        let explicit_ports: BTreeSet<u16> = services()
            .flat_map(|s| s.ports.iter().filter_map(|p| p.node_port))
            .collect();
        for o in objects {
            let Object::Service(s) = o else { continue };
            let key = format!("{}/{}", s.namespace, s.name);
            if s.cluster_ip.is_none() && !s.headless && s.kind != ServiceType::ExternalName {
                live_ips.insert(key.clone());
                if !self.alloc.cluster_ips.contains_key(&key) {
                    let used: BTreeSet<Ipv4Addr> =
                        self.alloc.cluster_ips.values().chain(&explicit_ips).copied().collect();
                    // Skip the network address and the first host (often a DNS service).
                    let size = self.service_cidr.size().saturating_sub(3).max(1);
                    let start = fnv(&key) % size;
                    if let Some(ip) = (0..size)
                        .map(|i| Ipv4Addr::from(u32::from(self.service_cidr.network()) + 2 + (start + i) % size))
                        .find(|ip| !used.contains(ip))
                    {
                        self.alloc.cluster_ips.insert(key.clone(), ip);
                        changed = true;
                    }
                }
            }
            if matches!(s.kind, ServiceType::NodePort | ServiceType::LoadBalancer) {
                for p in s.ports.iter().filter(|p| p.node_port.is_none()) {
                    let pkey = format!("{key}/{}", p.name);
                    live_ports.insert(pkey.clone());
                    if !self.alloc.node_ports.contains_key(&pkey) {
                        let used: BTreeSet<u16> =
                            self.alloc.node_ports.values().chain(&explicit_ports).copied().collect();
                        let span = u32::from(NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) + 1;
                        let start = fnv(&pkey) % span;
                        if let Some(port) = (0..span)
                            .map(|i| NODE_PORT_RANGE.start() + u16::try_from((start + i) % span).unwrap_or(0))
                            .find(|p| !used.contains(p))
                        {
                            self.alloc.node_ports.insert(pkey, port);
                            changed = true;
                        }
                    }
                }
            }
        }
        let before = (self.alloc.cluster_ips.len(), self.alloc.node_ports.len());
        self.alloc.cluster_ips.retain(|k, _| live_ips.contains(k));
        self.alloc.node_ports.retain(|k, _| live_ports.contains(k));
        changed || before != (self.alloc.cluster_ips.len(), self.alloc.node_ports.len())
    }

    fn id_for_service(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.alloc.service_ids.get(key) {
            return id;
        }
        let id = self.alloc.next_service_id.max(1);
        self.alloc.next_service_id = id + 1;
        self.alloc.service_ids.insert(key.to_string(), id);
        self.dirty = true;
        id
    }

    fn id_for_backend(&mut self, key: (Ipv4Addr, u16, u8)) -> u32 {
        if let Some(&id) = self.backend_ids.get(&key) {
            return id;
        }
        let id = self.alloc.next_backend_id.max(1);
        self.alloc.next_backend_id = id + 1;
        self.backend_ids.insert(key, id);
        self.dirty = true;
        id
    }

    /// ClientIP affinity entries whose backend is no longer eligible for their service
    /// and frontend kind go: the datapath only checks that the backend is active, and a
    /// backend relabelled out of this service may still be active for another one.
    fn forget_stale_affinity(&self, dp: &mut Datapath, services: &BTreeMap<ServiceKey, ServiceValue>) {
        // (service id, external) → its eligible backends, from the slot entries.
        let mut eligible: BTreeMap<(u32, bool), BTreeSet<u32>> = BTreeMap::new();
        let master_of: BTreeMap<_, _> = services
            .iter()
            .filter(|(k, _)| entry_kind(k) != Entry::Slot)
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, v) in services.iter().filter(|(k, _)| entry_kind(k) == Entry::Slot) {
            let master = ServiceKey {
                slot: k.slot & IN_CLUSTER_SLOTS,
                ..*k
            };
            if let Some(m) = master_of.get(&master) {
                let external = m.flags & svc_flag::EXTERNAL != 0;
                eligible.entry((v.svc_id, external)).or_default().insert(v.backend_id);
            }
        }
        let stale: Vec<_> = dp
            .affinity_entries()
            .into_iter()
            .filter(|(k, v)| {
                // `_pad` carries the EXTERNAL flag (see `select::key` in the datapath).
                let external = u32::from(svc_flag::EXTERNAL) & k._pad != 0;
                !eligible
                    .get(&(k.svc_id, external))
                    .is_some_and(|ids| ids.contains(&v.backend_id))
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            dp.delete_affinity(k);
        }
        if !stale.is_empty() {
            tracing::info!(entries = stale.len(), "forgot affinity to backends no longer eligible");
        }
    }

    /// The master entry `key` and its slots (numbered after the master's own slot).
    fn want_frontend(
        &mut self,
        want: &mut BTreeMap<ServiceKey, ServiceValue>,
        key: ServiceKey,
        flags: u16,
        svc_id: u32,
        lb: &LbService,
        eligible: &[&moat_services::Backend],
    ) {
        // Slots are numbered below the in-cluster view's master.
        let eligible = &eligible[..eligible.len().min(usize::from(IN_CLUSTER_SLOTS) - 1)];
        want.insert(
            key,
            ServiceValue {
                backend_id: 0,
                count: u16::try_from(eligible.len()).unwrap_or(u16::MAX),
                flags,
                svc_id,
                affinity_timeout: lb.affinity_timeout.unwrap_or(0),
            },
        );
        for (i, b) in eligible.iter().enumerate() {
            let id = self.id_for_backend((b.addr, b.port, lb.proto));
            want.insert(
                ServiceKey {
                    slot: key.slot + u16::try_from(i + 1).unwrap_or(u16::MAX),
                    ..key
                },
                ServiceValue {
                    backend_id: id,
                    count: 0,
                    flags: 0,
                    svc_id,
                    affinity_timeout: 0,
                },
            );
        }
    }

    fn save(&mut self) -> anyhow::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        write_json(&self.file, &self.alloc)?;
        self.dirty = false;
        Ok(())
    }

    /// Resolves services and applies the difference to the maps: backends first, then
    /// Maglev tables (unwanted ones deleted before new ones are written), slot entries,
    /// in-cluster view masters, frontend masters; other removals last. Returns the
    /// number of updates.
    ///
    /// # Errors
    /// When a map update fails (the next sync retries).
    pub fn sync<'a>(
        &mut self,
        dp: &mut Datapath,
        endpoints: impl Iterator<Item = &'a EndpointRecord>,
        objects: impl Iterator<Item = &'a Object>,
        state_generation: u64,
        node_name: &str,
        node_ips: Vec<Ipv4Addr>,
    ) -> anyhow::Result<usize> {
        let endpoints: Vec<&EndpointRecord> = endpoints.filter(|e| e.state == "ready").collect();
        let input_key = (
            state_generation,
            endpoints.iter().map(|e| (e.id, e.ipv4)).collect::<Vec<_>>(),
            node_ips.clone(),
        );
        if self.last_input.as_ref() == Some(&input_key) {
            return Ok(0);
        }
        let objects: Vec<&Object> = objects.collect();
        if self.allocate(&objects) {
            self.dirty = true;
        }
        let mut input = Input {
            node_name: node_name.to_string(),
            node_ips,
            allocated_ips: self.alloc.cluster_ips.clone(),
            allocated_node_ports: self.alloc.node_ports.clone(),
            ..Input::default()
        };
        let mut pods = BTreeMap::new();
        for o in &objects {
            match o {
                Object::Service(s) => input.services.push(s.clone()),
                Object::EndpointSlice(s) => input.slices.push(s.clone()),
                Object::Pod(p) => {
                    pods.insert((p.namespace.clone(), p.name.clone()), p.clone());
                }
                _ => {}
            }
        }
        let mut local = BTreeSet::new();
        for ep in &endpoints {
            let key = (ep.pod_namespace.clone(), ep.pod_name.clone());
            let manifest = pods.get(&key);
            local.insert(key.clone());
            input.pods.push(PodEndpoint {
                namespace: key.0,
                name: key.1,
                labels: manifest.map(|p| p.labels.clone()).unwrap_or_default(),
                ports: manifest.map(|p| p.ports.clone()).unwrap_or_default(),
                ip: ep.ipv4,
                local: true,
                ready: true,
            });
        }
        let local_ips: BTreeSet<Ipv4Addr> = input.pods.iter().map(|p| p.ip).collect();
        for (key, p) in &pods {
            if let (false, Some(ip)) = (local.contains(key), p.ip.filter(|ip| !local_ips.contains(ip))) {
                input.pods.push(PodEndpoint {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    ports: p.ports.clone(),
                    ip,
                    local: false,
                    ready: true,
                });
            }
        }
        let mut resolved = resolve(&input);
        let incumbent = |lb: &LbService, fe: &moat_services::Frontend| {
            let id = self.alloc.service_ids.get(&lb.to_string());
            id.is_some() && self.applied_services.get(&master_key(fe)).map(|v| v.svc_id) == id.copied()
        };
        for conflict in moat_services::drop_conflicting_frontends(&mut resolved, incumbent) {
            tracing::error!("{conflict}");
        }
        self.services = std::sync::Arc::new(resolved);

        let mut want_backends = BTreeMap::new();
        let mut want_services = BTreeMap::new();
        let services = std::sync::Arc::clone(&self.services);
        for lb in services.iter() {
            let svc_id = self.id_for_service(&lb.to_string());
            for b in &lb.backends {
                let id = self.id_for_backend((b.addr, b.port, lb.proto));
                want_backends.insert(
                    id,
                    Backend4 {
                        addr: wire(b.addr),
                        port: b.port.to_be(),
                        proto: lb.proto,
                        state: match b.state {
                            BackendState::Active => backend_state::ACTIVE,
                            BackendState::Terminating => backend_state::TERMINATING,
                        },
                    },
                );
            }
            for fe in &lb.frontends {
                let eligible = lb.eligible(fe.scope);
                // Clients inside the cluster are not limited by externalTrafficPolicy:
                // an external frontend whose outside view is narrower gets a second,
                // in-cluster view (master at `IN_CLUSTER_SLOTS`, slots after it).
                let inside = lb.eligible(moat_services::Scope::ClusterIp);
                let view = fe.scope.external() && inside != eligible;
                let mut flags = if fe.scope.external() { svc_flag::EXTERNAL } else { 0 };
                if view {
                    flags |= svc_flag::IN_CLUSTER_VIEW;
                }
                let key = master_key(fe);
                self.want_frontend(&mut want_services, key, flags, svc_id, lb, &eligible);
                if view {
                    let key = ServiceKey {
                        slot: IN_CLUSTER_SLOTS,
                        ..key
                    };
                    self.want_frontend(&mut want_services, key, 0, svc_id, lb, &inside);
                }
            }
        }
        // Maglev tables for services with an external frontend, over the backends
        // external traffic may reach.
        const _: () = assert!(MAGLEV_M as usize == moat_services::maglev::DEFAULT_M);
        // At most `MAGLEV_TABLES`: services that have one keep it, the rest fall back to
        // random selection in the datapath (never a failed sync that freezes every other
        // service's updates).
        let mut want_maglev: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut external: Vec<(u32, &LbService)> = Vec::new();
        for lb in services.iter() {
            if lb.frontends.iter().any(|f| f.scope.external()) {
                external.push((self.id_for_service(&lb.to_string()), lb));
            }
        }
        external.sort_by_key(|(id, _)| !self.applied_maglev.contains_key(id));
        let capacity = MAGLEV_TABLES as usize;
        if external.len() > capacity {
            let without: Vec<String> = external[capacity..].iter().map(|(_, lb)| lb.to_string()).collect();
            tracing::warn!(
                tables = capacity,
                ?without,
                "more external service ports than Maglev tables: these select backends at random"
            );
        }
        for (svc_id, lb) in external.into_iter().take(capacity) {
            let Some(fe) = lb.frontends.iter().find(|f| f.scope.external()) else {
                continue;
            };
            let eligible = lb.eligible(fe.scope);
            let names: Vec<Vec<u8>> = eligible
                .iter()
                .map(|b| format!("{}:{}", b.addr, b.port).into_bytes())
                .collect();
            let ids: Vec<u32> = eligible
                .iter()
                .map(|b| self.id_for_backend((b.addr, b.port, lb.proto)))
                .collect();
            let table = moat_services::maglev::table(&names, MAGLEV_M as usize);
            want_maglev.insert(svc_id, table.iter().map(|&i| ids[i as usize]).collect());
        }

        // Forget ids nobody uses any more (they are not handed out again).
        self.backend_ids.retain(|_, id| want_backends.contains_key(id));
        let live: BTreeSet<String> = services.iter().map(ToString::to_string).collect();
        let before = self.alloc.service_ids.len();
        self.alloc.service_ids.retain(|k, _| live.contains(k));
        self.dirty |= before != self.alloc.service_ids.len();
        // Ids are written down before any map entry uses them.
        self.save()?;

        let mut updates = 0;
        for (id, b) in &want_backends {
            if self.applied_backends.get(id) != Some(b) {
                dp.upsert_backend(*id, *b)?;
                updates += 1;
            }
        }
        // Maglev: tables (and slots) no longer wanted go first, as the map has room for
        // `MAGLEV_TABLES` tables only; the datapath selects at random where a table is
        // missing. A table that cannot be written stays partial (missing slots select
        // at random) and is retried at the next sync; it never fails the sync.
        for (svc_id, old) in &self.applied_maglev {
            let keep = want_maglev.get(svc_id).map_or(0, Vec::len);
            for slot in keep..old.len() {
                dp.delete_maglev(MaglevKey {
                    svc_id: *svc_id,
                    slot: u32::try_from(slot).unwrap_or(u32::MAX),
                });
                updates += 1;
            }
        }
        let mut maglev_complete = true;
        let mut written_maglev = BTreeMap::new();
        for (svc_id, table) in &want_maglev {
            let old = self.applied_maglev.get(svc_id);
            let mut written = table.clone();
            for (slot, id) in table.iter().enumerate() {
                if old.and_then(|o| o.get(slot)) != Some(id) {
                    let key = MaglevKey {
                        svc_id: *svc_id,
                        slot: u32::try_from(slot).unwrap_or(u32::MAX),
                    };
                    if let Err(e) = dp.upsert_maglev(key, *id) {
                        tracing::warn!(svc_id, error = %e, "writing a Maglev table; it stays partial");
                        written[slot..].fill(UNKNOWN_SLOT);
                        maglev_complete = false;
                        break;
                    }
                    updates += 1;
                }
            }
            written_maglev.insert(*svc_id, written);
        }
        // Slots first, then the in-cluster views' masters, then the frontends' masters
        // (which may point to a view): a reader never finds a master without its slots.
        for phase in [Entry::Slot, Entry::ViewMaster, Entry::Master] {
            for (k, v) in want_services.iter().filter(|(k, _)| entry_kind(k) == phase) {
                if self.applied_services.get(k) != Some(v) {
                    dp.upsert_service(*k, *v)?;
                    updates += 1;
                }
            }
        }
        for k in self.applied_services.keys().filter(|k| !want_services.contains_key(k)) {
            dp.delete_service(*k);
            updates += 1;
        }
        self.removed_udp.clear();
        for (id, b) in self
            .applied_backends
            .iter()
            .filter(|(id, _)| !want_backends.contains_key(id))
        {
            dp.delete_backend(*id);
            updates += 1;
            if b.proto == 17 {
                self.removed_udp
                    .push((Ipv4Addr::from(u32::from_be(b.addr)), u16::from_be(b.port)));
            }
        }
        if updates > 0 {
            self.forget_stale_affinity(dp, &want_services);
        }
        self.applied_maglev = written_maglev;
        self.applied_services = want_services;
        // An incomplete Maglev table is retried by the next periodic sync.
        self.last_input = maglev_complete.then_some(input_key);
        self.applied_backends = want_backends;
        if updates > 0 {
            tracing::info!(updates, services = self.services.len(), "services applied");
        }
        Ok(updates)
    }
}
