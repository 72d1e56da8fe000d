//! Table-driven tests of the scheduler: no fork, no clock, no system call.
#![allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::classify::{is_crash, reason};
use super::health::{backoff, next_period, stall_threshold};
use super::*;
use crate::notes::NoteKind;
use crate::{ExitReason as R, ExitStatus as S};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A scoreboard as a table: slot -> what it shows (empty by default).
#[derive(Default)]
struct Board(RefCell<HashMap<usize, Observed>>);

impl Board {
    fn set(&self, slot: usize, state: WorkerState, last_beat: Option<Instant>) {
        let mut map = self.0.borrow_mut();
        let o = map.entry(slot).or_insert(Observed::BOOTING);
        o.state = state;
        o.last_beat = last_beat;
    }
    fn plan_exit(&self, slot: usize) {
        self.0
            .borrow_mut()
            .entry(slot)
            .or_insert(Observed::BOOTING)
            .planned_exit = true;
    }
    fn clear(&self, slot: usize) {
        self.0.borrow_mut().remove(&slot);
    }
    fn extend_start(&self, slot: usize, until: Due) {
        self.0
            .borrow_mut()
            .entry(slot)
            .or_insert(Observed::BOOTING)
            .start_until = Some(until);
    }
    fn declare_hung(&self, slot: usize) {
        self.0
            .borrow_mut()
            .entry(slot)
            .or_insert(Observed::BOOTING)
            .hung = true;
    }
}

impl Cells for Board {
    fn observe(&self, slot: usize) -> Observed {
        self.0.borrow().get(&slot).cloned().unwrap_or(Observed {
            state: WorkerState::Empty,
            ..Observed::BOOTING
        })
    }
    fn activity(&self, _: usize) -> String {
        "GET /slow".to_owned()
    }
}

fn settings(workers: usize) -> Settings {
    Settings {
        workers,
        capacity: 64,
        ..Settings::default()
    }
}

/// A scheduler with `workers` workers, each forked at `t0` (pid 100 + slot)
/// and shown as `state` on the board.
fn running(settings: Settings, t0: Instant, board: &Board, state: WorkerState) -> Scheduler {
    let mut s = Scheduler::new(settings, t0);
    let plan = s.plan_spawns(t0, board);
    for (slot, _) in plan.slots {
        s.spawned(slot, 100 + slot as i32, t0);
        board.set(slot, state, None);
    }
    s
}

fn signals(s: &mut Scheduler) -> Vec<(usize, Sig)> {
    s.take_actions()
        .into_iter()
        .map(|Action::Signal { slot, signal, .. }| (slot, signal))
        .collect()
}

/// Reaps the worker of `slot` with `status` at `now`, as the driver does.
fn reap(s: &mut Scheduler, board: &Board, slot: usize, status: S, now: Instant) -> ExitRecord {
    let last = board.observe(slot);
    board.clear(slot);
    s.exited(slot, status, &last, false, now, SystemTime::UNIX_EPOCH)
        .expect("a worker in the slot")
}

#[test]
fn backoff_starts_at_the_second_failure_grows_by_half_and_is_capped() {
    let table = [
        // (failures, initial, max) -> delay
        ((0, 100 * MS, 30 * SEC), Duration::ZERO),
        ((1, 100 * MS, 30 * SEC), Duration::ZERO),
        ((2, 100 * MS, 30 * SEC), 100 * MS),
        ((3, 100 * MS, 30 * SEC), 150 * MS),
        ((4, 100 * MS, 30 * SEC), 225 * MS),
        ((40, 100 * MS, 30 * SEC), 30 * SEC),
        ((u32::MAX, 100 * MS, 30 * SEC), 30 * SEC),
        ((u32::MAX, Duration::MAX, Duration::MAX), Duration::MAX),
        ((5, Duration::ZERO, Duration::ZERO), Duration::ZERO),
    ];
    for ((failures, initial, max), want) in table {
        let got = backoff(failures, initial, max);
        let off = got.abs_diff(want);
        assert!(
            off < MS,
            "{failures} failures, {initial:?}..{max:?}: {got:?}, want {want:?}"
        );
    }
}

#[test]
fn exit_reasons_are_derived_from_request_note_plan_and_status() {
    let stopped = Some(R::Stopped);
    let hung = Some(R::BootTimedOut { after: SEC });
    let table = [
        // (asked, note, planned, status) -> reason
        ((None, None, false, S::Code(0)), R::Exited),
        ((None, None, true, S::Code(0)), R::Recycled),
        ((None, None, true, S::Code(3)), R::Failed),
        ((None, None, true, S::Signal(9)), R::Killed),
        ((None, None, false, S::Code(1)), R::Failed),
        ((None, None, false, S::Signal(11)), R::Killed),
        (
            (None, Some(NoteKind::Panicked), false, S::Code(101)),
            R::Panicked,
        ),
        ((stopped.clone(), None, false, S::Signal(15)), R::Stopped),
        (
            (stopped.clone(), Some(NoteKind::Failed), false, S::Code(70)),
            R::Failed,
        ),
        (
            (hung.clone(), Some(NoteKind::Failed), false, S::Signal(9)),
            hung.clone().unwrap(),
        ),
    ];
    for ((asked, note, planned, status), want) in table {
        assert_eq!(
            reason(asked.clone(), note, planned, status),
            want,
            "{asked:?} {note:?} {planned} {status:?}"
        );
    }
}

#[test]
fn only_a_crash_loop_step_counts_as_a_failure() {
    let young = 100 * MS;
    let old = 5 * SEC;
    let hang = R::TimedOut {
        silent_for: SEC,
        state: WorkerState::Busy,
        activity: String::new(),
    };
    let table = [
        // (reason, status, ever ready, uptime) -> crash
        ((R::Failed, S::Code(1), true, young), true),
        ((R::Failed, S::Code(1), true, old), false),
        ((R::Killed, S::Signal(libc::SIGSEGV), true, young), true),
        ((R::Killed, S::Signal(libc::SIGABRT), true, young), true),
        // Killed from outside once ready: an operator's kill -9, the OOM
        // killer, a stray SIGTERM.
        ((R::Killed, S::Signal(libc::SIGKILL), true, young), false),
        ((R::Killed, S::Signal(libc::SIGTERM), true, young), false),
        // Never ready: whatever ended it, however old.
        ((R::Killed, S::Signal(libc::SIGKILL), false, old), true),
        (
            (R::BootTimedOut { after: old }, S::Signal(9), false, old),
            true,
        ),
        ((hang.clone(), S::Signal(9), true, young), true),
        ((hang, S::Signal(9), true, old), false),
        // Planned and requested exits never are.
        ((R::Recycled, S::Code(0), true, young), false),
        ((R::Stopped, S::Signal(15), false, young), false),
        (
            (R::OverMemory { rss: 2, limit: 1 }, S::Code(0), true, young),
            false,
        ),
        // An exit nobody planned, young: the program keeps ending at once.
        ((R::Exited, S::Code(0), true, young), true),
        ((R::Exited, S::Code(0), true, old), false),
    ];
    for ((r, status, ready, uptime), want) in table {
        assert_eq!(
            is_crash(&r, status, ready, uptime, SEC),
            want,
            "{r:?} {status:?} ready={ready} {uptime:?}"
        );
    }
}

