//! The arbiter's own messages through the capture's sink.

use std::fmt::{self, Write as _};
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::sink::Queue;

/// A [`log::Log`] that writes the arbiter's records as lines into the same
/// queue as the workers' output, so an arbiter message never lands in the
/// middle of a worker's line. Made by [`Capture::logger`](crate::Capture::logger);
/// install it yourself (`log::set_boxed_logger`) — a library does not pick
/// the logger.
///
/// Lines look like `[arbiter] worker 3 pid 12345 started` (levels other than
/// info are named: `[arbiter] warning: ...`), key-values appended as
/// ` key=value`. In a forked worker the same logger writes to the
/// worker's stderr directly (which the capture prefixes like any other line):
/// the queue belongs to the arbiter.
///
/// Do not combine it with [`Sink::log`](crate::Sink::log): the records would
/// go round in a circle; arbiter lines then go to stderr instead.
pub struct ArbiterLog {
    pub(crate) queue: Arc<Queue>,
    pub(crate) prefix: String,
    pub(crate) level: log::LevelFilter,
    pub(crate) format: crate::Format,
}

impl fmt::Debug for ArbiterLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArbiterLog")
            .field("prefix", &self.prefix)
            .field("level", &self.level)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl ArbiterLog {
    /// The text before each arbiter line (default `"[arbiter] "`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most verbose level written (default `Info`). Also pass it to
    /// `log::set_max_level`.
    pub fn level(mut self, level: log::LevelFilter) -> Self {
        self.level = level;
        self
    }

    /// Formats a record as one line, newline included.
    fn line(&self, record: &log::Record<'_>) -> Vec<u8> {
        struct Kv<'a>(&'a mut String);
        impl<'kvs> log::kv::VisitSource<'kvs> for Kv<'_> {
            fn visit_pair(
                &mut self,
                key: log::kv::Key<'kvs>,
                value: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                let _ = write!(self.0, " {key}={value}");
                Ok(())
            }
        }
        let mut message = String::with_capacity(80);
        let _ = write!(message, "{}", record.args());
        let _ = record.key_values().visit(&mut Kv(&mut message));
        // One record is one line, whatever the message holds.
        let message = message.replace('\n', " ");
        if self.format == crate::Format::Json {
            // Slot, pid and level are fields there; the prefix is not needed.
            return self.format.line(record.level(), &message);
        }
        let label = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            log::Level::Info => "",
            log::Level::Debug => "debug: ",
            log::Level::Trace => "trace: ",
        };
        let text = format!("{}{label}{message}", self.prefix);
        self.format.line(record.level(), &text)
    }
}

impl log::Log for ArbiterLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.line(record);
        if !self.queue.in_owner() {
            // In a worker (or anything else forked from the arbiter): its
            // stderr is the capture pipe. Neither the queue's lock nor std's
            // stderr lock is taken: a thread of the arbiter may have held
            // either at the fork, and nothing here would ever release it.
            let _ = crate::sink::write_fd(std::io::stderr().as_fd(), &line);
        } else {
            self.queue.push_arbiter(line);
        }
    }

    fn flush(&self) {
        // The writer thread flushes after every batch.
    }
}
