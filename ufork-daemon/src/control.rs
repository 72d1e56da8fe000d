//! Helpers for a controlling command (`status`, `stop`, `reload`): is the
//! daemon of a pidfile live, signal it, wait for it to exit.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{FlockOperation, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::error::{Error, Result};
use crate::pidfile::{lock_fresh, parse_pid};

/// What a pidfile says about its daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The file's lock is held: the daemon with this pid is live.
    Running {
        /// The pid written in the file.
        pid: i32,
    },
    /// The file exists but nobody holds its lock: its writer is gone (it
    /// crashed or was killed). The pid, if readable, is only a hint and must
    /// not be signalled: it may belong to an unrelated process by now.
    Stale {
        /// The pid written in the file, if it holds one.
        pid: Option<i32>,
    },
    /// There is no pidfile.
    NotRunning,
}

impl Status {
    /// The pid of a running daemon, `None` otherwise.
    pub fn running_pid(self) -> Option<i32> {
        match self {
            Status::Running { pid } => Some(pid),
            _ => None,
        }
    }
}

/// Tells whether the daemon of the pidfile at `path` is live, by its lock.
/// A symbolic link at `path` is not followed (an error that says so).
///
/// The check takes a shared lock for an instant when nobody holds one; a
/// daemon starting at that very instant is refused as already running, so
/// do not poll this in a tight loop against a starting daemon.
///
/// # Errors
///
/// [`Error::OpenPidfile`] or [`Error::LockPidfile`] if the file cannot be
/// opened or locked, [`Error::ReadPidfile`] or [`Error::InvalidPidfile`] if a
/// locked file cannot be read or holds no pid.
pub fn status(path: impl AsRef<Path>) -> Result<Status> {
    let path = path.as_ref();
    // Never through a symbolic link: a pool never has one at its pidfile,
    // and one planted there would name another service's locked pidfile
    // (`ufork stop` as root would then signal that service).
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW;
    match lock_fresh(path, flags, FlockOperation::NonBlockingLockShared) {
        Ok(fd) => {
            let pid = match std::fs::read_to_string(path) {
                Ok(content) => parse_pid(path, &content).ok().flatten(),
                Err(_) => None,
            };
            drop(fd);
            Ok(Status::Stale { pid })
        }
        Err(Error::AlreadyRunning { pid, .. }) => Ok(Status::Running { pid }),
        Err(Error::OpenPidfile { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(Status::NotRunning)
        }
        Err(other) => Err(other),
    }
}

/// Reads the pid written in `path` (a pidfile or a process-group file),
/// without looking at its lock. `Ok(None)` if the file does not exist or is
/// empty.
///
/// # Errors
///
/// [`Error::ReadPidfile`] if it cannot be read, [`Error::InvalidPidfile`] if
/// it holds something other than a pid.
pub fn read_pid(path: impl AsRef<Path>) -> Result<Option<i32>> {
    let path = path.as_ref();
    match std::fs::read_to_string(path) {
        Ok(content) => parse_pid(path, &content),
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::ReadPidfile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Sends `signal` to `pid`. Returns `false` if no process has that pid.
///
/// # Errors
///
/// [`Error::Signal`] for any other failure (e.g. `EPERM`), or if `pid` is not
/// positive.
pub fn signal(pid: i32, signal: Signal) -> Result<bool> {
    let target = positive(pid, signal)?;
    match rustix::process::kill_process(target, signal) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(errno) => Err(signal_error(pid, signal, errno)),
    }
}

/// Sends `signal` to every process of the group `pgid` (as written in a
/// process-group file). Returns `false` if the group has no process left.
///
/// # Errors
///
/// [`Error::Signal`] for any other failure, or if `pgid` is not positive.
pub fn signal_group(pgid: i32, signal: Signal) -> Result<bool> {
    let target = positive(pgid, signal)?;
    match rustix::process::kill_process_group(target, signal) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(errno) => Err(signal_error(-pgid, signal, errno)),
    }
}

/// Sends `signal` to the daemon of the pidfile at `path` if, and only if, it
/// is live (its lock is held): a stale file's pid is never signalled. Returns
/// the pid signalled, or `None` if nothing is running.
///
/// # Errors
///
/// As [`status`] and [`signal`].
pub fn signal_pidfile(path: impl AsRef<Path>, sig: Signal) -> Result<Option<i32>> {
    match status(path)? {
        Status::Running { pid } => Ok(signal(pid, sig)?.then_some(pid)),
        Status::Stale { .. } | Status::NotRunning => Ok(None),
    }
}

/// Waits until the process `pid` has exited, or `timeout` has passed (`None`:
/// no limit). Returns `true` if it exited (or never existed), `false` on
/// timeout.
///
/// Event-driven: it polls a pidfd, which becomes readable when the process
/// exits, whoever its parent is and whether or not it has been reaped.
///
/// # Errors
///
/// [`Error::Wait`] if the pidfd cannot be opened (other than for a missing
/// process) or polled.
pub fn wait_for_exit(pid: i32, timeout: Option<Duration>) -> Result<bool> {
    let wrap = |errno: Errno| Error::Wait {
        pid,
        source: errno.into(),
    };
    let Some(target) = Pid::from_raw(pid).filter(|_| pid > 0) else {
        return Err(wrap(Errno::INVAL));
    };
    let pidfd = match rustix::process::pidfd_open(target, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(Errno::SRCH) => return Ok(true),
        Err(errno) => return Err(wrap(errno)),
    };
    // A deadline past what `Instant` holds is no deadline: wait forever.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    wait_pidfd(&pidfd, deadline).map_err(wrap)
}

/// Polls `pidfd` until it is readable (its process exited) or `deadline`.
pub(crate) fn wait_pidfd(pidfd: &OwnedFd, deadline: Option<Instant>) -> rustix::io::Result<bool> {
    loop {
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        let timeout = match deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                Some(poll_timeout(left))
            }
        };
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => return Ok(true),
            Err(errno) => return Err(errno),
        }
    }
}

/// A poll timeout for `left`, saturated to what `poll` accepts.
pub(crate) fn poll_timeout(left: Duration) -> rustix::time::Timespec {
    let capped = left.min(Duration::from_secs(24 * 3600));
    rustix::time::Timespec::try_from(capped).unwrap_or(rustix::time::Timespec {
        tv_sec: 24 * 3600,
        tv_nsec: 0,
    })
}

/// Opens a pidfd for `pid` (`ESRCH` if it has already gone).
pub(crate) fn open_pidfd(pid: i32) -> rustix::io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).filter(|_| pid > 0).ok_or(Errno::INVAL)?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty())
}

/// Whether the process of `pidfd` has exited, without waiting.
pub(crate) fn has_exited(pidfd: impl AsFd) -> bool {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

fn positive(pid: i32, sig: Signal) -> Result<Pid> {
    Pid::from_raw(pid)
        .filter(|_| pid > 0)
        .ok_or_else(|| signal_error(pid, sig, Errno::INVAL))
}

fn signal_error(pid: i32, sig: Signal, errno: Errno) -> Error {
    Error::Signal {
        pid,
        signal: sig.as_raw(),
        source: errno.into(),
    }
}
