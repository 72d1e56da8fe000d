//! The gunicorn-style flags, each through the real binary: what it changes
//! is observed from outside (status codes, threads, sockets, files).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::config::http_addr_in;
use crate::util::*;

/// Starts `ufork serve` on a free port with `extra` flags; the pool, its
/// address and the pid of worker 0.
fn serve(extra: &[&str]) -> (Running, std::net::SocketAddr, i32) {
    let mut args = vec!["serve", "--bind", "127.0.0.1:0", "-w", "1", "--no-prompt"];
    args.extend_from_slice(extra);
    let mut server = Running::start(&args);
    let addr = http_addr_in(&server.expect_line("http://"));
    let line = server.expect_line("worker 0 pid");
    let pid = line
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("a worker pid");
    (server, addr, pid)
}

fn stop(mut server: Running) {
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
}

/// The status code of a raw request.
fn status_of(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    let reply = exchange(addr, request);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"))
}

#[test]
fn request_limits_answer_414_and_431() {
    let (server, addr, _) = serve(&[
        "--limit-request-line",
        "64",
        "--limit-request-fields",
        "3",
        "--limit-request-field-size",
        "1K",
    ]);
    let ok = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    assert_eq!(status_of(addr, ok), 200);
    let long_line = format!("GET /{} HTTP/1.0\r\nHost: x\r\n\r\n", "a".repeat(100));
    assert_eq!(status_of(addr, long_line.as_bytes()), 414);
    let many = b"GET / HTTP/1.0\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(status_of(addr, many), 431);
    let big = format!(
        "GET / HTTP/1.0\r\nHost: x\r\nBig: {}\r\n\r\n",
        "b".repeat(2000)
    );
    assert_eq!(status_of(addr, big.as_bytes()), 431);
    stop(server);
}

#[test]
fn threads_run_in_each_worker() {
    let (server, addr, pid) = serve(&["--threads", "6"]);
    assert_eq!(get(addr, "/").0, 200);
    // The first request may be answered while the other threads are still
    // starting: wait (with a deadline) until all of them exist.
    let count = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count()
    };
    let deadline = Instant::now() + DEADLINE;
    let mut threads = count();
    while threads < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        threads = count();
    }
    assert!(threads >= 6, "worker {pid} has {threads} threads");
    stop(server);
}

#[test]
fn keep_alive_closes_idle_connections_sooner() {
    let (server, addr, _) = serve(&["--keep-alive", "200ms"]);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    // The response, then the end of the connection once it idled.
    let started = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no close: {e}"),
        }
    }
    assert!(String::from_utf8_lossy(&seen).contains("Hello, world!"));
    // The library's default keeps it 5 s; the flag closed it well before.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    stop(server);
}

#[test]
fn max_requests_jitter_zero_recycles_at_exactly_max() {
    let (mut server, addr, _) = serve(&["--max-requests", "10", "--max-requests-jitter", "0"]);
    for _ in 0..10 {
        assert_eq!(get(addr, "/").0, 200);
    }
    // Without the flag the jitter would be 0..=1, and half the time no recycle.
    server.expect_line("generation 1");
    let out = run(&["serve", "--max-requests-jitter", "3"]);
    assert_one_line_error(&out, 2, &["--max-requests"]);
    stop(server);
}

/// gunicorn's zeros: `--max-requests 0` never recycles (its default),
/// `--timeout 0` never kills a silent worker, `--keep-alive 0` closes every
/// connection after its answer.
#[test]
fn zero_max_requests_timeout_and_keep_alive_mean_what_they_do_in_gunicorn() {
    let (mut server, addr, _) =
        serve(&["--max-requests", "0", "--timeout", "0", "--keep-alive", "0"]);
    for _ in 0..5 {
        assert_eq!(get(addr, "/").0, 200);
    }
    let reply = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(reply.contains("connection: close"), "{reply}");
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
    // A limit of 0 requests would have recycled worker 0 at the first one.
    let transcript = server.transcript();
    assert!(!transcript.contains("generation 1"), "{transcript}");
    assert!(
        transcript.contains("worker 0 (pid") && transcript.contains("generation 0) stopped"),
        "{transcript}"
    );
}

