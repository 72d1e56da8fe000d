//! Reaching a pool by its pidfile: the control socket every pool with
//! `--pidfile` makes beside it (so `reload` waits for the roll), a pool in
//! its own pid namespace driven from outside, and pidfiles whose pid must
//! not be signalled.

use std::collections::HashSet;
use std::os::linux::net::SocketAddrExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::json;
use crate::util::*;

/// The worker pids and the ready count, from `status --json --pidfile`.
fn workers(pidfile: &str) -> (HashSet<i32>, usize, usize) {
    let out = run(&["status", "--json", "--pidfile", pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let fields = json(&out.stdout);
    let pids: HashSet<i32> = fields
        .iter()
        .filter(|(k, _)| k.starts_with("workers.") && k.ends_with(".pid"))
        .map(|(_, v)| v.parse().unwrap())
        .collect();
    let ready = fields["ready"].parse().unwrap();
    let target = fields["target"].parse().unwrap();
    (pids, ready, target)
}

/// Waits until `status --json --pidfile` shows `n` ready workers.
fn until_ready(pidfile: &str, n: usize) -> HashSet<i32> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (pids, ready, _) = workers(pidfile);
        if ready == n && pids.len() == n {
            return pids;
        }
        assert!(std::time::Instant::now() < deadline, "never {n} ready");
        std::thread::yield_now();
    }
}