#[test]
fn the_throttle_lets_max_booting_workers_boot_at_once() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = Scheduler::new(
        Settings {
            max_booting: 2,
            ..settings(5)
        },
        t0,
    );
    let plan = s.plan_spawns(t0, &board);
    assert_eq!(plan.slots, vec![(0, 0), (1, 0)]);
    assert!(plan.blocked);
    for (slot, _) in plan.slots {
        s.spawned(slot, 100 + slot as i32, t0);
        board.set(slot, WorkerState::Booting, None);
    }
    assert!(s.waiting_for_ready(false, &board));
    let plan = s.plan_spawns(t0, &board);
    assert_eq!((plan.slots.len(), plan.blocked), (0, true));
    board.set(0, WorkerState::Ready, Some(t0));
    assert_eq!(s.plan_spawns(t0, &board).slots, vec![(2, 0)]);
}

#[test]
fn first_failure_is_replaced_at_once_and_backoff_starts_at_the_second() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(1), t0, &board, WorkerState::Ready);
    let t1 = t0 + 10 * MS;
    let r = reap(&mut s, &board, 0, S::Code(1), t1);
    assert_eq!((r.reason, s.slots[0].restarts), (R::Failed, 1));
    assert_eq!(
        s.plan_spawns(t1, &board).slots,
        vec![(0, 1)],
        "first failure: at once"
    );
    s.spawned(0, 200, t1);
    board.set(0, WorkerState::Ready, None);
    let t2 = t1 + 10 * MS;
    reap(&mut s, &board, 0, S::Code(1), t2);
    assert!(
        s.plan_spawns(t2, &board).slots.is_empty(),
        "second: backoff"
    );
    assert_eq!(s.next_deadline(t2, &board), Some(t2 + 100 * MS));
    assert_eq!(s.plan_spawns(t2 + 100 * MS, &board).slots, vec![(0, 2)]);
}

#[test]
fn planned_exits_and_outside_kills_are_replaced_at_once() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(1), t0, &board, WorkerState::Ready);
    // Ten young planned exits in a row: never a backoff, never a restart.
    let mut t = t0;
    for generation in 1..=10 {
        t += MS;
        board.plan_exit(0);
        let r = reap(&mut s, &board, 0, S::Code(0), t);
        assert_eq!(r.reason, R::Recycled);
        assert_eq!(s.plan_spawns(t, &board).slots, vec![(0, generation)]);
        s.spawned(0, 100, t);
        board.set(0, WorkerState::Ready, None);
    }
    assert_eq!(s.slots[0].restarts, 0);
    // Ready workers SIGKILLed from outside, young, again and again: replaced
    // at once each time (counted as restarts, and not as out of memory).
    for _ in 0..5 {
        t += MS;
        let r = reap(&mut s, &board, 0, S::Signal(libc::SIGKILL), t);
        assert_eq!(r.reason, R::Killed);
        assert!(!r.oom_killed);
        assert!(!r.to_string().contains("out of memory"), "{r}");
        assert_eq!(s.plan_spawns(t, &board).slots.len(), 1);
        s.spawned(0, 100, t);
        board.set(0, WorkerState::Ready, None);
    }
    assert_eq!(s.slots[0].restarts, 5);
}

#[test]
fn an_oom_kill_is_named_only_when_the_oom_killer_moved() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(1), t0, &board, WorkerState::Ready);
    let last = board.observe(0);
    let r = s
        .exited(
            0,
            S::Signal(libc::SIGKILL),
            &last,
            true,
            t0 + SEC,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
    assert!(r.oom_killed);
    assert!(r.to_string().contains("OOM killer"), "{r}");
}

