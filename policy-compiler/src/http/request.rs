//! HTTP/1.x request heads: framing and normalisation, failing closed.
//!
//! This is the reference the kernel's HTTP parser is held to: it decides where a request
//! head ends, how long its body is (so the next request on a keep-alive connection is
//! found exactly), and the normalised method, path and host that rules match. Anything it
//! cannot frame with certainty is a [`Reject`] with its own reason, never a pass.
use std::fmt;

/// The largest request head (request line + headers) Moat inspects.
pub const MAX_HEAD: usize = 4096;
/// The longest method.
pub const MAX_METHOD: usize = 16;
/// The longest request target, as sent.
pub const MAX_TARGET: usize = 1024;
/// The longest host name (without port).
pub const MAX_HOST: usize = 255;

/// Why a request is refused before any rule is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Request line or header block larger than [`MAX_HEAD`].
    TooLarge,
    /// Not HTTP/1.x syntax (bad request line, header, whitespace, line folding…).
    Malformed,
    /// The HTTP/2 connection preface (`PRI * HTTP/2.0`).
    Http2,
    /// A TLS record (ClientHello) on an HTTP-rule port.
    Tls,
    /// HTTP/0.9 (no version) or a version other than 1.0 and 1.1.
    Version,
    /// Body length ambiguous: Content-Length and Transfer-Encoding together, several
    /// different Content-Lengths, or a transfer coding other than a final `chunked`.
    Framing,
    /// A path whose meaning depends on the server (`%2F`, `%5C`, `%00`, `\`, bad escapes).
    AmbiguousPath,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "request head larger than the inspectable size",
            Self::Malformed => "malformed HTTP/1 request",
            Self::Http2 => "HTTP/2 preface on an HTTP/1 rule port",
            Self::Tls => "TLS on an HTTP rule port",
            Self::Version => "HTTP version other than 1.0 or 1.1",
            Self::Framing => "ambiguous body length (Content-Length/Transfer-Encoding)",
            Self::AmbiguousPath => "path with encoded separators or invalid escapes",
        })
    }
}

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A parsed, normalised request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head including the final CRLF CRLF.
    pub len: usize,
    /// As sent (methods are case-sensitive).
    pub method: String,
    /// Normalised path, with the query (if any) after `?` unchanged.
    pub path: String,
    /// Lower case, without port; from an absolute-form target, else the Host header.
    pub host: String,
    /// (lower-case name, value without surrounding whitespace), in order.
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// Parses the head at the start of `buf`: `Ok(None)` when more bytes are needed.
///
/// # Errors
/// [`Reject`] for anything that cannot be framed with certainty.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Reject> {
    if buf.first() == Some(&0x16) {
        return Err(Reject::Tls);
    }
    if buf.starts_with(b"PRI * HTTP/2") {
        return Err(Reject::Http2);
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        // A bare LF line ending would never produce CRLF CRLF: refuse it early.
        if buf.contains(&b'\n') && !crlf_only(buf) {
            return Err(Reject::Malformed);
        }
        return if buf.len() >= MAX_HEAD {
            Err(Reject::TooLarge)
        } else {
            Ok(None)
        };
    };
    let len = end + 4;
    if len > MAX_HEAD {
        return Err(Reject::TooLarge);
    }
    let head = &buf[..end];
    // The terminator counts: "\r\r\n\r\n" ends in a bare CR (found by the kernel
    // parser's differential test).
    if !crlf_only(&buf[..len]) {
        return Err(Reject::Malformed);
    }
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(Reject::Malformed)?;
    let (method, target, version) = request_line_parts(request_line)?;
    let mut headers = Vec::new();
    for line in lines {
        headers.push(header(line)?);
    }
    let body = framing(&headers)?;
    let hosts: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "host")
        .map(|(_, v)| v.as_str())
        .collect();
    if hosts.len() > 1 || (version == "HTTP/1.1" && hosts.is_empty()) {
        return Err(Reject::Malformed);
    }
    let (path, uri_host) = target_parts(target)?;
    // The Host header must be valid even where an absolute-form target names the host.
    let header_host = hosts.first().map(|h| host_name(h)).transpose()?.unwrap_or_default();
    let host = uri_host.unwrap_or(header_host);
    Ok(Some(Head {
        len,
        method: method.to_string(),
        path,
        host,
        headers,
        body,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Every LF is preceded by CR, and no CR stands alone.
fn crlf_only(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\n' => i > 0 && b[i - 1] == b'\r',
        b'\r' => b.get(i + 1).is_none_or(|&n| n == b'\n'),
        _ => true,
    })
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn request_line_parts(line: &[u8]) -> Result<(&str, &str, &str), Reject> {
    let line = std::str::from_utf8(line).map_err(|_| Reject::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(Reject::Malformed);
    };
    let Some(version) = parts.next() else {
        // "GET /" alone is HTTP/0.9.
        return Err(if method.bytes().all(is_tchar) {
            Reject::Version
        } else {
            Reject::Malformed
        });
    };
    if parts.next().is_some() || method.is_empty() || method.len() > MAX_METHOD || !method.bytes().all(is_tchar) {
        return Err(Reject::Malformed);
    }
    if target.len() > MAX_TARGET {
        return Err(Reject::TooLarge);
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Reject::Malformed);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(if version.starts_with("HTTP/") {
            Reject::Version
        } else {
            Reject::Malformed
        });
    }
    Ok((method, target, version))
}

fn header(line: &[u8]) -> Result<(String, String), Reject> {
    // Obsolete line folding and whitespace before the colon are refused (RFC 9112 5).
    let colon = line.iter().position(|&b| b == b':').ok_or(Reject::Malformed)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(Reject::Malformed);
    }
    // Bytes >= 0x80 are obs-text, allowed in values; controls other than HT are not.
    if value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(Reject::Malformed);
    }
    let value = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .map_or(&value[..0], |start| {
            let end = value.iter().rposition(|&b| b != b' ' && b != b'\t').unwrap_or(start);
            &value[start..=end]
        });
    Ok((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

fn framing(headers: &[(String, String)]) -> Result<Body, Reject> {
    let te: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    // A list ("5, 5") is refused like any other non-digit value.
    let cl: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    if !te.is_empty() {
        // Only "chunked" alone is framed with certainty; with a Content-Length it is the
        // CL.TE / TE.CL smuggling shape.
        if !cl.is_empty() || te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") {
            return Err(Reject::Framing);
        }
        return Ok(Body::Chunked);
    }
    let Some(first) = cl.first() else {
        return Ok(Body::None);
    };
    if cl.iter().any(|v| v != first) {
        return Err(Reject::Framing);
    }
    if first.is_empty() || first.len() > 15 || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::Framing);
    }
    let n: u64 = first.parse().map_err(|_| Reject::Framing)?;
    Ok(if n == 0 { Body::None } else { Body::Length(n) })
}

