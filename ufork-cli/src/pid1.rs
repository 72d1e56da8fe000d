//! ufork as pid 1 of a pid namespace (a container's entrypoint): the kernel
//! drops a signal sent to pid 1 whose disposition is the default, so a
//! SIGTERM (`docker stop`, a pod's deletion) or SIGINT that came before the
//! arbiter installed its handlers was lost, and the pool ran on until the
//! SIGKILL that follows. Blocked signals are never dropped: `main` blocks
//! both first thing, and they stay pending until the arbiter's loop has its
//! handlers ([`ReleaseStopSignals`]).

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use ufork_core::{Context, Layer};

/// SIGINT and SIGTERM are blocked on the main thread, waiting for the loop.
static HELD: AtomicBool = AtomicBool::new(false);

fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// First thing in `main`, while the process has one thread (threads started
/// later inherit the mask, so none of them takes these signals): as pid 1,
/// blocks SIGINT and SIGTERM until the arbiter handles them.
pub fn hold_stop_signals() {
    if rustix::process::getpid().is_init()
        && pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop_signals()), None).is_ok()
    {
        HELD.store(true, Ordering::SeqCst);
    }
}

/// Unblocks what [`hold_stop_signals`] blocked, on the arbiter's thread once
/// its handlers are installed: a signal that came meanwhile is handled now.
#[derive(Debug)]
pub struct ReleaseStopSignals;

impl Layer for ReleaseStopSignals {
    fn started(&mut self, _ctx: &mut Context<'_>) {
        if HELD.swap(false, Ordering::SeqCst) {
            let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&stop_signals()), None);
        }
    }
}
