//! Notes from workers to the arbiter over one shared pipe: "I am ready" (only
//! while the arbiter waits for it), "look at my cell now" (a worker declared
//! itself hung) and "here is why I am exiting". Each note is
//! one `write` under PIPE_BUF bytes, so notes from different workers never mix.

use std::os::fd::BorrowedFd;

const MAX_NOTE: usize = 4000;
const HEADER: usize = 1 + 8 + 4 + 2;
const MAX_TEXT: usize = MAX_NOTE - HEADER;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoteKind {
    Ready = 1,
    Failed = 2,
    Panicked = 3,
    /// Only wakes the arbiter: what changed is in the worker's cell.
    Wake = 4,
}

#[derive(Debug)]
pub(crate) struct Note {
    pub(crate) kind: NoteKind,
    pub(crate) slot: usize,
    pub(crate) generation: u32,
    pub(crate) text: String,
}

pub(crate) fn send(fd: BorrowedFd<'_>, kind: NoteKind, slot: usize, generation: u32, text: &str) {
    // The longest prefix that fits and ends on a char boundary (0 always does).
    let len = (0..=text.len().min(MAX_TEXT))
        .rev()
        .find(|&n| text.is_char_boundary(n))
        .unwrap_or(0);
    let mut buf = Vec::with_capacity(MAX_NOTE);
    buf.push(kind as u8);
    buf.extend_from_slice(&u64::try_from(slot).unwrap_or(u64::MAX).to_le_bytes());
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.extend_from_slice(&u16::try_from(len).unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&text.as_bytes()[..len]);
    // The pipe is non-blocking: if the arbiter is so far behind that it is full,
    // the note is dropped rather than hanging the worker.
    let _ = rustix::io::write(fd, &buf);
}

/// Splits whole notes off the front of `buf`, leaving any partial tail.
pub(crate) fn parse(buf: &mut Vec<u8>) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut at = 0;
    while let Some(head) = buf.get(at..).and_then(|rest| rest.get(..HEADER)) {
        let len = usize::from(u16::from_le_bytes([head[13], head[14]]));
        let start = at.saturating_add(HEADER);
        let end = start.saturating_add(len);
        let Some(body) = buf.get(start..end) else {
            break;
        };
        let kind = match head[0] {
            1 => Some(NoteKind::Ready),
            2 => Some(NoteKind::Failed),
            3 => Some(NoteKind::Panicked),
            4 => Some(NoteKind::Wake),
            _ => None,
        };
        let mut raw_slot = [0u8; 8];
        raw_slot.copy_from_slice(&head[1..9]);
        let slot = usize::try_from(u64::from_le_bytes(raw_slot)).unwrap_or(usize::MAX);
        let generation = u32::from_le_bytes([head[9], head[10], head[11], head[12]]);
        let text = String::from_utf8_lossy(body).into_owned();
        if let Some(kind) = kind {
            notes.push(Note {
                kind,
                slot,
                generation,
                text,
            });
        }
        at = end;
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
