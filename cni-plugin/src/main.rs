//! `moat` CNI plugin entry point: stdout carries only the CNI protocol; diagnostics go
//! to stderr.
use std::io::{Read as _, Write as _};

fn main() {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let out = moat_cni::run(|k| std::env::var(k).ok(), &stdin);
    let mut stdout = std::io::stdout().lock();
    match out {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(stdout, "{}", e.to_json(&moat_cni::config::sniff_version(&stdin)));
            eprintln!("moat: {e}");
            std::process::exit(1);
        }
    }
}
