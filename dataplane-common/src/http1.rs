//! The kernel's HTTP/1 request-head parser: one byte at a time, fixed-size state.
//!
//! The sk_skb verdict program runs [`Head::step`] from a `bpf_loop` callback over the
//! bytes of a request head, so the verifier checks one step, not 4,096 of them. The same
//! code runs on the host, where `policy-compiler`'s reference parser (`http::request`)
//! holds it to account: a property test feeds both random and hostile heads and requires
//! the same accept/reject decision and, when accepted, the same method, normalised path,
//! host, head length and body framing.
//!
//! What it produces for rule matching: the method as sent, the path normalised (RFC 3986:
//! unreserved escapes decoded, other escapes upper case, `//`, `.` and `..` segments
//! removed, never above the root) followed by the query unchanged, and the host in lower
//! case without a port (from an absolute-form target, else the `Host` header).
//!
//! Every index into the fixed buffers is masked or bounds-checked against a constant so
//! that the eBPF build has no reachable panic.

/// Largest request head (request line + headers + final CRLF CRLF).
pub const MAX_HEAD: u32 = 4096;
/// Longest method.
pub const MAX_METHOD: usize = 16;
/// Longest request target as sent (`/path?query`, or `http://host/path?query`).
pub const MAX_TARGET: u32 = 1024;
/// Output buffer for the normalised path and query (never longer than the target).
pub const PATH_BUF: usize = 1024;
/// Longest host name (without port).
pub const MAX_HOST: usize = 255;
const HOST_BUF: usize = 256;
/// Segment starts kept for `..` (a target of 1,024 bytes has at most 512 segments).
const SEGS: usize = 512;

/// Why a head is refused (`Head::reject`); 0 = not refused. Reasons, not positions: the
/// reference parser may name a different reason for a head with several faults.
pub mod reject {
    pub const TOO_LARGE: u8 = 1;
    pub const MALFORMED: u8 = 2;
    pub const HTTP2: u8 = 3;
    pub const TLS: u8 = 4;
    pub const VERSION: u8 = 5;
    pub const FRAMING: u8 = 6;
    pub const AMBIGUOUS_PATH: u8 = 7;
}

/// How the body after the head is delimited (`Head::body`).
pub mod body {
    pub const NONE: u8 = 0;
    pub const LENGTH: u8 = 1;
    pub const CHUNKED: u8 = 2;
}

// Parser phases.
const METHOD: u8 = 0;
const TARGET_START: u8 = 1;
const SCHEME: u8 = 2;
const AUTHORITY: u8 = 3;
const PATH: u8 = 4;
const PCT1: u8 = 5;
const PCT2: u8 = 6;
const QUERY: u8 = 7;
const VERSION: u8 = 8;
const LINE_LF: u8 = 9;
const HDR_START: u8 = 10;
const HDR_NAME: u8 = 11;
const HDR_VALUE: u8 = 12;
const HDR_LF: u8 = 13;
const END_LF: u8 = 14;
const DONE: u8 = 15;
const FAILED: u8 = 16;

// Headers the parser acts on (`Head::hdr`).
const H_OTHER: u8 = 0;
const H_HOST: u8 = 1;
const H_CL: u8 = 2;
const H_TE: u8 = 3;
const NAMES: [&[u8]; 3] = [b"host", b"content-length", b"transfer-encoding"];

/// Result of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Need the next byte.
    More,
    /// The head ended with this byte (`Head::len` bytes); see `method`, `path`, `host`.
    Done,
    /// Refused; `Head::reject` says why.
    Reject,
}

/// Host-name checker state (Host header value or absolute-form authority).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct HostCheck {
    /// 0 plain, 1 inside `[...]`, 2 after `]`.
    bracket: u8,
    /// In the `:port` part.
    port: u8,
    /// Any byte seen.
    seen: u8,
    bad: u8,
}

