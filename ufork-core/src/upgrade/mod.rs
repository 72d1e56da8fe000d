//! In-place binary upgrade (the unicorn/gunicorn SIGUSR2 model) and the
//! listening sockets as the arbiter sees them.
//!
//! The old arbiter re-executes its binary from the path on disk with the same
//! arguments ([`Reexec`], captured at start: after a deploy replaced the file,
//! `/proc/self/exe` names the old, deleted inode). The new arbiter inherits
//! the listening sockets by the systemd convention (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`, fds 3, 4, ...) and one more descriptor, a
//! `SOCK_SEQPACKET` socket named by `UFORK_UPGRADE_FD`, on which it reports
//! `READY=1` and `MAINPID=` (as sd_notify does) once every worker of its pool
//! is ready. Then the old arbiter stops gracefully; its workers finish what
//! they hold, while the new pool already accepts on the same sockets. Once
//! its layers' [`Layer::stopping`] told its own supervisor `MAINPID=` the new
//! arbiter, the old one says `MAINPID=` on that socket too: only then does
//! the new arbiter speak for the service ([`speaks_for_service`]).
//!
//! Before it takes over anything the old arbiter owns by path (a pidfile, a
//! control socket: [`ReadyReporter::before_ready`]) and reports `READY=1`,
//! a new arbiter asks `TAKEOVER=1`, and goes on only on `GRANTED=1`. The old
//! arbiter decides in its loop's order: a timeout that came first said
//! `ABANDONED=1` (the new arbiter then stops without taking anything), and
//! once it granted, it waits for `READY=1` or the new arbiter's end, with
//! no timeout: giving up while the files change hands could leave two
//! pools that both think they own them. (`ANSWERS=TAKEOVER`, queued on the
//! socket before the new arbiter starts, tells it its old one answers; one
//! started by an earlier release is not asked.)
//!
//! If the new arbiter cannot be started, exits or closes the socket before
//! it is ready, or is not ready within the timeout (stopped with SIGTERM
//! then), the old arbiter keeps serving and the request fails with the
//! reason, which is also logged. A stop while the new arbiter starts
//! abandons the upgrade: the new arbiter gets SIGTERM, and the old one's
//! `run` returns only once it has ended (SIGKILL after the timeout), so no
//! process of the upgrade outlives the pool. When the new arbiter
//! daemonized (its `MAINPID=` names another process than the one started),
//! that is the one signalled and waited for, by pidfd, as well as the one
//! started. A second request during an upgrade is
//! refused with a log line, and so is any request to an arbiter that is pid 1
//! of its pid namespace ([`UpgradeError::Pid1`]): its exit would kill the
//! whole namespace, the new arbiter included.
//!
//! The same [`Upgrader`] layer makes a graceful stop refuse new connections
//! at once: when a stop begins (not a handover), it shuts down the reading
//! side of every TCP listening socket it was given, which takes them out of
//! `LISTEN` for every process holding a copy, so a new connection is refused
//! (ECONNREFUSED) instead of accepted and reset at exit, while accepted
//! connections finish (connections queued in the backlog but not yet
//! accepted by a worker are reset). A unix listening socket's path is
//! removed instead, if it still names the file that was there when the
//! socket was given: a new client gets ENOENT, and connections already
//! queued stay for a worker that still accepts (ufork-wsgi-like's workers
//! stop accepting at SIGTERM, so there they are reset at exit). A socket
//! given with [`Upgrader::hand_over`] (a supervisor's, from socket
//! activation) is left listening. Sockets bound by each worker itself (`SO_REUSEPORT`)
//! are the worker's to refuse:
//! [`Worker::refuse_at_stop`](crate::Worker::refuse_at_stop).
//!
//! A new arbiter (one that took a [`Handover`]) refuses nothing until its
//! old arbiter handed the service over ([`owns_listeners`]): the sockets it
//! inherited are the same open sockets the old pool serves on, so if it stops
//! before that (it failed or gave up, was not ready in time and the old one
//! stopped it, or an operator stopped it), a shutdown would take them out of
//! `LISTEN` for the old pool too, and a removed unix socket path would lock
//! its clients out, while the old arbiter keeps serving. Should the hand-over
//! complete while it stops, it refuses then.
//!
//! A shut-down socket makes `accept` fail with EINVAL in every process that
//! still waits on it, which a worker written for ufork takes as "stop
//! accepting" but an exec'd program (uvicorn, gunicorn) reports as an error,
//! once per try until it notices its SIGTERM. For such workers,
//! [`Upgrader::close_at_stop`] closes the upgrader's copies instead, as
//! gunicorn's arbiter does: a TCP socket then stops listening once every
//! worker has closed its own copy too (they do at SIGTERM), a connection a
//! worker still accepts meanwhile is served, and what is queued when the last
//! copy closes is reset.
//!
//! # Examples
//!
//! ```no_run
//! use std::net::TcpListener;
//! use ufork_core::Arbiter;
//! use ufork_core::upgrade::{Handover, Reexec, Upgrader};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let reexec = Reexec::capture()?;
//! // Started by an upgrade: take the sockets; else bind them.
//! let mut handover = Handover::take()?;
//! let listener = match handover.as_mut().and_then(|h| h.take_listener("http")) {
//!     Some(fd) => TcpListener::from(fd),
//!     None => TcpListener::bind("127.0.0.1:8000")?,
//! };
//! let upgrader = Upgrader::new(reexec)?.listener("http", &listener)?;
//! let upgrades = upgrader.handle();
//! let mut builder = Arbiter::builder().workers(2).layer(upgrader);
//! if let Some(report) = handover.and_then(|h| h.reporter()) {
//!     builder = builder.layer(report);
//! }
//! let arbiter = builder.build()?;
//! // From any thread: `upgrades.upgrade().wait(None)` re-executes the binary.
//! # let _ = upgrades;
//! arbiter.run(|worker| -> std::io::Result<()> {
//!     // serve `listener` until worker.should_stop()
//!     # let _ = (&listener, worker);
//!     Ok(())
//! })?;
//! # Ok(())
//! # }
//! ```

// Shared with `listen`: one adoption of fds 3.. per process, whoever takes them.
pub(crate) mod sys;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::{Context, Layer, Readiness, Token};

/// The variable naming the descriptor a new arbiter reports readiness on.
pub const REPORT_FD_ENV: &str = "UFORK_UPGRADE_FD";

/// The variable listing which handed-over descriptors (their indices, from
/// 0 for fd 3, comma-separated) were given with [`Upgrader::hand_over`]: the
/// new arbiter must leave them listening at its own graceful stop too.
const KEEP_ENV: &str = "UFORK_UPGRADE_KEEP";

/// The variable giving the new arbiter the old pool's target worker count,
/// when it was scaled at runtime away from its configured count (see
/// [`Upgrader::configured_workers`] and [`Handover::workers`]).
const WORKERS_ENV: &str = "UFORK_UPGRADE_WORKERS";

/// The first message on the report socket, queued by the old arbiter
/// before it starts the new one: it answers `TAKEOVER=1` (with
/// `GRANTED=1`, or `ABANDONED=1` once it gave up), so the new arbiter takes
/// over what it owns by path only once granted. An old arbiter of an
/// earlier release does not send it and is not asked. A message, not an
/// environment variable: an earlier release passes its environment on to
/// the arbiter it upgrades to, and would pass on a promise it does not keep.
const ANSWERS: &[u8] = b"ANSWERS=TAKEOVER\n";

/// What the new arbiter asks once its workers are ready, before it takes
/// anything over.
const TAKEOVER: &[u8] = b"TAKEOVER=1\n";

/// The old arbiter's answer to [`TAKEOVER`]: from now on it waits for the
/// outcome (`READY=1`, or the new arbiter's end) without a timeout.
const GRANTED: &[u8] = b"GRANTED=1\n";

/// What socket activation sets; replaced for the new arbiter.
const LISTEN_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// How long the old arbiter waits for the new one by default (the arbiter's
/// default start timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How to start the same program again: its path on disk, its arguments and
/// the working directory it started in, captured at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reexec {
    program: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
}