/// The variables gunicorn reads from the platforms that run it: `PORT`
/// (without `--bind`, serve on 0.0.0.0:$PORT) and `WEB_CONCURRENCY` (without
/// `--workers`, that many workers); a value that makes no sense is a usage
/// error naming the variable.
#[test]
fn port_and_web_concurrency_come_from_the_environment() {
    let free = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut server = Running::start_with(
        ufork()
            .args(["serve", "--no-prompt"])
            .env("PORT", port.to_string())
            .env("WEB_CONCURRENCY", "3"),
    );
    let line = server.expect_line("http://");
    assert!(
        line.contains(&format!("http://0.0.0.0:{port} with 3 workers")),
        "{line}"
    );
    assert_eq!(get(([127, 0, 0, 1], port).into(), "/").0, 200);
    stop(server);
    // With --bind, PORT is not read: a bad one stops nothing.
    let mut server = Running::start_with(
        ufork()
            .args(["serve", "--no-prompt", "-w", "1", "--bind", "127.0.0.1:0"])
            .env("PORT", "http"),
    );
    let addr = http_addr_in(&server.expect_line("http://"));
    assert_eq!(get(addr, "/").0, 200);
    stop(server);
    for (var, value, needle) in [
        ("PORT", "http", "PORT=\"http\": not a port number"),
        (
            "WEB_CONCURRENCY",
            "0",
            "WEB_CONCURRENCY=\"0\": must be at least 1",
        ),
    ] {
        let mut server =
            Running::start_with(ufork().args(["serve", "--no-prompt"]).env(var, value));
        assert_eq!(server.wait().code(), Some(2), "{}", server.transcript());
        assert!(
            server.transcript().contains(needle),
            "{}",
            server.transcript()
        );
    }
}

/// The soft limit on open files of a process, from /proc.
fn open_files_soft_limit(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// `serve` raises its soft limit on open files to the hard one (systemd
/// gives services a soft 1024), so a worker can hold as many connections as
/// the hard limit allows.
#[test]
fn serve_raises_the_open_files_limit_to_the_hard_one() {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .expect("a finite hard limit on open files");
    assert!(
        hard > 512,
        "this test needs a hard limit above 512, not {hard}"
    );
    let mut server = Running::start_with(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -Sn 512 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_ufork"))
            .args(["serve", "--bind", "127.0.0.1:0", "-w", "1", "--no-prompt"])
            .env_remove("PORT")
            .env_remove("WEB_CONCURRENCY")
            .stdin(std::process::Stdio::null()),
    );
    let line = server.expect_line("worker 0 pid");
    let worker: i32 = line
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("a worker pid");
    assert_eq!(open_files_soft_limit(server.pid()), hard);
    assert_eq!(open_files_soft_limit(worker), hard);
    stop(server);
}

/// `--log-level warning` (gunicorn's names) keeps the arbiter's warnings
/// and drops its info lines, not the access log; a level it does not know
/// is a usage error.
#[test]
fn log_level_warning_keeps_warnings_only() {
    let dir = TempDir::new("loglevel");
    let access = dir.str("access.log");
    let mut server = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--no-prompt",
        "--log-level",
        "WARNING",
        "--access-log",
        &access,
    ]);
    let addr = http_addr_in(&server.expect_line("http://"));
    assert_eq!(get(addr, "/logged").0, 200);
    server.signal(Signal::ALARM);
    server.expect_line("SIGALRM ignored");
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
    let transcript = server.transcript();
    for info in [
        "starting 1 worker",
        "started (generation 0)",
        "stopping 1 worker",
    ] {
        assert!(!transcript.contains(info), "{info}: {transcript}");
    }
    let lines = std::fs::read_to_string(&access).unwrap();
    assert!(lines.contains("\"GET /logged HTTP/1.0\" 200"), "{lines}");
    let out = run(&["serve", "--log-level", "loud"]);
    assert_one_line_error(&out, 2, &["--log-level", "critical"]);
}

