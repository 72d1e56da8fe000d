//! Assembling a pool from the common flags: listeners, the daemon and its
//! pidfile, privileges, output capture and the log file, the prompt, the
//! control socket.
//!
//! Order matters: the directory changes first, the pidfile is locked before
//! binding (with `--daemon`, looked at: the daemon locks it), sockets are bound next (so they sit at fds 3, 4, ...), the
//! process daemonizes while it still has one thread, and privileges are
//! dropped last: the log file, the metrics and control sockets and the
//! capture are made as the user who started ufork (the control socket's
//! directory may be root's), and a start that fails before the drop still
//! removes its pidfile. (The drop is process-wide, the capture's threads
//! included.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ufork_core::{Builder, Context, Layer};
use ufork_daemon::{Daemon, Daemonize, Launched, Pidfile, RotatingFile};
use ufork_io::{Capture, Sink};

use crate::cli::PoolArgs;
use crate::console::{self, Console};
use crate::control::{self, Control};
use crate::failure::{self, Failure, Result, io_text};
use crate::health::Observer;
use crate::metrics::Metrics;
use crate::supervisor::Supervisor;
use crate::{listen, logger, privs, term, upgrade};

/// How long the end of a run waits for output the sink has not taken yet, at
/// most (and no later than the graceful timeout plus 1 s after a stop began:
/// [`logger::stop_budget`]).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// `--chdir DIR`: done first, so every relative path after it (DIR,
/// `--pidfile`, `--log-file`, CMD) is relative to DIR, as gunicorn's is.
///
/// # Errors
///
/// A runtime failure naming the directory.
pub fn chdir(pool: &PoolArgs) -> Result<()> {
    match &pool.chdir {
        Some(dir) => std::env::set_current_dir(dir)
            .map_err(|e| failure::runtime(format!("--chdir {}: {}", dir.display(), io_text(&e)))),
        None => Ok(()),
    }
}

/// Takes the pidfile's lock before anything is bound, so a second start
/// says "already running as pid N" rather than "address in use". With
/// `--daemon` the daemon takes the lock itself (its pid goes in the file), so
/// this only looks at it; two daemons starting at once still meet at the
/// lock.
///
/// `sockets` descriptors are held free below the pidfile's for the sockets
/// bound next: `run` hands them over as fds 3, 4, ...
///
/// # Errors
///
/// A runtime failure naming the running pid and how to stop it, or why the
/// pidfile cannot be taken.
pub fn lock_pidfile(pool: &PoolArgs, sockets: usize) -> Result<Option<Pidfile>> {
    let Some(path) = &pool.pidfile else {
        return Ok(None);
    };
    if upgrade::is_new_arbiter() {
        // The old arbiter holds it until this one takes over.
        return Ok(None);
    }
    if pool.daemon {
        return match ufork_daemon::status(path) {
            Ok(ufork_daemon::Status::Running { pid }) => Err(already_running(path, pid)),
            // Anything else is for the daemon's lock to report.
            _ => Ok(None),
        };
    }
    let placeholders = (0..sockets)
        .map(|_| std::fs::File::open("/dev/null"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| failure::runtime(format!("cannot open /dev/null: {}", io_text(&e))))?;
    let pidfile = Pidfile::create(path).map_err(|e| match e {
        ufork_daemon::Error::AlreadyRunning { pid, .. } => already_running(path, pid),
        e => daemon_failure(pool, &e),
    })?;
    drop(placeholders);
    Ok(Some(pidfile))
}

fn already_running(path: &std::path::Path, pid: i32) -> Failure {
    failure::runtime(format!(
        "--pidfile {}: already running as pid {pid}; stop it with `ufork stop --pidfile {}`",
        path.display(),
        path.display()
    ))
}

/// How long a `--daemon` launcher waits for every worker to be ready: a
/// `--start-timeout` for each round of `--max-booting` workers, one more
/// for a worker replaced on the way, and 30 s. A pool that cannot start
/// gives up sooner (`--give-up-after`) and the launcher reports it then.
pub fn daemon_ready_wait(start_timeout: Duration, workers: usize, max_booting: u32) -> Duration {
    let per_round = usize::try_from(max_booting.max(1)).unwrap_or(usize::MAX);
    let rounds = u32::try_from(workers.div_ceil(per_round).saturating_add(1)).unwrap_or(u32::MAX);
    start_timeout
        .saturating_mul(rounds)
        .saturating_add(Duration::from_secs(30))
}

/// The number of workers: `--workers`, else `WEB_CONCURRENCY` (the
/// variable gunicorn and the platforms that set it use), else the number of
/// CPUs.
///
/// # Errors
///
/// A usage error when `WEB_CONCURRENCY` is not what `--workers` takes.
pub fn workers(pool: &PoolArgs) -> Result<usize> {
    if let Some(n) = pool.workers {
        return Ok(n as usize);
    }
    match std::env::var_os("WEB_CONCURRENCY") {
        Some(value) => {
            let text = value.to_string_lossy();
            crate::units::parse_workers(&text)
                .map(|n| n as usize)
                .map_err(|why| {
                    failure::usage(format!(
                        "WEB_CONCURRENCY={text:?}: {why}; unset it or pass --workers"
                    ))
                })
        }
        None => Ok(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)),
    }
}

