//! From desired state to the policy maps: identities, compile, diff, apply.
//!
//! The compiler's `World` is built from the local endpoints and the decoded state
//! (`Inputs`); every pod gets an identity (same labels → same number, persisted). Two
//! ways lead to the maps:
//! - a new state: `prepare` numbers its rules and returns a `Job` that a compile thread
//!   runs (`Job::run`, the expensive part); `finish` brings the result up to the endpoints
//!   of now (pods that came or went while it compiled) and applies it;
//! - a pod added or removed: `refresh` recompiles only the entries that name identities
//!   whose pods changed (`Compiler::recompute`), on the caller's thread, in milliseconds.
//!
//! Applying diffs against what the maps hold, checks that the change fits the maps, and
//! writes in the fail-closed order of `diff::plan` (isolating entries first, openings
//! last). The policy revision is bumped when established flows must re-check.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use moat_dataplane_common::{config_flag, Config};
use moat_identity::{reserved, reserved_name, Allocator, Identity};
use moat_k8s_model::{self as k8s, Object};
use moat_policy_compiler::compile::{Compiled, Compiler};
use moat_policy_compiler::diff::{Plan, Step};
use moat_policy_compiler::world::{Mode, PodInfo, World};

use crate::endpoint::EndpointRecord;
use crate::kernel::datapath::Datapath;
use crate::persist::{read_json, write_json};

/// A compiled policy that does not fit the maps. Nothing was written: the maps keep
/// what they enforced.
#[derive(Debug)]
pub struct DoesNotFit {
    pub map: &'static str,
    pub needed: usize,
    pub capacity: usize,
}

impl std::fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = if self.map == "policy" {
            "--policy-map-entries"
        } else {
            "--ipcache-map-entries"
        };
        write!(
            f,
            "the policy needs {} entries in the {} map, which holds {} (raise {flag}, or select fewer peers and ports)",
            self.needed, self.map, self.capacity
        )
    }
}

impl std::error::Error for DoesNotFit {}

/// Node-wide policy settings from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub mode: Mode,
    pub audit: bool,
    pub flow_events_per_sec: u32,
    pub identity_grace_secs: u64,
}

#[must_use]
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Default => "default",
        Mode::Always => "always",
        Mode::Never => "never",
    }
}

/// What the compiler reads from one desired state, decoded once per state generation.
#[derive(Debug, Default)]
pub struct Inputs {
    pub generation: u64,
    namespaces: BTreeMap<String, k8s::Namespace>,
    policies: Arc<Vec<k8s::NetworkPolicy>>,
    /// MoatNetworkPolicies with HTTP rules (their L3/L4 part is in `policies` too).
    http: Arc<Vec<k8s::MoatNetworkPolicy>>,
    /// Pod manifests by (namespace, name): labels of local endpoints, and remote peers.
    pods: BTreeMap<(String, String), k8s::Pod>,
}

impl Inputs {
    /// The MoatNetworkPolicies with HTTP rules.
    #[must_use]
    pub fn http(&self) -> Arc<Vec<k8s::MoatNetworkPolicy>> {
        Arc::clone(&self.http)
    }

    #[must_use]
    pub fn new<'a>(generation: u64, objects: impl Iterator<Item = &'a Object>) -> Self {
        let mut inputs = Self {
            generation,
            ..Self::default()
        };
        let mut policies = Vec::new();
        let mut http = Vec::new();
        for o in objects {
            match o {
                Object::Namespace(n) => {
                    inputs.namespaces.insert(n.name.clone(), n.clone());
                }
                Object::Pod(p) => {
                    inputs.pods.insert((p.namespace.clone(), p.name.clone()), p.clone());
                }
                Object::NetworkPolicy(p) => policies.push(p.clone()),
                // Its L3/L4 meaning, and its HTTP rules for the kernel's HTTP path.
                Object::MoatNetworkPolicy(p) => {
                    policies.push(moat_policy(p));
                    if !p.http.is_empty() {
                        http.push(p.clone());
                    }
                }
                Object::Service(_) | Object::EndpointSlice(_) | Object::Node(_) | Object::Other { .. } => {}
            }
        }
        inputs.policies = Arc::new(policies);
        inputs.http = Arc::new(http);
        inputs
    }
}

