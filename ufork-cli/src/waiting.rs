//! Control-socket commands whose answer waits for the pool: `upgrade` (until
//! the new arbiter is ready or failed) and `reload` (until the rolling
//! restart has replaced every worker, telling each replacement as it
//! happens). The control layer asks each waiting connection at every loop
//! iteration for its progress and whether its answer is there.

use std::time::Instant;

use ufork_core::upgrade::Pending;
use ufork_core::{ExitReason, Handle};

/// How often a waiting `reload` looks at the pool while nothing else wakes
/// the loop (the roll ends on a worker's ready note, published after it).
pub const ROLL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// What a connection waits for.
#[derive(Debug)]
pub enum Waiting {
    /// `upgrade`: the outcome from the upgrader.
    Upgrade(Pending),
    /// `reload`: the roll begun after `rolls_before` rolls, and the workers
    /// (slot, pid) it replaces.
    Roll {
        rolls_before: u64,
        old: Vec<(usize, i32)>,
        started: Instant,
        /// Slots whose replacement was told already (see [`progress`]).
        told: Vec<usize>,
    },
}

/// A live worker as the roll's report sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    slot: usize,
    pid: i32,
    generation: u32,
    up: bool,
}

fn seen(handle: &Handle) -> (ufork_core::Snapshot, Vec<Seen>) {
    let snapshot = handle.snapshot();
    let now = snapshot
        .workers
        .iter()
        .map(|w| Seen {
            slot: w.slot,
            pid: w.pid,
            generation: w.generation,
            up: w.state.is_up(),
        })
        .collect();
    (snapshot, now)
}

/// One line per old worker whose slot now holds a ready successor and that
/// is gone itself, skipping the slots in `told` (and adding them to it).
fn replaced(old: &[(usize, i32)], now: &[Seen], told: &mut Vec<usize>) -> String {
    let mut text = String::new();
    for &(slot, pid) in old {
        if told.contains(&slot) || now.iter().any(|w| w.pid == pid) {
            continue;
        }
        if let Some(new) = now.iter().find(|w| w.slot == slot && w.up) {
            text.push_str(&format!(
                "worker {slot}: pid {pid} replaced by pid {} (generation {})\n",
                new.pid, new.generation
            ));
            told.push(slot);
        }
    }
    text
}

/// While a `reload` waits: the workers replaced since it last looked, as
/// lines for the client to print as they come (`None`: nothing new).
pub fn progress(waiting: &mut Waiting, handle: &Handle) -> Option<String> {
    let Waiting::Roll { old, told, .. } = waiting else {
        return None;
    };
    let (_, now) = seen(handle);
    Some(replaced(old, &now, told)).filter(|t| !t.is_empty())
}

/// Starts what `line` asks for when it is a waiting command: the waiting
/// state, or the reply of a refusal. `None` for any other command.
pub fn start(line: &str, handle: &Handle) -> Option<Result<Waiting, String>> {
    match line {
        "upgrade" => Some(crate::upgrade::handle().map(|h| Waiting::Upgrade(h.upgrade()))),
        "reload" => {
            let snapshot = handle.snapshot();
            if snapshot.stopping {
                return Some(Err("the pool is stopping\n".to_owned()));
            }
            log::info!(target: "ufork", "reload: restarting every worker, one at a time");
            handle.restart_all();
            Some(Ok(Waiting::Roll {
                rolls_before: snapshot.rolls,
                // Not a stand-in of a roll under way (past the target).
                old: snapshot
                    .workers
                    .iter()
                    .filter(|w| w.slot < snapshot.target)
                    .map(|w| (w.slot, w.pid))
                    .collect(),
                started: Instant::now(),
                told: Vec::new(),
            }))
        }
        _ => None,
    }
}

