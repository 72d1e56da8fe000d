//! Helpers for the integration tests: a temp dir per test, running the test
//! helper binary with a watchdog, and stopping every daemon a test started.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal};

/// Generous deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub const TESTBIN: &str = env!("CARGO_BIN_EXE_ufork-daemon-testbin");

/// A fresh directory under the system temp dir, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ufork-daemon-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Asserts that no live process mentions this directory in its command
    /// line (every daemon the test started is gone), then removes it.
    pub fn finish(self) {
        let leftovers = processes_mentioning(self.path.as_os_str());
        assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &OsStr) -> Vec<i32> {
    let needle = needle.as_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) && proc_state(pid) != Some('Z') {
            found.push(pid);
        }
    }
    found
}

/// The testbin with `args`.
pub fn testbin(args: &[&OsStr]) -> Command {
    let mut command = Command::new(TESTBIN);
    command.args(args).stdin(Stdio::null());
    command
}

/// Runs `command` to completion, failing the test after `DEADLINE`.
pub fn run(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn testbin");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("wait for testbin"),
        Err(_) => {
            // Our own child: killing it by its pid cannot hit anyone else.
            let _ = rustix::process::kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL);
            panic!("testbin did not finish within {DEADLINE:?}");
        }
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Parses "daemon started as pid N" from a launcher's stdout, panicking
/// with its output otherwise.
pub fn started_pid(output: &Output) -> i32 {
    let out = stdout(output);
    out.lines()
        .find_map(|line| line.strip_prefix("daemon started as pid "))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "launcher did not report a started daemon: status {:?}, stdout {out:?}, stderr {:?}",
                output.status,
                stderr(output)
            )
        })
}

/// A daemon started by a test: killed (SIGKILL through a pidfd, so never a
/// recycled pid) and waited for when stopped or dropped.
pub struct DaemonGuard {
    pub pid: i32,
    pidfd: Option<OwnedFd>,
}

impl DaemonGuard {
    pub fn new(pid: i32) -> DaemonGuard {
        let pidfd = rustix::process::pidfd_open(
            Pid::from_raw(pid).expect("positive pid"),
            PidfdFlags::empty(),
        )
        .expect("daemon is alive");
        DaemonGuard {
            pid,
            pidfd: Some(pidfd),
        }
    }

    /// Kills the daemon and asserts it is gone.
    pub fn stop(mut self) {
        assert!(self.kill_and_wait(), "daemon {} did not die", self.pid);
    }

    /// Waits for the daemon to exit by itself; asserts it does.
    pub fn wait_gone(mut self) {
        let exited = ufork_daemon::wait_for_exit(self.pid, Some(DEADLINE)).expect("wait for exit");
        assert!(exited, "daemon {} did not exit", self.pid);
        self.pidfd = None;
    }

    fn kill_and_wait(&mut self) -> bool {
        let Some(pidfd) = self.pidfd.take() else {
            return true;
        };
        let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            let left = rustix::time::Timespec::try_from(deadline - Instant::now()).unwrap();
            if let Ok(n) = rustix::event::poll(&mut fds, Some(&left)) {
                if n > 0 {
                    return true;
                }
            }
        }
        false
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// Creates a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
}

/// Opens the FIFO for writing (which waits for its reader, the daemon) and
/// closes it, letting the reader go on. Fails the test after `DEADLINE`.
pub fn release_fifo(path: &Path) {
    let (tx, rx) = mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(&owned));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(file) => drop(file.expect("open fifo for writing")),
        Err(_) => {
            // Unblock the helper thread before failing.
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            panic!(
                "nobody opened {} for reading within {DEADLINE:?}",
                path.display()
            );
        }
    }
}

/// Like `release_fifo`, in two steps: `open` returns once the reader is
/// there; dropping the returned file lets it go on.
pub fn open_fifo_writer(path: &Path) -> std::fs::File {
    let (tx, rx) = mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(&owned));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(file) => file.expect("open fifo for writing"),
        Err(_) => {
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            panic!(
                "nobody opened {} for reading within {DEADLINE:?}",
                path.display()
            );
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp,
/// session, tty_nr.
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: i32,
}

pub fn proc_stat(pid: i32) -> ProcStat {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    ProcStat {
        state: fields[0].chars().next().unwrap(),
        ppid: fields[1].parse().unwrap(),
        pgrp: fields[2].parse().unwrap(),
        session: fields[3].parse().unwrap(),
        tty_nr: fields[4].parse().unwrap(),
    }
}

fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// The umask of a process, from /proc/<pid>/status.
pub fn proc_umask(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .expect("Umask line");
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

/// Where fd `fd` of `pid` points.
pub fn fd_target(pid: i32, fd: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("readlink fd")
}

/// The fd of `pid` open on `path`, if any.
pub fn fd_open_on(pid: i32, path: &Path) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd dir")
        .flatten()
        .find(|entry| std::fs::read_link(entry.path()).is_ok_and(|target| target == path))
        .and_then(|entry| entry.file_name().to_str()?.parse().ok())
}

/// The `flags:` of /proc/<pid>/fdinfo/<fd>, octal.
pub fn fd_flags(pid: i32, fd: i32) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("read fdinfo");
    let line = info
        .lines()
        .find(|l| l.starts_with("flags:"))
        .expect("flags line");
    u32::from_str_radix(line["flags:".len()..].trim(), 8).unwrap()
}

/// Whether someone holds a lock on `path` (tries to take it, exclusively,
/// without waiting, and lets go at once).
pub fn is_locked(path: &Path) -> bool {
    let file = std::fs::File::open(path).expect("open locked file");
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => false,
        Err(rustix::io::Errno::WOULDBLOCK) => true,
        Err(other) => panic!("flock: {other}"),
    }
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A guard on the pid written in `path` (the daemon took it and wrote it),
/// taken before anything is asserted so that a failing test leaks nothing;
/// asserts then that the file is locked. Called after an event that implies
/// the daemon wrote the file (it reached a later step, or was reported ready).
pub fn guard_pidfile(path: &Path) -> DaemonGuard {
    let pid = ufork_daemon::read_pid(path)
        .expect("read pidfile")
        .unwrap_or_else(|| panic!("no pid in {}", path.display()));
    let guard = DaemonGuard::new(pid);
    assert!(is_locked(path), "pidfile {} is not locked", path.display());
    guard
}

/// A guard on the daemon a launcher reported started, if it did: taken
/// before asserting that it should not have.
pub fn guard_if_started(output: &Output) -> Option<DaemonGuard> {
    stdout(output)
        .lines()
        .find_map(|line| line.strip_prefix("daemon started as pid "))
        .and_then(|pid| pid.trim().parse().ok())
        .map(DaemonGuard::new)
}

/// A guard on whoever holds `pidfile`'s lock: after a launcher reported a
/// failure there must be none, and a broken launcher must not leak a daemon.
pub fn holder_guard(pidfile: &Path) -> Option<DaemonGuard> {
    match ufork_daemon::status(pidfile).expect("status") {
        ufork_daemon::Status::Running { pid } => Some(DaemonGuard::new(pid)),
        _ => None,
    }
}

/// Asserts that nobody holds `pidfile` (killing the holder if somebody does).
pub fn assert_no_holder(pidfile: &Path) {
    let holder = holder_guard(pidfile);
    assert!(
        holder.is_none(),
        "a daemon (pid {:?}) survived the failed start",
        holder.map(|g| g.pid)
    );
}