/// A MoatNetworkPolicy as the compiler sees it: a NetworkPolicy whose name says its kind
/// (so rules and flows name it, and it never collides with a NetworkPolicy's name).
fn moat_policy(p: &k8s::MoatNetworkPolicy) -> k8s::NetworkPolicy {
    let mut np = p.policy.clone();
    np.name = format!("{}:{}", k8s::moat_policy::KIND, np.name);
    np
}

/// Installs the HTTP rules of every local server port. Fails closed: a port whose rules
/// do not build gets a table that refuses every request, and when the node's tables do
/// not fit the kernel's, every port gets one. Returns the ports.
fn apply_http(
    dp: &mut Datapath,
    world: &World,
    policies: &[k8s::MoatNetworkPolicy],
    audit: bool,
) -> BTreeSet<(Ipv4Addr, u16)> {
    use crate::kernel::http::PortRules;
    use moat_dataplane_common::l7::{L7PortKey, L7F_AUDIT};
    use moat_policy_compiler::http::{dfa, ports};
    let key = |ip: Ipv4Addr, port: u16| L7PortKey {
        addr: u32::from(ip).to_be(),
        port,
        _pad: 0,
    };
    let flags = if audit { L7F_AUDIT } else { 0 };
    let wanted = ports::node_ports(world, policies);
    let mut tables = BTreeMap::new();
    for ((ip, port), rules) in &wanted {
        let (table, error) = ports::port_table(rules);
        if let Some(e) = error {
            tracing::error!(%ip, port, error = %e, "HTTP rules of this port refused; every request to it is refused until they are fixed");
        }
        tables.insert(key(*ip, *port), PortRules { dfa: table, flags });
    }
    if let Err(e) = dp.apply_http(&tables) {
        tracing::error!(error = %e, "HTTP rules do not fit the kernel's tables; every HTTP-rule port refuses all requests");
        let closed = wanted
            .keys()
            .map(|(ip, port)| {
                (
                    key(*ip, *port),
                    PortRules {
                        dfa: dfa::deny_all(),
                        flags,
                    },
                )
            })
            .collect();
        if let Err(e) = dp.apply_http(&closed) {
            tracing::error!(error = %e, "writing the HTTP port tables failed");
        }
    }
    wanted.into_keys().collect()
}

/// A full compile to run off the owner thread: the world and a copy of the numbering.
pub struct Job {
    pub inputs: Arc<Inputs>,
    world: Arc<World>,
    compiler: Arc<Compiler>,
}

impl Job {
    /// The expensive part, on the compile thread.
    #[must_use]
    pub fn run(&self) -> Compiled {
        self.compiler.compile_prepared(&self.world)
    }
}

/// (identity, labels, in use, local pods "ns/name"), for `moatctl identities`.
pub type IdentityRow = (Identity, Vec<String>, bool, Vec<String>);

pub struct Enforcer {
    pub settings: Settings,
    /// The numbering of rules and ipBlocks (only this owner changes it).
    compiler: Arc<Compiler>,
    allocator: Allocator,
    allocator_file: PathBuf,
    /// What the maps hold (read from them at start, then what we applied).
    applied: Arc<Compiled>,
    /// The state whose policy the maps hold.
    pub inputs: Arc<Inputs>,
    /// The last compiled world and its result (shared with the read-only view).
    pub world: Arc<World>,
    pub compiled: Arc<Compiled>,
    /// (identity, labels, in use, local pods "ns/name") and names, for the view.
    pub identities: Arc<Vec<IdentityRow>>,
    pub identity_names: Arc<BTreeMap<Identity, String>>,
    pub revision: u32,
    /// The identities as last written.
    persisted_identities: Vec<u8>,
    /// Map updates made by the last apply.
    pub last_updates: usize,
    /// Local server ports under HTTP rules.
    pub http_ports: usize,
    /// (pod address, port) with HTTP rules in the kernel.
    http_applied: BTreeSet<(Ipv4Addr, u16)>,
    /// Ports that just came under HTTP rules: their connections opened before the rules
    /// are not in the sockhash, and the node resets them (`Node::reset_unjudged`).
    pub http_new: Vec<(Ipv4Addr, u16)>,
}