#[test]
fn reuse_port_gives_each_worker_its_own_socket() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let socket = TempDir::new("reuse");
    let control = socket.str("ctl.sock");
    let mut server = Running::start(&[
        "serve",
        "--bind",
        &bind,
        "-w",
        "2",
        "--reuse-port",
        "--control-socket",
        &control,
    ]);
    server.expect_line(&format!("http://{bind}"));
    wait_ready(&control, 2);
    assert_eq!(get(bind.parse().unwrap(), "/").0, 200);
    // Where Linux resets what a stopping worker's socket had queued, the
    // operator is told how to have it moved to another worker instead.
    let migrates = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|t| t.trim() != "0");
    if !migrates {
        server.expect_line("net.ipv4.tcp_migrate_req=1");
    }
    // Only sockets that all set SO_REUSEPORT can share a port.
    let probe = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    rustix::net::sockopt::set_socket_reuseport(&probe, true).unwrap();
    let addr: std::net::SocketAddr = bind.parse().unwrap();
    rustix::net::bind(&probe, &addr).expect("the workers' sockets have SO_REUSEPORT");
    drop(probe);
    stop(server);
    let out = run(&["serve", "--reuse-port", "--bind", "127.0.0.1:0"]);
    assert_one_line_error(&out, 2, &["--reuse-port needs a fixed port"]);
}

#[test]
fn chdir_makes_relative_paths_relative_to_it() {
    let dir = TempDir::new("chdir");
    std::fs::create_dir(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), "<p>here</p>\n").unwrap();
    let root = dir.path().to_str().unwrap();
    let (server, addr, _) = serve(&["--chdir", root, "site", "--pidfile", "ufork.pid"]);
    assert_eq!(
        get(addr, "/"),
        (
            200,
            "text/html; charset=utf-8".into(),
            "<p>here</p>\n".into()
        )
    );
    assert!(dir.join("ufork.pid").exists());
    stop(server);
    let out = run(&["serve", "--chdir", &dir.str("nope")]);
    assert_one_line_error(&out, 1, &["--chdir", "no such file or directory"]);
}

const UNIX_PY: &str = r#"
import os, socket, sys, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
listener = socket.socket(fileno=3)
print("family", listener.family.name, os.environ["LISTEN_FDNAMES"], os.environ["GREETING"], flush=True)
while True:
    conn, _ = listener.accept()
    conn.sendall(b"hello over unix\n")
    conn.close()
"#;

#[test]
fn run_binds_unix_sockets_and_removes_them_at_stop() {
    let dir = TempDir::new("unix");
    let script = dir.join("unix.py");
    std::fs::write(&script, UNIX_PY).unwrap();
    let path = dir.join("app.sock");
    let bind = format!("app=unix:{}", path.display());
    let args = [
        "run",
        "-w",
        "2",
        "--bind",
        &bind,
        "--env",
        "GREETING=hi",
        "--",
        "python3",
        script.to_str().unwrap(),
    ];
    // A stale socket (its server died) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    let mut pool = Running::start(&args);
    let line = pool.expect_line("family");
    assert!(line.ends_with("family AF_UNIX app hi"), "{line}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let mut reply = String::new();
    UnixStream::connect(&path)
        .unwrap()
        .read_to_string(&mut reply)
        .unwrap();
    assert_eq!(reply, "hello over unix\n");
    // A live server holds the path: refused, and its socket left alone.
    let out = run(&args);
    assert_one_line_error(&out, 1, &["a server is listening there already"]);
    assert!(UnixStream::connect(&path).is_ok());
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(!path.exists(), "the socket is removed at stop");
    let mode_args = [
        "run",
        "--bind",
        &bind,
        "--unix-mode",
        "600",
        "--",
        "python3",
    ];
    let mut pool = Running::start(&[&mode_args[..], &[script.to_str().unwrap()]].concat());
    pool.expect_line("family");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(pool);
}

const HOLDS_PY: &str = r#"
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: print("worker-heard-term", flush=True))
listener = socket.socket(fileno=3)
held, _ = listener.accept()
print("worker-holds-a-client", flush=True)
with open(sys.argv[1]) as release:
    release.read()
held.sendall(b"finished\n")
held.close()
"#;

