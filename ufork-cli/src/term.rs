//! Everything the arbiter prints to the terminal goes through here, so that log
//! lines and worker output never tear the `ufork>>` prompt: while the prompt is
//! shown, a line clears it, prints, and draws it again.
//!
//! No lock is held across `write(2)`. Output is composed under the lock into a
//! queue of pending bytes (prompt clears and redraws included, in order), and
//! one thread at a time — the one "on duty" — writes the queue out with the
//! lock released; whoever adds bytes while another thread is on duty leaves
//! them to it. There are two such queues, one per stream, so stderr never
//! waits behind a stdout nobody reads (`ufork run … > fifo`); while the
//! prompt is shown both streams are one terminal, and everything goes through
//! stdout's queue to keep the clear, the text and the redraw in order. When
//! fds 1 and 2 are one file (`2>&1`, one journald stream, `>log 2>>log`),
//! everything goes through stdout's queue too: two writers would splice a
//! line longer than `PIPE_BUF` with another, and a stalled stdout is then a
//! stalled stderr anyway. So a
//! terminal or pipe that stops taking bytes (a pager at a page, a full FIFO,
//! Ctrl-S) blocks at most the thread on duty for it:
//! - [`print()`], [`say`] and [`set_prompt`] never wait: they write what the
//!   descriptor takes at once and leave the rest queued (the arbiter's thread
//!   calls them from the console, and must go on supervising);
//! - [`LineWriter`] (the capture's writer thread, for worker output and the
//!   arbiter's records) waits until its lines are written: back-pressure, so
//!   nothing is lost;
//! - [`flush_within`] (the end of `main`) waits a bounded time, then counts
//!   what is left as dropped.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The prompt as it is on screen.
#[derive(Debug, Default)]
struct Prompt {
    shown: bool,
    line: String,
    /// Cursor position in characters from the start of `line`.
    cursor: usize,
}

/// Output waiting for one stream's descriptor (or, while the prompt is
/// shown, for the terminal).
#[derive(Debug)]
struct Lane {
    /// Composed output, in order, not yet written.
    pending: VecDeque<(Stream, Vec<u8>)>,
    pending_bytes: usize,
    /// A thread is writing `pending` out (with the lock released).
    on_duty: bool,
}

impl Lane {
    const fn new() -> Self {
        Self {
            pending: VecDeque::new(),
            pending_bytes: 0,
            on_duty: false,
        }
    }
}

/// The terminal's state: the prompt and the bytes not written yet.
#[derive(Debug)]
struct Term {
    prompt: Prompt,
    /// Indexed by [`Stream::lane`].
    lanes: [Lane; 2],
    /// Fds 1 and 2 are one file: both streams go through stdout's lane.
    one_file: bool,
}

static TERM: Mutex<Term> = Mutex::new(Term {
    prompt: Prompt {
        shown: false,
        line: String::new(),
        cursor: 0,
    },
    lanes: [Lane::new(), Lane::new()],
    one_file: false,
});

/// Signalled when the thread on duty leaves it.
static OFF_DUTY: Condvar = Condvar::new();

/// What [`print()`] and [`set_prompt`] may leave queued in one queue for a
/// stalled terminal; past it their new text for that queue is dropped (the
/// writer thread's lines are not), while the other queue still takes text.
const PENDING_MAX: usize = 1 << 20;

/// A write that never blocks once `poll` said the descriptor is writable: a
/// pipe with a free buffer takes `PIPE_BUF` bytes whole.
const TRY_WRITE: usize = 4096;

/// The prompt's text.
pub const PROMPT_TEXT: &str = "ufork>> ";

/// The process that owns the prompt. A forked worker is another process: it
/// never takes the terminal's lock (another thread of the arbiter, the
/// capture's writer, may have held it at the fork) and writes straight to its
/// fds.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// Makes this process the owner of the terminal output, and notes whether
/// its stdout and stderr are one file (call it again after moving fds 1 and
/// 2, as a daemon does).
pub fn init() {
    OWNER.store(std::process::id() as i32, Ordering::Relaxed);
    term().one_file = same_file(std::io::stdout().as_fd(), std::io::stderr().as_fd());
}

/// Whether writes to `a` and `b` land in one stream of bytes (see
/// [`ufork_io::one_file`]).
fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    ufork_io::one_file(a, b)
}

fn is_owner() -> bool {
    OWNER.load(Ordering::Relaxed) == std::process::id() as i32
}

fn term() -> MutexGuard<'static, Term> {
    TERM.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which stream a text goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

impl Stream {
    fn lane(self) -> usize {
        match self {
            Self::Out => 0,
            Self::Err => 1,
        }
    }
}

