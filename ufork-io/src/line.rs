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
        // The newline search runs over all of `data`, not just the room left
        // in the line: a line longer than the maximum is rare, and one
        // search per line is what keeps short lines cheap.
        while let Some(pos) = find_newline(data) {
            self.finish_line(&data[..pos], emit);
            data = &data[pos + 1..];
        }
        self.keep(data, emit);
    }

    /// Emits the line that ends with `rest` (its newline excluded): in
    /// pieces of `max_line` bytes if it is longer.
    fn finish_line(&mut self, mut rest: &[u8], emit: &mut impl FnMut(&[u8], &[u8], End)) {
        rest = self.split_overlong(rest, emit);
        emit(&self.partial, rest, End::Newline);
        self.partial.clear();
    }

    /// Keeps `rest`, the start of a line, after emitting the pieces of
    /// `max_line` bytes it already fills.
    fn keep(&mut self, rest: &[u8], emit: &mut impl FnMut(&[u8], &[u8], End)) {
        let rest = self.split_overlong(rest, emit);
        self.partial.extend_from_slice(rest);
    }

    /// Emits full pieces (ending in [`End::Continues`]) while the unfinished
    /// line and `rest` together exceed `max_line`; returns what is left of
    /// `rest`, which fits with what is left in `partial`.
    fn split_overlong<'a>(
        &mut self,
        mut rest: &'a [u8],
        emit: &mut impl FnMut(&[u8], &[u8], End),
    ) -> &'a [u8] {
        while self.partial.len() + rest.len() > self.max_line {
            let room = self.max_line - self.partial.len();
            emit(&self.partial, &rest[..room], End::Continues);
            self.partial.clear();
            rest = &rest[room..];
        }
        rest
    }

    /// Emits what is left of an unfinished line, if anything.
    pub(crate) fn finish(&mut self, emit: &mut impl FnMut(&[u8], &[u8], End)) {
        if !self.partial.is_empty() {
            emit(&self.partial, &[], End::NoNewline);
            self.partial.clear();
        }
    }
}

/// `memchr` for one byte: whether a 16-byte block holds a newline is one
/// vector compare (the fold vectorises), and where is found in the block's
/// two 8-byte words without a loop.
fn find_newline(data: &[u8]) -> Option<usize> {
    const BLOCK: usize = 16;
    let mut blocks = data.chunks_exact(BLOCK);
    let mut offset = 0;
    for block in &mut blocks {
        if block.iter().fold(false, |seen, &b| seen | (b == b'\n')) {
            let (low, high) = block.split_at(8);
            let at = match newline_in_word(low) {
                Some(at) => at,
                None => 8 + newline_in_word(high).unwrap_or(0),
            };
            return Some(offset + at);
        }
        offset += BLOCK;
    }
    blocks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| offset + p)
}

/// The first newline in 8 bytes: the classic zero-byte test on the word
/// XOR-ed with newlines, then its lowest set bit. Besides the zero bytes,
/// the test can mark only bytes above one (through the borrow), so the
/// lowest mark is exact.
fn newline_in_word(word: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(word);
    let x = u64::from_le_bytes(bytes) ^ NEWLINES;
    let zeros = x.wrapping_sub(ONES) & !x & HIGHS;
    (zeros != 0).then(|| (zeros.trailing_zeros() / 8) as usize)
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

    /// A small deterministic generator (xorshift64*), so that the tests need
    /// no dependency and fail the same way every time.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        }
    }

    /// What the assembler must emit for a whole stream, however it is cut
    /// into reads: each line in pieces of at most `max` bytes.
    fn reference(max: usize, stream: &[u8]) -> Vec<(Vec<u8>, End)> {
        let mut out = Vec::new();
        let mut lines: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
        let unfinished = lines.pop().filter(|tail| !tail.is_empty());
        let ends = lines
            .into_iter()
            .map(|l| (l, End::Newline))
            .chain(unfinished.map(|l| (l, End::NoNewline)));
        for (mut line, end) in ends {
            while line.len() > max {
                out.push((line[..max].to_vec(), End::Continues));
                line = &line[max..];
            }
            out.push((line.to_vec(), end));
        }
        out
    }

    #[test]
    fn any_cut_into_reads_gives_the_same_pieces_as_the_whole_stream() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..400 {
            let max = 1 + rng.below(if round % 2 == 0 { 8 } else { 200 });
            // Newlines, bytes one bit away from one (0x0b, 0x8a, 0x09) and
            // others, at random lengths: lines split across reads, lines
            // longer than a read and than the maximum, empty lines.
            let stream: Vec<u8> = (0..rng.below(3000))
                .map(|_| match rng.below(40) {
                    0 => b'\n',
                    1 => 0x0b,
                    2 => 0x8a,
                    3 => 0x09,
                    _ => b'a' + rng.below(26) as u8,
                })
                .collect();
            let mut feeds = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(300));
                feeds.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(
                run(max, &feeds, true),
                reference(max, &stream),
                "round {round}, max {max}"
            );
        }
    }

    #[test]
    fn newline_search_finds_the_first_of_many_among_near_misses() {
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let data: Vec<u8> = (0..rng.below(100))
                .map(|_| [b'\n', 0x0b, 0x8a, 0x09, 0x00, 0xff, 0x01, b'x'][rng.below(8)])
                .collect();
            assert_eq!(
                find_newline(&data),
                data.iter().position(|&b| b == b'\n'),
                "{data:?}"
            );
        }
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
