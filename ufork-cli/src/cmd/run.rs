//! `ufork run -- CMD`: N copies of any program, each handed the listening
//! sockets the systemd way.

use std::time::Duration;

use clap::Args;
use ufork_core::Arbiter;

use crate::cli::PoolArgs;
use crate::failure::{self, Result, runtime};
use crate::units::{parse_env, parse_seconds};
use crate::{exec, listen, notify, pool, term};

/// Flags for `ufork run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Every worker is CMD run by fork and exec. The sockets from --bind are passed the
systemd way: fds 3, 4, ... with LISTEN_FDS=<count>, LISTEN_PID=<the worker's pid>
and LISTEN_FDNAMES; UFORK_WORKER_ID is the worker's slot (0..N-1). TCP sockets
have TCP_NODELAY set, which every accepted connection inherits. Each worker
runs in a process group of its own: stop signals go to the whole group, and what
is left of it when the worker exits is killed, so background children never
outlive their worker (nor keep its sockets).

Without --notify a worker counts as ready as soon as CMD has been executed. With
--notify, NOTIFY_SOCKET is set and the sd_notify protocol applies: READY=1 marks
the worker ready, WATCHDOG=1 is its heartbeat (WATCHDOG_USEC comes from --timeout),
STATUS=... is shown by `status`. EXTEND_TIMEOUT_USEC=N while booting gives the
worker N microseconds from then to send READY=1 or another extension, past
--start-timeout if need be (never less); from a ready worker it is ignored.
WATCHDOG=trigger kills and replaces the worker as hung at once.

Examples:
  ufork run -w 4 --bind 127.0.0.1:9000 -- python3 app.py
  ufork run --notify --timeout 10 --bind 0.0.0.0:80 -- ./server --flag")]
pub struct RunArgs {
    /// Address to listen on, [NAME=]HOST:PORT or [NAME=]unix:PATH (repeatable);
    /// handed to CMD as fd 3, 4, ... A unix socket is removed when the pool stops.
    #[arg(short, long, value_name = "ADDR")]
    pub bind: Vec<String>,

    /// Give each worker a NOTIFY_SOCKET and follow the sd_notify protocol.
    #[arg(long)]
    pub notify: bool,

    /// With --notify: kill and replace a worker with no WATCHDOG=1 for this long.
    #[arg(
        short,
        long,
        value_name = "SECS",
        value_parser = parse_seconds,
        requires = "notify",
        allow_negative_numbers = true
    )]
    pub timeout: Option<Duration>,

    /// Permission bits of `--bind unix:PATH` sockets (octal).
    #[arg(long, value_name = "MODE", value_parser = listen::parse_mode, default_value = "660")]
    pub unix_mode: u32,

    /// Set KEY=VALUE in every worker's environment (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

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

