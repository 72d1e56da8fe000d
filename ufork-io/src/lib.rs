//! Capture of every worker's stdout and stderr into the arbiter, as a
//! [`ufork_core::Layer`]: whole lines, prefixed with the worker that wrote
//! them, never lost, never blocking supervision.
//!
//! Per worker, [`Capture`] makes a pipe before the fork; in the child its
//! write end is `dup2`-ed onto fds 1 and 2 (two pipes with
//! [`CaptureBuilder::split_streams`]), in the arbiter its read end is
//! non-blocking, close-on-exec and registered in the arbiter's own `poll`
//! loop — no reader threads. Bytes are assembled into lines per pipe, each
//! line gets its prefix (`[3 12345] ` by default, see [`Prefix`]) and goes to
//! the [`Sink`]: the arbiter's stdout, any `Write`, or the `log` facade.
//!
//! - Lines of different workers never mix: only whole lines reach the sink.
//! - A last line without newline is flushed, ending in [`NO_NEWLINE`], when
//!   its worker exits; a line longer than [`CaptureBuilder::max_line`] is cut
//!   into pieces ending in [`CONTINUES`], never dropped.
//! - Bytes pass through unchanged, invalid UTF-8 included (except into the
//!   `log` facade, whose messages are text).
//! - What a worker wrote before it died — a panic message, a line just before
//!   SIGKILL — still appears: when a worker is reaped its pipe is read to the
//!   end. The arbiter polls layer descriptors until every worker is reaped, so
//!   all output of a graceful stop appears too.
//! - The arbiter's own messages can go through the same sink, between whole
//!   worker lines: install [`Capture::logger`] as the logger.
//! - [`CaptureBuilder::format`] writes every line plain (the default), with
//!   an RFC 3339 timestamp, with a syslog `<N>` level for journald
//!   ([`Format::journal_or`] detects `JOURNAL_STREAM`), or as one JSON object
//!   (time, level, source, slot, pid, stream, message).
//! - Workers' stdin stays /dev/null unless [`CaptureBuilder::stdin_pipe`]:
//!   then [`StdinHandle::send`] writes to a slot's stdin (uFork's
//!   `Worker.send`).
//!
//! # A slow sink, and why there is a writer thread
//!
//! By default nothing is lost: when the sink falls behind, workers block on
//! their full pipes. The arbiter, though, must go on reaping, respawning and
//! honouring a stop while a sink is stalled (a frozen terminal, a full disk, a
//! pipe nobody reads). A `write` to an arbitrary `Write` cannot be made
//! non-blocking, and setting `O_NONBLOCK` on the arbiter's stdout would change
//! it for every process sharing the terminal. So the arbiter's thread never
//! writes to the sink: it queues whole lines (a bounded queue,
//! [`CaptureBuilder::queue_bytes`]) for a writer thread. When the queue is
//! full the arbiter stops polling the worker pipes that feed it
//! (back-pressure: workers block in `write`), and the writer wakes it through
//! a pipe registered in the loop once the queue is half empty. With
//! [`CaptureBuilder::lossy`], lines
//! are dropped instead and counted: the sink reads
//! `[ufork-io: dropped 1234 bytes from worker 3 (pid 12345)]` where they were
//! (`(pid 12345), stdout]` or `, stderr]` when the streams are split: each
//! pipe reports its own).
//! With [`CaptureBuilder::stall_timeout`], back-pressure lasts only while the
//! sink keeps taking bytes: once it has taken nothing for that long with the
//! queue full, lines are dropped (and counted, the same way) until it takes
//! some again, so a log reader that stopped reading cannot hold the workers
//! up for ever (an HTTP worker blocked on its access log serves nobody).
//!
//! A sink whose writes fail (a full disk, a closed pipe, a `Write` that
//! returns an error or takes nothing) loses the lines of those writes; they
//! are counted ([`Counters::write_errors`]) and reported: a warning through
//! the `log` facade (target `ufork_io`) —
//! `worker output: sink write failed (N times, M bytes lost): <error>` — at
//! the first failure, then at most once per 10 s with the failures since the
//! last one, and once more when the writer ends. The same line goes to the
//! arbiter's stderr (fd 2, only if it can take it without blocking) unless
//! the sink is stderr itself, since the logger may write into the failing
//! sink ([`Capture::logger`]); a warning that comes back into the sink and
//! fails is only counted, so the report cannot feed itself.
//!
//! The threads make the arbiter process multi-threaded while it forks. That
//! is sound here because the child touches nothing a writer may hold: it
//! only `dup2`s its pipe descriptors; each queue remembers the pid of the
//! process that built it, and [`ArbiterLog`] in any other process (a worker,
//! whatever it forks) writes to its own stderr instead of taking a queue's
//! lock; the stdout and stderr sinks write to fds 1 and 2 without std's stdio
//! lock (which a worker's `println!` needs); and with a `log` sink, forks
//! wait until every writer is out of the logger. The threads start in
//! [`CaptureBuilder::build`], before `run`.
//!
//! # A sink per stream, each with its own queue and thread
//!
//! [`CaptureBuilder::stderr_sink`] sends the arbiter's lines and the workers'
//! stderr (with [`CaptureBuilder::split_streams`]) to a second sink, as a
//! terminal wants them, through a queue and writer thread of its own
//! ([`CaptureBuilder::arbiter_sink`] gives the arbiter's lines a third). So
//! everything above holds per sink: a stdout nobody reads (`ufork serve
//! --access-log - 2>err.log | (sleep 60)`) pauses only the workers' stdout
//! pipes, and past the stall timeout drops only their stdout, while their
//! stderr — tracebacks, errors — goes on reaching a stderr that takes it,
//! whole and undropped; and the other way round. A drop notice goes to the
//! sink of the stream whose lines were dropped. The two sinks are written
//! independently, so their relative order is not kept (it was never
//! defined between two pipes); when both are the arbiter's own fds
//! ([`Sink::stdout`], [`Sink::stderr`]) onto one file (`2>&1`, one
//! terminal), one writer serves both, so a line longer than `PIPE_BUF` is
//! never spliced with another (and stdout stalled is then stderr stalled).
//! Two writers given to [`Sink::writer`] that lead to one file must keep
//! lines whole against each other's writes themselves.
//!
//! # Examples
//!
//! ```no_run
//! use std::io::Write;
//! use ufork_core::Arbiter;
//! use ufork_io::{Capture, Sink};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = std::fs::File::create("workers.log")?;
//! let capture = Capture::builder().sink(Sink::writer(file)).build()?;
//! // The arbiter's own records go to the same file, between whole lines.
//! log::set_boxed_logger(Box::new(capture.logger()))?;
//! log::set_max_level(log::LevelFilter::Info);
//! Arbiter::builder()
//!     .workers(4)
//!     .layer(capture)
//!     .build()?
//!     .run(|worker| -> std::io::Result<()> {
//!         // Reaches workers.log as "[2 12345] hello from 2".
//!         writeln!(std::io::stdout(), "hello from {}", worker.slot())?;
//!         worker.wait_for_stop(None);
//!         Ok(())
//!     })?;
//! # Ok(())
//! # }
//! ```
//!
//! # In the worker
//!
//! A worker's stdout is a pipe. Rust's `stdout()` is line-buffered (std's
//! `LineWriter`) whatever it points at, so each `println!` is one `write` and
//! reaches the arbiter at once; a `print!` without newline waits in std's
//! buffer until a newline or a flush (and is flushed when the worker ends
//! normally: core flushes stdio before `_exit`). The pipes are `dup2`-ed in
//! [`Layer::in_child`](ufork_core::Layer::in_child), before the post-fork hook
//! and the worker function run, so everything they print is captured.
//!
//! # Features
//!
//! None: the `log` sink and [`ArbiterLog`] use the `log` crate the workspace
//! already builds with its `kv` feature.
//!
//! # Limitations
//!
//! - A worker's grandchildren inherit its pipe; what they write after the
//!   worker was reaped is not read (the pipe is closed then).
//! - With back-pressure (the default) a worker blocked on its full pipe cannot
//!   react to SIGTERM until the sink catches up; a stop then ends with SIGKILL
//!   at the graceful timeout, and what the worker wrote is still delivered.
//! - At the end of `run`, the capture waits for the writers to hand
//!   everything to their sinks, all at once and each at its own sink's pace
//!   ([`CaptureBuilder::flush_timeout`] and [`CaptureBuilder::stop_timeout`]
//!   bound the whole wait; with a [`CaptureBuilder::stderr_sink`] the
//!   workers' stderr never waits behind a stalled stdout, nor with
//!   [`CaptureBuilder::arbiter_sink`] the arbiter's lines behind either).
//! - Do not pass `std::io::stdout()`/`stderr()` to [`Sink::writer`] (use
//!   [`Sink::stdout`]), nor a writer whose lock workers also take: the writer
//!   thread may hold it at a fork, and the worker would inherit it locked.
//! - Under `cargo test` without `--nocapture`, libtest captures `print!` and
//!   panic output of a test thread in memory; a worker forked from a test
//!   thread inherits that capture, so its `println!` never reaches fd 1.
//!   Write through `std::io::stdout()` in such tests.
//! - Linux only, like ufork-core.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod capture;
mod error;
mod format;
mod line;
mod logger;
mod sink;
mod stdin;
mod sys;

pub use capture::{
    CONTINUES, Capture, CaptureBuilder, DEFAULT_MAX_LINE, DEFAULT_QUEUE_BYTES, LineInfo,
    NO_NEWLINE, Prefix,
};
pub use error::{Error, Result};
pub use format::Format;
pub use logger::ArbiterLog;
pub use sink::{Counters, Sink, Stream, one_file};
pub use stdin::StdinHandle;
pub use sys::default_stop_signals;
