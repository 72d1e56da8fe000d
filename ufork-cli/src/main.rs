//! The `ufork` binary: parses flags, assembles the ufork crates, prints for
//! people. Errors end here as one line, `ufork: error: ...`, and an exit code:
//! 2 for usage, 1 for runtime failures, 3 for "not running" (`status`, and
//! `stop`/`reload` with nothing to act on).
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod console;
mod control;
mod editor;
mod exec;
mod failure;
mod logger;
mod notify;
mod pool;
mod privs;
mod term;
mod units;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command, CtlArgs, RunArgs, StopArgs, TargetArgs};
use crate::control::{Client, ConnectError};
use crate::failure::{Failure, Result, runtime};
use ufork_core::Arbiter;

fn main() -> ExitCode {
    if let Some(code) = help_on_help() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    std::panic::set_hook(Box::new(|info| {
        console::restore_terminal();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "ufork: internal error: {message}{at} (this is a bug; please report it)"
        );
    }));
    logger::init();
    let result = std::panic::catch_unwind(|| dispatch(cli));
    console::restore_terminal();
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Failure::NotRunning(message))) => {
            println!("{message}");
            ExitCode::from(3)
        }
        Ok(Err(Failure::NothingToDo(message))) => {
            let _ = writeln!(std::io::stderr(), "ufork: {message}");
            ExitCode::from(3)
        }
        Ok(Err(failure)) => {
            let _ = writeln!(std::io::stderr(), "ufork: error: {failure}");
            failure.exit_code()
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// `ufork help --help` (or `-h`): clap's help subcommand takes no flags and
/// would call `--help` an unknown subcommand; print its own help instead.
fn help_on_help() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [first, rest @ ..] = args.as_slice() else {
        return None;
    };
    if first != "help" || !rest.iter().any(|a| a == "--help" || a == "-h") {
        return None;
    }
    let mut command = <Cli as clap::CommandFactory>::command();
    command.build();
    let help = command.find_subcommand_mut("help")?;
    let _ = help.print_help();
    Some(ExitCode::SUCCESS)
}

/// Help and version go to stdout with exit 0; a usage error is one line on
/// stderr with exit 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = error.render().to_string();
    let mut lines = rendered.lines();
    let mut first = lines
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_owned();
    // "the following required arguments were not provided:" lists them below.
    if first.ends_with(':') {
        let more: Vec<&str> = lines
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        first = format!("{} {}", first, more.join(" "));
    }
    let tip = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("tip: "))
        .map(|t| format!("; {t}"))
        .unwrap_or_else(|| {
            let run = std::env::args().nth(1).as_deref() == Some("run");
            if run && error.kind() == ErrorKind::UnknownArgument {
                "; put the program after `--`: ufork run [FLAGS] -- CMD [ARG]...".to_owned()
            } else {
                String::new()
            }
        });
    let _ = writeln!(
        std::io::stderr(),
        "ufork: error: {first}{tip} (see `ufork --help`)"
    );
    ExitCode::from(2)
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Run(args) => run(args),
        Command::Status(args) => status(&args),
        Command::Stop(args) => stop(&args),
        Command::Reload(args) => reload(&args),
        Command::Ctl(args) => ctl(&args),
    }
}

