//! The access log: one line per answered request, in a chosen format, to a
//! chosen sink.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::date::civil_from_days;
use crate::serve::Peer;

/// How access lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessFormat {
    /// The short line of [`Builder::access_log`](crate::Builder::access_log),
    /// for a logger that stamps the time itself: client address and port,
    /// quoted request line, status, body bytes, duration
    /// (`127.0.0.1:57348 "GET / HTTP/1.1" 200 41 0.573ms`).
    Brief,
    /// The Common Log Format:
    /// `127.0.0.1 - - [01/Dec/2026:17:35:53 +0000] "GET / HTTP/1.1" 200 41`.
    #[default]
    Common,
    /// The Combined Log Format: Common plus the quoted `Referer` and
    /// `User-Agent`, then the duration in microseconds.
    Combined,
    /// One JSON object per line: `time` (RFC 3339, UTC, microseconds),
    /// `client`, `request`, `status`, `bytes`, `duration_us`, `referer`,
    /// `user_agent`.
    Json,
}

/// Where access lines go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessSink {
    /// Through the `log` facade at info level, target
    /// `ufork_wsgi_like::access` (the host program's logger decides).
    #[default]
    Log,
    /// Straight to the worker's standard output, one `write(2)` per line.
    Stdout,
    /// Appended to this file, opened (and created, mode 0640) in the
    /// arbiter before the fork, so every worker writes the same file; one
    /// `write(2)` per line on an `O_APPEND` file, so lines of several
    /// workers never interleave.
    File(PathBuf),
}

/// The access log's settings; see [`Builder::access_log_to`](crate::Builder::access_log_to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLog {
    /// The line format.
    pub format: AccessFormat,
    /// The destination.
    pub sink: AccessSink,
}

/// An open sink, shared by a worker's threads.
#[derive(Clone, Debug)]
pub(crate) enum Writer {
    Log,
    Stdout,
    File(Arc<File>),
}

impl Writer {
    /// Opens the sink (in the arbiter, before any fork).
    pub(crate) fn open(sink: &AccessSink) -> io::Result<Self> {
        Ok(match sink {
            AccessSink::Log => Self::Log,
            AccessSink::Stdout => Self::Stdout,
            AccessSink::File(path) => Self::File(Arc::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)?,
            )),
        })
    }

    /// Writes one line (`line` has no newline yet; one is added).
    fn write(&self, line: &mut String) {
        match self {
            Self::Log => log::info!(target: "ufork_wsgi_like::access", "{line}"),
            Self::Stdout => {
                line.push('\n');
                let _ = rustix::io::write(rustix::stdio::stdout(), line.as_bytes())
                    .map_err(io::Error::from)
                    .and_then(|n| partial(n, line));
            }
            Self::File(file) => {
                line.push('\n');
                let _ = (&**file).write_all(line.as_bytes());
            }
        }
    }
}

/// Writes what a first `write(2)` left (a pipe may take a line in parts).
fn partial(written: usize, line: &str) -> io::Result<()> {
    if written < line.len() {
        io::stdout().write_all(&line.as_bytes()[written..])?;
    }
    Ok(())
}

/// One answered request, as the access log sees it.
pub(crate) struct Entry<'a> {
    pub(crate) at: SystemTime,
    pub(crate) peer: &'a Peer,
    /// The request line, `-` if none was read.
    pub(crate) line: &'a str,
    /// 0 when the response could not be written.
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) took: Duration,
    pub(crate) referer: Option<&'a str>,
    pub(crate) user_agent: Option<&'a str>,
}

/// Formats and writes access lines for one serving thread.
#[derive(Debug)]
pub(crate) struct AccessLogger {
    format: AccessFormat,
    writer: Writer,
    line: String,
}

impl AccessLogger {
    pub(crate) fn new(format: AccessFormat, writer: Writer) -> Self {
        Self {
            format,
            writer,
            line: String::with_capacity(256),
        }
    }

    /// Whether the format needs the request's `Referer` and `User-Agent`.
    pub(crate) fn wants_agent(&self) -> bool {
        self.format != AccessFormat::Common
    }

    pub(crate) fn log(&mut self, entry: &Entry<'_>) {
        self.line.clear();
        format_entry(&mut self.line, self.format, entry);
        self.writer.write(&mut self.line);
    }
}

