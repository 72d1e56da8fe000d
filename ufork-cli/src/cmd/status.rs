//! `ufork status`: the workers of a running pool; exit 3 when none runs.

use crate::cmd::target::{self, TargetArgs};
use crate::failure::{Result, runtime};

/// Runs `ufork status`.
pub fn exec(args: &TargetArgs) -> Result<()> {
    let pid = args
        .pidfile
        .as_deref()
        .map(target::running_pid)
        .transpose()?;
    match args.socket() {
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
        }
        None => println!("running as pid {}", pid.unwrap_or_default()),
    }
    Ok(())
}
