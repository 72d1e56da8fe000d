//! `cargo xtask bench ops`: errors and latency while the pool is operated
//! under load: 4 rolling restarts (HUP), an in-place upgrade (`ufork
//! upgrade`; gunicorn: USR2, then TERM to the old master) and a graceful
//! stop (TERM), for `ufork serve` (the binary named by `UFORK_BENCH_UFORK`)
//! against gunicorn sync and gthread, 2 workers each, wrk -c32. A row whose
//! feature the `ufork` binary lacks prints "not available".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::load::{self, Measure};
use crate::procs::{self, Peer};
use crate::{Ctx, Spec};

const CONNECTIONS: u32 = 32;
const CLOSE: &str = "Connection: close";

/// A server under operation: its arbiter's pid and its port.
struct Running {
    peer: Peer,
    port: u16,
    /// ufork's pidfile: after an upgrade it names the new arbiter, which
    /// is stopped with the old one.
    pidfile: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(pid) = self
            .pidfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| text.trim().parse::<i32>().ok())
            .filter(|&pid| pid != self.peer.pid())
        else {
            return;
        };
        // The new arbiter, reparented to this bench (a subreaper).
        signal(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
            procs::reap_exited();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn signal(pid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// `ufork serve -w 2` on a free port, with a pidfile and a control socket
/// in the bench's directory (what `ufork upgrade` talks to).
fn start_ufork(ctx: &Ctx, binary: &Path) -> Result<Running, String> {
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let pidfile = ctx.dir.join(format!("ufork-{port}.pid"));
    let mut command = Command::new(binary);
    command
        .args(["serve", "-w", "2", "--no-prompt", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--control-socket")
        .arg(ctx.dir.join(format!("ufork-{port}.sock")))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let peer = Peer::spawn(command, Signal::TERM).map_err(|e| format!("cannot start: {e}"))?;
    procs::wait_ready(port, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    Ok(Running {
        peer,
        port,
        pidfile: Some(pidfile),
    })
}

fn start(ctx: &Ctx, which: &Server<'_>) -> Result<Running, String> {
    let running = match which {
        Server::Ufork(binary) => start_ufork(ctx, binary)?,
        Server::Gunicorn(_, spec) => {
            let (peer, port) = ctx.start(spec, 2, &[])?;
            Running {
                peer,
                port,
                pidfile: None,
            }
        }
    };
    procs::wait_children(running.peer.pid(), 2, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(running)
}

enum Server<'a> {
    Ufork(&'a Path),
    Gunicorn(&'static str, Spec),
}

impl Server<'_> {
    fn name(&self) -> &'static str {
        match self {
            Server::Ufork(_) => "ufork serve -w 2",
            Server::Gunicorn(name, _) => name,
        }
    }
}

/// Runs wrk for `secs` while `act` runs on this thread (given the start).
fn under_load(
    running: &Running,
    header: Option<&str>,
    secs: u64,
    act: impl FnOnce(Instant),
) -> Result<Measure, String> {
    let wrk = load::start_with(running.port, "/", CONNECTIONS, secs, header)
        .map_err(|e| e.to_string())?;
    act(Instant::now());
    load::finish(wrk).map_err(|e| e.to_string())
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// 4 HUPs spread over the run.
fn hups(ctx: &Ctx, which: &Server<'_>, header: Option<&str>) -> Result<Measure, String> {
    let running = start(ctx, which)?;
    let pid = running.peer.pid();
    let step = Duration::from_secs(ctx.secs) / 5;
    under_load(&running, header, ctx.secs, |t0| {
        for i in 1..=4 {
            sleep_until(t0 + step * i);
            signal(pid, Signal::HUP);
        }
    })
}

/// Steady state: no operation.
fn steady(ctx: &Ctx, which: &Server<'_>) -> Result<Measure, String> {
    let running = start(ctx, which)?;
    under_load(&running, None, ctx.secs, |_| {})
}

/// The new master gunicorn forks on USR2: the old master's child that has
/// children of its own.
fn new_master(old: i32) -> Option<i32> {
    procs::children(old)
        .into_iter()
        .find(|&c| !procs::children(c).is_empty())
}

/// An in-place upgrade a third into the run: `ufork upgrade --pidfile`
/// (which returns once the new arbiter serves); for gunicorn, USR2, then
/// TERM to the old master once the new one has its workers.
fn upgrade(ctx: &Ctx, which: &Server<'_>) -> Result<Measure, String> {
    if let Server::Ufork(binary) = which {
        let help = Command::new(binary)
            .arg("--help")
            .output()
            .map_err(|e| e.to_string())?;
        if !String::from_utf8_lossy(&help.stdout).contains("upgrade") {
            return Err("not available (this ufork has no `upgrade`)".into());
        }
    }
    let running = start(ctx, which)?;
    let pid = running.peer.pid();
    let mut outcome = Ok(());
    let measure = under_load(&running, None, ctx.secs, |t0| {
        sleep_until(t0 + Duration::from_secs(ctx.secs) / 3);
        match which {
            Server::Ufork(binary) => {
                let pidfile = running.pidfile.as_deref().unwrap_or(Path::new("-"));
                let status = Command::new(binary)
                    .arg("upgrade")
                    .arg("--pidfile")
                    .arg(pidfile)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if !status.as_ref().is_ok_and(|s| s.success()) {
                    outcome = Err(format!("ufork upgrade failed: {status:?}"));
                }
            }
            Server::Gunicorn(..) => {
                signal(pid, Signal::USR2);
                let deadline = Instant::now() + Duration::from_secs(ctx.secs) / 2;
                while Instant::now() < deadline {
                    if new_master(pid).is_some_and(|m| procs::children(m).len() >= 2) {
                        signal(pid, Signal::TERM);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                outcome = Err("gunicorn's new master did not start its workers".into());
            }
        }
    });
    outcome.and(measure)
}

/// A graceful stop half-way through `Connection: close` load: new
/// connections after it should be refused (connect errors), not reset.
fn drain(ctx: &Ctx, which: &Server<'_>) -> Result<Measure, String> {
    let running = start(ctx, which)?;
    let pid = running.peer.pid();
    under_load(&running, Some(CLOSE), ctx.secs, |t0| {
        sleep_until(t0 + Duration::from_secs(ctx.secs) / 2);
        signal(pid, Signal::TERM);
    })
}

fn cell(result: &Result<Measure, String>) -> String {
    match result {
        Ok(m) => format!("{:>6} {:>8.2}ms", m.errors, m.p99_ms),
        Err(e) if e.starts_with("not available") => format!("{:>16}", "not available"),
        Err(_) => format!("{:>16}", "failed"),
    }
}

pub fn run(ctx: &Ctx) {
    let binary = std::env::var_os("UFORK_BENCH_UFORK").map(std::path::PathBuf::from);
    let mut servers = Vec::new();
    match &binary {
        Some(b) => servers.push(Server::Ufork(b)),
        None => println!("ufork serve: skipped (UFORK_BENCH_UFORK is not set)"),
    }
    servers.push(Server::Gunicorn(
        "gunicorn sync -w 2",
        Spec::Gunicorn(&["-k", "sync"]),
    ));
    servers.push(Server::Gunicorn(
        "gunicorn gthread -w 2 --threads 4",
        Spec::Gunicorn(&["-k", "gthread", "--threads", "4"]),
    ));
    println!(
        "\noperations under load, wrk -t2 -c{CONNECTIONS} -d{}s, 2 workers: errors and p99 (errors are wrk's socket errors and non-2xx answers)",
        ctx.secs
    );
    println!(
        "{:<34} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "server", "steady", "4 HUPs", "4 HUPs, close", "USR2 upgrade", "TERM, close"
    );
    let mut notes = Vec::new();
    for server in &servers {
        let results = [
            steady(ctx, server),
            hups(ctx, server, None),
            hups(ctx, server, Some(CLOSE)),
            upgrade(ctx, server),
            drain(ctx, server),
        ];
        let cells: Vec<String> = results.iter().map(cell).collect();
        println!("{:<34} {}", server.name(), cells.join(" "));
        for (label, result) in ["steady", "HUPs", "HUPs close", "USR2", "TERM"]
            .iter()
            .zip(&results)
        {
            match result {
                Err(e) if !e.starts_with("not available") => {
                    notes.push(format!("{} {label}: {e}", server.name()));
                }
                _ => {}
            }
        }
    }
    println!(
        "  (TERM, close: the errors are new connections after the stop, refused or reset: wrk cannot tell which)"
    );
    for note in notes {
        println!("  {note}");
    }
    procs::reap_orphans();
}