/// Where the control socket goes: `--control-socket`, or next to the
/// pidfile ([`control::beside_pidfile`]), foreground or daemon, so every
/// pool a pidfile names answers `ufork reload --pidfile` when the roll is
/// done. The second value says it was not asked for by name: failing to
/// make it is then a warning, not a failed start.
pub fn control_path(pool: &PoolArgs) -> Option<(PathBuf, bool)> {
    match &pool.control_socket {
        Some(path) => Some((path.clone(), false)),
        None => pool
            .pidfile
            .as_deref()
            .and_then(control::beside_pidfile)
            .map(|p| (p, true)),
    }
}

/// Refuses a `--control-socket` path too long for a unix socket, and a
/// `--bind unix:` path that is also the control socket's, before anything
/// is bound: one path cannot hold both sockets (the pool's second socket
/// would find the first listening there, and `ufork status` would talk to
/// the application). Warns of a path an upgrade's temporary socket beside
/// it (`PATH.PID.new`) would not fit in.
///
/// # Errors
///
/// A usage failure naming `--bind` and `--control-socket` (or `--pidfile`,
/// whose default control socket it is).
pub fn check_control_path(pool: &PoolArgs, binds: &[String], for_run: bool) -> Result<()> {
    let Some((control, implicit)) = control_path(pool) else {
        return Ok(());
    };
    // Refused at the start as well (one beside the pidfile, unasked, is
    // done without there instead).
    if let Some(message) = control::too_long(&control).filter(|_| !implicit) {
        return Err(failure::usage(message));
    }
    if let Some(message) = control::too_long_to_upgrade(&control) {
        log::warn!(target: "ufork", "{message}");
    }
    let options = listen::Options {
        for_run,
        unix_mode: 0o660,
        backlog: crate::listen::DEFAULT_BACKLOG,
    };
    // A malformed --bind is reported where it is bound.
    let Ok(binds) = listen::resolve_all(binds, options) else {
        return Ok(());
    };
    for bind in binds {
        let listen::Address::Unix(path) = &bind.addr else {
            continue;
        };
        if !control::same_socket(path, &control) {
            continue;
        }
        return Err(failure::usage(if implicit {
            format!(
                "--bind {} is the control socket --pidfile {} puts beside it; bind another path or give --control-socket PATH",
                bind.text,
                pool.pidfile.as_deref().unwrap_or(&control).display()
            )
        } else {
            format!(
                "--bind {} and --control-socket {} are the same path; give each socket its own",
                bind.text,
                control.display()
            )
        }));
    }
    Ok(())
}

