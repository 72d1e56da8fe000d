//! Shared test plumbing: a lock for tests that fork or touch signals, an event
//! pipe from workers to the test, and process checks.
#![allow(dead_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tests that fork or change signal state run one at a time (`cargo test`
/// runs tests as threads of one process).
static FORK_LOCK: Mutex<()> = Mutex::new(());

pub fn lock() -> MutexGuard<'static, ()> {
    init_logger();
    let guard = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    LOGS.lock().unwrap_or_else(|p| p.into_inner()).clear();
    guard
}

/// The arbiter's log messages since this test took the lock.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The test process (records from forked workers are kept only if they can
/// be without waiting).
static TEST_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

pub fn logs() -> Vec<String> {
    LOGS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A generous deadline for anything that should take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Lines from workers to the test over one pipe; each line is one write(2), so
/// lines from different workers never mix.
pub struct Events {
    read: OwnedFd,
    write: OwnedFd,
    buf: Vec<u8>,
    pub seen: Vec<String>,
}

impl Events {
    pub fn new() -> Self {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        Self {
            read,
            write,
            buf: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// A cloneable sender for use inside workers.
    pub fn sender(&self) -> Sender {
        Sender(self.write.try_clone().expect("dup"))
    }

    /// Waits for the next line matching `pred`, failing the test after `DEADLINE`.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.next_line_before(deadline) {
                if pred(&line) {
                    return line;
                }
            } else {
                panic!("timed out waiting for {what}; seen: {:?}", self.seen);
            }
        }
    }

    /// The next line, or None at `deadline`.
    pub fn next_line_before(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                self.seen.push(line.clone());
                return Some(line);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let ts = rustix::time::Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            };
            let mut fds = [rustix::event::PollFd::new(
                &self.read,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => panic!("poll: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match rustix::io::read(&self.read, &mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

pub struct Sender(OwnedFd);

impl Sender {
    pub fn send(&self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        let _ = rustix::io::write(self.0.as_fd(), &bytes);
    }
}

/// Whether `pid` still exists and is not a zombie.
pub fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Whether `pid` exists at all (zombies included).
pub fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until `cond` holds, polling (for states that have no event, such as
/// another process disappearing); fails the test after `DEADLINE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; the arbiter logged: {:#?}",
            logs()
        );
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Descriptors open in this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Children of this process that still exist (zombies included).
pub fn children_of_self() -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                        stat.rsplit(')')
                            .next()
                            .and_then(|r| r.split_whitespace().nth(1))
                            == Some(me.as_str())
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A signal mask field (SigIgn, SigCgt, SigBlk...) of /proc/self/status.
pub fn signal_mask(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .expect("field");
    u64::from_str_radix(line.split_whitespace().nth(1).expect("value"), 16).expect("hex")
}

/// Waits for `pid` (any process, not only a child) to exit, by pidfd: the
/// event, not a polling loop. Returns false if it is still running at the deadline.
pub fn wait_exit(pid: i32, within: Duration) -> bool {
    let Some(raw) = rustix::process::Pid::from_raw(pid) else {
        return true;
    };
    let Ok(fd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else {
        return true; // already gone
    };
    let ts = rustix::time::Timespec {
        tv_sec: within.as_secs() as _,
        tv_nsec: within.subsec_nanos() as _,
    };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
}

/// Prints the arbiter's log records to stderr (captured by the test harness,
/// shown when a test fails).
pub fn init_logger() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            eprintln!(
                "[{} {}] {}",
                std::process::id(),
                record.level(),
                record.args()
            );
            // In the test's own process every record is kept (a test may
            // be polling `logs()` right then). A forked worker may have
            // inherited the lock held by a thread it does not have: it only
            // tries.
            let logs = if std::process::id() == *TEST_PID.get_or_init(std::process::id) {
                Some(LOGS.lock().unwrap_or_else(|p| p.into_inner()))
            } else {
                LOGS.try_lock().ok()
            };
            if let Some(mut logs) = logs {
                logs.push(format!("{} {}", record.level(), record.args()));
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    TEST_PID.get_or_init(std::process::id);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

/// `spawn_thread` whose join handle stops the pool if the test fails before
/// joining it, so one failing test does not leave workers for the next.
pub trait SpawnGuarded {
    fn spawn_guarded<F, E>(self, f: F) -> std::io::Result<(ufork_core::Handle, Joiner)>
    where
        F: FnMut(&mut ufork_core::Worker) -> Result<(), E> + Send + 'static,
        E: std::fmt::Display;
}

impl SpawnGuarded for ufork_core::Arbiter {
    fn spawn_guarded<F, E>(self, f: F) -> std::io::Result<(ufork_core::Handle, Joiner)>
    where
        F: FnMut(&mut ufork_core::Worker) -> Result<(), E> + Send + 'static,
        E: std::fmt::Display,
    {
        let (handle, thread) = self.spawn_thread(f)?;
        Ok((
            handle.clone(),
            Joiner {
                handle,
                thread: Some(thread),
            },
        ))
    }
}

pub struct Joiner {
    handle: ufork_core::Handle,
    thread: Option<std::thread::JoinHandle<ufork_core::Result<ufork_core::Outcome>>>,
}

impl Joiner {
    pub fn join(mut self) -> std::thread::Result<ufork_core::Result<ufork_core::Outcome>> {
        self.thread.take().expect("joined once").join()
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.stop_now();
            let _ = thread.join();
        }
    }
}

/// A child process killed and reaped when dropped, so a failing test leaves
/// no process behind.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}
