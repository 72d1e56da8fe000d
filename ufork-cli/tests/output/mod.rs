//! End-to-end tests of what the `ufork` binary prints: a stalled stdout never
//! keeps the arbiter from supervising or stopping.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::util::{DEADLINE, run, ufork};

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

/// A pool of two `yes` workers whose stdout is a pipe nobody reads, started
/// the way a shell starts a background job (SIGINT ignored), and SIGTERMed
/// once the pipe is full. Returns the pool, its pid, its stderr (read to the
/// end on a thread), the workers' pids, the pipe's read end, and when the
/// SIGTERM was sent.
struct Stalled {
    child: Reap,
    pid: i32,
    stderr: std::thread::JoinHandle<String>,
    workers: Vec<i32>,
    _pipe: rustix::fd::OwnedFd,
    sent: Instant,
}

/// Starts `command` with stdout a pipe whose read end (returned) the test
/// holds and never reads, and stderr read to the end on a thread (and what
/// it said so far, as it comes).
fn start_into_stalled_stdout(
    command: &mut std::process::Command,
) -> (
    Reap,
    i32,
    std::thread::JoinHandle<String>,
    rustix::fd::OwnedFd,
    Arc<Mutex<String>>,
) {
    let (stalled, write) = rustix::pipe::pipe().expect("pipe");
    let child = command
        .stdin(Stdio::null())
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
    let seen = Arc::new(Mutex::new(String::new()));
    let so_far = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut chunk) {
            so_far
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        so_far.lock().unwrap().clone()
    });
    (child, pid, reader, stalled, seen)
}

fn stall_and_sigterm(graceful: Duration) -> Stalled {
    let (child, pid, reader, stalled, _) = start_into_stalled_stdout(
        std::process::Command::new("sh")
            .args(["-c", "trap '' INT; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_ufork"))
            .args(["run", "-w", "2", "--graceful-timeout"])
            .arg(graceful.as_secs().to_string())
            .args(["--", "yes"]),
    );
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
    Stalled {
        child,
        pid,
        stderr: reader,
        workers,
        _pipe: stalled,
        sent,
    }
}

impl Stalled {
    /// Waits for the pool to exit (failing the test at `DEADLINE`), calling
    /// `meanwhile` every few milliseconds; returns its status, when it ended,
    /// and its stderr.
    fn wait(mut self, mut meanwhile: impl FnMut()) -> (std::process::ExitStatus, Instant, String) {
        let mut owned = self.child.0.take().expect("child");
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = owned.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = owned.kill();
                let _ = owned.wait();
                panic!("ufork did not exit after its bounded flush");
            }
            meanwhile();
            std::thread::sleep(Duration::from_millis(5));
        };
        let ended = Instant::now();
        let stderr = self.stderr.join().expect("stderr reader");
        assert!(children_of(self.pid).is_empty(), "{stderr}");
        assert!(self.workers.iter().all(|&w| no_such_process(w)));
        (status, ended, stderr)
    }
}

