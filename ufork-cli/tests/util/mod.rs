//! Helpers for the end-to-end tests: run the real `ufork` binary, read its
//! output line by line, synchronise on lines (never on sleeps), and make sure
//! every process a test starts is gone when it ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn ufork() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ufork"));
    // What the environment may say in place of flags: the tests say it.
    command
        .env_remove("UFORK_LOG")
        .env_remove("PORT")
        .env_remove("WEB_CONCURRENCY")
        .stdin(Stdio::null());
    command
}

/// Runs `ufork ARGS` to completion (it must not serve) and returns its output.
pub fn run(args: &[&str]) -> Output {
    let child = ufork()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ufork");
    let pid = child.id() as i32;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => {
            let output = output.expect("wait for ufork");
            Output {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = rustix::process::kill_process(pid_of(pid), Signal::KILL);
            panic!("ufork {args:?} did not finish within {DEADLINE:?}");
        }
    }
}

/// A finished command's output.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

fn pid_of(pid: i32) -> Pid {
    Pid::from_raw(pid).expect("a positive pid")
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Out,
    Err,
}

/// A running `ufork` whose output is read line by line. Dropping it stops it
/// (SIGTERM, then SIGKILL) and reaps it.
pub struct Running {
    child: Option<Child>,
    lines: Receiver<(From, String)>,
    pub seen: Vec<(From, String)>,
    matched: Vec<usize>,
}

impl Running {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(ufork().args(args))
    }

    pub fn start_with(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ufork");
        let (tx, rx) = channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (from, stream) in [
            (From::Out, Box::new(out) as Box<dyn Read + Send>),
            (From::Err, Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((from, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
            matched: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Waits for a line that contains `needle`; returns it.
    pub fn expect_line(&mut self, needle: &str) -> String {
        self.expect_match(|line| line.contains(needle), needle)
    }

    /// Waits for a line that matches, among the lines not matched before
    /// (stdout and stderr arrive in no fixed order relative to each other).
    pub fn expect_match(&mut self, matches: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        for (i, (_, line)) in self.seen.iter().enumerate() {
            if !self.matched.contains(&i) && matches(line) {
                self.matched.push(i);
                return line.clone();
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((from, line)) => {
                    self.seen.push((from, line.clone()));
                    if matches(&line) {
                        self.matched.push(self.seen.len() - 1);
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {what:?} within {DEADLINE:?}; saw {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "ufork ended without a line with {what:?}; saw {:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// The address in the first line mentioning `http://`.
    pub fn http_addr(&mut self) -> SocketAddr {
        let line = self.expect_line("http://");
        let at = line.find("http://").unwrap() + 7;
        let addr: String = line[at..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        addr.parse().expect("an address after http://")
    }

    /// The `--metrics-bind` address, from the "health on http://…/healthz"
    /// line.
    pub fn health_addr(&mut self) -> SocketAddr {
        let line = self.expect_line("health on http://");
        line.rsplit("http://")
            .next()
            .and_then(|h| h.strip_suffix("/healthz"))
            .and_then(|h| h.parse().ok())
            .expect("the health address")
    }

    pub fn signal(&self, signal: Signal) {
        rustix::process::kill_process(pid_of(self.pid()), signal).expect("signal ufork");
    }

    /// Waits for the process to exit; returns its status and the remaining lines.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id() as i32;
        let (tx, rx) = channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            status
        });
        if rx.recv_timeout(DEADLINE).is_err() {
            let _ = rustix::process::kill_process(pid_of(pid), Signal::KILL);
            let _ = waiter.join();
            panic!(
                "ufork did not exit within {DEADLINE:?}; saw {:#?}",
                self.seen
            );
        }
        let status = waiter.join().expect("waiter").expect("wait");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        status
    }

    /// Every line seen so far, joined.
    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = pid_of(child.id() as i32);
            let _ = rustix::process::kill_process(pid, Signal::TERM);
            if !ufork_daemon::wait_for_exit(child.id() as i32, Some(Duration::from_secs(10)))
                .unwrap_or(false)
            {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
            let _ = child.wait();
        }
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ufork-cli-{name}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn str(&self, name: &str) -> String {
        self.join(name).to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pid `pidfile` names, as soon as it names one (polled without a pause:
/// a test that races the pool's start must see it at once). Fails the test
/// at [`DEADLINE`].
pub fn pid_once_named(pidfile: &Path) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let named = std::fs::read_to_string(pidfile).unwrap_or_default();
        if let Ok(pid) = named.trim().parse::<i32>() {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} names no pid",
            pidfile.display()
        );
        std::thread::yield_now();
    }
}

/// A daemon started by a test: stopped and waited for on drop, by the pid in
/// its pidfile.
pub struct DaemonGuard(pub PathBuf);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Ok(ufork_daemon::Status::Running { pid }) = ufork_daemon::status(&self.0) {
            let _ = ufork_daemon::signal(pid, Signal::TERM);
            if !ufork_daemon::wait_for_exit(pid, Some(Duration::from_secs(10))).unwrap_or(false) {
                let _ = ufork_daemon::signal(pid, Signal::KILL);
                let _ = ufork_daemon::wait_for_exit(pid, Some(Duration::from_secs(10)));
            }
        }
    }
}

/// A minimal HTTP/1.0 GET: status code, content type, body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Sends raw bytes on a connection and returns everything read back.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Asserts a failed command printed exactly one line, `ufork: error: ...`,
/// containing every needle, and exited with `code`.
pub fn assert_one_line_error(output: &Output, code: i32, needles: &[&str]) {
    assert_eq!(output.code(), Some(code), "{output:#?}");
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {output:#?}");
    assert!(lines[0].starts_with("ufork: error: "), "{output:#?}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} missing: {output:#?}");
    }
    assert!(!output.stderr.contains("panicked"), "{output:#?}");
}

/// Asks the control socket until `n` workers are ready (a worker stopped
/// while still booting can miss its SIGTERM: see the ufork-core report).
pub fn wait_ready(socket: &str, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    let want = format!("{n} ready");
    loop {
        let out = run(&["ctl", "--control-socket", socket, "status"]);
        if out.stdout.contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "{out:#?}");
        std::thread::yield_now();
    }
}

/// Whether this machine lets a test make a pid namespace (`unshare --pid
/// --fork --mount-proc`, as root). When it does not, the test fails saying
/// why, unless `UFORK_TESTS_WITHOUT_PIDNS=1` asks to skip such tests: a
/// machine that cannot run them must say so, never pass them silently.
pub fn pid_namespace_available() -> bool {
    let why = match Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "true"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "unshare --pid failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run unshare: {e}"),
    };
    if std::env::var_os("UFORK_TESTS_WITHOUT_PIDNS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED (UFORK_TESTS_WITHOUT_PIDNS=1): no pid namespace here: {why}");
        return false;
    }
    panic!(
        "this test needs a pid namespace and cannot make one here: {why}; run it as root with unshare(1), or set UFORK_TESTS_WITHOUT_PIDNS=1 to skip it knowingly"
    );
}

/// The children of `pid` (its main thread's), with their states (`R`, `S`,
/// `Z`...), from /proc.
pub fn children_of(pid: i32) -> Vec<(i32, String)> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("gone")
                .to_owned();
            (child, state)
        })
        .collect()
}
