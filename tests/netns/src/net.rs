//! Real traffic from inside namespaces: a thread joins a netns with `setns` (which
//! affects only that thread) and uses ordinary sockets there.
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs `f` on a new thread inside the netns at `path` and returns its result.
pub fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_string();
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .expect("netns thread panicked")
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: valid fd of a netns file; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A TCP and UDP echo server on `port` inside a netns; stops on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    #[must_use]
    pub fn start(netns_path: &str, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        {
            let (path, stop, ready) = (netns_path.to_string(), stop.clone(), ready_tx.clone());
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let stop = stop.clone();
                            std::thread::spawn(move || echo_tcp(s, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        {
            let (path, stop, ready) = (netns_path.to_string(), stop.clone(), ready_tx);
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ready.send(()).unwrap();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("echo server ready");
        }
        Self { stop, threads }
    }
}

fn echo_tcp(mut s: TcpStream, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP connect + echo round trip from inside `netns_path`.
///
/// # Errors
/// The socket error, as text.
pub fn tcp_echo(netns_path: &str, to: Ipv4Addr, port: u16, payload: &[u8]) -> Result<Vec<u8>, String> {
    let payload = payload.to_vec();
    in_netns(netns_path, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(&payload).map_err(|e| e.to_string())?;
        let mut got = vec![0u8; payload.len()];
        s.read_exact(&mut got).map_err(|e| e.to_string())?;
        Ok(got)
    })
}

/// One UDP request/response from inside `netns_path`.
///
/// # Errors
/// Timeout or socket error, as text.
pub fn udp_echo(netns_path: &str, to: Ipv4Addr, port: u16, payload: &[u8]) -> Result<Vec<u8>, String> {
    let payload = payload.to_vec();
    in_netns(netns_path, move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65536];
        // UDP may lose the first datagram while neighbours settle: retry a few times.
        for _ in 0..4 {
            s.send_to(&payload, (to, port)).map_err(|e| e.to_string())?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(buf[..n].to_vec());
            }
        }
        Err("no UDP reply".into())
    })
}

/// `ping -c1` from inside a netns: true when a reply came back.
#[must_use]
pub fn ping(netns_path: &str, to: Ipv4Addr) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={netns_path}"))
        .args(["ping", "-c", "1", "-W", "2", &to.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A TCP connection held open inside a netns; `roundtrip` sends and awaits the echo.
pub struct HeldConnection {
    tx: std::sync::mpsc::Sender<Vec<u8>>,
    rx: std::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
}

impl HeldConnection {
    /// # Panics
    /// When the connection cannot be opened.
    #[must_use]
    pub fn open(netns_path: &str, to: Ipv4Addr, port: u16) -> Self {
        let (tx, req_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (resp_tx, rx) = std::sync::mpsc::channel();
        let path = netns_path.to_string();
        let (ok_tx, ok_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&path);
            let mut s = match TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(2)) {
                Ok(s) => s,
                Err(e) => {
                    ok_tx.send(Err(e.to_string())).ok();
                    return;
                }
            };
            ok_tx.send(Ok(())).ok();
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            for msg in req_rx {
                let res = s.write_all(&msg).map_err(|e| e.to_string()).and_then(|()| {
                    let mut got = vec![0u8; msg.len()];
                    s.read_exact(&mut got).map(|()| got).map_err(|e| e.to_string())
                });
                if resp_tx.send(res).is_err() {
                    return;
                }
            }
        });
        ok_rx.recv().expect("connection thread").expect("open held connection");
        Self { tx, rx }
    }

    /// # Errors
    /// The socket error, as text.
    pub fn roundtrip(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.tx.send(payload.to_vec()).map_err(|e| e.to_string())?;
        self.rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| e.to_string())?
    }
}

