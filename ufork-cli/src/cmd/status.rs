//! `ufork status`: the workers of a running pool; exit 3 when none runs, 4
//! when it is degraded (fewer workers ready than its target for longer than
//! the start timeout). `--json` prints the pool's `status json` document.

use clap::Args;

use crate::cmd::target::{self, TargetArgs};
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
    let json = args.json;
    let args = &args.target;
    let pid = args
        .pidfile
        .as_deref()
        .map(target::running_pid)
        .transpose()?;
    match args.socket() {
        Some(path) if json => {
            let mut client = target::connect(&path)?;
            let (text, ok) = client.send("status json")?;
            if !ok || !text.starts_with('{') {
                return Err(runtime(format!(
                    "{}: {}",
                    path.display(),
                    text.trim().replace('\n', "; ")
                )));
            }
            print!("{text}");
            health::exit_status(&text)
        }
        Some(path) => {
            let mut client = target::connect(&path)?;
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
            let (json, _) = client.send("status json")?;
            health::exit_status(&json)
        }
        None if json => Err(runtime(format!(
            "--json: pid {} has no control socket to ask; start the pool with --control-socket (a daemon has one next to its pidfile)",
            pid.unwrap_or_default()
        ))),
        None => {
            println!("running as pid {}", pid.unwrap_or_default());
            Ok(())
        }
    }
}
