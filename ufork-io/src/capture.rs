//! The capture layer: per worker a pipe (or two), read in the arbiter's poll
//! loop, assembled into lines and queued for the writer thread of the sink
//! they go to.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rustix::io::Errno;
use rustix::pipe::{PipeFlags, pipe_with};
use ufork_core::{ChildInfo, Context, ExitRecord, Interest, Layer, Readiness, Spawn, Token};

use crate::format::{self, Format, Level, Source};
use crate::line::{Assembler, End};
use crate::sink::{Chunk, CounterCells, Counters, Origin, Queue, Sink, Stream};
use crate::stdin::{StdinHandle, Table};
use crate::{ArbiterLog, Error, Result};

/// Default longest line: longer ones are split with [`CONTINUES`].
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Default bound of each queue between the arbiter and a writer thread.
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Ends a piece of a line longer than the maximum; the line goes on in the
/// next piece.
pub const CONTINUES: &str = " [continues]";
/// Ends a last line that had no newline when its worker exited.
pub const NO_NEWLINE: &str = " [no newline]";

/// Bytes read per ready pipe (on average) in one wake-up of the arbiter
/// before other descriptors get their turn (the last read may go past it).
const BYTES_PER_EVENT: usize = 1024 * 1024;
/// The read buffer: a pipe's worth at the system's default pipe size, as
/// much as the pipes are made with (up to [`MAX_READ_SIZE`]), so that a full
/// pipe is emptied by one `read`.
const READ_SIZE: usize = 64 * 1024;
const MAX_READ_SIZE: usize = 256 * 1024;
/// The pipe size asked for by default where no pipe budget applies (see
/// [`CaptureBuilder::pipe_size`]).
const UNBUDGETED_PIPE_SIZE: usize = 256 * 1024;

/// The worker a line came from, as a custom [`Prefix`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LineInfo {
    /// The worker's slot.
    pub slot: usize,
    /// Its pid.
    pub pid: i32,
    /// Its generation in the slot.
    pub generation: u32,
    /// The stream the line came from.
    pub stream: Stream,
}

type PrefixFn = dyn Fn(&LineInfo, &mut Vec<u8>) + Send + Sync;

/// What goes in front of each line a worker writes.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Prefix {
    /// `[slot pid] `, and `[slot pid err] ` for stderr when the streams are
    /// kept apart (the default).
    #[default]
    SlotPid,
    /// Nothing: the bytes as the worker wrote them.
    None,
    /// Whatever the function appends to the buffer; called once per line.
    Custom(Arc<PrefixFn>),
}

impl Prefix {
    /// A custom prefix: `f` appends it to the buffer it is given.
    pub fn custom(f: impl Fn(&LineInfo, &mut Vec<u8>) + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(f))
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SlotPid => f.write_str("SlotPid"),
            Self::None => f.write_str("None"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Builds a [`Capture`]; every setting has a default.
#[derive(Debug)]
pub struct CaptureBuilder {
    sink: Sink,
    stderr_sink: Option<Sink>,
    arbiter_sink: Option<Sink>,
    format: Format,
    prefix: Prefix,
    split_streams: bool,
    max_line: usize,
    queue_bytes: usize,
    lossy: bool,
    stall_timeout: Option<Duration>,
    stdin_pipe: bool,
    line_per_write: bool,
    pipe_size: Option<usize>,
    flush_timeout: Option<Duration>,
    stop_timeout: Option<Duration>,
}

impl CaptureBuilder {
    /// Where lines go (default [`Sink::stdout`]).
    pub fn sink(mut self, sink: Sink) -> Self {
        self.sink = sink;
        self
    }

    /// Where the arbiter's own lines ([`Capture::logger`]) and, with
    /// [`split_streams`](Self::split_streams), the workers' stderr lines go
    /// (default: the same sink as everything else). A terminal wants worker
    /// stdout on fd 1 and the rest on fd 2, as the processes wrote it.
    ///
    /// It has a queue and writer thread of its own, with its own
    /// back-pressure, [`stall_timeout`](Self::stall_timeout) and drops: a
    /// main sink that stops taking lines (a stdout nobody reads) never holds
    /// up or drops these, nor the other way round. The two threads write
    /// independently: give this one a sink that keeps whole lines whole
    /// against the other's writes, as for [`arbiter_sink`](Self::arbiter_sink)
    /// — except [`Sink::stdout`] and [`Sink::stderr`] onto one file
    /// (`2>&1`), which share one thread.
    pub fn stderr_sink(mut self, sink: Sink) -> Self {
        self.stderr_sink = Some(sink);
        self
    }

    /// A sink of its own for the arbiter's lines ([`Capture::logger`]),
    /// emptied by a writer thread of its own (default: none; they go with
    /// the workers' stderr). A sink that stops taking the workers' lines (a
    /// stdout nobody reads) then never holds up the arbiter's: "stopping" and
    /// "stopped" still reach a stderr that takes them. The two threads write
    /// to their sinks independently: give this one a sink that keeps whole
    /// lines whole against the other's writes (a terminal queue, or short
    /// lines on a pipe, which `write(2)` does not split).
    pub fn arbiter_sink(mut self, sink: Sink) -> Self {
        self.arbiter_sink = Some(sink);
        self
    }

    /// How lines are written: plain, timestamped, for journald, or JSON
    /// (default [`Format::Plain`]). Applies to the workers' lines and to the
    /// arbiter's ([`Capture::logger`]); a [`Sink::log`] ignores it.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// What goes in front of each line (default [`Prefix::SlotPid`]). A
    /// [`Sink::log`] gets no prefix: slot and pid are key-values there.
    pub fn prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// Give stdout and stderr a pipe each, marked apart in the prefix and in
    /// [`LineInfo::stream`] (default false: one pipe, in write order).
    pub fn split_streams(mut self, split: bool) -> Self {
        self.split_streams = split;
        self
    }

    /// Longest line, in bytes, before it is split with [`CONTINUES`]
    /// (default [`DEFAULT_MAX_LINE`]). Never dropped.
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes;
        self
    }

    /// Bound of the queue to a writer thread, in bytes (default
    /// [`DEFAULT_QUEUE_BYTES`]; each sink's queue has it). When it is full
    /// the arbiter stops reading the worker pipes that feed it until it is
    /// half empty (or drops, when [`lossy`](Self::lossy)).
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// Drop lines, counted, instead of applying back-pressure when the sink
    /// falls behind (default false). The sink then reads
    /// `[ufork-io: dropped 1234 bytes from worker 3 (pid 12345)]` where lines
    /// went missing (with [`split_streams`](Self::split_streams), `(pid
    /// 12345), stdout]` or `, stderr]`: each pipe reports its own), as soon
    /// as the queue has room again (the writer wakes the arbiter for it,
    /// whether or not the worker writes more).
    pub fn lossy(mut self, lossy: bool) -> Self {
        self.lossy = lossy;
        self
    }

    /// Lossless, but not for ever: once a sink has taken nothing for this
    /// long while its queue is full (a log reader that stopped reading, a
    /// full FIFO), drop the worker output bound for it, counted and reported
    /// as in [`lossy`](Self::lossy) mode, instead of holding the workers up;
    /// as soon as the sink takes something, lossless again. Each sink on its
    /// own: a stalled stdout drops only stdout (the warning says `the output
    /// sink took nothing for 10.0s: dropping the workers' output (counted)
    /// until it takes some`, or `the stderr sink …: dropping the workers'
    /// stderr …`), never the lines of a [`stderr_sink`](Self::stderr_sink)
    /// that takes them (default `None`:
    /// hold them up for as long as the sink does). The sink is handed at
    /// most 64 KiB per write call (whole lines; more only for one read of a
    /// worker's pipe bigger than that) and every call it finishes counts, so
    /// a slow sink that takes 64 KiB per timeout or more never causes a drop
    /// (a blocking write to a pipe returns only once the reader took all of
    /// it). Workers held up on their output are silent, so keep this below
    /// their hang timeout.
    pub fn stall_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.stall_timeout = timeout.into();
        self
    }

