//! The pool's health as an operator's tools see it: healthy, starting,
//! degraded or stopping, and the totals that outlive workers (requests
//! served, exits by reason). One [`Observer`] layer keeps them from the
//! arbiter's loop; `status json`, `/metrics`, `/healthz` and the supervisor
//! notifications all read the same [`View`].
//!
//! The tracker is one process-wide value because a `ufork` process runs one
//! pool, and the console command language (`status json`) only gets a
//! [`Handle`](ufork_core::Handle).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ufork_core::{Context, ExitRecord, Layer, Snapshot};

use crate::supervisor::Supervisor;

/// How the pool is doing, from the supervisor's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Every target worker is ready.
    Healthy,
    /// Fewer are ready than the target, for less than the start timeout: the
    /// pool is starting, or a replacement is booting.
    Starting,
    /// Fewer are ready than the target for longer than the start timeout.
    Degraded,
    /// A stop is in progress.
    Stopping,
}

impl Health {
    /// The lowercase name used in JSON, metrics and `STATUS=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Starting => "starting",
            Self::Degraded => "degraded",
            Self::Stopping => "stopping",
        }
    }
}

/// What the pool did over its whole life, not only its live workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests served by workers that have exited.
    pub requests_of_exited: u64,
    /// Exits by reason (`ExitReason::as_str`).
    pub exits: BTreeMap<&'static str, u64>,
    /// Exits the arbiter did not ask for (each one is a restart).
    pub restarts: u64,
}

/// The tracker's memory between looks at the pool.
#[derive(Debug)]
struct Tracker {
    start_timeout: Duration,
    started: Option<Instant>,
    /// Since when fewer workers than the target have been ready.
    short_since: Option<Instant>,
    totals: Totals,
}

static TRACKER: Mutex<Tracker> = Mutex::new(Tracker {
    start_timeout: Duration::from_secs(60),
    started: None,
    short_since: None,
    totals: Totals {
        requests_of_exited: 0,
        exits: BTreeMap::new(),
        restarts: 0,
    },
});

fn tracker() -> MutexGuard<'static, Tracker> {
    TRACKER.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tracker {
    fn observe(&mut self, snap: &Snapshot, now: Instant) {
        if snap.ready_count() >= snap.target {
            self.short_since = None;
        } else {
            self.short_since.get_or_insert(now);
        }
    }

    fn exited(&mut self, record: &ExitRecord) {
        let totals = &mut self.totals;
        totals.requests_of_exited = totals.requests_of_exited.saturating_add(record.requests);
        *totals.exits.entry(record.reason.as_str()).or_default() += 1;
        if !record.reason.is_requested() {
            totals.restarts += 1;
        }
    }
}

/// The pool as operators see it at one moment: the snapshot, its health and
/// the totals.
#[derive(Clone, Debug)]
pub struct View {
    /// The core's snapshot.
    pub snapshot: Snapshot,
    /// Derived health.
    pub health: Health,
    /// How long fewer workers than the target have been ready (zero if not).
    pub short_for: Duration,
    /// Since the arbiter's loop started.
    pub uptime: Duration,
    /// Lifetime totals.
    pub totals: Totals,
}

impl View {
    /// Requests served by every worker the pool ever had.
    pub fn requests_total(&self) -> u64 {
        self.snapshot
            .workers
            .iter()
            .fold(self.totals.requests_of_exited, |sum, w| {
                sum.saturating_add(w.requests)
            })
    }
}

/// Builds the view of `snapshot` now, from what the observer has seen.
pub fn view(snapshot: Snapshot) -> View {
    let now = Instant::now();
    let mut t = tracker();
    t.observe(&snapshot, now);
    let short_for = t
        .short_since
        .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
    let health = classify(
        snapshot.stopping || !snapshot.running,
        snapshot.ready_count(),
        snapshot.target,
        short_for,
        t.start_timeout,
        snapshot
            .start_extended_until()
            .is_some_and(|until| until >= now),
    );
    View {
        health,
        short_for,
        uptime: t
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
        totals: t.totals.clone(),
        snapshot,
    }
}

/// The health of a pool with `ready` of `target` workers ready, short of
/// ready workers for `short_for`; `extending` when a booting worker's start
/// extension (EXTEND_TIMEOUT_USEC, `Worker::extend_start`) still runs: its
/// start deadline is later than the start timeout, so the pool is starting.
fn classify(
    stopping: bool,
    ready: usize,
    target: usize,
    short_for: Duration,
    start_timeout: Duration,
    extending: bool,
) -> Health {
    if stopping {
        Health::Stopping
    } else if ready >= target {
        Health::Healthy
    } else if short_for > start_timeout && !extending {
        Health::Degraded
    } else {
        Health::Starting
    }
}

/// What `ufork status` ends with, given the pool's `status json` reply:
/// success, or [`Degraded`](crate::failure::Failure::Degraded) (exit code 4) naming how long the pool
/// has been short of workers.
///
/// # Errors
///
/// [`Degraded`](crate::failure::Failure::Degraded) when the reply says `"health":"degraded"`.
pub fn exit_status(json: &str) -> crate::failure::Result<()> {
    // Our own reply, in a fixed key order: no JSON parser needed to find it.
    if !json.contains(r#""health":"degraded""#) {
        return Ok(());
    }
    let field = |key: &str| {
        let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
        json[at..].split([',', '}']).next().map(str::to_owned)
    };
    Err(crate::failure::Failure::Degraded(format!(
        "degraded: {} of {} workers ready for {}s (longer than the start timeout)",
        field("ready").unwrap_or_default(),
        field("target").unwrap_or_default(),
        field("degraded_for_seconds").unwrap_or_default(),
    )))
}

