//! How a line is written: plain, with an RFC 3339 timestamp, with a syslog
//! level for journald, or as one JSON object.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::time::SystemTime;

use crate::Stream;
use crate::line::End;

/// How every line — a worker's and the arbiter's own — is written.
///
/// A worker line's time is when the arbiter read it from the worker's pipe
/// (one reading of the clock per read, shared by the lines in it); its level
/// is `info` for stdout (or both streams on one pipe) and `warning` for
/// stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// The prefix and the bytes: `[3 12345] hello` (the default).
    #[default]
    Plain,
    /// An RFC 3339 UTC timestamp in front:
    /// `2026-12-01T16:39:20.123Z [3 12345] hello`.
    Timestamped,
    /// A syslog level prefix journald reads, and no timestamp (the journal
    /// stamps each line itself): `<6>[3 12345] hello`, `<4>` for stderr.
    Journal,
    /// One JSON object per line:
    /// `{"time":"2026-12-01T16:39:20.123Z","level":"info","source":"worker","slot":3,"pid":12345,"stream":"stdout","message":"hello"}`.
    /// `source` is `"arbiter"` for the arbiter's records (`slot` and
    /// `stream` are `null` there); a piece of a split line has
    /// `"continues":true`, a last line without newline `"no_newline":true`.
    /// Invalid UTF-8 is replaced (JSON is text). The [`Prefix`](crate::Prefix)
    /// is not used.
    Json,
}

impl Format {
    /// [`Format::Journal`] when `JOURNAL_STREAM` names `fd` (systemd sets it
    /// to the `device:inode` of the journal stream it connected to stdout
    /// and stderr), `otherwise` when it does not.
    pub fn journal_or(fd: impl AsFd, otherwise: Format) -> Format {
        match std::env::var("JOURNAL_STREAM") {
            Ok(value) if journal_stream_is(&value, fd) => Format::Journal,
            _ => otherwise,
        }
    }
}

