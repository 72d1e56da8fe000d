//! The command line: every subcommand and flag, with the help a first-time user reads.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cmd::ctl::CtlArgs;
use crate::cmd::run::RunArgs;
use crate::cmd::serve::ServeArgs;
use crate::cmd::status::StatusArgs;
use crate::cmd::stop::StopArgs;
use crate::units::{
    parse_count_u32, parse_seconds, parse_seconds_or_zero, parse_size, parse_workers,
};

const AFTER_HELP: &str = "\
Signals (to the arbiter, the `ufork` process that runs the pool):
  INT, TERM   stop gracefully: workers get SIGTERM and --graceful-timeout to finish
              (a second INT stops at once)
  QUIT        stop at once: every worker gets SIGKILL
  HUP         rolling restart: replace every worker, one at a time
  TTIN, TTOU  one worker more, one worker less
  USR1        reopen the log file (after an external logrotate)
  USR2        in-place upgrade, as `ufork upgrade` (refused when ufork is PID 1)
  WINCH, ALRM, PWR, IO, VTALRM, PROF
              ignored, with a log line when sent by kill (their default would
              end the pool)

Exit codes (every subcommand):
  0  success
  1  runtime failure (for `serve` and `run`: also a pool that gave up,
     --give-up-after; for `ctl`: a command the pool refused)
  2  usage error: a bad flag or value, or a bad --config file
  3  not running: `status`, `stop`, `reload`, `upgrade` and `ctl` found no pool
  4  `status`: the pool runs degraded (see `ufork status --help`)

Examples:
  ufork serve                               hello app on http://127.0.0.1:8000
  ufork serve ./site -w 4 --bind 0.0.0.0:8080
  ufork run -w 4 --bind 127.0.0.1:9000 -- python3 app.py
  ufork serve --daemon --pidfile /tmp/ufork.pid --log-file /tmp/ufork.log
  ufork status --pidfile /tmp/ufork.pid
  ufork stop --pidfile /tmp/ufork.pid";

/// Run a pool of pre-forked workers: serve a directory over HTTP, or keep N
/// copies of any program alive, each handed the same listening sockets.
#[derive(Debug, Parser)]
#[command(name = "ufork", version, after_help = AFTER_HELP, arg_required_else_help = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, one module each under `cmd/`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve DIR as static files over HTTP, or the built-in hello app without DIR.
    Serve(ServeArgs),
    /// Supervise N copies of any program, handing each the listening sockets.
    Run(RunArgs),
    /// Show the workers of a running pool; exit 0 if it runs, 3 if not, 4 if degraded.
    #[command(after_help = "\
Degraded: fewer workers ready than the pool's target for longer than its
--start-timeout (a crash loop, workers that never become ready). --json prints
the same state as one JSON object whose schema the README documents.")]
    Status(StatusArgs),
    /// Stop a running pool gracefully and wait until it has exited; exit 3 if none runs.
    Stop(StopArgs),
    /// Restart every worker of a running pool, one at a time.
    #[command(after_help = "\
Through the pool's control socket (given, or the one beside the pidfile) it prints
each replaced worker as it happens and returns once every worker was replaced by
a ready one: exit 0; 1 with the reason when the roll was abandoned (a replacement
failed, or was not ready within the pool's --start-timeout: the old workers keep
serving, the stand-in covering the slot until it has a ready worker again), when
it ended with a slot that has no ready worker after a failure (not a recycle), or
when --timeout passed first (the roll goes on); 3 when nothing runs.
It fits systemd's ExecReload=. A pool without that socket gets SIGHUP at its pid
(verified: the holder of the pidfile's lock), and reload says that it did not wait.")]
    Reload(crate::cmd::reload::ReloadArgs),
    /// Re-execute a running pool's binary from disk, handing over its sockets; wait for the outcome.
    Upgrade(crate::cmd::upgrade::UpgradeArgs),
    /// Send a console command to a running pool, or open a prompt on it.
    Ctl(CtlArgs),
}