#[test]
fn sigterm_stops_the_pool_while_nobody_reads_its_stdout() {
    let graceful = Duration::from_secs(2);
    let pool = stall_and_sigterm(graceful);
    let sent = pool.sent;
    let (status, ended, stderr) = pool.wait(|| {});
    assert_eq!(status.code(), Some(0), "{stderr}");
    // The whole stop, final flush included, takes the graceful timeout plus
    // 1 s (the workers end at once, so the flush waits out that budget);
    // one more second is slack for a loaded machine, and still short of the
    // 5 s flush the budget bounds.
    assert!(
        ended - sent <= graceful + Duration::from_secs(2),
        "ufork took {:?} to exit: {stderr}",
        ended - sent
    );
    // The arbiter's own lines go to stderr, which takes them: they do not
    // wait behind the stalled stdout, nor are they dropped with it.
    for line in ["SIGTERM: stopping", "stopped: every worker reaped"] {
        assert!(stderr.contains(line), "{line:?} missing: {stderr}");
    }
    // What was lost is said once, in one line: one count (what the
    // capture gave up on and what the terminal did not take, added up),
    // the stream that stalled, and the wait, in seconds to a tenth and not
    // "0.0s". No line of ufork-io's of its own, nor a warning repeating it.
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("dropped") || l.contains("did not take"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    let (bytes, why) = said[0]
        .strip_prefix("ufork: ")
        .and_then(|rest| rest.split_once(" bytes of output dropped at exit: "))
        .unwrap_or_else(|| panic!("not one statement: {stderr}"));
    assert!(bytes.parse::<u64>().is_ok_and(|b| b > 0), "{stderr}");
    let waited = why
        .strip_prefix("stdout did not take them within ")
        .and_then(|rest| rest.strip_suffix('s'))
        .unwrap_or_else(|| panic!("no stream or wait in: {stderr}"));
    assert!(
        waited.split_once('.').is_some_and(|(_, d)| d.len() == 1)
            && waited.parse::<f64>().is_ok_and(|w| w > 0.0),
        "{waited:?} in {stderr}"
    );
}

/// Output dropped while stdout stalled (`--log-stall-timeout`) is told by
/// notice lines in the output, which a stdout still stalled at exit never
/// takes: the end-of-run line counts those bytes too.
#[test]
fn the_end_of_run_line_counts_what_a_stall_dropped_before() {
    let (child, pid, reader, stalled, seen) = start_into_stalled_stdout(
        ufork()
            .args(["run", "-w", "1", "--graceful-timeout", "1"])
            .args(["--log-stall-timeout", "0.5", "--", "yes"]),
    );
    until("the output to be dropped", || {
        seen.lock()
            .unwrap()
            .contains("dropping the workers' output")
    });
    let workers = children_of(pid);
    rustix::process::kill_process(Pid::from_raw(pid).expect("pid"), Signal::TERM).expect("SIGTERM");
    let pool = Stalled {
        child,
        pid,
        stderr: reader,
        workers,
        _pipe: stalled,
        sent: Instant::now(),
    };
    let (status, _, stderr) = pool.wait(|| {});
    assert_eq!(status.code(), Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("bytes of output dropped at exit"))
        .unwrap_or_else(|| panic!("no end-of-run line: {stderr}"));
    let before = line
        .split_once("; ")
        .and_then(|(_, rest)| {
            rest.strip_suffix(" bytes in all were dropped before, while the output stalled")
        })
        .unwrap_or_else(|| panic!("no earlier drops counted: {line}"));
    assert!(before.parse::<u64>().is_ok_and(|b| b > 0), "{line}");
}

#[test]
fn a_second_sigint_ends_the_final_flush_at_once() {
    use std::os::unix::process::ExitStatusExt as _;
    let graceful = Duration::from_secs(2);
    let pool = stall_and_sigterm(graceful);
    let pid = Pid::from_raw(pool.pid).expect("pid");
    // Ctrl-C again and again while the pool flushes: the arbiter's handler
    // takes the first ones (the stop is under way), and once its loop has
    // ended, SIGINT's default action ends the process — although the shell
    // started it with SIGINT ignored.
    let (status, _, stderr) = pool.wait(|| {
        let _ = rustix::process::kill_process(pid, Signal::INT);
    });
    assert_eq!(
        status.signal(),
        Some(Signal::INT.as_raw()),
        "{status:?}: {stderr}"
    );
}

/// Past `--log-stall-timeout` with stdout taking nothing, the workers'
/// output is dropped instead of holding them up: a worker that writes far
/// more than the queue and its pipe hold gets to the end of it.
#[test]
fn a_stdout_nobody_reads_drops_output_past_the_stall_timeout_and_the_workers_go_on() {
    let dir = std::env::temp_dir().join(format!("ufork-stall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let done = dir.join("done");
    let _ = std::fs::remove_file(&done);
    // 20 MB of 100-byte lines: five times the 4 MiB queue.
    let script = format!(
        "yes {} | head -c 20000000; touch '{}'; exec sleep 1000",
        "x".repeat(99),
        done.display()
    );
    let (mut child, pid, reader, stalled, _) = start_into_stalled_stdout(
        std::process::Command::new(env!("CARGO_BIN_EXE_ufork"))
            .args(["run", "-w", "1", "--graceful-timeout", "1"])
            .args(["--log-stall-timeout", "0.3", "--"])
            .args(["sh", "-c", &script]),
    );
    until("the worker wrote all of its output", || done.exists());
    let workers = children_of(pid);
    rustix::process::kill_process(Pid::from_raw(pid).expect("pid"), Signal::TERM).expect("SIGTERM");
    let mut owned = child.0.take().expect("child");
    let status = owned.wait().expect("wait");
    let stderr = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the output sink took nothing for 0.3s: dropping the workers' output"),
        "{stderr}"
    );
    assert!(workers.iter().all(|&w| no_such_process(w)), "{stderr}");
    drop(stalled);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker's stderr has a writer thread of its own in the arbiter: a
/// stdout nobody reads (`ufork serve --access-log - 2>err.log | (sleep
/// 60)`) neither holds up nor drops it. The worker's stderr line comes after
/// a burst far bigger than the stalled pipe and the queue, which it got
/// through only because the stall timeout dropped stdout; the line still
/// reaches stderr, and no stderr output was dropped.
#[test]
fn a_worker_stderr_line_reaches_stderr_while_stdout_stalls() {
    // 20 MB of 100-byte lines: five times the 4 MiB queue.
    let script = format!(
        "yes {} | head -c 20000000; echo after-the-stall >&2; exec sleep 1000",
        "x".repeat(99)
    );
    let (child, pid, reader, stalled, seen) = start_into_stalled_stdout(
        std::process::Command::new(env!("CARGO_BIN_EXE_ufork"))
            .args([
                "run",
                "-w",
                "1",
                "--graceful-timeout",
                "1",
                "--no-timestamps",
            ])
            .args(["--log-stall-timeout", "0.3", "--"])
            .args(["sh", "-c", &script]),
    );
    until("the worker's stderr line", || {
        seen.lock().unwrap().contains("] after-the-stall")
    });
    let workers = children_of(pid);
    rustix::process::kill_process(Pid::from_raw(pid).expect("pid"), Signal::TERM).expect("SIGTERM");
    let pool = Stalled {
        child,
        pid,
        stderr: reader,
        workers,
        _pipe: stalled,
        sent: Instant::now(),
    };
    let (status, _, stderr) = pool.wait(|| {});
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Stdout stalled and dropped; stderr took everything.
    assert!(
        stderr.contains("the output sink took nothing for 0.3s: dropping the workers' output"),
        "{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.ends_with("] after-the-stall"))
        .unwrap_or_else(|| panic!("no worker line: {stderr}"));
    assert!(line.starts_with("[0 ") && line.contains(" err] "), "{line}");
    assert!(
        !stderr.contains("[ufork-io: dropped") && !stderr.contains("stderr sink"),
        "stderr output was dropped: {stderr}"
    );
}

// -- formats -------------------------------------------------------------------

/// A worker that prints to both streams, then stops the pool itself.
const CHATTY: &str = "echo to-stdout; echo to-stderr >&2; kill -TERM $PPID; exec sleep 100";

/// Whether `line` starts with an RFC 3339 UTC timestamp and a space.
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 25
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b[24] == b' '
        && line[..4].parse::<u32>().is_ok()
}

fn lines_from(text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lines_are_timestamped_with_stderr_apart_unless_timestamps_are_off() {
    let out = run(&["run", "-w", "1", "--", "sh", "-c", CHATTY]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let worker_out = lines_from(&out.stdout, "] to-stdout");
    let worker_err = lines_from(&out.stderr, "] to-stderr");
    let arbiter = lines_from(&out.stderr, "[ufork] worker 0 pid");
    assert_eq!(worker_out.len(), 1, "{out:#?}");
    assert_eq!(worker_err.len(), 1, "{out:#?}");
    assert!(!arbiter.is_empty(), "{out:#?}");
    for line in worker_out.iter().chain(&worker_err).chain(&arbiter) {
        assert!(stamped(line), "{line:?}");
    }
    // stdout and stderr come through pipes of their own, marked apart.
    assert!(worker_out[0][25..].starts_with("[0 ") && !worker_out[0].contains(" err] "));
    assert!(worker_err[0][25..].starts_with("[0 ") && worker_err[0].contains(" err] to-stderr"));
    assert!(!out.stdout.contains("] to-stderr") && !out.stderr.contains("] to-stdout"));

    let out = run(&[
        "run",
        "-w",
        "1",
        "--no-timestamps",
        "--",
        "sh",
        "-c",
        CHATTY,
    ]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let worker_out = lines_from(&out.stdout, "] to-stdout");
    assert!(worker_out[0].starts_with("[0 "), "{out:#?}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("[ufork] worker 0 pid")),
        "{out:#?}"
    );
}

#[test]
fn under_journald_lines_carry_syslog_levels_and_no_timestamps() {
    // stderr is a pipe JOURNAL_STREAM names by device and inode, as systemd
    // sets it for a service whose output goes to the journal.
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    let st = rustix::fs::fstat(&write).expect("fstat");
    let child = ufork()
        .args(["run", "-w", "1", "--", "sh", "-c", CHATTY])
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(write))
        .spawn()
        .expect("spawn ufork");
    let mut child = Reap(Some(child));
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::fs::File::from(read).read_to_string(&mut text);
        text
    });
    let output = wait_output(&mut child);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = stderr.join().expect("stderr");
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let worker_out = lines_from(&stdout, "] to-stdout");
    let worker_err = lines_from(&stderr, "] to-stderr");
    assert!(worker_out[0].starts_with("<6>[0 "), "{stdout}");
    assert!(worker_err[0].starts_with("<4>[0 "), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("<6>[ufork] worker 0 pid")),
        "{stderr}"
    );
    assert!(
        !stdout.lines().chain(stderr.lines()).any(stamped),
        "{stdout}\n{stderr}"
    );
}

/// Waits (with the tests' deadline) for a child whose stdout is piped.
fn wait_output(child: &mut Reap) -> std::process::Output {
    let owned = child.0.take().expect("child");
    let pid = owned.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(owned.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("wait"),
        Err(_) => {
            let _ = rustix::process::kill_process(Pid::from_raw(pid).expect("pid"), Signal::KILL);
            panic!("ufork did not finish within {DEADLINE:?}");
        }
    }
}

#[test]
fn json_lines_parse_and_a_split_long_line_is_marked_continued() {
    let script = "head -c 70000 /dev/zero | tr '\\0' x; echo; echo to-stderr >&2; kill -TERM $PPID; exec sleep 100";
    let out = run(&[
        "run",
        "-w",
        "1",
        "--log-format",
        "json",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    // Every line of both streams parses as JSON (Python's parser); print
    // the fields the test looks at, one line per object.
    let checker = "import json, sys\n\
        for line in sys.stdin:\n\
        \x20   o = json.loads(line)\n\
        \x20   assert set(o) >= {'time','level','source','slot','pid','stream','message'}, o\n\
        \x20   print(sys.argv[1], o['source'], o['stream'], o['level'], o['slot'], o.get('continues', False), len(o['message']), o['message'][:40])\n";
    let mut summary = String::new();
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let mut python = std::process::Command::new("python3")
            .args(["-c", checker, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        python
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feed python");
        let result = python.wait_with_output().expect("python3");
        assert!(
            result.status.success(),
            "{name} is not JSON lines: {}\n{text}",
            String::from_utf8_lossy(&result.stderr)
        );
        summary.push_str(&String::from_utf8_lossy(&result.stdout));
    }
    let lines: Vec<&str> = summary.lines().collect();
    // 70,000 bytes: one piece of 65,536 marked continued, then the rest.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stdout worker stdout info 0 True 65536 xxxx")),
        "{summary}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stdout worker stdout info 0 False 4464 xxxx")),
        "{summary}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stderr worker stderr warning 0 False 9 to-stderr")),
        "{summary}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stderr arbiter None info None False")
                && l.contains("worker 0 pid")),
        "{summary}"
    );
}

