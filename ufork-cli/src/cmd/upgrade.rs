//! `ufork upgrade`: replace a running pool's arbiter by a fresh start of the
//! binary on disk, handing over the listening sockets, and wait for the
//! outcome.

use std::time::{Duration, Instant};

use clap::Args;

use crate::cmd::target::{self, TargetArgs};
use crate::failure::{Result, runtime};
use crate::units::parse_seconds;

/// Flags for `ufork upgrade`.
#[derive(Debug, Args)]
#[command(after_help = "\
The pool re-executes its binary from the path it was started from, with the same
arguments, and hands the new arbiter its listening sockets (LISTEN_FDS). Once every
new worker is ready, the new arbiter takes over the pidfile and the control socket,
and the old one drains its workers and exits. If the new one fails, the old one keeps
serving and this command says why (exit 1).

Through the control socket the answer comes from the pool. With only a pidfile,
`upgrade` sends SIGUSR2 and waits for the pidfile to name a new arbiter; the reason
of a failure is then in the pool's log.")]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// With only a pidfile: how long to wait for the new arbiter.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "90", allow_negative_numbers = true)]
    pub timeout: Duration,
}

/// Runs `ufork upgrade`: exit 0 once the new arbiter's workers are all ready
/// (the old arbiter then drains and exits); non-zero with the reason when the
/// new one could not start, and the old one keeps serving.
pub fn exec(args: &UpgradeArgs) -> Result<()> {
    let Some(path) = args.target.socket() else {
        return by_signal(args);
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

/// SIGUSR2 to the pidfile's pool, then the pidfile names the new arbiter.
fn by_signal(args: &UpgradeArgs) -> Result<()> {
    let path = args.target.pidfile.clone().unwrap_or_default();
    let old = target::signal_pidfile(&path, ufork_daemon::Signal::USR2)?;
    println!("upgrading pid {old} (SIGUSR2): waiting for a new arbiter to take over the pidfile…");
    let deadline = Instant::now().checked_add(args.timeout);
    loop {
        if let Ok(ufork_daemon::Status::Running { pid }) = ufork_daemon::status(&path) {
            if pid != old {
                println!(
                    "upgraded: pid {pid} is serving; the old arbiter (pid {old}) drains and exits"
                );
                return Ok(());
            }
        }
        if ufork_daemon::wait_for_exit(old, Some(Duration::ZERO)).unwrap_or(false) {
            return Err(runtime(format!(
                "upgrade failed: pid {old} exited and no new arbiter took over {}",
                path.display()
            )));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(runtime(format!(
                "upgrade failed: no new arbiter took over {} within {}s; pid {old} still serves (its log says why)",
                path.display(),
                args.timeout.as_secs()
            )));
        }
        // Nothing to wait on but the file: look again shortly.
        std::thread::sleep(Duration::from_millis(20));
    }
}
