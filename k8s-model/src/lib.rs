//! Kubernetes objects as Moat reads them, parsed and validated from manifests. Shared by
//! every consumer (policy compiler, service resolution, the agent's state sources), so a
//! manifest is decoded and validated in one place.
//!
//! Standalone mode (and `moatctl policy`) reads a directory of YAML/JSON manifests:
//!
//! 1. YAML → JSON values (`serde-saphyr`, YAML 1.2, aliases and parser events bounded,
//!    duplicate keys refused);
//! 2. JSON → the `k8s-openapi` type of the kind (Namespace, Pod, NetworkPolicy, Service,
//!    EndpointSlice, Node) strictly: an unknown or misspelt field (`serde_ignored`) or a
//!    wrong type is an error with its field path (`serde_path_to_error`) — k8s-openapi on
//!    its own would skip unknown fields silently;
//! 3. the typed object → Moat's model, checked the way the API server would check it:
//!    required fields, label and port syntax, selector operators, CIDRs, NetworkPolicy
//!    defaulting. The k8s-openapi types are the ones kube-rs watchers deliver, so cluster
//!    mode goes through the same checks.
//!
//! A bad document is rejected whole with an error naming the file, document, object and
//! field, while the other documents still load.
mod decode;
pub mod moat_policy;
pub mod selector;
pub mod service;
pub mod syntax;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use ipnetwork::{self, IpNetwork, Ipv4Network};
pub use moat_policy::{HttpPort, HttpRule, MoatNetworkPolicy};
pub use selector::{LabelSelector, Operator, Requirement};

/// Label Kubernetes puts on every namespace (value: the namespace's name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// IP protocol numbers NetworkPolicy ports may name.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;

    /// `TCP`, `UDP`, `SCTP` or the number.
    #[must_use]
    pub fn name(p: u8) -> String {
        match p {
            TCP => "TCP".into(),
            UDP => "UDP".into(),
            SCTP => "SCTP".into(),
            n => n.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Always holds `kubernetes.io/metadata.name: <name>`.
    pub labels: BTreeMap<String, String>,
}

impl Namespace {
    /// A namespace with only the label Kubernetes sets.
    #[must_use]
    pub fn implicit(name: &str) -> Self {
        Self {
            name: name.to_string(),
            labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
        }
    }
}

/// `spec.containers[*].ports[*]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    /// Empty when the port has no name.
    pub name: String,
    pub port: u16,
    /// 6, 17 or 132.
    pub protocol: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName`, defaulted to `default` like the API server does.
    pub service_account: String,
    pub ports: Vec<ContainerPort>,
    /// `status.podIP` when it is an IPv4 address.
    pub ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// Effective `policyTypes` (after Kubernetes defaulting) contains `Ingress`.
    pub ingress: bool,
    /// Effective `policyTypes` contains `Egress`.
    pub egress: bool,
    pub ingress_rules: Vec<Rule>,
    pub egress_rules: Vec<Rule>,
}

/// One ingress (`from`) or egress (`to`) rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// `None` or empty: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None` or empty: every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// At least one selector is set; both set means AND.
    Pods {
        pod_selector: Option<LabelSelector>,
        namespace_selector: Option<LabelSelector>,
    },
    IpBlock {
        cidr: Ipv4Network,
        except: Vec<Ipv4Network>,
    },
    /// An IPv6 `ipBlock`: valid, but the IPv4 datapath has nothing to allow for it.
    IpBlockV6 { cidr: String, except: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// 6, 17 or 132 (default TCP).
    pub protocol: u8,
    pub port: Option<PortRef>,
    /// Only with a numeric `port`; `end_port >= port`.
    pub end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u16),
    /// A container port name (IANA service name syntax).
    Name(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = proto::name(self.protocol);
        match (&self.port, self.end_port) {
            (None, _) => write!(f, "{p}/*"),
            (Some(PortRef::Number(a)), Some(b)) => write!(f, "{p}/{a}-{b}"),
            (Some(PortRef::Number(a)), None) => write!(f, "{p}/{a}"),
            (Some(PortRef::Name(n)), _) => write!(f, "{p}/{n}"),
        }
    }
}

/// A node of the cluster (cluster mode routes to other nodes' pod CIDRs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.podCIDRs` (or `spec.podCIDR`), IPv4 ones.
    pub pod_cidrs: Vec<Ipv4Network>,
    /// InternalIP and ExternalIP addresses from `status.addresses`, IPv4 ones.
    pub addresses: Vec<Ipv4Addr>,
}

/// One document of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
    Service(service::Service),
    EndpointSlice(service::EndpointSlice),
    Node(Node),
    /// `moat.io/v1alpha1` NetworkPolicy with HTTP rules.
    MoatNetworkPolicy(moat_policy::MoatNetworkPolicy),
    /// Any other kind (Service, Deployment, …): kept, not interpreted.
    Other {
        kind: String,
        namespace: String,
        name: String,
    },
}

