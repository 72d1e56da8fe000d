//! Health decisions of the scheduler: hang and boot deadlines, the SIGKILL
//! after an unanswered SIGTERM, stall detection, backoff, and the next
//! deadline the loop sleeps until. All time is `Instant`; a deadline that
//! cannot be represented is `None`, which means never.

use std::time::{Duration, Instant};

use super::{Action, Cells, Due, Observed, Scheduler, Sig};
use crate::ExitReason;
use crate::exit::human;

/// If `poll` returns this much later than asked (or half the heartbeat
/// timeout, if shorter, but at least [`STALL_FLOOR`]), the arbiter was not
/// running (SIGSTOP, a starved machine; CLOCK_MONOTONIC does not advance
/// in a suspend, so a suspend is no stall): workers get a fresh grace instead of being judged on beats taken
/// while everything, them included, may have been frozen.
pub(crate) const STALL: Duration = Duration::from_secs(1);
pub(crate) const STALL_FLOOR: Duration = Duration::from_millis(50);

/// The delay before the next spawn of a slot after `failures` crash-loop
/// steps in a row: none for the first, then `initial * 1.5^(n-2)`, capped at
/// `max` (and at `max` when the product is too large to represent).
pub(crate) fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exp = i32::try_from(failures.saturating_sub(2).min(256)).unwrap_or(256);
    let secs = initial.as_secs_f64() * 1.5f64.powi(exp);
    Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max))
}

/// How much lost time counts as a stall, for this heartbeat timeout.
pub(crate) fn stall_threshold(heartbeat_timeout: Option<Duration>) -> Duration {
    heartbeat_timeout.map_or(STALL, |t| t.saturating_div_2().clamp(STALL_FLOOR, STALL))
}

/// Half a duration (never overflows, never panics).
trait Half {
    fn saturating_div_2(self) -> Self;
}

impl Half for Duration {
    fn saturating_div_2(self) -> Self {
        self.checked_div(2).unwrap_or(Duration::ZERO)
    }
}

/// Adds a nanosecond: the loop wakes just after a deadline, not on it.
fn just_after(t: Instant) -> Option<Instant> {
    t.checked_add(Duration::from_nanos(1))
}

impl Scheduler {
    /// The top of a loop iteration: notices that the arbiter itself did not
    /// run for a while (more time went by than `poll` was asked to wait).
    /// Returns whether it did; then every worker gets a fresh grace.
    pub(crate) fn loop_top(&mut self, now: Instant) -> bool {
        let mut stalled = false;
        if let Some(prev) = self.prev_top {
            let (asked, slept) = self.last_poll;
            let expected = asked.map_or(slept, |a| a.min(slept));
            let lost = now.saturating_duration_since(prev).saturating_sub(expected);
            if lost > stall_threshold(self.settings.heartbeat_timeout) {
                log::warn!(
                    target: "ufork",
                    "the arbiter was not running for {} (stopped or starved); giving workers a fresh heartbeat grace",
                    human(lost)
                );
                self.resumed_at = Some(now);
                stalled = true;
            }
        }
        self.prev_top = Some(now);
        self.last_poll = (Some(Duration::ZERO), Duration::ZERO);
        stalled
    }

    /// `poll` was asked to wait `asked` (`None`: forever) and took `slept`.
    pub(crate) fn polled(&mut self, asked: Option<Duration>, slept: Duration) {
        self.last_poll = (asked, slept);
    }

    /// The instant from which a worker started at `started` is judged.
    fn judged_from(&self, t: Instant) -> Instant {
        self.resumed_at.map_or(t, |r| r.max(t))
    }

