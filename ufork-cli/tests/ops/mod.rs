//! Operations: sd_notify to the arbiter's own supervisor, `status --json`,
//! `/metrics` and `/healthz`, through the real binary. A recorder on a unix
//! datagram socket plays systemd.

mod activation;
mod deploy;
mod pidfile;
mod stop;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Instant;

use rustix::process::Signal;

use crate::util::*;

/// systemd's side of NOTIFY_SOCKET: every datagram, in order, and the pid
/// of its sender (SO_PASSCRED), as systemd tells them apart.
struct Recorder {
    socket: UnixDatagram,
    address: String,
    seen: Vec<String>,
    senders: Vec<i32>,
}

impl Recorder {
    fn at_path(dir: &TempDir) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the recorder");
        Self::with(socket, path.to_str().unwrap().to_owned())
    }

    fn abstract_named(name: &str) -> Self {
        let name = format!("ufork-test/{}/{name}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the recorder");
        Self::with(socket, format!("@{name}"))
    }

    fn with(socket: UnixDatagram, address: String) -> Self {
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        rustix::net::sockopt::set_socket_passcred(&socket, true).unwrap();
        Self {
            socket,
            address,
            seen: Vec::new(),
            senders: Vec::new(),
        }
    }

    /// Receives one datagram and records it with its sender's pid.
    fn recv(&mut self) -> std::io::Result<String> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!(UnixCredentials);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
        let sender = msg
            .cmsgs()
            .ok()
            .and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                    _ => None,
                })
            })
            .unwrap_or(0);
        let n = msg.bytes;
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(message.clone());
        self.senders.push(sender);
        Ok(message)
    }

    /// Takes every datagram already queued.
    fn drain(&mut self) {
        self.socket.set_nonblocking(true).unwrap();
        while self.recv().is_ok() {}
        self.socket.set_nonblocking(false).unwrap();
    }

    /// Waits for a datagram with a line `needle`; returns the datagram.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "no {needle:?}; saw {:?}",
                self.seen
            );
            let message = match self.recv() {
                Ok(message) => message,
                Err(e) => panic!("no {needle:?} ({e}); saw {:?}", self.seen),
            };
            if message.lines().any(|l| l == needle) {
                return message;
            }
        }
    }
}

/// The new arbiter of an upgrade, no child of the test: stopped at the end
/// even when an assertion failed first.
struct StopOnDrop(i32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if ufork_daemon::signal(self.0, Signal::TERM).unwrap_or(false) {
            let _ = ufork_daemon::wait_for_exit(self.0, Some(DEADLINE));
        }
    }
}

/// The new arbiter's pid in `ufork upgrade`'s "upgraded: pid N is serving".
fn upgraded_pid(stdout: &str) -> i32 {
    let at = stdout.find("upgraded: pid ").expect("upgraded") + 14;
    stdout[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout:?}"))
}

/// `ufork` with the recorder as its supervisor.
fn supervised(recorder: &Recorder, watchdog: Option<(&str, Option<&str>)>) -> Command {
    let mut command = ufork();
    command.env("NOTIFY_SOCKET", &recorder.address);
    command
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    if let Some((usec, pid)) = watchdog {
        command.env("WATCHDOG_USEC", usec);
        if let Some(pid) = pid {
            command.env("WATCHDOG_PID", pid);
        }
    }
    command
}

