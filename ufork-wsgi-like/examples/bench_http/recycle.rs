//! `recycle` row: `ufork serve -w 2 --max-requests 2000` against the same
//! server without it, wrk -c64, same run. A recycled worker is a planned
//! exit, replaced at once (never crash-loop backoff), so recycling every 2000
//! requests should keep at least 90% of the throughput. The `ufork` binary
//! is the one named by `UFORK_BENCH_UFORK` (`cargo xtask bench http` builds
//! it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::process::Signal;

use crate::Ctx;
use crate::load::{self, Measure};
use crate::procs::{self, Peer};

const CONNECTIONS: u32 = 64;
const MAX_REQUESTS: &str = "2000";

/// Starts `ufork serve -w 2` with `extra` flags, warms it up and measures.
fn measure(ctx: &Ctx, binary: &Path, extra: &[&str]) -> Result<Measure, String> {
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    command
        .args(["serve", "-w", "2", "--no-prompt", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let peer = Peer::spawn(command, Signal::TERM).map_err(|e| format!("cannot start: {e}"))?;
    procs::wait_ready(port, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    procs::wait_children(peer.pid(), 2, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    ctx.warm_up(port, "/")?;
    let m = load::wrk(port, "/", CONNECTIONS, ctx.secs).map_err(|e| e.to_string())?;
    drop(peer);
    Ok(m)
}

pub fn run(ctx: &Ctx) {
    let Some(binary) = std::env::var_os("UFORK_BENCH_UFORK").map(std::path::PathBuf::from) else {
        println!("\nrecycling: skipped (UFORK_BENCH_UFORK is not set)");
        return;
    };
    println!(
        "\nrecycling: ufork serve -w 2 with and without --max-requests {MAX_REQUESTS}, wrk -t2 -c{CONNECTIONS} -d{}s, same run (goal: at least 0.90x)",
        ctx.secs
    );
    println!(
        "{:<42} {:>10} {:>9} {:>8} {:>10} {:>12}",
        "server", "req/s", "p99", "errors", "recycles", "÷ without"
    );
    let without = measure(ctx, &binary, &[]);
    let with = measure(ctx, &binary, &["--max-requests", MAX_REQUESTS]);
    let base = without.as_ref().map(|m| m.rps).ok();
    let rows = [
        ("ufork serve -w 2", &without, false),
        ("ufork serve -w 2 --max-requests 2000", &with, true),
    ];
    for (name, result, recycles) in rows {
        match result {
            Ok(m) => {
                // Each worker leaves after about 2000 requests (plus up to
                // a tenth of jitter).
                let recycled = if recycles {
                    format!("~{:.0}", m.rps * ctx.secs as f64 / 2100.0)
                } else {
                    "0".to_owned()
                };
                let ratio = base.map_or("-".to_owned(), |b| crate::ratio(m.rps, b));
                println!(
                    "{:<42} {:>10.0} {:>7.2}ms {:>8} {:>10} {:>12}",
                    name, m.rps, m.p99_ms, m.errors, recycled, ratio
                );
            }
            Err(reason) => println!("{name:<42} skipped ({reason})"),
        }
    }
}
