//! The worker side: what the worker function gets to see and report.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::notes::{self, NoteKind};
use crate::scoreboard::{Cell, Scoreboard};
use crate::{WorkerState, sys};

/// Reports a worker's health into its scoreboard slot. A [`Worker`] has one for
/// itself; a [`Layer`](crate::Layer) gets one from [`Context::vitals`](crate::Context::vitals)
/// to report on behalf of a worker that cannot (an exec'd program speaking
/// sd_notify, say). Every method is a store into shared memory, no system call,
/// except two that also wake the arbiter with a note on its pipe (one `write`):
/// `ready` while the arbiter waits for it, and the first `declare_hung`.
/// (`extend_start` reads the clock, through the vDSO on Linux.)
#[derive(Clone)]
pub struct Vitals {
    board: Arc<Scoreboard>,
    slot: usize,
    notes: Option<Arc<OwnedFd>>,
}

impl fmt::Debug for Vitals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vitals").field("slot", &self.slot).finish()
    }
}

impl Vitals {
    pub(crate) fn new(board: Arc<Scoreboard>, slot: usize, notes: Option<Arc<OwnedFd>>) -> Self {
        Self { board, slot, notes }
    }

    fn cell(&self) -> &Cell {
        self.board.cell(self.slot)
    }

    /// Records that the worker is alive now. Hang detection measures silence
    /// from the last call.
    #[inline]
    pub fn heartbeat(&self) {
        self.cell().beat();
    }

    /// Declares the worker ready (it has booted): the start timeout no longer
    /// applies and the spawn throttle lets the next worker boot. Also a heartbeat.
    pub fn ready(&self) {
        let cell = self.cell();
        cell.beat();
        if cell.state() != WorkerState::Booting {
            return;
        }
        cell.set_state(WorkerState::Ready);
        // Dekker-style handshake with the arbiter: it raises the flag, then reads
        // the states; we store the state, then read the flag. One of us sees
        // the other, so a throttled arbiter always wakes.
        if self.board.header().ready_wanted.load(Ordering::SeqCst) != 0 {
            if let Some(fd) = &self.notes {
                notes::send(
                    fd.as_fd(),
                    NoteKind::Ready,
                    self.slot,
                    cell_generation(cell),
                    "",
                );
            }
        }
    }

    /// Marks the worker busy from now on (a heartbeat too).
    pub fn busy(&self) {
        let cell = self.cell();
        cell.beat();
        cell.busy();
    }

    /// Marks the worker idle (a heartbeat too).
    pub fn idle(&self) {
        let cell = self.cell();
        cell.beat();
        cell.idle();
    }

    /// Adds one to the worker's count of requests served.
    #[inline]
    pub fn count_request(&self) {
        self.cell().count_request();
    }

    /// Sets the short text that says what the worker is doing (at most
    /// [`ACTIVITY_LEN`](crate::ACTIVITY_LEN) bytes are kept). Hang reports quote it.
    pub fn set_activity(&self, text: &str) {
        self.cell().write_activity(text);
    }

    /// Declares that the worker is leaving on purpose: its next exit with
    /// code 0 is planned ([`ExitReason::Recycled`](crate::ExitReason::Recycled)),
    /// so the arbiter replaces it at once, does not count a restart and
    /// never treats it as a crash loop, however young the worker is. Call it
    /// before returning `Ok` from the worker function (a server that reached
    /// its request limit, say). One atomic store.
    pub fn recycle(&self) {
        self.cell().plan_exit();
    }

