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
