//! HTTP benchmarks: ufork-wsgi-like against the servers its users compare it
//! with, all measured in one run on this machine, by wrk on loopback.
//!
//! ```text
//! cargo run --release -p ufork-wsgi-like --example bench_http
//! ```
//!
//! Rows (`UFORK_BENCH_ROWS=hello,cpu,...` picks some; default all):
//!
//! - `hello`: hello world, 2 workers or 2 runtime threads, wrk -c64 and
//!   -c256: this crate, the hand-written pre-fork floor, hyper, axum,
//!   ufork-core's `async_tokio` example (axum on a current-thread tokio
//!   runtime per pre-forked worker; `cargo xtask bench` builds it beside this
//!   executable), gunicorn sync and gthread, Python uFork's wsgiref arbiter;
//! - `cpu`: ~200 µs of SHA-256 per request (the same bytes hashed in every
//!   contender), wrk -c64: this crate, hyper, axum, gunicorn sync; and
//!   ufork-core's `async_tokio` example, whose `/work?us=N` spins for the
//!   same CPU time the hashing takes here (it has no SHA-256);
//! - `mem`: 300 MiB of 1 KiB chunks built before the fork, 4 workers, every
//!   request reads 64 of them: the pool's PSS after load, against gunicorn
//!   `--preload`;
//! - `respawn`: SIGKILL the oldest worker every 500 ms during wrk -c64:
//!   req/s, p99 and errors, against gunicorn sync;
//! - `recycle`: `ufork serve -w 2` (the binary named by `UFORK_BENCH_UFORK`,
//!   which `cargo xtask bench http` builds) with and without
//!   `--max-requests 2000`, wrk -c64: req/s, p99, errors and the ratio
//!   (goal: at least 0.90x; see `recycle.rs`);
//! - `idle`: 16 idle workers: wake-ups per second and CPU of the workers
//!   and of the arbiter, against gunicorn sync;
//! - `files`: a 1 GiB stream of 64 KiB chunks against the same bytes as a
//!   file body; a 100 MB file download against nginx;
//! - `callgrind`: instructions and heap allocations per hello request of
//!   the serving thread of `Server::spawn_local`, under valgrind's callgrind;
//! - `ops` (only when asked for, as `cargo xtask bench ops` does): errors
//!   and p99 during rolling restarts, an upgrade and a graceful stop of
//!   `ufork serve` against gunicorn (see `ops.rs`);
//! - `tail` (only when asked for, as `cargo xtask bench tail` does): the
//!   experiment behind the keep-alive p99 at c64, several rounds in turns
//!   of this crate, the floor with an even and an uneven split and with
//!   1 µs more work per request, and hyper with and without work stealing
//!   (see `tail.rs`).
//!
//! Needs `wrk` on PATH (and `nginx` for its row). The Python peers need
//! `UFORK_BENCH_PYTHON`: a python with `gunicorn` and `ufork` installed
//! (`cargo xtask bench` installs all of them). A missing peer prints
//! "skipped (reason)". `UFORK_BENCH_SECS` sets each load's duration
//! (default 10). Every process started is stopped and reaped at the end, on
//! error too (the bench is a child subreaper, so workers of a peer that dies
//! still come back to it).

mod callgrind;
mod load;
mod ops;
mod procs;
mod recycle;
mod servers;
mod tail;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use load::Measure;
use procs::Peer;
use rustix::process::Signal;

type BoxError = Box<dyn std::error::Error>;

const WORKERS: usize = 2;
const CONNECTIONS: [u32; 2] = [64, 256];
/// Target CPU time of one `/cpu` request.
const CPU_TARGET: Duration = Duration::from_micros(200);
const MEM_MB: usize = 300;
const MEM_WORKERS: usize = 4;
const IDLE_WORKERS: usize = 16;
const KILL_EVERY: Duration = Duration::from_millis(500);

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve") => {
            let kind = args.get(1).ok_or("--serve KIND WORKERS")?;
            let workers = args.get(2).ok_or("--serve KIND WORKERS")?.parse()?;
            servers::serve(kind, workers)
        }
        Some("--local") => callgrind::local_requests(args.get(1).ok_or("--local N")?.parse()?),
        _ => bench(),
    }
}