/// Flags shared by `serve` and `run`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Read settings from this TOML file: its keys are the long flag names
    /// (`workers = 4`, `bind = ["127.0.0.1:8000"]`, `no_prompt = true`; also
    /// `dir = "./site"` for `serve`, `command = ["python3", "app.py"]` for
    /// `run`); flags on the command line override it.
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Number of worker processes [default: WEB_CONCURRENCY if set, as
    /// gunicorn reads it, else the number of CPUs]. (The
    /// crates' builders default to 1: a program embedding them sizes its pool.)
    #[arg(short, long, value_name = "N", value_parser = parse_workers, allow_negative_numbers = true)]
    pub workers: Option<u32>,

    /// Kill and replace a worker not ready this long after it started (or
    /// later, if a `run --notify` worker asks with EXTEND_TIMEOUT_USEC). (The
    /// ufork-core library defaults to 600 s, for apps that load for minutes;
    /// the command uses 60 s so a start that hangs shows while you watch.)
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "60", allow_negative_numbers = true)]
    pub start_timeout: Duration,

    /// Stop and exit 1, naming the last failure, once every worker slot has
    /// failed N times in a row without a worker staying up 1 s: a pool that
    /// cannot start (a bad config, a missing module) fails where its supervisor
    /// sees it instead of restarting forever. 5 is systemd's StartLimitBurst
    /// (a unit that failed 5 times is left failed); gunicorn exits at the first
    /// "Worker failed to boot", which 5 tolerates transient failures beyond.
    /// 0: never give up (the ufork-core library's default).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32), default_value = "5")]
    pub give_up_after: u32,

    /// On stop, how long workers may finish before they are killed.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "30", allow_negative_numbers = true)]
    pub graceful_timeout: Duration,

    /// At most this many workers starting at once.
    #[arg(long, value_name = "N", value_parser = parse_count_u32, default_value = "16", allow_negative_numbers = true)]
    pub max_booting: u32,

    /// Recycle a worker whose resident memory exceeds this (e.g. 512M, 2G).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, allow_negative_numbers = true)]
    pub memory_limit: Option<u64>,

    /// The listen backlog of the sockets --bind makes: connections the
    /// kernel queues before a worker accepts them (capped by
    /// net.core.somaxconn).
    #[arg(long, value_name = "N", value_parser = parse_count_u32, default_value_t = crate::listen::DEFAULT_BACKLOG, allow_negative_numbers = true)]
    pub backlog: u32,

    /// Change to this directory first: relative paths (DIR, CMD, --pidfile,
    /// --log-file, ...) are then relative to it.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Run in the background; returns once the pool is serving.
    #[arg(short = 'D', long, requires = "pidfile")]
    pub daemon: bool,

    /// Write the arbiter's pid here and lock it while running (a symbolic
    /// link at PATH is refused, never followed).
    #[arg(short = 'p', long, visible_alias = "pid", value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// Write the arbiter's and the workers' output here (rotated by size if it
    /// is a regular file; `/dev/null` or a FIFO is written to as it is). A
    /// symbolic link at PATH is followed only if it and its directory are
    /// root's or this user's and no one else may write there (or it is
    /// sticky, like /tmp); otherwise it is refused (`/dev/stdout` and
    /// `/dev/stderr` always work).
    #[arg(long, visible_alias = "error-logfile", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Rotate the log file when it reaches this size (e.g. 10M).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "8M", requires = "log_file", allow_negative_numbers = true)]
    pub log_max_bytes: u64,

    /// Rotated log files to keep (PATH.1 ... PATH.N), at least 1.
    #[arg(
        long,
        value_name = "N",
        value_parser = parse_count_u32,
        default_value = "8",
        requires = "log_file",
        allow_negative_numbers = true
    )]
    pub log_keep: u32,

    /// How the arbiter's and the workers' lines are written: text (RFC 3339
    /// timestamps in front), json (one object per line: time, level, source,
    /// slot, pid, stream, message) or journal (syslog `<N>` levels, no
    /// timestamps) [default: journal when stderr is the systemd journal
    /// (JOURNAL_STREAM), text otherwise].
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub log_format: Option<crate::logger::LogFormat>,

    /// Text lines without timestamps.
    #[arg(long)]
    pub no_timestamps: bool,

    /// When the output (the terminal, a pipe, --log-file) has taken nothing
    /// for this long while ufork's queue for it is full (a log reader that
    /// stopped reading, a full FIFO), drop the workers' output, counted, with
    /// a line saying how much went missing where it did, instead of holding
    /// the workers up (a worker blocked on its output serves nobody), until
    /// the output takes bytes again. A slow reader that keeps reading (64 KiB
    /// per SECS at least) loses nothing. 0: never drop. At most half of
    /// --timeout, so that workers blocked on their output are not killed
    /// as hung first (a value given above it is lowered, with a warning)
    /// [default: 10].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds_or_zero, allow_negative_numbers = true)]
    pub log_stall_timeout: Option<Duration>,

    /// Least severe message of the arbiter and the workers' server logged,
    /// with gunicorn's names (a worker's own output and the access log are
    /// kept whatever it says) [default: info, or the UFORK_LOG environment
    /// variable, which takes the same names in any case].
    #[arg(long, value_name = "LEVEL", value_enum, ignore_case = true)]
    pub log_level: Option<crate::logger::LogLevel>,

    /// Accept console commands on this unix socket [default with --pidfile: next
    /// to the pidfile, with the extension .control.sock; if it cannot be made there, the
    /// pool starts without one and logs why].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// After binding, run as this user (name or uid), with its groups; a uid
    /// with no passwd entry needs --group, and gets that group alone.
    #[arg(short = 'u', long, value_name = "NAME")]
    pub user: Option<String>,

    /// After binding, run as this group (name or gid) [default: the user's group].
    #[arg(short = 'g', long, value_name = "NAME")]
    pub group: Option<String>,

    /// No `ufork>>` prompt even when stdin is a terminal.
    #[arg(long)]
    pub no_prompt: bool,

    /// Check the flags (and the --config file) and exit without starting
    /// anything: 0 when the pool could start with them, else the error it
    /// would stop with. Checks DIR or CMD, --chdir, the --bind and
    /// --metrics-bind addresses (resolved, not bound; two that overlap are
    /// refused, as the start refuses them), the control socket's path, and
    /// that --user and --group exist and this process may switch to them
    /// (it switches, then exits).
    #[arg(long)]
    pub check_config: bool,

    /// Serve Prometheus metrics on GET /metrics and a health check on GET
    /// /healthz (200 when every worker is ready, else 503) at HOST:PORT,
    /// a port of its own: one a --bind listens on (0.0.0.0's covers
    /// 127.0.0.1's) is refused before the pidfile is taken.
    #[arg(long, value_name = "ADDR")]
    pub metrics_bind: Option<String>,
}

