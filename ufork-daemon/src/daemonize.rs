//! Double fork with a readiness handshake between the daemon and its launcher.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::process::Signal;

use crate::control::{has_exited, open_pidfd, poll_timeout, wait_pidfd};
use crate::error::{Error, Result};
use crate::pidfile::{GroupFile, Pidfile};
use crate::rotate::{RotatingFile, RotatingFileBuilder};
use crate::sys::{self, Forked};

/// Default time the launcher waits for [`Daemon::ready`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default umask of the daemon: no write for the group, nothing for others.
pub const DEFAULT_UMASK: u32 = 0o027;
/// How long a failed daemon gets to exit before the launcher kills it.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The message the launcher prints when a [`Daemon`] is dropped before it
/// reported readiness or failure.
const GAVE_UP: &str = "the daemon gave up before reporting readiness";

/// How to daemonize: a builder whose [`start`](Self::start) forks.
///
/// # Examples
///
/// ```no_run
/// use std::net::TcpListener;
/// use ufork_daemon::{Daemonize, Launched};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let launched = Daemonize::new()
///     .pidfile("/run/myserver.pid")
///     .log_file("/var/log/myserver.log")
///     .start();
/// let mut daemon = match launched {
///     Ok(Launched::Parent { pid }) => {
///         println!("daemon started as pid {pid}");
///         return Ok(());
///     }
///     Ok(Launched::Daemon(daemon)) => daemon,
///     Err(error) => {
///         eprintln!("error: {}", error.report());
///         std::process::exit(1);
///     }
/// };
/// // In the daemon: set up, then tell the launcher.
/// let listener = match TcpListener::bind("127.0.0.1:8080") {
///     Ok(listener) => listener,
///     Err(error) => {
///         daemon.fail(format_args!("cannot bind 127.0.0.1:8080: {error}"))?;
///         return Ok(());
///     }
/// };
/// daemon.ready()?;
/// for stream in listener.incoming() {
///     // serve
///     # drop(stream);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Daemonize {
    working_directory: PathBuf,
    umask: u32,
    pidfile: Option<PathBuf>,
    pgrpfile: Option<PathBuf>,
    log: Option<RotatingFileBuilder>,
    timeout: Option<Duration>,
    launcher_unblocks: Vec<i32>,
}

impl Default for Daemonize {
    fn default() -> Self {
        Self::new()
    }
}

/// The outcome of [`Daemonize::start`], on each side of the fork.
#[derive(Debug)]
#[must_use = "the launcher must exit or carry on, the daemon must report readiness"]
pub enum Launched {
    /// In the launching process, once the daemon reported readiness.
    Parent {
        /// The daemon's pid.
        pid: i32,
    },
    /// In the daemon, set up and not yet ready.
    Daemon(Daemon),
}

impl Daemonize {
    /// Defaults: working directory `/`, umask 0027, no pidfile, stdout and
    /// stderr to `/dev/null`, 30 s for the daemon to report readiness.
    pub fn new() -> Self {
        Daemonize {
            working_directory: PathBuf::from("/"),
            umask: DEFAULT_UMASK,
            pidfile: None,
            pgrpfile: None,
            log: None,
            timeout: Some(DEFAULT_TIMEOUT),
            launcher_unblocks: Vec::new(),
        }
    }

    /// Signals the launcher unblocks while it waits for the daemon's
    /// readiness, the daemon keeping them blocked: a program that blocks
    /// the signals it handles until its handlers are in place (so that one
    /// sent as soon as the pidfile appears is not fatal) keeps Ctrl-C and
    /// `kill` working on the launcher. Numbers that are no signal are
    /// skipped.
    pub fn unblock_in_launcher(mut self, signals: &[i32]) -> Self {
        self.launcher_unblocks = signals.to_vec();
        self
    }

    /// The daemon's working directory (default `/`, so that it holds no
    /// mount point busy). Relative paths given to this builder are resolved
    /// against the launcher's directory, before the change.
    pub fn working_directory(mut self, path: impl Into<PathBuf>) -> Self {
        self.working_directory = path.into();
        self
    }