/// IP protocol numbers for `reachability`.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// Probes every (source netns, target address, (protocol, port)) at once and returns
/// `out[source][probe][target]`: whether a TCP connect completed or a UDP echo came back
/// within `timeout`. One thread per source joins its netns and drives all of its probes
/// with non-blocking sockets, so a full 9×9×4 matrix costs one timeout, not 324.
#[must_use]
pub fn reachability(
    sources: &[String],
    targets: &[Ipv4Addr],
    probes: &[(u8, u16)],
    timeout: Duration,
) -> Vec<Vec<Vec<bool>>> {
    let handles: Vec<_> = sources
        .iter()
        .map(|path| {
            let (path, targets, probes) = (path.clone(), targets.to_vec(), probes.to_vec());
            std::thread::spawn(move || {
                enter(&path);
                probe_all(&targets, &probes, timeout)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("probe thread panicked"))
        .collect()
}

struct Probe {
    fd: i32,
    udp: bool,
    done: bool,
    ok: bool,
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn probe_all(targets: &[Ipv4Addr], probes: &[(u8, u16)], timeout: Duration) -> Vec<Vec<bool>> {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let mut all: Vec<Probe> = Vec::new();
    for &(proto, port) in probes {
        for &ip in targets {
            let udp = proto == UDP;
            let kind = if udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
            // SAFETY: plain socket calls on fds we own; closed below.
            let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let to = sockaddr(ip, port);
            // SAFETY: `to` is a valid sockaddr_in of `len` bytes.
            unsafe { libc::connect(fd, std::ptr::from_ref(&to).cast(), len) };
            all.push(Probe {
                fd,
                udp,
                done: false,
                ok: false,
            });
        }
    }
    let start = std::time::Instant::now();
    let mut last_send: Option<std::time::Instant> = None;
    while start.elapsed() < timeout && all.iter().any(|p| !p.done) {
        // UDP may lose a datagram: send again every 200 ms until answered.
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            for p in all.iter().filter(|p| p.udp && !p.done) {
                // SAFETY: valid fd and buffer.
                unsafe { libc::send(p.fd, b"probe".as_ptr().cast(), 5, 0) };
            }
            last_send = Some(std::time::Instant::now());
        }
        let mut fds: Vec<libc::pollfd> = all
            .iter()
            .filter(|p| !p.done)
            .map(|p| libc::pollfd {
                fd: p.fd,
                events: if p.udp { libc::POLLIN } else { libc::POLLOUT },
                revents: 0,
            })
            .collect();
        // SAFETY: valid pollfd array.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        for pfd in fds.iter().filter(|f| f.revents != 0) {
            let p = all.iter_mut().find(|p| p.fd == pfd.fd).expect("probe of fd");
            if p.udp {
                let mut buf = [0u8; 64];
                // SAFETY: valid fd and buffer.
                let n = unsafe { libc::recv(p.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n == 5 && &buf[..5] == b"probe" {
                    p.done = true;
                    p.ok = true;
                }
            } else {
                let mut err: i32 = 0;
                let mut l = std::mem::size_of::<i32>() as libc::socklen_t;
                // SAFETY: valid fd and out-pointers.
                unsafe {
                    libc::getsockopt(
                        p.fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        std::ptr::from_mut(&mut err).cast(),
                        &mut l,
                    )
                };
                p.done = true;
                p.ok = err == 0;
            }
        }
    }
    let out = probes
        .iter()
        .enumerate()
        .map(|(i, _)| {
            all[i * targets.len()..(i + 1) * targets.len()]
                .iter()
                .map(|p| p.ok)
                .collect()
        })
        .collect();
    for p in &all {
        // SAFETY: closing fds we opened.
        unsafe { libc::close(p.fd) };
    }
    out
}

/// A server that answers every TCP connection and UDP datagram on `port` with `name`
/// (so a client can tell which backend it reached); stops on drop.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl NameServer {
    #[must_use]
    pub fn start(netns_path: &str, port: u16, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        {
            let (path, stop, ready, name) = (netns_path.to_string(), stop.clone(), ready_tx.clone(), name.to_string());
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(name.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        {
            let (path, stop, ready, name) = (netns_path.to_string(), stop.clone(), ready_tx, name.to_string());
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ready.send(()).unwrap();
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(name.as_bytes(), from);
                    }
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("name server ready");
        }
        Self { stop, threads }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects over TCP from inside a netns and reads what the server says until it closes.
///
/// # Errors
/// The socket error, as text (e.g. "Operation not permitted" when refused locally).
pub fn tcp_read(netns_path: &str, to: Ipv4Addr, port: u16) -> Result<String, String> {
    in_netns(netns_path, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// `setsockopt(fd, SOL_SOCKET, name, value)`.
fn set_option<T>(fd: libc::c_int, name: libc::c_int, value: &T) {
    // SAFETY: `value` is a valid `T` of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        );
    }
}

/// Like `tcp_read`, from a chosen local port (`SO_REUSEADDR`, so the port can be used
/// again right after an earlier connection from it).
///
/// # Errors
/// Connect or read error, as text.
pub fn tcp_read_from(netns_path: &str, local_port: u16, to: Ipv4Addr, port: u16) -> Result<String, String> {
    use std::os::fd::FromRawFd as _;
    in_netns(netns_path, move || {
        let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain socket calls on a descriptor owned by `s` from here on.
        let mut s = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            let s = TcpStream::from_raw_fd(fd);
            set_option(fd, libc::SO_REUSEADDR, &(1 as libc::c_int));
            // A blocking connect gives up after SO_SNDTIMEO.
            set_option(fd, libc::SO_SNDTIMEO, &libc::timeval { tv_sec: 2, tv_usec: 0 });
            let local = sockaddr(Ipv4Addr::UNSPECIFIED, local_port);
            if libc::bind(fd, std::ptr::from_ref(&local).cast(), len) != 0 {
                return Err(format!("bind :{local_port}: {}", std::io::Error::last_os_error()));
            }
            let remote = sockaddr(to, port);
            if libc::connect(fd, std::ptr::from_ref(&remote).cast(), len) != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            s
        };
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// Sends one UDP datagram from inside a netns (unconnected socket) and returns the reply
/// and the address it came from.
///
/// # Errors
/// Timeout or socket error, as text.
pub fn udp_ask(netns_path: &str, to: Ipv4Addr, port: u16) -> Result<(String, SocketAddr), String> {
    in_netns(netns_path, move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        for _ in 0..4 {
            s.send_to(b"who", (to, port)).map_err(|e| e.to_string())?;
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                return Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
            }
        }
        Err("no UDP reply".into())
    })
}

/// A raw socket in a netns (created there; it stays in that netns when used elsewhere).
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
}

impl RawSocket {
    /// `socket(AF_INET, SOCK_RAW, proto)` inside `netns_path`. With `IPPROTO_RAW` the
    /// caller writes whole IPv4 headers (`IP_HDRINCL`).
    ///
    /// # Panics
    /// When the socket cannot be created.
    #[must_use]
    pub fn open(netns_path: &str, proto: i32) -> Self {
        let fd = in_netns(netns_path, move || {
            // SAFETY: plain socket call; the fd is owned below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh fd we own.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        });
        Self { fd }
    }

    /// Sends `payload` to `to` (the kernel adds the IP header unless `IPPROTO_RAW`).
    ///
    /// # Errors
    /// The socket error, as text.
    pub fn send_to(&self, to: Ipv4Addr, payload: &[u8]) -> Result<(), String> {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(to).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffer and address for the duration of the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                std::ptr::addr_of!(sa).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(())
    }

    /// Every IPv4 packet (header included) the socket receives within `wait`.
    #[must_use]
    pub fn received(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: valid buffer of the given length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                out.push(buf[..n as usize].to_vec());
            }
        }
    }
}

/// The Internet checksum of `data`.
#[must_use]
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP error message (header and quote, no IP header) of `icmp_type`/`code` that
/// quotes a packet `src:sport → dst:dport` of protocol `proto`.
#[must_use]
pub fn icmp_error(icmp_type: u8, code: u8, quoted: (Ipv4Addr, u16, Ipv4Addr, u16, u8)) -> Vec<u8> {
    let (src, sport, dst, dport, proto) = quoted;
    let mut ip = vec![0x45, 0, 0, 48, 0x12, 0x34, 0, 0, 64, proto, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut msg = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&ip);
    msg.extend_from_slice(&sport.to_be_bytes());
    msg.extend_from_slice(&dport.to_be_bytes());
    msg.extend_from_slice(&[0, 28, 0, 0]);
    let sum = inet_checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

/// ICMP messages (type, source) among raw IPv4 packets.
#[must_use]
pub fn icmp_messages(packets: &[Vec<u8>]) -> Vec<(u8, Ipv4Addr)> {
    packets
        .iter()
        .filter(|p| p.len() > 20 && p[9] == 1)
        .map(|p| {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            (p[ihl], Ipv4Addr::new(p[12], p[13], p[14], p[15]))
        })
        .collect()
}

/// Sends one raw Ethernet frame out of `ifname` inside a netns (`AF_PACKET`: what a pod
/// with `CAP_NET_RAW` can do).
///
/// # Errors
/// The socket error, as text.
pub fn send_frame(netns_path: &str, ifname: &str, frame: &[u8]) -> Result<(), String> {
    let (ifname, frame) = (ifname.to_string(), frame.to_vec());
    in_netns(netns_path, move || {
        let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
        // SAFETY: valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: plain socket call; closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = index as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid buffer and address for the call.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(sa).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        if n < 0 {
            return Err(err.to_string());
        }
        Ok(())
    })
}

/// An Ethernet frame carrying an IPv4 UDP datagram `src:sport → dst:dport`.
#[must_use]
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x43, 0x21, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}
