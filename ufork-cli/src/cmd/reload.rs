//! `ufork reload`: restart every worker of a running pool, one at a time, and
//! return once the roll has finished.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cmd::target::{self, Route, TargetArgs};
use crate::failure::{Result, runtime};
use crate::units::parse_seconds;

/// Flags for `ufork reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Wait at most this long for the roll [default: until it ends; the pool
    /// ends it within its --start-timeout per worker].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub timeout: Option<Duration>,
}

/// Runs `ufork reload`. Through the control socket (given, or beside the
/// pidfile, where every pool started with `--pidfile` makes one) it waits
/// until every worker was replaced by a ready one, so it fits systemd's
/// `ExecReload=`: exit 0 then, 1 with the reason when the roll failed, 3 when
/// nothing runs. Only a pool that could not make that socket (it said so in
/// its log) gets a bare SIGHUP, and the command says it cannot wait.
pub fn exec(args: &ReloadArgs) -> Result<()> {
    // A deadline past what `Instant` holds is no deadline.
    let deadline = args.timeout.and_then(|t| Instant::now().checked_add(t));
    match target::route(&args.target).map_err(target::nothing_to_do)? {
        Route::Socket { mut client, .. } => {
            println!("restarting every worker, one at a time…");
            // Each replaced worker is printed as the pool tells it.
            let Some((end, ok)) = client.send_streaming("reload", deadline, |text| {
                print!("{text}");
                let _ = std::io::stdout().flush();
            })?
            else {
                return Err(runtime(format!(
                    "reload: the roll has not finished within {}s (--timeout); it goes on, and the pool's log shows how it ends",
                    args.timeout.unwrap_or_default().as_secs_f64()
                )));
            };
            if ok {
                print!("{end}");
                return Ok(());
            }
            // The reason is the last line; what came before it is progress.
            let end = end.trim_end();
            let (progress, reason) = end.rsplit_once('\n').unwrap_or(("", end));
            if !progress.is_empty() {
                println!("{progress}");
            }
            Err(runtime(format!("reload failed: {reason}")))
        }
        Route::Signal { arbiter, why, .. } => {
            target::signal(&arbiter, ufork_daemon::Signal::HUP)?;
            println!(
                "restarting every worker of {}, one at a time (SIGHUP)",
                arbiter.describe()
            );
            eprintln!(
                "ufork: warning: not waiting for the roll to finish: {why}; the pool's log shows its progress"
            );
            Ok(())
        }
    }
}
