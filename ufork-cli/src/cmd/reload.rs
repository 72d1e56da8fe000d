//! `ufork reload`: restart every worker of a running pool, one at a time, and
//! return once the roll has finished.

use crate::cmd::target::{self, Route, TargetArgs};
use crate::failure::{Result, runtime};

/// Runs `ufork reload`. Through the control socket (given, or beside the
/// pidfile, where every pool started with `--pidfile` makes one) it waits
/// until every worker was replaced by a ready one, so it fits systemd's
/// `ExecReload=`: exit 0 then, 1 with the reason when the roll failed, 3 when
/// nothing runs. Only a pool that could not make that socket (it said so in
/// its log) gets a bare SIGHUP, and the command says it cannot wait.
pub fn exec(args: &TargetArgs) -> Result<()> {
    match target::route(args).map_err(target::nothing_to_do)? {
        Route::Socket { mut client, .. } => {
            println!("restarting every worker, one at a time…");
            let (text, ok) = client.send("reload")?;
            if ok {
                print!("{text}");
                Ok(())
            } else {
                Err(runtime(format!("reload failed: {}", text.trim())))
            }
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
