//! In-place upgrade for `serve` and `run`, the arbiter's side: what this
//! process was handed when it is the new arbiter, the sockets it hands on
//! when it is the old one, and taking over the pidfile and the control socket
//! by path once every new worker is ready.
//!
//! The old arbiter re-executes `ufork` from its path on disk with the same
//! arguments. The new one takes its `--bind` sockets from the handover (in
//! order), does not daemonize again (it is already detached when the old one
//! was), binds its control socket beside the path and, once its workers are
//! ready, renames a freshly locked pidfile and its control socket into place
//! before it reports `READY=1`; then the old arbiter drains and exits.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ufork_core::Builder;
use ufork_core::upgrade::{Handover, Reexec, UpgradeHandle, Upgrader};

use crate::failure::{self, Result};
use crate::listen::{Address, Listener, Socket};

/// What `init` found, for the rest of the run.
struct State {
    reexec: Option<Reexec>,
    reexec_error: Option<String>,
    handover: Option<Handover>,
    new_arbiter: bool,
    /// Copies of the listening sockets, in `--bind` order, to hand on, and
    /// whether each is refused at a graceful stop (not a socket a
    /// supervisor holds).
    sockets: Vec<(String, OwnedFd, bool)>,
    /// The sockfs inodes of the sockets socket activation handed in: their
    /// owner (systemd) keeps them for the next start, so a graceful stop
    /// leaves them listening.
    supervised: Vec<u64>,
    /// Copies of the unix listening sockets this pool bound: not handed on,
    /// but their paths are removed when a graceful stop begins, so new
    /// clients are refused.
    refuse: Vec<OwnedFd>,
    handle: Option<UpgradeHandle>,
    /// Why this pool cannot be upgraded, when it cannot.
    unsupported: Option<String>,
    /// A graceful stop closes the arbiter's copies of the TCP sockets
    /// instead of shutting them down (`run`: see [`close_at_stop`]).
    close_at_stop: bool,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE
        .get_or_init(|| {
            Mutex::new(State {
                reexec: None,
                reexec_error: Some("the upgrade state was not initialised".into()),
                handover: None,
                new_arbiter: false,
                sockets: Vec::new(),
                supervised: Vec::new(),
                refuse: Vec::new(),
                handle: None,
                unsupported: None,
                close_at_stop: false,
            })
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// First thing in `main`, while the process has one thread: remembers how to
/// start this binary again and takes what an upgrading arbiter handed over.
pub fn init() {
    let (reexec, reexec_error) = match Reexec::capture() {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(failure::io_text(&e))),
    };
    let (handover, taken_error) = match Handover::take() {
        Ok(h) => (h, None),
        Err(e) => (None, Some(failure::io_text(&e))),
    };
    if let Some(e) = taken_error {
        // Logged once the logger is up: see `handover_error`.
        HANDOVER_ERROR.get_or_init(|| e);
    }
    let new_arbiter = handover.is_some();
    let _ = STATE.set(Mutex::new(State {
        reexec,
        reexec_error,
        handover,
        new_arbiter,
        sockets: Vec::new(),
        supervised: Vec::new(),
        refuse: Vec::new(),
        handle: None,
        unsupported: None,
        close_at_stop: false,
    }));
}

static HANDOVER_ERROR: OnceLock<String> = OnceLock::new();

/// Whether this process is a new arbiter started by an upgrade.
pub fn is_new_arbiter() -> bool {
    state().new_arbiter
}

/// The sockets handed over for `binds`, in order, when this process is a new
/// arbiter; `None` otherwise (bind them). The old arbiter handed over what it
/// served: one socket per `--bind` (`default` when there was none and no
/// socket came from socket activation), then the activated sockets no
/// `--bind` claimed. Those a supervisor holds stay marked as such, so this
/// arbiter's graceful stop leaves them listening too.
///
/// # Errors
///
/// The handover does not match the command line, or could not be taken.
pub fn inherited(binds: &[String], default: Option<&str>) -> Result<Option<Vec<Listener>>> {
    if let Some(e) = HANDOVER_ERROR.get() {
        return Err(failure::runtime(format!(
            "cannot take the sockets the old arbiter handed over: {e}"
        )));
    }
    let mut state = state();
    let Some(handover) = state.handover.as_mut() else {
        return Ok(None);
    };
    // In order, without the arbiter's own sockets (named `ufork-...`).
    let kept = handover.kept_listening();
    let names: Vec<(String, bool)> = handover
        .names()
        .into_iter()
        .zip(kept.into_iter().chain(std::iter::repeat(false)))
        .filter(|(n, _)| !n.starts_with(RESERVED))
        .map(|(n, kept)| (n.to_owned(), kept))
        .collect();
    let fds: Vec<(String, OwnedFd, bool)> = names
        .into_iter()
        .filter_map(|(name, kept)| handover.take_listener(&name).map(|fd| (name, fd, kept)))
        .collect();
    let activated = fds.iter().any(|(_, _, kept)| *kept);
    let asked = match default {
        Some(_) if binds.is_empty() && !activated => 1,
        _ => binds.len(),
    };
    // Past the --binds, only activated sockets nobody claimed.
    if fds.len() < asked || fds[asked..].iter().any(|(_, _, kept)| !kept) {
        return Err(failure::runtime(format!(
            "the old arbiter handed over {} socket{} but --bind gives {}; upgrade with the same flags",
            fds.len(),
            if fds.len() == 1 { "" } else { "s" },
            asked
        )));
    }
    let mut listeners = Vec::new();
    let mut supervised = Vec::new();
    for (i, (name, fd, kept)) in fds.into_iter().enumerate() {
        let socket = TcpListener::from(fd);
        let addr = socket.local_addr().map_err(|e| {
            failure::runtime(format!(
                "a handed-over socket is not a TCP listener: {}",
                failure::io_text(&e)
            ))
        })?;
        // A supervisor's socket (claimed by name) is its own address: a
        // restart would not move it either.
        if let Some(bind) = binds.get(i).filter(|b| !kept && bind_moved(b, addr)) {
            log::warn!(
                target: "ufork",
                "upgrade: --bind {bind} is not taken up: this arbiter serves the socket the old one handed over, {addr}; restart the pool to listen elsewhere"
            );
        }
        if kept && let Ok(stat) = rustix::fs::fstat(&socket) {
            supervised.push(stat.st_ino);
        }
        listeners.push(Listener {
            name,
            addr: Address::Tcp(addr),
            socket: Socket::Tcp(socket),
        });
    }
    state.supervised.extend(supervised);
    Ok(Some(listeners))
}

/// Whether `--bind` text `bind` names a TCP address (an IP and a port other
/// than 0; a host name is not looked up) other than `served`'s.
fn bind_moved(bind: &str, served: std::net::SocketAddr) -> bool {
    let addr = bind.split_once('=').map_or(bind, |(_, a)| a);
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|want| want.port() != 0 && want != served)
}

/// Names of the arbiter's own sockets in the handover (not `--bind`s).
const RESERVED: &str = "ufork-";

/// The `--metrics-bind` socket's name in the handover.
pub const METRICS: &str = "ufork-metrics";

/// In a new arbiter: the arbiter socket the old one handed over as `name`.
pub fn take_named(name: &str) -> Option<OwnedFd> {
    state().handover.as_mut()?.take_listener(name)
}

/// Keeps a copy of one of the arbiter's own sockets (after the `--bind` ones)
/// to hand to a new arbiter under `name`.
pub fn remember_fd(name: &str, socket: &impl AsFd) {
    let mut state = state();
    match socket.as_fd().try_clone_to_owned() {
        Ok(fd) => state.sockets.push((name.to_owned(), fd, true)),
        Err(e) => state.unsupported = Some(failure::io_text(&e)),
    }
}

/// Marks `socket` as one a supervisor handed in by socket activation: a
/// graceful stop leaves it listening (its owner queues connections for the
/// next start; a shut-down socket would be dead for the owner too).
pub fn supervised(socket: &impl AsFd) {
    if let Ok(stat) = rustix::fs::fstat(socket) {
        state().supervised.push(stat.st_ino);
    }
}

/// Keeps a copy of each listening socket to hand to a new arbiter.
pub fn remember(listeners: &[Listener]) {
    let mut state = state();
    for l in listeners {
        match &l.socket {
            Socket::Tcp(socket) => match socket.as_fd().try_clone_to_owned() {
                Ok(fd) => {
                    let refuse = rustix::fs::fstat(&fd)
                        .map_or(true, |stat| !state.supervised.contains(&stat.st_ino));
                    state.sockets.push((l.name.clone(), fd, refuse));
                }
                Err(e) => state.unsupported = Some(failure::io_text(&e)),
            },
            // The old pool removes its socket file when it stops.
            Socket::Unix(socket, file) => {
                // Only a path this pool made is removed: an activated
                // socket's file is its supervisor's.
                if file.is_some()
                    && let Ok(fd) = socket.as_fd().try_clone_to_owned()
                {
                    state.refuse.push(fd);
                }
                state.unsupported = Some(format!(
                    "--bind {}: unix sockets are not handed over",
                    l.addr
                ));
            }
        }
    }
}

/// A graceful stop of this pool closes the arbiter's copies of its TCP
/// listening sockets, leaving each worker to stop accepting and close its
/// own (`run`), instead of shutting the sockets down at once, which makes
/// `accept` fail with EINVAL in a program that has not yet noticed its
/// SIGTERM (uvicorn logged a traceback per try). The caller drops its other
/// copies when the stop begins.
pub fn close_at_stop() {
    state().close_at_stop = true;
}

/// The running pool's upgrade handle (for the control socket's `upgrade`).
pub fn handle() -> std::result::Result<UpgradeHandle, String> {
    let state = state();
    if let Some(why) = &state.unsupported {
        return Err(format!("cannot upgrade this pool: {why}"));
    }
    match (&state.handle, &state.reexec_error) {
        (Some(handle), _) => Ok(handle.clone()),
        (None, Some(e)) => Err(format!(
            "cannot upgrade: this binary's path is unknown ({e})"
        )),
        (None, None) => Err("cannot upgrade: the pool is not running".to_owned()),
    }
}

/// What the new arbiter takes over by path once it is ready.
#[derive(Debug, Default)]
pub struct Takeover {
    /// `--pidfile`: replaced by a locked file with this process' pid.
    pub pidfile: Option<PathBuf>,
    /// The control socket: bound at `(temporary, final)` path.
    pub control: Option<(PathBuf, PathBuf)>,
    /// The taken-over pidfile, kept (locked) for the run.
    pub held: Arc<Mutex<Option<HeldPidfile>>>,
    /// Why taking over failed, if it did: the new arbiter then stops, and
    /// exits 1 saying so ([`Takeover::result`]).
    pub failed: Arc<Mutex<Option<String>>>,
}

impl Takeover {
    /// An error if this arbiter, started by an upgrade, could not take the
    /// old arbiter's files over and stopped: the upgrade failed, and the
    /// exit status says so.
    pub fn result(&self) -> crate::failure::Result<()> {
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(why) => Err(failure::runtime(format!(
                "upgrade failed: cannot take over from the old arbiter: {why}; it keeps serving"
            ))),
            None => Ok(()),
        }
    }
}

