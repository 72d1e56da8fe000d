//! `--config PATH`: a TOML file whose keys are the long flag names of `serve`
//! or `run` (`bind = ["127.0.0.1:8000"]`, `workers = 3`, `max_requests =
//! 1000`; `max-requests` works too), plus `command` for `run`'s CMD and `dir`
//! for `serve`'s DIR. Flags on the command line override the file.
//!
//! The file is turned into flags placed before the command line's own, so
//! clap parses one command line and the file can take exactly what the flags
//! take. Each value is checked first with its flag's own parser, so a bad one
//! is reported with the file, the line and the key; a key that is no flag is
//! refused with the nearest flag name when one is close.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, CommandFactory};
use toml::{Spanned, Value};

use crate::cli::Cli;
use crate::failure::{Failure, Result, usage};

/// Flags that make no sense in a file: where the file is, and the help.
const NOT_IN_FILE: &[&str] = &["config", "help"];

/// The command line with the `--config` file's settings put in front of the
/// subcommand's own flags. Unchanged when there is no `--config`.
///
/// # Errors
///
/// A usage failure naming the file, the line and the key.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(sub) = args.get(1).and_then(|a| a.to_str()) else {
        return Ok(args);
    };
    if !matches!(sub, "serve" | "run") {
        return Ok(args);
    }
    let user = &args[2..];
    let Some(path) = config_path(user)? else {
        return Ok(args);
    };
    let command = Cli::command();
    let sub_command = command
        .find_subcommand(sub)
        .expect("serve and run are subcommands");
    let text = read(&path)?;
    let settings = parse(&path, &text)?;
    let given = given_flags(sub_command, user);
    let mut from_file: Vec<OsString> = Vec::new();
    let mut program: Option<Vec<String>> = None;
    let mut directory: Option<String> = None;
    for (key, value) in &settings {
        let name = key.get_ref().replace('_', "-");
        let at = Place {
            path: &path,
            line: line_of(&text, key.span().start),
            key: key.get_ref(),
        };
        if sub == "run" && name == "command" {
            program = Some(words(&at, value.get_ref())?);
            continue;
        }
        if sub == "serve" && name == "dir" {
            match value.get_ref() {
                Value::String(dir) => directory = Some(dir.clone()),
                other => {
                    return Err(at.error(format!(
                        "expected the directory to serve, as a string, found {}",
                        describe(other)
                    )));
                }
            }
            continue;
        }
        let arg = sub_command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && !NOT_IN_FILE.contains(&name.as_str()))
            .ok_or_else(|| unknown_key(&at, sub_command, sub))?;
        if given.contains(&name) {
            continue;
        }
        let words = flag_values(&at, arg, value.get_ref())?;
        if name == "bind" {
            check_binds(&at, sub, &words)?;
        }
        from_file.extend(words);
    }
    let mut merged: Vec<OsString> = args[..2].to_vec();
    merged.extend(from_file);
    merged.extend(user.iter().cloned());
    if let Some(program) = program
        && !user.iter().any(|a| a == "--")
    {
        merged.push("--".into());
        merged.extend(program.into_iter().map(OsString::from));
    }
    // DIR from the file when the command line names none (it is the only
    // positional argument of `serve`: parse the command line alone to see).
    if let Some(dir) = directory {
        let mut alone: Vec<OsString> = args[..2].to_vec();
        alone.extend(user.iter().cloned());
        let names_one = match <Cli as clap::Parser>::try_parse_from(alone) {
            Ok(cli) => matches!(cli.command, crate::cli::Command::Serve(s) if s.dir.is_some()),
            // The whole line will say what is wrong with it.
            Err(_) => true,
        };
        if !names_one {
            merged.push(OsString::from(dir));
        }
    }
    Ok(merged)
}

/// The largest `--config` file read: a settings file is a few hundred bytes,
/// and a bound keeps `--config /dev/zero` or a log named by mistake from
/// reading until memory runs out.
const MAX_FILE: u64 = 1 << 20;

/// The text of the `--config` file: a regular file of at most [`MAX_FILE`]
/// bytes. A device, FIFO or directory is refused before it is opened (opening
/// a FIFO would wait for a writer); the read itself stops one byte past the
/// bound, so a file that grows after the check is refused too.
fn read(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let cannot = |e: &std::io::Error| {
        usage(format!(
            "--config {}: cannot read it: {}",
            path.display(),
            crate::failure::io_text(e)
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(usage(format!(
            "--config {}: not a regular file (a settings file is expected)",
            path.display()
        )));
    }
    let too_big = || {
        usage(format!(
            "--config {}: larger than the {} KiB a settings file may have",
            path.display(),
            MAX_FILE / 1024
        ))
    };
    if meta.len() > MAX_FILE {
        return Err(too_big());
    }
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| cannot(&e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| {
        usage(format!(
            "--config {}: cannot read it: not UTF-8 text",
            path.display()
        ))
    })
}

/// Where a setting is, for messages: `--config FILE line N: KEY`.
struct Place<'a> {
    path: &'a Path,
    line: usize,
    key: &'a str,
}

impl Place<'_> {
    fn error(&self, message: impl std::fmt::Display) -> Failure {
        usage(format!(
            "--config {} line {}: {}: {message}",
            self.path.display(),
            self.line,
            self.key
        ))
    }
}

