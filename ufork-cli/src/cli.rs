//! The command line: every subcommand and flag, with the help a first-time user reads.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::units::{parse_count_u32, parse_count_u64, parse_seconds, parse_size, parse_workers};

const AFTER_HELP: &str = "\
Signals (to the arbiter, the `ufork` process that runs the pool):
  INT, TERM   stop gracefully: workers get SIGTERM and --graceful-timeout to finish
              (a second INT stops at once)
  QUIT        stop at once: every worker gets SIGKILL
  HUP         rolling restart: replace every worker, one at a time
  TTIN, TTOU  one worker more, one worker less
  USR1        reopen the log file (after an external logrotate)

Exit codes: 0 success, 1 runtime failure, 2 usage error, 3 not running (status,
stop, reload).

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

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve DIR as static files over HTTP, or the built-in hello app without DIR.
    #[command(after_help = "\
The pool keeps --workers processes alive; each one accepts connections on the shared
socket. With a terminal, a `ufork>>` prompt runs while serving (type `help`);
Ctrl-C stops every worker gracefully.

Examples:
  ufork serve                        hello app on http://127.0.0.1:8000
  ufork serve ./public --bind 0.0.0.0:8080 -w 8
  ufork serve --bind 127.0.0.1:0     any free port; the address is printed")]
    Serve(ServeArgs),
    /// Supervise N copies of any program, handing each the listening sockets.
    #[command(after_help = "\
Every worker is CMD run by fork and exec. The sockets from --bind are passed the
systemd way: fds 3, 4, ... with LISTEN_FDS=<count>, LISTEN_PID=<the worker's pid>
and LISTEN_FDNAMES; UFORK_WORKER_ID is the worker's slot (0..N-1). Each worker
runs in a process group of its own: stop signals go to the whole group, and what
is left of it when the worker exits is killed, so background children never
outlive their worker (nor keep its sockets).

Without --notify a worker counts as ready as soon as CMD has been executed. With
--notify, NOTIFY_SOCKET is set and the sd_notify protocol applies: READY=1 marks
the worker ready, WATCHDOG=1 is its heartbeat (WATCHDOG_USEC comes from --timeout),
STATUS=... is shown by `status`.

Examples:
  ufork run -w 4 --bind 127.0.0.1:9000 -- python3 app.py
  ufork run --notify --timeout 10 --bind 0.0.0.0:80 -- ./server --flag")]
    Run(RunArgs),
    /// Show the workers of a running pool; exit 0 if it runs, 3 if not.
    Status(TargetArgs),
    /// Stop a running pool gracefully and wait until it has exited; exit 3 if none runs.
    Stop(StopArgs),
    /// Restart every worker of a running pool, one at a time.
    Reload(TargetArgs),
    /// Send a console command to a running pool, or open a prompt on it.
    #[command(after_help = "\
Commands: help, status, workers N|+|-, restart [SLOT|all], kill SLOT, history,
reopen, stop [now]. Without COMMAND on a terminal, the prompt has the same line
editing and history as the `ufork>>` prompt (Ctrl-D or `quit` leaves); from a
pipe, every line is a command.

Examples:
  ufork ctl --control-socket /tmp/ufork.sock status
  ufork ctl --control-socket /tmp/ufork.sock workers +
  ufork ctl --control-socket /tmp/ufork.sock        (interactive prompt)")]
    Ctl(CtlArgs),
}

/// Flags for `ufork serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory to serve as static files (index.html for directories). Without it,
    /// the built-in hello app answers every request.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Address to listen on, HOST:PORT (repeatable). Port 0 picks a free port.
    #[arg(short, long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    pub bind: Vec<String>,

    /// Recycle a worker after it has served this many requests.
    #[arg(long, value_name = "N", value_parser = parse_count_u64, allow_negative_numbers = true)]
    pub max_requests: Option<u64>,

    /// Kill and replace a worker silent for this long [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub timeout: Option<Duration>,

    #[command(flatten)]
    pub pool: PoolArgs,
}

/// Flags for `ufork run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on, [NAME=]HOST:PORT (repeatable); handed to CMD as fd 3, 4, ...
    #[arg(short, long, value_name = "ADDR")]
    pub bind: Vec<String>,

    /// Give each worker a NOTIFY_SOCKET and follow the sd_notify protocol.
    #[arg(long)]
    pub notify: bool,

    /// With --notify: kill and replace a worker with no WATCHDOG=1 for this long.
    #[arg(
        long,
        value_name = "SECS",
        value_parser = parse_seconds,
        requires = "notify",
        allow_negative_numbers = true
    )]
    pub timeout: Option<Duration>,

    #[command(flatten)]
    pub pool: PoolArgs,

    /// The program to run, and its arguments (after `--`).
    #[arg(
        value_name = "CMD",
        required = true,
        num_args = 1..,
        allow_hyphen_values = true,
        last = true
    )]
    pub command: Vec<String>,
}

/// Flags shared by `serve` and `run`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Number of worker processes [default: the number of CPUs].
    #[arg(short, long, value_name = "N", value_parser = parse_workers, allow_negative_numbers = true)]
    pub workers: Option<u32>,

    /// Kill and replace a worker not ready this long after it started.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "60", allow_negative_numbers = true)]
    pub start_timeout: Duration,

    /// On stop, how long workers may finish before they are killed.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "30", allow_negative_numbers = true)]
    pub graceful_timeout: Duration,

    /// At most this many workers starting at once.
    #[arg(long, value_name = "N", value_parser = parse_count_u32, default_value = "16", allow_negative_numbers = true)]
    pub max_booting: u32,

    /// Recycle a worker whose resident memory exceeds this (e.g. 512M, 2G).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, allow_negative_numbers = true)]
    pub memory_limit: Option<u64>,

    /// Run in the background; returns once the pool is serving.
    #[arg(long, requires = "pidfile")]
    pub daemon: bool,

    /// Write the arbiter's pid here and lock it while running.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// Write the arbiter's and the workers' output here (rotated by size).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Rotate the log file when it reaches this size (e.g. 10M).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "10M", requires = "log_file", allow_negative_numbers = true)]
    pub log_max_bytes: u64,

    /// Rotated log files to keep (PATH.1 ... PATH.N), at least 1.
    #[arg(
        long,
        value_name = "N",
        value_parser = parse_count_u32,
        default_value = "5",
        requires = "log_file",
        allow_negative_numbers = true
    )]
    pub log_keep: u32,

    /// Accept console commands on this unix socket [default with --daemon: next
    /// to the pidfile, with the extension .sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// After binding, run as this user (name or uid).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// After binding, run as this group (name or gid) [default: the user's group].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// No `ufork>>` prompt even when stdin is a terminal.
    #[arg(long)]
    pub no_prompt: bool,
}

/// How to find a running pool.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct TargetArgs {
    /// The pidfile the pool was started with.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// The pool's control socket.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
}

/// Flags for `ufork stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// How long to wait for the pool to exit.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "60", allow_negative_numbers = true)]
    pub timeout: Duration,
}

/// Flags for `ufork ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The pool's control socket.
    #[arg(long, value_name = "PATH", required = true)]
    pub control_socket: PathBuf,

    /// One console command (like `status` or `workers 4`); none opens a prompt.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