impl Reexec {
    /// Captures the running program: the path of its executable (read now,
    /// while it still names the file on disk), its arguments and the working
    /// directory. Call it first thing in `main`.
    ///
    /// # Errors
    ///
    /// The executable's path or the working directory cannot be read.
    pub fn capture() -> io::Result<Self> {
        let exe = std::env::current_exe()?;
        // Already replaced on disk: the kernel appends " (deleted)" to the
        // old inode's name; the path itself is where the new binary is.
        let program = match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
            Some(path) => PathBuf::from(std::ffi::OsStr::from_bytes(path)),
            None => exe,
        };
        Ok(Self {
            program,
            args: std::env::args_os().skip(1).collect(),
            cwd: std::env::current_dir()?,
        })
    }

    /// Runs `program` with `args` in the current working directory.
    ///
    /// # Errors
    ///
    /// The working directory cannot be read.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> io::Result<Self> {
        Ok(Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: std::env::current_dir()?,
        })
    }

    /// The executable's path.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments after the program name.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    fn plan(
        &self,
        handover: &[(String, OwnedFd)],
        kept: &[usize],
        workers: Option<usize>,
        report: &OwnedFd,
    ) -> io::Result<sys::ExecPlan> {
        let c = |b: &[u8]| sys::c_string(b.to_vec());
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            let (key, value) = (key.as_bytes(), value.as_bytes());
            if passed_on(key, value, std::process::id()) {
                env.push(c(&[key, b"=", value].concat())?);
            }
        }
        let names: Vec<&str> = handover.iter().map(|(n, _)| n.as_str()).collect();
        env.push(c(format!("LISTEN_FDS={}", handover.len()).as_bytes())?);
        env.push(c(format!("LISTEN_FDNAMES={}", names.join(":")).as_bytes())?);
        let report_at = usize::try_from(sys::FDS_START)
            .unwrap_or(0)
            .saturating_add(handover.len());
        env.push(c(format!("{REPORT_FD_ENV}={report_at}").as_bytes())?);
        if !kept.is_empty() {
            let kept: Vec<String> = kept.iter().map(usize::to_string).collect();
            env.push(c(format!("{KEEP_ENV}={}", kept.join(",")).as_bytes())?);
        }
        if let Some(workers) = workers {
            env.push(c(format!("{WORKERS_ENV}={workers}").as_bytes())?);
        }
        let mut fds: Vec<_> = handover.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        fds.push(report.as_raw_fd());
        Ok(sys::ExecPlan {
            program: c(self.program.as_os_str().as_bytes())?,
            args: self
                .args
                .iter()
                .map(|a| c(a.as_bytes()))
                .collect::<io::Result<_>>()?,
            env,
            cwd: c(self.cwd.as_os_str().as_bytes())?,
            fds,
        })
    }
}

/// Whether the new arbiter gets the variable `key=value` of this process
/// (`pid`): not what the handover replaces, and not a `WATCHDOG_PID` naming
/// this process. The new arbiter becomes the service's main process
/// (`MAINPID=`); with `WATCHDOG_PID` still naming the old one, sd_notify's
/// rule (sd_watchdog_enabled(3)) would keep it from ever sending
/// `WATCHDOG=1`, and systemd would kill the service at `WatchdogSec=`.
/// Without the variable, `WATCHDOG_USEC` is the new arbiter's.
fn passed_on(key: &[u8], value: &[u8], pid: u32) -> bool {
    let replaced = LISTEN_VARS.iter().any(|v| v.as_bytes() == key)
        || key == REPORT_FD_ENV.as_bytes()
        || key == KEEP_ENV.as_bytes()
        || key == WORKERS_ENV.as_bytes();
    let our_watchdog = key == b"WATCHDOG_PID" && value == pid.to_string().as_bytes();
    !replaced && !our_watchdog
}

/// Why an upgrade did not happen. The old arbiter keeps serving in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Another upgrade is under way.
    #[error("an upgrade is already under way (new arbiter pid {pid})")]
    InProgress {
        /// The new arbiter being waited for.
        pid: i32,
    },
    /// The pool is stopping (or already handed over).
    #[error("the pool is stopping")]
    Stopping,
    /// The report socket could not be made.
    #[error("cannot create the upgrade socket")]
    Socket(#[source] io::Error),
    /// Starting the new arbiter failed (the file is missing, not executable,
    /// an argument holds a NUL byte, ...).
    #[error("cannot start {program}")]
    Spawn {
        /// The program's path.
        program: String,
        /// What the fork or exec said.
        #[source]
        source: io::Error,
    },
    /// The new arbiter ended, or closed the report socket, before it was ready.
    #[error("the new arbiter (pid {pid}) {how} before it was ready")]
    Exited {
        /// The new arbiter.
        pid: i32,
        /// "exited with status 1", "was killed by SIGSEGV", ...
        how: String,
    },
    /// Not ready within the timeout; it was sent SIGTERM.
    #[error("the new arbiter (pid {pid}) was not ready within {timeout:?}; stopped it")]
    Timeout {
        /// The new arbiter.
        pid: i32,
        /// The timeout.
        timeout: Duration,
    },
    /// The arbiter ended before the upgrade had an outcome.
    #[error("the arbiter ended before the upgrade had an outcome")]
    Abandoned,
    /// This arbiter is pid 1 of its pid namespace (a container's init): when
    /// it exits after the hand-over, the kernel kills every process of the
    /// namespace, the new arbiter and its workers with it.
    #[error(
        "this arbiter is pid 1 of its pid namespace: the old arbiter's exit after the hand-over would kill the new one (in a container, roll the deployment instead)"
    )]
    Pid1,
}

/// A successful upgrade: the new arbiter is serving; the old one drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upgraded {
    /// The new arbiter's pid (its `MAINPID=`, which differs from the process
    /// started when the new arbiter daemonized).
    pub pid: i32,
}

type Reply = mpsc::Sender<Result<Upgraded, UpgradeError>>;

/// A new arbiter of an upgrade the old one has not handed the service to yet.
static AWAITING_SERVICE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process speaks for the service to its own supervisor
/// (sd_notify's `NOTIFY_SOCKET`) yet. Always, except in a new arbiter of an
/// upgrade (one running a [`ReadyReporter`]): there, only once the old
/// arbiter, which read its `READY=1`, has told its supervisor `MAINPID=` this
/// process (its layers' [`Layer::stopping`] do that) and then this process.
/// A layer that reports to the supervisor holds its messages until then:
/// under systemd's `NotifyAccess=main`, what this process sends before
/// `MAINPID=` names it is dropped, and a new arbiter that never takes over
/// (it failed, or timed out) must never speak for the service (its
/// `STOPPING=1` would stop it).
pub fn speaks_for_service() -> bool {
    !AWAITING_SERVICE.load(std::sync::atomic::Ordering::Acquire)
}

/// A new arbiter of an upgrade (one that took a [`Handover`]) whose old
/// arbiter has not handed the service over yet: the sockets it inherited are
/// the old pool's too, which keeps serving on them if this one fails.
static INHERITED_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process may refuse new connections on its listening sockets
/// at a graceful stop: always, except in a new arbiter of an upgrade until
/// its old arbiter handed the service over (said `MAINPID=` this process, or
/// closed the report socket after `READY=1` without `ABANDONED=1`). Until
/// then the sockets it inherited are the very ones (the same open file
/// descriptions) the old pool still serves on: shutting one down would take
/// it out of `LISTEN` for the old pool too, and removing a unix socket's path
/// would lock its clients out, while the old arbiter says "still serving".
pub fn owns_listeners() -> bool {
    !INHERITED_PENDING.load(std::sync::atomic::Ordering::Acquire)
}

/// The pid of the arbiter this process handed its pool to (0: none yet).
static HANDED_OVER_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The new arbiter's pid once an upgrade of this process succeeded (its
/// graceful stop is then a handover, not the service stopping): a layer that
/// reports to the process' own supervisor says `MAINPID=` this pid rather
/// than `STOPPING=1`.
pub fn handed_over_to() -> Option<i32> {
    match HANDED_OVER_TO.load(std::sync::atomic::Ordering::Acquire) {
        0 => None,
        pid => Some(pid),
    }
}

/// A layer has told its supervisor `MAINPID=` the new arbiter but could not
/// deliver it yet.
static MAINPID_UNDELIVERED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// For a layer that reports to this process' supervisor, in the old arbiter
/// of an upgrade: `true` while the `MAINPID=` it sends for the new arbiter
/// (see [`handed_over_to`]) has not gone out (the supervisor's queue is
/// full), `false` once it has (or never will). Meanwhile the [`Upgrader`]
/// does not tell the new arbiter that it speaks for the service: systemd
/// would drop what it says before `MAINPID=` names it. This process'
/// exit still hands the service over (the new arbiter takes it at the end
/// of the upgrade socket), so a supervisor that never reads again cannot
/// leave the service without a speaker.
pub fn mainpid_undelivered(undelivered: bool) {
    MAINPID_UNDELIVERED.store(undelivered, std::sync::atomic::Ordering::Release);
}