    /// The daemon's umask (default 0027).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = mask & 0o777;
        self
    }

    /// A [`Pidfile`] the daemon takes (locked, written with its pid) before it
    /// is handed to you; a running daemon with the same pidfile makes
    /// [`start`](Self::start) fail with [`Error::AlreadyRunning`].
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pidfile = Some(path.into());
        self
    }

    /// A file the daemon writes its process group id into (like uFork's
    /// `pgrpfile`), for stopping the whole group with
    /// [`signal_group`](crate::signal_group). Removed with the daemon.
    pub fn pgrpfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pgrpfile = Some(path.into());
        self
    }

    /// Sends stdout and stderr to a [`RotatingFile`] at `path` with default
    /// settings, instead of `/dev/null`.
    pub fn log_file(self, path: impl Into<PathBuf>) -> Self {
        self.log(RotatingFile::builder(path))
    }

    /// Sends stdout and stderr to a [`RotatingFile`] with these settings,
    /// instead of `/dev/null`; the daemon gets it as [`Daemon::log`]
    /// (`redirect_stdio` is turned on, so fds 1 and 2 follow its rotations).
    pub fn log(mut self, builder: RotatingFileBuilder) -> Self {
        self.log = Some(builder.redirect_stdio(true));
        self
    }

    /// How long the launcher waits for the daemon to report readiness
    /// (default 30 s; `None` waits for ever). On timeout the launcher sends
    /// the daemon SIGTERM (SIGKILL if it is still there 10 s later) and fails
    /// with [`Error::Timeout`].
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Forks, starts a new session and forks again; returns
    /// [`Launched::Daemon`] in the daemon once it is set up, and
    /// [`Launched::Parent`] in the launcher once the daemon called
    /// [`Daemon::ready`].
    ///
    /// The daemon, in order: takes the pidfile, writes the process-group file,
    /// sets the umask, opens the log (or `/dev/null`), points every
    /// descriptor from 3 up that the launcher inherited and never took (one
    /// without `FD_CLOEXEC`: std and rustix open everything with it) at
    /// `/dev/null` (closing one past the hard open-files limit, which no
    /// `dup3` reaches), changes directory, and points stdin at `/dev/null` and
    /// stdout and stderr at the log. If a step
    /// fails it tells the launcher and exits; it never comes back here.
    ///
    /// Call it while the process has a single thread (before spawning any):
    /// the daemon carries on after `fork`, which only copies the calling
    /// thread, so a lock another thread held would stay held in the daemon
    /// for good. It checks, and refuses otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::MultiThreaded`] if the process has more than one thread
    /// (nothing was forked). In the launcher only: [`Error::Fork`] or
    /// [`Error::Readiness`] for its own steps; the daemon's failed step ([`Error::AlreadyRunning`],
    /// [`Error::Chdir`], [`Error::OpenLog`] ...) as the daemon reported it;
    /// [`Error::DaemonFailed`] with the daemon's message after
    /// [`Daemon::fail`] or a drop; [`Error::DaemonExited`] if it died
    /// silently; [`Error::Timeout`]. Whenever this returns an error, the
    /// daemon is gone.
    pub fn start(self) -> Result<Launched> {
        if let Some(threads) = thread_count().filter(|&n| n > 1) {
            return Err(Error::MultiThreaded { threads });
        }
        let plan = self.resolve()?;
        let (launcher_end, daemon_end) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|errno| Error::Readiness {
            source: errno.into(),
        })?;
        // Whatever std buffered must be printed once, by the launcher, not
        // again by the daemon.
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        match sys::fork().map_err(|source| Error::Fork { source })? {
            Forked::Parent(intermediate) => {
                drop(daemon_end);
                sys::unblock_signals(&plan.launcher_unblocks);
                // The intermediate child only forks and exits: reap it now.
                while let Err(Errno::INTR) = rustix::process::waitpid(
                    rustix::process::Pid::from_raw(intermediate),
                    rustix::process::WaitOptions::empty(),
                ) {}
                let pid = await_daemon(&launcher_end, plan.timeout)?;
                Ok(Launched::Parent { pid })
            }
            Forked::Child => {
                drop(launcher_end);
                let channel = Channel { fd: daemon_end };
                if let Err(errno) = rustix::process::setsid() {
                    channel.report(&Error::Setsid {
                        source: errno.into(),
                    });
                    sys::exit_now(1);
                }
                match sys::fork() {
                    Err(source) => {
                        channel.report(&Error::Fork { source });
                        sys::exit_now(1);
                    }
                    // The session leader leaves, so the daemon can never
                    // acquire a controlling terminal. It tells the daemon's
                    // pid first: the launcher reaps it before reading, so
                    // it knows whom to watch (and stop) from the start.
                    Ok(Forked::Parent(daemon)) => {
                        let code = match channel.send(&encode_pid(TAG_STARTED, daemon)) {
                            Ok(()) => 0,
                            Err(_) => 1,
                        };
                        sys::exit_now(code)
                    }
                    Ok(Forked::Child) => match plan.set_up(channel) {
                        Ok(daemon) => Ok(Launched::Daemon(daemon)),
                        Err((channel, error)) => {
                            channel.report(&error);
                            sys::exit_now(1);
                        }
                    },
                }
            }
        }
    }

    /// Makes the paths absolute: the daemon resolves them after `chdir`, and
    /// a rotating log renames its files for its whole life.
    fn resolve(self) -> Result<Plan> {
        let absolute = |path: PathBuf, wrap: fn(PathBuf, io::Error) -> Error| {
            std::path::absolute(&path).map_err(|source| wrap(path, source))
        };
        let working_directory = absolute(self.working_directory, |path, source| Error::Chdir {
            path,
            source,
        })?;
        let pidfile = self
            .pidfile
            .map(|p| absolute(p, |path, source| Error::OpenPidfile { path, source }))
            .transpose()?;
        let pgrpfile = self
            .pgrpfile
            .map(|p| absolute(p, |path, source| Error::WritePgrpfile { path, source }))
            .transpose()?;
        let log = match self.log {
            Some(builder) => {
                let path = absolute(builder.path().to_path_buf(), |path, source| {
                    Error::OpenLog { path, source }
                })?;
                Some(builder.with_path(path))
            }
            None => None,
        };
        Ok(Plan {
            working_directory,
            umask: self.umask,
            pidfile,
            pgrpfile,
            log,
            timeout: self.timeout,
            launcher_unblocks: self.launcher_unblocks,
        })
    }
}

