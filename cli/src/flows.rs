//! `moatctl observe` output: one compact line per flow (like `hubble observe`) or JSON.
use moat_api::v1::{Flow, FlowPeer};
use serde_json::json;

/// `HH:MM:SS.mmm` (UTC) of a unix timestamp in nanoseconds.
#[must_use]
pub fn clock(unix_nanos: i64) -> String {
    let ms = unix_nanos / 1_000_000;
    let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}.{ms:03}", day / 3600, day / 60 % 60, day % 60)
}

fn peer(p: Option<&FlowPeer>) -> String {
    let Some(p) = p else { return "?".into() };
    let who = if p.pod.is_empty() {
        p.ip.clone()
    } else {
        format!("{}/{}", p.namespace, p.pod)
    };
    let port = if p.port == 0 {
        String::new()
    } else {
        format!(":{}", p.port)
    };
    let id = if p.identity_name.starts_with("reserved:") || p.identity_name.starts_with("cidr:") {
        format!("{} {}", p.identity, p.identity_name)
    } else {
        p.identity.to_string()
    };
    format!("{who}{port} (ID:{id})")
}

/// `02:03:04.123 x/a:43210 (ID:256) -> y/b:80 (ID:257) TCP SYN DROPPED policy_denied, ingress: y/deny-all isolates this pod for ingress`
#[must_use]
pub fn line(f: &Flow) -> String {
    let mut s = format!(
        "{} {} -> {} {}",
        clock(f.time_unix_nanos),
        peer(f.source.as_ref()),
        peer(f.destination.as_ref()),
        f.protocol
    );
    if !f.tcp_flags.is_empty() {
        s += &format!(" {}", f.tcp_flags);
    }
    if !f.http_method.is_empty() {
        s += &format!(" {} {}", f.http_method, f.http_path);
        if !f.http_host.is_empty() {
            s += &format!(" (host {})", f.http_host);
        }
    }
    s += &format!(" {}", f.verdict);
    let mut why = Vec::new();
    if !f.http_rule.is_empty() {
        why.push(format!("by {}", f.http_rule));
    }
    if !f.drop_reason_name.is_empty() {
        why.push(f.drop_reason_name.clone());
    }
    if !f.direction.is_empty() {
        why.push(f.direction.clone());
    }
    if !f.policy.is_empty() {
        why.push(format!("by {}", f.policy));
    }
    if f.reevaluated {
        why.push("established flow re-checked after a policy change".into());
    }
    if !f.service_address.is_empty() {
        let name = if f.service.is_empty() {
            String::new()
        } else {
            format!("{} ", f.service)
        };
        why.push(format!("service {name}{} → backend", f.service_address));
    }
    if !why.is_empty() {
        s += &format!(" ({})", why.join(", "));
    }
    s
}

fn peer_json(p: Option<&FlowPeer>) -> serde_json::Value {
    p.map_or(serde_json::Value::Null, |p| {
        json!({"ip": p.ip, "port": p.port, "identity": p.identity, "identityName": p.identity_name,
               "namespace": p.namespace, "pod": p.pod})
    })
}

#[must_use]
pub fn to_json(f: &Flow) -> serde_json::Value {
    json!({
        "time": f.time_unix_nanos, "verdict": f.verdict, "dropReason": f.drop_reason,
        "dropReasonName": f.drop_reason_name, "protocol": f.protocol,
        "source": peer_json(f.source.as_ref()), "destination": peer_json(f.destination.as_ref()),
        "tcpFlags": f.tcp_flags, "hook": f.hook, "direction": f.direction, "cookie": f.cookie,
        "policy": f.policy, "reevaluated": f.reevaluated, "length": f.length,
        "serviceAddress": f.service_address, "service": f.service,
        "http": if f.http_method.is_empty() { serde_json::Value::Null } else {
            json!({"method": f.http_method, "path": f.http_path, "host": f.http_host, "rule": f.http_rule})
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_line_names_pods_verdict_and_policy() {
        let f = Flow {
            time_unix_nanos: 3_723_004_000_000, // 01:02:03.004
            verdict: "DROPPED".into(),
            drop_reason: 133,
            drop_reason_name: "policy_denied".into(),
            protocol: "TCP".into(),
            source: Some(FlowPeer {
                ip: "10.0.0.1".into(),
                port: 43210,
                identity: 256,
                identity_name: "app=a".into(),
                namespace: "x".into(),
                pod: "a".into(),
            }),
            destination: Some(FlowPeer {
                ip: "1.2.3.4".into(),
                port: 80,
                identity: 2,
                identity_name: "reserved:world".into(),
                ..FlowPeer::default()
            }),
            tcp_flags: "SYN".into(),
            direction: "egress".into(),
            policy: "x/deny isolates this pod for egress".into(),
            ..Flow::default()
        };
        assert_eq!(
            line(&f),
            "01:02:03.004 x/a:43210 (ID:256) -> 1.2.3.4:80 (ID:2 reserved:world) TCP SYN DROPPED \
             (policy_denied, egress, by x/deny isolates this pod for egress)"
        );
        assert_eq!(to_json(&f)["destination"]["identityName"], "reserved:world");
    }
}
