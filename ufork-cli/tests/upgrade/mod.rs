//! Zero-downtime operations through the real binary: `ufork upgrade` with a
//! broken binary on disk leaving the old pool serving, then a working one
//! taking over; daemons upgraded by their pidfile; and a graceful stop
//! refusing new connections while an accepted download completes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use rustix::process::Signal;

use crate::util::*;

mod failed;
mod scale;

/// Clients sending requests until told to stop; every failure is kept.
///
/// Like every HTTP client (RFC 9112 section 9.3.1), a keep-alive client sends a
/// request again on a new connection when the server closed the idle one it
/// reused before any byte of a response came: a server may close an idle
/// connection at any time, and the request crossed the close. Those retries
/// are counted apart; anything else is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr, keep_alive: usize, close: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let retried = Arc::new(AtomicU64::new(0));
        let threads = (0..keep_alive + close)
            .map(|i| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                let retried = Arc::clone(&retried);
                let keep = i < keep_alive;
                std::thread::spawn(move || {
                    let mut failed = Vec::new();
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        let reused = conn.is_some();
                        let mut outcome = request(addr, &mut conn, keep);
                        if reused && outcome.as_ref().is_err_and(|e| e == CLOSED_IDLE) {
                            retried.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                            outcome = request(addr, &mut conn, keep);
                        }
                        match outcome {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                conn = None;
                                failed.push(e);
                            }
                        }
                    }
                    failed
                })
            })
            .collect();
        Self {
            stop,
            ok,
            retried,
            threads,
        }
    }

    fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond now have succeeded.
    fn wait_for_more(&self, more: u64) {
        let target = self.served() + more;
        let deadline = Instant::now() + DEADLINE;
        while self.served() < target {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::yield_now();
        }
    }

    /// Requests served, requests sent again after an idle close, failures.
    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("a load thread"))
            .collect();
        let retried = self.retried.load(Ordering::Relaxed);
        (self.ok.load(Ordering::Relaxed), retried, failed)
    }
}

/// A reused connection closed before any byte of the response.
const CLOSED_IDLE: &str = "closed before any response";

/// One GET of the hello app, on `conn` (kept open when the server allows and
/// `keep_alive`) or a new connection.
fn request(
    addr: SocketAddr,
    conn: &mut Option<BufReader<TcpStream>>,
    keep_alive: bool,
) -> Result<(), String> {
    if conn.is_none() {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        *conn = Some(BufReader::new(stream));
    }
    let reader = conn.as_mut().unwrap();
    let head = if keep_alive {
        "GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    } else {
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    };
    reader
        .get_mut()
        .write_all(head.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    match reader.read_line(&mut status) {
        Ok(0) => return Err(CLOSED_IDLE.to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Err(CLOSED_IDLE.to_owned());
        }
        Err(e) => return Err(format!("read status: {e}")),
        Ok(_) => {}
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {status:?}"));
    }
    let (mut length, mut close) = (None, !keep_alive);
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read head: {e}"))?;
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if line == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0; length.ok_or("no content-length")?];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    if !body.starts_with(b"Hello") {
        return Err(format!("body {:?}", String::from_utf8_lossy(&body)));
    }
    if close {
        *conn = None;
    }
    Ok(())
}

/// The pid in "upgraded: pid N is serving".
fn upgraded_pid(stdout: &str) -> i32 {
    let at = stdout.find("upgraded: pid ").expect("an upgraded line") + 14;
    stdout[at..]
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid")
}

fn pidfile_pid(path: &std::path::Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_broken_binary_on_disk_fails_the_upgrade_and_the_old_pool_keeps_serving() {
    let dir = TempDir::new("upgrade-broken");
    let socket = dir.str("ctl.sock");
    let binary = dir.join("ufork");
    std::fs::copy(env!("CARGO_BIN_EXE_ufork"), &binary).unwrap();
    let mut command = std::process::Command::new(&binary);
    command
        .env_remove("UFORK_LOG")
        .stdin(std::process::Stdio::null());
    command.args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    let mut old = Running::start_with(&mut command);
    let addr = old.http_addr();
    wait_ready(&socket, 1);

    // A deploy replaces the file (a new inode) with a binary that fails.
    let deploy = |text: Option<&str>| {
        let next = dir.join("ufork.next");
        match text {
            Some(text) => std::fs::write(&next, text).unwrap(),
            None => {
                std::fs::copy(env!("CARGO_BIN_EXE_ufork"), &next).unwrap();
            }
        }
        let mut perms = std::fs::metadata(&next).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&next, perms).unwrap();
        std::fs::rename(&next, &binary).unwrap();
    };
    deploy(Some("#!/bin/sh\necho broken build >&2\nexit 3\n"));
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_one_line_error(&out, 1, &["upgrade failed", "exited with status 3"]);
    old.expect_line("upgrade failed, still serving");
    assert_eq!(get(addr, "/").0, 200, "the old pool still serves");

    // The next deploy works: the new arbiter runs from the path on disk.
    deploy(None);
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let new = upgraded_pid(&out.stdout);
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).unwrap();
    assert_eq!(exe, binary);
    old.expect_line(&format!("arbiter pid {} stopped", old.pid()));
    assert_eq!(get(addr, "/").0, 200, "the new pool serves");
    let stop = run(&["stop", "--control-socket", &socket]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert!(ufork_daemon::wait_for_exit(new, Some(DEADLINE)).unwrap());
}

