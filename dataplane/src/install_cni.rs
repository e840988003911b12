//! `moat-agent install-cni`: what an installer init-container does on each node:
//! put the `moat` plugin binary into the CNI bin dir and write the conflist.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

pub struct InstallCni {
    pub cni_bin_dir: PathBuf,
    pub conf_path: PathBuf,
    pub plugin: Option<PathBuf>,
    pub socket: PathBuf,
    pub network_name: String,
    pub with_portmap: bool,
    pub cni_version: String,
}

/// The conflist a runtime reads. `portmap` chained after moat serves `hostPort`.
#[must_use]
pub fn conflist(network_name: &str, socket: &Path, with_portmap: bool, cni_version: &str) -> serde_json::Value {
    let mut plugins = vec![json!({ "type": "moat", "socket": socket })];
    if with_portmap {
        plugins.push(json!({ "type": "portmap", "capabilities": { "portMappings": true } }));
    }
    json!({ "cniVersion": cni_version, "name": network_name, "plugins": plugins })
}

/// # Errors
/// When the plugin binary is missing or a destination cannot be written.
pub fn run(opts: &InstallCni) -> anyhow::Result<()> {
    let plugin = match &opts.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating moat-agent")?
            .with_file_name("moat"),
    };
    std::fs::create_dir_all(&opts.cni_bin_dir).with_context(|| format!("creating {}", opts.cni_bin_dir.display()))?;
    let dst = opts.cni_bin_dir.join("moat");
    // Copy to a temporary name and rename: a runtime may exec the old binary meanwhile.
    let tmp = opts.cni_bin_dir.join(".moat.tmp");
    std::fs::copy(&plugin, &tmp)
        .with_context(|| format!("copying CNI plugin {} to {}", plugin.display(), tmp.display()))?;
    std::fs::rename(&tmp, &dst).with_context(|| format!("installing {}", dst.display()))?;
    if let Some(dir) = opts.conf_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let body = serde_json::to_string_pretty(&conflist(
        &opts.network_name,
        &opts.socket,
        opts.with_portmap,
        &opts.cni_version,
    ))?;
    std::fs::write(&opts.conf_path, body + "\n").with_context(|| format!("writing {}", opts.conf_path.display()))?;
    println!("installed {} and {}", dst.display(), opts.conf_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_names_moat_first_and_optional_portmap() {
        let c = conflist("moat", Path::new("/run/x.sock"), true, "1.1.0");
        assert_eq!(c["cniVersion"], "1.1.0");
        assert_eq!(c["plugins"][0]["type"], "moat");
        assert_eq!(c["plugins"][0]["socket"], "/run/x.sock");
        assert_eq!(c["plugins"][1]["type"], "portmap");
        assert_eq!(
            conflist("moat", Path::new("/s"), false, "1.0.0")["plugins"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
