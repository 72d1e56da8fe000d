//! Finding a running pool, shared by `status`, `stop`, `reload` and `ctl`:
//! by its pidfile (and the control socket beside it) or its control socket.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::commands;
use crate::control::{Client, ConnectError};
use crate::failure::{self, Failure, Result, runtime};

/// How to find a running pool.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct TargetArgs {
    /// The pidfile the pool was started with.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// The pool's control socket.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
}

impl TargetArgs {
    /// The control socket to use: given, or the one next to the pidfile.
    pub fn socket(&self) -> Option<PathBuf> {
        self.control_socket.clone().or_else(|| {
            self.pidfile
                .as_ref()
                .map(|p| p.with_extension("sock"))
                .filter(|p| p.exists())
        })
    }
}

/// Connects to a control socket; nothing listening there is "not running".
pub fn connect(path: &Path) -> Result<Client> {
    Client::connect(path).map_err(|e| match e {
        ConnectError::NotRunning(m) => Failure::NotRunning(format!("not running: {m}")),
        ConnectError::Other(m) => runtime(m),
    })
}

/// Sends `signal` to the pool the pidfile at `path` names; its pid when sent.
/// Nothing running there is `NothingToDo` (exit 3): for `stop` and `reload`.
pub fn signal_pidfile(path: &Path, signal: ufork_daemon::Signal) -> Result<i32> {
    let pid = running_pid(path).map_err(nothing_to_do)?;
    let sent = ufork_daemon::signal(pid, signal)
        .map_err(|e| runtime(format!("--pidfile {}: {}", path.display(), e.report())))?;
    if sent {
        Ok(pid)
    } else {
        Err(Failure::NothingToDo(format!(
            "not running (pid {pid} is gone)"
        )))
    }
}

/// For `stop` and `reload`: nothing runs, so there is nothing to do (exit 3).
pub fn nothing_to_do(failure: Failure) -> Failure {
    match failure {
        Failure::NotRunning(m) => Failure::NothingToDo(m),
        other => other,
    }
}

/// What a pidfile says, as a failure when nothing runs.
pub fn running_pid(path: &Path) -> Result<i32> {
    match ufork_daemon::status(path) {
        Ok(ufork_daemon::Status::Running { pid }) => Ok(pid),
        Ok(ufork_daemon::Status::Stale { pid: Some(pid) }) => Err(Failure::NotRunning(format!(
            "not running (stale pidfile {}: the pool with pid {pid} is gone)",
            path.display()
        ))),
        Ok(ufork_daemon::Status::Stale { pid: None }) => Err(Failure::NotRunning(format!(
            "not running ({})",
            no_pid_in(path)
        ))),
        Ok(ufork_daemon::Status::NotRunning) => Err(Failure::NotRunning(format!(
            "not running (no pidfile at {})",
            path.display()
        ))),
        Err(e) => Err(runtime(format!(
            "--pidfile {}: {}",
            path.display(),
            e.report()
        ))),
    }
}

/// Why the file at `path` names no pid.
fn no_pid_in(path: &Path) -> String {
    if path.is_dir() {
        return format!("{} is a directory, not a pidfile", path.display());
    }
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => format!("empty pidfile {}", path.display()),
        Ok(text) => format!(
            "pidfile {} holds no pid: `{}`",
            path.display(),
            commands::printable_max(text.trim(), 40)
        ),
        Err(e) => format!(
            "unreadable pidfile {}: {}",
            path.display(),
            failure::io_text(&e)
        ),
    }
}
