//! Standalone mode's state source: a directory of Kubernetes manifests, watched.
//!
//! The directory is polled (a cheap `stat` of each file) every few hundred milliseconds;
//! when anything changed it is re-read. What is kept is "last good": a document that
//! fails validation does not replace the version of the same object that was in force,
//! and a file that stops parsing (a YAML syntax error hides which objects it held) keeps
//! its previous objects. So an invalid edit never removes enforcement; deleting the
//! object (or its file) does. Files that were good are copied to a cache in the data dir;
//! an agent that restarts while a file is broken starts from that copy, so a restart
//! does not open the window either.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use moat_k8s_model::{self as k8s, ManifestError, Object};

use super::dir_watch::DirWatch;
use super::{Snapshot, StateSource};

/// The standalone state source: a watched manifest directory with last-good semantics.
pub struct ManifestDir {
    state: StateDir,
    /// inotify on the directory (a file closed after writing or moved in is read at
    /// once); `None`: polling only.
    watch: Option<DirWatch>,
    snapshot: Snapshot,
}

impl ManifestDir {
    /// Reads `dir` (starting from the last-good copies in `cache`, if any).
    #[must_use]
    pub fn open(dir: Option<PathBuf>, cache: Option<PathBuf>) -> Self {
        let watch = dir.as_deref().and_then(|d| match DirWatch::new(d) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("no inotify on {} ({e}); polling only", d.display());
                None
            }
        });
        let state = StateDir::new(dir, cache);
        let snapshot = state.snapshot();
        Self { state, watch, snapshot }
    }
}

impl StateSource for ManifestDir {
    fn snapshot(&self) -> Snapshot {
        self.snapshot.clone()
    }

    fn next_change(&mut self, timeout: std::time::Duration) -> Option<Snapshot> {
        let settled = match &self.watch {
            Some(w) => w.wait(timeout),
            None => {
                std::thread::sleep(timeout);
                BTreeSet::new()
            }
        };
        self.state.refresh_with(&settled);
        // Every completed read is delivered, changed or not: its generation tells
        // readers (`moatctl status`) that the directory was read and applied.
        if self.state.generation == self.snapshot.generation {
            return None;
        }
        self.snapshot = self.state.snapshot();
        Some(self.snapshot.clone())
    }
}

/// `Kind ns/name` (or `Kind name` for cluster-scoped kinds), as in `ManifestError::object`.
#[must_use]
pub fn object_key(o: &Object) -> String {
    match o {
        Object::Namespace(n) => format!("Namespace {}", n.name),
        Object::Pod(p) => format!("Pod {}/{}", p.namespace, p.name),
        Object::NetworkPolicy(p) => format!("NetworkPolicy {}/{}", p.namespace, p.name),
        Object::Service(s) => format!("Service {}/{}", s.namespace, s.name),
        Object::EndpointSlice(s) => format!("EndpointSlice {}/{}", s.namespace, s.name),
        Object::Node(n) => format!("Node {}", n.name),
        Object::MoatNetworkPolicy(p) => format!("MoatNetworkPolicy {}/{}", p.policy.namespace, p.policy.name),
        Object::Other { kind, namespace, name } if namespace.is_empty() => format!("{kind} {name}"),
        Object::Other { kind, namespace, name } => format!("{kind} {namespace}/{name}"),
    }
}

/// Per file: modification time, length and a hash of the content (an edit of the same
/// length within one mtime tick still changes the hash).
type Fingerprint = BTreeMap<PathBuf, (SystemTime, u64, u64)>;

#[derive(Debug, Default)]
pub struct StateDir {
    dir: Option<PathBuf>,
    /// Copies of the files that last parsed without error.
    cache: Option<PathBuf>,
    fingerprint: Fingerprint,
    /// Object key → (file, object) in force.
    objects: BTreeMap<String, (PathBuf, Object)>,
    errors: Vec<ManifestError>,
    /// A changed directory seen once; it is read when the next poll sees it unchanged, so
    /// a file caught half-written (truncate, then write) is never parsed.
    pending: Option<Fingerprint>,
    /// Bumped on every change of `objects`.
    pub generation: u64,
}

impl StateDir {
    #[must_use]
    pub fn new(dir: Option<PathBuf>, cache: Option<PathBuf>) -> Self {
        let mut s = Self {
            dir,
            cache,
            ..Self::default()
        };
        s.seed_from_cache();
        s.refresh();
        s
    }