impl Enforcer {
    /// # Errors
    /// When the persisted identities cannot be read.
    pub fn open(settings: Settings, data_dir: &std::path::Path, dp: &Datapath) -> anyhow::Result<Self> {
        let allocator_file = data_dir.join("identities.json");
        let allocator = read_json::<Allocator>(&allocator_file)?.map_or_else(Allocator::default, Allocator::restored);
        let mut allocator = allocator;
        allocator.set_grace_secs(settings.identity_grace_secs);
        let applied = Arc::new(Compiled {
            policy: dp.policy_entries().into_iter().collect(),
            ipcache: dp.ipcache_entries().into_iter().collect(),
            rules: Arc::default(),
        });
        Ok(Self {
            settings,
            compiler: Arc::new(Compiler::new()),
            allocator,
            allocator_file,
            applied,
            inputs: Arc::default(),
            world: Arc::default(),
            compiled: Arc::default(),
            identities: Arc::default(),
            identity_names: Arc::default(),
            revision: dp.config().policy_rev,
            persisted_identities: Vec::new(),
            last_updates: 0,
            http_ports: 0,
            http_applied: dp
                .http_ports()
                .into_iter()
                .map(|k| (Ipv4Addr::from(u32::from_be(k.addr)), k.port))
                .collect(),
            http_new: Vec::new(),
        })
    }

