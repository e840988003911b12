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
                let mut buf = [0u8; 2048];
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
        let mut buf = [0u8; 2048];
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
