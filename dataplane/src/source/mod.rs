//! State sources: where the desired state (Namespaces, Pods, NetworkPolicies, Services,
//! EndpointSlices) comes from. Standalone mode reads a manifest directory
//! ([`manifest_dir`]); cluster mode will watch the Kubernetes API with the same types.
//!
//! A source runs on its own thread (reading and decoding files is slow and must never
//! hold up the node owner or a CNI request) and hands the owner whole [`Snapshot`]s of
//! what is in force. Invalid input never reaches a snapshot: the last good version of
//! an object stays (see `manifest_dir`).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moat_k8s_model::Object;

pub mod dir_watch;
pub mod manifest_dir;

/// The desired state a source holds in force, as one immutable value.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The objects in force (last good versions).
    pub objects: Arc<Vec<Object>>,
    /// Bumped on every change of `objects`.
    pub generation: u64,
    /// Documents rejected at the last read, as "file: object: field: why".
    pub errors: Arc<Vec<String>>,
    /// What the policy compiler reads from `objects`.
    pub policy: Arc<crate::policy::enforcer::Inputs>,
}

impl Snapshot {
    /// Objects per kind, e.g. `{"Namespace": 2, "Pod": 4}`.
    #[must_use]
    pub fn kinds(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for o in self.objects.iter() {
            *m.entry(o.kind().to_string()).or_insert(0) += 1;
        }
        m
    }
}

/// A feed of desired state.
pub trait StateSource: Send + 'static {
    /// What is in force now.
    fn snapshot(&self) -> Snapshot;

    /// Waits up to `timeout` for a change and reads it. Returns a new snapshot after
    /// every completed read (a new generation), whether or not what is in force changed.
    fn next_change(&mut self, timeout: Duration) -> Option<Snapshot>;
}

/// Runs `source` on its own thread, handing every change to `deliver` until it returns
/// false (the receiver is gone).
///
/// # Errors
/// When the thread cannot be started.
pub fn spawn(
    mut source: Box<dyn StateSource>,
    mut deliver: impl FnMut(Snapshot) -> bool + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("state-source".into())
        .spawn(move || loop {
            if let Some(s) = source.next_change(POLL) {
                if !deliver(s) {
                    return;
                }
            }
        })
}

/// How long a source waits for a change before polling (inotify ends the wait early).
const POLL: Duration = Duration::from_millis(100);
