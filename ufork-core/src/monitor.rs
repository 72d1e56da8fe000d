//! The monitor loop: one thread, one `poll(2)` over the signal self-pipe, the
//! handle's wake pipe, the workers' notes pipe, one pidfd per worker and the
//! layers' descriptors. Its timeout is the next health deadline, so an idle
//! arbiter sleeps until something can actually happen.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::arbiter::{FdLimit, Hooks, Settings, Stdin, StopCause};
use crate::exit::{human, workers};
use crate::handle::{Command, Shared};
use crate::layer::{ChildInfo, Context, Layer, Readiness, Registry, Spawn, Token};
use crate::notes::{self, Note, NoteKind};
use crate::scoreboard::{Scoreboard, now_ns, ns_to_duration};
use crate::sys::{self, Disposition};
use crate::{
    Arbiter, EXIT_FAILED, EXIT_PANICKED, Error, ExitReason, ExitRecord, ExitStatus, Outcome,
    Result, Vitals, Worker, WorkerState,
};

/// Exit code of a worker whose setup in the child failed (`EX_OSERR`).
const EXIT_SETUP: i32 = 71;
/// If `poll` returns this much later than asked (or half the heartbeat timeout,
/// if shorter), the arbiter was not running (SIGSTOP, suspend, starved):
/// workers get a fresh grace instead of being judged on beats taken while
/// everything, them included, may have been frozen.
const STALL: u64 = 1_000_000_000;
const STALL_FLOOR: u64 = 50_000_000;

static RUNNING: AtomicBool = AtomicBool::new(false);

const HANDLED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
];

pub(crate) fn nonblocking_pipe() -> Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::{PipeFlags, pipe_with};
    pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(|e| Error::Pipe(e.into()))
}

struct Proc {
    pid: i32,
    pidfd: OwnedFd,
    generation: u32,
    started: u64,
    /// Set when the arbiter decided this worker must go, and why.
    reason: Option<ExitReason>,
    /// When SIGKILL follows an unanswered SIGTERM.
    kill_at: Option<u64>,
    /// SIGKILL was sent because the graceful timeout ran out.
    killed_at_deadline: bool,
}

#[derive(Default)]
struct Slot {
    next_generation: u32,
    proc: Option<Proc>,
    restarts: u32,
    /// Young deaths in a row (crash-loop backoff).
    failures: u32,
    not_before: u64,
    note: Option<Note>,
}

struct StopState {
    cause: StopCause,
    graceful: bool,
    killed_at_timeout: usize,
}

pub(crate) struct Monitor<F> {
    settings: Settings,
    layers: Vec<Box<dyn Layer>>,
    hooks: Hooks,
    shared: Arc<Shared>,
    board: Arc<Scoreboard>,
    worker_main: F,
    slots: Vec<Slot>,
    target: usize,
    wake_r: OwnedFd,
    sig_r: OwnedFd,
    sig_w: OwnedFd,
    notes_r: OwnedFd,
    notes_w: Arc<OwnedFd>,
    death_r: Option<OwnedFd>,
    death_w: OwnedFd,
    saved: Vec<(i32, Disposition)>,
    registry: Registry,
    history: VecDeque<ExitRecord>,
    stop: Option<StopState>,
    rolling: VecDeque<usize>,
    rolling_current: Option<(usize, u32)>,
    /// Rolling restarts begun since `run` started (published for layers).
    rolls: u64,
    note_buf: Vec<u8>,
    resumed_at: u64,
    /// When the previous loop iteration began.
    prev_top: u64,
    /// What the last `poll` was asked to wait and how long it took (ns).
    last_poll: (Option<u64>, u64),
    next_limit_check: u64,
    spawned: u64,
    reaper: bool,
    pid: i32,
    /// Threads the process should have at each fork, when `run` began with
    /// one (then layers may add their own in `started`, and nothing more).
    thread_baseline: Option<usize>,
    wedge_warned: bool,
}