    /// Starts from the last good copies, attributed to their original paths.
    fn seed_from_cache(&mut self) {
        let (Some(dir), Some(cache)) = (&self.dir, &self.cache) else {
            return;
        };
        if !cache.is_dir() {
            return;
        }
        for (file, o) in k8s::read_dir(cache).objects {
            let original = dir.join(file.file_name().unwrap_or_default());
            self.objects.insert(object_key(&o), (original, o));
        }
    }

    /// Mirrors every error-free file into the cache (mode 0600 in a 0700 directory: the
    /// cache holds whatever the manifests hold) and forgets files that are gone. Files are
    /// read with the same checks as the directory itself (no links, only regular files).
    fn update_cache(&self, dir: &Path, errors: &[ManifestError]) {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
        let Some(cache) = &self.cache else { return };
        if std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(cache)
            .is_err()
        {
            return;
        }
        let _ = std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o700));
        let bad: BTreeSet<&Path> = errors.iter().map(|e| e.file.as_path()).collect();
        for path in self.fingerprint.keys() {
            let Some(name) = path.file_name() else { continue };
            if bad.contains(path.as_path()) {
                continue;
            }
            if let Ok(text) = k8s::read_manifest_file(path) {
                let write = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(cache.join(name))
                    .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
                if let Err(e) = write {
                    tracing::warn!(file = %path.display(), error = %e, "caching the last good manifest");
                }
            }
        }
        for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
            if !dir.join(e.file_name()).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Re-reads the directory if any file changed. Returns whether the objects in force
    /// or the reported errors changed.
    pub fn refresh(&mut self) -> bool {
        self.refresh_with(&BTreeSet::new())
    }

    /// `refresh`, knowing that the changes of the `settled` files are complete (closed
    /// after writing, moved in or out, deleted: see `dir_watch`): when every changed file
    /// is one of them, the directory is read at once instead of after one stable poll.
    pub fn refresh_with(&mut self, settled: &BTreeSet<PathBuf>) -> bool {
        let Some(dir) = self.dir.clone() else {
            return false;
        };
        // A directory that is gone or unreadable (unmounted, `mv dir old; mv new dir`
        // caught in between) says nothing about what should be enforced: keep the last
        // good state and report it until the directory is readable again.
        if let Err(e) = std::fs::read_dir(&dir) {
            let err = ManifestError {
                file: dir.clone(),
                document: 0,
                object: String::new(),
                field: String::new(),
                message: format!("{e}; keeping the last good state until the directory is readable again"),
            };
            if self.errors != [err.clone()] {
                tracing::error!("state dir unreadable: {err}");
                self.errors = vec![err];
                self.pending = None;
                // Whatever comes back in its place is read afresh.
                self.fingerprint.clear();
                self.generation += 1;
                return true;
            }
            return false;
        }
        let fp = fingerprint(&dir, &self.fingerprint);
        if fp == self.fingerprint && self.generation > 0 {
            self.pending = None;
            return false;
        }
        // Read at start, when every change is complete, or once the change has been
        // stable for one poll.
        let changed_files = fp
            .iter()
            .filter(|(f, v)| self.fingerprint.get(*f) != Some(v))
            .map(|(f, _)| f)
            .chain(self.fingerprint.keys().filter(|f| !fp.contains_key(*f)));
        let complete = !settled.is_empty() && changed_files.into_iter().all(|f| settled.contains(f));
        if self.generation > 0 && !complete && self.pending.as_ref() != Some(&fp) {
            self.pending = Some(fp);
            return false;
        }
        self.pending = None;
        self.fingerprint = fp;
        let read = k8s::read_dir(&dir);
        self.update_cache(&dir, &read.errors);
        let changed = self.merge(read);
        self.generation += 1;
        changed
    }

    fn merge(&mut self, read: k8s::Manifests) -> bool {
        let mut next: BTreeMap<String, (PathBuf, Object)> = BTreeMap::new();
        for (file, o) in read.objects {
            next.insert(object_key(&o), (file, o));
        }
        // Files that failed in a way that hides their objects keep everything they had.
        let blind: BTreeSet<&PathBuf> = read
            .errors
            .iter()
            .filter(|e| e.object.is_empty() || e.object.split_once(' ').is_none())
            .map(|e| &e.file)
            .collect();
        for (key, (file, o)) in &self.objects {
            if next.contains_key(key) {
                continue;
            }
            let invalid_now = read.errors.iter().any(|e| &e.object == key);
            if invalid_now || (blind.contains(file) && file.exists()) {
                tracing::warn!(object = %key, file = %file.display(), "keeping the last good version");
                next.insert(key.clone(), (file.clone(), o.clone()));
            }
        }
        for e in &read.errors {
            tracing::error!("rejected manifest: {e}");
        }
        let changed = next != self.objects || read.errors != self.errors;
        self.objects = next;
        self.errors = read.errors;
        changed
    }

    /// What is in force, as one immutable value for the node owner.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            objects: std::sync::Arc::new(self.objects().cloned().collect()),
            generation: self.generation,
            errors: std::sync::Arc::new(self.errors.iter().map(ToString::to_string).collect()),
            // Decoded here, on the source thread, not by the node owner.
            policy: std::sync::Arc::new(crate::policy::enforcer::Inputs::new(self.generation, self.objects())),
        }
    }

    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values().map(|(_, o)| o)
    }

    #[must_use]
    pub fn errors(&self) -> &[ManifestError] {
        &self.errors
    }

    /// Objects per kind, e.g. `{"Namespace": 2, "Pod": 4}`.
    #[must_use]
    pub fn kinds(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for o in self.objects() {
            *m.entry(o.kind().to_string()).or_insert(0) += 1;
        }
        m
    }
}

