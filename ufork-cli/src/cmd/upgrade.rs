//! `ufork upgrade`: replace a running pool's arbiter by a fresh start of the
//! binary on disk, handing over the listening sockets, and wait for the
//! outcome.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cmd::target::{self, Route, TargetArgs};
use crate::failure::{Result, runtime};
use crate::holder::Arbiter;
use crate::units::parse_seconds;

/// Flags for `ufork upgrade`.
#[derive(Debug, Args)]
#[command(after_help = "\
The pool re-executes its binary from the path it was started from, with the same
arguments, and hands the new arbiter its listening sockets (LISTEN_FDS). Once every
new worker is ready, the new arbiter takes over the pidfile and the control socket,
and the old one drains its workers and exits. If the new one fails, the old one keeps
serving and this command says why (exit 1).

Through the control socket (given, or beside the pidfile, where every pool started
with --pidfile makes one) the answer comes from the pool. A pool without one gets
SIGUSR2 at its pid once verified (the holder of the pidfile's lock), and `upgrade`
waits for the pidfile to name a new arbiter; the reason of a failure is then in the
pool's log.")]
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
    let (mut client, path) = match target::route(&args.target).map_err(target::nothing_to_do)? {
        Route::Socket { client, path, .. } => (client, path),
        Route::Signal {
            arbiter, pidfile, ..
        } => return by_signal(&arbiter, &pidfile, args.timeout),
    };
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

/// SIGUSR2 to the pidfile's verified arbiter, then the pidfile names the new
/// one (as the pids in the file say: both are the pool's own view).
fn by_signal(old: &Arbiter, path: &Path, timeout: Duration) -> Result<()> {
    if old.file_pid == 1 {
        // The pool would refuse (and only say so in its log).
        return Err(runtime(format!(
            "cannot upgrade {}: it is pid 1 of its pid namespace, and the old arbiter's exit would kill the new one (in a container, roll the deployment instead)",
            old.describe()
        )));
    }
    target::signal(old, ufork_daemon::Signal::USR2)?;
    println!(
        "upgrading {} (SIGUSR2): waiting for a new arbiter to take over the pidfile…",
        old.describe()
    );
    let deadline = Instant::now().checked_add(timeout);
    loop {
        if let Ok(ufork_daemon::Status::Running { pid }) = ufork_daemon::status(path) {
            if pid != old.file_pid {
                println!(
                    "upgraded: pid {pid} is serving; the old arbiter ({}) drains and exits",
                    old.describe()
                );
                return Ok(());
            }
        }
        if ufork_daemon::wait_for_exit(old.pid, Some(Duration::ZERO)).unwrap_or(false) {
            return Err(runtime(format!(
                "upgrade failed: {} exited and no new arbiter took over {}",
                old.describe(),
                path.display()
            )));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(runtime(format!(
                "upgrade failed: no new arbiter took over {} within {}s; {} still serves (its log says why)",
                path.display(),
                timeout.as_secs(),
                old.describe()
            )));
        }
        // Nothing to wait on but the file: look again shortly.
        std::thread::sleep(Duration::from_millis(20));
    }
}