fn handover_held() -> bool {
    MAINPID_UNDELIVERED.load(std::sync::atomic::Ordering::Acquire)
}

struct Trigger {
    queue: Mutex<Vec<Reply>>,
    wake: OwnedFd,
}

/// Asks an [`Upgrader`] for an upgrade from any thread (or another layer).
/// Cheap to clone.
#[derive(Clone)]
pub struct UpgradeHandle {
    trigger: Arc<Trigger>,
}

impl fmt::Debug for UpgradeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeHandle").finish_non_exhaustive()
    }
}

impl UpgradeHandle {
    /// Starts an upgrade (like SIGUSR2) and returns at once; the outcome
    /// arrives on the returned [`Pending`]. A request while the arbiter is not
    /// running waits for its next run.
    pub fn upgrade(&self) -> Pending {
        let (tx, rx) = mpsc::channel();
        self.trigger
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        // A full pipe already holds a wake-up.
        let _ = rustix::io::write(&self.trigger.wake, &[1]);
        Pending { rx }
    }
}

/// The outcome of an upgrade, once it has one.
#[derive(Debug)]
pub struct Pending {
    rx: mpsc::Receiver<Result<Upgraded, UpgradeError>>,
}

impl Pending {
    /// The outcome if there is one yet (never blocks: fit for a layer).
    pub fn try_result(&self) -> Option<Result<Upgraded, UpgradeError>> {
        match self.rx.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(UpgradeError::Abandoned)),
        }
    }

    /// Waits for the outcome (`None`: as long as it takes); `None` back when
    /// the timeout passed first. Never call it on the arbiter's thread.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Result<Upgraded, UpgradeError>> {
        let outcome = match timeout {
            Some(t) => match self.rx.recv_timeout(t) {
                Ok(o) => Ok(o),
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
            },
            None => self.rx.recv().map_err(|_| ()),
        };
        Some(outcome.unwrap_or(Err(UpgradeError::Abandoned)))
    }
}

/// An upgrade under way.
struct Starting {
    /// The process started (the new arbiter, or its daemonizing launcher).
    pid: i32,
    pidfd: Option<(OwnedFd, Token)>,
    report: OwnedFd,
    /// `None` once the new arbiter closed its end.
    report_token: Option<Token>,
    buf: Vec<u8>,
    mainpid: Option<i32>,
    /// A pidfd of `mainpid` when that is another process than `pid` (the
    /// started process daemonized): the one to stop, and wait for.
    main: Option<OwnedFd>,
    deadline: Option<Instant>,
    /// How the started process ended, once it has.
    ended: Option<String>,
    /// The takeover was granted: no timeout from then on.
    granted: bool,
}

enum State {
    Idle,
    Starting(Starting),
    HandedOver(i32),
}

/// A [`Layer`] that holds the pool's listening sockets: it re-executes the
/// program on request with the sockets handed over (see the [module
/// docs](self)), and makes a graceful stop refuse new connections at once.
pub struct Upgrader {
    reexec: Reexec,
    handover: Vec<(String, OwnedFd)>,
    /// Indices into `handover` of the sockets given with `hand_over`.
    kept: Vec<usize>,
    timeout: Duration,
    refuse_on_stop: bool,
    /// Close the copies at a graceful stop instead of shutting sockets down.
    close_at_stop: bool,
    /// The pool's configured worker count: an upgrade tells the new arbiter
    /// the target only when it differs (`None`: always).
    configured_workers: Option<usize>,
    trigger: Arc<Trigger>,
    wake_r: OwnedFd,
    wake_token: Option<Token>,
    waiting: Vec<Reply>,
    state: State,
    /// Processes of failed upgrades told to stop, reaped when they end.
    leftovers: Vec<Leftover>,
    /// A graceful stop began: shut the listeners down at the next tick.
    shutdown_pending: bool,
    /// After a handover, the new arbiter's report socket: told at the tick
    /// after the stop began (once every layer's `stopping` told the
    /// supervisor `MAINPID=`) that it speaks for the service now.
    handed: Option<OwnedFd>,
    tell_handed: bool,
    /// The listening sockets a graceful stop refuses new connections on.
    refusals: Vec<Refusal>,
    /// Told the pid of a failed upgrade's new arbiter once it ended.
    after_failed: Option<AfterFailed>,
}

type AfterFailed = Box<dyn FnMut(i32) + Send>;

/// A process of a failed or abandoned upgrade, told to stop.
struct Leftover {
    pid: i32,
    pidfd: OwnedFd,
    token: Token,
    /// The process `spawn` started, ours to reap; otherwise the arbiter it
    /// daemonized into (its `MAINPID=`), which only ends.
    child: bool,
}

/// A listening socket that stops taking connections when a graceful stop
/// (not a handover) begins.
struct Refusal {
    socket: OwnedFd,
    /// For a unix socket: its path, and the file (device, inode) the path
    /// was when the socket was given, so only that file is removed.
    unix: Option<(std::path::PathBuf, (u64, u64))>,
}

impl Refusal {
    /// `None` for a descriptor that is not a listening socket.
    fn new(socket: BorrowedFd<'_>) -> io::Result<Option<Self>> {
        use rustix::net::{AddressFamily, SocketAddrAny, getsockname, sockopt};
        if !sockopt::socket_acceptconn(socket).unwrap_or(false) {
            return Ok(None);
        }
        let socket = socket.try_clone_to_owned()?;
        let family = getsockname(&socket).map(|a: SocketAddrAny| a.address_family());
        if family != Ok(AddressFamily::UNIX) {
            return Ok(Some(Self { socket, unix: None }));
        }
        let listener = std::os::unix::net::UnixListener::from(socket);
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(std::path::Path::to_owned));
        let unix = path.and_then(|path| {
            let id = file_id(&path)?;
            Some((path, id))
        });
        Ok(Some(Self {
            socket: listener.into(),
            unix,
        }))
    }

    /// Stops new connections: a TCP socket's reading side is shut down
    /// (unless `shut_down` is false: its copy is closed by the caller
    /// then), which takes it out of `LISTEN` for every process holding a
    /// copy; a unix socket's path is removed (when it still names the
    /// socket's file), so new clients get ENOENT while connections already
    /// queued stay for whatever still accepts.
    fn refuse(&self, shut_down: bool) {
        match &self.unix {
            None => {
                if shut_down {
                    let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Read);
                }
            }
            Some((path, id)) => {
                if file_id(path) == Some(*id) {
                    match std::fs::remove_file(path) {
                        Ok(()) => log::debug!(
                            target: "ufork",
                            "removed {}: new connections are refused",
                            path.display()
                        ),
                        Err(e) => log::warn!(
                            target: "ufork",
                            "cannot remove {} to refuse new connections: {e}",
                            path.display()
                        ),
                    }
                }
            }
        }
    }
}

