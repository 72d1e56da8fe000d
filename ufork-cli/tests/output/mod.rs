//! End-to-end tests of what the `ufork` binary prints: a stalled stdout never
//! keeps the arbiter from supervising or stopping.

use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::util::{DEADLINE, ufork};

/// The pids whose parent is `parent` (scanning /proc: the children file needs
/// a kernel option).
fn children_of(parent: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether no process `pid` exists (a zombie still counts as existing).
fn no_such_process(pid: i32) -> bool {
    std::fs::metadata(format!("/proc/{pid}")).is_err()
}

/// Polls a state of the system (a full pipe, a set of processes) until it
/// holds; fails the test at `DEADLINE`. Returns when it first held.
fn until(what: &str, mut holds: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if holds() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills `child` if the test fails before it exited.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn sigterm_stops_the_pool_while_nobody_reads_its_stdout() {
    let graceful = Duration::from_secs(2);
    // stdout is a pipe whose read end this test holds and never reads.
    let (stalled, write) = rustix::pipe::pipe().expect("pipe");
    let child = ufork()
        .args(["run", "-w", "2", "--graceful-timeout", "2", "--", "yes"])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ufork");
    let pid = child.id() as i32;
    let mut child = Reap(Some(child));
    let mut stderr = child
        .0
        .as_mut()
        .and_then(|c| c.stderr.take())
        .expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // Two workers run, and the pipe fills up (`yes` keeps it full: the
    // capture's writer thread is soon blocked in write(2) on it; a pipe of
    // 16 pages holding partial pages counts as full below its size).
    let capacity = rustix::pipe::fcntl_getpipe_size(&stalled).expect("pipe size");
    let mut workers = Vec::new();
    until("two workers and a full stdout", || {
        workers = children_of(pid);
        let queued = rustix::io::ioctl_fionread(stalled.as_fd()).unwrap_or(0);
        workers.len() == 2 && queued as usize >= capacity / 2
    });

    rustix::process::kill_process(Pid::from_raw(pid).expect("pid"), Signal::TERM).expect("SIGTERM");
    let sent = Instant::now();
    let stopped = until("every worker gone", || {
        workers.iter().all(|&w| no_such_process(w))
    });
    assert!(
        stopped - sent <= graceful + Duration::from_secs(1),
        "the workers took {:?} to stop",
        stopped - sent
    );

    // The arbiter then waits for the stalled sink at most 5 s, and says so.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut owned = child.0.take().expect("child");
    let waiter = std::thread::spawn(move || {
        let status = owned.wait();
        let _ = tx.send(());
        status
    });
    if rx
        .recv_timeout(graceful + Duration::from_secs(5 + 5))
        .is_err()
    {
        let _ = rustix::process::kill_process(Pid::from_raw(pid).expect("pid"), Signal::KILL);
        let _ = waiter.join();
        panic!("ufork did not exit after its bounded flush");
    }
    let status = waiter.join().expect("waiter").expect("wait");
    let stderr = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("did not take the last") && stderr.contains("dropped"),
        "{stderr}"
    );
    assert!(children_of(pid).is_empty());
    drop(stalled);
}
