//! Request-smuggling and path-confusion techniques against the rules `GET /`,
//! `GET /public/.*` and `POST /api/items`: none may reach `/admin`. Shared by the
//! reference parser's tests and the kernel test (`dataplane/tests/http_kernel.rs`).
use super::request::{Reject, MAX_HEAD};

/// `GET target` with a Host header.
#[must_use]
pub fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: backend\r\n\r\n").into_bytes()
}

/// (technique, request bytes, the parser's refusal or `None` when it parses and no rule
/// matches).
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn bypass_corpus() -> Vec<(&'static str, Vec<u8>, Option<Reject>)> {
    let ct = |te: &str, cl: &str| {
        format!("POST /api/items HTTP/1.1\r\nHost: b\r\n{te}{cl}\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: b\r\n\r\n")
            .into_bytes()
    };
    let big_header = format!(
        "GET /public/x HTTP/1.1\r\nHost: b\r\nX: {}\r\n\r\n",
        "a".repeat(MAX_HEAD)
    );
    let big_line = format!("GET /public/{} HTTP/1.1\r\nHost: b\r\n\r\n", "a".repeat(MAX_HEAD));
    vec![
        ("plain", get("/admin"), None),
        ("upper case", get("/ADMIN"), None),
        ("escaped letter", get("/%61dmin"), None),
        ("escaped last letter", get("/adm%69n"), None),
        ("dot-dot", get("/public/../admin"), None),
        ("dot-dot above root", get("/public/../../../admin"), None),
        ("double slash", get("//admin"), None),
        ("dot segment", get("/./admin"), None),
        ("escaped dots", get("/public/%2e%2e/admin"), None),
        ("escaped dots upper", get("/public/%2E%2E/admin"), None),
        ("mixed escaped dots", get("/public/%2e./admin"), None),
        ("query looks public", get("/admin?x=/public/a"), None),
        ("trailing slash", get("/admin/"), None),
        (
            "escaped slash",
            get("/public%2F..%2Fadmin"),
            Some(Reject::AmbiguousPath),
        ),
        (
            "escaped slash lower",
            get("/public/..%2fadmin"),
            Some(Reject::AmbiguousPath),
        ),
        ("backslash", get("/public\\..\\admin"), Some(Reject::AmbiguousPath)),
        (
            "escaped backslash",
            get("/public/..%5Cadmin"),
            Some(Reject::AmbiguousPath),
        ),
        (
            "tomcat path parameter",
            get("/public/..;/admin"),
            Some(Reject::AmbiguousPath),
        ),
        ("NUL", get("/admin%00.css"), Some(Reject::AmbiguousPath)),
        ("bad escape", get("/public/%zz/../admin"), Some(Reject::AmbiguousPath)),
        ("fragment", get("/public/a#/../../admin"), Some(Reject::Malformed)),
        ("absolute-form", get("http://backend/admin"), None),
        ("absolute-form dot-dot", get("http://backend/public/../admin"), None),
        (
            "absolute-form userinfo",
            get("http://x@backend/admin"),
            Some(Reject::Malformed),
        ),
        (
            "tabs",
            b"GET\t/admin\tHTTP/1.1\r\nHost: b\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "two spaces",
            b"GET  /admin HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "extra token",
            b"GET /admin HTTP/1.1 x\r\nHost: b\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        ("HTTP/0.9", b"GET /admin\r\n\r\n".to_vec(), Some(Reject::Version)),
        (
            "HTTP/1.2",
            b"GET /admin HTTP/1.2\r\nHost: b\r\n\r\n".to_vec(),
            Some(Reject::Version),
        ),
        (
            "HTTP/2 prior knowledge",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Some(Reject::Http2),
        ),
        (
            "TLS ClientHello",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
            Some(Reject::Tls),
        ),
        (
            "CL.TE smuggling",
            ct("Content-Length: 44\r\n", "Transfer-Encoding: chunked\r\n"),
            Some(Reject::Framing),
        ),
        (
            "TE.CL smuggling",
            ct("Transfer-Encoding: chunked\r\n", "Content-Length: 3\r\n"),
            Some(Reject::Framing),
        ),
        (
            "TE obfuscated",
            ct("Transfer-Encoding: xchunked\r\n", ""),
            Some(Reject::Framing),
        ),
        (
            "TE list",
            ct("Transfer-Encoding: chunked, identity\r\n", ""),
            Some(Reject::Framing),
        ),
        (
            "TE twice",
            ct("Transfer-Encoding: chunked\r\n", "Transfer-Encoding: chunked\r\n"),
            Some(Reject::Framing),
        ),
        (
            "TE space before colon",
            ct("Transfer-Encoding : chunked\r\n", ""),
            Some(Reject::Malformed),
        ),
        (
            "two Content-Lengths",
            ct("Content-Length: 5\r\n", "Content-Length: 6\r\n"),
            Some(Reject::Framing),
        ),
        (
            "signed Content-Length",
            ct("Content-Length: +5\r\n", ""),
            Some(Reject::Framing),
        ),
        (
            "line folding",
            b"GET /admin HTTP/1.1\r\nHost: b\r\n x: y\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "bare LF",
            b"GET /admin HTTP/1.1\nHost: b\n\n".to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "lone CR in header",
            b"GET /public/x HTTP/1.1\r\nHost: b\r\nX: a\rGET /admin\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "NUL in header",
            b"GET /public/x HTTP/1.1\r\nHost: b\r\nX: a\x00\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        ("huge header block", big_header.into_bytes(), Some(Reject::TooLarge)),
        ("huge request line", big_line.into_bytes(), Some(Reject::TooLarge)),
        (
            "no Host",
            b"GET /admin HTTP/1.1\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "two Hosts",
            b"GET /public/x HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "non-ASCII path",
            "GET /\u{e4}dmin HTTP/1.1\r\nHost: b\r\n\r\n".as_bytes().to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "lower-case method",
            b"get /public/x HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(),
            None,
        ),
        (
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
        (
            "CONNECT",
            b"CONNECT backend:80 HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(),
            Some(Reject::Malformed),
        ),
    ]
}