/// The answer, once there is one: its text and whether it succeeded.
pub fn answer(waiting: &Waiting, handle: &Handle) -> Option<(String, bool)> {
    match waiting {
        Waiting::Upgrade(pending) => Some(match pending.try_result()? {
            Ok(up) => (
                format!(
                    "upgraded: pid {} is serving; the old arbiter (pid {}) drains and exits\n",
                    up.pid,
                    std::process::id()
                ),
                true,
            ),
            // Why a new arbiter ended is in its own output: the pool's log.
            Err(e @ ufork_core::upgrade::UpgradeError::Exited { .. }) => (
                format!("upgrade failed: {e} (the pool's log says why)\n"),
                false,
            ),
            Err(e) => (format!("upgrade failed: {e}\n"), false),
        }),
        Waiting::Roll {
            rolls_before,
            old,
            started,
            told,
        } => {
            let (snapshot, now) = seen(handle);
            if snapshot.stopping {
                return Some((
                    "the pool is stopping: the roll ended early\n".to_owned(),
                    false,
                ));
            }
            if snapshot.rolls <= *rolls_before || snapshot.rolling {
                return None;
            }
            let exits: Vec<(usize, bool)> = snapshot
                .history
                .iter()
                .map(|r| (r.slot, refilled_at_once(&r.reason)))
                .collect();
            let between = between(old, &exits);
            Some(report(
                old,
                &now,
                told,
                Ended {
                    abandoned: snapshot.roll_abandoned.as_deref(),
                    between: &between,
                    ready: snapshot.ready_count(),
                    target: snapshot.target,
                    millis: started.elapsed().as_millis(),
                },
            ))
        }
    }
}

/// Whether an exit was a stop or a recycle, asked for by the arbiter or the
/// program (a restart, max-requests, a memory or descriptor limit): the slot
/// is refilled at once, between two workers, not failed.
fn refilled_at_once(reason: &ExitReason) -> bool {
    reason.is_requested()
        || matches!(
            reason,
            ExitReason::OverMemory { .. } | ExitReason::TooManyFds { .. }
        )
}

/// The slots of `old` whose last exit in `exits` (slot, whether it was a
/// stop or a recycle, see [`refilled_at_once`]; oldest first) was one:
/// refilled at once, such a slot is between two workers, not failed. A slot
/// the history does not show (it is shorter, or off) is not.
fn between(old: &[(usize, i32)], exits: &[(usize, bool)]) -> Vec<usize> {
    old.iter()
        .map(|&(slot, _)| slot)
        .filter(|&slot| {
            exits
                .iter()
                .rev()
                .find(|&&(s, _)| s == slot)
                .is_some_and(|&(_, requested)| requested)
        })
        .collect()
}

/// How the pool says the roll ended.
struct Ended<'a> {
    /// Why it was abandoned, if it was.
    abandoned: Option<&'a str>,
    /// Slots whose last exit was asked for (recycled, stopped): a slot of
    /// these without a ready worker is between two workers, not failed.
    between: &'a [usize],
    ready: usize,
    target: usize,
    millis: u128,
}