/// Adds the upgrader (every pool) and, in a new arbiter, the ready reporter
/// that takes over `takeover` first. `workers` is the count the command line
/// and `--config` give: a new arbiter whose old pool was scaled away from its
/// own at runtime starts the old pool's count instead, and says so.
pub fn configure(
    builder: Builder,
    start_timeout: std::time::Duration,
    workers: usize,
    takeover: &Takeover,
    control: Option<&Path>,
) -> Builder {
    let mut state = state();
    let mut builder = builder;
    if let Some(scaled) = state.handover.as_ref().and_then(Handover::workers)
        && scaled != workers
    {
        if scaled <= crate::units::MAX_WORKERS as usize {
            log::info!(target: "ufork", "upgrade: starting {scaled} workers, the count the old pool was scaled to at runtime (the command line and config give {workers})");
            builder = builder.workers(scaled);
        } else {
            log::warn!(target: "ufork", "upgrade: the old pool ran {scaled} workers, past {}; starting {workers}", crate::units::MAX_WORKERS);
        }
    }
    if let Some(why) = state.unsupported.clone() {
        // Asked before the upgrader, which stays for what it does at a
        // graceful stop (a unix socket's path removed at once).
        builder = builder.layer(Refuse(why));
    }
    // Taken whether or not an upgrader keeps them: a copy left here would
    // keep a socket listening past a `run` pool's stop.
    let sockets = std::mem::take(&mut state.sockets);
    let refusals = std::mem::take(&mut state.refuse);
    if let Some(reexec) = state.reexec.clone() {
        match Upgrader::new(reexec) {
            Ok(mut upgrader) => {
                upgrader = upgrader
                    .timeout(start_timeout)
                    .configured_workers(workers)
                    .close_at_stop(state.close_at_stop);
                if let Some(path) = control.map(Path::to_owned) {
                    upgrader =
                        upgrader.after_failed(move |pid| remove_temporary_control(&path, pid));
                }
                for (name, fd, refuse) in sockets {
                    let kept = if refuse {
                        upgrader.listener(&name, &fd)
                    } else {
                        upgrader.hand_over(&name, &fd)
                    };
                    match kept {
                        Ok(u) => upgrader = u,
                        Err(e) => {
                            log::error!(target: "ufork", "cannot keep a socket for upgrades: {}", failure::io_text(&e));
                            return builder;
                        }
                    }
                }
                for fd in refusals {
                    match upgrader.refuse_at_stop(&fd) {
                        Ok(u) => upgrader = u,
                        Err(e) => {
                            log::error!(target: "ufork", "cannot keep a unix socket to refuse at stop: {}", failure::io_text(&e));
                            return builder;
                        }
                    }
                }
                state.handle = Some(upgrader.handle());
                builder = builder.layer(upgrader);
            }
            Err(e) => {
                state.reexec_error = Some(failure::io_text(&e));
            }
        }
    }
    if let Some(reporter) = state.handover.take().and_then(Handover::reporter) {
        let pidfile = takeover.pidfile.clone();
        let control = takeover.control.clone();
        let held = Arc::clone(&takeover.held);
        let failed = Arc::clone(&takeover.failed);
        builder = builder.layer(reporter.before_ready(move || {
            let taken = take_over(pidfile.as_deref(), control.as_ref(), &held);
            if let Err(why) = &taken {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            }
            taken
        }));
    }
    builder
}

