//! Where captured lines go, and the writer threads that put them there.
//!
//! The arbiter's thread never writes to a sink: it hands whole lines to a
//! bounded queue per sink, and that sink's writer thread empties the queue
//! into it. A stalled sink therefore stalls only its writer; the arbiter
//! notices the queue is full, stops reading the worker pipes that feed it
//! (back-pressure) and goes on supervising, and on feeding the other sinks.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Which of a worker's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stream {
    /// stdout and stderr share one pipe (the default).
    Combined,
    /// stdout, when the streams are kept apart.
    Stdout,
    /// stderr, when the streams are kept apart.
    Stderr,
}

impl Stream {
    /// `"out"`, `"err"`, or `"out+err"` for a shared pipe.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Combined => "out+err",
            Self::Stdout => "out",
            Self::Stderr => "err",
        }
    }
}

/// The destination of captured lines.
///
/// Every line reaches the sink whole: the writer thread hands it whole lines
/// only (one or more per `write` or `write_vectored` call, or exactly one with
/// [`CaptureBuilder::line_per_write`](crate::CaptureBuilder::line_per_write)),
/// so lines of different workers never mix.
pub struct Sink {
    pub(crate) kind: SinkKind,
}

pub(crate) enum SinkKind {
    /// A raw descriptor (fd 1 or 2), written without std's stdio lock.
    Fd(Std),
    Writer(Box<dyn Write + Send>),
    Log {
        target: &'static str,
    },
}

pub(crate) enum Std {
    Out(io::Stdout),
    Err(io::Stderr),
}

impl Std {
    /// fd 1 or 2. `Stdout` and `Stderr` lend their descriptor without taking
    /// std's lock, which a forked worker may need (see the crate's
    /// Limitations).
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Out(out) => out.as_fd(),
            Self::Err(err) => err.as_fd(),
        }
    }
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SinkKind::Fd(Std::Out(_)) => f.write_str("Sink::stdout"),
            SinkKind::Fd(Std::Err(_)) => f.write_str("Sink::stderr"),
            SinkKind::Writer(_) => f.write_str("Sink::writer"),
            SinkKind::Log { target } => write!(f, "Sink::log({target:?})"),
        }
    }
}

impl Sink {
    /// The arbiter's stdout (the default), written through fd 1 directly.
    pub fn stdout() -> Self {
        Self {
            kind: SinkKind::Fd(Std::Out(io::stdout())),
        }
    }

    /// The arbiter's stderr, written through fd 2 directly.
    pub fn stderr() -> Self {
        Self {
            kind: SinkKind::Fd(Std::Err(io::stderr())),
        }
    }

    /// Any writer: a file, a rotating log, a socket, a `Vec<u8>` behind a
    /// mutex. It is flushed after every batch of lines.
    ///
    /// Do not pass `std::io::stdout()` or `stderr()`: the writer thread would
    /// hold std's stdio lock while the arbiter forks, and a worker inheriting
    /// it locked would hang on its first `println!`. Use [`Sink::stdout`].
    pub fn writer(writer: impl Write + Send + 'static) -> Self {
        Self {
            kind: SinkKind::Writer(Box::new(writer)),
        }
    }

    /// The `log` facade: one record per line, target `ufork::worker`, level
    /// `Info` for stdout (or both streams) and `Warn` for stderr, with the
    /// key-values `slot`, `pid` and `stream`. Invalid UTF-8 is replaced (a
    /// record's message is text).
    pub fn log() -> Self {
        Self::log_target("ufork::worker")
    }

    /// Like [`Sink::log`] with another target.
    pub fn log_target(target: &'static str) -> Self {
        Self {
            kind: SinkKind::Log { target },
        }
    }

    pub(crate) fn is_log(&self) -> bool {
        matches!(self.kind, SinkKind::Log { .. })
    }

    pub(crate) fn is_stderr(&self) -> bool {
        matches!(self.kind, SinkKind::Fd(Std::Err(_)))
    }

    /// Whether both are raw descriptors writing into one stream of bytes (the
    /// arbiter's fds 1 and 2 as one pipe, socket or file, `2>&1`; or one
    /// terminal), where two writer threads could splice a line longer than
    /// `PIPE_BUF` with another.
    pub(crate) fn same_file(&self, other: &Self) -> bool {
        match (&self.kind, &other.kind) {
            (SinkKind::Fd(a), SinkKind::Fd(b)) => one_file(a.fd(), b.fd()),
            _ => false,
        }
    }
}

