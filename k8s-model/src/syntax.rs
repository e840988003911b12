//! Syntax checks the API server applies to strings: label keys and values, IANA service
//! names (named ports) and CIDRs. Each check returns the message Kubernetes would print.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A label value or the name part of a key: ≤63 chars, alphanumeric at both ends,
/// `-`, `_`, `.` or alphanumerics inside. `what` names it in the message.
fn check_name(s: &str, what: &str, allow_empty: bool) -> Result<(), String> {
    if s.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(format!("{what} must not be empty"))
        };
    }
    if s.len() > 63 {
        return Err(format!("{what} {s:?} must be no more than 63 characters"));
    }
    let ok_ends = s.starts_with(is_alnum) && s.ends_with(is_alnum);
    let ok_inner = s.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'));
    if !ok_ends || !ok_inner {
        return Err(format!(
            "{what} {s:?} must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A DNS-1123 label (namespace names): ≤63 lowercase alphanumerics or `-`, alphanumeric ends.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must be a DNS label: at most 63 lowercase alphanumeric characters or '-', \
             starting and ending with an alphanumeric character"
        ))
    }
}

/// An object name (DNS-1123 subdomain).
pub fn check_object_name(s: &str) -> Result<(), String> {
    check_dns_subdomain(s).map_err(|_| {
        format!(
            "{s:?} must be a DNS subdomain: lowercase alphanumeric characters, '-' or '.', \
             starting and ending with an alphanumeric character, at most 253 characters"
        )
    })
}

/// A DNS-1123 subdomain (`example.com`): ≤253 chars, lowercase dot-separated labels.
fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if s.len() > 253 || !s.split('.').all(label_ok) {
        return Err(format!(
            "prefix {s:?} must be a DNS subdomain: lowercase alphanumeric characters, '-' or '.', \
             starting and ending with an alphanumeric character, at most 253 characters"
        ));
    }
    Ok(())
}

/// A label key: optional DNS-subdomain prefix and `/`, then a name (qualified name).
pub fn check_label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err(format!("label key {key:?}: prefix part must not be empty"));
            }
            check_dns_subdomain(prefix).map_err(|e| format!("label key {key:?}: {e}"))?;
            name
        }
        None => key,
    };
    check_name(name, &format!("label key {key:?}: name part"), false)
}

/// A label value: empty, or a name as in [`check_label_key`].
pub fn check_label_value(value: &str) -> Result<(), String> {
    check_name(value, "label value", true)
}

/// An IANA service name (a named port): ≤15 chars, lowercase alphanumerics and `-`, at
/// least one letter, no leading, trailing or doubled `-`.
pub fn check_port_name(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("port name {s:?} {why}"));
    if s.is_empty() || s.len() > 15 {
        return bad("must be 1 to 15 characters");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("must contain only lowercase alphanumeric characters and '-'");
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return bad("must contain at least one letter");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return bad("must not begin or end with '-' or contain '--'");
    }
    Ok(())
}

