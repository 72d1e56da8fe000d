//! Socket activation in, driven by systemd's own `systemd-socket-activate`
//! (Debian's systemd package; `.ci/run` installs it): it binds the socket,
//! waits for the first connection, then executes ufork with the socket at
//! fd 3 and `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` set.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use rustix::process::Signal;

use super::{Recorder, json_field, status_json};
use crate::util::*;

/// `systemd-socket-activate` listening on a free port under `fdname`,
/// ready to execute `ufork ARGS` (where `{addr}` is replaced by its address)
/// with the recorder as its supervisor.
fn activate(recorder: &Recorder, fdname: &str, args: &[&str]) -> (Running, SocketAddr) {
    // systemd-socket-activate takes no port 0: find a free port, and try
    // again in the unlikely case another process takes it in between.
    for _ in 0..5 {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let addr_text = addr.to_string();
        let mut command = std::process::Command::new("systemd-socket-activate");
        command
            .args(["-l", &addr_text, &format!("--fdname={fdname}")])
            .args(["-E", "PATH", "-E"])
            .arg(format!("NOTIFY_SOCKET={}", recorder.address))
            .arg(env!("CARGO_BIN_EXE_ufork"))
            .args(args.iter().map(|a| a.replace("{addr}", &addr_text)))
            .stdin(std::process::Stdio::null());
        let mut launcher = Running::start_with(&mut command);
        let line = launcher.expect_match(
            |l| l.starts_with("Listening on") || l.starts_with("Failed"),
            "systemd-socket-activate listening",
        );
        if line.starts_with("Listening on") {
            return (launcher, addr);
        }
        launcher.wait();
    }
    panic!("systemd-socket-activate could not listen on a free port");
}

/// Sends one request and reads the whole answer.
fn request(addr: SocketAddr, text: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    answer
}