#[test]
fn a_hang_is_killed_after_the_heartbeat_timeout_and_not_before() {
    let t0 = Instant::now();
    let board = Board::default();
    let hb = Settings {
        heartbeat_timeout: Some(SEC),
        ..settings(1)
    };
    let mut s = running(hb, t0, &board, WorkerState::Busy);
    board.set(0, WorkerState::Busy, Some(t0));
    assert_eq!(
        s.next_deadline(t0, &board),
        Some(t0 + SEC + Duration::from_nanos(1))
    );
    s.check_health(t0 + SEC, &board);
    assert!(signals(&mut s).is_empty(), "at the limit, not past it");
    s.check_health(t0 + SEC + MS, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    let r = reap(&mut s, &board, 0, S::Signal(9), t0 + 2 * SEC);
    assert!(matches!(r.reason, R::TimedOut { ref activity, .. } if activity == "GET /slow"));
}

#[test]
fn a_worker_never_ready_is_killed_at_the_start_timeout() {
    let t0 = Instant::now();
    let board = Board::default();
    let st = Settings {
        start_timeout: 10 * SEC,
        ..settings(1)
    };
    let mut s = running(st, t0, &board, WorkerState::Booting);
    s.check_health(t0 + 10 * SEC, &board);
    assert!(signals(&mut s).is_empty());
    s.check_health(t0 + 11 * SEC, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    let r = reap(&mut s, &board, 0, S::Signal(9), t0 + 11 * SEC);
    assert_eq!(r.reason, R::BootTimedOut { after: 11 * SEC });
}

#[test]
fn a_booting_worker_that_extends_its_start_lives_until_the_extension_ends() {
    let t0 = Instant::now();
    let board = Board::default();
    let st = Settings {
        start_timeout: 10 * SEC,
        ..settings(1)
    };
    let mut s = running(st, t0, &board, WorkerState::Booting);
    // EXTEND_TIMEOUT_USEC=25000000 at 5 s: may boot until 30 s.
    board.extend_start(0, Due::At(t0 + 30 * SEC));
    assert_eq!(
        s.next_deadline(t0 + 5 * SEC, &board),
        Some(t0 + 30 * SEC + Duration::from_nanos(1))
    );
    s.check_health(t0 + 11 * SEC, &board);
    assert!(
        signals(&mut s).is_empty(),
        "past the start timeout, within the extension"
    );
    s.check_health(t0 + 30 * SEC, &board);
    assert!(
        signals(&mut s).is_empty(),
        "at the extension's end, not past it"
    );
    s.check_health(t0 + 30 * SEC + MS, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    let r = reap(&mut s, &board, 0, S::Signal(9), t0 + 31 * SEC);
    assert_eq!(
        r.reason,
        R::BootTimedOut {
            after: 30 * SEC + MS
        }
    );
}

#[test]
fn an_extension_never_shortens_the_start_timeout() {
    let t0 = Instant::now();
    let board = Board::default();
    let st = Settings {
        start_timeout: 10 * SEC,
        ..settings(1)
    };
    let mut s = running(st, t0, &board, WorkerState::Booting);
    // EXTEND_TIMEOUT_USEC=1000000 at 2 s: the start timeout is later.
    board.extend_start(0, Due::At(t0 + 3 * SEC));
    assert_eq!(
        s.next_deadline(t0 + 2 * SEC, &board),
        Some(t0 + 10 * SEC + Duration::from_nanos(1))
    );
    s.check_health(t0 + 5 * SEC, &board);
    assert!(signals(&mut s).is_empty());
    s.check_health(t0 + 10 * SEC + MS, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
}

#[test]
fn an_extending_worker_holds_its_max_booting_place_past_the_start_timeout() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = Scheduler::new(
        Settings {
            max_booting: 1,
            start_timeout: SEC,
            ..settings(2)
        },
        t0,
    );
    assert_eq!(s.plan_spawns(t0, &board).slots, vec![(0, 0)]);
    s.spawned(0, 100, t0);
    board.set(0, WorkerState::Booting, None);
    board.extend_start(0, Due::At(t0 + 100 * SEC));
    let later = t0 + 50 * SEC;
    s.check_health(later, &board);
    assert!(signals(&mut s).is_empty());
    let plan = s.plan_spawns(later, &board);
    assert_eq!((plan.slots.len(), plan.blocked), (0, true));
    board.set(0, WorkerState::Ready, Some(later));
    assert_eq!(s.plan_spawns(later, &board).slots, vec![(1, 0)]);
}

#[test]
fn an_unrepresentable_extension_never_times_out_the_boot_and_ready_leaves_it_unread() {
    let t0 = Instant::now();
    let board = Board::default();
    let st = Settings {
        start_timeout: SEC,
        ..settings(1)
    };
    let mut s = running(st, t0, &board, WorkerState::Booting);
    board.extend_start(0, Due::Never);
    assert_eq!(s.next_deadline(t0, &board), None);
    s.check_health(t0 + 1000 * SEC, &board);
    assert!(signals(&mut s).is_empty());
    // Ready: the extension has done its work and nothing else reads it.
    board.set(0, WorkerState::Ready, Some(t0 + 1000 * SEC));
    s.check_health(t0 + 2000 * SEC, &board);
    assert!(signals(&mut s).is_empty());
}

#[test]
fn a_running_extension_suspends_the_heartbeat_timeout_of_a_booting_worker_only() {
    let t0 = Instant::now();
    let board = Board::default();
    let hb = Settings {
        heartbeat_timeout: Some(SEC),
        start_timeout: SEC,
        ..settings(1)
    };
    // A ready worker's extension (ignored by `Vitals` anyway) moves nothing.
    let mut s = running(hb.clone(), t0, &board, WorkerState::Ready);
    board.set(0, WorkerState::Ready, Some(t0));
    board.extend_start(0, Due::At(t0 + 100 * SEC));
    assert_eq!(
        s.next_deadline(t0, &board),
        Some(t0 + SEC + Duration::from_nanos(1))
    );
    s.check_health(t0 + SEC + MS, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    // A booting worker that has beaten (STATUS=loading) and extended is
    // judged by its start deadline alone while the extension runs, as
    // systemd applies WatchdogSec only after start-up.
    let board = Board::default();
    let mut s = running(hb.clone(), t0, &board, WorkerState::Booting);
    board.set(0, WorkerState::Booting, Some(t0));
    board.extend_start(0, Due::At(t0 + 100 * SEC));
    s.check_health(t0 + 50 * SEC, &board);
    assert!(signals(&mut s).is_empty());
    let next = s.next_deadline(t0 + 50 * SEC, &board).unwrap();
    assert!(
        next > t0 + 50 * SEC && next <= t0 + 100 * SEC + MS,
        "{next:?}"
    );
    // Once it is over, the start deadline (the extension's end) applies.
    s.check_health(t0 + 100 * SEC + MS, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    let r = reap(&mut s, &board, 0, S::Signal(9), t0 + 101 * SEC);
    assert!(matches!(r.reason, R::BootTimedOut { .. }), "{r}");
    // An extension shorter than the start timeout: once it is over, the
    // heartbeat timeout applies again, and the arbiter wakes for it.
    let long = Settings {
        start_timeout: 100 * SEC,
        ..hb
    };
    let board = Board::default();
    let mut s = running(long.clone(), t0, &board, WorkerState::Booting);
    board.set(0, WorkerState::Booting, Some(t0));
    board.extend_start(0, Due::At(t0 + 5 * SEC));
    s.check_health(t0 + 4 * SEC, &board);
    assert!(signals(&mut s).is_empty());
    assert!(s.next_deadline(t0 + 4 * SEC, &board).unwrap() <= t0 + 5 * SEC + MS);
    s.check_health(t0 + 5 * SEC + MS, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    let r = reap(&mut s, &board, 0, S::Signal(9), t0 + 6 * SEC);
    assert!(matches!(r.reason, R::TimedOut { .. }), "{r}");
    // A booting worker that has beaten but not extended: as before.
    let board = Board::default();
    let mut s = running(long, t0, &board, WorkerState::Booting);
    board.set(0, WorkerState::Booting, Some(t0));
    s.check_health(t0 + SEC + MS, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    let r = reap(&mut s, &board, 0, S::Signal(9), t0 + 2 * SEC);
    assert!(matches!(r.reason, R::TimedOut { .. }), "{r}");
}

#[test]
fn a_worker_that_declares_itself_hung_is_killed_at_once_as_a_hang() {
    let t0 = Instant::now();
    let board = Board::default();
    let hb = Settings {
        heartbeat_timeout: Some(30 * SEC),
        ..settings(2)
    };
    let mut s = running(hb, t0, &board, WorkerState::Busy);
    board.set(0, WorkerState::Busy, Some(t0));
    board.set(1, WorkerState::Busy, Some(t0));
    board.declare_hung(1);
    assert_eq!(s.next_deadline(t0 + MS, &board), Some(t0 + MS), "wake now");
    s.check_health(t0 + MS, &board);
    assert_eq!(signals(&mut s), vec![(1, Sig::Kill)]);
    let r = reap(&mut s, &board, 1, S::Signal(9), t0 + 2 * MS);
    assert_eq!(
        r.reason,
        R::Hung {
            state: WorkerState::Busy,
            activity: "GET /slow".to_owned()
        }
    );
    // Young and killed by the arbiter for a hang: a crash-loop step and a
    // restart, replaced at once (the first failure has no backoff).
    assert_eq!(s.slots[1].failures, 1);
    assert_eq!(s.slots[1].restarts, 1);
    assert_eq!(s.plan_spawns(t0 + 2 * MS, &board).slots.len(), 1);
}

#[test]
fn a_stopping_worker_that_declares_itself_hung_is_left_to_its_stop() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(1), t0, &board, WorkerState::Ready);
    s.end_proc(0, R::Stopped, true, t0);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    board.declare_hung(0);
    s.check_health(t0 + MS, &board);
    assert!(signals(&mut s).is_empty());
    let r = reap(&mut s, &board, 0, S::Code(0), t0 + 2 * MS);
    assert_eq!(r.reason, R::Stopped);
}

#[test]
fn a_stall_gives_every_worker_a_fresh_grace() {
    let t0 = Instant::now();
    let board = Board::default();
    let hb = Settings {
        heartbeat_timeout: Some(SEC),
        ..settings(1)
    };
    let mut s = running(hb, t0, &board, WorkerState::Idle);
    board.set(0, WorkerState::Idle, Some(t0));
    assert!(!s.loop_top(t0));
    s.polled(Some(100 * MS), 100 * MS);
    assert!(!s.loop_top(t0 + 100 * MS), "slept as asked");
    // Asked for 100 ms, came back 5 s later (SIGSTOP).
    s.polled(Some(100 * MS), 5 * SEC);
    let t = t0 + 5 * SEC + 100 * MS;
    assert!(s.loop_top(t));
    s.check_health(t, &board);
    assert!(signals(&mut s).is_empty(), "the silence was the arbiter's");
    s.check_health(t + SEC + MS, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    let table = [
        (None, SEC),
        (Some(10 * SEC), SEC),
        (Some(SEC), 500 * MS),
        (Some(MS), 50 * MS),
        (Some(Duration::MAX), SEC),
    ];
    for (timeout, want) in table {
        assert_eq!(stall_threshold(timeout), want, "{timeout:?}");
    }
}

#[test]
fn rolling_restart_at_capacity_stops_one_slot_at_a_time_before_replacing_it() {
    let t0 = Instant::now();
    let board = Board::default();
    // No spare slot: each slot falls back to stop-then-start.
    let mut s = running(
        Settings {
            capacity: 3,
            ..settings(3)
        },
        t0,
        &board,
        WorkerState::Ready,
    );
    s.start_rolling();
    let mut order = Vec::new();
    let mut t = t0;
    for round in 0..3 {
        t += MS;
        s.advance_rolling(t, &board);
        let sent = signals(&mut s);
        assert_eq!(sent.len(), 1, "round {round}: {sent:?}");
        let (slot, sig) = sent[0];
        assert_eq!(sig, Sig::Term);
        order.push(slot);
        // Nothing else moves while the old worker drains.
        s.advance_rolling(t, &board);
        assert!(signals(&mut s).is_empty());
        reap(&mut s, &board, slot, S::Code(0), t);
        let plan = s.plan_spawns(t, &board);
        assert_eq!(plan.slots, vec![(slot, 1)]);
        s.spawned(slot, 200, t);
        board.set(slot, WorkerState::Booting, None);
        s.advance_rolling(t, &board);
        assert!(signals(&mut s).is_empty(), "the replacement is booting");
        board.set(slot, WorkerState::Ready, Some(t));
    }
    s.advance_rolling(t, &board);
    assert!(!s.rolling());
    assert_eq!(order, vec![0, 1, 2]);
    assert!(s.slots.iter().all(|slot| slot.restarts == 0));
}

#[test]
fn a_graceful_stop_with_an_endless_timeout_never_kills() {
    let t0 = Instant::now();
    let board = Board::default();
    let forever = Settings {
        graceful_timeout: Duration::MAX,
        ..settings(2)
    };
    let mut s = running(forever, t0, &board, WorkerState::Ready);
    assert_eq!(s.stop(StopCause::Handle, true, t0), StopStep::Began);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term), (1, Sig::Term)]);
    assert_eq!(s.next_deadline(t0, &board), None, "never");
    s.check_health(t0 + 1_000_000 * SEC, &board);
    assert!(signals(&mut s).is_empty());
    // A second Ctrl-C still stops at once.
    assert_eq!(s.stop(StopCause::Handle, false, t0), StopStep::Hastened);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill), (1, Sig::Kill)]);
    reap(&mut s, &board, 0, S::Signal(9), t0);
    reap(&mut s, &board, 1, S::Signal(9), t0);
    assert!(s.finished());
    let outcome = s.outcome();
    assert!(!outcome.graceful);
    assert_eq!(outcome.killed_at_timeout, 0);
}

