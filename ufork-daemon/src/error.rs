//! Errors of the daemon toolkit, one variant per step that can fail.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while daemonizing, locking a pidfile, controlling a daemon or
/// rotating a log file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `fork(2)` failed (first or second fork).
    #[error("cannot fork")]
    Fork {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The process has more than one thread: forking it would leave the
    /// daemon with copies of locks other threads may hold, so
    /// [`Daemonize::start`](crate::Daemonize::start) refuses.
    #[error("cannot daemonize a process with {threads} threads: daemonize before starting any")]
    MultiThreaded {
        /// Threads the process has.
        threads: usize,
    },
    /// `setsid(2)` failed in the intermediate child.
    #[error("cannot start a new session")]
    Setsid {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Creating, writing or reading the readiness channel failed.
    #[error("readiness handshake failed")]
    Readiness {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Changing to the daemon's working directory failed.
    #[error("cannot change directory to {path}")]
    Chdir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening `/dev/null` for the standard streams failed.
    #[error("cannot open /dev/null")]
    OpenDevNull {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Pointing stdin, stdout or stderr at their new files failed.
    #[error("cannot redirect the standard streams")]
    RedirectStdio {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Pointing the descriptors the daemon inherited and never took at
    /// `/dev/null` failed.
    #[error("cannot release the descriptors the daemon inherited")]
    ReleaseInherited {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening (or creating) the pidfile failed.
    #[error("cannot open pidfile {path}")]
    OpenPidfile {
        /// The pidfile.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `flock(2)` on the pidfile failed for a reason other than another holder.
    #[error("cannot lock pidfile {path}")]
    LockPidfile {
        /// The pidfile.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another live process holds the pidfile's lock.
    #[error("already running as pid {pid} (pidfile {path})")]
    AlreadyRunning {
        /// The pid written in the pidfile by the lock holder.
        pid: i32,
        /// The pidfile.
        path: PathBuf,
    },
    /// Truncating or writing the pidfile failed.
    #[error("cannot write pidfile {path}")]
    WritePidfile {
        /// The pidfile.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading the pidfile failed.
    #[error("cannot read pidfile {path}")]
    ReadPidfile {
        /// The pidfile.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The pidfile holds something other than a positive decimal pid.
    #[error("pidfile {path} holds no pid: {content:?}")]
    InvalidPidfile {
        /// The pidfile.
        path: PathBuf,
        /// What it holds (trimmed).
        content: String,
    },
    /// Writing the process-group file failed.
    #[error("cannot write process group file {path}")]
    WritePgrpfile {
        /// The process-group file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening (or reopening) the log file failed.
    #[error("cannot open log file {path}")]
    OpenLog {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Rotating the log file failed; writing went on to the current file.
    #[error("cannot rotate log file {path}")]
    RotateLog {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The daemon did not report readiness in time; the launcher stopped it.
    #[error("the daemon did not report readiness within {waited:?} and was stopped")]
    Timeout {
        /// The configured timeout.
        waited: Duration,
    },
    /// The daemon reported a failure before it was ready.
    #[error("{message}")]
    DaemonFailed {
        /// The daemon's own message.
        message: String,
    },
    /// The daemon exited (or closed the readiness channel) without a word.
    #[error("the daemon (pid {pid}) exited before reporting readiness")]
    DaemonExited {
        /// The daemon's pid, 0 when it died before telling it.
        pid: i32,
    },
    /// A path granted to the privileged helper cannot be prepared (its
    /// directory cannot be opened), or is served by a helper already.
    #[error("cannot grant {path} to the privileged helper")]
    GrantPath {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Starting, asking or stopping the privileged helper failed.
    #[error("privileged helper failed")]
    Privsep {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sending a signal failed.
    #[error("cannot send signal {signal} to {pid}")]
    Signal {
        /// The pid (negative for a process group).
        pid: i32,
        /// The signal number.
        signal: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Watching a process for its exit failed.
    #[error("cannot wait for pid {pid}")]
    Wait {
        /// The pid.
        pid: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The message followed by every source, joined by `": "`: the one line a
    /// launcher prints (e.g. `cannot open pidfile /run/x.pid: Permission denied
    /// (os error 13)`).
    pub fn report(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            line.push_str(": ");
            line.push_str(&cause.to_string());
            source = cause.source();
        }
        line
    }
}
