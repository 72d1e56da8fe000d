//! End-to-end tests of the `ufork` binary.

mod cli;
mod ops;
mod output;
mod privsep;
mod upgrade;
mod util;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rustix::process::Signal;
use util::*;

const SERVER_PY: &str = r#"
import os, socket, sys, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
assert os.environ["LISTEN_PID"] == str(os.getpid())
listener = socket.socket(fileno=3)
slot = os.environ["UFORK_WORKER_ID"]
print("worker", slot, "has", os.environ["LISTEN_FDS"], "fds named", os.environ["LISTEN_FDNAMES"], flush=True)
while True:
    conn, _ = listener.accept()
    conn.recv(1024)
    nodelay = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) if conn.family != socket.AF_UNIX else "-"
    conn.sendall(("slot=%s pid=%d listen_pid=%s nodelay=%s\n" % (slot, os.getpid(), os.environ["LISTEN_PID"], nodelay)).encode())
    conn.close()
"#;

const NOTIFY_PY: &str = r#"
import os, socket, sys, signal, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def notify(text):
    s.sendto(text.encode(), addr)
print("watchdog", os.environ.get("WATCHDOG_USEC"), flush=True)
notify("READY=1\nSTATUS=serving slot " + os.environ["UFORK_WORKER_ID"])
while True:
    time.sleep(0.2)
    notify("WATCHDOG=1")
"#;

pub(crate) fn script(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

// -- command line ------------------------------------------------------------

#[test]
fn help_explains_commands_and_signals() {
    let out = run(&["--help"]);
    assert_eq!(out.code(), Some(0));
    for needle in [
        "serve", "run", "status", "stop", "reload", "ctl", "HUP", "USR1",
    ] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
    let out = run(&["run", "--help"]);
    assert_eq!(out.code(), Some(0));
    assert!(out.stdout.contains("LISTEN_FDS"), "{}", out.stdout);
    let out = run(&["serve", "--help"]);
    assert!(out.stdout.contains("--max-requests"), "{}", out.stdout);
}

#[test]
fn bad_flags_are_one_line_usage_errors() {
    let out = run(&["serve", "--workers", "lots"]);
    assert_one_line_error(&out, 2, &["--workers", "lots"]);
    let out = run(&["serve", "--memory-limit", "12Q"]);
    assert_one_line_error(&out, 2, &["--memory-limit"]);
    let out = run(&["serve", "--timeout", "0ms"]);
    assert_one_line_error(&out, 2, &["--timeout"]);
    let out = run(&["run", "-w", "2"]);
    assert_one_line_error(&out, 2, &["CMD"]);
    let out = run(&["serve", "--bind", "nonsense"]);
    assert_one_line_error(&out, 2, &["--bind", "nonsense"]);
    let out = run(&["serve", "--bind", ":8000"]);
    assert_one_line_error(&out, 2, &["--bind :8000", "127.0.0.1:8000", "0.0.0.0:8000"]);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let out = run(&["serve", "--bind", &addr, "--bind", &addr]);
    assert_one_line_error(&out, 2, &["duplicate --bind", &addr]);
    let out = run(&["frobnicate"]);
    assert_one_line_error(&out, 2, &["frobnicate"]);
    let out = run(&["status"]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
    // The flag after ctl's COMMAND is a word of the command: say so.
    let out = run(&["ctl", "status", "--pidfile", "/nonexistent/ufork.pid"]);
    assert_one_line_error(&out, 2, &["--pidfile goes before COMMAND"]);
}

#[test]
fn address_in_use_is_a_runtime_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["serve", "--bind", &addr, "-w", "1"]);
    assert_one_line_error(&out, 1, &["--bind", &addr, "in use"]);
}

#[test]
fn missing_dir_is_a_runtime_error() {
    let dir = TempDir::new("missing");
    let missing = dir.str("no-such-site");
    let out = run(&["serve", &missing, "--bind", "127.0.0.1:0"]);
    assert_one_line_error(&out, 1, &["DIR", "no-such-site"]);
}