/// A server the bench can start.
#[derive(Clone, Debug)]
enum Spec {
    /// This executable's `--serve KIND`.
    Rust(&'static str),
    /// gunicorn with these extra arguments.
    Gunicorn(&'static [&'static str]),
    /// Python uFork's wsgiref arbiter.
    PythonUfork,
    /// An example binary beside this executable (built by `cargo xtask
    /// bench`), run as `NAME --bind 127.0.0.1:PORT --workers N`.
    Example(&'static str),
}

struct Ctx {
    python: Option<PathBuf>,
    dir: PathBuf,
    secs: u64,
    rounds: usize,
}

impl Ctx {
    fn python_with(&self, module: &str) -> Result<&Path, String> {
        let python = self
            .python
            .as_deref()
            .ok_or("UFORK_BENCH_PYTHON is not set")?;
        let ok = Command::new(python)
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
    }

    /// Starts `spec` with `workers` and extra environment; returns it once
    /// it answers.
    fn start(
        &self,
        spec: &Spec,
        workers: usize,
        env: &[(&str, String)],
    ) -> Result<(Peer, u16), String> {
        let mut command;
        let mut port = None;
        let stop = match spec {
            Spec::Rust(kind) => {
                command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
                command
                    .args(["--serve", kind, &workers.to_string()])
                    .stdout(Stdio::piped());
                Signal::TERM
            }
            Spec::Gunicorn(extra) => {
                let p = procs::free_port().map_err(|e| e.to_string())?;
                port = Some(p);
                command = Command::new(self.python_with("gunicorn")?);
                command
                    .args(["-m", "gunicorn", "-w", &workers.to_string()])
                    .arg(format!("-b127.0.0.1:{p}"))
                    .args(*extra)
                    .args(["--log-level", "warning", "app:app"])
                    .stdout(Stdio::null());
                Signal::TERM
            }
            Spec::Example(name) => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let path = exe.with_file_name(name);
                if !path.exists() {
                    return Err(format!("{} is not built", path.display()));
                }
                let p = procs::free_port().map_err(|e| e.to_string())?;
                port = Some(p);
                command = Command::new(path);
                command
                    .args(["--bind", &format!("127.0.0.1:{p}")])
                    .args(["--workers", &workers.to_string()])
                    .stdout(Stdio::null());
                Signal::TERM
            }
            Spec::PythonUfork => {
                let p = procs::free_port().map_err(|e| e.to_string())?;
                port = Some(p);
                command = Command::new(self.python_with("ufork")?);
                command
                    .args(["ufork_peer.py", &p.to_string(), &workers.to_string()])
                    .stdout(Stdio::null());
                // uFork's arbiter stops its workers on KeyboardInterrupt.
                Signal::INT
            }
        };
        command
            .current_dir(&self.dir)
            .stderr(Stdio::null())
            .env("UFORK_BENCH_CPU_ROUNDS", self.rounds.to_string());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut peer = Peer::spawn(command, stop).map_err(|e| format!("cannot start: {e}"))?;
        let port = match port {
            Some(p) => p,
            None => {
                let stdout = peer.child.stdout.take().ok_or("no stdout")?;
                let mut line = String::new();
                BufReader::new(stdout)
                    .read_line(&mut line)
                    .map_err(|e| e.to_string())?;
                line.trim()
                    .parse()
                    .map_err(|_| format!("printed {line:?}, not a port"))?
            }
        };
        procs::wait_ready(port, Duration::from_secs(60)).map_err(|e| e.to_string())?;
        Ok((peer, port))
    }

