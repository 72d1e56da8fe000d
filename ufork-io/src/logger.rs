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

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::time::Duration;

    use ufork_core::{Arbiter, ChildInfo, Context, ExitRecord, ExitStatus, Layer, Spawn};

    use super::*;
    use crate::{Capture, Sink};

    /// Makes another thread hold the capture queue's lock across every fork,
    /// and logs through the arbiter's logger in the child before the capture
    /// layer has set the child up: the worst moment for a child to need it.
    struct HoldAcrossFork {
        lock: Sender<()>,
        locked: Receiver<()>,
        release: Sender<()>,
        logger: ArbiterLog,
    }

    impl Layer for HoldAcrossFork {
        fn prepare(&mut self, _slot: usize, _generation: u32) -> std::io::Result<()> {
            let _ = self.lock.send(());
            let _ = self.locked.recv();
            Ok(())
        }

        fn fork_failed(&mut self, _slot: usize) {
            let _ = self.release.send(());
        }

        fn in_child(&mut self, _child: &ChildInfo) -> std::io::Result<()> {
            log::Log::log(
                &self.logger,
                &log::Record::builder()
                    .args(format_args!("logged in the child"))
                    .level(log::Level::Info)
                    .target("test")
                    .build(),
            );
            Ok(())
        }

        fn spawned(&mut self, _spawn: &Spawn, _ctx: &mut Context<'_>) {
            let _ = self.release.send(());
        }

        fn exited(&mut self, _record: &ExitRecord, ctx: &mut Context<'_>) {
            ctx.handle().stop();
        }
    }

    #[test]
    fn a_child_never_takes_the_queue_lock_it_may_inherit_held() {
        let capture = Capture::builder()
            .sink(Sink::writer(std::io::sink()))
            .build()
            .expect("capture");
        let queue = Arc::clone(&capture.logger().queue);
        let (lock, lock_rx) = channel::<()>();
        let (locked_tx, locked) = channel();
        let (release, release_rx) = channel::<()>();
        let holder = std::thread::spawn(move || {
            for () in lock_rx {
                let _held = queue.lock();
                let _ = locked_tx.send(());
                let _ = release_rx.recv();
            }
        });
        let hold = HoldAcrossFork {
            lock,
            locked,
            release,
            logger: capture.logger(),
        };
        let arbiter = Arbiter::builder()
            .workers(1)
            .handle_signals(false)
            .graceful_timeout(Duration::from_secs(1))
            .layer(hold)
            .layer(capture)
            .build()
            .expect("build");
        // A child stuck on the lock never exits by itself: stop it (SIGTERM,
        // then SIGKILL) after a generous deadline, and the test fails below.
        let handle = arbiter.handle();
        let (done, finished) = channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(Duration::from_secs(20)).is_err() {
                handle.stop();
            }
        });
        let outcome = arbiter
            .run(|_worker| -> std::io::Result<()> { Ok(()) })
            .expect("run");
        let _ = done.send(());
        watchdog.join().expect("watchdog");
        assert_eq!(
            outcome.history.first().map(|r| r.status),
            Some(ExitStatus::Code(0)),
            "{:?}",
            outcome.history
        );
        // The layers (and their channel ends) are gone with the arbiter.
        holder.join().expect("holder");
    }
}
