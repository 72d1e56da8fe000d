//! Even load over a shared listening socket.
//!
//! Every serving thread of every worker waits on the same listener with
//! `EPOLLEXCLUSIVE`, which wakes one waiter per new connection, and moves to
//! the back of the listener's wait queue after each accept. That spreads
//! connections that arrive one at a time. A burst does not spread: 64
//! connections queued at once are drained by whichever threads run first
//! (measured: 81,588 / 91,316 / 0 requests over 3 workers under
//! `wrk -c64`), and a thread that never got CPU during the burst keeps
//! nothing to serve for as long as the connections live.
//!
//! So the threads keep score. A [`Table`] (a memfd made before the fork and
//! inherited by every worker) holds one cell per serving thread: how many
//! connections it holds. After each accept, a thread that holds clearly more
//! than the mean ([`over_share`]) stops accepting for [`STAND_ASIDE`]
//! (nginx's `accept_disabled`, judged against the others instead of a
//! capacity) and the threads that hold fewer take the rest of the queue.
//!
//! Nothing queued is ever left unserved by this: a thread woken for a
//! connection accepts it before it judges, so a wake-up is never wasted; a
//! thread that stands aside takes its place in the queue again after
//! [`STAND_ASIDE`] whatever the others hold (a thread that holds few
//! connections may be busy in a long request); a stopping thread and an
//! exited worker take their cells out of the count (the arbiter clears a
//! dead worker's), so a thread that will never accept again does not keep
//! the others out.
//!
//! Standing aside only steers connections still to come. Keep-alive
//! connections can live as long as their client (wrk, a proxy's upstream
//! pool): when a worker exits (a recycle, a crash, a restart) its clients
//! reconnect to the others at once, and its replacement, up a millisecond
//! later, would get nothing to serve for as long as those connections live
//! (measured under `wrk -c64` with `--max-requests 20000`: 64 / 0
//! connections until the survivor's own recycle, one CPU idle). So a
//! thread that holds clearly more than the mean also sheds its excess
//! ([`Balance::look`], [`excess`]) while it has more work than it can do:
//! the next answers on that many of its connections say `Connection:
//! close`, their clients reconnect, and the reconnections go to the
//! threads holding fewer, as the thread that shed them stands aside once
//! it accepts one back. It looks at most every [`SHED_LOOK`], only while it
//! works anyway (an idle worker is never woken for it), and looks less
//! often (up to [`SHED_LOOK_MAX`]) while what it shed keeps coming back to
//! it (the threads holding fewer are busy in long requests, say), so a
//! stuck imbalance costs at most its excess in reconnections a second.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::fs::MemfdFlags;

/// How long a thread holding more than its share stays away from the
/// listener: long enough for the others to take some of a burst (one that
/// comes back takes one more connection and judges again), short enough
/// that a connection queued while every thread stands aside, or while the
/// ones holding fewer are busy in long requests, is not kept waiting long.
/// At 20 ms two workers standing aside in turns kept the first answers to
/// 64 connects waiting 42 ms at the median and 81 ms at most; at 1 ms the
/// last came within 5 ms. The loop's wait rounds its timeout up to whole
/// milliseconds, so standing aside lasts 1–2 ms.
pub(crate) const STAND_ASIDE: Duration = Duration::from_millis(1);

/// How often a thread holding more than its share may shed connections.
pub(crate) const SHED_LOOK: Duration = Duration::from_millis(2);

/// The longest a thread waits between looks while what it shed came back.
pub(crate) const SHED_LOOK_MAX: Duration = Duration::from_secs(1);

/// Bytes per cell: a little-endian `u64`, 0 for no thread, else one more
/// than the connections the thread holds.
const CELL: usize = 8;

/// The shared connection counts, one cell per serving thread
/// (`slot * threads + thread`).
#[derive(Debug)]
pub(crate) struct Table {
    fd: OwnedFd,
}

impl Table {
    /// An empty table: every cell reads 0 (a memfd's holes read as zeros).
    pub(crate) fn new() -> std::io::Result<Self> {
        let fd = rustix::fs::memfd_create("ufork-balance", MemfdFlags::CLOEXEC)?;
        Ok(Self { fd })
    }

    /// Sets `cell`. The table only steers accepting, so a failed write is
    /// not worth failing a request for: the others then judge on a stale
    /// count, and a stale count cannot keep a connection waiting longer
    /// than [`STAND_ASIDE`].
    fn write(&self, cell: usize, value: u64) {
        if let Some(offset) = cell.checked_mul(CELL).and_then(|o| u64::try_from(o).ok()) {
            let _ = rustix::io::pwrite(&self.fd, &value.to_le_bytes(), offset);
        }
    }