    /// Asks for more time to boot: the worker is not killed for its start
    /// timeout before `extra` from now, even past the timeout, so a worker
    /// that loads slowly but says so is not taken for a hung boot. Its start
    /// deadline becomes the later of its fork plus the start timeout and
    /// now plus `extra`; an extension never shortens the timeout or an
    /// earlier extension. Call it again before `extra` runs out to extend
    /// further (a worker loading a model might ask for 30 s every 10 s),
    /// then [`ready`](Self::ready). systemd's `EXTEND_TIMEOUT_USEC` while
    /// starting, which `ufork run --notify` maps to this.
    ///
    /// It is no heartbeat. While the extension runs (until `extra` from
    /// now) a booting worker is judged by its start deadline alone, not by
    /// the heartbeat timeout, even if it has beaten: systemd, too, applies
    /// `WatchdogSec` only once a service has started. Once the extension is
    /// over, a worker still booting that has beaten is judged by the
    /// heartbeat timeout again. Extensions are unbounded, as systemd's: a
    /// worker that keeps extending keeps booting, and holds one of the
    /// [`max_booting`](crate::Builder::max_booting) places meanwhile.
    ///
    /// Returns whether the worker was still booting; once it is ready (or
    /// stopping) the call changes nothing and returns `false`. A library
    /// worker is ready before its function runs unless the pool was built
    /// with [`ready_on_start(false)`](crate::Builder::ready_on_start), so
    /// without that this always returns `false`. One atomic
    /// read-modify-write and a clock read, no system call.
    pub fn extend_start(&self, extra: Duration) -> bool {
        let cell = self.cell();
        if cell.state() != WorkerState::Booting {
            return false;
        }
        cell.extend_start(extra);
        true
    }

    /// Declares the worker hung: the arbiter kills it (SIGKILL) and
    /// replaces it at once, as it does a worker silent past the heartbeat
    /// timeout ([`ExitReason::Hung`](crate::ExitReason::Hung); a crash-loop
    /// step like a hang), logging that the worker asked for it. For a
    /// worker's own watchdog that found another of its threads stuck;
    /// systemd's `WATCHDOG=trigger`, which `ufork run --notify` maps to
    /// this. A worker already asked to stop is left to its stop. One atomic
    /// swap, and on the first call a note that wakes the arbiter (later
    /// calls find the flag set and write nothing).
    pub fn declare_hung(&self) {
        let cell = self.cell();
        if !cell.declare_hung() {
            return; // already declared: the arbiter was woken then
        }
        if let Some(fd) = &self.notes {
            notes::send(
                fd.as_fd(),
                NoteKind::Wake,
                self.slot,
                cell_generation(cell),
                "",
            );
        }
    }

    /// The worker's state as the scoreboard holds it.
    pub fn state(&self) -> WorkerState {
        self.cell().state()
    }
}

fn cell_generation(cell: &Cell) -> u32 {
    cell.generation()
}

/// The handle a worker function receives: who it is, whether to stop, and how
/// to report its health.
pub struct Worker {
    pub(crate) slot: usize,
    pub(crate) generation: u32,
    pub(crate) pid: i32,
    pub(crate) vitals: Vitals,
    pub(crate) stop_read: OwnedFd,
    pub(crate) _stop_write: OwnedFd,
    #[cfg(feature = "rng")]
    pub(crate) rng: rand_chacha::ChaCha20Rng,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("slot", &self.slot)
            .field("generation", &self.generation)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// The worker's slot, 0..N-1, reused when it is replaced.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// How many workers this slot had before this one (0 for the first).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// This worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the arbiter (or anyone) sent SIGTERM: finish the work in hand
    /// and return. One atomic load.
    #[inline]
    pub fn should_stop(&self) -> bool {
        sys::worker_stop_requested()
    }

    /// Call right before `exec`-ing another program in this worker: gives
    /// SIGTERM its default action back and returns whether the worker was
    /// already asked to stop, in which case do not exec but return.
    ///
    /// `exec` forgets the worker's SIGTERM handler, so a stop caught by it
    /// would never reach the program, and the stop would wait out the
    /// graceful timeout. With the default action restored first, no
    /// SIGTERM is lost: one that came before is reported here, one that
    /// comes after ends the process (before the `exec`) or reaches the
    /// program. After this call [`should_stop`](Self::should_stop) no
    /// longer changes and [`stop_fd`](Self::stop_fd) no longer becomes
    /// readable: a SIGTERM ends the process instead.
    ///
    /// Call it from the worker's only thread of its own, as a worker that
    /// execs has (ufork-core's own helper thread in the worker keeps every
    /// signal blocked): a thread the worker started could be running the
    /// SIGTERM handler at the very moment this call reads the flag, and
    /// that stop would then be lost. Such threads must block SIGTERM.
    ///
    /// ```no_run
    /// use std::os::unix::process::CommandExt;
    /// # fn main() -> Result<(), ufork_core::Error> {
    /// ufork_core::Arbiter::builder().workers(2).build()?.run(|worker| {
    ///     worker.ready();
    ///     if worker.before_exec() {
    ///         return Ok(());
    ///     }
    ///     Err(std::process::Command::new("my-server").exec())
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn before_exec(&self) -> bool {
        sys::default_stop_action()
    }