#[test]
fn a_daemon_running_programs_upgrades_by_its_pidfile() {
    let dir = TempDir::new("upgrade-daemon");
    let pidfile = dir.join("ufork.pid");
    let server = dir.join("server.py");
    std::fs::write(&server, crate::SERVER_PY).unwrap();
    let _guard = DaemonGuard(pidfile.clone());
    let out = run(&[
        "run",
        "--daemon",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--log-file",
        dir.str("ufork.log").as_str(),
        "-w",
        "2",
        "--bind",
        "127.0.0.1:0",
        "--",
        "python3",
        server.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let old = pidfile_pid(&pidfile);

    let out = run(&["upgrade", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let new = upgraded_pid(&out.stdout);
    assert_eq!(pidfile_pid(&pidfile), new);
    assert!(ufork_daemon::wait_for_exit(old, Some(DEADLINE)).unwrap());
    // The new arbiter exec'd fresh workers, handed the same socket.
    let status = run(&["status", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{status:#?}");
    assert!(status.stdout.contains(&format!("arbiter pid {new}")));
    assert!(status.stdout.contains("2 ready"), "{status:#?}");
    let stop = run(&["stop", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert!(!pidfile.exists());
}

#[test]
fn a_graceful_stop_refuses_new_connections_while_a_download_completes() {
    let dir = TempDir::new("upgrade-refuse");
    let size = 32 << 20;
    std::fs::write(dir.join("big"), vec![b'x'; size]).unwrap();
    let mut pool = Running::start(&[
        "serve",
        dir.path().to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
    ]);
    let addr = pool.http_addr();
    let mut download = TcpStream::connect(addr).unwrap();
    download.set_read_timeout(Some(DEADLINE)).unwrap();
    download
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    download.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    pool.signal(Signal::TERM);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // A handshake that raced the shutdown is reset before any
            // request was sent (as safe to retry as a refusal); the next
            // attempt must be refused.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connect: {e}"),
            // Not yet shut down: the arbiter has not handled SIGTERM.
            Ok(_) => assert!(Instant::now() < deadline, "still accepting"),
        }
        std::thread::yield_now();
    }
    let mut rest = Vec::new();
    download.read_to_end(&mut rest).unwrap();
    let body = rest.len() - rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    assert_eq!(body, size, "the accepted download completed");
    assert_eq!(pool.wait().code(), Some(0));
}

#[test]
fn a_foreground_pool_with_only_a_pidfile_upgrades_by_its_socket_and_on_sigusr2() {
    let dir = TempDir::new("upgrade-usr2");
    let pidfile = dir.join("ufork.pid");
    let _guard = DaemonGuard(pidfile.clone());
    let mut old = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--metrics-bind",
        "127.0.0.1:0",
    ]);
    let addr = old.http_addr();
    let health = old.health_addr();
    old.expect_line("worker 0 pid");
    // The pool made a control socket beside its pidfile: asked through it.
    let out = run(&["upgrade", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("ufork.control.sock"), "{out:#?}");
    let new = upgraded_pid(&out.stdout);
    assert_eq!(pidfile_pid(&pidfile), new);
    // The new arbiter asked before it took the pidfile over, and was let.
    old.expect_line(&format!("pid {new} is taking over"));
    old.expect_line(&format!("arbiter pid {} stopped", old.pid()));
    // The new arbiter outlives the terminal's job: it does not offer Ctrl-C.
    let said = old.transcript().matches("press Ctrl-C to stop").count();
    assert_eq!(said, 1, "{}", old.transcript());
    assert_eq!(get(addr, "/").0, 200, "the new pool serves");
    // Without the socket, SIGUSR2 to the (verified) pid, and the pidfile
    // names the next one.
    std::fs::remove_file(dir.join("ufork.control.sock")).unwrap();
    let out = run(&["upgrade", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("SIGUSR2"), "{out:#?}");
    let newer = upgraded_pid(&out.stdout);
    assert_ne!(newer, new);
    assert_eq!(pidfile_pid(&pidfile), newer);
    assert_eq!(get(addr, "/").0, 200, "the newer pool serves");
    // The metrics socket was handed over too (a new bind would collide).
    assert_eq!(
        get(health, "/healthz").0,
        200,
        "the new arbiter answers /healthz"
    );
    let stop = run(&["stop", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert!(!pidfile.exists());
}

#[test]
fn health_probes_during_the_old_arbiters_drain_reach_the_new_pool() {
    let dir = TempDir::new("upgrade-healthz");
    let pidfile = dir.join("ufork.pid");
    let _guard = DaemonGuard(pidfile.clone());
    // The worker ignores SIGTERM, so the old arbiter drains until its
    // graceful timeout (or until told to stop at once) after the handover.
    let mut old = Running::start(&[
        "run",
        "-w",
        "1",
        "--graceful-timeout",
        "120",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--metrics-bind",
        "127.0.0.1:0",
        "--",
        "sh",
        "-c",
        "trap '' TERM; exec sleep 1000",
    ]);
    let health = old.health_addr();
    old.expect_line("worker 0 pid");
    let out = run(&["upgrade", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let new = upgraded_pid(&out.stdout);
    // The old arbiter is still draining its worker.
    assert!(
        std::path::Path::new(&format!("/proc/{}", old.pid())).exists(),
        "{}",
        old.transcript()
    );
    let answers: Vec<u16> = (0..40).map(|_| get(health, "/healthz").0).collect();
    assert!(
        answers.iter().all(|&code| code == 200),
        "every probe must reach the new pool: {answers:?}"
    );
    // SIGQUIT stops each arbiter at once (its worker ignores SIGTERM).
    old.signal(Signal::QUIT);
    old.wait();
    let quit = rustix::process::Pid::from_raw(new).expect("a pid");
    rustix::process::kill_process(quit, Signal::QUIT).expect("the new arbiter runs");
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let gone = || {
        std::fs::read_to_string(format!("/proc/{new}/stat"))
            .map_or(true, |stat| stat.contains(") Z "))
    };
    while !gone() {
        assert!(Instant::now() < deadline, "the new arbiter did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!pidfile.exists(), "the new arbiter removed its pidfile");
}

#[test]
fn reload_returns_once_every_worker_was_replaced() {
    let dir = TempDir::new("reload-sync");
    let socket = dir.str("ctl.sock");
    let pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--control-socket",
        &socket,
    ]);
    wait_ready(&socket, 2);
    let out = run(&["reload", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("every worker restarted"), "{out:#?}");
    // No waiting here: the roll is over when reload returns.
    let history = run(&["ctl", "--control-socket", &socket, "history"]).stdout;
    // Two old workers and two stand-ins (one per slot, in spare slot 2).
    assert_eq!(history.lines().count(), 4, "{history}");
    let status = run(&["status", "--control-socket", &socket]).stdout;
    assert!(status.contains("2 ready"), "{status}");
    for line in status.lines().skip(2) {
        assert!(
            out.stdout.contains(&format!(
                "replaced by pid {}",
                line.split_whitespace().nth(1).unwrap()
            )),
            "{out:#?} {status}"
        );
    }
    drop(pool);
}

/// `--daemon` as pid 1 of a pid namespace is refused before anything
/// starts: the launcher's exit would kill the daemon with the namespace,
/// right after reporting it started (and leave its pidfile behind).
#[test]
fn daemon_as_pid_1_is_refused_before_anything_starts() {
    if !pid_namespace_available() {
        return;
    }
    let dir = TempDir::new("daemon-pid1");
    let pidfile = dir.str("ufork.pid");
    let out = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .args([
            env!("CARGO_BIN_EXE_ufork"),
            "serve",
            "--bind",
            "127.0.0.1:0",
        ])
        .args(["-w", "1", "--daemon", "--pidfile", &pidfile])
        .env_remove("UFORK_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_one_line_error(&out, 2, &["--daemon", "pid 1 of its pid namespace"]);
    assert!(!out.stdout.contains("daemon started"), "{out:#?}");
    assert!(!dir.join("ufork.pid").exists(), "{out:#?}");
}

#[test]
fn an_arbiter_that_is_pid_1_refuses_to_upgrade_and_keeps_serving() {
    if !pid_namespace_available() {
        return;
    }
    let dir = TempDir::new("upgrade-pid1");
    let socket = dir.str("ctl.sock");
    let mut command = std::process::Command::new("unshare");
    command
        .env_remove("UFORK_LOG")
        .stdin(std::process::Stdio::null());
    // --kill-child: should the test fail, the namespace dies with unshare.
    command.args(["--pid", "--mount-proc", "--kill-child"]);
    command.args([
        env!("CARGO_BIN_EXE_ufork"),
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    let mut pool = Running::start_with(&mut command);
    let addr = pool.http_addr();
    pool.expect_line("arbiter pid 1 starting");
    // The arbiter's pid as this test sees it: unshare's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pool.pid())).unwrap();
    let arbiter: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let arbiter_pid = rustix::process::Pid::from_raw(arbiter).unwrap();

    rustix::process::kill_process(arbiter_pid, Signal::USR2).unwrap();
    pool.expect_line("upgrade refused: this arbiter is pid 1 of its pid namespace");
    assert_eq!(get(addr, "/").0, 200, "the pool still serves");

    // `ufork upgrade` from inside the container says why, exit 1.
    let out = std::process::Command::new("nsenter")
        .args(["--target", &arbiter.to_string(), "--pid", "--mount"])
        .args([env!("CARGO_BIN_EXE_ufork"), "upgrade", "--control-socket"])
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_one_line_error(
        &out,
        1,
        &["pid 1 of its pid namespace", "roll the deployment"],
    );
    pool.expect_line("upgrade refused: this arbiter is pid 1");
    assert_eq!(get(addr, "/").0, 200, "the pool still serves");

    rustix::process::kill_process(arbiter_pid, Signal::TERM).unwrap();
    assert!(pool.wait().success(), "{}", pool.transcript());
    assert!(ufork_daemon::wait_for_exit(arbiter, Some(DEADLINE)).unwrap());
}

#[test]
fn upgrade_under_load_loses_no_request_and_the_pidfile_names_the_new_arbiter() {
    let dir = TempDir::new("upgrade-load");
    let (socket, pidfile) = (dir.str("ctl.sock"), dir.join("ufork.pid"));
    let _guard = DaemonGuard(pidfile.clone());
    let mut old = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--control-socket",
        &socket,
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    let addr = old.http_addr();
    wait_ready(&socket, 2);
    let load = Load::start(addr, 2, 2);
    load.wait_for_more(50);

    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let new = upgraded_pid(&out.stdout);
    assert_ne!(new, old.pid());
    assert_eq!(
        pidfile_pid(&pidfile),
        new,
        "the pidfile names the new arbiter"
    );
    assert!(
        ufork_daemon::wait_for_exit(old.pid(), Some(DEADLINE)).unwrap(),
        "the old arbiter drains and exits"
    );
    old.expect_line("stopping this arbiter gracefully");
    old.expect_line(&format!("arbiter pid {} stopped", old.pid()));
    load.wait_for_more(50);
    let (served, retried, failed) = load.finish();
    eprintln!("{served} requests served, {retried} sent again after an idle close");
    assert!(
        failed.is_empty(),
        "{} of {served} failed: {failed:?}",
        failed.len()
    );

    // The new arbiter owns the control socket and the pidfile now.
    let status = run(&["status", "--control-socket", &socket]);
    assert!(
        status.stdout.contains(&format!("arbiter pid {new}")),
        "{status:#?}"
    );
    let stop = run(&["stop", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert!(!pidfile.exists() && !dir.join("ctl.sock").exists());
}

#[test]
fn rolling_restarts_under_load_lose_no_request() {
    let dir = TempDir::new("reload-load");
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--control-socket",
        &socket,
    ]);
    let addr = pool.http_addr();
    wait_ready(&socket, 2);
    let load = Load::start(addr, 2, 2);
    load.wait_for_more(50);
    for _ in 0..2 {
        let out = run(&["reload", "--control-socket", &socket]);
        assert_eq!(out.code(), Some(0), "{out:#?}");
        assert_eq!(
            out.stdout.matches(" replaced by pid ").count(),
            2,
            "{out:#?}"
        );
        load.wait_for_more(50);
    }
    let (served, retried, failed) = load.finish();
    eprintln!("{served} requests served, {retried} sent again after an idle close");
    assert!(
        failed.is_empty(),
        "{} of {served} failed: {failed:?}",
        failed.len()
    );
    let stop = run(&["stop", "--control-socket", &socket]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert!(pool.wait().success(), "{}", pool.transcript());
}