    /// Give each worker a stdin pipe the arbiter side writes to through
    /// [`Capture::stdin`] (default false: core's /dev/null).
    pub fn stdin_pipe(mut self, pipe: bool) -> Self {
        self.stdin_pipe = pipe;
        self
    }

    /// Hand the sink exactly one line per `write` call (default false: whole
    /// lines gathered into one `write_vectored` call of up to 1 MiB, which
    /// is what makes 80-byte lines cheap; a writer that does not gather, as
    /// `Write`'s default method does not, gets them in few `write` calls).
    pub fn line_per_write(mut self, per_line: bool) -> Self {
        self.line_per_write = per_line;
        self
    }

    /// Ask the kernel for pipes of this many bytes (`F_SETPIPE_SZ`). Larger
    /// pipes mean fewer wake-ups for chatty workers, and the arbiter then
    /// reads up to this much at once (at most 256 KiB; `cargo xtask bench io`
    /// compares 64 KiB, 256 KiB and 1 MiB). A refused size is ignored.
    ///
    /// The default (`None`) is 256 KiB when the arbiter, at the fork, has
    /// `CAP_SYS_RESOURCE` or `CAP_SYS_ADMIN` (root, unless it dropped them),
    /// and the system's size, 64 KiB, otherwise. The reason is the user's
    /// pipe budget: a pipe's size counts against it whether or not the pipe
    /// is full, and past `/proc/sys/fs/pipe-user-pages-soft` (64 MiB by
    /// default) every new pipe of that user, in any program, is made with
    /// 8 KiB. The budget does not apply with those capabilities; without
    /// them, 256 KiB pipes for 64 workers would take a quarter of it (half
    /// with [`split_streams`](Self::split_streams)), so bigger pipes are
    /// yours to ask for.
    pub fn pipe_size(mut self, bytes: impl Into<Option<usize>>) -> Self {
        self.pipe_size = bytes.into();
        self
    }

    /// How long the end of `run` waits for the writers to hand everything
    /// to their sinks (default `None`: until they are done, so nothing is
    /// lost; a duration too large for `Instant` also means that). Every
    /// writer finishes at the same time, within this one wait. With a limit,
    /// what is left when it passes is abandoned to the writer threads, which
    /// go on until the process exits: it is counted in
    /// [`Counters::abandoned_bytes`] and reported once (`the output sink did
    /// not take the last N bytes within 5.0s; they are dropped` — `the
    /// stderr sink`, or `the output and stderr sinks`, when those did not
    /// finish — and `(M bytes in all were dropped before, while it stalled)`
    /// when a stall of those sinks dropped output earlier: the notices
    /// saying so may be among what is abandoned): as a warning of target
    /// `ufork_io` carrying the keys `abandoned_bytes` and `dropped_bytes`
    /// (M: what the sinks that did not finish dropped during the run) when
    /// the program's logger takes it (so that a program can say it its own
    /// way), else straight on stderr if that takes the line at once.
    pub fn flush_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.flush_timeout = timeout.into();
        self
    }

    /// Bounds the whole stop, from the moment it begins (the arbiter's
    /// [`Layer::stopping`]) to the end of the final flush (default `None`:
    /// only [`flush_timeout`](Self::flush_timeout) bounds the flush). The
    /// final flush waits for whichever ends first; a stop that never began
    /// (`run` ended another way) waits `flush_timeout`.
    pub fn stop_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.stop_timeout = timeout.into();
        self
    }

    /// Checks the settings and starts the writer threads (one per sink).
    ///
    /// The thread starts here, not in `run`, so that the process already has
    /// it when the arbiter records whether it started single-threaded.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero `max_line` or `queue_bytes`,
    /// [`Error::Pipe`] or [`Error::SpawnWriter`] if the OS refuses.
    pub fn build(self) -> Result<Capture> {
        if self.max_line == 0 {
            return Err(Error::Config {
                setting: "max_line",
                reason: "must be at least 1",
            });
        }
        if self.queue_bytes == 0 {
            return Err(Error::Config {
                setting: "queue_bytes",
                reason: "must be at least 1",
            });
        }
        let (wake_r, wake_w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)
            .map_err(|e| Error::Pipe(e.into()))?;
        let (prefix, format) = if self.sink.is_log() {
            (Prefix::None, Format::Plain)
        } else {
            (self.prefix, self.format)
        };
        // The stderr sink gets a queue and writer of its own, so that a
        // stalled stdout neither holds up nor drops its lines (and the other
        // way round); it shares the main one only when both are the
        // arbiter's fds and those are one file (`2>&1`): two writers would
        // splice long lines there, and one stalled is both stalled anyway.
        // Without split streams and with an arbiter sink it would get
        // nothing.
        let quiet = self.sink.is_stderr() || self.stderr_sink.as_ref().is_some_and(Sink::is_stderr);
        let (shared_err, err_sink) = match self.stderr_sink {
            Some(err) if self.sink.same_file(&err) => (Some(err), None),
            Some(_) if !self.split_streams && self.arbiter_sink.is_some() => (None, None),
            err => (None, err),
        };
        let (per_line, bytes) = (self.line_per_write, self.queue_bytes);
        let mut lanes = Vec::new();
        let out = Queue::new(self.sink, shared_err, bytes, per_line, wake_w);
        let counters = Arc::clone(&out.counters);
        let wake = |lanes: &Vec<Lane>| lanes[0].queue.wake_w.try_clone().map_err(Error::Pipe);
        lanes.push(Lane::start(out, &counters, !quiet)?);
        if let Some(sink) = err_sink {
            let err = Queue::new(sink, None, bytes, per_line, wake(&lanes)?);
            lanes.push(Lane::start(err, &counters, !quiet)?);
        }
        let arbiter = match self.arbiter_sink {
            Some(sink) => {
                let own = Queue::new(sink, None, bytes, per_line, wake(&lanes)?);
                let report = own.report_to_stderr;
                let Lane { queue, writer, .. } = Lane::start(own, &counters, report)?;
                Some((queue, writer.expect("a started lane has its writer")))
            }
            None => None,
        };
        Ok(Capture {
            lanes,
            arbiter,
            wake_r,
            wake_token: None,
            prefix,
            format,
            split: self.split_streams,
            max_line: self.max_line,
            lossy: self.lossy,
            stall_timeout: self.stall_timeout,
            pipe_size: self.pipe_size,
            flush_timeout: self.flush_timeout,
            stop_timeout: self.stop_timeout,
            stop_began: None,
            stdin: self.stdin_pipe.then(|| Arc::new(Mutex::new(Vec::new()))),
            prepared: None,
            workers: Vec::new(),
            tokens: HashMap::new(),
            notices_due: false,
            ready: Vec::new(),
            scratch: vec![
                0;
                self.pipe_size
                    .or_else(default_pipe_size)
                    .map_or(READ_SIZE, |size| size.clamp(READ_SIZE, MAX_READ_SIZE))
            ],
        })
    }
}