/// How often at most the observer looks at the pool after an event.
const LOOK_INTERVAL: Duration = Duration::from_millis(50);

/// The layer that keeps the tracker current and tells the supervisor (when
/// one listens) what changed.
#[derive(Debug)]
pub struct Observer {
    supervisor: Option<Supervisor>,
    next_look: Instant,
    /// Something happened since the last look.
    pending: bool,
    /// When the pool turns degraded if nothing changes.
    degrades_at: Option<Instant>,
}

impl Observer {
    /// Observes a pool whose workers get `start_timeout` to become ready;
    /// notifies `supervisor` when the arbiter has one.
    pub fn new(start_timeout: Duration, supervisor: Option<Supervisor>) -> Self {
        tracker().start_timeout = start_timeout;
        Self {
            supervisor,
            next_look: Instant::now(),
            pending: true,
            degrades_at: None,
        }
    }

    fn look(&mut self, ctx: &Context<'_>, now: Instant) {
        self.pending = false;
        self.next_look = now + LOOK_INTERVAL;
        let view = view(ctx.handle().snapshot());
        self.degrades_at = match view.health {
            Health::Starting => {
                let timeout = tracker().start_timeout;
                let plain = timeout
                    .checked_sub(view.short_for)
                    .and_then(|left| now.checked_add(left));
                // A worker's extension may hold the pool starting for longer.
                let extended = view.snapshot.start_extended_until();
                plain
                    .max(extended)
                    .and_then(|at| at.checked_add(Duration::from_millis(1)))
            }
            _ => None,
        };
        if let Some(supervisor) = &mut self.supervisor {
            supervisor.update(&view);
        }
        // The end of a roll is published one loop iteration after its last
        // event, and nothing may wake the loop after that: look again while
        // one runs (only then; an idle pool is not woken).
        self.pending = view.snapshot.rolling;
    }
}

/// How long an ending arbiter waits for a supervisor whose queue is full
/// to take what it still holds (as long as the output's final flush).
const FINAL_DELIVERY: Duration = Duration::from_secs(5);

impl Layer for Observer {
    fn started(&mut self, _ctx: &mut Context<'_>) {
        tracker().started = Some(Instant::now());
    }

    fn exited(&mut self, record: &ExitRecord, _ctx: &mut Context<'_>) {
        tracker().exited(record);
        self.pending = true;
    }

    fn stopping(&mut self, _ctx: &mut Context<'_>) {
        if let Some(supervisor) = &mut self.supervisor {
            supervisor.stopping();
        }
    }

    fn stopped(&mut self) {
        if let Some(supervisor) = &mut self.supervisor {
            supervisor.finish(FINAL_DELIVERY);
        }
    }

    fn tick(&mut self, ctx: &mut Context<'_>) {
        let now = Instant::now();
        // An upgrade's new arbiter told to speak for the service at last:
        // what it held since its workers booted may be stale (its last look
        // may predate their readiness), so it looks first.
        if self
            .supervisor
            .as_ref()
            .is_some_and(|s| s.holding() && ufork_core::upgrade::speaks_for_service())
        {
            self.look(ctx, now);
        }
        if let Some(supervisor) = &mut self.supervisor {
            supervisor.watchdog(now);
        }
        if now >= self.next_look || self.degrades_at.is_some_and(|at| now >= at) {
            self.look(ctx, now);
        } else {
            // Every wake-up may follow a change (a worker ready, a roll
            // begun): look once more when the interval is over.
            self.pending = true;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let look = self.pending.then_some(self.next_look);
        let watchdog = self.supervisor.as_ref().and_then(Supervisor::next_watchdog);
        [look, watchdog, self.degrades_at]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_degraded_only_after_the_start_timeout() {
        let timeout = Duration::from_secs(60);
        let at = |secs| Duration::from_secs(secs);
        assert_eq!(
            classify(false, 2, 2, at(0), timeout, false),
            Health::Healthy
        );
        assert_eq!(
            classify(false, 1, 2, at(60), timeout, false),
            Health::Starting
        );
        assert_eq!(
            classify(false, 1, 2, at(61), timeout, false),
            Health::Degraded
        );
        assert_eq!(
            classify(true, 0, 2, at(600), timeout, false),
            Health::Stopping
        );
    }

    #[test]
    fn a_running_start_extension_keeps_the_pool_starting_past_the_start_timeout() {
        let timeout = Duration::from_secs(1);
        let at = |secs| Duration::from_secs(secs);
        assert_eq!(
            classify(false, 0, 1, at(3), timeout, true),
            Health::Starting
        );
        assert_eq!(
            classify(false, 0, 1, at(3), timeout, false),
            Health::Degraded
        );
        assert_eq!(classify(false, 1, 1, at(3), timeout, true), Health::Healthy);
        assert_eq!(classify(true, 0, 1, at(3), timeout, true), Health::Stopping);
    }

    #[test]
    fn status_exits_4_only_when_degraded() {
        assert!(exit_status(r#"{"target":2,"ready":2,"health":"healthy"}"#).is_ok());
        let degraded =
            r#"{"target":2,"ready":0,"health":"degraded","degraded_for_seconds":61.500}"#;
        match exit_status(degraded) {
            Err(crate::failure::Failure::Degraded(m)) => {
                assert_eq!(
                    m,
                    "degraded: 0 of 2 workers ready for 61.500s (longer than the start timeout)"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
