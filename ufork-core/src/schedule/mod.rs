//! The scheduler: every decision the monitor loop makes, with no system call.
//!
//! Events go in as method calls (the time as an [`Instant`], a worker forked
//! or not, an exit status, a command, what the scoreboard shows); actions come
//! out of [`Scheduler::take_actions`] (signal a worker) and
//! [`Scheduler::plan_spawns`] (fork a slot). The driver in `monitor.rs` does
//! the polling, forking, waiting and killing. Every deadline is computed with
//! checked arithmetic: `None` (or [`Due::Never`]) means never, so a huge
//! timeout is "never", not a wrap or a panic.

mod classify;
mod health;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::arbiter::{Settings, StopCause};
use crate::exit::human;
use crate::notes::{Note, NoteKind};
use crate::{ExitReason, ExitRecord, ExitStatus, Outcome, WorkerState};

/// What the scoreboard shows for a slot, as the scheduler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observed {
    /// The state the worker wrote.
    pub(crate) state: WorkerState,
    /// Its last heartbeat, if it ever beat.
    pub(crate) last_beat: Option<Instant>,
    /// It declared that its next exit is planned ([`crate::Worker::recycle`]).
    pub(crate) planned_exit: bool,
    /// Requests it served.
    pub(crate) requests: u64,
    /// It declared itself hung ([`crate::Vitals::declare_hung`]).
    pub(crate) hung: bool,
    /// Until when it asked to boot ([`crate::Vitals::extend_start`]):
    /// `None` if it did not ask, [`Due::Never`] past what an `Instant` holds.
    pub(crate) start_until: Option<Due>,
}

impl Observed {
    /// A freshly forked worker that has not written anything yet.
    #[cfg(test)]
    pub(crate) const BOOTING: Self = Self {
        state: WorkerState::Booting,
        last_beat: None,
        planned_exit: false,
        requests: 0,
        hung: false,
        start_until: None,
    };
}

/// Read access to the scoreboard (the real one, or a table in tests).
pub(crate) trait Cells {
    /// What slot `slot` shows now.
    fn observe(&self, slot: usize) -> Observed;
    /// The slot's activity text (quoted when a worker is killed for a hang).
    fn activity(&self, slot: usize) -> String;
}

/// A signal the scheduler asks the driver to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sig {
    /// SIGTERM (the driver also marks the cell `Stopping`).
    Term,
    /// SIGKILL.
    Kill,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send `signal` to the worker `pid` in `slot` (its group, with process
    /// groups).
    Signal { slot: usize, pid: i32, signal: Sig },
}

/// When a slot may be forked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Due {
    /// Now.
    #[default]
    Now,
    /// Not before this instant.
    At(Instant),
    /// Never (a backoff too long to represent).
    Never,
}

impl Due {
    fn after(now: Instant, delay: Duration) -> Self {
        if delay.is_zero() {
            return Self::Now;
        }
        now.checked_add(delay).map_or(Self::Never, Self::At)
    }

    fn reached(self, now: Instant) -> bool {
        match self {
            Self::Now => true,
            Self::At(at) => now >= at,
            Self::Never => false,
        }
    }
}

/// A worker process as the scheduler tracks it.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    pub(crate) generation: u32,
    pub(crate) started: Instant,
    /// Set when the arbiter decided this worker must go, and why.
    reason: Option<ExitReason>,
    /// SIGTERM was sent; SIGKILL follows at `kill_at` (`None`: never).
    terminating: bool,
    kill_at: Option<Instant>,
    /// SIGKILL was sent because the graceful timeout ran out.
    killed_at_deadline: bool,
    /// The scoreboard showed it ready at some point.
    ever_ready: bool,
}

/// One slot of the pool.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) next_generation: u32,
    pub(crate) proc: Option<Proc>,
    pub(crate) restarts: u32,
    /// Crash-loop steps in a row (see `classify::is_crash`).
    failures: u32,
    /// Its last worker failed to start: it crashed (a crash-loop step), or
    /// ended before it was ever ready for any reason but a requested stop or
    /// a planned recycle (a memory or descriptor limit too). A rolling
    /// restart whose new worker (or stand-in) went so is abandoned.
    failed_start: bool,
    not_before: Due,
    note: Option<Note>,
}