/// The capture layer: add it with `Arbiter::builder().layer(capture)`.
///
/// See the [crate documentation](crate) for what it does and why.
pub struct Capture {
    /// The workers' sinks: [`OUT`] (the main sink: stdout, or both streams),
    /// and [`ERR`] with a [`stderr_sink`](CaptureBuilder::stderr_sink) of
    /// its own (which also takes the arbiter's lines, unless they have theirs).
    lanes: Vec<Lane>,
    /// The arbiter's own queue and writer, with an [`arbiter_sink`](CaptureBuilder::arbiter_sink).
    arbiter: Option<(Arc<Queue>, JoinHandle<()>)>,
    wake_r: OwnedFd,
    wake_token: Option<Token>,
    prefix: Prefix,
    format: Format,
    split: bool,
    max_line: usize,
    lossy: bool,
    stall_timeout: Option<Duration>,
    pipe_size: Option<usize>,
    flush_timeout: Option<Duration>,
    stop_timeout: Option<Duration>,
    stop_began: Option<Instant>,
    stdin: Option<Arc<Table>>,
    prepared: Option<Prepared>,
    workers: Vec<Option<WorkerIo>>,
    /// Token to (slot, pipe index); [`STDIN`] as the index for a stdin pipe.
    tokens: HashMap<Token, (usize, usize)>,
    notices_due: bool,
    scratch: Vec<u8>,
    /// Pipes poll reported readable, to be read in [`Layer::tick`].
    ready: Vec<(usize, usize)>,
}

/// What one `read` of a worker's pipe found.
enum PipeRead {
    /// Bytes, assembled and queued.
    Data(usize),
    /// Nothing for now.
    Empty,
    /// EOF or an error: the pipe is done.
    Closed,
    /// The pipe was closed already.
    Gone,
}

const STDIN: usize = usize::MAX;

/// The main sink's lane.
const OUT: usize = 0;
/// The stderr sink's lane, when it has one.
const ERR: usize = 1;

/// One sink's queue and writer thread, and what the arbiter knows of it:
/// back-pressure and the stall timeout apply per lane, so a stalled sink
/// pauses (or drops) only the pipes that feed it.
struct Lane {
    queue: Arc<Queue>,
    writer: Option<JoinHandle<()>>,
    /// The queue is full: the pipes feeding it are not polled.
    paused: bool,
    /// Since when the queue has been full, and the sink's progress count
    /// then.
    paused_since: Option<(Instant, u64)>,
    /// Dropping because the sink stalled past the stall timeout: its
    /// progress count when that began (any other count means the sink took
    /// something, and the lane is lossless again).
    overflowing: Option<u64>,
}

impl Lane {
    /// Starts the writer of `queue`, which counts into `counters`.
    fn start(
        mut queue: Queue,
        counters: &Arc<CounterCells>,
        report_to_stderr: bool,
    ) -> Result<Self> {
        queue.counters = Arc::clone(counters);
        queue.report_to_stderr = report_to_stderr;
        let queue = Arc::new(queue);
        let writer = crate::sink::spawn_writer(Arc::clone(&queue)).map_err(Error::SpawnWriter)?;
        Ok(Self {
            queue,
            writer: Some(writer),
            paused: false,
            paused_since: None,
            overflowing: None,
        })
    }
}

/// Pipes made before a fork: (read, write) each.
struct Prepared {
    slot: usize,
    generation: u32,
    out: (OwnedFd, OwnedFd),
    err: Option<(OwnedFd, OwnedFd)>,
    stdin: Option<(OwnedFd, OwnedFd)>,
}

struct WorkerIo {
    pid: i32,
    pipes: Vec<Option<PipeIo>>,
    stdin_token: Option<Token>,
}

struct PipeIo {
    fd: OwnedFd,
    token: Token,
    info: LineInfo,
    /// The rendered [`Prefix::SlotPid`], made once per worker.
    slot_pid: Vec<u8>,
    asm: Assembler,
    /// Bytes dropped (lossy mode) and not reported yet.
    dropped: u64,
    /// The lane of the sink its lines go to.
    lane: usize,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("prefix", &self.prefix)
            .field("split", &self.split)
            .field("max_line", &self.max_line)
            .field("lossy", &self.lossy)
            .field("queue", &self.lanes[OUT].queue)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Starts building a capture layer.
    pub fn builder() -> CaptureBuilder {
        CaptureBuilder {
            sink: Sink::stdout(),
            stderr_sink: None,
            arbiter_sink: None,
            format: Format::Plain,
            prefix: Prefix::SlotPid,
            split_streams: false,
            max_line: DEFAULT_MAX_LINE,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            lossy: false,
            stall_timeout: None,
            stdin_pipe: false,
            line_per_write: false,
            pipe_size: None,
            flush_timeout: None,
            stop_timeout: None,
        }
    }