/// [`Daemonize`] with absolute paths.
struct Plan {
    working_directory: PathBuf,
    umask: u32,
    pidfile: Option<PathBuf>,
    pgrpfile: Option<PathBuf>,
    log: Option<RotatingFileBuilder>,
    timeout: Option<Duration>,
    launcher_unblocks: Vec<i32>,
}

impl Plan {
    /// The daemon's side of `start`, after the second fork.
    fn set_up(self, channel: Channel) -> std::result::Result<Daemon, (Channel, Error)> {
        let pid = rustix::process::getpid().as_raw_pid();
        match self.set_up_steps() {
            Ok((pidfile, pgrpfile, log)) => Ok(Daemon {
                pid,
                channel: Some(channel),
                pidfile,
                pgrpfile,
                log,
            }),
            Err(error) => Err((channel, error)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn set_up_steps(self) -> Result<(Option<Pidfile>, Option<GroupFile>, Option<RotatingFile>)> {
        rustix::process::umask(Mode::from_raw_mode(self.umask));
        let pidfile = self.pidfile.as_deref().map(Pidfile::create).transpose()?;
        let pgrpfile = self
            .pgrpfile
            .as_deref()
            .map(GroupFile::create)
            .transpose()?;
        let devnull = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|errno| Error::OpenDevNull {
                source: errno.into(),
            })?;
        // What the launcher inherited and never took (a shell's pipe at fd
        // 3, say) would stay open for the daemon's life, and its workers'.
        sys::release_inherited(&devnull).map_err(|source| Error::ReleaseInherited { source })?;
        // The log points fds 1 and 2 at itself when it opens.
        let log = self.log.map(RotatingFileBuilder::open).transpose()?;
        rustix::process::chdir(&self.working_directory).map_err(|errno| Error::Chdir {
            path: self.working_directory.clone(),
            source: errno.into(),
        })?;
        let redirect = |result: rustix::io::Result<()>| {
            result.map_err(|errno| Error::RedirectStdio {
                source: errno.into(),
            })
        };
        redirect(rustix::stdio::dup2_stdin(&devnull))?;
        if log.is_none() {
            redirect(rustix::stdio::dup2_stdout(&devnull))?;
            redirect(rustix::stdio::dup2_stderr(&devnull))?;
        }
        Ok((pidfile, pgrpfile, log))
    }
}

/// The daemon's handle: its pidfile, process-group file and log, and the
/// readiness channel to the launcher.
///
/// Call [`ready`](Self::ready) once the daemon serves (sockets bound, state
/// loaded), or [`fail`](Self::fail) with a message for the launcher to print.
/// Dropping it before either reports a generic failure. Keep it alive for the
/// daemon's life: dropping it removes the pidfile and the process-group file.
pub struct Daemon {
    pid: i32,
    channel: Option<Channel>,
    pidfile: Option<Pidfile>,
    pgrpfile: Option<GroupFile>,
    log: Option<RotatingFile>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("pid", &self.pid)
            .field("notified", &self.channel.is_none())
            .field("pidfile", &self.pidfile.as_ref().map(Pidfile::path))
            .field("log", &self.log.as_ref().map(RotatingFile::path))
            .finish()
    }
}

impl Daemon {
    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfile it holds, if one was asked for.
    pub fn pidfile(&self) -> Option<&Pidfile> {
        self.pidfile.as_ref()
    }

