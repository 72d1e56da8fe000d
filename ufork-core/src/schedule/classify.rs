//! How an exit is named and whether it belongs to a crash loop: pure
//! functions of what the arbiter knew about the worker and how it ended.

use std::time::Duration;

use crate::notes::NoteKind;
use crate::{ExitReason, ExitStatus};

/// Signals a process raises on itself when its own code goes wrong. A worker
/// ended by one of these failed on its own; any other signal came from
/// outside (an operator's `kill`, the OOM killer, a supervisor).
const SELF_RAISED: [i32; 6] = [
    libc::SIGSEGV,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGSYS,
];

/// Why a worker ended, from what the arbiter asked of it (`requested`), the
/// note it left (error or panic), whether it declared a planned exit, and
/// its status.
pub(crate) fn reason(
    requested: Option<ExitReason>,
    note: Option<NoteKind>,
    planned: bool,
    status: ExitStatus,
) -> ExitReason {
    // A worker's own report of failure beats "stopped": it may have died
    // just before the stop reached it, or failed while finishing.
    match (requested, note) {
        (Some(ExitReason::Stopped) | None, Some(NoteKind::Panicked)) => ExitReason::Panicked,
        (Some(ExitReason::Stopped) | None, Some(NoteKind::Failed)) => ExitReason::Failed,
        (Some(reason), _) => reason,
        (None, _) => match status {
            ExitStatus::Code(0) if planned => ExitReason::Recycled,
            ExitStatus::Code(0) => ExitReason::Exited,
            ExitStatus::Code(_) => ExitReason::Failed,
            ExitStatus::Signal(_) => ExitReason::Killed,
        },
    }
}

/// Whether this exit is one more step of a crash loop: the worker never
/// became ready, or it failed on its own (non-zero exit, a panic, a signal
/// it raised itself, a hang, or an unplanned exit) younger than `min_uptime`.
/// Exits the arbiter or the program asked for, and a ready worker killed
/// from outside, are not.
pub(crate) fn is_crash(
    reason: &ExitReason,
    status: ExitStatus,
    ever_ready: bool,
    uptime: Duration,
    min_uptime: Duration,
) -> bool {
    match reason {
        ExitReason::Stopped | ExitReason::Recycled => return false,
        ExitReason::OverMemory { .. } | ExitReason::TooManyFds { .. } => return false,
        _ => {}
    }
    if !ever_ready {
        return true;
    }
    if uptime >= min_uptime {
        return false;
    }
    match status {
        ExitStatus::Signal(sig) => {
            SELF_RAISED.contains(&sig)
                || matches!(
                    reason,
                    ExitReason::TimedOut { .. } | ExitReason::Hung { .. }
                )
        }
        ExitStatus::Code(_) => true,
    }
}

/// Whether the exit counts as a restart in the slot's tally: every exit
/// nobody asked for.
pub(crate) fn counts_as_restart(reason: &ExitReason) -> bool {
    !reason.is_requested()
}
