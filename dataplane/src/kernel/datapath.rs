//! The kernel side of the agent: loads the eBPF object, owns its maps, attaches the
//! pod programs to host veths with tcx, and pins maps and links under the pin dir.
//!
//! Pinning is what lets the agent restart without a gap: maps keep their contents and
//! tcx links stay attached while no agent runs; a new agent re-opens the pinned maps
//! and atomically swaps its freshly loaded programs into the pinned links.
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::xdp::XdpLink;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use moat_dataplane_common::{
    AffinityKey, AffinityValue, Backend4, Config, CtEntry, CtKey, EndpointInfo, IpcacheInfo, MaglevKey, PolicyKey,
    PolicyValue, ServiceKey, ServiceValue, SockRevKey, SockRevValue, AFFINITY_MAP, BACKENDS_MAP, CONFIG_MAP, CT_MAP,
    ENDPOINTS_MAP, EVENTS_MAP, IPCACHE_MAP, MAGLEV_MAP, METRICS_MAP, POLICY_MAP, SERVICES_MAP, SOCK_LB_NETNS_MAP,
    SOCK_REVNAT_MAP,
};

/// The object built by build.rs from `dataplane-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/moat-dataplane"));

/// XDP on the node's devices: NodePort/externalIP/LoadBalancer translation.
const NODE_PROGRAM: &str = "node_ingress";

/// The socket load balancer's cgroup programs (attached at the cgroup root).
const SOCK_PROGRAMS: [&str; 4] = ["sock_connect4", "sock_sendmsg4", "sock_recvmsg4", "sock_getpeername4"];
/// The cgroup `sock_release` hook: drops a closed socket's reverse translation.
const SOCK_RELEASE: &str = "sock_release";

/// Priority and handle of Moat's `cls_bpf` filters on a host veth.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// (program, hook, pin suffix of an older agent's tcx link) for each pod-facing program.
const POD_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("from_container", TcAttachType::Ingress, "ingress"),
    ("to_container", TcAttachType::Egress, "egress"),
];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object (maps pinned under {pin_dir}) failed")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {name} failed")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name} failed")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching {program} to interface {ifname}")]
    Attach {
        program: &'static str,
        ifname: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("pin path {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub struct Datapath {
    ebpf: Ebpf,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    metrics: PerCpuArray<MapData, u64>,
    ipcache: LpmTrie<MapData, u32, IpcacheInfo>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    ct: HashMap<MapData, CtKey, CtEntry>,
    config: Array<MapData, Config>,
    events: Option<RingBuf<MapData>>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend4>,
    maglev: HashMap<MapData, MaglevKey, u32>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    sock_revnat: HashMap<MapData, SockRevKey, SockRevValue>,
    sock_netns: HashMap<MapData, u64, u32>,
    http: super::http::Http,
    links_dir: PathBuf,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name,
        source: Box::new(source),
    }
}

/// Sizes of the maps an operator may tune (`moat-agent --policy-map-entries`, ...).
/// They apply when a map is created; a map already pinned keeps its size (aya reuses a
/// pin by name), so the real sizes are read back (`Datapath::capacity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub policy: u32,
    pub ipcache: u32,
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            policy: moat_dataplane_common::MAX_POLICY_ENTRIES,
            ipcache: moat_dataplane_common::MAX_IPCACHE_ENTRIES,
            conntrack: moat_dataplane_common::MAX_CT_ENTRIES,
        }
    }
}

