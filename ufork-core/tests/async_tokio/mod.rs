//! Async workers: the stop notification and vitals that move into a task,
//! and the `async_tokio` example driven end to end.

use ufork_core::{Arbiter, ExitReason, StopNotifier, Vitals, Worker};

use crate::util::{self, Events, SpawnGuarded, lock};

fn assert_moves_into_a_task<T: Send + Sync + 'static>() {}

#[test]
fn the_stop_notifier_and_vitals_move_into_a_thread_that_sees_the_stop() {
    assert_moves_into_a_task::<StopNotifier>();
    assert_moves_into_a_task::<Vitals>();
    let _g = lock();
    let mut ev = Events::new();
    let tx = std::sync::Arc::new(ev.sender());
    let arbiter = Arbiter::builder()
        .workers(1)
        .ready_on_start(false)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Result<(), String> {
            let tx_main = std::sync::Arc::clone(&tx);
            let stop = w.stop_notifier().map_err(|e| e.to_string())?;
            let vitals = w.vitals().clone();
            let tx = std::sync::Arc::clone(&tx);
            let waiter = std::thread::spawn(move || {
                // Marked ready from the thread that owns the moved vitals.
                vitals.ready();
                tx.send(&format!("waiting {}", stop.should_stop()));
                let mut fds = [rustix::event::PollFd::new(
                    &stop,
                    rustix::event::PollFlags::IN,
                )];
                while rustix::event::poll(&mut fds, None).is_err() {}
                tx.send(&format!("stop seen {}", stop.should_stop()));
                // Still readable for every other watcher: nobody read it.
                drop(stop);
            });
            waiter.join().map_err(|_| "waiter panicked".to_owned())?;
            let still = rustix::event::poll(
                &mut [rustix::event::PollFd::new(
                    &w.stop_fd(),
                    rustix::event::PollFlags::IN,
                )],
                Some(&rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }),
            );
            tx_main.send(&format!("stop_fd readable {}", still == Ok(1)));
            Ok(())
        })
        .unwrap();
    ev.expect("the waiter running", |l| l == "waiting false");
    util::wait_until("the worker is ready", || {
        handle
            .snapshot()
            .workers
            .first()
            .is_some_and(|w| w.state == ufork_core::WorkerState::Ready)
    });
    handle.stop();
    ev.expect("the stop seen through the notifier", |l| {
        l == "stop seen true"
    });
    ev.expect("stop_fd still readable", |l| l == "stop_fd readable true");
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.history.len(), 1);
    assert_eq!(outcome.history[0].reason, ExitReason::Stopped);
}

// ---------------------------------------------------------------------------
// The `async_tokio` example, as a user runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::util::{DEADLINE, Reaped};

