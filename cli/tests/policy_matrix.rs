//! `moatctl policy matrix -f DIR` works offline (no agent) on a manifest directory.
use std::path::PathBuf;
use std::process::Command;

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-x-b, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {pod: b}}
    ports:
    - port: http
";

fn moatctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moatctl"))
        // No agent anywhere: the command must not need one.
        .args(["--socket", "/nonexistent/moat.sock"])
        .args(args)
        .output()
        .expect("run moatctl")
}

#[test]
fn matrix_offline_from_a_manifest_directory() {
    let dir = TempDir(std::env::temp_dir().join(format!("moatctl-matrix-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("all.yaml"), MANIFESTS).unwrap();
    let d = dir.0.to_str().unwrap();
    let out = moatctl(&["policy", "matrix", "-f", d, "--port", "80/tcp", "--port", "81/tcp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = "\
Reachability TCP/80 (. allowed, X denied; rows from, columns to):
-   x/a x/b y/a
x/a .   .   X
x/b .   .   .
y/a .   .   .
Reachability TCP/81 (. allowed, X denied; rows from, columns to):
-   x/a x/b y/a
x/a .   .   X
x/b .   .   X
y/a .   .   .
";
    assert_eq!(text, expected);

    let json = moatctl(&["-o", "json", "policy", "matrix", "-f", d]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["pods"], serde_json::json!(["x/a", "x/b", "y/a"]));
    assert_eq!(v["probes"][0]["allowed"][0][2], false);

    // A bad document is reported with file, object and field, and no matrix is printed:
    // one computed without it would be a wrong answer.
    std::fs::write(
        dir.0.join("bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: broken, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP}]}]\n",
    )
    .unwrap();
    let out = moatctl(&["policy", "matrix", "-f", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml")
            && err.contains("NetworkPolicy x/broken")
            && err.contains("spec.ingress[0].ports[0].protocol"),
        "{err}"
    );
    assert!(!out.status.success(), "a rejected manifest fails the command");
    assert!(
        out.stdout.is_empty(),
        "no matrix: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("rejected; no matrix computed"), "{err}");

    let missing = moatctl(&["policy", "matrix", "-f", "/nonexistent-dir"]);
    assert!(!missing.status.success());
}
