//! Line assembly: bytes from one pipe in, whole lines out.

/// How an emitted piece of output ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The worker wrote a newline.
    Newline,
    /// The line was longer than the maximum; it continues in the next piece.
    Continues,
    /// The pipe closed (the worker exited) before a newline.
    NoNewline,
}

/// Assembles the bytes of one pipe into lines of at most `max_line` bytes.
#[derive(Debug)]
pub(crate) struct Assembler {
    partial: Vec<u8>,
    max_line: usize,
}

impl Assembler {
    pub(crate) fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// Feeds `data`; `emit(head, tail, end)` receives each finished piece,
    /// whose content is `head` followed by `tail` (without the newline).
    pub(crate) fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], &[u8], End)) {
        while !data.is_empty() {
            let room = self.max_line - self.partial.len();
            let window = &data[..data.len().min(room + 1)];
            if let Some(pos) = find_newline(window) {
                emit(&self.partial, &data[..pos], End::Newline);
                self.partial.clear();
                data = &data[pos + 1..];
            } else if data.len() > room {
                emit(&self.partial, &data[..room], End::Continues);
                self.partial.clear();
                data = &data[room..];
            } else {
                self.partial.extend_from_slice(data);
                return;
            }
        }
    }

    /// Emits what is left of an unfinished line, if anything.
    pub(crate) fn finish(&mut self, emit: &mut impl FnMut(&[u8], &[u8], End)) {
        if !self.partial.is_empty() {
            emit(&self.partial, &[], End::NoNewline);
            self.partial.clear();
        }
    }
}

/// `memchr` for one byte: a branch-free scan of 16-byte blocks the compiler
/// vectorises, then the exact position inside the block that has it.
fn find_newline(data: &[u8]) -> Option<usize> {
    const BLOCK: usize = 16;
    let mut blocks = data.chunks_exact(BLOCK);
    let mut offset = 0;
    for block in &mut blocks {
        if block.iter().fold(false, |seen, &b| seen | (b == b'\n')) {
            return block.iter().position(|&b| b == b'\n').map(|p| offset + p);
        }
        offset += BLOCK;
    }
    blocks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| offset + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(max: usize, feeds: &[&[u8]], finish: bool) -> Vec<(Vec<u8>, End)> {
        let mut asm = Assembler::new(max);
        let mut out = Vec::new();
        let mut emit = |h: &[u8], t: &[u8], e: End| out.push(([h, t].concat(), e));
        for f in feeds {
            asm.feed(f, &mut emit);
        }
        if finish {
            asm.finish(&mut emit);
        }
        out
    }

    #[test]
    fn lines_are_assembled_across_reads() {
        let out = run(64, &[b"ab", b"c\nde", b"f\n\nx"], true);
        assert_eq!(
            out,
            vec![
                (b"abc".to_vec(), End::Newline),
                (b"def".to_vec(), End::Newline),
                (b"".to_vec(), End::Newline),
                (b"x".to_vec(), End::NoNewline),
            ]
        );
    }

    #[test]
    fn overlong_lines_are_split_and_a_line_of_exactly_max_is_not() {
        let out = run(4, &[b"abcd\nabcdefghij\n"], false);
        assert_eq!(
            out,
            vec![
                (b"abcd".to_vec(), End::Newline),
                (b"abcd".to_vec(), End::Continues),
                (b"efgh".to_vec(), End::Continues),
                (b"ij".to_vec(), End::Newline),
            ]
        );
        let out = run(4, &[b"ab", b"cd", b"\n", b"abc", b"de"], true);
        assert_eq!(
            out,
            vec![
                (b"abcd".to_vec(), End::Newline),
                (b"abcd".to_vec(), End::Continues),
                (b"e".to_vec(), End::NoNewline),
            ]
        );
    }

    #[test]
    fn newline_search_finds_every_position() {
        for len in 0..70 {
            for pos in 0..len {
                let mut v = vec![b'x'; len];
                v[pos] = b'\n';
                assert_eq!(find_newline(&v), Some(pos));
            }
            assert_eq!(find_newline(&vec![b'x'; len]), None);
        }
    }
}
