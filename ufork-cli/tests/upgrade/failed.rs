//! An upgrade whose new arbiter took the sockets and then failed before it
//! was ready must leave the old pool's sockets listening: they are the same
//! open sockets, so a refusal by the new arbiter at its stop would be one for
//! the old pool too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::util::*;

/// A program that serves under the arbiter whose pid is in `./oldarb`, and
/// under any other arbiter does what `./broken` says: `fail` (exit 3 at
/// once, a crash loop) or `hang` (never ready).
const OLD_ONLY_PY: &str = r#"
import os, socket, sys, signal, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
if os.path.exists("broken") and str(os.getppid()) != open("oldarb").read().strip():
    if open("broken").read().strip() == "fail":
        sys.exit(3)
    while True:
        time.sleep(60)
a = os.environ["NOTIFY_SOCKET"]
a = "\0" + a[1:] if a.startswith("@") else a
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", a)
listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1024)
        if not chunk:
            break
        head += chunk
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nold\n")
    conn.close()
"#;

/// The new arbiter of an upgrade, no child of the test: stopped at the end
/// even when an assertion failed first.
pub(super) struct StopOnDrop(pub(super) i32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if ufork_daemon::signal(self.0, rustix::process::Signal::TERM).unwrap_or(false) {
            let _ = ufork_daemon::wait_for_exit(self.0, Some(DEADLINE));
        }
    }
}

fn serves(addr: SocketAddr, metrics: SocketAddr) {
    let (status, _, body) = get(addr, "/");
    assert_eq!((status, body.as_str()), (200, "old\n"), "the pool serves");
    assert_eq!(get(metrics, "/metrics").0, 200, "--metrics-bind answers");
}