#[test]
fn unwritable_pidfile_and_log_are_named() {
    let dir = TempDir::new("unwritable");
    let pidfile = dir.str("no/such/dir/ufork.pid");
    let out = run(&["serve", "--bind", "127.0.0.1:0", "--pidfile", &pidfile]);
    assert_one_line_error(&out, 1, &["--pidfile", "ufork.pid"]);
    let log = dir.str("no/such/dir/ufork.log");
    let out = run(&["serve", "--bind", "127.0.0.1:0", "--log-file", &log]);
    assert_one_line_error(&out, 1, &["--log-file", "ufork.log"]);
    // The daemon reports the same through its readiness handshake.
    let pidfile = dir.str("d.pid");
    let out = run(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--daemon",
        "--pidfile",
        &pidfile,
        "--log-file",
        &log,
    ]);
    assert_one_line_error(&out, 1, &["--log-file", "ufork.log"]);
}

#[test]
fn a_command_that_cannot_run_fails_at_once() {
    let out = run(&["run", "-w", "2", "--", "no-such-program-ufork"]);
    assert_one_line_error(&out, 1, &["no-such-program-ufork", "not found"]);
    // Found and executable, but exec fails (a missing interpreter): the pool
    // stops instead of crash-looping.
    let dir = TempDir::new("badexec");
    let path = script(&dir, "bad.sh", "#!/no/such/interpreter\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&["run", "-w", "2", "--", &path]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("ufork: error: cannot execute"), "{out:#?}");
    assert!(
        last.ends_with("its interpreter `/no/such/interpreter` does not exist"),
        "{out:#?}"
    );
}

// -- serve -------------------------------------------------------------------

#[test]
fn serve_without_arguments_serves_hello_on_loopback_8000() {
    let mut server = Running::start(&["serve"]);
    let line = server.expect_match(|l| l.contains("http://") || l.contains("error"), "start");
    if line.contains("in use") {
        // Another program holds port 8000 on this machine; the message is right.
        assert!(line.contains("127.0.0.1:8000"), "{line}");
        return;
    }
    assert!(line.contains("http://127.0.0.1:8000"), "{line}");
    server.expect_line("Ctrl-C");
    server.expect_line("started");
    let (status, _, body) = get("127.0.0.1:8000".parse().unwrap(), "/");
    assert_eq!((status, body.as_str()), (200, "Hello, world!\n"));
}

#[test]
fn serve_hello_and_stop_with_sigint() {
    let dir = TempDir::new("hello");
    let socket = dir.str("ctl.sock");
    let mut server = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--control-socket",
        &socket,
    ]);
    let addr = server.http_addr();
    server.expect_line("control socket");
    wait_ready(&socket, 2);
    let (status, content_type, body) = get(addr, "/anything");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(body, "Hello, world!\n");
    server.signal(Signal::INT);
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{}", server.transcript());
    assert!(server.transcript().contains("every worker reaped"));
}

