//! The console command language, shared by the `ufork>>` prompt, the control
//! socket and `ufork ctl`.

use std::fmt::Write as _;

use ufork_core::{Handle, Snapshot};

use crate::units::{short_duration, short_size};

/// What running a command produced.
#[derive(Debug)]
pub struct Reply {
    /// Text to show, lines ending in newlines (may be empty).
    pub text: String,
    /// Whether the command succeeded.
    pub ok: bool,
}

impl Reply {
    fn ok(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ok: true,
        }
    }

    fn error(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ok: false,
        }
    }
}

/// The help text of the console.
pub const HELP: &str = "\
commands:
  status              table of workers: slot, pid, state, uptime, last beat, requests, restarts, RSS
  status json         the same and more as one JSON object (schema in the README)
  workers N           run N workers
  workers + | -       one worker more | one worker less
  restart [SLOT|all]  restart one worker, or all of them one at a time (default all)
  kill SLOT           kill a worker with SIGKILL (it is replaced)
  history             recent worker exits and why
  reopen              reopen the log file
  stop [now]          stop every worker gracefully (or at once) and exit
  help                this text
";

/// Runs one command line against the pool.
pub fn execute(line: &str, handle: &Handle) -> Reply {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Reply::ok(""),
        ["help" | "?"] => Reply::ok(HELP),
        ["status"] => Reply::ok(status_table(&handle.snapshot())),
        ["status", "json"] => Reply::ok(crate::status_json::render(&crate::health::view(
            handle.snapshot(),
        ))),
        ["history"] => Reply::ok(history(&handle.snapshot())),
        ["workers"] => {
            let snap = handle.snapshot();
            Reply::ok(format!(
                "{} ({} running)\n",
                workers(snap.target),
                snap.workers.len()
            ))
        }
        ["workers", "+"] => {
            handle.add_worker();
            Reply::ok(format!("workers: {}\n", handle.snapshot().target + 1))
        }
        ["workers", "-"] => {
            let target = handle.snapshot().target;
            if target <= 1 {
                return Reply::error("cannot go below one worker; use `stop` to stop\n");
            }
            handle.remove_worker();
            Reply::ok(format!("workers: {}\n", target - 1))
        }
        ["workers", n] => match n.parse::<usize>() {
            Ok(0) => Reply::error("at least one worker; use `stop` to stop\n"),
            Ok(n) => match handle.set_workers(n) {
                Ok(()) => Reply::ok(format!("workers: {n}\n")),
                // The core's message names a library API; say it for people.
                Err(ufork_core::Error::OverCapacity { capacity, .. }) => Reply::error(format!(
                    "at most {capacity} workers (the pool's capacity)\n"
                )),
                Err(e) => Reply::error(format!("{e}\n")),
            },
            Err(_) => Reply::error(format!(
                "`{}` is not a number of workers; try `workers 4`, `workers +` or `workers -`\n",
                printable(n)
            )),
        },
        ["restart"] | ["restart", "all"] => {
            handle.restart_all();
            Reply::ok("restarting every worker, one at a time\n")
        }
        ["restart", slot] => match live_slot(handle, slot) {
            Ok(slot) => {
                handle.restart(slot);
                Reply::ok(format!("restarting worker {slot}\n"))
            }
            Err(e) => Reply::error(e),
        },
        ["kill", slot] => match live_slot(handle, slot) {
            Ok(slot) => {
                handle.kill(slot);
                Reply::ok(format!(
                    "killing worker {slot} (SIGKILL); it will be replaced\n"
                ))
            }
            Err(e) => Reply::error(e),
        },
        ["kill"] => Reply::error("which worker? `kill SLOT` (see `status` for slots)\n"),
        ["reopen"] => {
            handle.reopen_logs();
            Reply::ok("reopening logs\n")
        }
        ["stop"] => {
            let n = handle.snapshot().workers.len();
            handle.stop();
            Reply::ok(format!("stopping {} gracefully\n", workers(n)))
        }
        ["stop", "now"] => {
            handle.stop_now();
            Reply::ok("stopping every worker now\n")
        }
        ["stop", other] => Reply::error(format!(
            "`stop` takes `now` or nothing, not `{}`\n",
            printable(other)
        )),
        [known, ..] if usage(known).is_some() => Reply::error(format!(
            "too many arguments: {}\n",
            usage(known).unwrap_or_default()
        )),
        [other, ..] => Reply::error(format!(
            "unknown command `{}`; type `help` for the commands\n",
            printable(other)
        )),
    }
}

