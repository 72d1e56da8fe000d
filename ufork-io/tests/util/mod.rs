//! Shared test plumbing: the fork lock, an in-memory sink tests can wait on
//! (and stall), and process checks.
#![allow(dead_code)]

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tests that fork run one at a time (`cargo test` runs tests as threads of
/// one process).
static FORK_LOCK: Mutex<()> = Mutex::new(());

pub fn lock() -> MutexGuard<'static, ()> {
    FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A generous deadline for anything that should take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Inner {
    bytes: Vec<u8>,
    lines: usize,
    writes: usize,
    stalled: bool,
    /// A write is waiting on the stall.
    blocked: bool,
    /// How long every write takes, and the most it takes (0: all): a slow
    /// sink that keeps taking bytes.
    delay: Duration,
    most: usize,
}

/// An in-memory sink: every write is appended and wakes waiters; while
/// stalled, writes block (like a full pipe or a frozen terminal).
#[derive(Clone, Default)]
pub struct MemorySink {
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stalled() -> Self {
        let sink = Self::default();
        sink.set_stalled(true);
        sink
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.lock().stalled = stalled;
        self.inner.1.notify_all();
    }

    /// Every write takes `delay` and at most `most` bytes.
    pub fn set_slow(&self, delay: Duration, most: usize) {
        let mut inner = self.lock();
        inner.delay = delay;
        inner.most = most;
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Waits until `pred` holds for the bytes written so far; fails the test
    /// after `DEADLINE`.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[u8]) -> bool) {
        self.wait_state(what, |inner| pred(&inner.bytes));
    }

    /// Waits until at least `n` lines arrived.
    pub fn wait_lines(&self, n: usize) {
        self.wait_state(&format!("{n} lines"), |inner| inner.lines >= n);
    }

    /// Waits until a line contains `needle`.
    pub fn wait_for_text(&self, needle: &str) {
        self.wait_for(needle, |b| contains(b, needle.as_bytes()));
    }

    /// Waits until a write is blocked on the stall.
    pub fn wait_blocked(&self) {
        self.wait_state("a write blocked on the stalled sink", |inner| inner.blocked);
    }

    fn wait_state(&self, what: &str, pred: impl Fn(&Inner) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        let mut inner = self.lock();
        while !pred(&inner) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "timed out waiting for {what}; sink holds:\n{}",
                        String::from_utf8_lossy(&inner.bytes)
                    )
                });
            inner = self
                .inner
                .1
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Write for MemorySink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.lock();
        while inner.stalled {
            inner.blocked = true;
            self.inner.1.notify_all();
            inner = self.inner.1.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        inner.blocked = false;
        if !inner.delay.is_zero() {
            let delay = inner.delay;
            drop(inner);
            std::thread::sleep(delay);
            inner = self.lock();
        }
        let buf = match inner.most {
            0 => buf,
            most => &buf[..buf.len().min(most)],
        };
        inner.bytes.extend_from_slice(buf);
        inner.lines += buf.iter().filter(|&&b| b == b'\n').count();
        inner.writes += 1;
        self.inner.1.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The lines of `bytes`, without their newlines; every line must end in one.
pub fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "the sink ends in an unfinished line"
    );
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(|l| &l[..l.len() - 1])
        .collect()
}

/// Whether a process with this pid exists (zombies included).
pub fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Stops the pool at once if the thread holding it panics, so a failed
/// check ends the test instead of leaving `run` waiting forever.
pub struct StopOnPanic(pub ufork_core::Handle);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop_now();
        }
    }
}

/// What a process is blocked in (`/proc/<pid>/wchan`), e.g. `pipe_write`.
pub fn wchan(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

/// Waits for a condition the kernel reports but cannot signal (a process'
/// state), re-checking every millisecond; fails after `DEADLINE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every worker recorded is gone: reaped, not a zombie, not an orphan.
pub fn assert_nothing_left(history: &[ufork_core::ExitRecord]) {
    assert!(!history.is_empty(), "no worker exit was recorded");
    for r in history {
        assert!(!exists(r.pid), "worker pid {} still exists", r.pid);
    }
}

/// Runs `f` on a new thread: the stopper that watches the sink and calls
/// `handle.stop()` while the test's thread runs the arbiter.
pub fn stopper(f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(f)
}

/// A pipe a worker writes a byte to when it reached a point; the test waits.
pub struct Signal {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Signal {
    pub fn new() -> Self {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        Self { read, write }
    }

    /// In the worker.
    pub fn raise(&self) {
        let _ = rustix::io::write(&self.write, b"!");
    }

    /// Waits for `n` bytes, failing after `DEADLINE`.
    pub fn wait(&self, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        let mut got = 0;
        while got < n {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("timed out waiting for a worker's signal");
            let ts = rustix::time::Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            };
            let mut fds = [rustix::event::PollFd::new(
                &self.read,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("poll: {e}"),
            }
            let mut buf = [0u8; 64];
            if let Ok(k) = rustix::io::read(&self.read, &mut buf) {
                got += k;
            }
        }
    }
}
