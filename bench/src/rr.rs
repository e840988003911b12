//! `moat-rr`: TCP request/response latency, like netperf TCP_RR.
//!
//! `moat-rr server PORT` echoes; `moat-rr client IP PORT COUNT` sends COUNT one-byte
//! requests one at a time on one connection and prints latency percentiles as JSON.
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(args[2].parse().expect("PORT")),
        Some("client") => client(
            &args[2],
            args[3].parse().expect("PORT"),
            args[4].parse().expect("COUNT"),
        ),
        _ => {
            eprintln!("usage: moat-rr server PORT | moat-rr client IP PORT COUNT");
            std::process::exit(2);
        }
    }
}

fn server(port: u16) {
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = s;
            s.set_nodelay(true).ok();
            let mut b = [0u8; 64];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 || s.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

fn client(ip: &str, port: u16, count: usize) {
    let mut s = TcpStream::connect((ip, port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut lat = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    // Warm up caches, conntrack and neighbour entries before measuring.
    for _ in 0..200 {
        s.write_all(b"x").unwrap();
        s.read_exact(&mut b).unwrap();
    }
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(b"x").unwrap();
        s.read_exact(&mut b).unwrap();
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    let mean = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0;
    println!(
        "{{\"count\":{count},\"mean_us\":{mean:.2},\"p50_us\":{:.2},\"p99_us\":{:.2},\"rps\":{:.0}}}",
        pct(0.50),
        pct(0.99),
        count as f64 / total
    );
}