/// Device and inode of the file at `path` (not following a symlink).
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrader")
            .field("reexec", &self.reexec)
            .field("sockets", &self.handover.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Upgrader {
    /// An upgrader that starts `reexec`, with no sockets yet.
    ///
    /// # Errors
    ///
    /// The wake pipe cannot be made.
    pub fn new(reexec: Reexec) -> io::Result<Self> {
        use rustix::pipe::{PipeFlags, pipe_with};
        let (wake_r, wake) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Self {
            reexec,
            handover: Vec::new(),
            kept: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            refuse_on_stop: true,
            close_at_stop: false,
            configured_workers: None,
            trigger: Arc::new(Trigger {
                queue: Mutex::new(Vec::new()),
                wake,
            }),
            wake_r,
            wake_token: None,
            waiting: Vec::new(),
            state: State::Idle,
            leftovers: Vec::new(),
            shutdown_pending: false,
            handed: None,
            tell_handed: false,
            refusals: Vec::new(),
            after_failed: None,
        })
    }

    /// Runs `hook` with the pid of a failed or abandoned upgrade's new
    /// arbiter (and of the arbiter it daemonized into) once that process
    /// has ended, however it ended (SIGKILL included): the place to remove
    /// what it made by path and could not remove itself, such as a socket
    /// named after its pid.
    pub fn after_failed(mut self, hook: impl FnMut(i32) + Send + 'static) -> Self {
        self.after_failed = Some(Box::new(hook));
        self
    }

    fn ended(&mut self, pid: i32) {
        if let Some(hook) = &mut self.after_failed {
            hook(pid);
        }
    }

    /// Hands a copy of `socket` to the new arbiter under `name` (a
    /// `LISTEN_FDNAMES` entry; the order of calls is the order of fds 3, 4,
    /// ...), and refuses new connections on it when a graceful stop (not a
    /// handover) begins: a TCP socket is shut down, a unix socket's path
    /// removed (see the [module docs](self)). Any descriptor can be handed
    /// over (a control socket, say); only listening sockets are refused.
    ///
    /// # Errors
    ///
    /// The descriptor cannot be duplicated, or `name` holds a `:`.
    pub fn listener(mut self, name: &str, socket: impl AsFd) -> io::Result<Self> {
        if name.contains(':') || name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a socket name must be non-empty and have no `:`",
            ));
        }
        let fd = socket.as_fd().try_clone_to_owned()?;
        self.refusals.extend(Refusal::new(fd.as_fd())?);
        self.handover.push((name.to_owned(), fd));
        Ok(self)
    }

    /// Hands a copy of `socket` to the new arbiter under `name`, like
    /// [`listener`](Self::listener), but leaves it listening at a graceful
    /// stop: for a socket whose owner outlives this process (a systemd
    /// `.socket` unit's, from socket activation), which keeps queueing new
    /// connections for the next instance of the service instead of refusing
    /// them. Shutting such a socket down would break it for its owner too.
    /// The new arbiter learns which sockets these are
    /// ([`Handover::kept_listening`]), so it can leave them listening too.
    ///
    /// # Errors
    ///
    /// As [`listener`](Self::listener).
    pub fn hand_over(mut self, name: &str, socket: impl AsFd) -> io::Result<Self> {
        if name.contains(':') || name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a socket name must be non-empty and have no `:`",
            ));
        }
        let fd = socket.as_fd().try_clone_to_owned()?;
        self.kept.push(self.handover.len());
        self.handover.push((name.to_owned(), fd));
        Ok(self)
    }

    /// A listening socket that is not handed over but still stops taking
    /// connections when a graceful stop begins, like those given to
    /// [`listener`](Self::listener) (a unix socket whose path the old
    /// arbiter removes, say). A descriptor that is not a listening socket is
    /// ignored.
    ///
    /// # Errors
    ///
    /// The descriptor cannot be duplicated.
    pub fn refuse_at_stop(mut self, socket: impl AsFd) -> io::Result<Self> {
        self.refusals.extend(Refusal::new(socket.as_fd())?);
        Ok(self)
    }

    /// How long the new arbiter may take to report ready (default
    /// [`DEFAULT_TIMEOUT`]; pass the pool's start timeout), and, told to
    /// stop (an upgrade that failed, or one a stop abandoned), to end
    /// before the old pool's `run` returns; it is killed then.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether a graceful stop shuts the listening sockets down at once
    /// (default true).
    pub fn refuse_on_stop(mut self, refuse: bool) -> Self {
        self.refuse_on_stop = refuse;
        self
    }

    /// Whether a graceful stop (not a handover) closes the upgrader's
    /// copies of the TCP listening sockets instead of shutting them down
    /// (default false; see the [module docs](self)). A socket then stops
    /// listening only once every copy is closed: the caller must drop the
    /// arbiter's other copies when the stop begins (a [`Layer::stopping`]),
    /// and the workers close theirs as they stop. For workers that report
    /// `accept` failing with EINVAL as an error (an exec'd program), which a
    /// shut-down socket makes it do until they notice their SIGTERM. A unix
    /// socket's path is removed at once either way.
    pub fn close_at_stop(mut self, close: bool) -> Self {
        self.close_at_stop = close;
        self
    }

    /// The worker count this pool was configured with. An upgrade tells the
    /// new arbiter the pool's target count ([`Handover::workers`]) only when
    /// it differs from this one, that is when the pool was scaled at runtime
    /// ([`Handle::set_workers`](crate::Handle::set_workers), SIGTTIN,
    /// SIGTTOU): the new arbiter can keep that capacity, and otherwise takes
    /// the count its own configuration gives (a changed one, say). Without
    /// it, the target is always told.
    pub fn configured_workers(mut self, workers: usize) -> Self {
        self.configured_workers = Some(workers);
        self
    }

    /// A handle that asks for an upgrade.
    pub fn handle(&self) -> UpgradeHandle {
        UpgradeHandle {
            trigger: Arc::clone(&self.trigger),
        }
    }

    fn answer(&mut self, outcome: &Result<Upgraded, UpgradeError>) {
        for reply in self.waiting.drain(..) {
            let copy = match outcome {
                Ok(done) => Ok(*done),
                Err(e) => Err(copy_error(e)),
            };
            let _ = reply.send(copy);
        }
    }

    fn requested(&mut self, ctx: &mut Context<'_>) {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(&self.wake_r, &mut buf), Ok(n) if n > 0) {}
        let new: Vec<Reply> =
            std::mem::take(&mut *self.trigger.queue.lock().unwrap_or_else(|p| p.into_inner()));
        if new.is_empty() {
            return;
        }
        match &self.state {
            State::Starting(s) => {
                log::warn!(target: "ufork", "upgrade refused: one is already under way (new arbiter pid {})", s.pid);
                for reply in new {
                    let _ = reply.send(Err(UpgradeError::InProgress { pid: s.pid }));
                }
            }
            State::HandedOver(pid) => {
                log::warn!(target: "ufork", "upgrade refused: this arbiter already handed over to pid {pid}");
                for reply in new {
                    let _ = reply.send(Err(UpgradeError::Stopping));
                }
            }
            State::Idle if ctx.handle().snapshot().stopping => {
                log::warn!(target: "ufork", "upgrade refused: the pool is stopping");
                for reply in new {
                    let _ = reply.send(Err(UpgradeError::Stopping));
                }
            }
            State::Idle if rustix::process::getpid().is_init() => {
                log::warn!(target: "ufork", "upgrade refused: {}", UpgradeError::Pid1);
                for reply in new {
                    let _ = reply.send(Err(UpgradeError::Pid1));
                }
            }
            State::Idle => {
                self.waiting = new;
                if let Err(e) = self.start(ctx) {
                    log::error!(target: "ufork", "upgrade failed, still serving: {}", chain(&e));
                    self.answer(&Err(e));
                }
            }
        }
    }

    fn start(&mut self, ctx: &mut Context<'_>) -> Result<(), UpgradeError> {
        let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
        let (report, theirs) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None)
                .map_err(|e| UpgradeError::Socket(e.into()))?;
        // Queued before the new arbiter exists, so it is the first thing
        // the new arbiter finds (see `answers_takeover`).
        rustix::net::send(&report, ANSWERS, rustix::net::SendFlags::NOSIGNAL)
            .map_err(|e| UpgradeError::Socket(e.into()))?;
        let program = self.reexec.program.display().to_string();
        let spawn_error = |source| UpgradeError::Spawn {
            program: program.clone(),
            source,
        };
        let target = ctx.handle().snapshot().target;
        let workers = (target > 0 && self.configured_workers != Some(target)).then_some(target);
        let plan = self
            .reexec
            .plan(&self.handover, &self.kept, workers, &theirs)
            .map_err(spawn_error)?;
        let pid = sys::spawn(&plan).map_err(spawn_error)?;
        drop(theirs);
        log::info!(
            target: "ufork",
            "upgrade: started pid {pid}: {} (handing over {} socket{}); waiting up to {:?} for its workers",
            sys::lossy(&plan.program),
            self.handover.len(),
            if self.handover.len() == 1 { "" } else { "s" },
            self.timeout
        );
        let pidfd = rustix::process::Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .map(|fd| {
                let token = ctx.register(fd.as_fd(), crate::Interest::READABLE);
                (fd, token)
            });
        let report_token = ctx.register(report.as_fd(), crate::Interest::READABLE);
        self.state = State::Starting(Starting {
            pid,
            pidfd,
            report,
            report_token: Some(report_token),
            buf: Vec::new(),
            mainpid: None,
            main: None,
            deadline: Instant::now().checked_add(self.timeout),
            ended: None,
            granted: false,
        });
        Ok(())
    }

    /// Reads the new arbiter's reports; the outcome once there is one.
    fn read_report(s: &mut Starting) -> Option<Result<Upgraded, String>> {
        let mut buf = [0u8; 4096];
        let mut eof = false;
        loop {
            match rustix::net::recv(&s.report, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    eof = true;
                    break;
                }
                Ok((n, _)) => {
                    s.buf.extend_from_slice(&buf[..n.min(buf.len())]);
                    s.buf.push(b'\n');
                }
                Err(rustix::io::Errno::INTR) => continue,
                // The new arbiter closed its end with a message of ours
                // unread (`GRANTED=1`): the error comes first, what it
                // sent before is still queued behind it.
                Err(rustix::io::Errno::CONNRESET) => eof = true,
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&s.buf).into_owned();
        s.buf.clear();
        let mut ready = false;
        for line in text.lines() {
            if line == "READY=1" {
                ready = true;
            } else if line.as_bytes() == TAKEOVER.trim_ascii_end() && !s.granted {
                // Decided here, in the loop's order: a timeout that came
                // first said ABANDONED=1 and closed the socket, so no grant
                // follows it; once granted, the new arbiter takes the files
                // over, and giving up on it then could leave both pools
                // thinking they own them. Its end still ends the wait.
                s.granted = true;
                s.deadline = None;
                let _ = rustix::net::send(&s.report, GRANTED, rustix::net::SendFlags::NOSIGNAL);
                log::info!(target: "ufork", "upgrade: pid {} is taking over; waiting for it to finish", s.mainpid.unwrap_or(s.pid));
            } else if let Some(pid) = line.strip_prefix("MAINPID=") {
                let reported: Option<i32> = pid.trim().parse().ok();
                if reported != s.mainpid {
                    s.mainpid = reported;
                    s.main = None;
                    if let Some(main) = reported
                        .filter(|&m| m != s.pid)
                        .and_then(rustix::process::Pid::from_raw)
                    {
                        log::info!(target: "ufork", "upgrade: pid {} reports its arbiter is pid {}", s.pid, main.as_raw_nonzero());
                        s.main =
                            rustix::process::pidfd_open(main, rustix::process::PidfdFlags::empty())
                                .ok();
                    }
                }
            }
        }
        if ready {
            return Some(Ok(Upgraded {
                pid: s.mainpid.unwrap_or(s.pid),
            }));
        }
        eof.then(|| {
            Err(s
                .ended
                .clone()
                .unwrap_or_else(|| "closed the upgrade socket".to_owned()))
        })
    }

    fn finish(&mut self, outcome: Result<Upgraded, UpgradeError>, ctx: &mut Context<'_>) {
        let State::Starting(s) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        if let Some(token) = s.report_token {
            ctx.deregister(token);
        }
        if let Some((_, token)) = &s.pidfd {
            ctx.deregister(*token);
        }
        match &outcome {
            Ok(done) => {
                log::info!(target: "ufork", "upgrade: pid {} is serving; stopping this arbiter gracefully", done.pid);
                self.state = State::HandedOver(done.pid);
                self.handed = Some(s.report);
                HANDED_OVER_TO.store(done.pid, std::sync::atomic::Ordering::Release);
                ctx.handle().stop();
            }
            Err(e) => {
                // Said before the socket closes: a new arbiter that sent
                // READY=1 meanwhile must not take the end of file for a
                // handover (see `ReadyReporter`).
                let _ = rustix::net::send(&s.report, ABANDONED, rustix::net::SendFlags::NOSIGNAL);
                if matches!(e, UpgradeError::Timeout { .. }) {
                    terminate(&s);
                }
                // A stop abandons the upgrade (`stopping` said so): the pool
                // is not "still serving" then.
                if !matches!(e, UpgradeError::Stopping) {
                    log::error!(target: "ufork", "upgrade failed, still serving: {e}");
                }
                // Still running (told to stop): reap it when it ends, so no
                // zombie remains; and watch the arbiter it daemonized into,
                // which `stopped` waits for as well.
                let started = s.pidfd.map(|(fd, _)| (s.pid, fd, true));
                let main = s.main.map(|fd| (s.mainpid.unwrap_or(s.pid), fd, false));
                for (pid, pidfd, child) in started.into_iter().chain(main) {
                    let token = ctx.register(pidfd.as_fd(), crate::Interest::READABLE);
                    self.leftovers.push(Leftover {
                        pid,
                        pidfd,
                        token,
                        child,
                    });
                }
            }
        }
        self.answer(&outcome);
    }

    fn child_ended(&mut self, ctx: &mut Context<'_>) {
        let State::Starting(s) = &mut self.state else {
            return;
        };
        if let Some((_, token)) = s.pidfd.take() {
            ctx.deregister(token);
        }
        let how = match rustix::process::Pid::from_raw(s.pid)
            .map(|p| rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG))
        {
            Some(Ok(Some((_, status)))) => describe(status),
            _ => "ended".to_owned(),
        };
        // A launcher that daemonized exits 0 and its daemon holds the
        // report socket: wait for the daemon's report, or its EOF.
        let daemonized = how == "exited with status 0";
        s.ended = Some(how);
        if s.report_token.is_none() || !daemonized {
            let outcome = match Self::read_report(s) {
                Some(Ok(done)) => Ok(done),
                _ => Err(UpgradeError::Exited {
                    pid: s.pid,
                    how: s.ended.clone().unwrap_or_default(),
                }),
            };
            if outcome.is_err() {
                let pid = s.pid;
                self.ended(pid);
            }
            self.finish(outcome, ctx);
        }
    }
}