/// A stdout whose reader is gone (`ufork run … | head -1` once head has
/// exited) loses everything written there: the pool goes on serving, says
/// so once on stderr instead of dropping the output without a word, and
/// still stops cleanly.
#[test]
fn a_closed_stdout_is_said_once_on_stderr_and_the_pool_still_stops() {
    let (closed, write) = rustix::pipe::pipe().expect("pipe");
    drop(closed);
    let child = ufork()
        .args(["run", "-w", "1", "--no-prompt", "--", "sh", "-c"])
        .arg("echo one; echo two; exec sleep 1000")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ufork");
    let pid = child.id() as i32;
    let mut child = Reap(Some(child));
    let stderr = child
        .0
        .as_mut()
        .and_then(|c| c.stderr.take())
        .expect("stderr");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut transcript = Vec::new();
    let mut expect = |needle: &str| {
        let deadline = Instant::now() + DEADLINE;
        while !transcript.iter().any(|l: &String| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match seen.recv_timeout(left) {
                Ok(line) => transcript.push(line),
                Err(_) => panic!("no {needle:?} on stderr: {transcript:#?}"),
            }
        }
        transcript.clone()
    };
    expect("standard output is closed");
    expect("worker 0 pid");
    rustix::process::kill_process(Pid::from_raw(pid).expect("pid"), Signal::TERM).expect("SIGTERM");
    let transcript = expect("stopped: every worker reaped");
    let status = child.0.take().expect("child").wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{transcript:#?}");
    let notices = transcript
        .iter()
        .filter(|l| l.contains("standard output is closed"))
        .count();
    assert_eq!(notices, 1, "said once: {transcript:#?}");
    assert!(children_of(pid).is_empty(), "{transcript:#?}");
}

/// `ufork run … 2>&1` into one pipe (one journald stream is the same): a
/// worker line longer than `PIPE_BUF` takes many writes, and an arbiter
/// line (the stop's) must not start among them. Every line of the combined
/// output is a whole worker line or a whole arbiter line, in text and in
/// JSON, where every line parses.
#[test]
fn with_stdout_and_stderr_one_pipe_no_line_lands_inside_another() {
    // Lines of 70,000 bytes (each split in two at 64 KiB) before and after
    // the SIGTERM, the worker ignoring it: the stop's lines come while the
    // capture still writes them out, and the worker's exit after its last.
    let line = "head -c 70000 /dev/zero | tr '\\0' x; echo";
    let script = format!(
        "trap '' TERM; for i in 1 2 3; do {line}; done; kill -TERM $PPID; for i in 1 2 3; do {line}; done"
    );
    for format in ["text", "json"] {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        // The smallest pipe: a long line takes many writes, each a chance
        // for another writer to cut in.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, 4096);
        let both = write.try_clone().expect("dup");
        let child = ufork()
            .args(["run", "-w", "1", "--no-prompt", "--no-timestamps"])
            .args(["--log-format", format, "--", "sh", "-c", &script])
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(both))
            .spawn()
            .expect("spawn ufork");
        let mut child = Reap(Some(child));
        let mut text = String::new();
        std::fs::File::from(read)
            .read_to_string(&mut text)
            .expect("read the output");
        let status = wait_output(&mut child).status;
        assert_eq!(status.code(), Some(0), "{format}: {text}");
        let mut xs = 0;
        for line in text.lines() {
            let worker = if format == "json" {
                assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
                line.contains("\"source\":\"worker\"")
            } else {
                line.starts_with("[0 ")
            };
            let run = line.matches('x').count();
            if worker {
                xs += run;
                // A piece of the worker's line: its prefix, x's, and the
                // split's mark or the end of the line, nothing else.
                let body = line.trim_end_matches(ufork_io::CONTINUES);
                let body = body.split_once("] ").map_or(body, |(_, rest)| rest);
                let body = body
                    .split_once("\"message\":\"")
                    .map_or(body, |(_, rest)| rest);
                let body = body.split_once('"').map_or(body, |(xs, _)| xs);
                assert!(
                    !body.is_empty() && body.bytes().all(|b| b == b'x'),
                    "{format}: a worker line holds more than its own text: {}…",
                    &line[..line.len().min(200)]
                );
            } else {
                assert!(
                    run < 100,
                    "{format}: worker text in another line: {}…",
                    &line[..line.len().min(200)]
                );
            }
        }
        assert_eq!(
            xs,
            6 * 70_000,
            "{format}: every byte of the worker's lines, once"
        );
        if format == "json" {
            let checker = "import json, sys\nfor line in sys.stdin:\n    json.loads(line)\n";
            let mut python = std::process::Command::new("python3")
                .args(["-c", checker])
                .stdin(Stdio::piped())
                .spawn()
                .expect("python3");
            python
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("feed python");
            assert!(python.wait().expect("python3").success(), "not JSON lines");
        }
    }
}