/// Where a rolling restart stands within its current slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The stand-in is forked and booting; the old worker serves.
    StandIn,
    /// The stand-in is ready and the old worker was asked to stop; the slot
    /// is refilled and its new worker boots.
    Replace,
    /// The slot's new worker is ready; the stand-in was asked to stop.
    Release,
}

/// The slot a rolling restart is replacing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Roll {
    slot: usize,
    /// Workers of this generation or older are the ones to replace.
    old: u32,
    /// The spare slot hosting the stand-in and the generation it is forked
    /// with; `None`: no spare slot, stop-then-start.
    stand_in: Option<(usize, u32)>,
    phase: Phase,
}

/// The stand-in of an abandoned roll, covering the slot whose new worker
/// failed before it was ready: it serves until the slot has a ready worker
/// newer than `old`, then is asked to stop. It is no roll: a new roll takes
/// it over as its own stand-in, beginning with `slot`. Once released (asked
/// to stop, or going on its own) it is kept until it is reaped, and no roll
/// takes a slot meanwhile: one process more than the target at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cover {
    slot: usize,
    /// Workers of this generation or older do not count as the slot's new
    /// worker.
    old: u32,
    /// The spare slot the stand-in runs in, and its generation.
    stand_in: (usize, u32),
    /// The stand-in no longer covers the slot: it was asked to stop, or is
    /// going on its own; it is waited for.
    released: bool,
}

#[derive(Debug)]
struct StopState {
    cause: StopCause,
    graceful: bool,
    killed_at_timeout: usize,
}

/// Fork these slots now (with these generations); `blocked` when the spawn
/// throttle held some back.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SpawnPlan {
    pub(crate) slots: Vec<(usize, u32)>,
    pub(crate) blocked: bool,
}

/// Whether [`Scheduler::stop`] began a stop (the driver then runs the
/// pre-stop hook and tells layers) or only made a running one immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopStep {
    Began,
    Hastened,
    Nothing,
}

/// The deciding half of the monitor loop.
#[derive(Debug)]
pub(crate) struct Scheduler {
    pub(crate) settings: Settings,
    pub(crate) slots: Vec<Slot>,
    pub(crate) target: usize,
    stop: Option<StopState>,
    rolling: VecDeque<usize>,
    roll: Option<Roll>,
    cover: Option<Cover>,
    pub(crate) history: VecDeque<ExitRecord>,
    pub(crate) spawned: u64,
    /// Rolling restarts begun since `run` started (published for layers).
    pub(crate) rolls: u64,
    /// Why the last rolling restart was abandoned (published for layers);
    /// `None` when it was not, or once another one begins.
    pub(crate) abandoned: Option<String>,
    actions: Vec<Action>,
    /// Workers judged on beats taken after this (a stall resets it).
    resumed_at: Option<Instant>,
    prev_top: Option<Instant>,
    /// What the last `poll` was asked to wait (`None`: forever) and how long
    /// it took.
    last_poll: (Option<Duration>, Duration),
    next_limit_check: Option<Instant>,
    wedge_warned: bool,
    /// The failure after which every slot had failed `give_up_after` times
    /// in a row; the driver then stops the pool.
    gave_up: Option<ExitRecord>,
}

impl Scheduler {
    pub(crate) fn new(settings: Settings, now: Instant) -> Self {
        // Slots grow with the largest pool asked for, not with the capacity:
        // every loop over them stays proportional to the pool.
        let mut slots = Vec::new();
        slots.resize_with(settings.workers, Slot::default);
        Self {
            target: settings.workers,
            settings,
            slots,
            stop: None,
            rolling: VecDeque::new(),
            roll: None,
            cover: None,
            history: VecDeque::new(),
            spawned: 0,
            rolls: 0,
            abandoned: None,
            actions: Vec::new(),
            resumed_at: None,
            prev_top: None,
            last_poll: (Some(Duration::ZERO), Duration::ZERO),
            next_limit_check: Some(now),
            wedge_warned: false,
            gave_up: None,
        }
    }