    /// Live counters: lines and bytes written, bytes dropped, write errors.
    pub fn counters(&self) -> Counters {
        Counters(Arc::clone(&self.lanes[OUT].queue.counters))
    }

    /// A handle to write to workers' stdin, when built with
    /// [`stdin_pipe`](CaptureBuilder::stdin_pipe).
    pub fn stdin(&self) -> Option<StdinHandle> {
        self.stdin.as_ref().map(|table| StdinHandle {
            table: Arc::clone(table),
        })
    }

    /// A [`log::Log`] that puts the arbiter's records in this capture's
    /// sink, between whole worker lines. Install it yourself.
    pub fn logger(&self) -> ArbiterLog {
        // Its own queue, else the stderr sink's, else the only one.
        let errors = &self.lanes[self.lanes.len() - 1].queue;
        let queue = self.arbiter.as_ref().map_or(errors, |(own, _)| own);
        ArbiterLog {
            queue: Arc::clone(queue),
            prefix: "[arbiter] ".to_owned(),
            level: log::LevelFilter::Info,
            format: self.format,
        }
    }

    fn make_pipe(&self) -> io::Result<(OwnedFd, OwnedFd)> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC)?;
        rustix::io::ioctl_fionbio(&read, true)?;
        if let Some(size) = self.pipe_size.or_else(default_pipe_size) {
            let _ = rustix::pipe::fcntl_setpipe_size(&read, size);
        }
        Ok((read, write))
    }

    fn register_pipe(
        &mut self,
        ctx: &mut Context<'_>,
        spawn: &Spawn,
        index: usize,
        fd: OwnedFd,
        stream: Stream,
    ) -> PipeIo {
        let lane = self.lane_of(stream);
        let interest = if self.lanes[lane].paused {
            Interest::default()
        } else {
            Interest::READABLE
        };
        let token = ctx.register(fd.as_fd(), interest);
        self.tokens.insert(token, (spawn.slot, index));
        let slot_pid = match stream {
            Stream::Stderr => format!("[{} {} err] ", spawn.slot, spawn.pid),
            _ => format!("[{} {}] ", spawn.slot, spawn.pid),
        };
        PipeIo {
            fd,
            token,
            info: LineInfo {
                slot: spawn.slot,
                pid: spawn.pid,
                generation: spawn.generation,
                stream,
            },
            slot_pid: slot_pid.into_bytes(),
            asm: Assembler::new(self.max_line),
            dropped: 0,
            lane,
        }
    }

    /// The lane of the sink a stream's lines go to.
    fn lane_of(&self, stream: Stream) -> usize {
        match stream {
            Stream::Stderr if self.lanes.len() > ERR => ERR,
            _ => OUT,
        }
    }

    /// Whether the pipe at `index` of the worker in `slot` feeds a full
    /// queue (false if it is closed).
    fn feeds_paused(&self, slot: usize, index: usize) -> bool {
        let pipe = self.workers.get(slot).and_then(Option::as_ref);
        let pipe = pipe
            .and_then(|w| w.pipes.get(index))
            .and_then(Option::as_ref);
        pipe.is_some_and(|p| self.lanes[p.lane].paused)
    }

    /// Reads a dead worker's pipe to the end (or to what its grandchildren
    /// have not written yet), whatever the queue's state. Returns whether the
    /// pipe hit EOF.
    fn drain(&mut self, slot: usize, index: usize, ctx: &mut Context<'_>) -> bool {
        loop {
            match self.read_once(slot, index, true, ctx) {
                PipeRead::Data(_) => {}
                PipeRead::Empty | PipeRead::Gone => return false,
                PipeRead::Closed => return true,
            }
        }
    }

    /// Reads the pipes poll reported, round and round, each until it is
    /// empty: a worker whose read woke it refills its pipe while the others
    /// are read, and is read again in the same wake-up of the arbiter
    /// instead of the next. Leaves a pipe whose sink's queue is full
    /// (back-pressure), and stops after [`BYTES_PER_EVENT`] per pipe on
    /// average; what is left is reported by the next poll.
    fn sweep(&mut self, ctx: &mut Context<'_>) {
        let mut active = std::mem::take(&mut self.ready);
        let mut budget = BYTES_PER_EVENT.saturating_mul(active.len());
        'rounds: while !active.is_empty() {
            let mut i = 0;
            while i < active.len() {
                if budget == 0 {
                    break 'rounds;
                }
                let (slot, index) = active[i];
                if self.feeds_paused(slot, index) {
                    // Its sink's queue is full: back-pressure on this pipe
                    // only (read again once the lane resumes).
                    active.remove(i);
                    continue;
                }
                match self.read_once(slot, index, false, ctx) {
                    PipeRead::Data(n) => {
                        budget = budget.saturating_sub(n);
                        i += 1;
                    }
                    PipeRead::Empty | PipeRead::Gone => {
                        active.remove(i);
                    }
                    PipeRead::Closed => {
                        self.close_pipe(slot, index, ctx);
                        active.remove(i);
                    }
                }
            }
        }
        active.clear();
        self.ready = active;
    }

    /// One `read` of a pipe, its lines queued. `force`: queue them whatever
    /// the queue's state (a dead worker's last output).
    fn read_once(
        &mut self,
        slot: usize,
        index: usize,
        force: bool,
        ctx: &mut Context<'_>,
    ) -> PipeRead {
        let Self {
            workers,
            scratch,
            prefix,
            format,
            lanes,
            ..
        } = self;
        let Some(pipe) = pipe_in(workers, slot, index) else {
            return PipeRead::Gone;
        };
        let queue = &lanes[pipe.lane].queue;
        let n = loop {
            match rustix::io::read(&pipe.fd, &mut scratch[..]) {
                Ok(0) => return PipeRead::Closed,
                Ok(n) => break n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return PipeRead::Empty,
                Err(_) => return PipeRead::Closed,
            }
        };
        let out = queue.buffer(out_capacity(*format, n));
        let (chunk, content) = assemble(pipe, prefix, *format, &scratch[..n], false, out);
        self.submit(slot, index, chunk, content, force, ctx);
        PipeRead::Data(n)
    }

    /// Queues a chunk from a pipe, applying the queue's bound.
    fn submit(
        &mut self,
        slot: usize,
        index: usize,
        chunk: Chunk,
        content: u64,
        force: bool,
        ctx: &mut Context<'_>,
    ) {
        if chunk.lines == 0 {
            return;
        }
        let Self {
            workers,
            prefix,
            format,
            notices_due,
            lossy,
            lanes,
            ..
        } = self;
        let Some(pipe) = pipe_in(workers, slot, index) else {
            return;
        };
        let lane = pipe.lane;
        let Lane {
            queue, overflowing, ..
        } = &mut lanes[lane];
        let queue = Arc::clone(queue);
        let mut state = queue.lock();
        let progress = queue.progress.load(Ordering::Relaxed);
        if overflowing.is_some_and(|mark| mark != progress) {
            // The sink took something: lossless again.
            *overflowing = None;
        }
        let dropping = *lossy || overflowing.is_some();
        if dropping && !force && state.bytes >= queue.capacity {
            pipe.dropped += content;
            queue.count_dropped(content);
            *notices_due = true;
            // The notice goes out once the queue has room: have the writer
            // wake the arbiter then, in case no pipe does.
            state.want_wake = true;
            return;
        }
        if pipe.dropped > 0 {
            let notice = notice(pipe, prefix, *format);
            queue.push(&mut state, notice);
        }
        queue.push(&mut state, chunk);
        if !dropping && !lanes[lane].paused && state.bytes >= queue.capacity {
            state.want_wake = true;
            drop(state);
            self.set_paused(lane, true, ctx);
            self.lanes[lane].paused_since = Some((Instant::now(), progress));
        }
    }

    /// Stops (or resumes) polling the pipes that feed a lane.
    fn set_paused(&mut self, lane: usize, paused: bool, ctx: &mut Context<'_>) {
        self.lanes[lane].paused = paused;
        if !paused {
            self.lanes[lane].paused_since = None;
        }
        let interest = if paused {
            Interest::default()
        } else {
            Interest::READABLE
        };
        for worker in self.workers.iter().flatten() {
            for pipe in worker.pipes.iter().flatten() {
                if pipe.lane == lane {
                    ctx.reregister(pipe.token, interest);
                }
            }
        }
    }

    /// Ends a pipe: flushes its unfinished line, forgets its descriptor.
    fn close_pipe(&mut self, slot: usize, index: usize, ctx: &mut Context<'_>) {
        let Some(mut pipe) = self
            .workers
            .get_mut(slot)
            .and_then(Option::as_mut)
            .and_then(|w| w.pipes.get_mut(index))
            .and_then(Option::take)
        else {
            return;
        };
        ctx.deregister(pipe.token);
        self.tokens.remove(&pipe.token);
        let (chunk, _) = assemble(&mut pipe, &self.prefix, self.format, &[], true, Vec::new());
        let queue = &self.lanes[pipe.lane].queue;
        let mut state = queue.lock();
        if pipe.dropped > 0 {
            let notice = notice(&mut pipe, &self.prefix, self.format);
            queue.push(&mut state, notice);
        }
        if chunk.lines > 0 {
            queue.push(&mut state, chunk);
        }
    }

    fn close_stdin(&mut self, slot: usize, ctx: &mut Context<'_>) {
        let Some(worker) = self.workers.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Some(token) = worker.stdin_token.take() {
            ctx.deregister(token);
            self.tokens.remove(&token);
        }
        if let Some(table) = &self.stdin {
            let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = table.get_mut(slot) {
                *entry = None;
            }
        }
    }

    /// Past the stall timeout with the queue full and the sink has taken
    /// nothing meanwhile: drop instead of holding the workers up (see
    /// [`CaptureBuilder::stall_timeout`]). It took something: it is slow,
    /// not stalled; the wait starts again.
    /// Each lane on its own: a stalled stdout drops only stdout.
    fn check_stall(&mut self, ctx: &mut Context<'_>) {
        let Some(limit) = self.stall_timeout else {
            return;
        };
        for lane in 0..self.lanes.len() {
            let Lane {
                queue,
                paused_since,
                overflowing,
                ..
            } = &mut self.lanes[lane];
            let Some((since, mark)) = *paused_since else {
                continue;
            };
            if since.elapsed() < limit {
                continue;
            }
            let progress = queue.progress.load(Ordering::Relaxed);
            if progress != mark {
                *paused_since = Some((Instant::now(), progress));
                continue;
            }
            // Told when the sink takes something: the drop notices go out
            // then.
            queue.lock().want_wake = true;
            *overflowing = Some(mark);
            let (sink, output) = match lane {
                ERR => ("stderr sink", "stderr"),
                _ => ("output sink", "output"),
            };
            log::warn!(
                "the {sink} took nothing for {:.1}s: dropping the workers' {output} (counted) until it takes some",
                limit.as_secs_f64()
            );
            self.set_paused(lane, false, ctx);
        }
    }

    /// Reports drops (lossy mode) once the queue has room again; while it
    /// has none, the writer is asked to wake the arbiter when it has.
    fn report_drops(&mut self) {
        let mut still_due = false;
        for worker in self.workers.iter_mut().flatten() {
            for pipe in worker.pipes.iter_mut().flatten() {
                if pipe.dropped == 0 {
                    continue;
                }
                let queue = &self.lanes[pipe.lane].queue;
                let mut state = queue.lock();
                if state.bytes >= queue.capacity {
                    still_due = true;
                    state.want_wake = true;
                } else {
                    let notice = notice(pipe, &self.prefix, self.format);
                    queue.push(&mut state, notice);
                }
            }
        }
        self.notices_due = still_due;
    }
}

