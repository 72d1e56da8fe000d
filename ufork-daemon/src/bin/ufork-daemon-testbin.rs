//! Test helper for ufork-daemon's integration tests, not a user tool: it
//! daemonizes (or holds a pidfile) as its arguments say, so the tests can
//! check the real processes from outside.
//!
//! ```text
//! ufork-daemon-testbin daemon [--pidfile P] [--pgrpfile G] [--log L]
//!     [--log-max BYTES] [--log-backups N] [--cwd DIR] [--umask OCTAL]
//!     [--timeout-ms MS] [--bind ADDR] [--gate FIFO] [--marker FILE]
//!     [--spam LINES] [--then ready|fail|drop|hang|exit] [--quit FIFO]
//!     [--convenience] [--thread]
//! ufork-daemon-testbin pidfile PATH
//! ```
//!
//! `daemon` prints "daemon started as pid N" in the launcher once the daemon
//! is ready, or "error: ..." and exits 1. In the daemon, it prints a line to
//! stdout and one to stderr, binds `--bind` (reporting a failure), waits for
//! the `--gate` FIFO to be written and closed, writes `--marker`, writes
//! `--spam` lines through the log, then does `--then`: `ready` (default)
//! reports readiness and waits for the `--quit` FIFO to be closed (or for
//! ever), then returns cleanly; `fail` reports a failure; `drop` drops the
//! handle; `hang` never reports; `exit` exits without a word.
//!
//! `--thread` starts a second thread first (`start` must refuse).
//!
//! `pidfile` takes the pidfile in the foreground, prints "locked PID", and
//! returns cleanly when its stdin reaches end of file.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ufork_daemon::{Daemon, Daemonize, Launched, Pidfile, RotatingFile, daemonize};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("daemon") => run_daemon(&args[1..]),
        Some("pidfile") if args.len() == 2 => hold_pidfile(&args[1]),
        _ => {
            eprintln!("usage: ufork-daemon-testbin daemon [options] | pidfile PATH");
            ExitCode::from(2)
        }
    }
}

#[derive(Default)]
struct Options {
    bind: Option<String>,
    gate: Option<PathBuf>,
    marker: Option<PathBuf>,
    spam: usize,
    then: String,
    quit: Option<PathBuf>,
    convenience: bool,
}

fn run_daemon(args: &[String]) -> ExitCode {
    let mut builder = Daemonize::new();
    let mut log: Option<String> = None;
    let mut log_max = None;
    let mut log_backups = None;
    let mut options = Options {
        then: "ready".to_owned(),
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--convenience" {
            options.convenience = true;
            continue;
        }
        if flag == "--thread" {
            // A second thread, alive while `start` runs.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                let _ = rx.recv();
            });
            std::mem::forget(tx);
            continue;
        }
        let Some(value) = it.next() else {
            eprintln!("missing value for {flag}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--pidfile" => builder = builder.pidfile(value),
            "--pgrpfile" => builder = builder.pgrpfile(value),
            "--log" => log = Some(value.clone()),
            "--log-max" => log_max = Some(value.parse().expect("--log-max")),
            "--log-backups" => log_backups = Some(value.parse().expect("--log-backups")),
            "--cwd" => builder = builder.working_directory(value),
            "--umask" => builder = builder.umask(u32::from_str_radix(value, 8).expect("--umask")),
            "--timeout-ms" => {
                builder = builder.timeout(Some(Duration::from_millis(
                    value.parse().expect("--timeout-ms"),
                )))
            }
            "--bind" => options.bind = Some(value.clone()),
            "--gate" => options.gate = Some(value.into()),
            "--marker" => options.marker = Some(value.into()),
            "--spam" => options.spam = value.parse().expect("--spam"),
            "--then" => options.then = value.clone(),
            "--quit" => options.quit = Some(value.into()),
            _ => {
                eprintln!("unknown flag {flag}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(path) = log {
        let mut log = RotatingFile::builder(path);
        if let Some(max) = log_max {
            log = log.max_size(max);
        }
        if let Some(backups) = log_backups {
            log = log.backups(backups);
        }
        builder = builder.log(log);
    }
    let daemon = if options.convenience {
        daemonize(builder)
    } else {
        match builder.start() {
            Ok(Launched::Parent { pid }) => {
                println!("daemon started as pid {pid}");
                return ExitCode::SUCCESS;
            }
            Ok(Launched::Daemon(daemon)) => daemon,
            Err(error) => {
                eprintln!("error: {}", error.report());
                return ExitCode::FAILURE;
            }
        }
    };
    in_daemon(daemon, options)
}

fn in_daemon(mut daemon: Daemon, options: Options) -> ExitCode {
    println!("hello from daemon stdout");
    eprintln!("hello from daemon stderr");
    let _listener = match options.bind.as_deref().map(std::net::TcpListener::bind) {
        None => None,
        Some(Ok(listener)) => Some(listener),
        Some(Err(error)) => {
            let _ = daemon.fail(format_args!(
                "cannot bind {}: {error}",
                options.bind.unwrap_or_default()
            ));
            return ExitCode::FAILURE;
        }
    };
    if let Some(gate) = &options.gate {
        drain_fifo(gate);
    }
    if let Some(marker) = &options.marker {
        std::fs::write(marker, "setup done\n").expect("write marker");
    }
    if let Some(mut log) = daemon.log().cloned() {
        for n in 0..options.spam {
            writeln!(
                log,
                "spam line {n:04} .........................................."
            )
            .expect("write log");
        }
    }
    match options.then.as_str() {
        "ready" => {
            daemon.ready().expect("report readiness");
            match &options.quit {
                Some(quit) => drain_fifo(quit),
                None => loop {
                    std::thread::park();
                },
            }
            ExitCode::SUCCESS
        }
        "fail" => {
            daemon
                .fail("the test asked the daemon to fail")
                .expect("report failure");
            ExitCode::FAILURE
        }
        "drop" => {
            drop(daemon);
            ExitCode::FAILURE
        }
        "hang" => loop {
            std::thread::park();
        },
        "exit" => std::process::exit(7),
        other => {
            let _ = daemon.fail(format_args!("unknown --then {other}"));
            ExitCode::from(2)
        }
    }
}

/// Blocks until a writer opened the FIFO and closed it.
fn drain_fifo(path: &PathBuf) {
    let mut fifo = std::fs::File::open(path).expect("open fifo");
    let mut sink = Vec::new();
    fifo.read_to_end(&mut sink).expect("read fifo");
}

fn hold_pidfile(path: &str) -> ExitCode {
    let pidfile = match Pidfile::create(path) {
        Ok(pidfile) => pidfile,
        Err(error) => {
            eprintln!("error: {}", error.report());
            return ExitCode::FAILURE;
        }
    };
    println!("locked {}", pidfile.pid());
    std::io::stdout().flush().expect("flush stdout");
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink).expect("read stdin");
    drop(pidfile);
    ExitCode::SUCCESS
}
