//! `ufork reload`: restart every worker of a running pool, one at a time, and
//! return once the roll has finished.

use crate::cmd::target::{self, TargetArgs};
use crate::failure::{Result, runtime};

/// Runs `ufork reload`. Through the control socket (given, or beside the
/// pidfile) it waits until every worker was replaced by a ready one, so it
/// fits systemd's `ExecReload=`; with only a pidfile it sends SIGHUP and
/// returns.
pub fn exec(args: &TargetArgs) -> Result<()> {
    let Some(path) = args.socket() else {
        let pidfile = args.pidfile.clone().unwrap_or_default();
        let pid = target::signal_pidfile(&pidfile, ufork_daemon::Signal::HUP)?;
        println!(
            "restarting every worker of pid {pid}, one at a time (SIGHUP; without a control socket, reload cannot wait for the roll)"
        );
        return Ok(());
    };
    let mut client = target::connect(&path).map_err(target::nothing_to_do)?;
    println!("restarting every worker, one at a time…");
    let (text, ok) = client.send("reload")?;
    if ok {
        print!("{text}");
        Ok(())
    } else {
        Err(runtime(format!("reload failed: {}", text.trim())))
    }
}