/// Resolves the `--bind`s and `--metrics-bind` given, and refuses two
/// that overlap (see [`listen::check_overlaps`] and
/// [`listen::check_metrics`]): called before the pidfile is taken and
/// anything is bound, so the error is this one even while another pool
/// holds the pidfile. Without `--bind`, `default` (`serve`'s default
/// address, given only with `--metrics-bind`) counts for the metrics
/// check. Nothing is checked in a new arbiter of an upgrade, nor with
/// sockets from socket activation: the old arbiter's (or the supervisor's)
/// sockets are the ones served then, whatever the flags would overlap on.
///
/// # Errors
///
/// A usage failure naming the flags, or saying what is wrong with an
/// address.
pub fn check_addresses(
    pool: &PoolArgs,
    binds: &[String],
    for_run: bool,
    reuse_port: bool,
    default: Option<&str>,
) -> Result<()> {
    if crate::upgrade::is_new_arbiter() || crate::activation::offered() {
        return Ok(());
    }
    let options = listen::Options {
        for_run,
        unix_mode: 0o660,
        backlog: crate::listen::DEFAULT_BACKLOG,
    };
    let resolved = listen::resolve_all(binds, options)?;
    listen::check_overlaps(&resolved, reuse_port)?;
    let Some(text) = pool.metrics_bind.as_deref() else {
        return Ok(());
    };
    let metrics = crate::metrics::resolve(text)?;
    let Some(default) = default.filter(|_| binds.is_empty()) else {
        return listen::check_metrics(&resolved, text, metrics, reuse_port);
    };
    let resolved = listen::resolve_all(&[default.to_owned()], options)?;
    listen::check_metrics(&resolved, text, metrics, reuse_port).map_err(|e| match e {
        Failure::Usage(m) => Failure::Usage(m.replace(
            &format!("--bind {default}"),
            &format!("serve's default address {default} (no --bind given)"),
        )),
        other => other,
    })
}

/// Everything set up around the arbiter, before it runs.
#[derive(Debug)]
pub struct Session {
    daemon: Option<Daemon>,
    _pidfile: Option<Pidfile>,
    log: Option<RotatingFile>,
    capture: Option<Capture>,
    control: Option<Control>,
    control_path: Option<PathBuf>,
    /// The control socket is the one beside the pidfile, not `--control-socket`.
    control_implicit: bool,
    prompt: bool,
    failure: Arc<Mutex<Option<String>>>,
    supervisor: Option<Supervisor>,
    metrics: Option<Metrics>,
    metrics_addr: Option<SocketAddr>,
    /// Without a terminal: daemonized, or a new arbiter that took over from
    /// a daemon (it does not daemonize again).
    detached: bool,
    takeover: upgrade::Takeover,
    /// `--user` as root: the helper that keeps root for the files above.
    privsep: Option<ufork_daemon::Privsep>,
    /// The `--bind unix:` sockets' paths, which the helper removes.
    sockets: Vec<PathBuf>,
}