/// The `--config` (or `-c`) value among the subcommand's own arguments.
fn config_path(user: &[OsString]) -> Result<Option<std::path::PathBuf>> {
    let mut found = None;
    let mut iter = user.iter();
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if let Some(value) = text.strip_prefix("--config=") {
            found = Some(value.into());
        } else if text == "--config" || text == "-c" {
            match iter.next() {
                Some(value) => found = Some(value.into()),
                None => {
                    return Err(usage(
                        "--config needs a PATH: the TOML file with the settings",
                    ));
                }
            }
        } else if let Some(value) = text.strip_prefix("-c")
            && !text.starts_with("--")
        {
            found = Some(value.into());
        }
    }
    Ok(found)
}

/// The file's keys and values, with where they are.
fn parse(path: &Path, text: &str) -> Result<BTreeMap<Spanned<String>, Spanned<Value>>> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        let message = e.message().trim_end().replace('\n', "; ");
        // TOML integers are 64-bit: the parser's own words for a longer
        // one name its internal type.
        let message = if message.starts_with("invalid type: integer") && message.contains("i128") {
            format!(
                "an integer past what TOML holds ({}); no setting takes one that large",
                i64::MAX
            )
        } else {
            message
        };
        usage(format!(
            "--config {} line {line}: {message}",
            path.display()
        ))
    })
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .unwrap_or(text)
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The long names of the flags given on the command line (before `--`).
fn given_flags(sub: &clap::Command, user: &[OsString]) -> Vec<String> {
    let mut names = Vec::new();
    for arg in user {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or(long);
            // An alias (gunicorn's `--pid`) stands for its flag's long name.
            let long = sub
                .get_arguments()
                .find(|a| {
                    a.get_long() == Some(name)
                        || a.get_all_aliases().is_some_and(|all| all.contains(&name))
                })
                .and_then(|a| a.get_long())
                .unwrap_or(name);
            names.push(long.to_owned());
        } else if let Some(short) = text.strip_prefix('-').and_then(|s| s.chars().next()) {
            if let Some(long) = sub
                .get_arguments()
                .find(|a| a.get_short() == Some(short))
                .and_then(|a| a.get_long())
            {
                names.push(long.to_owned());
            }
        }
    }
    names
}

/// The command-line words for one setting, each value checked by the flag's
/// own parser.
fn flag_values(at: &Place<'_>, arg: &clap::Arg, value: &Value) -> Result<Vec<OsString>> {
    let long = arg.get_long().unwrap_or_default();
    let flag = format!("--{long}");
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            Value::Boolean(true) => Ok(vec![flag.into()]),
            Value::Boolean(false) => Ok(Vec::new()),
            other => Err(at.error(format!("expected true or false, found {}", describe(other)))),
        };
    }
    let values = match value {
        Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => items
            .iter()
            .map(|v| scalar(at, v))
            .collect::<Result<Vec<_>>>()?,
        Value::Array(_) => {
            return Err(at.error("takes one value, not a list"));
        }
        other => vec![scalar(at, other)?],
    };
    // The flag alone in a command of its own: its parser checks the value,
    // and what it requires of other flags is for the whole line to check.
    let alone = clap::Command::new("ufork").no_binary_name(true).arg(
        arg.clone()
            .requires(clap::builder::Resettable::Reset)
            .required(false),
    );
    let mut words = Vec::new();
    for text in values {
        if let Err(e) = alone
            .clone()
            .try_get_matches_from([flag.as_str(), text.as_str()])
        {
            return Err(at.error(clap_reason(&e, &text)));
        }
        words.push(OsString::from(&flag));
        words.push(OsString::from(text));
    }
    Ok(words)
}

/// `bind` values are checked as `--bind` would check them (without binding).
fn check_binds(at: &Place<'_>, sub: &str, words: &[OsString]) -> Result<()> {
    let binds: Vec<String> = words
        .iter()
        .skip(1)
        .step_by(2)
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let options = crate::listen::Options {
        for_run: sub == "run",
        unix_mode: 0o660,
        backlog: crate::listen::DEFAULT_BACKLOG,
    };
    crate::listen::resolve_all(&binds, options)
        .map(|_| ())
        .map_err(|e| at.error(e.to_string().trim_start_matches("--bind ")))
}

/// What clap says is wrong with a value, without its framing.
fn clap_reason(error: &clap::Error, text: &str) -> String {
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid value");
    let first = first.trim_start_matches("error: ");
    // "invalid value 'x' for '--flag <N>': reason" → "invalid value `x`: reason"
    match first.split_once("': ") {
        Some((_, reason)) => format!("invalid value `{text}`: {reason}"),
        None => first.to_owned(),
    }
}

/// A string, number or boolean as the command line would spell it.
fn scalar(at: &Place<'_>, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(at.error(format!(
            "expected a string or a number, found {}",
            describe(other)
        ))),
    }
}