#[test]
fn serve_dir_serves_files_and_refuses_escapes() {
    let dir = TempDir::new("site");
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("css")).unwrap();
    std::fs::create_dir_all(site.join("docs")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(site.join("css/main.css"), "body {}\n").unwrap();
    std::fs::write(site.join("docs/index.html"), "<p>docs</p>\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), site.join("leak.txt")).unwrap();
    let mut server = Running::start(&[
        "serve",
        site.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
    ]);
    let addr = server.http_addr();
    server.expect_line("started");
    let (status, content_type, body) = get(addr, "/");
    assert_eq!((status, body.as_str()), (200, "<h1>home</h1>\n"));
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let (status, content_type, _) = get(addr, "/css/main.css");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/css"), "{content_type}");
    let (status, _, body) = get(addr, "/docs/");
    assert_eq!((status, body.as_str()), (200, "<p>docs</p>\n"));
    assert_eq!(get(addr, "/missing.html").0, 404);
    let escape = exchange(addr, b"GET /../secret.txt HTTP/1.0\r\n\r\n");
    assert!(!escape.contains("secret\n"), "{escape}");
    assert!(!escape.starts_with("HTTP/1.1 200"), "{escape}");
    let (status, _, body) = get(addr, "/leak.txt");
    assert_ne!(status, 200, "{body}");
    assert!(!body.contains("secret"));
}

// -- run -----------------------------------------------------------------------

#[test]
fn run_hands_the_socket_to_every_worker_with_prefixed_output() {
    let dir = TempDir::new("run");
    let server = script(&dir, "server.py", SERVER_PY);
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "run",
        "-w",
        "2",
        "--bind",
        "web=127.0.0.1:0",
        "--control-socket",
        &socket,
        "--",
        "python3",
        &server,
    ]);
    let line = pool.expect_line("listening on");
    let addr: std::net::SocketAddr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    // Output is prefixed "[slot pid] " by the capture.
    for slot in 0..2 {
        let line = pool.expect_match(
            |l| l.contains(&format!("worker {slot} has 1 fds named web")),
            "worker greeting",
        );
        // After the timestamp (see tests/output for the formats).
        let after_time = line.split_once(' ').map_or("", |(_, rest)| rest);
        assert!(after_time.starts_with(&format!("[{slot} ")), "{line}");
    }
    pool.expect_line("control socket");
    wait_ready(&socket, 2);
    let reply = exchange(addr, b"hello\n");
    let fields: Vec<&str> = reply.split_whitespace().collect();
    assert!(fields[0].starts_with("slot="), "{reply}");
    let pid = fields[1].trim_start_matches("pid=");
    assert_eq!(fields[2], format!("listen_pid={pid}"), "{reply}");
    // Set on the listener, so a program that never sets it on its
    // connections does not answer keep-alive requests 40 ms late.
    assert_eq!(fields[3], "nodelay=1", "{reply}");
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn run_notify_maps_sd_notify_onto_the_scoreboard() {
    let dir = TempDir::new("notify");
    let notifier = script(&dir, "notify.py", NOTIFY_PY);
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "run",
        "-w",
        "2",
        "--notify",
        "--timeout",
        "5",
        "--control-socket",
        &socket,
        "--",
        "python3",
        &notifier,
    ]);
    pool.expect_line("control socket");
    pool.expect_line("watchdog 5000000");
    // Synchronise on the scoreboard itself: ask until both are ready.
    let deadline = std::time::Instant::now() + DEADLINE;
    let table = loop {
        let out = run(&["ctl", "--control-socket", &socket, "status"]);
        assert_eq!(out.code(), Some(0), "{out:#?}");
        if out.stdout.contains("2 ready") && out.stdout.matches("serving slot").count() == 2 {
            break out.stdout;
        }
        assert!(std::time::Instant::now() < deadline, "{out:#?}");
        std::thread::yield_now();
    };
    assert!(table.contains("serving slot 0"), "{table}");
    let out = run(&["ctl", "--control-socket", &socket, "stop"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("stopped"), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0));
}

/// A worker that loads slowly but says so: EXTEND_TIMEOUT_USEC (a bad one
/// first), then READY=1 only once the test writes to the FIFO in argv[1].
pub(crate) const EXTEND_PY: &str = r#"
import os, select, socket, sys, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
go = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
s.sendto(b"EXTEND_TIMEOUT_USEC=soon", addr)
s.sendto(b"STATUS=loading\nEXTEND_TIMEOUT_USEC=600000000", addr)
print("extended", flush=True)
select.select([go], [], [])
s.sendto(b"READY=1\nSTATUS=serving", addr)
print("ready", flush=True)
signal.pause()
"#;