/// SIGTERM to the new arbiter: the one it daemonized into when it said so
/// (by pidfd: that pid is not ours to reap, so it could be reused), else the
/// process started.
fn terminate(s: &Starting) {
    match &s.main {
        Some(main) => {
            let _ = rustix::process::pidfd_send_signal(main, rustix::process::Signal::TERM);
        }
        None => {
            if let Some(pid) = rustix::process::Pid::from_raw(s.pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
}

fn describe(status: rustix::process::WaitStatus) -> String {
    if let Some(code) = status.exit_status() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.terminating_signal() {
        match crate::signal_name(sig) {
            Some(name) => format!("was killed by {name}"),
            None => format!("was killed by signal {sig}"),
        }
    } else {
        "ended".to_owned()
    }
}

fn copy_error(e: &UpgradeError) -> UpgradeError {
    match e {
        UpgradeError::InProgress { pid } => UpgradeError::InProgress { pid: *pid },
        UpgradeError::Stopping => UpgradeError::Stopping,
        UpgradeError::Pid1 => UpgradeError::Pid1,
        UpgradeError::Socket(e) => UpgradeError::Socket(io::Error::new(e.kind(), e.to_string())),
        UpgradeError::Spawn { program, source } => UpgradeError::Spawn {
            program: program.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        UpgradeError::Exited { pid, how } => UpgradeError::Exited {
            pid: *pid,
            how: how.clone(),
        },
        UpgradeError::Timeout { pid, timeout } => UpgradeError::Timeout {
            pid: *pid,
            timeout: *timeout,
        },
        UpgradeError::Abandoned => UpgradeError::Abandoned,
    }
}

/// Waits for `leftover` to end until `deadline` (`None`: for ever), kills
/// it then (by pidfd, which names that process even when it is not ours to
/// reap), waits for its end and reaps it if it is our child.
fn reap_within(leftover: &Leftover, deadline: Option<Instant>) {
    if !ended_by(&leftover.pidfd, deadline) {
        log::warn!(target: "ufork", "upgrade: pid {} did not stop in time; sending SIGKILL", leftover.pid);
        let _ = rustix::process::pidfd_send_signal(&leftover.pidfd, rustix::process::Signal::KILL);
        // SIGKILL cannot be refused: it ends.
        ended_by(&leftover.pidfd, None);
    }
    let Some(pid) = rustix::process::Pid::from_raw(leftover.pid).filter(|_| leftover.child) else {
        return;
    };
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => {}
            _ => return,
        }
    }
}

/// Whether the process behind `pidfd` ended before `deadline` (`None`:
/// waits for ever).
fn ended_by(pidfd: &OwnedFd, deadline: Option<Instant>) -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    loop {
        // Past what a Timespec holds is never.
        let timeout = deadline.and_then(|d| {
            rustix::time::Timespec::try_from(d.saturating_duration_since(Instant::now())).ok()
        });
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut fds, timeout.as_ref()) {
            Err(rustix::io::Errno::INTR) => continue,
            Ok(0) => return false,
            _ => return true,
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Layer for Upgrader {
    fn started(&mut self, ctx: &mut Context<'_>) {
        self.wake_token = Some(ctx.register(self.wake_r.as_fd(), crate::Interest::READABLE));
        // Requests made before the run.
        self.requested(ctx);
    }

    fn event(&mut self, token: Token, readiness: Readiness, ctx: &mut Context<'_>) {
        if Some(token) == self.wake_token {
            self.requested(ctx);
            return;
        }
        if let Some(i) = self.leftovers.iter().position(|l| l.token == token) {
            let ended = self.leftovers.swap_remove(i);
            ctx.deregister(ended.token);
            if let Some(pid) = rustix::process::Pid::from_raw(ended.pid).filter(|_| ended.child) {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            }
            self.ended(ended.pid);
            return;
        }
        let State::Starting(s) = &mut self.state else {
            return;
        };
        if Some(token) == s.report_token {
            let pid = s.pid;
            match Self::read_report(s) {
                Some(Ok(done)) => self.finish(Ok(done), ctx),
                None if !readiness.hangup => {}
                // Closed without READY: when the started process is still
                // ours to reap, its exit status says more; wait for it.
                _ if s.pidfd.is_some() => {
                    ctx.deregister(token);
                    s.report_token = None;
                }
                _ => {
                    let how = s
                        .ended
                        .clone()
                        .unwrap_or_else(|| "closed the upgrade socket".to_owned());
                    self.finish(Err(UpgradeError::Exited { pid, how }), ctx);
                }
            }
        } else if s.pidfd.as_ref().is_some_and(|(_, t)| *t == token) {
            self.child_ended(ctx);
        }
    }

    fn tick(&mut self, ctx: &mut Context<'_>) {
        // A new arbiter stopping before its old one handed the service over
        // (it failed, timed out, or was told to stop) refuses nothing: the
        // old pool serves on these very sockets. Should the hand-over still
        // complete during this stop, it refuses then.
        if self.shutdown_pending && owns_listeners() {
            self.shutdown_pending = false;
            for refusal in &self.refusals {
                refusal.refuse(!self.close_at_stop);
            }
            if self.close_at_stop {
                // No upgrade starts once the pool stops: nothing needs them.
                self.refusals.clear();
                self.handover.clear();
                self.kept.clear();
            }
        }
        if self.tell_handed && !handover_held() {
            self.tell_handed = false;
            if let (Some(fd), State::HandedOver(pid)) = (self.handed.take(), &self.state) {
                let message = format!("MAINPID={pid}\n");
                let _ =
                    rustix::net::send(&fd, message.as_bytes(), rustix::net::SendFlags::NOSIGNAL);
            }
        }
        let State::Starting(s) = &self.state else {
            return;
        };
        if s.deadline.is_some_and(|d| Instant::now() >= d) {
            let pid = s.mainpid.unwrap_or(s.pid);
            let timeout = self.timeout;
            self.finish(Err(UpgradeError::Timeout { pid, timeout }), ctx);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        // While the supervisor has not heard `MAINPID=`, the layer that
        // retries it wakes the loop.
        if (self.shutdown_pending && owns_listeners()) || (self.tell_handed && !handover_held()) {
            return Some(Instant::now());
        }
        match &self.state {
            State::Starting(s) => s.deadline,
            _ => None,
        }
    }

    fn stopping(&mut self, ctx: &mut Context<'_>) {
        if matches!(self.state, State::Starting(_)) {
            let State::Starting(s) = &self.state else {
                return;
            };
            let pid = if s.main.is_some() {
                s.mainpid.unwrap_or(s.pid)
            } else {
                s.pid
            };
            terminate(s);
            log::warn!(target: "ufork", "upgrade abandoned: the pool is stopping; sent SIGTERM to pid {pid}");
            self.finish(Err(UpgradeError::Stopping), ctx);
        }
        // Shut down in this iteration's tick, right after the workers got
        // SIGTERM: a worker then mostly hears of the stop before it sees its
        // listener fail.
        self.shutdown_pending = self.refuse_on_stop && !matches!(self.state, State::HandedOver(_));
        // Every layer's `stopping` runs before the next tick: the supervisor
        // has heard `MAINPID=` the new arbiter by then.
        self.tell_handed = self.handed.is_some();
    }

    fn stopped(&mut self) {
        self.answer(&Err(UpgradeError::Abandoned));
        // New arbiters told to stop (an upgrade the stop abandoned, or one
        // that failed) end before `run` returns: none is left running
        // beside a caller that goes on (holding the listeners, say), none
        // left a zombie. Each had SIGTERM; it gets the upgrade's timeout to
        // finish its own graceful stop, then SIGKILL: the process started,
        // and the arbiter it daemonized into when that is another one.
        let deadline = Instant::now().checked_add(self.timeout);
        for leftover in std::mem::take(&mut self.leftovers) {
            reap_within(&leftover, deadline);
            self.ended(leftover.pid);
        }
    }

    fn upgrade(&mut self, ctx: &mut Context<'_>) -> bool {
        // Nobody waits for this one: the outcome is logged.
        let (reply, _) = mpsc::channel();
        self.trigger
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reply);
        self.requested(ctx);
        true
    }
}

/// Whether the old arbiter queued [`ANSWERS`] on the report socket `fd`
/// before it started this process (then taken off the socket). Anything
/// else first (an earlier release's `ABANDONED=1`) stays for the reporter
/// to read.
fn answers_takeover(fd: &OwnedFd) -> bool {
    use rustix::net::{RecvFlags, recv};
    let mut buf = [0u8; 64];
    let peeked = loop {
        match recv(fd, &mut buf, RecvFlags::DONTWAIT | RecvFlags::PEEK) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other,
        }
    };
    let is_answers = matches!(peeked, Ok((n, _)) if buf.get(..n) == Some(ANSWERS));
    if is_answers {
        let _ = recv(fd, &mut buf, RecvFlags::DONTWAIT);
    }
    is_answers
}

/// What an upgrading arbiter handed to this process: the sockets and the
/// report descriptor. Take it once, first thing in `main`.
#[derive(Debug)]
pub struct Handover {
    listeners: Vec<(String, Option<OwnedFd>)>,
    /// Parallel to `listeners`: given with [`Upgrader::hand_over`].
    kept: Vec<bool>,
    /// The old pool's target worker count, when it told it.
    workers: Option<usize>,
    report: Option<OwnedFd>,
    /// The old arbiter answers `TAKEOVER=1`.
    ask: bool,
}

impl Handover {
    /// Takes what an upgrading arbiter handed to this process, and removes the
    /// variables from the environment (while the process has one thread).
    /// `None` when this process was not started by an upgrade (no
    /// `UFORK_UPGRADE_FD`, or `LISTEN_PID` is another process'), or when it
    /// was taken before.
    ///
    /// # Errors
    ///
    /// The variables are malformed or name descriptors that are not open.
    pub fn take() -> io::Result<Option<Self>> {
        let var = |name| std::env::var(name).ok();
        let Some(report_at) = var(REPORT_FD_ENV) else {
            return Ok(None);
        };
        let ours = std::process::id().to_string();
        if var("LISTEN_PID").as_deref() != Some(ours.as_str()) {
            return Ok(None);
        }
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let count: usize = var("LISTEN_FDS")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("LISTEN_FDS is not a number"))?;
        let report_at: i32 = report_at
            .parse()
            .map_err(|_| bad("UFORK_UPGRADE_FD is not a number"))?;
        let names: Vec<String> = var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let kept_at: Vec<usize> = match var(KEEP_ENV) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|i| i.parse().ok().filter(|&i: &usize| i < count))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("UFORK_UPGRADE_KEEP is not a list of descriptor indices"))?,
        };
        let workers = match var(WORKERS_ENV) {
            None => None,
            Some(n) => Some(
                n.parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .ok_or_else(|| bad("UFORK_UPGRADE_WORKERS is not a worker count"))?,
            ),
        };
        let Some(mut fds) = sys::adopt(count, Some(report_at))? else {
            return Ok(None);
        };
        sys::remove_env(&[
            LISTEN_VARS[0],
            LISTEN_VARS[1],
            LISTEN_VARS[2],
            REPORT_FD_ENV,
            KEEP_ENV,
            WORKERS_ENV,
        ]);
        let report = fds.pop();
        let ask = report.as_ref().is_some_and(answers_takeover);
        let listeners = fds
            .into_iter()
            .enumerate()
            .map(|(i, fd)| {
                let name = names.get(i).cloned().unwrap_or_else(|| "unknown".into());
                (name, Some(fd))
            })
            .collect();
        let kept = (0..count).map(|i| kept_at.contains(&i)).collect();
        // Until the old arbiter hands the service over, a graceful stop of
        // this process leaves these sockets alone (see `owns_listeners`).
        INHERITED_PENDING.store(true, std::sync::atomic::Ordering::Release);
        Ok(Some(Self {
            listeners,
            kept,
            ask,
            workers,
            report,
        }))
    }

    /// The names of the handed-over descriptors, in order (fds 3, 4, ...).
    pub fn names(&self) -> Vec<&str> {
        self.listeners.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Whether the old arbiter gave each descriptor, in the order of
    /// [`names`](Self::names), with [`Upgrader::hand_over`]: a socket its
    /// supervisor holds (socket activation's), which a graceful stop must
    /// leave listening. Give it to this arbiter's upgrader the same way.
    pub fn kept_listening(&self) -> Vec<bool> {
        self.kept.clone()
    }

    /// The old pool's target worker count when the upgrade began, if it
    /// told it: it does when it was scaled at runtime away from its
    /// configured count ([`Upgrader::configured_workers`]). A new arbiter
    /// that starts this many workers keeps the capacity an operator added.
    pub fn workers(&self) -> Option<usize> {
        self.workers
    }

    /// Takes the first handed-over descriptor named `name` not taken yet.
    pub fn take_listener(&mut self, name: &str) -> Option<OwnedFd> {
        self.listeners
            .iter_mut()
            .find(|(n, fd)| n == name && fd.is_some())
            .and_then(|(_, fd)| fd.take())
    }

    /// Takes every descriptor not taken yet, with its name, in order.
    pub fn take_all(&mut self) -> Vec<(String, OwnedFd)> {
        self.listeners
            .iter_mut()
            .filter_map(|(n, fd)| fd.take().map(|fd| (n.clone(), fd)))
            .collect()
    }

    /// The layer that tells the old arbiter `READY=1` once every worker of
    /// this pool is ready (add it to the new arbiter's builder).
    ///
    /// From then on, [`speaks_for_service`] is false in this process until
    /// the old arbiter hands it the service.
    pub fn reporter(self) -> Option<ReadyReporter> {
        self.report.map(|report| {
            AWAITING_SERVICE.store(true, std::sync::atomic::Ordering::Release);
            ReadyReporter {
                report: Some(report),
                token: None,
                check: Instant::now(),
                before_ready: None,
                reported: None,
                abandoned: false,
                ask: self.ask,
                asked: false,
            }
        })
    }
}