/// The pipe at `index` of the worker in `slot`, if it is open.
fn pipe_in(workers: &mut [Option<WorkerIo>], slot: usize, index: usize) -> Option<&mut PipeIo> {
    workers
        .get_mut(slot)
        .and_then(Option::as_mut)
        .and_then(|w| w.pipes.get_mut(index))
        .and_then(Option::as_mut)
}

/// The pipe size to ask for when none was set: [`UNBUDGETED_PIPE_SIZE`]
/// when this thread is exempt from the user's pipe budget (the kernel's
/// test: `CAP_SYS_RESOURCE` or `CAP_SYS_ADMIN`), the system's otherwise.
/// Asked at every fork: an arbiter that dropped privileges gets the
/// system's size from then on.
fn default_pipe_size() -> Option<usize> {
    use rustix::thread::CapabilitySet;
    let exempt = CapabilitySet::SYS_RESOURCE | CapabilitySet::SYS_ADMIN;
    rustix::thread::capabilities(None)
        .is_ok_and(|caps| caps.effective.intersects(exempt))
        .then_some(UNBUDGETED_PIPE_SIZE)
}

/// Assembles `data` into a chunk of whole lines; with `finish`, also the
/// unfinished line, marked. Also returns the worker bytes the chunk holds.
fn assemble(
    pipe: &mut PipeIo,
    prefix: &Prefix,
    format: Format,
    data: &[u8],
    finish: bool,
    mut out: Vec<u8>,
) -> (Chunk, u64) {
    let mut lines = 0;
    let mut content = 0u64;
    let PipeIo {
        asm,
        info,
        slot_pid,
        ..
    } = pipe;
    // One reading of the clock per read: the lines in it arrived together.
    let stamp = stamp_for(format);
    let level = Level::of_stream(info.stream);
    let source = Source::Worker {
        slot: info.slot,
        pid: info.pid,
        stream: info.stream,
    };
    // What every line of this read starts with, made once: the timestamp or
    // syslog level, then the fixed prefix (a custom one is called per line).
    let mut lead = Vec::new();
    if format != Format::Json {
        format::head(format, &stamp, level, &mut lead);
        if let Prefix::SlotPid = prefix {
            lead.extend_from_slice(slot_pid);
        }
    }
    let mut emit = |head: &[u8], tail: &[u8], end: End| {
        content += (head.len() + tail.len()) as u64 + u64::from(end == End::Newline);
        lines += 1;
        if format == Format::Json {
            format::json_line(&stamp, level, source, &[head, tail], end, &mut out);
            return;
        }
        out.extend_from_slice(&lead);
        if let Prefix::Custom(f) = prefix {
            f(info, &mut out);
        }
        // Only a line that spans reads has a head: most lines skip a copy.
        if !head.is_empty() {
            out.extend_from_slice(head);
        }
        out.extend_from_slice(tail);
        match end {
            End::Newline => {}
            End::Continues => out.extend_from_slice(CONTINUES.as_bytes()),
            End::NoNewline => out.extend_from_slice(NO_NEWLINE.as_bytes()),
        }
        out.push(b'\n');
    };
    asm.feed(data, &mut emit);
    if finish {
        asm.finish(&mut emit);
    }
    let chunk = Chunk {
        origin: Origin::Worker {
            slot: info.slot,
            pid: info.pid,
            stream: info.stream,
        },
        data: out,
        lines,
    };
    (chunk, content)
}

