//! The driver of the monitor loop: one thread, one `poll(2)` over the signal
//! self-pipe, the handle's wake pipe, the workers' notes pipe, one pidfd per
//! worker and the layers' descriptors. It does what the [`Scheduler`]
//! decides (fork, signal, reap) and feeds it what happened; its timeout is
//! the scheduler's next deadline, so an idle arbiter sleeps until something
//! can actually happen.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::arbiter::{FdLimit, Hooks, StopCause};
use crate::child::Child;
use crate::exit::workers;
use crate::handle::{Command, Shared};
use crate::layer::{Context, Layer, Readiness, Registry, Spawn, Token};
use crate::notes;
use crate::schedule::{Action, Cells, Due, Observed, Scheduler, Sig, StopStep};
use crate::scoreboard::{Scoreboard, now_ns};
use crate::sys::{self, Disposition};
use crate::{Arbiter, Error, ExitReason, ExitStatus, Outcome, Result, Worker};

static RUNNING: AtomicBool = AtomicBool::new(false);

const HANDLED: [i32; 14] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGALRM,
    libc::SIGPWR,
    libc::SIGIO,
    libc::SIGVTALRM,
    libc::SIGPROF,
];

/// Signals whose default disposition terminates the process but that ask the
/// arbiter for nothing: a stray `kill -ALRM` (or a timer the application
/// armed in the arbiter) must not take the pool down. Workers get them back
/// at their default.
const IGNORED: [(i32, &str); 5] = [
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGPWR, "SIGPWR"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
];

pub(crate) fn nonblocking_pipe() -> Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::{PipeFlags, pipe_with};
    pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(|e| Error::Pipe(e.into()))
}

/// The scoreboard as the scheduler reads it: beats converted to `Instant`s
/// against one reading of both clocks (both are CLOCK_MONOTONIC).
pub(crate) struct BoardView<'a> {
    board: &'a Scoreboard,
    now: Instant,
    now_ns: u64,
}

impl<'a> BoardView<'a> {
    pub(crate) fn new(board: &'a Scoreboard) -> Self {
        Self {
            board,
            now: Instant::now(),
            now_ns: now_ns(),
        }
    }
}

impl Cells for BoardView<'_> {
    fn observe(&self, slot: usize) -> Observed {
        let cell = self.board.cell(slot);
        let beat = cell.last_beat();
        let last_beat = (beat != 0)
            .then(|| {
                let age = Duration::from_nanos(self.now_ns.saturating_sub(beat));
                self.now.checked_sub(age)
            })
            .flatten();
        // Mostly in the future, unlike a beat; one that cannot be
        // represented is past any start timeout (a past one always can be:
        // it is later than the worker's fork).
        let start_until = cell.start_until().map(|until| {
            let at = match until.checked_sub(self.now_ns) {
                Some(ahead) => self.now.checked_add(Duration::from_nanos(ahead)),
                None => self
                    .now
                    .checked_sub(Duration::from_nanos(self.now_ns.saturating_sub(until))),
            };
            at.map_or(Due::Never, Due::At)
        });
        Observed {
            state: cell.state(),
            last_beat,
            planned_exit: cell.planned_exit(),
            requests: cell.requests(),
            hung: cell.hung(),
            start_until,
        }
    }

    fn activity(&self, slot: usize) -> String {
        self.board.cell(slot).read_activity()
    }
}

pub(crate) struct Monitor<F> {
    sched: Scheduler,
    layers: Vec<Box<dyn Layer>>,
    hooks: Hooks,
    shared: Arc<Shared>,
    board: Arc<Scoreboard>,
    worker_main: F,
    /// Per slot: the pidfd of its live worker.
    pidfds: Vec<Option<OwnedFd>>,
    wake_r: OwnedFd,
    sig_r: BorrowedFd<'static>,
    sig_w: BorrowedFd<'static>,
    notes_r: OwnedFd,
    notes_w: Arc<OwnedFd>,
    death_r: Option<OwnedFd>,
    death_w: OwnedFd,
    saved: Vec<(i32, Disposition)>,
    installed: bool,
    registry: Registry,
    note_buf: Vec<u8>,
    reaper: bool,
    pid: i32,
    /// Threads the process had when `run` began its loop.
    thread_baseline: Option<usize>,
    threads_warned: bool,
    /// The OOM killer's count when last read (see `proc::oom_kills`).
    oom_kills: Option<u64>,
}

