//! Parsing the runtime's input: the network configuration on stdin and the CNI_*
//! environment. Pure functions, unit-tested without root.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{code, CniError, Result};

pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// What `moat` answers for VERSION and uses when the input names none.
pub const LATEST_VERSION: &str = "1.1.0";
pub const DEFAULT_SOCKET: &str = "/var/run/moat/agent.sock";

/// The plugin's network configuration (one element of a conflist's `plugins`, with
/// `cniVersion` and `name` filled in by the runtime).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Agent socket (default /var/run/moat/agent.sock).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// MTU of the pod interface (default: the kernel's veth default).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// A delegated IPAM plugin (e.g. `host-local`); absent means the agent leases addresses.
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments the runtime still uses.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    /// The delegated IPAM plugin's type, if one is configured.
    #[must_use]
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str()
    }
}

/// Best-effort `cniVersion` of raw input, for error replies when the input is bad.
#[must_use]
pub fn sniff_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

/// Parses and validates the network configuration.
///
/// # Errors
/// `DECODE_FAILURE` for input that is not JSON, `INVALID_CONFIG` naming the field for
/// missing or wrong fields, `INCOMPATIBLE_VERSION` for an unsupported `cniVersion`.
pub fn parse_netconf(stdin: &[u8]) -> Result<NetConf> {
    let raw: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "failed to decode network configuration",
            e.to_string(),
        )
    })?;
    let obj = raw.as_object().ok_or_else(|| {
        CniError::new(
            code::DECODE_FAILURE,
            "failed to decode network configuration",
            "expected a JSON object",
        )
    })?;
    for field in ["cniVersion", "name", "type"] {
        match obj.get(field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => {}
            Some(_) => return Err(invalid(field, "must be a non-empty string")),
            None => return Err(invalid(field, "is required")),
        }
    }
    // Check the optional fields' JSON types first, so the error names the field.
    type IsKind = fn(&serde_json::Value) -> bool;
    let kinds: [(&str, IsKind, &str); 5] = [
        (
            "socket",
            serde_json::Value::is_string,
            "a string (path of the agent socket)",
        ),
        ("mtu", serde_json::Value::is_u64, "a positive integer"),
        ("ipam", serde_json::Value::is_object, "an object"),
        ("prevResult", serde_json::Value::is_object, "an object"),
        ("cni.dev/valid-attachments", serde_json::Value::is_array, "an array"),
    ];
    for (field, ok, want) in kinds {
        if let Some(v) = obj.get(field) {
            if !v.is_null() && !ok(v) {
                return Err(invalid(field, &format!("must be {want}, got {v}")));
            }
        }
    }
    let conf: NetConf = serde_json::from_value(raw.clone())
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "invalid network configuration", e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "cniVersion {:?} is not supported; moat supports {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if conf.plugin_type != "moat" {
        return Err(invalid(
            "type",
            &format!("is {:?}, expected \"moat\"", conf.plugin_type),
        ));
    }
    if let Some(mtu) = conf.mtu {
        if !(576..=65535).contains(&mtu) {
            return Err(invalid("mtu", &format!("{mtu} is outside 576..=65535")));
        }
    }
    if let Some(ipam) = &conf.ipam {
        if ipam.get("type").and_then(|t| t.as_str()).is_none_or(str::is_empty) {
            return Err(invalid("ipam.type", "is required when ipam is set"));
        }
    }
    Ok(conf)
}

fn invalid(field: &str, what: &str) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        "invalid network configuration",
        format!("field {field} {what}"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// The CNI_* variables the runtime sets.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
    pub path: Vec<PathBuf>,
}

impl Env {
    #[must_use]
    pub fn arg(&self, key: &str) -> &str {
        self.args.get(key).map_or("", String::as_str)
    }
}

/// Reads `CNI_COMMAND`.
///
/// # Errors
/// `INVALID_ENV` when it is missing or unknown.
pub fn parse_command(var: impl Fn(&str) -> Option<String>) -> Result<Command> {
    let cmd = var("CNI_COMMAND").ok_or_else(|| bad_env("CNI_COMMAND", "is not set"))?;
    Ok(match cmd.as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "STATUS" => Command::Status,
        "GC" => Command::Gc,
        "VERSION" => Command::Version,
        other => return Err(bad_env("CNI_COMMAND", &format!("{other:?} is not a CNI command"))),
    })
}

/// Reads the variables `cmd` needs (spec: ADD/CHECK need all; DEL may lack CNI_NETNS;
/// STATUS/GC/VERSION need none of the per-container ones).
///
pub use moat_api::attachment::{check_ifname, valid_container_id};