#[test]
fn serve_takes_its_socket_from_socket_activation() {
    let dir = TempDir::new("activate-serve");
    let socket = dir.str("ctl.sock");
    let mut recorder = Recorder::at_path(&dir);
    let (mut pool, addr) = activate(
        &recorder,
        "http",
        &[
            "serve",
            "--bind",
            "{addr}",
            "-w",
            "2",
            "--control-socket",
            &socket,
        ],
    );
    // The first client starts ufork, and is answered by it: the socket is
    // the one systemd-socket-activate bound, not one of ufork's.
    let answer = request(addr, "GET / HTTP/1.0\r\nHost: t\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    pool.expect_line("from socket activation");
    recorder.expect("READY=1");
    let doc = status_json(&socket).stdout;
    assert_eq!(json_field(&doc, "ready"), "2", "{doc}");
    assert!(
        !pool.transcript().contains("in use"),
        "{}",
        pool.transcript()
    );
    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

const ECHO_ENV_PY: &str = r#"
import os, socket, sys, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
listener = socket.socket(fileno=3)
listener.setblocking(True)
while True:
    conn, _ = listener.accept()
    conn.recv(1024)
    env = " ".join("%s=%s" % (k, os.environ.get(k, "-")) for k in
        ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC"])
    conn.sendall(("pid=%d %s\n" % (os.getpid(), env)).encode())
    conn.close()
"#;

#[test]
fn run_matches_activated_sockets_to_bind_names_and_hands_them_on() {
    let dir = TempDir::new("activate-run");
    let script = dir.join("echo_env.py");
    std::fs::write(&script, ECHO_ENV_PY).unwrap();
    let mut recorder = Recorder::at_path(&dir);
    let (mut pool, addr) = activate(
        &recorder,
        "web",
        &[
            "run",
            "-w",
            "2",
            "--bind",
            "web=127.0.0.1:1",
            "--",
            "python3",
            script.to_str().unwrap(),
        ],
    );
    // `web` is matched by name (the address given differs), so nothing is
    // bound at 127.0.0.1:1.
    let answer = request(addr, "hello\n");
    pool.expect_line("using the socket `web`");
    let pid = answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(
        answer.contains(&format!(
            "LISTEN_FDS=1 LISTEN_PID={pid} LISTEN_FDNAMES=web NOTIFY_SOCKET=- WATCHDOG_USEC=-"
        )),
        "{answer}"
    );
    recorder.expect("READY=1");
    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// The words of `ExecStart=`/`ExecReload=` in the shipped unit, made to run
/// here: the binary under test, a temporary site and control socket, and any
/// free port for the metrics.
fn unit_command(unit: &str, key: &str, dir: &TempDir) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key}"));
    line.split_whitespace()
        .skip(1) // /usr/local/bin/ufork: Running runs the binary under test
        .map(|w| match w {
            "/srv/www" => dir.str("www"),
            "/run/ufork/ctl.sock" => dir.str("ctl.sock"),
            "127.0.0.1:8000" => "{addr}".to_owned(),
            "127.0.0.1:9100" => "127.0.0.1:0".to_owned(),
            other => other.to_owned(),
        })
        .collect()
}

#[test]
fn the_shipped_systemd_unit_starts_socket_activated_reloads_and_stops() {
    let dir = TempDir::new("activate-unit");
    std::fs::create_dir(dir.join("www")).unwrap();
    std::fs::write(dir.join("www").join("index.html"), "hello from the unit\n").unwrap();
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ufork.service"),
    )
    .unwrap();
    let start = unit_command(&unit, "ExecStart=", &dir);
    let start: Vec<&str> = start.iter().map(String::as_str).collect();
    let mut recorder = Recorder::at_path(&dir);
    let (mut pool, addr) = activate(&recorder, "ufork.socket", &start);
    let answer = request(addr, "GET / HTTP/1.0\r\nHost: t\r\n\r\n");
    assert!(answer.ends_with("hello from the unit\n"), "{answer}");
    let ready = recorder.expect("READY=1");
    assert!(ready.contains("STATUS=4/4 workers ready"), "{ready}");
    let health = pool.health_addr();
    assert_eq!(get(health, "/healthz").0, 200);
    // ExecReload= as systemd runs it: RELOADING=1, then READY=1.
    let reload = unit_command(&unit, "ExecReload=", &dir);
    let reload: Vec<&str> = reload.iter().map(String::as_str).collect();
    let out = run(&reload);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    recorder.expect("RELOADING=1");
    recorder.expect("READY=1");
    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn run_takes_an_activated_unix_socket_and_leaves_its_file_to_the_supervisor() {
    let dir = TempDir::new("activate-unix");
    let script = dir.join("echo_env.py");
    std::fs::write(
        &script,
        ECHO_ENV_PY.replace(
            "socket.socket(fileno=3)",
            "socket.socket(socket.AF_UNIX, fileno=3)",
        ),
    )
    .unwrap();
    let path = dir.join("app.sock");
    let recorder = Recorder::at_path(&dir);
    let mut command = std::process::Command::new("systemd-socket-activate");
    command
        .arg("-l")
        .arg(&path)
        .args(["--fdname=app", "-E", "PATH", "-E"])
        .arg(format!("NOTIFY_SOCKET={}", recorder.address))
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args(["run", "-w", "1", "--bind"])
        .arg(format!("app=unix:{}", path.display()))
        .args(["--", "python3"])
        .arg(&script)
        .stdin(std::process::Stdio::null());
    let mut pool = Running::start_with(&mut command);
    pool.expect_line("Listening on");
    let mut stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    assert!(answer.contains("LISTEN_FDS=1 "), "{answer}");
    assert!(answer.contains("LISTEN_FDNAMES=app "), "{answer}");
    pool.expect_line("using the socket `app`");
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    // The file is the supervisor's: ufork neither replaced nor removed it.
    assert!(
        std::fs::symlink_metadata(&path).is_ok(),
        "{}",
        path.display()
    );
}

const PORTS_PY: &str = r#"
import os, socket, sys, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
names = os.environ["LISTEN_FDNAMES"].split(":")
socks = [socket.socket(fileno=3 + i) for i in range(int(os.environ["LISTEN_FDS"]))]
for s in socks:
    s.setblocking(True)
while True:
    conn, _ = socks[0].accept()
    conn.recv(1024)
    conn.sendall((" ".join("%s=%d" % (n, s.getsockname()[1]) for n, s in zip(names, socks)) + "\n").encode())
    conn.close()
"#;

#[test]
fn run_hands_on_activated_sockets_in_bind_order_whatever_their_descriptors() {
    let dir = TempDir::new("activate-order");
    let script = dir.join("ports.py");
    std::fs::write(&script, PORTS_PY).unwrap();
    let recorder = Recorder::at_path(&dir);
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
    };
    let (a, b) = (free(), free());
    // systemd hands over b at fd 3 and a at fd 4; --bind asks for a, then b.
    let mut command = std::process::Command::new("systemd-socket-activate");
    command
        .args(["-l", &b.to_string(), "-l", &a.to_string(), "--fdname=b:a"])
        .args(["-E", "PATH", "-E"])
        .arg(format!("NOTIFY_SOCKET={}", recorder.address))
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args([
            "run",
            "-w",
            "1",
            "--bind",
            "a=127.0.0.1:1",
            "--bind",
            "b=127.0.0.1:2",
        ])
        .args(["--", "python3"])
        .arg(&script)
        .stdin(std::process::Stdio::null());
    let mut pool = Running::start_with(&mut command);
    pool.expect_line("Listening on");
    pool.expect_line("Listening on");
    let answer = request(a, "hello\n");
    assert_eq!(
        answer.trim(),
        format!("a={} b={}", a.port(), b.port()),
        "{}",
        pool.transcript()
    );
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// A socket a supervisor holds (a systemd `.socket` unit) outlives each
/// instance of the service: a graceful stop leaves it listening, so a client
/// that connects between two instances waits in its queue and is answered
/// by the next one, instead of being refused for good (a shut-down socket
/// is dead for its owner too). The test holds the socket, as systemd does.
#[test]
fn a_graceful_stop_leaves_a_supervisors_socket_listening_for_the_next_start() {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Inherited by the shell below, which moves it to fd 3.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let fd = listener.as_raw_fd();
    let to_fd_3 = if fd == 3 {
        String::new()
    } else {
        format!("exec 3<&{fd} {fd}<&-; ")
    };
    let start = || {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "{to_fd_3}LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec \"$0\" serve --bind {addr} -w 1"
            ))
            .arg(env!("CARGO_BIN_EXE_ufork"))
            .stdin(std::process::Stdio::null());
        let mut pool = Running::start_with(&mut command);
        pool.expect_line("from socket activation");
        pool.expect_line("worker 0 pid");
        pool
    };
    let mut first = start();
    let answer = request(addr, "GET / HTTP/1.0\r\nHost: t\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    first.signal(Signal::TERM);
    assert_eq!(first.wait().code(), Some(0), "{}", first.transcript());
    // Between two instances: queued by the kernel, not refused.
    let mut waiting = TcpStream::connect(addr).expect("the socket still listens");
    waiting.set_read_timeout(Some(DEADLINE)).unwrap();
    waiting
        .write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut second = start();
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    second.signal(Signal::TERM);
    assert_eq!(second.wait().code(), Some(0), "{}", second.transcript());
}

/// `serve` with no `--bind`, handed a socket by socket activation, serves
/// that socket alone (binding the default 127.0.0.1:8000 beside it could only
/// collide, and would break the upgrade's match of sockets to flags); an
/// upgrade hands the socket on still marked as the supervisor's, so the new
/// arbiter's graceful stop leaves it listening too.
#[test]
fn an_activated_pool_without_bind_upgrades_and_still_leaves_the_socket_listening() {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("activate-upgrade");
    let pidfile = dir.str("ufork.pid");
    let _guard = DaemonGuard(dir.join("ufork.pid"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let fd = listener.as_raw_fd();
    let to_fd_3 = if fd == 3 {
        String::new()
    } else {
        format!("exec 3<&{fd} {fd}<&-; ")
    };
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "{to_fd_3}LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec \"$0\" serve -w 1 --no-prompt --pidfile {pidfile}"
        ))
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .stdin(std::process::Stdio::null());
    let mut old = Running::start_with(&mut command);
    old.expect_line("from socket activation");
    old.expect_line("worker 0 pid");
    // Printed after the banners on the same stream: every banner is in.
    old.expect_line("press Ctrl-C to stop");
    let banners: Vec<&str> = old
        .seen
        .iter()
        .map(|(_, l)| l.as_str())
        .filter(|l| l.starts_with("serving "))
        .collect();
    assert_eq!(
        banners,
        [format!(
            "serving the hello app on http://{addr} with 1 worker (arbiter pid {})",
            old.pid()
        )],
        "{}",
        old.transcript()
    );
    let out = run(&["upgrade", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}\n{}", old.transcript());
    // Not `wait`: the new arbiter holds the old one's output pipes.
    old.expect_line(&format!("arbiter pid {} stopped", old.pid()));
    let answer = request(addr, "GET / HTTP/1.0\r\nHost: t\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "the new pool serves: {answer}"
    );
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    // The supervisor's socket still queues connections for the next start.
    TcpStream::connect(addr).expect("the socket still listens after the new arbiter stopped");
}

/// `serve` with no `--bind`, handed its socket by socket activation, binds
/// no default address, so `--metrics-bind` may take the default's (PORT's
/// 0.0.0.0:P covers 127.0.0.1:P): the start does not refuse it, nor does
/// the new arbiter of an upgrade, which has no `LISTEN_*` variables left
/// (it takes the sockets the old one handed over, whatever the flags).
#[test]
fn an_activated_pool_with_metrics_on_the_default_port_upgrades() {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("activate-metrics");
    let pidfile = dir.str("ufork.pid");
    let _guard = DaemonGuard(dir.join("ufork.pid"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let fd = listener.as_raw_fd();
    let to_fd_3 = if fd == 3 {
        String::new()
    } else {
        format!("exec 3<&{fd} {fd}<&-; ")
    };
    let port = TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "{to_fd_3}LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec \"$0\" serve -w 1 --no-prompt --pidfile {pidfile} --metrics-bind {metrics}"
        ))
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null());
    let mut old = Running::start_with(&mut command);
    old.expect_line("from socket activation");
    old.expect_line("worker 0 pid");
    let out = run(&["upgrade", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}\n{}", old.transcript());
    old.expect_line(&format!("arbiter pid {} stopped", old.pid()));
    let answer = request(addr, "GET / HTTP/1.0\r\nHost: t\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "the new pool serves: {answer}"
    );
    let answer = request(
        metrics.parse().unwrap(),
        "GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.contains("ufork_up"),
        "the new arbiter serves the metrics: {answer}"
    );
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
}

/// Descriptors socket activation names that are no listening socket are a
/// one-line runtime error that says so once, and nothing starts.
#[test]
fn an_activated_descriptor_that_is_not_a_listening_socket_is_refused_in_one_line() {
    let dir = TempDir::new("activate-bad");
    let file = dir.join("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<{}; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve -w 1 --no-prompt",
            file.display()
        ))
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ufork");
    let output = Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_one_line_error(&output, 1, &["socket activation: fd 3", "is not a socket"]);
    assert_eq!(
        output.stderr.matches("socket activation").count(),
        1,
        "{output:#?}"
    );
}
