//! The `ufork>>` prompt: a [`Layer`] that puts the terminal in raw mode and
//! runs a line editor inside the arbiter's poll loop (no thread of its own).

use std::os::fd::AsFd;
use std::sync::Mutex;

use rustix::termios::{self, InputModes, LocalModes, OptionalActions, SpecialCodeIndex, Termios};
use ufork_core::{ChildInfo, Context, ExitRecord, Interest, Layer, Readiness, Token};

use crate::commands;
use crate::editor::{Action, Editor};
use crate::term;

/// The terminal settings to restore, kept where a panic hook can reach them.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Puts the terminal back as it was (idempotent; safe from a panic hook).
pub fn restore_terminal() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(saved) = saved {
        term::set_prompt(None);
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &saved);
    }
}

/// Puts the terminal on stdin in raw input mode for the line editor, saving
/// its settings for [`restore_terminal`].
///
/// # Errors
///
/// stdin is not a terminal, or its settings cannot be changed.
pub fn enter_raw() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin)?;
    let mut raw = saved.clone();
    // Raw input, cooked output: log lines keep their "\n" -> "\r\n".
    raw.local_modes
        .remove(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG | LocalModes::IEXTEN);
    raw.input_modes
        .remove(InputModes::IXON | InputModes::ICRNL | InputModes::INLCR);
    raw.special_codes[SpecialCodeIndex::VMIN] = 1;
    raw.special_codes[SpecialCodeIndex::VTIME] = 0;
    // Saved first, so a failure half-way still restores.
    *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
    termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
    Ok(())
}

/// Whether the prompt can run: stdin and stdout are terminals and this
/// process is in the terminal's foreground (started with `&`, reading the
/// terminal would only earn it SIGTTIN).
pub fn available() -> bool {
    termios::isatty(std::io::stdin())
        && termios::isatty(std::io::stdout())
        && termios::tcgetpgrp(std::io::stdin()).is_ok_and(|fg| fg == rustix::process::getpgrp())
}

/// The prompt layer.
#[derive(Debug, Default)]
pub struct Console {
    editor: Editor,
    token: Option<Token>,
    interrupts: u32,
    stopping: bool,
    last_left: Option<usize>,
}

impl Console {
    /// A prompt on the process' stdin.
    pub fn new() -> Self {
        Self::default()
    }

    fn redraw(&self) {
        if self.token.is_some() {
            term::set_prompt(Some((&self.editor.line(), self.editor.cursor())));
        }
    }

    fn leave(&mut self, ctx: &mut Context<'_>) {
        if let Some(token) = self.token.take() {
            ctx.deregister(token);
        }
        restore_terminal();
    }

    fn interrupt(&mut self, ctx: &mut Context<'_>) {
        self.interrupts += 1;
        let handle = ctx.handle();
        if self.interrupts == 1 && !self.stopping {
            let n = handle.snapshot().workers.len();
            term::say(format!(
                "^C stopping {n} worker{}… (Ctrl-C again to stop {} now)",
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "them" }
            ));
            handle.stop();
        } else {
            term::say("^C stopping every worker now");
            handle.stop_now();
        }
    }

    fn run_line(&mut self, line: &str, ctx: &mut Context<'_>) {
        // The entered line stays on screen above the output, like a shell.
        term::set_prompt(None);
        term::say(format!("{}{line}", term::PROMPT_TEXT));
        let reply = commands::execute(line, &ctx.handle());
        if !reply.text.is_empty() {
            let text = if reply.ok {
                reply.text
            } else {
                format!("error: {}", reply.text)
            };
            term::print(term::Stream::Out, text.as_bytes());
        }
    }
}

impl Layer for Console {
    fn started(&mut self, ctx: &mut Context<'_>) {
        if let Err(e) = enter_raw() {
            log::warn!(target: "ufork", "no prompt: cannot set up the terminal: {e}");
            return;
        }
        self.token = Some(ctx.register(std::io::stdin().as_fd(), Interest::READABLE));
        term::say("type `help` for commands; Ctrl-C stops every worker, Ctrl-D leaves the prompt");
        self.redraw();
    }

    fn in_child(&mut self, _child: &ChildInfo) -> std::io::Result<()> {
        // The worker has a copy of the arbiter's memory: it must neither draw
        // the prompt nor put the terminal back on its way out.
        term::forget_prompt();
        SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.token = None;
        Ok(())
    }

    fn event(&mut self, token: Token, readiness: Readiness, ctx: &mut Context<'_>) {
        if Some(token) != self.token {
            return;
        }
        let mut buf = [0u8; 256];
        let n = match rustix::io::read(std::io::stdin(), &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => return,
            Err(_) => 0,
        };
        if n == 0 {
            if readiness.hangup || readiness.error || readiness.readable {
                self.leave(ctx);
            }
            return;
        }
        for &byte in &buf[..n] {
            match self.editor.feed(byte) {
                Action::Line(line) => {
                    self.run_line(&line, ctx);
                }
                Action::Interrupt => {
                    term::set_prompt(None);
                    self.interrupt(ctx);
                }
                Action::Eof => {
                    self.leave(ctx);
                    term::say(
                        "left the prompt; still serving (Ctrl-C or SIGTERM stops the workers)",
                    );
                    return;
                }
                Action::Clear => {
                    term::print(term::Stream::Out, b"\x1b[H\x1b[2J");
                }
                Action::Redraw | Action::None => {}
            }
        }
        self.redraw();
    }

    fn stopping(&mut self, ctx: &mut Context<'_>) {
        self.stopping = true;
        self.last_left = Some(ctx.handle().snapshot().workers.len());
    }

    fn exited(&mut self, _record: &ExitRecord, ctx: &mut Context<'_>) {
        if !self.stopping {
            return;
        }
        let _ = ctx;
        if let Some(left) = &mut self.last_left {
            *left = left.saturating_sub(1);
            if *left > 0 {
                let noun = if *left == 1 { "worker" } else { "workers" };
                term::say(format!("  waiting for {left} {noun}…"));
            }
        }
    }

    fn stopped(&mut self) {
        self.token = None;
        restore_terminal();
        if self.stopping {
            term::say("all workers stopped");
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        restore_terminal();
    }
}
