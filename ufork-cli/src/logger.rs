//! The CLI's logger: the only place in the workspace that picks one. Lines go
//! to the terminal (above the prompt) or, once set, to a log file sink.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ufork_io::Format;

use crate::term::{self, Stream};

static DELEGATE: std::sync::OnceLock<Box<dyn log::Log>> = std::sync::OnceLock::new();

/// The format of the pool's lines, once a pool set it up.
static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text; RFC 3339 timestamps unless `--no-timestamps`.
    Text,
    /// One JSON object per line.
    Json,
    /// Syslog level prefixes for journald, no timestamps.
    Journal,
}

/// `--log-level`: gunicorn's level names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Everything, with the details of each decision.
    Debug,
    /// Workers started, stopped, restarted; reloads, upgrades (the default).
    Info,
    /// Only what went wrong or may: crashes, kills, refusals.
    #[value(alias = "warn")]
    Warning,
    /// Only failures.
    Error,
    /// As `error` (gunicorn's most severe level; ufork logs none above error).
    Critical,
}

impl LogLevel {
    fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Warning => log::LevelFilter::Warn,
            LogLevel::Error | LogLevel::Critical => log::LevelFilter::Error,
        }
    }
}

/// Applies `--log-level` to the arbiter's and the workers' log lines (a
/// worker's own output is captured whatever its level, and so is the access
/// log).
pub fn set_level(level: LogLevel) {
    set_filter(level.filter());
}

/// The least severe line logged, as a `LevelFilter`'s number (Info).
static LEVEL: AtomicUsize = AtomicUsize::new(log::LevelFilter::Info as usize);

/// Logs lines down to `filter`. The `log` crate's own filter stays at info
/// or below, so that access lines (info, of their own target) reach the
/// logger whatever the level of the others.
fn set_filter(filter: log::LevelFilter) {
    LEVEL.store(filter as usize, Ordering::Relaxed);
    log::set_max_level(filter.max(log::LevelFilter::Info));
}

fn level_enabled(level: log::Level) -> bool {
    level as usize <= LEVEL.load(Ordering::Relaxed)
}

/// The format of the pool's lines from the flags: without `--log-format`,
/// the journal's when stderr is the systemd journal (and no log file is
/// written), text otherwise. Remembered for [`for_people`].
pub fn format(flag: Option<LogFormat>, no_timestamps: bool, log_file: bool) -> Format {
    let text = if no_timestamps {
        Format::Plain
    } else {
        Format::Timestamped
    };
    let format = match flag {
        Some(LogFormat::Text) => text,
        Some(LogFormat::Json) => Format::Json,
        Some(LogFormat::Journal) => Format::Journal,
        None if log_file => text,
        None => Format::journal_or(std::io::stderr(), text),
    };
    let _ = FORMAT.set(format);
    format
}

/// A line for people (a banner, a console reply) as the pool writes it: a
/// JSON object in JSON mode, so that every line of the output parses; as it
/// is otherwise.
pub fn for_people(text: &str) -> Vec<u8> {
    match FORMAT.get() {
        Some(&Format::Json) => Format::Json.line(log::Level::Info, text.trim_end_matches('\n')),
        _ => {
            let mut line = text.as_bytes().to_vec();
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            line
        }
    }
}

/// Hands every record to `log` from now on (ufork-io's arbiter logger, which
/// writes into a queue of the capture's: the arbiter sink's, or the
/// stderr sink's).
pub fn delegate(log: Box<dyn log::Log>) {
    let _ = DELEGATE.set(log);
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        level_enabled(metadata.level())
    }

    fn log(&self, record: &log::Record<'_>) {
        // `serve --access-log`: request lines go to their own file.
        if crate::access::log(record) {
            return;
        }
        if let Some(bytes) = capture_key(record, "abandoned_bytes") {
            // The capture's final flush gave up on a stalled stdout or
            // stderr: `finish` says it once, with what the terminal drops
            // and what the stall dropped before (whose notices may be
            // among what was given up on).
            ABANDONED.fetch_add(bytes, Ordering::Relaxed);
            if let Some(dropped) = capture_key(record, "dropped_bytes") {
                STALL_DROPPED.fetch_max(dropped, Ordering::Relaxed);
            }
            return;
        }
        if !self.enabled(record.metadata()) {
            return;
        }
        // Messages may quote text from workers (an exit message, say):
        // nothing in them may drive the terminal.
        let text = crate::commands::sanitize(&record.args().to_string());
        if let Some(delegate) = DELEGATE.get() {
            delegate.log(
                &log::Record::builder()
                    .args(format_args!("{text}"))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            );
            return;
        }
        let level = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        // Before a pool set its capture up (or without one), in the pool's
        // format once it is chosen.
        let line = match FORMAT.get() {
            Some(&Format::Json) => Format::Json.line(record.level(), &text),
            Some(format) => format.line(record.level(), &format!("[ufork] {level}{text}")),
            None => format!("[ufork] {level}{text}\n").into_bytes(),
        };
        term::print(Stream::Err, &line);
    }

    fn flush(&self) {}
}

