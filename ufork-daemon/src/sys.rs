//! The two system calls rustix has no safe wrapper for: `fork` and `_exit`.
//! Everything else goes through rustix's safe API.
#![allow(unsafe_code)]

use std::io;

/// Which side of a fork the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The calling process; the child has this pid.
    Parent(i32),
}

/// Forks the calling process.
///
/// Unlike an arbiter's worker, the daemon *does* come back into the caller's
/// stack: it is the process that carries on with the program. That is sound
/// because the launcher is required (and documented) to be single-threaded
/// when it daemonizes, so the child's copy of every lock is in the state the
/// only thread left it in.
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: libc's fork runs the atfork handlers, so malloc stays usable in
    // the child; the launcher is single-threaded by contract (see
    // `Daemonize::start`), so no lock in the child can be held by a thread
    // that no longer exists.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Ends the calling process at once with `code`, without running atexit
/// handlers, destructors or std's stdout flush: a forked intermediate must not
/// flush or drop what belongs to the launcher.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}
