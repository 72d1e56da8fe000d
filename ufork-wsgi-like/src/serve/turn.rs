//! A serving thread's turn on the CPU.
//!
//! A serving thread that always finds more ready connections never sleeps,
//! so unless some task is woken onto its CPU, nothing but the scheduler
//! tick (4 ms at `HZ=250`) makes the kernel look at how long it has run: it
//! keeps the CPU until the tick, past the slice the scheduler meant to give
//! it, and whoever waits for that CPU waits as long — another worker, or
//! the client in front of it on the same machine, whose next requests the
//! worker needs.
//!
//! So a thread that keeps working (its waits find connections ready
//! without sleeping) reads its own CPU clock once it has done so for
//! [`CHECK`], and again every [`CHECK`] while that lasts. Reading a
//! thread's CPU clock makes the kernel bring the thread's run time up to
//! date, and Linux's EEVDF scheduler (6.6 and later) then ends a turn
//! whose slice is used up, if another task of the same scheduling group
//! (cgroup, and session under autogroup) waits for the CPU, at once
//! instead of at the next tick. Nothing changes for a thread that nobody
//! waits behind. The read is a system call (~0.5 µs here): not made on
//! every wake-up, and seldom by a lightly loaded thread, whose waits sleep
//! (8 reads in all for 50 curl requests 20 ms apart, each on a new
//! connection, whose accept, request and close come in quick waits).
//!
//! Measured with wrk -t2 -c64 beside two workers on 2 CPUs (hello world,
//! alternating rounds, medians; ARCHITECTURE.md has the runs): keep-alive
//! p99 from two ticks (7.6–7.9 ms) to about hyper's (4.5–4.7 ms, hyper
//! 4.6–4.8 ms in the same runs). The median pays for it: p50 from 0.15–0.21
//! ms to 0.26–0.30 ms (hyper 0.23–0.26 ms): the fast answers came from
//! whichever worker and wrk thread held the CPUs together while the others
//! waited out the tick.

use std::time::{Duration, Instant};

/// How often (wall time) a working thread reads its CPU clock: a third of
/// the shortest default EEVDF slice (0.75 ms on one CPU; 1.5 ms on two).
pub(crate) const CHECK: Duration = Duration::from_micros(250);

/// A wait that took this long slept, or the thread lost the CPU in it.
const SLEPT: Duration = Duration::from_micros(50);

/// Waits in a row that found work without sleeping before the clock is
/// read at all: a thread that slept, was woken by a request and lost the
/// CPU while answering (to the client its answer woke) has worked only
/// once, and its turn has just begun.
const BUSY: u32 = 2;

/// How long a serving thread has kept working.
#[derive(Debug)]
pub(crate) struct Turn {
    /// When it last slept in its wait or read its CPU clock.
    read: Instant,
    /// Its waits in a row that did not sleep.
    busy: u32,
    /// Since when [`take_saturated`](Self::take_saturated) counts, and the
    /// time spent in waits that slept since then.
    window: Instant,
    asleep: Duration,
}

impl Turn {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            read: now,
            busy: 0,
            window: now,
            asleep: Duration::ZERO,
        }
    }

    /// A wait began at `began` and ended at `now`: if it slept, the thread
    /// starts a new stretch of work.
    pub(crate) fn waited(&mut self, began: Instant, now: Instant) {
        let took = now.saturating_duration_since(began);
        if took >= SLEPT {
            self.read = now;
            self.busy = 0;
            self.asleep = self.asleep.saturating_add(took);
        } else {
            self.busy = self.busy.saturating_add(1);
        }
    }

    /// Whether the thread had more work than it could do since the last
    /// call, at `now`: it slept in its waits for at most a third of that
    /// time (a thread under light load sleeps most of it, however its
    /// requests come: one at a time or in bursts). Judged by time, not by
    /// counting waits: one wake-up may bring work for milliseconds.
    /// Starts the next count.
    pub(crate) fn take_saturated(&mut self, now: Instant) -> bool {
        let span = now.saturating_duration_since(self.window);
        let asleep = std::mem::take(&mut self.asleep);
        self.window = now;
        !span.is_zero() && asleep.saturating_mul(3) <= span
    }

    /// After a wake-up that found work, at `now`: reads the thread's CPU
    /// clock if it has kept working [`CHECK`] since it last slept or read
    /// it (the kernel may end the thread's turn on the way back from that
    /// read).
    pub(crate) fn worked(&mut self, now: Instant) {
        if self.due(now) {
            let _ = cpu_time();
            // Timed after the read: a turn the read ended is no work.
            self.read_at(Instant::now());
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.busy >= BUSY && now.saturating_duration_since(self.read) >= CHECK
    }

    fn read_at(&mut self, at: Instant) {
        self.read = at;
    }
}