    /// A descriptor that becomes readable when the worker is asked to stop, to
    /// put in the worker's own `poll`/`epoll` set next to its sockets.
    pub fn stop_fd(&self) -> BorrowedFd<'_> {
        self.stop_read.as_fd()
    }

    /// Makes `socket`, a listening socket of this worker's own (a
    /// `SO_REUSEPORT` socket it bound itself, say), refuse new connections the
    /// moment the worker is asked to stop: the SIGTERM handler shuts its
    /// reading side down before the stop flag is set, so the kernel answers
    /// a new connection with a reset (ECONNREFUSED) instead of queueing it
    /// for a worker that will not accept it; with other workers' sockets on
    /// the same port, the kernel sends new connections to those. Connections
    /// already accepted are the worker's to finish; ones still queued on the
    /// socket are reset. Do not pass a socket other workers share (the
    /// arbiter's listener): shutting it down stops it for every worker
    /// (the [`Upgrader`](crate::upgrade::Upgrader) does that for a graceful
    /// stop of the whole pool). Sockets from
    /// [`Listeners::for_worker`](crate::listen::Listeners::for_worker) are
    /// registered already.
    ///
    /// The worker keeps a duplicate of the descriptor until it exits.
    ///
    /// # Errors
    ///
    /// The descriptor cannot be duplicated, or 64 sockets are registered
    /// already.
    pub fn refuse_at_stop(&self, socket: impl AsFd) -> std::io::Result<()> {
        sys::refuse_at_stop(socket.as_fd())
    }

    /// An owned descriptor that becomes readable when the worker is asked to
    /// stop (and stays readable), for an async runtime's reactor; see
    /// [`StopNotifier`].
    ///
    /// # Errors
    ///
    /// When the process is out of descriptors.
    pub fn stop_notifier(&self) -> std::io::Result<StopNotifier> {
        Ok(StopNotifier {
            fd: self.stop_read.try_clone()?,
        })
    }

    /// Blocks until the worker is asked to stop or `timeout` passes (forever if
    /// `None`). Returns whether a stop was requested.
    pub fn wait_for_stop(&self, timeout: Option<Duration>) -> bool {
        use rustix::event::{PollFd, PollFlags, poll};
        // A timeout past what `Instant` holds means forever.
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        while !self.should_stop() {
            let remaining = match deadline {
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return self.should_stop(),
                },
                None => None,
            };
            let ts = remaining.map(|r| rustix::time::Timespec {
                tv_sec: i64::try_from(r.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(r.subsec_nanos()),
            });
            let mut fds = [PollFd::new(&self.stop_read, PollFlags::IN)];
            let _ = poll(&mut fds, ts.as_ref());
        }
        true
    }

    /// Reports into this worker's scoreboard slot. Clone it to move it into a
    /// thread or an async task: a `Vitals` is `Send + Sync + 'static`.
    pub fn vitals(&self) -> &Vitals {
        &self.vitals
    }

    /// Records that the worker is alive now (one atomic store, no system call).
    #[inline]
    pub fn heartbeat(&self) {
        self.vitals.heartbeat();
    }

    /// Declares the worker ready; see [`Vitals::ready`].
    pub fn ready(&self) {
        self.vitals.ready();
    }

    /// Marks the worker busy; see [`Vitals::busy`].
    pub fn busy(&self) {
        self.vitals.busy();
    }

    /// Marks the worker idle; see [`Vitals::idle`].
    pub fn idle(&self) {
        self.vitals.idle();
    }

    /// Declares that this worker is leaving on purpose; see [`Vitals::recycle`].
    ///
    /// ```no_run
    /// # use ufork_core::{Arbiter, Worker};
    /// # fn serve_one(_: &mut Worker) {}
    /// # fn main() -> Result<(), ufork_core::Error> {
    /// Arbiter::builder().workers(4).build()?.run(|worker| -> Result<(), std::io::Error> {
    ///     for _ in 0..10_000 {
    ///         if worker.should_stop() {
    ///             return Ok(());
    ///         }
    ///         serve_one(worker);
    ///     }
    ///     // Replaced at once, not counted as a restart or a crash.
    ///     worker.recycle();
    ///     Ok(())
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn recycle(&self) {
        self.vitals.recycle();
    }

    /// Asks for more time to boot; see [`Vitals::extend_start`]. Only a
    /// worker of a pool built with
    /// [`ready_on_start(false)`](crate::Builder::ready_on_start) boots while
    /// its function runs; otherwise this returns `false`.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn load_next_shard() -> bool { false }
    /// # fn main() -> Result<(), ufork_core::Error> {
    /// ufork_core::Arbiter::builder()
    ///     .start_timeout(Duration::from_secs(60))
    ///     // Booting until `ready` below: otherwise the worker is ready
    ///     // before this function runs, and extend_start returns false.
    ///     .ready_on_start(false)
    ///     .build()?
    ///     .run(|worker| -> Result<(), std::io::Error> {
    ///         // Loading takes longer than the start timeout, a shard at a time.
    ///         while load_next_shard() {
    ///             worker.extend_start(Duration::from_secs(120));
    ///         }
    ///         worker.ready();
    ///         Ok(())
    ///     })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn extend_start(&self, extra: Duration) -> bool {
        self.vitals.extend_start(extra)
    }

    /// Declares this worker hung, to be killed and replaced; see
    /// [`Vitals::declare_hung`].
    pub fn declare_hung(&self) {
        self.vitals.declare_hung();
    }

    /// Counts one request served.
    pub fn count_request(&self) {
        self.vitals.count_request();
    }

    /// Sets the activity text; see [`Vitals::set_activity`].
    pub fn set_activity(&self, text: &str) {
        self.vitals.set_activity(text);
    }

    /// This worker's own random number generator: ChaCha20 seeded from OS
    /// entropy mixed with the slot and generation, so no two workers (and no
    /// two generations of a slot) share a stream.
    #[cfg(feature = "rng")]
    pub fn rng(&mut self) -> &mut rand_chacha::ChaCha20Rng {
        &mut self.rng
    }
}