    /// When a worker started at `started` and still booting is killed for
    /// its start timeout: the start timeout after it started (or after the
    /// arbiter resumed from a stall), or later if the worker asked for more
    /// time ([`crate::Vitals::extend_start`]), as systemd's
    /// `EXTEND_TIMEOUT_USEC` does: an extension never shortens the timeout.
    /// `None`: never.
    fn start_deadline(&self, started: Instant, observed: &Observed) -> Option<Instant> {
        let timeout = self
            .judged_from(started)
            .checked_add(self.settings.start_timeout);
        match (timeout, observed.start_until) {
            (None, _) | (_, Some(Due::Never)) => None,
            (Some(t), Some(Due::At(until))) => Some(t.max(until)),
            (Some(t), Some(Due::Now) | None) => Some(t),
        }
    }

    /// Whether memory and descriptor limits are due for a check now; if so,
    /// the next check is scheduled.
    pub(crate) fn limits_due(&mut self, now: Instant) -> bool {
        let limits = self.settings.memory_limit.is_some() || self.settings.fd_limit.is_some();
        match self.next_limit_check {
            Some(at) if limits && now >= at => {
                self.next_limit_check = now.checked_add(self.settings.limit_interval);
                true
            }
            _ => false,
        }
    }

    /// Checks every live worker: SIGKILL after an unanswered SIGTERM, the
    /// start timeout, the heartbeat timeout, and recovery from a crash loop.
    pub(crate) fn check_health(&mut self, now: Instant, cells: &impl Cells) {
        for slot in 0..self.slots.len() {
            let observed = cells.observe(slot);
            let Some(proc) = self.slots[slot].proc.as_mut() else {
                continue;
            };
            if observed.state.is_up() {
                proc.ever_ready = true;
            }
            let (pid, started) = (proc.pid, proc.started);
            if proc.terminating {
                if proc.kill_at.is_some_and(|at| now >= at) {
                    log::warn!(
                        target: "ufork",
                        "worker {slot} pid {pid} did not exit within {} of SIGTERM; sending SIGKILL",
                        human(self.settings.graceful_timeout)
                    );
                    proc.kill_at = None;
                    proc.killed_at_deadline = true;
                    self.actions.push(Action::Signal {
                        slot,
                        pid,
                        signal: Sig::Kill,
                    });
                }
                continue;
            }
            if proc.reason.is_some() {
                continue;
            }
            let uptime = now.saturating_duration_since(started);
            if self.slots[slot].failures > 0 && uptime >= self.settings.min_uptime {
                if self.slots[slot].failures >= 2 {
                    log::info!(target: "ufork", "worker {slot} recovered: pid {pid} has been up {}", human(self.settings.min_uptime));
                }
                self.slots[slot].failures = 0;
                self.slots[slot].not_before = Due::Now;
                self.warn_if_wedged();
            }
            if observed.hung {
                let activity = cells.activity(slot);
                let state = observed.state;
                log::error!(
                    target: "ufork",
                    "worker {slot} pid {pid} declared itself hung while {state}{}; killing it",
                    if activity.is_empty() { String::new() } else { format!(" ({activity})") }
                );
                self.end_proc(slot, ExitReason::Hung { state, activity }, false, now);
                continue;
            }
            if observed.state == crate::WorkerState::Booting {
                let deadline = self.start_deadline(started, &observed);
                if deadline.is_some_and(|d| now > d) {
                    let timeout = self
                        .judged_from(started)
                        .checked_add(self.settings.start_timeout);
                    let extended = if deadline == timeout {
                        ""
                    } else {
                        ", as the worker extended it"
                    };
                    log::error!(
                        target: "ufork",
                        "worker {slot} pid {pid} not ready after {} (start timeout{extended}); killing it",
                        human(uptime)
                    );
                    self.end_proc(slot, ExitReason::BootTimedOut { after: uptime }, false, now);
                    continue;
                }
            }
            if extending(&observed, now) {
                continue;
            }
            if let (Some(timeout), Some(beat)) =
                (self.settings.heartbeat_timeout, observed.last_beat)
            {
                if now.saturating_duration_since(self.judged_from(beat)) > timeout {
                    let silent_for = now.saturating_duration_since(beat);
                    let activity = cells.activity(slot);
                    let state = observed.state;
                    log::error!(
                        target: "ufork",
                        "worker {slot} pid {pid} timed out: silent for {} (limit {}) while {state}{}; killing it",
                        human(silent_for),
                        human(timeout),
                        if activity.is_empty() { String::new() } else { format!(" ({activity})") }
                    );
                    let reason = ExitReason::TimedOut {
                        silent_for,
                        state,
                        activity,
                    };
                    self.end_proc(slot, reason, false, now);
                }
            }
        }
    }

