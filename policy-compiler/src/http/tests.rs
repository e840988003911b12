//! Framing, normalisation and rule matching, with a bypass corpus: every technique is
//! refused or matched correctly; none reaches `/admin` under rules that allow only `GET /`,
//! `GET /public/.*` and `POST /api/items`.
use super::request::{normalize_path, parse_head, Body, Reject, MAX_HEAD};
use super::rules::{first_match, CompiledRule, MAX_STATES};
use crate::k8s::HttpRule;

fn rule(method: &str, path: &str) -> HttpRule {
    HttpRule {
        method: Some(method.into()),
        path: Some(path.into()),
        ..HttpRule::default()
    }
}

fn rules() -> Vec<CompiledRule> {
    [rule("GET", "/"), rule("GET", "/public/.*"), rule("POST", "/api/items")]
        .iter()
        .enumerate()
        .map(|(i, r)| CompiledRule::compile(r, &format!("http[{i}]")).unwrap())
        .collect()
}

/// The verdict for one request: `Ok(rule index)` allowed, `Err(None)` parsed but no rule
/// matched, `Err(Some(reason))` refused by the parser.
fn verdict(req: &[u8]) -> Result<usize, Option<Reject>> {
    match parse_head(req) {
        Ok(Some(head)) => first_match(&rules(), &head).ok_or(None),
        Ok(None) => panic!("incomplete: {:?}", String::from_utf8_lossy(req)),
        Err(r) => Err(Some(r)),
    }
}

use super::corpus::get;

#[test]
fn allowed_requests_match_their_rule() {
    assert_eq!(verdict(&get("/")), Ok(0));
    assert_eq!(verdict(&get("/public/a.css")), Ok(1));
    assert_eq!(verdict(&get("/public/./a.css")), Ok(1), "normalised, then matched");
    assert_eq!(verdict(&get("/public/%61.css")), Ok(1), "unreserved escapes decoded");
    assert_eq!(verdict(&get("/public/x?y=1")), Ok(1));
    assert_eq!(
        verdict(b"POST /api/items HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}"),
        Ok(2)
    );
}

#[test]
fn bypass_corpus_never_reaches_admin() {
    let corpus = super::corpus::bypass_corpus();
    assert!(corpus.len() >= 40, "{} techniques", corpus.len());
    for (name, req, want) in &corpus {
        assert_eq!(verdict(req), Err(*want), "{name}: {:?}", String::from_utf8_lossy(req));
    }
}

#[test]
fn a_head_split_anywhere_waits_for_the_rest() {
    let req = get("/public/a");
    for cut in 1..req.len() {
        assert_eq!(parse_head(&req[..cut]), Ok(None), "cut at {cut}");
    }
    assert!(parse_head(&req).unwrap().is_some());
}

