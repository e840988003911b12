//! Real TCP, UDP and ICMP between pods wired by `moat`, to and from the node, and to
//! a host outside the node.
//!
//! ```text
//!  ext (10.202.*) ─uplink─ node (10.201.*, moat-agent) ─┬─ lxc… ─ a/p1, a/p2
//!                                                        └─ lxc… ─ b/p1, b/p2
//! ```
use std::net::Ipv4Addr;

use moat_netns_tests::net::{in_netns, ping, tcp_echo, udp_echo, EchoServer};
use moat_netns_tests::{ip, root_or_skip, Node, NodeOpts};
use serde_json::Value;

fn counter(node: &Node, name: &str) -> u64 {
    let st: Value = serde_json::from_str(&node.moatctl(&["status", "-o", "json"])).unwrap();
    st["counters"][name].as_u64().unwrap_or(0)
}

#[test]
fn tcp_udp_icmp_among_four_pods_in_two_namespaces() {
    root_or_skip!();
    let node = Node::start();
    let pods = [
        node.add_pod("a", "p1"),
        node.add_pod("a", "p2"),
        node.add_pod("b", "p1"),
        node.add_pod("b", "p2"),
    ];
    let _servers: Vec<_> = pods.iter().map(|p| EchoServer::start(&p.path(), 8080)).collect();
    let before = counter(&node, "forward_redirect_peer");
    for from in &pods {
        for to in &pods {
            if from.netns == to.netns {
                continue;
            }
            let what = format!(
                "{}/{} -> {}/{} ({})",
                from.namespace, from.name, to.namespace, to.name, to.ip
            );
            let msg = format!("hello {what}");
            assert_eq!(
                tcp_echo(&from.path(), to.ip, 8080, msg.as_bytes()).unwrap_or_else(|e| panic!("TCP {what}: {e}")),
                msg.as_bytes()
            );
            assert_eq!(
                udp_echo(&from.path(), to.ip, 8080, msg.as_bytes()).unwrap_or_else(|e| panic!("UDP {what}: {e}")),
                msg.as_bytes()
            );
            assert!(ping(&from.path(), to.ip), "ICMP {what}");
        }
    }
    // Pod-to-pod packets took the eBPF redirect_peer path, not the node's stack.
    let after = counter(&node, "forward_redirect_peer");
    assert!(
        after >= before + 12 * 3 * 2,
        "redirect_peer counter {before} -> {after}"
    );
    let table = node.moatctl(&["status"]);
    assert!(table.contains("forward_redirect_peer"), "{table}");
}

#[test]
fn pod_to_node_and_node_to_pod() {
    root_or_skip!();
    let node = Node::start();
    let pod = node.add_pod("default", "p");
    let _pod_server = EchoServer::start(&pod.path(), 8081);
    let _node_server = EchoServer::start(&node.node_netns_path(), 8082);
    // Pod → the node's own address (delivered locally by the node's stack).
    assert_eq!(
        tcp_echo(&pod.path(), node.node_ip, 8082, b"to node").unwrap(),
        b"to node"
    );
    assert_eq!(
        udp_echo(&pod.path(), node.node_ip, 8082, b"to node udp").unwrap(),
        b"to node udp"
    );
    assert!(ping(&pod.path(), node.node_ip));
    // Node → pod (routed by the /32 route, through to_container).
    assert_eq!(
        tcp_echo(&node.node_netns_path(), pod.ip, 8081, b"to pod").unwrap(),
        b"to pod"
    );
    assert_eq!(
        udp_echo(&node.node_netns_path(), pod.ip, 8081, b"to pod udp").unwrap(),
        b"to pod udp"
    );
    assert!(ping(&node.node_netns_path(), pod.ip));
    assert!(counter(&node, "to_container") > 0);
}

#[test]
fn pod_to_outside_goes_through_the_node_stack() {
    root_or_skip!();
    let node = Node::start();
    let pod = node.add_pod("default", "out");
    let ext = node.ext_ns.as_ref().unwrap().path();
    let _server = EchoServer::start(&ext, 8083);
    let before = counter(&node, "forward_stack");
    assert_eq!(
        tcp_echo(&pod.path(), node.ext_ip, 8083, b"outside").unwrap(),
        b"outside"
    );
    assert_eq!(
        udp_echo(&pod.path(), node.ext_ip, 8083, b"outside udp").unwrap(),
        b"outside udp"
    );
    assert!(ping(&pod.path(), node.ext_ip));
    assert!(counter(&node, "forward_stack") > before);
}

