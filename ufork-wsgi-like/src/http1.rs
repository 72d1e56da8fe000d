//! HTTP/1.x framing: parsing a request head with httparse and deciding how
//! its body is delimited, and writing response heads.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, StatusCode, Uri, Version};

use crate::Limits;
use crate::body::{Chunk, Framing};

/// Headers parsed on the stack; more (if the limit allows) go to the heap.
const STACK_HEADERS: usize = 100;

/// A parsed request head, ready to become a [`Request`].
#[derive(Debug)]
pub(crate) struct Head {
    /// Bytes of the head, including the blank line.
    pub(crate) len: usize,
    /// Bytes of the request line, without CRLF.
    pub(crate) line_len: usize,
    pub(crate) request: Request<()>,
    pub(crate) framing: Framing,
    pub(crate) content_length: Option<u64>,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
}

/// Parses a request head from the start of `buf`: `Ok(None)` if incomplete,
/// `Err(status)` if it must be rejected.
///
/// A complete head is copied into `store` and frozen there: the request's
/// `Uri` and header values are slices of that one buffer rather than a copy
/// each. Once the request and everything taken from it are dropped, `store`
/// reuses the same memory for the next head, so a connection's steady state
/// allocates nothing for them.
#[inline]
pub(crate) fn parse(
    buf: &[u8],
    limits: &Limits,
    store: &mut BytesMut,
) -> Result<Option<Head>, StatusCode> {
    check_line(buf, limits.max_request_line_bytes)?;
    parse_sized(buf, limits, store)
}

/// What a head whose version httparse refused gets: `505`, unless it says
/// HTTP/1.2 to 1.9.
fn unsupported_version(
    buf: &[u8],
    limits: &Limits,
    store: &mut BytesMut,
) -> Result<Option<Head>, StatusCode> {
    match higher_minor(buf) {
        Some(minor) => {
            // RFC 9110 §2.5: a higher minor version of 1.x is served as 1.1.
            // httparse knows only 1.0 and 1.1, so parse a copy that says 1.1
            // (same length: every offset in the head stays right).
            let mut copy = buf.to_vec();
            copy[minor] = b'1';
            parse_sized(&copy, limits, store)
        }
        None => Err(StatusCode::HTTP_VERSION_NOT_SUPPORTED),
    }
}

/// `414 URI Too Long` once the request line at the start of `buf` is
/// known to be longer than `max` bytes (without its CRLF), complete or not:
/// the target is the only part of it that can grow that long (RFC 9112
/// §3). Checked before the head completes, so a client cannot make the
/// server buffer up to the header limit first.
fn check_line(buf: &[u8], max: usize) -> Result<(), StatusCode> {
    let window = &buf[..buf.len().min(max.saturating_add(2))];
    let too_long = match window.iter().position(|&b| b == b'\n') {
        Some(i) => i - usize::from(i > 0 && window[i - 1] == b'\r') > max,
        // A full window without a line end: more than `max` bytes before it.
        None => window.len() == max.saturating_add(2),
    };
    if too_long {
        Err(StatusCode::URI_TOO_LONG)
    } else {
        Ok(())
    }
}

fn parse_sized(
    buf: &[u8],
    limits: &Limits,
    store: &mut BytesMut,
) -> Result<Option<Head>, StatusCode> {
    let max = limits.max_headers;
    // Uninitialised: httparse writes only the headers it finds, so a short
    // head does not pay for clearing all `max` of them first.
    if max <= STACK_HEADERS {
        let mut headers = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        parse_with(buf, limits, &mut headers[..max], store)
    } else {
        let mut headers = Vec::new();
        headers.resize_with(max, MaybeUninit::uninit);
        parse_with(buf, limits, &mut headers, store)
    }
}