/// Parser state and its outputs. About 3.9 KiB: lives in a per-CPU map in the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Head {
    /// Bytes consumed.
    pub len: u32,
    pub phase: u8,
    /// `reject::*` once refused.
    pub reject: u8,
    /// `body::*` once done.
    pub body: u8,
    pub version11: u8,
    pub method_len: u8,
    /// Host from the absolute-form target (1) or the `Host` header (0).
    pub uri_host: u8,
    pub path_len: u16,
    pub host_len: u16,
    /// Content-Length once done with `body::LENGTH`.
    pub content_length: u64,
    pub method: [u8; MAX_METHOD],
    pub path: [u8; PATH_BUF],
    /// Host of an absolute-form target (`uri_host`).
    pub host: [u8; HOST_BUF],
    /// Host of the `Host` header.
    pub hdr_host: [u8; HOST_BUF],
    pub hdr_host_len: u16,

    // Work state.
    target_len: u32,
    seg_start: u16,
    depth: u16,
    segs: [u16; SEGS],
    pct: u8,
    cr: u8,
    scheme_len: u8,
    scheme: [u8; 8],
    version_len: u8,
    version: [u8; 8],
    hdr: u8,
    /// Bit i: header name may still be `NAMES[i]`.
    cand: u8,
    name_len: u8,
    value_started: u8,
    value_ws: u8,
    value_len: u16,
    host_count: u8,
    cl_count: u8,
    te_count: u8,
    te_bad: u8,
    cl_digits: u8,
    cl_value: u64,
    cl_first_digits: u8,
    cl_first: u64,
    /// Deferred: a path fault is reported only if nothing earlier in the head is wrong.
    path_fault: u8,
    hc: HostCheck,
}

impl Default for Head {
    fn default() -> Self {
        Self::new()
    }
}

#[inline(always)]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

#[inline(always)]
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[inline(always)]
fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[inline(always)]
fn hex_upper(n: u8) -> u8 {
    let n = n & 15;
    if n < 10 {
        b'0' + n
    } else {
        b'A' + n - 10
    }
}

