//! How and why a worker ended: the records of the exit history.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::WorkerState;

/// Exit code of a worker whose function returned an error (`EX_SOFTWARE`).
pub const EXIT_FAILED: i32 = 70;
/// Exit code of a worker whose function panicked (Rust's own panic exit code).
pub const EXIT_PANICKED: i32 = 101;

/// How a worker process ended, as `waitpid` reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It called `_exit` with this code.
    Code(i32),
    /// A signal with this number ended it.
    Signal(i32),
}

impl ExitStatus {
    /// Whether the worker exited with code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Code(code) => match exit_code_name(code) {
                Some(name) => write!(f, "exit code {code} ({name})"),
                None => write!(f, "exit code {code}"),
            },
            Self::Signal(sig) => match signal_name(sig) {
                Some(name) => write!(f, "signal {sig} ({name})"),
                None => write!(f, "signal {sig}"),
            },
        }
    }
}

/// "1 worker", "3 workers".
pub(crate) fn workers(n: usize) -> String {
    if n == 1 {
        "1 worker".to_owned()
    } else {
        format!("{n} workers")
    }
}

/// A duration as people read it in a log line: `850ms`, `2.5ms`, `31.2s`.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 1.0 {
        format!("{secs:.1}s")
    } else if secs >= 0.01 {
        format!("{:.0}ms", secs * 1000.0)
    } else {
        format!("{:.1}ms", secs * 1000.0)
    }
}

/// The name of a signal number, like `SIGKILL`.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// The `sysexits.h` name of an exit code, like `EX_SOFTWARE`.
pub fn exit_code_name(code: i32) -> Option<&'static str> {
    Some(match code {
        0 => "EX_OK",
        64 => "EX_USAGE",
        65 => "EX_DATAERR",
        66 => "EX_NOINPUT",
        67 => "EX_NOUSER",
        68 => "EX_NOHOST",
        69 => "EX_UNAVAILABLE",
        70 => "EX_SOFTWARE",
        71 => "EX_OSERR",
        72 => "EX_OSFILE",
        73 => "EX_CANTCREAT",
        74 => "EX_IOERR",
        75 => "EX_TEMPFAIL",
        76 => "EX_PROTOCOL",
        77 => "EX_NOPERM",
        78 => "EX_CONFIG",
        101 => "panic",
        126 => "cannot execute",
        127 => "command not found",
        _ => return None,
    })
}

/// Why a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// Its function returned `Ok` without being asked to stop.
    Exited,
    /// Its function returned an error, or it exited non-zero.
    Failed,
    /// Its function panicked.
    Panicked,
    /// A signal the arbiter did not send ended it.
    Killed,
    /// The arbiter asked it to stop (shutdown, scale down, restart, kill command).
    Stopped,
    /// It left on purpose: it called [`Worker::recycle`](crate::Worker::recycle)
    /// (max-requests recycling, say) and then exited with code 0. Replaced at
    /// once, not counted as a restart, never a step of a crash loop.
    Recycled,
    /// It stopped heartbeating: silent for longer than the heartbeat timeout.
    TimedOut {
        /// How long it had been silent when it was killed.
        silent_for: Duration,
        /// Its state when it was killed.
        state: WorkerState,
        /// Its activity text when it was killed.
        activity: String,
    },
    /// It declared itself hung ([`Vitals::declare_hung`](crate::Vitals::declare_hung),
    /// `WATCHDOG=trigger` under `ufork run --notify`) and was killed for it,
    /// as for a heartbeat timeout.
    Hung {
        /// Its state when it was killed.
        state: WorkerState,
        /// Its activity text when it was killed.
        activity: String,
    },
    /// It did not become ready within the start timeout (as extended by
    /// the worker, if it asked for more).
    BootTimedOut {
        /// How long it had been booting.
        after: Duration,
    },
    /// Its resident memory went over the limit.
    OverMemory {
        /// Resident set size seen, in bytes.
        rss: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// It had more open descriptors than the limit allows.
    TooManyFds {
        /// Open descriptors seen.
        open: u64,
        /// The threshold.
        limit: u64,
    },
}

impl ExitReason {
    /// Whether the exit was asked for: by the arbiter's operator (a stop,
    /// scaling down, a restart or kill command) or by the worker itself
    /// ([`Recycled`](Self::Recycled)). Such exits are not counted as restarts.
    /// The arbiter's own kills for a hang, a boot timeout or a limit are not
    /// requested: they count, and a hang or boot timeout can be a step of a
    /// crash loop.
    pub fn is_requested(&self) -> bool {
        matches!(self, Self::Stopped | Self::Recycled)
    }