/// The worker's stop notification as an owned descriptor (the read end of a
/// pipe): it becomes readable when the worker is asked to stop and stays
/// readable, so every watcher sees it. Do not read from it.
///
/// It moves into an async runtime without `unsafe`. With tokio (features
/// `rt`, `net`), wait for it next to the server:
///
/// ```text
/// let stop = tokio::net::unix::pipe::Receiver::from_owned_fd(worker.stop_notifier()?.into())?;
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async move { let _ = stop.readable().await; })
///     .await?;
/// ```
#[derive(Debug)]
pub struct StopNotifier {
    fd: OwnedFd,
}

impl StopNotifier {
    /// Another notifier for the same stop (a CLOEXEC `dup`), for a second
    /// watcher.
    ///
    /// # Errors
    ///
    /// When the process is out of descriptors.
    pub fn try_clone(&self) -> std::io::Result<StopNotifier> {
        Ok(StopNotifier {
            fd: self.fd.try_clone()?,
        })
    }

    /// Whether the stop was requested (one atomic load, as
    /// [`Worker::should_stop`]).
    pub fn should_stop(&self) -> bool {
        sys::worker_stop_requested()
    }
}

impl AsFd for StopNotifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::os::fd::AsRawFd for StopNotifier {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<StopNotifier> for OwnedFd {
    fn from(notifier: StopNotifier) -> OwnedFd {
        notifier.fd
    }
}

#[cfg(feature = "rng")]
pub(crate) fn seed_rng(slot: usize, generation: u32) -> rand_chacha::ChaCha20Rng {
    use rand_chacha::rand_core::SeedableRng;
    let mut seed = [0u8; 32];
    let mut filled = 0;
    while filled < seed.len() {
        match rustix::rand::getrandom(&mut seed[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled = filled.saturating_add(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    // Even if the OS pool failed, slot, generation, pid and the clock keep
    // workers apart.
    let mix = [
        slot as u64,
        u64::from(generation),
        u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32),
        crate::scoreboard::now_ns(),
    ];
    for (chunk, word) in seed.chunks_exact_mut(8).zip(mix) {
        for (byte, mixed) in chunk.iter_mut().zip(word.to_le_bytes()) {
            *byte ^= mixed;
        }
    }
    rand_chacha::ChaCha20Rng::from_seed(seed)
}