/// `ufork reload --pidfile P` returns after the roll: the very next look
/// finds every worker replaced and ready.
fn reload_waits(pidfile: &str, workers_before: &HashSet<i32>, n: usize) {
    let out = run(&["reload", "--pidfile", pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("every worker restarted"), "{out:#?}");
    let (after, ready, target) = workers(pidfile);
    assert_eq!((ready, target, after.len()), (n, n, n), "{out:#?}");
    assert!(
        after.is_disjoint(workers_before),
        "{after:?} {workers_before:?}"
    );
}

#[test]
fn reload_with_a_pidfile_in_the_foreground_waits_for_the_roll() {
    let dir = TempDir::new("pidfile-reload");
    let pidfile = dir.str("ufork.pid");
    let socket = dir.str("ufork.control.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--pidfile",
        &pidfile,
    ]);
    let addr = pool.http_addr();
    assert_eq!(
        pool.expect_line("control socket"),
        format!("control socket: {socket}")
    );
    let before = until_ready(&pidfile, 2);
    // `ctl` finds the same socket by the pidfile.
    let out = run(&["ctl", "--pidfile", &pidfile, "status"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("SLOT"), "{out:#?}");
    reload_waits(&pidfile, &before, 2);
    assert_eq!(get(addr, "/").0, 200);
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(!Path::new(&pidfile).exists() && !Path::new(&socket).exists());
    let out = run(&["reload", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(3), "{out:#?}");
}

/// The layout an operator picks, `--pidfile app.pid --bind unix:app.sock`:
/// the control socket beside the pidfile is `app.control.sock`, so the
/// listener and the control socket each have their path, and `status
/// --pidfile` asks the pool, not the application.
#[test]
fn a_unix_listener_named_like_the_pidfile_leaves_the_control_socket_its_own_path() {
    use std::io::{Read, Write};
    let dir = TempDir::new("pidfile-unix-bind");
    let pidfile = dir.str("app.pid");
    let listener = dir.join("app.sock");
    let bind = format!("unix:{}", listener.display());
    let mut pool = Running::start(&["serve", "--bind", &bind, "-w", "1", "--pidfile", &pidfile]);
    assert_eq!(
        pool.expect_line("control socket"),
        format!("control socket: {}", dir.str("app.control.sock"))
    );
    until_ready(&pidfile, 1);
    let out = run(&["status", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("1 ready"), "{out:#?}");
    let mut http = std::os::unix::net::UnixStream::connect(&listener).unwrap();
    http.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    http.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(!listener.exists() && !dir.join("app.control.sock").exists());
}

/// One path cannot be both sockets: refused before anything is made, naming
/// both flags, however the paths are spelled.
#[test]
fn a_unix_bind_on_the_control_sockets_path_is_a_usage_error() {
    let dir = TempDir::new("pidfile-unix-collide");
    let root = dir.str("");
    let out = run(&[
        "serve",
        "--chdir",
        &root,
        "--bind",
        "unix:x.sock",
        "--control-socket",
        "./x.sock",
    ]);
    assert_one_line_error(
        &out,
        2,
        &["--bind unix:x.sock", "--control-socket ./x.sock"],
    );
    let pidfile = dir.str("app.pid");
    let bind = format!("unix:{}", dir.str("app.control.sock"));
    for sub in [&["serve"][..], &["run", "--no-prompt"]] {
        let tail: &[&str] = if sub[0] == "run" {
            &["--", "true"]
        } else {
            &[]
        };
        let args = [sub, &["--bind", &bind, "--pidfile", &pidfile], tail].concat();
        let out = run(&args);
        assert_one_line_error(
            &out,
            2,
            &[&format!("--bind {bind}"), &format!("--pidfile {pidfile}")],
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Binaries before `.control.sock` made `PATH.sock` beside the pidfile: a
/// pool they started is still found by `--pidfile`.
#[test]
fn a_control_socket_where_earlier_binaries_put_it_is_still_found_by_the_pidfile() {
    let dir = TempDir::new("pidfile-old-socket");
    let pidfile = dir.str("ufork.pid");
    let old = dir.str("ufork.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--pidfile",
        &pidfile,
        "--control-socket",
        &old,
    ]);
    pool.expect_line("control socket");
    let out = run(&["ctl", "--pidfile", &pidfile, "status"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("SLOT"), "{out:#?}");
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn without_a_socket_beside_the_pidfile_the_pool_serves_and_reload_says_it_cannot_wait() {
    let dir = TempDir::new("pidfile-nosocket");
    let pidfile = dir.str("ufork.pid");
    // Something else owns the socket's path: the pool leaves it alone.
    std::fs::write(dir.join("ufork.control.sock"), "not a socket\n").unwrap();
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--pidfile",
        &pidfile,
    ]);
    let addr = pool.http_addr();
    pool.expect_line("no control socket beside the pidfile");
    pool.expect_line("worker 0 pid");
    assert_eq!(get(addr, "/").0, 200);
    let out = run(&["reload", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stdout
            .contains(&format!("restarting every worker of pid {}, ", pool.pid())),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("not waiting for the roll to finish")
            && out.stderr.contains("not a socket"),
        "{out:#?}"
    );
    pool.expect_line("SIGHUP: restarting every worker");
    let out = run(&["ctl", "--pidfile", &pidfile, "status"]);
    assert_one_line_error(&out, 1, &["without a control socket", "not a socket"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("ufork.control.sock")).unwrap(),
        "not a socket\n"
    );
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// A child the test owns, standing for "some other process": signalled by
/// mistake, it dies and the test sees it.
struct Bystander(Child);

impl Bystander {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep"),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn assert_alive(&mut self) {
        assert_eq!(
            self.0.try_wait().unwrap(),
            None,
            "the bystander was signalled"
        );
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_pidfile_naming_another_process_than_its_lock_holder_is_never_signalled() {
    let dir = TempDir::new("pidfile-forged");
    let path = dir.join("ufork.pid");
    let pidfile = dir.str("ufork.pid");
    let mut bystander = Bystander::start();
    // Locked by this test process, naming the bystander: what a pool in a
    // pid namespace looks like from outside when its pid is another's here.
    let _lock = ufork_daemon::Pidfile::create(&path).unwrap();
    std::fs::write(&path, format!("{}\n", bystander.pid())).unwrap();
    let me = std::process::id().to_string();
    let not_signalling = format!("not signalling pid {}", bystander.pid());
    for command in [
        &["reload", "--pidfile", &pidfile][..],
        &["stop", "--pidfile", &pidfile, "--timeout", "1"],
        &["upgrade", "--pidfile", &pidfile, "--timeout", "1"],
    ] {
        let out = run(command);
        assert_one_line_error(&out, 1, &[&not_signalling, &format!("held by pid {me}")]);
        bystander.assert_alive();
    }
    // `status` signals nothing; it says the same.
    let out = run(&["status", "--pidfile", &pidfile]);
    assert_one_line_error(&out, 1, &[&not_signalling]);
    bystander.assert_alive();
}

#[test]
fn a_pool_in_its_own_pid_namespace_is_driven_from_outside_by_its_pidfile() {
    if !pid_namespace_available() {
        return;
    }
    let dir = TempDir::new("pidfile-pidns");
    let pidfile = dir.str("ufork.pid");
    let socket = dir.str("ufork.control.sock");
    // The pool is pid 1 of a new pid namespace; `--kill-child` ends it with
    // `unshare` if the test stops early (Running's drop signals unshare).
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "-w",
            "2",
            "--pidfile",
            &pidfile,
        ])
        .env_remove("UFORK_LOG")
        .stdin(Stdio::null());
    let mut pool = Running::start_with(&mut command);
    let addr = pool.http_addr();
    pool.expect_line("control socket");
    let before = until_ready(&pidfile, 2);
    // The pidfile holds the pool's own view of its pid.
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), "1");
    let out = run(&["status", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("arbiter pid 1"), "{out:#?}");
    assert!(
        out.stdout
            .contains("(the pool runs in its own pid namespace: its arbiter, pid 1 there, is pid "),
        "{out:#?}"
    );
    // Through the control socket beside the pidfile: it waits.
    reload_waits(&pidfile, &before, 2);
    // Without it, the pool is signalled by its pid here, never pid 1.
    std::fs::remove_file(&socket).unwrap();
    let out = run(&["status", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stdout.contains("(pid 1 in its own pid namespace)"),
        "{out:#?}"
    );
    let out = run(&["reload", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stdout
            .contains("(pid 1 in its own pid namespace), one at a time (SIGHUP)"),
        "{out:#?}"
    );
    pool.expect_line("SIGHUP: restarting every worker");
    // An upgrade cannot work for pid 1 of a namespace: said at once.
    let out = run(&["upgrade", "--pidfile", &pidfile]);
    assert_one_line_error(&out, 1, &["pid 1 of its pid namespace"]);
    assert_eq!(get(addr, "/").0, 200);
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("stopped"), "{out:#?}");
    // unshare passes on the pool's exit status.
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(pool.transcript().contains("every worker reaped"));
    assert!(!Path::new(&pidfile).exists());
}

/// Ready through sd_notify unless the file named by its argument exists, in
/// which case it fails before it is ready.
const READY_UNLESS_PY: &str = r#"
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
if os.path.exists(sys.argv[1]):
    sys.exit(1)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
while True:
    signal.pause()
"#;

#[test]
fn reload_exits_1_with_the_reason_when_the_roll_is_abandoned() {
    let dir = TempDir::new("pidfile-abandoned");
    let pidfile = dir.str("ufork.pid");
    let script = dir.join("ready_unless.py");
    std::fs::write(&script, READY_UNLESS_PY).unwrap();
    let marker = dir.str("fail-from-now-on");
    let mut pool = Running::start(&[
        "run",
        "-w",
        "2",
        "--notify",
        "--pidfile",
        &pidfile,
        "--",
        "python3",
        script.to_str().unwrap(),
        &marker,
    ]);
    pool.expect_line("control socket");
    let before = until_ready(&pidfile, 2);
    // Every new worker fails now: the first stand-in dies before it is ready.
    std::fs::write(&marker, "").unwrap();
    let out = run(&["reload", "--pidfile", &pidfile]);
    assert_one_line_error(
        &out,
        1,
        &["reload failed", "abandoned", "are still serving"],
    );
    for pid in &before {
        assert!(out.stderr.contains(&format!("(pid {pid})")), "{out:#?}");
    }
    pool.expect_line("rolling restart abandoned");
    // The old workers kept serving.
    assert_eq!(until_ready(&pidfile, 2), before);
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// Ready through sd_notify unless it runs in slot 0 and the file named by its
/// argument exists, in which case it fails before it is ready.
const SLOT_0_FAILS_PY: &str = r#"
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
if os.environ["UFORK_WORKER_ID"] == "0" and os.path.exists(sys.argv[1]):
    sys.exit(1)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
while True:
    signal.pause()
"#;

/// The (slot, pid, state) of each worker, from `status --json --pidfile`.
fn slots(pidfile: &str) -> Vec<(usize, i32, String)> {
    let out = run(&["status", "--json", "--pidfile", pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let fields = json(&out.stdout);
    (0..)
        .map_while(|i| {
            let field = |name: &str| fields.get(&format!("workers.{i}.{name}")).cloned();
            Some((
                field("slot")?.parse().unwrap(),
                field("pid")?.parse().unwrap(),
                field("state")?.trim_matches('"').to_owned(),
            ))
        })
        .collect()
}

#[test]
fn reload_exits_1_when_a_slots_new_worker_fails_and_the_stand_in_keeps_serving() {
    let dir = TempDir::new("pidfile-stand-in");
    let pidfile = dir.str("ufork.pid");
    let script = dir.join("slot_0_fails.py");
    std::fs::write(&script, SLOT_0_FAILS_PY).unwrap();
    let marker = dir.str("slot-0-fails");
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--notify",
        "--pidfile",
        &pidfile,
        "--",
        "python3",
        script.to_str().unwrap(),
        &marker,
    ]);
    pool.expect_line("control socket");
    let before = until_ready(&pidfile, 1);
    // The stand-in (slot 1) is ready; slot 0's new worker fails.
    std::fs::write(&marker, "").unwrap();
    let out = run(&["reload", "--pidfile", &pidfile]);
    assert_one_line_error(
        &out,
        1,
        &[
            "reload failed: the rolling restart was abandoned after",
            "worker 0's new worker (pid ",
            "failed before it was ready",
        ],
    );
    pool.expect_line("rolling restart abandoned");
    let stand_in = |pidfile: &str| {
        let now = slots(pidfile);
        let ready: Vec<_> = now
            .iter()
            .filter(|(_, _, state)| state == "ready")
            .collect();
        assert_eq!(ready.len(), 1, "one worker serves: {now:?}");
        assert_eq!(ready[0].0, 1, "the stand-in: {now:?}");
        assert!(
            now.iter().all(|(_, pid, _)| !before.contains(pid)),
            "{now:?}"
        );
        ready[0].1
    };
    let serving = stand_in(&pidfile);
    // Slot 0 keeps failing (a crash loop now), past the default
    // --give-up-after 5: the stand-in serves, so the pool does not give up.
    pool.expect_line("worker 0 is crash-looping");
    pool.expect_line("worker 0 (pid ");
    pool.expect_line("generation 6) failed");
    assert_eq!(stand_in(&pidfile), serving);
    // A second reload meanwhile begins with slot 0, whose next worker fails
    // too: it ends (abandoned) rather than waiting forever.
    let out = run(&["reload", "--pidfile", &pidfile, "--timeout", "60"]);
    assert_one_line_error(
        &out,
        1,
        &[
            "reload failed: the rolling restart was abandoned after",
            "worker 0's new worker (pid ",
            "failed before it was ready",
        ],
    );
    assert_eq!(stand_in(&pidfile), serving, "the stand-in still serves");
    // Once slot 0 has a ready worker, the stand-in goes.
    std::fs::remove_file(&marker).unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let now = slots(&pidfile);
        if matches!(now.as_slice(), [(0, _, state)] if state == "ready") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never only slot 0 ready: {now:?}"
        );
        std::thread::yield_now();
    }
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(
        pool.transcript()
            .contains(&format!("worker 1 (pid {serving}, generation 0) stopped")),
        "{}",
        pool.transcript()
    );
}

/// Ready through sd_notify; the worker in slot 1 first waits for a writer on
/// the FIFO `argv[2]` when the file `argv[1]` exists.
const GATED_PY: &str = r#"
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
if os.environ["UFORK_WORKER_ID"] == "1" and os.path.exists(sys.argv[1]):
    with open(sys.argv[2]) as gate:
        gate.read()
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
while True:
    signal.pause()
"#;

/// A `run --notify --pidfile` pool of [`GATED_PY`] workers: once the gate is
/// shut, slot 1's next worker waits at it, so a roll cannot end until the
/// test opens it.
struct Gated {
    pool: Running,
    pidfile: String,
    hold: String,
    fifo: String,
}

impl Gated {
    fn start(dir: &TempDir) -> Self {
        let pidfile = dir.str("ufork.pid");
        let script = dir.join("gated.py");
        std::fs::write(&script, GATED_PY).unwrap();
        let (hold, fifo) = (dir.str("hold"), dir.str("gate"));
        let mut pool = Running::start(&[
            "run",
            "-w",
            "2",
            "--notify",
            "--pidfile",
            &pidfile,
            "--",
            "python3",
            script.to_str().unwrap(),
            &hold,
            &fifo,
        ]);
        pool.expect_line("control socket");
        Self {
            pool,
            pidfile,
            hold,
            fifo,
        }
    }

    /// From now on, slot 1's new worker waits at the gate.
    fn shut_gate(&self) {
        let made = Command::new("mkfifo").arg(&self.fifo).status().unwrap();
        assert!(made.success());
        std::fs::write(&self.hold, "").unwrap();
    }

    /// Lets the worker waiting at the gate go on; fails if none opens it.
    fn open_gate(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = self.fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::write(gate, "go\n"));
        });
        rx.recv_timeout(DEADLINE)
            .expect("slot 1's new worker opens the gate")
            .unwrap();
    }
}

#[test]
fn reload_prints_each_replaced_worker_as_it_goes() {
    let dir = TempDir::new("pidfile-progress");
    let mut gated = Gated::start(&dir);
    let pidfile = gated.pidfile.clone();
    until_ready(&pidfile, 2);
    gated.shut_gate();
    // Slot 0 is replaced; slot 1's new worker waits at the gate, so the
    // reload cannot have finished when it tells slot 0.
    let mut reload = Running::start(&["reload", "--pidfile", &pidfile]);
    reload.expect_line("worker 0: pid");
    assert!(
        !reload
            .seen
            .iter()
            .any(|(_, l)| l.contains("every worker restarted")),
        "{:?}",
        reload.seen
    );
    gated.open_gate();
    reload.expect_line("worker 1: pid");
    reload.expect_line("every worker restarted");
    assert_eq!(reload.wait().code(), Some(0), "{}", reload.transcript());
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(
        gated.pool.wait().code(),
        Some(0),
        "{}",
        gated.pool.transcript()
    );
}

/// Says where its NOTIFY_SOCKET is, is ready, then sends `STATUS=second`
/// once a writer opens the FIFO `argv[1]`.
const NOTIFY_TWICE_PY: &str = r#"
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
name = os.environ["NOTIFY_SOCKET"]
print("notify socket", name, flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = "\0" + name[1:]
s.sendto(b"READY=1\nSTATUS=first", addr)
with open(sys.argv[1]) as gate:
    gate.read()
s.sendto(b"STATUS=second", addr)
while True:
    signal.pause()
"#;

#[test]
fn a_notify_datagram_from_outside_the_pools_pid_namespace_is_no_workers() {
    if !pid_namespace_available() {
        return;
    }
    let dir = TempDir::new("pidns-notify");
    let socket = dir.str("ctl.sock");
    let script = dir.join("notify_twice.py");
    std::fs::write(&script, NOTIFY_TWICE_PY).unwrap();
    let fifo = dir.str("gate");
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
        .args([
            "run",
            "-w",
            "1",
            "--notify",
            "--control-socket",
            &socket,
            "--",
        ])
        .args(["python3", script.to_str().unwrap(), &fifo])
        .env_remove("UFORK_LOG")
        .stdin(Stdio::null());
    let mut pool = Running::start_with(&mut command);
    let line = pool.expect_line("notify socket @");
    let name = line.rsplit(' ').next().unwrap().trim_start_matches('@');
    let activity = |want: &str| {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let out = run(&["status", "--json", "--control-socket", &socket]);
            let fields = json(&out.stdout);
            if fields.get("workers.0.activity").map(String::as_str) == Some(want) {
                return fields;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {want}: {out:#?}"
            );
            std::thread::yield_now();
        }
    };
    activity("\"first\"");
    // From here, outside the pool's namespace: its pid there is 0.
    let outside = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    outside
        .send_to_addr(b"STATUS=from outside", &addr)
        .expect("send to the notify socket");
    // The worker's next datagram is read after it: once it shows, the
    // outside one was read and given to no worker.
    let (tx, rx) = std::sync::mpsc::channel();
    let gate = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(gate, "go\n"));
    });
    rx.recv_timeout(DEADLINE)
        .expect("the worker opens the gate")
        .unwrap();
    let fields = activity("\"second\"");
    assert_eq!(fields["ready"], "1");
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn a_killed_pools_stale_pidfile_and_socket_mean_not_running_and_the_next_start_replaces_them() {
    let dir = TempDir::new("pidfile-stale");
    let pidfile = dir.str("ufork.pid");
    let socket = dir.join("ufork.control.sock");
    let args = [
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--pidfile",
        &pidfile,
    ];
    let mut pool = Running::start(&args);
    pool.expect_line("control socket");
    let workers = until_ready(&pidfile, 1);
    pool.signal(rustix::process::Signal::KILL);
    pool.wait();
    // Workers follow their arbiter (parent-death signal) and, with it, the
    // pidfile's lock they share; nothing listens.
    for pid in workers {
        assert!(ufork_daemon::wait_for_exit(pid, Some(DEADLINE)).unwrap());
    }
    assert!(socket.exists() && Path::new(&pidfile).exists());
    for command in ["reload", "stop", "upgrade", "status"] {
        let out = run(&[command, "--pidfile", &pidfile]);
        assert_eq!(out.code(), Some(3), "{out:#?}");
        let text = out.stdout + &out.stderr;
        assert!(text.contains("stale pidfile"), "{text}");
    }
    let mut again = Running::start(&args);
    again.expect_line("control socket");
    let before = until_ready(&pidfile, 1);
    reload_waits(&pidfile, &before, 1);
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(again.wait().code(), Some(0), "{}", again.transcript());
    assert!(!socket.exists());
}

#[test]
fn reload_timeout_ends_the_wait_not_the_roll() {
    let dir = TempDir::new("pidfile-reload-timeout");
    let mut gated = Gated::start(&dir);
    let pidfile = gated.pidfile.clone();
    let before = until_ready(&pidfile, 2);
    gated.shut_gate();
    // Slot 1's new worker waits at the gate: the roll cannot end in 1 s
    // (whether slot 0 is told by then depends on the machine's load).
    let out = run(&["reload", "--pidfile", &pidfile, "--timeout", "1"]);
    assert_one_line_error(&out, 1, &["not finished within 1s", "it goes on"]);
    gated.open_gate();
    // The roll went on and ends: two ready workers, none of the old ones.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (pids, ready, _) = workers(&pidfile);
        if ready == 2 && pids.len() == 2 && pids.is_disjoint(&before) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{pids:?} {ready}");
        std::thread::yield_now();
    }
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(
        gated.pool.wait().code(),
        Some(0),
        "{}",
        gated.pool.transcript()
    );
}

