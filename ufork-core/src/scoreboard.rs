//! The heartbeat scoreboard: one shared anonymous mapping, made before the first
//! fork, with one cache-line-aligned cell per slot. Workers write their own cell
//! with plain atomic stores (no system call); the arbiter reads every cell at its
//! deadlines and for status snapshots.

use std::fmt;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::sys;

/// Bytes of activity text a slot holds (longer text is cut at a char boundary).
pub const ACTIVITY_LEN: usize = 64;

/// What a worker is doing, as its scoreboard cell says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerState {
    /// No worker in this slot.
    Empty,
    /// Forked, not ready yet (the start timeout applies).
    Booting,
    /// Ready, not reporting busy or idle.
    Ready,
    /// Serving something since `busy_since`.
    Busy,
    /// Ready and waiting for work.
    Idle,
    /// Asked to stop, finishing.
    Stopping,
}

impl WorkerState {
    fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Booting,
            2 => Self::Ready,
            3 => Self::Busy,
            4 => Self::Idle,
            5 => Self::Stopping,
            _ => Self::Empty,
        }
    }

    fn raw(self) -> u32 {
        match self {
            Self::Empty => 0,
            Self::Booting => 1,
            Self::Ready => 2,
            Self::Busy => 3,
            Self::Idle => 4,
            Self::Stopping => 5,
        }
    }

    /// A short lowercase name, as shown in status tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Booting => "booting",
            Self::Ready => "ready",
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::Stopping => "stopping",
        }
    }

    /// Whether the worker has declared itself ready (or moved past it).
    pub fn is_up(self) -> bool {
        matches!(self, Self::Ready | Self::Busy | Self::Idle | Self::Stopping)
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slot of the scoreboard. Only atomics, so that an all-zero cell is valid
/// and concurrent writes from another process are sound.
#[repr(C, align(128))]
pub(crate) struct Cell {
    pid: AtomicI32,
    generation: AtomicU32,
    state: AtomicU32,
    activity_seq: AtomicU32,
    last_beat: AtomicU64,
    requests: AtomicU64,
    busy_since: AtomicU64,
    activity: [AtomicU64; ACTIVITY_LEN / 8],
    /// Non-zero once the worker declared its next exit planned.
    planned_exit: AtomicU32,
    /// Non-zero once the worker declared itself hung.
    hung: AtomicU32,
    /// The worker's extension of its start timeout: the monotonic instant
    /// (ns) until which it may still boot, 0 for none. Only ever raised
    /// while a worker lives in the slot.
    start_until: AtomicU64,
}

/// The first cell-sized block of the mapping: flags shared by all slots.
#[repr(C, align(128))]
pub(crate) struct Header {
    /// Non-zero while the arbiter waits for a worker to become ready: then
    /// `ready()` also writes a note to the arbiter's pipe to wake it.
    pub(crate) ready_wanted: AtomicU32,
}

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC, read through the vDSO).
pub(crate) fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    timespec_ns(ts)
}

/// The coarse monotonic clock: the same timebase as [`now_ns`], updated once
/// per kernel tick (1 to 4 ms), and read from the vDSO without touching the
/// clock hardware: a few nanoseconds instead of tens. A heartbeat needs no
/// better resolution; at worst a silence is measured a tick long.
pub(crate) fn coarse_now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    timespec_ns(ts)
}

/// A CLOCK_MONOTONIC reading in nanoseconds (584 years fit in a u64).
fn timespec_ns(ts: rustix::time::Timespec) -> u64 {
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.wrapping_mul(1_000_000_000).wrapping_add(nanos)
}