    /// The log that fds 1 and 2 point at, if one was asked for: clone it as a
    /// sink for output lines, and call [`RotatingFile::reopen`] on SIGUSR1.
    pub fn log(&self) -> Option<&RotatingFile> {
        self.log.as_ref()
    }

    /// Tells the launcher the daemon is up: it returns [`Launched::Parent`]
    /// (or exits 0). Does nothing if already reported.
    ///
    /// Call it before forking workers that might outlive the daemon, or they
    /// inherit the channel (it is close-on-exec, not close-on-fork).
    ///
    /// # Errors
    ///
    /// [`Error::Readiness`] if the launcher cannot be told (it was killed).
    pub fn ready(&mut self) -> Result<()> {
        match self.channel.take() {
            Some(channel) => channel
                .send(&encode_pid(TAG_READY, self.pid))
                .map_err(|source| Error::Readiness { source }),
            None => Ok(()),
        }
    }

    /// Tells the launcher the daemon failed with `message`, which it prints
    /// (and exits non-zero, or returns [`Error::DaemonFailed`]). The launcher
    /// then waits for the daemon to exit (10 s, then SIGKILL): exit soon after.
    /// Does nothing if already reported.
    ///
    /// # Errors
    ///
    /// [`Error::Readiness`] if the launcher cannot be told.
    pub fn fail(&mut self, message: impl fmt::Display) -> Result<()> {
        match self.channel.take() {
            Some(channel) => channel
                .send(&encode_failure(&Error::DaemonFailed {
                    message: message.to_string(),
                }))
                .map_err(|source| Error::Readiness { source }),
            None => Ok(()),
        }
    }