/// What `reload` answers once the roll is over: each old worker (slot, pid)
/// not told yet and its successor, and whether every slot of the pool was
/// replaced by a ready worker. The roll abandoned (a stand-in or a slot's
/// new worker failed before it was ready), an old worker still running, or
/// a slot without a ready new worker whose last exit was not asked for (it
/// failed, or was killed) is a failure, not "restarted". A slot whose new
/// worker recycled as the roll ended (max-requests, or a memory or
/// descriptor limit) is refilled already, not failed.
fn report(old: &[(usize, i32)], now: &[Seen], told: &[usize], ended: Ended<'_>) -> (String, bool) {
    let Ended {
        abandoned,
        between,
        ready,
        target,
        millis,
    } = ended;
    let kept: Vec<String> = old
        .iter()
        .filter(|(_, pid)| now.iter().any(|w| w.pid == *pid))
        .map(|(slot, pid)| format!("worker {slot} (pid {pid})"))
        .collect();
    let why =
        abandoned.unwrap_or("a replacement failed before it was ready (the pool's log says why)");
    if !kept.is_empty() {
        return (
            format!(
                "the rolling restart was abandoned after {millis} ms and {} still serving: {why}\n",
                kept.join(", ") + if kept.len() == 1 { " is" } else { " are" }
            ),
            false,
        );
    }
    if let Some(why) = abandoned {
        return (
            format!("the rolling restart was abandoned after {millis} ms: {why}\n"),
            false,
        );
    }
    // A slot of the pool (not scaled away) whose new worker is not ready: it
    // failed, or was killed, after the roll moved on (not recycled).
    let unready: Vec<String> = old
        .iter()
        .filter(|&&(slot, _)| {
            slot < target && !between.contains(&slot) && !now.iter().any(|w| w.slot == slot && w.up)
        })
        .map(|(slot, _)| format!("worker {slot}"))
        .collect();
    if !unready.is_empty() {
        return (
            format!(
                "the rolling restart ended after {millis} ms but {} no ready worker ({ready} of {target} ready; the pool's log says why)\n",
                unready.join(", ") + if unready.len() == 1 { " has" } else { " have" }
            ),
            false,
        );
    }
    let mut text = replaced(old, now, &mut told.to_vec());
    text.push_str(&format!(
        "every worker restarted in {millis} ms; {ready} of {target} ready\n"
    ));
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::{Ended, Seen, between, refilled_at_once, replaced, report};
    use ufork_core::ExitReason;

    fn ended(ready: usize, target: usize) -> Ended<'static> {
        Ended {
            abandoned: None,
            between: &[],
            ready,
            target,
            millis: 30,
        }
    }

    fn up(slot: usize, pid: i32, generation: u32) -> Seen {
        Seen {
            slot,
            pid,
            generation,
            up: true,
        }
    }

    #[test]
    fn a_roll_that_replaced_every_worker_reports_each_not_told_yet() {
        let now = [up(0, 20, 1), up(1, 21, 1)];
        let (text, ok) = report(&[(0, 10), (1, 11)], &now, &[], ended(2, 2));
        assert!(ok);
        assert_eq!(
            text,
            "worker 0: pid 10 replaced by pid 20 (generation 1)\n\
             worker 1: pid 11 replaced by pid 21 (generation 1)\n\
             every worker restarted in 30 ms; 2 of 2 ready\n"
        );
        let (text, ok) = report(&[(0, 10), (1, 11)], &now, &[0], ended(2, 2));
        assert!(ok);
        assert!(!text.contains("worker 0:"), "{text}");
        assert!(text.starts_with("worker 1: pid 11"), "{text}");
    }

    #[test]
    fn progress_tells_each_slot_once_when_its_successor_is_ready_and_it_is_gone() {
        let old = [(0, 10), (1, 11)];
        let mut told = Vec::new();
        // A stand-in in the spare slot 2; slot 0's worker still drains.
        let now = [up(0, 10, 0), up(1, 11, 0), up(2, 30, 0)];
        assert_eq!(replaced(&old, &now, &mut told), "");
        // Slot 0 refilled, but booting: not yet.
        let booting = Seen {
            up: false,
            ..up(0, 20, 1)
        };
        assert_eq!(
            replaced(&old, &[booting, up(1, 11, 0), up(2, 30, 0)], &mut told),
            ""
        );
        let now = [up(0, 20, 1), up(1, 11, 0), up(2, 30, 0)];
        assert_eq!(
            replaced(&old, &now, &mut told),
            "worker 0: pid 10 replaced by pid 20 (generation 1)\n"
        );
        assert_eq!(replaced(&old, &now, &mut told), "", "told once");
        assert_eq!(told, vec![0]);
    }

    #[test]
    fn an_old_worker_still_running_means_the_roll_was_abandoned() {
        let (text, ok) = report(
            &[(0, 10), (1, 11)],
            &[up(0, 20, 1), up(1, 11, 0)],
            &[0],
            ended(2, 2),
        );
        assert!(!ok);
        assert!(text.contains("abandoned"), "{text}");
        assert!(
            text.contains("worker 1 (pid 11) is still serving"),
            "{text}"
        );
        let (text, ok) = report(
            &[(0, 10), (1, 11)],
            &[up(0, 10, 0), up(1, 11, 0)],
            &[],
            ended(2, 2),
        );
        assert!(!ok);
        assert!(
            text.contains("worker 0 (pid 10), worker 1 (pid 11) are still serving"),
            "{text}"
        );
        // A slot scaled away during the roll is no failure.
        let (_, ok) = report(&[(0, 10), (1, 11)], &[up(0, 20, 1)], &[], ended(1, 1));
        assert!(ok);
    }

    #[test]
    fn a_roll_that_left_a_slot_without_a_ready_worker_failed() {
        let booting = Seen {
            up: false,
            ..up(0, 21, 2)
        };
        // Abandoned: slot 0's new worker failed; the stand-in (slot 1)
        // serves while slot 0 boots again.
        let why = "worker 0's new worker (pid 20, generation 1; failed: exit code 1) failed before it was ready";
        let (text, ok) = report(
            &[(0, 10)],
            &[booting, up(1, 30, 0)],
            &[],
            Ended {
                abandoned: Some(why),
                ..ended(1, 1)
            },
        );
        assert!(!ok);
        assert_eq!(
            text,
            format!("the rolling restart was abandoned after 30 ms: {why}\n")
        );
        // With old workers kept, they are named, and so is the reason.
        let (text, ok) = report(
            &[(0, 10), (1, 11)],
            &[booting, up(1, 11, 0), up(2, 30, 0)],
            &[],
            Ended {
                abandoned: Some(why),
                ..ended(2, 2)
            },
        );
        assert!(!ok);
        assert!(
            text.contains(&format!("worker 1 (pid 11) is still serving: {why}")),
            "{text}"
        );
        // Not abandoned, yet a slot's new worker is not ready (it died after
        // the roll moved on): not "restarted" either.
        let (text, ok) = report(
            &[(0, 10), (1, 11)],
            &[booting, up(1, 31, 1)],
            &[],
            ended(1, 2),
        );
        assert!(!ok);
        assert!(
            text.contains("but worker 0 has no ready worker (1 of 2 ready"),
            "{text}"
        );
    }

    #[test]
    fn a_slot_whose_new_worker_recycled_as_the_roll_ended_is_no_failure() {
        let booting = Seen {
            up: false,
            ..up(0, 22, 2)
        };
        // Slot 0's new worker (pid 20) was ready, then recycled: its
        // successor boots. The history says so; the roll succeeded.
        let (text, ok) = report(
            &[(0, 10), (1, 11)],
            &[booting, up(1, 21, 1)],
            &[0],
            Ended {
                between: &[0],
                ..ended(1, 2)
            },
        );
        assert!(ok, "{text}");
        assert!(text.contains("every worker restarted"), "{text}");
        // Which slots those are: the last exit of each, as the history has
        // it (slot 0 recycled after its old worker was stopped; slot 1's
        // new worker failed after a recycle; slot 2 not in the history).
        let exits = [(0, true), (1, true), (0, true), (1, false)];
        assert_eq!(between(&[(0, 10), (1, 11), (2, 12)], &exits), vec![0]);
    }

    #[test]
    fn a_memory_or_descriptor_limit_recycle_is_between_workers_too() {
        let over_memory = ExitReason::OverMemory { rss: 2, limit: 1 };
        let too_many_fds = ExitReason::TooManyFds { open: 9, limit: 8 };
        for reason in [
            ExitReason::Stopped,
            ExitReason::Recycled,
            over_memory,
            too_many_fds,
        ] {
            assert!(refilled_at_once(&reason), "{reason:?}");
        }
        for reason in [
            ExitReason::Failed,
            ExitReason::Killed,
            ExitReason::Exited,
            ExitReason::Panicked,
        ] {
            assert!(!refilled_at_once(&reason), "{reason:?}");
        }
    }
}