/// Takes the old arbiter's pidfile and control socket path over. When the
/// control socket's fails after the pidfile was taken, the old arbiter's
/// pidfile is put back (the very file, which its lock is on): the old pool
/// keeps serving, and `ufork status` and `stop` must still find it.
fn take_over(
    pidfile: Option<&Path>,
    control: Option<&(PathBuf, PathBuf)>,
    held: &Mutex<Option<HeldPidfile>>,
) -> std::result::Result<(), String> {
    // A second name for the old arbiter's pidfile, kept until the takeover
    // is whole (none if the pidfile is gone or cannot be linked: then it
    // cannot be put back).
    let kept = pidfile.and_then(|path| {
        let backup = sibling(path, "old");
        let _ = std::fs::remove_file(&backup);
        std::fs::hard_link(path, &backup)
            .ok()
            .map(|()| (path, backup))
    });
    let forget = |kept: &Option<(&Path, PathBuf)>| {
        if let Some((_, backup)) = kept {
            let _ = std::fs::remove_file(backup);
        }
    };
    if let Some(path) = pidfile {
        let taken = HeldPidfile::take_over(path).map_err(|e| {
            forget(&kept);
            format!("--pidfile {}: {}", path.display(), failure::io_text(&e))
        })?;
        *held.lock().unwrap_or_else(|p| p.into_inner()) = Some(taken);
    }
    if let Some((temporary, path)) = control {
        if let Err(e) = std::fs::rename(temporary, path) {
            // The held pidfile then no longer names the path, so its drop
            // leaves the old one in place.
            if let Some((pidfile, backup)) = &kept {
                if let Err(e) = std::fs::rename(backup, pidfile) {
                    log::error!(target: "ufork", "upgrade: cannot put the old arbiter's pidfile back at {}: {}", pidfile.display(), failure::io_text(&e));
                }
            }
            return Err(format!(
                "--control-socket {}: {}",
                path.display(),
                failure::io_text(&e)
            ));
        }
    }
    forget(&kept);
    Ok(())
}

