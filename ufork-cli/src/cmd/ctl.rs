//! `ufork ctl`: one console command to a running pool, or a prompt on it.

use std::ops::ControlFlow;
use std::time::Duration;

use clap::Args;

use crate::cmd::target::{self, Route, TargetArgs};
use crate::control::Client;
use crate::failure::{self, Result, runtime};
use crate::{commands, console, editor, term};

/// Flags for `ufork ctl`.
#[derive(Debug, Args)]
#[command(after_help = "\
Commands: help, status, workers N|+|-, restart [SLOT|all], kill SLOT, history,
reopen, stop [now]. Without COMMAND on a terminal, the prompt has the same line
editing and history as the `ufork>>` prompt (Ctrl-D or `quit` leaves); from a
pipe, every line is a command.

Examples:
  ufork ctl --control-socket /tmp/ufork.sock status
  ufork ctl --control-socket /tmp/ufork.sock workers +
  ufork ctl --control-socket /tmp/ufork.sock        (interactive prompt)
  ufork ctl --pidfile /tmp/ufork.pid status         (the socket beside the pidfile)")]
pub struct CtlArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// One console command (like `status` or `workers 4`); none opens a prompt.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// Runs `ufork ctl`.
pub fn exec(args: &CtlArgs) -> Result<()> {
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
    // Nothing listening is "not running" (exit 3), as for `stop` and `reload`.
    let mut client = match target::route(&args.target).map_err(target::nothing_to_do)? {
        Route::Socket { client, .. } => client,
        Route::Signal { arbiter, why, .. } => {
            return Err(runtime(format!(
                "{} runs without a control socket to ask ({why}); start it with --control-socket",
                arbiter.describe()
            )));
        }
    };
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
        return prompt(&mut client);
    }
    // Not a terminal: plain lines, no prompt (`echo status | ufork ctl ...`),
    // and exit 1 if any of them failed, as one command would.
    let stdin = std::io::stdin();
    let mut failed = 0usize;
    loop {
        let mut line = String::new();
        let read = stdin
            .read_line(&mut line)
            .map_err(|e| runtime(e.to_string()))?;
        if read == 0 {
            break;
        }
        let (flow, ok) = one_line(&mut client, line.trim())?;
        failed += usize::from(!ok);
        if flow.is_break() {
            break;
        }
    }
    match failed {
        0 => Ok(()),
        1 => Err(runtime("1 command failed")),
        n => Err(runtime(format!("{n} commands failed"))),
    }
}

/// Runs one line typed at the `ufork ctl` prompt; `Break` when done, and
/// whether the command succeeded.
fn one_line(client: &mut Client, line: &str) -> Result<(ControlFlow<()>, bool)> {
    if line.is_empty() {
        return Ok((ControlFlow::Continue(()), true));
    }
    if matches!(line, "quit" | "exit") {
        return Ok((ControlFlow::Break(()), true));
    }
    let (text, ok) = client.send_reconnecting(line)?;
    let text = if ok { text } else { format!("error: {text}") };
    term::print(term::Stream::Out, text.as_bytes());
    if ok && line.split_whitespace().next() == Some("stop") {
        if client.wait_closed(Duration::from_secs(120)) {
            term::say("stopped");
        }
        return Ok((ControlFlow::Break(()), true));
    }
    Ok((ControlFlow::Continue(()), ok))
}

/// The `ufork ctl` prompt on a terminal: the `ufork>>` line editor in raw
/// mode (main restores the terminal on every way out, panics included).
fn prompt(client: &mut Client) -> Result<()> {
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
                    if one_line(client, line.trim())?.0.is_break() {
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