/// Whether writes to `a` and `b` land in one stream of bytes, where two
/// writers could splice each other's lines: one pipe, socket or file (one
/// inode, even opened twice, as `>log 2>>log` does), or one terminal
/// through two device nodes (one device number). `/dev/null` is one file
/// too, harmlessly: it never stalls.
pub fn one_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    use rustix::fs::{FileType, fstat};
    let (Ok(a), Ok(b)) = (fstat(a), fstat(b)) else {
        return false;
    };
    let device =
        |st: &rustix::fs::Stat| FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice;
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        || (device(&a) && device(&b) && a.st_rdev == b.st_rdev)
}

/// One batch of whole lines (each ending in `\n`) from one origin.
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    pub(crate) origin: Origin,
    pub(crate) data: Vec<u8>,
    pub(crate) lines: u64,
}

/// Who wrote a chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Origin {
    Worker {
        slot: usize,
        pid: i32,
        stream: Stream,
    },
    Arbiter,
}

impl Origin {
    /// Whether the chunk goes to the error sink, when there is one.
    fn is_error(self) -> bool {
        matches!(
            self,
            Self::Arbiter
                | Self::Worker {
                    stream: Stream::Stderr,
                    ..
                }
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct CounterCells {
    pub(crate) lines_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) dropped_bytes: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) abandoned_bytes: AtomicU64,
}

/// Live counters of a [`Capture`](crate::Capture), readable from any thread.
#[derive(Clone, Debug)]
pub struct Counters(pub(crate) Arc<CounterCells>);

impl Counters {
    /// Lines the sink accepted (worker lines, markers and arbiter lines).
    pub fn lines_written(&self) -> u64 {
        self.0.lines_written.load(Ordering::Relaxed)
    }

    /// Bytes the sink accepted, prefixes included.
    pub fn bytes_written(&self) -> u64 {
        self.0.bytes_written.load(Ordering::Relaxed)
    }

    /// Worker bytes dropped in lossy mode (and arbiter lines dropped while
    /// the queue was far over its bound).
    pub fn dropped_bytes(&self) -> u64 {
        self.0.dropped_bytes.load(Ordering::Relaxed)
    }

    /// Writes the sink refused (the lines in them are lost). Failures are
    /// also reported through the `log` facade, rate-limited (see the
    /// [crate documentation](crate)).
    pub fn write_errors(&self) -> u64 {
        self.0.write_errors.load(Ordering::Relaxed)
    }

    /// Bytes still queued when the end of `run` stopped waiting for the sink
    /// ([`CaptureBuilder::flush_timeout`](crate::CaptureBuilder::flush_timeout)):
    /// left to a writer thread that may never deliver them.
    pub fn abandoned_bytes(&self) -> u64 {
        self.0.abandoned_bytes.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    chunks: VecDeque<Chunk>,
    /// Bytes queued or being written.
    pub(crate) bytes: usize,
    closed: bool,
    finished: bool,
    /// The arbiter paused reading and wants a byte on the wake pipe once the
    /// queue is down to half its bound.
    pub(crate) want_wake: bool,
    in_sink: bool,
    forking: bool,
    /// The writer waits on `more` (or is about to): a push must wake it. A
    /// busy writer finds the chunk on its own, and a push then costs no
    /// system call.
    writer_idle: bool,
}

/// The queue between the arbiter's thread and the writer thread.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The writer waits here for chunks.
    more: Condvar,
    /// Progress of the writer: the fork gate and the final flush wait here.
    changed: Condvar,
    pub(crate) wake_w: OwnedFd,
    pub(crate) capacity: usize,
    pub(crate) counters: Arc<CounterCells>,
    /// Bytes dropped from this queue (the counters add up every queue's):
    /// what the final flush says a stalled sink dropped before.
    pub(crate) dropped: AtomicU64,
    /// Whether failed writes are also reported straight on fd 2: not when
    /// stderr is a sink of the capture (where the report would go anyway,
    /// through the logger, or fail again).
    pub(crate) report_to_stderr: bool,
    /// Goes up whenever this queue's sinks take bytes (every write call
    /// that took some) and after every batch handed to them (written or
    /// failed): what tells a stalled sink from a slow one. Per queue, unlike
    /// the counters: the arbiter's own lines reaching stderr say nothing of
    /// a stalled stdout.
    pub(crate) progress: Arc<AtomicU64>,
    /// The process whose writer thread empties this queue. Any other process
    /// (a forked worker, whatever it forks, a daemon forked after `build`)
    /// must not touch the queue: its lock may have been held by a thread of
    /// the owner at the fork, and no writer would ever empty it there.
    owner: rustix::process::Pid,
    sink: Mutex<SinkState>,
    /// Buffers of written chunks, for the arbiter's next reads.
    spare: Mutex<Vec<Vec<u8>>>,
    /// A failure report is being emitted: a report that comes back through
    /// the logger into this same sink and fails again is not reported.
    reporting: AtomicBool,
    /// Whether forks wait until the writer is out of the sink (log sinks: the
    /// logger may hold a lock a worker's own logging takes).
    gate: bool,
    per_line: bool,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The sink and what went wrong writing to it.
struct SinkState {
    kind: SinkKind,
    /// Where arbiter lines and workers' stderr go, if not to `kind`.
    err: Option<SinkKind>,
    failures: Failures,
    /// The queue's [`Queue::progress`].
    progress: Arc<AtomicU64>,
}

/// Failed sink writes not yet reported.
#[derive(Debug, Default)]
struct Failures {
    writes: u64,
    bytes: u64,
    last_error: String,
    last_report: Option<Instant>,
}

/// A failing sink is reported at its first failure, then at most this often.
const FAILURE_REPORT_INTERVAL: Duration = Duration::from_secs(10);

impl Failures {
    fn record(&mut self, error: &io::Error, bytes: usize) {
        self.writes += 1;
        self.bytes += bytes as u64;
        self.last_error = error.to_string();
    }

