//! The `ufork` binary: parses flags, assembles the ufork crates, prints for
//! people. Errors end here as one line, `ufork: error: ...`, and an exit code:
//! 2 for usage, 1 for runtime failures, 3 for "not running".
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

fn main() -> ExitCode {
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
        Ok(Err(failure)) => {
            let _ = writeln!(std::io::stderr(), "ufork: error: {failure}");
            failure.exit_code()
        }
        Err(_) => ExitCode::FAILURE,
    }
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
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ");
    let tip = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("tip: "))
        .map(|t| format!("; {t}"))
        .unwrap_or_default();
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

fn serve(_args: cli::ServeArgs) -> Result<()> {
    Err(runtime("`ufork serve` is not available yet"))
}

fn run(args: RunArgs) -> Result<()> {
    let program = &args.command[0];
    exec::resolve(program)?;
    // Bound first, so the sockets sit at fds 3, 4, ... already.
    let listeners = pool::bind_all(&args.bind, true)?;
    let notify = args.notify.then(notify::Notify::bind).transpose()?;
    let layer = exec::ExecLayer::new(program, notify.is_none());
    let failed = layer.failure();
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
    let workers = pool::workers(&args.pool);
    term::say(format!(
        "running {workers} × `{}` (arbiter pid {})",
        args.command.join(" "),
        std::process::id()
    ));
    for (i, l) in listeners.iter().enumerate() {
        term::say(format!("listening on {} (fd {}, {})", l.addr, 3 + i, l.name));
    }
    let fds = listeners.into_iter().map(|l| l.socket.into()).collect();
    let worker = layer.worker(spec, fds);
    let options = pool::Options {
        heartbeat: args.timeout,
        ready_on_start: false,
    };
    pool::run(
        &args.pool,
        options,
        |builder| {
            let builder = builder.layer(layer);
            match notify {
                Some(notify) => builder.layer(notify),
                None => builder,
            }
        },
        worker,
    )?;
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

fn status(args: &TargetArgs) -> Result<()> {
    let Some(path) = &args.control_socket else {
        return Err(runtime("--pidfile is not supported yet"));
    };
    let mut client = connect(path)?;
    let (text, _) = client.send("status")?;
    print!("{text}");
    Ok(())
}

fn stop(args: &StopArgs) -> Result<()> {
    let Some(path) = &args.target.control_socket else {
        return Err(runtime("--pidfile is not supported yet"));
    };
    let mut client = connect(path)?;
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

fn reload(args: &TargetArgs) -> Result<()> {
    let Some(path) = &args.control_socket else {
        return Err(runtime("--pidfile is not supported yet"));
    };
    let mut client = connect(path)?;
    let (text, ok) = client.send("restart all")?;
    print!("{text}");
    if ok { Ok(()) } else { Err(runtime("reload refused")) }
}

fn ctl(args: &CtlArgs) -> Result<()> {
    let mut client = connect(&args.control_socket).map_err(|e| match e {
        Failure::NotRunning(m) => runtime(m),
        other => other,
    })?;
    if !args.command.is_empty() {
        let command = args.command.join(" ");
        let (text, ok) = client.send(&command)?;
        let is_stop = command.trim().starts_with("stop");
        if ok {
            print!("{text}");
            if is_stop && client.wait_closed(Duration::from_secs(120)) {
                println!("stopped");
            }
            return Ok(());
        }
        return Err(runtime(text.trim().to_owned()));
    }
    let stdin = std::io::stdin();
    let interactive = console::available();
    loop {
        if interactive {
            print!("{}", term::PROMPT_TEXT);
            let _ = std::io::stdout().flush();
        }
        let mut line = String::new();
        if stdin.read_line(&mut line).map_err(|e| runtime(e.to_string()))? == 0 {
            if interactive {
                println!();
            }
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if matches!(line, "quit" | "exit") {
            return Ok(());
        }
        let (text, ok) = client.send(line)?;
        if ok {
            print!("{text}");
        } else {
            print!("error: {text}");
        }
        if line.starts_with("stop") {
            if client.wait_closed(Duration::from_secs(120)) {
                println!("stopped");
            }
            return Ok(());
        }
    }
}
