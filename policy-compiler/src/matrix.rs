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

/// Cells padded to `w` and separated by one space, without trailing blanks.
fn line(cells: impl IntoIterator<Item = String>, w: usize) -> String {
    let cells: Vec<String> = cells.into_iter().map(|c| format!("{c:<w$}")).collect();
    cells.join(" ").trim_end().to_string()
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
            writeln!(
                f,
                "{}",
                line(std::iter::once("-".to_string()).chain(self.pods.iter().cloned()), w)
            )?;
            for (name, row) in self.pods.iter().zip(grid) {
                let cells = row.iter().map(|&ok| if ok { "." } else { "X" }.to_string());
                writeln!(f, "{}", line(std::iter::once(name.clone()).chain(cells), w))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{parse_documents, Manifests};
    use crate::world::Mode;
    use crate::Compiler;

    const MANIFESTS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}]
";

    fn setup(mode: Mode) -> (World, Compiled) {
        let (objects, errors) = parse_documents(std::path::Path::new("m.yaml"), MANIFESTS);
        assert!(errors.is_empty(), "{errors:?}");
        let m = Manifests {
            objects: objects.into_iter().map(|o| ("m.yaml".into(), o)).collect(),
            errors: vec![],
        };
        let w = World::from_manifests(&m, mode);
        let c = Compiler::new().compile(&w);
        (w, c)
    }

    #[test]
    fn reachability_table_from_manifests() {
        let (w, c) = setup(Mode::Default);
        let m = matrix(&w, &c, &[(6, 80), (6, 81)]);
        assert_eq!(m.pods, vec!["x/a", "x/b", "y/c"]);
        let expected = "\
Reachability TCP/80 (. allowed, X denied; rows from, columns to):
-   x/a x/b y/c
x/a .   .   .
x/b .   .   .
y/c .   X   .
Reachability TCP/81 (. allowed, X denied; rows from, columns to):
-   x/a x/b y/c
x/a .   X   .
x/b .   .   .
y/c .   X   .
";
        assert_eq!(m.to_string(), expected);
    }

    #[test]
    fn mode_always_denies_everything_but_self() {
        let (w, c) = setup(Mode::Always);
        let m = matrix(&w, &c, &[(6, 80)]);
        assert_eq!(
            m.allowed,
            vec![vec![
                vec![true, false, false],
                vec![false, true, false],
                vec![false, false, true]
            ]]
        );
    }

    #[test]
    fn json_has_pods_and_grids() {
        let (w, c) = setup(Mode::Default);
        let j = matrix(&w, &c, &[(17, 53)]).to_json();
        assert_eq!(j["pods"][2], "y/c");
        assert_eq!(j["probes"][0]["protocol"], "UDP");
        assert_eq!(j["probes"][0]["port"], 53);
        assert_eq!(j["probes"][0]["allowed"][2][1], false);
        assert_eq!(j["probes"][0]["allowed"][1][2], true);
    }
}
