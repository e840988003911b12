//! `moat` CNI plugin entry point: stdout carries only the CNI protocol; diagnostics go
//! to stderr.
use std::io::{Read as _, Write as _};

/// Largest network configuration accepted on stdin; a runtime's is a few kilobytes.
const MAX_STDIN: u64 = 1 << 20;

fn main() {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin);
    let out = if stdin.len() as u64 > MAX_STDIN {
        Err(moat_cni::error::CniError::new(
            moat_cni::error::code::DECODE_FAILURE,
            "failed to decode the network configuration",
            format!("stdin is larger than {MAX_STDIN} bytes"),
        ))
    } else {
        moat_cni::run(|k| std::env::var(k).ok(), &stdin)
    };
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
