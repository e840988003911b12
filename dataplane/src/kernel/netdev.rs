//! Small queries about network devices and filesystems, answered for the network
//! namespace the agent runs in (netlink and statfs follow the netns; /sys may not).
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd as _;
use std::path::Path;

/// The ifindex and MAC of `name` in the current network namespace (rtnetlink).
fn link(name: &str) -> io::Result<(u32, Option<[u8; 6]>)> {
    let not_found = || io::Error::from_raw_os_error(libc::ENODEV);
    moat_netlink::Netlink::open()
        .and_then(|mut nl| nl.link(name))
        .map_err(|e| match e.errno() {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::other(e.to_string()),
        })?
        .ok_or_else(not_found)
}

/// ifindex of `name` in the current network namespace.
///
/// # Errors
/// `ENODEV` when no such device exists; other netlink errors.
pub fn ifindex(name: &str) -> io::Result<u32> {
    link(name).map(|(index, _)| index)
}

/// The name of the interface with index `ifindex` in the current netns, if any.
#[must_use]
pub fn link_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `buf`.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .ok()
        .map(str::to_string)
}

/// Deletes the interface `name` (a veth goes with its peer). `Ok(false)`: none existed.
///
/// # Errors
/// Netlink errors other than "no such device".
pub fn delete_link(name: &str) -> io::Result<bool> {
    moat_netlink::Netlink::open()
        .and_then(|mut nl| nl.delete_link(name))
        .map_err(|e| match e.errno() {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::other(e.to_string()),
        })
}

/// MAC address of `name` in the current network namespace.
///
/// # Errors
/// `ENODEV` when no such device exists, or when it has no Ethernet address.
pub fn mac(name: &str) -> io::Result<[u8; 6]> {
    link(name)?
        .1
        .ok_or_else(|| io::Error::other(format!("{name} has no Ethernet address")))
}

/// Turns IPv6 off on the host veth `ifname` (no address, no router advertisements, no
/// autoconfiguration): until Moat has IPv6 pods, a pod must not reach the node over the
/// veth's link-local address, nor teach the node routes. The datapath drops pods' IPv6
/// as well; this is the second wall.
///
/// # Errors
/// When a sysctl cannot be written (IPv6 disabled kernel-wide is not an error).
pub fn disable_ipv6(ifname: &str) -> io::Result<()> {
    let dir = Path::new("/proc/sys/net/ipv6/conf").join(ifname);
    if !dir.exists() {
        return Ok(());
    }
    for (key, value) in [("accept_ra", "0"), ("autoconf", "0"), ("disable_ipv6", "1")] {
        std::fs::write(dir.join(key), value)?;
    }
    Ok(())
}

#[must_use]
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub use moat_netlink::parse_mac;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const TRACEFS_MAGIC: i64 = 0x7472_6163;

fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: zeroed statfs is valid; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: pointers are valid for the call.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type)
}

fn mount(fstype: &str, target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let src = CString::new(fstype).map_err(io::Error::other)?;
    let tgt = CString::new(target.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts bpffs at `/sys/fs/bpf` unless one is there already (a bare host or a
/// fresh mount namespace, e.g. under `ip netns exec`, may lack it).
///
/// # Errors
/// When mounting fails.
pub fn ensure_bpffs(root: &Path) -> io::Result<bool> {
    if fs_magic(root) == Some(BPF_FS_MAGIC) {
        return Ok(false);
    }
    mount("bpf", root).map(|()| true)
}

/// Mounts tracefs at `/sys/kernel/tracing` unless present (needed by tracepoint hooks).
///
/// # Errors
/// When mounting fails.
pub fn ensure_tracefs(root: &Path) -> io::Result<bool> {
    if fs_magic(root) == Some(TRACEFS_MAGIC) {
        return Ok(false);
    }
    mount("tracefs", root).map(|()| true)
}

/// The cookie of the network namespace at `netns_path` (None: this process's own), as
/// `bpf_get_netns_cookie` reports it (`SO_NETNS_COOKIE`, Linux ≥ 5.14).
///
/// # Errors
/// When the namespace cannot be entered or the kernel lacks the socket option.
pub fn netns_cookie(netns_path: Option<&Path>) -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let path = netns_path.map(Path::to_path_buf);
    std::thread::spawn(move || -> std::io::Result<u64> {
        if let Some(path) = path {
            let f = std::fs::File::open(&path)?;
            // SAFETY: a netns fd; affects only this short-lived thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Any address: a pod's loopback may still be down.
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: valid fd and out-pointers of the right size.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                std::ptr::from_mut(&mut cookie).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(cookie)
    })
    .join()
    .map_err(|_| std::io::Error::other("netns cookie thread panicked"))?
}

/// Where cgroup v2 is mounted (the first `cgroup2` entry of /proc/self/mounts).
///
/// # Errors
/// When /proc/self/mounts cannot be read or has no cgroup2 mount.
pub fn cgroup2_root() -> std::io::Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup2 mount in /proc/self/mounts"))
}

/// Every IPv4 address configured in this network namespace (the node's addresses: traffic
/// from them is the node itself), link-local ones included.
#[must_use]
pub fn host_ipv4s() -> Vec<std::net::Ipv4Addr> {
    let mut out: Vec<std::net::Ipv4Addr> = host_ipv4_interfaces().into_iter().map(|(_, ip)| ip).collect();
    out.sort();
    out.dedup();
    out
}

/// (interface, address) for every IPv4 address in this network namespace.
#[must_use]
pub fn host_ipv4_interfaces() -> Vec<(String, std::net::Ipv4Addr)> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: non-null sockaddr from getifaddrs.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET addresses are `sockaddr_in`.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                // SAFETY: getifaddrs gives a NUL-terminated interface name.
                let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                    .to_string_lossy()
                    .into_owned();
                out.push((name, std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// The node's own devices for NodePort: interfaces with a routable IPv4 address that are
/// not loopback and not pod veths.
#[must_use]
pub fn node_devices() -> Vec<String> {
    let mut out: Vec<String> = host_ipv4_interfaces()
        .into_iter()
        .filter(|(name, ip)| !ip.is_loopback() && !ip.is_link_local() && !name.starts_with("lxc"))
        .map(|(name, _)| name)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0xab, 0, 1, 0xfe, 0x10];
        assert_eq!(format_mac(&m), "02:ab:00:01:fe:10");
        assert_eq!(parse_mac("02:ab:00:01:fe:10"), Some(m));
        assert_eq!(parse_mac("02:ab:00:01:fe"), None);
        assert_eq!(parse_mac("02:ab:00:01:fe:10:11"), None);
        assert_eq!(parse_mac("zz:ab:00:01:fe:10"), None);
    }

    #[test]
    fn loopback_exists() {
        assert!(ifindex("lo").unwrap() > 0);
        assert!(ifindex("no-such-dev0").is_err());
    }
}
