//! The child side of a fork: what a worker does between `fork` and its
//! worker function, and how it ends. It never returns into the arbiter's
//! stack: the worker runs inside `catch_unwind` and the process ends in
//! `_exit`.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rustix::process::Signal;

use crate::arbiter::{PostForkHook, Settings, Stdin};
use crate::layer::{ChildInfo, Layer};
use crate::notes::{self, NoteKind};
use crate::scoreboard::Scoreboard;
use crate::sys::{self, Disposition};
use crate::{EXIT_FAILED, EXIT_PANICKED, Result, Vitals, Worker};

/// Exit code of a worker whose setup in the child failed (`EX_OSERR`).
pub(crate) const EXIT_SETUP: i32 = 71;

/// Everything the child needs from the arbiter, borrowed at the fork.
pub(crate) struct Child<'a, F> {
    pub(crate) slot: usize,
    pub(crate) generation: u32,
    pub(crate) arbiter_pid: i32,
    pub(crate) settings: &'a Settings,
    pub(crate) saved: &'a [(i32, Disposition)],
    /// Descriptors of the arbiter the worker must not keep.
    pub(crate) close: &'a [RawFd],
    /// Descriptors layers registered (their numbers), each with core's
    /// duplicate of it.
    pub(crate) registered: &'a [(RawFd, RawFd)],
    pub(crate) board: &'a Arc<Scoreboard>,
    pub(crate) notes_w: &'a Arc<OwnedFd>,
    pub(crate) death_r: Option<OwnedFd>,
    pub(crate) layers: &'a mut [Box<dyn Layer>],
    pub(crate) post_fork: &'a mut Option<PostForkHook>,
    pub(crate) worker_main: &'a mut F,
}

/// The arbiter's own supervisor variables (systemd's sd_notify protocol),
/// which never reach a worker.
const SUPERVISOR_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

impl<F, E> Child<'_, F>
where
    F: FnMut(&mut Worker) -> Result<(), E>,
    E: fmt::Display,
{
    /// Runs the worker and ends the process with its exit code.
    pub(crate) fn run(mut self) -> ! {
        let (slot, generation) = (self.slot, self.generation);
        let code = match catch_unwind(AssertUnwindSafe(|| self.body())) {
            Ok(code) => code,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                notes::send(
                    self.notes_w.as_fd(),
                    NoteKind::Panicked,
                    slot,
                    generation,
                    &message,
                );
                EXIT_PANICKED
            }
        };
        flush_stdio();
        sys::exit_now(code)
    }

    fn fail(&self, kind: NoteKind, text: &str, code: i32) -> i32 {
        notes::send(self.notes_w.as_fd(), kind, self.slot, self.generation, text);
        code
    }

    fn body(&mut self) -> i32 {
        let (slot, generation) = (self.slot, self.generation);
        let Ok((stop_r, stop_w)) = crate::monitor::nonblocking_pipe() else {
            return EXIT_SETUP;
        };
        sys::reset_child_signals(self.saved, stop_w.as_raw_fd());
        // The arbiter's sd_notify channel is the arbiter's: a worker that
        // wrote READY=1 or WATCHDOG=1 there would speak for the whole pool
        // (and systemd's NotifyAccess=main drops it anyway). Removed while
        // the child still has one thread, before anything can read it.
        if SUPERVISOR_VARS
            .iter()
            .any(|v| std::env::var_os(v).is_some())
        {
            crate::upgrade::sys::remove_env(&SUPERVISOR_VARS);
        }
        // Die with the arbiter; PDEATHSIG follows the forking thread, which is
        // the arbiter's loop and lives until every worker is reaped. The pid
        // re-check covers an arbiter that died before prctl.
        let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
        if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(self.arbiter_pid) {
            return EXIT_SETUP;
        }
        if self.settings.process_group {
            let _ = rustix::process::setpgid(None, None);
        }
        for &fd in self.close {
            sys::close_inherited(fd);
        }
        for &(number, registered) in self.registered {
            sys::close_registered(number, registered);
        }
        if self.settings.stdin == Stdin::Null {
            if let Ok(null) = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                let _ = rustix::stdio::dup2_stdin(&null);
            }
        }
        if let Some(death_r) = self.death_r.take() {
            watch_parent(death_r);
        }
        let mut worker = Worker {
            slot,
            generation,
            pid: rustix::process::getpid().as_raw_nonzero().get(),
            vitals: Vitals::new(Arc::clone(self.board), slot, Some(Arc::clone(self.notes_w))),
            stop_read: stop_r,
            _stop_write: stop_w,
            #[cfg(feature = "rng")]
            rng: crate::worker::seed_rng(slot, generation),
        };
        self.board.cell(slot).set_pid(worker.pid);
        let info = ChildInfo { slot, generation };
        for layer in self.layers.iter_mut() {
            if let Err(e) = layer.in_child(&info) {
                let text = format!("worker setup failed: {e}");
                return self.fail(NoteKind::Failed, &text, EXIT_SETUP);
            }
        }
        if let Some(hook) = self.post_fork.as_mut() {
            if let Err(e) = hook(&mut worker) {
                let text = format!("post-fork hook failed: {e}");
                return self.fail(NoteKind::Failed, &text, EXIT_FAILED);
            }
        }
        if self.settings.ready_on_start {
            worker.ready();
        }
        match (self.worker_main)(&mut worker) {
            Ok(()) => 0,
            Err(e) => self.fail(NoteKind::Failed, &e.to_string(), EXIT_FAILED),
        }
    }
}

fn flush_stdio() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// A small thread blocks on the arbiter's death pipe and ends the worker
/// when it reads EOF (the arbiter is gone). It backs up PR_SET_PDEATHSIG,
/// which a setuid exec or a `prctl` in user code can clear.
///
/// The thread is started with every signal blocked, and keeps them blocked:
/// a signal for the process (SIGTERM above all) is then handled on the
/// worker's own threads, never on this one behind their back, which
/// `Worker::before_exec` relies on.
fn watch_parent(death_r: OwnedFd) {
    let spawned = sys::with_signals_blocked(|| {
        std::thread::Builder::new()
            .name("ufork-parent".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut byte = [0u8; 1];
                while let Err(rustix::io::Errno::INTR) = rustix::io::read(&death_r, &mut byte) {}
                flush_stdio();
                sys::exit_now(EXIT_SETUP);
            })
    });
    drop(spawned);
}
