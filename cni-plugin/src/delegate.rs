//! Delegated IPAM: run the IPAM plugin named in `ipam.type` (found on CNI_PATH) the
//! way the spec says a main plugin does: same CNI_* environment, the network
//! configuration on stdin, its result on stdout.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::config::Env;
use crate::error::{code, CniError, Result};

fn find(plugin: &str, env: &Env) -> Result<PathBuf> {
    if plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            format!("field ipam.type {plugin:?} must be a plugin name, not a path"),
        ));
    }
    env.path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "invalid environment",
                format!("IPAM plugin {plugin:?} not found in CNI_PATH {:?}", env.path),
            )
        })
}

/// Runs `plugin` with `command`; returns its parsed stdout (empty object for none).
///
/// The delegated stdin says cniVersion 1.0.0 when we were given 1.1.0: the 1.0.0 result
/// format is identical for IPAM and older IPAM plugins (Debian's host-local) reject 1.1.0.
///
/// # Errors
/// The IPAM plugin's own error, passed through with its code.
pub fn exec(plugin: &str, command: &str, env: &Env, netconf: &Value) -> Result<Value> {
    let path = find(plugin, env)?;
    let mut conf = netconf.clone();
    if conf.get("cniVersion").and_then(Value::as_str) == Some("1.1.0") && command != "GC" {
        conf["cniVersion"] = Value::from("1.0.0");
    }
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("running IPAM plugin {}", path.display()),
                e.to_string(),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("running IPAM plugin {}", path.display()),
            e.to_string(),
        )
    })?;
    let body: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("IPAM plugin {plugin} printed something that is not JSON"),
                e.to_string(),
            )
        })?
    };
    if !out.status.success() {
        let code = body
            .get("code")
            .and_then(Value::as_u64)
            .map_or(code::IO_FAILURE, |c| u32::try_from(c).unwrap_or(code::IO_FAILURE));
        let msg = body.get("msg").and_then(Value::as_str).unwrap_or("IPAM plugin failed");
        let details = body.get("details").and_then(Value::as_str).unwrap_or("");
        return Err(CniError::new(
            code,
            format!("IPAM plugin {plugin} {command}: {msg}"),
            details.to_string(),
        ));
    }
    Ok(body)
}

/// Whether `plugin` says it speaks `version` (for GC, which only 1.1.0 plugins know).
#[must_use]
pub fn supports(plugin: &str, env: &Env, version: &str) -> bool {
    exec(plugin, "VERSION", env, &serde_json::json!({ "cniVersion": "1.0.0" }))
        .ok()
        .and_then(|v| v.get("supportedVersions").and_then(Value::as_array).cloned())
        .is_some_and(|vs| vs.iter().any(|v| v.as_str() == Some(version)))
}

/// The first IPv4 address (without prefix) of an IPAM result.
///
/// # Errors
/// `IO_FAILURE` when the result has no IPv4 address.
pub fn first_ipv4(result: &Value) -> Result<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next())
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
        .ok_or_else(|| CniError::new(code::IO_FAILURE, "IPAM result has no IPv4 address", result.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_first_ipv4() {
        let r = serde_json::json!({"ips":[{"address":"fd00::2/64"},{"address":"10.9.0.2/24","gateway":"10.9.0.1"}]});
        assert_eq!(first_ipv4(&r).unwrap(), "10.9.0.2");
        assert!(first_ipv4(&serde_json::json!({"ips":[]})).is_err());
    }
}