#[test]
fn a_zero_graceful_timeout_kills_at_the_next_check() {
    let t0 = Instant::now();
    let board = Board::default();
    let zero = Settings {
        graceful_timeout: Duration::ZERO,
        ..settings(1)
    };
    let mut s = running(zero, t0, &board, WorkerState::Ready);
    s.stop(StopCause::Signal(libc::SIGTERM), true, t0);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    assert_eq!(s.next_deadline(t0, &board), Some(t0));
    s.check_health(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    reap(&mut s, &board, 0, S::Signal(libc::SIGKILL), t0);
    assert_eq!(s.outcome().killed_at_timeout, 1);
}

#[test]
fn extreme_settings_mean_never_and_nothing_overflows() {
    let t0 = Instant::now();
    let board = Board::default();
    let extreme = Settings {
        heartbeat_timeout: Some(Duration::MAX),
        start_timeout: Duration::MAX,
        graceful_timeout: Duration::MAX,
        backoff_initial: Duration::MAX,
        backoff_max: Duration::MAX,
        min_uptime: Duration::MAX,
        memory_limit: Some(u64::MAX),
        limit_interval: Duration::MAX,
        ..settings(1)
    };
    let mut s = running(extreme, t0, &board, WorkerState::Booting);
    board.set(0, WorkerState::Booting, Some(t0));
    // Booting, beating: nothing is due ever, except the limit check now.
    assert_eq!(s.next_deadline(t0, &board), Some(t0));
    assert!(s.limits_due(t0));
    assert!(
        !s.limits_due(t0 + 1_000_000 * SEC),
        "the next check is never"
    );
    assert_eq!(s.next_deadline(t0, &board), None);
    s.check_health(t0 + 1_000_000 * SEC, &board);
    assert!(signals(&mut s).is_empty());
    // Two failures with an endless backoff: the slot is never respawned.
    s.slots[0].next_generation = u32::MAX;
    s.slots[0].restarts = u32::MAX;
    s.spawned = u64::MAX;
    reap(&mut s, &board, 0, S::Code(1), t0);
    assert_eq!(s.plan_spawns(t0, &board).slots, vec![(0, u32::MAX)]);
    s.spawned(0, 1, t0);
    assert_eq!((s.spawned, s.slots[0].next_generation), (u64::MAX, 0));
    reap(&mut s, &board, 0, S::Code(1), t0);
    assert_eq!(s.slots[0].restarts, u32::MAX);
    assert!(s.plan_spawns(t0 + 1_000_000 * SEC, &board).slots.is_empty());
    assert_eq!(s.next_deadline(t0, &board), None);
    assert_eq!(
        next_period(t0, t0 + SEC, Duration::MAX),
        t0.checked_add(Duration::MAX)
    );
    assert_eq!(
        next_period(t0, t0 + SEC, Duration::ZERO),
        Some(t0 + SEC + Duration::from_nanos(1))
    );
    assert_eq!(next_period(t0, t0 + 2500 * MS, SEC), Some(t0 + 3 * SEC));
}

#[test]
fn scaling_stays_between_one_and_the_capacity() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    s.add_workers(isize::MAX, t0);
    assert_eq!(s.target, 64);
    s.add_workers(isize::MIN, t0);
    assert_eq!(s.target, 1);
    assert_eq!(signals(&mut s), vec![(1, Sig::Term)]);
    s.set_target(usize::MAX, t0);
    assert_eq!(s.target, 64);
    assert_eq!(
        s.plan_spawns(t0, &board).slots.len(),
        16,
        "the default throttle"
    );
}

