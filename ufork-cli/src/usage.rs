//! Clap's errors rewritten for people: one line on stderr with a hint and
//! exit 2; help and version on stdout with exit 0.

use std::io::Write;
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::cli::Cli;

/// `ufork help --help` (or `-h`): clap's help subcommand takes no flags and
/// would call `--help` an unknown subcommand; print its own help instead.
pub fn help_on_help() -> Option<ExitCode> {
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
pub fn report(error: &clap::Error) -> ExitCode {
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    if error.kind() == ErrorKind::UnknownArgument {
        if let Some(ContextValue::String(flag)) = error.get(ContextKind::InvalidArg) {
            let subcommand = args.first().map_or("", String::as_str);
            if let Some(instead) = instead(subcommand, flag) {
                let _ = writeln!(
                    std::io::stderr(),
                    "ufork: error: {instead} (see `ufork {subcommand} --help`)"
                );
                return ExitCode::from(2);
            }
        }
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
    // An enum flag's bad value: clap lists the good ones on a line below.
    if let Some(values) = rendered.lines().find_map(|l| {
        l.trim()
            .strip_prefix("[possible values: ")
            .and_then(|v| v.strip_suffix(']'))
    }) {
        first = format!("{first}; one of: {values}");
    }
    let tip = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("tip: "))
        .map(|t| format!("; {t}"))
        .unwrap_or_else(|| hint(&args, error.kind()).unwrap_or_default());
    let _ = writeln!(
        std::io::stderr(),
        "ufork: error: {first}{tip} (see `ufork --help`)"
    );
    ExitCode::from(2)
}

/// gunicorn flags ufork does not take, and what to do instead: clap's own
/// suggestion would be a flag with a similar name (`--worker-class`: "a
/// similar argument exists: '--workers'") or a `--` that makes no sense.
const GUNICORN_ONLY: &[(&[&str], &str)] = &[
    (
        &["-k", "--worker-class"],
        "ufork has no worker classes: a `serve` worker runs --threads serving threads, each an event loop over many connections; for a gunicorn worker class, supervise gunicorn itself: ufork run --bind ADDR -- gunicorn -w 1 -k CLASS APP (gunicorn takes the socket from LISTEN_FDS; a --bind fd://3 of its own would take it a second time)",
    ),
    (
        &["--worker-connections"],
        "ufork serve has no per-worker connection limit (each serving thread's event loop holds any number); --backlog bounds the connections waiting to be accepted",
    ),
    (
        &["--limit-request-field_size"],
        "ufork limits the whole request head, not each header field: use --limit-request-field-size BYTES (default 64K), which no field can exceed either",
    ),
    (
        &["--forwarded-allow-ips"],
        "ufork serve reads no X-Forwarded-* headers (the access log names the connection's peer), so there is no proxy to trust: drop the flag",
    ),
    (
        &["-n", "--name"],
        "ufork sets no process names: tell pools apart by --pidfile or --control-socket (`ufork status --pidfile PATH`); ps shows each arbiter's command line",
    ),
    (
        &["--capture-output"],
        "ufork always captures the workers' stdout and stderr (prefixed with slot and pid, into --log-file when given): drop the flag",
    ),
    (
        &["--print-config"],
        "the command line and the --config file are the whole configuration (the command line wins); --check-config checks them and exits",
    ),
];

/// What to use instead of `flag`, which `subcommand` does not take: a
/// gunicorn flag ufork has no use for, or a flag of the other pool
/// subcommand (`serve`'s `--threads` given to `run`). Also for a `--config`
/// file's unknown key.
pub fn instead(subcommand: &str, flag: &str) -> Option<String> {
    let flag = flag.split('=').next().unwrap_or(flag);
    if !matches!(subcommand, "serve" | "run") {
        return None;
    }
    if flag == "--preload" {
        return Some(if subcommand == "serve" {
            "ufork serve loads everything before it forks its workers already: drop --preload"
                .to_owned()
        } else {
            "each `ufork run` worker execs CMD, so nothing is loaded before the fork: drop --preload (a program that preloads, as gunicorn --preload does, does so in each worker)".to_owned()
        });
    }
    if let Some((_, why)) = GUNICORN_ONLY
        .iter()
        .find(|(names, _)| names.contains(&flag))
    {
        return Some(format!("{flag}: {why}"));
    }
    let other = if subcommand == "serve" {
        "run"
    } else {
        "serve"
    };
    let mut command = <Cli as clap::CommandFactory>::command();
    command.build();
    let takes = command.find_subcommand(other)?.get_arguments().any(|a| {
        a.get_long()
            .is_some_and(|l| flag.strip_prefix("--") == Some(l))
            || a.get_short().is_some_and(|c| flag == format!("-{c}"))
    });
    takes.then(|| {
        if subcommand == "run" {
            format!(
                "{flag} is a flag of `ufork serve`, not of `ufork run`, whose workers are CMD: give the program its own setting after `--` (ufork run [FLAGS] -- CMD [ARG]...)"
            )
        } else {
            format!(
                "{flag} is a flag of `ufork run` (which supervises a program of yours), not of `ufork serve`"
            )
        }
    })
}

/// A hint for a usage error clap cannot give, from the arguments after the
/// binary's name.
fn hint(args: &[String], kind: ErrorKind) -> Option<String> {
    match args.first().map(String::as_str) {
        Some("run") if kind == ErrorKind::UnknownArgument => {
            Some("; put the program after `--`: ufork run [FLAGS] -- CMD [ARG]...".to_owned())
        }
        // `ctl` takes every word from COMMAND on as the command (`workers -`
        // has a dash), so a flag typed after it is a word of the command and
        // clap reports it missing: say where it goes.
        Some("ctl") if kind == ErrorKind::MissingRequiredArgument => {
            let flag = args.iter().skip(1).find(|a| {
                ["--pidfile", "--control-socket"]
                    .iter()
                    .any(|f| a.as_str() == *f || a.starts_with(&format!("{f}=")))
            })?;
            let flag = flag.split('=').next().unwrap_or(flag);
            Some(format!(
                "; {flag} goes before COMMAND: ufork ctl {flag} PATH COMMAND"
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_ctl_flag_after_the_command_is_pointed_before_it() {
        let missing = ErrorKind::MissingRequiredArgument;
        assert_eq!(
            hint(&words("ctl status --pidfile /tmp/p.pid"), missing).as_deref(),
            Some("; --pidfile goes before COMMAND: ufork ctl --pidfile PATH COMMAND")
        );
        assert_eq!(
            hint(&words("ctl workers + --control-socket=/tmp/s"), missing).as_deref(),
            Some("; --control-socket goes before COMMAND: ufork ctl --control-socket PATH COMMAND")
        );
        assert_eq!(hint(&words("ctl status"), missing), None);
        assert_eq!(hint(&words("status"), missing), None);
        assert!(
            hint(&words("run python3"), ErrorKind::UnknownArgument)
                .is_some_and(|h| h.contains("after `--`"))
        );
    }
}
