//! Finding a running pool, shared by `status`, `stop`, `reload`, `upgrade`
//! and `ctl`: by its pidfile (and the control socket beside it) or its
//! control socket.
//!
//! A pid read from a pidfile is signalled only once [`holder::verify`] has
//! checked it is the process holding the file's lock (a pool in another pid
//! namespace writes the pid it sees for itself, which names another process
//! here); the control socket, reached by path, needs no pid at all, so it is
//! preferred wherever the answer matters.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::commands;
use crate::control::{self, Client, ConnectError};
use crate::failure::{self, Failure, Result, runtime};
use crate::holder::{self, Arbiter};

/// How to find a running pool.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct TargetArgs {
    /// The pidfile the pool was started with (its control socket is beside
    /// it, PATH with the extension .control.sock; or .sock, where earlier
    /// binaries put it, when only that one is there).
    #[arg(short = 'p', long, visible_alias = "pid", value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// The pool's control socket.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
}

/// How a command reaches the pool.
#[derive(Debug)]
pub enum Route {
    /// Through its control socket, connected.
    Socket {
        client: Client,
        path: PathBuf,
        /// The verified arbiter, when a pidfile named one.
        arbiter: Option<Arbiter>,
    },
    /// By signals to its verified arbiter: its pidfile has no live control
    /// socket beside it (`why` says what was found).
    Signal {
        arbiter: Arbiter,
        pidfile: PathBuf,
        why: String,
    },
}

/// Finds the pool `args` names: its control socket when it answers,
/// otherwise the arbiter its pidfile names once verified. Nothing running is
/// `NotRunning` (exit 3).
///
/// # Errors
///
/// Nothing runs there, or the pidfile's pid is not its lock holder (then
/// nothing is signalled).
pub fn route(args: &TargetArgs) -> Result<Route> {
    let Some(pidfile) = &args.pidfile else {
        let path = args.control_socket.clone().unwrap_or_default();
        let client = connect(&path)?;
        return Ok(Route::Socket {
            client,
            path,
            arbiter: None,
        });
    };
    let file_pid = running_pid(pidfile)?;
    let socket = args.control_socket.clone().or_else(|| beside(pidfile));
    let why = match socket {
        None => format!("{} has no control socket beside it", pidfile.display()),
        Some(path) => match Client::connect(&path) {
            Ok(client) => {
                let arbiter = holder::verify(pidfile, file_pid).ok();
                return Ok(Route::Socket {
                    client,
                    path,
                    arbiter,
                });
            }
            Err(ConnectError::NotRunning(m) | ConnectError::Other(m)) => m,
        },
    };
    let arbiter = holder::verify(pidfile, file_pid).map_err(|e| {
        // It may have stopped meanwhile.
        match running_pid(pidfile) {
            Err(gone) => gone,
            Ok(_) => runtime(format!(
                "--pidfile {}: {e}; not signalling pid {file_pid} ({why})",
                pidfile.display()
            )),
        }
    })?;
    Ok(Route::Signal {
        arbiter,
        pidfile: pidfile.clone(),
        why,
    })
}

/// The control socket beside `pidfile` (`app.pid`): `app.control.sock`, or,
/// when no file is there, `app.sock` if it is a socket (where a pool started by a binary
/// before `.control.sock` put it, so it is still found).
fn beside(pidfile: &Path) -> Option<PathBuf> {
    let path = control::beside_pidfile(pidfile)?;
    if std::fs::symlink_metadata(&path).is_err() {
        if let Some(before) = control::beside_pidfile_before(pidfile) {
            if std::fs::symlink_metadata(&before).is_ok_and(|m| m.file_type().is_socket()) {
                return Some(before);
            }
        }
    }
    Some(path)
}

/// Sends `signal` to a verified arbiter; nothing left to signal is
/// `NothingToDo`.
pub fn signal(arbiter: &Arbiter, signal: ufork_daemon::Signal) -> Result<()> {
    match ufork_daemon::signal(arbiter.pid, signal) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::NothingToDo(format!(
            "not running ({} is gone)",
            arbiter.describe()
        ))),
        Err(e) => Err(runtime(format!("{}: {}", arbiter.describe(), e.report()))),
    }
}

/// Connects to a control socket; nothing listening there is "not running".
pub fn connect(path: &Path) -> Result<Client> {
    Client::connect(path).map_err(|e| match e {
        ConnectError::NotRunning(m) => Failure::NotRunning(format!("not running: {m}")),
        ConnectError::Other(m) => runtime(m),
    })
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
        Ok(ufork_daemon::Status::Stale { pid: Some(pid) }) => {
            // Nobody holds its lock: whatever runs as that pid now is not
            // the pool (a reused pid, pid 1, a hand-written file).
            // EPERM: alive, another user's (pid 1 to anyone but root).
            let alive = rustix::process::Pid::from_raw(pid).is_some_and(|p| {
                !matches!(
                    rustix::process::test_kill_process(p),
                    Err(rustix::io::Errno::SRCH)
                )
            });
            let why = if alive {
                format!("no pool holds it; pid {pid}, which it names, is another process")
            } else {
                format!("the pool with pid {pid} is gone")
            };
            Err(Failure::NotRunning(format!(
                "not running (stale pidfile {}: {why})",
                path.display()
            )))
        }
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