#[test]
fn a_pool_gives_up_once_every_slot_failed_n_times_in_a_row() {
    let t0 = Instant::now();
    let board = Board::default();
    let give_up = Settings {
        give_up_after: 2,
        backoff_initial: Duration::ZERO,
        backoff_max: Duration::ZERO,
        ..settings(2)
    };
    let mut s = running(give_up, t0, &board, WorkerState::Booting);
    let mut t = t0;
    // Slot 0 fails twice; slot 1 once: not yet.
    for (slot, pid) in [(0, 200), (1, 201), (0, 202)] {
        t += MS;
        reap(&mut s, &board, slot, S::Code(1), t);
        assert_eq!(s.take_give_up(), None);
        s.spawned(slot, pid, t);
        board.set(slot, WorkerState::Booting, None);
    }
    t += MS;
    let last = reap(&mut s, &board, 1, S::Code(78), t);
    assert_eq!(s.take_give_up(), Some(last.clone()));
    assert_eq!(s.stop(StopCause::GaveUp, true, t), StopStep::Began);
    assert_eq!(s.take_give_up(), None, "once");
    assert_eq!(s.outcome().last_failure, Some(last));
    assert_eq!(s.outcome().cause, StopCause::GaveUp);
}

#[test]
fn a_worker_that_stays_up_breaks_the_run_of_failures() {
    let t0 = Instant::now();
    let board = Board::default();
    let give_up = Settings {
        give_up_after: 2,
        ..settings(1)
    };
    let mut s = running(give_up, t0, &board, WorkerState::Booting);
    reap(&mut s, &board, 0, S::Code(1), t0);
    s.spawned(0, 200, t0);
    board.set(0, WorkerState::Ready, Some(t0));
    // Up past the minimum uptime: recovered.
    s.check_health(t0 + 2 * SEC, &board);
    reap(&mut s, &board, 0, S::Code(1), t0 + 2 * SEC);
    assert_eq!(s.take_give_up(), None, "one failure since it recovered");
}

#[test]
fn zero_never_gives_up() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(1), t0, &board, WorkerState::Booting);
    for n in 0..100 {
        let t = t0 + n * MS;
        reap(&mut s, &board, 0, S::Code(1), t);
        assert_eq!(s.take_give_up(), None);
        s.spawned(0, 300, t);
    }
}

/// Forks what the plan says at `t` (pid 300 + slot + 10 * generation) and
/// shows it booting; returns the plan's slots.
fn fork_planned(s: &mut Scheduler, board: &Board, t: Instant) -> Vec<(usize, u32)> {
    let plan = s.plan_spawns(t, board);
    for &(slot, generation) in &plan.slots {
        s.spawned(slot, 300 + slot as i32 + 10 * generation as i32, t);
        board.set(slot, WorkerState::Booting, None);
    }
    plan.slots
}

fn ready_count(s: &Scheduler, board: &Board) -> usize {
    (0..s.slots.len())
        .filter(|&i| s.slots[i].proc.is_some() && board.observe(i).state.is_up())
        .count()
}

#[test]
fn rolling_restart_forks_a_stand_in_first_and_stops_the_old_worker_once_it_is_ready() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    s.start_rolling();
    let mut t = t0;
    for slot in 0..2 {
        t += MS;
        s.advance_rolling(t, &board);
        assert!(signals(&mut s).is_empty(), "slot {slot}: nothing stops yet");
        // The stand-in takes the first spare slot, past the target.
        let spare_generation = slot as u32;
        assert_eq!(fork_planned(&mut s, &board, t), vec![(2, spare_generation)]);
        assert_eq!(s.live(), 3, "target + 1");
        s.advance_rolling(t, &board);
        assert!(signals(&mut s).is_empty(), "the stand-in is booting");
        assert!(fork_planned(&mut s, &board, t).is_empty());
        board.set(2, WorkerState::Ready, Some(t));
        s.advance_rolling(t, &board);
        assert_eq!(
            signals(&mut s),
            vec![(slot, Sig::Term)],
            "old stops once the stand-in is ready"
        );
        s.advance_rolling(t, &board);
        assert!(signals(&mut s).is_empty());
        assert!(
            fork_planned(&mut s, &board, t).is_empty(),
            "never past target + 1"
        );
        reap(&mut s, &board, slot, S::Code(0), t);
        assert_eq!(ready_count(&s, &board), 2, "the stand-in covers the slot");
        assert_eq!(fork_planned(&mut s, &board, t), vec![(slot, 1)]);
        s.advance_rolling(t, &board);
        assert!(
            signals(&mut s).is_empty(),
            "the slot's new worker is booting"
        );
        board.set(slot, WorkerState::Ready, Some(t));
        s.advance_rolling(t, &board);
        assert_eq!(signals(&mut s), vec![(2, Sig::Term)], "the stand-in goes");
        s.advance_rolling(t, &board);
        assert!(fork_planned(&mut s, &board, t).is_empty());
        assert!(s.rolling(), "the next slot waits for the stand-in to exit");
        reap(&mut s, &board, 2, S::Code(0), t);
        assert_eq!(ready_count(&s, &board), 2);
    }
    s.advance_rolling(t, &board);
    assert!(!s.rolling());
    assert_eq!(s.live(), 2);
    assert!(
        fork_planned(&mut s, &board, t).is_empty(),
        "the spare slot stays empty"
    );
    let gens: Vec<u32> = (0..2)
        .map(|i| s.slots[i].proc.as_ref().unwrap().generation)
        .collect();
    assert_eq!(gens, vec![1, 1]);
}

#[test]
fn a_stand_in_never_ready_is_killed_at_the_start_timeout_and_the_old_workers_keep_serving() {
    let t0 = Instant::now();
    let board = Board::default();
    let set = Settings {
        start_timeout: 5 * SEC,
        ..settings(2)
    };
    let mut s = running(set, t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(2, 0)]);
    let t = t0 + 6 * SEC;
    s.check_health(t, &board);
    assert_eq!(signals(&mut s), vec![(2, Sig::Kill)]);
    s.advance_rolling(t, &board);
    assert!(signals(&mut s).is_empty(), "the old worker is not touched");
    reap(&mut s, &board, 2, S::Signal(libc::SIGKILL), t);
    s.advance_rolling(t, &board);
    assert!(
        !s.rolling(),
        "the roll is abandoned, not retried slot after slot"
    );
    assert!(signals(&mut s).is_empty());
    assert!(fork_planned(&mut s, &board, t).is_empty());
    assert_eq!(ready_count(&s, &board), 2);
    let pids: Vec<i32> = (0..2)
        .map(|i| s.slots[i].proc.as_ref().unwrap().pid)
        .collect();
    assert_eq!(pids, vec![100, 101], "the old workers keep serving");
    // A later roll starts over.
    s.start_rolling();
    s.advance_rolling(t, &board);
    assert_eq!(fork_planned(&mut s, &board, t), vec![(2, 1)]);
}