impl Datapath {
    /// Loads (or re-adopts) the datapath with maps pinned in `pin_dir`, default sizes.
    ///
    /// # Errors
    /// When the kernel rejects the object or a pin cannot be created.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_sized(pin_dir, MapSizes::default())
    }

    /// Loads (or re-adopts) the datapath; new maps get `sizes`.
    ///
    /// # Errors
    /// When the kernel rejects the object or a pin cannot be created.
    pub fn load_sized(pin_dir: &Path, sizes: MapSizes) -> Result<Self, DatapathError> {
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|source| DatapathError::Pin {
            path: links_dir.clone(),
            source,
        })?;
        // Maps renamed when their definition changed: an older agent's pin would
        // otherwise linger unused (aya reuses a pin by name without comparing sizes,
        // which is why a changed map gets a new name).
        let _ = std::fs::remove_file(pin_dir.join("moat_maglev_v1"));
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(POLICY_MAP, sizes.policy)
            .map_max_entries(IPCACHE_MAP, sizes.ipcache)
            .map_max_entries(CT_MAP, sizes.conntrack)
            .load(EBPF_OBJECT)
            .map_err(|source| DatapathError::Load {
                pin_dir: pin_dir.to_path_buf(),
                source: Box::new(source),
            })?;
        for (name, _, _) in POD_PROGRAMS {
            let prog = program(&mut ebpf, name)?;
            prog.load().map_err(|source| DatapathError::Program {
                name,
                source: Box::new(source),
            })?;
        }
        {
            let xdp: &mut Xdp = ebpf
                .program_mut(NODE_PROGRAM)
                .ok_or_else(|| DatapathError::Program {
                    name: NODE_PROGRAM,
                    source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
                })?
                .try_into()
                .map_err(|source| DatapathError::Program {
                    name: NODE_PROGRAM,
                    source: Box::new(source),
                })?;
            xdp.load().map_err(|source| DatapathError::Program {
                name: NODE_PROGRAM,
                source: Box::new(source),
            })?;
        }
        for name in SOCK_PROGRAMS {
            sock_program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    name,
                    source: Box::new(source),
                })?;
        }
        release_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                name: SOCK_RELEASE,
                source: Box::new(source),
            })?;
        let endpoints =
            HashMap::try_from(take_map(&mut ebpf, ENDPOINTS_MAP)?).map_err(|source| DatapathError::Map {
                name: ENDPOINTS_MAP,
                source: Box::new(source),
            })?;
        let metrics =
            PerCpuArray::try_from(take_map(&mut ebpf, METRICS_MAP)?).map_err(|source| DatapathError::Map {
                name: METRICS_MAP,
                source: Box::new(source),
            })?;
        let ipcache = LpmTrie::try_from(take_map(&mut ebpf, IPCACHE_MAP)?).map_err(map_err(IPCACHE_MAP))?;
        let policy = LpmTrie::try_from(take_map(&mut ebpf, POLICY_MAP)?).map_err(map_err(POLICY_MAP))?;
        let ct = HashMap::try_from(take_map(&mut ebpf, CT_MAP)?).map_err(map_err(CT_MAP))?;
        let config = Array::try_from(take_map(&mut ebpf, CONFIG_MAP)?).map_err(map_err(CONFIG_MAP))?;
        let events = RingBuf::try_from(take_map(&mut ebpf, EVENTS_MAP)?).map_err(map_err(EVENTS_MAP))?;
        let services = HashMap::try_from(take_map(&mut ebpf, SERVICES_MAP)?).map_err(map_err(SERVICES_MAP))?;
        let backends = HashMap::try_from(take_map(&mut ebpf, BACKENDS_MAP)?).map_err(map_err(BACKENDS_MAP))?;
        let maglev = HashMap::try_from(take_map(&mut ebpf, MAGLEV_MAP)?).map_err(map_err(MAGLEV_MAP))?;
        let affinity = HashMap::try_from(take_map(&mut ebpf, AFFINITY_MAP)?).map_err(map_err(AFFINITY_MAP))?;
        let sock_revnat = HashMap::try_from(take_map(&mut ebpf, SOCK_REVNAT_MAP)?).map_err(map_err(SOCK_REVNAT_MAP))?;
        let sock_netns =
            HashMap::try_from(take_map(&mut ebpf, SOCK_LB_NETNS_MAP)?).map_err(map_err(SOCK_LB_NETNS_MAP))?;
        let http = super::http::Http::load(&mut ebpf)?;
        Ok(Self {
            ebpf,
            endpoints,
            metrics,
            ipcache,
            policy,
            ct,
            config,
            events: Some(events),
            services,
            backends,
            maglev,
            affinity,
            sock_revnat,
            sock_netns,
            http,
            links_dir,
        })
    }

    fn link_pin(&self, ifname: &str, suffix: &str) -> PathBuf {
        self.links_dir.join(format!("{ifname}_{suffix}"))
    }

    /// Attaches the pod programs to the host veth `ifname`: `from_container` and
    /// `to_container` as direct-action `cls_bpf` filters in a `clsact` qdisc (legacy TC,
    /// priority 1, handle 1), or swaps this agent's programs into filters already there
    /// (a restarted agent: the kernel replaces a filter atomically).
    ///
    /// Why not tcx links: each tcx attach and each detach (also the implicit one when the
    /// veth is deleted) waits for an RCU grace period under the RTNL lock. Measured by
    /// `moat-bench-attach` (bench/run.sh section 9): ~26 ms to attach both programs and
    /// ~44 ms to delete the veth, against ~0.5 ms and ~17 ms with `cls_bpf`, which is all
    /// of the gap to the `bridge` plugin in CNI ADD+DEL. Filters live in the device, so
    /// they outlive the agent without pins and go with the veth.
    ///
    /// # Errors
    /// When the kernel refuses the qdisc or a filter.
    pub fn attach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        // Already there on a re-attach: the filter calls below say what is wrong, if anything.
        let _ = aya::programs::tc::qdisc_add_clsact(ifname);
        for (name, hook, suffix) in POD_PROGRAMS {
            let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                program: name,
                ifname: ifname.to_string(),
                source,
            };
            let prog = program(&mut self.ebpf, name)?;
            let opts = TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                handle: TC_HANDLE,
                classid: None,
            });
            let id = match prog.attach_with_options(ifname, hook, opts) {
                Ok(id) => id,
                Err(create_err) => {
                    // Our filter is there already: replace its program.
                    let link = SchedClassifierLink::attached(ifname, hook, TC_PRIORITY, TC_HANDLE, None)
                        .map_err(|e| attach_err(Box::new(e)))?;
                    prog.attach_to_link(link)
                        .map_err(|_| attach_err(Box::new(create_err)))?
                }
            };
            // The filter lives in the device; aya would remove it when the program is
            // dropped (the agent exiting) unless the link is taken and let go.
            let link = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
            std::mem::forget(link);
            // An older agent's tcx link on this veth goes once our filter is in place.
            let pin = self.link_pin(ifname, suffix);
            if let Ok(old) = PinnedLink::from_pin(&pin) {
                let _ = old.unpin();
            }
        }
        Ok(())
    }

    /// Removes the pod programs from `ifname` (both filters, and any tcx link pin an
    /// older agent left). A missing device or filter is fine: deleting a veth removes
    /// its filters anyway.
    pub fn detach(&mut self, ifname: &str) {
        for (_, hook, suffix) in POD_PROGRAMS {
            if let Ok(link) = SchedClassifierLink::attached(ifname, hook, TC_PRIORITY, TC_HANDLE, None) {
                let _ = aya::programs::links::Link::detach(link);
            }
            let pin = self.link_pin(ifname, suffix);
            match PinnedLink::from_pin(&pin) {
                Ok(link) => {
                    let _ = link.unpin();
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
    }

    /// Interfaces that have a pinned link, whether or not an endpoint owns them.
    #[must_use]
    pub fn pinned_interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let (ifname, _) = n.rsplit_once('_')?;
                Some(ifname.to_string())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// # Errors
    /// When the map is full or the kernel refuses the update.
    pub fn upsert_endpoint(&mut self, ip: Ipv4Addr, info: EndpointInfo) -> Result<(), DatapathError> {
        self.endpoints
            .insert(ip_key(ip), info, 0)
            .map_err(|source| DatapathError::Map {
                name: ENDPOINTS_MAP,
                source: Box::new(source),
            })
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) {
        let _ = self.endpoints.remove(&ip_key(ip));
    }

    /// Every (ip, info) in the endpoint map.
    #[must_use]
    pub fn endpoint_entries(&self) -> Vec<(Ipv4Addr, EndpointInfo)> {
        self.endpoints
            .iter()
            .flatten()
            .map(|(k, v)| (Ipv4Addr::from(u32::from_be(k)), v))
            .collect()
    }

    /// Attaches the socket load balancer to the cgroup at `cgroup` (normally the cgroup v2
    /// root, so every process on the node is covered) and pins the links. Make before
    /// break: a link pinned by an earlier agent is released only after the new one is in
    /// place (both translate identically from the same maps meanwhile).
    ///
    /// # Errors
    /// When the cgroup cannot be opened or the kernel refuses the attachment.
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let sock_dir = self.sock_dir();
        std::fs::create_dir_all(&sock_dir).map_err(|source| DatapathError::Pin { path: sock_dir, source })?;
        let dir = std::fs::File::open(cgroup).map_err(|source| DatapathError::Pin {
            path: cgroup.to_path_buf(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                program: name,
                ifname: cgroup.display().to_string(),
                source,
            };
            let prog = sock_program(&mut self.ebpf, name)?;
            // With bpf_link (kernel ≥ 5.7) the flags must be 0 ("Single"); the kernel
            // attaches links in multi mode anyway, so several agents (tests) can coexist.
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| attach_err(Box::new(e)))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| attach_err(Box::new(e)))?
                .try_into()
                .map_err(|e: LinkError| attach_err(Box::new(e)))?;
            self.pin_sock_link(name, link).map_err(attach_err)?;
        }
        let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
            program: SOCK_RELEASE,
            ifname: cgroup.display().to_string(),
            source,
        };
        let prog = release_program(&mut self.ebpf)?;
        let id = prog
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| attach_err(Box::new(e)))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|e| attach_err(Box::new(e)))?
            .try_into()
            .map_err(|e: LinkError| attach_err(Box::new(e)))?;
        self.pin_sock_link(SOCK_RELEASE, link).map_err(attach_err)
    }

    /// Pins a socket load balancer link under `name`, replacing an earlier agent's only
    /// once the new one is in place.
    fn pin_sock_link(&self, name: &str, link: FdLink) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let pin = self.sock_dir().join(name);
        // bpffs refuses dots in names.
        let fresh = self.sock_dir().join(format!("{name}_new"));
        let _ = std::fs::remove_file(&fresh);
        link.pin(&fresh)?;
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let _ = old.unpin();
        }
        std::fs::rename(&fresh, &pin)?;
        Ok(())
    }

    /// Attaches `node_ingress` (XDP) to a node device, native mode when the driver has it,
    /// else generic. A link pinned by an earlier agent gets the new program atomically.
    ///
    /// # Errors
    /// When the device does not exist or the kernel refuses XDP on it.
    pub fn attach_node_device(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let dir = self.links_dir.with_file_name("nodedev");
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Pin {
            path: dir.clone(),
            source,
        })?;
        let pin = dir.join(ifname);
        let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
            program: NODE_PROGRAM,
            ifname: ifname.to_string(),
            source,
        };
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(NODE_PROGRAM)
            .ok_or_else(|| attach_err("program missing".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| attach_err(Box::new(e)))?;
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let link = XdpLink::try_from(FdLink::from(old)).map_err(|e| attach_err(Box::new(e)))?;
            let id = xdp.attach_to_link(link).map_err(|e| attach_err(Box::new(e)))?;
            let _ = xdp.take_link(id);
            return Ok(());
        }
        let id = match xdp.attach(ifname, XdpMode::Default) {
            Ok(id) => id,
            Err(_) => xdp.attach(ifname, XdpMode::Skb).map_err(|e| attach_err(Box::new(e)))?,
        };
        let link: FdLink = xdp
            .take_link(id)
            .map_err(|e| attach_err(Box::new(e)))?
            .try_into()
            .map_err(|e: LinkError| attach_err(Box::new(e)))?;
        link.pin(&pin).map_err(|e| attach_err(Box::new(e)))?;
        Ok(())
    }

    /// Lets the socket load balancer serve sockets of this network namespace.
    ///
    /// # Errors
    /// When the kernel refuses the update.
    pub fn serve_netns(&mut self, cookie: u64) -> Result<(), DatapathError> {
        self.sock_netns.insert(cookie, 1, 0).map_err(map_err(SOCK_LB_NETNS_MAP))
    }

    pub fn forget_netns(&mut self, cookie: u64) {
        let _ = self.sock_netns.remove(&cookie);
    }

    /// # Errors
    /// When the kernel refuses the update.
    pub fn upsert_maglev(&mut self, key: MaglevKey, backend_id: u32) -> Result<(), DatapathError> {
        self.maglev.insert(key, backend_id, 0).map_err(map_err(MAGLEV_MAP))
    }

    pub fn delete_maglev(&mut self, key: MaglevKey) {
        let _ = self.maglev.remove(&key);
    }

    /// Where the socket load balancer's cgroup links are pinned (apart from the per-veth
    /// links, whose pin names carry interface names).
    /// Attaches HTTP enforcement (sock_ops at `cgroup`, the sk_skb programs to their
    /// sockhash); links pinned under `<pin dir>/http`.
    ///
    /// # Errors
    /// When the cgroup cannot be opened or the kernel refuses an attachment.
    pub fn attach_http(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let dir = self.links_dir.with_file_name("http");
        self.http.attach(&mut self.ebpf, cgroup, &dir)
    }

    /// Installs the HTTP rules of every port on the node (see `kernel::http`).
    ///
    /// # Errors
    /// The rules do not fit the kernel's table (the previous ones stay), or a write fails.
    pub fn apply_http(
        &mut self,
        ports: &std::collections::BTreeMap<moat_dataplane_common::l7::L7PortKey, super::http::PortRules>,
    ) -> Result<(), String> {
        self.http.apply(ports)
    }

    /// The ports with HTTP rules in the kernel now.
    #[must_use]
    pub fn http_ports(&self) -> Vec<moat_dataplane_common::l7::L7PortKey> {
        self.http.port_keys()
    }

    fn sock_dir(&self) -> PathBuf {
        self.links_dir.with_file_name("socklb")
    }

    /// Removes the socket load balancer's cgroup links (`--socket-lb=false`).
    pub fn detach_socket_lb(&mut self) {
        for name in SOCK_PROGRAMS.into_iter().chain([SOCK_RELEASE]) {
            let pin = self.sock_dir().join(name);
            if let Ok(link) = PinnedLink::from_pin(&pin) {
                let _ = link.unpin();
            }
        }
    }

    /// # Errors
    /// When the kernel refuses the update (e.g. the map is full).
    pub fn upsert_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), DatapathError> {
        self.services.insert(key, value, 0).map_err(map_err(SERVICES_MAP))
    }

    pub fn delete_service(&mut self, key: ServiceKey) {
        let _ = self.services.remove(&key);
    }

    #[must_use]
    pub fn service_entries(&self) -> Vec<(ServiceKey, ServiceValue)> {
        self.services.iter().flatten().collect()
    }

    /// ClientIP affinity entries (client, service) → the backend it sticks to.
    #[must_use]
    pub fn affinity_entries(&self) -> Vec<(AffinityKey, AffinityValue)> {
        self.affinity.iter().flatten().collect()
    }

    /// Sockets the socket LB translated to one of `backends` (address, port): (socket
    /// cookie, backend address, port).
    #[must_use]
    pub fn translated_sockets(&self, backends: &[(Ipv4Addr, u16)]) -> std::collections::BTreeSet<(u64, Ipv4Addr, u16)> {
        self.sock_revnat
            .keys()
            .flatten()
            .map(|k| (k.cookie, Ipv4Addr::from(u32::from_be(k.addr)), u16::from_be(k.port)))
            .filter(|(_, a, p)| backends.contains(&(*a, *p)))
            .collect()
    }

    /// Whether the Maglev table of `svc_id` has an entry (its slot 0).
    #[must_use]
    pub fn maglev_table_exists(&self, svc_id: u32) -> bool {
        self.maglev.get(&MaglevKey { svc_id, slot: 0 }, 0).is_ok()
    }

    pub fn delete_affinity(&mut self, key: &AffinityKey) {
        let _ = self.affinity.remove(key);
    }

    /// # Errors
    /// When the kernel refuses the update.
    pub fn upsert_backend(&mut self, id: u32, value: Backend4) -> Result<(), DatapathError> {
        self.backends.insert(id, value, 0).map_err(map_err(BACKENDS_MAP))
    }

    pub fn delete_backend(&mut self, id: u32) {
        let _ = self.backends.remove(&id);
    }

    #[must_use]
    pub fn backend_entries(&self) -> Vec<(u32, Backend4)> {
        self.backends.iter().flatten().collect()
    }

    /// A pod program by name (for `BPF_PROG_TEST_RUN` benchmarks).
    ///
    /// # Errors
    /// When the object has no such classifier.
    pub fn program_mut(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        program(&mut self.ebpf, name)
    }

    /// The event ring buffer, handed to the reader task once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// # Errors
    /// When the kernel refuses the update (e.g. the map is full).
    /// (policy, ipcache) entries the maps can hold: the kernel's `max_entries`.
    #[must_use]
    pub fn capacity(&self) -> (usize, usize) {
        let size = |m: &MapData| m.info().map_or(0, |i| i.max_entries() as usize);
        (size(self.policy.map()), size(self.ipcache.map()))
    }

    pub fn upsert_policy(&mut self, prefix: u32, key: PolicyKey, value: PolicyValue) -> Result<(), DatapathError> {
        self.policy
            .insert(&LpmKey::new(prefix, key), value, 0)
            .map_err(map_err(POLICY_MAP))
    }

    pub fn delete_policy(&mut self, prefix: u32, key: PolicyKey) {
        let _ = self.policy.remove(&LpmKey::new(prefix, key));
    }

    /// Every stored policy entry (what a restarted agent diffs against).
    #[must_use]
    pub fn policy_entries(&self) -> Vec<((u32, PolicyKey), PolicyValue)> {
        self.policy
            .iter()
            .flatten()
            .map(|(k, v)| ((k.prefix_len(), k.data()), v))
            .collect()
    }

    /// # Errors
    /// When the kernel refuses the update.
    pub fn upsert_ipcache(&mut self, ip: Ipv4Addr, prefix: u8, identity: u32) -> Result<(), DatapathError> {
        self.ipcache
            .insert(
                &LpmKey::new(u32::from(prefix), ip_key(ip)),
                IpcacheInfo { identity, _pad: 0 },
                0,
            )
            .map_err(map_err(IPCACHE_MAP))
    }

    pub fn delete_ipcache(&mut self, ip: Ipv4Addr, prefix: u8) {
        let _ = self.ipcache.remove(&LpmKey::new(u32::from(prefix), ip_key(ip)));
    }

    #[must_use]
    pub fn ipcache_entries(&self) -> Vec<((Ipv4Addr, u8), u32)> {
        self.ipcache
            .iter()
            .flatten()
            .map(|(k, v)| {
                (
                    (Ipv4Addr::from(u32::from_be(k.data())), k.prefix_len() as u8),
                    v.identity,
                )
            })
            .collect()
    }

    #[must_use]
    pub fn config(&self) -> Config {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// # Errors
    /// When the kernel refuses the update.
    pub fn set_config(&mut self, cfg: Config) -> Result<(), DatapathError> {
        self.config.set(0, cfg, 0).map_err(map_err(CONFIG_MAP))
    }

    /// Tracked flows (a snapshot; the LRU map changes while it is read).
    #[must_use]
    pub fn ct_entries(&self) -> Vec<(CtKey, CtEntry)> {
        self.ct.iter().flatten().collect()
    }

    /// Non-zero counters summed over CPUs, by slot number.
    #[must_use]
    pub fn counter_slots(&self) -> Vec<(u32, u64)> {
        super::stats::counter_slots(&self.metrics)
    }

    /// Counters summed over CPUs, by name; zero counters are left out.
    #[must_use]
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        super::stats::named(self.counter_slots())
    }
}