/// What the old arbiter says on the report socket when it gives up on the
/// upgrade (a stop, a timeout) rather than hand the service over.
const ABANDONED: &[u8] = b"ABANDONED=1\n";

/// How often the reporter looks at the scoreboard while workers boot.
const READY_POLL: Duration = Duration::from_millis(10);

/// A [`Layer`] for the new arbiter: reports `READY=1` and `MAINPID=` to the
/// old one once every worker is ready, then waits on the socket for the old
/// one to say `MAINPID=` this process, once it stopped speaking for the
/// service: from then on [`speaks_for_service`] is true. An old arbiter that
/// closes the socket after `READY=1` without saying `ABANDONED=1` hands the
/// service over too (ufork binaries before this handshake close it as they
/// stop, and a new arbiter that never spoke would miss systemd's watchdog).
/// Dropped without reporting (the pool stopped first), the old arbiter hears
/// EOF and keeps serving.
pub struct ReadyReporter {
    report: Option<OwnedFd>,
    token: Option<Token>,
    check: Instant,
    before_ready: Option<BeforeReady>,
    /// After `READY=1`: the socket the old arbiter hands the service over on.
    reported: Option<(OwnedFd, Token)>,
    /// The old arbiter said `ABANDONED=1`: its end of file hands nothing over.
    abandoned: bool,
    /// The old arbiter answers `TAKEOVER=1`: ask before taking over.
    ask: bool,
    /// `TAKEOVER=1` went out; waiting for `GRANTED=1`.
    asked: bool,
}