fn serve(args: cli::ServeArgs) -> Result<()> {
    let root = match &args.dir {
        Some(dir) => Some(
            ufork_wsgi_like::static_files::StaticFiles::new(dir).map_err(|e| {
                runtime(format!(
                    "DIR {}: {}; give an existing directory to serve, or none for the hello app",
                    dir.display(),
                    failure::io_text(&e)
                ))
            })?,
        ),
        None => None,
    };
    let listeners = pool::bind_all(&args.bind, false)?;
    let workers = pool::workers(&args.pool);
    let what = match &root {
        Some(files) => format!("files from {}", files.root().display()),
        None => "the hello app".to_owned(),
    };
    let banner: Vec<String> = listeners
        .iter()
        .map(|l| {
            format!(
                "serving {what} on http://{} with {workers} worker{} (arbiter pid {})",
                l.addr,
                if workers == 1 { "" } else { "s" },
                std::process::id()
            )
        })
        .collect();
    let mut session = pool::Session::start(&args.pool)?;
    if !args.pool.daemon {
        banner.iter().for_each(term::say);
    }
    if let Some(dir) = &args.dir {
        warn_if_unreadable(dir);
    }
    let mut builder = ufork_wsgi_like::Server::builder()
        .workers(workers)
        .graceful_timeout(args.pool.graceful_timeout)
        .heartbeat_timeout(
            args.timeout
                .unwrap_or(ufork_wsgi_like::DEFAULT_HEARTBEAT_TIMEOUT),
        );
    for l in listeners {
        builder = builder.listener(l.socket);
    }
    if let Some(max) = args.max_requests {
        builder = builder.max_requests(max, max / 10);
    }
    let builder = builder.arbiter(|b| session.configure(&args.pool, b).workers(workers));
    let built = match root {
        Some(files) => builder.build(files),
        None => builder.build(ufork_wsgi_like::hello),
    };
    let server = built.map_err(|e| {
        let f = runtime(format!("cannot start the server: {}", failure::chain(&e)));
        session.fail(&f);
        f
    })?;
    session.announce(&args.pool);
    server
        .run()
        .map_err(|e| runtime(format!("the server failed: {}", failure::chain(&e))))?;
    Ok(())
}

/// Warns when the workers could not read DIR: checked after `--user` took
/// effect, so as the user the workers run as (access(2) checks the real ids,
/// which the switch sets too).
fn warn_if_unreadable(dir: &std::path::Path) {
    use rustix::fs::{Access, access};
    if let Err(e) = access(dir, Access::READ_OK | Access::EXEC_OK) {
        log::warn!(
            target: "ufork",
            "DIR {}: the workers (uid {}) cannot read it ({}); every request will fail",
            dir.display(),
            rustix::process::getuid().as_raw(),
            failure::io_text(&e.into())
        );
    }
}

fn run(args: RunArgs) -> Result<()> {
    let program = &args.command[0];
    let resolved = exec::resolve(program)?;
    // Bound first, so the sockets sit at fds 3, 4, ... already.
    let listeners = pool::bind_all(&args.bind, true)?;
    let workers = pool::workers(&args.pool);
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
    let mut session = pool::Session::start(&args.pool)?;
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
    };
    let fds = listeners.into_iter().map(|l| l.socket.into()).collect();
    let worker = layer.worker(spec, fds);
    let mut builder = session
        .configure(&args.pool, Arbiter::builder())
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
    arbiter
        .run(worker)
        .map_err(|e| runtime(format!("the pool failed: {}", failure::chain(&e))))?;
    if let Some(message) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(runtime(message));
    }
    Ok(())
}

fn connect(path: &std::path::Path) -> Result<Client> {
    Client::connect(path).map_err(|e| match e {
        ConnectError::NotRunning(m) => Failure::NotRunning(format!("not running: {m}")),
        ConnectError::Other(m) => runtime(m),
    })
}

/// What a pidfile says, as a failure when nothing runs.
fn running_pid(path: &std::path::Path) -> Result<i32> {
    match ufork_daemon::status(path) {
        Ok(ufork_daemon::Status::Running { pid }) => Ok(pid),
        Ok(ufork_daemon::Status::Stale { pid: Some(pid) }) => Err(Failure::NotRunning(format!(
            "not running (stale pidfile {}: the pool with pid {pid} is gone)",
            path.display()
        ))),
        Ok(ufork_daemon::Status::Stale { pid: None }) => {
            let found = if path.is_dir() {
                format!("{} is a directory, not a pidfile", path.display())
            } else {
                match std::fs::read_to_string(path) {
                    Ok(text) if text.trim().is_empty() => {
                        format!("empty pidfile {}", path.display())
                    }
                    Ok(text) => format!(
                        "pidfile {} holds no pid: `{}`",
                        path.display(),
                        commands::printable_max(text.trim(), 40)
                    ),
                    Err(e) => format!(
                        "unreadable pidfile {}: {}",
                        path.display(),
                        failure::io_text(&e)
                    ),
                }
            };
            Err(Failure::NotRunning(format!("not running ({found})")))
        }
        Ok(ufork_daemon::Status::NotRunning) => Err(Failure::NotRunning(format!(
            "not running (no pidfile at {})",
            path.display()
        ))),
        Err(e) => Err(runtime(format!(
            "--pidfile {}: {}",
            path.display(),
            e.report()
        ))),
    }
}