#[test]
fn a_stand_in_waits_for_the_spawn_throttle() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    s.settings.max_booting = 1;
    board.set(1, WorkerState::Booting, None);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    let plan = s.plan_spawns(t0, &board);
    assert!(plan.slots.is_empty());
    assert!(plan.blocked);
    assert!(s.waiting_for_ready(plan.blocked, &board));
    board.set(1, WorkerState::Ready, Some(t0));
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(2, 0)]);
}

#[test]
fn a_stop_during_a_roll_stops_the_stand_in_too() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(1), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(1, 0)]);
    assert_eq!(s.stop(StopCause::Handle, true, t0), StopStep::Began);
    let mut sent = signals(&mut s);
    sent.sort_unstable_by_key(|&(slot, _)| slot);
    assert_eq!(sent, vec![(0, Sig::Term), (1, Sig::Term)]);
    assert!(!s.rolling());
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert!(!s.finished());
    reap(&mut s, &board, 1, S::Code(0), t0);
    assert!(s.finished());
}

#[test]
fn growing_the_pool_over_the_stand_in_keeps_it_as_a_regular_worker() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(1), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(1, 0)]);
    s.set_target(2, t0);
    board.set(1, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    // Slot 0 finishes stop-then-start; slot 1 (the former stand-in) is
    // already new, so it is replaced in turn like any slot.
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    board.set(0, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert!(!s.rolling());
    assert_eq!(s.live(), 2);
}

#[test]
fn a_new_worker_failing_before_it_is_ready_abandons_the_roll_and_the_stand_in_covers_its_slot() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(2, 0)]);
    board.set(2, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    s.advance_rolling(t0, &board);
    // Slot 0's new worker fails before it is ready.
    let t = t0 + MS;
    reap(&mut s, &board, 0, S::Code(1), t);
    s.advance_rolling(t, &board);
    assert!(signals(&mut s).is_empty(), "the stand-in keeps serving");
    assert!(!s.rolling(), "the roll is abandoned");
    let why = s.abandoned.clone().expect("a reason");
    assert!(
        why.starts_with("worker 0's new worker (pid 310, generation 1; failed: exit code 1)"),
        "{why}"
    );
    assert_eq!(ready_count(&s, &board), 2, "slot 1 and the stand-in");
    // The slot is refilled as after any failure; the stand-in stays through
    // a crash loop.
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 2)]);
    reap(&mut s, &board, 0, S::Code(1), t);
    s.advance_rolling(t, &board);
    assert!(signals(&mut s).is_empty(), "the stand-in keeps serving");
    assert!(fork_planned(&mut s, &board, t).is_empty(), "backoff");
    let t = t + 10 * SEC;
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 3)]);
    s.advance_rolling(t, &board);
    assert!(signals(&mut s).is_empty(), "slot 0 is booting");
    board.set(0, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(
        signals(&mut s),
        vec![(2, Sig::Term)],
        "now the stand-in goes"
    );
    reap(&mut s, &board, 2, S::Code(0), t);
    s.advance_rolling(t, &board);
    assert!(
        !s.waiting_for_ready(false, &board),
        "nothing left of the roll"
    );
    assert_eq!(s.slots[1].proc.as_ref().unwrap().pid, 101, "never rolled");
    assert!(fork_planned(&mut s, &board, t).is_empty());
    // A later roll starts over and forgets why the last one was abandoned.
    s.start_rolling();
    assert_eq!(s.abandoned, None);
    s.advance_rolling(t, &board);
    assert_eq!(fork_planned(&mut s, &board, t), vec![(2, 1)]);
}

#[test]
fn a_new_worker_killed_at_the_start_timeout_abandons_the_roll_and_a_dead_stand_in_ends_it() {
    let t0 = Instant::now();
    let board = Board::default();
    let set = Settings {
        start_timeout: 5 * SEC,
        ..settings(1)
    };
    let mut s = running(set, t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(1, 0)]);
    board.set(1, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    let t = t0 + 6 * SEC;
    s.check_health(t, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Kill)]);
    s.advance_rolling(t, &board);
    assert!(s.rolling(), "not over until the killed worker is reaped");
    reap(&mut s, &board, 0, S::Signal(libc::SIGKILL), t);
    s.advance_rolling(t, &board);
    assert!(signals(&mut s).is_empty(), "the stand-in keeps serving");
    assert!(!s.rolling());
    let why = s.abandoned.clone().unwrap();
    assert!(why.contains("start timeout"), "{why}");
    // The stand-in dies too: nothing covers the slot any more, so the roll
    // lets go of it, and the spare slot is not refilled.
    reap(&mut s, &board, 1, S::Code(1), t);
    s.advance_rolling(t, &board);
    assert!(!s.waiting_for_ready(false, &board));
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 2)]);
}

#[test]
fn at_capacity_a_new_worker_failing_before_it_is_ready_abandons_the_roll() {
    let t0 = Instant::now();
    let board = Board::default();
    let set = Settings {
        capacity: 2,
        ..settings(2)
    };
    let mut s = running(set, t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    s.advance_rolling(t0, &board);
    reap(&mut s, &board, 0, S::Code(1), t0);
    s.advance_rolling(t0, &board);
    assert!(signals(&mut s).is_empty(), "slot 1 is not stopped");
    assert!(!s.rolling());
    assert!(s.abandoned.is_some());
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 2)], "retried");
}

/// Rolls `-w 2` up to slot 0's new worker failing twice before it was ready:
/// the roll is abandoned, its stand-in (slot 2, pid 302) serves, slot 0 is in
/// its crash-loop backoff (generations 1 and 2 failed).
fn abandoned_roll(set: Settings, t0: Instant, board: &Board) -> Scheduler {
    let mut s = running(set, t0, board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, board);
    assert_eq!(fork_planned(&mut s, board, t0), vec![(2, 0)]);
    board.set(2, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, board, t0), vec![(0, 1)]);
    s.advance_rolling(t0, board);
    reap(&mut s, board, 0, S::Code(1), t0);
    s.advance_rolling(t0, board);
    assert!(s.abandoned.is_some());
    assert_eq!(fork_planned(&mut s, board, t0), vec![(0, 2)]);
    reap(&mut s, board, 0, S::Code(1), t0);
    s.advance_rolling(t0, board);
    assert!(signals(&mut s).is_empty());
    assert!(!s.rolling());
    s
}