impl Object {
    #[must_use]
    pub fn kind(&self) -> &str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::Pod(_) => "Pod",
            Self::NetworkPolicy(_) => "NetworkPolicy",
            Self::Service(_) => "Service",
            Self::EndpointSlice(_) => "EndpointSlice",
            Self::Node(_) => "Node",
            Self::MoatNetworkPolicy(_) => "MoatNetworkPolicy",
            Self::Other { kind, .. } => kind,
        }
    }
}

/// A rejected document (or an unreadable file / directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based document index in the file; 0 when the whole file or directory failed.
    pub document: usize,
    /// `Kind namespace/name` (or `Kind name` for cluster-scoped kinds); empty when unknown.
    pub object: String,
    /// Dotted field path such as `spec.ingress[0].ports[0].protocol`; may be empty.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, " (document {})", self.document)?;
        }
        if !self.object.is_empty() {
            write!(f, ": {}", self.object)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Everything read from a directory.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    pub objects: Vec<(PathBuf, Object)>,
    pub errors: Vec<ManifestError>,
}

impl Manifests {
    /// Objects per kind, e.g. `{"Namespace": 2, "Pod": 4}`.
    #[must_use]
    pub fn kinds(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for (_, o) in &self.objects {
            *m.entry(o.kind().to_string()).or_insert(0) += 1;
        }
        m
    }
}

/// Limits on what one manifest file may make the YAML parser do. Aliases are replayed
/// at most `MAX_ALIAS_EVENTS` events in all: a "billion laughs" file of a few kilobytes
/// is refused in microseconds instead of expanding to hundreds of millions of nodes.
/// Manifests rarely use aliases at all; these bounds leave ordinary use untouched.
const MAX_ALIAS_EVENTS: usize = 100_000;
/// Parser events (nodes) per file.
const MAX_EVENTS: usize = 1_000_000;

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: MAX_EVENTS,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_EVENTS,
        },
        // YAML 1.2 core schema: only true/false are booleans (`n`, `no`, `on` are strings).
        strict_booleans: true,
    }
}

/// Parses every document of one file. A YAML syntax error stops the file (the stream cannot
/// be trusted past it); empty documents are skipped; a bad document is rejected whole.
#[must_use]
pub fn parse_documents(file: &Path, text: &str) -> (Vec<Object>, Vec<ManifestError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let err = |document, object: String, field: String, message: String| ManifestError {
        file: file.to_path_buf(),
        document,
        object,
        field,
        message,
    };
    let mut reader = std::io::Cursor::new(text.as_bytes());
    for (i, doc) in serde_saphyr::read_with_options::<_, serde_json::Value>(&mut reader, yaml_options()).enumerate() {
        // A syntax error, an exceeded budget (an alias bomb) or a key that is not a
        // string stops the file: the stream cannot be trusted past it.
        let value = match doc {
            Ok(v) => v,
            Err(e) => {
                errors.push(err(i + 1, String::new(), String::new(), format!("invalid YAML: {e}")));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match decode::object(&value) {
            Ok(o) => objects.push(o),
            Err(e) => errors.push(err(i + 1, e.object, e.field, e.message)),
        }
    }
    (objects, errors)
}

/// Largest manifest file read (a 10,000-policy file is about 3 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Whether `name` is a manifest file name (`*.yaml`, `*.yml`, `*.json`).
#[must_use]
pub fn is_manifest_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
}

/// Reads one manifest file safely: opened with `O_NOFOLLOW | O_NONBLOCK` (a symbolic link
/// is refused, so a link to a secret or to `/dev/zero` is never read; a FIFO never
/// blocks), only a regular file is read, and at most [`MAX_MANIFEST_BYTES`].
///
/// # Errors
/// A symbolic link, a file that is not regular, one that is too large, or not UTF-8.
pub fn read_manifest_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other("is a symbolic link: manifests must be regular files")
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::other(format!(
            "is {what}: manifests must be regular files"
        )));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::other(format!(
            "is {} bytes, larger than the {MAX_MANIFEST_BYTES}-byte limit",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::other("grew past the size limit while being read"));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("is not UTF-8 text"))
}

/// Reads every manifest file (`*.yaml`, `*.yml`, `*.json`) directly in `dir`, sorted by
/// name, each with [`read_manifest_file`]: links, FIFOs, devices and oversized files are
/// reported as errors and never read.
#[must_use]
pub fn read_dir(dir: &Path) -> Manifests {
    let mut m = Manifests::default();
    let io_err = |file: &Path, e: std::io::Error| ManifestError {
        file: file.to_path_buf(),
        document: 0,
        object: String::new(),
        field: String::new(),
        message: e.to_string(),
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d.flatten().map(|e| e.path()).filter(|p| is_manifest_name(p)).collect(),
        Err(e) => {
            m.errors.push(io_err(dir, e));
            return m;
        }
    };
    files.sort();
    for file in files {
        match read_manifest_file(&file) {
            Ok(text) => {
                let (objects, errors) = parse_documents(&file, &text);
                m.objects.extend(objects.into_iter().map(|o| (file.clone(), o)));
                m.errors.extend(errors);
            }
            Err(e) => m.errors.push(io_err(&file, e)),
        }
    }
    m
}

#[cfg(test)]
mod tests;
