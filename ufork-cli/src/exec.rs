//! `ufork run`: every worker is fork + exec of a command, handed the listening
//! sockets by the systemd convention (fds 3.., LISTEN_FDS, LISTEN_PID,
//! LISTEN_FDNAMES). A CLOEXEC pipe per worker tells the arbiter whether exec
//! succeeded (end of file) or failed (the errno), as std's own spawn does.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ufork_core::{
    ChildInfo, Context, ExitRecord, Interest, Layer, Readiness, Spawn, Token, Worker,
};

use crate::failure::{self, Failure, io_text};

/// What each worker executes, and what it is told.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The program, as given.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// LISTEN_FDNAMES, colon-separated.
    pub fd_names: String,
    /// NOTIFY_SOCKET, with `--notify`.
    pub notify_socket: Option<String>,
    /// WATCHDOG_USEC, with `--notify --timeout`.
    pub watchdog: Option<Duration>,
    /// `--env KEY=VALUE`, set before ufork's own variables (which win).
    pub env: Vec<(String, String)>,
}

/// Finds `program` the way exec will (PATH search unless it has a slash), so
/// a typo fails at once with a clear message instead of a crash loop.
///
/// # Errors
///
/// A message naming the program.
pub fn resolve(program: &str) -> Result<PathBuf, Failure> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file())
            && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return match std::fs::metadata(&path) {
            Err(e) => Err(failure::runtime(format!(
                "cannot run `{program}`: {}",
                io_text(&e)
            ))),
            Ok(m) if m.is_dir() => Err(failure::runtime(format!(
                "cannot run `{program}`: it is a directory"
            ))),
            Ok(_) if !executable(&path) => Err(failure::runtime(format!(
                "cannot run `{program}`: permission denied (is it executable? try `chmod +x {program}`)"
            ))),
            Ok(_) => Ok(path),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| {
            failure::runtime(format!("cannot run `{program}`: command not found in PATH"))
        })
}

/// The layer that watches each worker's exec.
#[derive(Debug)]
pub struct ExecLayer {
    pending: HashMap<usize, (OwnedFd, OwnedFd)>,
    watching: HashMap<Token, (usize, i32, OwnedFd)>,
    child_pipe: Arc<Mutex<Option<OwnedFd>>>,
    /// The arbiter's copies of the listening sockets, for the workers it
    /// forks; dropped when a stop begins, so a socket stops listening once
    /// every worker has closed its own copy too (the upgrader closes its
    /// copies then as well: see `upgrade::close_at_stop`).
    listeners: Arc<Mutex<Option<Vec<OwnedFd>>>>,
    ready_on_exec: bool,
    program: String,
    path: PathBuf,
    failure: Arc<Mutex<Option<String>>>,
}