impl Session {
    /// Daemonizes (the launcher exits here), takes the pidfile (or keeps
    /// `locked`, taken by [`lock_pidfile`]), opens the log, drops privileges, makes the control socket and starts capturing.
    /// `sockets` are the paths of the `--bind unix:` sockets bound already:
    /// under `--user`, the privileged helper removes them at the stop.
    ///
    /// # Errors
    ///
    /// A message naming the flag whose file or setting failed.
    pub fn start(pool: &PoolArgs, locked: Option<Pidfile>, sockets: &[PathBuf]) -> Result<Self> {
        // Read before anything else runs: the variables describe this
        // process, not the daemon or the workers it will make.
        let supervisor = Supervisor::from_env();
        let log_builder = pool.log_file.as_ref().map(|path| {
            RotatingFile::builder(path)
                .max_size(pool.log_max_bytes)
                .backups(pool.log_keep as usize)
        });
        let mut daemon = None;
        let mut pidfile = None;
        let mut log = None;
        // Without --daemon the lock is taken already (before binding).
        let mut locked = locked;
        let new_arbiter = upgrade::is_new_arbiter();
        let mut takeover = upgrade::Takeover::default();
        if new_arbiter {
            // The old arbiter holds the pidfile until this one is ready.
            takeover.pidfile = pool.pidfile.clone();
            if let Some(builder) = log_builder {
                log = Some(builder.open().map_err(|e| daemon_failure(pool, &e))?);
            }
        } else if pool.daemon {
            if rustix::process::getpid().is_init() {
                // The launcher exits once the daemon is up, and the kernel
                // then kills every process of the namespace: the daemon
                // would be reported started, then be gone.
                return Err(failure::usage(
                    "--daemon: this process is pid 1 of its pid namespace (a container's entrypoint, or unshare --pid --fork), whose exit would kill the daemon; run in the foreground (drop --daemon)",
                ));
            }
            let mut options = Daemonize::new()
                .timeout(Some(daemon_ready_wait(
                    pool.start_timeout,
                    workers(pool)?,
                    pool.max_booting,
                )))
                .working_directory(std::env::current_dir().unwrap_or_else(|_| "/".into()))
                .umask(0o022)
                .unblock_in_launcher(&crate::pid1::held_signals());
            if let Some(path) = &pool.pidfile {
                options = options.pidfile(path);
            }
            if let Some(builder) = log_builder {
                options = options.log(builder);
            }
            match options.start() {
                Ok(Launched::Parent { pid }) => {
                    println!("ufork: daemon started as pid {pid}");
                    std::process::exit(0);
                }
                Ok(Launched::Daemon(d)) => {
                    term::init();
                    log = d.log().cloned();
                    daemon = Some(d);
                }
                Err(e) => return Err(daemon_failure(pool, &e)),
            }
        } else {
            pidfile = locked.take();
            if let Some(builder) = log_builder {
                log = Some(builder.open().map_err(|e| daemon_failure(pool, &e))?);
            }
        }
        let mut session = Self {
            daemon,
            _pidfile: pidfile,
            log,
            capture: None,
            control: None,
            control_path: control_path(pool).map(|(p, _)| p),
            control_implicit: control_path(pool).is_some_and(|(_, implicit)| implicit),
            prompt: false,
            failure: Arc::new(Mutex::new(None)),
            supervisor,
            metrics: None,
            metrics_addr: None,
            detached: pool.daemon,
            takeover,
            privsep: None,
            sockets: sockets.to_vec(),
        };
        if let Err(e) = session.setup(pool, sockets) {
            session.fail(&e);
            return Err(e);
        }
        Ok(session)
    }

