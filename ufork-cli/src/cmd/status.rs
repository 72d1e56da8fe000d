//! `ufork status`: the workers of a running pool; exit 3 when none runs, 4
//! when it is degraded (fewer workers ready than its target for longer than
//! the start timeout). `--json` prints the pool's `status json` document.

use clap::Args;

use crate::cmd::target::{self, Route, TargetArgs};
use crate::failure::{Result, runtime};
use crate::health;

/// Flags for `ufork status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Print the pool's state as one JSON object (schema in the README).
    #[arg(long)]
    pub json: bool,
}

/// Runs `ufork status`.
pub fn exec(args: &StatusArgs) -> Result<()> {
    let (mut client, path, arbiter) = match target::route(&args.target)? {
        Route::Socket {
            client,
            path,
            arbiter,
        } => (client, path, arbiter),
        Route::Signal { arbiter, why, .. } if args.json => {
            return Err(runtime(format!(
                "--json: {} has no control socket to ask ({why}); start the pool with --control-socket or --pidfile in a directory it may write",
                arbiter.describe()
            )));
        }
        Route::Signal { arbiter, .. } => {
            println!("running as {}", arbiter.describe());
            return Ok(());
        }
    };
    if args.json {
        let (text, ok) = client.send("status json")?;
        if !ok || !text.starts_with('{') {
            return Err(runtime(format!(
                "{}: {}",
                path.display(),
                text.trim().replace('\n', "; ")
            )));
        }
        print!("{text}");
        return health::exit_status(&text);
    }
    let (text, ok) = client.send("status")?;
    // Anything but the table (the pool refused us, say) is an error.
    let table = ok && text.lines().nth(1).is_some_and(|l| l.contains("SLOT"));
    if !table {
        return Err(runtime(format!(
            "{}: {}",
            path.display(),
            text.trim().replace('\n', "; ")
        )));
    }
    print!("{text}");
    // The table shows the pool's own pids; say which process that is here.
    if let Some(arbiter) = arbiter.filter(|a| a.pid != a.file_pid) {
        println!(
            "(the pool runs in its own pid namespace: its arbiter, pid {} there, is pid {} here)",
            arbiter.file_pid, arbiter.pid
        );
    }
    let (json, _) = client.send("status json")?;
    health::exit_status(&json)
}