/// Installs the logger (info and above, or what `UFORK_LOG` says).
pub fn init() {
    term::init();
    // Empty as unset (`UFORK_LOG=${UFORK_LOG}` in a compose file).
    let given = std::env::var("UFORK_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let level = given
        .as_deref()
        .map_or(Some(log::LevelFilter::Info), env_level);
    if log::set_logger(&LOGGER).is_ok() {
        set_filter(level.unwrap_or(log::LevelFilter::Info));
    }
    if level.is_none() {
        log::warn!(
            target: "ufork",
            "UFORK_LOG={}: not a level (debug, info, warning, error, critical, or trace, off); logging at info",
            given.unwrap_or_default()
        );
    }
}

/// `UFORK_LOG`'s value as a filter: `--log-level`'s names in any case
/// (`warn` too), and `trace` and `off`; `None` for anything else.
fn env_level(value: &str) -> Option<log::LevelFilter> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("trace") {
        return Some(log::LevelFilter::Trace);
    }
    if value.eq_ignore_ascii_case("off") {
        return Some(log::LevelFilter::Off);
    }
    <LogLevel as clap::ValueEnum>::from_str(value, true)
        .ok()
        .map(LogLevel::filter)
}

/// When the final flush must end: the stop's budget after it began.
static FLUSH_END: OnceLock<Instant> = OnceLock::new();

/// When the final flush began: the pool's loop had ended.
static FLUSH_BEGAN: OnceLock<Instant> = OnceLock::new();

/// Bytes of the workers' output the capture's final flush abandoned.
static ABANDONED: AtomicU64 = AtomicU64::new(0);

/// Bytes of the workers' output dropped during the run while the output
/// stalled (`--log-stall-timeout`), as the final flush counted them.
static STALL_DROPPED: AtomicU64 = AtomicU64::new(0);

/// The number under `key` in a record of ufork-io's (its final flush says
/// `abandoned_bytes` and `dropped_bytes`), if it is such a record.
fn capture_key(record: &log::Record<'_>, key: &str) -> Option<u64> {
    if record.target() != "ufork_io" {
        return None;
    }
    record
        .key_values()
        .get(log::kv::Key::from_str(key))?
        .to_u64()
}

/// How long a whole stop may take, from its start to the end of the final
/// flush: the graceful timeout plus 1 s (`None`, never, past what a
/// `Duration` holds).
pub fn stop_budget(graceful: Duration) -> Option<Duration> {
    graceful.checked_add(Duration::from_secs(1))
}

/// A layer that prepares the final flush: it notes when the stop began (the
/// flush ends [`stop_budget`] after it) and, once the loop has ended, gives
/// SIGINT and SIGTERM their default action, so a second Ctrl-C ends a flush
/// stalled on a full pipe at once — even when the shell started ufork with
/// SIGINT ignored. Add it before the capture: layers stop in order.
#[derive(Debug)]
pub struct FinalFlush {
    budget: Option<Duration>,
}

impl FinalFlush {
    /// For a pool with this graceful timeout.
    pub fn new(graceful: Duration) -> Self {
        Self {
            budget: stop_budget(graceful),
        }
    }
}

impl ufork_core::Layer for FinalFlush {
    fn stopping(&mut self, _ctx: &mut ufork_core::Context<'_>) {
        if let Some(end) = self.budget.and_then(|b| Instant::now().checked_add(b)) {
            let _ = FLUSH_END.set(end);
        }
    }

    fn stopped(&mut self) {
        let _ = FLUSH_BEGAN.set(Instant::now());
        if let Err(e) = ufork_io::default_stop_signals() {
            log::warn!("cannot restore the default action of SIGINT and SIGTERM: {e}");
        }
    }
}

