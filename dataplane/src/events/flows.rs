//! The flow store: reads `FlowEvent`s from the ring buffer, names their endpoints,
//! identities and policy, keeps the most recent ones and fans them out to followers
//! (`moatctl observe --follow`). Drop counts per pod are kept here too.
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};
use moat_api::v1::{Flow, FlowPeer};
use moat_dataplane_common::{direction, hook, l7::L7Event, metric_name, verdict, FlowEvent};
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

use crate::agent::NodeHandle;
use crate::view::View;

/// Recent events kept for `observe` without `--follow`.
const RECENT: usize = 8192;

pub struct FlowStore {
    recent: VecDeque<Flow>,
    pub tx: broadcast::Sender<Flow>,
}

impl Default for FlowStore {
    fn default() -> Self {
        Self {
            recent: VecDeque::with_capacity(RECENT),
            tx: broadcast::channel(4096).0,
        }
    }
}

impl FlowStore {
    fn push(&mut self, f: Flow) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        let _ = self.tx.send(f.clone());
        self.recent.push_back(f);
    }

    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Flow> {
        self.recent.iter()
    }
}

/// Reads the ring buffer until the process ends.
pub async fn run(rb: RingBuf<MapData>, node: NodeHandle, store: Arc<Mutex<FlowStore>>) {
    // SAFETY: the ring buffer's fd lives inside the `AsyncFd` and is only closed when it
    // is dropped, after deregistration.
    let mut fd = match unsafe { AsyncFd::register(rb) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the event ring buffer; no flow events");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "event ring buffer");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut batch = Vec::new();
        let mut http = Vec::new();
        {
            let rb = guard.get_inner_mut();
            while let Some(item) = rb.next() {
                if item.len() >= std::mem::size_of::<L7Event>() {
                    // SAFETY: the kernel wrote an `L7Event` (told by its size); read unaligned.
                    http.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<L7Event>()) });
                } else if item.len() >= std::mem::size_of::<FlowEvent>() {
                    // SAFETY: the kernel wrote a `FlowEvent` (size checked); read unaligned.
                    batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
                }
            }
        }
        guard.clear_ready();
        if batch.is_empty() && http.is_empty() {
            continue;
        }
        // Named against the latest view: no lock shared with requests is held.
        let view = node.view();
        reset_refused(&view, &batch);
        let mut flows: Vec<Flow> = batch.iter().map(|e| to_flow(&view, e)).collect();
        if !http.is_empty() {
            let ports = moat_policy_compiler::http::ports::node_ports(&view.world, &view.http);
            flows.extend(http.iter().map(|e| to_http_flow(&view, &ports, e)));
        }
        let mut store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for f in flows {
            store.push(f);
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[must_use]
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

fn tcp_flags(f: u8) -> String {
    let names = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
    ];
    names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// Connections the HTTP path refused but could not answer (see `http.rs::reset` in the
/// eBPF crate): destroyed in the server pod's netns, off this task.
fn reset_refused(view: &View, events: &[FlowEvent]) {
    // (pod netns, local address, remote address, socket cookie)
    type Target = (String, (Ipv4Addr, u16), (Ipv4Addr, u16), u64);
    let targets: Vec<Target> = events
        .iter()
        .filter(|e| e.hook == hook::HTTP && e.tcp_flags & 0x04 != 0)
        .filter_map(|e| {
            let local = (Ipv4Addr::from(u32::from_be(e.daddr)), u16::from_be(e.dport));
            let remote = (Ipv4Addr::from(u32::from_be(e.saddr)), u16::from_be(e.sport));
            let ep = view.endpoints.iter().find(|ep| ep.ipv4 == local.0)?;
            Some((ep.netns.clone(), local, remote, e.netns_cookie))
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        for (netns, local, remote, cookie) in targets {
            match crate::services::sock_destroy::destroy_tcp(std::path::Path::new(&netns), local, remote, cookie) {
                Ok(()) => tracing::info!(
                    ?local,
                    ?remote,
                    "reset a connection whose refused request could not be answered"
                ),
                Err(e) => tracing::debug!(?local, ?remote, error = %e, "resetting a refused connection"),
            }
        }
    });
}

/// An HTTP request event: the flow, the normalised request, and the rule that allowed it.
fn to_http_flow(
    node: &View,
    ports: &std::collections::BTreeMap<(Ipv4Addr, u16), moat_policy_compiler::http::ports::PortRules>,
    e: &L7Event,
) -> Flow {
    let mut f = to_flow(node, &e.flow);
    f.protocol = "HTTP".into();
    let text = |b: &[u8], n: usize| String::from_utf8_lossy(&b[..n.min(b.len())]).into_owned();
    f.http_method = text(&e.method, usize::from(e.method_len));
    f.http_path = text(&e.path, usize::from(e.path_len));
    f.http_host = text(&e.host, usize::from(e.host_len));
    let at = (Ipv4Addr::from(u32::from_be(e.flow.daddr)), u16::from_be(e.flow.dport));
    if let (Some(i), Some(p)) = (usize::from(e.rule).checked_sub(1), ports.get(&at)) {
        f.http_rule = p.describe(i);
    }
    f
}

fn to_flow(node: &View, e: &FlowEvent) -> Flow {
    let age = monotonic_ns().saturating_sub(e.ts);
    let wall = SystemTime::now()
        .checked_sub(Duration::from_nanos(age))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let peer = |addr: u32, port: u16, id: u32| {
        let ip = Ipv4Addr::from(u32::from_be(addr));
        // Socket LB events know the client by its network namespace, not its address.
        let by_netns = (addr == 0 && e.netns_cookie != 0)
            .then(|| node.pod_of_netns(e.netns_cookie))
            .flatten();
        let (namespace, pod) = by_netns.clone().or_else(|| node.pod_of(ip)).unwrap_or_default();
        // Translation events carry no identities: name them from the ipcache.
        let id = match (id, by_netns) {
            (0, Some((ns, name))) => node.identity_of_pod(&ns, &name),
            (0, None) if addr != 0 => node.compiled.identity_of(ip),
            _ => id,
        };
        FlowPeer {
            ip: ip.to_string(),
            port: u32::from(u16::from_be(port)),
            identity: id,
            identity_name: node.identity_name(id),
            namespace,
            pod,
        }
    };
    Flow {
        time_unix_nanos: wall,
        verdict: match e.verdict {
            verdict::FORWARDED => "FORWARDED",
            verdict::DROPPED => "DROPPED",
            verdict::AUDIT => "AUDIT",
            verdict::TRANSLATED => "TRANSLATED",
            _ => "UNKNOWN",
        }
        .into(),
        drop_reason: u32::from(e.reason),
        drop_reason_name: if e.reason == 0 {
            String::new()
        } else {
            metric_name(u32::from(e.reason))
                .unwrap_or("unknown")
                .trim_start_matches("drop_")
                .into()
        },
        protocol: proto_name(e.proto),
        source: Some(peer(e.saddr, e.sport, e.src_identity)),
        destination: Some(peer(e.daddr, e.dport, e.dst_identity)),
        tcp_flags: if e.proto == 6 {
            tcp_flags(e.tcp_flags)
        } else {
            String::new()
        },
        hook: match e.hook {
            hook::FROM_CONTAINER => "from-container",
            hook::TO_CONTAINER => "to-container",
            hook::SOCKET_LB => "socket-lb",
            hook::NODE_DEVICE => "node-device",
            hook::HTTP => "http",
            _ => "",
        }
        .into(),
        direction: match e.direction {
            direction::INGRESS => "ingress",
            direction::EGRESS => "egress",
            _ => "",
        }
        .into(),
        cookie: e.cookie,
        policy: if e.cookie == 0 {
            String::new()
        } else {
            node.describe_cookie(e.cookie)
        },
        reevaluated: e.reevaluated != 0,
        length: e.len,
        service_address: if e.verdict == verdict::TRANSLATED {
            format!(
                "{}:{}",
                Ipv4Addr::from(u32::from_be(e.orig_daddr)),
                u16::from_be(e.orig_dport)
            )
        } else {
            String::new()
        },
        service: if e.verdict == verdict::TRANSLATED {
            node.service_at(
                Ipv4Addr::from(u32::from_be(e.orig_daddr)),
                u16::from_be(e.orig_dport),
                e.proto,
            )
        } else {
            String::new()
        },
        ..Flow::default()
    }
}