#[test]
fn run_notify_extend_timeout_usec_lets_a_worker_boot_past_the_start_timeout() {
    let dir = TempDir::new("notify-extend");
    let worker = script(&dir, "extend.py", EXTEND_PY);
    let fifo = dir.join("go");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--notify",
        // Room for python3 to start and extend on a loaded machine.
        "--start-timeout",
        "3",
        "--control-socket",
        &socket,
        "--",
        "python3",
        &worker,
        fifo.to_str().unwrap(),
    ]);
    pool.expect_line("control socket");
    pool.expect_line("EXTEND_TIMEOUT_USEC=soon: not a number of microseconds; ignored");
    let extended = pool.expect_line("] extended");
    // The worker was forked before it said so: once the start timeout has
    // passed since then, and the arbiter has been through its loop twice
    // (a command is answered inside one iteration, whose end checks health),
    // a worker judged by --start-timeout alone would have been killed.
    std::thread::sleep(Duration::from_millis(3500));
    for _ in 0..2 {
        let out = run(&["ctl", "--control-socket", &socket, "status"]);
        assert!(
            out.stdout.contains("0 ready") && out.stdout.contains("loading"),
            "{out:#?}"
        );
    }
    let go = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    drop(go);
    pool.expect_line("] ready");
    wait_ready(&socket, 1);
    let history = run(&["ctl", "--control-socket", &socket, "history"]);
    assert_eq!(history.code(), Some(0), "{history:#?}");
    let out = run(&["ctl", "--control-socket", &socket, "stop"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0));
    let transcript = pool.transcript();
    assert!(!transcript.contains("start timeout"), "{transcript}");
    // The worker that said "extended" is the one that became ready.
    let prefix = extended
        .split_once('[')
        .unwrap()
        .1
        .split_once(']')
        .unwrap()
        .0;
    assert!(
        transcript.contains(&format!("[{prefix}] ready")),
        "{transcript}"
    );
    assert!(
        !history.stdout.contains("worker 0"),
        "no exit: {history:#?}"
    );
}

/// Ready, then (the first worker only) WATCHDOG=trigger.
const TRIGGER_PY: &str = r#"
import os, socket, sys, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1\nSTATUS=stuck on a lock", addr)
try:
    os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
except FileExistsError:
    print("replacement", flush=True)
    signal.pause()
print("triggering", flush=True)
s.sendto(b"WATCHDOG=trigger", addr)
signal.pause()
"#;

#[test]
fn run_notify_watchdog_trigger_replaces_the_worker_as_hung() {
    let dir = TempDir::new("notify-trigger");
    let worker = script(&dir, "trigger.py", TRIGGER_PY);
    let socket = dir.str("ctl.sock");
    let marker = dir.str("triggered");
    // No --timeout: the worker's word is enough.
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--notify",
        "--control-socket",
        &socket,
        "--metrics-bind",
        "127.0.0.1:0",
        "--",
        "python3",
        &worker,
        &marker,
    ]);
    let metrics = pool.health_addr();
    let first = pool.expect_line("] triggering");
    let pid = first.split_once('[').unwrap().1.split_once(']').unwrap().0;
    let pid = pid.split_whitespace().nth(1).unwrap().to_owned();
    let killed = pool.expect_line("declared itself hung");
    assert!(
        killed.contains(&format!(
            "worker 0 pid {pid} declared itself hung while ready (stuck on a lock); killing it"
        )),
        "{killed}"
    );
    pool.expect_line("] replacement");
    let history = run(&["ctl", "--control-socket", &socket, "history"]);
    assert!(
        history.stdout.contains(&format!("pid {pid}"))
            && history.stdout.contains("declared itself hung while ready"),
        "{history:#?}"
    );
    let (status, _, body) = get(metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("ufork_worker_exits_total{reason=\"hung\"} 1\n"),
        "{body}"
    );
    let out = run(&["ctl", "--control-socket", &socket, "stop"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0));
}

// -- control socket ----------------------------------------------------------------