/// # Errors
/// `INVALID_ENV` naming the variable that is missing or malformed.
pub fn parse_env(cmd: Command, var: impl Fn(&str) -> Option<String>) -> Result<Env> {
    let get = |k: &str| var(k).filter(|v| !v.is_empty());
    let per_container = matches!(cmd, Command::Add | Command::Del | Command::Check);
    let mut env = Env::default();
    if per_container {
        env.container_id = get("CNI_CONTAINERID").ok_or_else(|| bad_env("CNI_CONTAINERID", "is not set"))?;
        env.ifname = get("CNI_IFNAME").ok_or_else(|| bad_env("CNI_IFNAME", "is not set"))?;
        if let Err(why) = check_ifname(&env.ifname) {
            return Err(bad_env(
                "CNI_IFNAME",
                &format!("{:?} is not a valid interface name: {why}", env.ifname),
            ));
        }
        if !valid_container_id(&env.container_id) {
            return Err(bad_env(
                "CNI_CONTAINERID",
                &format!(
                    "{:?} must start with a letter or digit, followed by [A-Za-z0-9_.-]",
                    env.container_id
                ),
            ));
        }
    }
    if matches!(cmd, Command::Add | Command::Check) {
        env.netns = get("CNI_NETNS").ok_or_else(|| bad_env("CNI_NETNS", "is not set"))?;
    } else {
        env.netns = get("CNI_NETNS").unwrap_or_default();
    }
    if let Some(args) = get("CNI_ARGS") {
        for kv in args.split(';').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad_env("CNI_ARGS", &format!("{kv:?} is not KEY=VALUE")))?;
            env.args.insert(k.to_string(), v.to_string());
        }
    }
    env.path = get("CNI_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    Ok(env)
}

fn bad_env(var: &str, what: &str) -> CniError {
    CniError::new(code::INVALID_ENV, "invalid environment", format!("{var} {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn parses_a_full_config() {
        let c = parse_netconf(
            br#"{"cniVersion":"1.1.0","name":"moat","type":"moat","socket":"/x.sock","mtu":1400,
            "ipam":{"type":"host-local","ranges":[[{"subnet":"10.9.0.0/24"}]]}}"#,
        )
        .unwrap();
        assert_eq!(c.socket(), PathBuf::from("/x.sock"));
        assert_eq!(c.ipam_type(), Some("host-local"));
        assert_eq!(c.mtu, Some(1400));
    }

    #[test]
    fn errors_name_the_field_and_use_spec_codes() {
        let cases: &[(&[u8], u32, &str)] = &[
            (b"not json", code::DECODE_FAILURE, ""),
            (b"[1]", code::DECODE_FAILURE, "object"),
            (br#"{"name":"n","type":"moat"}"#, code::INVALID_CONFIG, "cniVersion"),
            (br#"{"cniVersion":"1.0.0","type":"moat"}"#, code::INVALID_CONFIG, "name"),
            (br#"{"cniVersion":"1.0.0","name":"n"}"#, code::INVALID_CONFIG, "type"),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
                code::INVALID_CONFIG,
                "type",
            ),
            (
                br#"{"cniVersion":"0.3.1","name":"n","type":"moat"}"#,
                code::INCOMPATIBLE_VERSION,
                "0.3.1",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"moat","mtu":"big"}"#,
                code::INVALID_CONFIG,
                "mtu",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"moat","mtu":100}"#,
                code::INVALID_CONFIG,
                "mtu",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"moat","ipam":{}}"#,
                code::INVALID_CONFIG,
                "ipam.type",
            ),
        ];
        for (input, want, field) in cases {
            let e = parse_netconf(input).unwrap_err();
            assert_eq!(e.code, *want, "{}: {e}", String::from_utf8_lossy(input));
            assert!(e.to_string().contains(field), "{e} does not name {field}");
        }
    }

    #[test]
    fn env_rules_per_command() {
        let full = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"),
            ("CNI_PATH", "/a:/b"),
        ];
        let e = parse_env(Command::Add, vars(&full)).unwrap();
        assert_eq!(e.arg("K8S_POD_NAMESPACE"), "ns");
        assert_eq!(e.arg("K8S_POD_UID"), "");
        assert_eq!(e.path.len(), 2);
        let e = parse_env(Command::Add, vars(&full[1..])).unwrap_err();
        assert_eq!(
            (e.code, e.details.contains("CNI_CONTAINERID")),
            (code::INVALID_ENV, true)
        );
        let no_netns = [full[0], full[2]];
        assert!(parse_env(Command::Del, vars(&no_netns)).is_ok(), "DEL needs no netns");
        assert!(parse_env(Command::Check, vars(&no_netns))
            .unwrap_err()
            .details
            .contains("CNI_NETNS"));
        assert!(parse_env(Command::Gc, vars(&[])).is_ok());
        let bad_args = [full[0], full[1], full[2], ("CNI_ARGS", "novalue")];
        assert!(parse_env(Command::Add, vars(&bad_args))
            .unwrap_err()
            .details
            .contains("CNI_ARGS"));
        assert_eq!(
            parse_command(vars(&[("CNI_COMMAND", "NOPE")])).unwrap_err().code,
            code::INVALID_ENV
        );
        assert_eq!(parse_command(vars(&[])).unwrap_err().code, code::INVALID_ENV);
    }

    #[test]
    fn gc_attachments_parse() {
        let c = parse_netconf(
            br#"{"cniVersion":"1.1.0","name":"n","type":"moat",
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![ValidAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }
}