/// `run`: a new release whose programs crash only under the new arbiter
/// (it gives up), then one whose programs never become ready (the old
/// arbiter stops it at --start-timeout): each time the old pool goes on
/// answering on the same port, and its own stop is clean.
#[test]
fn run_keeps_serving_on_its_port_after_the_new_arbiter_gave_up_or_timed_out() {
    let dir = TempDir::new("upgrade-failed-run");
    let socket = dir.str("ctl.sock");
    let pidfile = dir.join("ufork.pid");
    std::fs::write(dir.join("app.py"), OLD_ONLY_PY).unwrap();
    let mut command = ufork();
    command.current_dir(dir.path()).args([
        "run",
        "-w",
        "2",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--notify",
        "--bind",
        "127.0.0.1:0",
        "--metrics-bind",
        "127.0.0.1:0",
        "--control-socket",
        &socket,
        "--start-timeout",
        "4",
        "--give-up-after",
        "1",
        "--",
        "python3",
        "app.py",
    ]);
    let mut old = Running::start_with(&mut command);
    let line = old.expect_line("listening on");
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"));
    let metrics = old.health_addr();
    std::fs::write(dir.join("oldarb"), old.pid().to_string()).unwrap();
    wait_ready(&socket, 2);
    serves(addr, metrics);

    std::fs::write(dir.join("broken"), "fail").unwrap();
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_one_line_error(&out, 1, &["upgrade failed", "exited with status 1"]);
    old.expect_line("upgrade: started pid");
    old.expect_line("upgrade failed, still serving");
    serves(addr, metrics);

    // Not ready in time: the old arbiter stops the new one. Probes queued
    // on --metrics-bind while the new arbiter ran are answered after it
    // ended.
    std::fs::write(dir.join("broken"), "hang").unwrap();
    let mut upgrade = ufork()
        .args(["upgrade", "--control-socket", &socket])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = old.expect_line("upgrade: started pid");
    let new: i32 = line
        .split("started pid ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("a pid in {line:?}"));
    let deadline = Instant::now() + DEADLINE;
    while children_of(new).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the new arbiter forked no worker"
        );
        std::thread::yield_now();
    }
    let mut probes: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    assert_eq!(upgrade.wait().unwrap().code(), Some(1));
    old.expect_line("upgrade failed, still serving");
    assert!(ufork_daemon::wait_for_exit(new, Some(DEADLINE)).unwrap());
    serves(addr, metrics);
    for probe in &mut probes {
        probe.set_read_timeout(Some(DEADLINE)).unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .expect("a probe queued during the failed upgrade is the old pool's");
        let mut answer = String::new();
        probe.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
    wait_ready(&socket, 2);

    // Ready, but the pidfile cannot be taken over (a directory is in the
    // way): the new arbiter stops and exits 1, saying why.
    std::fs::remove_file(dir.join("broken")).unwrap();
    std::fs::remove_file(&pidfile).unwrap();
    std::fs::create_dir(&pidfile).unwrap();
    std::fs::write(pidfile.join("keep"), "").unwrap();
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_one_line_error(&out, 1, &["upgrade failed", "exited with status 1"]);
    old.expect_line("upgrade failed: cannot take over from the old arbiter: --pidfile");
    serves(addr, metrics);
    std::fs::remove_dir_all(&pidfile).unwrap();

    wait_ready(&socket, 2);
    let stop = run(&["stop", "--control-socket", &socket]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert_eq!(old.wait().code(), Some(0), "{}", old.transcript());
    assert!(
        !old.transcript().contains("accept"),
        "no program saw its accept fail: {}",
        old.transcript()
    );
}

/// `serve` shuts its sockets down at a graceful stop: a new arbiter that
/// fails before it is ready (here it cannot take the pidfile over) must not.
/// After a later upgrade that succeeds, the new pool's stop refuses new
/// connections at once again, while an accepted download completes.
#[test]
fn serve_keeps_its_sockets_listening_when_the_new_arbiter_fails_and_refuses_after_a_handover() {
    let dir = TempDir::new("upgrade-failed-serve");
    let socket = dir.str("ctl.sock");
    let pidfile = dir.join("ufork.pid");
    let site = dir.join("site");
    std::fs::create_dir(&site).unwrap();
    let size = 32 << 20;
    std::fs::write(site.join("big"), vec![b'x'; size]).unwrap();
    std::fs::write(site.join("index.html"), "old\n").unwrap();
    let mut old = Running::start(&[
        "serve",
        site.to_str().unwrap(),
        "-w",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--metrics-bind",
        "127.0.0.1:0",
        "--control-socket",
        &socket,
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    let addr = old.http_addr();
    let metrics = old.health_addr();
    wait_ready(&socket, 1);
    serves(addr, metrics);

    // The new arbiter takes the sockets, starts its workers, and fails
    // taking the pidfile over (a directory is in the way): it stops.
    std::fs::remove_file(&pidfile).unwrap();
    std::fs::create_dir(&pidfile).unwrap();
    std::fs::write(pidfile.join("keep"), "").unwrap();
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_one_line_error(&out, 1, &["upgrade failed"]);
    old.expect_line("cannot take over from the old arbiter");
    // The new arbiter says so in its exit status too (it used to exit 0).
    let failed = old.expect_line("upgrade failed, still serving");
    assert!(
        failed.contains("exited with status 1 before it was ready"),
        "{failed}"
    );
    old.expect_line("upgrade failed: cannot take over from the old arbiter: --pidfile");
    serves(addr, metrics);

    // The hand-over completes: the new arbiter refuses at its own stop.
    std::fs::remove_dir_all(&pidfile).unwrap();
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let new = super::upgraded_pid(&out.stdout);
    let _new_arbiter = StopOnDrop(new);
    assert_eq!(old.wait().code(), Some(0), "{}", old.transcript());
    serves(addr, metrics);
    let mut download = TcpStream::connect(addr).unwrap();
    download.set_read_timeout(Some(DEADLINE)).unwrap();
    download
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    download.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(new).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // A handshake that raced the shutdown is reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connect: {e}"),
            Ok(_) => assert!(Instant::now() < deadline, "still accepting"),
        }
        std::thread::yield_now();
    }
    let mut rest = Vec::new();
    download.read_to_end(&mut rest).unwrap();
    let body = rest.len() - rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    assert_eq!(body, size, "the accepted download completed");
    assert!(ufork_daemon::wait_for_exit(new, Some(DEADLINE)).unwrap());
}

/// A new arbiter that took the pidfile over and then cannot take the
/// control socket's path (a directory is in the way) puts the old arbiter's
/// pidfile back: the old pool keeps serving, and `status` and `stop` find
/// it by its pidfile.
#[test]
fn a_takeover_that_fails_halfway_leaves_the_old_pidfile() {
    let dir = TempDir::new("upgrade-failed-halfway");
    let socket = dir.str("ctl.sock");
    let pidfile = dir.join("ufork.pid");
    let mut old = Running::start(&[
        "serve",
        "-w",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--control-socket",
        &socket,
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    wait_ready(&socket, 1);
    std::fs::remove_file(&socket).unwrap();
    std::fs::create_dir(&socket).unwrap();
    std::fs::write(dir.join("ctl.sock").join("keep"), "").unwrap();
    ufork_daemon::signal(old.pid(), rustix::process::Signal::USR2).unwrap();
    old.expect_line("upgrade failed: cannot take over from the old arbiter: --control-socket");
    old.expect_line("upgrade failed, still serving");
    let named = std::fs::read_to_string(&pidfile).expect("the old pidfile is back");
    assert_eq!(named.trim(), old.pid().to_string());
    let status = run(&["status", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{status:#?}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let stop = run(&["stop", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert_eq!(old.wait().code(), Some(0), "{}", old.transcript());
}

/// Files in `dir` whose name ends in `.new`: a temporary control socket or
/// pidfile an upgrade left.
fn temporaries(dir: &TempDir) -> Vec<String> {
    std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".new"))
        .collect()
}

/// A new arbiter killed after it bound its temporary control socket (here
/// by SIGKILL, as the old arbiter's stop kills one that outlives its
/// grace) cannot remove `<socket>.<pid>.new` itself: the old arbiter does,
/// once it reaped it. And one that stops on its own (the old arbiter's
/// stop abandoned the upgrade) removes its own.
#[test]
fn a_failed_upgrade_leaves_no_temporary_control_socket() {
    let dir = TempDir::new("upgrade-failed-temporary");
    let socket = dir.str("ctl.sock");
    let pidfile = dir.join("ufork.pid");
    std::fs::write(dir.join("app.py"), OLD_ONLY_PY).unwrap();
    let mut command = ufork();
    command.current_dir(dir.path()).args([
        "run",
        "-w",
        "1",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--notify",
        "--bind",
        "127.0.0.1:0",
        "--control-socket",
        &socket,
        "--",
        "python3",
        "app.py",
    ]);
    let mut old = Running::start_with(&mut command);
    std::fs::write(dir.join("oldarb"), old.pid().to_string()).unwrap();
    wait_ready(&socket, 1);
    // The new arbiter's programs never become ready.
    std::fs::write(dir.join("broken"), "hang").unwrap();
    for kill in [true, false] {
        ufork_daemon::signal(old.pid(), rustix::process::Signal::USR2).unwrap();
        let line = old.expect_line("upgrade: started pid");
        let new: i32 = line
            .split("started pid ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("a pid in {line:?}"));
        let _stop = StopOnDrop(new);
        let temporary = format!("{socket}.{new}.new");
        let deadline = Instant::now() + DEADLINE;
        while !std::path::Path::new(&temporary).exists() {
            assert!(Instant::now() < deadline, "{temporary} never bound");
            std::thread::yield_now();
        }
        if kill {
            ufork_daemon::signal(new, rustix::process::Signal::KILL).unwrap();
            old.expect_line("upgrade failed, still serving");
            assert!(ufork_daemon::wait_for_exit(new, Some(DEADLINE)).unwrap());
            old.expect_line(&format!("removed {temporary}"));
            assert_eq!(temporaries(&dir), Vec::<String>::new());
            wait_ready(&socket, 1);
        } else {
            let stop = run(&["stop", "--control-socket", &socket]);
            assert_eq!(stop.code(), Some(0), "{stop:#?}");
            old.expect_line("upgrade abandoned: the pool is stopping");
            assert_eq!(old.wait().code(), Some(0), "{}", old.transcript());
            assert!(!alive(new), "the new arbiter outlived the old");
            assert_eq!(temporaries(&dir), Vec::<String>::new());
        }
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}
