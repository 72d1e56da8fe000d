//! Hello-world benchmark: this crate against gunicorn (sync and gthread),
//! Python uFork's wsgiref arbiter and a minimal hand-written Rust pre-fork
//! loop (the floor), each with 2 workers, measured by wrk on loopback.
//!
//! ```text
//! cargo run --release -p ufork-wsgi-like --example bench_http
//! ```
//!
//! Needs `wrk` on PATH. The Python peers need `UFORK_BENCH_PYTHON`: a python
//! with `gunicorn` and `ufork` installed (`cargo xtask bench` makes a venv).
//! A missing peer prints "skipped (reason)". `UFORK_BENCH_SECS` sets wrk's
//! duration per run (default 10). Every process started is stopped and
//! reaped at the end, on error too (the bench is a child subreaper, so
//! workers of a peer that dies still come back to it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error>;

const WORKERS: usize = 2;
const CONNECTIONS: [u32; 2] = [64, 256];

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve-ufork") => serve_ufork(),
        Some("--serve-floor") => floor::serve(),
        _ => bench(),
    }
}

/// Our server, as the bench runs it: hello on a port of its choosing,
/// printed on stdout.
fn serve_ufork() -> Result<(), BoxError> {
    let server = ufork_wsgi_like::Server::builder()
        .bind("127.0.0.1:0")
        .workers(WORKERS)
        .build(ufork_wsgi_like::hello)?;
    println!("{}", server.local_addrs()[0].port());
    std::io::stdout().flush()?;
    server.run()?;
    Ok(())
}

/// The floor: a hand-written pre-fork keep-alive loop answering every request
/// head with a fixed response, no parsing beyond finding the blank line.
mod floor {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use rustix::event::epoll;

    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, world!\n";

    pub fn serve() -> Result<(), super::BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        println!("{}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        ufork_core::Arbiter::builder()
            .workers(super::WORKERS)
            .build()?
            .run(|worker| -> std::io::Result<()> { serve_worker(&listener, worker) })?;
        Ok(())
    }

    fn serve_worker(listener: &TcpListener, worker: &ufork_core::Worker) -> std::io::Result<()> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let flags = epoll::EventFlags::IN;
        epoll::add(
            &ep,
            listener.as_fd(),
            epoll::EventData::new_u64(u64::MAX),
            flags | epoll::EventFlags::EXCLUSIVE,
        )?;
        epoll::add(
            &ep,
            worker.stop_fd(),
            epoll::EventData::new_u64(u64::MAX - 1),
            flags,
        )?;
        let mut conns: Vec<Option<TcpStream>> = Vec::new();
        let mut events = Vec::with_capacity(256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(64 * 1024);
        loop {
            events.clear();
            epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None)?;
            for event in &events {
                match event.data.u64() {
                    u64::MAX => {
                        if let Ok((stream, _)) = listener.accept() {
                            stream.set_nonblocking(true)?;
                            stream.set_nodelay(true)?;
                            let idx = conns.iter().position(Option::is_none).unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            epoll::add(&ep, &stream, epoll::EventData::new_u64(idx as u64), flags)?;
                            conns[idx] = Some(stream);
                        }
                    }
                    t if t == u64::MAX - 1 => return Ok(()),
                    idx => {
                        let idx = idx as usize;
                        let Some(stream) = conns[idx].as_mut() else {
                            continue;
                        };
                        let n = match stream.read(&mut buf) {
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(_) => 0,
                        };
                        let requests = buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                        out.clear();
                        for _ in 0..requests {
                            out.extend_from_slice(RESPONSE);
                        }
                        if n == 0 || stream.write_all(&out).is_err() {
                            let _ = epoll::delete(&ep, &*stream);
                            conns[idx] = None;
                        }
                    }
                }
            }
        }
    }
}

/// One process tree the bench started: stopped and reaped on drop.
struct Peer {
    child: Child,
    /// Signal for a graceful stop.
    stop_signal: rustix::process::Signal,
}