#[test]
fn masquerade_lets_pods_reach_networks_that_do_not_route_the_pod_cidr() {
    root_or_skip!();
    let node = Node::start_with(NodeOpts {
        agent_args: vec!["--masquerade"],
        ..NodeOpts::default()
    });
    let ext = node.ext_ns.as_ref().unwrap();
    // The outside host forgets how to reach pods: only the node's own address is routable.
    ip(Some(&ext.name), &["route", "del", &node.pod_cidr]);
    let pod = node.add_pod("default", "natted");
    let _server = EchoServer::start(&ext.path(), 8085);
    assert_eq!(
        tcp_echo(&pod.path(), node.ext_ip, 8085, b"via snat").unwrap(),
        b"via snat"
    );
    assert_eq!(
        udp_echo(&pod.path(), node.ext_ip, 8085, b"udp via snat").unwrap(),
        b"udp via snat"
    );
    let rules = moat_netns_tests::sh(
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", node.node_netns_path()))
            .args(["iptables", "-t", "nat", "-S", "MOAT-MASQ"]),
    );
    assert!(
        rules.contains(&node.pod_cidr) && rules.contains("MASQUERADE"),
        "{rules}"
    );
}

#[test]
fn spoofed_source_addresses_are_dropped() {
    root_or_skip!();
    let node = Node::start();
    let a = node.add_pod("default", "honest");
    let b = node.add_pod("default", "victim");
    let _server = EchoServer::start(&b.path(), 8084);
    // Pod `a` claims an address it was not given.
    let fake = Ipv4Addr::from(u32::from(a.ip) + 100);
    ip(Some(&a.netns), &["addr", "add", &format!("{fake}/32"), "dev", "eth0"]);
    let before = counter(&node, "drop_invalid_source_ip");
    let spoofed = in_netns(&a.path(), move || {
        let s = socket_from(fake);
        s.connect_timeout(
            &std::net::SocketAddr::from((b.ip, 8084)),
            std::time::Duration::from_millis(800),
        )
    });
    assert!(
        spoofed.is_err(),
        "a connection from a spoofed source must not get through"
    );
    assert!(counter(&node, "drop_invalid_source_ip") > before);
    // Its real address still works.
    assert_eq!(tcp_echo(&a.path(), b.ip, 8084, b"real").unwrap(), b"real");
}

/// A TCP socket bound to `src` (std cannot bind before connect).
fn socket_from(src: Ipv4Addr) -> socket2_lite::Socket {
    socket2_lite::Socket::bound(src)
}

/// Just enough of a raw TCP socket to bind a source address before connecting.
mod socket2_lite {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::time::Duration;

    pub struct Socket(OwnedFd);

    impl Socket {
        pub fn bound(src: Ipv4Addr) -> Self {
            // SAFETY: plain socket/bind calls with valid arguments.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                assert!(fd >= 0);
                let sa = sockaddr(SocketAddr::from((src, 0)));
                assert_eq!(
                    libc::bind(
                        fd,
                        std::ptr::addr_of!(sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32
                    ),
                    0,
                    "bind {src}"
                );
                Self(OwnedFd::from_raw_fd(fd))
            }
        }

        pub fn connect_timeout(&self, to: &SocketAddr, timeout: Duration) -> std::io::Result<()> {
            use std::os::fd::AsRawFd as _;
            let tv = libc::timeval {
                tv_sec: timeout.as_secs() as i64,
                tv_usec: i64::from(timeout.subsec_micros()),
            };
            let sa = sockaddr(*to);
            // SAFETY: valid fd and option/address buffers.
            unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    std::ptr::addr_of!(tv).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                if libc::connect(
                    self.0.as_raw_fd(),
                    std::ptr::addr_of!(sa).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        }
    }

    fn sockaddr(a: SocketAddr) -> libc::sockaddr_in {
        let SocketAddr::V4(v4) = a else { panic!("v4 only") };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
}