/// Room for `n` bytes of short lines with their prefixes (and timestamps, or
/// JSON's fields and escapes), so that a read of them is one allocation.
fn out_capacity(format: Format, n: usize) -> usize {
    let room = match format {
        Format::Plain | Format::Journal => n / 4,
        Format::Timestamped => n / 2,
        Format::Json => n.saturating_mul(3),
    };
    n.saturating_add(room).saturating_add(64)
}

/// The current time for the formats that show it (a fixed one otherwise).
fn stamp_for(format: Format) -> format::Stamp {
    match format {
        Format::Timestamped | Format::Json => format::stamp(SystemTime::now()),
        Format::Plain | Format::Journal => format::stamp(SystemTime::UNIX_EPOCH),
    }
}

/// The text of a drop notice. With the streams split, a worker's stdout
/// and stderr each report their own drops (in the same instant when both
/// go to one sink, or both sinks stalled): each notice names its stream,
/// so the two do not read as one notice written twice. The
/// stream comes last: `bytes from worker N (pid P)` reads as it always did,
/// for the parsers that look for it.
fn notice_text(dropped: u64, info: &LineInfo) -> String {
    let stream = match info.stream {
        Stream::Stdout => ", stdout",
        Stream::Stderr => ", stderr",
        Stream::Combined => "",
    };
    format!(
        "[ufork-io: dropped {dropped} bytes from worker {} (pid {}){stream}]",
        info.slot, info.pid
    )
}

/// The line that reports a pipe's dropped bytes, which it resets.
fn notice(pipe: &mut PipeIo, prefix: &Prefix, format: Format) -> Chunk {
    let text = notice_text(pipe.dropped, &pipe.info);
    let stamp = stamp_for(format);
    let level = Level::Warning;
    let mut data = Vec::new();
    if format == Format::Json {
        let source = Source::Worker {
            slot: pipe.info.slot,
            pid: pipe.info.pid,
            stream: pipe.info.stream,
        };
        format::json_line(
            &stamp,
            level,
            source,
            &[text.as_bytes()],
            End::Newline,
            &mut data,
        );
    } else {
        format::head(format, &stamp, level, &mut data);
        match prefix {
            Prefix::SlotPid => data.extend_from_slice(&pipe.slot_pid),
            Prefix::None => {}
            Prefix::Custom(f) => f(&pipe.info, &mut data),
        }
        data.extend_from_slice(text.as_bytes());
        data.push(b'\n');
    }
    pipe.dropped = 0;
    Chunk {
        origin: Origin::Worker {
            slot: pipe.info.slot,
            pid: pipe.info.pid,
            stream: pipe.info.stream,
        },
        data,
        lines: 1,
    }
}

impl Layer for Capture {
    fn started(&mut self, ctx: &mut Context<'_>) {
        self.wake_token = Some(ctx.register(self.wake_r.as_fd(), Interest::READABLE));
    }

    fn prepare(&mut self, slot: usize, generation: u32) -> io::Result<()> {
        self.prepared = None;
        let out = self.make_pipe()?;
        let err = if self.split {
            Some(self.make_pipe()?)
        } else {
            None
        };
        let stdin = if self.stdin.is_some() {
            Some(pipe_with(PipeFlags::CLOEXEC)?)
        } else {
            None
        };
        // Every writer thread is kept out of a log sink across the fork.
        let queues: Vec<&Arc<Queue>> = self.queues().collect();
        for (gated, queue) in queues.iter().enumerate() {
            if let Err(e) = queue.begin_fork() {
                queues[..gated].iter().for_each(|q| q.end_fork());
                return Err(e);
            }
        }
        self.prepared = Some(Prepared {
            slot,
            generation,
            out,
            err,
            stdin,
        });
        Ok(())
    }