type BeforeReady = Box<dyn FnMut() -> Result<(), String> + Send>;

impl fmt::Debug for ReadyReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyReporter")
            .field("reported", &self.report.is_none())
            .finish_non_exhaustive()
    }
}

impl ReadyReporter {
    /// Runs `hook` once every worker is ready, just before `READY=1` goes
    /// out: the place to take over what the old arbiter owned by path (a
    /// pidfile renamed into place, a control socket). An error is logged,
    /// nothing is reported (the old arbiter keeps serving) and this pool stops.
    pub fn before_ready(
        mut self,
        hook: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> Self {
        self.before_ready = Some(Box::new(hook));
        self
    }
}

/// This process speaks for the service from now on.
fn take_service(why: &str) {
    AWAITING_SERVICE.store(false, std::sync::atomic::Ordering::Release);
    INHERITED_PENDING.store(false, std::sync::atomic::Ordering::Release);
    log::debug!(target: "ufork", "upgrade: {why}; this arbiter speaks for the service");
}

impl Layer for ReadyReporter {
    fn started(&mut self, ctx: &mut Context<'_>) {
        // Registered so forked workers close their copy: only this process
        // may hold the old arbiter's socket open.
        if let Some(fd) = &self.report {
            // Readable when the old arbiter answers `TAKEOVER=1`: its
            // answer, or its `ABANDONED=1`, comes before `READY=1`.
            let interest = if self.ask {
                crate::Interest::READABLE
            } else {
                crate::Interest::default()
            };
            self.token = Some(ctx.register(fd.as_fd(), interest));
            // The pid first, so a timed-out upgrade stops this process even
            // when it daemonized away from the one the old arbiter started.
            let message = format!("MAINPID={}\n", std::process::id());
            let _ = rustix::net::send(fd, message.as_bytes(), rustix::net::SendFlags::NOSIGNAL);
        }
    }

    fn event(&mut self, token: Token, readiness: Readiness, ctx: &mut Context<'_>) {
        if let Some((fd, t)) = &self.reported {
            if *t == token {
                let ours = format!("MAINPID={}", std::process::id());
                let mut buf = [0u8; 256];
                loop {
                    match rustix::net::recv(fd, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                        Err(rustix::io::Errno::INTR) => continue,
                        Ok((n, _)) if n > 0 => {
                            let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
                            if text.lines().any(|l| l == ours) {
                                take_service("the old arbiter handed the service over");
                            } else {
                                let abandoned = ABANDONED.trim_ascii_end();
                                self.abandoned |= text.lines().any(|l| l.as_bytes() == abandoned);
                                continue;
                            }
                        }
                        // End of file: an old arbiter that does not say
                        // `MAINPID=` (an earlier binary) has stopped.
                        Ok(_) if !self.abandoned => {
                            take_service("the old arbiter closed the upgrade socket");
                        }
                        Ok(_) => {}
                        Err(rustix::io::Errno::AGAIN) => return,
                        // The old arbiter closed its end with something of
                        // ours unread: what it said before is still queued.
                        Err(rustix::io::Errno::CONNRESET) => continue,
                        Err(_) => {}
                    }
                    break;
                }
                ctx.deregister(token);
                self.reported = None;
                return;
            }
        }
        if Some(token) != self.token {
            return;
        }
        if readiness.readable {
            match self.read_answer() {
                Answer::Granted if self.asked => {
                    self.asked = false;
                    if ctx.handle().snapshot().stopping {
                        // Told to stop meanwhile: the old arbiter hears the
                        // end of file and keeps serving.
                        self.give_up(ctx);
                    } else {
                        self.take_over(ctx);
                    }
                    return;
                }
                Answer::Abandoned => {
                    // It gave up first (its timeout, its stop): taking over
                    // now would leave two pools owning the same files.
                    log::warn!(target: "ufork", "upgrade: the old arbiter gave up on this one before it took over; stopping");
                    self.give_up(ctx);
                    ctx.handle().stop();
                    return;
                }
                Answer::Granted | Answer::Nothing => {}
            }
        }
        if readiness.hangup || readiness.error {
            // The old arbiter is gone: nobody to report to.
            self.give_up(ctx);
        }
    }

    fn tick(&mut self, ctx: &mut Context<'_>) {
        if self.report.is_none() || Instant::now() < self.check {
            return;
        }
        self.check = Instant::now()
            .checked_add(READY_POLL)
            .unwrap_or_else(Instant::now);
        let snapshot = ctx.handle().snapshot();
        if self.asked
            || snapshot.stopping
            || snapshot.target == 0
            || snapshot.ready_count() < snapshot.target
        {
            return;
        }
        if self.ask {
            // Nothing is taken over before the old arbiter grants it (see
            // `TAKEOVER`); its answer comes on the socket.
            if let Some(fd) = &self.report {
                match rustix::net::send(fd, TAKEOVER, rustix::net::SendFlags::NOSIGNAL) {
                    Ok(_) => self.asked = true,
                    Err(e) => {
                        log::error!(target: "ufork", "cannot ask the old arbiter to take over: {e}");
                        self.give_up(ctx);
                    }
                }
            }
            return;
        }
        self.take_over(ctx);
    }

