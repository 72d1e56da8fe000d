//! Test helper for ufork-core's integration tests (not a user tool): runs an
//! arbiter in its own process so a test can SIGKILL or SIGSTOP it.
//!
//! Modes (first argument):
//! - `orphan N`: N workers print `worker PID` and wait to be stopped.
//! - `subreaper`: becomes a child subreaper; worker generation 0 leaves an
//!   orphaned grandchild behind and exits, generation 1 waits to be stopped.
//! - `orphans N [subreaper]`: one worker in a process group of its own;
//!   generations 0..N each leave an exited, unreaped child (`orphan PID`) and
//!   recycle; generation N prints `worker PID` and waits to be stopped.
//! - `env`: 1 worker prints `env NAME=VALUE` (or `env NAME unset`) for the
//!   sd_notify variables, then `worker PID`, and waits to be stopped.
//! - `stall`: 2 workers heartbeat every 20 ms with a 1 s heartbeat timeout and
//!   print `beat SLOT N` every 5 beats.
//!
//! Every line goes out with one `write(2)`, and on stop the exit history is
//! printed as `exit SLOT GENERATION REASON` lines, then `children N` (the
//! number of unreaped children left) and `done`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

use ufork_core::{Arbiter, Worker};

fn say(line: &str) {
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(b'\n');
    let _ = rustix::io::write(rustix::stdio::stdout(), &bytes);
}

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        // Never panic on a closed terminal (eprintln! would).
        let _ = writeln!(
            std::io::stderr(),
            "[testbin {}] {}",
            record.level(),
            record.args()
        );
    }
    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

fn main() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let result = match mode {
        "orphan" => {
            let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(2);
            Arbiter::builder().workers(n).build().and_then(|a| {
                a.run(|w: &mut Worker| -> Result<(), String> {
                    say(&format!("worker {}", w.pid()));
                    w.wait_for_stop(None);
                    Ok(())
                })
            })
        }
        "subreaper" => {
            rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                .expect("become a subreaper");
            Arbiter::builder()
                .workers(1)
                .backoff(Duration::ZERO, Duration::ZERO, Duration::ZERO)
                .build()
                .and_then(|a| {
                    a.run(|w: &mut Worker| -> Result<(), String> {
                        if w.generation() == 0 {
                            let child = std::process::Command::new("cat")
                                .stdin(std::process::Stdio::piped())
                                .stdout(std::process::Stdio::null())
                                .spawn()
                                .map_err(|e| e.to_string())?;
                            say(&format!("grandchild {}", child.id()));
                            // Returning closes our end of cat's stdin: cat
                            // exits after us, as an orphan.
                            std::mem::forget(child);
                            return Ok(());
                        }
                        say(&format!("worker {}", w.pid()));
                        w.wait_for_stop(None);
                        Ok(())
                    })
                })
        }
        "orphans" => {
            let generations: u32 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(3);
            if args.get(2).map(String::as_str) == Some("subreaper") {
                rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                    .expect("become a subreaper");
            }
            Arbiter::builder()
                .workers(1)
                .process_group(true)
                .build()
                .and_then(|a| {
                    a.run(move |w: &mut Worker| -> Result<(), String> {
                        if w.generation() < generations {
                            leave_an_orphan()?;
                            w.recycle();
                            return Ok(());
                        }
                        say(&format!("worker {}", w.pid()));
                        w.wait_for_stop(None);
                        Ok(())
                    })
                })
        }
        "env" => Arbiter::builder().workers(1).build().and_then(|a| {
            a.run(|w: &mut Worker| -> Result<(), String> {
                for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
                    match std::env::var(name) {
                        Ok(value) => say(&format!("env {name}={value}")),
                        Err(_) => say(&format!("env {name} unset")),
                    }
                }
                say(&format!("worker {}", w.pid()));
                w.wait_for_stop(None);
                Ok(())
            })
        }),
        "stall" => Arbiter::builder()
            .workers(2)
            .heartbeat_timeout(Duration::from_secs(1))
            .build()
            .and_then(|a| {
                a.run(|w: &mut Worker| -> Result<(), String> {
                    say(&format!("worker {}", w.pid()));
                    let mut n = 0u64;
                    while !w.wait_for_stop(Some(Duration::from_millis(20))) {
                        w.heartbeat();
                        n += 1;
                        if n % 5 == 0 {
                            say(&format!("beat {} {n}", w.slot()));
                        }
                    }
                    Ok(())
                })
            }),
        other => {
            eprintln!("ufork-core-testbin: unknown mode {other:?}");
            std::process::exit(2);
        }
    };
    match result {
        Ok(outcome) => {
            for r in &outcome.history {
                say(&format!(
                    "exit {} {} {}",
                    r.slot,
                    r.generation,
                    r.reason.as_str()
                ));
            }
            say(&format!("children {}", unreaped_children()));
            say("done");
            let _ = std::io::stdout().flush();
        }
        Err(e) => {
            eprintln!("ufork-core-testbin: {e}");
            std::process::exit(1);
        }
    }
}

/// Starts a child (in the worker's process group), waits until it has
/// exited without reaping it, and forgets it: when the worker exits, the
/// zombie is reparented to the arbiter (PID 1 or subreaper), which must reap
/// it although it is in another process group.
fn leave_an_orphan() -> Result<(), String> {
    use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
    let child = std::process::Command::new("true")
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = Pid::from_raw(child.id() as i32).ok_or("no pid")?;
    loop {
        match waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.to_string()),
            Ok(_) => break,
        }
    }
    say(&format!("orphan {}", child.id()));
    std::mem::forget(child);
    Ok(())
}

/// Children of this process that still exist (zombies included).
fn unreaped_children() -> usize {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                        stat.rsplit(')')
                            .next()
                            .and_then(|rest| rest.split_whitespace().nth(1))
                            == Some(&me.to_string())
                    })
                })
                .count()
        })
        .unwrap_or(0)
}