impl Head {
    /// A fresh parser (an all-zero state: the kernel resets its per-CPU copy with zeroes).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            len: 0,
            phase: METHOD,
            reject: 0,
            body: body::NONE,
            version11: 0,
            method_len: 0,
            uri_host: 0,
            path_len: 0,
            host_len: 0,
            content_length: 0,
            method: [0; MAX_METHOD],
            path: [0; PATH_BUF],
            host: [0; HOST_BUF],
            target_len: 0,
            seg_start: 0,
            depth: 0,
            segs: [0; SEGS],
            pct: 0,
            cr: 0,
            scheme_len: 0,
            scheme: [0; 8],
            version_len: 0,
            version: [0; 8],
            hdr: 0,
            cand: 0,
            name_len: 0,
            value_started: 0,
            value_ws: 0,
            value_len: 0,
            hdr_host: [0; HOST_BUF],
            hdr_host_len: 0,
            host_count: 0,
            cl_count: 0,
            te_count: 0,
            te_bad: 0,
            cl_digits: 0,
            cl_value: 0,
            cl_first_digits: 0,
            cl_first: 0,
            path_fault: 0,
            hc: HostCheck {
                bracket: 0,
                port: 0,
                seen: 0,
                bad: 0,
            },
        }
    }

    /// Back to the initial state. Only the scalars: buffer bytes are read only below the
    /// lengths written since (the kernel's per-CPU copy is reused without a 4 KiB clear).
    #[inline(always)]
    pub fn reset(&mut self) {
        self.len = 0;
        self.phase = METHOD;
        self.reject = 0;
        self.body = body::NONE;
        self.version11 = 0;
        self.method_len = 0;
        self.uri_host = 0;
        self.path_len = 0;
        self.host_len = 0;
        self.hdr_host_len = 0;
        self.content_length = 0;
        self.target_len = 0;
        self.seg_start = 0;
        self.depth = 0;
        self.pct = 0;
        self.cr = 0;
        self.scheme_len = 0;
        self.version_len = 0;
        self.version = [0; 8];
        self.hdr = 0;
        self.cand = 0;
        self.name_len = 0;
        self.value_started = 0;
        self.value_ws = 0;
        self.value_len = 0;
        self.host_count = 0;
        self.cl_count = 0;
        self.te_count = 0;
        self.te_bad = 0;
        self.cl_digits = 0;
        self.cl_value = 0;
        self.cl_first_digits = 0;
        self.cl_first = 0;
        self.path_fault = 0;
        self.hc = HostCheck {
            bracket: 0,
            port: 0,
            seen: 0,
            bad: 0,
        };
    }

    /// Where the parser stands: done, refused, or waiting for more bytes.
    #[inline(always)]
    #[must_use]
    pub fn outcome(&self) -> Step {
        match self.phase {
            DONE => Step::Done,
            FAILED => Step::Reject,
            _ => Step::More,
        }
    }

    /// The method as sent.
    #[must_use]
    pub fn method(&self) -> &[u8] {
        &self.method[..(self.method_len as usize).min(MAX_METHOD)]
    }

    /// The normalised path and query.
    #[must_use]
    pub fn path(&self) -> &[u8] {
        &self.path[..(self.path_len as usize).min(PATH_BUF)]
    }

    /// The host in lower case, without port: the target's authority if it had one,
    /// else the `Host` header's.
    #[must_use]
    pub fn host(&self) -> &[u8] {
        if self.uri_host != 0 {
            &self.host[..(self.host_len as usize).min(HOST_BUF)]
        } else {
            &self.hdr_host[..(self.hdr_host_len as usize).min(HOST_BUF)]
        }
    }

    #[inline(always)]
    fn fail(&mut self, why: u8) -> Step {
        self.reject = why;
        self.phase = FAILED;
        Step::Reject
    }

    /// Feeds one byte.
    #[inline(always)]
    pub fn step(&mut self, b: u8) -> Step {
        if self.phase == DONE {
            return Step::Done;
        }
        if self.phase == FAILED {
            return Step::Reject;
        }
        if self.len == 0 && b == 0x16 {
            return self.fail(reject::TLS);
        }
        self.len += 1;
        if self.len > MAX_HEAD {
            return self.fail(reject::TOO_LARGE);
        }
        // CRLF discipline everywhere: a CR must be followed by LF, an LF preceded by CR.
        if self.cr != 0 && b != b'\n' {
            return self.fail(reject::MALFORMED);
        }
        if b == b'\n' && self.cr == 0 {
            return self.fail(reject::MALFORMED);
        }
        self.cr = u8::from(b == b'\r');
        if (TARGET_START..=QUERY).contains(&self.phase) && b != b' ' && b != b'\r' {
            self.target_len += 1;
            if self.target_len > MAX_TARGET {
                return self.fail(reject::TOO_LARGE);
            }
        }
        match self.phase {
            METHOD => self.method_byte(b),
            TARGET_START => self.target_start(b),
            SCHEME => self.scheme_byte(b),
            AUTHORITY => self.authority_byte(b),
            PATH | PCT1 | PCT2 => self.path_byte(b),
            QUERY => self.query_byte(b),
            VERSION => self.version_byte(b),
            LINE_LF => {
                self.phase = HDR_START;
                Step::More
            }
            HDR_START => self.header_start(b),
            HDR_NAME => self.header_name(b),
            HDR_VALUE => self.header_value(b),
            HDR_LF => {
                self.phase = HDR_START;
                Step::More
            }
            END_LF => self.finish(),
            _ => self.fail(reject::MALFORMED),
        }
    }

    #[inline(always)]
    fn method_byte(&mut self, b: u8) -> Step {
        if b == b' ' {
            if self.method_len == 0 {
                return self.fail(reject::MALFORMED);
            }
            self.phase = TARGET_START;
            return Step::More;
        }
        if !is_tchar(b) || self.method_len as usize >= MAX_METHOD {
            return self.fail(reject::MALFORMED);
        }
        self.method[self.method_len as usize & (MAX_METHOD - 1)] = b;
        self.method_len += 1;
        Step::More
    }

    /// The byte ends the request target (`' '`) or the line (`'\r'`, HTTP/0.9).
    #[inline(always)]
    fn target_end(&mut self, b: u8) -> Option<Step> {
        match b {
            b' ' => None,
            b'\r' => Some(self.fail(reject::VERSION)),
            _ => Some(self.fail(reject::MALFORMED)),
        }
    }

    #[inline(always)]
    fn target_start(&mut self, b: u8) -> Step {
        match b {
            b'/' => {
                self.phase = PATH;
                self.path[0] = b'/';
                self.path_len = 1;
                self.seg_start = 1;
                Step::More
            }
            b'h' | b'H' => {
                self.phase = SCHEME;
                self.scheme[0] = b'h';
                self.scheme_len = 1;
                Step::More
            }
            b'*' if self.method_len == 3
                && self.method[0] == b'P'
                && self.method[1] == b'R'
                && self.method[2] == b'I' =>
            {
                self.fail(reject::HTTP2)
            }
            b'\r' => self.fail(reject::VERSION),
            _ => self.fail(reject::MALFORMED),
        }
    }

    #[inline(always)]
    fn scheme_byte(&mut self, b: u8) -> Step {
        if b == b' ' || b == b'\r' {
            return self.fail(if b == b'\r' { reject::VERSION } else { reject::MALFORMED });
        }
        let n = self.scheme_len as usize;
        let c = b.to_ascii_lowercase();
        // "http://" or "https://", told apart by the fifth byte.
        let secure = (n == 4 && c == b's') || (n > 4 && self.scheme[4] == b's');
        let want: &[u8; 8] = if secure { b"https://" } else { b"http://\0" };
        if n >= 8 || c == 0 || want[n & 7] != c {
            return self.fail(reject::MALFORMED);
        }
        self.scheme[n & 7] = c;
        self.scheme_len += 1;
        if n + 1 == if secure { 8 } else { 7 } {
            self.phase = AUTHORITY;
            self.uri_host = 1;
            self.host_len = 0;
            self.hc = HostCheck::default();
        }
        Step::More
    }

    #[inline(always)]
    fn authority_byte(&mut self, b: u8) -> Step {
        match b {
            b'/' | b' ' => {
                if self.hc.seen == 0 || !self.host_end(true) {
                    return self.fail(reject::MALFORMED);
                }
                self.phase = if b == b' ' { VERSION } else { PATH };
                self.path[0] = b'/';
                self.path_len = 1;
                self.seg_start = 1;
                Step::More
            }
            b'\r' => self.fail(reject::VERSION),
            _ => {
                if !self.host_byte(b, true) {
                    return self.fail(reject::MALFORMED);
                }
                Step::More
            }
        }
    }

    /// One byte of a host (`uri`: the target's authority, else the Host header).
    #[inline(always)]
    fn host_byte(&mut self, b: u8, uri: bool) -> bool {
        self.hc.seen = 1;
        if self.hc.port != 0 {
            return b.is_ascii_digit();
        }
        let len = if uri { self.host_len } else { self.hdr_host_len } as usize;
        let keep = match self.hc.bracket {
            0 if len == 0 && b == b'[' => {
                self.hc.bracket = 1;
                true
            }
            0 if b == b':' => {
                self.hc.port = 1;
                return true;
            }
            0 => b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'),
            1 if b == b']' => {
                self.hc.bracket = 2;
                true
            }
            1 => b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'),
            _ if b == b':' => {
                self.hc.port = 1;
                return true;
            }
            _ => false,
        };
        if !keep || len >= MAX_HOST {
            return false;
        }
        let c = b.to_ascii_lowercase();
        if uri {
            self.host[len & (HOST_BUF - 1)] = c;
            self.host_len += 1;
        } else {
            self.hdr_host[len & (HOST_BUF - 1)] = c;
            self.hdr_host_len += 1;
        }
        true
    }

    /// End of a host: brackets closed, a name before any port.
    #[inline(always)]
    fn host_end(&self, uri: bool) -> bool {
        let len = if uri { self.host_len } else { self.hdr_host_len };
        self.hc.bracket != 1 && (self.hc.seen == 0 || len > 0)
    }

    #[inline(always)]
    fn push(&mut self, c: u8) -> bool {
        let n = self.path_len as usize;
        if n >= PATH_BUF {
            return false;
        }
        self.path[n & (PATH_BUF - 1)] = c;
        self.path_len += 1;
        true
    }

    /// A `/` (or the end of the path) closes the segment being written.
    #[inline(always)]
    fn segment_end(&mut self, last: bool) {
        let start = self.seg_start as usize;
        let n = self.path_len as usize;
        let seg_len = n.saturating_sub(start);
        let c0 = self.path[start & (PATH_BUF - 1)];
        let c1 = self.path[(start + 1) & (PATH_BUF - 1)];
        if seg_len == 0 {
            return; // `//`
        }
        if seg_len == 1 && c0 == b'.' {
            self.path_len = start as u16;
            return;
        }
        if seg_len == 2 && c0 == b'.' && c1 == b'.' {
            if self.depth > 0 {
                self.depth -= 1;
                let prev = self.segs[self.depth as usize & (SEGS - 1)];
                self.path_len = prev;
                self.seg_start = prev;
            } else {
                self.path_len = start as u16;
            }
            return;
        }
        if last {
            return;
        }
        if (self.depth as usize) < SEGS {
            self.segs[self.depth as usize & (SEGS - 1)] = start as u16;
            self.depth += 1;
        }
        if self.push(b'/') {
            self.seg_start = self.path_len;
        }
    }

    /// The path part of the target is complete (at `?` or the end of the target).
    #[inline(always)]
    fn path_end(&mut self) -> Step {
        if self.phase == PCT1 || self.phase == PCT2 {
            self.path_fault = reject::AMBIGUOUS_PATH;
        }
        self.segment_end(true);
        Step::More
    }

    #[inline(always)]
    fn path_byte(&mut self, b: u8) -> Step {
        if b == b' ' || b == b'\r' {
            if let Some(s) = self.target_end(b) {
                return s;
            }
            self.path_end();
            self.phase = VERSION;
            return Step::More;
        }
        if !b.is_ascii_graphic() || b == b'#' {
            return self.fail(reject::MALFORMED);
        }
        if self.phase == PCT1 {
            let Some(h) = hex_val(b) else {
                self.path_fault = reject::AMBIGUOUS_PATH;
                self.phase = PATH;
                return Step::More;
            };
            self.pct = h;
            self.phase = PCT2;
            return Step::More;
        }
        if self.phase == PCT2 {
            self.phase = PATH;
            let Some(l) = hex_val(b) else {
                self.path_fault = reject::AMBIGUOUS_PATH;
                return Step::More;
            };
            let c = self.pct * 16 + l;
            if c == b'/' || c == b'\\' || c == 0 {
                self.path_fault = reject::AMBIGUOUS_PATH;
                return Step::More;
            }
            let ok = if is_unreserved(c) {
                self.push(c)
            } else {
                self.push(b'%') && self.push(hex_upper(c >> 4)) && self.push(hex_upper(c))
            };
            return if ok { Step::More } else { self.fail(reject::TOO_LARGE) };
        }
        match b {
            b'%' => {
                self.phase = PCT1;
                Step::More
            }
            b'\\' | b';' => {
                self.path_fault = reject::AMBIGUOUS_PATH;
                Step::More
            }
            b'/' => {
                self.segment_end(false);
                Step::More
            }
            b'?' => {
                self.path_end();
                self.phase = QUERY;
                if self.push(b'?') {
                    Step::More
                } else {
                    self.fail(reject::TOO_LARGE)
                }
            }
            _ => {
                if self.push(b) {
                    Step::More
                } else {
                    self.fail(reject::TOO_LARGE)
                }
            }
        }
    }

    #[inline(always)]
    fn query_byte(&mut self, b: u8) -> Step {
        if b == b' ' || b == b'\r' {
            if let Some(s) = self.target_end(b) {
                return s;
            }
            self.phase = VERSION;
            return Step::More;
        }
        if !b.is_ascii_graphic() || b == b'#' {
            return self.fail(reject::MALFORMED);
        }
        if self.push(b) {
            Step::More
        } else {
            self.fail(reject::TOO_LARGE)
        }
    }

    #[inline(always)]
    fn version_byte(&mut self, b: u8) -> Step {
        if b == b'\r' {
            // Whole-word compares: no memcmp in the eBPF build.
            let v = u64::from_le_bytes(self.version);
            if self.version_len == 8 && (v == u64::from_le_bytes(*b"HTTP/1.1") || v == u64::from_le_bytes(*b"HTTP/1.0"))
            {
                self.version11 = u8::from(v == u64::from_le_bytes(*b"HTTP/1.1"));
                self.phase = LINE_LF;
                return Step::More;
            }
            let http = self.version_len >= 5
                && self.version[0] == b'H'
                && self.version[1] == b'T'
                && self.version[2] == b'T'
                && self.version[3] == b'P'
                && self.version[4] == b'/';
            return self.fail(if http { reject::VERSION } else { reject::MALFORMED });
        }
        let n = self.version_len as usize;
        if b == b' ' || n >= 8 || b >= 0x80 {
            return self.fail(reject::MALFORMED);
        }
        self.version[n & 7] = b;
        self.version_len += 1;
        Step::More
    }

    #[inline(always)]
    fn header_start(&mut self, b: u8) -> Step {
        if b == b'\r' {
            self.phase = END_LF;
            return Step::More;
        }
        self.hdr = H_OTHER;
        self.cand = 0b111;
        self.name_len = 0;
        self.value_started = 0;
        self.value_ws = 0;
        self.value_len = 0;
        self.phase = HDR_NAME;
        self.header_name(b)
    }

    #[inline(always)]
    fn header_name(&mut self, b: u8) -> Step {
        if b == b':' {
            if self.name_len == 0 {
                return self.fail(reject::MALFORMED);
            }
            let n = self.name_len as usize;
            self.hdr = H_OTHER;
            let mut i = 0;
            while i < 3 {
                if self.cand & (1 << i) != 0 && NAMES[i].len() == n {
                    self.hdr = i as u8 + 1;
                }
                i += 1;
            }
            match self.hdr {
                H_HOST => {
                    self.host_count += 1;
                    self.hdr_host_len = 0;
                    self.hc = HostCheck::default();
                }
                H_CL => {
                    self.cl_count += 1;
                    self.cl_digits = 0;
                    self.cl_value = 0;
                }
                H_TE => {
                    self.te_count += 1;
                }
                _ => {}
            }
            self.phase = HDR_VALUE;
            return Step::More;
        }
        if !is_tchar(b) {
            return self.fail(reject::MALFORMED);
        }
        let n = self.name_len as usize;
        let c = b.to_ascii_lowercase();
        let mut i = 0;
        while i < 3 {
            let name = NAMES[i];
            if n >= name.len() || name[n.min(name.len() - 1)] != c {
                self.cand &= !(1 << i);
            }
            i += 1;
        }
        self.name_len = self.name_len.saturating_add(1);
        Step::More
    }

    #[inline(always)]
    fn header_value(&mut self, b: u8) -> Step {
        if b == b'\r' {
            return self.header_end();
        }
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            return self.fail(reject::MALFORMED);
        }
        let ws = b == b' ' || b == b'\t';
        if ws {
            if self.value_started != 0 {
                self.value_ws = 1;
            }
            return Step::More;
        }
        if self.value_ws != 0 {
            // Whitespace inside the value: fine for other headers, never for these.
            match self.hdr {
                H_HOST => return self.fail(reject::MALFORMED),
                H_CL | H_TE => return self.fail(reject::FRAMING),
                _ => self.value_ws = 0,
            }
        }
        self.value_started = 1;
        let n = self.value_len as usize;
        self.value_len = self.value_len.saturating_add(1);
        let hdr = self.hdr;
        match hdr {
            H_HOST if !self.host_byte(b, false) => return self.fail(reject::MALFORMED),
            H_CL => {
                if !b.is_ascii_digit() || self.cl_digits >= 15 {
                    return self.fail(reject::FRAMING);
                }
                self.cl_value = self.cl_value * 10 + u64::from(b - b'0');
                self.cl_digits += 1;
            }
            H_TE => {
                let want = b"chunked";
                if n >= 7 || want[n.min(6)] != b.to_ascii_lowercase() {
                    self.te_bad = 1;
                }
            }
            _ => {}
        }
        Step::More
    }

    #[inline(always)]
    fn header_end(&mut self) -> Step {
        match self.hdr {
            H_HOST if !self.host_end(false) => return self.fail(reject::MALFORMED),
            H_CL => {
                if self.cl_digits == 0 {
                    return self.fail(reject::FRAMING);
                }
                if self.cl_count == 1 {
                    self.cl_first = self.cl_value;
                    self.cl_first_digits = self.cl_digits;
                } else if self.cl_value != self.cl_first || self.cl_digits != self.cl_first_digits {
                    return self.fail(reject::FRAMING);
                }
            }
            H_TE if self.value_len != 7 => self.te_bad = 1,
            _ => {}
        }
        self.phase = HDR_LF;
        Step::More
    }

    /// The final LF of CRLF CRLF: whole-head checks, then done.
    #[inline(always)]
    fn finish(&mut self) -> Step {
        if self.te_count > 0 {
            if self.cl_count > 0 || self.te_count > 1 || self.te_bad != 0 {
                return self.fail(reject::FRAMING);
            }
            self.body = body::CHUNKED;
        } else if self.cl_count > 0 && self.cl_first > 0 {
            self.body = body::LENGTH;
            self.content_length = self.cl_first;
        }
        if self.host_count > 1 || (self.version11 != 0 && self.host_count == 0) {
            return self.fail(reject::MALFORMED);
        }
        if self.path_fault != 0 {
            return self.fail(self.path_fault);
        }
        self.phase = DONE;
        Step::Done
    }
}

