//! Everything the arbiter prints to the terminal goes through here, so that log
//! lines and worker output never tear the `ufork>>` prompt: while the prompt is
//! shown, a line clears it, prints, and draws it again.

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

/// The prompt as it is on screen.
#[derive(Debug, Default)]
struct Prompt {
    shown: bool,
    line: String,
    /// Cursor position in characters from the start of `line`.
    cursor: usize,
}

static PROMPT: Mutex<Prompt> = Mutex::new(Prompt {
    shown: false,
    line: String::new(),
    cursor: 0,
});

/// The prompt's text.
pub const PROMPT_TEXT: &str = "ufork>> ";

/// The process that owns the prompt. A forked worker is another process: it
/// never takes the prompt's lock (another thread of the arbiter, the capture's
/// writer, may have held it at the fork) and writes straight to its fds.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// Makes this process the owner of the terminal output.
pub fn init() {
    OWNER.store(std::process::id() as i32, Ordering::Relaxed);
}

fn is_owner() -> bool {
    OWNER.load(Ordering::Relaxed) == std::process::id() as i32
}

fn prompt() -> std::sync::MutexGuard<'static, Prompt> {
    PROMPT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes to fd 1 or 2 directly, without std's stdio lock (which a thread
/// may hold while the arbiter forks).
struct Raw(Stream);

impl Write for Raw {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self.0 {
            Stream::Out => rustix::io::write(std::io::stdout().as_fd(), buf),
            Stream::Err => rustix::io::write(std::io::stderr().as_fd(), buf),
        };
        n.map_err(std::io::Error::from)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn draw(out: &mut impl Write, p: &Prompt) {
    let _ = write!(out, "\r\x1b[K{PROMPT_TEXT}{}", p.line);
    let back = p.line.chars().count() - p.cursor;
    if back > 0 {
        let _ = write!(out, "\x1b[{back}D");
    }
}

/// Shows the prompt with this line and cursor (or hides it with `None`).
pub fn set_prompt(state: Option<(&str, usize)>) {
    if !is_owner() {
        return;
    }
    let mut p = prompt();
    let mut out = Raw(Stream::Out);
    match state {
        Some((line, cursor)) => {
            p.shown = true;
            p.line.clear();
            p.line.push_str(line);
            p.cursor = cursor;
            draw(&mut out, &p);
        }
        None => {
            if p.shown {
                let _ = write!(out, "\r\x1b[K");
            }
            p.shown = false;
        }
    }
    let _ = out.flush();
}

/// Forgets the prompt without touching the screen: a forked worker inherits
/// the arbiter's memory but must never draw the arbiter's prompt.
pub fn forget_prompt() {
    OWNER.store(0, Ordering::Relaxed);
}

/// Which stream a text goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

/// Prints whole lines (`text` should end with a newline) above the prompt.
pub fn print(stream: Stream, text: &[u8]) {
    if !is_owner() {
        let _ = Raw(stream).write_all(text);
        return;
    }
    let p = prompt();
    if p.shown {
        let mut out = Raw(Stream::Out);
        let _ = out.write_all(b"\r\x1b[K");
        let _ = Raw(stream).write_all(text);
        let mut redraw = Vec::new();
        draw(&mut redraw, &p);
        let _ = out.write_all(&redraw);
    } else {
        let _ = Raw(stream).write_all(text);
    }
}

/// Prints one line of text to standard output, above the prompt if shown.
pub fn say(line: impl AsRef<str>) {
    let mut text = line.as_ref().to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    print(Stream::Out, text.as_bytes());
}

/// A `Write` that prints whole lines through [`print()`] (for worker output).
#[derive(Debug)]
pub struct LineWriter {
    stream: Stream,
}

impl LineWriter {
    /// Prints to `stream`.
    pub fn new(stream: Stream) -> Self {
        Self { stream }
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        print(self.stream, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