pub(crate) fn format_entry(out: &mut String, format: AccessFormat, e: &Entry<'_>) {
    let host = e.peer.host();
    let host = host.as_str();
    match format {
        AccessFormat::Brief => {
            let _ = write!(out, "{}", e.peer);
            out.push_str(" \"");
            escaped(out, e.line);
            let _ = write!(
                out,
                "\" {} {} {:.3}ms",
                e.status,
                e.bytes,
                e.took.as_secs_f64() * 1000.0
            );
        }
        AccessFormat::Common | AccessFormat::Combined => {
            let _ = write!(out, "{host} - - [");
            clf_time(out, e.at);
            out.push_str("] \"");
            escaped(out, e.line);
            let _ = write!(out, "\" {} ", e.status);
            if e.bytes == 0 {
                out.push('-');
            } else {
                let _ = write!(out, "{}", e.bytes);
            }
            if format == AccessFormat::Combined {
                for value in [e.referer, e.user_agent] {
                    out.push_str(" \"");
                    escaped(out, value.unwrap_or("-"));
                    out.push('"');
                }
                let _ = write!(out, " {}", e.took.as_micros());
            }
        }
        AccessFormat::Json => {
            out.push_str("{\"time\":\"");
            rfc3339(out, e.at);
            out.push_str("\",\"client\":");
            json_str(out, host);
            out.push_str(",\"request\":");
            json_str(out, e.line);
            let _ = write!(
                out,
                ",\"status\":{},\"bytes\":{},\"duration_us\":{},\"referer\":",
                e.status,
                e.bytes,
                e.took.as_micros()
            );
            json_opt(out, e.referer);
            out.push_str(",\"user_agent\":");
            json_opt(out, e.user_agent);
            out.push('}');
        }
    }
}

/// Seconds and microseconds since the epoch, and the civil date and time.
fn split(at: SystemTime) -> ((i64, u32, u32), (u64, u64, u64), u32) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    (
        civil_from_days(days),
        (rem / 3600, rem % 3600 / 60, rem % 60),
        since.subsec_micros(),
    )
}

/// `01/Dec/2026:17:35:53 +0000`
fn clf_time(out: &mut String, at: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let ((year, month, day), (h, m, s), _) = split(at);
    let month = MONTHS[(month as usize).clamp(1, 12) - 1];
    let _ = write!(out, "{day:02}/{month}/{year:04}:{h:02}:{m:02}:{s:02} +0000");
}

/// `2026-12-01T17:35:53.123456Z`
fn rfc3339(out: &mut String, at: SystemTime) {
    let ((year, month, day), (h, m, s), micros) = split(at);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{micros:06}Z"
    );
}

/// Copies `text` with `"`, `\` and control characters escaped as `\xHH`
/// (`\"`, `\\`), so a client cannot forge or break a line.
fn escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

fn json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt(out: &mut String, text: Option<&str>) {
    match text {
        Some(t) => json_str(out, t),
        None => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PEER: Peer = Peer::Tcp(std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        5000,
    )));

    fn entry(line: &str) -> Entry<'_> {
        Entry {
            at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            peer: &PEER,
            line,
            status: 200,
            bytes: 41,
            took: Duration::from_micros(573),
            referer: None,
            user_agent: Some("curl/8 \"x\""),
        }
    }

    fn text(format: AccessFormat, e: &Entry<'_>) -> String {
        let mut out = String::new();
        format_entry(&mut out, format, e);
        out
    }

    #[test]
    fn formats() {
        let e = entry("GET / HTTP/1.1");
        assert_eq!(
            text(AccessFormat::Brief, &e),
            "127.0.0.1:5000 \"GET / HTTP/1.1\" 200 41 0.573ms"
        );
        assert_eq!(
            text(AccessFormat::Common, &e),
            "127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"GET / HTTP/1.1\" 200 41"
        );
        assert_eq!(
            text(AccessFormat::Combined, &e),
            "127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"GET / HTTP/1.1\" 200 41 \"-\" \"curl/8 \\\"x\\\"\" 573"
        );
        assert_eq!(
            text(AccessFormat::Json, &e),
            "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"client\":\"127.0.0.1\",\"request\":\"GET / HTTP/1.1\",\"status\":200,\"bytes\":41,\"duration_us\":573,\"referer\":null,\"user_agent\":\"curl/8 \\\"x\\\"\"}"
        );
    }

    #[test]
    fn hostile_request_lines_cannot_break_a_line() {
        let e = entry("GET /\"\n\x1b[2J HTTP/1.1");
        let common = text(AccessFormat::Common, &e);
        assert!(
            common.contains("\"GET /\\\"\\x0a\\x1b[2J HTTP/1.1\""),
            "{common}"
        );
        let json = text(AccessFormat::Json, &e);
        assert!(
            json.contains("\"GET /\\\"\\u000a\\u001b[2J HTTP/1.1\""),
            "{json}"
        );
    }
}