    /// A one-word name: exited, failed, panicked, killed, stopped, timed-out...
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Panicked => "panicked",
            Self::Killed => "killed",
            Self::Stopped => "stopped",
            Self::Recycled => "recycled",
            Self::TimedOut { .. } => "timed-out",
            Self::Hung { .. } => "hung",
            Self::BootTimedOut { .. } => "boot-timed-out",
            Self::OverMemory { .. } => "over-memory",
            Self::TooManyFds { .. } => "too-many-fds",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut {
                silent_for,
                state,
                activity,
            } => {
                write!(
                    f,
                    "timed out: silent for {} while {state}",
                    human(*silent_for)
                )?;
                match state {
                    _ if activity.is_empty() => {}
                    // The activity of a worker between requests is the
                    // last one it served.
                    WorkerState::Idle => write!(f, " (last: {activity})")?,
                    _ => write!(f, " ({activity})")?,
                }
                Ok(())
            }
            Self::Hung { state, activity } => {
                write!(f, "declared itself hung while {state}")?;
                match state {
                    _ if activity.is_empty() => {}
                    WorkerState::Idle => write!(f, " (last: {activity})")?,
                    _ => write!(f, " ({activity})")?,
                }
                Ok(())
            }
            Self::BootTimedOut { after } => {
                write!(f, "not ready after {} (start timeout)", human(*after))
            }
            Self::OverMemory { rss, limit } => {
                write!(f, "over memory limit: rss {rss} bytes > {limit} bytes")
            }
            Self::TooManyFds { open, limit } => {
                write!(f, "too many open files: {open} >= {limit}")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// One entry of the exit history.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExitRecord {
    /// The worker's pid.
    pub pid: i32,
    /// Its slot.
    pub slot: usize,
    /// Its generation in that slot.
    pub generation: u32,
    /// How the process ended.
    pub status: ExitStatus,
    /// Why.
    pub reason: ExitReason,
    /// The error or panic message the worker reported, if any.
    pub message: Option<String>,
    /// How long it lived.
    pub uptime: Duration,
    /// When it was reaped.
    pub at: SystemTime,
    /// Requests it served (its scoreboard count when it was reaped), so pool
    /// totals can outlive the worker.
    pub requests: u64,
    /// It ended by SIGKILL while the kernel's OOM killer count moved (the
    /// cgroup's `memory.events`, or `/proc/vmstat` without a cgroup): most
    /// likely it ran out of memory.
    pub oom_killed: bool,
}

impl fmt::Display for ExitRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} (pid {}, generation {}) {}: {} after {}",
            self.slot,
            self.pid,
            self.generation,
            self.reason,
            self.status,
            human(self.uptime)
        )?;
        if self.oom_killed {
            f.write_str(" (out of memory? the kernel's OOM killer acted)")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well_at_every_scale() {
        assert_eq!(human(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(31_240)), "31.2s");
    }

    #[test]
    fn statuses_are_named() {
        assert_eq!(
            ExitStatus::Code(70).to_string(),
            "exit code 70 (EX_SOFTWARE)"
        );
        assert_eq!(ExitStatus::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
    }

    #[test]
    fn a_hang_report_names_the_request_or_the_last_one() {
        let timed_out = |state, activity: &str| ExitReason::TimedOut {
            silent_for: Duration::from_secs(4),
            state,
            activity: activity.to_owned(),
        };
        assert_eq!(
            timed_out(WorkerState::Busy, "GET /slow HTTP/1.1").to_string(),
            "timed out: silent for 4.0s while busy (GET /slow HTTP/1.1)"
        );
        assert_eq!(
            timed_out(WorkerState::Idle, "GET / HTTP/1.1").to_string(),
            "timed out: silent for 4.0s while idle (last: GET / HTTP/1.1)"
        );
        assert_eq!(
            timed_out(WorkerState::Idle, "").to_string(),
            "timed out: silent for 4.0s while idle"
        );
        let hung = ExitReason::Hung {
            state: WorkerState::Busy,
            activity: "GET /stuck HTTP/1.1".to_owned(),
        };
        assert_eq!(hung.as_str(), "hung");
        assert_eq!(
            hung.to_string(),
            "declared itself hung while busy (GET /stuck HTTP/1.1)"
        );
    }
}
