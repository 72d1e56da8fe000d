//! Controlling a running pool from another thread (or a layer): the [`Handle`],
//! and the [`Snapshot`] it reads.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::scoreboard::{Scoreboard, now_ns, ns_to_duration};
use crate::{Error, ExitRecord, Result, WorkerState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Stop { graceful: bool },
    SetWorkers(usize),
    AddWorkers(isize),
    RestartAll,
    Restart(usize),
    Kill(usize),
    Reopen,
    Upgrade,
}

/// What the arbiter publishes for snapshots after every change.
#[derive(Debug, Default, Clone)]
pub(crate) struct Published {
    pub(crate) target: usize,
    pub(crate) running: bool,
    pub(crate) stopping: bool,
    pub(crate) spawned: u64,
    pub(crate) rolling: bool,
    pub(crate) rolls: u64,
    pub(crate) roll_abandoned: Option<String>,
    /// Per slot with a process: (slot, pid, generation, started, restarts).
    pub(crate) procs: Vec<(usize, i32, u32, Instant, u32)>,
    pub(crate) history: VecDeque<ExitRecord>,
}

pub(crate) struct Shared {
    pub(crate) commands: Mutex<Vec<Command>>,
    pub(crate) wake: OwnedFd,
    pub(crate) published: Mutex<Published>,
    pub(crate) board: Arc<Scoreboard>,
}