impl<F> fmt::Debug for Monitor<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("sched", &self.sched)
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
        let (sig_r, sig_w) = sys::signal_pipe().map_err(Error::Pipe)?;
        let (notes_r, notes_w) = nonblocking_pipe()?;
        let (death_r, death_w) = {
            use rustix::pipe::{PipeFlags, pipe_with};
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| Error::Pipe(e.into()))?
        };
        let board = Arc::clone(&shared.board);
        let mut pidfds = Vec::new();
        pidfds.resize_with(settings.workers, || None);
        let mut monitor = Self {
            sched: Scheduler::new(settings, Instant::now()),
            layers,
            hooks,
            shared,
            board,
            worker_main,
            pidfds,
            wake_r,
            sig_r,
            sig_w,
            notes_r,
            notes_w: Arc::new(notes_w),
            death_r: Some(death_r),
            death_w,
            saved: Vec::new(),
            installed: false,
            registry: Registry::default(),
            note_buf: Vec::new(),
            reaper: sys::is_reaper(),
            pid: rustix::process::getpid().as_raw_nonzero().get(),
            thread_baseline: None,
            threads_warned: false,
            oom_kills: None,
        };
        monitor.install_signals()?;
        Ok(monitor)
    }

    fn install_signals(&mut self) -> Result<()> {
        if !self.sched.settings.handle_signals && !self.reaper {
            return Ok(());
        }
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning);
        }
        self.installed = true;
        drain(self.sig_r);
        let mut signals: Vec<i32> = Vec::new();
        if self.sched.settings.handle_signals {
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
        if std::mem::take(&mut self.installed) {
            RUNNING.store(false, Ordering::SeqCst);
        }
    }

    pub(crate) fn run(mut self) -> Result<Outcome> {
        self.each_layer(|layer, ctx| layer.started(ctx));
        // Commands sent before `run` take effect before the first fork.
        self.handle_commands();
        self.thread_baseline = crate::proc::thread_count();
        self.oom_kills = crate::proc::oom_kills();
        log::info!(target: "ufork", "arbiter pid {} starting {}", self.pid, workers(self.sched.target));
        // So does a stop signal that came since the handlers were installed
        // (or, held blocked by the caller, was released by a layer's
        // `started`): a pool told to stop before it started forks nothing.
        // The other signals wait for the loop's first poll, which finds the
        // self-pipe still readable.
        self.handle_stop_signals();
        loop {
            let now = Instant::now();
            self.sched.loop_top(now);
            if !self.sched.stopping() {
                self.sched
                    .advance_rolling(now, &BoardView::new(&self.board));
                self.run_actions();
                self.spawn_due(now);
                // A stand-in forked just now may have turned ready before
                // `spawn_due` raised the ready-note flag: look once more,
                // now that a later turn would write a note.
                self.sched
                    .advance_rolling(now, &BoardView::new(&self.board));
                self.run_actions();
            } else if self.sched.finished() {
                break;
            }
            self.check_health(now);
            self.publish(true);
            let deadline = self.next_deadline();
            self.poll_once(deadline)?;
        }
        Ok(self.finish())
    }

    fn finish(&mut self) -> Outcome {
        // Ctrl-C works again before layers flush: a flush stalled on a full
        // pipe must not leave the process deaf to it.
        self.restore_signals();
        for layer in &mut self.layers {
            layer.stopped();
        }
        self.publish(false);
        log::info!(target: "ufork", "arbiter pid {} stopped: every worker reaped", self.pid);
        self.sched.outcome()
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
        published.target = self.sched.target;
        published.running = running;
        published.stopping = running && self.sched.stopping();
        published.spawned = self.sched.spawned;
        published.rolling = self.sched.rolling();
        published.rolls = self.sched.rolls;
        if published.roll_abandoned != self.sched.abandoned {
            published.roll_abandoned.clone_from(&self.sched.abandoned);
        }
        published.procs.clear();
        for (slot, s) in self.sched.slots.iter().enumerate() {
            if let Some(p) = &s.proc {
                published
                    .procs
                    .push((slot, p.pid, p.generation, p.started, s.restarts));
            }
        }
        let history = &self.sched.history;
        if published.history.len() != history.len() || published.history.back() != history.back() {
            published.history = history.clone();
        }
    }

    /// Carries out what the scheduler decided.
    fn run_actions(&mut self) {
        for action in self.sched.take_actions() {
            match action {
                Action::Signal { slot, pid, signal } => {
                    let signal = match signal {
                        Sig::Term => {
                            self.board
                                .cell(slot)
                                .set_state(crate::WorkerState::Stopping);
                            Signal::TERM
                        }
                        Sig::Kill => Signal::KILL,
                    };
                    if let Some(Some(pidfd)) = self.pidfds.get(slot) {
                        signal_proc(pid, pidfd, signal, self.sched.settings.process_group);
                    }
                }
            }
        }
    }

    // -- spawning ------------------------------------------------------------

    fn spawn_due(&mut self, now: Instant) {
        let board = Arc::clone(&self.board);
        for pass in 0..2 {
            let plan = self.sched.plan_spawns(now, &BoardView::new(&board));
            for &(slot, generation) in &plan.slots {
                self.spawn(slot, generation, now);
            }
            // A worker turning ready is no system call, so the arbiter asks for
            // a note while something waits on it: the throttle, a rolling
            // restart, or the first heartbeat that starts hang detection.
            let waiting = self
                .sched
                .waiting_for_ready(plan.blocked, &BoardView::new(&board));
            board
                .header()
                .ready_wanted
                .store(u32::from(waiting), Ordering::SeqCst);
            if !waiting || pass == 1 {
                break;
            }
            // The flag is up: states read from here on either show a worker
            // that became ready, or that worker will write a note.
        }
    }

    fn spawn_failed(&mut self, slot: usize, now: Instant) {
        for layer in &mut self.layers {
            layer.fork_failed(slot);
        }
        self.board.cell(slot).clear();
        self.sched.spawn_failed(slot, now);
    }

    /// Warns once if threads appeared since `run` began: a child inherits no
    /// thread, and only the locks this loop holds across `fork` are safe.
    fn check_threads(&mut self) {
        if self.threads_warned {
            return;
        }
        if let (Some(base), Some(now)) = (self.thread_baseline, crate::proc::thread_count()) {
            if now > base {
                self.threads_warned = true;
                log::warn!(
                    target: "ufork",
                    "the process has {now} threads, {base} when the arbiter started: a worker inherits no lock another thread holds at fork, except stdout's and stderr's, which the arbiter holds across it"
                );
            }
        }
    }

    /// Forks a worker for `slot`.
    fn spawn(&mut self, slot: usize, generation: u32, now: Instant) {
        self.board.cell(slot).reset(0, generation);
        if let Some(hook) = &mut self.hooks.pre_fork {
            hook(slot, generation);
        }
        for index in 0..self.layers.len() {
            if let Err(e) = self.layers[index].prepare(slot, generation) {
                log::error!(target: "ufork", "cannot prepare worker {slot}: {e}; retrying later");
                self.spawn_failed(slot, now);
                return;
            }
        }
        self.check_threads();
        let close = self.arbiter_fds();
        let registered = self.registered_fds();
        let forked = {
            let Self {
                sched,
                layers,
                hooks,
                board,
                notes_w,
                death_r,
                saved,
                worker_main,
                pid,
                ..
            } = self;
            // std's stdout and stderr locks are held across the fork (the
            // pthread_atfork pattern): a child never inherits them locked by
            // a thread it does not have.
            let out = std::io::stdout().lock();
            let err = std::io::stderr().lock();
            sys::fork_into(|| {
                drop((out, err));
                Child {
                    slot,
                    generation,
                    arbiter_pid: *pid,
                    settings: &sched.settings,
                    saved,
                    close: &close,
                    registered: &registered,
                    board,
                    notes_w,
                    death_r: death_r.take(),
                    layers,
                    post_fork: &mut hooks.post_fork,
                    worker_main,
                }
                .run()
            })
        };
        let pid = match forked {
            Ok(pid) => pid,
            Err(e) => {
                log::error!(target: "ufork", "cannot fork worker {slot}: {e}; retrying later");
                self.spawn_failed(slot, now);
                return;
            }
        };
        self.board.cell(slot).set_pid(pid);
        let Some(raw) = Pid::from_raw(pid) else {
            return;
        };
        if self.sched.settings.process_group {
            // Both sides set the group, so it exists before either the
            // worker execs or the arbiter signals it.
            let _ = rustix::process::setpgid(Some(raw), Some(raw));
        }
        let pidfd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                log::error!(target: "ufork", "cannot watch worker {slot} pid {pid}: {e}; killing it");
                let _ = rustix::process::kill_process(raw, Signal::KILL);
                let _ = rustix::process::waitpid(Some(raw), WaitOptions::empty());
                self.spawn_failed(slot, now);
                return;
            }
        };
        if self.pidfds.len() <= slot {
            self.pidfds.resize_with(slot.saturating_add(1), || None);
        }
        self.pidfds[slot] = Some(pidfd);
        self.sched.spawned(slot, pid, now);
        let spawn = Spawn {
            slot,
            generation,
            pid,
        };
        self.each_layer(|layer, ctx| layer.spawned(&spawn, ctx));
        log::info!(target: "ufork", "worker {slot} pid {pid} started (generation {generation})");
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
        fds.extend(self.pidfds.iter().flatten().map(AsRawFd::as_raw_fd));
        fds
    }

    /// Descriptors layers registered, with core's duplicates, closed in the
    /// child (the layer's number only while it is still theirs).
    fn registered_fds(&self) -> Vec<(RawFd, RawFd)> {
        self.registry.fds().collect()
    }

    // -- health --------------------------------------------------------------

    fn check_health(&mut self, now: Instant) {
        self.sched.check_health(now, &BoardView::new(&self.board));
        if self.sched.limits_due(now) {
            let live: Vec<(usize, i32)> = self
                .sched
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| s.proc.as_ref().map(|p| (slot, p.pid)))
                .collect();
            for (slot, pid) in live {
                if let Some(reason) = self.over_limit(slot, pid) {
                    self.sched.recycle(slot, reason, now);
                }
            }
        }
        self.run_actions();
    }

    /// Reads a worker's memory and descriptors from /proc against the limits.
    fn over_limit(&self, slot: usize, pid: i32) -> Option<ExitReason> {
        let settings = &self.sched.settings;
        if let Some(limit) = settings.memory_limit {
            if let Some(rss) = crate::proc::rss_bytes(pid) {
                if rss > limit {
                    log::warn!(target: "ufork", "worker {slot} pid {pid} uses {rss} bytes of memory, over the limit of {limit}; recycling it");
                    return Some(ExitReason::OverMemory { rss, limit });
                }
            }
        }
        let limit = match settings.fd_limit? {
            FdLimit::Count(n) => Some(n),
            FdLimit::FractionOfRlimit(f) => {
                crate::proc::nofile_limit(pid).map(|n| crate::proc::fraction_of(n, f))
            }
        };
        if let (Some(limit), Some(open)) = (limit, crate::proc::open_fds(pid)) {
            if open >= limit {
                log::warn!(target: "ufork", "worker {slot} pid {pid} has {open} open files, at the limit of {limit}; recycling it");
                return Some(ExitReason::TooManyFds { open, limit });
            }
        }
        None
    }

    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next = self.sched.next_deadline(now, &BoardView::new(&self.board));
        for layer in &self.layers {
            if let Some(at) = layer.next_deadline() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
    }

    // -- waiting and events --------------------------------------------------

    fn poll_once(&mut self, deadline: Option<Instant>) -> Result<()> {
        let before = Instant::now();
        let timeout = deadline.map(|d| d.saturating_duration_since(before));
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let proc_slots: Vec<usize> = (0..self.pidfds.len())
            .filter(|&i| self.pidfds[i].is_some())
            .collect();
        let (fixed, procs, layer_events) = {
            let mut fds = Vec::with_capacity(
                proc_slots
                    .len()
                    .saturating_add(self.registry.entries.len())
                    .saturating_add(3),
            );
            fds.push(PollFd::from_borrowed_fd(self.sig_r, PollFlags::IN));
            fds.push(PollFd::new(&self.wake_r, PollFlags::IN));
            fds.push(PollFd::new(&self.notes_r, PollFlags::IN));
            for pidfd in self.pidfds.iter().flatten() {
                fds.push(PollFd::new(pidfd, PollFlags::IN));
            }
            for entry in &self.registry.entries {
                let mut flags = PollFlags::empty();
                if entry.interest.readable {
                    flags |= PollFlags::IN;
                }
                if entry.interest.writable {
                    flags |= PollFlags::OUT;
                }
                fds.push(PollFd::new(&entry.fd, flags));
            }
            match poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::Poll(e.into())),
            }
            let (head, rest) = fds.split_at(3);
            let (proc_fds, layer_fds) = rest.split_at(proc_slots.len());
            let fixed: Vec<bool> = head.iter().map(|f| !f.revents().is_empty()).collect();
            let procs: Vec<usize> = proc_slots
                .iter()
                .zip(proc_fds)
                .filter(|(_, f)| !f.revents().is_empty())
                .map(|(&slot, _)| slot)
                .collect();
            let layer_events: Vec<(Token, usize, PollFlags)> = self
                .registry
                .entries
                .iter()
                .zip(layer_fds)
                .filter(|(_, f)| !f.revents().is_empty())
                .map(|(e, f)| (e.token, e.layer, f.revents()))
                .collect();
            (fixed, procs, layer_events)
        };
        self.sched.polled(timeout, before.elapsed());
        if fixed[0] {
            drain(self.sig_r);
            self.handle_signals();
        }
        if fixed[1] {
            drain(self.wake_r.as_fd());
        }
        self.handle_commands();
        if fixed[2] {
            self.read_notes();
        }
        for slot in procs {
            self.reap_slot(slot)?;
        }
        for (token, layer, flags) in layer_events {
            self.layer_event(token, layer, flags);
        }
        self.each_layer(|layer, ctx| layer.tick(ctx));
        // Commands a layer sent during its events take effect now rather than
        // after the next wake-up.
        self.handle_commands();
        Ok(())
    }

    fn layer_event(&mut self, token: Token, layer: usize, flags: PollFlags) {
        if !self.registry.entries.iter().any(|e| e.token == token) {
            return;
        }
        let still_open = self
            .registry
            .entries
            .iter()
            .find(|e| e.token == token)
            .is_some_and(crate::layer::Registration::still_open);
        if flags.contains(PollFlags::NVAL) || !still_open {
            log::warn!(target: "ufork", "a layer's descriptor was closed while registered; dropping it");
            self.registry.entries.retain(|e| e.token != token);
            return;
        }
        let readiness = Readiness {
            readable: flags.intersects(PollFlags::IN | PollFlags::PRI),
            writable: flags.contains(PollFlags::OUT),
            hangup: flags.contains(PollFlags::HUP),
            error: flags.contains(PollFlags::ERR),
        };
        self.with_layer(layer, |l, ctx| l.event(token, readiness, ctx));
    }

    fn stop(&mut self, cause: StopCause, graceful: bool) {
        if self.sched.stop(cause, graceful, Instant::now()) == StopStep::Began {
            if let Some(hook) = &mut self.hooks.pre_stop {
                hook();
            }
            self.each_layer(|layer, ctx| layer.stopping(ctx));
        }
        self.run_actions();
    }

    /// The signals that stop the pool: INT, TERM, QUIT, and a HUP from the
    /// kernel (the terminal hung up).
    fn handle_stop_signals(&mut self) {
        let both = |sig| sys::take_count(sig).saturating_add(sys::take_kernel_count(sig));
        let int = both(libc::SIGINT);
        let term = both(libc::SIGTERM);
        let quit = both(libc::SIGQUIT);
        let live = workers(self.sched.live());
        if quit > 0 {
            log::warn!(target: "ufork", "SIGQUIT: stopping every worker now");
            self.stop(StopCause::Signal(libc::SIGQUIT), false);
        }
        if int > 0 {
            if int >= 2 || self.sched.stopping_gracefully() {
                // Ctrl-C twice, or once while a stop (a SIGTERM, say) is
                // under way.
                let why = if int >= 2
                    || self.sched.stop_cause() == Some(&StopCause::Signal(libc::SIGINT))
                {
                    "second SIGINT"
                } else {
                    "SIGINT during a graceful stop"
                };
                log::warn!(target: "ufork", "{why}: stopping every worker now");
                self.stop(StopCause::Signal(libc::SIGINT), false);
            } else {
                log::info!(target: "ufork", "SIGINT: stopping {live} gracefully (Ctrl-C again to stop now)");
                self.stop(StopCause::Signal(libc::SIGINT), true);
            }
        }
        if term > 0 {
            log::info!(target: "ufork", "SIGTERM: stopping {live} gracefully");
            self.stop(StopCause::Signal(libc::SIGTERM), true);
        }
        // SIGHUP from the kernel means the controlling terminal hung up: like
        // any foreground program, stop. Sent with kill(1), it asks for a
        // rolling restart.
        if sys::take_kernel_count(libc::SIGHUP) > 0 {
            log::warn!(target: "ufork", "the terminal hung up (SIGHUP): stopping {live} gracefully");
            self.stop(StopCause::Signal(libc::SIGHUP), true);
        }
    }

    fn handle_signals(&mut self) {
        let both = |sig| sys::take_count(sig).saturating_add(sys::take_kernel_count(sig));
        self.handle_stop_signals();
        if sys::take_count(libc::SIGHUP) > 0 {
            if self.sched.stopping() {
                log::info!(target: "ufork", "SIGHUP ignored: the pool is stopping");
            } else {
                log::info!(target: "ufork", "SIGHUP: restarting every worker, one at a time");
                self.sched.start_rolling();
            }
        }
        // The kernel raises TTIN/TTOU for job control (a background process
        // touching the terminal): that is no request to scale.
        let job_control = sys::take_kernel_count(libc::SIGTTIN)
            .saturating_add(sys::take_kernel_count(libc::SIGTTOU));
        if job_control > 0 {
            log::debug!(target: "ufork", "ignoring SIGTTIN/SIGTTOU from terminal job control");
        }
        let ttin = isize::try_from(sys::take_count(libc::SIGTTIN)).unwrap_or(isize::MAX);
        let ttou = isize::try_from(sys::take_count(libc::SIGTTOU)).unwrap_or(isize::MAX);
        if ttin != ttou {
            self.sched
                .add_workers(ttin.saturating_sub(ttou), Instant::now());
            self.grow_pidfds();
            self.run_actions();
        }
        if both(libc::SIGUSR1) > 0 {
            log::info!(target: "ufork", "SIGUSR1: reopening logs");
            self.each_layer(|layer, ctx| layer.reopen(ctx));
        }
        if both(libc::SIGUSR2) > 0 {
            log::info!(target: "ufork", "SIGUSR2: in-place upgrade");
            self.upgrade();
        }
        // gunicorn and unicorn stop their workers on a WINCH sent to a
        // daemonized master; an operator may send it by habit. A terminal's
        // own WINCH (a resize, raised by the kernel) is not worth a line.
        let _ = sys::take_kernel_count(libc::SIGWINCH);
        if sys::take_count(libc::SIGWINCH) > 0 {
            log::info!(target: "ufork", "SIGWINCH ignored: the workers keep running (to stop them, scale down or stop the pool)");
        }
        for (sig, name) in IGNORED {
            if both(sig) > 0 {
                log::warn!(target: "ufork", "{name} ignored: it asks the arbiter for nothing (the pool keeps running)");
            }
        }
        if both(libc::SIGCHLD) > 0 && self.reaper {
            self.reap_any();
        }
    }

    /// SIGUSR2 or `Handle::upgrade`: the layer that can re-execute does.
    fn upgrade(&mut self) {
        let mut taken = false;
        self.each_layer(|layer, ctx| taken = taken || layer.upgrade(ctx));
        if !taken {
            log::warn!(target: "ufork", "upgrade ignored: no layer of this pool can re-execute it (see ufork_core::upgrade::Upgrader)");
        }
    }

    fn grow_pidfds(&mut self) {
        let len = self.sched.slots.len();
        if self.pidfds.len() < len {
            self.pidfds.resize_with(len, || None);
        }
    }

    fn handle_commands(&mut self) {
        for command in self.shared.take_commands() {
            let now = Instant::now();
            match command {
                Command::Stop { graceful } => self.stop(StopCause::Handle, graceful),
                Command::SetWorkers(n) => self.sched.set_target(n, now),
                Command::AddWorkers(delta) => self.sched.add_workers(delta, now),
                Command::RestartAll => self.sched.start_rolling(),
                Command::Restart(slot) => self.sched.restart(slot, true, now),
                Command::Kill(slot) => self.sched.restart(slot, false, now),
                Command::Reopen => self.each_layer(|layer, ctx| layer.reopen(ctx)),
                Command::Upgrade => self.upgrade(),
            }
            self.grow_pidfds();
            self.run_actions();
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
            self.sched.note(note);
        }
    }

    fn reap_slot(&mut self, slot: usize) -> Result<()> {
        let Some(proc) = &self.sched.slots[slot].proc else {
            return Ok(());
        };
        let pid = proc.pid;
        let Some(raw) = Pid::from_raw(pid) else {
            return Ok(());
        };
        if self.sched.settings.process_group {
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

    /// As PID 1 or a subreaper: reap every child that ended, workers or not,
    /// whatever its process group (`wait` on any child, not only the
    /// arbiter's group).
    fn reap_any(&mut self) {
        while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
            let raw = pid.as_raw_nonzero().get();
            match self.sched.slot_of(raw) {
                Some(slot) => {
                    if self.sched.settings.process_group {
                        // Reaped first here, so the group is killed after:
                        // while anything is left in it, its id stays taken.
                        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                    }
                    self.exited(slot, convert_status(status));
                }
                None => log::debug!(target: "ufork", "reaped pid {raw}, not a worker"),
            }
        }
    }

    /// Whether the kernel's OOM killer acted since the last look.
    fn oom_moved(&mut self) -> bool {
        let now = crate::proc::oom_kills();
        let moved = matches!((self.oom_kills, now), (Some(before), Some(after)) if after > before);
        if now.is_some() {
            self.oom_kills = now;
        }
        moved
    }

    fn exited(&mut self, slot: usize, status: ExitStatus) {
        // A note the worker wrote just before exiting is in the pipe already.
        self.read_notes();
        let last = BoardView::new(&self.board).observe(slot);
        let oom = status == ExitStatus::Signal(libc::SIGKILL) && self.oom_moved();
        let Some(record) =
            self.sched
                .exited(slot, status, &last, oom, Instant::now(), SystemTime::now())
        else {
            return;
        };
        if let Some(pidfd) = self.pidfds.get_mut(slot) {
            *pidfd = None;
        }
        if record.reason.is_requested() {
            log::info!(target: "ufork", "{record}");
        } else if record.reason == ExitReason::Exited {
            log::warn!(target: "ufork", "{record}");
        } else {
            log::error!(target: "ufork", "{record}");
        }
        self.board.cell(slot).clear();
        self.each_layer(|layer, ctx| layer.exited(&record, ctx));
        if let Some(hook) = &mut self.hooks.on_exit {
            hook(&record);
        }
        if let Some(last) = self.sched.take_give_up() {
            log::error!(
                target: "ufork",
                "giving up: every slot failed {} times in a row without a worker staying up; the last: {last}",
                self.sched.settings.give_up_after
            );
            self.stop(StopCause::GaveUp, true);
        }
    }
}

