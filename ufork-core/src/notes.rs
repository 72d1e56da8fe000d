//! Notes from workers to the arbiter over one shared pipe: "I am ready" (only
//! while the arbiter waits for it) and "here is why I am exiting". Each note is
//! one `write` under PIPE_BUF bytes, so notes from different workers never mix.

use std::os::fd::BorrowedFd;

const MAX_NOTE: usize = 4000;
const HEADER: usize = 1 + 8 + 4 + 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoteKind {
    Ready = 1,
    Failed = 2,
    Panicked = 3,
}

#[derive(Debug)]
pub(crate) struct Note {
    pub(crate) kind: NoteKind,
    pub(crate) slot: usize,
    pub(crate) generation: u32,
    pub(crate) text: String,
}

pub(crate) fn send(fd: BorrowedFd<'_>, kind: NoteKind, slot: usize, generation: u32, text: &str) {
    let mut len = text.len().min(MAX_NOTE - HEADER);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    let mut buf = Vec::with_capacity(HEADER + len);
    buf.push(kind as u8);
    buf.extend_from_slice(&(slot as u64).to_le_bytes());
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.extend_from_slice(&(len as u16).to_le_bytes());
    buf.extend_from_slice(&text.as_bytes()[..len]);
    // The pipe is non-blocking: if the arbiter is so far behind that it is full,
    // the note is dropped rather than hanging the worker.
    let _ = rustix::io::write(fd, &buf);
}

/// Splits whole notes off the front of `buf`, leaving any partial tail.
pub(crate) fn parse(buf: &mut Vec<u8>) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER {
        let head = &buf[at..at + HEADER];
        let len = u16::from_le_bytes([head[13], head[14]]) as usize;
        if buf.len() - at < HEADER + len {
            break;
        }
        let kind = match head[0] {
            1 => Some(NoteKind::Ready),
            2 => Some(NoteKind::Failed),
            3 => Some(NoteKind::Panicked),
            _ => None,
        };
        let slot = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes")) as usize;
        let generation = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes"));
        let text = String::from_utf8_lossy(&buf[at + HEADER..at + HEADER + len]).into_owned();
        if let Some(kind) = kind {
            notes.push(Note {
                kind,
                slot,
                generation,
                text,
            });
        }
        at += HEADER + len;
    }
    buf.drain(..at);
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn notes_round_trip_through_a_pipe() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        send(w.as_fd(), NoteKind::Panicked, 3, 7, "boom");
        send(w.as_fd(), NoteKind::Ready, 1, 0, "");
        let mut raw = vec![0u8; 256];
        let n = rustix::io::read(&r, &mut raw).unwrap();
        raw.truncate(n);
        let mut partial = raw[..5].to_vec();
        assert!(parse(&mut partial).is_empty());
        let notes = parse(&mut raw);
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].kind, NoteKind::Panicked);
        assert_eq!((notes[0].slot, notes[0].generation), (3, 7));
        assert_eq!(notes[0].text, "boom");
        assert_eq!(notes[1].kind, NoteKind::Ready);
        assert!(raw.is_empty());
    }
}