    fn setup(&mut self, pool: &PoolArgs, sockets: &[PathBuf]) -> Result<()> {
        // Bound before privileges drop, like the pool's own sockets.
        self.metrics = pool
            .metrics_bind
            .as_deref()
            .map(Metrics::bind)
            .transpose()?;
        self.metrics_addr = self.metrics.as_ref().map(Metrics::addr);
        let mut no_control = None;
        if let Some(path) = self.control_path.clone() {
            let bound = if upgrade::is_new_arbiter() {
                let temporary = upgrade::temporary_control_path(&path);
                Control::bind_beside(&temporary, &path).inspect(|_| {
                    self.takeover.control = Some((temporary, path.clone()));
                })
            } else {
                Control::bind(&path)
            };
            match bound {
                Ok(control) => self.control = Some(control),
                // Beside the pidfile, unasked: the pool still starts
                // (a pidfile in a directory it may not add a socket to),
                // and says what it cannot do.
                Err(e) if self.control_implicit => {
                    no_control = Some(e.to_string());
                    self.control_path = None;
                }
                Err(e) => return Err(e),
            }
        }
        if pool.user.is_some() || pool.group.is_some() {
            // Forked while the process has one thread (the capture's start
            // below), before the drop; see privs::helper.
            let pidfile =
                (self._pidfile.as_ref()).or(self.daemon.as_ref().and_then(Daemon::pidfile));
            let control = self
                .control
                .is_some()
                .then_some(self.control_path.as_deref())
                .flatten();
            self.privsep = privs::helper(
                self.log.as_ref(),
                pidfile,
                control,
                sockets,
                pool.user.as_deref(),
                pool.group.as_deref(),
            )?;
        }
        let capture = match &self.log {
            Some(log) => Capture::builder().sink(Sink::writer(log.clone())),
            None if self.detached => Capture::builder().sink(Sink::stdout()),
            None => Capture::builder()
                .sink(Sink::writer(term::LineWriter::new(term::Stream::Out)))
                .stderr_sink(Sink::writer(term::LineWriter::new(term::Stream::Err)))
                // The arbiter's lines never wait behind a stdout nobody reads.
                .arbiter_sink(Sink::writer(term::LineWriter::new(term::Stream::Err))),
        };
        // Each worker's stderr on a pipe of its own, marked apart from its
        // stdout. The end of `run` waits FLUSH_TIMEOUT for a stalled sink,
        // then says how much it dropped; and a stop takes at most the
        // graceful timeout plus 1 s in all.
        let format = logger::format(pool.log_format, pool.no_timestamps, self.log.is_some());
        let capture = capture
            .split_streams(true)
            .format(format)
            .flush_timeout(FLUSH_TIMEOUT)
            .stop_timeout(logger::stop_budget(pool.graceful_timeout))
            .stall_timeout(
                Some(
                    pool.log_stall_timeout
                        .unwrap_or(crate::cli::DEFAULT_LOG_STALL),
                )
                .filter(|t| !t.is_zero()),
            );
        let capture = capture.build().map_err(|e| {
            failure::runtime(format!(
                "cannot capture the workers' output: {}",
                failure::chain(&e)
            ))
        })?;
        // The arbiter's records go through the capture's queue, never
        // straight to a descriptor: its thread must not block on output.
        logger::delegate(Box::new(capture.logger().prefix("[ufork] ")));
        if let Some(why) = no_control {
            log::warn!(
                target: "ufork",
                "no control socket beside the pidfile ({why}): `ufork reload --pidfile` and `ufork upgrade --pidfile` cannot wait for the outcome; give --control-socket PATH"
            );
        }
        self.capture = Some(capture);
        // Last: everything above may need the privileges (a control socket
        // in a root-owned directory), and fails with them still there to
        // remove the pidfile.
        if pool.user.is_some() || pool.group.is_some() {
            privs::give_sockets(sockets, pool.user.as_deref(), pool.group.as_deref())?;
            privs::drop_to(pool.user.as_deref(), pool.group.as_deref())?;
        }
        // A new arbiter leaves the terminal to the old one's prompt.
        self.prompt =
            !pool.daemon && !pool.no_prompt && console::available() && !upgrade::is_new_arbiter();
        Ok(())
    }

    /// Where the run records a failure that stops the pool, for the daemon's
    /// launcher to print.
    pub fn set_failure(&mut self, failure: Arc<Mutex<Option<String>>>) {
        self.failure = failure;
    }

    /// Reports a failure to the daemon's launcher (which prints it).
    pub fn fail(&mut self, failure: &Failure) {
        if let Some(daemon) = &mut self.daemon {
            let _ = daemon.fail(failure);
        }
    }

