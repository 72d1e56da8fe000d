//! `ufork reload`: restart every worker of a running pool, one at a time.

use crate::cmd::target::{self, TargetArgs};
use crate::failure::{Result, runtime};

/// Runs `ufork reload`.
pub fn exec(args: &TargetArgs) -> Result<()> {
    if let Some(path) = &args.pidfile {
        let pid = target::signal_pidfile(path, ufork_daemon::Signal::HUP)?;
        println!("restarting every worker of pid {pid}, one at a time");
        return Ok(());
    }
    let path = args.socket().unwrap_or_default();
    let mut client = target::connect(&path).map_err(target::nothing_to_do)?;
    let (text, ok) = client.send("restart all")?;
    print!("{text}");
    if ok {
        Ok(())
    } else {
        Err(runtime("reload refused"))
    }
}
