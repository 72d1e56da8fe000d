//! The arbiter: builder, settings, and the entry points `run` and `spawn_thread`.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::handle::{Handle, Published, Shared};
use crate::layer::Layer;
use crate::monitor::Monitor;
use crate::scoreboard::Scoreboard;
use crate::{Error, ExitRecord, Result, Worker};

/// A boxed error from a hook.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type PreForkHook = Box<dyn FnMut(usize, u32) + Send>;
pub(crate) type PostForkHook = Box<dyn FnMut(&mut Worker) -> Result<(), BoxError> + Send>;
pub(crate) type ExitHook = Box<dyn FnMut(&ExitRecord) + Send>;
pub(crate) type PreStopHook = Box<dyn FnMut() + Send>;

/// What a worker's stdin is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Stdin {
    /// /dev/null (the default): a worker never competes with the terminal.
    #[default]
    Null,
    /// The arbiter's stdin, shared (a layer may also point it elsewhere).
    Inherit,
}

/// When a worker's open descriptors count as too many.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum FdLimit {
    /// More than this many open descriptors.
    Count(u64),
    /// More than this fraction (0..1] of the worker's own RLIMIT_NOFILE.
    FractionOfRlimit(f64),
}

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) workers: usize,
    pub(crate) capacity: usize,
    pub(crate) heartbeat_timeout: Option<Duration>,
    pub(crate) start_timeout: Duration,
    pub(crate) graceful_timeout: Duration,
    pub(crate) max_booting: usize,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) min_uptime: Duration,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) fd_limit: Option<FdLimit>,
    pub(crate) limit_interval: Duration,
    pub(crate) history: usize,
    pub(crate) ready_on_start: bool,
    pub(crate) stdin: Stdin,
    pub(crate) handle_signals: bool,
    pub(crate) process_group: bool,
    pub(crate) give_up_after: u32,
}

/// The largest scoreboard: 65536 slots of 128 bytes, 8 MiB of shared memory.
pub const MAX_CAPACITY: usize = 65_536;

/// Default spawn throttle: how many workers may boot (forked, not yet ready)
/// at once. uFork allows one, which boots 64 slow workers one after another;
/// 16 boots 64 workers that take 50 ms each in about 200 ms while still keeping
/// a broken build from forking the whole pool at once.
pub const DEFAULT_MAX_BOOTING: usize = 16;

/// Default start timeout ([`Builder::start_timeout`]): 600 s, uFork's grace,
/// for applications that load for minutes after the fork.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: 1,
            capacity: 0,
            heartbeat_timeout: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            graceful_timeout: Duration::from_secs(30),
            max_booting: DEFAULT_MAX_BOOTING,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            min_uptime: Duration::from_secs(1),
            memory_limit: None,
            fd_limit: None,
            limit_interval: Duration::from_secs(1),
            history: 16,
            ready_on_start: true,
            stdin: Stdin::Null,
            handle_signals: true,
            process_group: false,
            give_up_after: 0,
        }
    }
}

/// Builds an [`Arbiter`]. Every setting has a default; see each method.
pub struct Builder {
    settings: Settings,
    layers: Vec<Box<dyn Layer>>,
    pre_fork: Option<PreForkHook>,
    post_fork: Option<PostForkHook>,
    on_exit: Option<ExitHook>,
    pre_stop: Option<PreStopHook>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Number of workers to keep running (default 1).
    pub fn workers(mut self, workers: usize) -> Self {
        self.settings.workers = workers;
        self
    }