    /// The report of the failures so far, if one is due: the first failure
    /// at once, then at most one per [`FAILURE_REPORT_INTERVAL`] (or now,
    /// with `force`). The failures it reports are forgotten.
    fn take_report(&mut self, now: Instant, force: bool) -> Option<String> {
        if self.writes == 0 {
            return None;
        }
        let recent = self
            .last_report
            .is_some_and(|at| now.saturating_duration_since(at) < FAILURE_REPORT_INTERVAL);
        if recent && !force {
            return None;
        }
        let report = format!(
            "worker output: sink write failed ({} times, {} bytes lost): {}",
            self.writes, self.bytes, self.last_error
        );
        self.writes = 0;
        self.bytes = 0;
        self.last_report = Some(now);
        Some(report)
    }
}

/// How long a fork waits for a log sink's writer to leave the logger.
const FORK_GATE_WAIT: Duration = Duration::from_millis(100);
/// Gathered writes to byte sinks are about this large.
const WRITE_BATCH: usize = 1024 * 1024;
/// The most one write call is handed (a batch goes out in pieces), unless
/// one chunk (one read of a worker's pipe, whole lines) is bigger: each
/// call the sink finishes counts as progress for the stall timeout, so a
/// reader taking a piece per stall timeout (6.4 KB/s at 10 s) is not taken
/// for stalled.
const WRITE_PIECE: usize = 64 * 1024;
/// At most this many pieces per gathered write (Linux's `IOV_MAX`).
const MAX_SEGMENTS: usize = 1024;
/// A chunk this large is written as it is, not copied into a batch.
const DIRECT_WRITE: usize = 32 * 1024;
/// Written chunks' buffers kept for the next reads (and no more bytes of
/// them than the queue's bound): enough for a full queue of pipe-sized
/// chunks to cycle without allocating.
const SPARE_BUFFERS: usize = 64;

impl Queue {
    pub(crate) fn new(
        sink: Sink,
        err_sink: Option<Sink>,
        capacity: usize,
        per_line: bool,
        wake_w: OwnedFd,
    ) -> Self {
        let gate = sink.is_log() || err_sink.as_ref().is_some_and(Sink::is_log);
        let report_to_stderr = !sink.is_stderr() && !err_sink.as_ref().is_some_and(Sink::is_stderr);
        let progress = Arc::new(AtomicU64::new(0));
        Self {
            state: Mutex::new(State::default()),
            more: Condvar::new(),
            changed: Condvar::new(),
            wake_w,
            capacity,
            counters: Arc::default(),
            dropped: AtomicU64::new(0),
            report_to_stderr,
            progress: Arc::clone(&progress),
            owner: rustix::process::getpid(),
            sink: Mutex::new(SinkState {
                kind: sink.kind,
                err: err_sink.map(|s| s.kind),
                failures: Failures::default(),
                progress,
            }),
            spare: Mutex::new(Vec::new()),
            reporting: AtomicBool::new(false),
            gate,
            per_line,
        }
    }