    fn fork_failed(&mut self, _slot: usize) {
        self.prepared = None;
        self.end_fork();
    }

    fn in_child(&mut self, _child: &ChildInfo) -> io::Result<()> {
        // This process must not touch the queue (the writer thread does not
        // exist here and may have held its lock at the fork): the queue
        // knows its owner's pid, and the logger checks it.
        let prepared = self
            .prepared
            .take()
            .ok_or_else(|| io::Error::other("ufork-io: no pipes were prepared for this worker"))?;
        let out = &prepared.out.1;
        rustix::stdio::dup2_stdout(out)?;
        rustix::stdio::dup2_stderr(prepared.err.as_ref().map_or(out, |(_, w)| w))?;
        if let Some((read, _)) = &prepared.stdin {
            rustix::stdio::dup2_stdin(read)?;
        }
        // Closing the originals leaves fds 0, 1 and 2; an original that *is*
        // one of them (the arbiter started with it closed) must stay open.
        let Prepared {
            out, err, stdin, ..
        } = prepared;
        let mut fds = vec![out.0, out.1];
        fds.extend(err.into_iter().flat_map(|(r, w)| [r, w]));
        fds.extend(stdin.into_iter().flat_map(|(r, w)| [r, w]));
        for fd in fds {
            if fd.as_raw_fd() <= 2 {
                std::mem::forget(fd);
            }
        }
        Ok(())
    }

    fn spawned(&mut self, spawn: &Spawn, ctx: &mut Context<'_>) {
        self.end_fork();
        let Some(prepared) = self.prepared.take() else {
            return;
        };
        if prepared.slot != spawn.slot || prepared.generation != spawn.generation {
            return;
        }
        let Prepared {
            out, err, stdin, ..
        } = prepared;
        // The worker has its copies of the write ends; holding ours would
        // keep the pipes from ever reporting EOF.
        drop(out.1);
        let mut pipes = Vec::new();
        match err {
            Some((err_r, err_w)) => {
                drop(err_w);
                pipes.push(Some(self.register_pipe(
                    ctx,
                    spawn,
                    0,
                    out.0,
                    Stream::Stdout,
                )));
                pipes.push(Some(self.register_pipe(
                    ctx,
                    spawn,
                    1,
                    err_r,
                    Stream::Stderr,
                )));
            }
            None => {
                pipes.push(Some(self.register_pipe(
                    ctx,
                    spawn,
                    0,
                    out.0,
                    Stream::Combined,
                )));
            }
        }
        let mut stdin_token = None;
        if let (Some((read, write)), Some(table)) = (stdin, &self.stdin) {
            drop(read);
            // Registered without interest only so that core closes it in
            // later workers (which would otherwise keep this worker's stdin
            // from ever reaching EOF); poll still reports an error once the
            // worker closes its end.
            let token = ctx.register(write.as_fd(), Interest::default());
            self.tokens.insert(token, (spawn.slot, STDIN));
            stdin_token = Some(token);
            let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
            if table.len() <= spawn.slot {
                table.resize_with(spawn.slot + 1, || None);
            }
            table[spawn.slot] = Some((spawn.pid, Arc::new(write)));
        }
        if self.workers.len() <= spawn.slot {
            self.workers.resize_with(spawn.slot + 1, || None);
        }
        self.workers[spawn.slot] = Some(WorkerIo {
            pid: spawn.pid,
            pipes,
            stdin_token,
        });
    }

    fn event(&mut self, token: Token, readiness: Readiness, ctx: &mut Context<'_>) {
        if Some(token) == self.wake_token {
            let mut buf = [0u8; 64];
            while matches!(rustix::io::read(&self.wake_r, &mut buf), Ok(n) if n > 0) {}
            for lane in 0..self.lanes.len() {
                if !self.lanes[lane].paused {
                    continue;
                }
                let queue = &self.lanes[lane].queue;
                let mut state = queue.lock();
                if state.bytes < queue.capacity {
                    drop(state);
                    self.set_paused(lane, false, ctx);
                } else {
                    state.want_wake = true;
                }
            }
            return;
        }
        let Some(&(slot, index)) = self.tokens.get(&token) else {
            return;
        };
        if index == STDIN {
            if readiness.error || readiness.hangup {
                self.close_stdin(slot, ctx);
            }
            return;
        }
        if self.feeds_paused(slot, index) && (readiness.hangup || readiness.error) {
            // The worker closed this output while its queue is full. Poll
            // reports a hang-up whatever interest is set, so a pipe left
            // open would wake the arbiter again at once, over and over,
            // until the sink drains. Read what is left, as for a worker
            // that exited (at most a pipe's worth), and close it.
            if self.drain(slot, index, ctx) {
                self.close_pipe(slot, index, ctx);
            }
            return;
        }
        // Read in `tick`, after every event of this poll: then the ready
        // pipes are read together, round and round (see `sweep`).
        self.ready.push((slot, index));
    }

    fn exited(&mut self, record: &ExitRecord, ctx: &mut Context<'_>) {
        let slot = record.slot;
        let pipes = match self.workers.get(slot).and_then(Option::as_ref) {
            Some(worker) if worker.pid == record.pid => worker.pipes.len(),
            _ => return,
        };
        // The worker is dead: everything it wrote is in its pipes. Read it
        // all, whatever the queue's state (at most a pipe's worth each).
        for index in 0..pipes {
            self.drain(slot, index, ctx);
            self.close_pipe(slot, index, ctx);
        }
        self.close_stdin(slot, ctx);
        self.workers[slot] = None;
    }

    fn stopping(&mut self, _ctx: &mut Context<'_>) {
        self.stop_began.get_or_insert_with(Instant::now);
    }

    fn tick(&mut self, ctx: &mut Context<'_>) {
        if !self.ready.is_empty() {
            self.sweep(ctx);
        }
        if self.notices_due {
            self.report_drops();
        }
        self.check_stall(ctx);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let stall = self.stall_timeout?;
        self.lanes
            .iter()
            .filter_map(|lane| lane.paused_since?.0.checked_add(stall))
            .min()
    }