    /// A full compile of `inputs` with today's endpoints, to `run` anywhere and `finish`
    /// here.
    pub fn prepare<'a>(
        &mut self,
        inputs: Arc<Inputs>,
        endpoints: impl Iterator<Item = &'a EndpointRecord>,
        host_ips: Vec<Ipv4Addr>,
    ) -> Job {
        let world = self.build_world(&inputs, endpoints, host_ips);
        Arc::make_mut(&mut self.compiler).prepare(&world.policies);
        Job {
            inputs,
            world: Arc::new(world),
            compiler: Arc::clone(&self.compiler),
        }
    }

    /// Applies a finished job, first bringing it up to today's endpoints and node
    /// addresses. Returns the number of map updates.
    ///
    /// # Errors
    /// As `apply`; nothing changes then, and the maps keep the policy of `self.inputs`.
    pub fn finish<'a>(
        &mut self,
        dp: &mut Datapath,
        job: Job,
        compiled: Compiled,
        endpoints: impl Iterator<Item = &'a EndpointRecord>,
        host_ips: Vec<Ipv4Addr>,
    ) -> anyhow::Result<usize> {
        let world = self.build_world(&job.inputs, endpoints, host_ips);
        let compiled = if world.pods == job.world.pods && world.host_ips == job.world.host_ips {
            compiled
        } else {
            let changed = changed_identities(&job.world, &world);
            let now = job.compiler.recompute(&world, &compiled, &changed);
            crate::reap::later(compiled);
            now
        };
        crate::reap::later((job.world, job.compiler));
        self.apply(dp, job.inputs, world, compiled)
    }

    /// Recompiles for today's endpoints and node addresses under the policy in force:
    /// only entries naming identities whose pods or prefixes changed are recompiled.
    ///
    /// # Errors
    /// As `apply`.
    pub fn refresh<'a>(
        &mut self,
        dp: &mut Datapath,
        endpoints: impl Iterator<Item = &'a EndpointRecord>,
        host_ips: Vec<Ipv4Addr>,
    ) -> anyhow::Result<usize> {
        let inputs = Arc::clone(&self.inputs);
        let world = self.build_world(&inputs, endpoints, host_ips);
        let changed = changed_identities(&self.world, &world);
        let compiled = self.compiler.recompute(&world, &self.compiled, &changed);
        self.apply(dp, inputs, world, compiled)
    }

    /// A full compile on this thread (at start, before the compile thread runs).
    ///
    /// # Errors
    /// As `apply`.
    pub fn sync<'a>(
        &mut self,
        dp: &mut Datapath,
        endpoints: impl Iterator<Item = &'a EndpointRecord> + Clone,
        inputs: Arc<Inputs>,
        host_ips: Vec<Ipv4Addr>,
    ) -> anyhow::Result<usize> {
        let job = self.prepare(inputs, endpoints.clone(), host_ips.clone());
        let compiled = job.run();
        self.finish(dp, job, compiled, endpoints, host_ips)
    }

    /// Diffs `compiled` against the maps, checks it fits, and applies it. Returns the
    /// number of map updates.
    ///
    /// # Errors
    /// `DoesNotFit` when the change would not fit the maps (nothing is written). When a
    /// map update fails, what was applied so far stays (isolating entries go first and
    /// openings last, so nothing enforced is lost) and the next sync retries.
    fn apply(
        &mut self,
        dp: &mut Datapath,
        inputs: Arc<Inputs>,
        world: World,
        compiled: Compiled,
    ) -> anyhow::Result<usize> {
        let d = moat_policy_compiler::diff::diff(&self.applied, &compiled);
        let plan = moat_policy_compiler::diff::plan(&self.applied, &d);
        // Check before writing anything: a map that fills up half way would leave the
        // change half applied.
        let (policy_cap, ipcache_cap) = dp.capacity();
        if plan.peak_entries > policy_cap {
            return Err(DoesNotFit {
                map: "policy",
                needed: plan.peak_entries,
                capacity: policy_cap,
            }
            .into());
        }
        let ipcache_peak = moat_policy_compiler::diff::peak_ipcache_entries(&self.applied, &d);
        if ipcache_peak > ipcache_cap {
            return Err(DoesNotFit {
                map: "ipcache",
                needed: ipcache_peak,
                capacity: ipcache_cap,
            }
            .into());
        }
        self.inputs = inputs;
        self.world = Arc::new(world);
        self.compiled = Arc::new(compiled);
        let in_use: BTreeSet<Identity> = self.world.pods.iter().map(|p| p.identity).collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        for id in self.allocator.sweep(&in_use, now) {
            tracing::info!(identity = id, "released identity after its grace period");
        }
        self.persist_identities();
        let identities = self.list_identities();
        self.identity_names = Arc::new(
            identities
                .iter()
                .map(|(id, ..)| (*id, self.identity_name(*id)))
                .collect(),
        );
        self.identities = Arc::new(identities);

        // HTTP rules first: a socket accepted after the L3/L4 entries open its port must
        // already be under them (sock_ops looks a port up once, at accept).
        let ports = apply_http(dp, &self.world, &self.inputs.http, self.settings.audit);
        self.http_ports = ports.len();
        self.http_new.extend(ports.difference(&self.http_applied).copied());
        self.http_applied = ports;
        let updates = d.len();
        let narrows = moat_policy_compiler::diff::narrows(&self.applied, &d);
        let result = write_plan(dp, &d, &plan);
        if let Err(e) = result {
            // Re-read what the maps really hold so the next diff starts from the truth.
            self.applied = Arc::new(Compiled {
                policy: dp.policy_entries().into_iter().collect(),
                ipcache: dp.ipcache_entries().into_iter().collect(),
                rules: Arc::default(),
            });
            return Err(e);
        }
        self.applied = Arc::clone(&self.compiled);
        // A mode change (audit on/off) also re-checks established flows.
        let flags_changed = self.config(false).flags != dp.config().flags;
        // Established flows re-check their cached verdict only when something that
        // allowed may now deny (see `diff::narrows`): pod churn does not cost every flow.
        let cfg = self.config(narrows || flags_changed);
        if cfg != dp.config() {
            dp.set_config(cfg).context("writing the datapath config")?;
            self.revision = cfg.policy_rev;
        }
        self.last_updates = updates;
        if updates > 0 {
            tracing::info!(
                updates,
                policies = self.world.policies.len(),
                entries = self.compiled.policy.len(),
                revision = self.revision,
                "policy applied"
            );
        }
        Ok(updates)
    }

    fn config(&self, bump: bool) -> Config {
        let mut flags = 0;
        if self.settings.audit {
            flags |= config_flag::AUDIT;
        }
        if self.settings.mode == Mode::Always {
            flags |= config_flag::DENY_UNMANAGED;
        }
        Config {
            policy_rev: if bump {
                self.revision.wrapping_add(1).max(1)
            } else {
                self.revision.max(1)
            },
            flags,
            flow_events_per_sec: self.settings.flow_events_per_sec,
            _pad: 0,
        }
    }

    fn build_world<'a>(
        &mut self,
        inputs: &Inputs,
        endpoints: impl Iterator<Item = &'a EndpointRecord>,
        host_ips: Vec<Ipv4Addr>,
    ) -> World {
        let mut world = World {
            mode: self.settings.mode,
            host_ips,
            namespaces: inputs.namespaces.clone(),
            policies: Arc::clone(&inputs.policies),
            pods: Vec::new(),
        };
        let pods = &inputs.pods;
        // Local endpoints: labels from the matching Pod manifest (CNI_ARGS name it).
        let mut seen = BTreeSet::new();
        for ep in endpoints.filter(|e| e.state == "ready") {
            let key = (ep.pod_namespace.clone(), ep.pod_name.clone());
            let pod = pods.get(&key).cloned().unwrap_or_else(|| k8s::Pod {
                namespace: if ep.pod_namespace.is_empty() {
                    "default".into()
                } else {
                    ep.pod_namespace.clone()
                },
                name: ep.pod_name.clone(),
                labels: BTreeMap::new(),
                service_account: String::new(),
                ports: Vec::new(),
                ip: None,
            });
            seen.insert(key);
            let identity = self.allocator.allocate(&world.label_set(&pod));
            world.pods.push(PodInfo {
                pod,
                identity,
                ipv4: Some(ep.ipv4),
                local: true,
            });
        }
        // Pods elsewhere with a known address are peers (selectable), not subjects. A
        // manifest whose status.podIP is a local endpoint's address is stale: the local
        // endpoint owns the address.
        let local_ips: BTreeSet<Ipv4Addr> = world.pods.iter().filter_map(|p| p.ipv4).collect();
        for (key, pod) in pods {
            if seen.contains(key) || pod.ip.is_none() {
                continue;
            }
            if pod.ip.is_some_and(|ip| local_ips.contains(&ip)) {
                tracing::warn!(pod = %format!("{}/{}", key.0, key.1), ip = ?pod.ip, "ignoring a Pod manifest whose status.podIP belongs to a local endpoint");
                continue;
            }
            let identity = self.allocator.allocate(&world.label_set(pod));
            world.pods.push(PodInfo {
                ipv4: pod.ip,
                pod: pod.clone(),
                identity,
                local: false,
            });
        }
        world
    }

    /// Writes the identities when they changed (a write syncs to disk: not per pod).
    fn persist_identities(&mut self) {
        let now = serde_json::to_vec(&self.allocator).unwrap_or_default();
        if now == self.persisted_identities {
            return;
        }
        match write_json(&self.allocator_file, &self.allocator) {
            Ok(()) => self.persisted_identities = now,
            Err(e) => tracing::warn!("persisting identities: {e:#}"),
        }
    }

    /// (identity, labels, in use, local pods "ns/name"), reserved ones included.
    fn list_identities(&self) -> Vec<IdentityRow> {
        let mut out = Vec::new();
        for id in [reserved::HOST, reserved::WORLD, reserved::UNMANAGED, reserved::INIT] {
            out.push((
                id,
                vec![reserved_name(id).unwrap_or_default().to_string()],
                true,
                Vec::new(),
            ));
        }
        for (id, labels, in_use) in self.allocator.iter() {
            let eps = self
                .world
                .pods
                .iter()
                .filter(|p| p.local && p.identity == id)
                .map(|p| format!("{}/{}", p.pod.namespace, p.pod.name))
                .collect();
            out.push((
                id,
                labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                in_use,
                eps,
            ));
        }
        for (&(ip, len), &id) in &self.compiled.ipcache {
            if id & moat_identity::LOCAL_SCOPE != 0 && !out.iter().any(|(i, ..)| *i == id) {
                out.push((id, vec![format!("cidr:{ip}/{len}")], true, Vec::new()));
            }
        }
        out
    }

    /// Human name of an identity: reserved name, CIDR, or its labels.
    fn identity_name(&self, id: Identity) -> String {
        if let Some(n) = reserved_name(id) {
            return n.to_string();
        }
        if let Some(labels) = self.allocator.labels(id) {
            return labels
                .iter()
                .filter(|(k, _)| !k.starts_with("k8s:ns-labels:"))
                .map(|(k, v)| format!("{}={v}", k.trim_start_matches("k8s:")))
                .collect::<Vec<_>>()
                .join(",");
        }
        if let Some(((ip, len), _)) = self.compiled.ipcache.iter().find(|(_, &i)| i == id) {
            return format!("cidr:{ip}/{len}");
        }
        format!("identity {id}")
    }
}

