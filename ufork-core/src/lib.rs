//! A pre-forking process arbiter: load your application once, fork N workers
//! from it, keep exactly that many alive and healthy, stop them cleanly, and get
//! control back.
//!
//! The [`Arbiter`] forks the pool after the caller has loaded its state, then
//! supervises it from a single-threaded, event-driven loop (`poll(2)` over a
//! signal self-pipe, one pidfd per worker, a wake pipe for the [`Handle`] and
//! the descriptors of [`Layer`]s). A dead worker is reaped and replaced at once;
//! a worker that stops heartbeating is killed and replaced; Ctrl-C or SIGTERM
//! stops every worker and `run` returns an [`Outcome`].
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use ufork_core::Arbiter;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let outcome = Arbiter::builder()
//!     .workers(4)
//!     .heartbeat_timeout(Duration::from_secs(30))
//!     .build()?
//!     .run(|worker| -> Result<(), std::io::Error> {
//!         while !worker.wait_for_stop(Some(Duration::from_secs(1))) {
//!             worker.heartbeat();
//!             println!("worker {} is alive", worker.slot());
//!         }
//!         Ok(())
//!     })?;
//! println!("stopped by {:?}; {} exits recorded", outcome.cause, outcome.history.len());
//! # Ok(())
//! # }
//! ```
//!
//! # Signals
//!
//! While `run` is in its loop (unless [`Builder::handle_signals`] is off):
//! SIGINT and SIGTERM stop gracefully (a second SIGINT stops at once), SIGQUIT
//! stops at once, SIGHUP restarts every worker one at a time, SIGTTIN and
//! SIGTTOU add and remove a worker, SIGUSR1 asks layers to reopen logs, SIGUSR2
//! starts an in-place upgrade when an [`upgrade::Upgrader`] is a layer (else it
//! is logged and ignored), SIGWINCH, which gunicorn and unicorn take as
//! "stop the workers", is logged and ignored (a terminal's resize silently),
//! and SIGALRM, SIGPWR, SIGIO, SIGVTALRM and SIGPROF, whose default would kill
//! the arbiter, are logged and ignored. The previous dispositions are restored
//! when `run` returns.
//!
//! In a worker, signal dispositions are reset as `exec` would (handlers back to
//! default, ignored signals stay ignored), SIGINT is ignored (Ctrl-C in a
//! terminal reaches the whole process group; the arbiter orchestrates the
//! stop), and SIGTERM sets [`Worker::should_stop`] and wakes [`Worker::stop_fd`].
//!
//! # Async workers
//!
//! An async runtime works inside workers and is never required. The pattern,
//! shown whole (axum on tokio) in `examples/async_tokio.rs` and driven end to
//! end by its tests:
//!
//! - **Bind before the fork, build the runtime after it.**
//!   [`listen::Listeners`] binds (or takes from socket activation) in the
//!   arbiter; each worker takes its own handles with
//!   [`Listeners::for_worker`](listen::Listeners::for_worker), owned std
//!   listeners that `tokio::net::TcpListener::from_std` accepts. The runtime
//!   is built inside the worker function: `fork` copies only the calling
//!   thread, so a multi-thread runtime built before it has none of its worker
//!   threads in the child, and tasks spawned on it never run.
//! - **One current-thread runtime per worker, workers = cores.** The pool is
//!   the parallelism: each worker is one thread on one runtime, so nothing is
//!   shared or stolen between cores, and the heartbeat below means something.
//! - **Heartbeat from a task on that runtime.** A task that calls
//!   [`Vitals::heartbeat`] in a loop (clone [`Worker::vitals`] into it) proves
//!   that the runtime's scheduler turns, not that every handler makes
//!   progress. On a current-thread runtime the handlers run on that same
//!   thread, so a handler that blocks it (a blocking call, a long computation
//!   without an `.await`) stops the heartbeat too, and the arbiter kills the
//!   worker at the hang timeout ([`Builder::heartbeat_timeout`]), the exit
//!   record naming the request it was busy with. On a multi-thread runtime
//!   the beat comes from whichever thread is free, which proves less.
//! - **Ready when serving**: [`Builder::ready_on_start`]`(false)` and
//!   [`Vitals::ready`] once the listeners are in the runtime.
//! - **Stop on the stop notification**: [`Worker::stop_notifier`] is an owned
//!   descriptor that `tokio::net::unix::pipe::Receiver::from_owned_fd` waits
//!   on without `unsafe`; as axum's graceful-shutdown signal it stops the
//!   accepting, the requests in flight finish, the worker function returns
//!   and the worker exits 0.
//! - **Busy, idle and activity with concurrent requests**: a worker is busy
//!   while at least one request is in flight (busy-since is when it went from
//!   none to one) and idle when none is; the activity is the latest request
//!   line; each request is counted as it leaves the worker. A middleware with
//!   an in-flight counter does it (the example's `track`).
//!
//! # Features
//!
//! - `rng`: [`Worker::rng`], a ChaCha20 generator per worker, seeded from OS
//!   entropy mixed with slot and generation. Forked workers share their
//!   parent's RNG state otherwise: rand's `ThreadRng` does not reseed on fork,
//!   so reseed your own generators in a [`Builder::post_fork`] hook.
//!
//! # Limitations
//!
//! Linux only (pidfds, `PR_SET_PDEATHSIG`, /proc). Forking is only sound while
//! the process has one thread; see [`Arbiter::spawn_thread`] for the caveat when
//! it has more. One arbiter per process handles signals at a time.
//!
//! Under `cargo test` (without `--nocapture`), libtest captures `print!` output
//! of the test thread in memory; a worker forked from that thread inherits the
//! capture, so its `println!` never reaches fd 1. Tests that need a worker's
//! output should write to the file descriptor directly or run under nextest.
#![deny(unsafe_code)]
#![deny(missing_docs)]
// Durations, deadlines and counts never wrap or panic: checked or
// saturating arithmetic, `try_from` conversions (issue 10).
#![deny(clippy::cast_possible_truncation, clippy::arithmetic_side_effects)]

mod arbiter;
mod child;
mod error;
mod exit;
mod handle;
mod layer;
pub mod listen;
mod monitor;
mod notes;
mod proc;
mod schedule;
mod scoreboard;
mod sys;
pub mod upgrade;
mod worker;

pub use arbiter::{
    Arbiter, BoxError, Builder, DEFAULT_MAX_BOOTING, DEFAULT_START_TIMEOUT, FdLimit, MAX_CAPACITY,
    Outcome, Stdin, StopCause,
};
pub use error::{Error, Result};
pub use exit::{
    EXIT_FAILED, EXIT_PANICKED, ExitReason, ExitRecord, ExitStatus, exit_code_name, signal_name,
};
pub use handle::{Handle, Snapshot, WorkerInfo};
pub use layer::{ChildInfo, Context, Interest, Layer, Readiness, Spawn, Token};
pub use scoreboard::{ACTIVITY_LEN, WorkerState};
pub use worker::{StopNotifier, Vitals, Worker};