#[test]
fn pipelined_requests_are_framed_exactly() {
    let two = b"POST /api/items HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello\
GET /admin HTTP/1.1\r\nHost: b\r\n\r\n";
    let first = parse_head(two).unwrap().unwrap();
    assert_eq!(first.body, Body::Length(5));
    let next = &two[first.len + 5..];
    let second = parse_head(next).unwrap().unwrap();
    assert_eq!(second.path, "/admin", "the body is skipped, not parsed as a request");
    assert_eq!(first_match(&rules(), &second), None);
    let chunked = parse_head(b"POST /api/items HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
    assert_eq!(chunked.unwrap().body, Body::Chunked);
}

#[test]
fn normalisation() {
    for (raw, want) in [
        ("/", "/"),
        ("/a/b/../c", "/a/c"),
        ("/a/./b/", "/a/b/"),
        ("//a///b", "/a/b"),
        ("/a/..", "/"),
        ("/%7Euser/%41", "/~user/A"),
        ("/a%20b", "/a%20b"),
        ("/a%2a", "/a%2A"),
    ] {
        assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn host_is_lower_case_without_port_and_absolute_form_wins() {
    let h = parse_head(b"GET / HTTP/1.1\r\nHost: BackEnd:8080\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.host, "backend");
    let h = parse_head(b"GET http://Real/ HTTP/1.1\r\nHost: other\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.host, "real");
    let r = CompiledRule::compile(
        &HttpRule {
            host: Some("api\\.example\\.com".into()),
            headers: vec![("x-team".into(), Some("blue".into())), ("x-trace".into(), None)],
            ..HttpRule::default()
        },
        "http[0]",
    )
    .unwrap();
    let head = |extra: &str| {
        parse_head(format!("GET / HTTP/1.1\r\nHost: API.example.com\r\n{extra}\r\n").as_bytes())
            .unwrap()
            .unwrap()
    };
    assert!(r.matches(&head("X-Team: blue\r\nX-Trace: 1\r\n")));
    assert!(!r.matches(&head("X-Team: red\r\nX-Trace: 1\r\n")));
    assert!(!r.matches(&head("X-Team: blue\r\n")));
}

#[test]
fn patterns_over_the_kernel_budget_or_invalid_are_refused_with_the_field() {
    let big = HttpRule {
        path: Some("/(a|b)*a(a|b){12}".into()),
        ..HttpRule::default()
    };
    let e = CompiledRule::compile(&big, "spec.ingress[0].toPorts[0].rules.http[3]").unwrap_err();
    assert_eq!(e.field, "spec.ingress[0].toPorts[0].rules.http[3].path");
    assert!(e.message.contains(&format!("at most {MAX_STATES}")), "{e}");
    let bad = HttpRule {
        method: Some("GET(".into()),
        ..HttpRule::default()
    };
    let e = CompiledRule::compile(&bad, "http[0]").unwrap_err();
    assert_eq!(e.field, "http[0].method");
    // Anchored: a rule for /public does not allow /public-not or /x/public.
    let r = CompiledRule::compile(&rule("GET", "/public"), "r").unwrap();
    for p in ["/public-not", "/x/public"] {
        assert!(!r.matches(&parse_head(&get(p)).unwrap().unwrap()), "{p}");
    }
}

/// The kernel's byte-step parser (`moat_dataplane_common::http1`, run by the sk_skb
/// verdict program) against this reference, on 50,000 generated heads built from hostile
/// pieces and then mutated: the same accept/reject decision, and for accepted heads the
/// same length, method, normalised path, host and body framing.
#[test]
fn kernel_parser_agrees_with_the_reference() {
    use moat_dataplane_common::http1::{self, body, Step};
    let seed = std::cell::Cell::new(0x2545_f491_4f6c_dd1d_u64);
    let rnd = |n: usize| {
        let mut x = seed.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seed.set(x);
        (x % n as u64) as usize
    };
    let methods = [
        "GET",
        "POST",
        "get",
        "PRI",
        "G@T",
        "",
        "OPTIONSOPTIONSOPT",
        "DELETE",
        "M-SEARCH",
    ];
    let segs = [
        "admin", "ADMIN", "%61dmin", "%2e%2E", "..", ".", "", "public", "%2F", "%5c", "%00", "a;b", "%", "%4", "%zz",
        "x%20y", "%7E", "~", "a.b", "#", "\\", "%3F", "..;", "%C3%A9",
    ];
    let queries = ["", "?a=1", "?/../admin", "?", "?x#y", "?%zz"];
    let versions = [
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/1.1 ",
        "",
        "http/1.1",
        "HTTP/1.10",
    ];
    let hosts = [
        "backend",
        "BackEnd:8080",
        "[::1]:80",
        ":80",
        "a b",
        "",
        "a:b",
        "h\u{e9}",
        "[::1",
        "x.y-z_w",
        "a]",
        "a:80:90",
    ];
    let extra = [
        "Content-Length: 5",
        "Content-Length: 0",
        "Content-Length: 5, 5",
        "Content-Length: 05",
        "Content-Length: -1",
        "content-length:  7 ",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: Chunked ",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, ",
        "Transfer-Encoding:",
        " folded",
        "X-Name : v",
        "X: a\u{1}b",
        "X: caf\u{e9}",
        "Host: other",
        ": empty",
        "X-Long-Header-Name-That-Is-Host: h",
        "Hostx: y",
    ];
    // Mostly benign pieces (the first few of each list), so that accepted heads are
    // compared too, not only refusals.
    let pick = |n: usize, benign: usize| if rnd(10) < 7 { rnd(benign) } else { rnd(n) };
    let mut agreed_accept = 0;
    // One parser for all cases, as the kernel reuses its per-CPU copy: `reset` must
    // leave nothing behind.
    let mut head = Box::new(http1::Head::new());
    for case in 0..50_000 {
        let mut target = String::new();
        match rnd(6) {
            0 => target.push_str("http://backend"),
            1 => target.push_str("HTTPS://Up:443"),
            2 => target.push_str("http://"),
            3 => target.push('*'),
            _ => {}
        }
        for _ in 0..rnd(6) {
            target.push('/');
            target.push_str(segs[pick(segs.len(), 8)]);
        }
        if target.is_empty() || rnd(8) == 0 {
            target.push('/');
        }
        target.push_str(queries[pick(queries.len(), 3)]);
        if rnd(40) == 0 {
            target.push_str(&"/a".repeat(520));
        }
        let mut req = format!(
            "{} {} {}\r\n",
            methods[pick(methods.len(), 2)],
            target,
            versions[pick(versions.len(), 2)]
        );
        if rnd(10) != 0 {
            req.push_str(&format!("Host: {}\r\n", hosts[pick(hosts.len(), 3)]));
        }
        for _ in 0..rnd(4) {
            req.push_str(extra[pick(extra.len(), 8)]);
            req.push_str("\r\n");
        }
        if rnd(50) == 0 {
            req.push_str(&format!("X: {}\r\n", "b".repeat(MAX_HEAD)));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        // Mutations: a byte changed, dropped or inserted.
        for _ in 0..rnd(3).saturating_sub(1) {
            let at = rnd(bytes.len());
            let b = *[b' ', b'\t', b'\r', b'\n', b'/', b'.', b'%', b'A', 0x16, 0x80, b':']
                .get(rnd(11))
                .unwrap();
            match rnd(3) {
                0 => bytes[at] = b,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, b),
            }
        }
        let kernel = http1::parse(&bytes, &mut head);
        let shown = String::from_utf8_lossy(&bytes);
        match parse_head(&bytes) {
            Ok(Some(r)) => {
                assert_eq!(
                    kernel,
                    Step::Done,
                    "case {case}: reference accepts, kernel refuses ({}): {shown:?}",
                    head.reject
                );
                assert_eq!(head.len as usize, r.len, "case {case}: {shown:?}");
                assert_eq!(head.method(), r.method.as_bytes(), "case {case}: {shown:?}");
                assert_eq!(head.path(), r.path.as_bytes(), "case {case}: {shown:?}");
                assert_eq!(head.host(), r.host.as_bytes(), "case {case}: {shown:?}");
                let want = match r.body {
                    Body::None => (body::NONE, 0),
                    Body::Length(n) => (body::LENGTH, n),
                    Body::Chunked => (body::CHUNKED, 0),
                };
                let got = (
                    head.body,
                    if head.body == body::LENGTH {
                        head.content_length
                    } else {
                        0
                    },
                );
                assert_eq!(got, want, "case {case}: {shown:?}");
                agreed_accept += 1;
            }
            Err(why) => {
                assert_eq!(
                    kernel,
                    Step::Reject,
                    "case {case}: reference refuses ({why}), kernel does not: {shown:?}"
                );
            }
            Ok(None) => {
                assert_ne!(
                    kernel,
                    Step::Done,
                    "case {case}: reference needs more, kernel is done: {shown:?}"
                );
            }
        }
    }
    assert!(
        agreed_accept > 3_000,
        "the generator must produce valid heads too ({agreed_accept})"
    );
}