impl<F> fmt::Debug for Monitor<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<F, E> Monitor<F>
where
    F: FnMut(&mut Worker) -> Result<(), E>,
    E: fmt::Display,
{
    pub(crate) fn new(arbiter: Arbiter, worker_main: F) -> Result<Self> {
        let Arbiter {
            settings,
            layers,
            hooks,
            shared,
            wake_r,
        } = arbiter;
        let (sig_r, sig_w) = nonblocking_pipe()?;
        let (notes_r, notes_w) = nonblocking_pipe()?;
        let (death_r, death_w) = {
            use rustix::pipe::{PipeFlags, pipe_with};
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| Error::Pipe(e.into()))?
        };
        let board = Arc::clone(&shared.board);
        // Slots grow with the largest pool asked for, not with the capacity:
        // every loop over them stays proportional to the pool.
        let mut slots = Vec::new();
        slots.resize_with(settings.workers, Slot::default);
        let reaper = sys::is_reaper();
        let target = settings.workers;
        let mut monitor = Self {
            board,
            worker_main,
            slots,
            target,
            wake_r,
            sig_r,
            sig_w,
            notes_r,
            notes_w: Arc::new(notes_w),
            death_r: Some(death_r),
            death_w,
            saved: Vec::new(),
            registry: Registry::default(),
            history: VecDeque::new(),
            stop: None,
            rolling: VecDeque::new(),
            rolling_current: None,
            rolls: 0,
            note_buf: Vec::new(),
            resumed_at: 0,
            prev_top: 0,
            last_poll: (Some(0), 0),
            next_limit_check: 0,
            spawned: 0,
            reaper,
            pid: rustix::process::getpid().as_raw_nonzero().get(),
            thread_baseline: (crate::proc::thread_count() == Some(1)).then_some(1),
            wedge_warned: false,
            settings,
            layers,
            hooks,
            shared,
        };
        monitor.install_signals()?;
        Ok(monitor)
    }

    fn install_signals(&mut self) -> Result<()> {
        if !self.settings.handle_signals && !self.reaper {
            return Ok(());
        }
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning);
        }
        sys::set_arbiter_pipe(self.sig_w.as_raw_fd());
        let mut signals: Vec<i32> = Vec::new();
        if self.settings.handle_signals {
            signals.extend(HANDLED);
        }
        if self.reaper {
            signals.push(libc::SIGCHLD);
        }
        for sig in signals {
            match sys::install_arbiter_handler(sig) {
                Ok(old) => self.saved.push((sig, old)),
                Err(source) => {
                    self.restore_signals();
                    return Err(Error::Signal {
                        signal: sig,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn restore_signals(&mut self) {
        for (sig, old) in self.saved.drain(..) {
            if let Err(e) = sys::restore(sig, &old) {
                log::warn!(target: "ufork", "cannot restore the handler of signal {sig}: {e}");
            }
        }
        if self.settings.handle_signals || self.reaper {
            sys::set_arbiter_pipe(-1);
            RUNNING.store(false, Ordering::SeqCst);
        }
    }

    pub(crate) fn run(mut self) -> Result<Outcome> {
        self.each_layer(|layer, ctx| layer.started(ctx));
        // Commands sent before `run` take effect before the first fork.
        self.handle_commands();
        if self.thread_baseline.is_some() {
            self.thread_baseline = crate::proc::thread_count();
        }
        log::info!(target: "ufork", "arbiter pid {} starting {}", self.pid, workers(self.target));
        loop {
            let now = now_ns();
            self.detect_stall(now);
            if self.stop.is_none() {
                self.advance_rolling(now);
                self.spawn_due(now);
            } else if self.live() == 0 {
                break;
            }
            self.check_health(now);
            self.publish(true);
            let deadline = self.next_deadline(now_ns());
            self.poll_once(deadline)?;
        }
        Ok(self.finish())
    }

    /// Notices that the arbiter itself did not run for a while (SIGSTOP,
    /// suspend, starvation): the time since the last iteration beyond what
    /// `poll` was asked to wait. Then every worker gets a fresh grace, since
    /// beats taken while everything (workers too) may have been frozen say
    /// nothing about their health.
    fn detect_stall(&mut self, now: u64) {
        let (asked, slept) = self.last_poll;
        if self.prev_top != 0 {
            let expected = asked.map_or(slept, |a| a.min(slept));
            let lost = now.saturating_sub(self.prev_top).saturating_sub(expected);
            let stall = self.settings.heartbeat_timeout.map_or(STALL, |t| {
                (t.as_nanos() as u64 / 2).clamp(STALL_FLOOR, STALL)
            });
            if lost > stall {
                log::warn!(
                    target: "ufork",
                    "the arbiter was not running for {} (stopped or suspended); giving workers a fresh heartbeat grace",
                    human(ns_to_duration(lost))
                );
                self.resumed_at = now;
            }
        }
        self.prev_top = now;
        self.last_poll = (Some(0), 0);
    }

    fn finish(&mut self) -> Outcome {
        for layer in &mut self.layers {
            layer.stopped();
        }
        let stop = self.stop.take();
        self.publish(false);
        self.restore_signals();
        let stop = stop.unwrap_or(StopState {
            cause: StopCause::Handle,
            graceful: true,
            killed_at_timeout: 0,
        });
        log::info!(target: "ufork", "arbiter pid {} stopped: every worker reaped", self.pid);
        Outcome {
            cause: stop.cause,
            graceful: stop.graceful,
            killed_at_timeout: stop.killed_at_timeout,
            spawned: self.spawned,
            history: self.history.iter().cloned().collect(),
        }
    }

    fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.proc.is_some()).count()
    }

    fn each_layer(&mut self, mut f: impl FnMut(&mut dyn Layer, &mut Context<'_>)) {
        for index in 0..self.layers.len() {
            self.with_layer(index, &mut f);
        }
    }

    /// Calls `f` with layer `index` and its context (the layer and the
    /// registry are borrowed apart, so the layer may register descriptors).
    fn with_layer(&mut self, index: usize, f: impl FnOnce(&mut dyn Layer, &mut Context<'_>)) {
        let Self {
            layers,
            registry,
            shared,
            board,
            notes_w,
            ..
        } = self;
        let mut ctx = Context {
            layer: index,
            registry,
            shared,
            board,
            notes: notes_w,
        };
        f(layers[index].as_mut(), &mut ctx);
    }

    fn publish(&mut self, running: bool) {
        let mut published = self.shared.published();
        published.target = self.target;
        published.running = running;
        published.stopping = self.stop.is_some();
        published.spawned = self.spawned;
        published.rolling = !self.rolling.is_empty() || self.rolling_current.is_some();
        published.rolls = self.rolls;
        published.procs.clear();
        for (slot, s) in self.slots.iter().enumerate() {
            if let Some(p) = &s.proc {
                published
                    .procs
                    .push((slot, p.pid, p.generation, p.started, s.restarts));
            }
        }
        if published.history.len() != self.history.len()
            || published.history.back() != self.history.back()
        {
            published.history = self.history.clone();
        }
    }

    // -- spawning ------------------------------------------------------------

    fn booting(&self) -> usize {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                s.proc.is_some() && self.board.cell(*i).state() == WorkerState::Booting
            })
            .count()
    }

    fn spawn_due(&mut self, now: u64) {
        let board = Arc::clone(&self.board);
        let header = board.header();
        for pass in 0..2 {
            let mut blocked = false;
            let mut booting = self.booting();
            for slot in 0..self.target {
                let s = &self.slots[slot];
                if s.proc.is_some() || s.not_before > now {
                    continue;
                }
                if booting >= self.settings.max_booting {
                    blocked = true;
                    break;
                }
                if self.spawn(slot, now) {
                    booting += 1;
                }
            }
            // A worker turning ready is no system call, so the arbiter asks for
            // a note while something waits on it: the throttle, a rolling
            // restart, or the first heartbeat that starts hang detection.
            let waiting = blocked || self.rolling_current.is_some() || booting > 0;
            header
                .ready_wanted
                .store(u32::from(waiting), Ordering::SeqCst);
            if !waiting || pass == 1 {
                break;
            }
            // The flag is up: states read from here on either show a worker
            // that became ready, or that worker will write a note.
        }
    }

    /// Forks a worker for `slot`. Returns whether it was forked.
    fn spawn(&mut self, slot: usize, now: u64) -> bool {
        let generation = self.slots[slot].next_generation;
        self.board.cell(slot).reset(0, generation);
        if let Some(hook) = &mut self.hooks.pre_fork {
            hook(slot, generation);
        }
        let mut prepared = 0;
        for layer in &mut self.layers {
            if let Err(e) = layer.prepare(slot, generation) {
                log::error!(target: "ufork", "cannot prepare worker {slot}: {e}; retrying later");
                break;
            }
            prepared += 1;
        }
        if prepared < self.layers.len() {
            for layer in &mut self.layers {
                layer.fork_failed(slot);
            }
            self.board.cell(slot).clear();
            self.delay_slot(slot, now, false);
            return false;
        }
        if let Some(baseline) = self.thread_baseline {
            debug_assert_eq!(
                crate::proc::thread_count(),
                Some(baseline),
                "a thread was started in the arbiter process while it runs; forking is no longer sound"
            );
        }
        let forked = sys::fork_into(|| self.child(slot, generation));
        match forked {
            Err(e) => {
                log::error!(target: "ufork", "cannot fork worker {slot}: {e}; retrying later");
                for layer in &mut self.layers {
                    layer.fork_failed(slot);
                }
                self.board.cell(slot).clear();
                self.delay_slot(slot, now, false);
                false
            }
            Ok(pid) => {
                self.board.cell(slot).set_pid(pid);
                let Some(raw) = Pid::from_raw(pid) else {
                    return false;
                };
                if self.settings.process_group {
                    // Both sides set the group, so it exists before either
                    // the worker execs or the arbiter signals it.
                    let _ = rustix::process::setpgid(Some(raw), Some(raw));
                }
                let pidfd = match rustix::process::pidfd_open(
                    raw,
                    rustix::process::PidfdFlags::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(e) => {
                        log::error!(target: "ufork", "cannot watch worker {slot} pid {pid}: {e}; killing it");
                        let _ = rustix::process::kill_process(raw, Signal::KILL);
                        let _ = rustix::process::waitpid(Some(raw), WaitOptions::empty());
                        for layer in &mut self.layers {
                            layer.fork_failed(slot);
                        }
                        self.board.cell(slot).clear();
                        self.delay_slot(slot, now, false);
                        return false;
                    }
                };
                let s = &mut self.slots[slot];
                s.next_generation = generation.wrapping_add(1);
                s.proc = Some(Proc {
                    pid,
                    pidfd,
                    generation,
                    started: now,
                    reason: None,
                    kill_at: None,
                    killed_at_deadline: false,
                });
                self.spawned += 1;
                let spawn = Spawn {
                    slot,
                    generation,
                    pid,
                };
                self.each_layer(|layer, ctx| layer.spawned(&spawn, ctx));
                log::info!(target: "ufork", "worker {slot} pid {pid} started (generation {generation})");
                true
            }
        }
    }

    /// Pushes the next spawn of `slot` back: crash-loop backoff when
    /// `young_death`, otherwise the initial delay (a failed fork).
    fn delay_slot(&mut self, slot: usize, now: u64, young_death: bool) {
        let s = &mut self.slots[slot];
        s.failures = s.failures.saturating_add(1);
        let exp = s.failures.saturating_sub(1).min(64) as i32;
        let delay = self
            .settings
            .backoff_initial
            .mul_f64(1.5f64.powi(exp))
            .min(self.settings.backoff_max);
        s.not_before = now + delay.as_nanos() as u64;
        if young_death && s.failures == 2 {
            log::warn!(
                target: "ufork",
                "worker {slot} is crash-looping ({} young deaths in a row); respawning with backoff, next in {}",
                s.failures,
                human(delay)
            );
        }
        self.warn_if_wedged();
    }

    fn warn_if_wedged(&mut self) {
        let failing = self.slots[..self.target]
            .iter()
            .filter(|s| s.failures >= 2)
            .count();
        if self.target >= 2 && failing * 2 > self.target {
            if !self.wedge_warned {
                self.wedge_warned = true;
                log::error!(
                    target: "ufork",
                    "most workers are failing: {failing} of {} slots are crash-looping",
                    self.target
                );
            }
        } else {
            self.wedge_warned = false;
        }
    }

    // -- the child -------------------------------------------------------------

    fn child(&mut self, slot: usize, generation: u32) -> ! {
        let code = match catch_unwind(AssertUnwindSafe(|| self.child_body(slot, generation))) {
            Ok(code) => code,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                notes::send(
                    self.notes_w.as_fd(),
                    NoteKind::Panicked,
                    slot,
                    generation,
                    &message,
                );
                EXIT_PANICKED
            }
        };
        flush_stdio();
        sys::exit_now(code)
    }

    fn child_body(&mut self, slot: usize, generation: u32) -> i32 {
        let (stop_r, stop_w) = match nonblocking_pipe() {
            Ok(pair) => pair,
            Err(_) => return EXIT_SETUP,
        };
        sys::reset_child_signals(&self.saved, stop_w.as_raw_fd());
        // Die with the arbiter; PDEATHSIG follows the forking thread, which is
        // the arbiter's loop and lives until every worker is reaped. The pid
        // re-check covers an arbiter that died before prctl.
        let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
        if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(self.pid) {
            return EXIT_SETUP;
        }
        if self.settings.process_group {
            let _ = rustix::process::setpgid(None, None);
        }
        for fd in self.arbiter_fds() {
            sys::close_inherited(fd);
        }
        if self.settings.stdin == Stdin::Null {
            if let Ok(null) = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                let _ = rustix::stdio::dup2_stdin(&null);
            }
        }
        if let Some(death_r) = self.death_r.take() {
            watch_parent(death_r);
        }
        let mut worker = Worker {
            slot,
            generation,
            pid: rustix::process::getpid().as_raw_nonzero().get(),
            vitals: Vitals::new(
                Arc::clone(&self.board),
                slot,
                Some(Arc::clone(&self.notes_w)),
            ),
            stop_read: stop_r,
            _stop_write: stop_w,
            #[cfg(feature = "rng")]
            rng: crate::worker::seed_rng(slot, generation),
        };
        self.board.cell(slot).set_pid(worker.pid);
        let info = ChildInfo { slot, generation };
        for layer in &mut self.layers {
            if let Err(e) = layer.in_child(&info) {
                let text = format!("worker setup failed: {e}");
                notes::send(
                    self.notes_w.as_fd(),
                    NoteKind::Failed,
                    slot,
                    generation,
                    &text,
                );
                return EXIT_SETUP;
            }
        }
        if let Some(hook) = &mut self.hooks.post_fork {
            if let Err(e) = hook(&mut worker) {
                let text = format!("post-fork hook failed: {e}");
                notes::send(
                    self.notes_w.as_fd(),
                    NoteKind::Failed,
                    slot,
                    generation,
                    &text,
                );
                return EXIT_FAILED;
            }
        }
        if self.settings.ready_on_start {
            worker.ready();
        }
        match (self.worker_main)(&mut worker) {
            Ok(()) => 0,
            Err(e) => {
                notes::send(
                    self.notes_w.as_fd(),
                    NoteKind::Failed,
                    slot,
                    generation,
                    &e.to_string(),
                );
                EXIT_FAILED
            }
        }
    }

    /// Every descriptor that belongs to the arbiter and not to a worker.
    fn arbiter_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![
            self.wake_r.as_raw_fd(),
            self.shared.wake.as_raw_fd(),
            self.sig_r.as_raw_fd(),
            self.sig_w.as_raw_fd(),
            self.notes_r.as_raw_fd(),
            self.death_w.as_raw_fd(),
        ];
        fds.extend(
            self.slots
                .iter()
                .filter_map(|s| s.proc.as_ref())
                .map(|p| p.pidfd.as_raw_fd()),
        );
        fds.extend(self.registry.fds().filter(|&fd| fd > 2));
        fds
    }

    // -- health --------------------------------------------------------------

    fn check_health(&mut self, now: u64) {
        let limits = self.settings.memory_limit.is_some() || self.settings.fd_limit.is_some();
        let check_limits = limits && now >= self.next_limit_check;
        if check_limits {
            self.next_limit_check = now + self.settings.limit_interval.as_nanos() as u64;
        }
        for slot in 0..self.slots.len() {
            let Some(proc) = &self.slots[slot].proc else {
                continue;
            };
            let (pid, started, reason, kill_at) =
                (proc.pid, proc.started, proc.reason.is_some(), proc.kill_at);
            if let Some(at) = kill_at {
                if now >= at {
                    log::warn!(
                        target: "ufork",
                        "worker {slot} pid {pid} did not exit within {} of SIGTERM; sending SIGKILL",
                        human(self.settings.graceful_timeout)
                    );
                    self.signal(slot, Signal::KILL);
                    if let Some(p) = &mut self.slots[slot].proc {
                        p.kill_at = None;
                        p.killed_at_deadline = true;
                    }
                }
                continue;
            }
            if reason {
                continue;
            }
            let board = Arc::clone(&self.board);
            let cell = board.cell(slot);
            let state = cell.state();
            if self.slots[slot].failures > 0
                && now.saturating_sub(started) >= self.settings.min_uptime.as_nanos() as u64
            {
                if self.slots[slot].failures >= 2 {
                    log::info!(target: "ufork", "worker {slot} recovered: pid {pid} has been up {}", human(self.settings.min_uptime));
                }
                self.slots[slot].failures = 0;
                self.warn_if_wedged();
            }
            if state == WorkerState::Booting {
                let since = started.max(self.resumed_at);
                if now.saturating_sub(since) > self.settings.start_timeout.as_nanos() as u64 {
                    let after = ns_to_duration(now - started);
                    log::error!(
                        target: "ufork",
                        "worker {slot} pid {pid} not ready after {} (start timeout); killing it",
                        human(after)
                    );
                    self.end_proc(slot, ExitReason::BootTimedOut { after }, false);
                    continue;
                }
            }
            if let Some(timeout) = self.settings.heartbeat_timeout {
                let beat = cell.last_beat();
                if beat != 0
                    && now.saturating_sub(beat.max(self.resumed_at)) > timeout.as_nanos() as u64
                {
                    let silent_for = ns_to_duration(now.saturating_sub(beat));
                    let activity = cell.read_activity();
                    log::error!(
                        target: "ufork",
                        "worker {slot} pid {pid} timed out: silent for {} (limit {}) while {state}{}; killing it",
                        human(silent_for),
                        human(timeout),
                        if activity.is_empty() { String::new() } else { format!(" ({activity})") }
                    );
                    self.end_proc(
                        slot,
                        ExitReason::TimedOut {
                            silent_for,
                            state,
                            activity,
                        },
                        false,
                    );
                    continue;
                }
            }
            if check_limits {
                self.check_limits(slot, pid);
            }
        }
    }

    fn check_limits(&mut self, slot: usize, pid: i32) {
        if let Some(limit) = self.settings.memory_limit {
            if let Some(rss) = crate::proc::rss_bytes(pid) {
                if rss > limit {
                    log::warn!(target: "ufork", "worker {slot} pid {pid} uses {rss} bytes of memory, over the limit of {limit}; recycling it");
                    self.end_proc(slot, ExitReason::OverMemory { rss, limit }, true);
                    return;
                }
            }
        }
        if let Some(fd_limit) = self.settings.fd_limit {
            let limit = match fd_limit {
                FdLimit::Count(n) => Some(n),
                FdLimit::FractionOfRlimit(f) => {
                    crate::proc::nofile_limit(pid).map(|n| ((n as f64) * f) as u64)
                }
            };
            if let (Some(limit), Some(open)) = (limit, crate::proc::open_fds(pid)) {
                if open >= limit {
                    log::warn!(target: "ufork", "worker {slot} pid {pid} has {open} open files, at the limit of {limit}; recycling it");
                    self.end_proc(slot, ExitReason::TooManyFds { open, limit }, true);
                }
            }
        }
    }

    fn signal(&self, slot: usize, signal: Signal) {
        if let Some(proc) = &self.slots[slot].proc {
            signal_proc(proc, signal, self.settings.process_group);
        }
    }

    /// Asks the worker in `slot` to go: SIGTERM with a SIGKILL deadline when
    /// `graceful`, SIGKILL now otherwise. The first reason given sticks.
    fn end_proc(&mut self, slot: usize, reason: ExitReason, graceful: bool) {
        let now = now_ns();
        let graceful_ns = self.settings.graceful_timeout.as_nanos() as u64;
        let Some(proc) = &mut self.slots[slot].proc else {
            return;
        };
        if proc.reason.is_none() {
            proc.reason = Some(reason);
        }
        if graceful {
            if proc.kill_at.is_none() {
                proc.kill_at = Some(now + graceful_ns);
                self.board.cell(slot).set_state(WorkerState::Stopping);
                self.signal(slot, Signal::TERM);
            }
        } else {
            if let Some(p) = &mut self.slots[slot].proc {
                p.kill_at = None;
            }
            self.signal(slot, Signal::KILL);
        }
    }

    fn next_deadline(&self, now: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        for (slot, s) in self.slots.iter().enumerate() {
            match &s.proc {
                Some(p) => {
                    if let Some(at) = p.kill_at {
                        consider(at);
                        continue;
                    }
                    if p.reason.is_some() {
                        continue;
                    }
                    if s.failures > 0 {
                        consider(p.started + self.settings.min_uptime.as_nanos() as u64);
                    }
                    let cell = self.board.cell(slot);
                    if cell.state() == WorkerState::Booting {
                        let since = p.started.max(self.resumed_at);
                        consider(since + self.settings.start_timeout.as_nanos() as u64 + 1);
                        // A booting worker may beat before it is ready, and
                        // its ready note may have been skipped (no waiter).
                        // Wake once per timeout while it boots (never spin on
                        // a deadline already past).
                        if let Some(t) = self.settings.heartbeat_timeout {
                            let t = t.as_nanos() as u64;
                            let periods = now.saturating_sub(since) / t + 1;
                            consider(since + periods * t + 1);
                        }
                    }
                    if let Some(t) = self.settings.heartbeat_timeout {
                        let beat = cell.last_beat();
                        if beat != 0 {
                            consider(beat.max(self.resumed_at) + t.as_nanos() as u64 + 1);
                        }
                    }
                }
                None if self.stop.is_none() && slot < self.target && s.not_before > now => {
                    consider(s.not_before);
                }
                None => {}
            }
        }
        if (self.settings.memory_limit.is_some() || self.settings.fd_limit.is_some())
            && self.live() > 0
        {
            consider(self.next_limit_check.max(now));
        }
        let instant_now = Instant::now();
        for layer in &self.layers {
            if let Some(at) = layer.next_deadline() {
                let wait = at.saturating_duration_since(instant_now);
                consider(now + wait.as_nanos() as u64);
            }
        }
        next
    }

    // -- waiting and events --------------------------------------------------

    fn poll_once(&mut self, deadline: Option<u64>) -> Result<()> {
        let before = now_ns();
        let timeout = deadline.map(|d| d.saturating_sub(before));
        let ts = timeout.map(|ns| rustix::time::Timespec {
            tv_sec: (ns / 1_000_000_000) as _,
            tv_nsec: (ns % 1_000_000_000) as _,
        });
        let proc_slots: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].proc.is_some())
            .collect();
        let (fixed, procs, layer_events) = {
            let mut fds = Vec::with_capacity(3 + proc_slots.len() + self.registry.entries.len());
            fds.push(PollFd::new(&self.sig_r, PollFlags::IN));
            fds.push(PollFd::new(&self.wake_r, PollFlags::IN));
            fds.push(PollFd::new(&self.notes_r, PollFlags::IN));
            for &slot in &proc_slots {
                let proc = self.slots[slot].proc.as_ref().expect("slot has a process");
                fds.push(PollFd::new(&proc.pidfd, PollFlags::IN));
            }
            for entry in &self.registry.entries {
                let mut flags = PollFlags::empty();
                if entry.interest.readable {
                    flags |= PollFlags::IN;
                }
                if entry.interest.writable {
                    flags |= PollFlags::OUT;
                }
                fds.push(PollFd::from_borrowed_fd(
                    sys::borrow_registered(entry.fd),
                    flags,
                ));
            }
            match poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::Poll(e.into())),
            }
            let fixed: Vec<bool> = fds[..3].iter().map(|f| !f.revents().is_empty()).collect();
            let procs: Vec<usize> = proc_slots
                .iter()
                .zip(&fds[3..3 + proc_slots.len()])
                .filter(|(_, f)| !f.revents().is_empty())
                .map(|(&slot, _)| slot)
                .collect();
            let layer_events: Vec<(Token, usize, PollFlags)> = self
                .registry
                .entries
                .iter()
                .zip(&fds[3 + proc_slots.len()..])
                .filter(|(_, f)| !f.revents().is_empty())
                .map(|(e, f)| (e.token, e.layer, f.revents()))
                .collect();
            (fixed, procs, layer_events)
        };
        self.last_poll = (timeout, now_ns().saturating_sub(before));
        if fixed[0] {
            drain(&self.sig_r);
            self.handle_signals();
        }
        if fixed[1] {
            drain(&self.wake_r);
        }
        self.handle_commands();
        if fixed[2] {
            self.read_notes();
        }
        for slot in procs {
            self.reap_slot(slot)?;
        }
        for (token, layer, flags) in layer_events {
            if !self.registry.entries.iter().any(|e| e.token == token) {
                continue;
            }
            if flags.contains(PollFlags::NVAL) {
                log::warn!(target: "ufork", "a layer's descriptor was closed while registered; dropping it");
                self.registry.entries.retain(|e| e.token != token);
                continue;
            }
            let readiness = Readiness {
                readable: flags.intersects(PollFlags::IN | PollFlags::PRI),
                writable: flags.contains(PollFlags::OUT),
                hangup: flags.contains(PollFlags::HUP),
                error: flags.contains(PollFlags::ERR),
            };
            self.with_layer(layer, |l, ctx| l.event(token, readiness, ctx));
        }
        self.each_layer(|layer, ctx| layer.tick(ctx));
        // Commands a layer sent during its events take effect now rather than
        // after the next wake-up.
        self.handle_commands();
        Ok(())
    }

    fn handle_signals(&mut self) {
        let both = |sig| sys::take_count(sig) + sys::take_kernel_count(sig);
        let int = both(libc::SIGINT);
        let term = both(libc::SIGTERM);
        let quit = both(libc::SIGQUIT);
        if quit > 0 {
            log::warn!(target: "ufork", "SIGQUIT: stopping every worker now");
            self.begin_stop(StopCause::Signal(libc::SIGQUIT), false);
        }
        if int > 0 {
            let already = self.stop.as_ref().is_some_and(|s| s.graceful);
            if int >= 2 || already {
                log::warn!(target: "ufork", "second SIGINT: stopping every worker now");
                self.begin_stop(StopCause::Signal(libc::SIGINT), false);
            } else {
                log::info!(target: "ufork", "SIGINT: stopping {} gracefully (Ctrl-C again to stop now)", workers(self.live()));
                self.begin_stop(StopCause::Signal(libc::SIGINT), true);
            }
        }
        if term > 0 {
            log::info!(target: "ufork", "SIGTERM: stopping {} gracefully", workers(self.live()));
            self.begin_stop(StopCause::Signal(libc::SIGTERM), true);
        }
        // SIGHUP from the kernel means the controlling terminal hung up: like
        // any foreground program, stop. Sent with kill(1), it asks for a
        // rolling restart.
        if sys::take_kernel_count(libc::SIGHUP) > 0 {
            log::warn!(target: "ufork", "the terminal hung up (SIGHUP): stopping {} gracefully", workers(self.live()));
            self.begin_stop(StopCause::Signal(libc::SIGHUP), true);
        }
        if sys::take_count(libc::SIGHUP) > 0 {
            if self.stop.is_some() {
                log::info!(target: "ufork", "SIGHUP ignored: the pool is stopping");
            } else {
                log::info!(target: "ufork", "SIGHUP: restarting every worker, one at a time");
                self.start_rolling();
            }
        }
        // The kernel raises TTIN/TTOU for job control (a background process
        // touching the terminal): that is no request to scale.
        let job_control =
            sys::take_kernel_count(libc::SIGTTIN) + sys::take_kernel_count(libc::SIGTTOU);
        if job_control > 0 {
            log::debug!(target: "ufork", "ignoring SIGTTIN/SIGTTOU from terminal job control");
        }
        let ttin = sys::take_count(libc::SIGTTIN) as isize;
        let ttou = sys::take_count(libc::SIGTTOU) as isize;
        if ttin != ttou {
            self.add_workers(ttin - ttou);
        }
        if both(libc::SIGUSR1) > 0 {
            log::info!(target: "ufork", "SIGUSR1: reopening logs");
            self.each_layer(|layer, ctx| layer.reopen(ctx));
        }
        if both(libc::SIGCHLD) > 0 && self.reaper {
            self.reap_any();
        }
    }

    fn handle_commands(&mut self) {
        for command in self.shared.take_commands() {
            match command {
                Command::Stop { graceful } => self.begin_stop(StopCause::Handle, graceful),
                Command::SetWorkers(n) => self.set_target(n),
                Command::AddWorkers(delta) => self.add_workers(delta),
                Command::RestartAll => self.start_rolling(),
                Command::Restart(slot) => {
                    if slot < self.slots.len() {
                        self.end_proc(slot, ExitReason::Stopped, true);
                    }
                }
                Command::Kill(slot) => {
                    if slot < self.slots.len() {
                        self.end_proc(slot, ExitReason::Stopped, false);
                    }
                }
                Command::Reopen => self.each_layer(|layer, ctx| layer.reopen(ctx)),
            }
        }
    }

    fn add_workers(&mut self, delta: isize) {
        let wanted = (self.target as isize + delta).max(1) as usize;
        if wanted > self.settings.capacity {
            log::warn!(
                target: "ufork",
                "cannot grow to {wanted} workers: capacity is {}; growing to {}",
                self.settings.capacity,
                self.settings.capacity
            );
        }

        self.set_target(wanted.min(self.settings.capacity));
    }

    fn set_target(&mut self, target: usize) {
        if self.stop.is_some() || target == self.target {
            return;
        }
        let target = target.min(self.settings.capacity);
        log::info!(target: "ufork", "workers: {} -> {target}", self.target);
        for slot in target..self.target.max(target) {
            self.end_proc(slot, ExitReason::Stopped, true);
        }
        if target > self.slots.len() {
            self.slots.resize_with(target, Slot::default);
        }
        for slot in self.target..target {
            // A slot brought back by scaling starts fresh, with no backoff.
            self.slots[slot].failures = 0;
            self.slots[slot].not_before = 0;
        }
        self.target = target;
    }

    fn start_rolling(&mut self) {
        if self.stop.is_some() {
            return;
        }
        self.rolling = (0..self.target).collect();
        self.rolling_current = None;
        self.rolls += 1;
    }

    fn advance_rolling(&mut self, now: u64) {
        loop {
            if let Some((slot, old_generation)) = self.rolling_current {
                let s = &self.slots[slot];
                match &s.proc {
                    Some(p) if p.generation <= old_generation => {
                        if p.reason.is_none() {
                            self.end_proc(slot, ExitReason::Stopped, true);
                        }
                        return;
                    }
                    Some(p) if !self.board.cell(slot).state().is_up() && p.reason.is_none() => {
                        return; // the replacement is booting
                    }
                    None if slot < self.target && s.failures == 0 => {
                        let _ = now;
                        return; // the replacement is about to be forked
                    }
                    _ => self.rolling_current = None,
                }
            }
            match self.rolling.pop_front() {
                Some(slot) if slot < self.target => {
                    let old = self.slots[slot]
                        .proc
                        .as_ref()
                        .map_or(self.slots[slot].next_generation, |p| p.generation);
                    self.rolling_current = Some((slot, old));
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    fn begin_stop(&mut self, cause: StopCause, graceful: bool) {
        match &mut self.stop {
            None => {
                if let Some(hook) = &mut self.hooks.pre_stop {
                    hook();
                }
                self.stop = Some(StopState {
                    cause,
                    graceful,
                    killed_at_timeout: 0,
                });
                self.rolling.clear();
                self.rolling_current = None;
                self.each_layer(|layer, ctx| layer.stopping(ctx));
            }
            Some(stop) => {
                if graceful || !stop.graceful {
                    return;
                }
                stop.graceful = false;
            }
        }
        for slot in 0..self.slots.len() {
            if let Some(p) = &mut self.slots[slot].proc {
                if !graceful {
                    p.reason = Some(ExitReason::Stopped);
                }
            }
            self.end_proc(slot, ExitReason::Stopped, graceful);
        }
    }

    fn read_notes(&mut self) {
        let mut buf = [0u8; 8192];
        loop {
            match rustix::io::read(&self.notes_r, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.note_buf.extend_from_slice(&buf[..n]),
            }
        }
        for note in notes::parse(&mut self.note_buf) {
            match note.kind {
                NoteKind::Ready => {} // the wake-up was the point
                NoteKind::Failed | NoteKind::Panicked => {
                    if let Some(slot) = self.slots.get_mut(note.slot) {
                        slot.note = Some(note);
                    }
                }
            }
        }
    }

    fn reap_slot(&mut self, slot: usize) -> Result<()> {
        let Some(proc) = &self.slots[slot].proc else {
            return Ok(());
        };
        let pid = proc.pid;
        let Some(raw) = Pid::from_raw(pid) else {
            return Ok(());
        };
        if self.settings.process_group {
            // The worker is a zombie until reaped, which keeps its group id
            // from being reused: whatever it left running goes now.
            let _ = rustix::process::kill_process_group(raw, Signal::KILL);
        }
        match rustix::process::waitpid(Some(raw), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                self.exited(slot, convert_status(status));
                Ok(())
            }
            Ok(None) => Ok(()),
            // Reaped already by the orphan reaper.
            Err(rustix::io::Errno::CHILD) => Ok(()),
            Err(e) => Err(Error::Wait {
                pid,
                source: e.into(),
            }),
        }
    }

    /// As PID 1 or a subreaper: reap every child that ended, workers or not.
    fn reap_any(&mut self) {
        while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG) {
            let pid = pid.as_raw_nonzero().get();
            let slot = self
                .slots
                .iter()
                .position(|s| s.proc.as_ref().is_some_and(|p| p.pid == pid));
            match slot {
                Some(slot) => self.exited(slot, convert_status(status)),
                None => log::debug!(target: "ufork", "reaped pid {pid}, not a worker"),
            }
        }
    }

    fn exited(&mut self, slot: usize, status: ExitStatus) {
        // A note the worker wrote just before exiting is in the pipe already.
        self.read_notes();
        let now = now_ns();
        let s = &mut self.slots[slot];
        let Some(proc) = s.proc.take() else { return };
        let uptime = ns_to_duration(now.saturating_sub(proc.started));
        let note = s.note.take().filter(|n| n.generation == proc.generation);
        // A worker's own report of failure beats "stopped": it may have died
        // just before the stop reached it, or failed while finishing.
        let reason = match (proc.reason, &note) {
            (Some(ExitReason::Stopped) | None, Some(n)) if n.kind == NoteKind::Panicked => {
                ExitReason::Panicked
            }
            (Some(ExitReason::Stopped) | None, Some(_)) => ExitReason::Failed,
            (Some(reason), _) => reason,
            (None, None) => match status {
                ExitStatus::Code(0) => ExitReason::Exited,
                ExitStatus::Code(_) => ExitReason::Failed,
                ExitStatus::Signal(_) => ExitReason::Killed,
            },
        };
        let record = ExitRecord {
            pid: proc.pid,
            slot,
            generation: proc.generation,
            status,
            reason,
            message: note.map(|n| n.text).filter(|t| !t.is_empty()),
            uptime,
            at: SystemTime::now(),
            requests: self.board.cell(slot).requests(),
        };
        if proc.killed_at_deadline && status == ExitStatus::Signal(libc::SIGKILL) {
            if let Some(stop) = &mut self.stop {
                stop.killed_at_timeout += 1;
            }
        }
        let requested = record.reason.is_requested();
        if requested {
            log::info!(target: "ufork", "{record}");
        } else if record.reason == ExitReason::Exited {
            log::warn!(target: "ufork", "{record}");
        } else {
            log::error!(target: "ufork", "{record}");
        }
        self.board.cell(slot).clear();
        if requested {
            s.not_before = now;
        } else {
            s.restarts += 1;
            if uptime < self.settings.min_uptime {
                self.delay_slot(slot, now, true);
            } else {
                s.failures = 0;
                s.not_before = now;
            }
        }
        if self.settings.history > 0 {
            if self.history.len() >= self.settings.history {
                self.history.pop_front();
            }
            self.history.push_back(record.clone());
        }
        self.each_layer(|layer, ctx| layer.exited(&record, ctx));
        if let Some(hook) = &mut self.hooks.on_exit {
            hook(&record);
        }
    }
}

impl<F> Drop for Monitor<F> {
    fn drop(&mut self) {
        // Reached with workers alive only when `run` failed: never leave an
        // orphan or a zombie behind.
        for s in &mut self.slots {
            if let Some(proc) = s.proc.take() {
                signal_proc(&proc, Signal::KILL, self.settings.process_group);
                if let Some(pid) = Pid::from_raw(proc.pid) {
                    let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                }
            }
        }
        for (sig, old) in self.saved.drain(..) {
            let _ = sys::restore(sig, &old);
        }
        if self.settings.handle_signals || self.reaper {
            sys::set_arbiter_pipe(-1);
            RUNNING.store(false, Ordering::SeqCst);
        }
    }
}

/// Signals a worker (its whole group, with `process_group`). The pidfd pins
/// the pid until the worker is reaped, so neither can hit a recycled pid.
fn signal_proc(proc: &Proc, signal: Signal, group: bool) {
    if group {
        if let Some(pid) = Pid::from_raw(proc.pid) {
            if rustix::process::kill_process_group(pid, signal).is_ok() {
                return;
            }
        }
    }
    let _ = rustix::process::pidfd_send_signal(&proc.pidfd, signal);
}

fn convert_status(status: rustix::process::WaitStatus) -> ExitStatus {
    if let Some(code) = status.exit_status() {
        ExitStatus::Code(code)
    } else if let Some(sig) = status.terminating_signal() {
        ExitStatus::Signal(sig)
    } else {
        ExitStatus::Code(-1)
    }
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 256];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}

fn flush_stdio() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// In the child: a small thread blocks on the arbiter's death pipe and ends
/// the worker when it reads EOF (the arbiter is gone). It backs up
/// PR_SET_PDEATHSIG, which a setuid exec or a `prctl` in user code can clear.
fn watch_parent(death_r: OwnedFd) {
    let spawned = std::thread::Builder::new()
        .name("ufork-parent".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut byte = [0u8; 1];
            while let Err(rustix::io::Errno::INTR) = rustix::io::read(&death_r, &mut byte) {}
            flush_stdio();
            sys::exit_now(EXIT_SETUP);
        });
    drop(spawned);
}