    fn next_deadline(&self) -> Option<Instant> {
        (self.report.is_some() && !self.asked).then_some(self.check)
    }
}

/// What the old arbiter said on the report socket before `READY=1`.
enum Answer {
    Granted,
    Abandoned,
    Nothing,
}

impl ReadyReporter {
    /// Reads what the old arbiter said since the last look.
    fn read_answer(&mut self) -> Answer {
        let Some(fd) = &self.report else {
            return Answer::Nothing;
        };
        let mut answer = Answer::Nothing;
        let mut buf = [0u8; 256];
        loop {
            match rustix::net::recv(fd, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                Err(rustix::io::Errno::INTR) => continue,
                Ok((n, _)) if n > 0 => {
                    let text = &buf[..n.min(buf.len())];
                    for line in text.split(|&b| b == b'\n') {
                        if line == ABANDONED.trim_ascii_end() {
                            return Answer::Abandoned;
                        }
                        if line == GRANTED.trim_ascii_end() {
                            answer = Answer::Granted;
                        }
                    }
                }
                // The old arbiter closed its end with `TAKEOVER=1` unread:
                // its `ABANDONED=1` is still queued behind the error.
                Err(rustix::io::Errno::CONNRESET) => continue,
                _ => return answer,
            }
        }
    }

    /// Nobody to report to any more: the socket goes, nothing is taken over.
    fn give_up(&mut self, ctx: &mut Context<'_>) {
        if let Some(token) = self.token.take() {
            ctx.deregister(token);
        }
        self.report = None;
        self.asked = false;
    }

    /// Takes over what the old arbiter owned by path, then says `READY=1`.
    fn take_over(&mut self, ctx: &mut Context<'_>) {
        if let Some(hook) = &mut self.before_ready {
            if let Err(e) = hook() {
                log::error!(target: "ufork", "cannot take over from the old arbiter: {e}; stopping");
                self.report = None;
                if let Some(token) = self.token.take() {
                    ctx.deregister(token);
                }
                ctx.handle().stop();
                return;
            }
        }
        let message = format!("READY=1\nMAINPID={}\n", std::process::id());
        if let Some(fd) = self.report.take() {
            if let Some(token) = self.token.take() {
                ctx.deregister(token);
            }
            match rustix::net::send(&fd, message.as_bytes(), rustix::net::SendFlags::NOSIGNAL) {
                Ok(_) => {
                    let token = ctx.register(fd.as_fd(), crate::Interest::READABLE);
                    self.reported = Some((fd, token));
                }
                Err(e) => {
                    log::error!(target: "ufork", "cannot tell the old arbiter this one is ready: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new arbiter's reporter that asked `TAKEOVER=1` on `report`.
    fn asked(report: OwnedFd) -> ReadyReporter {
        ReadyReporter {
            report: Some(report),
            token: None,
            check: Instant::now(),
            before_ready: None,
            reported: None,
            abandoned: false,
            ask: true,
            asked: true,
        }
    }

    fn reporter_with(said: &[&[u8]]) -> Answer {
        let (old, new) = pair();
        for message in said {
            rustix::net::send(&old, message, rustix::net::SendFlags::empty()).unwrap();
        }
        asked(new).read_answer()
    }

    #[test]
    fn an_old_arbiter_that_gave_up_is_never_taken_for_a_grant() {
        assert!(matches!(reporter_with(&[GRANTED]), Answer::Granted));
        assert!(matches!(reporter_with(&[ABANDONED]), Answer::Abandoned));
        // A stop right after the grant: the files are not taken over.
        assert!(matches!(
            reporter_with(&[GRANTED, ABANDONED]),
            Answer::Abandoned
        ));
        assert!(matches!(reporter_with(&[b"MAINPID=1\n"]), Answer::Nothing));
        assert!(matches!(reporter_with(&[]), Answer::Nothing));
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None).unwrap()
    }

    fn next_message(fd: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = [0u8; 64];
        match rustix::net::recv(fd, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((n, _)) if n > 0 => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Only an old arbiter that queued `ANSWERS=TAKEOVER` first is asked;
    /// an earlier release's messages stay for the reporter.
    #[test]
    fn only_an_old_arbiter_that_says_it_answers_is_asked() {
        let (old, new) = pair();
        rustix::net::send(&old, ANSWERS, rustix::net::SendFlags::empty()).unwrap();
        rustix::net::send(&old, ABANDONED, rustix::net::SendFlags::empty()).unwrap();
        assert!(answers_takeover(&new));
        assert_eq!(next_message(&new).as_deref(), Some(ABANDONED));

        let (old, new) = pair();
        assert!(!answers_takeover(&new), "an earlier release says nothing");
        rustix::net::send(&old, ABANDONED, rustix::net::SendFlags::empty()).unwrap();
        assert!(!answers_takeover(&new));
        assert_eq!(next_message(&new).as_deref(), Some(ABANDONED));
    }

    /// The old arbiter gave up (`ABANDONED=1`) and closed its end with
    /// `TAKEOVER=1` unread: the reset comes first, the answer after it.
    #[test]
    fn an_abandon_behind_a_reset_is_still_read() {
        let (old, new) = pair();
        rustix::net::send(&new, TAKEOVER, rustix::net::SendFlags::empty()).unwrap();
        rustix::net::send(&old, ABANDONED, rustix::net::SendFlags::empty()).unwrap();
        drop(old);
        assert!(matches!(asked(new).read_answer(), Answer::Abandoned));
    }

    #[test]
    fn capture_names_this_program_and_its_arguments() {
        let reexec = Reexec::capture().unwrap();
        assert!(reexec.program().is_absolute());
        assert!(reexec.program().exists(), "{}", reexec.program().display());
        assert_eq!(reexec.args().len(), std::env::args_os().count() - 1);
    }

    #[test]
    fn plan_replaces_socket_activation_and_places_the_report_last() {
        let reexec = Reexec::new("/bin/true", ["a", "b"]).unwrap();
        let (a, b) = rustix::pipe::pipe().unwrap();
        let handover = vec![("http".to_owned(), a), ("admin".to_owned(), b)];
        let (report, _theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let plan = reexec.plan(&handover, &[], None, &report).unwrap();
        let env: Vec<String> = plan.env.iter().map(|e| sys::lossy(e)).collect();
        assert!(env.contains(&"LISTEN_FDS=2".to_owned()), "{env:?}");
        assert!(!env.iter().any(|e| e.starts_with("UFORK_UPGRADE_WORKERS=")));
        assert!(!env.iter().any(|e| e.starts_with("UFORK_UPGRADE_KEEP=")));
        assert!(env.contains(&"LISTEN_FDNAMES=http:admin".to_owned()));
        assert!(env.contains(&format!("{REPORT_FD_ENV}=5")));
        assert!(!env.iter().any(|e| e.starts_with("LISTEN_PID=")));
        assert_eq!(plan.fds.len(), 3);
        assert_eq!(plan.fds[2], report.as_raw_fd());
        assert_eq!(plan.args.len(), 2);
        // The sockets given with hand_over are named for the new arbiter.
        let plan = reexec.plan(&handover, &[1], Some(7), &report).unwrap();
        let env: Vec<String> = plan.env.iter().map(|e| sys::lossy(e)).collect();
        assert!(env.contains(&"UFORK_UPGRADE_KEEP=1".to_owned()), "{env:?}");
        assert!(
            env.contains(&"UFORK_UPGRADE_WORKERS=7".to_owned()),
            "{env:?}"
        );
    }

    #[test]
    fn the_watchdog_pid_of_this_process_is_not_passed_on() {
        assert!(!passed_on(b"WATCHDOG_PID", b"42", 42));
        assert!(
            passed_on(b"WATCHDOG_PID", b"7", 42),
            "another process' watchdog"
        );
        assert!(passed_on(b"WATCHDOG_USEC", b"10000000", 42));
        assert!(passed_on(b"NOTIFY_SOCKET", b"/run/notify", 42));
        for replaced in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            REPORT_FD_ENV,
            KEEP_ENV,
            WORKERS_ENV,
        ] {
            assert!(!passed_on(replaced.as_bytes(), b"1", 42), "{replaced}");
        }
    }

    #[test]
    fn a_nul_in_an_argument_is_an_error_not_a_panic() {
        let reexec = Reexec::new("/bin/true", ["a\0b"]).unwrap();
        let (report, _theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let err = reexec.plan(&[], &[], None, &report).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
