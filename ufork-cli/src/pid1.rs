//! Signals that come before the arbiter handles them.
//!
//! The arbiter installs its handlers when its loop starts, after the pool's
//! setup has written the pidfile and made the control socket: a script that
//! sends `kill -HUP $(cat pidfile)` (or USR1, USR2, TTIN, ...) as soon as the
//! pidfile appears would find the default disposition, which for most of
//! them ends the process (measured: 18 arbiters of 30 killed by a SIGHUP
//! sent the moment the pidfile had a pid, with nothing logged and a stale
//! pidfile left). And as pid 1 of a pid namespace (a container's
//! entrypoint) the kernel drops a signal whose disposition is the default,
//! so a SIGTERM (`docker stop`, a pod's deletion) or SIGINT that came
//! before the handlers was lost, and the pool ran on until the SIGKILL that
//! follows. Blocked signals are neither acted on nor dropped: `main` blocks
//! SIGINT and SIGTERM first thing as pid 1 ([`hold_stop_signals`]), and
//! every signal the arbiter handles for a pool command
//! ([`hold_pool_signals`]); they stay pending until the arbiter's loop has
//! its handlers ([`ReleaseStopSignals`]), which takes a stop signal among
//! them before its first fork (a pool told to stop while it started forks
//! nothing) and the others once its first workers are forked. Threads started meanwhile keep
//! them blocked, so they are delivered to the arbiter's thread; workers and
//! the programs `run` starts begin with an empty mask (ufork-core and std
//! reset it).

use std::sync::Mutex;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use ufork_core::{Context, Layer};

/// What is blocked on the main thread, waiting for the loop.
static HELD: Mutex<Option<SigSet>> = Mutex::new(None);

fn hold(signals: &[Signal]) {
    let mut set = SigSet::empty();
    for &signal in signals {
        set.add(signal);
    }
    if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_ok() {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        let all = held.get_or_insert_with(SigSet::empty);
        for signal in set.iter() {
            all.add(signal);
        }
    }
}

/// First thing in `main`, while the process has one thread (threads started
/// later inherit the mask, so none of them takes these signals): as pid 1,
/// blocks SIGINT and SIGTERM until the arbiter handles them.
pub fn hold_stop_signals() {
    if rustix::process::getpid().is_init() {
        hold(&[Signal::SIGINT, Signal::SIGTERM]);
    }
}

/// For `serve` and `run`, once the command line is read and before the
/// pool's setup (the pidfile, the control socket, a daemon's fork): blocks
/// every signal the arbiter handles until it handles them.
pub fn hold_pool_signals() {
    hold(&[
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ]);
}

/// The signals held now, as numbers: a `--daemon` launcher unblocks them
/// while it waits for the daemon, which keeps them held.
pub fn held_signals() -> Vec<i32> {
    HELD.lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|set| set.iter().map(|signal| signal as i32).collect())
        .unwrap_or_default()
}

/// Unblocks what [`hold_stop_signals`] and [`hold_pool_signals`] blocked, on
/// the arbiter's thread once its handlers are installed: a signal that came
/// meanwhile is handled now.
#[derive(Debug)]
pub struct ReleaseStopSignals;

impl Layer for ReleaseStopSignals {
    fn started(&mut self, _ctx: &mut Context<'_>) {
        release();
    }
}

/// Unblocks on this thread what is still held: the arbiter's loop starts.
fn release() {
    let held = HELD.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(set) = held {
        let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    }
}

/// The command is over and its loop never started (a pool that failed
/// first): SIGINT, SIGTERM and SIGQUIT act again, so Ctrl-C ends a final
/// flush stalled on a full pipe. The others stay held: one sent to the
/// starting pool (a `kill -HUP` that came early) must not end the process
/// before it says why it failed.
pub fn release_stop_signals() {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if held.is_some() {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGQUIT);
        let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
        if let Some(all) = held.as_mut() {
            all.remove(Signal::SIGINT);
            all.remove(Signal::SIGTERM);
            all.remove(Signal::SIGQUIT);
        }
    }
}