/// Parses `buf` on the host the way the kernel does: the decision and the head.
#[must_use]
pub fn parse(buf: &[u8], head: &mut Head) -> Step {
    head.reset();
    for &b in buf {
        match head.step(b) {
            Step::More => {}
            s => return s,
        }
    }
    Step::More
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;

    fn run(s: &[u8]) -> (Step, Box<Head>) {
        let mut h = Box::new(Head::new());
        let r = parse(s, &mut h);
        (r, h)
    }

    #[test]
    fn a_plain_get_is_parsed() {
        let (r, h) = run(b"GET /a/./b/../c//d?x=/../ HTTP/1.1\r\nHost: API.example:80\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r, Step::Done);
        assert_eq!(h.method(), b"GET");
        assert_eq!(h.path(), b"/a/c/d?x=/../");
        assert_eq!(h.host(), b"api.example");
        assert_eq!(h.body, body::LENGTH);
        assert_eq!(h.content_length, 5);
    }

    #[test]
    fn faults_are_refused_with_their_reason() {
        for (req, why) in [
            (&b"\x16\x03\x01"[..], reject::TLS),
            (b"GET /%2fadmin HTTP/1.1\r\nHost: a\r\n\r\n", reject::AMBIGUOUS_PATH),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                reject::FRAMING,
            ),
            (b"GET /\r\n", reject::VERSION),
            (b"GET\t/ HTTP/1.1\r\n", reject::MALFORMED),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", reject::MALFORMED),
        ] {
            let (r, h) = run(req);
            assert_eq!((r, h.reject), (Step::Reject, why), "{:?}", core::str::from_utf8(req));
        }
    }
}
