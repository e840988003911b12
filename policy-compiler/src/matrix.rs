//! Pod-to-pod reachability, printed like the upstream e2e suite's "reachability" table.
//!
//! Each cell is what the datapath would do for the flow (egress check at the source when it
//! is a local pod, ingress check at the destination when it is a local pod); a pod always
//! reaches itself.
use std::fmt;

use crate::compile::Compiled;
use crate::k8s::proto;
use crate::lookup::{resolve_pod, verdict};
use crate::world::World;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// `namespace/name`, sorted; rows are sources, columns destinations.
    pub pods: Vec<String>,
    pub probes: Vec<(u8, u16)>,
    /// `allowed[probe][from][to]`.
    pub allowed: Vec<Vec<Vec<bool>>>,
}

/// The reachability matrix of every pod in `world` for each `(protocol, port)` probe.
#[must_use]
pub fn matrix(world: &World, compiled: &Compiled, probes: &[(u8, u16)]) -> Matrix {
    let mut pods: Vec<_> = world.pods.iter().collect();
    pods.sort_by(|a, b| (&a.pod.namespace, &a.pod.name).cmp(&(&b.pod.namespace, &b.pod.name)));
    let resolved: Vec<_> = pods.iter().map(|p| resolve_pod(p)).collect();
    let allowed = probes
        .iter()
        .map(|&(proto, port)| {
            resolved
                .iter()
                .enumerate()
                .map(|(i, from)| {
                    resolved
                        .iter()
                        .enumerate()
                        .map(|(j, to)| i == j || verdict(compiled, from, to, proto, port))
                        .collect()
                })
                .collect()
        })
        .collect();
    Matrix {
        pods: pods
            .iter()
            .map(|p| format!("{}/{}", p.pod.namespace, p.pod.name))
            .collect(),
        probes: probes.to_vec(),
        allowed,
    }
}

impl Matrix {
    /// `{"pods": [...], "probes": [{"protocol": "TCP", "port": 80, "allowed": [[true, ...], ...]}]}`.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "pods": self.pods,
            "probes": self.probes.iter().zip(&self.allowed).map(|(&(p, port), grid)| serde_json::json!({
                "protocol": proto::name(p),
                "port": port,
                "allowed": grid,
            })).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.pods.iter().map(String::len).max().unwrap_or(1).max(1);
        for (&(p, port), grid) in self.probes.iter().zip(&self.allowed) {
            writeln!(
                f,
                "Reachability {}/{port} (. allowed, X denied; rows from, columns to):",
                proto::name(p)
            )?;
            write!(f, "{:<w$}", "-")?;
            for name in &self.pods {
                write!(f, " {name:<w$}")?;
            }
            writeln!(f)?;
            for (name, row) in self.pods.iter().zip(grid) {
                write!(f, "{name:<w$}")?;
                for &ok in row {
                    write!(f, " {:<w$}", if ok { "." } else { "X" })?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}