    /// The actions decided since the last call, in order.
    pub(crate) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub(crate) fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.proc.is_some()).count()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_some()
    }

    /// A stop was asked for and every worker is gone: the loop ends.
    pub(crate) fn finished(&self) -> bool {
        self.stop.is_some() && self.live() == 0
    }

    /// The slot whose live worker is `pid`.
    pub(crate) fn slot_of(&self, pid: i32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.proc.as_ref().is_some_and(|p| p.pid == pid))
    }

    fn booting(&self, cells: &impl Cells) -> usize {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| s.proc.is_some() && cells.observe(*i).state == WorkerState::Booting)
            .count()
    }

    // -- spawning ------------------------------------------------------------

    /// The slots to fork now: empty, due, within the target, and no more than
    /// the spawn throttle lets boot at once.
    pub(crate) fn plan_spawns(&self, now: Instant, cells: &impl Cells) -> SpawnPlan {
        let mut plan = SpawnPlan::default();
        if self.stop.is_some() {
            return plan;
        }
        let mut booting = self.booting(cells);
        for (slot, s) in self.slots.iter().enumerate().take(self.target) {
            if s.proc.is_some() || !s.not_before.reached(now) {
                continue;
            }
            if booting >= self.settings.max_booting {
                plan.blocked = true;
                break;
            }
            plan.slots.push((slot, s.next_generation));
            booting = booting.saturating_add(1);
        }
        if let (false, Some((slot, generation))) = (plan.blocked, self.stand_in_to_fork()) {
            if !self.slots[slot].not_before.reached(now) {
                // A failed fork of the stand-in is retried after its backoff.
            } else if booting >= self.settings.max_booting {
                plan.blocked = true;
            } else {
                plan.slots.push((slot, generation));
            }
        }
        plan
    }

    /// Whether something waits on a worker turning ready (the throttle, a
    /// rolling restart, a booting worker's first beat): then workers must
    /// send a note when they do, since ready is no system call.
    pub(crate) fn waiting_for_ready(&self, plan_blocked: bool, cells: &impl Cells) -> bool {
        plan_blocked || self.roll.is_some() || self.cover.is_some() || self.booting(cells) > 0
    }

    /// The driver forked `slot` as `pid`.
    pub(crate) fn spawned(&mut self, slot: usize, pid: i32, now: Instant) {
        let s = &mut self.slots[slot];
        let generation = s.next_generation;
        s.next_generation = generation.wrapping_add(1);
        s.proc = Some(Proc {
            pid,
            generation,
            started: now,
            reason: None,
            terminating: false,
            kill_at: None,
            killed_at_deadline: false,
            ever_ready: false,
        });
        self.spawned = self.spawned.saturating_add(1);
    }

    /// Preparing or forking `slot` failed: retry later, with backoff from the
    /// second failure in a row.
    pub(crate) fn spawn_failed(&mut self, slot: usize, now: Instant) {
        self.count_failure(slot, now, false);
    }

    /// One more crash-loop step for `slot`: the first is replaced at once,
    /// from the second on the slot waits `initial * 1.5^(n-2)` (capped).
    fn count_failure(&mut self, slot: usize, now: Instant, died: bool) {
        let s = &mut self.slots[slot];
        s.failures = s.failures.saturating_add(1);
        let delay = health::backoff(
            s.failures,
            self.settings.backoff_initial,
            self.settings.backoff_max,
        );
        s.not_before = Due::after(now, delay);
        if died && s.failures == 2 {
            log::warn!(
                target: "ufork",
                "worker {slot} is crash-looping ({} failures in a row); respawning with backoff, next in {}",
                s.failures,
                human(delay)
            );
        }
        self.warn_if_wedged();
    }

    fn warn_if_wedged(&mut self) {
        let end = self.target.min(self.slots.len());
        let failing = self.slots[..end].iter().filter(|s| s.failures >= 2).count();
        if self.target >= 2 && failing > self.target / 2 {
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

    // -- asking workers to go --------------------------------------------------

    /// Asks the worker in `slot` to go: SIGTERM with a SIGKILL deadline when
    /// `graceful`, SIGKILL now otherwise. The first reason given sticks.
    pub(crate) fn end_proc(
        &mut self,
        slot: usize,
        reason: ExitReason,
        graceful: bool,
        now: Instant,
    ) {
        let graceful_timeout = self.settings.graceful_timeout;
        let Some(proc) = self.slots.get_mut(slot).and_then(|s| s.proc.as_mut()) else {
            return;
        };
        if proc.reason.is_none() {
            proc.reason = Some(reason);
        }
        let (pid, signal) = if graceful {
            if proc.terminating {
                return;
            }
            proc.terminating = true;
            proc.kill_at = now.checked_add(graceful_timeout);
            (proc.pid, Sig::Term)
        } else {
            proc.kill_at = None;
            (proc.pid, Sig::Kill)
        };
        self.actions.push(Action::Signal { slot, pid, signal });
    }

    /// Recycles the worker in `slot` gracefully (a limit the driver found
    /// exceeded).
    pub(crate) fn recycle(&mut self, slot: usize, reason: ExitReason, now: Instant) {
        self.end_proc(slot, reason, true, now);
    }

    // -- commands ----------------------------------------------------------------

    /// Begins a stop, or makes a graceful one immediate.
    pub(crate) fn stop(&mut self, cause: StopCause, graceful: bool, now: Instant) -> StopStep {
        let step = match &mut self.stop {
            None => {
                self.stop = Some(StopState {
                    cause,
                    graceful,
                    killed_at_timeout: 0,
                });
                self.rolling.clear();
                self.roll = None;
                self.cover = None;
                StopStep::Began
            }
            Some(stop) if !graceful && stop.graceful => {
                stop.graceful = false;
                StopStep::Hastened
            }
            Some(_) => return StopStep::Nothing,
        };
        for slot in 0..self.slots.len() {
            if let (false, Some(p)) = (graceful, self.slots[slot].proc.as_mut()) {
                p.reason = Some(ExitReason::Stopped);
            }
            self.end_proc(slot, ExitReason::Stopped, graceful, now);
        }
        step
    }

    /// Whether a graceful stop is under way (a second Ctrl-C hastens it).
    pub(crate) fn stopping_gracefully(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.graceful)
    }

    /// What began the stop under way, if one is.
    pub(crate) fn stop_cause(&self) -> Option<&StopCause> {
        self.stop.as_ref().map(|s| &s.cause)
    }

    /// Scales by `delta` workers, never below one nor past the capacity.
    pub(crate) fn add_workers(&mut self, delta: isize, now: Instant) {
        let asked = self.target.saturating_add_signed(delta);
        if asked == 0 && self.target == 1 && self.stop.is_none() {
            log::info!(
                target: "ufork",
                "workers: 1 already, the fewest a pool runs (to stop it, stop the pool)"
            );
        }
        let wanted = asked.max(1);
        if wanted > self.settings.capacity {
            log::warn!(
                target: "ufork",
                "cannot grow to {wanted} workers: capacity is {}; growing to {}",
                self.settings.capacity,
                self.settings.capacity
            );
        }
        self.set_target(wanted.min(self.settings.capacity), now);
    }

    /// Sets the number of workers; extra ones stop gracefully.
    pub(crate) fn set_target(&mut self, target: usize, now: Instant) {
        let target = target.min(self.settings.capacity);
        if self.stop.is_some() || target == self.target {
            return;
        }
        log::info!(target: "ufork", "workers: {} -> {target}", self.target);
        for slot in target..self.target.max(target) {
            self.end_proc(slot, ExitReason::Stopped, true, now);
        }
        if target > self.slots.len() {
            self.slots.resize_with(target, Slot::default);
        }
        if let Some(roll) = &mut self.roll {
            if roll.stand_in.is_some_and(|(spare, _)| spare < target) {
                // The stand-in's slot is part of the pool now: it stays as a
                // regular worker, and this slot finishes stop-then-start.
                roll.stand_in = None;
            }
        }
        if self
            .cover
            .is_some_and(|c| c.stand_in.0 < target && !c.released)
        {
            // Likewise the stand-in of an abandoned roll: a regular worker
            // now, it no longer covers the slot.
            self.cover = None;
        }
        for slot in self.target..target {
            // A slot brought back by scaling starts fresh, with no backoff.
            self.slots[slot].failures = 0;
            self.slots[slot].not_before = Due::Now;
        }
        self.target = target;
    }

    /// Restarts (`graceful`) or kills the worker in `slot`.
    pub(crate) fn restart(&mut self, slot: usize, graceful: bool, now: Instant) {
        self.end_proc(slot, ExitReason::Stopped, graceful, now);
    }

    // -- rolling restart -----------------------------------------------------

    /// Restarts every worker, one slot at a time. A roll under way finishes
    /// its current slot, then starts over from the first; a slot the
    /// stand-in of an abandoned roll covers comes first.
    pub(crate) fn start_rolling(&mut self) {
        if self.stop.is_some() {
            return;
        }
        // A slot the stand-in of an abandoned roll covers comes first: the
        // roll takes that stand-in over and learns whether the slot's new
        // worker is ready before any ready worker is replaced.
        let first = self
            .cover
            .filter(|c| !c.released)
            .map(|c| c.slot)
            .filter(|&c| c < self.target);
        self.rolling = first
            .into_iter()
            .chain((0..self.target).filter(|&i| Some(i) != first))
            .collect();
        self.rolls = self.rolls.saturating_add(1);
        self.abandoned = None;
    }

    /// Whether a rolling restart is in progress (the stand-in of an
    /// abandoned roll, still covering its slot, is no roll).
    pub(crate) fn rolling(&self) -> bool {
        self.roll.is_some() || !self.rolling.is_empty()
    }

    /// Gives up the roll's remaining slots, saying why in the log and to
    /// layers.
    fn abandon(&mut self, why: String, consequence: &str) {
        log::error!(target: "ufork", "rolling restart abandoned: {why}; {consequence}");
        self.rolling.clear();
        self.abandoned = Some(why);
    }

    /// The spare slot a stand-in must be forked into now, with its
    /// generation.
    fn stand_in_to_fork(&self) -> Option<(usize, u32)> {
        let roll = self.roll?;
        let (spare, generation) = roll.stand_in?;
        let s = self.slots.get(spare)?;
        (roll.phase == Phase::StandIn
            && spare >= self.target
            && s.proc.is_none()
            && s.next_generation == generation)
            .then_some((spare, generation))
    }

    /// The first slot past the target with no worker, below the capacity.
    fn spare_slot(&mut self) -> Option<usize> {
        let spare = (self.target..self.settings.capacity)
            .find(|&i| self.slots.get(i).is_none_or(|s| s.proc.is_none()))?;
        if spare >= self.slots.len() {
            self.slots
                .resize_with(spare.saturating_add(1), Slot::default);
        }
        let s = &mut self.slots[spare];
        s.failures = 0;
        s.not_before = Due::Now;
        s.note = None;
        Some(spare)
    }

    /// The roll of `slot`, `None` when the slot never had a worker (nothing
    /// old to replace). An empty slot's next worker is its new one; a slot
    /// the stand-in of an abandoned roll covers keeps that stand-in, its
    /// worker (booting, or none) counting as old.
    fn begin_slot(&mut self, slot: usize, now: Instant) -> Option<Roll> {
        let (old, live) = {
            let s = &self.slots[slot];
            match &s.proc {
                Some(p) => (p.generation, true),
                None => (s.next_generation.checked_sub(1)?, false),
            }
        };
        if let Some(cover) = self.cover.filter(|c| c.slot == slot && !c.released) {
            self.cover = None;
            // A reload is the operator's new try: not held back by the
            // crash-loop backoff of the last one.
            self.slots[slot].not_before = Due::Now;
            if live {
                // Not ready (the stand-in would be gone), and from before
                // this roll: it makes way for a new one.
                self.end_proc(slot, ExitReason::Stopped, true, now);
            }
            return Some(Roll {
                slot,
                old,
                stand_in: Some(cover.stand_in),
                phase: Phase::Replace,
            });
        }
        let stand_in = if live {
            let spare = self.spare_slot();
            if spare.is_none() {
                log::warn!(
                    target: "ufork",
                    "rolling restart: no spare slot for worker {slot}'s replacement (capacity {} reached); it stops before its replacement starts",
                    self.settings.capacity
                );
            }
            spare.map(|spare| (spare, self.slots[spare].next_generation))
        } else {
            None
        };
        Some(Roll {
            slot,
            old,
            stand_in,
            phase: Phase::StandIn,
        })
    }

    /// Moves the rolling restart on. Within a slot: fork a stand-in into a
    /// spare slot, and once it is ready stop the old worker; refill the slot,
    /// and once its new worker is ready stop the stand-in; when the stand-in
    /// is gone, take the next slot. So every slot has a ready worker
    /// throughout (the stand-in covers for it), with at most one process more
    /// than the target: the slot is refilled only once its old worker
    /// exited. The stand-in boots under the spawn throttle (`max_booting`).
    /// A stand-in that fails before it is ready abandons the roll (the old
    /// workers keep serving). So does a slot's new worker that fails before
    /// it is ready (a crash-loop step: not one that exited as planned), but
    /// the stand-in keeps covering the slot (a [`Cover`], no roll), which is
    /// refilled like any slot whose worker failed (crash-loop backoff), and
    /// is stopped only once the slot has a ready worker again; meanwhile the
    /// slot does not count toward giving up. A new roll begins with that
    /// slot and takes the stand-in over (no second stand-in for it), then
    /// goes on to the others; once that stand-in was asked to stop (or goes
    /// on its own), a new roll begins only after it has exited. Without a spare slot (capacity reached) the old
    /// worker stops before its replacement is forked, as the warning says.
    pub(crate) fn advance_rolling(&mut self, now: Instant, cells: &impl Cells) {
        if self.stop.is_some() {
            return;
        }
        self.advance_cover(now, cells);
        loop {
            if let Some(roll) = self.roll {
                match self.advance_slot(roll, now, cells) {
                    Some(next) if next == roll => return,
                    Some(next) => {
                        self.roll = Some(next);
                        continue;
                    }
                    None => self.roll = None,
                }
            }
            if self.cover.is_some_and(|c| c.released) {
                // The last stand-in is still going: the next slot waits, so
                // no second stand-in (or, at capacity, no stop-then-start of
                // a serving worker) joins it.
                return;
            }
            match self.rolling.pop_front() {
                Some(slot) if slot < self.target => self.roll = self.begin_slot(slot, now),
                Some(_) => {}
                None => return,
            }
        }
    }

    /// One step of the current slot: its next state, `None` when it is done.
    fn advance_slot(&mut self, roll: Roll, now: Instant, cells: &impl Cells) -> Option<Roll> {
        let slot = roll.slot;
        let Some((spare, generation)) = roll.stand_in else {
            return self.advance_in_place(roll, now, cells);
        };
        let old_live = |s: &Self| {
            s.slots[slot]
                .proc
                .as_ref()
                .is_some_and(|p| p.generation <= roll.old)
        };
        if slot >= self.target && roll.phase != Phase::Release {
            // Scaled away meanwhile: the old worker is stopping already.
            self.end_proc(spare, ExitReason::Stopped, true, now);
            return Some(Roll {
                phase: Phase::Release,
                ..roll
            });
        }
        match roll.phase {
            Phase::StandIn => match &self.slots[spare].proc {
                None if self.slots[spare].next_generation == generation => Some(roll),
                None if !self.slots[spare].failed_start => {
                    // It turned ready and exited as planned (or was stopped)
                    // before the arbiter looked: a new stand-in is forked.
                    Some(Roll {
                        stand_in: Some((spare, self.slots[spare].next_generation)),
                        ..roll
                    })
                }
                None => {
                    let why = format!(
                        "worker {slot}'s stand-in (in slot {spare}){} failed before it was ready",
                        self.failed_worker(spare, generation)
                    );
                    self.abandon(why, "the old workers keep serving");
                    None
                }
                Some(p) if p.reason.is_none() && cells.observe(spare).state.is_up() => {
                    if old_live(self) {
                        self.end_proc(slot, ExitReason::Stopped, true, now);
                    }
                    Some(Roll {
                        phase: Phase::Replace,
                        ..roll
                    })
                }
                Some(_) => Some(roll), // booting, or killed at the start timeout
            },
            Phase::Replace => {
                let s = &self.slots[slot];
                let ready = s.proc.as_ref().is_some_and(|p| {
                    p.generation > roll.old
                        && p.reason.is_none()
                        && cells.observe(slot).state.is_up()
                });
                if ready {
                    self.end_proc(spare, ExitReason::Stopped, true, now);
                    return Some(Roll {
                        phase: Phase::Release,
                        ..roll
                    });
                }
                // The old worker's exit left `next_generation` at the first
                // new one: past it, a new worker was forked and is gone
                // without having been ready. Only a failure (a crash-loop
                // step: it failed, or was killed at the start timeout)
                // abandons the roll; one that turned ready and exited as
                // planned before the arbiter looked is simply replaced.
                let first_new = roll.old.wrapping_add(1);
                if s.proc.is_some() || s.next_generation == first_new || !s.failed_start {
                    return Some(roll); // draining, booting, or about to fork
                }
                let why = format!(
                    "worker {slot}'s new worker{} failed before it was ready",
                    self.failed_worker(slot, first_new)
                );
                let stand_in = self.slots[spare].proc.as_ref().map(|p| p.reason.is_none());
                let consequence = abandon_consequence(slot, spare, stand_in);
                self.abandon(why, &consequence);
                if stand_in.is_some() {
                    self.cover = Some(Cover {
                        slot,
                        old: roll.old,
                        stand_in: (spare, generation),
                        released: stand_in == Some(false),
                    });
                }
                None
            }
            Phase::Release => self.slots[spare].proc.as_ref().map(|_| roll),
        }
    }

    /// ` (pid P, generation G; failed: exit code 1)` for the last exit of
    /// `slot` from `generation` on, as the history has it (empty if it does
    /// not: a history of 0).
    fn failed_worker(&self, slot: usize, generation: u32) -> String {
        self.history
            .iter()
            .rev()
            .find(|r| r.slot == slot && r.generation >= generation)
            .map_or_else(String::new, |r| {
                let message = r
                    .message
                    .as_deref()
                    .map_or(String::new(), |m| format!(": {m}"));
                format!(
                    " (pid {}, generation {}; {}: {}{message})",
                    r.pid, r.generation, r.reason, r.status
                )
            })
    }

    /// Stop-then-start (no spare slot): stop the old worker, wait for its
    /// replacement to be ready.
    fn advance_in_place(&mut self, roll: Roll, now: Instant, cells: &impl Cells) -> Option<Roll> {
        let slot = roll.slot;
        let s = &self.slots[slot];
        match &s.proc {
            Some(p) if p.generation <= roll.old => {
                if p.reason.is_none() {
                    self.end_proc(slot, ExitReason::Stopped, true, now);
                }
                Some(roll)
            }
            Some(p) if p.reason.is_none() && cells.observe(slot).state.is_up() => None,
            Some(_) => Some(roll), // booting, or being killed: see how it ends
            None if slot >= self.target => None,
            // Two generations past the old one: a new worker was forked and
            // is gone without having been ready; a failure (not a planned
            // exit) abandons the roll.
            None if s.failed_start && s.next_generation.wrapping_sub(roll.old) >= 2 => {
                let why = format!(
                    "worker {slot}'s new worker{} failed before it was ready",
                    self.failed_worker(slot, roll.old.wrapping_add(1))
                );
                self.abandon(why, "the workers not replaced yet keep serving");
                None
            }
            None => Some(roll), // about to fork (maybe after a backoff)
        }
    }

    /// The stand-in of an abandoned roll: asked to stop once its slot has a
    /// ready new worker, or once the slot is scaled away; released then (or
    /// when it goes on its own), and forgotten once it is reaped.
    fn advance_cover(&mut self, now: Instant, cells: &impl Cells) {
        let Some(cover) = self.cover else {
            return;
        };
        let (slot, (spare, generation)) = (cover.slot, cover.stand_in);
        let stand_in = self.slots.get(spare).and_then(|s| s.proc.as_ref());
        let Some(stand_in) = stand_in.filter(|p| p.generation == generation) else {
            self.cover = None; // reaped
            return;
        };
        if cover.released {
            return;
        }
        let going = stand_in.reason.is_some();
        let ready = self.slots[slot].proc.as_ref().is_some_and(|p| {
            p.generation > cover.old && p.reason.is_none() && cells.observe(slot).state.is_up()
        });
        if ready || slot >= self.target {
            self.end_proc(spare, ExitReason::Stopped, true, now);
        }
        if ready || slot >= self.target || going {
            self.cover = Some(Cover {
                released: true,
                ..cover
            });
        }
    }

    // -- exits ---------------------------------------------------------------

    /// A worker's error or panic note arrived.
    pub(crate) fn note(&mut self, note: Note) {
        if matches!(note.kind, NoteKind::Ready | NoteKind::Wake) {
            return; // the wake-up was the point
        }
        if let Some(slot) = self.slots.get_mut(note.slot) {
            slot.note = Some(note);
        }
    }

    /// The worker in `slot` was reaped with `status`; `last` is what its cell
    /// showed then, `oom` whether the kernel's OOM killer acted meanwhile.
    /// Returns the exit record (`None` if the slot had no worker).
    pub(crate) fn exited(
        &mut self,
        slot: usize,
        status: ExitStatus,
        last: &Observed,
        oom: bool,
        now: Instant,
        at: SystemTime,
    ) -> Option<ExitRecord> {
        let s = self.slots.get_mut(slot)?;
        let proc = s.proc.take()?;
        let uptime = now.saturating_duration_since(proc.started);
        let note = s.note.take().filter(|n| n.generation == proc.generation);
        let ever_ready = proc.ever_ready || last.state.is_up();
        let reason = classify::reason(
            proc.reason,
            note.as_ref().map(|n| n.kind),
            last.planned_exit,
            status,
        );
        let crash = classify::is_crash(
            &reason,
            status,
            ever_ready,
            uptime,
            self.settings.min_uptime,
        );
        if classify::counts_as_restart(&reason) {
            s.restarts = s.restarts.saturating_add(1);
        }
        let record = ExitRecord {
            pid: proc.pid,
            slot,
            generation: proc.generation,
            status,
            reason,
            message: note.map(|n| n.text).filter(|t| !t.is_empty()),
            uptime,
            at,
            requests: last.requests,
            oom_killed: oom && status == ExitStatus::Signal(libc::SIGKILL),
        };
        if proc.killed_at_deadline && status == ExitStatus::Signal(libc::SIGKILL) {
            if let Some(stop) = &mut self.stop {
                stop.killed_at_timeout = stop.killed_at_timeout.saturating_add(1);
            }
        }
        self.slots[slot].failed_start = crash
            || (!ever_ready
                && !matches!(record.reason, ExitReason::Stopped | ExitReason::Recycled));
        if crash {
            self.count_failure(slot, now, true);
            if self.gave_up.is_none() && self.stop.is_none() && self.cannot_start() {
                self.gave_up = Some(record.clone());
            }
        } else {
            let s = &mut self.slots[slot];
            s.failures = 0;
            s.not_before = Due::Now;
            self.warn_if_wedged();
        }
        if self.settings.history > 0 {
            while self.history.len() >= self.settings.history {
                self.history.pop_front();
            }
            self.history.push_back(record.clone());
        }
        Some(record)
    }

    /// Whether every slot has failed `give_up_after` times in a row. A slot
    /// a live stand-in covers (of an abandoned roll, or of the roll under
    /// way once the old worker was asked to go) is served: the pool does not
    /// give up while it is.
    fn cannot_start(&self) -> bool {
        let n = self.settings.give_up_after;
        let end = self.target.min(self.slots.len());
        let covered = self.covered_slot();
        n > 0
            && end > 0
            && self.slots[..end]
                .iter()
                .enumerate()
                .all(|(i, s)| s.failures >= n && covered != Some(i))
    }

    /// The slot a live stand-in serves in place of its own worker.
    fn covered_slot(&self) -> Option<usize> {
        let roll = self
            .roll
            .filter(|r| r.phase == Phase::Replace)
            .and_then(|r| Some((r.slot, r.stand_in?.0)));
        let (slot, spare) = self.cover.map(|c| (c.slot, c.stand_in.0)).or(roll)?;
        self.slots
            .get(spare)
            .and_then(|s| s.proc.as_ref())
            .is_some_and(|p| p.reason.is_none())
            .then_some(slot)
    }

    /// The failure that made the scheduler give up, once: the driver stops
    /// the pool with [`StopCause::GaveUp`].
    pub(crate) fn take_give_up(&mut self) -> Option<ExitRecord> {
        if self.stop.is_some() {
            return None;
        }
        self.gave_up.clone()
    }

    /// What `run` returns.
    pub(crate) fn outcome(&self) -> Outcome {
        let (cause, graceful, killed_at_timeout) = self
            .stop
            .as_ref()
            .map_or((StopCause::Handle, true, 0), |s| {
                (s.cause, s.graceful, s.killed_at_timeout)
            });
        Outcome {
            cause,
            graceful,
            killed_at_timeout,
            spawned: self.spawned,
            history: self.history.iter().cloned().collect(),
            last_failure: self.gave_up.clone(),
        }
    }
}

/// What an abandoned roll leaves of slot `slot` (the log line's second
/// half), its stand-in in `spare` live (`Some(true)`), going (`Some(false)`),
/// or gone (`None`).
fn abandon_consequence(slot: usize, spare: usize, stand_in: Option<bool>) -> String {
    match stand_in {
        Some(true) => format!(
            "the stand-in (slot {spare}) serves in its place until a new worker of slot {slot} is ready (a reload meanwhile begins there), and the workers not replaced yet keep serving"
        ),
        Some(false) => format!(
            "the stand-in (slot {spare}) is going too, so nothing serves in its place; the workers not replaced yet keep serving"
        ),
        None => format!(
            "the stand-in (slot {spare}) is gone too, so nothing serves in its place; the workers not replaced yet keep serving"
        ),
    }
}
