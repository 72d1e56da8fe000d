//! The processes the bench starts and what it reads about them from /proc.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::BoxError;

/// One process tree the bench started: stopped and reaped on drop.
pub struct Peer {
    pub child: Child,
    /// Signal for a graceful stop.
    stop_signal: Signal,
}

impl Peer {
    pub fn spawn(mut command: Command, stop_signal: Signal) -> Result<Self, BoxError> {
        use std::os::unix::process::CommandExt;
        command.process_group(0).stdin(Stdio::null());
        Ok(Self {
            child: command.spawn()?,
            stop_signal,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let Some(pgid) = Pid::from_raw(self.pid()) else {
            return;
        };
        let _ = rustix::process::kill_process(pgid, self.stop_signal);
        let deadline = Instant::now() + Duration::from_secs(12);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (workers of a peer that stopped
        // badly) goes now.
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        let _ = self.child.wait();
        reap_orphans();
    }
}

/// Reaps every exited child, including orphaned workers reparented to us.
pub fn reap_orphans() {
    use rustix::process::{WaitOptions, wait};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match wait(WaitOptions::NOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
}

/// Waits until `port` answers a GET with 200.
pub fn wait_ready(port: u16, within: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + within;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n");
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
                && &head[9..12] == b"200"
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("port {port} did not answer within {within:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> Result<u16, BoxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The direct children of `pid` (every thread's).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// `pid` and all its descendants.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = children(all[i]);
        all.extend(kids);
        i += 1;
    }
    all
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')' (field 2's end), so field 3 is the first after it.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// The oldest child of `pid` (earliest start time).
pub fn oldest_child(pid: i32) -> Option<i32> {
    children(pid)
        .into_iter()
        .filter_map(|c| Some((stat_field(c, 22)?, c)))
        .min()
        .map(|(_, c)| c)
}

/// Proportional set size of one process, in KiB.
pub fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Context switches (each wake-up of a sleeping thread is one) and CPU
/// time in ns, summed over every thread of `pid`.
pub fn switches_and_cpu(pid: i32) -> (u64, u64) {
    let (mut switches, mut cpu) = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("status")) {
            for line in text.lines() {
                if let Some(v) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            cpu += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (switches, cpu)
}

/// Waits until `pid` has `n` children (a pool fully up).
pub fn wait_children(pid: i32, n: usize, within: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + within;
    while children(pid).len() < n {
        if Instant::now() > deadline {
            return Err(format!("{n} workers did not start within {within:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Open sockets of `pid` (listeners and connections).
pub fn sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| {
        fds.flatten()
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// How the connections opened since `idle` (each worker's socket count
/// then) are split between `workers`, as "31/33".
pub fn split(workers: &[i32], idle: &[usize]) -> String {
    let counts: Vec<String> = workers
        .iter()
        .zip(idle)
        .map(|(&w, &n)| sockets(w).saturating_sub(n).to_string())
        .collect();
    counts.join("/")
}

/// Reaps the children that have exited, without waiting.
pub fn reap_exited() {
    use rustix::process::{WaitOptions, wait};
    while let Ok(Some(_)) = wait(WaitOptions::NOHANG) {}
}
