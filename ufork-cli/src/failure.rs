//! What can end a `ufork` command, and the exit code each maps to.

use std::fmt;
use std::process::ExitCode;

/// A reason the command ends without success; `main` prints it on one line.
#[derive(Debug)]
pub enum Failure {
    /// The command line is wrong: exit code 2.
    Usage(String),
    /// Something failed while running: exit code 1.
    Runtime(String),
    /// `ufork status` found nothing running: exit code 3 (not an error).
    NotRunning(String),
    /// `ufork stop` or `reload` found nothing running to act on: exit code 3,
    /// the message on stderr.
    NothingToDo(String),
    /// `ufork status` found the pool degraded (fewer workers ready than its
    /// target for longer than the start timeout): exit code 4, the message
    /// on stderr.
    Degraded(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            Self::Runtime(_) => ExitCode::from(1),
            Self::NotRunning(_) | Self::NothingToDo(_) => ExitCode::from(3),
            Self::Degraded(_) => ExitCode::from(4),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m)
            | Self::Runtime(m)
            | Self::NotRunning(m)
            | Self::NothingToDo(m)
            | Self::Degraded(m) => f.write_str(m),
        }
    }
}

/// A runtime failure with a message.
pub fn runtime(message: impl Into<String>) -> Failure {
    Failure::Runtime(message.into())
}

/// A usage failure with a message.
pub fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// A runtime failure when the pool gave up (`--give-up-after`), naming the
/// failure that made it: the pool stopped because it cannot start.
pub fn gave_up(outcome: &ufork_core::Outcome, after: u32) -> Result<()> {
    if outcome.cause != ufork_core::StopCause::GaveUp {
        return Ok(());
    }
    let last = outcome
        .last_failure
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string);
    Err(runtime(format!(
        "gave up: every worker failed {after} time{} in a row without staying up (--give-up-after); the last: {last}",
        if after == 1 { "" } else { "s" }
    )))
}

/// The message of an error and its sources on one line: `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// An I/O error without Rust's `(os error N)` suffix, lowercase first letter.
pub fn io_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

pub type Result<T, E = Failure> = std::result::Result<T, E>;