    /// Whether this process is the one whose writer empties the queue.
    pub(crate) fn in_owner(&self) -> bool {
        rustix::process::getpid() == self.owner
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a chunk; the caller holds the lock (and decided it fits).
    pub(crate) fn push(&self, state: &mut State, chunk: Chunk) {
        state.bytes += chunk.data.len();
        state.chunks.push_back(chunk);
        if state.writer_idle {
            state.writer_idle = false;
            self.more.notify_one();
        }
    }

    /// Queues one arbiter line (from [`ArbiterLog`](crate::ArbiterLog)). The
    /// queue's bound is not enforced, so the arbiter never waits, up to four
    /// times the bound; past that the line is dropped and counted. Once the
    /// writer has ended, the line goes to the sink directly.
    pub(crate) fn push_arbiter(&self, line: Vec<u8>) {
        let mut state = self.lock();
        if state.finished {
            drop(state);
            let mut sink = self.lock_sink();
            let chunk = Chunk {
                origin: Origin::Arbiter,
                data: line,
                lines: 1,
            };
            let mut buf = Vec::new();
            write_batch(
                &mut sink,
                &mut VecDeque::from([chunk]),
                &mut buf,
                self.per_line,
                &self.counters,
            );
            drop(sink);
            self.report_failures(false);
            return;
        }
        if state.bytes > self.capacity.saturating_mul(4) {
            self.count_dropped(line.len() as u64);
            return;
        }
        self.push(
            &mut state,
            Chunk {
                origin: Origin::Arbiter,
                data: line,
                lines: 1,
            },
        );
    }

    /// Counts `bytes` dropped from this queue.
    pub(crate) fn count_dropped(&self, bytes: u64) {
        self.dropped.fetch_add(bytes, Ordering::Relaxed);
        self.counters
            .dropped_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Before a fork: with a log sink, waits (briefly) until the writer is
    /// outside the logger and keeps it out until [`end_fork`](Self::end_fork).
    pub(crate) fn begin_fork(&self) -> io::Result<()> {
        if !self.gate {
            return Ok(());
        }
        let deadline = Instant::now().checked_add(FORK_GATE_WAIT);
        let mut state = self.lock();
        while state.in_sink {
            let Some(left) = deadline.and_then(|d| d.checked_duration_since(Instant::now())) else {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the log sink has been busy for 100 ms; forking now could hand the worker a held lock",
                ));
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.forking = true;
        Ok(())
    }

    /// After a fork (or a failed one).
    pub(crate) fn end_fork(&self) {
        if self.gate {
            self.lock().forking = false;
            self.changed.notify_all();
        }
    }

    /// Tells the writer to finish what is queued and end, without waiting.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.more.notify_all();
    }

    /// Tells the writer to finish what is queued and end; waits up to
    /// `timeout` (forever with `None`, or when the deadline would be past
    /// what `Instant` can hold). Returns whether it ended.
    pub(crate) fn close_and_wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.lock();
        state.closed = true;
        self.more.notify_all();
        while !state.finished {
            state = match deadline {
                None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        return false;
                    };
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }

    /// A buffer for a chunk of at least `capacity` bytes: one the writer
    /// handed back if there is one (no allocation, no fresh pages to fault
    /// in), a new one otherwise.
    pub(crate) fn buffer(&self, capacity: usize) -> Vec<u8> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match spare {
            Some(mut buf) => {
                buf.reserve(capacity);
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Empties `batch`, keeping some of its buffers for
    /// [`buffer`](Self::buffer): at most the queue's bound in all.
    fn recycle(&self, batch: &mut VecDeque<Chunk>) {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept: usize = spare.iter().map(Vec::capacity).sum();
        for chunk in batch.drain(..) {
            let mut data = chunk.data;
            let fits = kept.saturating_add(data.capacity()) <= self.capacity;
            if spare.len() < SPARE_BUFFERS && fits {
                kept += data.capacity();
                data.clear();
                spare.push(data);
            }
        }
    }

    /// Bytes still queued.
    pub(crate) fn queued(&self) -> usize {
        self.lock().bytes
    }

    fn lock_sink(&self) -> MutexGuard<'_, SinkState> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports failed sink writes if a report is due (or now, with `force`):
    /// a warning through the `log` facade and, unless this queue's own sink
    /// is stderr, a line on the arbiter's stderr — the logger may well
    /// write into this very sink ([`Capture::logger`](crate::Capture::logger)).
    ///
    /// Call it holding neither lock: the logger may queue a line. That line
    /// cannot start a loop: it is one more write (failing, it is counted for
    /// the next report, due in [`FAILURE_REPORT_INTERVAL`]), and a report
    /// that reaches the sink while this one is emitted is not made.
    fn report_failures(&self, force: bool) {
        if self.reporting.swap(true, Ordering::Acquire) {
            return;
        }
        let due = self.lock_sink().failures.take_report(Instant::now(), force);
        if let Some(report) = due {
            if self.report_to_stderr {
                try_write_stderr(format!("ufork-io: {report}\n").as_bytes());
            }
            log::warn!(target: "ufork_io", "{report}");
        }
        self.reporting.store(false, Ordering::Release);
    }
}

/// Writes `data` to fd 2 if it can take it now: a last resort that must not
/// hang the writer on a stalled stderr (fd 2 stays blocking, as it is shared).
pub(crate) fn try_write_stderr(data: &[u8]) {
    use rustix::event::{PollFd, PollFlags, poll};
    let stderr = io::stderr();
    let fd = stderr.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    let now = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if matches!(poll(&mut fds, Some(&now)), Ok(1)) && fds[0].revents().contains(PollFlags::OUT) {
        // One write of a short line: a pipe with room takes it whole.
        let _ = rustix::io::write(fd, data);
    }
}

/// Starts the writer thread.
pub(crate) fn spawn_writer(queue: Arc<Queue>) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ufork-io-writer".into())
        .spawn(move || writer_loop(&queue))
}

fn writer_loop(queue: &Queue) {
    let mut batch = VecDeque::new();
    let mut buf = Vec::new();
    let mut summed_up = false;
    loop {
        {
            let mut state = queue.lock();
            while state.chunks.is_empty() && !state.closed {
                state.writer_idle = true;
                state = queue.more.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.writer_idle = false;
            if state.chunks.is_empty() {
                if !summed_up {
                    // Failures since the last report would go unsaid: say
                    // them now, once (the report may queue a line: go round
                    // again to write it).
                    summed_up = true;
                    drop(state);
                    queue.report_failures(true);
                    continue;
                }
                state.finished = true;
                queue.changed.notify_all();
                return;
            }
            std::mem::swap(&mut state.chunks, &mut batch);
            if queue.gate {
                while state.forking {
                    state = queue.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                state.in_sink = true;
            }
        }
        let bytes = {
            let mut sink = queue.lock_sink();
            write_batch(
                &mut sink,
                &mut batch,
                &mut buf,
                queue.per_line,
                &queue.counters,
            )
        };
        queue.progress.fetch_add(1, Ordering::Relaxed);
        queue.recycle(&mut batch);
        queue.report_failures(false);
        let mut state = queue.lock();
        state.bytes = state.bytes.saturating_sub(bytes);
        state.in_sink = false;
        if state.want_wake && state.bytes <= queue.capacity / 2 {
            state.want_wake = false;
            // A full wake pipe already holds a wake-up.
            let _ = rustix::io::write(&queue.wake_w, &[1]);
        }
        // Only the fork gate and the final flush wait for progress.
        if queue.gate || state.closed {
            queue.changed.notify_all();
        }
    }
}

/// Writes `batch` (the caller empties it); returns the bytes it took off the
/// queue.
/// Failed writes are counted and noted for [`Queue::report_failures`].
fn write_batch(
    state: &mut SinkState,
    batch: &mut VecDeque<Chunk>,
    buf: &mut Vec<u8>,
    per_line: bool,
    counters: &CounterCells,
) -> usize {
    let SinkState {
        kind,
        err,
        failures,
        progress,
    } = state;
    let progress: &AtomicU64 = progress;
    let mut taken = 0;
    let mut gather = Gather::default();
    buf.clear();
    for (index, chunk) in batch.iter().enumerate() {
        taken += chunk.data.len();
        let to_err = err.is_some() && chunk.origin.is_error();
        if to_err != gather.to_err {
            let sink = pick(kind, err, gather.to_err);
            gather.write(sink, batch, buf, (counters, progress), failures);
            gather.to_err = to_err;
        }
        let sink = pick(kind, err, to_err);
        match sink {
            SinkKind::Log { target } => log_chunk(target, chunk, counters),
            SinkKind::Fd(_) | SinkKind::Writer(_) if per_line => {
                for line in chunk.data.split_inclusive(|&b| b == b'\n') {
                    let result = write_vectored_all(sink, &mut [io::IoSlice::new(line)], progress);
                    account(result, line.len(), 1, counters, failures);
                }
            }
            SinkKind::Fd(_) | SinkKind::Writer(_) => {
                gather.add(index, chunk, buf);
                if gather.segments.len() >= MAX_SEGMENTS || gather.bytes >= WRITE_BATCH {
                    gather.write(sink, batch, buf, (counters, progress), failures);
                }
            }
        }
    }
    let sink = pick(kind, err, gather.to_err);
    gather.write(sink, batch, buf, (counters, progress), failures);
    for sink in std::iter::once(kind).chain(err.as_mut()) {
        if let SinkKind::Writer(w) = sink {
            if let Err(e) = w.flush() {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
                failures.record(&e, 0);
            }
        }
    }
    taken
}

/// The chunks of a batch bound for one byte sink, handed to it in one
/// gathering write (`writev`): a big chunk as it is, without a copy, and
/// small ones copied together into one piece of the batch's buffer, so that
/// a writer that cannot gather still gets few writes.
#[derive(Default)]
struct Gather {
    segments: Vec<Segment>,
    bytes: usize,
    lines: u64,
    /// Whether the segments are for the error sink.
    to_err: bool,
}

/// A piece of a gathering write.
enum Segment {
    /// The whole data of the batch's chunk at this index.
    Chunk(usize),
    /// These bytes of the batch's buffer.
    Buf(std::ops::Range<usize>),
}

impl Gather {
    fn add(&mut self, index: usize, chunk: &Chunk, buf: &mut Vec<u8>) {
        self.bytes += chunk.data.len();
        self.lines += chunk.lines;
        if chunk.data.len() >= DIRECT_WRITE {
            self.segments.push(Segment::Chunk(index));
            return;
        }
        let start = buf.len();
        buf.extend_from_slice(&chunk.data);
        match self.segments.last_mut() {
            Some(Segment::Buf(range)) if range.end == start => range.end = buf.len(),
            _ => self.segments.push(Segment::Buf(start..buf.len())),
        }
    }

    /// Writes what was gathered (nothing if nothing was) and starts afresh.
    fn write(
        &mut self,
        sink: &mut SinkKind,
        batch: &VecDeque<Chunk>,
        buf: &mut Vec<u8>,
        (counters, progress): (&CounterCells, &AtomicU64),
        failures: &mut Failures,
    ) {
        if self.segments.is_empty() {
            return;
        }
        let mut slices: Vec<io::IoSlice<'_>> = self
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Chunk(index) => io::IoSlice::new(&batch[*index].data),
                Segment::Buf(range) => io::IoSlice::new(&buf[range.clone()]),
            })
            .collect();
        let result = write_vectored_all(sink, &mut slices, progress);
        account(result, self.bytes, self.lines, counters, failures);
        self.segments.clear();
        self.bytes = 0;
        self.lines = 0;
        buf.clear();
    }
}

/// The sink for a chunk: the error sink for arbiter lines and workers'
/// stderr when there is one.
fn pick<'a>(
    kind: &'a mut SinkKind,
    err: &'a mut Option<SinkKind>,
    to_err: bool,
) -> &'a mut SinkKind {
    match err {
        Some(err) if to_err => err,
        _ => kind,
    }
}

/// Counts a write of `bytes` (`lines` lines): written, or lost but for
/// the bytes the sink took before it failed.
fn account(
    result: Result<(), Partial>,
    bytes: usize,
    lines: u64,
    counters: &CounterCells,
    failures: &mut Failures,
) {
    match result {
        Ok(()) => {
            counters
                .bytes_written
                .fetch_add(bytes as u64, Ordering::Relaxed);
            counters.lines_written.fetch_add(lines, Ordering::Relaxed);
        }
        Err(Partial { written, error }) => {
            counters
                .bytes_written
                .fetch_add(written as u64, Ordering::Relaxed);
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
            failures.record(&error, bytes.saturating_sub(written));
        }
    }
}

/// A write that failed after the sink took `written` bytes of it.
struct Partial {
    written: usize,
    error: io::Error,
}

/// `write_all` of several slices, in as few calls as the sink takes.
fn write_vectored_all(
    sink: &mut SinkKind,
    mut slices: &mut [io::IoSlice<'_>],
    progress: &AtomicU64,
) -> Result<(), Partial> {
    use rustix::io::Errno;
    let mut total = 0;
    let fail = |written, error| Err(Partial { written, error });
    while !slices.is_empty() {
        // About a piece per call: a blocking write returns only once it
        // has handed over everything it was given, and progress is counted
        // per call, so a slow reader must see calls it can finish. Whole
        // slices only (each holds whole lines: a writer that prints each
        // call as a unit, like the CLI's terminal, never splits a line);
        // one slice bigger than a piece goes alone.
        let fit = slices
            .iter()
            .scan(0usize, |sum, s| {
                *sum += s.len();
                Some(*sum)
            })
            .take_while(|&sum| sum <= WRITE_PIECE)
            .count()
            .max(1);
        let piece = &slices[..fit];
        let written = match sink {
            SinkKind::Fd(std) => match rustix::io::writev(std.fd(), piece) {
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {
                    wait_writable(std.fd());
                    continue;
                }
                Err(e) => return fail(total, e.into()),
            },
            SinkKind::Writer(w) => match w.write_vectored(piece) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return fail(total, e),
            },
            SinkKind::Log { .. } => return Ok(()),
        };
        if written == 0 {
            let error = io::Error::new(io::ErrorKind::WriteZero, "the sink took no bytes");
            return fail(total, error);
        }
        total += written;
        progress.fetch_add(1, Ordering::Relaxed);
        io::IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Waits until a non-blocking descriptor can take bytes.
fn wait_writable(fd: BorrowedFd<'_>) {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::OUT,
    )];
    let _ = rustix::event::poll(&mut fds, None);
}

/// `write_all` on a raw descriptor, waiting in `poll` if it is non-blocking.
pub(crate) fn write_fd(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    use rustix::io::Errno;
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => wait_writable(fd),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn log_chunk(target: &str, chunk: &Chunk, counters: &CounterCells) {
    use log::kv::ToValue;
    let Origin::Worker { slot, pid, stream } = chunk.origin else {
        // An arbiter line would loop back into the logger that produced it.
        let _ = write_fd(io::stderr().as_fd(), &chunk.data);
        return;
    };
    let level = if stream == Stream::Stderr {
        log::Level::Warn
    } else {
        log::Level::Info
    };
    let logger = log::logger();
    for line in chunk.data.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        let kvs = [
            ("slot", slot.to_value()),
            ("pid", pid.to_value()),
            ("stream", stream.as_str().to_value()),
        ];
        logger.log(
            &log::Record::builder()
                .args(format_args!("{text}"))
                .level(level)
                .target(target)
                .key_values(&kvs)
                .build(),
        );
        counters.lines_written.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes_written
            .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes nothing: `write_all` fails with `WriteZero`.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn chunk(data: &[u8]) -> Chunk {
        Chunk {
            origin: Origin::Arbiter,
            data: data.to_vec(),
            lines: 1,
        }
    }

    /// A writer that gathers like `writev`, taking at most `per_call` bytes
    /// a call (unlimited with `usize::MAX`), and records its calls.
    struct Gathering {
        out: Arc<Mutex<(Vec<u8>, usize)>>,
        per_call: usize,
    }

    impl Write for Gathering {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[io::IoSlice::new(data)])
        }
        fn write_vectored(&mut self, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
            let mut out = self.out.lock().unwrap();
            out.1 += 1;
            let mut left = self.per_call;
            for slice in slices {
                if left == 0 {
                    break;
                }
                let n = slice.len().min(left);
                out.0.extend_from_slice(&slice[..n]);
                left -= n;
            }
            Ok(self.per_call - left)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn worker_chunk(slot: usize, stream: Stream, data: Vec<u8>) -> Chunk {
        let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        Chunk {
            origin: Origin::Worker {
                slot,
                pid: 100 + slot as i32,
                stream,
            },
            data,
            lines,
        }
    }

    /// Lines of `len` bytes (newline included), each naming its chunk.
    fn lines_of(chunk: usize, len: usize, count: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for n in 0..count {
            let start = data.len();
            data.extend_from_slice(format!("{chunk}.{n} ").as_bytes());
            data.resize(start + len - 1, b'x');
            data.push(b'\n');
        }
        data
    }

    #[test]
    fn a_batch_is_gathered_into_few_writes_in_order_whatever_each_write_takes() {
        // Big chunks (written without a copy) between runs of small ones
        // (copied together), more pieces than one `writev` takes, and
        // stderr chunks for a sink of their own in between.
        let mut chunks = Vec::new();
        for i in 0..1500 {
            let (len, count) = match i % 5 {
                0 => (80, DIRECT_WRITE / 80 + 1),
                _ => (1 + i % 97, 1 + i % 3),
            };
            let stream = if i % 7 == 3 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            chunks.push(worker_chunk(i % 4, stream, lines_of(i, len, count)));
        }
        let expect = |err: bool| -> Vec<u8> {
            chunks
                .iter()
                .filter(|c| c.origin.is_error() == err)
                .flat_map(|c| c.data.clone())
                .collect()
        };
        let (want_out, want_err) = (expect(false), expect(true));
        let total: usize = chunks.iter().map(|c| c.data.len()).sum();
        let lines: u64 = chunks.iter().map(|c| c.lines).sum();
        for per_call in [usize::MAX, 4096, 7] {
            let out = Arc::new(Mutex::new((Vec::new(), 0)));
            let err = Arc::new(Mutex::new((Vec::new(), 0)));
            let writer = |out: &Arc<Mutex<(Vec<u8>, usize)>>| {
                SinkKind::Writer(Box::new(Gathering {
                    out: Arc::clone(out),
                    per_call,
                }))
            };
            let mut state = SinkState {
                kind: writer(&out),
                err: Some(writer(&err)),
                failures: Failures::default(),
                progress: Arc::default(),
            };
            let counters = CounterCells::default();
            let mut batch: VecDeque<Chunk> = chunks.iter().cloned().collect();
            let taken = write_batch(&mut state, &mut batch, &mut Vec::new(), false, &counters);
            assert_eq!(taken, total);
            let (out, err) = (out.lock().unwrap(), err.lock().unwrap());
            assert!(out.0 == want_out, "stdout bytes differ ({per_call} a call)");
            assert!(err.0 == want_err, "stderr bytes differ ({per_call} a call)");
            assert_eq!(counters.bytes_written.load(Ordering::Relaxed), total as u64);
            assert_eq!(counters.lines_written.load(Ordering::Relaxed), lines);
            assert_eq!(counters.write_errors.load(Ordering::Relaxed), 0);
            if per_call == usize::MAX {
                // One write per run of chunks for one sink and per
                // `MAX_SEGMENTS` pieces, and one per `WRITE_PIECE` bytes (a
                // call ends before a slice that does not fit, so at least
                // half a piece each, on average), not one per chunk.
                let runs = chunks
                    .windows(2)
                    .filter(|w| w[0].origin.is_error() != w[1].origin.is_error())
                    .count()
                    + 1;
                let bound = runs + 2 * total / WRITE_PIECE + chunks.len() / MAX_SEGMENTS + 1;
                assert!(
                    out.1 + err.1 <= bound,
                    "{} writes for {} chunks in {runs} runs",
                    out.1 + err.1,
                    chunks.len()
                );
            }
        }
    }

    #[test]
    fn two_descriptors_are_one_file_when_their_writes_land_in_one_stream() {
        let (_r, w) = rustix::pipe::pipe().unwrap();
        let dup = w.try_clone().unwrap();
        let (_other_r, other) = rustix::pipe::pipe().unwrap();
        assert!(one_file(w.as_fd(), dup.as_fd()), "one pipe (`2>&1`)");
        assert!(!one_file(w.as_fd(), other.as_fd()), "two pipes");
        let path = std::env::temp_dir().join(format!("ufork-io-one-file-{}", std::process::id()));
        let log = std::fs::File::create(&path).unwrap();
        let again = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        assert!(one_file(log.as_fd(), again.as_fd()), "`>log 2>>log`");
        assert!(!one_file(log.as_fd(), w.as_fd()));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn failed_writes_are_counted_and_reported_at_most_once_per_interval() {
        let mut state = SinkState {
            kind: SinkKind::Writer(Box::new(Full)),
            err: None,
            failures: Failures::default(),
            progress: Arc::default(),
        };
        let counters = CounterCells::default();
        let mut buf = Vec::new();
        let mut batch = VecDeque::from([chunk(b"first\n")]);
        write_batch(&mut state, &mut batch, &mut buf, true, &counters);
        assert_eq!(counters.write_errors.load(Ordering::Relaxed), 1);
        let start = Instant::now();
        let report = state.failures.take_report(start, false);
        assert_eq!(
            report.as_deref(),
            Some(
                "worker output: sink write failed (1 times, 6 bytes lost): the sink took no bytes"
            )
        );
        assert_eq!(
            state.failures.take_report(start, false),
            None,
            "nothing new"
        );

        let mut batch = VecDeque::from([chunk(b"second\n"), chunk(b"third\n")]);
        write_batch(&mut state, &mut batch, &mut buf, true, &counters);
        assert_eq!(counters.write_errors.load(Ordering::Relaxed), 3);
        let soon = start + FAILURE_REPORT_INTERVAL / 2;
        assert_eq!(
            state.failures.take_report(soon, false),
            None,
            "rate limited"
        );
        let later = start + FAILURE_REPORT_INTERVAL;
        let report = state.failures.take_report(later, false).expect("due again");
        assert!(report.contains("(2 times, 13 bytes lost)"), "{report}");
        // Forced (the writer's end), a report is made whenever there is news.
        let mut batch = VecDeque::from([chunk(b"fourth\n")]);
        write_batch(&mut state, &mut batch, &mut buf, false, &counters);
        let report = state.failures.take_report(later, true).expect("forced");
        assert!(report.contains("(1 times, 7 bytes lost)"), "{report}");
    }
}