/// Writes what the terminal has not taken yet, until `timeout` after the
/// final flush began (the capture's flush came first and counts: the
/// whole final wait is at most `timeout`) and no later than the stop's
/// budget allows, and says once how much output was lost and where it
/// stalled (on stderr, if that takes it now): what the capture's final
/// flush abandoned and what the terminal did not take, added up, and the
/// time the final flush waited in all.
pub fn finish(timeout: Duration) {
    let began = *FLUSH_BEGAN.get_or_init(Instant::now);
    let now = Instant::now();
    let timeout = timeout.saturating_sub(now.saturating_duration_since(began));
    let timeout = match FLUSH_END.get() {
        Some(end) => timeout.min(end.saturating_duration_since(now)),
        None => timeout,
    };
    let [out, err] = term::flush_within(timeout);
    let bytes = ABANDONED
        .load(Ordering::Relaxed)
        .saturating_add((out + err) as u64);
    if bytes > 0 {
        let stalled = match (out > 0, err > 0) {
            (true, true) => "stdout and stderr",
            (true, false) => "stdout",
            (false, true) => "stderr",
            // The terminal took all it had: what stalled was the
            // capture's own sink (a --log-file).
            (false, false) => "the output sink",
        };
        let before = STALL_DROPPED.load(Ordering::Relaxed);
        term::print(
            Stream::Err,
            dropped_line(bytes, stalled, began.elapsed(), before).as_bytes(),
        );
    }
}

/// What the end of a run says of the `bytes` of output that `stalled` (a
/// terminal, a pipe, a file) did not take in the `waited` the stop allowed,
/// and of the `before` bytes a stall dropped earlier in the run.
fn dropped_line(bytes: u64, stalled: &str, waited: Duration, before: u64) -> String {
    let mut line = if waited < Duration::from_millis(50) {
        // The stop's budget was spent before: "within 0.0s" says nothing.
        format!(
            "ufork: {bytes} bytes of output dropped at exit: {stalled} did not take them before the stop's time ran out"
        )
    } else {
        format!(
            "ufork: {bytes} bytes of output dropped at exit: {stalled} did not take them within {:.1}s",
            waited.as_secs_f64()
        )
    };
    if before > 0 {
        // Their `[ufork-io: dropped …]` notices may be among what the
        // output did not take.
        line.push_str(&format!(
            "; {before} bytes in all were dropped before, while the output stalled"
        ));
    }
    line.push('\n');
    line
}

/// UTC `YYYY-MM-DDTHH:MM:SSZ`, computed without a time zone database.
pub fn timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufork_log_takes_the_log_level_names_in_any_case() {
        assert_eq!(env_level("warning"), Some(log::LevelFilter::Warn));
        assert_eq!(env_level("WARNING"), Some(log::LevelFilter::Warn));
        assert_eq!(env_level("warn"), Some(log::LevelFilter::Warn));
        assert_eq!(env_level("Critical"), Some(log::LevelFilter::Error));
        assert_eq!(env_level("debug"), Some(log::LevelFilter::Debug));
        assert_eq!(env_level("trace"), Some(log::LevelFilter::Trace));
        assert_eq!(env_level("OFF"), Some(log::LevelFilter::Off));
        assert_eq!(env_level("bogus"), None);
        assert_eq!(env_level("warn ing"), None);
    }

    #[test]
    fn dropped_output_names_the_stream_and_rounds_the_wait() {
        // A pipe nobody reads is no terminal, and a budget cut short by the
        // stop reads as seconds, not as a Debug duration.
        assert_eq!(
            dropped_line(65520, "stdout", Duration::from_nanos(2_910_414_745), 0),
            "ufork: 65520 bytes of output dropped at exit: stdout did not take them within 2.9s\n"
        );
        // No time left: no "within 0.0s".
        assert_eq!(
            dropped_line(7, "stderr", Duration::from_millis(3), 0),
            "ufork: 7 bytes of output dropped at exit: stderr did not take them before the stop's time ran out\n"
        );
        // A stall dropped output before, whose notices may not have got out.
        assert_eq!(
            dropped_line(7, "stdout", Duration::from_secs(1), 4096),
            "ufork: 7 bytes of output dropped at exit: stdout did not take them within 1.0s; 4096 bytes in all were dropped before, while the output stalled\n"
        );
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(timestamp(at), "2023-11-14T22:13:20Z");
    }
}
