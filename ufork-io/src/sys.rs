//! The one system call ufork-io makes that needs `unsafe`.
#![allow(unsafe_code)]

use std::io;

/// Gives SIGINT and SIGTERM their default action (end the process), whatever
/// they were: inherited as ignored (a background job of a shell) or handled.
/// For a program about to wait on a final flush after its arbiter stopped: a
/// second Ctrl-C or a `kill` must cut that wait short.
///
/// # Errors
///
/// The OS refused (it does not for these two signals).
pub fn default_stop_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: SIG_DFL installs no code of ours, so no handler can run
        // with broken invariants; `signal` only swaps the disposition.
        if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