/// A graceful stop removes a unix socket's path at once (a new client gets
/// ENOENT) while the worker finishes the client it holds.
#[test]
fn run_refuses_new_unix_clients_at_once_when_a_graceful_stop_begins() {
    let dir = TempDir::new("unix-stop");
    let script = dir.join("holds.py");
    std::fs::write(&script, HOLDS_PY).unwrap();
    let release = dir.join("release");
    let made = std::process::Command::new("mkfifo")
        .arg(&release)
        .status()
        .unwrap();
    assert!(made.success());
    let path = dir.join("app.sock");
    let bind = format!("unix:{}", path.display());
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--bind",
        &bind,
        "--graceful-timeout",
        "60",
        "--",
        "python3",
        script.to_str().unwrap(),
        release.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + DEADLINE;
    let mut held = loop {
        match UnixStream::connect(&path) {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(Instant::now() < deadline, "never listening: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    pool.expect_line("worker-holds-a-client");
    pool.signal(Signal::TERM);
    pool.expect_line("worker-heard-term");
    while path.exists() {
        assert!(Instant::now() < deadline, "{}", pool.transcript());
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused = UnixStream::connect(&path).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::NotFound);
    std::fs::write(&release, b"go").unwrap();
    let mut reply = String::new();
    held.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "finished\n");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn access_log_to_a_file_reopened_on_usr1_or_to_stdout() {
    let dir = TempDir::new("access");
    let log = dir.join("access.log");
    let (mut server, addr, _) = serve(&["--access-log", log.to_str().unwrap()]);
    assert_eq!(get(addr, "/first").0, 200);
    assert_eq!(get(addr, "/missing?x=1").0, 200);
    // A worker writes the line once the response is sent: wait for it.
    let text = file_with(&log, "/missing");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // Common Log Format by default: timestamped.
    assert!(lines[0].starts_with("127.0.0.1 - - ["), "{text}");
    assert!(
        lines[0].contains(" +0000] \"GET /first HTTP/1.0\" 200 14"),
        "{text}"
    );
    // logrotate's way: move the file, reopen; the running worker follows.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    server.signal(Signal::USR1);
    server.expect_line("reopened the access log");
    assert_eq!(get(addr, "/after").0, 200);
    let text = file_with(&log, "/after");
    assert!(text.contains("\"GET /after HTTP/1.0\" 200"), "{text}");
    assert!(
        !std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("/after")
    );
    stop(server);
    let (mut server, addr, _) = serve(&["--access-log", "-"]);
    assert_eq!(get(addr, "/to-stdout").0, 200);
    let line = server.expect_line("GET /to-stdout");
    // The worker's output, not the arbiter's.
    assert!(line.contains("[0 "), "{line}");
    assert!(!line.contains("arbiter"), "{line}");
    assert!(
        line.contains(" +0000] \"GET /to-stdout HTTP/1.0\" 200 14"),
        "{line}"
    );
    stop(server);
    // Port 0: the default port 8000 may be another process' on this machine.
    let out = run(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--access-log",
        &dir.str("no/such/dir/a.log"),
    ]);
    assert_one_line_error(&out, 1, &["--access-log", "cannot open it"]);
    let out = run(&["serve", "--access-log", "-", "--access-log-format", "xml"]);
    assert_eq!(out.code(), Some(2), "{out:#?}");
}

#[test]
fn access_log_format_combined_and_json() {
    let dir = TempDir::new("access-fmt");
    let log = dir.join("combined.log");
    let (server, addr, _) = serve(&[
        "--access-log",
        log.to_str().unwrap(),
        "--access-log-format",
        "combined",
    ]);
    let reply = exchange(
        addr,
        b"GET /c HTTP/1.0\r\nReferer: http://r.example/\r\nUser-Agent: probe/1\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let text = file_with(&log, "/c");
    assert!(text.starts_with("127.0.0.1 - - ["), "{text}");
    assert!(
        text.contains("\"GET /c HTTP/1.0\" 200 14 \"http://r.example/\" \"probe/1\""),
        "{text}"
    );
    stop(server);
    // JSON, set in a --config file; parsed by python3's json.
    let log = dir.join("json.log");
    let config = dir.join("ufork.toml");
    std::fs::write(
        &config,
        format!(
            "access_log = \"{}\"\naccess_log_format = \"json\"\n",
            log.display()
        ),
    )
    .unwrap();
    let (server, addr, _) = serve(&["--config", config.to_str().unwrap()]);
    assert_eq!(get(addr, "/j?q=1").0, 200);
    let text = file_with(&log, "/j?q=1");
    stop(server);
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys\n\
             lines=open(sys.argv[1]).read().splitlines()\n\
             assert len(lines)==1, lines\n\
             o=json.loads(lines[0])\n\
             assert o['request']=='GET /j?q=1 HTTP/1.0', o\n\
             assert o['status']==200 and o['bytes']==14, o\n\
             assert o['client'].startswith('127.0.0.1'), o\n\
             assert o['time'].endswith('Z') and 'T' in o['time'], o\n\
             assert isinstance(o['duration_us'], int), o\n",
            log.to_str().unwrap(),
        ])
        .output()
        .expect("python3");
    assert!(check.status.success(), "{check:#?}\n{text}");
}

/// The text of `path` once it contains `needle` (within the deadline).
fn file_with(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}: {text}",
            path.display()
        );
        std::thread::yield_now();
    }
}