#[test]
fn the_stand_in_of_an_abandoned_roll_keeps_the_pool_from_giving_up() {
    let t0 = Instant::now();
    let board = Board::default();
    let set = Settings {
        give_up_after: 5,
        ..settings(1)
    };
    let mut s = running(set.clone(), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(1, 0)]);
    board.set(1, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    // Slot 0 crash-loops well past give_up_after: the stand-in serves, so
    // the pool does not give up.
    let mut t = t0;
    for _ in 0..10 {
        t += 60 * SEC;
        let forked = fork_planned(&mut s, &board, t);
        assert_eq!(forked.len(), 1, "slot 0 refilled after its backoff");
        s.advance_rolling(t, &board);
        reap(&mut s, &board, 0, S::Code(1), t);
        s.advance_rolling(t, &board);
        assert!(s.take_give_up().is_none(), "the stand-in serves");
    }
    assert!(s.slots[0].failures >= 10);
    assert!(signals(&mut s).is_empty(), "the stand-in is not stopped");
    assert_eq!(ready_count(&s, &board), 1);
    // A reload meanwhile takes the stand-in over: the slot's next failure,
    // which abandons it, gives up no more.
    s.start_rolling();
    s.advance_rolling(t, &board);
    assert_eq!(fork_planned(&mut s, &board, t).len(), 1);
    s.advance_rolling(t, &board);
    reap(&mut s, &board, 0, S::Code(1), t);
    assert!(s.take_give_up().is_none(), "the stand-in serves");
    s.advance_rolling(t, &board);
    assert!(!s.rolling());
    assert!(s.abandoned.is_some());
    assert!(signals(&mut s).is_empty(), "the stand-in is not stopped");
    // Ready at last: the stand-in goes.
    t += 60 * SEC;
    assert_eq!(fork_planned(&mut s, &board, t).len(), 1);
    board.set(0, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(signals(&mut s), vec![(1, Sig::Term)]);

    // Without the stand-in, the same crash loop gives up.
    let mut s = running(set, t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(1, 0)]);
    board.set(1, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    reap(&mut s, &board, 0, S::Code(0), t0);
    let mut t = t0;
    t += 60 * SEC;
    fork_planned(&mut s, &board, t);
    reap(&mut s, &board, 0, S::Code(1), t);
    s.advance_rolling(t, &board);
    reap(&mut s, &board, 1, S::Signal(libc::SIGKILL), t);
    s.advance_rolling(t, &board);
    assert!(!s.waiting_for_ready(false, &board), "nothing covers slot 0");
    for _ in 0..4 {
        t += 60 * SEC;
        assert_eq!(fork_planned(&mut s, &board, t).len(), 1);
        reap(&mut s, &board, 0, S::Code(1), t);
    }
    assert_eq!(s.slots[0].failures, 5);
    assert!(s.take_give_up().is_some(), "nothing serves: give up");
}

#[test]
fn a_new_roll_during_an_abandoned_one_begins_with_the_covered_slot_and_goes_on() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = abandoned_roll(settings(2), t0, &board);
    s.start_rolling();
    assert!(s.rolling());
    assert_eq!(s.abandoned, None);
    s.advance_rolling(t0, &board);
    // The roll takes the stand-in over (no second stand-in for slot 0) and
    // refills slot 0 at once, backoff or not.
    let t = t0;
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 3)]);
    s.advance_rolling(t, &board);
    assert!(signals(&mut s).is_empty());
    board.set(0, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(signals(&mut s), vec![(2, Sig::Term)], "the stand-in goes");
    reap(&mut s, &board, 2, S::Code(0), t);
    s.advance_rolling(t, &board);
    // Slot 1 next, with a stand-in of its own.
    assert_eq!(fork_planned(&mut s, &board, t), vec![(2, 1)]);
    board.set(2, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(signals(&mut s), vec![(1, Sig::Term)]);
    reap(&mut s, &board, 1, S::Code(0), t);
    assert_eq!(fork_planned(&mut s, &board, t), vec![(1, 1)]);
    board.set(1, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(signals(&mut s), vec![(2, Sig::Term)]);
    reap(&mut s, &board, 2, S::Code(0), t);
    s.advance_rolling(t, &board);
    assert!(!s.rolling(), "the roll ends");
    assert_eq!(s.abandoned, None);
    assert!(!s.waiting_for_ready(false, &board));
}

#[test]
fn a_new_roll_whose_covered_slot_fails_again_is_abandoned_and_the_stand_in_stays() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = abandoned_roll(settings(2), t0, &board);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    let t = t0 + 60 * SEC;
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 3)]);
    s.advance_rolling(t, &board);
    reap(&mut s, &board, 0, S::Code(1), t);
    s.advance_rolling(t, &board);
    assert!(!s.rolling(), "ended: a reload waiting on it answers");
    let why = s.abandoned.clone().expect("a reason");
    assert!(why.contains("generation 3"), "this roll's reason: {why}");
    assert!(signals(&mut s).is_empty(), "the stand-in and slot 1 serve");
    assert_eq!(ready_count(&s, &board), 2);
    assert_eq!(s.slots[1].proc.as_ref().unwrap().pid, 101, "not replaced");
    // Still covered until slot 0 is ready.
    let t = t + 60 * SEC;
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 4)]);
    board.set(0, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(signals(&mut s), vec![(2, Sig::Term)]);
}

#[test]
fn a_new_roll_during_an_abandoned_one_then_more_workers_goes_on_without_re_abandoning() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = abandoned_roll(settings(2), t0, &board);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    // TTIN: the stand-in's slot joins the pool as a regular worker, and
    // slot 0 finishes stop-then-start.
    s.add_workers(1, t0);
    s.advance_rolling(t0, &board);
    assert!(s.rolling());
    assert_eq!(s.abandoned, None, "not abandoned again");
    let t = t0 + 60 * SEC;
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 3)]);
    board.set(0, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    // Slot 1, then slot 2 (the former stand-in) are replaced in turn.
    assert_eq!(fork_planned(&mut s, &board, t), vec![(3, 0)]);
    board.set(3, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(signals(&mut s), vec![(1, Sig::Term)]);
    assert!(signals(&mut s).is_empty());
    assert_eq!(s.abandoned, None);
}

#[test]
fn more_workers_during_an_abandoned_roll_keep_its_reason_and_end_the_cover() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = abandoned_roll(settings(2), t0, &board);
    let why = s.abandoned.clone();
    assert!(
        s.waiting_for_ready(false, &board),
        "the stand-in covers slot 0"
    );
    s.add_workers(1, t0);
    s.advance_rolling(t0, &board);
    assert_eq!(s.abandoned, why, "not abandoned again");
    assert!(!s.rolling());
    assert!(!s.waiting_for_ready(false, &board), "a regular worker now");
    // Slot 0 turning ready stops nothing.
    let t = t0 + 60 * SEC;
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 3)]);
    board.set(0, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert!(signals(&mut s).is_empty());
    assert_eq!(ready_count(&s, &board), 3);
}

