//! A private containerd (own root, state and socket) and a busybox image built
//! locally from Debian's busybox-static, so `ctr run --cni` drives the real `moat`
//! plugin exactly as a runtime does. Everything is removed on drop.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sh;

pub const IMAGE: &str = "docker.io/moat/busybox:test";
/// What the image's httpd serves at `/`.
pub const INDEX_BODY: &str = "moat-ok";

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    daemon: Child,
    runs: Vec<(String, Child)>,
    /// Containers whose `ctr run` client was killed: removed on drop.
    orphans: Vec<String>,
}

impl Containerd {
    /// Starts containerd and imports the busybox image.
    ///
    /// # Panics
    /// When containerd does not come up or the image cannot be imported.
    #[must_use]
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (apt package containerd) must be installed");
        let me = Self {
            dir: dir.to_path_buf(),
            socket,
            daemon,
            runs: Vec::new(),
            orphans: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Command::new("ctr")
            .arg("-a")
            .arg(&me.socket)
            .arg("version")
            .output()
            .map_or(true, |o| !o.status.success())
        {
            assert!(Instant::now() < deadline, "containerd did not start: {}", me.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let tar = build_image(&dir.join("image"));
        sh(me.ctr().args(["images", "import"]).arg(&tar));
        me
    }

    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    #[must_use]
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket);
        c
    }

    /// `ctr run --rm --cni IMAGE id cmd…` in the background (ctr tears the network
    /// down through CNI DEL when the task ends).
    pub fn run_background(&mut self, id: &str, cmd: &[&str]) {
        let child = self
            .ctr()
            .args(["run", "--rm", "--cni", IMAGE, id])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr run");
        self.runs.push((id.to_string(), child));
    }

    /// `ctr run --rm --cni IMAGE id cmd…` to completion; returns stdout.
    #[must_use]
    pub fn run(&self, id: &str, cmd: &[&str]) -> String {
        sh(self.ctr().args(["run", "--rm", "--cni", IMAGE, id]).args(cmd))
    }

    /// Has `id` (a container started outside `run`/`run_background`, e.g. one whose start
    /// failed) removed with the rest on drop: its task, its shim and its record.
    pub fn adopt(&mut self, id: &str) {
        self.orphans.push(id.to_string());
    }

    /// Kills the container as a crash would: first its `ctr run` client (SIGKILL, so it
    /// never tears the network down through CNI DEL), then the container's task. The
    /// task's network namespace dies with its last process.
    pub fn crash(&mut self, id: &str) {
        if let Some(pos) = self.runs.iter().position(|(n, _)| n == id) {
            let (_, mut child) = self.runs.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
            self.orphans.push(id.to_string());
        }
        let _ = self.ctr().args(["task", "kill", "-s", "KILL", id]).output();
    }

    /// Kills a background container and waits for its `ctr run --rm` to finish.
    pub fn stop(&mut self, id: &str) {
        let _ = self.ctr().args(["task", "kill", "-s", "KILL", id]).output();
        if let Some(pos) = self.runs.iter().position(|(n, _)| n == id) {
            let (_, mut child) = self.runs.remove(pos);
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut ids: Vec<String> = self.runs.iter().map(|(n, _)| n.clone()).collect();
        ids.append(&mut self.orphans);
        for id in ids {
            self.stop(&id);
            let _ = self.ctr().args(["task", "rm", "-f", &id]).output();
            let _ = self.ctr().args(["containers", "rm", &id]).output();
        }
        // SAFETY: signalling the containerd we spawned.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = Command::new("umount").arg("-R").arg(self.dir.join("state")).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sha256(path: &Path) -> String {
    sh(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Adds `file` to the OCI layout's blob store; returns (digest, size).
fn blob(layout: &Path, file: &Path) -> (String, u64) {
    let digest = sha256(file);
    std::fs::copy(file, layout.join("blobs/sha256").join(&digest)).expect("copy blob");
    (digest, std::fs::metadata(file).unwrap().len())
}

/// An OCI image archive with busybox (static) and an httpd document root.
#[must_use]
pub fn build_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let layout = dir.join("layout");
    for d in ["bin", "www", "tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("/bin/busybox (apt package busybox-static)");
    for applet in ["sh", "httpd", "nc", "ip", "sleep", "cat", "ping"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("www/index.html"), INDEX_BODY).unwrap();
    let layer = dir.join("layer.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    let (layer_digest, layer_size) = blob(&layout, &layer);
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}})
        .to_string(),
    )
    .unwrap();
    let (config_digest, config_size) = blob(&layout, &config);
    let manifest = dir.join("manifest.json");
    std::fs::write(
        &manifest,
        serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer_size}]})
        .to_string(),
    )
    .unwrap();
    let (manifest_digest, manifest_size) = blob(&layout, &manifest);
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": IMAGE}}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = dir.join("image.tar");
    sh(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tar).arg("."));
    tar
}

/// Files a test writes into system paths (CNI bin/conf dirs): restored on drop.
pub struct SystemFiles {
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl SystemFiles {
    #[must_use]
    pub fn guard(paths: &[&str]) -> Self {
        Self {
            saved: paths
                .iter()
                .map(|p| (PathBuf::from(p), std::fs::read(p).ok()))
                .collect(),
        }
    }
}

impl Drop for SystemFiles {
    fn drop(&mut self) {
        for (path, old) in &self.saved {
            match old {
                Some(bytes) => {
                    let _ = std::fs::write(path, bytes);
                }
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}