impl ExecLayer {
    /// Watches execs of `program`; marks workers ready when exec succeeds
    /// unless they speak sd_notify (`ready_on_exec` false).
    /// `path` is where [`resolve`] found it.
    pub fn new(program: &str, path: PathBuf, ready_on_exec: bool) -> Self {
        Self {
            pending: HashMap::new(),
            watching: HashMap::new(),
            child_pipe: Arc::new(Mutex::new(None)),
            listeners: Arc::new(Mutex::new(None)),
            ready_on_exec,
            program: program.to_owned(),
            path,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// Where an exec failure is recorded (it stops the pool).
    pub fn failure(&self) -> Arc<Mutex<Option<String>>> {
        Arc::clone(&self.failure)
    }

    /// The worker function: exec the command with the sockets in place.
    pub fn worker(
        &self,
        spec: ExecSpec,
        listeners: Vec<OwnedFd>,
    ) -> impl FnMut(&mut Worker) -> Result<(), String> + use<> {
        let child_pipe = Arc::clone(&self.child_pipe);
        let which = self.path.clone();
        *self.listeners.lock().unwrap_or_else(|p| p.into_inner()) = Some(listeners);
        let kept = Arc::clone(&self.listeners);
        move |worker| {
            let report = child_pipe.lock().unwrap_or_else(|p| p.into_inner()).take();
            let listeners = kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_default();
            let count = listeners.len();
            // The sockets go to fds 3, 4, ... over whatever is there (an
            // inherited descriptor): the exec report must not be there.
            let report = report
                .map(|r| keep_above(r, count))
                .transpose()
                .map_err(|e| format!("cannot hand the sockets to `{}`: {e}", spec.program))?;
            ufork_core::listen::place_for_exec(listeners)
                .map_err(|e| format!("cannot hand the sockets to `{}`: {e}", spec.program))?;
            let mut command = Command::new(&spec.program);
            command.args(&spec.args);
            command.envs(spec.env.iter().map(|(k, v)| (k, v)));
            command.env("UFORK_WORKER_ID", worker.slot().to_string());
            if count > 0 {
                command
                    .env("LISTEN_FDS", count.to_string())
                    .env("LISTEN_PID", worker.pid().to_string())
                    .env("LISTEN_FDNAMES", &spec.fd_names);
            } else {
                command
                    .env_remove("LISTEN_FDS")
                    .env_remove("LISTEN_PID")
                    .env_remove("LISTEN_FDNAMES");
            }
            match &spec.notify_socket {
                Some(socket) => {
                    command.env("NOTIFY_SOCKET", socket);
                }
                None => {
                    command.env_remove("NOTIFY_SOCKET");
                }
            }
            match spec.watchdog {
                Some(timeout) => {
                    command
                        .env("WATCHDOG_USEC", timeout.as_micros().to_string())
                        .env("WATCHDOG_PID", worker.pid().to_string());
                }
                None => {
                    command
                        .env_remove("WATCHDOG_USEC")
                        .env_remove("WATCHDOG_PID");
                }
            }
            // A SIGTERM since the fork was caught by the worker's stop-flag
            // handler, which exec would forget: the program would never
            // hear it and the stop would wait the graceful timeout out.
            // `before_exec` gives SIGTERM its default action back first, so
            // one arriving from here on ends the worker or reaches the
            // program.
            if worker.before_exec() {
                return Ok(());
            }
            let error = command.exec();
            if let Some(report) = report {
                let code = error.raw_os_error().unwrap_or(0);
                let _ = rustix::io::write(&report, &code.to_le_bytes());
            }
            Err(exec_failure(&spec.program, &which, &error))
        }
    }
}

/// Why exec failed, in words. exec says ENOENT for a file that exists when
/// its `#!` interpreter does not: name the interpreter then.
fn exec_failure(program: &str, path: &Path, error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::NotFound && path.is_file() {
        if let Some(interpreter) = shebang(path) {
            return format!(
                "cannot execute `{program}`: its interpreter `{interpreter}` does not exist"
            );
        }
    }
    format!("cannot execute `{program}`: {}", io_text(error))
}

/// The interpreter named on a script's `#!` line.
fn shebang(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    let interpreter = text.split_whitespace().next()?;
    Some(crate::commands::printable_max(interpreter, 200))
}

/// `fd`, moved above fds 3 .. 3 + `count` when it sits among them.
fn keep_above(fd: OwnedFd, count: usize) -> std::io::Result<OwnedFd> {
    let end = i32::try_from(count).unwrap_or(i32::MAX).saturating_add(3);
    if fd.as_raw_fd() < end {
        return Ok(rustix::io::fcntl_dupfd_cloexec(&fd, end)?);
    }
    Ok(fd)
}

impl Layer for ExecLayer {
    fn prepare(&mut self, slot: usize, _generation: u32) -> std::io::Result<()> {
        // Non-blocking: the arbiter also reads it when the worker's exit
        // came first, and must not wait on a pipe that is still open.
        let (r, w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        self.pending.insert(slot, (r, w));
        Ok(())
    }

    fn fork_failed(&mut self, slot: usize) {
        self.pending.remove(&slot);
    }

    fn in_child(&mut self, child: &ChildInfo) -> std::io::Result<()> {
        if let Some((_, w)) = self.pending.remove(&child.slot) {
            *self.child_pipe.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        }
        self.pending.clear();
        // Core has closed the registered read ends in the child already;
        // dropping them would close them twice.
        for (_, (_, _, r)) in self.watching.drain() {
            let _ = r.into_raw_fd();
        }
        Ok(())
    }

    fn spawned(&mut self, spawn: &Spawn, ctx: &mut Context<'_>) {
        if let Some((r, w)) = self.pending.remove(&spawn.slot) {
            drop(w);
            let token = ctx.register(r.as_fd(), Interest::READABLE);
            self.watching.insert(token, (spawn.slot, spawn.pid, r));
        }
    }

    fn event(&mut self, token: Token, _readiness: Readiness, ctx: &mut Context<'_>) {
        self.take_report(token, true, ctx);
    }

    fn stopping(&mut self, _ctx: &mut Context<'_>) {
        // No worker is forked once the pool stops. Shutting the sockets
        // down instead would make `accept` fail with EINVAL in every
        // program still in its accept loop, until it notices its SIGTERM.
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    fn exited(&mut self, record: &ExitRecord, ctx: &mut Context<'_>) {
        let gone: Vec<Token> = self
            .watching
            .iter()
            .filter(|(_, (_, pid, _))| *pid == record.pid)
            .map(|(t, _)| *t)
            .collect();
        for token in gone {
            // The exit may be reaped before the report's event is seen: an
            // exec failure written just before is read now, not lost (the
            // pool would crash-loop instead of stopping at once).
            self.take_report(token, false, ctx);
            if self.watching.remove(&token).is_some() {
                ctx.deregister(token);
            }
        }
    }
}

impl ExecLayer {
    /// Reads what worker `token`'s exec report pipe holds: 4 bytes are the
    /// errno of a failed exec (the pool stops at once); its end without
    /// them means the exec succeeded (the worker is then ready, if `alive`
    /// and the pool counts an exec as ready). Nothing yet: keeps watching.
    fn take_report(&mut self, token: Token, alive: bool, ctx: &mut Context<'_>) {
        let Some((slot, pid, r)) = self.watching.get(&token) else {
            return;
        };
        let (slot, pid) = (*slot, *pid);
        let mut code = [0u8; 4];
        let result = rustix::io::read(r, &mut code);
        if matches!(
            result,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN)
        ) {
            return;
        }
        ctx.deregister(token);
        self.watching.remove(&token);
        match result {
            Ok(4) => {
                let error = std::io::Error::from_raw_os_error(i32::from_le_bytes(code));
                let message = exec_failure(&self.program, &self.path, &error);
                log::error!(target: "ufork", "worker {slot} pid {pid}: {message}; stopping");
                self.failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(message);
                ctx.handle().stop_now();
            }
            _ => {
                if alive && self.ready_on_exec {
                    if let Some(vitals) = ctx.vitals(slot) {
                        vitals.ready();
                    }
                }
            }
        }
    }
}