#[test]
fn control_socket_speaks_the_console_commands() {
    let dir = TempDir::new("control");
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    pool.expect_line("control socket");
    pool.expect_line("worker 0 pid");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = run(&["ctl", "--control-socket", &socket, "help"]);
    assert!(out.stdout.contains("restart [SLOT|all]"), "{out:#?}");
    let out = run(&["ctl", "--control-socket", &socket, "workers", "2"]);
    assert_eq!((out.code(), out.stdout.as_str()), (Some(0), "workers: 2\n"));
    pool.expect_line("worker 1 pid");
    let out = run(&["status", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0));
    assert!(
        out.stdout.contains("SLOT") && out.stdout.contains("RSS"),
        "{out:#?}"
    );
    let out = run(&["ctl", "--control-socket", &socket, "kill", "1"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    pool.expect_line("SIGKILL");
    let out = run(&["ctl", "--control-socket", &socket, "history"]);
    assert!(out.stdout.contains("worker 1"), "{out:#?}");
    let out = run(&["ctl", "--control-socket", &socket, "kill", "9"]);
    assert_one_line_error(&out, 1, &["no worker in slot 9"]);
    let out = run(&["ctl", "--control-socket", &socket, "dance"]);
    assert_one_line_error(&out, 1, &["unknown command"]);
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0));
    let out = run(&["status", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(3), "{out:#?}");
}

// -- daemon ------------------------------------------------------------------------

#[test]
fn daemon_start_status_reload_stop() {
    let dir = TempDir::new("daemon");
    let pidfile = dir.str("ufork.pid");
    let log = dir.str("ufork.log");
    let _guard = DaemonGuard(dir.join("ufork.pid"));
    let start = [
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--daemon",
        "--pidfile",
        &pidfile,
        "--log-file",
        &log,
    ];
    let out = run(&start);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(out.stdout.contains(&format!("pid {pid}")), "{out:#?}");
    // Serving already: both workers are up when the launcher returns.
    let out = run(&["status", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("2 ready"), "{out:#?}");
    let again = run(&start);
    assert_one_line_error(&again, 1, &["--pidfile", &format!("pid {pid}")]);
    let out = run(&["reload", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    // Wait for the rolling restart to finish (four exits: two old workers
    // and two stand-ins; two ready workers):
    // a worker stopped while it is still booting can miss its SIGTERM (see
    // the report on ufork-core's fork), which would make this test slow.
    let socket = dir.str("ufork.control.sock");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let history = run(&["ctl", "--control-socket", &socket, "history"]).stdout;
        let status = run(&["status", "--pidfile", &pidfile]).stdout;
        if history.lines().count() == 4 && status.contains("2 ready") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{history}{status}");
        std::thread::yield_now();
    }
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::USR1)
        .unwrap();
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let out = run(&["status", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(3), "{out:#?}");
    let text = std::fs::read_to_string(&log).unwrap();
    for needle in [
        // `reload` asks through the control socket beside the pidfile.
        "reload: restarting every worker, one at a time",
        "SIGUSR1",
        "reopened the log file",
        "every worker reaped",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

// -- the prompt ----------------------------------------------------------------------

/// The start of every pty driver: runs argv on a pseudo-terminal and defines
/// `expect(needle)`, which waits for `needle` after the last match and
/// returns the text up to it.
const PTY_PRELUDE: &str = r#"
import os, pty, select, sys, termios, time
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
out = b""
mark = 0
def expect(needle, limit=30):
    """Waits for needle in the output after the last match; returns the text."""
    global out, mark
    end = time.time() + limit
    while needle.encode() not in out[mark:]:
        left = end - time.time()
        if left <= 0:
            sys.stdout.write(out.decode(errors="replace"))
            sys.exit("timed out waiting for %r" % needle)
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                sys.stdout.write(out.decode(errors="replace"))
                sys.exit("eof waiting for %r" % needle)
            out += data
    at = out.index(needle.encode(), mark) + len(needle)
    text = out[mark:at].decode(errors="replace")
    mark = at
    return text
"#;

const PTY_SCRIPT: &str = r#"
expect("ufork>> ")
expect("worker 1 pid")
# Edit: "x", backspace, "sttus", three times left, "a": "status".
os.write(fd, b"x\x7fsttus\x1b[D\x1b[D\x1b[Da\r")
expect("ACTIVITY")
os.write(fd, b"workers +\r")
expect("workers: 3")
# History: up twice recalls "status"; ask until the new worker is ready.
keys = b"\x1b[A\x1b[A\r"
for _ in range(200):
    os.write(fd, keys)
    if "3 ready" in expect("ACTIVITY"):
        break
    keys = b"\x1b[A\r"
os.write(fd, b"\x03")
expect("stopping 3 workers")
expect("all workers stopped")
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn prompt_runs_in_a_terminal_and_ctrl_c_stops() {
    let dir = TempDir::new("pty");
    let driver = script(&dir, "driver.py", &format!("{PTY_PRELUDE}{PTY_SCRIPT}"));
    let out = std::process::Command::new("python3")
        .arg(&driver)
        .args([
            env!("CARGO_BIN_EXE_ufork"),
            "serve",
            "--bind",
            "127.0.0.1:0",
            "-w",
            "2",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stopping 3 workers"), "{text}");
    assert!(text.contains("workers: 3"), "{text}");
}

/// Kills a process a test made (by pid) when the test ends, pass or fail.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}

/// Whether `pid` is gone (or only a zombie, which holds no descriptors).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn run_leaves_no_background_child_holding_the_socket() {
    let dir = TempDir::new("pgroup");
    // The background child ignores SIGTERM: only the SIGKILL to the worker's
    // process group when the worker is reaped ends it.
    let path = script(
        &dir,
        "bg.sh",
        "#!/bin/sh\n(trap '' TERM; exec sleep 1003) &\necho \"child $!\"\nwait\n",
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--graceful-timeout",
        "5",
        "--",
        &path,
    ]);
    let line = pool.expect_line("listening on");
    let addr: std::net::SocketAddr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let line = pool.expect_match(|l| l.contains("] child "), "child pid");
    let child: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let _cleanup = KillOnDrop(Some(child));
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    // SIGKILL takes effect asynchronously: the child may still be on its
    // way out when the arbiter exits, so ask until it is gone.
    let deadline = std::time::Instant::now() + DEADLINE;
    while !gone(child) {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {child} outlived its worker"
        );
        std::thread::yield_now();
    }
    std::net::TcpListener::bind(addr).expect("the port is free again");
}

#[test]
fn idle_control_clients_cannot_lock_out_commands() {
    let dir = TempDir::new("lockout");
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    pool.expect_line("control socket");
    // More idle clients than the pool takes, sending nothing.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..70)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let out = run(&["status", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("SLOT"), "{out:#?}");
    // The newest idle client was not evicted; it times out instead.
    let mut last = idle.last().unwrap();
    last.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(std::io::Read::read(&mut last, &mut buf).unwrap(), 0);
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0));
}

#[test]
fn status_fails_on_a_reply_that_is_not_a_table() {
    let dir = TempDir::new("refused");
    let socket = dir.str("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stream.try_clone().unwrap()),
            &mut line,
        )
        .unwrap();
        std::io::Write::write_all(&mut stream, b"too many control connections\0err\n").unwrap();
        line
    });
    let out = run(&["status", "--control-socket", &socket]);
    assert_one_line_error(&out, 1, &["too many control connections"]);
    assert_eq!(out.stdout, "", "{out:#?}");
    assert_eq!(server.join().unwrap(), "status\n");
}