/// Map key for an address: the wire (big-endian) bytes read as a native u32, exactly
/// as the eBPF program reads `iph->daddr`.
fn ip_key(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or_else(|| DatapathError::Program {
        name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    prog.try_into().map_err(|source| DatapathError::Program {
        name,
        source: Box::new(source),
    })
}

fn sock_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or_else(|| DatapathError::Program {
        name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    prog.try_into().map_err(|source| DatapathError::Program {
        name,
        source: Box::new(source),
    })
}

fn release_program(ebpf: &mut Ebpf) -> Result<&mut CgroupSock, DatapathError> {
    let prog = ebpf.program_mut(SOCK_RELEASE).ok_or_else(|| DatapathError::Program {
        name: SOCK_RELEASE,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    prog.try_into().map_err(|source| DatapathError::Program {
        name: SOCK_RELEASE,
        source: Box::new(source),
    })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name).ok_or_else(|| DatapathError::Map {
        name,
        source: Box::new(aya::maps::MapError::InvalidName { name: name.to_string() }),
    })
}

/// Per-packet fixtures run in the kernel with `BPF_PROG_TEST_RUN` (needs root):
/// input packet → expected verdict, expected rewrite and counter.
#[cfg(test)]
mod prog_test_run {
    use super::*;
    use aya::programs::{TestRun as _, TestRunOptions};

    const TC_ACT_OK: u32 = 0;
    const TC_ACT_SHOT: u32 = 2;
    const TC_ACT_REDIRECT: u32 = 7;
    /// `BPF_PROG_TEST_RUN` runs the skb on loopback.
    const LO: u32 = 1;

    struct PinDir(PathBuf);
    impl PinDir {
        /// A unique pin directory under `/sys/fs/bpf`, mounting bpffs first on a bare host.
        fn new(name: &str) -> Self {
            // Once: tests run in parallel and would stack mounts.
            static BPFFS: std::sync::Once = std::sync::Once::new();
            BPFFS.call_once(|| {
                crate::kernel::netdev::ensure_bpffs(Path::new("/sys/fs/bpf")).expect("mount bpffs at /sys/fs/bpf");
            });
            PinDir(PathBuf::from(format!("/sys/fs/bpf/{name}-{}", std::process::id())))
        }
    }
    impl Drop for PinDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    use crate::fixtures::{endpoint, ipv4_checksum, ipv4_udp};

    /// A loaded datapath (pinned under a unique name) with pod `a` sending on loopback
    /// and pod `b` behind interface 77.
    fn two_pods(tag: &str, a: Ipv4Addr, b: Ipv4Addr) -> (PinDir, Datapath) {
        let pin = PinDir::new(tag);
        let mut dp = Datapath::load(&pin.0).expect("load datapath");
        dp.upsert_endpoint(a, endpoint(LO, 1)).unwrap();
        dp.upsert_endpoint(b, endpoint(77, 2)).unwrap();
        (pin, dp)
    }

    fn packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
        ipv4_udp(src, dst, ttl, 0, 0)
    }

    fn run(dp: &mut Datapath, prog: &'static str, data: &[u8]) -> (u32, Vec<u8>) {
        let p = program(&mut dp.ebpf, prog).unwrap();
        let mut out = vec![0u8; data.len() + 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(data);
        opts.data_out = Some(&mut out);
        let r = p
            .test_run(opts)
            .unwrap_or_else(|e| panic!("test_run {prog}: {e}: {:?}", std::error::Error::source(&e)));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn counter(dp: &Datapath, name: &str) -> u64 {
        dp.counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| v)
    }

    #[test]
    fn from_container_verdicts() {
        if !crate::fixtures::have_root("BPF_PROG_TEST_RUN fixtures") {
            return;
        }
        let pin = PinDir::new("moat-unit");
        let mut dp = Datapath::load(&pin.0).expect("load datapath");
        let (a, b, stranger) = (
            "10.1.0.1".parse().unwrap(),
            "10.1.0.2".parse().unwrap(),
            "10.1.0.9".parse().unwrap(),
        );
        let b_info = EndpointInfo {
            ifindex: 77,
            endpoint_id: 2,
            pod_mac: [0x0a, 1, 2, 3, 4, 5],
            host_mac: [0x0e, 1, 2, 3, 4, 5],
            flags: 0,
        };
        dp.upsert_endpoint(
            a,
            EndpointInfo {
                ifindex: LO,
                endpoint_id: 1,
                pod_mac: [0; 6],
                host_mac: [0; 6],
                flags: 0,
            },
        )
        .unwrap();
        dp.upsert_endpoint(b, b_info).unwrap();
        let wrong_veth = "10.1.0.3".parse().unwrap();
        dp.upsert_endpoint(wrong_veth, EndpointInfo { ifindex: 999, ..b_info })
            .unwrap();

        let mut arp = packet(a, b, 64);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let ipv6 = crate::fixtures::ipv6_udp(5000, 7300);
        // (A truncated IPv4 header cannot be fed in: the kernel's test runner itself
        // rejects it with EINVAL before the program runs.)
        let cases: [(&str, Vec<u8>, u32, &str); 7] = [
            ("ARP passes to the stack", arp, TC_ACT_OK, "pass_arp"),
            ("IPv6 is dropped", ipv6, TC_ACT_SHOT, "drop_unsupported_l3"),
            (
                "unknown source address",
                packet(stranger, b, 64),
                TC_ACT_SHOT,
                "drop_invalid_source_ip",
            ),
            (
                "source owned by another veth",
                packet(wrong_veth, b, 64),
                TC_ACT_SHOT,
                "drop_invalid_source_ip",
            ),
            (
                "destination not local",
                packet(a, stranger, 64),
                TC_ACT_OK,
                "forward_stack",
            ),
            (
                "TTL 1 is left to the stack",
                packet(a, b, 1),
                TC_ACT_OK,
                "forward_stack",
            ),
            (
                "local pod to local pod",
                packet(a, b, 64),
                TC_ACT_REDIRECT,
                "forward_redirect_peer",
            ),
        ];
        for (what, pkt, want, counter_name) in cases {
            let before = counter(&dp, counter_name);
            let (got, out) = run(&mut dp, "from_container", &pkt);
            assert_eq!(got, want, "{what}");
            assert_eq!(counter(&dp, counter_name), before + 1, "{what}: counter {counter_name}");
            if want == TC_ACT_REDIRECT {
                assert_eq!(&out[0..6], &b_info.pod_mac, "{what}: destination MAC is the pod's");
                assert_eq!(&out[6..12], &b_info.host_mac, "{what}: source MAC is the host veth's");
                assert_eq!(out[14 + 8], 63, "{what}: TTL decremented");
                assert_eq!(ipv4_checksum(&out[14..34]), 0, "{what}: IPv4 checksum still valid");
            }
        }
        let (got, _) = run(&mut dp, "to_container", &packet(stranger, a, 64));
        assert_eq!(got, TC_ACT_OK);
    }

    /// A client that reuses its port after a RST starts a new connection: the conntrack
    /// entry's closing state (short timeout) is cleared by the new SYN.
    #[test]
    fn a_new_syn_on_a_reset_tuple_starts_over() {
        use crate::fixtures::ipv4_tcp;
        use moat_dataplane_common::ct_flag;
        if !crate::fixtures::have_root("BPF_PROG_TEST_RUN fixtures") {
            return;
        }
        let (a, b): (Ipv4Addr, Ipv4Addr) = ("10.3.0.1".parse().unwrap(), "10.3.0.2".parse().unwrap());
        let (_pin, mut dp) = two_pods("moat-unit-rst", a, b);
        let flags = |dp: &Datapath| {
            dp.ct_entries()
                .iter()
                .find(|(k, _)| k.saddr == ip_key(a) && k.dport == 80u16.to_be())
                .map(|(_, e)| e.flags)
                .expect("tracked")
        };
        let closing = ct_flag::RST | ct_flag::FIN_ORIG | ct_flag::FIN_REPLY;
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const ACK: u8 = 0x10;
        for (what, tcp_flags) in [("SYN", SYN), ("ACK", ACK), ("RST", RST | ACK)] {
            let (got, _) = run(&mut dp, "from_container", &ipv4_tcp(a, b, 40000, 80, tcp_flags));
            assert_eq!(got, TC_ACT_REDIRECT, "{what}");
        }
        assert_ne!(flags(&dp) & ct_flag::RST, 0, "the RST is recorded");
        let (got, _) = run(&mut dp, "from_container", &ipv4_tcp(a, b, 40000, 80, SYN));
        assert_eq!(got, TC_ACT_REDIRECT);
        assert_eq!(flags(&dp) & closing, 0, "a new SYN clears the closing state");
    }

    fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
        ipv4_udp(src, dst, 64, sport, dport)
    }

    #[test]
    fn policy_and_conntrack_verdicts() {
        use moat_dataplane_common::{direction, ACTION_ALLOW, ACTION_DENY, PREFIX_FULL, PREFIX_SUBJECT_DIR};
        if !crate::fixtures::have_root("BPF_PROG_TEST_RUN fixtures") {
            return;
        }
        let (a, b): (Ipv4Addr, Ipv4Addr) = ("10.2.0.1".parse().unwrap(), "10.2.0.2".parse().unwrap());
        let (_pin, mut dp) = two_pods("moat-unit-pol", a, b);
        dp.upsert_ipcache(a, 32, 300).unwrap();
        dp.upsert_ipcache(b, 32, 301).unwrap();
        // b is isolated for ingress (cookie 20) and allows UDP/80 from a (cookie 21).
        dp.upsert_policy(
            PREFIX_SUBJECT_DIR,
            PolicyKey::new(301, direction::INGRESS, 0, 0, 0),
            PolicyValue {
                action: ACTION_DENY,
                cookie: 20,
            },
        )
        .unwrap();
        let allow = PolicyKey::new(301, direction::INGRESS, 300, 17, 80);
        dp.upsert_policy(
            PREFIX_FULL,
            allow,
            PolicyValue {
                action: ACTION_ALLOW,
                cookie: 21,
            },
        )
        .unwrap();
        dp.set_config(Config {
            policy_rev: 1,
            ..Config::default()
        })
        .unwrap();

        let denied_before = counter(&dp, "drop_policy_denied");
        let (got, _) = run(&mut dp, "from_container", &udp(a, b, 5000, 81));
        assert_eq!(got, TC_ACT_SHOT, "port 81 is not allowed");
        assert_eq!(counter(&dp, "drop_policy_denied"), denied_before + 1);

        let (got, _) = run(&mut dp, "from_container", &udp(a, b, 5000, 80));
        assert_eq!(got, TC_ACT_REDIRECT, "UDP/80 from a is allowed");
        let flows = dp.ct_entries();
        let (_, e) = flows
            .iter()
            .find(|(k, _)| k.daddr == ip_key(b) && k.dport == 80u16.to_be())
            .expect("the allowed flow is tracked");
        assert_eq!((e.src_identity, e.dst_identity, e.cookie), (300, 301, 21));

        let est_before = counter(&dp, "ct_established");
        let (got, _) = run(&mut dp, "from_container", &udp(a, b, 5000, 80));
        assert_eq!(got, TC_ACT_REDIRECT);
        assert_eq!(
            counter(&dp, "ct_established"),
            est_before + 1,
            "second packet uses the CT entry"
        );

        // Removing the allow and bumping the revision stops the established flow.
        dp.delete_policy(PREFIX_FULL, allow);
        dp.set_config(Config {
            policy_rev: 2,
            ..Config::default()
        })
        .unwrap();
        let (got, _) = run(&mut dp, "from_container", &udp(a, b, 5000, 80));
        assert_eq!(got, TC_ACT_SHOT, "established flow re-checked after the policy change");
        assert!(
            !dp.ct_entries()
                .iter()
                .any(|(k, _)| k.daddr == ip_key(b) && k.dport == 80u16.to_be()),
            "the denied flow is forgotten"
        );

        // A flow that started while its destination was not a local pod (egress check
        // only) meets that pod's ingress policy once it is one.
        let late: Ipv4Addr = "10.2.0.3".parse().unwrap();
        let (got, _) = run(&mut dp, "from_container", &udp(a, late, 6000, 80));
        assert_eq!(got, TC_ACT_OK, "not a local pod yet: handed to the stack");
        dp.upsert_endpoint(late, endpoint(78, 3)).unwrap();
        dp.upsert_ipcache(late, 32, 302).unwrap();
        dp.upsert_policy(
            PREFIX_SUBJECT_DIR,
            PolicyKey::new(302, direction::INGRESS, 0, 0, 0),
            PolicyValue {
                action: ACTION_DENY,
                cookie: 22,
            },
        )
        .unwrap();
        let (got, _) = run(&mut dp, "from_container", &udp(a, late, 6000, 80));
        assert_eq!(
            got, TC_ACT_SHOT,
            "the cached verdict did not include the new pod's ingress policy"
        );

        // Audit mode: the same flow passes and is counted as audited.
        dp.set_config(Config {
            policy_rev: 3,
            flags: moat_dataplane_common::config_flag::AUDIT,
            ..Config::default()
        })
        .unwrap();
        let audit_before = counter(&dp, "flow_audit");
        let (got, _) = run(&mut dp, "from_container", &udp(a, b, 5001, 80));
        assert_eq!(got, TC_ACT_REDIRECT, "audit mode lets the flow through");
        assert_eq!(counter(&dp, "flow_audit"), audit_before + 1);
    }
}