/// stdout and stderr on one pipe nobody reads (`ufork … 2>&1 | stuck`, as
/// journald and docker give them): a stop's final wait for the output is 5 s
/// in all, not 5 s for the capture and 5 s more for the terminal's writer.
#[test]
fn a_stop_into_one_stalled_pipe_for_both_streams_waits_5_s_in_all() {
    let (stalled, write) = rustix::pipe::pipe().expect("pipe");
    let both = write.try_clone().expect("dup");
    let child = ufork()
        .args(["run", "-w", "1", "--no-prompt", "--", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(both))
        .spawn()
        .expect("spawn ufork");
    let pid = child.id() as i32;
    let mut child = Reap(Some(child));
    let capacity = rustix::pipe::fcntl_getpipe_size(&stalled).expect("pipe size");
    let mut workers = Vec::new();
    until("a worker and a full pipe", || {
        workers = children_of(pid);
        let queued = rustix::io::ioctl_fionread(stalled.as_fd()).unwrap_or(0);
        workers.len() == 1 && queued as usize >= capacity / 2
    });
    rustix::process::kill_process(Pid::from_raw(pid).expect("pid"), Signal::TERM).expect("SIGTERM");
    let sent = Instant::now();
    let mut owned = child.0.take().expect("child");
    let status = loop {
        if let Some(status) = owned.try_wait().expect("wait") {
            break status;
        }
        if sent.elapsed() >= DEADLINE {
            let _ = owned.kill();
            let _ = owned.wait();
            panic!("ufork did not exit after its bounded flush");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0));
    // The workers end at once; then 5 s of final wait at most, and 3 s of
    // slack for a loaded machine (it took 10 s when each writer waited 5 s).
    assert!(
        took <= Duration::from_secs(8),
        "ufork took {took:?} to exit"
    );
    assert!(workers.iter().all(|&w| no_such_process(w)));
    drop(stalled);
}