    /// The earliest instant something can happen without an event: a
    /// SIGKILL deadline, a start or heartbeat timeout, the end of a backoff,
    /// crash-loop recovery, a limit check. `None` when nothing is due ever.
    pub(crate) fn next_deadline(&self, now: Instant, cells: &impl Cells) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for (slot, s) in self.slots.iter().enumerate() {
            let Some(p) = &s.proc else {
                if self.stop.is_none() && slot < self.target {
                    if let Due::At(at) = s.not_before {
                        consider(Some(at.max(now)));
                    }
                }
                continue;
            };
            if p.terminating {
                consider(p.kill_at);
                continue;
            }
            if p.reason.is_some() {
                continue;
            }
            if s.failures > 0 {
                consider(p.started.checked_add(self.settings.min_uptime));
            }
            let observed = cells.observe(slot);
            if observed.hung {
                consider(Some(now));
                continue;
            }
            if observed.state == crate::WorkerState::Booting {
                let since = self.judged_from(p.started);
                consider(
                    self.start_deadline(p.started, &observed)
                        .and_then(just_after),
                );
                // A booting worker may beat before it is ready, and its ready
                // note may have been skipped (no waiter then): wake once per
                // heartbeat timeout while it boots, never spinning on a
                // deadline already past.
                if let Some(t) = self.settings.heartbeat_timeout {
                    consider(next_period(since, now, t).and_then(just_after));
                }
                // While its extension runs its heartbeats are not judged;
                // they are again once it is over.
                if extending(&observed, now) {
                    let judged =
                        self.settings.heartbeat_timeout.is_some() && observed.last_beat.is_some();
                    if let (true, Some(Due::At(until))) = (judged, observed.start_until) {
                        consider(just_after(until));
                    }
                    continue;
                }
            }
            if let (Some(t), Some(beat)) = (self.settings.heartbeat_timeout, observed.last_beat) {
                consider(self.judged_from(beat).checked_add(t).and_then(just_after));
            }
        }
        let limits = self.settings.memory_limit.is_some() || self.settings.fd_limit.is_some();
        if limits && self.live() > 0 {
            consider(self.next_limit_check.map(|t| t.max(now)));
        }
        next
    }
}

/// Whether `observed` is a booting worker whose start extension
/// ([`crate::Vitals::extend_start`]) still runs at `now`. Such a worker is
/// judged by its start deadline alone, not by the heartbeat timeout: a
/// program that says "still loading" with `STATUS=` (a heartbeat) must not
/// then be killed for going quiet while it loads, as systemd applies
/// `WatchdogSec` only once a service has started.
fn extending(observed: &Observed, now: Instant) -> bool {
    observed.state == crate::WorkerState::Booting
        && match observed.start_until {
            Some(Due::Never) => true,
            Some(Due::At(until)) => until >= now,
            Some(Due::Now) | None => false,
        }
}

/// The first `since + k * period` (k ≥ 1) after `now`; `None` past the
/// representable range.
pub(crate) fn next_period(since: Instant, now: Instant, period: Duration) -> Option<Instant> {
    let elapsed = now.saturating_duration_since(since).as_nanos();
    let period_ns = period.as_nanos().max(1);
    let periods = elapsed.checked_div(period_ns)?.checked_add(1)?;
    let offset = u64::try_from(periods.checked_mul(period_ns)?).ok()?;
    since.checked_add(Duration::from_nanos(offset))
}