impl<F> Drop for Monitor<F> {
    fn drop(&mut self) {
        // Reached with workers alive only when `run` failed: never leave an
        // orphan or a zombie behind.
        for (slot, s) in self.sched.slots.iter_mut().enumerate() {
            if let Some(proc) = s.proc.take() {
                if let Some(Some(pidfd)) = self.pidfds.get(slot) {
                    signal_proc(
                        proc.pid,
                        pidfd,
                        Signal::KILL,
                        self.sched.settings.process_group,
                    );
                }
                if let Some(pid) = Pid::from_raw(proc.pid) {
                    let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                }
            }
        }
        for (sig, old) in self.saved.drain(..) {
            let _ = sys::restore(sig, &old);
        }
        if std::mem::take(&mut self.installed) {
            RUNNING.store(false, Ordering::SeqCst);
        }
    }
}

/// Signals a worker (its whole group, with `process_group`). The pidfd pins
/// the pid until the worker is reaped, so neither can hit a recycled pid.
fn signal_proc(pid: i32, pidfd: &OwnedFd, signal: Signal, group: bool) {
    if group {
        if let Some(pid) = Pid::from_raw(pid) {
            if rustix::process::kill_process_group(pid, signal).is_ok() {
                return;
            }
        }
    }
    let _ = rustix::process::pidfd_send_signal(pidfd, signal);
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

fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 256];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}