    /// Adds the common settings and this session's layers to the arbiter.
    ///
    /// Every worker gets a process group of its own, for `run` and `serve`
    /// alike: stop signals reach whatever a worker started, and what is left
    /// of its group when it is reaped gets SIGKILL, so no background child
    /// keeps the listening sockets after its worker. A worker is still the
    /// process it was (LISTEN_PID is its pid); Ctrl-C reaches only the
    /// arbiter, which relays the stop as SIGTERM.
    pub fn configure(&mut self, pool: &PoolArgs, workers: usize, builder: Builder) -> Builder {
        let mut builder = builder
            .process_group(true)
            .workers(workers)
            .start_timeout(pool.start_timeout)
            .give_up_after(pool.give_up_after)
            .graceful_timeout(pool.graceful_timeout)
            .max_booting(pool.max_booting as usize)
            .memory_limit(pool.memory_limit);
        // Before the capture: its final flush waits, and must find Ctrl-C
        // working and the stop's deadline known.
        builder = builder.layer(logger::FinalFlush::new(pool.graceful_timeout));
        if let Some(capture) = self.capture.take() {
            builder = builder.layer(capture);
        }
        if let Some(log) = &self.log {
            builder = builder.layer(Reopen { log: log.clone() });
        }
        if let Some(helper) = &self.privsep {
            builder = builder.layer(privs::ChildSide(helper.clone()));
            if !self.sockets.is_empty() {
                builder = builder.layer(RefuseUnix {
                    helper: helper.clone(),
                    sockets: std::mem::take(&mut self.sockets),
                });
            }
        }
        if let Some(daemon) = self.daemon.take() {
            builder = builder.layer(Readiness {
                daemon,
                deadline: Instant::now(),
                failure: Arc::clone(&self.failure),
            });
        }
        if self.prompt {
            builder = builder.layer(Console::new());
        }
        if let Some(control) = self.control.take() {
            builder = builder.layer(control);
        }
        builder = builder.layer(Observer::new(pool.start_timeout, self.supervisor.take()));
        builder = builder.layer(crate::pid1::ReleaseStopSignals);
        if let Some(metrics) = self.metrics.take() {
            builder = builder.layer(metrics);
        }
        upgrade::configure(
            builder,
            pool.start_timeout,
            workers,
            &self.takeover,
            self.control_path.as_deref(),
        )
    }

    /// An error if this arbiter, started by an upgrade, stopped because it
    /// could not take the old arbiter's pidfile or control socket over.
    pub fn takeover_result(&self) -> Result<()> {
        self.takeover.result()
    }

    /// Tells the user how to reach and stop the pool.
    pub fn announce(&self, pool: &PoolArgs) {
        if let Some(addr) = self.metrics_addr {
            let line = format!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
            if pool.daemon {
                log::info!(target: "ufork", "{line}");
            } else {
                term::say(line);
            }
        }
        if pool.daemon {
            if let Some(path) = &self.control_path {
                log::info!(target: "ufork", "control socket: {}", path.display());
            }
            return;
        }
        if let Some(path) = &self.control_path {
            term::say(format!("control socket: {}", path.display()));
        }
        // An upgrade's new arbiter outlives the shell's job (the old
        // arbiter): the terminal's Ctrl-C no longer reaches it.
        if !self.prompt && !upgrade::is_new_arbiter() {
            term::say("press Ctrl-C to stop");
        }
    }
}

/// The paths of the unix sockets among `listeners` that this process made
/// (and so removes at the stop), for [`Session::start`].
pub fn unix_paths(listeners: &[listen::Listener]) -> Vec<PathBuf> {
    listeners
        .iter()
        .filter_map(|l| match (&l.addr, &l.socket) {
            (listen::Address::Unix(path), listen::Socket::Unix(_, Some(_))) => Some(path.clone()),
            _ => None,
        })
        .collect()
}

impl Drop for Session {
    fn drop(&mut self) {
        // The pidfile goes while the privileged helper still serves; then
        // the helper removes the control socket, exits and is reaped.
        self._pidfile.take();
        self.daemon.take();
        if let Some(helper) = self.privsep.take() {
            if let Err(e) = helper.finish() {
                log::warn!(target: "ufork", "{}", e.report());
            }
        }
    }
}