/// Parses `addr/len` (IPv4 or IPv6) strictly (a decimal length, no shorthand) and clears
/// the host bits, as Go's `net.ParseCIDR` returns the network.
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let bad = || format!("{s:?} is not a valid CIDR (address/prefix-length)");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    if len.is_empty() || !len.chars().all(|c| c.is_ascii_digit()) || len.len() > 3 {
        return Err(bad());
    }
    let len: u8 = len.parse().map_err(|_| bad())?;
    match addr.parse::<IpAddr>().map_err(|_| bad())? {
        IpAddr::V4(a) if len <= 32 => Ipv4Network::new(mask_v4(a, len), len)
            .map(IpNetwork::V4)
            .map_err(|_| bad()),
        IpAddr::V6(a) if len <= 128 => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            Ipv6Network::new(Ipv6Addr::from(bits & m), len)
                .map(IpNetwork::V6)
                .map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// `a` with the bits past `len` cleared.
#[must_use]
pub fn mask_v4(a: Ipv4Addr, len: u8) -> Ipv4Addr {
    let m = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    Ipv4Addr::from(u32::from(a) & m)
}

/// Whether prefix `inner` (an address and its length) lies inside `outer` (equal counts).
#[must_use]
pub fn v4_contains(outer: Ipv4Network, inner: (Ipv4Addr, u8)) -> bool {
    inner.1 >= outer.prefix() && outer.contains(inner.0)
}

/// Whether `inner` lies strictly inside `outer` (same family, longer prefix).
#[must_use]
pub fn strictly_contains(outer: IpNetwork, inner: IpNetwork) -> bool {
    match (outer, inner) {
        (IpNetwork::V4(o), IpNetwork::V4(i)) => i.prefix() > o.prefix() && i.is_subnet_of(o),
        (IpNetwork::V6(o), IpNetwork::V6(i)) => i.prefix() > o.prefix() && i.is_subnet_of(o),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("kubernetes.io/metadata.name").is_ok());
        assert!(check_label_key("a_b.c-d").is_ok());
        assert!(check_label_key("").is_err());
        assert!(check_label_key("/app").is_err());
        assert!(check_label_key("Example.com/app").is_err());
        assert!(check_label_key("example.com/").is_err());
        assert!(check_label_key("-app").is_err());
        assert!(check_label_key("a/b/c").is_err());
        assert!(check_label_key(&"a".repeat(64)).is_err());
        assert!(check_label_key(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn dns_names() {
        assert!(check_dns_label("shop-1").is_ok());
        assert!(check_dns_label("Shop").is_err());
        assert!(check_dns_label("a.b").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_object_name("allow-web.v2").is_ok());
        assert!(check_object_name("allow_web").is_err());
        assert!(check_object_name("-x").is_err());
    }

    #[test]
    fn label_values() {
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_x-y").is_ok());
        assert!(check_label_value("x-").is_err());
        assert!(check_label_value("a b").is_err());
        assert!(check_label_value(&"v".repeat(64)).is_err());
    }

    #[test]
    fn port_names() {
        assert!(check_port_name("http").is_ok());
        assert!(check_port_name("http-alt2").is_ok());
        assert!(check_port_name("80").is_err());
        assert!(check_port_name("HTTP").is_err());
        assert!(check_port_name("-http").is_err());
        assert!(check_port_name("ht--tp").is_err());
        assert!(check_port_name("abcdefghijklmnop").is_err());
    }

    #[test]
    fn cidrs() {
        let v4 = |s: &str| parse_cidr(s).map(|n| n.to_string());
        assert_eq!(v4("10.0.0.0/8").as_deref(), Ok("10.0.0.0/8"));
        assert_eq!(v4("10.1.2.3/16").as_deref(), Ok("10.1.0.0/16"));
        assert_eq!(v4("0.0.0.0/0").as_deref(), Ok("0.0.0.0/0"));
        assert!(
            matches!(parse_cidr("fd00::1/8"), Ok(IpNetwork::V6(n)) if n.prefix() == 8 && n.ip() == "fd00::".parse::<Ipv6Addr>().unwrap())
        );
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
        assert!(parse_cidr("10.0.0.0/+8").is_err());
    }

    #[test]
    fn containment() {
        let n = |s: &str| s.parse::<Ipv4Network>().unwrap();
        let p = |a: [u8; 4], l| (Ipv4Addr::from(a), l);
        assert!(v4_contains(n("10.0.0.0/8"), p([10, 1, 0, 0], 16)));
        assert!(v4_contains(n("10.0.0.0/8"), p([10, 0, 0, 0], 8)));
        assert!(!v4_contains(n("10.1.0.0/16"), p([10, 0, 0, 0], 8)));
        assert!(!v4_contains(n("10.0.0.0/8"), p([11, 0, 0, 1], 32)));
        assert!(v4_contains(n("0.0.0.0/0"), p([192, 168, 1, 1], 32)));
        let c = |s: &str| parse_cidr(s).unwrap();
        assert!(strictly_contains(c("10.0.0.0/8"), c("10.1.0.0/16")));
        assert!(!strictly_contains(c("10.0.0.0/8"), c("10.0.0.0/8")));
        assert!(strictly_contains(c("fd00::/8"), c("fd00:1::/32")));
        assert!(!strictly_contains(c("fd00::/8"), c("10.0.0.0/16")));
    }
}