    fn stopped(&mut self) {
        if self.notices_due {
            self.notices_due = false;
            for worker in self.workers.iter_mut().flatten() {
                for pipe in worker.pipes.iter_mut().flatten() {
                    if pipe.dropped > 0 {
                        let queue = &self.lanes[pipe.lane].queue;
                        let notice = notice(pipe, &self.prefix, self.format);
                        queue.push(&mut queue.lock(), notice);
                    }
                }
            }
        }
        let began = Instant::now();
        let timeout = self.final_flush_timeout();
        let deadline = timeout.and_then(|t| began.checked_add(t));
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // Every writer finishes at once, each at its own sink's pace, within
        // one budget: a stalled sink holds up none of the others.
        self.queues().for_each(|queue| queue.close());
        // The arbiter's own lines first: they must not wait for a stalled
        // sink of the workers' (whose wait is bounded below).
        if let Some((own, writer)) = self.arbiter.take()
            && own.close_and_wait(left())
        {
            let _ = writer.join();
        }
        let mut abandoned = [0; 2];
        let mut dropped = 0;
        for (lane, left_over) in self.lanes.iter_mut().zip(&mut abandoned) {
            if lane.queue.close_and_wait(left()) {
                if let Some(writer) = lane.writer.take() {
                    let _ = writer.join();
                }
            } else {
                lane.writer = None;
                *left_over = lane.queue.queued();
                // Drops made earlier while the sink stalled are told by
                // notice lines in its output, the ones still queued
                // abandoned with the rest: the report counts them too.
                dropped += lane.queue.dropped.load(Ordering::Relaxed);
            }
        }
        self.report_abandoned(abandoned, dropped, began);
    }
}

impl Capture {
    /// Every queue: the workers' sinks' and the arbiter's own.
    fn queues(&self) -> impl Iterator<Item = &Arc<Queue>> {
        let lanes = self.lanes.iter().map(|lane| &lane.queue);
        lanes.chain(self.arbiter.as_ref().map(|(own, _)| own))
    }

    /// Ends the fork gate of every queue.
    fn end_fork(&self) {
        self.queues().for_each(|queue| queue.end_fork());
    }

    /// How long the final flush may wait: `flush_timeout`, and no later than
    /// `stop_timeout` after the stop began (`None`: until done).
    fn final_flush_timeout(&self) -> Option<Duration> {
        let left = match (self.stop_began, self.stop_timeout) {
            (Some(began), Some(budget)) => began
                .checked_add(budget)
                .map(|end| end.saturating_duration_since(Instant::now())),
            _ => None,
        };
        match (self.flush_timeout, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reports what the final flush (which `began` then) abandoned of each
    /// lane's queue (`[out, err]` bytes), and the `dropped` bytes the
    /// stalls of those sinks dropped before.
    fn report_abandoned(&self, abandoned: [usize; 2], dropped: u64, began: Instant) {
        let left = abandoned[OUT] + abandoned[ERR];
        if left == 0 {
            return;
        }
        self.lanes[OUT]
            .queue
            .counters
            .abandoned_bytes
            .fetch_add(left as u64, Ordering::Relaxed);
        let sinks = match abandoned.map(|bytes| bytes > 0) {
            [true, true] => "the output and stderr sinks",
            [false, true] => "the stderr sink",
            _ => "the output sink",
        };
        let report = abandoned_report(sinks, left, began.elapsed(), dropped);
        // Said once: to the program's logger if it takes it, else on stderr
        // if that takes the line now (a blocking write could hang the stop
        // on the very stderr that stalled).
        if log::log_enabled!(target: "ufork_io", log::Level::Warn) {
            let (abandoned_bytes, dropped_bytes) = (left as u64, dropped);
            log::warn!(target: "ufork_io", abandoned_bytes, dropped_bytes; "{report}");
        } else {
            crate::sink::try_write_stderr(format!("ufork-io: {report}\n").as_bytes());
        }
    }
}

/// What the final flush says of the `bytes` it abandoned after `waited`
/// to the `sinks` that did not take them, and of the `dropped` bytes of the
/// run those sinks dropped before while they stalled.
fn abandoned_report(sinks: &str, bytes: usize, waited: Duration, dropped: u64) -> String {
    let mut report = if waited < Duration::from_millis(50) {
        // Nothing left of the stop's budget: "within 0.0s" would say nothing.
        format!(
            "{sinks} did not take the last {bytes} bytes before the stop's time ran out; they are dropped"
        )
    } else {
        format!(
            "{sinks} did not take the last {bytes} bytes within {:.1}s; they are dropped",
            waited.as_secs_f64()
        )
    };
    if dropped > 0 {
        let it = if sinks.ends_with('s') { "they" } else { "it" };
        report.push_str(&format!(
            " ({dropped} bytes in all were dropped before, while {it} stalled)"
        ));
    }
    report
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Dropped without `run` ending (never run, or `run` failed): let the
        // writers finish what they have and end on their own.
        let running = self.lanes.iter().filter(|lane| lane.writer.is_some());
        let running = running.map(|lane| &lane.queue);
        for queue in running.chain(self.arbiter.as_ref().map(|(own, _)| own)) {
            if queue.in_owner() {
                queue.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_notice_names_its_stream_when_the_streams_are_split() {
        let info = |stream| LineInfo {
            slot: 3,
            pid: 12345,
            generation: 0,
            stream,
        };
        assert_eq!(
            notice_text(1234, &info(Stream::Combined)),
            "[ufork-io: dropped 1234 bytes from worker 3 (pid 12345)]"
        );
        assert_eq!(
            notice_text(1234, &info(Stream::Stdout)),
            "[ufork-io: dropped 1234 bytes from worker 3 (pid 12345), stdout]"
        );
        assert_eq!(
            notice_text(7, &info(Stream::Stderr)),
            "[ufork-io: dropped 7 bytes from worker 3 (pid 12345), stderr]"
        );
    }

    #[test]
    fn the_final_flush_says_how_long_it_waited_or_that_no_time_was_left() {
        let out = "the output sink";
        assert_eq!(
            abandoned_report(out, 4096, Duration::from_millis(3_960), 0),
            "the output sink did not take the last 4096 bytes within 4.0s; they are dropped"
        );
        assert_eq!(
            abandoned_report(out, 10, Duration::ZERO, 0),
            "the output sink did not take the last 10 bytes before the stop's time ran out; they are dropped"
        );
        assert_eq!(
            abandoned_report(out, 10, Duration::ZERO, 777),
            "the output sink did not take the last 10 bytes before the stop's time ran out; they are dropped (777 bytes in all were dropped before, while it stalled)"
        );
        assert_eq!(
            abandoned_report("the output and stderr sinks", 10, Duration::from_secs(1), 7),
            "the output and stderr sinks did not take the last 10 bytes within 1.0s; they are dropped (7 bytes in all were dropped before, while they stalled)"
        );
    }
}