/// The calling thread's CPU time.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Steps `turn` through `steps` wake-ups: a wait that took `wait`,
    /// then `work`; returns the times it read the clock at.
    fn steps(
        turn: &mut Turn,
        mut now: Instant,
        wait: Duration,
        work: Duration,
        steps: u32,
    ) -> Vec<Instant> {
        let mut reads = Vec::new();
        for _ in 0..steps {
            turn.waited(now, now + wait);
            now += wait + work;
            if turn.due(now) {
                turn.read_at(now);
                reads.push(now);
            }
        }
        reads
    }

    #[test]
    fn a_thread_that_keeps_working_reads_once_per_check() {
        let t0 = Instant::now();
        let mut turn = Turn::new(t0);
        // Waits that return at once, 10 µs of work after each: 2.5 ms.
        let reads = steps(&mut turn, t0, Duration::ZERO, 10 * US, 250);
        let expected: Vec<Instant> = (1..=10).map(|i| t0 + CHECK * i).collect();
        assert_eq!(reads, expected);
    }

    #[test]
    fn a_thread_that_sleeps_between_wake_ups_never_reads_the_clock() {
        let t0 = Instant::now();
        let mut turn = Turn::new(t0);
        // 300 µs asleep in each wait, then 1 ms until the next wait: work,
        // and the CPU lost to the client the answer woke.
        let reads = steps(&mut turn, t0, 300 * US, Duration::from_millis(1), 100);
        assert_eq!(reads, []);
    }

    #[test]
    fn the_clock_is_read_only_after_two_busy_waits_and_a_check() {
        let t0 = Instant::now();
        let mut turn = Turn::new(t0);
        turn.waited(t0, t0 + US);
        assert!(!turn.due(t0 + CHECK * 2), "one busy wait is not enough");
        turn.waited(t0 + CHECK * 2, t0 + CHECK * 2 + US);
        assert!(turn.due(t0 + CHECK * 2 + US));
        turn.read_at(t0 + CHECK * 2 + US);
        assert!(!turn.due(t0 + CHECK * 3));
        assert!(turn.due(t0 + CHECK * 3 + US));
        // A wait that slept starts over.
        let now = t0 + CHECK * 4;
        turn.waited(now, now + SLEPT);
        assert!(!turn.due(now + SLEPT + CHECK * 2));
    }

    #[test]
    fn working_reads_the_clock_and_times_the_read_after_it() {
        let long_ago = Instant::now();
        let mut turn = Turn::new(long_ago);
        turn.waited(long_ago, long_ago);
        turn.waited(long_ago, long_ago);
        let before = Instant::now();
        turn.worked(long_ago + CHECK);
        assert!(turn.read >= before);
        // Not due again at once.
        let read = turn.read;
        turn.worked(read);
        assert_eq!(turn.read, read);
    }

    #[test]
    fn a_thread_is_saturated_when_it_seldom_sleeps_in_its_waits() {
        let t0 = Instant::now();
        let mut turn = Turn::new(t0);
        assert!(!turn.take_saturated(t0), "no time has passed");
        // Light load: 300 µs asleep in each wait, 20 µs of work.
        steps(&mut turn, t0, 300 * US, 20 * US, 10);
        assert!(!turn.take_saturated(t0 + 320 * US * 10));
        // Light load in bursts: 8 quick waits, then 10 ms asleep.
        let mut now = t0 + 320 * US * 10;
        steps(&mut turn, now, US, 20 * US, 8);
        turn.waited(now + 168 * US, now + 168 * US + Duration::from_millis(10));
        now += 168 * US + Duration::from_millis(10);
        assert!(!turn.take_saturated(now));
        // Busy: waits that find work at once.
        steps(&mut turn, now, US, 20 * US, 100);
        now += 21 * US * 100;
        assert!(turn.take_saturated(now));
        // One wake-up's work took 3 ms: busy too.
        turn.waited(now, now + US);
        now += Duration::from_millis(3);
        assert!(turn.take_saturated(now));
        // Asleep a third of the time at most: busy; more: not.
        turn.waited(now, now + Duration::from_millis(1));
        now += Duration::from_millis(3);
        assert!(turn.take_saturated(now));
        turn.waited(now, now + Duration::from_millis(2));
        now += Duration::from_millis(3);
        assert!(!turn.take_saturated(now));
    }

    #[test]
    fn the_cpu_clock_moves_while_the_thread_works() {
        let before = cpu_time();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time() > before);
    }
}
