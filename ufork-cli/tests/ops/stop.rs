//! How a pool stops, seen from the programs `ufork run` supervises and from
//! their clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

use rustix::process::Signal;

use crate::util::*;

/// A worker as gunicorn's sync worker is written: it waits for its listener
/// or the signal wake-up pipe, and keeps accepting after SIGTERM until it
/// gets round to stopping (here: one more connection, the test's). Every
/// accept error is printed: a program ufork runs must see none.
const LATE_ACCEPTOR_PY: &str = r#"
import os, select, signal, socket, sys
listener = socket.socket(fileno=3)
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
signal.signal(signal.SIGTERM, lambda *a: None)
def accept():
    try:
        return listener.accept()[0]
    except OSError as e:
        print("accept error:", e, flush=True)
        sys.exit(1)
print("accepting", flush=True)
while True:
    ready, _, _ = select.select([listener, r], [], [])
    if r in ready:
        break
    conn = accept()
    conn.sendall(b"served\n")
    conn.close()
print("got SIGTERM", flush=True)
select.select([listener], [], [], 60)
conn = accept()
listener.close()
print("listener closed", flush=True)
conn.recv(1024)
conn.sendall(b"served late\n")
conn.close()
"#;

fn listening_addr(pool: &mut Running) -> SocketAddr {
    let line = pool.expect_line("listening on");
    line.split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"))
}

#[test]
fn a_graceful_stop_of_run_leaves_accepting_to_the_program_and_refuses_once_it_closes() {
    let dir = TempDir::new("run-stop");
    let script = dir.join("late.py");
    std::fs::write(&script, LATE_ACCEPTOR_PY).unwrap();
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--",
        "python3",
        script.to_str().unwrap(),
    ]);
    let addr = listening_addr(&mut pool);
    pool.expect_line("accepting");
    pool.signal(Signal::TERM);
    pool.expect_line("got SIGTERM");
    // The arbiter has begun the stop (it relayed the line after sending
    // SIGTERM): a program still in its accept loop gets this connection,
    // and its accept does not fail (a shut-down socket made it fail with
    // EINVAL, and uvicorn logged a traceback per try).
    let mut late = TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect after SIGTERM: {e}; saw {}", pool.transcript()));
    late.set_read_timeout(Some(DEADLINE)).unwrap();
    pool.expect_line("listener closed");
    // The program closed the last copy but its own: the arbiter holds none,
    // so a new connection is refused while the accepted one is served.
    let refused = TcpStream::connect(addr).map(|_| ()).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    late.write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "served late\n");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    let transcript = pool.transcript();
    assert!(!transcript.contains("accept error"), "{transcript}");
}

/// A program that leaves orphans behind, as daemonizing helpers and shell
/// scripts do: three double forks whose grandchildren (re-parented to pid 1
/// of the namespace, the arbiter) wait on a pipe and exit when the program
/// closes it.
const ORPHANS_PY: &str = r#"
import os, signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
r, w = os.pipe()
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(7)
        os._exit(0)
    os.waitpid(pid, 0)
os.close(r)
print("orphans made", flush=True)
os.close(w)
while True:
    signal.pause()
"#;

/// `ufork run` as pid 1 of a pid namespace (a container's entrypoint):
/// the orphans its programs leave are reaped, `status` works from outside,
/// and SIGINT (which pid 1 would ignore without a handler) stops it with
/// exit 0.
#[test]
fn run_as_pid_1_reaps_its_programs_orphans_and_stops_on_sigint_with_0() {
    if !pid_namespace_available() {
        return;
    }
    let dir = TempDir::new("run-pid1");
    let script = dir.join("orphans.py");
    std::fs::write(&script, ORPHANS_PY).unwrap();
    let pidfile = dir.str("ufork.pid");
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args(["run", "-w", "1", "--pidfile", &pidfile, "--", "python3"])
        .arg(&script)
        .env_remove("UFORK_LOG")
        .stdin(Stdio::null());
    let mut pool = Running::start_with(&mut command);
    pool.expect_line("(arbiter pid 1)");
    pool.expect_line("orphans made");
    // The arbiter is unshare's only child here.
    let arbiter = match children_of(pool.pid()).as_slice() {
        [(pid, _)] => *pid,
        other => panic!("unshare's children: {other:?}"),
    };
    // The orphans were its children when the line was printed; once every
    // one has exited and been reaped, only the worker is left.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let children = children_of(arbiter);
        if children.len() == 1 && children[0].1 != "Z" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans not reaped: {children:?}; saw {}",
            pool.transcript()
        );
        std::thread::yield_now();
    }
    let out = run(&["status", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("1 ready; arbiter pid 1"), "{out:#?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(arbiter).unwrap(),
        Signal::INT,
    )
    .unwrap();
    // unshare passes on the pool's exit status.
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(
        pool.transcript()
            .contains("arbiter pid 1 stopped: every worker reaped"),
        "{}",
        pool.transcript()
    );
}

/// As pid 1, a SIGTERM that comes while ufork is still starting (here it
/// waits to open its log, a FIFO nobody reads yet) is handled once the
/// arbiter's loop runs: the kernel drops a signal pid 1 has no handler for,
/// and the pool used to run on until the SIGKILL that follows.
#[test]
fn as_pid_1_a_sigterm_during_the_start_stops_the_pool_once_it_runs() {
    if !pid_namespace_available() {
        return;
    }
    let dir = TempDir::new("pid1-early-term");
    let fifo = dir.str("log.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args(["run", "-w", "1", "--log-file", &fifo, "--", "sleep", "1000"])
        .env_remove("UFORK_LOG")
        .stdin(Stdio::null());
    let mut pool = Running::start_with(&mut command);
    // ufork, unshare's child here, blocked opening the FIFO for writing.
    let deadline = Instant::now() + DEADLINE;
    let ufork = loop {
        if let [(pid, _)] = children_of(pool.pid()).as_slice() {
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            if stack.contains("fifo_open") {
                break *pid;
            }
        }
        assert!(Instant::now() < deadline, "ufork never opened its log");
        std::thread::yield_now();
    };
    rustix::process::kill_process(rustix::process::Pid::from_raw(ufork).unwrap(), Signal::TERM)
        .unwrap();
    // Reading the log lets it go on; the read ends when ufork exits.
    let reader = std::thread::spawn(move || std::fs::read_to_string(fifo));
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    let log = reader.join().unwrap().unwrap();
    assert!(log.contains("SIGTERM: stopping"), "{log}");
}