    /// Takes the `threads` cells of `slot` out of the count: its worker
    /// exited.
    pub(crate) fn clear_slot(&self, slot: usize, threads: usize) {
        for thread in 0..threads {
            if let Some(cell) = slot
                .checked_mul(threads)
                .and_then(|c| c.checked_add(thread))
            {
                self.write(cell, 0);
            }
        }
    }

    /// Reads every cell into `buf` (grown as needed); returns the bytes read.
    fn read<'b>(&self, buf: &'b mut Vec<u8>) -> &'b [u8] {
        if buf.is_empty() {
            buf.resize(64 * CELL, 0);
        }
        loop {
            let n = rustix::io::pread(&self.fd, &mut buf[..], 0).unwrap_or(0);
            if n < buf.len() {
                return &buf[..n];
            }
            let more = buf.len().saturating_mul(2);
            buf.resize(more, 0);
        }
    }
}

/// The threads of `cells` (the table's raw cells: 0 for no thread) and the
/// connections they hold in all.
fn tally(cells: impl Iterator<Item = u64>) -> (u128, u128) {
    cells
        .filter(|&c| c > 0)
        .fold((0, 0), |(n, t), c| (n + 1, t + u128::from(c - 1)))
}

/// Whether a thread holding `mine` connections holds clearly more than the
/// mean of `cells` (the table, its own cell included): more than the mean
/// plus one plus a sixteenth of the mean, so that counts a connection or
/// two apart never make a thread stand aside.
pub(crate) fn over_share(mine: u64, cells: impl Iterator<Item = u64>) -> bool {
    let (threads, total) = tally(cells);
    clearly_over(mine, threads, total)
}

/// mine > mean + 1 + mean / 16 of `total` over `threads` (none: never).
fn clearly_over(mine: u64, threads: u128, total: u128) -> bool {
    // In integers: 16·n·mine > 17·total + 16·n.
    threads > 0 && 16 * threads * u128::from(mine) > 17 * total + 16 * threads
}

/// How many connections a thread holding `mine` should shed: none unless it
/// holds clearly more than the mean ([`over_share`]), else what it holds
/// above the mean (rounded up), so that shedding never takes a thread
/// below it.
pub(crate) fn excess(mine: u64, cells: impl Iterator<Item = u64>) -> u64 {
    let (threads, total) = tally(cells);
    if !clearly_over(mine, threads, total) {
        return 0;
    }
    let mean_up = total.div_ceil(threads);
    u64::try_from(u128::from(mine).saturating_sub(mean_up)).unwrap_or(0)
}

/// One serving thread's part: its cell, the connections it holds, and
/// whether it stands aside or sheds.
#[derive(Debug)]
pub(crate) struct Balance<'t> {
    table: Option<&'t Table>,
    cell: usize,
    open: u64,
    buf: Vec<u8>,
    /// Standing aside until then.
    aside_until: Option<Instant>,
    /// No look at the table for shedding before then.
    next_look: Option<Instant>,
    /// The wait between looks: [`SHED_LOOK`], doubled while what was shed
    /// came back.
    look_every: Duration,
    /// The connections held when the last look shed some.
    shed_from: Option<u64>,
}

impl<'t> Balance<'t> {
    /// The thread at `cell` of `table` (none: a lone thread, nothing to
    /// balance); it holds no connection yet.
    pub(crate) fn new(table: Option<&'t Table>, cell: usize) -> Self {
        let balance = Self {
            table,
            cell,
            open: 0,
            buf: Vec::new(),
            aside_until: None,
            next_look: None,
            look_every: SHED_LOOK,
            shed_from: None,
        };
        balance.publish();
        balance
    }

    fn publish(&self) {
        if let Some(table) = self.table {
            table.write(self.cell, self.open.saturating_add(1));
        }
    }