fn parse_with<'b>(
    buf: &'b [u8],
    limits: &Limits,
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    store: &mut BytesMut,
) -> Result<Option<Head>, StatusCode> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_header_bytes {
                Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Err(httparse::Error::Version) => {
            return match version_error(buf) {
                StatusCode::HTTP_VERSION_NOT_SUPPORTED => unsupported_version(buf, limits, store),
                status => Err(status),
            };
        }
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    if len > limits.max_header_bytes {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    let bad = StatusCode::BAD_REQUEST;
    store.clear();
    store.extend_from_slice(&buf[..len]);
    let head = Shared {
        base: buf.as_ptr() as usize,
        bytes: store.split().freeze(),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| bad)?;
    let target = req.path.unwrap_or("");
    let uri = parse_target(&method, target, head.slice(target.as_bytes())).ok_or(bad)?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return unsupported_version(buf, limits, store),
    };
    // The request is built in place: its header map is filled where it
    // stays, not moved into it (and an empty one dropped).
    let mut request = Request::new(());
    let map = request.headers_mut();
    // More fields than a `HeaderMap` can hold (a `max_headers` set that
    // high) are too many, not a panic.
    let too_many = |_| StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    map.try_reserve(req.headers.len()).map_err(too_many)?;
    let mut content_length = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    let mut hosts = 0usize;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad)?;
        let value = HeaderValue::from_maybe_shared(head.slice(h.value)).map_err(|_| bad)?;
        if name == header::CONTENT_LENGTH {
            for part in h.value.split(|&b| b == b',') {
                let n = parse_length(trim(part)).ok_or(bad)?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(bad);
                }
                content_length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            // Only `chunked` is understood, and it must come last; a second
            // `chunked` or anything after it is an attempt at smuggling.
            for coding in h.value.split(|&b| b == b',').map(trim) {
                if chunked {
                    return Err(bad);
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else if coding.is_empty() {
                    return Err(bad);
                } else {
                    transfer_encoding = true;
                }
            }
        } else if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name == header::HOST {
            // One Host, naming one authority: two of them, or a list, would
            // let a proxy and this server disagree on which site is asked
            // for (RFC 9112 §3.2).
            hosts += 1;
            if hosts > 1 || !valid_host(h.value, head.slice(h.value)) {
                return Err(bad);
            }
        } else if name == header::EXPECT {
            if trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                expect_continue = version == Version::HTTP_11;
            } else {
                return Err(StatusCode::EXPECTATION_FAILED);
            }
        }
        map.try_append(name, value).map_err(too_many)?;
    }
    // An absolute-form target names the authority itself and wins over Host,
    // but an HTTP/1.1 client must send Host all the same.
    if hosts == 0 && version == Version::HTTP_11 {
        return Err(bad);
    }
    if chunked || transfer_encoding {
        if content_length.is_some() || version == Version::HTTP_10 {
            return Err(bad);
        }
        if transfer_encoding {
            return Err(if chunked {
                StatusCode::NOT_IMPLEMENTED
            } else {
                bad
            });
        }
    }
    let framing = if chunked {
        Framing::Chunked(Chunk::Size)
    } else {
        match content_length {
            Some(n) if n > limits.max_body_bytes => return Err(StatusCode::PAYLOAD_TOO_LARGE),
            Some(0) | None => Framing::Done,
            Some(n) => Framing::Length(n),
        }
    };
    if method == Method::CONNECT {
        // A 2xx answer to CONNECT turns the connection into a tunnel (RFC
        // 9110 §9.3.6), which this server cannot make: refuse it here
        // rather than let an app's 200 tell a proxy client the tunnel is up.
        return Err(StatusCode::NOT_IMPLEMENTED);
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive);
    let line_len = buf.iter().position(|&b| b == b'\n').map_or(0, |i| {
        if i > 0 && buf[i - 1] == b'\r' {
            i - 1
        } else {
            i
        }
    });
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    Ok(Some(Head {
        len,
        line_len,
        request,
        framing,
        content_length: if chunked { None } else { content_length },
        keep_alive,
        expect_continue: expect_continue && framing != Framing::Done,
    }))
}

/// A complete head copied into one shared buffer, and where the parsed
/// copy started: any slice httparse returned maps to the same bytes in it.
struct Shared {
    base: usize,
    bytes: Bytes,
}

impl Shared {
    /// The bytes of `part` (a slice of the parsed head) in the shared copy.
    fn slice(&self, part: &[u8]) -> Bytes {
        let start = (part.as_ptr() as usize).wrapping_sub(self.base);
        match start.checked_add(part.len()) {
            Some(end) if !part.is_empty() && end <= self.bytes.len() => {
                self.bytes.slice(start..end)
            }
            // Not from the parsed head (an empty default): a copy is cheap.
            _ => Bytes::copy_from_slice(part),
        }
    }
}

