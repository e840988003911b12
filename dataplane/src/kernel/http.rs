//! HTTP (L7) enforcement in the kernel: loads and attaches the sock_ops and sk_skb
//! programs (`dataplane-ebpf/src/http.rs`) and writes the per-port rule DFAs.
//!
//! Attachment outlives the agent: the sock_ops link is pinned, and the verdict (alone: no
//! stream parser, see `dataplane-ebpf/src/http.rs`) stays attached to the pinned `L7_SOCKS` sockhash (attached with
//! `BPF_PROG_ATTACH`, which aya would undo when the program object drops, so the link
//! id is forgotten). A restarted agent attaches its own programs over them.
//!
//! DFA tables are double-buffered: a new rule set is written into the half of
//! `L7_DFA` no port points at, then the ports are switched over. A request is judged by
//! the table its port pointed at when the request arrived, never by half-written rows.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, SockHash};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{CgroupAttachMode, SkSkb, SockOps};
use aya::Ebpf;
use moat_dataplane_common::l7::{DfaRow, L7Port, L7PortKey, L7_DFA_MAP, L7_PORTS_MAP, MAX_DFA_ROWS};
use moat_policy_compiler::http::dfa::PortDfa;

use super::datapath::DatapathError;

const SOCKOPS: &str = "http_sockops";
const VERDICT: &str = "http_verdict";
const SOCKS_MAP: &str = "moat_l7socks_v2";

/// One port's rules as the kernel gets them.
#[derive(Debug, Clone)]
pub struct PortRules {
    pub dfa: PortDfa,
    /// `L7F_*`.
    pub flags: u32,
}

/// Handles on the HTTP maps; which half of the DFA table is live.
pub struct Http {
    ports: HashMap<MapData, L7PortKey, L7Port>,
    dfa: Array<MapData, DfaRow>,
    socks: SockHash<MapData, u64>,
    /// Half of `L7_DFA` the ports point at: 0 = rows 1..8192, 1 = rows 8192..16384.
    live_half: u32,
}

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program {
        name,
        source: Box::new(source),
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name,
        source: Box::new(source),
    }
}

fn missing(name: &'static str) -> DatapathError {
    DatapathError::Program {
        name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

/// The program `name` as its type.
fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| missing(name))?
        .try_into()
        .map_err(prog_err(name))
}