#[test]
fn one_request_is_one_command() {
    let dir = TempDir::new("oneline");
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    pool.expect_line("control socket");
    for hidden in ["status\nstop", "status\rstop"] {
        let out = run(&["ctl", "--control-socket", &socket, hidden]);
        assert_one_line_error(&out, 2, &["one command"]);
    }
    // Still running: nothing was stopped behind the error.
    let out = run(&["status", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    // A raw client sending two lines at once gets two replies.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    raw.set_read_timeout(Some(DEADLINE)).unwrap();
    std::io::Write::write_all(&mut raw, b"help\nworkers\n").unwrap();
    let mut reader = std::io::BufReader::new(raw);
    let mut replies = Vec::new();
    for _ in 0..2 {
        let mut text = Vec::new();
        std::io::BufRead::read_until(&mut reader, 0, &mut text).unwrap();
        let mut status = String::new();
        std::io::BufRead::read_line(&mut reader, &mut status).unwrap();
        replies.push((String::from_utf8_lossy(&text).into_owned(), status));
    }
    assert!(replies[0].0.contains("commands:"), "{replies:?}");
    assert!(replies[1].0.contains("1 worker"), "{replies:?}");
    assert!(replies.iter().all(|(_, s)| s == "ok\n"), "{replies:?}");
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0));
}