/// `--log-stall-timeout`'s default.
pub const DEFAULT_LOG_STALL: Duration = Duration::from_secs(10);

/// `--log-stall-timeout` as the pool uses it (`given`, else
/// [`DEFAULT_LOG_STALL`]; see [`capped_log_stall`]), and the warning to
/// log at the start when a value given (on the command line or in the
/// `--config` file) was lowered: the default lowered says nothing, since
/// nobody asked for it. `hang` is `--timeout` (`hang_defaulted`: not given,
/// the subcommand's default, which the warning says it is).
pub fn log_stall(
    given: Option<Duration>,
    hang: Option<Duration>,
    hang_defaulted: bool,
) -> (Duration, Option<String>) {
    let stall = given.unwrap_or(DEFAULT_LOG_STALL);
    let capped = capped_log_stall(stall, hang);
    let warning = match (given, hang) {
        (Some(given), Some(hang)) if capped < given => Some(format!(
            "--log-stall-timeout {} is lowered to {}, half of --timeout {}{}, so that a worker held up by a stalled output is let go before it is killed as hung",
            seconds(given),
            seconds(capped),
            seconds(hang),
            if hang_defaulted { " (the default)" } else { "" }
        )),
        _ => None,
    };
    (capped, warning)
}

/// Seconds as a flag takes them: `20s`, `2.5s`, `0.125s`.
fn seconds(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
}