    /// Slots in the shared scoreboard: the most workers the pool can ever be
    /// scaled to (default: the larger of 1024 and `workers`; at most
    /// [`MAX_CAPACITY`]).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.settings.capacity = capacity;
        self
    }

    /// Kill and replace a worker silent for longer than this after its first
    /// heartbeat (default: no heartbeat monitoring).
    pub fn heartbeat_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.heartbeat_timeout = timeout.into();
        self
    }

    /// Kill and replace a worker not ready this long after its fork (default
    /// [`DEFAULT_START_TIMEOUT`], 600 s, uFork's grace).
    ///
    /// The `ufork` command defaults to 60 s instead (`--start-timeout`): the
    /// library cannot know how long an embedding program's workers load after
    /// the fork (a model, a cache warmed for minutes), so it waits long
    /// before calling a boot hung; at a terminal, where the command mostly
    /// runs, a start that hangs should show while the operator watches.
    /// Either way a worker killed at this deadline is a crash-loop step
    /// ([`ExitReason::BootTimedOut`](crate::ExitReason::BootTimedOut)).
    /// A worker that loads slowly but says so can push its own deadline out
    /// with [`Worker::extend_start`](crate::Worker::extend_start) (with
    /// [`ready_on_start(false)`](Self::ready_on_start)).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.settings.start_timeout = timeout;
        self
    }

    /// How long a stopping worker may take after SIGTERM before SIGKILL
    /// (default 30 s).
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.settings.graceful_timeout = timeout;
        self
    }

    /// At most this many workers booting (forked, not ready) at once (default
    /// [`DEFAULT_MAX_BOOTING`]).
    pub fn max_booting(mut self, max: usize) -> Self {
        self.settings.max_booting = max;
        self
    }

    /// Crash-loop backoff (defaults 100 ms, 30 s, 1 s). A slot backs off only
    /// in a crash loop: its worker never became ready, or failed on its own
    /// younger than `min_uptime` (a non-zero exit, a panic, a signal it raised
    /// itself such as SIGSEGV or SIGABRT, a hang, or an exit with code 0 it
    /// did not plan). The first such failure is replaced at once; from the
    /// second in a row the slot waits `initial * 1.5^(n-2)` (capped at `max`;
    /// a delay too long to represent means never). A worker that lives past
    /// `min_uptime` ends the loop.
    ///
    /// Never a crash: a planned exit ([`Worker::recycle`]), an exit the
    /// arbiter asked for, a limit recycling, or a ready worker killed from
    /// outside (an operator's `kill -9`, the OOM killer): those are replaced
    /// at once.
    pub fn backoff(mut self, initial: Duration, max: Duration, min_uptime: Duration) -> Self {
        self.settings.backoff_initial = initial;
        self.settings.backoff_max = max;
        self.settings.min_uptime = min_uptime;
        self
    }

    /// Recycle a worker whose resident memory exceeds this many bytes (read by
    /// the arbiter from /proc every limit interval; default: no limit).
    pub fn memory_limit(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.settings.memory_limit = bytes.into();
        self
    }

    /// Recycle a worker with too many open descriptors (default: no limit).
    pub fn fd_limit(mut self, limit: impl Into<Option<FdLimit>>) -> Self {
        self.settings.fd_limit = limit.into();
        self
    }

    /// How often memory and descriptor limits are checked (default 1 s).
    pub fn limit_interval(mut self, interval: Duration) -> Self {
        self.settings.limit_interval = interval;
        self
    }

    /// Exits kept in the history (default 16; 0 keeps none).
    pub fn history(mut self, len: usize) -> Self {
        self.settings.history = len;
        self
    }

    /// Mark each worker ready just before its function runs (default true).
    /// Turn off for workers that load state first and call
    /// [`Worker::ready`] themselves.
    pub fn ready_on_start(mut self, ready: bool) -> Self {
        self.settings.ready_on_start = ready;
        self
    }

    /// What workers get as stdin (default /dev/null).
    pub fn stdin(mut self, stdin: Stdin) -> Self {
        self.settings.stdin = stdin;
        self
    }

    /// Whether `run` handles INT, TERM, QUIT, HUP, TTIN, TTOU, USR1, USR2 and WINCH,
    /// and ignores ALRM, PWR, IO, VTALRM and PROF with a log line (default
    /// true). Without, only the [`Handle`] controls the pool.
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.settings.handle_signals = handle;
        self
    }

    /// Put each worker in a process group of its own (default false), and
    /// signal the whole group: stop signals reach what the worker started
    /// too, and when a worker exits whatever is left of its group gets
    /// SIGKILL, so a worker's background children never outlive it (holding
    /// its sockets). Meant for workers that run other programs. Workers then
    /// also stop receiving the terminal's Ctrl-C directly; the arbiter relays
    /// the stop anyway.
    pub fn process_group(mut self, own_group: bool) -> Self {
        self.settings.process_group = own_group;
        self
    }

    /// Gives up on a pool that cannot start: once every slot has failed
    /// `failures` times in a row (crash-loop steps, see [`backoff`](Self::backoff):
    /// no worker of it lived past the minimum uptime), the arbiter stops the
    /// pool and `run` returns with [`StopCause::GaveUp`] and the last failure
    /// in [`Outcome::last_failure`]. 0, the default, never gives up: a library
    /// pool keeps retrying with backoff. systemd's default start limit is 5
    /// starts in 10 s (`StartLimitBurst`), and gunicorn halts at the first
    /// worker that fails to boot; 5 is a good value for a program that exits
    /// so that its supervisor can see the failure (the `ufork` CLI).
    pub fn give_up_after(mut self, failures: u32) -> Self {
        self.settings.give_up_after = failures;
        self
    }

    /// Adds a [`Layer`].
    pub fn layer(mut self, layer: impl Layer + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Runs in the arbiter before each fork, with the slot and generation.
    pub fn pre_fork(mut self, hook: impl FnMut(usize, u32) + Send + 'static) -> Self {
        self.pre_fork = Some(Box::new(hook));
        self
    }

    /// Runs in each worker after fork, before the worker function; an error
    /// ends the worker as failed.
    ///
    /// This is the place to reseed random number generators the application
    /// made before the fork: every worker starts with a copy of the parent's
    /// state, and rand's `ThreadRng` does not reseed on fork, so without it
    /// all workers draw the same numbers. With the `rng` feature,
    /// [`Worker::rng`] is already seeded apart; seed your own from it:
    ///
    /// ```text
    /// .post_fork(|worker| {
    ///     let seed: [u8; 32] = worker.rng().random();   // or read /dev/urandom
    ///     *APP_RNG.lock().unwrap() = StdRng::from_seed(seed);
    ///     Ok(())
    /// })
    /// ```
    pub fn post_fork(
        mut self,
        hook: impl FnMut(&mut Worker) -> Result<(), BoxError> + Send + 'static,
    ) -> Self {
        self.post_fork = Some(Box::new(hook));
        self
    }

    /// Runs in the arbiter after a worker was reaped.
    pub fn on_exit(mut self, hook: impl FnMut(&ExitRecord) + Send + 'static) -> Self {
        self.on_exit = Some(Box::new(hook));
        self
    }

    /// Runs in the arbiter when a stop begins, before workers are signalled.
    pub fn pre_stop(mut self, hook: impl FnMut() + Send + 'static) -> Self {
        self.pre_stop = Some(Box::new(hook));
        self
    }

    /// Checks the settings, maps the scoreboard and makes the wake pipe.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a setting out of range, [`Error::OverCapacity`],
    /// [`Error::Scoreboard`] or [`Error::Pipe`] if the OS refuses.
    pub fn build(self) -> Result<Arbiter> {
        let mut settings = self.settings;
        if settings.capacity == 0 {
            settings.capacity = settings.workers.max(1024);
        }
        if settings.capacity > MAX_CAPACITY {
            return Err(config(
                "capacity",
                &format!(
                    "{} is more than the most, {MAX_CAPACITY}",
                    settings.capacity
                ),
            ));
        }
        if settings.workers > settings.capacity {
            return Err(Error::OverCapacity {
                requested: settings.workers,
                capacity: settings.capacity,
            });
        }
        if settings.max_booting == 0 {
            return Err(config("max_booting", "must be at least 1"));
        }
        if settings.heartbeat_timeout.is_some_and(|t| t.is_zero()) {
            return Err(config("heartbeat_timeout", "must be more than zero"));
        }
        if settings.start_timeout.is_zero() {
            return Err(config("start_timeout", "must be more than zero"));
        }
        if settings.limit_interval.is_zero() {
            return Err(config("limit_interval", "must be more than zero"));
        }
        if settings.backoff_initial > settings.backoff_max {
            return Err(config(
                "backoff",
                "initial delay is longer than the maximum",
            ));
        }
        if let Some(FdLimit::FractionOfRlimit(f)) = settings.fd_limit {
            if !(f > 0.0 && f <= 1.0) {
                return Err(config("fd_limit", "the fraction must be in (0, 1]"));
            }
        }
        let board = Arc::new(Scoreboard::new(settings.capacity).map_err(Error::Scoreboard)?);
        let (wake_r, wake_w) = crate::monitor::nonblocking_pipe()?;
        let shared = Arc::new(Shared {
            commands: Mutex::new(Vec::new()),
            wake: wake_w,
            published: Mutex::new(Published {
                target: settings.workers,
                ..Published::default()
            }),
            board,
        });
        Ok(Arbiter {
            settings,
            layers: self.layers,
            hooks: Hooks {
                pre_fork: self.pre_fork,
                post_fork: self.post_fork,
                on_exit: self.on_exit,
                pre_stop: self.pre_stop,
            },
            shared,
            wake_r,
        })
    }
}