/// Drives `ufork ctl` through a pseudo-terminal: cursor keys edit, up-arrow
/// recalls, Ctrl-D leaves, and the terminal is back in cooked mode after.
const CTL_PTY_SCRIPT: &str = r#"
expect("ufork>> ")
os.write(fd, b"sttus\x1b[D\x1b[D\x1b[Da\r")
expect("ACTIVITY")
expect("ufork>> ")
os.write(fd, b"\x1b[A\r")
expect("ACTIVITY")
expect("ufork>> ")
os.write(fd, b"\x04")
_, status = os.waitpid(pid, 0)
modes = termios.tcgetattr(fd)[3]
if not (modes & termios.ECHO and modes & termios.ICANON):
    sys.exit("the terminal was left in raw mode")
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn ctl_prompt_edits_lines_in_a_terminal() {
    let dir = TempDir::new("ctlpty");
    let socket = dir.str("ctl.sock");
    let driver = script(&dir, "driver.py", &format!("{PTY_PRELUDE}{CTL_PTY_SCRIPT}"));
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    pool.expect_line("control socket");
    let out = std::process::Command::new("python3")
        .arg(&driver)
        .args([
            env!("CARGO_BIN_EXE_ufork"),
            "ctl",
            "--control-socket",
            &socket,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("unknown command"), "{text}");
    assert_eq!(text.matches("SLOT").count(), 2, "{text}");
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0));
}

#[test]
fn echoed_commands_are_printable_and_short() {
    let dir = TempDir::new("echo");
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    pool.expect_line("control socket");
    let out = run(&["ctl", "--control-socket", &socket, "\x1b[2J\x07dance"]);
    assert_one_line_error(&out, 1, &["unknown command `?[2J?dance`"]);
    let long = "y".repeat(500);
    let out = run(&["ctl", "--control-socket", &socket, &long]);
    assert_one_line_error(&out, 1, &[&format!("`{}…`", "y".repeat(60))]);
    let out = run(&["ctl", "--control-socket", &socket, "kill", "\x1b]0;x\x07"]);
    assert_one_line_error(&out, 1, &["`?]0;x?` is not a slot"]);
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(pool.wait().code(), Some(0));
}

#[test]
fn console_commands_say_what_is_wrong_with_their_arguments() {
    let dir = TempDir::new("args");
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    pool.expect_line("control socket");
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--control-socket", &socket];
        all.extend_from_slice(args);
        run(&all)
    };
    let out = ctl(&["workers", "3", "4"]);
    assert_one_line_error(&out, 1, &["too many arguments: workers N"]);
    let out = ctl(&["status", "extra"]);
    assert_one_line_error(&out, 1, &["too many arguments: status"]);
    let out = ctl(&["workers", "99999"]);
    assert_one_line_error(&out, 1, &["at most", "workers (the pool's capacity)"]);
    assert!(!out.stderr.contains("Builder"), "{out:#?}");
    let out = ctl(&["workers"]);
    assert_eq!(out.stdout, "1 worker (1 running)\n", "{out:#?}");
    let out = ctl(&[""]);
    assert_one_line_error(&out, 2, &["COMMAND is empty"]);
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stdout.contains("stopping 1 worker gracefully"),
        "{out:#?}"
    );
    assert_eq!(pool.wait().code(), Some(0));
}