fn daemon_failure(pool: &PoolArgs, error: &ufork_daemon::Error) -> Failure {
    use ufork_daemon::Error as E;
    let flag = match error {
        E::OpenPidfile { .. }
        | E::LockPidfile { .. }
        | E::WritePidfile { .. }
        | E::AlreadyRunning { .. } => "--pidfile",
        E::OpenLog { .. } | E::RotateLog { .. } => "--log-file",
        _ => "--daemon",
    };
    let mut text = error.report();
    if let Some(at) = text.find(" (os error") {
        let end = text[at..].find(')').map_or(text.len(), |e| at + e + 1);
        text.replace_range(at..end, "");
    }
    let hint = match error {
        E::AlreadyRunning { .. } => format!(
            "; stop it with `ufork stop --pidfile {}`",
            pool.pidfile
                .as_deref()
                .unwrap_or(std::path::Path::new("PATH"))
                .display()
        ),
        _ => String::new(),
    };
    failure::runtime(format!("{flag}: {text}{hint}"))
}

/// Reopens the log file on SIGUSR1 (or the `reopen` command).
#[derive(Debug)]
struct Reopen {
    log: RotatingFile,
}

impl Layer for Reopen {
    fn reopen(&mut self, _ctx: &mut Context<'_>) {
        match self.log.reopen() {
            Ok(()) => {
                log::info!(target: "ufork", "reopened the log file {}", self.log.path().display())
            }
            Err(e) => log::error!(target: "ufork", "{}", e.report()),
        }
    }
}

/// Under `--user`, when a stop begins: has the privileged helper remove
/// the unix sockets' paths, which the arbiter may not (a root-owned
/// directory), so new clients get ENOENT at once while the workers finish
/// what they accepted (the upgrade layer's own removal then finds nothing
/// to do).
#[derive(Debug)]
struct RefuseUnix {
    helper: ufork_daemon::Privsep,
    sockets: Vec<PathBuf>,
}

impl Layer for RefuseUnix {
    fn stopping(&mut self, _ctx: &mut Context<'_>) {
        for path in std::mem::take(&mut self.sockets) {
            match self.helper.remove_now(&path) {
                Ok(()) => log::debug!(
                    target: "ufork",
                    "removed {}: new connections are refused",
                    path.display()
                ),
                Err(e) => log::warn!(target: "ufork", "{}", e.report()),
            }
        }
    }
}

/// Tells the daemon's launcher "serving" once every first worker is ready,
/// or the failure if the pool stops before.
#[derive(Debug)]
struct Readiness {
    daemon: Daemon,
    deadline: Instant,
    failure: Arc<Mutex<Option<String>>>,
}

const READY_POLL: Duration = Duration::from_millis(20);

impl Layer for Readiness {
    fn tick(&mut self, ctx: &mut Context<'_>) {
        if self.daemon.has_reported() || Instant::now() < self.deadline {
            return;
        }
        self.deadline = Instant::now() + READY_POLL;
        let snapshot = ctx.handle().snapshot();
        if snapshot.ready_count() >= snapshot.target && snapshot.target > 0 {
            let _ = self.daemon.ready();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        (!self.daemon.has_reported()).then_some(self.deadline)
    }

    fn stopping(&mut self, _ctx: &mut Context<'_>) {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = self.daemon.fail(failure.unwrap_or_else(|| {
            "the pool stopped before its workers were ready (see the log file)".to_owned()
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_launcher_waits_a_start_timeout_per_round_of_booting_workers() {
        let secs = Duration::from_secs;
        // One worker that takes up to --start-timeout 120: the launcher
        // does not give up on it at 30 s.
        assert_eq!(daemon_ready_wait(secs(120), 1, 16), secs(270));
        assert_eq!(daemon_ready_wait(secs(60), 2, 16), secs(150));
        // 64 workers, 16 at a time: 4 rounds, and one more.
        assert_eq!(daemon_ready_wait(secs(60), 64, 16), secs(330));
        assert_eq!(daemon_ready_wait(secs(60), 3, 0), secs(270));
        assert_eq!(daemon_ready_wait(Duration::MAX, 1, 1), Duration::MAX);
    }
}