impl Format {
    /// One line of the arbiter's own, newline included, as [`ArbiterLog`]
    /// writes its records: `text` after the timestamp or syslog level, or as
    /// the `message` of a JSON object with `"source":"arbiter"` and this
    /// process' pid. For a program's messages that should read like the
    /// capture's lines (a banner, say).
    ///
    /// [`ArbiterLog`]: crate::ArbiterLog
    pub fn line(self, level: log::Level, text: &str) -> Vec<u8> {
        let level = Level::of_record(level);
        let stamp = match self {
            Format::Timestamped | Format::Json => stamp(SystemTime::now()),
            Format::Plain | Format::Journal => stamp(SystemTime::UNIX_EPOCH),
        };
        let mut out = Vec::with_capacity(text.len() + 32);
        if self == Format::Json {
            let pid = rustix::process::getpid().as_raw_nonzero().get();
            json_line(
                &stamp,
                level,
                Source::Arbiter { pid },
                &[text.as_bytes()],
                End::Newline,
                &mut out,
            );
        } else {
            head(self, &stamp, level, &mut out);
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
        out
    }
}

/// Whether `value` (`JOURNAL_STREAM`'s `device:inode`) names `fd`.
fn journal_stream_is(value: &str, fd: impl AsFd) -> bool {
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// A line's level, as journald and JSON name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

impl Level {
    pub(crate) fn of_record(level: log::Level) -> Self {
        match level {
            log::Level::Error => Self::Error,
            log::Level::Warn => Self::Warning,
            log::Level::Info => Self::Info,
            log::Level::Debug | log::Level::Trace => Self::Debug,
        }
    }

    pub(crate) fn of_stream(stream: Stream) -> Self {
        match stream {
            Stream::Stderr => Self::Warning,
            _ => Self::Info,
        }
    }

    fn syslog(self) -> &'static [u8] {
        match self {
            Self::Error => b"<3>",
            Self::Warning => b"<4>",
            Self::Info => b"<6>",
            Self::Debug => b"<7>",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
            Self::Debug => "debug",
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`: 24 bytes.
pub(crate) type Stamp = [u8; 24];

/// The RFC 3339 UTC timestamp of `at`, to the millisecond, computed without
/// a time zone database (Howard Hinnant's days-to-civil algorithm).
pub(crate) fn stamp(at: SystemTime) -> Stamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999);
    let mut text = String::with_capacity(24);
    let _ = write!(
        text,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
    let mut out = [b'0'; 24];
    out.copy_from_slice(&text.as_bytes()[..24]);
    out
}

/// Who wrote a line, for the formats that say it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    Worker {
        slot: usize,
        pid: i32,
        stream: Stream,
    },
    Arbiter {
        pid: i32,
    },
}

/// Appends what goes before the prefix (timestamp, syslog level).
pub(crate) fn head(format: Format, stamp: &Stamp, level: Level, out: &mut Vec<u8>) {
    match format {
        Format::Plain | Format::Json => {}
        Format::Timestamped => {
            out.extend_from_slice(stamp);
            out.push(b' ');
        }
        Format::Journal => out.extend_from_slice(level.syslog()),
    }
}

/// Appends one whole JSON line (newline included) for `message`.
pub(crate) fn json_line(
    stamp: &Stamp,
    level: Level,
    source: Source,
    message: &[&[u8]],
    ending: End,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(stamp);
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(level.name().as_bytes());
    let mut text = String::new();
    match source {
        Source::Worker { slot, pid, stream } => {
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
                Stream::Combined => "stdout+stderr",
            };
            let _ = write!(
                text,
                "\",\"source\":\"worker\",\"slot\":{slot},\"pid\":{pid},\"stream\":\"{stream}\",\"message\":\""
            );
        }
        Source::Arbiter { pid } => {
            let _ = write!(
                text,
                "\",\"source\":\"arbiter\",\"slot\":null,\"pid\":{pid},\"stream\":null,\"message\":\""
            );
        }
    }
    out.extend_from_slice(text.as_bytes());
    for part in message {
        escape(&String::from_utf8_lossy(part), out);
    }
    out.push(b'"');
    match ending {
        End::Newline => {}
        End::Continues => out.extend_from_slice(b",\"continues\":true"),
        End::NoNewline => out.extend_from_slice(b",\"no_newline\":true"),
    }
    out.extend_from_slice(b"}\n");
}

/// Appends `text` as the inside of a JSON string.
fn escape(text: &str, out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let escaped: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => None,
            _ => continue,
        };
        out.extend_from_slice(&text.as_bytes()[start..i]);
        match escaped {
            Some(e) => out.extend_from_slice(e),
            None => {
                let _ = write!(Bytes(out), "\\u{:04x}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&text.as_bytes()[start..]);
}

/// `fmt::Write` into a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_are_rfc3339_utc_to_the_millisecond() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        assert_eq!(&stamp(at), b"2023-11-14T22:13:20.042Z");
        assert_eq!(&stamp(SystemTime::UNIX_EPOCH), b"1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(&stamp(leap), b"2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_lines_escape_quotes_controls_and_invalid_utf8() {
        let mut out = Vec::new();
        let source = Source::Worker {
            slot: 3,
            pid: 42,
            stream: Stream::Stderr,
        };
        let stamp = stamp(SystemTime::UNIX_EPOCH);
        json_line(
            &stamp,
            Level::Warning,
            source,
            &[b"say \"hi\"\t\\ \x01", b"\xff!"],
            End::Continues,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"level\":\"warning\",\"source\":\"worker\",\
             \"slot\":3,\"pid\":42,\"stream\":\"stderr\",\"message\":\"say \\\"hi\\\"\\t\\\\ \\u0001\u{fffd}!\",\
             \"continues\":true}\n"
        );
    }

    #[test]
    fn the_journal_is_recognised_by_device_and_inode() {
        let file = std::fs::File::open("/").unwrap();
        let st = rustix::fs::fstat(&file).unwrap();
        assert!(journal_stream_is(
            &format!("{}:{}", st.st_dev, st.st_ino),
            &file
        ));
        assert!(!journal_stream_is(
            &format!("{}:{}", st.st_dev, st.st_ino + 1),
            &file
        ));
        assert!(!journal_stream_is("garbage", &file));
    }
}