/// Runs `ufork run`.
pub fn exec(mut args: RunArgs) -> Result<()> {
    pool::chdir(&args.pool)?;
    pool::check_control_path(&args.pool, &args.bind, true)?;
    pool::check_addresses(&args.pool, &args.bind, true, false, None)?;
    // Before the pidfile and the sockets: a --user that cannot be switched
    // to is a usage error, found by --check-config too.
    crate::privs::resolve(args.pool.user.as_deref(), args.pool.group.as_deref())?;
    if args.pool.check_config {
        return check_config(&args);
    }
    let pidfile = pool::lock_pidfile(&args.pool, args.bind.len())?;
    let program = &args.command[0];
    let resolved = exec::resolve(program)?;
    // Bound first, so the sockets sit at fds 3, 4, ... already.
    let options = listen::Options {
        for_run: true,
        unix_mode: args.unix_mode,
        backlog: args.pool.backlog,
    };
    // A descriptor inherited at one of fds 3, 4, ... pushes them further
    // up here; each worker moves them into place over it.
    let listeners = listen::bind_all(&args.bind, None, options)?;
    let workers = pool::workers(&args.pool)?;
    // Chosen before the banner, which is written in it.
    crate::logger::format(
        args.pool.log_format,
        args.pool.no_timestamps,
        args.pool.log_file.is_some(),
    );
    if !args.pool.daemon {
        term::say(format!(
            "running {workers} × `{}` (arbiter pid {})",
            args.command.join(" "),
            std::process::id()
        ));
        for (i, l) in listeners.iter().enumerate() {
            term::say(format!(
                "listening on {} (fd {}, {})",
                l.addr,
                3 + i,
                l.name
            ));
        }
    }
    let sockets = pool::unix_paths(&listeners);
    // The watchdog (--timeout) kills a program blocked on its output.
    let (stall, lowered) = crate::cli::log_stall(args.pool.log_stall_timeout, args.timeout, false);
    args.pool.log_stall_timeout = Some(stall);
    let mut session = pool::Session::start(&args.pool, pidfile, &sockets)?;
    if let Some(warning) = lowered {
        log::warn!(target: "ufork", "{warning}");
    }
    let notify = match args.notify.then(notify::Notify::bind).transpose() {
        Ok(notify) => notify,
        Err(e) => {
            session.fail(&e);
            return Err(e);
        }
    };
    let layer = exec::ExecLayer::new(program, resolved, notify.is_none());
    let failed = layer.failure();
    session.set_failure(layer.failure());
    let spec = exec::ExecSpec {
        program: program.clone(),
        args: args.command[1..].to_vec(),
        fd_names: listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(":"),
        notify_socket: notify.as_ref().map(|n| n.address().to_owned()),
        watchdog: args.timeout,
        env: args.env.clone(),
    };
    // The unix socket files live as long as this frame: removed when the
    // pool stops (a worker never returns here; it execs or exits).
    let (fds, _socket_files): (Vec<_>, Vec<_>) =
        listeners.into_iter().map(|l| l.socket.into_fd()).unzip();
    let worker = layer.worker(spec, fds);
    // The programs stop accepting at SIGTERM themselves, as gunicorn's
    // workers do; the arbiter only closes its copies.
    crate::upgrade::close_at_stop();
    let mut builder = session
        .configure(&args.pool, workers, Arbiter::builder())
        .heartbeat_timeout(args.timeout)
        .ready_on_start(false)
        .layer(layer);
    if let Some(notify) = notify {
        builder = builder.layer(notify);
    }
    let arbiter = builder.build().map_err(|e| {
        let f = runtime(format!("cannot start the pool: {}", failure::chain(&e)));
        session.fail(&f);
        f
    })?;
    session.announce(&args.pool);
    let outcome = arbiter
        .run(worker)
        .map_err(|e| runtime(format!("the pool failed: {}", failure::chain(&e))))?;
    if let Some(message) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(runtime(message));
    }
    session.takeover_result()?;
    failure::gave_up(&outcome, args.pool.give_up_after)
}

/// `--check-config`: what `exec` checks before it takes the pidfile and
/// binds, and that the process can switch to `--user` and `--group`.
fn check_config(args: &RunArgs) -> Result<()> {
    exec::resolve(&args.command[0])?;
    let options = listen::Options {
        for_run: true,
        unix_mode: args.unix_mode,
        backlog: args.pool.backlog,
    };
    listen::resolve_all(&args.bind, options)?;
    pool::workers(&args.pool)?;
    if let (_, Some(warning)) =
        crate::cli::log_stall(args.pool.log_stall_timeout, args.timeout, false)
    {
        log::warn!(target: "ufork", "{warning}");
    }
    // Last: it switches this process to --user and --group.
    crate::privs::check(args.pool.user.as_deref(), args.pool.group.as_deref())?;
    term::say(format!(
        "ufork run: the configuration is valid (`{}` found; nothing was started)",
        args.command[0]
    ));
    Ok(())
}