/// A signal sent the moment the pidfile names the pool (a deploy script's
/// `kill -HUP $(cat pidfile)` right after the start) is handled, not fatal:
/// the pool blocks the signals it handles until its handlers are in place.
/// Before, SIGHUP's default action killed the arbiter in most rounds, with
/// nothing logged and a stale pidfile left.
#[test]
fn a_signal_sent_as_soon_as_the_pidfile_names_the_pool_is_handled() {
    for signal in [
        rustix::process::Signal::HUP,
        rustix::process::Signal::USR1,
        rustix::process::Signal::TTIN,
    ] {
        for _ in 0..4 {
            let dir = TempDir::new("early-signal");
            let pidfile = dir.join("ufork.pid");
            let path = pidfile.to_str().unwrap();
            let mut pool = Running::start(&[
                "serve",
                "-w",
                "1",
                "--bind",
                "127.0.0.1:0",
                "--pidfile",
                path,
            ]);
            let pid = pid_once_named(&pidfile);
            assert_eq!(pid, pool.pid());
            ufork_daemon::signal(pid, signal).unwrap();
            let handled = match signal {
                rustix::process::Signal::HUP => "SIGHUP: restarting every worker",
                rustix::process::Signal::USR1 => "SIGUSR1: reopening logs",
                _ => "workers: 1 -> 2",
            };
            pool.expect_line(handled);
            let stop = run(&["stop", "--pidfile", path]);
            assert_eq!(stop.code(), Some(0), "{stop:#?}");
            assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
        }
    }
}