/// How a command is used, for an error about its arguments.
fn usage(command: &str) -> Option<&'static str> {
    Some(match command {
        "help" | "?" => "help",
        "status" => "status [json]",
        "history" => "history",
        "reopen" => "reopen",
        "workers" => "workers N | workers + | workers -",
        "restart" => "restart [SLOT|all]",
        "kill" => "kill SLOT",
        "stop" => "stop [now]",
        _ => return None,
    })
}

/// "1 worker", "3 workers".
fn workers(n: usize) -> String {
    format!("{n} worker{}", if n == 1 { "" } else { "s" })
}

fn live_slot(handle: &Handle, word: &str) -> Result<usize, String> {
    let slot: usize = word.parse().map_err(|_| {
        format!(
            "`{}` is not a slot number (see `status`)\n",
            printable(word)
        )
    })?;
    if handle.snapshot().workers.iter().any(|w| w.slot == slot) {
        Ok(slot)
    } else {
        Err(format!("no worker in slot {slot} (see `status`)\n"))
    }
}

/// The status table.
pub fn status_table(snap: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (target {}), {} ready{}; arbiter pid {}",
        workers(snap.workers.len()),
        snap.target,
        snap.ready_count(),
        if snap.stopping { ", stopping" } else { "" },
        std::process::id()
    );
    let _ = writeln!(
        out,
        "{:>4}  {:>7}  {:<8}  {:>7}  {:>6}  {:>8}  {:>8}  {:>7}  ACTIVITY",
        "SLOT", "PID", "STATE", "UPTIME", "BEAT", "REQUESTS", "RESTARTS", "RSS"
    );
    for w in &snap.workers {
        let _ = writeln!(
            out,
            "{:>4}  {:>7}  {:<8}  {:>7}  {:>6}  {:>8}  {:>8}  {:>7}  {}",
            w.slot,
            w.pid,
            w.state.as_str(),
            short_duration(w.uptime),
            w.last_beat_age
                .map(short_duration)
                .unwrap_or_else(|| "-".into()),
            w.requests,
            w.restarts,
            w.rss.map(short_size).unwrap_or_else(|| "-".into()),
            printable_max(&w.activity, ACTIVITY_WIDTH)
        );
    }
    out
}

fn history(snap: &Snapshot) -> String {
    if snap.history.is_empty() {
        return "no worker has exited yet\n".to_owned();
    }
    let mut out = String::new();
    for record in &snap.history {
        let _ = writeln!(
            out,
            "{}  {}",
            crate::logger::timestamp(record.at).replace('T', " "),
            sanitize(&record.to_string())
        );
    }
    out
}

/// `text` with every control character (escape sequences, line breaks, NUL)
/// replaced by `?`, and cut to `max` characters with `…`: for text from a
/// worker or a client on its way to a terminal.
pub fn printable_max(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// `text` with every control character replaced by `?`, whatever its length.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The widest ACTIVITY shown in the status table.
const ACTIVITY_WIDTH: usize = 80;

/// [`printable_max`] with room for a short echo of a command.
pub fn printable(text: &str) -> String {
    printable_max(text, 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_for_the_terminal_has_no_control_characters() {
        assert_eq!(printable("\x1b[2Jhi\0\n"), "?[2Jhi??");
        let long = "x".repeat(61);
        assert_eq!(printable(&long), format!("{}…", "x".repeat(60)));
        assert_eq!(printable(&long[..60]), "x".repeat(60));
        assert_eq!(sanitize("a\tb\x07"), "a?b?");
    }
}
