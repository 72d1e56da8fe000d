//! `ufork stop`: stop a running pool gracefully and wait until it has exited.

use std::time::Duration;

use clap::Args;

use crate::cmd::target::{self, TargetArgs};
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

/// Runs `ufork stop`.
pub fn exec(args: &StopArgs) -> Result<()> {
    if let Some(path) = &args.target.pidfile {
        let pid = target::signal_pidfile(path, ufork_daemon::Signal::TERM)?;
        println!("stopping pid {pid}…");
        return match ufork_daemon::wait_for_exit(pid, Some(args.timeout)) {
            Ok(true) => {
                remove_stale(path);
                println!("stopped");
                Ok(())
            }
            Ok(false) => Err(runtime(format!(
                "pid {pid} did not stop within {}s; try again with a longer --timeout",
                args.timeout.as_secs()
            ))),
            Err(e) => Err(runtime(e.report())),
        };
    }
    let path = args.target.socket().unwrap_or_default();
    let mut client = target::connect(&path).map_err(target::nothing_to_do)?;
    let (text, ok) = client.send("stop")?;
    if !ok {
        return Err(runtime(text.trim().to_owned()));
    }
    print!("{text}");
    if client.wait_closed(args.timeout) {
        println!("stopped");
        Ok(())
    } else {
        Err(runtime(format!(
            "the pool did not stop within {}s; try again with a longer --timeout",
            args.timeout.as_secs()
        )))
    }
}