    fn warm_up(&self, port: u16, path: &str) -> Result<(), String> {
        if self.secs >= 5 {
            // Let every worker accept and the caches fill.
            load::wrk(port, path, CONNECTIONS[0], 1).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

const APP_PY: &str = "\
import hashlib, os
ROUNDS = int(os.environ.get('UFORK_BENCH_CPU_ROUNDS', '1'))
BLOCK = b'x' * 16384
DATA = [bytes([i % 256]) * 1024 for i in range(int(os.environ.get('UFORK_BENCH_MEM_MB', '0')) * 1024)]
NEXT = 0

def app(environ, start_response):
    global NEXT
    path = environ.get('PATH_INFO', '/')
    if path == '/cpu':
        d = b''
        for _ in range(ROUNDS):
            d = hashlib.sha256(BLOCK).digest()
        body = d.hex().encode() + b'\\n'
    elif path == '/mem' and DATA:
        i = NEXT % len(DATA)
        NEXT = i + 64
        body = str(sum(c[0] for c in DATA[i:i + 64])).encode() + b'\\n'
    else:
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
arbiter.size = int(sys.argv[2])
arbiter.run(repl=False)
";

/// SHA-256 rounds of a 16 KiB block that take about [`CPU_TARGET`] here.
fn calibrate() -> (usize, Duration) {
    let _ = servers::cpu_work(200);
    let mut times: Vec<Duration> = (0..15)
        .map(|_| {
            let t = Instant::now();
            let _ = servers::cpu_work(100);
            t.elapsed() / 100
        })
        .collect();
    times.sort();
    let one = times[times.len() / 2].max(Duration::from_nanos(1));
    let rounds = (CPU_TARGET.as_nanos() / one.as_nanos()).max(1) as usize;
    (rounds, one * rounds as u32)
}

/// The same work timed in the Python peers' interpreter.
fn python_cpu_time(ctx: &Ctx) -> Option<f64> {
    let python = ctx.python.as_ref()?;
    let code = format!(
        "import hashlib, time\nB = b'x' * 16384\nt = time.perf_counter()\nfor _ in range(200 * {r}):\n    hashlib.sha256(B).digest()\nprint((time.perf_counter() - t) / 200 * 1e6)",
        r = ctx.rounds
    );
    let out = Command::new(python).args(["-c", &code]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn bench() -> Result<(), BoxError> {
    let secs: u64 = match std::env::var("UFORK_BENCH_SECS") {
        Ok(s) => s.parse()?,
        Err(_) => 10,
    };
    let rows: Vec<String> = std::env::var("UFORK_BENCH_ROWS")
        .unwrap_or_else(|_| "hello,cpu,mem,respawn,recycle,idle,files,callgrind".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let wants = |row: &str| rows.iter().any(|r| r == row);
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
    let dir = std::env::temp_dir().join(format!("ufork-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("app.py"), APP_PY)?;
    std::fs::write(dir.join("ufork_peer.py"), UFORK_PY)?;
    let (rounds, rust_cpu) = calibrate();
    let ctx = Ctx {
        python: std::env::var_os("UFORK_BENCH_PYTHON").map(PathBuf::from),
        dir: dir.clone(),
        secs,
        rounds,
    };
    println!(
        "ufork-wsgi-like against its peers, wrk -t2 -d{secs}s on loopback, {} CPUs, same run",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let result = (|| -> Result<(), BoxError> {
        if wants("hello") {
            hello(&ctx);
        }
        if wants("cpu") {
            let py = python_cpu_time(&ctx).map_or("-".into(), |us| format!("{us:.0} µs"));
            println!(
                "\n/cpu: {rounds} SHA-256 rounds of 16 KiB per request: {:.0} µs in Rust, {py} in Python's hashlib",
                rust_cpu.as_secs_f64() * 1e6
            );
            cpu(&ctx, rust_cpu);
        }
        if wants("mem") {
            mem(&ctx);
        }
        if wants("respawn") {
            respawn(&ctx);
        }
        if wants("idle") {
            idle(&ctx);
        }
        if wants("files") {
            files(&ctx)?;
        }
        if wants("ops") {
            ops::run(&ctx);
        }
        if wants("tail") {
            tail::run(&ctx);
        }
        if wants("recycle") {
            recycle::run(&ctx);
        }
        if wants("callgrind") {
            println!("\nper hello request, serving thread of Server::spawn_local (callgrind)");
            match callgrind::per_request() {
                Ok(n) => println!(
                    "ufork-wsgi-like: {:.0} instructions, {:.1} allocations (malloc, calloc, realloc calls)",
                    n.instructions, n.allocations
                ),
                Err(reason) => println!("ufork-wsgi-like: skipped ({reason})"),
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    procs::reap_orphans();
    result
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// Runs wrk at each of `connections` against a freshly started `spec`;
/// for a pre-forked server, also how the first run's connections were
/// split between its workers ("41/23").
fn rates(
    ctx: &Ctx,
    spec: &Spec,
    path: &str,
    connections: &[u32],
) -> Result<(Vec<Measure>, String), String> {
    let (peer, port) = ctx.start(spec, WORKERS, &[])?;
    ctx.warm_up(port, path)?;
    let workers = procs::children(peer.pid());
    let idle: Vec<usize> = workers.iter().map(|&w| procs::sockets(w)).collect();
    let mut split = String::new();
    let mut measures = Vec::new();
    for (i, &c) in connections.iter().enumerate() {
        let wrk = load::start(port, path, c, ctx.secs).map_err(|e| e.to_string())?;
        if i == 0 && workers.len() > 1 {
            std::thread::sleep(Duration::from_secs(ctx.secs) / 2);
            split = procs::split(&workers, &idle);
        }
        measures.push(load::finish(wrk).map_err(|e| e.to_string())?);
    }
    drop(peer);
    Ok((measures, split))
}

fn hello(ctx: &Ctx) {
    let contenders: [(&str, Spec); 9] = [
        ("ufork-wsgi-like -w 2", Spec::Rust("ufork")),
        (
            "ufork-wsgi-like -w 2 reuse_port",
            Spec::Rust("ufork-reuseport"),
        ),
        ("rust pre-fork floor -w 2", Spec::Rust("floor")),
        ("hyper 1, tokio 2 threads", Spec::Rust("hyper")),
        ("axum 0.8, tokio 2 threads", Spec::Rust("axum")),
        (
            "ufork async_tokio -w 2 (axum)",
            Spec::Example("async_tokio"),
        ),
        ("gunicorn sync -w 2", Spec::Gunicorn(&["-k", "sync"])),
        (
            "gunicorn gthread -w 2 --threads 4",
            Spec::Gunicorn(&["-k", "gthread", "--threads", "4"]),
        ),
        ("python ufork wsgiref -w 2", Spec::PythonUfork),
    ];
    let results: Vec<_> = contenders
        .iter()
        .map(|(name, spec)| (*name, rates(ctx, spec, "/", &CONNECTIONS)))
        .collect();
    println!("\nhello world");
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>10} {:>9} {:>13} {:>13} {:>9}",
        "server",
        "c64 req/s",
        "c64 p50",
        "c64 p99",
        "c256 req/s",
        "c256 p99",
        "ufork÷ req/s",
        "ufork÷ p99",
        "c64 split"
    );
    let ours = results[0].1.as_ref().ok().map(|(m, _)| m.clone());
    for (name, result) in &results {
        match result {
            Ok((m, split)) => {
                let (r, p) = match &ours {
                    Some(o) => (ratio(o[0].rps, m[0].rps), ratio(o[0].p99_ms, m[0].p99_ms)),
                    None => ("-".into(), "-".into()),
                };
                println!(
                    "{:<34} {:>10.0} {:>7.2}ms {:>7.2}ms {:>10.0} {:>7.2}ms {:>13} {:>13} {:>9}",
                    name, m[0].rps, m[0].p50_ms, m[0].p99_ms, m[1].rps, m[1].p99_ms, r, p, split
                );
            }
            Err(reason) => println!("{name:<34} skipped ({reason})"),
        }
    }
    println!(
        "(ratios at c64: ufork's req/s and p99 over the row's, p99 below 1 is better; split: the c64 connections each worker held)"
    );
}

fn cpu(ctx: &Ctx, rust_cpu: Duration) {
    let contenders: [(&str, Spec); 5] = [
        ("ufork-wsgi-like -w 2", Spec::Rust("ufork")),
        ("hyper 1, tokio 2 threads", Spec::Rust("hyper")),
        ("axum 0.8, tokio 2 threads", Spec::Rust("axum")),
        (
            "ufork async_tokio -w 2 (spins)",
            Spec::Example("async_tokio"),
        ),
        ("gunicorn sync -w 2", Spec::Gunicorn(&["-k", "sync"])),
    ];
    // The example has no SHA-256: it spins for the time the hashing takes.
    let spin = format!("/work?us={}", rust_cpu.as_micros().max(1));
    let results: Vec<_> = contenders
        .iter()
        .map(|(name, spec)| {
            let path = match spec {
                Spec::Example(_) => spin.as_str(),
                _ => "/cpu",
            };
            (*name, rates(ctx, spec, path, &CONNECTIONS[..1]))
        })
        .collect();
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>13}",
        "server", "c64 req/s", "c64 p50", "c64 p99", "ufork÷ req/s"
    );
    let ours = results[0].1.as_ref().ok().map(|(m, _)| m[0]);
    for (name, result) in &results {
        match result {
            Ok((m, _)) => println!(
                "{:<34} {:>10.0} {:>7.2}ms {:>7.2}ms {:>13}",
                name,
                m[0].rps,
                m[0].p50_ms,
                m[0].p99_ms,
                ours.map_or("-".into(), |o| ratio(o.rps, m[0].rps))
            ),
            Err(reason) => println!("{name:<34} skipped ({reason})"),
        }
    }
}

/// Sum of the PSS of a pool's processes, in MiB.
fn pool_pss_mib(pid: i32) -> f64 {
    procs::tree(pid)
        .into_iter()
        .filter_map(procs::pss_kib)
        .sum::<u64>() as f64
        / 1024.0
}

fn mem(ctx: &Ctx) {
    let env = [("UFORK_BENCH_MEM_MB", MEM_MB.to_string())];
    let run = |spec: &Spec| -> Result<(f64, f64, f64), String> {
        let (peer, port) = ctx.start(spec, MEM_WORKERS, &env)?;
        procs::wait_children(peer.pid(), MEM_WORKERS, Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        let before = pool_pss_mib(peer.pid());
        let m = load::wrk(port, "/mem", 16, ctx.secs).map_err(|e| e.to_string())?;
        let after = pool_pss_mib(peer.pid());
        drop(peer);
        Ok((before, after, m.rps))
    };
    println!(
        "\ncopy-on-write: {MEM_MB} MiB of 1 KiB chunks built before the fork, {MEM_WORKERS} workers, wrk -c16 on /mem (64 chunks read per request)"
    );
    println!(
        "{:<34} {:>14} {:>14} {:>10} {:>12}",
        "server", "PSS idle", "PSS after", "req/s", "ufork÷ PSS"
    );
    let ours = run(&Spec::Rust("ufork"));
    let theirs = run(&Spec::Gunicorn(&["-k", "sync", "--preload"]));
    for (name, result) in [
        ("ufork-wsgi-like -w 4", &ours),
        ("gunicorn sync -w 4 --preload", &theirs),
    ] {
        match result {
            Ok((before, after, rps)) => println!(
                "{:<34} {:>10.0} MiB {:>10.0} MiB {:>10.0} {:>12}",
                name,
                before,
                after,
                rps,
                ours.as_ref().map_or("-".into(), |o| ratio(o.1, *after))
            ),
            Err(reason) => println!("{name:<34} skipped ({reason})"),
        }
    }
}

fn respawn(ctx: &Ctx) {
    let run = |spec: &Spec| -> Result<(Measure, u32), String> {
        let (peer, port) = ctx.start(spec, WORKERS, &[])?;
        ctx.warm_up(port, "/")?;
        let wrk = load::start(port, "/", CONNECTIONS[0], ctx.secs).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let end = started + Duration::from_secs(ctx.secs);
        let mut next = started + KILL_EVERY;
        let mut kills = 0;
        while next < end {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            if let Some(pid) =
                procs::oldest_child(peer.pid()).and_then(rustix::process::Pid::from_raw)
            {
                if rustix::process::kill_process(pid, Signal::KILL).is_ok() {
                    kills += 1;
                }
            }
            next += KILL_EVERY;
        }
        let m = load::finish(wrk).map_err(|e| e.to_string())?;
        drop(peer);
        Ok((m, kills))
    };
    println!(
        "\nrespawn under load: SIGKILL the oldest worker every {} ms during wrk -c64 -d{}s, 2 workers",
        KILL_EVERY.as_millis(),
        ctx.secs
    );
    println!(
        "{:<34} {:>6} {:>10} {:>9} {:>8} {:>13}",
        "server", "kills", "req/s", "p99", "errors", "ufork÷ req/s"
    );
    let ours = run(&Spec::Rust("ufork"));
    let theirs = run(&Spec::Gunicorn(&["-k", "sync"]));
    for (name, result) in [
        ("ufork-wsgi-like -w 2", &ours),
        ("gunicorn sync -w 2", &theirs),
    ] {
        match result {
            Ok((m, kills)) => println!(
                "{:<34} {:>6} {:>10.0} {:>7.2}ms {:>8} {:>13}",
                name,
                kills,
                m.rps,
                m.p99_ms,
                m.errors,
                ours.as_ref().map_or("-".into(), |o| ratio(o.0.rps, m.rps))
            ),
            Err(reason) => println!("{name:<34} skipped ({reason})"),
        }
    }
}

/// Wake-ups per second and CPU ms per second of an idle pool: (workers
/// summed, arbiter).
type Idle = ((f64, f64), (f64, f64));

fn idle(ctx: &Ctx) {
    let run = |spec: &Spec| -> Result<Idle, String> {
        let (peer, _port) = ctx.start(spec, IDLE_WORKERS, &[])?;
        let pid = peer.pid();
        procs::wait_children(pid, IDLE_WORKERS, Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        // Let start-up settle (gunicorn's workers boot one by one).
        std::thread::sleep(Duration::from_secs(2));
        let sample = || {
            let workers = procs::children(pid);
            let w = workers
                .iter()
                .map(|&p| procs::switches_and_cpu(p))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            (w, procs::switches_and_cpu(pid), workers)
        };
        let (w0, a0, before) = sample();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(ctx.secs));
        let (w1, a1, after) = sample();
        let s = t.elapsed().as_secs_f64();
        drop(peer);
        if before != after {
            return Err("a worker was replaced while idle".into());
        }
        let per_s =
            |a: (u64, u64), b: (u64, u64)| ((b.0 - a.0) as f64 / s, (b.1 - a.1) as f64 / 1e6 / s);
        Ok((per_s(w0, w1), per_s(a0, a1)))
    };
    println!(
        "\nidle: {IDLE_WORKERS} workers, no requests, over {}s",
        ctx.secs
    );
    println!(
        "{:<34} {:>17} {:>18} {:>17} {:>18}",
        "server", "workers wakeups/s", "workers CPU ms/s", "arbiter wakeups/s", "arbiter CPU ms/s"
    );
    let ours = run(&Spec::Rust("ufork"));
    let theirs = run(&Spec::Gunicorn(&["-k", "sync"]));
    for (name, result) in [
        ("ufork-wsgi-like -w 16", &ours),
        ("gunicorn sync -w 16", &theirs),
    ] {
        match result {
            Ok(((ww, wc), (aw, ac))) => {
                println!("{name:<34} {ww:>17.1} {wc:>18.3} {aw:>17.1} {ac:>18.3}")
            }
            Err(reason) => println!("{name:<34} skipped ({reason})"),
        }
    }
}

/// Writes `len` bytes of `x` to `path`.
fn make_file(path: &Path, len: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let chunk = [b'x'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()
}

/// Best of three downloads of `path`: (bytes, MB/s).
fn best_download(port: u16, path: &str) -> Result<(u64, f64), String> {
    let mut best: Option<(u64, f64)> = None;
    for _ in 0..3 {
        let got = load::download(port, path).map_err(|e| e.to_string())?;
        if best.is_none_or(|b| got.1 > b.1) {
            best = Some(got);
        }
    }
    best.ok_or_else(|| "no download".into())
}

fn files(ctx: &Ctx) -> Result<(), BoxError> {
    let big = (servers::STREAM_CHUNK * servers::STREAM_CHUNKS) as u64;
    make_file(&ctx.dir.join("big"), big)?;
    make_file(&ctx.dir.join("100mb"), 100_000_000)?;
    let env = [("UFORK_BENCH_FILES", ctx.dir.display().to_string())];
    let ours = ctx.start(&Spec::Rust("ufork"), WORKERS, &env);
    let (stream, file, small) = match &ours {
        Ok((_, port)) => (
            best_download(*port, "/stream"),
            best_download(*port, "/file/big"),
            best_download(*port, "/file/100mb"),
        ),
        Err(e) => (Err(e.clone()), Err(e.clone()), Err(e.clone())),
    };
    drop(ours);
    let nginx = nginx(ctx).and_then(|(peer, port)| {
        let got = best_download(port, "/100mb");
        drop(peer);
        got
    });
    println!("\nlarge bodies, one download at a time over loopback, best of 3");
    println!("{:<40} {:>12} {:>10}", "body", "bytes", "MB/s");
    for (name, result) in [
        ("ufork: 1 GiB stream of 64 KiB chunks", &stream),
        ("ufork: the same 1 GiB as a file body", &file),
        ("ufork: 100 MB file", &small),
        ("nginx: the same 100 MB file", &nginx),
    ] {
        match result {
            Ok((bytes, rate)) => println!("{name:<40} {bytes:>12} {rate:>10.0}"),
            Err(reason) => println!("{name:<40} skipped ({reason})"),
        }
    }
    let rate = |r: &Result<(u64, f64), String>| r.as_ref().map_or(0.0, |x| x.1);
    println!(
        "stream ÷ file body: {}; ufork ÷ nginx (100 MB file): {}",
        ratio(rate(&stream), rate(&file)),
        ratio(rate(&small), rate(&nginx))
    );
    Ok(())
}

/// nginx serving the bench's directory on a free port, with its pid, logs
/// and temp paths in that directory too.
fn nginx(ctx: &Ctx) -> Result<(Peer, u16), String> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("nginx is not installed (apt-get install nginx)")?;
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let d = ctx.dir.display();
    let conf = format!(
        "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\ndaemon off;\nevents {{}}\n\
         http {{\n access_log off;\n sendfile on;\n tcp_nopush on;\n client_body_temp_path {d}/nb;\n proxy_temp_path {d}/np;\n\
         fastcgi_temp_path {d}/nf;\n uwsgi_temp_path {d}/nu;\n scgi_temp_path {d}/ns;\n\
         server {{\n  listen 127.0.0.1:{port};\n  root {d};\n }}\n}}\n"
    );
    let path = ctx.dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(ctx.dir.join("nginx.err"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let peer = Peer::spawn(command, Signal::QUIT).map_err(|e| e.to_string())?;
    // nginx has no `/` page here; wait for its port to accept.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("nginx did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((peer, port))
}
