//! The `ufork` binary: parses flags, assembles the ufork crates, prints for
//! people. Errors end here as one line, `ufork: error: ...`, and an exit code:
//! 2 for usage, 1 for runtime failures, 3 for "not running" (`status`, and
//! `stop`/`reload` with nothing to act on).
//!
//! Each subcommand lives in its own module under `cmd/`; this file only
//! parses, installs the panic hook and the logger, and maps the outcome to an
//! exit code.
#![forbid(unsafe_code)]

mod access;
mod activation;
mod cli;
mod cmd;
mod commands;
mod config;
mod console;
mod control;
mod editor;
mod exec;
mod failure;
mod health;
mod holder;
mod listen;
mod logger;
mod metrics;
mod notify;
mod pid1;
mod pool;
mod privs;
mod status_json;
mod supervisor;
mod term;
mod units;
mod upgrade;
mod usage;
mod waiting;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::failure::Failure;

fn main() -> ExitCode {
    // Before anything else: the binary's path while it still names this
    // file, and the sockets an upgrading arbiter handed over.
    upgrade::init();
    pid1::hold_stop_signals();
    if let Some(code) = usage::help_on_help() {
        return code;
    }
    let args = match config::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(failure) => {
            let _ = writeln!(std::io::stderr(), "ufork: error: {failure}");
            return failure.exit_code();
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage::report(&e),
    };
    if matches!(cli.command, Command::Serve(_) | Command::Run(_)) {
        pid1::hold_pool_signals();
    }
    std::panic::set_hook(Box::new(panic_hook));
    logger::init();
    let level = match &cli.command {
        Command::Serve(serve) => serve.pool.log_level,
        Command::Run(run) => run.pool.log_level,
        _ => None,
    };
    if let Some(level) = level {
        logger::set_level(level);
    }
    let result = std::panic::catch_unwind(|| cmd::dispatch(cli));
    // A pool that failed before its loop still holds its signals.
    pid1::release_stop_signals();
    console::restore_terminal();
    logger::finish(pool::FLUSH_TIMEOUT);
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Failure::NotRunning(message))) => {
            println!("{message}");
            ExitCode::from(3)
        }
        Ok(Err(Failure::Degraded(message))) => {
            let _ = writeln!(std::io::stderr(), "ufork: {message}");
            ExitCode::from(4)
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

/// A panic is a bug: restore the terminal and say so on one line.
fn panic_hook(info: &std::panic::PanicHookInfo<'_>) {
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
}