fn config(setting: &'static str, reason: &str) -> Error {
    Error::Config {
        setting,
        reason: reason.to_owned(),
    }
}

#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) pre_fork: Option<PreForkHook>,
    pub(crate) post_fork: Option<PostForkHook>,
    pub(crate) on_exit: Option<ExitHook>,
    pub(crate) pre_stop: Option<PreStopHook>,
}

/// A pool of pre-forked workers, ready to [`run`](Arbiter::run).
pub struct Arbiter {
    pub(crate) settings: Settings,
    pub(crate) layers: Vec<Box<dyn Layer>>,
    pub(crate) hooks: Hooks,
    pub(crate) shared: Arc<Shared>,
    pub(crate) wake_r: OwnedFd,
}

impl fmt::Debug for Arbiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arbiter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why `run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopCause {
    /// A signal (SIGINT, SIGTERM or SIGQUIT, by number).
    Signal(i32),
    /// [`Handle::stop`] or [`Handle::stop_now`] (or a layer's handle).
    Handle,
    /// Every slot failed [`Builder::give_up_after`] times in a row: the pool
    /// cannot start. [`Outcome::last_failure`] says how the last one ended.
    GaveUp,
}

/// What `run` returns: why it stopped and what happened to the workers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// What asked the pool to stop.
    pub cause: StopCause,
    /// Whether the stop was graceful (workers got SIGTERM and time to finish).
    pub graceful: bool,
    /// Workers still running at the graceful timeout, killed with SIGKILL.
    pub killed_at_timeout: usize,
    /// Workers forked during the run.
    pub spawned: u64,
    /// The last exits (see [`Builder::history`]), oldest first.
    pub history: Vec<ExitRecord>,
    /// With [`StopCause::GaveUp`]: the failure that made the arbiter give up
    /// (its message is the worker's error or panic, when it reported one).
    pub last_failure: Option<ExitRecord>,
}

impl Arbiter {
    /// Starts building an arbiter.
    pub fn builder() -> Builder {
        Builder {
            settings: Settings::default(),
            layers: Vec::new(),
            pre_fork: None,
            post_fork: None,
            on_exit: None,
            pre_stop: None,
        }
    }

    /// A handle to control the pool while it runs.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Forks the workers and supervises them on the calling thread until a
    /// stop (Ctrl-C, SIGTERM, SIGQUIT or a [`Handle`]); then every worker has
    /// exited and been reaped, signal handlers are as they were, and control
    /// returns to the caller. A stop asked for before the first fork (a
    /// [`Handle::stop`] before `run`, a stop signal that came while the
    /// loop started) stops the pool with no worker forked.
    ///
    /// Each worker runs `worker_main` in a forked copy of this process. `Ok`
    /// ends it with exit code 0, `Err` with [`EXIT_FAILED`](crate::EXIT_FAILED)
    /// and a panic with [`EXIT_PANICKED`](crate::EXIT_PANICKED); the message
    /// reaches the exit history. A worker never returns into the arbiter.
    ///
    /// Forking is simplest while the process has one thread (the caller's):
    /// call `run` before starting threads, or use [`spawn_thread`](Self::spawn_thread)
    /// and heed its caveat. The loop itself never starts a thread; it logs a
    /// warning once if the process gains threads after `run` began.
    ///
    /// # Errors
    ///
    /// [`Error::Signal`] if the signal handlers cannot be installed,
    /// [`Error::Poll`] or [`Error::Wait`] if the loop's system calls fail
    /// (workers are stopped first). A failing fork is logged and retried with
    /// backoff, not returned.
    pub fn run<F, E>(self, worker_main: F) -> Result<Outcome>
    where
        F: FnMut(&mut Worker) -> Result<(), E>,
        E: fmt::Display,
    {
        Monitor::new(self, worker_main)?.run()
    }

    /// Runs the arbiter on a new thread and returns at once with its handle
    /// (uFork's `spawn_thread`).
    ///
    /// Caveat: the process now has several threads while the arbiter forks. A
    /// child starts with only the forking thread; a lock another thread held at
    /// the fork stays locked forever in the child. The arbiter holds std's
    /// stdout and stderr locks across every fork, so `println!` and
    /// `eprintln!` are safe in workers, and glibc's malloc is safe; take
    /// nothing else in `post_fork` or the worker that other threads may hold
    /// (a mutex of yours).
    ///
    /// # Errors
    ///
    /// The thread cannot be started.
    pub fn spawn_thread<F, E>(
        self,
        worker_main: F,
    ) -> std::io::Result<(Handle, std::thread::JoinHandle<Result<Outcome>>)>
    where
        F: FnMut(&mut Worker) -> Result<(), E> + Send + 'static,
        E: fmt::Display,
    {
        let handle = self.handle();
        let thread = std::thread::Builder::new()
            .name("ufork-arbiter".into())
            .spawn(move || self.run(worker_main))?;
        Ok((handle, thread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_timeout_defaults_to_600_s() {
        let b = Arbiter::builder();
        assert_eq!(b.settings.start_timeout, DEFAULT_START_TIMEOUT);
        assert_eq!(DEFAULT_START_TIMEOUT, Duration::from_secs(600));
    }
}