/// [`write_out`] to fd 1 or 2 itself, not through std's handles: std's stdio
/// lock may be held by a thread at a fork, and a worker needs it.
fn write_stream(stream: Stream, data: &[u8], wait: Wait) -> usize {
    match stream {
        Stream::Out => {
            let (written, gone) = write_out(std::io::stdout().as_fd(), data, wait);
            if gone && !STDOUT_GONE.swap(true, Ordering::Relaxed) {
                // Everything printed there is lost from now on, and the pool
                // goes on serving: say so once, where it can still be read.
                let _ = write_out(std::io::stderr().as_fd(), STDOUT_GONE_NOTICE, Wait::Never);
            }
            written
        }
        Stream::Err => write_out(std::io::stderr().as_fd(), data, wait).0,
    }
}

/// Standard output failed for good (a closed pipe: `ufork run … | head`).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Said once on stderr when standard output fails for good.
const STDOUT_GONE_NOTICE: &[u8] = b"ufork: standard output is closed (its reader is gone): the workers' output and the pool's messages written there are dropped from now on; the pool goes on serving\n";

fn draw(out: &mut Vec<u8>, p: &Prompt) {
    let _ = write!(out, "\r\x1b[K{PROMPT_TEXT}{}", p.line);
    let back = p.line.chars().count().saturating_sub(p.cursor);
    if back > 0 {
        let _ = write!(out, "\x1b[{back}D");
    }
}

impl Term {
    /// Queues `bytes` for `stream` in `lane`.
    fn queue(&mut self, lane: usize, stream: Stream, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let lane = &mut self.lanes[lane];
        lane.pending_bytes += bytes.len();
        match lane.pending.back_mut() {
            Some((last, data)) if *last == stream => data.extend_from_slice(&bytes),
            _ => lane.pending.push_back((stream, bytes)),
        }
    }

    /// Queues `text` above the prompt: clear it, the text, draw it again.
    /// Returns the lane it went to.
    fn queue_text(&mut self, stream: Stream, text: &[u8]) -> usize {
        if self.one_file && !self.prompt.shown {
            let lane = Stream::Out.lane();
            self.queue(lane, stream, text.to_vec());
            lane
        } else if self.prompt.shown {
            let lane = Stream::Out.lane();
            self.queue(lane, Stream::Out, b"\r\x1b[K".to_vec());
            self.queue(lane, stream, text.to_vec());
            let mut redraw = Vec::new();
            draw(&mut redraw, &self.prompt);
            self.queue(lane, Stream::Out, redraw);
            lane
        } else {
            self.queue(stream.lane(), stream, text.to_vec());
            stream.lane()
        }
    }

    /// The lane `stream`'s text goes to now.
    fn lane_of(&self, stream: Stream) -> usize {
        if self.one_file || self.prompt.shown {
            Stream::Out.lane()
        } else {
            stream.lane()
        }
    }

    /// Whether the queue `stream`'s text goes to holds [`PENDING_MAX`]: per
    /// queue, so a stdout nobody reads does not silence stderr.
    fn full(&self, stream: Stream) -> bool {
        self.lanes[self.lane_of(stream)].pending_bytes >= PENDING_MAX
    }

    #[cfg(test)]
    fn pending_bytes(&self) -> usize {
        self.lanes.iter().map(|l| l.pending_bytes).sum()
    }
}

/// How long the thread that queued output waits for it to be written.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// Write what the descriptor takes now; leave the rest queued.
    Never,
    /// Until it is written, or the deadline (`None`: for ever).
    Until(Option<Instant>),
}