impl Peer {
    fn spawn(mut command: Command, stop_signal: rustix::process::Signal) -> Result<Self, BoxError> {
        use std::os::unix::process::CommandExt;
        command.process_group(0).stdin(Stdio::null());
        Ok(Self {
            child: command.spawn()?,
            stop_signal,
        })
    }

    fn pgid(&self) -> Option<rustix::process::Pid> {
        rustix::process::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let Some(pgid) = self.pgid() else { return };
        let _ = rustix::process::kill_process(pgid, self.stop_signal);
        let deadline = Instant::now() + Duration::from_secs(12);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (workers of a peer that stopped
        // badly) goes now.
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        let _ = self.child.wait();
        reap_orphans();
    }
}

/// Reaps every exited child, including orphaned workers reparented to us.
fn reap_orphans() {
    use rustix::process::{WaitOptions, wait};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match wait(WaitOptions::NOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
}

/// Waits until `port` answers a GET with 200.
fn wait_ready(port: u16, within: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + within;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n");
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
                && &head[9..12] == b"200"
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("port {port} did not answer within {within:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> Result<u16, BoxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[derive(Clone, Copy, Default)]
struct Measure {
    rps: f64,
    p99_ms: f64,
}

/// Runs wrk and reads requests per second and the 99th percentile latency.
fn wrk(port: u16, connections: u32, secs: u64) -> Result<Measure, BoxError> {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut m = Measure::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            m.rps = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("99%") {
            m.p99_ms = duration_ms(v.trim()).ok_or_else(|| format!("bad latency {v:?}"))?;
        }
    }
    if m.rps == 0.0 {
        return Err(format!("wrk printed no result: {text}").into());
    }
    Ok(m)
}

fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

struct Row {
    name: &'static str,
    result: Result<Vec<Measure>, String>,
}

fn measure(port: u16, secs: u64) -> Result<Vec<Measure>, String> {
    if secs >= 5 {
        // Warm up: let every worker accept and the caches fill.
        wrk(port, CONNECTIONS[0], 1).map_err(|e| e.to_string())?;
    }
    CONNECTIONS
        .iter()
        .map(|&c| wrk(port, c, secs).map_err(|e| e.to_string()))
        .collect()
}

/// Starts this executable in a serving mode; it prints its port.
fn spawn_self(mode: &str) -> Result<(Peer, u16), BoxError> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut peer = Peer::spawn(command, rustix::process::Signal::TERM)?;
    let stdout = peer.child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line.trim().parse()?;
    wait_ready(port, Duration::from_secs(30))?;
    Ok((peer, port))
}

fn run_self(mode: &str, secs: u64) -> Result<Vec<Measure>, String> {
    let (peer, port) = spawn_self(mode).map_err(|e| format!("cannot start: {e}"))?;
    let result = measure(port, secs);
    drop(peer);
    result
}

fn python_peer(
    python: &Path,
    dir: &Path,
    args: &[&str],
    stop_signal: rustix::process::Signal,
    secs: u64,
) -> Result<Vec<Measure>, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let mut command = Command::new(python);
    for arg in args {
        command.arg(arg.replace("{port}", &port.to_string()));
    }
    command
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let peer = Peer::spawn(command, stop_signal).map_err(|e| format!("cannot start: {e}"))?;
    wait_ready(port, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let result = measure(port, secs);
    drop(peer);
    result
}

const APP_PY: &str = "\
def app(environ, start_response):
    body = b'Hello, world!\\n'
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]
";

/// uFork's own WSGI server: `wsgiref_thread_arbiter` forks the workers, each
/// runs wsgiref's `serve_forever` on the socket bound before the fork.
const UFORK_PY: &str = "\
import sys
import ufork
from app import app
arbiter = ufork.wsgiref_thread_arbiter(app, '127.0.0.1', int(sys.argv[1]))
arbiter.size = 2
arbiter.run(repl=False)
";

fn bench() -> Result<(), BoxError> {
    let secs: u64 = match std::env::var("UFORK_BENCH_SECS") {
        Ok(s) => s.parse()?,
        Err(_) => 10,
    };
    let _ = rustix::process::set_child_subreaper(rustix::process::getpid().into());
    let wrk_ok = Command::new("wrk")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !wrk_ok {
        println!("skipped (wrk is not on PATH: apt-get install wrk)");
        return Ok(());
    }
    let python = std::env::var_os("UFORK_BENCH_PYTHON").map(PathBuf::from);
    let dir = std::env::temp_dir().join(format!("ufork-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("app.py"), APP_PY)?;
    std::fs::write(dir.join("ufork_peer.py"), UFORK_PY)?;
    let has = |module: &str| -> Result<PathBuf, String> {
        let python = python.clone().ok_or("UFORK_BENCH_PYTHON is not set")?;
        let ok = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(python)
        } else {
            Err(format!("{} cannot import {module}", python.display()))
        }
    };

    println!(
        "hello world, {WORKERS} workers, wrk -t2 -c{{64,256}} -d{secs}s on loopback, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    let term = rustix::process::Signal::TERM;
    rows.push(Row {
        name: "ufork-wsgi-like",
        result: run_self("--serve-ufork", secs),
    });
    rows.push(Row {
        name: "rust pre-fork floor",
        result: run_self("--serve-floor", secs),
    });
    let gunicorn = |worker_args: &[&str], secs| {
        let python = has("gunicorn")?;
        let mut args = vec!["-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}"];
        args.extend_from_slice(worker_args);
        args.extend(["--log-level", "warning", "app:app"]);
        python_peer(&python, &dir, &args, term, secs)
    };
    rows.push(Row {
        name: "gunicorn sync -w 2",
        result: gunicorn(&["-k", "sync"], secs),
    });
    rows.push(Row {
        name: "gunicorn gthread -w 2 --threads 4",
        result: gunicorn(&["-k", "gthread", "--threads", "4"], secs),
    });
    rows.push(Row {
        name: "python ufork wsgiref arbiter",
        result: has("ufork").and_then(|python| {
            // SIGINT: uFork's arbiter stops its workers on KeyboardInterrupt.
            python_peer(
                &python,
                &dir,
                &["ufork_peer.py", "{port}"],
                rustix::process::Signal::INT,
                secs,
            )
        }),
    });
    let _ = std::fs::remove_dir_all(&dir);
    reap_orphans();
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Row]) {
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.result.as_ref().ok())
            .cloned()
    };
    let ours = get("ufork-wsgi-like");
    let gunicorn = get("gunicorn sync -w 2");
    let floor = get("rust pre-fork floor");
    println!();
    println!(
        "{:<34} {:>11} {:>10} {:>11} {:>10}",
        "server", "c64 req/s", "c64 p99", "c256 req/s", "c256 p99"
    );
    for row in rows {
        match &row.result {
            Ok(m) => println!(
                "{:<34} {:>11.0} {:>8.2}ms {:>11.0} {:>8.2}ms",
                row.name, m[0].rps, m[0].p99_ms, m[1].rps, m[1].p99_ms
            ),
            Err(reason) => println!("{:<34} skipped ({reason})", row.name),
        }
    }
    println!();
    if let Some(ours) = &ours {
        for (label, peer) in [("gunicorn sync", &gunicorn), ("the rust floor", &floor)] {
            match peer {
                Some(p) => println!(
                    "ufork-wsgi-like / {label}: {:.2}x at c64, {:.2}x at c256",
                    ours[0].rps / p[0].rps,
                    ours[1].rps / p[1].rps
                ),
                None => println!("ufork-wsgi-like / {label}: skipped (no measurement)"),
            }
        }
        for row in rows {
            if let (Ok(m), true) = (&row.result, row.name != "ufork-wsgi-like") {
                println!(
                    "  vs {:<34} {:>7.2}x (c64) {:>7.2}x (c256)",
                    row.name,
                    ours[0].rps / m[0].rps,
                    ours[1].rps / m[1].rps
                );
            }
        }
    }
}