/// The example binary: `cargo test` and nextest build every example of the
/// package next to the test binaries' `deps` directory.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .join("examples")
        .join("async_tokio");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p ufork-core --example async_tokio`",
        bin.display()
    );
    bin
}

/// A running example process; its stdout and stderr lines arrive on one
/// channel, prefixed `out: ` and `err: `.
struct Example {
    child: Reaped,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Example {
    fn start(command: &mut Command) -> Self {
        let mut child = Reaped(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the example"),
        );
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (tag, stream) in [
            ("out", Box::new(out) as Box<dyn Read + Send>),
            ("err", Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(format!("{tag}: {line}")).is_err() {
                        break;
                    }
                }
            });
        }
        Example {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {what}; seen: {:#?}", self.seen),
            }
        }
    }

    /// Waits for "listening on ADDR (NAME)" and returns the TCP address.
    fn listening(&mut self) -> (SocketAddr, String) {
        let line = self.expect("listening on", |l| l.starts_with("out: listening on "));
        let rest = line.trim_start_matches("out: listening on ");
        let (addr, name) = rest.split_once(' ').expect("address and name");
        (addr.parse().expect("a TCP address"), name.to_owned())
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal the example");
    }

    /// Waits for the example to exit and returns its exit code.
    fn exit_code(&mut self) -> Option<i32> {
        assert!(
            util::wait_exit(self.pid(), DEADLINE),
            "the example did not exit"
        );
        self.child.wait().expect("wait").code()
    }
}

/// Processes whose parent is `parent` (zombies included).
fn children_of(parent: i32) -> Vec<i32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                        stat.rsplit(')')
                            .next()
                            .and_then(|r| r.split_whitespace().nth(1))
                            == Some(parent.as_str())
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One GET on a fresh connection: the status and body, or None when the
/// connection ends without a response.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the response to {path}: {e}"),
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The pid in "... (pid N)" of a response body.
fn pid_in(body: &str) -> i32 {
    body.rsplit("(pid ")
        .next()
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

#[test]
fn the_async_example_serves_replaces_a_killed_worker_and_drains_on_sigterm() {
    let mut example = Example::start(Command::new(example_bin()).args([
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "2",
    ]));
    let (addr, name) = example.listening();
    assert_eq!(name, "(unknown)", "bound here, not inherited");
    let (status, body) = get(addr, "/").expect("a response");
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from worker "), "{body}");
    util::wait_until("two workers run", || children_of(example.pid()).len() == 2);
    let workers = children_of(example.pid());

    // SIGKILL a worker: the arbiter records it and forks a replacement.
    let victim = pid_in(&body);
    assert!(workers.contains(&victim), "{victim} not in {workers:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill a worker");
    example.expect("the killed worker's exit", |l| {
        l.starts_with("err: exit: worker ")
            && l.contains(&format!("(pid {victim},"))
            && l.contains("SIGKILL")
    });
    util::wait_until("the worker is replaced", || {
        let now = children_of(example.pid());
        now.len() == 2 && !now.contains(&victim)
    });
    assert_eq!(get(addr, "/").expect("a response").0, 200);

    // SIGTERM with a request in flight: it completes, and the example exits 0.
    let slow = std::thread::spawn(move || get(addr, "/until-stop"));
    let line = example.expect("the slow request in flight", |l| {
        l.starts_with("out: in flight until the stop: pid ")
    });
    let serving: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let workers = children_of(example.pid());
    assert!(workers.contains(&serving));
    example.signal(rustix::process::Signal::TERM);
    let (status, body) = slow
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(status, 200);
    assert_eq!(body, format!("finished after the stop (pid {serving})\n"));
    assert_eq!(example.exit_code(), Some(0), "seen: {:#?}", example.seen);
    example.expect("the graceful stop", |l| {
        l == "out: stopped by Signal(15), graceful: true"
    });
    for pid in workers {
        assert!(!util::exists(pid), "worker {pid} left behind");
    }
}

/// Reads one response with a `Content-Length` from a kept-alive
/// connection: the head (lowercased) and the body, or None when the
/// connection ends (or is reset) first.
fn read_response(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            Ok(_) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading a response: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a content-length");
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn a_request_on_an_idle_connection_just_after_the_stop_is_answered() {
    let mut example = Example::start(Command::new(example_bin()).args([
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--drain-window",
        "60",
    ]));
    let (addr, _) = example.listening();
    // A keep-alive connection, idle after its first answer.
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    idle.write_all(request).expect("send");
    let (head, body) = read_response(&mut idle).expect("the first answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let worker = pid_in(&body);

    // The stop, seen by the worker: a request in flight across it is
    // answered 100 ms after the worker was told (the example's
    // `/until-stop`). Without a drain window, the idle connection was
    // closed at the stop, before that answer.
    let slow = std::thread::spawn(move || get(addr, "/until-stop"));
    example.expect("the slow request in flight", |l| {
        l.starts_with("out: in flight until the stop: pid ")
    });
    example.signal(rustix::process::Signal::TERM);
    let (status, _) = slow.join().unwrap().expect("the in-flight answer");
    assert_eq!(status, 200);

    // The keep-alive client's next request, sent as the worker drains: it
    // is answered, says the connection ends, and the connection ends.
    idle.write_all(request)
        .expect("send on the idle connection");
    let (head, body) = read_response(&mut idle).expect("an answer, not a closed connection");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(pid_in(&body), worker);
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(rest.is_empty(), "after the last answer: {rest:?}");

    // Every connection closed: the window ends early, well before 60 s.
    assert_eq!(example.exit_code(), Some(0), "seen: {:#?}", example.seen);
    assert!(!util::exists(worker), "worker {worker} left behind");
}

#[test]
fn a_handler_blocking_the_runtime_is_killed_at_the_hang_timeout() {
    let mut example = Example::start(Command::new(example_bin()).args([
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--timeout",
        "2",
    ]));
    let (addr, _) = example.listening();
    let (_, body) = get(addr, "/").expect("a response");
    let blocked = pid_in(&body);
    // The handler blocks the runtime's only thread: no response ever comes,
    // the heartbeat task stops, and the arbiter kills the worker.
    assert_eq!(get(addr, "/block"), None);
    let line = example.expect("the hang kill", |l| {
        l.starts_with("err: exit: worker 0 ") && l.contains(&format!("(pid {blocked},"))
    });
    assert!(
        line.contains("timed out: silent for") && line.contains("while busy (GET /block)"),
        "{line}"
    );
    let (status, body) = get(addr, "/").expect("the replacement answers");
    assert_eq!(status, 200);
    assert_ne!(pid_in(&body), blocked);
    example.signal(rustix::process::Signal::TERM);
    assert_eq!(example.exit_code(), Some(0), "seen: {:#?}", example.seen);
}

/// Does what `systemd-socket-activate -l 127.0.0.1:0 --fdname=web` does: binds,
/// puts the socket at fd 3, sets LISTEN_FDS, LISTEN_PID (its own pid, which
/// exec keeps) and LISTEN_FDNAMES, and execs the program (`{port}` in its
/// arguments replaced by the bound port).
const LAUNCHER: &str = r#"
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
port = str(s.getsockname()[1])
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
os.execv(sys.argv[1], [a.replace("{port}", port) for a in sys.argv[1:]])
"#;

#[test]
fn the_async_example_takes_its_socket_from_socket_activation() {
    // --bind names the inherited socket's address: it is matched by address,
    // so nothing is bound (binding would fail: the port is taken).
    let mut example = Example::start(
        Command::new("python3")
            .args(["-c", LAUNCHER])
            .arg(example_bin())
            .args(["--bind", "127.0.0.1:{port}", "--workers", "1"]),
    );
    let (addr, name) = example.listening();
    assert_eq!(
        name, "(web)",
        "the inherited socket, under its LISTEN_FDNAMES name"
    );
    assert_eq!(get(addr, "/").expect("a response").0, 200);
    // The variables are cleared before the fork: workers do not see them.
    assert_eq!(
        get(addr, "/listen-fds"),
        Some((200, "LISTEN_FDS unset\n".to_owned()))
    );
    // The taken descriptor is CLOEXEC now (fdinfo's flags are octal).
    let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", example.pid())).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .expect("flags");
    assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "{fdinfo}");
    example.signal(rustix::process::Signal::TERM);
    assert_eq!(example.exit_code(), Some(0), "seen: {:#?}", example.seen);
}

/// Threads of the calling process.
fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads:")
}

#[test]
fn a_runtime_built_before_the_fork_has_no_threads_in_the_worker() {
    let _g = lock();
    // Two runtime worker threads in this process.
    let before = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let threads_here = thread_count();
    assert!(threads_here >= 3, "{threads_here}");
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(1).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Result<(), String> {
            // fork copied only the forking thread (ufork then starts one to
            // watch the arbiter): the runtime's worker threads are not here.
            let _ = &before;
            tx.send(&format!("threads {}", thread_count()));
            // A runtime built here, after the fork, runs its tasks.
            let after = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| e.to_string())?;
            let answer = after.block_on(async { tokio::spawn(async { 42 }).await });
            tx.send(&format!(
                "post-fork task {}",
                answer.map_err(|e| e.to_string())?
            ));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let line = ev.expect("the thread count", |l| l.starts_with("threads "));
    let count: usize = line["threads ".len()..].parse().unwrap();
    assert!(count <= 2, "{count} threads in the worker");
    ev.expect("the post-fork task", |l| l == "post-fork task 42");
    handle.stop();
    thread.join().unwrap().unwrap();
}

// ---------------------------------------------------------------------------
// The example's worker inside a test arbiter, to watch the scoreboard.

#[path = "../../examples/async_tokio.rs"]
#[allow(dead_code)]
mod example;

fn one_worker(handle: &ufork_core::Handle) -> Option<ufork_core::WorkerInfo> {
    handle.snapshot().workers.into_iter().next()
}

#[test]
fn concurrent_requests_map_onto_busy_idle_activity_and_the_request_count() {
    let _g = lock();
    let listeners = ufork_core::listen::Listeners::builder()
        .address("127.0.0.1:0".parse().unwrap())
        .socket_activation(false)
        .build()
        .unwrap();
    let addr = match listeners.iter().next().unwrap().1 {
        ufork_core::listen::Address::Tcp(addr) => *addr,
        other => panic!("{other}"),
    };
    let arbiter = Arbiter::builder()
        .workers(1)
        .ready_on_start(false)
        .heartbeat_timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let beat = example::heartbeat_interval(std::time::Duration::from_secs(30));
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| {
            example::serve(w, &listeners, beat, std::time::Duration::from_secs(1))
        })
        .unwrap();
    // Ready once it serves (the example marks it; the pool does not).
    util::wait_until("the worker is ready", || {
        one_worker(&handle).is_some_and(|w| w.state == ufork_core::WorkerState::Ready)
    });
    // One request, done: idle, counted, its line is the activity.
    assert_eq!(get(addr, "/").expect("a response").0, 200);
    let w = one_worker(&handle).unwrap();
    assert_eq!(w.state, ufork_core::WorkerState::Idle, "{w:?}");
    assert_eq!(w.requests, 1);
    assert_eq!(w.activity, "GET /");
    assert_eq!(w.busy_for, None);
    // A request held in flight: busy, with that request as the activity.
    let held = std::thread::spawn(move || get(addr, "/until-stop"));
    util::wait_until("the worker is busy", || {
        one_worker(&handle).is_some_and(|w| w.state == ufork_core::WorkerState::Busy)
    });
    let w = one_worker(&handle).unwrap();
    assert_eq!(w.activity, "GET /until-stop");
    assert!(w.busy_for.is_some(), "{w:?}");
    // Another request is served meanwhile on the same thread: counted, the
    // latest request line is the activity, and the worker stays busy (one
    // is still in flight).
    assert_eq!(
        get(addr, "/work?us=10").expect("served concurrently").0,
        200
    );
    let w = one_worker(&handle).unwrap();
    assert_eq!(w.state, ufork_core::WorkerState::Busy, "{w:?}");
    assert_eq!(w.requests, 2);
    assert_eq!(w.activity, "GET /work?us=10");
    // The stop: the held request is answered, the worker exits 0.
    handle.stop();
    let (status, body) = held.join().unwrap().expect("answered after the stop");
    assert_eq!(status, 200, "{body}");
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.history.len(), 1);
    assert_eq!(outcome.history[0].reason, ExitReason::Stopped);
    assert_eq!(outcome.history[0].status, ufork_core::ExitStatus::Code(0));
}

/// Reports what an exec'd program got by the socket activation convention:
/// LISTEN_FDS, whether LISTEN_PID is its pid, LISTEN_FDNAMES, fd 3's port and
/// whether fd 3 listens.
const REPORTER: &str = r#"
import os, signal, socket
s = socket.socket(fileno=3)
print("REPORT", os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID") == str(os.getpid()),
      os.environ.get("LISTEN_FDNAMES"), s.getsockname()[1],
      s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), flush=True)
signal.pause()
"#;

const PASS_CHILD_ENV: &str = "UFORK_TEST_PASS_TO_EXEC_CHILD";

#[test]
fn pass_to_exec_hands_the_sockets_to_an_execed_worker_by_the_systemd_convention() {
    if std::env::var_os(PASS_CHILD_ENV).is_some() {
        return pass_to_exec_child();
    }
    // This test again, in a fresh process whose descriptors from 3 on are
    // free, as in a program that binds first thing (python closes what this
    // process would pass on).
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, sys; os.closerange(3, 4096); os.execv(sys.argv[1], sys.argv[1:])",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "async_tokio::pass_to_exec_hands_the_sockets_to_an_execed_worker_by_the_systemd_convention",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PASS_CHILD_ENV, "1")
        .stdin(Stdio::null())
        .output()
        .expect("python3 (installed by .ci/run)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // libtest's own "test ... " has no newline before what the test prints.
    let after = |tag: &str| {
        stdout
            .split(tag)
            .nth(1)
            .and_then(|rest| rest.lines().next())
            .unwrap_or_else(|| panic!("no {tag}in {stdout}"))
            .to_owned()
    };
    let (port, report) = (after("BOUND "), format!("REPORT {}", after("REPORT ")));
    assert_eq!(report, format!("REPORT 1 True web {port} 1"));
}

/// The other side: bind, fork a worker that passes the socket to an exec'd
/// reporter, print what it reports.
fn pass_to_exec_child() {
    use std::os::unix::process::CommandExt;
    let listeners = ufork_core::listen::Listeners::builder()
        .named("web", "127.0.0.1:0".parse().unwrap())
        .socket_activation(false)
        .build()
        .unwrap();
    let port = match listeners.iter().next().unwrap().1 {
        ufork_core::listen::Address::Tcp(addr) => addr.port(),
        other => panic!("{other}"),
    };
    println!("BOUND {port}");
    let (read, write) = rustix::pipe::pipe().unwrap();
    let mut listeners = Some(listeners);
    let arbiter = Arbiter::builder().workers(1).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_thread(move |_: &mut Worker| -> Result<(), String> {
            let set = listeners.take().ok_or("handed over already")?;
            let mut reporter = Command::new("python3");
            reporter
                .args(["-c", REPORTER])
                .stdout(Stdio::from(write.try_clone().map_err(|e| e.to_string())?));
            let _placed = set.pass_to_exec(&mut reporter).map_err(|e| e.to_string())?;
            Err(reporter.exec().to_string())
        })
        .unwrap();
    let mut line = String::new();
    BufReader::new(std::fs::File::from(read))
        .read_line(&mut line)
        .unwrap();
    print!("{line}");
    handle.stop();
    thread.join().unwrap().unwrap();
}
