//! Everything the arbiter prints to the terminal goes through here, so that log
//! lines and worker output never tear the `ufork>>` prompt: while the prompt is
//! shown, a line clears it, prints, and draws it again.

use std::io::Write;
use std::sync::Mutex;

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

fn prompt() -> std::sync::MutexGuard<'static, Prompt> {
    PROMPT.lock().unwrap_or_else(|p| p.into_inner())
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
    let mut p = prompt();
    let out = std::io::stdout();
    let mut out = out.lock();
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
    prompt().shown = false;
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
    let p = prompt();
    if p.shown {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let _ = write!(out, "\r\x1b[K");
        let _ = out.flush();
        match stream {
            Stream::Out => {
                let _ = out.write_all(text);
            }
            Stream::Err => {
                let _ = std::io::stderr().write_all(text);
            }
        }
        draw(&mut out, &p);
        let _ = out.flush();
    } else {
        let _ = match stream {
            Stream::Out => {
                let mut out = std::io::stdout().lock();
                out.write_all(text).and_then(|()| out.flush())
            }
            Stream::Err => std::io::stderr().write_all(text),
        };
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

/// A `Write` that prints whole lines through [`print`] (for worker output).
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