/// `host[:port]` or `[v6]:port` → lower-case host. A name is letters, digits, `-._`
/// (plus `:` inside brackets); a port is digits; anything else is refused.
fn host_name(h: &str) -> Result<String, Reject> {
    let (host, port) = if h.starts_with('[') {
        let close = h.find(']').ok_or(Reject::Malformed)?;
        let (host, rest) = h.split_at(close + 1);
        if !host[1..close]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(Reject::Malformed);
        }
        (host, rest)
    } else {
        let end = h.find(':').unwrap_or(h.len());
        let (host, rest) = h.split_at(end);
        if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(Reject::Malformed);
        }
        (host, rest)
    };
    if !port.is_empty() && (!port.starts_with(':') || !port[1..].bytes().all(|b| b.is_ascii_digit())) {
        return Err(Reject::Malformed);
    }
    if (host.is_empty() && !h.is_empty()) || host.len() > MAX_HOST {
        return Err(Reject::Malformed);
    }
    Ok(host.to_ascii_lowercase())
}

/// Origin-form (`/p?q`) or absolute-form (`http://host/p?q`) → (normalised path with query,
/// host from the URI). `*` (OPTIONS) and authority-form (CONNECT) have no path: refused.
fn target_parts(target: &str) -> Result<(String, Option<String>), Reject> {
    let (path_query, host) = if target.starts_with('/') {
        (target, None)
    } else {
        let lower = target.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(Reject::Malformed);
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') || authority.is_empty() {
            return Err(Reject::Malformed);
        }
        (path, Some(host_name(authority)?))
    };
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    if path_query.contains('#') {
        return Err(Reject::Malformed);
    }
    let mut out = normalize_path(path)?;
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok((out, host))
}

/// RFC 3986 normalisation: unreserved characters percent-decoded, other escapes upper
/// case, `//` collapsed, `.` and `..` segments removed (never above the root).
///
/// # Errors
/// `AmbiguousPath` for `%2F`, `%5C`, `%00`, a backslash, `;`, or an invalid escape: servers
/// disagree on what they mean, so no rule can be matched against them with certainty.
pub fn normalize_path(path: &str) -> Result<String, Reject> {
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
                else {
                    return Err(Reject::AmbiguousPath);
                };
                let c = u8::try_from(h * 16 + l).unwrap_or(0);
                if c == b'/' || c == b'\\' || c == 0 {
                    return Err(Reject::AmbiguousPath);
                }
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    decoded.push(c as char);
                } else {
                    decoded.push_str(&format!("%{c:02X}"));
                }
                i += 3;
            }
            // `\` and `;` (Tomcat's `..;/`) mean different things to different servers.
            b'\\' | b';' => return Err(Reject::AmbiguousPath),
            c => {
                decoded.push(c as char);
                i += 1;
            }
        }
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::from("/");
    out.push_str(&segments.join("/"));
    if trailing && !segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}