/// Starts `ufork ARGS --pidfile P --log-file FIFO`: the pool names itself in
/// the pidfile, then waits at the FIFO's open until a reader comes, so a
/// signal sent before [`open_log`] is surely sent before the arbiter's loop.
fn held_at_its_log(dir: &TempDir, args: &[&str]) -> (Running, i32) {
    let (pidfile, log) = (dir.str("ufork.pid"), dir.str("log"));
    assert!(Command::new("mkfifo").arg(&log).status().unwrap().success());
    let mut all = vec!["--pidfile", &pidfile, "--log-file", &log];
    let at = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    all.splice(0..0, args[..at].iter().copied());
    all.extend(&args[at..]);
    let pool = Running::start(&all);
    let pid = pid_once_named(&dir.join("ufork.pid"));
    assert_eq!(pid, pool.pid());
    (pool, pid)
}

/// Lets a pool of [`held_at_its_log`] go on: its log, line by line.
fn open_log(dir: &TempDir) -> Running {
    Running::start_with(Command::new("cat").arg(dir.join("log")))
}

#[test]
fn a_stop_signal_sent_before_the_pool_started_forks_no_worker() {
    for (signal, name) in [
        (rustix::process::Signal::TERM, "SIGTERM"),
        (rustix::process::Signal::INT, "SIGINT"),
        (rustix::process::Signal::QUIT, "SIGQUIT"),
    ] {
        let dir = TempDir::new("stopped-before-start");
        let started = dir.str("started");
        let script = format!("echo started >> {started}; exec sleep 600");
        let (mut pool, pid) = held_at_its_log(&dir, &["run", "-w", "2", "--", "sh", "-c", &script]);
        ufork_daemon::signal(pid, signal).unwrap();
        let mut log = open_log(&dir);
        log.expect_line(&format!("{name}: stopping"));
        log.expect_line("stopped: every worker reaped");
        assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
        log.wait();
        assert!(
            !log.seen
                .iter()
                .any(|(_, l)| l.contains("started (generation")),
            "{}",
            log.transcript()
        );
        assert!(!Path::new(&started).exists(), "a worker ran");
        assert!(!dir.join("ufork.pid").exists(), "the pidfile is left");
        assert!(!dir.join("ufork.control.sock").exists());
    }
}

