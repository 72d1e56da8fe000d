//! A serving thread's turn on the CPU.
//!
//! A serving thread that always finds more ready connections never sleeps,
//! so nothing but the scheduler tick (4 ms at `HZ=250`) makes the kernel
//! look at how long it has run: it keeps the CPU until the tick, past the
//! slice the scheduler meant to give it, and whoever waits for that CPU
//! waits as long — another worker, or the proxy or client in front of it
//! on the same machine, whose next requests the worker needs.
//!
//! So a thread that has worked for [`CHECK`] without sleeping in its wait
//! reads its own CPU clock, and again every [`CHECK`] while that lasts
//! (the read is a system call, ~0.5 µs here, so not on every wake-up, and
//! not at all for a thread that sleeps between requests). Reading a thread's CPU clock makes the kernel bring the
//! thread's run time up to date, and Linux's EEVDF scheduler (6.6 and
//! later) then ends a turn whose slice is used up, if another task waits
//! for the CPU, at once instead of at the next tick. Nothing changes for a
//! thread that nobody waits behind.
//!
//! Measured with wrk -t2 -c64 beside two workers on 2 CPUs (hello world,
//! 4 alternating rounds of 6 s, medians): keep-alive p99 7.9 ms without
//! the reads (two ticks), 3.8 ms with them, hyper on two threads 4.6 ms;
//! req/s +5%. The median pays for it: p50 0.15 ms without, 0.30 ms with,
//! hyper's 0.22 ms — the fast answers came from whichever worker and wrk
//! thread held the CPUs together while the others waited out the tick.

use std::time::{Duration, Instant};

/// How often (wall time) a working thread reads its CPU clock: a sixth of
/// the shortest default EEVDF slice (0.75 ms on one CPU, 1.5 ms on two).
pub(crate) const CHECK: Duration = Duration::from_micros(250);

/// A wait that took this long slept, or the thread lost the CPU in it.
const SLEPT: Duration = Duration::from_micros(50);

/// When a serving thread last slept in its wait or read its CPU clock.
#[derive(Debug)]
pub(crate) struct Turn {
    read: Instant,
}

impl Turn {
    pub(crate) fn new(now: Instant) -> Self {
        Self { read: now }
    }

    /// A wait began at `began` and ended at `now`: if it slept, the thread
    /// starts a new stretch of work.
    pub(crate) fn waited(&mut self, began: Instant, now: Instant) {
        if now.saturating_duration_since(began) >= SLEPT {
            self.read = now;
        }
    }

    /// After a wake-up that found work, at `now`: reads the thread's CPU
    /// clock if it has worked [`CHECK`] since it last slept or read it (the
    /// kernel may end the thread's turn on the way back from that read).
    pub(crate) fn worked(&mut self, now: Instant) {
        if self.due(now) {
            self.read = now;
            let _ = cpu_time();
        }
    }

    fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.read) >= CHECK
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

    #[test]
    fn the_clock_is_read_once_per_check_while_working() {
        let t0 = Instant::now();
        let mut turn = Turn::new(t0);
        let step = Duration::from_micros(10);
        let mut reads = 0;
        let mut now = t0;
        while now < t0 + CHECK * 10 {
            now += step;
            let before = turn.read;
            turn.worked(now);
            if turn.read != before {
                reads += 1;
                assert_eq!(turn.read, now);
            }
        }
        assert_eq!(reads, 10);
    }

    #[test]
    fn a_thread_that_sleeps_between_wake_ups_never_reads_the_clock() {
        let t0 = Instant::now();
        let mut turn = Turn::new(t0);
        let mut now = t0;
        for _ in 0..100 {
            // 300 µs asleep in the wait, then 20 µs of work.
            let began = now;
            now += Duration::from_micros(300);
            turn.waited(began, now);
            now += Duration::from_micros(20);
            turn.worked(now);
            assert!(turn.read < now);
        }
        // Waits that return at once do not count as sleep.
        let read = turn.read;
        turn.waited(now, now + Duration::from_micros(2));
        assert_eq!(turn.read, read);
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
