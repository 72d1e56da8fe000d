//! Control-socket commands whose answer waits for the pool: `upgrade` (until
//! the new arbiter is ready or failed) and `reload` (until the rolling
//! restart has replaced every worker). The control layer asks each waiting
//! connection at every loop iteration whether its answer is there.

use std::time::Instant;

use ufork_core::Handle;
use ufork_core::upgrade::Pending;

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
    },
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
                old: snapshot.workers.iter().map(|w| (w.slot, w.pid)).collect(),
                started: Instant::now(),
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
            Err(e) => (format!("upgrade failed: {e}\n"), false),
        }),
        Waiting::Roll {
            rolls_before,
            old,
            started,
        } => {
            let snapshot = handle.snapshot();
            if snapshot.stopping {
                return Some((
                    "the pool is stopping: the roll ended early\n".to_owned(),
                    false,
                ));
            }
            if snapshot.rolls <= *rolls_before || snapshot.rolling {
                return None;
            }
            let mut text = String::new();
            for (slot, pid) in old {
                if let Some(new) = snapshot.workers.iter().find(|w| w.slot == *slot) {
                    text.push_str(&format!(
                        "worker {slot}: pid {pid} replaced by pid {} (generation {})\n",
                        new.pid, new.generation
                    ));
                }
            }
            text.push_str(&format!(
                "every worker restarted in {} ms; {} of {} ready\n",
                started.elapsed().as_millis(),
                snapshot.ready_count(),
                snapshot.target
            ));
            Some((text, true))
        }
    }
}