/// HUP and TTIN sent while the pool starts are for the pool that runs:
/// acted on once its first workers are forked.
#[test]
fn a_restart_or_scale_signal_sent_before_the_pool_started_is_acted_on_after() {
    let dir = TempDir::new("signalled-before-start");
    let (mut pool, pid) = held_at_its_log(&dir, &["serve", "-w", "1", "--bind", "127.0.0.1:0"]);
    ufork_daemon::signal(pid, rustix::process::Signal::HUP).unwrap();
    ufork_daemon::signal(pid, rustix::process::Signal::TTIN).unwrap();
    let mut log = open_log(&dir);
    log.expect_line("worker 0 pid");
    log.expect_line("SIGHUP: restarting every worker");
    log.expect_line("workers: 1 -> 2");
    let stop = run(&["stop", "--pidfile", &dir.str("ufork.pid")]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// A pidfile no pool holds, naming a live process (a reused pid, or a file
/// written by hand): nothing runs, nothing is signalled, and the message
/// does not call that live process a pool that is gone, also for a user
/// who may not signal it (pid 1, to anyone but root).
#[test]
fn a_stale_pidfile_naming_a_live_process_says_it_is_another_process() {
    let dir = TempDir::new("pidfile-alive");
    let pidfile = dir.str("p.pid");
    let me = std::process::id();
    std::fs::write(&pidfile, format!("{me}\n")).unwrap();
    for command in ["status", "stop", "reload"] {
        let out = run(&[command, "--pidfile", &pidfile]);
        assert_eq!(out.code(), Some(3), "{out:#?}");
        let text = out.stdout + &out.stderr;
        assert!(
            text.contains(&format!(
                "no pool holds it; pid {me}, which it names, is another process"
            )),
            "{text}"
        );
    }
    if !rustix::process::geteuid().is_root() {
        return;
    }
    // Pid 1, to a user who may not signal it: still another process.
    std::fs::write(&pidfile, "1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for path in [dir.str(""), pidfile.clone()] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o055)).unwrap();
    }
    use std::os::unix::process::CommandExt;
    let Ok(out) = ufork()
        .uid(65534)
        .gid(65534)
        .args(["status", "--pidfile", &pidfile])
        .output()
    else {
        eprintln!("skipped: uid 65534 cannot run the binary here");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{out:#?}");
    assert!(
        text.contains("no pool holds it; pid 1, which it names, is another process"),
        "{out:#?}"
    );
}