impl Shared {
    pub(crate) fn published(&self) -> MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn take_commands(&self) -> Vec<Command> {
        std::mem::take(&mut *self.commands.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Controls a pool from any thread: stop it, scale it, restart its workers,
/// read its state. Cheap to clone; `Send + Sync`. Commands sent while the pool
/// is not running wait for the next `run`.
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl Handle {
    fn send(&self, command: Command) {
        self.shared
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(command);
        // A full wake pipe already holds a wake-up; nothing is lost.
        let _ = rustix::io::write(&self.shared.wake, &[1]);
    }

    /// Stops the pool gracefully (like SIGTERM): `run` returns once every
    /// worker has exited or been killed after the graceful timeout.
    pub fn stop(&self) {
        self.send(Command::Stop { graceful: true });
    }

    /// Stops the pool at once (like SIGQUIT): every worker gets SIGKILL.
    pub fn stop_now(&self) {
        self.send(Command::Stop { graceful: false });
    }

    /// Sets the number of workers. Extra workers are stopped gracefully, the
    /// highest slots first.
    ///
    /// # Errors
    ///
    /// [`Error::OverCapacity`] past the scoreboard's capacity.
    pub fn set_workers(&self, workers: usize) -> Result<()> {
        let capacity = self.shared.board.capacity();
        if workers > capacity {
            return Err(Error::OverCapacity {
                requested: workers,
                capacity,
            });
        }
        self.send(Command::SetWorkers(workers));
        Ok(())
    }

    /// One worker more (like SIGTTIN); ignored at capacity, with a warning.
    pub fn add_worker(&self) {
        self.send(Command::AddWorkers(1));
    }

    /// One worker less (like SIGTTOU); never below one.
    pub fn remove_worker(&self) {
        self.send(Command::AddWorkers(-1));
    }

    /// Replaces every worker, one slot at a time (like SIGHUP): a stand-in
    /// forked into a spare slot is ready before the slot's old worker is
    /// asked to stop, and stops once the slot's new worker is ready, so every
    /// slot keeps a ready worker throughout (stop-then-start when the
    /// scoreboard has no spare slot).
    pub fn restart_all(&self) {
        self.send(Command::RestartAll);
    }

    /// Stops the worker in `slot` gracefully; it is replaced.
    pub fn restart(&self, slot: usize) {
        self.send(Command::Restart(slot));
    }

    /// Sends SIGKILL to the worker in `slot`; it is replaced.
    pub fn kill(&self, slot: usize) {
        self.send(Command::Kill(slot));
    }

    /// Asks for an in-place upgrade (like SIGUSR2): the pool's
    /// [`Upgrader`](crate::upgrade::Upgrader) re-executes the program with
    /// the listening sockets handed over; without one, a warning is logged.
    /// The outcome is logged; to wait for it, use
    /// [`UpgradeHandle::upgrade`](crate::upgrade::UpgradeHandle::upgrade).
    pub fn upgrade(&self) {
        self.send(Command::Upgrade);
    }

    /// Asks layers to reopen their log files (like SIGUSR1).
    pub fn reopen_logs(&self) {
        self.send(Command::Reopen);
    }

    /// The pool's state now: every worker with its scoreboard data, and the
    /// recent exits.
    pub fn snapshot(&self) -> Snapshot {
        let published = self.shared.published().clone();
        let now = now_ns();
        let instant = Instant::now();
        let board = &self.shared.board;
        let workers = published
            .procs
            .iter()
            .map(|&(slot, pid, generation, started, restarts)| {
                let cell = board.cell(slot);
                let beat = cell.last_beat();
                let busy = cell.busy_since();
                WorkerInfo {
                    slot,
                    pid,
                    generation,
                    state: cell.state(),
                    uptime: instant.saturating_duration_since(started),
                    last_beat_age: (beat != 0).then(|| ns_to_duration(now.saturating_sub(beat))),
                    busy_for: (busy != 0 && cell.state() == WorkerState::Busy)
                        .then(|| ns_to_duration(now.saturating_sub(busy))),
                    requests: cell.requests(),
                    restarts,
                    activity: cell.read_activity(),
                    rss: crate::proc::rss_bytes(pid),
                    start_extended_until: (cell.state() == WorkerState::Booting)
                        .then(|| cell.start_until())
                        .flatten()
                        .and_then(|until| match until.checked_sub(now) {
                            Some(ahead) => instant.checked_add(ns_to_duration(ahead)),
                            None => instant.checked_sub(ns_to_duration(now.saturating_sub(until))),
                        }),
                }
            })
            .collect();
        Snapshot {
            target: published.target,
            running: published.running,
            stopping: published.stopping,
            spawned: published.spawned,
            rolling: published.rolling,
            rolls: published.rolls,
            roll_abandoned: published.roll_abandoned,
            workers,
            history: published.history.iter().cloned().collect(),
        }
    }
}

/// The pool at one moment, as [`Handle::snapshot`] returns it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Snapshot {
    /// The number of workers the arbiter keeps.
    pub target: usize,
    /// Whether `run` is in its loop.
    pub running: bool,
    /// Whether a stop is in progress.
    pub stopping: bool,
    /// Workers forked since `run` began.
    pub spawned: u64,
    /// Whether a rolling restart is in progress. An abandoned one is not,
    /// even while its stand-in still covers the slot whose new worker failed.
    pub rolling: bool,
    /// Rolling restarts begun since `run` began: a layer that looks now and
    /// then still sees a roll that began and ended in between.
    pub rolls: u64,
    /// Why the last rolling restart was abandoned (a stand-in, or a slot's
    /// new worker, failed before it was ready: a crash-loop step, not a
    /// planned exit), as the log says it; `None` when it was not, or once
    /// another roll began. Scaling meanwhile does not change it.
    pub roll_abandoned: Option<String>,
    /// Live worker processes, by slot.
    pub workers: Vec<WorkerInfo>,
    /// Recent exits, oldest first.
    pub history: Vec<ExitRecord>,
}

impl Snapshot {
    /// Workers that declared themselves ready.
    pub fn ready_count(&self) -> usize {
        self.workers.iter().filter(|w| w.state.is_up()).count()
    }

    /// The latest instant until which a booting worker asked to boot
    /// ([`WorkerInfo::start_extended_until`]), if one did: until then the
    /// pool is still starting, whatever the start timeout says.
    pub fn start_extended_until(&self) -> Option<Instant> {
        self.workers
            .iter()
            .filter_map(|w| w.start_extended_until)
            .max()
    }
}

/// One live worker in a [`Snapshot`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Slot.
    pub slot: usize,
    /// Process id.
    pub pid: i32,
    /// Generation in the slot.
    pub generation: u32,
    /// State from the scoreboard.
    pub state: WorkerState,
    /// Time since fork.
    pub uptime: Duration,
    /// Time since the last heartbeat, if it ever beat.
    pub last_beat_age: Option<Duration>,
    /// How long the current request has been running, if busy.
    pub busy_for: Option<Duration>,
    /// Requests served.
    pub requests: u64,
    /// Workers this slot had before this one that ended without being asked.
    pub restarts: u32,
    /// What the worker says it is doing.
    pub activity: String,
    /// Resident memory in bytes, from /proc (None if unreadable).
    pub rss: Option<u64>,
    /// While the worker boots: until when it asked to boot
    /// ([`Vitals::extend_start`](crate::Vitals::extend_start)), in the past
    /// once that extension is over; `None` if it did not ask (or is no
    /// longer booting) or the instant cannot be represented. Its start
    /// deadline is the later of this and its fork plus the start timeout.
    pub start_extended_until: Option<Instant>,
}