#[test]
fn a_new_worker_recycled_before_the_arbiter_saw_it_ready_does_not_abandon_the_roll() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(2, 0)]);
    board.set(2, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    s.advance_rolling(t0, &board);
    // Ready, served its max_requests and exited as planned, all within one
    // poll.
    board.set(0, WorkerState::Ready, Some(t0));
    board.plan_exit(0);
    assert_eq!(reap(&mut s, &board, 0, S::Code(0), t0).reason, R::Recycled);
    s.advance_rolling(t0, &board);
    assert!(s.rolling());
    assert_eq!(s.abandoned, None);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 2)]);
    board.set(0, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(2, Sig::Term)], "slot 0 done");

    // Likewise stop-then-start.
    let set = Settings {
        capacity: 2,
        ..settings(2)
    };
    let mut s = running(set, t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    s.advance_rolling(t0, &board);
    board.set(0, WorkerState::Ready, Some(t0));
    board.plan_exit(0);
    reap(&mut s, &board, 0, S::Code(0), t0);
    s.advance_rolling(t0, &board);
    assert!(s.rolling());
    assert_eq!(s.abandoned, None);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 2)]);
    board.set(0, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(1, Sig::Term)], "on to slot 1");
}

#[test]
fn a_roll_reaching_an_empty_slot_keeps_the_worker_forked_there() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    // Slot 0's worker was recycled just before the roll reached it.
    board.plan_exit(0);
    reap(&mut s, &board, 0, S::Code(0), t0);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    s.advance_rolling(t0, &board);
    assert!(signals(&mut s).is_empty(), "it is new: not stopped");
    board.set(0, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(
        fork_planned(&mut s, &board, t0),
        vec![(2, 0)],
        "slot 1 next"
    );
}

#[test]
fn a_reload_waits_until_the_released_stand_in_of_an_abandoned_roll_has_exited() {
    let t0 = Instant::now();
    let board = Board::default();
    // -w 2, slot 0's new worker failed twice: the stand-in (slot 2) covers.
    let mut s = abandoned_roll(settings(2), t0, &board);
    let t = t0 + 60 * SEC;
    assert_eq!(fork_planned(&mut s, &board, t), vec![(0, 3)]);
    board.set(0, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(signals(&mut s), vec![(2, Sig::Term)], "the stand-in goes");
    // A reload while the stand-in drains: no second stand-in.
    s.start_rolling();
    assert!(s.rolling());
    s.advance_rolling(t, &board);
    assert!(
        fork_planned(&mut s, &board, t).is_empty(),
        "one extra at most"
    );
    assert!(signals(&mut s).is_empty());
    assert!(s.waiting_for_ready(false, &board));
    // Once it has exited, the roll begins, with a new stand-in in slot 2.
    reap(&mut s, &board, 2, S::Code(0), t);
    s.advance_rolling(t, &board);
    assert_eq!(fork_planned(&mut s, &board, t), vec![(2, 1)]);
    board.set(2, WorkerState::Ready, Some(t));
    s.advance_rolling(t, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)], "slot 0 first");
}

#[test]
fn at_capacity_plus_one_a_reload_waits_for_the_stand_in_instead_of_stopping_the_only_worker() {
    let t0 = Instant::now();
    let board = Board::default();
    let set = Settings {
        capacity: 2,
        ..settings(1)
    };
    let mut s = running(set, t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(1, 0)]);
    board.set(1, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    reap(&mut s, &board, 0, S::Code(1), t0);
    s.advance_rolling(t0, &board);
    assert!(s.abandoned.is_some());
    // Slot 0 is ready again: the stand-in is asked to go.
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 2)]);
    board.set(0, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(1, Sig::Term)]);
    // A reload now must not stop slot 0 (its only real worker) for want of
    // a spare slot: it waits for the stand-in.
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert!(signals(&mut s).is_empty(), "slot 0 keeps serving");
    assert!(fork_planned(&mut s, &board, t0).is_empty());
    reap(&mut s, &board, 1, S::Code(0), t0);
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(1, 1)], "a stand-in");
    assert!(
        signals(&mut s).is_empty(),
        "slot 0 serves until it is ready"
    );
}

#[test]
fn a_new_worker_recycled_for_a_limit_before_it_is_ready_abandons_the_roll() {
    let t0 = Instant::now();
    let board = Board::default();
    let over = R::OverMemory { rss: 2, limit: 1 };
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(2, 0)]);
    board.set(2, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    s.advance_rolling(t0, &board);
    // Over its memory limit while booting: recycled, no crash-loop step...
    s.recycle(0, over.clone(), t0);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    assert_eq!(reap(&mut s, &board, 0, S::Code(0), t0).reason, over);
    assert_eq!(s.slots[0].failures, 0);
    // ...but a failed start all the same: the roll does not refill forever.
    s.advance_rolling(t0, &board);
    assert!(!s.rolling(), "abandoned");
    let why = s.abandoned.clone().expect("a reason");
    assert!(why.contains("over memory limit"), "{why}");
    assert!(signals(&mut s).is_empty(), "the stand-in covers the slot");

    // Likewise stop-then-start.
    let set = Settings {
        capacity: 2,
        ..settings(2)
    };
    let mut s = running(set, t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    s.advance_rolling(t0, &board);
    let fds = R::TooManyFds { open: 9, limit: 8 };
    s.recycle(0, fds, t0);
    reap(&mut s, &board, 0, S::Code(0), t0);
    s.advance_rolling(t0, &board);
    assert!(!s.rolling(), "abandoned");
    assert!(s.abandoned.is_some());
}

#[test]
fn a_stand_in_recycled_before_the_arbiter_saw_it_ready_is_replaced_not_a_failure() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(2, 0)]);
    // Ready, served its max_requests and exited as planned, within one poll.
    board.set(2, WorkerState::Ready, Some(t0));
    board.plan_exit(2);
    assert_eq!(reap(&mut s, &board, 2, S::Code(0), t0).reason, R::Recycled);
    s.advance_rolling(t0, &board);
    assert!(s.rolling());
    assert_eq!(s.abandoned, None);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(2, 1)], "a new one");
    board.set(2, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)], "the roll goes on");
    // A stand-in that fails still abandons the roll.
    let mut s = running(settings(2), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(2, 0)]);
    reap(&mut s, &board, 2, S::Code(1), t0);
    s.advance_rolling(t0, &board);
    assert!(!s.rolling());
    assert!(s.abandoned.is_some());
}

#[test]
fn an_abandoned_roll_whose_stand_in_is_gone_says_nothing_serves_in_its_place() {
    let t0 = Instant::now();
    let board = Board::default();
    let mut s = running(settings(1), t0, &board, WorkerState::Ready);
    s.start_rolling();
    s.advance_rolling(t0, &board);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(1, 0)]);
    board.set(1, WorkerState::Ready, Some(t0));
    s.advance_rolling(t0, &board);
    assert_eq!(signals(&mut s), vec![(0, Sig::Term)]);
    reap(&mut s, &board, 0, S::Code(0), t0);
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 1)]);
    // The new worker and the stand-in both fail before the arbiter looks.
    reap(&mut s, &board, 0, S::Code(1), t0);
    reap(&mut s, &board, 1, S::Code(1), t0);
    s.advance_rolling(t0, &board);
    assert!(!s.rolling());
    assert!(s.abandoned.is_some());
    assert!(
        !s.waiting_for_ready(false, &board),
        "no cover without a stand-in"
    );
    assert_eq!(fork_planned(&mut s, &board, t0), vec![(0, 2)]);
}