/// gunicorn flags ufork does not take fail with what to use instead, never
/// with clap's guess at a similar name (`--worker-class`: "--workers"), and
/// a flag of the other pool subcommand says whose it is.
#[test]
fn gunicorn_flags_ufork_does_not_take_say_what_to_use_instead() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "-k", "gevent"], "no worker classes"),
        (&["serve", "--worker-class=sync"], "no worker classes"),
        (
            &["run", "--worker-class", "sync", "--", "true"],
            "ufork run --bind ADDR -- gunicorn -w 1 -k CLASS APP",
        ),
        (&["serve", "--worker-connections", "100"], "--backlog"),
        (
            &["serve", "--limit-request-field_size", "8190"],
            "use --limit-request-field-size BYTES",
        ),
        (&["serve", "--forwarded-allow-ips", "*"], "X-Forwarded-*"),
        (&["serve", "--name", "web"], "no process names"),
        (&["serve", "--capture-output"], "always captures"),
        (&["serve", "--print-config"], "--check-config"),
        (
            &["serve", "--preload"],
            "before it forks its workers already",
        ),
        (&["run", "--preload", "--", "true"], "execs CMD"),
        (
            &["run", "--threads", "4", "--", "true"],
            "a flag of `ufork serve`",
        ),
        (
            &["run", "--reuse-port", "--", "true"],
            "a flag of `ufork serve`",
        ),
        (&["serve", "-e", "A=B"], "a flag of `ufork run`"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        assert_one_line_error(&out, 2, &[needle]);
        for clap_guess in ["similar argument", "as a value"] {
            assert!(!out.stderr.contains(clap_guess), "{args:?}: {out:#?}");
        }
    }
    // The same words for a --config key.
    let dir = TempDir::new("gunicorn-keys");
    let file = dir.join("ufork.toml");
    std::fs::write(&file, "worker_class = \"gevent\"\n").unwrap();
    let out = run(&["serve", "--config", file.to_str().unwrap()]);
    assert_one_line_error(&out, 2, &["line 1: worker_class", "no worker classes"]);
}