impl Http {
    /// Loads the two programs and takes the HTTP maps out of `ebpf`.
    ///
    /// # Errors
    /// When the kernel refuses a program (the verifier) or a map is missing.
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        typed::<SockOps>(ebpf, SOCKOPS)?.load().map_err(prog_err(SOCKOPS))?;
        typed::<SkSkb>(ebpf, VERDICT)?.load().map_err(prog_err(VERDICT))?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| DatapathError::Map {
                name,
                source: Box::new(aya::maps::MapError::InvalidName { name: name.to_string() }),
            })
        };
        let ports = HashMap::try_from(take(ebpf, L7_PORTS_MAP)?).map_err(map_err(L7_PORTS_MAP))?;
        let dfa = Array::try_from(take(ebpf, L7_DFA_MAP)?).map_err(map_err(L7_DFA_MAP))?;
        let socks = SockHash::try_from(take(ebpf, SOCKS_MAP)?).map_err(map_err(SOCKS_MAP))?;
        let mut http = Self {
            ports,
            dfa,
            socks,
            live_half: 0,
        };
        // A restarted agent: keep writing into the half the pinned ports do not use.
        if let Some(Ok((_, p))) = http.ports.iter().next() {
            http.live_half = u32::from(p.start >= MAX_DFA_ROWS / 2);
        }
        Ok(http)
    }

    /// Attaches sock_ops at `cgroup` (link pinned under `pin_dir`) and the verdict to the
    /// sockhash.
    ///
    /// # Errors
    /// When the cgroup cannot be opened or the kernel refuses an attachment.
    pub fn attach(&mut self, ebpf: &mut Ebpf, cgroup: &Path, pin_dir: &Path) -> Result<(), DatapathError> {
        let attach_err = |program: &'static str| {
            move |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                program,
                ifname: cgroup.display().to_string(),
                source,
            }
        };
        std::fs::create_dir_all(pin_dir).map_err(|source| DatapathError::Pin {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let dir = std::fs::File::open(cgroup).map_err(|source| DatapathError::Pin {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let ops = typed::<SockOps>(ebpf, SOCKOPS)?;
        let id = ops
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|e| attach_err(SOCKOPS)(Box::new(e)))?;
        let link: FdLink = ops
            .take_link(id)
            .map_err(|e| attach_err(SOCKOPS)(Box::new(e)))?
            .try_into()
            .map_err(|e: LinkError| attach_err(SOCKOPS)(Box::new(e)))?;
        pin_replacing(link, &pin_dir.join(SOCKOPS)).map_err(attach_err(SOCKOPS))?;
        let p = typed::<SkSkb>(ebpf, VERDICT)?;
        let id = p
            .attach(self.socks.fd())
            .map_err(|e| attach_err(VERDICT)(Box::new(e)))?;
        // Stays attached to the pinned map after this agent exits (see the module doc).
        let link = p.take_link(id).map_err(|e| attach_err(VERDICT)(Box::new(e)))?;
        std::mem::forget(link);
        Ok(())
    }

    /// The ports with HTTP rules in the kernel now (a restarted agent starts from these).
    #[must_use]
    pub fn port_keys(&self) -> Vec<L7PortKey> {
        self.ports.keys().filter_map(Result::ok).collect()
    }

    /// Installs `ports` (replacing every earlier port): tables into the idle half, then
    /// the port entries, then stale ports removed.
    ///
    /// # Errors
    /// The tables do not fit in half of `L7_DFA` (nothing changes then: the previous
    /// rules stay enforced), or a map write fails.
    pub fn apply(&mut self, ports: &BTreeMap<L7PortKey, PortRules>) -> Result<(), String> {
        let half = MAX_DFA_ROWS / 2;
        let idle = 1 - self.live_half;
        let (first, end) = if idle == 0 { (1, half) } else { (half, MAX_DFA_ROWS) };
        let need: usize = ports.values().map(|p| p.dfa.rows.len() - 1).sum();
        if need > (end - first) as usize {
            return Err(format!(
                "the HTTP rules of this node need {need} DFA rows; the kernel table holds {} (fewer or simpler rules)",
                end - first
            ));
        }
        let mut next = first;
        let mut entries = Vec::with_capacity(ports.len());
        for (key, p) in ports {
            let base = u16::try_from(next).map_err(|_| "DFA row index over u16".to_string())?;
            for (i, row) in p.dfa.placed_at(base).iter().enumerate() {
                self.dfa
                    .set(next + i as u32, row, 0)
                    .map_err(|e| format!("writing DFA row {}: {e}", next + i as u32))?;
            }
            entries.push((
                *key,
                L7Port {
                    start: next,
                    flags: p.flags,
                },
            ));
            next += (p.dfa.rows.len() - 1) as u32;
        }
        for (key, value) in &entries {
            self.ports
                .insert(key, value, 0)
                .map_err(|e| format!("writing HTTP port {key:?}: {e}"))?;
        }
        let stale: Vec<L7PortKey> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ports.contains_key(k))
            .collect();
        for k in stale {
            let _ = self.ports.remove(&k);
        }
        self.live_half = idle;
        Ok(())
    }
}

/// Pins `link` at `pin`, replacing an earlier agent's link only once the new one is in.
fn pin_replacing(link: FdLink, pin: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let fresh: PathBuf = pin.with_file_name(format!(
        "{}_new",
        pin.file_name().and_then(|n| n.to_str()).unwrap_or("link")
    ));
    let _ = std::fs::remove_file(&fresh);
    link.pin(&fresh)?;
    if let Ok(old) = PinnedLink::from_pin(pin) {
        let _ = old.unpin();
    }
    std::fs::rename(&fresh, pin)?;
    Ok(())
}
