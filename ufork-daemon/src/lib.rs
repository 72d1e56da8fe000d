//! Run a server as a well-behaved Unix daemon: double fork with a readiness
//! handshake, a pidfile locked for the daemon's life, helpers for the command
//! that controls it, and a size-rotated log that never splits a line.
//!
//! - [`Daemonize`] forks, calls `setsid`, forks again, sets the umask and
//!   working directory (default `/`), points stdin at `/dev/null` and stdout
//!   and stderr at the log (or `/dev/null`): they are never left closed. The
//!   launching process then waits on a close-on-exec readiness channel: it
//!   succeeds only once the daemon calls [`Daemon::ready`], and reports the
//!   daemon's own error if it fails first ([`Daemon::fail`], a failed step, a
//!   crash) or does not answer within the timeout. When the launcher reports
//!   an error, the daemon is gone.
//! - [`Pidfile`] is opened `O_CLOEXEC` and held under `flock(LOCK_EX|LOCK_NB)`,
//!   and written only once locked: a second daemon is refused with
//!   [`Error::AlreadyRunning`] ("already running as pid N"), a stale file left
//!   by a crash is taken over, and the file is removed on a clean exit. It
//!   works on its own too, for a foreground server. A symbolic link at its
//!   path is refused (`O_NOFOLLOW`), never written through.
//! - [`status`], [`signal`], [`signal_pidfile`], [`signal_group`] and
//!   [`wait_for_exit`] serve `status`, `stop` and `reload` commands: liveness
//!   is the pidfile's lock, not a guess from `kill(pid, 0)`, and waiting is a
//!   pidfd `poll`, not a sleep loop.
//! - [`RotatingFile`] rotates `path`, `path.1` … `path.N` by size at line
//!   boundaries, reopens for an external logrotate, creates files with mode
//!   0640, and keeps writing to the current file when a rotation fails. A
//!   symbolic link at its path is followed only where nobody but root and
//!   this process' user could have put it (see [`open_append`]), so
//!   `/dev/stdout` works and a link planted by another user is refused.
//! - [`Privsep`] is the privileged helper of a server that drops root: forked
//!   before the drop, it rotates and reopens a [`RotatingFile`] and removes a
//!   [`Pidfile`] (and a control socket) in directories only root may write,
//!   on the paths granted at its start and nothing else.
//!
//! # Examples
//!
//! ```no_run
//! use std::io::Write;
//! use std::net::TcpListener;
//! use ufork_daemon::{daemonize, Daemonize};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The launcher exits 0 once the daemon is ready, or prints its error and
//! // exits 1; only the daemon returns from here.
//! let mut daemon = daemonize(
//!     Daemonize::new()
//!         .pidfile("/run/myserver.pid")
//!         .log_file("/var/log/myserver.log"),
//! );
//! let listener = match TcpListener::bind("0.0.0.0:8080") {
//!     Ok(listener) => listener,
//!     Err(error) => {
//!         // The launcher prints this and exits non-zero.
//!         daemon.fail(format_args!("cannot bind 0.0.0.0:8080: {error}"))?;
//!         return Ok(());
//!     }
//! };
//! daemon.ready()?;
//! let mut log = daemon.log().cloned().expect("log_file was set");
//! writeln!(log, "serving on {}", listener.local_addr()?)?;
//! # Ok(())
//! # }
//! ```
//!
//! A controlling command:
//!
//! ```no_run
//! use std::time::Duration;
//! use ufork_daemon::{signal_pidfile, status, wait_for_exit, Signal, Status};
//!
//! # fn main() -> Result<(), ufork_daemon::Error> {
//! match status("/run/myserver.pid")? {
//!     Status::Running { pid } => println!("running as pid {pid}"),
//!     Status::Stale { .. } => println!("not running (stale pidfile)"),
//!     Status::NotRunning => println!("not running"),
//! }
//! if let Some(pid) = signal_pidfile("/run/myserver.pid", Signal::TERM)? {
//!     if !wait_for_exit(pid, Some(Duration::from_secs(10)))? {
//!         eprintln!("pid {pid} did not stop within 10 s");
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Limitations
//!
//! - Linux only (pidfds, `flock` semantics, `/dev/null`).
//! - [`Daemonize::start`] must run while the process has a single thread: the
//!   daemon carries on after `fork`, which copies only the calling thread.
//! - `flock` locks belong to the open file description: children forked by
//!   the daemon share it, so the pidfile reads as live until the last of them
//!   exits. Locks on NFS may not behave.
//! - [`status`] takes a shared lock for an instant when the file is unlocked;
//!   a daemon starting at that instant is refused as already running.
//! - Descriptors other than 0, 1 and 2 are inherited by the daemon as they
//!   are (std opens its own close-on-exec; close or mark any others).
//! - Output written straight to fds 1 and 2 is appended to the log but not
//!   counted towards its rotation size, and is not line-buffered.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod control;
mod daemonize;
mod error;
mod links;
mod pidfile;
mod privsep;
mod rotate;
mod sys;

pub use control::{Status, read_pid, signal, signal_group, signal_pidfile, status, wait_for_exit};
pub use daemonize::{DEFAULT_TIMEOUT, DEFAULT_UMASK, Daemon, Daemonize, Launched, daemonize};
pub use error::{Error, Result};
pub use pidfile::Pidfile;
pub use privsep::{Privsep, PrivsepBuilder};
pub use rotate::{
    DEFAULT_BACKUPS, DEFAULT_MAX_SIZE, DEFAULT_MODE, RotatingFile, RotatingFileBuilder, open_append,
};
/// The signal type of [`signal`] and friends (rustix's).
pub use rustix::process::Signal;