/// `--metrics-bind` on a `--bind`'s address, or two `--bind`s that
/// overlap (the wildcard address and another on one port), are refused
/// by `--check-config` and by the start alike, before the pidfile is taken
/// or anything is bound: a usage error naming both flags.
#[test]
fn addresses_that_collide_are_refused_before_anything_is_bound() {
    let dir = TempDir::new("collide");
    let pidfile = dir.str("ufork.pid");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let loopback = format!("127.0.0.1:{port}");
    let every = format!("0.0.0.0:{port}");
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["serve", "--bind", &loopback, "--metrics-bind", &loopback],
            &[&format!(
                "--metrics-bind {loopback} is the address of --bind {loopback}"
            )],
        ),
        (
            &["run", "--bind", &every, "--metrics-bind", &loopback],
            &[
                &format!("--metrics-bind {loopback} overlaps --bind {every}"),
                "0.0.0.0 listens on every IPv4 address",
            ],
        ),
        (
            &["serve", "--bind", &every, "--bind", &loopback],
            &[&format!("--bind {every} and --bind {loopback} overlap")],
        ),
    ];
    for (args, needles) in cases {
        for check in [true, false] {
            let mut all = args.to_vec();
            all.extend(["--pidfile", &pidfile, "-w", "1"]);
            if check {
                all.push("--check-config");
            }
            if all[0] == "run" {
                all.extend(["--", "true"]);
            }
            let out = run(&all);
            assert_one_line_error(&out, 2, needles);
            assert!(!std::path::Path::new(&pidfile).exists(), "{all:?}");
        }
    }
    // Without --bind, `serve`'s default address (127.0.0.1:8000, or
    // PORT's) counts, named as such.
    let out = run(&[
        "serve",
        "--check-config",
        "--metrics-bind",
        "127.0.0.1:8000",
    ]);
    assert_one_line_error(
        &out,
        2,
        &[
            "--metrics-bind 127.0.0.1:8000",
            "serve's default address 127.0.0.1:8000 (no --bind given)",
        ],
    );
    // While a pool holds the pidfile, the overlap is still the error told
    // (the start checks before it takes the pidfile).
    let mut holder = Running::start(&[
        "serve",
        "-b",
        "127.0.0.1:0",
        "-w",
        "1",
        "--pidfile",
        &pidfile,
    ]);
    holder.expect_line("started");
    for args in [
        &["serve", "--bind", &every, "--bind", &loopback][..],
        &[
            "run",
            "--bind",
            &every,
            "--metrics-bind",
            &loopback,
            "--",
            "true",
        ],
    ] {
        let mut all = vec![args[0], "--pidfile", &pidfile];
        all.extend(&args[1..]);
        let out = run(&all);
        assert_one_line_error(&out, 2, &[" overlap"]);
        assert!(!out.stderr.contains("already running"), "{out:#?}");
    }
    holder.signal(Signal::TERM);
    assert_eq!(holder.wait().code(), Some(0), "{}", holder.transcript());
    // A --metrics-bind that is no address: --check-config says so too.
    let out = run(&["serve", "--check-config", "--metrics-bind", "nonsense"]);
    assert_one_line_error(&out, 2, &["--metrics-bind nonsense: not an address"]);
}

/// With `--reuse-port` every worker binds each address `SO_REUSEPORT`, and
/// Linux lets such sockets overlap: a wildcard `--bind` beside another of
/// its port starts and serves. The `--metrics-bind` socket is no such
/// socket, and none of the workers' is IPv6-only: a `[::]` one takes IPv4
/// too, whatever other `--bind` shares its port.
#[test]
fn with_reuse_port_overlapping_binds_serve_and_a_dual_stack_bind_counts_for_metrics() {
    let free = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let loopback = format!("127.0.0.1:{port}");
    let every = format!("0.0.0.0:{port}");
    let binds = [
        "serve",
        "--reuse-port",
        "-w",
        "1",
        "-b",
        &every,
        "-b",
        &loopback,
    ];
    let mut check = binds.to_vec();
    check.push("--check-config");
    let out = run(&check);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let dir = TempDir::new("reuse-overlap");
    let control = dir.str("ctl.sock");
    let mut server = Running::start(&[&binds[..], &["--control-socket", &control]].concat());
    wait_ready(&control, 1);
    let (status, _, _) = get(loopback.parse().unwrap(), "/");
    assert_eq!(status, 200, "{}", server.transcript());
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());

    let other = format!("127.0.0.2:{port}");
    let any6 = format!("[::]:{port}");
    let metrics = [
        "-b",
        &other,
        "-b",
        &any6,
        "--metrics-bind",
        &loopback,
        "--check-config",
    ];
    let out = run(&[&["serve", "--reuse-port"][..], &metrics].concat());
    assert_one_line_error(
        &out,
        2,
        &[&format!(
            "--metrics-bind {loopback} overlaps --bind {any6} ([::] listens on every IPv6 and IPv4 address"
        )],
    );
    // Without --reuse-port, that [::] is bound IPv6-only beside 127.0.0.2.
    let out = run(&[&["serve"][..], &metrics].concat());
    assert_eq!(out.code(), Some(0), "{out:#?}");
}