pub(crate) fn ns_to_duration(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

impl Cell {
    pub(crate) fn reset(&self, pid: i32, generation: u32) {
        self.state
            .store(WorkerState::Booting.raw(), Ordering::SeqCst);
        self.last_beat.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.busy_since.store(0, Ordering::Relaxed);
        self.planned_exit.store(0, Ordering::Relaxed);
        self.hung.store(0, Ordering::Relaxed);
        self.start_until.store(0, Ordering::Relaxed);
        // No worker lives in the slot now, so no writer holds the sequence
        // lock; one killed while holding it left the sequence odd for good,
        // and the arbiter must not wait on it.
        self.activity_seq.store(0, Ordering::Relaxed);
        self.write_activity("");
        self.generation.store(generation, Ordering::Relaxed);
        self.pid.store(pid, Ordering::SeqCst);
    }

    pub(crate) fn clear(&self) {
        self.state.store(WorkerState::Empty.raw(), Ordering::SeqCst);
        self.pid.store(0, Ordering::SeqCst);
    }

    pub(crate) fn plan_exit(&self) {
        self.planned_exit.store(1, Ordering::SeqCst);
    }

    pub(crate) fn planned_exit(&self) -> bool {
        self.planned_exit.load(Ordering::SeqCst) != 0
    }

    /// Sets the hung flag; returns whether this call set it (it was clear).
    pub(crate) fn declare_hung(&self) -> bool {
        self.hung.swap(1, Ordering::SeqCst) == 0
    }

    pub(crate) fn hung(&self) -> bool {
        self.hung.load(Ordering::SeqCst) != 0
    }

    /// Lets the worker boot until `extra` from now, unless it may already
    /// boot longer: an extension never shortens an earlier one. One atomic
    /// read-modify-write, so two extensions racing keep the later deadline.
    pub(crate) fn extend_start(&self, extra: Duration) {
        let extra = u64::try_from(extra.as_nanos()).unwrap_or(u64::MAX);
        let until = now_ns().saturating_add(extra).max(1);
        self.start_until.fetch_max(until, Ordering::Relaxed);
    }

    /// The instant (monotonic ns) the worker's extension lets it boot
    /// until, if it extended its start.
    pub(crate) fn start_until(&self) -> Option<u64> {
        Some(self.start_until.load(Ordering::Relaxed)).filter(|&ns| ns != 0)
    }

    pub(crate) fn set_pid(&self, pid: i32) {
        self.pid.store(pid, Ordering::SeqCst);
    }

    pub(crate) fn beat(&self) {
        self.last_beat.store(coarse_now_ns(), Ordering::Relaxed);
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        self.state.store(state.raw(), Ordering::SeqCst);
    }

    pub(crate) fn state(&self) -> WorkerState {
        WorkerState::from_raw(self.state.load(Ordering::SeqCst))
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    pub(crate) fn last_beat(&self) -> u64 {
        self.last_beat.load(Ordering::Relaxed)
    }

    pub(crate) fn busy(&self) {
        self.busy_since.store(now_ns(), Ordering::Relaxed);
        self.set_state(WorkerState::Busy);
    }

    pub(crate) fn idle(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
        self.set_state(WorkerState::Idle);
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn busy_since(&self) -> u64 {
        self.busy_since.load(Ordering::Relaxed)
    }

    /// Writes the activity text under a sequence lock, as crossbeam's
    /// `SeqLock` does: a writer takes the lock by moving the sequence from even
    /// to odd with a compare-and-swap (every serving thread of a worker may
    /// write, so writers exclude each other), a release fence orders that
    /// before the data stores, and a release store of the next even value
    /// publishes them. The reader retries while the sequence is odd or
    /// changed, so it never sees half of two texts.
    pub(crate) fn write_activity(&self, text: &str) {
        // Control characters become '?': the text ends up in status tables
        // and log lines on an operator's terminal, where an escape sequence
        // from a worker has no business.
        let mut bytes = [0u8; ACTIVITY_LEN];
        let mut end = 0;
        for c in text.chars() {
            let c = if c.is_control() { '?' } else { c };
            let Some(room) = bytes.get_mut(end..) else {
                break;
            };
            if c.len_utf8() > room.len() {
                break;
            }
            end = end.saturating_add(c.encode_utf8(room).len());
        }
        let seq = loop {
            let seq = self.activity_seq.load(Ordering::Relaxed);
            if seq % 2 == 0
                && self
                    .activity_seq
                    .compare_exchange_weak(
                        seq,
                        seq.wrapping_add(1),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                break seq;
            }
            std::hint::spin_loop();
        };
        std::sync::atomic::fence(Ordering::Release);
        for (word, chunk) in self.activity.iter().zip(bytes.chunks_exact(8)) {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(raw), Ordering::Relaxed);
        }
        self.activity_seq
            .store(seq.wrapping_add(2), Ordering::Release);
    }

    pub(crate) fn read_activity(&self) -> String {
        let mut bytes = [0u8; ACTIVITY_LEN];
        // A reader never waits on writers for long: after this many tries
        // against a busy cell it reports no text rather than a torn one.
        let consistent = (0..64).any(|_| {
            let before = self.activity_seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                return false;
            }
            for (word, chunk) in self.activity.iter().zip(bytes.chunks_exact_mut(8)) {
                chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            std::sync::atomic::fence(Ordering::Acquire);
            self.activity_seq.load(Ordering::Relaxed) == before
        });
        if !consistent {
            return String::new();
        }
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(ACTIVITY_LEN);
        String::from_utf8_lossy(&bytes[..len]).into_owned()
    }
}

/// The shared mapping: a header and `capacity` cells.
pub(crate) struct Scoreboard {
    map: sys::SharedMap,
    capacity: usize,
}

impl fmt::Debug for Scoreboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoreboard")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Scoreboard {
    pub(crate) fn new(capacity: usize) -> std::io::Result<Self> {
        Ok(Self {
            map: sys::SharedMap::new(capacity)?,
            capacity,
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn header(&self) -> &Header {
        self.map.header()
    }

    pub(crate) fn cell(&self, slot: usize) -> &Cell {
        &self.map.cells()[slot]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_is_two_cache_lines_and_header_matches() {
        assert_eq!(std::mem::size_of::<Cell>(), 128);
        assert_eq!(std::mem::size_of::<Header>(), 128);
    }

    #[test]
    fn activity_round_trips_and_is_cut_at_a_char_boundary() {
        let board = Scoreboard::new(2).unwrap();
        let cell = board.cell(1);
        cell.write_activity("GET /index.html");
        assert_eq!(cell.read_activity(), "GET /index.html");
        let long = "é".repeat(40);
        cell.write_activity(&long);
        let read = cell.read_activity();
        assert_eq!(read, "é".repeat(32));
        cell.write_activity("\x1b[2J\x1b]0;pwned\x07ok\n");
        assert_eq!(cell.read_activity(), "?[2J?]0;pwned?ok?");
    }

    #[test]
    fn activity_written_by_many_threads_is_never_torn() {
        let board = std::sync::Arc::new(Scoreboard::new(1).unwrap());
        let texts: Vec<String> = (b'a'..=b'd')
            .map(|c| char::from(c).to_string().repeat(ACTIVITY_LEN))
            .collect();
        std::thread::scope(|scope| {
            for text in &texts {
                let board = &board;
                scope.spawn(move || {
                    for _ in 0..20_000 {
                        board.cell(0).write_activity(text);
                    }
                });
            }
            for _ in 0..20_000 {
                let read = board.cell(0).read_activity();
                let first = read.bytes().next();
                assert!(
                    read.is_empty() || read.bytes().all(|b| Some(b) == first),
                    "torn: {read}"
                );
            }
        });
    }

    #[test]
    fn state_and_beat_are_visible() {
        let board = Scoreboard::new(1).unwrap();
        let cell = board.cell(0);
        cell.reset(42, 3);
        assert_eq!(cell.state(), WorkerState::Booting);
        assert_eq!(cell.last_beat(), 0);
        cell.beat();
        assert!(cell.last_beat() > 0);
        cell.busy();
        assert_eq!(cell.state(), WorkerState::Busy);
        assert!(cell.busy_since() > 0);
        cell.idle();
        assert_eq!(cell.state(), WorkerState::Idle);
    }

    #[test]
    fn a_start_extension_only_grows_and_a_reset_clears_it_and_the_hang() {
        let board = Scoreboard::new(1).unwrap();
        let cell = board.cell(0);
        cell.reset(42, 1);
        assert_eq!(cell.start_until(), None);
        let before = now_ns();
        cell.extend_start(Duration::from_secs(30));
        let long = cell.start_until().unwrap();
        assert!(long >= before + 30_000_000_000);
        cell.extend_start(Duration::from_secs(1));
        assert_eq!(
            cell.start_until(),
            Some(long),
            "a shorter one does not shorten"
        );
        cell.extend_start(Duration::MAX);
        assert_eq!(cell.start_until(), Some(u64::MAX));
        assert_eq!(cell.last_beat(), 0, "an extension is no heartbeat");
        assert!(!cell.hung());
        assert!(cell.declare_hung(), "the first declaration sets the flag");
        assert!(!cell.declare_hung(), "a second one finds it set");
        assert!(cell.hung());
        cell.reset(43, 2);
        assert_eq!(cell.start_until(), None);
        assert!(!cell.hung());
    }
}