    /// A connection was accepted. Returns whether this thread should now
    /// stand aside: it holds clearly more than the mean.
    pub(crate) fn accepted(&mut self, now: Instant) -> bool {
        self.open = self.open.saturating_add(1);
        self.publish();
        let Some(table) = self.table else {
            return false;
        };
        // A thread holding two connections is under any mean plus one.
        if self.open <= 2 {
            return false;
        }
        let cells = table.read(&mut self.buf);
        let counts = cells
            .chunks_exact(CELL)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; CELL])));
        if over_share(self.open, counts) {
            self.aside_until = now.checked_add(STAND_ASIDE);
            // A deadline past what an `Instant` holds: stand aside not at all.
            return self.aside_until.is_some();
        }
        false
    }

    /// How many of its connections this thread should close after their
    /// next answer, if it is time to look at the table (`None`: not time to
    /// look; the last answer stands). None unless `saturated` says the
    /// thread had more work than it could do since the last look: under a
    /// light load an uneven split costs nothing, and closing connections
    /// would cost their clients a reconnection. `unused`: how many of the
    /// last look's closes are still to be made (no answer could carry them
    /// yet). Called after work, never on a timer.
    pub(crate) fn look(
        &mut self,
        now: Instant,
        unused: u64,
        saturated: impl FnOnce() -> bool,
    ) -> Option<u64> {
        let table = self.table?;
        if self.next_look.is_some_and(|at| now < at) {
            return None;
        }
        if !saturated() {
            self.shed_from = None;
            self.look_every = SHED_LOOK;
            self.next_look = now.checked_add(SHED_LOOK);
            return Some(0);
        }
        match self.shed_from.take() {
            // The last look's closes are not all made: nothing came back
            // yet.
            Some(before) if unused > 0 => self.shed_from = Some(before),
            // What the last look shed was taken back: the threads holding
            // fewer did not take it. Look less often.
            Some(before) if self.open >= before => {
                self.look_every = self.look_every.saturating_mul(2).min(SHED_LOOK_MAX);
            }
            Some(_) => self.look_every = SHED_LOOK,
            None => {}
        }
        self.next_look = now.checked_add(self.look_every);
        if self.open <= 2 {
            return Some(0);
        }
        let cells = table.read(&mut self.buf);
        let counts = cells
            .chunks_exact(CELL)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; CELL])));
        let shed = excess(self.open, counts);
        if shed > 0 {
            // Kept from a look whose closes were not all made yet.
            self.shed_from.get_or_insert(self.open);
        } else {
            self.shed_from = None;
        }
        Some(shed)
    }

    /// A connection was closed.
    pub(crate) fn closed(&mut self) {
        self.open = self.open.saturating_sub(1);
        self.publish();
    }

    /// When standing aside ends, if it does.
    pub(crate) fn aside_until(&self) -> Option<Instant> {
        self.aside_until
    }

    /// Whether standing aside is over at `now` (and forgets it).
    pub(crate) fn rejoin(&mut self, now: Instant) -> bool {
        match self.aside_until {
            Some(until) if now >= until => {
                self.aside_until = None;
                true
            }
            _ => false,
        }
    }

    /// This thread accepts no more (a stop): it leaves the count, so the
    /// others do not measure themselves against connections it only drains.
    pub(crate) fn leave(&mut self) {
        if let Some(table) = self.table.take() {
            table.write(self.cell, 0);
        }
        self.aside_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(counts: &[u64]) -> impl Iterator<Item = u64> + '_ {
        counts.iter().map(|&c| c + 1)
    }

    #[test]
    fn a_thread_stands_aside_only_when_clearly_over_the_mean() {
        // 64 connections over 3 threads, one of which got none yet.
        assert!(over_share(32, cells(&[32, 32, 0])));
        // Even counts and near misses keep accepting.
        assert!(!over_share(21, cells(&[21, 22, 21])));
        assert!(!over_share(22, cells(&[21, 22, 21])));
        assert!(!over_share(3, cells(&[3, 2, 1])));
        // mean 20 → over 20 + 1 + 1.25.
        assert!(!over_share(22, cells(&[22, 19, 19])));
        assert!(over_share(23, cells(&[23, 19, 18])));
    }

    #[test]
    fn empty_cells_are_not_threads() {
        // Cell 0 is a thread holding nothing; raw 0 is nobody.
        let raw = [0, 1, 6];
        assert!(over_share(5, raw.iter().copied()));
        assert!(!over_share(5, [0u64, 0, 6].iter().copied()));
        assert!(!over_share(5, std::iter::empty()));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        assert!(!over_share(
            u64::MAX - 1,
            cells(&[u64::MAX - 1, u64::MAX - 1])
        ));
        assert!(over_share(u64::MAX - 1, cells(&[u64::MAX - 1, 0])));
    }

    #[test]
    fn the_table_keeps_each_threads_count() {
        let table = Table::new().unwrap();
        let now = Instant::now();
        let mut a = Balance::new(Some(&table), 0);
        let mut b = Balance::new(Some(&table), 1);
        let mut c = Balance::new(Some(&table), 2);
        // b and c took one connection each; a takes a burst.
        assert!(!b.accepted(now));
        assert!(!c.accepted(now));
        let mut taken = 1;
        while !a.accepted(now) {
            taken += 1;
        }
        // Holding 3 against a mean of 5 / 3, a stands aside.
        assert_eq!(taken, 3);
        assert_eq!(a.aside_until(), now.checked_add(STAND_ASIDE));
        assert!(!a.rejoin(now));
        assert!(a.rejoin(now + STAND_ASIDE));
        assert_eq!(a.aside_until(), None);
        // When b leaves (a stop), only a and c count: mean 2.5, a is not
        // over it.
        b.leave();
        a.closed();
        assert!(!c.accepted(now));
        assert!(!a.accepted(now));
        // An exited worker's cells are cleared by the arbiter.
        table.clear_slot(0, 3);
        let mut buf = Vec::new();
        assert!(table.read(&mut buf).iter().all(|&b| b == 0));
    }

    impl Balance<'_> {
        fn look_busy(&mut self, now: Instant) -> Option<u64> {
            self.look(now, 0, || true)
        }
    }

    #[test]
    fn a_thread_sheds_only_what_it_holds_over_the_mean() {
        // A replacement came up beside a thread that took every connection.
        assert_eq!(excess(64, cells(&[64, 0])), 32);
        assert_eq!(excess(64, cells(&[64, 0, 32])), 32);
        // Rounded so that shedding never takes it below the mean.
        assert_eq!(excess(3, cells(&[3, 0])), 1);
        assert_eq!(excess(4, cells(&[4, 0])), 2);
        // Near misses, even counts and a lone thread shed nothing.
        assert_eq!(excess(22, cells(&[22, 19, 19])), 0);
        assert_eq!(excess(32, cells(&[32, 32])), 0);
        assert_eq!(excess(64, cells(&[64])), 0);
        assert_eq!(excess(5, [0u64, 0, 6].iter().copied()), 0);
        assert_eq!(
            excess(u64::MAX - 1, cells(&[u64::MAX - 1, u64::MAX - 1])),
            0
        );
        assert_eq!(
            excess(u64::MAX - 1, cells(&[u64::MAX - 1, 0])),
            u64::MAX / 2
        );
    }

    #[test]
    fn a_thread_looks_at_most_every_shed_look_and_less_often_when_shed_comes_back() {
        let table = Table::new().unwrap();
        let t0 = Instant::now();
        let mut a = Balance::new(Some(&table), 0);
        let mut b = Balance::new(Some(&table), 1);
        for _ in 0..10 {
            a.accepted(t0);
        }
        // 10 against 0: shed 5, then not before SHED_LOOK.
        assert_eq!(a.look_busy(t0), Some(5));
        assert_eq!(a.look_busy(t0 + SHED_LOOK / 2), None);
        // Nothing shed left: the connections came back (b is busy, say).
        // The wait doubles each time, up to SHED_LOOK_MAX.
        let mut at = t0 + SHED_LOOK;
        let mut every = SHED_LOOK;
        for _ in 0..12 {
            assert_eq!(a.look_busy(at), Some(5), "at {every:?}");
            every = (every * 2).min(SHED_LOOK_MAX);
            assert_eq!(a.look_busy(at + every - Duration::from_nanos(1)), None);
            at += every;
        }
        assert_eq!(every, SHED_LOOK_MAX);
        // Once shedding took effect (b took them), the wait is SHED_LOOK
        // again.
        for _ in 0..5 {
            a.closed();
            b.accepted(at);
        }
        assert_eq!(a.look_busy(at), Some(0));
        assert_eq!(a.look_busy(at + SHED_LOOK), Some(0));
        // Not saturated: nothing to shed, and the next look in SHED_LOOK.
        for _ in 0..5 {
            a.accepted(at);
        }
        at += SHED_LOOK * 2;
        assert_eq!(a.look(at, 0, || false), Some(0));
        assert_eq!(
            a.look(at + SHED_LOOK - Duration::from_nanos(1), 0, || true),
            None
        );
        // 10 against 5: shed 2.
        let mut at = at + SHED_LOOK;
        assert_eq!(a.look_busy(at), Some(2));
        // Closes not made yet (no answer carried them): no back-off.
        for _ in 0..5 {
            at += SHED_LOOK;
            assert_eq!(a.look(at, 2, || true), Some(2));
        }
        // Then they were made, and came back: back-off.
        at += SHED_LOOK;
        assert_eq!(a.look_busy(at), Some(2));
        assert_eq!(a.look_busy(at + SHED_LOOK), None);
        assert_eq!(a.look_busy(at + SHED_LOOK * 2), Some(2));
        // Two connections or fewer, a stop, or no table: nothing to shed.
        a.leave();
        assert_eq!(a.look_busy(at + SHED_LOOK_MAX), None);
        let mut lone = Balance::new(None, 0);
        lone.accepted(t0);
        assert_eq!(lone.look_busy(t0), None);
    }

    #[test]
    fn a_lone_thread_never_stands_aside() {
        let mut lone = Balance::new(None, 0);
        for _ in 0..100 {
            assert!(!lone.accepted(Instant::now()));
        }
    }
}