/// `command = ["python3", "app.py"]` (or one string, split at spaces; one
/// with quotes or backslashes is refused, since a shell would split it
/// otherwise).
fn words(at: &Place<'_>, value: &Value) -> Result<Vec<String>> {
    let words = match value {
        Value::String(s) if s.contains(['"', '\'', '\\']) => {
            return Err(at.error(
                "a command with quotes or backslashes is not split as a shell would split it: give it as a list, like [\"sh\", \"-c\", \"echo 'a  b'\"]",
            ));
        }
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(at.error(format!(
                    "expected the program and its arguments as strings, found {}",
                    describe(other)
                ))),
            })
            .collect::<Result<Vec<_>>>()?,
        other => {
            return Err(at.error(format!(
                "expected the program and its arguments, like [\"python3\", \"app.py\"], found {}",
                describe(other)
            )));
        }
    };
    if Vec::is_empty(&words) {
        return Err(at.error("names no program"));
    }
    Ok(words)
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// An unknown key, with the nearest flag name when one is close.
fn unknown_key(at: &Place<'_>, sub: &clap::Command, name: &str) -> Failure {
    let key = at.key.replace('-', "_");
    if let Some(instead) = crate::usage::instead(name, &format!("--{}", key.replace('_', "-"))) {
        return at.error(format!("unknown key for `ufork {name}`: {instead}"));
    }
    let mut known: Vec<String> = sub
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_IN_FILE.contains(l))
        .map(|l| l.replace('-', "_"))
        .collect();
    match name {
        "run" => known.push("command".to_owned()),
        "serve" => known.push("dir".to_owned()),
        _ => {}
    }
    let nearest = known
        .iter()
        .map(|k| (distance(&key, k), k))
        .filter(|(d, _)| *d <= 2 || (*d <= 3 && key.len() > 8))
        .min();
    match nearest {
        Some((_, k)) => at.error(format!(
            "unknown key for `ufork {name}`; did you mean `{k}`?"
        )),
        None => at.error(format!(
            "unknown key for `ufork {name}`; keys are its long flag names (see `ufork {name} --help`)"
        )),
    }
}

/// Levenshtein distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_with(file: &str, args: &[&str]) -> Result<Vec<String>> {
        let dir = std::env::temp_dir().join(format!("ufork-config-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["ufork".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push("--config".into());
        argv.push(path.clone().into());
        let out = expand(argv);
        let _ = std::fs::remove_file(&path);
        out.map(|v| {
            v.into_iter()
                .map(|a| a.into_string().unwrap())
                .filter(|a| a != "--config" && !a.ends_with(".toml"))
                .collect()
        })
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let out = expand_with(
            "bind = [\"127.0.0.1:0\", \"127.0.0.1:1\"]\nworkers = 3\nno_prompt = true\nmax-requests = 10\n",
            &["serve", "-w", "2"],
        )
        .unwrap();
        assert_eq!(
            out,
            [
                "ufork",
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--bind",
                "127.0.0.1:1",
                "--max-requests",
                "10",
                "--no-prompt",
                "-w",
                "2"
            ]
        );
    }

    #[test]
    fn serve_takes_dir_from_the_file_unless_the_command_line_names_one() {
        let out = expand_with("dir = \"./site\"\n", &["serve", "-w", "2"]).unwrap();
        assert_eq!(out, ["ufork", "serve", "-w", "2", "./site"]);
        let out = expand_with("dir = \"./site\"\n", &["serve", "./other"]).unwrap();
        assert_eq!(out, ["ufork", "serve", "./other"]);
        let e = expand_with("dir = 3\n", &["serve"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 1: dir: expected the directory"),
            "{e}"
        );
    }

    #[test]
    fn bad_keys_and_values_name_the_line() {
        let e = expand_with("workers = 2\nwrokers = 3\n", &["serve"]).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "line 2: wrokers: unknown key for `ufork serve`; did you mean `workers`?"
            ),
            "{e}"
        );
        let e = expand_with("\n\nworkers = 0\n", &["serve"]).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("line 3: workers: invalid value `0`: must be at least 1"),
            "{e}"
        );
        let e = expand_with("workers = [1, 2]\n", &["serve"]).unwrap_err();
        assert!(e.to_string().contains("takes one value, not a list"), "{e}");
        let e = expand_with("no_prompt = 1\n", &["serve"]).unwrap_err();
        assert!(e.to_string().contains("expected true or false"), "{e}");
        let e = expand_with("workers = \n", &["serve"]).unwrap_err();
        assert!(e.to_string().contains("line 1: "), "{e}");
        let e = expand_with("\nworkers = 99999999999999999999999\n", &["serve"]).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "line 2: an integer past what TOML holds (9223372036854775807); no setting takes one that large"
            ),
            "{e}"
        );
        let e = expand_with("colour = 1\n", &["serve"]).unwrap_err();
        assert!(
            e.to_string().contains("keys are its long flag names"),
            "{e}"
        );
    }

    #[test]
    fn suggestions_are_near_misses_only() {
        assert_eq!(distance("wrokers", "workers"), 2);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("bind", "bind"), 0);
    }
}