/// `--check-config --user` from a process that may not switch users (not
/// root: the tests run as root, so ufork runs as uid and gid 65534 here)
/// fails as the start fails, with the same line; as root it passes.
#[test]
fn check_config_fails_a_user_switch_the_start_would_fail() {
    use std::os::unix::process::CommandExt;
    let as_unprivileged = |args: &[&str]| {
        let mut command = ufork();
        if rustix::process::geteuid().is_root() {
            command.uid(65534).gid(65534);
        }
        let out = command.args(args).output().expect("spawn ufork");
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    // The binary must be reachable by uid 65534: a checkout under a home
    // only root may enter is not, and then there is nothing to check here.
    if rustix::process::geteuid().is_root() {
        let reachable = ufork()
            .uid(65534)
            .gid(65534)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !reachable {
            eprintln!(
                "skipped: uid 65534 cannot run {} (a directory on its path is closed to it)",
                env!("CARGO_BIN_EXE_ufork")
            );
            return;
        }
    }
    for user in ["root", "nobody"] {
        for command in ["serve", "run"] {
            let mut args = vec![command, "--bind", "127.0.0.1:0", "-w", "1", "--user", user];
            if command == "run" {
                args.extend(["--", "true"]);
            }
            let start = as_unprivileged(&args);
            assert_one_line_error(
                &start,
                1,
                &[&format!(
                    "--user {user}: cannot switch: operation not permitted"
                )],
            );
            args.insert(1, "--check-config");
            let check = as_unprivileged(&args);
            assert_eq!(check.code(), Some(1), "{check:#?}");
            assert_eq!(check.stderr, start.stderr, "{args:?}");
            assert_eq!(check.stdout, "", "{check:#?}");
        }
    }
    if rustix::process::geteuid().is_root() {
        let out = run(&[
            "serve",
            "--check-config",
            "--user",
            "65534",
            "--group",
            "65534",
        ]);
        assert_eq!(out.code(), Some(0), "{out:#?}");
        assert!(
            out.stdout.contains("the configuration is valid"),
            "{out:#?}"
        );
    }
}

/// A `--log-stall-timeout` given above half of `--timeout` is lowered, and
/// the start says so once (so does `--check-config`); the default lowered
/// by a short `--timeout` says nothing.
#[test]
fn a_log_stall_timeout_given_above_half_the_timeout_is_lowered_with_a_warning() {
    // Without --timeout, its value is said to be the default.
    const LOWERED: &str = "[ufork] warning: --log-stall-timeout 20s is lowered to 15s, half of --timeout 30s (the default), so that a worker held up by a stalled output is let go before it is killed as hung";
    let given = LOWERED.replace(" (the default)", "");
    let out = run(&["serve", "--check-config", "--log-stall-timeout", "20"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(out.stderr, format!("{LOWERED}\n"), "{out:#?}");
    let out = run(&[
        "serve",
        "--check-config",
        "--log-stall-timeout",
        "20",
        "-t",
        "30",
    ]);
    assert_eq!(out.stderr, format!("{given}\n"), "{out:#?}");
    // From the --config file, it was given as well.
    let dir = TempDir::new("stall-warning");
    let file = dir.join("ufork.toml");
    std::fs::write(&file, "log_stall_timeout = 20\ntimeout = 30\n").unwrap();
    let out = run(&[
        "serve",
        "--check-config",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.stderr, format!("{given}\n"), "{out:#?}");
    let out = run(&[
        "run",
        "--check-config",
        "--notify",
        "--timeout",
        "1",
        "--log-stall-timeout",
        "0.75",
        "--",
        "true",
    ]);
    assert!(
        out.stderr
            .contains("--log-stall-timeout 0.75s is lowered to 0.5s, half of --timeout 1s,"),
        "{out:#?}"
    );
    for quiet in [
        &["serve", "--check-config", "--timeout", "4"][..],
        &["serve", "--check-config", "--log-stall-timeout", "15"],
        &[
            "serve",
            "--check-config",
            "--log-stall-timeout",
            "0",
            "-t",
            "1",
        ],
        &[
            "run",
            "--check-config",
            "--log-stall-timeout",
            "99",
            "--",
            "true",
        ],
    ] {
        let out = run(quiet);
        assert_eq!(
            (out.code(), out.stderr.as_str()),
            (Some(0), ""),
            "{quiet:?}"
        );
    }
    // The start: once, in the pool's log.
    let mut server = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--log-stall-timeout",
        "20",
    ]);
    server.expect_line("is lowered to 15s");
    server.expect_line("started");
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
    let transcript = server.transcript();
    let told: Vec<&str> = transcript
        .lines()
        .filter(|l| l.contains("--log-stall-timeout"))
        .collect();
    assert_eq!(told.len(), 1, "{transcript}");
    assert!(
        told[0].ends_with(&LOWERED["[ufork] ".len()..]),
        "{transcript}"
    );
    // The default lowered by --timeout 4: nothing said.
    let mut server = Running::start(&["serve", "--bind", "127.0.0.1:0", "-w", "1", "-t", "4"]);
    server.expect_line("started");
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
    assert!(
        !server.transcript().contains("--log-stall-timeout"),
        "{}",
        server.transcript()
    );
}

/// `--check-config` checks what a start checks first and exits 0 without
/// binding (the port stays this test's), taking the pidfile or starting a
/// worker; a bad DIR or CMD is the error the start would stop with.
#[test]
fn check_config_checks_the_flags_and_starts_nothing() {
    let dir = TempDir::new("check-config");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = held.local_addr().unwrap().to_string();
    let pidfile = dir.str("ufork.pid");
    let site = dir.str("");
    let out = run(&[
        "serve",
        &site,
        "--check-config",
        "--bind",
        &bind,
        "--pidfile",
        &pidfile,
        "-w",
        "3",
    ]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stdout.contains("the configuration is valid"),
        "{out:#?}"
    );
    assert!(!std::path::Path::new(&pidfile).exists());
    let out = run(&[
        "run",
        "--check-config",
        "--bind",
        &bind,
        "--pidfile",
        &pidfile,
        "--",
        "true",
    ]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(!std::path::Path::new(&pidfile).exists());
    let missing = dir.str("missing");
    let out = run(&["serve", &missing, "--check-config"]);
    assert_one_line_error(&out, 1, &["DIR", "missing"]);
    let out = run(&["run", "--check-config", "--", "no-such-program-here"]);
    assert_one_line_error(&out, 1, &["no-such-program-here", "not found"]);
    // A path that fits, but not with an upgrade's `.PID.new` beside it:
    // valid, with a warning.
    let base = dir.str("");
    let fits = format!("{base}{}", "y".repeat(100 - base.len()));
    let out = run(&["serve", "--check-config", "--control-socket", &fits]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stderr
            .contains("too long for an upgrade's temporary socket beside it"),
        "{out:#?}"
    );
    // A control socket path too long for a unix socket, as the start says.
    let long = dir.str(&format!("{}.sock", "x".repeat(110)));
    for sub in [&["serve", "--check-config"][..], &["run", "--check-config"]] {
        let mut args = sub.to_vec();
        args.extend(["--control-socket", &long]);
        if sub[0] == "run" {
            args.extend(["--", "true"]);
        }
        let out = run(&args);
        assert_one_line_error(
            &out,
            2,
            &["--control-socket", "unix socket paths are limited"],
        );
    }
    let out = run(&["serve", "--check-config", "--bind", ":8000"]);
    assert_one_line_error(&out, 2, &["--bind :8000"]);
    for args in [
        &["serve", "--check-config", "--user", "no-such-user-here"][..],
        &[
            "run",
            "--check-config",
            "--user",
            "no-such-user-here",
            "--",
            "true",
        ],
    ] {
        let out = run(args);
        assert_one_line_error(&out, 1, &["--user no-such-user-here", "no such user"]);
    }
    drop(held);
}