/// Origin form (`/path?q`), absolute form (`http://host/path`), `*` for
/// OPTIONS, authority form (`host:port`) for CONNECT and only for it (a
/// well-formed CONNECT is then refused with 501). `shared` holds the
/// same bytes as `target`, to build the `Uri` from without a copy.
///
/// Refused (RFC 9112 §3.2 and RFC 9110 §4.2.4): any byte outside visible
/// ASCII (a client must percent-encode it, so a raw one is an error and
/// never reaches the app), a `#fragment` (a client never sends one), and
/// user information (`user:pass@`) in an authority.
fn parse_target(method: &Method, target: &str, shared: Bytes) -> Option<Uri> {
    if !target.bytes().all(|b| b.is_ascii_graphic()) || target.contains('#') {
        return None;
    }
    let uri = Uri::from_maybe_shared(shared).ok()?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return None;
    }
    let ok = if method == Method::CONNECT {
        uri.authority().is_some() && uri.scheme().is_none() && !target.starts_with('/')
    } else if target.starts_with('/') {
        uri.scheme().is_none() && uri.authority().is_none()
    } else if target == "*" {
        method == Method::OPTIONS
    } else {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
    };
    ok.then_some(uri)
}

/// A Host value: empty (a target without authority) or `host[:port]`, with
/// no whitespace, list separator or user information. `shared` holds the
/// same bytes as `value`, to parse the authority from without a copy.
fn valid_host(value: &[u8], shared: Bytes) -> bool {
    if value.is_empty() {
        return true;
    }
    let bad_byte = |&b: &u8| b.is_ascii_whitespace() || b == b',' || b == b'@';
    // The port after the last colon outside an IPv6 literal's brackets.
    let host_end = value.iter().rposition(|&b| b == b':' || b == b']');
    let port_ok = match host_end {
        Some(i) if value[i] == b':' => value[i + 1..].iter().all(u8::is_ascii_digit),
        _ => true,
    };
    port_ok && !value.iter().any(bad_byte) && Authority::from_maybe_shared(shared).is_ok()
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// A request line httparse refused for its version: `505` if it names an
/// HTTP version we do not speak, `400` if it is not a request line at all.
fn version_error(buf: &[u8]) -> StatusCode {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    let Some(version) = line.rsplit(|&b| b == b' ').next() else {
        return StatusCode::BAD_REQUEST;
    };
    let looks_like = line.split(|&b| b == b' ').count() == 3
        && version.starts_with(b"HTTP/")
        && match &version[5..] {
            [major] => major.is_ascii_digit(),
            [major, b'.', minor] => major.is_ascii_digit() && minor.is_ascii_digit(),
            _ => false,
        };
    if looks_like {
        StatusCode::HTTP_VERSION_NOT_SUPPORTED
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// The index of the minor digit if the request line names `HTTP/1.x` with
/// `x` from 2 to 9.
fn higher_minor(buf: &[u8]) -> Option<usize> {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    let start = line.iter().rposition(|&b| b == b' ')? + 1;
    match &line[start..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => Some(line_end - 1),
        _ => None,
    }
}

/// Appends a status line.
pub(crate) fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    // Most responses say 200: no reason-phrase lookup for them.
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`.
pub(crate) fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8], limits: &Limits) -> Result<Option<Head>, StatusCode> {
        super::parse(buf, limits, &mut BytesMut::new())
    }

    fn limits() -> Limits {
        Limits::default()
    }

    fn status(raw: &str) -> StatusCode {
        parse(raw.as_bytes(), &limits()).unwrap_err()
    }

    #[test]
    fn parses_origin_and_absolute_forms() {
        let head = parse(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n", &limits())
            .unwrap()
            .unwrap();
        assert_eq!(head.request.uri().path(), "/a");
        assert_eq!(head.line_len, "GET /a?b=c HTTP/1.1".len());
        assert!(head.keep_alive);
        let head = parse(b"GET http://example.com/x HTTP/1.0\r\n\r\n", &limits())
            .unwrap()
            .unwrap();
        assert_eq!(head.request.uri().host(), Some("example.com"));
        assert!(!head.keep_alive);
    }

    #[test]
    fn request_targets_refused() {
        let bad = StatusCode::BAD_REQUEST;
        for target in [
            "/caf\u{e9}",
            "/\u{1f600}",
            "/page#frag",
            "/page?q=1#frag",
            "http://t/p#frag",
            "http://user:pass@t/",
            "http://user@t/",
        ] {
            assert_eq!(
                status(&format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n")),
                bad,
                "{target}"
            );
        }
        assert_eq!(
            status("CONNECT user@t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n"),
            bad
        );
        let ok = parse(
            b"GET /caf%C3%A9?q=%23 HTTP/1.1\r\nHost: t\r\n\r\n",
            &limits(),
        );
        assert!(matches!(ok, Ok(Some(_))), "{ok:?}");
    }

    #[test]
    fn connect_is_501_when_well_formed_and_400_otherwise() {
        for raw in [
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "CONNECT [::1]:443 HTTP/1.0\r\n\r\n",
        ] {
            assert_eq!(status(raw), StatusCode::NOT_IMPLEMENTED, "{raw}");
        }
        for raw in [
            "CONNECT / HTTP/1.1\r\nHost: t\r\n\r\n",
            "CONNECT http://t:443/ HTTP/1.1\r\nHost: t\r\n\r\n",
            "CONNECT * HTTP/1.1\r\nHost: t\r\n\r\n",
            "CONNECT t:443 HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(raw), StatusCode::BAD_REQUEST, "{raw}");
        }
    }

    #[test]
    fn incomplete_is_none() {
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost:", &limits())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn rejects_smuggling() {
        assert_eq!(
            status(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        let same = parse(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            &limits(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(same.framing, Framing::Length(3));
    }

    #[test]
    fn host_is_required_once_and_valid() {
        let ok = |raw: &str| parse(raw.as_bytes(), &limits()).unwrap().unwrap();
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        for bad in ["a b", "a,b", "a, b", "user@a", "a:port", "a\tb"] {
            assert_eq!(
                status(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")),
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
        for good in ["a", "example.com:8080", "127.0.0.1:80", "[::1]:8000", ""] {
            ok(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n"));
        }
        ok("GET / HTTP/1.0\r\n\r\n");
        // The absolute-form target's authority wins over Host.
        let head = ok("GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n");
        assert_eq!(head.request.uri().host(), Some("a.example"));
    }

    #[test]
    fn versions() {
        assert_eq!(
            status("GET / HTTP/2.0\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        for other in ["HTTP/0.9", "HTTP/3", "HTTP/2.1"] {
            assert_eq!(
                status(&format!("GET / {other}\r\nHost: x\r\n\r\n")),
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "{other}"
            );
        }
        // A higher minor version of 1.x is served as 1.1 (RFC 9110 §2.5).
        for minor in ["HTTP/1.2", "HTTP/1.9"] {
            let raw = format!("GET /a {minor}\r\nHost: x\r\nX: y\r\n\r\n");
            let head = parse(raw.as_bytes(), &limits()).unwrap().unwrap();
            assert_eq!(head.request.version(), Version::HTTP_11);
            assert_eq!(head.len, raw.len());
            assert_eq!(head.request.headers()["x"], "y");
            assert!(head.keep_alive);
        }
        assert_eq!(
            status("GET / HTTP/1.2\r\n\r\n"),
            StatusCode::BAD_REQUEST,
            "no Host"
        );
        assert!(
            parse(b"GET / HTTP/1.2\r\nHost: x\r\n", &limits())
                .unwrap()
                .is_none()
        );
        assert_eq!(status("GET / FOO/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET /\r\n\r\n"), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn long_request_lines_get_414() {
        let limits = Limits {
            max_request_line_bytes: 32,
            ..Limits::default()
        };
        // "GET /aa…a HTTP/1.1" is 32 bytes with a 19-byte path.
        let line = |path_len: usize| format!("GET /{} HTTP/1.1", "a".repeat(path_len - 1));
        assert_eq!(line(19).len(), 32);
        let fits = format!("{}\r\nHost: x\r\n\r\n", line(19));
        assert!(parse(fits.as_bytes(), &limits).unwrap().is_some());
        let over = format!("{}\r\nHost: x\r\n\r\n", line(20));
        assert_eq!(
            parse(over.as_bytes(), &limits).unwrap_err(),
            StatusCode::URI_TOO_LONG
        );
        // A bare LF ends the line too.
        let bare = format!("{}\nHost: x\n\n", line(20));
        assert_eq!(
            parse(bare.as_bytes(), &limits).unwrap_err(),
            StatusCode::URI_TOO_LONG
        );
        // Incomplete: undecided up to the limit and its CRLF, then 414.
        let start = line(40);
        assert!(parse(&start.as_bytes()[..33], &limits).unwrap().is_none());
        assert_eq!(
            parse(&start.as_bytes()[..34], &limits).unwrap_err(),
            StatusCode::URI_TOO_LONG
        );
        // A long header line is not the request line: 431 stays 431.
        let small = Limits {
            max_header_bytes: 64,
            ..limits
        };
        let header = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(64));
        assert_eq!(
            parse(header.as_bytes(), &small).unwrap_err(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn the_head_is_one_shared_copy_reused_once_dropped() {
        let raw = b"GET /path HTTP/1.1\r\nHost: example\r\nX-Long: abcdefgh\r\n\r\n";
        let mut store = BytesMut::with_capacity(raw.len() + 8);
        let head = super::parse(raw, &limits(), &mut store).unwrap().unwrap();
        // The target and the values point into one copy of the head.
        let host = head.request.headers()["host"].as_bytes().as_ptr() as usize;
        let long = head.request.headers()["x-long"].as_bytes().as_ptr() as usize;
        let path = head.request.uri().path().as_ptr() as usize;
        assert_eq!(
            host - path,
            raw.windows(7).position(|w| w == b"example").unwrap() - 4
        );
        assert_eq!(long - host, "example\r\nX-Long: ".len());
        // Dropped, its memory takes the next head (which no longer fits
        // behind it): no allocation.
        drop(head);
        let again = super::parse(raw, &limits(), &mut store).unwrap().unwrap();
        assert_eq!(
            again.request.headers()["host"].as_bytes().as_ptr() as usize,
            host
        );
        // Kept, it stays as it was while later heads go elsewhere.
        let kept = again.request.headers()["x-long"].clone();
        drop(again);
        for _ in 0..4 {
            let other = b"GET /other HTTP/1.1\r\nHost: elsewhere\r\nX-Long: zzzzzzzzzzzz\r\n\r\n";
            let head = super::parse(other, &limits(), &mut store).unwrap().unwrap();
            assert_eq!(head.request.headers()["x-long"], "zzzzzzzzzzzz");
            assert_eq!(head.request.uri().path(), "/other");
        }
        assert_eq!(kept, "abcdefgh");
    }

    #[test]
    fn more_fields_than_a_header_map_holds_are_431() {
        let limits = Limits {
            max_headers: 40_000,
            max_header_bytes: 1 << 20,
            ..Limits::default()
        };
        let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for _ in 0..30_000 {
            raw.extend_from_slice(b"a: b\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&raw, &limits).unwrap_err(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        // Under the map's bound, as many as the limit allows are fine.
        let fits = raw.len() - 25_000 * 6 - 2;
        let mut raw = raw[..fits].to_vec();
        raw.extend_from_slice(b"\r\n");
        let head = parse(&raw, &limits).unwrap().unwrap();
        assert_eq!(head.request.headers().get_all("a").iter().count(), 5_000);
    }

    #[test]
    fn status_lines() {
        for (status, line) in [
            (StatusCode::OK, "HTTP/1.1 200 OK\r\n"),
            (StatusCode::NOT_FOUND, "HTTP/1.1 404 Not Found\r\n"),
            (
                StatusCode::from_u16(599).unwrap(),
                "HTTP/1.1 599 Unknown\r\n",
            ),
        ] {
            let mut out = Vec::new();
            status_line(&mut out, status);
            assert_eq!(out, line.as_bytes());
        }
    }
}