/// `.NAME.PID.SUFFIX` beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{suffix}", std::process::id()))
}

/// Takes SIGUSR2 for a pool that cannot be upgraded and says why, as the
/// control socket's `upgrade` does: the upgrader would start a new arbiter
/// that can only fail (with a reason that misleads: "upgrade with the same
/// flags").
#[derive(Debug)]
struct Refuse(String);

impl ufork_core::Layer for Refuse {
    fn upgrade(&mut self, _ctx: &mut ufork_core::Context<'_>) -> bool {
        log::warn!(target: "ufork", "upgrade refused: cannot upgrade this pool: {}", self.0);
        true
    }
}

/// A pidfile taken over from the old arbiter: a fresh file, locked, with this
/// process' pid, renamed over the path (so readers never see it empty or
/// half-written, and the old arbiter's lock stays on the inode it unlinks).
/// Removed at drop if the path still names it.
#[derive(Debug)]
pub struct HeldPidfile {
    file: File,
    path: PathBuf,
    pid: u32,
}

impl HeldPidfile {
    fn take_over(path: &Path) -> std::io::Result<Self> {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        let pid = std::process::id();
        let temporary = sibling(path, "new");
        // Created afresh, never opened through whatever is at the name (a
        // link planted there would have this process truncate its target).
        let _ = std::fs::remove_file(&temporary);
        let fd = rustix::fs::open(
            &temporary,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let result = (|| {
            rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)?;
            let mut file = File::from(fd);
            writeln!(file, "{pid}")?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)?;
            Ok(file)
        })();
        match result {
            Ok(file) => Ok(Self {
                file,
                path: path.to_owned(),
                pid,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                Err(e)
            }
        }
    }
}