#[test]
fn numbers_out_of_range_say_the_bound() {
    for (args, needles) in [
        (
            &["serve", "-w", "-1"][..],
            &["--workers", "must be at least 1"][..],
        ),
        (
            &["serve", "--timeout", "-5"],
            &["--timeout", "must be 0 or more"],
        ),
        (&["serve", "--max-requests", "-1"], &["must be 0 or more"]),
        (
            &["serve", "--log-file", "/tmp/x.log", "--log-keep", "0"],
            &["--log-keep", "must be at least 1"],
        ),
        (
            &["stop", "--pidfile", "/tmp/x.pid", "--timeout", "-1"],
            &["must be positive"],
        ),
    ] {
        let out = run(args);
        assert_one_line_error(&out, 2, needles);
        assert!(!out.stderr.contains("use '--"), "{out:#?}");
    }
    let out = run(&["help", "--help"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(out.stdout.contains("Usage: ufork help"), "{out:#?}");
}

#[test]
fn control_socket_paths_are_checked() {
    let dir = TempDir::new("sockpath");
    let long = format!("/tmp/{}", "s".repeat(120));
    let out = run(&["serve", "--bind", "127.0.0.1:0", "--control-socket", &long]);
    assert_one_line_error(&out, 2, &["the path is 125 bytes", "limited to 107"]);
    let out = run(&["status", "--control-socket", &long]);
    assert_one_line_error(&out, 1, &["the path is 125 bytes"]);
    let file = dir.str("plain");
    std::fs::write(&file, "").unwrap();
    for command in ["status", "ctl"] {
        let out = run(&[command, "--control-socket", &file]);
        assert_one_line_error(&out, 1, &["not a socket"]);
    }
}

#[test]
fn stop_and_reload_exit_3_when_nothing_runs() {
    let dir = TempDir::new("stale");
    let stale = dir.join("stale.pid");
    std::fs::write(&stale, "999999999\n").unwrap();
    let garbage = dir.join("garbage.pid");
    std::fs::write(&garbage, "\x1b[2Jnot a pid\n").unwrap();
    let directory = dir.join("dir.pid");
    std::fs::create_dir(&directory).unwrap();
    let missing = dir.join("missing.pid");
    for (path, found) in [
        (&stale, "the pool with pid 999999999 is gone"),
        (&garbage, "holds no pid: `?[2Jnot a pid`"),
        (&directory, "is a directory"),
        (&missing, "no pidfile"),
    ] {
        let path = path.to_str().unwrap();
        for command in ["stop", "reload", "upgrade", "ctl"] {
            let out = run(&[command, "--pidfile", path]);
            assert_eq!(out.code(), Some(3), "{out:#?}");
            assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
            assert!(out.stderr.starts_with("ufork: not running ("), "{out:#?}");
            assert!(out.stderr.contains(found), "{found}: {out:#?}");
        }
        let out = run(&["status", "--pidfile", path]);
        assert_eq!(out.code(), Some(3), "{out:#?}");
        assert!(out.stdout.contains(found), "{found}: {out:#?}");
    }
    let socket = dir.str("none.sock");
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(3), "{out:#?}");
}

#[test]
fn serve_warns_when_the_workers_cannot_read_dir() {
    let dir = TempDir::new("private");
    let site = dir.join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o700)).unwrap();
    let site = site.to_str().unwrap();
    // As root, the check must be made as the user the workers run as.
    let root = rustix::process::geteuid().is_root();
    let mut args = vec!["serve", site, "--bind", "127.0.0.1:0", "-w", "1"];
    if root {
        args.extend(["--user", "65534", "--group", "65534"]);
    } else {
        std::fs::set_permissions(site, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let mut server = Running::start(&args);
    let line = server.expect_line("cannot read it");
    assert!(line.contains(site), "{line}");
    server.expect_line("started");
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
    std::fs::set_permissions(site, std::fs::Permissions::from_mode(0o700)).unwrap();
}