/// Writes a lane's queue out, on duty, the lock released while writing.
/// Returns with the queue empty, or not if `wait` gave up (the rest stays
/// queued).
fn drain(mut t: MutexGuard<'static, Term>, lane: usize, wait: Wait) {
    loop {
        if t.lanes[lane].pending.is_empty() {
            return;
        }
        if t.lanes[lane].on_duty {
            let Wait::Until(deadline) = wait else {
                // The thread on duty writes what we queued.
                return;
            };
            t = match deadline {
                None => OFF_DUTY.wait(t).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        return;
                    };
                    OFF_DUTY
                        .wait_timeout(t, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            continue;
        }
        let (stream, mut data) = t.lanes[lane]
            .pending
            .pop_front()
            .unwrap_or((Stream::Out, Vec::new()));
        t.lanes[lane].on_duty = true;
        drop(t);
        let written = write_stream(stream, &data, wait);
        t = term();
        let l = &mut t.lanes[lane];
        l.on_duty = false;
        OFF_DUTY.notify_all();
        l.pending_bytes = l.pending_bytes.saturating_sub(written);
        if written < data.len() {
            // Not taken in time: back to the front, the order unchanged.
            data.drain(..written);
            l.pending.push_front((stream, data));
            return;
        }
    }
}

/// Writes `data` to `fd`; returns how much was written (all of it, when
/// the descriptor failed for good, which the `bool` says: the bytes are
/// gone). With [`Wait::Never`] or a deadline, only what `poll` says the
/// descriptor takes in time.
fn write_out(fd: BorrowedFd<'_>, data: &[u8], wait: Wait) -> (usize, bool) {
    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::io::Errno;
    let mut done = 0;
    while done < data.len() {
        let bounded = match wait {
            Wait::Never => Some(Duration::ZERO),
            Wait::Until(None) => None,
            Wait::Until(Some(deadline)) => Some(deadline.saturating_duration_since(Instant::now())),
        };
        let end = match bounded {
            None => data.len(),
            Some(left) => {
                let timeout = rustix::time::Timespec::try_from(left).ok();
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match poll(&mut fds, timeout.as_ref()) {
                    Ok(0) => return (done, false),
                    Ok(_) if fds[0].revents().contains(PollFlags::OUT) => {}
                    Err(Errno::INTR) => continue,
                    // An error or hangup: nothing will ever take the bytes.
                    _ => return (data.len(), true),
                }
                data.len().min(done + TRY_WRITE)
            }
        };
        match rustix::io::write(fd, &data[done..end]) {
            Ok(0) => return (data.len(), true),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if bounded.is_none() => {
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                let _ = poll(&mut fds, None);
            }
            Err(Errno::AGAIN) => {}
            // A closed pipe or a broken terminal: the bytes are gone.
            Err(_) => return (data.len(), true),
        }
    }
    (done, false)
}

/// Shows the prompt with this line and cursor (or hides it with `None`).
/// Never waits for the terminal.
pub fn set_prompt(state: Option<(&str, usize)>) {
    if !is_owner() {
        return;
    }
    let mut t = term();
    let lane = Stream::Out.lane();
    match state {
        Some((line, cursor)) => {
            t.prompt.shown = true;
            t.prompt.line.clear();
            t.prompt.line.push_str(line);
            t.prompt.cursor = cursor;
            let mut redraw = Vec::new();
            draw(&mut redraw, &t.prompt);
            if t.lanes[lane].pending_bytes < PENDING_MAX {
                t.queue(lane, Stream::Out, redraw);
            }
        }
        None => {
            if t.prompt.shown && t.lanes[lane].pending_bytes < PENDING_MAX {
                t.queue(lane, Stream::Out, b"\r\x1b[K".to_vec());
            }
            t.prompt.shown = false;
        }
    }
    drain(t, lane, Wait::Never);
}

/// Forgets the prompt without touching the screen: a forked worker inherits
/// the arbiter's memory but must never draw the arbiter's prompt.
pub fn forget_prompt() {
    OWNER.store(0, Ordering::Relaxed);
}

/// Prints whole lines (`text` should end with a newline) above the prompt.
/// Never waits for the terminal: what it does not take now is written by the
/// next writer, or by [`flush_within`].
pub fn print(stream: Stream, text: &[u8]) {
    print_waiting(stream, text, Wait::Never);
}

fn print_waiting(stream: Stream, text: &[u8], wait: Wait) {
    if !is_owner() {
        write_stream(stream, text, Wait::Until(None));
        return;
    }
    let mut t = term();
    if matches!(wait, Wait::Never) && t.full(stream) {
        return;
    }
    let lane = t.queue_text(stream, text);
    drain(t, lane, wait);
}

/// Prints one line of text to standard output, above the prompt if shown.
/// In JSON mode (`--log-format json`) the line is a JSON object, like every
/// other line.
pub fn say(line: impl AsRef<str>) {
    print(Stream::Out, &crate::logger::for_people(line.as_ref()));
}

/// Writes what is still queued, waiting at most `timeout` in all; stderr's
/// queue first, so a stalled stdout cannot keep the last messages from it.
/// Returns the bytes it had to leave unwritten (not taken in time), for
/// stdout's queue and stderr's (stdout's holds both streams when they are
/// one file, or while the prompt is shown).
pub fn flush_within(timeout: Duration) -> [usize; 2] {
    let deadline = Instant::now().checked_add(timeout);
    for stream in [Stream::Err, Stream::Out] {
        drain(term(), stream.lane(), Wait::Until(deadline));
    }
    let t = term();
    [t.lanes[0].pending_bytes, t.lanes[1].pending_bytes]
}

/// A `Write` that prints whole lines through the terminal queue and waits
/// until they are written (for the capture's writer thread: a stalled
/// terminal applies back-pressure to the workers, and only to them).
#[derive(Debug)]
pub struct LineWriter {
    stream: Stream,
}

impl LineWriter {
    /// Prints to `stream`.
    pub fn new(stream: Stream) -> Self {
        Self { stream }
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        print_waiting(self.stream, buf, Wait::Until(None));
        Ok(buf.len())
    }

    /// All of a gathered write at once: its lines queue together, in order.
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.write(&all)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_above_a_shown_prompt_clears_and_redraws_it() {
        let mut t = Term {
            prompt: Prompt {
                shown: true,
                line: "stat".into(),
                cursor: 2,
            },
            lanes: [Lane::new(), Lane::new()],
            one_file: false,
        };
        assert_eq!(t.queue_text(Stream::Err, b"[0 1] hi\n"), Stream::Out.lane());
        let queued: Vec<(Stream, Vec<u8>)> = t.lanes[0].pending.iter().cloned().collect();
        assert_eq!(
            queued,
            vec![
                (Stream::Out, b"\r\x1b[K".to_vec()),
                (Stream::Err, b"[0 1] hi\n".to_vec()),
                (Stream::Out, b"\r\x1b[Kufork>> stat\x1b[2D".to_vec()),
            ]
        );
        assert_eq!(t.pending_bytes(), 3 + 9 + 21);
    }

    #[test]
    fn without_the_prompt_each_stream_has_its_own_queue() {
        let mut t = Term {
            prompt: Prompt::default(),
            lanes: [Lane::new(), Lane::new()],
            one_file: false,
        };
        assert_eq!(t.queue_text(Stream::Out, b"out\n"), Stream::Out.lane());
        assert_eq!(t.queue_text(Stream::Err, b"err\n"), Stream::Err.lane());
        assert_eq!(t.lanes[1].pending, [(Stream::Err, b"err\n".to_vec())]);
    }

    #[test]
    fn a_full_stdout_queue_leaves_stderr_room_unless_they_are_one_file() {
        let mut t = Term {
            prompt: Prompt::default(),
            lanes: [Lane::new(), Lane::new()],
            one_file: false,
        };
        t.queue_text(Stream::Out, &vec![b'x'; PENDING_MAX]);
        assert!(t.full(Stream::Out));
        assert!(!t.full(Stream::Err));
        t.one_file = true;
        assert!(t.full(Stream::Err));
    }

    #[test]
    fn when_stdout_and_stderr_are_one_file_both_streams_share_one_queue() {
        let mut t = Term {
            prompt: Prompt::default(),
            lanes: [Lane::new(), Lane::new()],
            one_file: true,
        };
        assert_eq!(t.queue_text(Stream::Out, b"out\n"), Stream::Out.lane());
        assert_eq!(t.queue_text(Stream::Err, b"err\n"), Stream::Out.lane());
        assert_eq!(
            t.lanes[0].pending,
            [
                (Stream::Out, b"out\n".to_vec()),
                (Stream::Err, b"err\n".to_vec())
            ]
        );
        assert!(t.lanes[1].pending.is_empty());
    }

    #[test]
    fn one_file_means_one_pipe_one_inode_or_one_terminal() {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        let again = rustix::io::dup(&write).expect("dup");
        assert!(same_file(write.as_fd(), again.as_fd()));
        // Both ends are one pipe, yet apart from each other's writes:
        // another pipe is another stream.
        let (_, other) = rustix::pipe::pipe().expect("pipe");
        assert!(!same_file(write.as_fd(), other.as_fd()));
        drop(read);
        // A regular file opened twice (`>log 2>>log`) is one file.
        let path = std::env::temp_dir().join(format!("ufork-term-{}", std::process::id()));
        let first = std::fs::File::create(&path).expect("create");
        let second = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        let third = std::fs::File::create(path.with_extension("other")).expect("create");
        assert!(same_file(first.as_fd(), second.as_fd()));
        assert!(!same_file(first.as_fd(), third.as_fd()));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("other"));
        // /dev/null opened twice: one device.
        let null = std::fs::File::open("/dev/null").expect("null");
        let null2 = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("null");
        assert!(same_file(null.as_fd(), null2.as_fd()));
        assert!(!same_file(null.as_fd(), first.as_fd()));
    }

    #[test]
    fn a_write_that_may_not_wait_stops_where_the_pipe_is_full() {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        let size = rustix::pipe::fcntl_getpipe_size(&read).expect("pipe size");
        let data = vec![b'x'; size * 2];
        let (written, gone) = write_out(write.as_fd(), &data, Wait::Never);
        assert!(written > 0 && written <= size, "{written} of {size}");
        assert!(!gone);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            write_out(write.as_fd(), &data, Wait::Until(Some(soon))),
            (0, false)
        );
    }

    #[test]
    fn a_write_to_a_closed_pipe_is_gone_not_pending() {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        drop(read);
        for wait in [Wait::Never, Wait::Until(None)] {
            assert_eq!(write_out(write.as_fd(), b"lost\n", wait), (5, true));
        }
    }
}