/// Stats every file; hashes a file's content only when its mtime or length changed, or
/// when it was modified within the last second (an edit of the same length within one
/// mtime tick). Steady-state polls of a large directory are then only `stat`s.
fn fingerprint(dir: &Path, previous: &Fingerprint) -> Fingerprint {
    let now = SystemTime::now();
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| k8s::is_manifest_name(&e.path()))
        .filter_map(|e| {
            // The entry itself (a link is not followed), and its content only through the
            // checked reader: a FIFO or a link to a device is never opened for reading.
            let meta = e.metadata().ok()?;
            let (mtime, len) = (meta.modified().ok()?, meta.len());
            let recent = now
                .duration_since(mtime)
                .map_or(true, |d| d < std::time::Duration::from_secs(1));
            let hash = match previous.get(&e.path()) {
                Some(&(m, l, h)) if m == mtime && l == len && !recent => h,
                _ => k8s::read_manifest_file(&e.path()).ok().map_or(0, |b| {
                    // FNV-1a over the bytes: cheap, and enough to see an edit.
                    b.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
                        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
                    })
                }),
            };
            Some((e.path(), (mtime, len, hash)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n";
    const BAD_FIELD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: ICMP}]}]\n";

    fn policy_ports(s: &StateDir) -> Vec<String> {
        s.objects()
            .filter_map(|o| match o {
                Object::NetworkPolicy(p) => Some(format!("{}:{:?}", p.name, p.ingress_rules[0].ports)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn invalid_edits_keep_the_last_good_object_and_deletion_removes_it() {
        let dir = Dir(std::env::temp_dir().join(format!("moat-state-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let f = dir.0.join("p.yaml");
        std::fs::write(&f, GOOD).unwrap();
        let cache = dir.0.join("../moat-state-cache-{}");
        let cache = PathBuf::from(cache.to_string_lossy().replace("{}", &std::process::id().to_string()));
        let _cache_guard = Dir(cache.clone());
        let mut s = StateDir::new(Some(dir.0.clone()), Some(cache.clone()));
        let good = policy_ports(&s);
        assert_eq!(good.len(), 1);
        assert!(s.errors().is_empty());

        for bad in [BAD_FIELD, "apiVersion: v1\nkind: [unclosed\n"] {
            std::fs::write(&f, bad).unwrap();
            s.fingerprint.clear();
            assert!(!s.refresh(), "a change is read once it is stable for one poll");
            assert!(s.refresh());
            assert_eq!(policy_ports(&s), good, "the last good policy stays for {bad:?}");
            assert_eq!(s.errors().len(), 1, "{:?}", s.errors());
        }

        std::fs::remove_file(&f).unwrap();
        s.fingerprint
            .insert(PathBuf::from("force"), (SystemTime::UNIX_EPOCH, 0, 0));
        assert!(!s.refresh(), "a change is read once it is stable for one poll");
        assert!(s.refresh());
        assert!(policy_ports(&s).is_empty(), "a deleted policy is removed");
        assert!(s.errors().is_empty());

        // A file known to be complete (moved in) is read at once; one that is not (another
        // file changed too) waits for a stable poll.
        std::fs::write(&f, GOOD).unwrap();
        assert!(s.refresh_with(&BTreeSet::from([f.clone()])));
        assert_eq!(policy_ports(&s), good);
        std::fs::write(&f, BAD_FIELD).unwrap();
        std::fs::write(dir.0.join("q.yaml"), "").unwrap();
        assert!(
            !s.refresh_with(&BTreeSet::from([f.clone()])),
            "q.yaml may be half-written"
        );
        assert!(s.refresh_with(&BTreeSet::from([f.clone()])));
    }
}
