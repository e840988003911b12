//! The kernel side of the agent: loads the eBPF object, owns its maps, attaches the
//! pod programs to host veths with tcx, and pins maps and links under the pin dir.
//!
//! Pinning is what lets the agent restart without a gap: maps keep their contents and
//! tcx links stay attached while no agent runs; a new agent re-opens the pinned maps
//! and atomically swaps its freshly loaded programs into the pinned links.
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader};
use moat_dataplane_common::{metric, metric_name, EndpointInfo, ENDPOINTS_MAP, METRICS_MAP};

/// The object built by build.rs from `dataplane-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/moat-dataplane"));

/// (program, hook, pin suffix) for each pod-facing program.
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
    links_dir: PathBuf,
}

impl Datapath {
    /// Loads (or re-adopts) the datapath with maps pinned in `pin_dir`.
    ///
    /// # Errors
    /// When the kernel rejects the object or a pin cannot be created.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|source| DatapathError::Pin {
            path: links_dir.clone(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
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
        Ok(Self {
            ebpf,
            endpoints,
            metrics,
            links_dir,
        })
    }

    fn link_pin(&self, ifname: &str, suffix: &str) -> PathBuf {
        self.links_dir.join(format!("{ifname}_{suffix}"))
    }

    /// Attaches both pod programs to the host veth `ifname` and pins the links.
    /// A link pinned by an earlier agent is re-used: the new program replaces the old
    /// one atomically, so no packet sees a veth without a program.
    ///
    /// # Errors
    /// When attaching or pinning fails.
    pub fn attach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        for (name, hook, suffix) in POD_PROGRAMS {
            let pin = self.link_pin(ifname, suffix);
            let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                program: name,
                ifname: ifname.to_string(),
                source,
            };
            let prog = program(&mut self.ebpf, name)?;
            let (link_id, fresh) = match PinnedLink::from_pin(&pin) {
                Ok(old) => {
                    let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| attach_err(Box::new(e)))?;
                    (prog.attach_to_link(link).map_err(|e| attach_err(Box::new(e)))?, false)
                }
                Err(LinkError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.kind() == io::ErrorKind::NotFound =>
                {
                    let id = prog
                        .attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
                        .map_err(|e| attach_err(Box::new(e)))?;
                    (id, true)
                }
                Err(e) => return Err(attach_err(Box::new(e))),
            };
            let link: FdLink = prog
                .take_link(link_id)
                .map_err(|e| attach_err(Box::new(e)))?
                .try_into()
                .map_err(|e: LinkError| attach_err(Box::new(e)))?;
            if fresh {
                // The pin keeps the link (and so the attachment) alive after we drop the fd.
                link.pin(&pin).map_err(|e| attach_err(Box::new(e)))?;
            }
        }
        Ok(())
    }

    /// Detaches the pod programs from `ifname` by removing the link pins (the kernel
    /// detaches a link when its last reference goes). Missing pins are fine.
    pub fn detach(&mut self, ifname: &str) {
        for (_, _, suffix) in POD_PROGRAMS {
            let pin = self.link_pin(ifname, suffix);
            match PinnedLink::from_pin(&pin) {
                Ok(link) => {
                    if let Err(e) = link.unpin() {
                        tracing::warn!(pin = %pin.display(), error = %e, "unpinning link");
                    }
                }
                Err(_) => {
                    // A link whose device is gone may not open; the file still must go.
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

    /// Counters summed over CPUs, by name; zero counters are left out.
    #[must_use]
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        (0..metric::SLOTS)
            .filter_map(|slot| {
                let name = metric_name(slot)?;
                let total: u64 = self.metrics.get(&slot, 0).ok()?.iter().sum();
                (total > 0).then_some((name, total))
            })
            .collect()
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

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name).ok_or_else(|| DatapathError::Map {
        name,
        source: Box::new(aya::maps::MapError::InvalidName { name: name.to_string() }),
    })
}