impl Drop for HeldPidfile {
    fn drop(&mut self) {
        let names_it = match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.dev() == b.dev() && a.ino() == b.ino()
            }
            _ => false,
        };
        if std::process::id() == self.pid && names_it {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where a new arbiter binds its control socket until it takes over `path`.
pub fn temporary_control_path(path: &Path) -> PathBuf {
    temporary_control_path_of(path, std::process::id())
}

/// Where the new arbiter `pid` binds its control socket until it takes over
/// `path`.
fn temporary_control_path_of(path: &Path, pid: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{pid}.new"));
    PathBuf::from(name)
}

/// After a failed upgrade's new arbiter `pid` ended: its temporary control
/// socket, which it removes itself at any end it lives through, but not
/// when it was killed (SIGKILL from the old arbiter at the end of its
/// grace, the OOM killer, an operator).
fn remove_temporary_control(path: &Path, pid: i32) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(pid) = u32::try_from(pid) else {
        return;
    };
    let temporary = temporary_control_path_of(path, pid);
    if std::fs::symlink_metadata(&temporary).is_ok_and(|m| m.file_type().is_socket()) {
        match std::fs::remove_file(&temporary) {
            Ok(()) => {
                log::info!(target: "ufork", "upgrade: removed {}, the control socket pid {pid} left", temporary.display())
            }
            Err(e) => {
                log::warn!(target: "ufork", "upgrade: cannot remove {}, the control socket pid {pid} left: {}", temporary.display(), failure::io_text(&e))
            }
        }
    }
}
