//! `ufork stop`: stop a running pool gracefully and wait until it has exited.

use std::time::Duration;

use clap::Args;

use crate::cmd::target::{self, Route, TargetArgs};
use crate::control::Client;
use crate::failure::{Result, runtime};
use crate::units::parse_seconds;

/// Flags for `ufork stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// How long to wait for the pool to exit.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "60", allow_negative_numbers = true)]
    pub timeout: Duration,
}

/// Removes the pidfile a stopped pool could not: one that dropped its
/// privileges (`--user`) and whose pidfile lives in a directory only root may
/// write. The file is locked first, so a pool started meanwhile keeps its
/// own (and the file is removed while locked, as the pool itself does).
fn remove_stale(path: &std::path::Path) {
    if path.exists() {
        drop(ufork_daemon::Pidfile::create(path));
    }
}

/// Runs `ufork stop`. With a pidfile whose pid is verified (see
/// [`target::route`]) it sends SIGTERM and waits for that process to exit;
/// otherwise it asks the control socket and waits for the pool to close it.
pub fn exec(args: &StopArgs) -> Result<()> {
    let route = target::route(&args.target).map_err(target::nothing_to_do)?;
    let arbiter = match route {
        Route::Signal { arbiter, .. }
        | Route::Socket {
            arbiter: Some(arbiter),
            ..
        } => arbiter,
        Route::Socket {
            mut client,
            arbiter: None,
            ..
        } => return by_socket(&mut client, args.timeout),
    };
    target::signal(&arbiter, ufork_daemon::Signal::TERM)?;
    println!("stopping {}…", arbiter.describe());
    match ufork_daemon::wait_for_exit(arbiter.pid, Some(args.timeout)) {
        Ok(true) => {
            if let Some(path) = &args.target.pidfile {
                remove_stale(path);
            }
            println!("stopped");
            Ok(())
        }
        Ok(false) => Err(runtime(format!(
            "{} did not stop within {}s; try again with a longer --timeout",
            arbiter.describe(),
            args.timeout.as_secs()
        ))),
        Err(e) => Err(runtime(e.report())),
    }
}

/// `stop` through the control socket: done when the pool closes it.
fn by_socket(client: &mut Client, timeout: Duration) -> Result<()> {
    let (text, ok) = client.send("stop")?;
    if !ok {
        return Err(runtime(text.trim().to_owned()));
    }
    print!("{text}");
    if client.wait_closed(timeout) {
        println!("stopped");
        Ok(())
    } else {
        Err(runtime(format!(
            "the pool did not stop within {}s; try again with a longer --timeout",
            timeout.as_secs()
        )))
    }
}
