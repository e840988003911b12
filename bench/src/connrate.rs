//! `moat-connrate`: connection rate to a service (connect, one request, close), and the
//! time until a service starts answering.
//!
//! `moat-connrate serve PORT [WORKERS]` answers connections in WORKERS threads (default 1)
//! that each accept and serve one connection at a time (echo until the peer closes): no
//! thread is spawned per connection, so the numbers show the datapath, not the scheduler.
//! `moat-connrate rate IP PORT SECONDS [CLIENTS]` runs CLIENTS sequential connectors
//! (default 1: the latency-bound rate; more: the node's capacity for new connections)
//! and prints `{"conns_per_sec": …, "errors": …}`; connections are closed with RST
//! (SO_LINGER 0) so the client does not run out of ports in TIME_WAIT. `moat-connrate wait IP PORT TIMEOUT_MS` retries connect+request
//! until one succeeds and prints `{"ms": …}` (time since start).
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = |i: usize| -> SocketAddr { format!("{}:{}", args[i], args[i + 1]).parse().expect("IP PORT") };
    match args.get(1).map(String::as_str) {
        Some("rate") => rate(addr(2), args[4].parse().expect("SECONDS"), count(args.get(5))),
        Some("wait") => wait(addr(2), args[4].parse().expect("TIMEOUT_MS")),
        Some("serve") => serve(args[2].parse().expect("PORT"), count(args.get(3))),
        _ => {
            eprintln!(
                "usage: moat-connrate serve PORT [WORKERS] | moat-connrate rate IP PORT SECONDS [CLIENTS] | moat-connrate wait IP PORT TIMEOUT_MS"
            );
            std::process::exit(2);
        }
    }
}

fn count(arg: Option<&String>) -> usize {
    arg.map_or(1, |a| a.parse().expect("a thread count"))
}

fn one(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    Ok(())
}

fn rate(to: SocketAddr, seconds: f64, clients: usize) {
    // Warm up (neighbour entries, caches).
    for _ in 0..100 {
        let _ = one(to, Duration::from_secs(1));
    }
    let start = Instant::now();
    let run = move || {
        let (mut ok, mut errors) = (0u64, 0u64);
        while start.elapsed().as_secs_f64() < seconds {
            match one(to, Duration::from_secs(1)) {
                Ok(()) => ok += 1,
                Err(_) => errors += 1,
            }
        }
        (ok, errors)
    };
    let threads: Vec<_> = (0..clients).map(|_| std::thread::spawn(run)).collect();
    let (mut ok, mut errors) = (0u64, 0u64);
    for t in threads {
        let (o, e) = t.join().expect("client thread");
        ok += o;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{{\"conns_per_sec\":{:.0},\"errors\":{errors}}}", ok as f64 / secs);
}

fn wait(to: SocketAddr, timeout_ms: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(timeout_ms) {
        if one(to, Duration::from_millis(50)).is_ok() {
            println!("{{\"ms\":{:.1}}}", start.elapsed().as_secs_f64() * 1000.0);
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("{{\"ms\":null}}");
    std::process::exit(1);
}

fn serve(port: u16, workers: usize) {
    let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let accept = move |l: std::net::TcpListener| {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 64];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 || s.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        }
    };
    let threads: Vec<_> = (1..workers)
        .map(|_| {
            let l = l.try_clone().expect("listener");
            std::thread::spawn(move || accept(l))
        })
        .collect();
    accept(l);
    drop(threads);
}