    /// Whether [`ready`](Self::ready) or [`fail`](Self::fail) was called.
    pub fn has_reported(&self) -> bool {
        self.channel.is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Files first: by the time the launcher hears, they are gone.
        self.pidfile.take();
        self.pgrpfile.take();
        if let Some(channel) = self.channel.take() {
            channel.report(&Error::DaemonFailed {
                message: GAVE_UP.to_owned(),
            });
        }
    }
}

/// Exits the process with the launcher's outcome, or returns the daemon.
///
/// The convenience over [`Daemonize::start`]: in the launcher, exits 0 once
/// the daemon is ready, or prints `error: ` and the daemon's error to stderr
/// and exits 1. In the daemon, returns its [`Daemon`] handle; call
/// [`Daemon::ready`] when it serves.
///
/// # Examples
///
/// ```no_run
/// use ufork_daemon::{daemonize, Daemonize};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut daemon = daemonize(Daemonize::new().pidfile("/run/myserver.pid"));
/// // ... bind, load ...
/// daemon.ready()?;
/// # Ok(())
/// # }
/// ```
pub fn daemonize(options: Daemonize) -> Daemon {
    match options.start() {
        Ok(Launched::Daemon(daemon)) => daemon,
        Ok(Launched::Parent { .. }) => std::process::exit(0),
        Err(error) => {
            eprintln!("error: {}", error.report());
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------
// The readiness channel: a CLOEXEC unix stream socket pair rather than a
// pipe, so that the daemon's sends use MSG_NOSIGNAL and a launcher killed
// meanwhile yields EPIPE instead of a SIGPIPE that would kill the daemon.
//
// Frames: a u32 little-endian length, then a tag byte and its payload.

struct Channel {
    fd: OwnedFd,
}

impl Channel {
    fn send(&self, payload: &[u8]) -> io::Result<()> {
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(payload);
        let mut sent = 0;
        while sent < frame.len() {
            match rustix::net::send(&self.fd, &frame[sent..], SendFlags::NOSIGNAL) {
                Ok(n) => sent += n,
                Err(Errno::INTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(())
    }

    /// Sends `error` as the failure of the start, best effort: there is
    /// nobody else to tell.
    fn report(self, error: &Error) {
        let _ = self.send(&encode_failure(error));
    }
}

enum Message {
    /// The daemon exists, with this pid.
    Started(i32),
    /// The daemon is ready.
    Ready(i32),
    /// The start failed.
    Failed(Error),
}

const TAG_STARTED: u8 = b'S';
const TAG_READY: u8 = b'R';
const TAG_FAILED: u8 = b'F';

/// Error kinds on the wire; anything else travels as its report.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Kind {
    Failed = 0,
    Fork,
    Setsid,
    Chdir,
    OpenDevNull,
    RedirectStdio,
    OpenPidfile,
    LockPidfile,
    AlreadyRunning,
    WritePidfile,
    ReadPidfile,
    InvalidPidfile,
    WritePgrpfile,
    OpenLog,
    Readiness,
}

const KINDS: [Kind; 15] = [
    Kind::Failed,
    Kind::Fork,
    Kind::Setsid,
    Kind::Chdir,
    Kind::OpenDevNull,
    Kind::RedirectStdio,
    Kind::OpenPidfile,
    Kind::LockPidfile,
    Kind::AlreadyRunning,
    Kind::WritePidfile,
    Kind::ReadPidfile,
    Kind::InvalidPidfile,
    Kind::WritePgrpfile,
    Kind::OpenLog,
    Kind::Readiness,
];

/// The fields of an error on the wire.
struct Wire<'a> {
    kind: Kind,
    pid: i32,
    source: Option<&'a io::Error>,
    path: &'a [u8],
    text: String,
}

fn encode_pid(tag: u8, pid: i32) -> Vec<u8> {
    [&[tag][..], &pid.to_le_bytes()].concat()
}

fn encode_failure(error: &Error) -> Vec<u8> {
    let wire = to_wire(error);
    let (errno, text) = match wire.source {
        Some(source) => match source.raw_os_error() {
            Some(code) => (code, wire.text),
            None => (0, source.to_string()),
        },
        None => (0, wire.text),
    };
    let mut out = vec![TAG_FAILED, wire.kind as u8];
    out.extend_from_slice(&wire.pid.to_le_bytes());
    out.extend_from_slice(&errno.to_le_bytes());
    out.extend_from_slice(&(wire.path.len() as u32).to_le_bytes());
    out.extend_from_slice(wire.path);
    out.extend_from_slice(text.as_bytes());
    out
}

impl Message {
    fn decode(payload: &[u8]) -> io::Result<Message> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed message from the daemon",
            )
        };
        let int = |at: usize| -> io::Result<i32> {
            payload
                .get(at..at + 4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(bad)
        };
        match payload.first() {
            Some(&TAG_STARTED) => Ok(Message::Started(int(1)?)),
            Some(&TAG_READY) => Ok(Message::Ready(int(1)?)),
            Some(&TAG_FAILED) => {
                let kind = *KINDS
                    .get(*payload.get(1).ok_or_else(bad)? as usize)
                    .ok_or_else(bad)?;
                let pid = int(2)?;
                let errno = int(6)?;
                let path_len = int(10)? as usize;
                let path = payload.get(14..14 + path_len).ok_or_else(bad)?;
                let text = String::from_utf8_lossy(&payload[14 + path_len..]).into_owned();
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(path));
                let source = if errno != 0 {
                    io::Error::from_raw_os_error(errno)
                } else {
                    io::Error::other(text.clone())
                };
                Ok(Message::Failed(from_wire(kind, pid, path, source, text)))
            }
            _ => Err(bad()),
        }
    }
}

fn bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

fn to_wire(error: &Error) -> Wire<'_> {
    let none: &[u8] = &[];
    let wire = |kind, source, path| Wire {
        kind,
        pid: 0,
        source: Some(source),
        path,
        text: String::new(),
    };
    match error {
        Error::Fork { source } => wire(Kind::Fork, source, none),
        Error::Setsid { source } => wire(Kind::Setsid, source, none),
        Error::Chdir { path, source } => wire(Kind::Chdir, source, bytes(path)),
        Error::OpenDevNull { source } => wire(Kind::OpenDevNull, source, none),
        Error::RedirectStdio { source } => wire(Kind::RedirectStdio, source, none),
        Error::OpenPidfile { path, source } => wire(Kind::OpenPidfile, source, bytes(path)),
        Error::LockPidfile { path, source } => wire(Kind::LockPidfile, source, bytes(path)),
        Error::WritePidfile { path, source } => wire(Kind::WritePidfile, source, bytes(path)),
        Error::ReadPidfile { path, source } => wire(Kind::ReadPidfile, source, bytes(path)),
        Error::WritePgrpfile { path, source } => wire(Kind::WritePgrpfile, source, bytes(path)),
        Error::OpenLog { path, source } => wire(Kind::OpenLog, source, bytes(path)),
        Error::Readiness { source } => wire(Kind::Readiness, source, none),
        Error::AlreadyRunning { pid, path } => Wire {
            kind: Kind::AlreadyRunning,
            pid: *pid,
            source: None,
            path: bytes(path),
            text: String::new(),
        },
        Error::InvalidPidfile { path, content } => Wire {
            kind: Kind::InvalidPidfile,
            pid: 0,
            source: None,
            path: bytes(path),
            text: content.clone(),
        },
        Error::DaemonFailed { message } => Wire {
            kind: Kind::Failed,
            pid: 0,
            source: None,
            path: none,
            text: message.clone(),
        },
        other => Wire {
            kind: Kind::Failed,
            pid: 0,
            source: None,
            path: none,
            text: other.report(),
        },
    }
}

fn from_wire(kind: Kind, pid: i32, path: PathBuf, source: io::Error, text: String) -> Error {
    match kind {
        Kind::Failed => Error::DaemonFailed { message: text },
        Kind::Fork => Error::Fork { source },
        Kind::Setsid => Error::Setsid { source },
        Kind::Chdir => Error::Chdir { path, source },
        Kind::OpenDevNull => Error::OpenDevNull { source },
        Kind::RedirectStdio => Error::RedirectStdio { source },
        Kind::OpenPidfile => Error::OpenPidfile { path, source },
        Kind::LockPidfile => Error::LockPidfile { path, source },
        Kind::AlreadyRunning => Error::AlreadyRunning { pid, path },
        Kind::WritePidfile => Error::WritePidfile { path, source },
        Kind::ReadPidfile => Error::ReadPidfile { path, source },
        Kind::InvalidPidfile => Error::InvalidPidfile {
            path,
            content: text,
        },
        Kind::WritePgrpfile => Error::WritePgrpfile { path, source },
        Kind::OpenLog => Error::OpenLog { path, source },
        Kind::Readiness => Error::Readiness { source },
    }
}

// ---------------------------------------------------------------------------
// The launcher's side.

/// The daemon as the launcher watches it, once it said it exists.
struct Watched {
    pid: i32,
    /// Readable once it exits; `None` if it could not be opened.
    pidfd: Option<OwnedFd>,
    /// It had already exited when the launcher looked.
    gone: bool,
}

impl Watched {
    fn new(pid: i32) -> Watched {
        match open_pidfd(pid) {
            Ok(pidfd) => Watched {
                pid,
                pidfd: Some(pidfd),
                gone: false,
            },
            Err(errno) => Watched {
                pid,
                pidfd: None,
                gone: errno == Errno::SRCH,
            },
        }
    }
}

/// Reads the daemon's messages until it is ready, fails, dies or times out.
/// On any failure, makes sure the daemon is gone before returning.
fn await_daemon(channel: &OwnedFd, timeout: Option<Duration>) -> Result<i32> {
    let mut daemon = None;
    let result = watch(channel, timeout, &mut daemon);
    if let Err(error) = &result {
        stop_daemon(daemon.as_ref(), matches!(error, Error::Timeout { .. }));
    }
    result
}

fn watch(
    channel: &OwnedFd,
    timeout: Option<Duration>,
    daemon: &mut Option<Watched>,
) -> Result<i32> {
    // A deadline past what `Instant` holds is no deadline.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut inbox = Vec::new();
    // The intermediate child has been reaped: its `Started` is in the socket.
    let mut closed = drain(channel, &mut inbox)?;
    loop {
        // The intermediate's `Started` may arrive after the daemon's own
        // message: take in every complete frame before acting on any.
        let mut outcome = None;
        while let Some(message) =
            next_message(&mut inbox).map_err(|source| Error::Readiness { source })?
        {
            match message {
                Message::Started(pid) => *daemon = Some(Watched::new(pid)),
                Message::Ready(pid) => outcome = outcome.or(Some(Ok(pid))),
                Message::Failed(error) => outcome = outcome.or(Some(Err(error))),
            }
        }
        if let Some(outcome) = outcome {
            return outcome;
        }
        if closed {
            return Err(Error::DaemonExited {
                pid: daemon.as_ref().map_or(0, |d| d.pid),
            });
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err(Error::Timeout {
                waited: timeout.unwrap_or_default(),
            });
        }
        let gone = daemon.as_ref().is_some_and(|d| d.gone);
        let mut fds = vec![PollFd::new(channel, PollFlags::IN)];
        if let Some(pidfd) = daemon.as_ref().and_then(|d| d.pidfd.as_ref()) {
            fds.push(PollFd::new(pidfd, PollFlags::IN));
        }
        let ready = if gone {
            0
        } else {
            match rustix::event::poll(&mut fds, left.map(poll_timeout).as_ref()) {
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::Readiness {
                        source: errno.into(),
                    });
                }
            }
        };
        let channel_ready = ready > 0 && !fds[0].revents().is_empty();
        let exited = gone || (ready > 0 && fds.get(1).is_some_and(|fd| !fd.revents().is_empty()));
        drop(fds);
        if channel_ready {
            closed = receive(channel, &mut inbox, RecvFlags::empty())? == Received::End;
        } else if exited {
            // Whatever it sent before dying is in the socket by now; workers
            // that inherited its end may keep it from ever closing.
            drain(channel, &mut inbox)?;
            closed = true;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Received {
    Data,
    /// Nothing there (non-blocking receive only).
    Nothing,
    /// End of stream: every copy of the daemon's end is closed.
    End,
}

/// Receives what is there into `inbox`.
fn receive(channel: &OwnedFd, inbox: &mut Vec<u8>, flags: RecvFlags) -> Result<Received> {
    let mut buf = [0u8; 4096];
    match rustix::net::recv(channel, &mut buf[..], flags) {
        Ok((0, _)) => Ok(Received::End),
        Ok((n, _)) => {
            inbox.extend_from_slice(&buf[..n]);
            Ok(Received::Data)
        }
        Err(Errno::INTR) => Ok(Received::Data),
        Err(Errno::WOULDBLOCK) => Ok(Received::Nothing),
        Err(errno) => Err(Error::Readiness {
            source: errno.into(),
        }),
    }
}

/// Receives everything already there without waiting; `true` at end of stream.
fn drain(channel: &OwnedFd, inbox: &mut Vec<u8>) -> Result<bool> {
    loop {
        match receive(channel, inbox, RecvFlags::DONTWAIT)? {
            Received::Data => {}
            Received::Nothing => return Ok(false),
            Received::End => return Ok(true),
        }
    }
}

/// Takes one complete frame off the front of `inbox`.
fn next_message(inbox: &mut Vec<u8>) -> io::Result<Option<Message>> {
    let Some(header) = inbox.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if inbox.len() < 4 + len {
        return Ok(None);
    }
    let message = Message::decode(&inbox[4..4 + len]);
    inbox.drain(..4 + len);
    message.map(Some)
}

/// Makes sure a daemon that will never be ready is gone: SIGTERM first if
/// `terminate`, then `STOP_GRACE` to exit, then SIGKILL.
fn stop_daemon(daemon: Option<&Watched>, terminate: bool) {
    let Some(daemon) = daemon.filter(|d| !d.gone) else {
        return;
    };
    let Some(pidfd) = &daemon.pidfd else {
        // No pidfd (out of descriptors?): the pid is all there is, and it
        // was alive a moment ago.
        let _ = crate::control::signal(daemon.pid, Signal::KILL);
        return;
    };
    if has_exited(pidfd.as_fd()) {
        return;
    }
    if terminate {
        let _ = rustix::process::pidfd_send_signal(pidfd, Signal::TERM);
    }
    if let Ok(true) = wait_pidfd(pidfd, Instant::now().checked_add(STOP_GRACE)) {
        return;
    }
    let _ = rustix::process::pidfd_send_signal(pidfd, Signal::KILL);
    let _ = wait_pidfd(pidfd, Instant::now().checked_add(STOP_GRACE));
}

/// Threads of the calling process, from /proc (`None` if unreadable).
pub(crate) fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(error: &Error) -> Error {
        let mut inbox = (encode_failure(error).len() as u32).to_le_bytes().to_vec();
        inbox.extend_from_slice(&encode_failure(error));
        match next_message(&mut inbox).unwrap() {
            Some(Message::Failed(copy)) => {
                assert!(inbox.is_empty());
                copy
            }
            _ => panic!("not a failure"),
        }
    }

    #[test]
    fn errors_cross_the_channel_with_their_step_and_os_error() {
        let error = Error::Chdir {
            path: PathBuf::from("/no/such"),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let copy = roundtrip(&error);
        assert!(matches!(&copy, Error::Chdir { path, .. } if path == Path::new("/no/such")));
        assert_eq!(copy.report(), error.report());

        let copy = roundtrip(&Error::AlreadyRunning {
            pid: 4242,
            path: PathBuf::from("/run/x.pid"),
        });
        assert!(matches!(copy, Error::AlreadyRunning { pid: 4242, .. }));
        assert!(copy.to_string().contains("already running as pid 4242"));

        let copy = roundtrip(&Error::DaemonFailed {
            message: "cannot bind 127.0.0.1:80: denied".to_owned(),
        });
        assert_eq!(copy.to_string(), "cannot bind 127.0.0.1:80: denied");

        // A variant without a wire form travels as its report.
        let copy = roundtrip(&Error::Wait {
            pid: 1,
            source: io::Error::from_raw_os_error(libc::EPERM),
        });
        assert!(matches!(copy, Error::DaemonFailed { .. }));
        assert!(copy.to_string().starts_with("cannot wait for pid 1: "));
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let frame = encode_pid(TAG_READY, 77);
        let mut inbox = (frame.len() as u32).to_le_bytes().to_vec();
        inbox.extend_from_slice(&frame[..2]);
        assert!(next_message(&mut inbox).unwrap().is_none());
        inbox.extend_from_slice(&frame[2..]);
        assert!(matches!(
            next_message(&mut inbox).unwrap(),
            Some(Message::Ready(77))
        ));
    }
}