/// `--log-stall-timeout` as the pool uses it: at most half the hang timeout
/// (`--timeout`), if the pool has one, so that a worker held up by a stalled
/// output is let go before the arbiter takes it for hung. 0 stays 0 (never
/// drop).
pub fn capped_log_stall(stall: Duration, hang: Option<Duration>) -> Duration {
    match hang {
        Some(hang) if !stall.is_zero() => stall.min(hang / 2),
        _ => stall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_log_stall_timeout_is_at_most_half_the_hang_timeout() {
        let secs = Duration::from_secs;
        assert_eq!(capped_log_stall(secs(10), Some(secs(30))), secs(10));
        assert_eq!(
            capped_log_stall(secs(10), Some(secs(5))),
            Duration::from_millis(2500)
        );
        assert_eq!(capped_log_stall(secs(10), None), secs(10));
        assert_eq!(
            capped_log_stall(Duration::ZERO, Some(secs(5))),
            Duration::ZERO
        );
    }

    #[test]
    fn a_log_stall_timeout_given_and_lowered_is_told() {
        let secs = Duration::from_secs;
        assert_eq!(
            log_stall(Some(secs(20)), Some(secs(30)), false),
            (
                secs(15),
                Some("--log-stall-timeout 20s is lowered to 15s, half of --timeout 30s, so that a worker held up by a stalled output is let go before it is killed as hung".to_owned())
            )
        );
        let (stall, warning) = log_stall(Some(secs(10)), Some(secs(5)), false);
        assert_eq!(stall, Duration::from_millis(2500));
        assert!(warning.is_some_and(|w| {
            w.starts_with("--log-stall-timeout 10s is lowered to 2.5s, half of --timeout 5s,")
        }),);
        // The default lowered, a value within the bound, 0 and no --timeout: silent.
        assert_eq!(
            log_stall(None, Some(secs(5)), true),
            (Duration::from_millis(2500), None)
        );
        assert_eq!(
            log_stall(Some(secs(15)), Some(secs(30)), true),
            (secs(15), None)
        );
        assert_eq!(
            log_stall(Some(Duration::ZERO), Some(secs(5)), false),
            (Duration::ZERO, None)
        );
        assert_eq!(log_stall(Some(secs(99)), None, false), (secs(99), None));
        // --timeout not given: the warning says its value is the default.
        let (_, warning) = log_stall(Some(secs(20)), Some(secs(30)), true);
        assert!(warning.is_some_and(|w| {
            w.starts_with("--log-stall-timeout 20s is lowered to 15s, half of --timeout 30s (the default), so")
        }));
        assert_eq!(log_stall(None, None, false), (DEFAULT_LOG_STALL, None));
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// One set of defaults: the command's are the crates' (start timeout
    /// aside, whose difference the help explains).
    #[test]
    fn defaults_are_the_crates_defaults() {
        let cli = Cli::try_parse_from(["ufork", "serve", "--log-file", "x.log"]).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("serve")
        };
        let pool = serve.pool;
        assert_eq!(pool.log_max_bytes, ufork_daemon::DEFAULT_MAX_SIZE);
        assert_eq!(pool.log_keep as usize, ufork_daemon::DEFAULT_BACKUPS);
        assert_eq!(pool.max_booting as usize, ufork_core::DEFAULT_MAX_BOOTING);
        assert_eq!(pool.graceful_timeout, Duration::from_secs(30));
        assert_eq!(pool.start_timeout, Duration::from_secs(60));
        assert!(serve.timeout.is_none());
    }

    /// A gunicorn command line's spellings mean the same flags here.
    #[test]
    fn gunicorn_spellings_are_accepted() {
        let cli = Cli::try_parse_from([
            "ufork",
            "serve",
            "-D",
            "-p",
            "app.pid",
            "--error-logfile",
            "err.log",
            "--access-logfile",
            "-",
            "-t",
            "60",
            "-u",
            "www",
            "-g",
            "web",
        ])
        .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("serve")
        };
        assert!(serve.pool.daemon);
        assert_eq!(serve.pool.pidfile, Some(PathBuf::from("app.pid")));
        assert_eq!(serve.pool.log_file, Some(PathBuf::from("err.log")));
        assert_eq!(serve.access_log, Some(PathBuf::from("-")));
        assert_eq!(serve.timeout, Some(Duration::from_secs(60)));
        assert_eq!(serve.pool.user.as_deref(), Some("www"));
        assert_eq!(serve.pool.group.as_deref(), Some("web"));
        let cli = Cli::try_parse_from([
            "ufork", "run", "--pid", "a.pid", "--notify", "-t", "5", "--", "true",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.pool.pidfile, Some(PathBuf::from("a.pid")));
        assert_eq!(run.timeout, Some(Duration::from_secs(5)));
        for command in ["stop", "status", "reload", "upgrade"] {
            for spelling in ["-p", "--pid"] {
                let cli = Cli::try_parse_from(["ufork", command, spelling, "a.pid"]);
                assert!(cli.is_ok(), "{command} {spelling}: {cli:?}");
            }
        }
    }
}