/// The control socket to use: given, or the one next to the pidfile.
fn socket_of(args: &TargetArgs) -> Option<std::path::PathBuf> {
    args.control_socket.clone().or_else(|| {
        args.pidfile
            .as_ref()
            .map(|p| p.with_extension("sock"))
            .filter(|p| p.exists())
    })
}

fn status(args: &TargetArgs) -> Result<()> {
    let pid = args.pidfile.as_deref().map(running_pid).transpose()?;
    match socket_of(args) {
        Some(path) => {
            let mut client = connect(&path)?;
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

fn stop(args: &StopArgs) -> Result<()> {
    if let Some(path) = &args.target.pidfile {
        let pid = running_pid(path).map_err(nothing_to_do)?;
        let sent = ufork_daemon::signal(pid, ufork_daemon::Signal::TERM)
            .map_err(|e| runtime(format!("--pidfile {}: {}", path.display(), e.report())))?;
        if !sent {
            return Err(Failure::NothingToDo(format!(
                "not running (pid {pid} is gone)"
            )));
        }
        println!("stopping pid {pid}…");
        return match ufork_daemon::wait_for_exit(pid, Some(args.timeout)) {
            Ok(true) => {
                println!("stopped");
                Ok(())
            }
            Ok(false) => Err(runtime(format!(
                "pid {pid} did not stop within {}s; try again with a longer --timeout",
                args.timeout.as_secs()
            ))),
            Err(e) => Err(runtime(e.report())),
        };
    }
    let path = socket_of(&args.target).unwrap_or_default();
    let mut client = connect(&path).map_err(nothing_to_do)?;
    let (text, ok) = client.send("stop")?;
    if !ok {
        return Err(runtime(text.trim().to_owned()));
    }
    print!("{text}");
    if client.wait_closed(args.timeout) {
        println!("stopped");
        Ok(())
    } else {
        Err(runtime(format!(
            "the pool did not stop within {}s; try again with a longer --timeout",
            args.timeout.as_secs()
        )))
    }
}

/// For `stop` and `reload`: nothing runs, so there is nothing to do (exit 3).
fn nothing_to_do(failure: Failure) -> Failure {
    match failure {
        Failure::NotRunning(m) => Failure::NothingToDo(m),
        other => other,
    }
}

fn reload(args: &TargetArgs) -> Result<()> {
    if let Some(path) = &args.pidfile {
        let pid = running_pid(path).map_err(nothing_to_do)?;
        let sent = ufork_daemon::signal(pid, ufork_daemon::Signal::HUP)
            .map_err(|e| runtime(format!("--pidfile {}: {}", path.display(), e.report())))?;
        if !sent {
            return Err(Failure::NothingToDo(format!(
                "not running (pid {pid} is gone)"
            )));
        }
        println!("restarting every worker of pid {pid}, one at a time");
        return Ok(());
    }
    let path = socket_of(args).unwrap_or_default();
    let mut client = connect(&path).map_err(nothing_to_do)?;
    let (text, ok) = client.send("restart all")?;
    print!("{text}");
    if ok {
        Ok(())
    } else {
        Err(runtime("reload refused"))
    }
}

fn ctl(args: &CtlArgs) -> Result<()> {
    // One request is one line: an argument with a line break would smuggle
    // a second command whose reply nobody reads.
    if let Some(bad) = args.command.iter().find(|a| a.contains(['\n', '\r', '\0'])) {
        return Err(failure::usage(format!(
            "COMMAND `{}` spans several lines; give one command (no newline or carriage return)",
            commands::printable(bad)
        )));
    }
    let command = args.command.join(" ");
    if !args.command.is_empty() && command.trim().is_empty() {
        return Err(failure::usage(
            "COMMAND is empty; give a command like `status`, or none for a prompt",
        ));
    }
    let mut client = connect(&args.control_socket).map_err(|e| match e {
        Failure::NotRunning(m) => runtime(m),
        other => other,
    })?;
    if !args.command.is_empty() {
        let (text, ok) = client.send(&command)?;
        let is_stop = command.split_whitespace().next() == Some("stop");
        if ok {
            print!("{text}");
            if is_stop && client.wait_closed(Duration::from_secs(120)) {
                println!("stopped");
            }
            return Ok(());
        }
        return Err(runtime(text.trim().to_owned()));
    }
    if console::available() {
        return ctl_prompt(&mut client);
    }
    // Not a terminal: plain lines, no prompt (`echo status | ufork ctl ...`).
    let stdin = std::io::stdin();
    loop {
        let mut line = String::new();
        if stdin
            .read_line(&mut line)
            .map_err(|e| runtime(e.to_string()))?
            == 0
        {
            return Ok(());
        }
        if ctl_line(&mut client, line.trim())?.is_break() {
            return Ok(());
        }
    }
}

/// Runs one line typed at the `ufork ctl` prompt; `Break` when done.
fn ctl_line(client: &mut Client, line: &str) -> Result<std::ops::ControlFlow<()>> {
    use std::ops::ControlFlow;
    if line.is_empty() {
        return Ok(ControlFlow::Continue(()));
    }
    if matches!(line, "quit" | "exit") {
        return Ok(ControlFlow::Break(()));
    }
    let (text, ok) = client.send_reconnecting(line)?;
    let text = if ok { text } else { format!("error: {text}") };
    term::print(term::Stream::Out, text.as_bytes());
    if ok && line.split_whitespace().next() == Some("stop") {
        if client.wait_closed(Duration::from_secs(120)) {
            term::say("stopped");
        }
        return Ok(ControlFlow::Break(()));
    }
    Ok(ControlFlow::Continue(()))
}

/// The `ufork ctl` prompt on a terminal: the `ufork>>` line editor in raw
/// mode (main restores the terminal on every way out, panics included).
fn ctl_prompt(client: &mut Client) -> Result<()> {
    use editor::{Action, Editor};
    console::enter_raw().map_err(|e| runtime(format!("cannot set up the terminal: {e}")))?;
    let mut editor = Editor::default();
    term::set_prompt(Some(("", 0)));
    let mut buf = [0u8; 256];
    loop {
        let n = match rustix::io::read(std::io::stdin(), &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => {
                term::set_prompt(None);
                return Err(runtime(format!("cannot read the terminal: {e}")));
            }
        };
        if n == 0 {
            term::set_prompt(None);
            return Ok(());
        }
        for &byte in &buf[..n] {
            match editor.feed(byte) {
                Action::Line(line) => {
                    term::set_prompt(None);
                    term::say(format!("{}{line}", term::PROMPT_TEXT));
                    if ctl_line(client, line.trim())?.is_break() {
                        return Ok(());
                    }
                }
                Action::Interrupt => {
                    term::set_prompt(None);
                    term::say("^C");
                    return Ok(());
                }
                Action::Eof => {
                    term::set_prompt(None);
                    return Ok(());
                }
                Action::Clear => term::print(term::Stream::Out, b"\x1b[H\x1b[2J"),
                Action::Redraw | Action::None => {}
            }
        }
        term::set_prompt(Some((&editor.line(), editor.cursor())));
    }
}