/// Identities whose pods differ between two worlds (added, removed, moved, relabelled).
fn changed_identities(before: &World, after: &World) -> BTreeSet<Identity> {
    type Index<'w> = BTreeMap<(&'w str, &'w str, bool, Option<Ipv4Addr>), Vec<&'w PodInfo>>;
    fn index(w: &World) -> Index<'_> {
        let mut m: Index<'_> = BTreeMap::new();
        for p in &w.pods {
            m.entry((p.pod.namespace.as_str(), p.pod.name.as_str(), p.local, p.ipv4))
                .or_default()
                .push(p);
        }
        m
    }
    let (old, new): (Index<'_>, Index<'_>) = (index(before), index(after));
    let mut changed = BTreeSet::new();
    for (a, b) in [(&old, &new), (&new, &old)] {
        for (k, pods) in a {
            if b.get(k) != Some(pods) {
                changed.extend(pods.iter().map(|p| p.identity));
            }
        }
    }
    changed
}

fn write_plan(dp: &mut Datapath, d: &moat_policy_compiler::diff::Diff, plan: &Plan) -> anyhow::Result<()> {
    let write = |dp: &mut Datapath, step: &Step| match *step {
        Step::Upsert((prefix, key), value) => dp
            .upsert_policy(prefix, key, value)
            .with_context(|| format!("policy entry {key:?}/{prefix}")),
        Step::Delete((prefix, key)) => {
            dp.delete_policy(prefix, key);
            Ok(())
        }
    };
    let (first, last) = plan.steps.split_at(plan.before_deny_deletes);
    for step in first {
        write(dp, step)?;
    }
    for ((ip, len), id) in &d.ipcache_upserts {
        dp.upsert_ipcache(*ip, *len, *id)
            .with_context(|| format!("ipcache entry {ip}/{len}"))?;
    }
    for (ip, len) in &d.ipcache_deletes {
        dp.delete_ipcache(*ip, *len);
    }
    for step in last {
        write(dp, step)?;
    }
    Ok(())
}