/// Every leaf of a JSON document, by dotted path (`workers.0.pid`), as JSON
/// text: read by a real JSON parser (Python's), which also rejects anything
/// that is not JSON.
fn json(document: &str) -> HashMap<String, String> {
    const FLATTEN: &str = "import json, sys
def walk(path, v):
    if isinstance(v, dict) and v:
        for k, x in v.items(): walk(path + [k], x)
    elif isinstance(v, list) and v:
        for i, x in enumerate(v): walk(path + [str(i)], x)
    else:
        print('.'.join(path) + '=' + json.dumps(v))
walk([], json.loads(sys.stdin.read()))";
    let mut child = Command::new("python3")
        .args(["-c", FLATTEN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(document.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not JSON: {document}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// One field of a JSON document, as JSON text.
fn json_field(document: &str, path: &str) -> String {
    let fields = json(document);
    match fields.get(path) {
        Some(value) => value.clone(),
        None => panic!("no {path} in {document}"),
    }
}

fn status_json(socket: &str) -> Output {
    run(&["status", "--json", "--control-socket", socket])
}

/// Asks `status --json` until `ok` holds; returns that document.
fn status_until(socket: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = status_json(socket);
        if ok(&out.stdout) {
            return out.stdout;
        }
        assert!(Instant::now() < deadline, "never {what}: {out:#?}");
        std::thread::yield_now();
    }
}

fn metrics_addr(pool: &mut Running) -> SocketAddr {
    let line = pool.expect_line("metrics on http://");
    let at = line.find("http://").unwrap() + 7;
    line[at..line[at..].find('/').unwrap() + at]
        .parse()
        .unwrap()
}

#[test]
fn the_supervisor_hears_ready_reload_stop_and_the_watchdog() {
    let dir = TempDir::new("sdnotify");
    let socket = dir.str("ctl.sock");
    let mut recorder = Recorder::at_path(&dir);
    let mut pool = Running::start_with(supervised(&recorder, Some(("200000", None))).args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--control-socket",
        &socket,
    ]));
    let addr = pool.http_addr();
    let ready = recorder.expect("READY=1");
    assert!(ready.contains("STATUS=2/2 workers ready"), "{ready}");
    // Nothing said READY=1 before every worker was: the pool says so now,
    // and the socket accepts.
    let doc = status_json(&socket).stdout;
    assert_eq!(json_field(&doc, "ready"), "2", "{doc}");
    assert_eq!(get(addr, "/").0, 200);
    assert!(
        recorder.seen.iter().any(|m| m == "WATCHDOG=1"),
        "{:?}",
        recorder.seen
    );

    // A rolling restart: RELOADING=1 with the monotonic clock, then READY=1.
    let before = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let out = run(&["reload", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let reloading = recorder.expect("RELOADING=1");
    let usec: u128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    let before = before.tv_sec as u128 * 1_000_000 + before.tv_nsec as u128 / 1000;
    assert!(usec >= before, "{usec} < {before}");
    let ready = recorder.expect("READY=1");
    assert!(ready.contains("STATUS=2/2 workers ready"), "{ready}");
    let doc = status_json(&socket).stdout;
    // Two old workers and the two stand-ins of the roll.
    assert_eq!(json_field(&doc, "totals.exits.stopped"), "4", "{doc}");
    // The watchdog keeps beating while the loop runs.
    let beats = recorder.seen.iter().filter(|m| *m == "WATCHDOG=1").count();
    recorder.expect("WATCHDOG=1");
    recorder.expect("WATCHDOG=1");
    assert!(beats + 2 <= recorder.seen.iter().filter(|m| *m == "WATCHDOG=1").count());

    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn an_abstract_supervisor_socket_works_and_its_variables_stay_with_the_arbiter() {
    let dir = TempDir::new("sdnotify-abstract");
    let mut recorder = Recorder::abstract_named("abstract");
    let marker = dir.str("env.txt");
    // WATCHDOG_PID names another process: the watchdog is not this one's.
    let mut pool = Running::start_with(
        supervised(&recorder, Some(("100000", Some("1")))).args([
            "run",
            "-w",
            "1",
            "--",
            "sh",
            "-c",
            &format!(
                "echo \"NOTIFY=${{NOTIFY_SOCKET:-none}} WATCHDOG=${{WATCHDOG_USEC:-none}}/${{WATCHDOG_PID:-none}}\" > {marker}; echo env-marker-written; exec sleep 600"
            ),
        ]),
    );
    // The exact marker, echoed after the file is written: the banner also
    // says "written", and reading the file on that would race the worker.
    pool.expect_match(
        |line| line.trim_end().ends_with(" env-marker-written") || line == "env-marker-written",
        "env-marker-written",
    );
    recorder.expect("READY=1");
    let env = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(env.trim(), "NOTIFY=none WATCHDOG=none/none");
    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert!(
        !recorder.seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "{:?}",
        recorder.seen
    );
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn a_graceful_stop_of_serve_warns_of_no_accept_error() {
    // The arbiter shuts the listening socket down on a graceful stop;
    // each worker's accept then fails with EINVAL, which means "the
    // listener is gone", not an error worth a warning and a pause.
    let mut pool = Running::start(&["serve", "--bind", "127.0.0.1:0", "-w", "2"]);
    let addr = pool.http_addr();
    assert_eq!(get(addr, "/").0, 200);
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    let transcript = pool.transcript();
    assert!(
        !transcript.contains("cannot accept a connection"),
        "{transcript}"
    );
}

#[test]
fn status_json_keeps_totals_across_worker_replacement() {
    let dir = TempDir::new("status-json");
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
    let addr = pool.http_addr();
    pool.expect_line("control socket");
    let doc = status_until(&socket, "ready", |d| d.contains(r#""health":"healthy""#));
    for _ in 0..3 {
        assert_eq!(get(addr, "/").0, 200);
    }
    let doc2 = status_until(&socket, "3 requests", |d| d.contains(r#""requests":3,"#));
    assert_eq!(json_field(&doc2, "totals.requests"), "3", "{doc2}");
    let fields = json(&doc);
    let pid: i32 = fields["workers.0.pid"].parse().unwrap();
    assert_eq!(fields["arbiter_pid"], pool.pid().to_string());
    for key in [
        "schema",
        "target",
        "ready",
        "health",
        "uptime_seconds",
        "totals.spawned",
        "workers.0.slot",
        "workers.0.generation",
        "workers.0.state",
        "workers.0.uptime_seconds",
        "workers.0.last_beat_age_seconds",
        "workers.0.requests",
        "workers.0.restarts",
        "workers.0.rss_bytes",
        "workers.0.activity",
    ] {
        assert!(fields.contains_key(key), "no {key} in {doc}");
    }
    // The worker dies; its replacement starts from zero, the pool does not.
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::KILL)
        .unwrap();
    let doc = status_until(&socket, "replaced", |d| {
        d.contains(r#""health":"healthy""#) && d.contains(r#""restarts":1,"#)
    });
    let fields = json(&doc);
    for (key, value) in [
        ("totals.requests", "3"),
        ("totals.exits.killed", "1"),
        ("totals.spawned", "2"),
        ("totals.restarts", "1"),
        ("workers.0.requests", "0"),
        ("workers.0.restarts", "1"),
        ("recent_exits.0.pid", &pid.to_string()),
        ("recent_exits.0.reason", "\"killed\""),
        ("recent_exits.0.signal", "\"SIGKILL\""),
        ("recent_exits.0.exit_code", "null"),
        ("recent_exits.0.requests", "3"),
    ] {
        assert_eq!(
            fields.get(key).map(String::as_str),
            Some(value),
            "{key} in {doc}"
        );
    }
    // The console speaks it too.
    let out = run(&["ctl", "--control-socket", &socket, "status", "json"]);
    assert_eq!(json_field(&out.stdout, "schema"), "1");
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// Every sample of a scrape, by name and labels, checked by a real parser:
/// each sample line of the text must be one the parser understood.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, content_type, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("a valid exposition");
    let sample_lines = body.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(parsed.samples.len(), sample_lines, "{body}");
    let mut samples = HashMap::new();
    for s in parsed.samples {
        assert!(
            parsed.docs.contains_key(&s.metric),
            "no HELP for {}",
            s.metric
        );
        let value = match s.value {
            prometheus_parse::Value::Counter(v) => {
                assert!(s.metric.ends_with("_total"), "{}", s.metric);
                v
            }
            prometheus_parse::Value::Gauge(v) => v,
            other => panic!("{}: unexpected {other:?}", s.metric),
        };
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        samples.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    samples
}

#[test]
fn metrics_and_healthz_answer_from_the_arbiter_even_when_workers_are_wedged() {
    let dir = TempDir::new("metrics");
    let socket = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--control-socket",
        &socket,
        "--metrics-bind",
        "127.0.0.1:0",
    ]);
    let addr = pool.http_addr();
    let metrics = metrics_addr(&mut pool);
    let doc = status_until(&socket, "ready", |d| d.contains(r#""health":"healthy""#));
    assert_eq!(get(metrics, "/healthz").0, 200);
    for _ in 0..4 {
        assert_eq!(get(addr, "/").0, 200);
    }
    // The totals come first in the document.
    status_until(&socket, "4 requests", |d| d.contains(r#""requests":4,"#));
    let m = scrape(metrics);
    assert_eq!(m["ufork_up{}"], 1.0);
    assert_eq!(m["ufork_workers_target{}"], 2.0);
    assert_eq!(m["ufork_workers_ready{}"], 2.0);
    assert_eq!(m["ufork_requests_total{}"], 4.0);
    assert_eq!(m["ufork_worker_spawns_total{}"], 2.0);
    assert_eq!(m["ufork_pool_health{health=healthy}"], 1.0);
    assert_eq!(m["ufork_worker_exits_total{reason=killed}"], 0.0);
    assert!(
        m["ufork_worker_resident_memory_bytes{slot=0}"] > 0.0,
        "{m:?}"
    );
    assert!(
        m.contains_key("ufork_worker_heartbeat_age_seconds{slot=1}"),
        "{m:?}"
    );

    // Wedge every worker: the arbiter still answers.
    let pids: Vec<i32> = (0..2)
        .map(|i| {
            json_field(&doc, &format!("workers.{i}.pid"))
                .parse()
                .unwrap()
        })
        .collect();
    let each = |signal| {
        for &pid in &pids {
            rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), signal)
                .unwrap();
        }
    };
    each(Signal::STOP);
    let m = scrape(metrics);
    each(Signal::CONT);
    assert_eq!(m["ufork_workers_target{}"], 2.0);
    let (status, _, body) = get(metrics, "/nothing");
    assert_eq!(status, 404, "{body}");
    let raw = exchange(metrics, b"DELETE /metrics HTTP/1.1\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 405 "), "{raw}");
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn a_pool_that_cannot_become_ready_is_degraded_503_and_exit_4() {
    let dir = TempDir::new("degraded");
    let socket = dir.str("ctl.sock");
    // --notify without READY=1: the worker never becomes ready and is
    // killed at the start timeout, again and again.
    let mut recorder = Recorder::at_path(&dir);
    let mut pool = Running::start_with(supervised(&recorder, None).args([
        "run",
        "-w",
        "1",
        "--notify",
        "--start-timeout",
        "1",
        "--control-socket",
        &socket,
        "--metrics-bind",
        "127.0.0.1:0",
        "--",
        "sleep",
        "600",
    ]));
    let metrics = metrics_addr(&mut pool);
    pool.expect_line("control socket");
    let (status, _, body) = get(metrics, "/healthz");
    // Starting, or degraded already on a slow machine: not ready either way.
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("starting") || body.starts_with("degraded"),
        "{body}"
    );
    let doc = status_until(&socket, "degraded", |d| {
        d.contains(r#""health":"degraded""#)
    });
    assert_eq!(json_field(&doc, "ready"), "0");
    let out = status_json(&socket);
    assert_eq!(out.code(), Some(4), "{out:#?}");
    assert!(
        out.stderr.contains("degraded: 0 of 1 workers ready"),
        "{out:#?}"
    );
    let out = run(&["status", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(4), "{out:#?}");
    assert!(out.stdout.contains("SLOT"), "{out:#?}");
    let (status, _, body) = get(metrics, "/healthz");
    assert_eq!(
        (status, body.trim_end()),
        (503, "degraded (0/1 workers ready)")
    );
    let m = scrape(metrics);
    assert_eq!(m["ufork_pool_health{health=degraded}"], 1.0);
    // The supervisor hears it turn degraded, and never READY=1.
    recorder.expect("STATUS=degraded: 0/1 workers ready");
    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert!(
        !recorder.seen.iter().any(|m| m.contains("READY=1")),
        "{:?}",
        recorder.seen
    );
    // However it ends (a pool may give up on its own), it ends.
    pool.wait();
}

#[test]
fn an_upgrade_hands_the_supervisor_the_new_mainpid_instead_of_stopping() {
    let dir = TempDir::new("sdnotify-upgrade");
    let socket = dir.str("ctl.sock");
    let mut recorder = Recorder::at_path(&dir);
    let mut pool = Running::start_with(supervised(&recorder, None).args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]));
    recorder.expect("READY=1");
    let old = pool.pid();
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let new = upgraded_pid(&out.stdout);
    let _new_arbiter = StopOnDrop(new);
    // The old arbiter drains and exits; what it told the supervisor is queued.
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    recorder.drain();
    assert!(
        recorder
            .seen
            .iter()
            .any(|m| m.lines().any(|l| l == format!("MAINPID={new}"))),
        "{:?}",
        recorder.seen
    );
    assert!(
        !recorder.seen.iter().any(|m| m.contains("STOPPING=1")),
        "{:?}",
        recorder.seen
    );
    // Under NotifyAccess=main, systemd drops what the new arbiter sends
    // before MAINPID= names it: nothing may come from it until then, and the
    // old arbiter's MAINPID= says READY=1 itself.
    let log: Vec<(i32, &String)> = recorder
        .senders
        .iter()
        .copied()
        .zip(&recorder.seen)
        .collect();
    let handover = log
        .iter()
        .position(|(_, m)| m.lines().any(|l| l == format!("MAINPID={new}")))
        .unwrap();
    assert_eq!(log[handover].0, old, "{log:?}");
    assert!(log[handover].1.lines().any(|l| l == "READY=1"), "{log:?}");
    assert!(
        log[..handover].iter().all(|(pid, _)| *pid == old),
        "the new arbiter (pid {new}) spoke before it was the main pid: {log:?}"
    );
    // The statuses it held while its workers booted are stale by then: its
    // first status says every worker is ready.
    let first_status = loop {
        let from_new = recorder
            .senders
            .iter()
            .zip(&recorder.seen)
            .find(|(pid, m)| **pid == new && m.lines().any(|l| l.starts_with("STATUS=")));
        if let Some((_, message)) = from_new {
            break message.clone();
        }
        recorder.recv().expect("a status from the new arbiter");
    };
    assert!(
        first_status
            .lines()
            .any(|l| l == "STATUS=1/1 workers ready"),
        "{first_status:?} in {:?}",
        recorder.seen
    );
    // The new arbiter is the service now; its stop is the service's.
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    recorder.expect("STOPPING=1");
    assert_eq!(recorder.senders.last(), Some(&new), "{:?}", recorder.seen);
}

/// A supervisor whose queue is full when the old arbiter hands over: the
/// new arbiter is told to speak only once the old one's `MAINPID=` went out
/// (before, it spoke while the supervisor still took the old one for the
/// main process, which systemd drops, watchdog beats included), and the old
/// arbiter's end waits for room to send it.
#[test]
fn a_full_supervisor_queue_holds_the_new_arbiter_until_mainpid_is_delivered() {
    let dir = TempDir::new("sdnotify-upgrade-full");
    let socket = dir.str("ctl.sock");
    let mut recorder = Recorder::at_path(&dir);
    // Nobody reads yet: beats every 10 ms fill the queue.
    let mut pool = Running::start_with(supervised(&recorder, Some(("20000", None))).args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
        "--log-level",
        "debug",
    ]));
    pool.expect_line("the supervisor is not reading");
    let old = pool.pid();
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let new = upgraded_pid(&out.stdout);
    let _new_arbiter = StopOnDrop(new);
    pool.expect_line(&format!("has not heard MAINPID={new} yet"));
    // The new arbiter's debug line, had it been told already, came first.
    assert!(
        !pool
            .transcript()
            .contains("this arbiter speaks for the service"),
        "{}",
        pool.transcript()
    );
    // The supervisor reads again: MAINPID= comes before anything from the
    // new arbiter, and the old arbiter's end waited for it.
    recorder.expect(&format!("MAINPID={new}"));
    let handover = recorder.seen.len() - 1;
    assert_eq!(recorder.senders[handover], old, "{:?}", recorder.seen);
    assert!(
        recorder.senders[..handover].iter().all(|pid| *pid == old),
        "the new arbiter (pid {new}) spoke before it was the main pid: {:?} from {:?}",
        recorder.seen,
        recorder.senders
    );
    // The new arbiter speaks for the service now.
    let deadline = Instant::now() + DEADLINE;
    while recorder.senders.last() != Some(&new) {
        assert!(Instant::now() < deadline, "{:?}", recorder.seen);
        recorder.recv().expect("a datagram");
    }
    // By signal, not `ufork stop`, which would wait for an arbiter that
    // waits for this test to read its STOPPING=1 from a full queue.
    assert!(ufork_daemon::signal(new, Signal::TERM).unwrap());
    recorder.expect("STOPPING=1");
    assert_eq!(recorder.senders.last(), Some(&new), "{:?}", recorder.seen);
    // Last: the new arbiter shares the old one's output pipes.
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// Under systemd's watchdog, `WATCHDOG_PID` names the arbiter. The new
/// arbiter of an upgrade becomes the service's main process, so it must beat
/// too (systemd kills a service whose main process stops beating), though
/// the variable it inherited named the old one.
#[test]
fn after_an_upgrade_the_new_arbiter_keeps_the_watchdog_beating() {
    let dir = TempDir::new("sdnotify-upgrade-watchdog");
    let socket = dir.str("ctl.sock");
    let mut recorder = Recorder::at_path(&dir);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args(["serve", "--bind", "127.0.0.1:0", "-w", "1"])
        .args(["--control-socket", &socket])
        .env("NOTIFY_SOCKET", &recorder.address)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null());
    let mut pool = Running::start_with(&mut command);
    recorder.expect("READY=1");
    recorder.expect("WATCHDOG=1");
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    // Stopped at the end even when an assertion fails first: it is no child
    // of this test, and nothing else would stop it.
    let _new_arbiter = StopOnDrop(upgraded_pid(&out.stdout));
    // The old arbiter's loop is over: every beat from now on is the new one's.
    pool.expect_line(&format!("arbiter pid {} stopped", pool.pid()));
    recorder.drain();
    recorder.expect("WATCHDOG=1");
    recorder.expect("WATCHDOG=1");
    let out = run(&["stop", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    recorder.expect("STOPPING=1");
}

#[test]
fn ready_follows_a_reload_with_nothing_else_waking_the_arbiter() {
    // No watchdog and no other client: only the roll's own events wake the
    // arbiter, and the roll's end is published after the last of them.
    let dir = TempDir::new("sdnotify-reload");
    let socket = dir.str("ctl.sock");
    let mut recorder = Recorder::at_path(&dir);
    let mut pool = Running::start_with(supervised(&recorder, None).args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "2",
        "--control-socket",
        &socket,
    ]));
    recorder.expect("READY=1");
    let out = run(&["reload", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    recorder.expect("RELOADING=1");
    recorder.expect("READY=1");
    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn a_worker_extending_its_start_is_starting_not_degraded_nor_hung_and_systemd_hears_it() {
    let dir = TempDir::new("extend-health");
    // STATUS=loading (a heartbeat) and EXTEND_TIMEOUT_USEC=600000000, then
    // READY=1 once the FIFO is written to.
    let worker = crate::script(&dir, "extend.py", crate::EXTEND_PY);
    let fifo = dir.join("go");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let socket = dir.str("ctl.sock");
    let mut recorder = Recorder::at_path(&dir);
    let mut pool = Running::start_with(supervised(&recorder, None).args([
        "run",
        "-w",
        "1",
        "--notify",
        "--start-timeout",
        "3",
        "--timeout",
        "2",
        "--control-socket",
        &socket,
        "--metrics-bind",
        "127.0.0.1:0",
        "--",
        "python3",
        &worker,
        fifo.to_str().unwrap(),
    ]));
    let metrics = metrics_addr(&mut pool);
    pool.expect_line("] extended");
    // systemd is told the start may take as long as the worker asked, and
    // a margin: 600 s and 5 s, less what passed since the worker asked.
    let deadline = Instant::now() + DEADLINE;
    let told = loop {
        assert!(Instant::now() < deadline, "{:?}", recorder.seen);
        let message = recorder.recv().unwrap();
        if let Some(usec) = message
            .lines()
            .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        {
            break usec.parse::<u64>().unwrap();
        }
    };
    assert!((585_000_000..=605_000_000).contains(&told), "{told}");
    // Past --start-timeout since the fork and --timeout since the STATUS=
    // beat, and two loop iterations later (a command is answered inside
    // one, whose end checks health): the worker lives, and the pool is
    // starting, not degraded.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    for _ in 0..2 {
        let out = run(&["ctl", "--control-socket", &socket, "status"]);
        assert!(
            out.stdout.contains("0 ready") && out.stdout.contains("loading"),
            "{out:#?}"
        );
    }
    let out = run(&["status", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let doc = status_json(&socket);
    assert_eq!(
        json_field(&doc.stdout, "health"),
        "\"starting\"",
        "{doc:#?}"
    );
    let (status, _, body) = get(metrics, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("starting"), "{body}");
    let go = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    drop(go);
    recorder.expect("READY=1");
    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    let transcript = pool.transcript();
    assert!(
        !transcript.contains("timed out") && !transcript.contains("start timeout"),
        "{transcript}"
    );
    let told = recorder
        .seen
        .iter()
        .filter(|m| m.contains("EXTEND_TIMEOUT_USEC="))
        .count();
    assert_eq!(told, 1, "one extension, told once: {:?}", recorder.seen);
}

#[test]
fn a_supervisor_that_stops_reading_never_blocks_the_arbiter() {
    // Nobody reads the recorder until the end: its queue (10 datagrams by
    // default) fills with watchdog beats every 10 ms.
    let dir = TempDir::new("sdnotify-full");
    let socket = dir.str("ctl.sock");
    let mut recorder = Recorder::at_path(&dir);
    let mut pool = Running::start_with(supervised(&recorder, Some(("20000", None))).args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]));
    pool.expect_line("the supervisor is not reading");
    // The loop still serves its control socket.
    let out = run(&["status", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    // What was held is delivered once the supervisor reads again.
    recorder.expect("READY=1");
    pool.signal(Signal::TERM);
    recorder.expect("STOPPING=1");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// An old arbiter in Python, for the handshake an earlier ufork binary does:
/// it hands a listening socket and the report socket to `ufork serve`, waits
/// for `READY=1`, then closes the socket (`close`) or first says
/// `ABANDONED=1` (`abandon`), as this binary's old arbiter does when it gives
/// up.
const EARLIER_OLD_ARBITER: &str = r#"
import fcntl, os, socket, subprocess, sys
ufork, mode = sys.argv[1], sys.argv[2]
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(16)
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
a = fcntl.fcntl(lst.fileno(), fcntl.F_DUPFD_CLOEXEC, 20)
b = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 20)
def place():
    os.dup2(a, 3)
    os.dup2(b, 4)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="http", UFORK_UPGRADE_FD="4")
new = subprocess.Popen(
    ["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', ufork, "serve", "--bind", "127.0.0.1:0", "-w", "1"],
    env=env, preexec_fn=place, close_fds=False, stdin=subprocess.DEVNULL)
theirs.close()
os.close(b)
# One write: with PYTHONUNBUFFERED, print() writes each piece apart, and
# the new arbiter's own output, on the same pipe, lands between them.
sys.stdout.write(f"new arbiter {new.pid}\n")
sys.stdout.flush()
while True:
    m = ours.recv(4096)
    if not m or b"READY=1" in m:
        break
if mode == "abandon":
    ours.send(b"ABANDONED=1\n")
ours.close()
# Only now: the test stops the new arbiter once it reads this, and one
# stopped before the ABANDONED=1 (its end closed: EPIPE here) tests nothing.
print("reported", flush=True)
new.wait()
"#;

/// A new arbiter whose old one closes the upgrade socket after `READY=1`
/// without saying `MAINPID=` there (an earlier binary) takes the service
/// over, so it speaks (and beats the watchdog); one whose old arbiter said
/// `ABANDONED=1` first never speaks for the service, even as it stops.
#[test]
fn a_new_arbiter_speaks_once_an_earlier_old_arbiter_closes_the_socket_never_once_it_abandons() {
    for mode in ["close", "abandon"] {
        let dir = TempDir::new(&format!("sdnotify-earlier-{mode}"));
        let mut recorder = Recorder::at_path(&dir);
        let mut command = Command::new("python3");
        command
            .args(["-c", EARLIER_OLD_ARBITER, env!("CARGO_BIN_EXE_ufork"), mode])
            .env("NOTIFY_SOCKET", &recorder.address)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("UFORK_LOG")
            .env_remove("PORT")
            .env_remove("WEB_CONCURRENCY")
            .stdin(Stdio::null());
        let mut old = Running::start_with(&mut command);
        let line = old.expect_line("new arbiter ");
        let new: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let stop = StopOnDrop(new);
        old.expect_line("reported");
        if mode == "close" {
            recorder.expect("READY=1");
            assert_eq!(recorder.senders.last(), Some(&new), "{:?}", recorder.seen);
        }
        drop(stop);
        assert_eq!(old.wait().code(), Some(0), "{}", old.transcript());
        recorder.drain();
        let spoke = recorder.senders.contains(&new);
        assert_eq!(spoke, mode == "close", "{mode}: {:?}", recorder.seen);
    }
}

/// A worker recycled by `--max-requests` counts among the exits, as
/// `recycled`.
#[test]
fn recycled_workers_count_in_the_exits_metric() {
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--max-requests",
        "2",
        "--max-requests-jitter",
        "0",
        "--metrics-bind",
        "127.0.0.1:0",
    ]);
    let addr = pool.http_addr();
    let metrics = metrics_addr(&mut pool);
    for _ in 0..2 {
        assert_eq!(get(addr, "/").0, 200);
    }
    pool.expect_line("recycling");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let m = scrape(metrics);
        if m["ufork_worker_exits_total{reason=recycled}"] >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m:?}");
        std::thread::yield_now();
    }
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}
