//! `ufork upgrade`: replace a running pool's arbiter by a fresh start of the
//! binary on disk, handing over the listening sockets, and wait for the
//! outcome.

use crate::cmd::target::{self, TargetArgs};
use crate::failure::{Result, runtime};

/// Runs `ufork upgrade`: exit 0 once the new arbiter's workers are all ready
/// (the old arbiter then drains and exits); non-zero with the reason when the
/// new one could not start, and the old one keeps serving.
pub fn exec(args: &TargetArgs) -> Result<()> {
    let Some(path) = args.socket() else {
        let pidfile = args.pidfile.clone().unwrap_or_default();
        return Err(runtime(format!(
            "no control socket next to {}; `ufork upgrade` talks to the pool's control socket (start it with --daemon or --control-socket)",
            pidfile.display()
        )));
    };
    let mut client = target::connect(&path).map_err(target::nothing_to_do)?;
    println!(
        "upgrading the pool at {}: starting the binary anew, waiting for its workers…",
        path.display()
    );
    let (text, ok) = client.send("upgrade")?;
    if ok {
        print!("{text}");
        Ok(())
    } else {
        Err(runtime(text.trim().to_owned()))
    }
}
