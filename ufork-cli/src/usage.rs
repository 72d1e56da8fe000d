//! Clap's errors rewritten for people: one line on stderr with a hint and
//! exit 2; help and version on stdout with exit 0.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;

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
        .unwrap_or_else(|| {
            let args: Vec<String> = std::env::args().skip(1).collect();
            hint(&args, error.kind()).unwrap_or_default()
        });
    let _ = writeln!(
        std::io::stderr(),
        "ufork: error: {first}{tip} (see `ufork --help`)"
    );
    ExitCode::from(2)
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
