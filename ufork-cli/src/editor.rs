//! A small line editor fed byte by byte, for the `ufork>>` prompt: it owns no
//! descriptor and never blocks, so the arbiter's poll loop can drive it.

/// What a key press means to the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do but redraw the line.
    Redraw,
    /// A line was entered.
    Line(String),
    /// Ctrl-C.
    Interrupt,
    /// Ctrl-D on an empty line.
    Eof,
    /// Ctrl-L: clear the screen.
    Clear,
    /// Nothing changed.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Escape {
    #[default]
    No,
    Esc,
    /// ESC [ with the parameter bytes so far.
    Csi,
    /// ESC O.
    Ss3,
}

/// Line, cursor, history and the decoder state for escape sequences and UTF-8.
#[derive(Debug, Default)]
pub struct Editor {
    line: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// Index into `history` while browsing it, with the line being edited saved.
    browsing: Option<(usize, Vec<char>)>,
    escape: Escape,
    params: String,
    utf8: Vec<u8>,
}

const HISTORY_LEN: usize = 200;

impl Editor {
    /// The line being edited.
    pub fn line(&self) -> String {
        self.line.iter().collect()
    }

    /// The cursor position in characters.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Feeds one input byte.
    pub fn feed(&mut self, byte: u8) -> Action {
        match self.escape {
            Escape::Esc => {
                self.escape = match byte {
                    b'[' => Escape::Csi,
                    b'O' => Escape::Ss3,
                    _ => Escape::No,
                };
                self.params.clear();
                return Action::None;
            }
            Escape::Csi => {
                if byte.is_ascii_digit() || byte == b';' {
                    self.params.push(byte as char);
                    return Action::None;
                }
                self.escape = Escape::No;
                return self.csi(byte);
            }
            Escape::Ss3 => {
                self.escape = Escape::No;
                return self.csi(byte);
            }
            Escape::No => {}
        }
        if !self.utf8.is_empty() || byte >= 0x80 {
            self.utf8.push(byte);
            return match std::str::from_utf8(&self.utf8) {
                Ok(s) => {
                    let chars: Vec<char> = s.chars().collect();
                    self.utf8.clear();
                    // C1 controls (U+0080..U+009F) would drive the terminal
                    // when the line is echoed.
                    for c in chars.into_iter().filter(|c| !c.is_control()) {
                        self.insert(c);
                    }
                    Action::Redraw
                }
                Err(e) if e.error_len().is_none() && self.utf8.len() < 4 => Action::None,
                Err(_) => {
                    self.utf8.clear();
                    Action::None
                }
            };
        }
        match byte {
            0x1b => {
                self.escape = Escape::Esc;
                Action::None
            }
            b'\r' | b'\n' => {
                let line = self.line();
                self.line.clear();
                self.cursor = 0;
                self.browsing = None;
                let trimmed = line.trim();
                if !trimmed.is_empty() && self.history.last().map(String::as_str) != Some(trimmed) {
                    self.history.push(trimmed.to_owned());
                    if self.history.len() > HISTORY_LEN {
                        self.history.remove(0);
                    }
                }
                Action::Line(line)
            }
            0x03 => {
                self.line.clear();
                self.cursor = 0;
                self.browsing = None;
                Action::Interrupt
            }
            0x04 => {
                if self.line.is_empty() {
                    Action::Eof
                } else {
                    self.delete();
                    Action::Redraw
                }
            }
            0x01 => {
                self.cursor = 0;
                Action::Redraw
            }
            0x05 => {
                self.cursor = self.line.len();
                Action::Redraw
            }
            0x02 => self.left(),
            0x06 => self.right(),
            0x0b => {
                self.line.truncate(self.cursor);
                Action::Redraw
            }
            0x0c => Action::Clear,
            0x10 => self.up(),
            0x0e => self.down(),
            0x15 => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
                Action::Redraw
            }
            0x17 => {
                let mut start = self.cursor;
                while start > 0 && self.line[start - 1] == ' ' {
                    start -= 1;
                }
                while start > 0 && self.line[start - 1] != ' ' {
                    start -= 1;
                }
                self.line.drain(start..self.cursor);
                self.cursor = start;
                Action::Redraw
            }
            0x7f | 0x08 => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.line.remove(self.cursor);
                }
                Action::Redraw
            }
            b'\t' => {
                self.insert(' ');
                Action::Redraw
            }
            0x20..=0x7e => {
                self.insert(byte as char);
                Action::Redraw
            }
            _ => Action::None,
        }
    }

    fn csi(&mut self, last: u8) -> Action {
        match (last, self.params.as_str()) {
            (b'A', _) => self.up(),
            (b'B', _) => self.down(),
            (b'C', _) => self.right(),
            (b'D', _) => self.left(),
            (b'H', _) | (b'~', "1" | "7") => {
                self.cursor = 0;
                Action::Redraw
            }
            (b'F', _) | (b'~', "4" | "8") => {
                self.cursor = self.line.len();
                Action::Redraw
            }
            (b'~', "3") => {
                self.delete();
                Action::Redraw
            }
            _ => Action::None,
        }
    }

    fn insert(&mut self, c: char) {
        self.line.insert(self.cursor, c);
        self.cursor += 1;
    }

    fn delete(&mut self) {
        if self.cursor < self.line.len() {
            self.line.remove(self.cursor);
        }
    }

    fn left(&mut self) -> Action {
        self.cursor = self.cursor.saturating_sub(1);
        Action::Redraw
    }

    fn right(&mut self) -> Action {
        self.cursor = (self.cursor + 1).min(self.line.len());
        Action::Redraw
    }

    fn up(&mut self) -> Action {
        let index = match &self.browsing {
            Some((0, _)) => return Action::None,
            Some((i, _)) => i - 1,
            None if self.history.is_empty() => return Action::None,
            None => {
                self.browsing = Some((self.history.len(), self.line.clone()));
                self.history.len() - 1
            }
        };
        if let Some((i, _)) = &mut self.browsing {
            *i = index;
        }
        self.line = self.history[index].chars().collect();
        self.cursor = self.line.len();
        Action::Redraw
    }

    fn down(&mut self) -> Action {
        let Some((index, saved)) = &mut self.browsing else {
            return Action::None;
        };
        *index += 1;
        if *index >= self.history.len() {
            self.line = std::mem::take(saved);
            self.browsing = None;
        } else {
            self.line = self.history[*index].chars().collect();
        }
        self.cursor = self.line.len();
        Action::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(editor: &mut Editor, bytes: &[u8]) -> Vec<Action> {
        bytes
            .iter()
            .map(|&b| editor.feed(b))
            .filter(|a| !matches!(a, Action::None | Action::Redraw))
            .collect()
    }

    #[test]
    fn edits_lines_with_cursor_keys() {
        let mut e = Editor::default();
        // "stts", left twice, insert "a", End, Enter.
        let actions = feed(&mut e, b"stts\x1b[D\x1b[Da\x1b[Fus\r");
        assert_eq!(actions, vec![Action::Line("statsus".into())]);
        let actions = feed(&mut e, b"helo\x7f\x7flp\r");
        assert_eq!(actions, vec![Action::Line("help".into())]);
        let actions = feed(&mut e, b"workers 4\x15kill 1\r");
        assert_eq!(actions, vec![Action::Line("kill 1".into())]);
        let actions = feed(&mut e, b"xx 3\x01\x1b[C\x1b[C\x17kill\r");
        assert_eq!(actions, vec![Action::Line("kill 3".into())]);
    }

    #[test]
    fn browses_history_up_and_down() {
        let mut e = Editor::default();
        feed(&mut e, b"status\rhistory\r");
        feed(&mut e, b"wor\x1b[A");
        assert_eq!(e.line(), "history");
        feed(&mut e, b"\x1b[A\x1b[A");
        assert_eq!(e.line(), "status");
        feed(&mut e, b"\x1b[B\x1b[B");
        assert_eq!(e.line(), "wor");
    }

    #[test]
    fn control_keys_and_utf8() {
        let mut e = Editor::default();
        assert_eq!(feed(&mut e, b"\x04"), vec![Action::Eof]);
        assert_eq!(feed(&mut e, b"abc\x03"), vec![Action::Interrupt]);
        assert_eq!(e.line(), "");
        feed(&mut e, "né\u{9b}".as_bytes());
        assert_eq!((e.line().as_str(), e.cursor()), ("né", 2));
    }
}
