//! The CNI plugin's input handling: the network configuration on stdin and the CNI_*
//! environment, exactly as the runtime hands them to `moat`.
//!
//! Input layout: the first six lines are the values of `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_IFNAME`, `CNI_NETNS`, `CNI_ARGS` and `CNI_PATH` (a missing line leaves the variable
//! unset); everything after the sixth newline is stdin.
//!
//! Besides "no panic", it checks what the parsers promise: an accepted configuration has a
//! supported version, type `moat` and an MTU in range; an accepted environment has a valid
//! interface name and container id; `sniff_version` always answers a supported version; the
//! host-side veth name is a valid interface name. `moat_cni::run` is called only when it
//! cannot reach a side effect (VERSION, or an input the parsers reject), and must then
//! return exactly the parsers' error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_cni::config::{
    check_ifname, parse_command, parse_env, parse_netconf, sniff_version, valid_container_id, Command,
    SUPPORTED_VERSIONS,
};
use moat_cni::{naming, result};

const VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_IFNAME",
    "CNI_NETNS",
    "CNI_ARGS",
    "CNI_PATH",
];

fuzz_target!(|data: &[u8]| {
    let mut values: Vec<Option<String>> = vec![None; VARS.len()];
    let mut rest = data;
    for v in &mut values {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        *v = Some(String::from_utf8_lossy(&rest[..nl]).into_owned());
        rest = &rest[nl + 1..];
    }
    let stdin = rest;
    let var = |k: &str| VARS.iter().position(|&n| n == k).and_then(|i| values[i].clone());

    // Best-effort version: always a supported one.
    let sniffed = sniff_version(stdin);
    assert!(
        SUPPORTED_VERSIONS.contains(&sniffed.as_str()),
        "sniff_version answered unsupported {sniffed:?}"
    );

    let conf = parse_netconf(stdin);
    if let Ok(c) = &conf {
        assert!(SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()), "accepted {c:?}");
        assert_eq!(c.plugin_type, "moat", "accepted {c:?}");
        assert!(c.mtu.is_none_or(|m| (576..=65535).contains(&m)), "accepted {c:?}");
        assert!(c.ipam.is_none() || c.ipam_type().is_some_and(|t| !t.is_empty()));
        let _ = c.socket();
        assert_eq!(sniffed, c.cni_version, "sniff_version disagrees with parse_netconf");
        if let Some(prev) = &c.prev_result {
            let ifname = values[2].as_deref().unwrap_or("eth0");
            let netns = values[3].as_deref().unwrap_or("");
            let _ = result::prev_address(prev, ifname, netns);
        }
    }

    for cmd in [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Status,
        Command::Gc,
        Command::Version,
    ] {
        if let Ok(env) = parse_env(cmd, var) {
            if matches!(cmd, Command::Add | Command::Del | Command::Check) {
                assert!(check_ifname(&env.ifname).is_ok(), "accepted ifname {:?}", env.ifname);
                assert!(
                    valid_container_id(&env.container_id),
                    "accepted container id {:?}",
                    env.container_id
                );
                let host = naming::host_ifname(&env.container_id, &env.ifname);
                assert!(
                    check_ifname(&host).is_ok(),
                    "host veth name {host:?} is not a valid ifname"
                );
                let (pod_mac, host_mac) = naming::macs(&env.container_id, &env.ifname);
                assert_ne!(pod_mac, host_mac);
            }
            if matches!(cmd, Command::Add | Command::Check) {
                assert!(!env.netns.is_empty());
            }
        }
    }
    for v in values.iter().flatten() {
        let _ = check_ifname(v);
        let _ = valid_container_id(v);
    }

    // `run` only where it cannot reach the agent, a netns or a delegated plugin.
    let expected = match parse_command(var) {
        Err(e) => Some(Err(e)),
        Ok(Command::Version) => None,
        Ok(cmd) => match (&conf, parse_env(cmd, var)) {
            (Err(e), _) => Some(Err(e.clone())),
            (Ok(_), Err(e)) => Some(Err(e)),
            (Ok(_), Ok(_)) => return, // would touch the network or the filesystem
        },
    };
    let got = moat_cni::run(var, stdin);
    match expected {
        Some(want) => assert_eq!(got.map(|_| ()), want, "run disagrees with the parsers"),
        None => {
            let v = got.expect("VERSION never fails").expect("VERSION prints a result");
            assert_eq!(v["cniVersion"], sniffed.as_str());
            assert_eq!(v["supportedVersions"], serde_json::json!(SUPPORTED_VERSIONS));
        }
    }
});
