//! Integration tests: a real arbiter with the capture layer and an in-memory
//! sink, through the public API only.

mod util;

use std::collections::HashMap;
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ufork_core::{Arbiter, Builder, ExitReason, ExitStatus, Outcome, Worker};
use ufork_io::{CONTINUES, Capture, CaptureBuilder, NO_NEWLINE, Prefix, Sink};
use util::{MemorySink, contains, lines};

type WorkerResult = Result<(), std::io::Error>;

fn pool(workers: usize) -> Builder {
    Arbiter::builder()
        .workers(workers)
        .handle_signals(false)
        .graceful_timeout(Duration::from_secs(10))
        .backoff(
            Duration::from_millis(1),
            Duration::from_millis(10),
            Duration::from_millis(1),
        )
}

fn capture(sink: &MemorySink) -> CaptureBuilder {
    Capture::builder().sink(Sink::writer(sink.clone()))
}

fn idle(worker: &mut Worker) {
    while !worker.wait_for_stop(None) {}
}

// Workers write with `writeln!(std::io::stdout(), ..)`, not `println!`: under
// `cargo test` without `--nocapture`, libtest captures `print!` output of the
// test thread in memory, and a worker forked from that thread inherits the
// capture (see the crate's Limitations).

/// Runs the pool until `until` (on another thread) returns; then stops it.
fn run_until(
    builder: Builder,
    worker: impl FnMut(&mut Worker) -> WorkerResult,
    until: impl FnOnce() + Send + 'static,
) -> Outcome {
    let arbiter = builder.build().expect("build");
    let handle = arbiter.handle();
    let stopper = util::stopper(move || {
        let _guard = util::StopOnPanic(handle.clone());
        until();
        handle.stop();
    });
    let outcome = arbiter.run(worker).expect("run");
    stopper.join().expect("stopper");
    util::assert_nothing_left(&outcome.history);
    outcome
}

fn pids_by_slot(outcome: &Outcome) -> HashMap<i32, usize> {
    outcome.history.iter().map(|r| (r.pid, r.slot)).collect()
}

/// Every worker's `lines` lines arrived, each whole (what `expected(slot,
/// seq)` says), with the worker's prefix, and in the order it wrote them.
fn assert_every_line_in_order(
    outcome: &Outcome,
    bytes: &[u8],
    lines_each: usize,
    expected: impl Fn(usize, usize) -> String,
) {
    let slots = pids_by_slot(outcome);
    let workers = slots.values().max().map_or(0, |&m| m + 1);
    let mut next = vec![0usize; workers];
    for line in lines(bytes) {
        let text = std::str::from_utf8(line).expect("utf-8");
        let (prefix, rest) = text.split_once("] ").expect("prefixed");
        let (slot, pid) = prefix[1..].split_once(' ').expect("slot and pid");
        let slot: usize = slot.parse().unwrap();
        assert_eq!(slots[&pid.parse::<i32>().unwrap()], slot);
        assert!(
            rest == expected(slot, next[slot]),
            "line {} of {slot} is torn or out of order",
            next[slot]
        );
        next[slot] += 1;
    }
    assert_eq!(next, vec![lines_each; workers]);
}

#[test]
fn lines_carry_the_default_slot_pid_prefix_and_stderr_is_marked_when_split() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink).split_streams(true).build().expect("capture");
    let watch = sink.clone();
    let outcome = run_until(
        pool(2).layer(layer),
        |w| {
            writeln!(std::io::stdout(), "hello from {}", w.slot())?;
            writeln!(std::io::stderr(), "complaint from {}", w.slot())?;
            idle(w);
            Ok(())
        },
        move || {
            watch.wait_lines(4);
        },
    );
    let bytes = sink.bytes();
    for r in &outcome.history {
        let out = format!("[{} {}] hello from {}", r.slot, r.pid, r.slot);
        let err = format!("[{} {} err] complaint from {}", r.slot, r.pid, r.slot);
        assert!(contains(&bytes, out.as_bytes()), "missing {out:?}");
        assert!(contains(&bytes, err.as_bytes()), "missing {err:?}");
    }
}

#[test]
fn the_prefix_is_configurable_including_none() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink)
        .prefix(Prefix::custom(|info, out| {
            write!(out, "<{}:{}> ", info.slot, info.stream.as_str()).unwrap();
        }))
        .build()
        .expect("capture");
    let watch = sink.clone();
    run_until(
        pool(1).layer(layer),
        |w| {
            writeln!(std::io::stdout(), "custom")?;
            idle(w);
            Ok(())
        },
        move || watch.wait_for_text("custom"),
    );
    assert_eq!(sink.bytes(), b"<0:out+err> custom\n");

    let sink = MemorySink::new();
    let layer = capture(&sink)
        .prefix(Prefix::None)
        .build()
        .expect("capture");
    let watch = sink.clone();
    run_until(
        pool(1).layer(layer),
        |w| {
            writeln!(std::io::stdout(), "bare")?;
            idle(w);
            Ok(())
        },
        move || watch.wait_for_text("bare"),
    );
    assert_eq!(sink.bytes(), b"bare\n");
}

/// The line a worker writes for (slot, seq): its length varies from a few
/// bytes to well over a pipe's atomic write size.
fn payload(slot: usize, seq: usize) -> String {
    let len = (seq * 7919 + slot * 104_729) % 12_000;
    let fill = (b'a' + (seq % 26) as u8) as char;
    format!("W{slot} {seq} {}", fill.to_string().repeat(len))
}

#[test]
fn lines_of_concurrent_writers_never_interleave() {
    let _lock = util::lock();
    const WORKERS: usize = 4;
    const LINES: usize = 400;
    let sink = MemorySink::new();
    // A small queue makes back-pressure kick in often on the way.
    let layer = capture(&sink)
        .queue_bytes(64 * 1024)
        .build()
        .expect("capture");
    let watch = sink.clone();
    let outcome = run_until(
        pool(WORKERS).layer(layer),
        |w| {
            let mut out = std::io::stdout().lock();
            for seq in 0..LINES {
                writeln!(out, "{}", payload(w.slot(), seq))?;
            }
            drop(out);
            idle(w);
            Ok(())
        },
        move || watch.wait_lines(WORKERS * LINES),
    );
    assert_every_line_in_order(&outcome, &sink.bytes(), LINES, |slot, seq| {
        payload(slot, seq)
    });
}

/// The real `writev` path: a file sink, 64 KiB pipes read round and round,
/// a small queue (back-pressure on the way), and lines from one byte to
/// twice a pipe, around the size at which a chunk goes to the sink
/// uncopied: every line arrives whole, in order, once.
#[test]
fn a_file_sink_gets_every_line_whole_through_gathered_writes() {
    let _lock = util::lock();
    const WORKERS: usize = 4;
    const LINES: usize = 300;
    let line = |slot: usize, seq: usize| -> String {
        let len = match seq % 4 {
            0 => seq % 50,
            1 => 30 * 1024 + seq * 13 % 5000,
            2 => 80,
            _ => (seq * 7919 + slot * 31) % (128 * 1024),
        };
        let fill = (b'a' + ((seq + slot) % 26) as u8) as char;
        format!("W{slot} {seq} {}", fill.to_string().repeat(len))
    };
    let path = std::env::temp_dir().join(format!("ufork-io-gather-{}.log", std::process::id()));
    let file = std::fs::File::create(&path).expect("log file");
    let layer = Capture::builder()
        .sink(Sink::writer(file))
        .pipe_size(64 * 1024)
        .queue_bytes(256 * 1024)
        .max_line(256 * 1024)
        .build()
        .expect("capture");
    let counters = layer.counters();
    let outcome = run_until(
        pool(WORKERS).layer(layer),
        move |w| {
            let mut out = std::io::stdout().lock();
            // Several lines per write, as a buffered writer would.
            let mut text = String::new();
            for seq in 0..LINES {
                text.push_str(&line(w.slot(), seq));
                text.push('\n');
                if seq % 3 == 2 {
                    out.write_all(text.as_bytes())?;
                    text.clear();
                }
            }
            out.write_all(text.as_bytes())?;
            drop(out);
            idle(w);
            Ok(())
        },
        move || {
            util::wait_until("every line", || {
                counters.lines_written() >= (WORKERS * LINES) as u64
            });
        },
    );
    let bytes = std::fs::read(&path).expect("read the log");
    let _ = std::fs::remove_file(&path);
    assert_every_line_in_order(&outcome, &bytes, LINES, line);
}

/// One worker writes far more than one wake-up of the arbiter reads from a
/// pipe (1 MiB), in one `write`: what is left after the sweep's budget is
/// read at the next poll, and nothing is lost, torn or reordered.
#[test]
fn output_past_one_wake_ups_budget_is_read_at_the_next_poll() {
    let _lock = util::lock();
    const LINES: usize = 40_000;
    let sink = MemorySink::new();
    let layer = capture(&sink)
        .pipe_size(64 * 1024)
        .build()
        .expect("capture");
    let watch = sink.clone();
    run_until(
        pool(1).layer(layer),
        |w| {
            let mut text = String::new();
            for seq in 0..LINES {
                text.push_str(&format!("{seq:08} {}\n", "y".repeat(seq % 150)));
            }
            std::io::stdout().lock().write_all(text.as_bytes())?;
            idle(w);
            Ok(())
        },
        move || watch.wait_lines(LINES),
    );
    let bytes = sink.bytes();
    let got = lines(&bytes);
    assert_eq!(got.len(), LINES);
    for (seq, line) in got.iter().enumerate() {
        let text = std::str::from_utf8(line).expect("utf-8");
        let rest = text.split_once("] ").expect("prefixed").1;
        assert_eq!(rest, format!("{seq:08} {}", "y".repeat(seq % 150)));
    }
}

/// Big pipes and reads (`pipe_size`), lines far longer than one read, and a
/// neighbour writing short lines all the while: every line arrives whole.
#[test]
fn lines_longer_than_a_read_arrive_whole_beside_a_chatty_neighbour() {
    let _lock = util::lock();
    const LONG: usize = 700 * 1024;
    const LONGS: usize = 3;
    const SHORTS: usize = 5000;
    let long = |n: usize| -> String {
        (0..LONG)
            .map(|i| (b'a' + ((i / 997 + n) % 26) as u8) as char)
            .collect()
    };
    let sink = MemorySink::new();
    let layer = capture(&sink)
        .pipe_size(256 * 1024)
        .max_line(LONG)
        .build()
        .expect("capture");
    let watch = sink.clone();
    let outcome = run_until(
        pool(2).layer(layer),
        move |w| {
            let mut out = std::io::stdout().lock();
            if w.slot() == 0 {
                for n in 0..LONGS {
                    // One write of the line and the start of the next: the
                    // line spans several reads and ends mid-read.
                    let mut text = long(n).into_bytes();
                    text.extend_from_slice(format!("\nafter {n} ").as_bytes());
                    out.write_all(&text)?;
                    out.write_all(b"end\n")?;
                }
            } else {
                for seq in 0..SHORTS {
                    writeln!(out, "short {seq}")?;
                }
            }
            drop(out);
            idle(w);
            Ok(())
        },
        move || watch.wait_lines(2 * LONGS + SHORTS),
    );
    let slots = pids_by_slot(&outcome);
    let bytes = sink.bytes();
    let (mut longs, mut shorts) = (0, 0);
    for line in lines(&bytes) {
        let text = std::str::from_utf8(line).expect("utf-8");
        let (prefix, rest) = text.split_once("] ").expect("prefixed");
        let (slot, pid) = prefix[1..].split_once(' ').expect("slot and pid");
        assert_eq!(slots[&pid.parse::<i32>().unwrap()], slot.parse().unwrap());
        if slot == "0" {
            let expected = if longs % 2 == 0 {
                long(longs / 2)
            } else {
                format!("after {} end", longs / 2)
            };
            assert!(rest == expected, "line {longs} of worker 0 is not whole");
            longs += 1;
        } else {
            assert_eq!(rest, format!("short {shorts}"));
            shorts += 1;
        }
    }
    assert_eq!((longs, shorts), (2 * LONGS, SHORTS));
}

/// By default a worker's pipe is 256 KiB where no pipe budget applies (the
/// arbiter has CAP_SYS_RESOURCE or CAP_SYS_ADMIN), the system's size
/// otherwise; a size asked for wins.
#[test]
fn the_default_pipe_size_follows_the_pipe_budget_and_an_asked_size_wins() {
    use rustix::thread::CapabilitySet;
    let _lock = util::lock();
    let exempt = rustix::thread::capabilities(None).is_ok_and(|caps| {
        caps.effective
            .intersects(CapabilitySet::SYS_RESOURCE | CapabilitySet::SYS_ADMIN)
    });
    let system = {
        let (read, _write) = rustix::pipe::pipe().expect("pipe");
        rustix::pipe::fcntl_getpipe_size(&read).expect("pipe size")
    };
    let default = if exempt { 256 * 1024 } else { system };
    for (asked, expected) in [(None, default), (Some(128 * 1024), 128 * 1024)] {
        let sink = MemorySink::new();
        let layer = capture(&sink).pipe_size(asked).build().expect("capture");
        let watch = sink.clone();
        run_until(
            pool(1).layer(layer),
            |w| {
                let size = rustix::pipe::fcntl_getpipe_size(std::io::stdout())?;
                writeln!(std::io::stdout(), "pipe of {size} bytes")?;
                idle(w);
                Ok(())
            },
            move || watch.wait_for_text("pipe of"),
        );
        let text = String::from_utf8(sink.bytes()).expect("utf-8");
        assert!(
            text.contains(&format!("] pipe of {expected} bytes\n")),
            "asked {asked:?}, capabilities exempt: {exempt}: {text}"
        );
    }
}

#[test]
fn one_line_per_write_when_asked() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink)
        .line_per_write(true)
        .build()
        .expect("capture");
    let watch = sink.clone();
    run_until(
        pool(1).layer(layer),
        |w| {
            std::io::stdout().write_all(b"a\nb\nc\n")?;
            idle(w);
            Ok(())
        },
        move || watch.wait_lines(3),
    );
    assert_eq!(sink.writes(), 3);
}

#[test]
fn a_partial_last_line_is_flushed_with_a_marker_when_the_worker_exits() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink).build().expect("capture");
    let watch = sink.clone();
    let outcome = run_until(
        pool(1).layer(layer),
        |w| {
            if w.generation() == 0 {
                write!(std::io::stdout(), "whole\nno newline here")?;
                std::io::stdout().flush()?;
                return Ok(());
            }
            idle(w);
            Ok(())
        },
        move || watch.wait_for_text(NO_NEWLINE),
    );
    let first = &outcome.history[0];
    let expected = format!(
        "[0 {pid}] whole\n[0 {pid}] no newline here{NO_NEWLINE}\n",
        pid = first.pid
    );
    assert!(sink.bytes().starts_with(expected.as_bytes()));
}

#[test]
fn an_overlong_line_is_split_with_a_continuation_marker_not_dropped() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink)
        .prefix(Prefix::None)
        .max_line(1000)
        .build()
        .expect("capture");
    let long: String = (0..3500).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let watch = sink.clone();
    let line = long.clone();
    run_until(
        pool(1).layer(layer),
        move |w| {
            writeln!(std::io::stdout(), "{line}")?;
            writeln!(std::io::stdout(), "after")?;
            idle(w);
            Ok(())
        },
        move || watch.wait_for_text("after"),
    );
    let bytes = sink.bytes();
    let pieces = lines(&bytes);
    assert_eq!(pieces.len(), 5, "{}", String::from_utf8_lossy(&bytes));
    let mut joined = Vec::new();
    for piece in &pieces[..3] {
        let content = piece.strip_suffix(CONTINUES.as_bytes()).expect("marked");
        assert_eq!(content.len(), 1000);
        joined.extend_from_slice(content);
    }
    assert_eq!(pieces[3].len(), 500);
    joined.extend_from_slice(pieces[3]);
    assert_eq!(joined, long.as_bytes());
    assert_eq!(pieces[4], b"after");
}

#[test]
fn invalid_utf8_passes_through_unchanged() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink)
        .prefix(Prefix::None)
        .build()
        .expect("capture");
    let watch = sink.clone();
    const RAW: &[u8] = b"\xff\xfe ok \xc3\x28 \x00 end\n";
    run_until(
        pool(1).layer(layer),
        |w| {
            std::io::stdout().write_all(RAW)?;
            idle(w);
            Ok(())
        },
        move || watch.wait_for_text(" end"),
    );
    assert_eq!(sink.bytes(), RAW);
}

#[test]
fn a_panic_message_appears() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink).build().expect("capture");
    let watch = sink.clone();
    let outcome = run_until(
        pool(1).layer(layer),
        |w| {
            if w.generation() == 0 {
                // libtest's output capture (cargo test without --nocapture)
                // would swallow the default hook's message in this forked
                // test thread; this hook writes to fd 2 as the default does
                // outside tests.
                std::panic::set_hook(Box::new(|info| {
                    let _ = writeln!(std::io::stderr(), "{info}");
                }));
                panic!("boom in worker {}", w.slot());
            }
            writeln!(std::io::stdout(), "second life")?;
            idle(w);
            Ok(())
        },
        // The replacement's line shows the panicked worker was reaped.
        move || watch.wait_for_text("second life"),
    );
    let first = &outcome.history[0];
    assert_eq!(first.reason, ExitReason::Panicked);
    let line = format!("[0 {}] boom in worker 0", first.pid);
    assert!(contains(&sink.bytes(), line.as_bytes()));
}

#[test]
fn output_written_before_a_sigkill_appears() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink).build().expect("capture");
    let arbiter = pool(1).layer(layer).build().expect("build");
    let handle = arbiter.handle();
    let watch = sink.clone();
    let stopper = util::stopper(move || {
        let _guard = util::StopOnPanic(handle.clone());
        watch.wait_for_text("before the kill");
        handle.kill(0);
        watch.wait_for_text(NO_NEWLINE);
        handle.stop();
    });
    let outcome = arbiter
        .run(|w| -> WorkerResult {
            if w.generation() == 0 {
                // One write(2) (std's line-buffered stdout would split it at
                // the newline and might not get to the tail before the
                // kill): the arbiter reads the line and the tail together
                // and holds the tail until the pipe ends.
                let both = b"before the kill\ntail without newline";
                let n = rustix::io::write(std::io::stdout(), both)?;
                assert_eq!(n, both.len());
                loop {
                    std::thread::park();
                }
            }
            idle(w);
            Ok(())
        })
        .expect("run");
    stopper.join().unwrap();
    util::assert_nothing_left(&outcome.history);
    let killed = &outcome.history[0];
    assert_eq!(killed.status, ExitStatus::Signal(9));
    let tail = format!("[0 {}] tail without newline{NO_NEWLINE}\n", killed.pid);
    assert!(contains(&sink.bytes(), tail.as_bytes()));
}

#[test]
fn everything_written_during_a_graceful_stop_appears() {
    let _lock = util::lock();
    const BYE: usize = 5000;
    let sink = MemorySink::new();
    let layer = capture(&sink).build().expect("capture");
    let watch = sink.clone();
    let outcome = run_until(
        pool(3).layer(layer),
        |w| {
            writeln!(std::io::stdout(), "up")?;
            idle(w);
            // Far more than a pipe holds: the arbiter must keep reading
            // while it waits for the workers to exit.
            let mut out = std::io::stdout().lock();
            for i in 0..BYE {
                writeln!(out, "bye {i} {}", "z".repeat(100))?;
            }
            write!(out, "last words")?;
            Ok(())
        },
        move || watch.wait_lines(3),
    );
    let bytes = sink.bytes();
    for r in &outcome.history {
        assert_eq!(r.reason, ExitReason::Stopped);
        let prefix = format!("[{} {}] ", r.slot, r.pid);
        let mine: Vec<&[u8]> = lines(&bytes)
            .into_iter()
            .filter(|l| l.starts_with(prefix.as_bytes()))
            .collect();
        assert_eq!(mine.len(), BYE + 2, "worker {} lost lines", r.slot);
        let last = format!("{prefix}last words{NO_NEWLINE}");
        assert_eq!(mine[BYE + 1], last.as_bytes());
    }
}

/// Parses `[slot pid] N <filler>` lines: per pid, the numbers seen in order.
fn numbered(bytes: &[u8]) -> HashMap<i32, Vec<u64>> {
    let mut seen: HashMap<i32, Vec<u64>> = HashMap::new();
    for line in lines(bytes) {
        let text = String::from_utf8_lossy(line);
        let Some((prefix, rest)) = text.split_once("] ") else {
            continue;
        };
        let Some((_, pid)) = prefix[1..].split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse() else { continue };
        if let Some(n) = rest.split(' ').next().and_then(|n| n.parse().ok()) {
            if !rest.ends_with(NO_NEWLINE) {
                seen.entry(pid).or_default().push(n);
            }
        }
    }
    seen
}

#[test]
fn a_stalled_sink_does_not_stop_supervision_and_loses_nothing() {
    let _lock = util::lock();
    let sink = MemorySink::stalled();
    let layer = capture(&sink)
        .queue_bytes(32 * 1024)
        .build()
        .expect("capture");
    let graceful = Duration::from_secs(2);
    let (exits_tx, exits) = mpsc::channel();
    let (forks_tx, forks) = mpsc::channel();
    let arbiter = pool(2)
        .graceful_timeout(graceful)
        .layer(layer)
        .pre_fork(move |slot, generation| {
            let _ = forks_tx.send((slot, generation));
        })
        .on_exit(move |r| {
            let _ = exits_tx.send(r.pid);
        })
        .build()
        .expect("build");
    let handle = arbiter.handle();
    let watch = sink.clone();
    let writing = &util::Signal::new();
    let outcome = std::thread::scope(|scope| {
        scope.spawn(move || {
            let _guard = util::StopOnPanic(handle.clone());
            let deadline = Instant::now() + util::DEADLINE;
            fn recv<T>(rx: &mpsc::Receiver<T>, deadline: Instant) -> T {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .expect("in time")
            }
            // The writer is stuck in the sink and both workers block on full
            // pipes: the arbiter stopped reading them.
            watch.wait_blocked();
            assert_eq!(recv(&forks, deadline), (0, 0));
            assert_eq!(recv(&forks, deadline), (1, 0));
            writing.wait(2);
            for worker in handle.snapshot().workers {
                util::wait_until("a worker blocked on its full pipe", || {
                    util::wchan(worker.pid).contains("pipe_write")
                });
            }
            // Still supervising: a killed worker is reaped and replaced.
            handle.kill(0);
            recv(&exits, deadline);
            assert_eq!(recv(&forks, deadline), (0, 1));
            // And a stop completes within the graceful timeout.
            let asked = Instant::now();
            handle.stop();
            recv(&exits, deadline);
            recv(&exits, deadline);
            let took = asked.elapsed();
            assert!(
                took < graceful + Duration::from_secs(3),
                "stop took {took:?} with a stalled sink"
            );
            watch.set_stalled(false);
        });
        arbiter
            .run(|w| -> WorkerResult {
                let mut out = std::io::stdout().lock();
                let mut n = 0u64;
                while !w.should_stop() {
                    writeln!(out, "{n} {}", "x".repeat(200))?;
                    n += 1;
                    if n == 10 && w.generation() == 0 {
                        writing.raise();
                    }
                }
                Ok(())
            })
            .expect("run")
    });
    util::assert_nothing_left(&outcome.history);
    assert!(outcome.killed_at_timeout >= 1, "no worker was blocked");
    let seen = numbered(&sink.bytes());
    assert!(seen.len() >= 2, "the first two workers wrote");
    for (pid, numbers) in seen {
        let expected: Vec<u64> = (0..numbers.len() as u64).collect();
        assert!(numbers == expected, "worker pid {pid} lost lines");
        assert!(numbers.len() > 10);
    }
}

/// With the sink stalled, a worker writes everything without blocking, and
/// what the queue cannot hold is dropped, counted and reported.
///
/// How much gets through is bounded whatever the scheduling: while the sink
/// is stalled the writer takes nothing off the queue, so the queue takes a
/// read only while it holds less than its bound, and a read is at most a
/// pipe's worth. When the worker has written everything, the arbiter may
/// hold one read it has not queued yet and the pipe another pipe's worth:
/// both may be queued after the sink was let go, or forced in when the
/// worker exits. Hence pipes asked for here: with the default's 256 KiB
/// where no pipe budget applies, all 400 KB could get through.
#[test]
fn output_closed_while_the_queue_is_full_is_closed_not_spun_on() {
    let _lock = util::lock();
    let sink = MemorySink::stalled();
    let layer = capture(&sink)
        .queue_bytes(8 * 1024)
        .build()
        .expect("capture");
    let watch = sink.clone();
    let filling = util::Signal::new();
    let close_now = util::Signal::new();
    let arbiter = pool(2).layer(layer).build().expect("build");
    let handle = arbiter.handle();
    let outcome = std::thread::scope(|scope| {
        scope.spawn(|| {
            let _guard = util::StopOnPanic(handle.clone());
            // Slot 1 fills the queue: the writer is stuck in the sink and
            // capture stops reading (paused).
            filling.wait(1);
            watch.wait_blocked();
            let workers = handle.snapshot().workers;
            let busy = workers.iter().find(|w| w.slot == 1).expect("slot 1").pid;
            util::wait_until("slot 1 blocked on its full pipe", || {
                util::wchan(busy).contains("pipe_write")
            });
            // Slot 0 then closes its output but lives on: poll reports the
            // hang-up of its pipes whatever capture asks for.
            let quiet = workers.iter().find(|w| w.slot == 0).expect("slot 0").pid;
            let pipes: Vec<String> = [1, 2]
                .iter()
                .filter_map(|fd| std::fs::read_link(format!("/proc/{quiet}/fd/{fd}")).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .filter(|p| p.starts_with("pipe:"))
                .collect();
            assert_eq!(pipes.len(), 2, "slot 0's stdout and stderr are pipes");
            close_now.raise();
            // The arbiter reads what is left and closes its ends at once,
            // instead of spinning on the hang-up until the sink drains.
            util::wait_until("the arbiter closed slot 0's pipes", || {
                std::fs::read_dir("/proc/self/fd").is_ok_and(|fds| {
                    !fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|p| pipes.contains(&p.to_string_lossy().into_owned()))
                    })
                })
            });
            watch.set_stalled(false);
            handle.stop();
        });
        arbiter
            .run(|w| -> WorkerResult {
                if w.slot() == 0 {
                    close_now.wait(1);
                    let null = std::fs::File::options().write(true).open("/dev/null")?;
                    rustix::stdio::dup2_stdout(&null)?;
                    rustix::stdio::dup2_stderr(&null)?;
                    idle(w);
                    return Ok(());
                }
                let mut out = std::io::stdout().lock();
                let mut n = 0u64;
                while !w.should_stop() {
                    writeln!(out, "{n} {}", "x".repeat(200))?;
                    n += 1;
                    if n == 10 {
                        filling.raise();
                    }
                }
                Ok(())
            })
            .expect("run")
    });
    util::assert_nothing_left(&outcome.history);
    assert_eq!(outcome.killed_at_timeout, 0, "{:#?}", outcome.history);
}

/// Queue and pipe sizes of the lossy-mode tests: 400 KB of output cannot
/// get through a stalled sink without drops.
const LOSSY_QUEUE: usize = 8 * 1024;
const LOSSY_PIPE: usize = 64 * 1024;
const LOSSY_LINES: usize = 4000;
const LOSSY_LINE: usize = 100;
/// More than a pipe's worth of [`LOSSY_LINE`]s.
const SLOW_LINES: usize = 1000;

/// One worker writes [`LOSSY_LINES`] numbered lines of [`LOSSY_LINE`] bytes
/// into a lossy capture whose sink is stalled, then idles; once it has
/// written them all, `control` runs (with the pool's handle, the capture's
/// counters and the sink) and must stop the pool. Returns the sink and
/// the counters.
fn lossy_burst(
    control: impl FnOnce(&ufork_core::Handle, &ufork_io::Counters, &MemorySink) + Send,
) -> (MemorySink, ufork_io::Counters) {
    stalled_burst(|b| b.lossy(true), control)
}

/// [`lossy_burst`], with the capture set up by `configure` instead.
fn stalled_burst(
    configure: impl FnOnce(ufork_io::CaptureBuilder) -> ufork_io::CaptureBuilder,
    control: impl FnOnce(&ufork_core::Handle, &ufork_io::Counters, &MemorySink) + Send,
) -> (MemorySink, ufork_io::Counters) {
    let sink = MemorySink::stalled();
    let layer = configure(capture(&sink))
        .queue_bytes(LOSSY_QUEUE)
        .pipe_size(LOSSY_PIPE)
        .build()
        .expect("capture");
    let counters = layer.counters();
    let done = util::Signal::new();
    let arbiter = pool(1).layer(layer).build().expect("build");
    let handle = arbiter.handle();
    let (watch, seen) = (sink.clone(), counters.clone());
    let outcome = std::thread::scope(|scope| {
        scope.spawn(|| {
            let _guard = util::StopOnPanic(handle.clone());
            done.wait(1);
            control(&handle, &seen, &watch);
        });
        arbiter
            .run(|w| -> WorkerResult {
                let mut out = std::io::stdout().lock();
                for i in 0..LOSSY_LINES {
                    writeln!(out, "{i:>9} {}", "y".repeat(LOSSY_LINE - 11))?;
                }
                drop(out);
                done.raise();
                idle(w);
                Ok(())
            })
            .expect("run")
    });
    util::assert_nothing_left(&outcome.history);
    (sink, counters)
}

#[test]
fn lossy_mode_drops_with_a_count_instead_of_blocking() {
    let _lock = util::lock();
    // The worker wrote everything although nothing reached the sink.
    let (sink, counters) = lossy_burst(|handle, _, sink| {
        handle.stop();
        sink.wait_blocked();
        sink.set_stalled(false);
    });
    assert_burst_accounted(&sink, &counters);
}

/// Every byte of a [`stalled_burst`] either reached the sink in whole lines
/// or is in a drop notice, and no more got through the stalled sink than
/// the queue and the pipes could hold.
fn assert_burst_accounted(sink: &MemorySink, counters: &ufork_io::Counters) {
    let bytes = sink.bytes();
    let mut delivered = 0u64;
    let mut reported = 0u64;
    for line in lines(&bytes) {
        let text = String::from_utf8_lossy(line);
        let rest = text.split_once("] ").expect("prefixed").1;
        if let Some(count) = rest.strip_prefix("[ufork-io: dropped ") {
            assert!(count.contains("bytes from worker 0"), "{text}");
            reported += count.split(' ').next().unwrap().parse::<u64>().unwrap();
        } else {
            assert_eq!(rest.len(), LOSSY_LINE - 1, "a torn line: {text}");
            delivered += LOSSY_LINE as u64;
        }
    }
    // A line that spans reads may add its head to a read that is taken.
    let most = (LOSSY_QUEUE + 3 * LOSSY_PIPE + 2 * LOSSY_LINE) as u64;
    assert!(
        delivered <= most,
        "{delivered} bytes got through a stalled sink, more than {most}; {reported} reported dropped"
    );
    assert!(reported > 0, "nothing was dropped");
    assert_eq!(reported, counters.dropped_bytes());
    assert_eq!(delivered + reported, (LOSSY_LINES * LOSSY_LINE) as u64);
}

/// Lossless by default, but a sink that takes nothing for the stall timeout
/// no longer holds the workers up: what the queue cannot hold is dropped,
/// counted and reported, as in lossy mode. Without the timeout the worker
/// blocks on its full pipe and never finishes its burst (see
/// `a_stalled_sink_does_not_stop_supervision_and_loses_nothing`).
#[test]
fn a_sink_stalled_past_the_stall_timeout_drops_instead_of_holding_the_workers_up() {
    let _lock = util::lock();
    let (sink, counters) = stalled_burst(
        |b| b.stall_timeout(Duration::from_millis(200)),
        |handle, counters, sink| {
            // The worker wrote its whole burst although the sink took nothing.
            assert!(counters.dropped_bytes() > 0, "nothing dropped");
            sink.set_stalled(false);
            sink.wait_for_text("[ufork-io: dropped ");
            handle.stop();
        },
    );
    assert_burst_accounted(&sink, &counters);
}

/// A sink that is slow but keeps taking bytes is not stalled: it takes 64
/// bytes a millisecond, so handing it a pipe's worth takes over a second,
/// twice the stall timeout, and nothing is dropped.
#[test]
fn a_slow_sink_that_keeps_taking_bytes_loses_nothing_under_a_stall_timeout() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    sink.set_slow(Duration::from_millis(1), 64);
    let layer = capture(&sink)
        .stall_timeout(Duration::from_millis(500))
        .queue_bytes(LOSSY_QUEUE)
        .pipe_size(LOSSY_PIPE)
        .build()
        .expect("capture");
    let counters = layer.counters();
    let watch = sink.clone();
    let outcome = run_until(
        pool(1).layer(layer),
        |w| {
            let mut out = std::io::stdout().lock();
            for i in 0..SLOW_LINES {
                writeln!(out, "{i:>9} {}", "y".repeat(LOSSY_LINE - 11))?;
            }
            drop(out);
            idle(w);
            Ok(())
        },
        move || watch.wait_lines(SLOW_LINES),
    );
    util::assert_nothing_left(&outcome.history);
    assert_eq!(counters.dropped_bytes(), 0);
    let seen = lines(&sink.bytes()).len();
    assert_eq!(seen, SLOW_LINES, "lines lost");
}

/// A real pipe read slowly but steadily (4 KiB every 3 ms) is not stalled:
/// a blocking write returns only once the reader took all of it, so the
/// writer hands the pipe at most a piece at a time, each piece counting as
/// progress, and nothing is dropped although a whole gathered batch (up to
/// the 1 MiB queue) takes the reader longer than the stall timeout.
#[test]
fn a_pipe_read_slowly_but_steadily_loses_nothing_under_a_stall_timeout() {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let _lock = util::lock();
    const LINES: usize = 25_000;
    const LINE: usize = 100;
    let (read_end, write_end) = rustix::pipe::pipe().expect("pipe");
    let layer = capture(&MemorySink::new())
        .sink(ufork_io::Sink::writer(std::fs::File::from(write_end)))
        .stall_timeout(Duration::from_millis(400))
        .queue_bytes(1024 * 1024)
        .build()
        .expect("capture");
    let counters = layer.counters();
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&got);
    let reader = std::thread::spawn(move || {
        let mut pipe = std::fs::File::from(read_end);
        let mut buf = vec![0u8; 4096];
        let mut all = Vec::new();
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            seen.fetch_add(
                buf[..n].iter().filter(|&&b| b == b'\n').count(),
                Ordering::Relaxed,
            );
            std::thread::sleep(Duration::from_millis(3));
        }
        all
    });
    let watch = counters.clone();
    let outcome = run_until(
        pool(1).layer(layer),
        |w| {
            let mut out = std::io::stdout().lock();
            for i in 0..LINES {
                writeln!(out, "{i:>9} {}", "z".repeat(LINE - 11))?;
            }
            drop(out);
            idle(w);
            Ok(())
        },
        move || {
            util::wait_until("every line read, or a drop", || {
                got.load(Ordering::Relaxed) >= LINES || watch.dropped_bytes() > 0
            });
        },
    );
    util::assert_nothing_left(&outcome.history);
    let bytes = reader.join().expect("reader");
    assert_eq!(
        counters.dropped_bytes(),
        0,
        "a steady reader was taken for stalled"
    );
    let ours = lines(&bytes)
        .into_iter()
        .filter(|l| l.ends_with(&[b'z'; 10]))
        .count();
    assert_eq!(ours, LINES);
}

/// The drop notice must not wait for an unrelated wake-up of the arbiter:
/// once the sink takes bytes again, the count goes out while the pool runs,
/// even when the worker has gone quiet.
#[test]
fn lossy_mode_reports_drops_once_the_sink_recovers_even_with_no_more_output() {
    let _lock = util::lock();
    let (sink, _) = lossy_burst(|handle, counters, sink| {
        // Everything was written and the pipe read: some of it dropped.
        util::wait_until("drops counted", || counters.dropped_bytes() > 0);
        sink.set_stalled(false);
        // The worker writes nothing more and the pool keeps running.
        sink.wait_for_text("[ufork-io: dropped ");
        handle.stop();
    });
    assert!(util::contains(&sink.bytes(), b"bytes from worker 0"));
}

#[test]
fn a_worker_reads_what_the_arbiter_sends_to_its_stdin() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink).stdin_pipe(true).build().expect("capture");
    let stdin = layer.stdin().expect("stdin handle");
    let watch = sink.clone();
    let outcome = run_until(
        pool(2).layer(layer),
        |w| {
            writeln!(std::io::stdout(), "ready")?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            writeln!(std::io::stdout(), "got {}", line.trim_end())?;
            idle(w);
            Ok(())
        },
        move || {
            watch.wait_lines(2);
            stdin.send(1, b"hello one\n").expect("send");
            stdin.send(0, b"hello zero\n").expect("send");
            watch.wait_lines(4);
        },
    );
    let bytes = sink.bytes();
    for r in &outcome.history {
        let name = ["zero", "one"][r.slot];
        let line = format!("[{} {}] got hello {name}\n", r.slot, r.pid);
        assert!(contains(&bytes, line.as_bytes()), "missing {line:?}");
    }
}

mod logging {
    //! Tests that need the global logger share one, which forwards records to
    //! whatever the running test installed.

    use std::sync::{Arc, Mutex, OnceLock};

    type Forward = Box<dyn Fn(&log::Record<'_>) + Send + Sync>;

    static FORWARD: Mutex<Option<Forward>> = Mutex::new(None);

    struct Forwarder;

    impl log::Log for Forwarder {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            if let Some(f) = &*FORWARD.lock().unwrap_or_else(|p| p.into_inner()) {
                f(record);
            }
        }
        fn flush(&self) {}
    }

    pub fn forward(f: Option<Forward>) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            log::set_logger(&Forwarder).expect("set the test logger");
            log::set_max_level(log::LevelFilter::Info);
        });
        *FORWARD.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    pub type Records = Arc<Mutex<Vec<(String, String)>>>;

    /// Collects (message, "k=v ..." key-values) of records with `target`.
    pub fn collect(target: &'static str) -> Records {
        let records = Records::default();
        let into = Arc::clone(&records);
        forward(Some(Box::new(move |record| {
            if record.target() != target {
                return;
            }
            struct Kv(String);
            impl<'k> log::kv::VisitSource<'k> for Kv {
                fn visit_pair(
                    &mut self,
                    key: log::kv::Key<'k>,
                    value: log::kv::Value<'k>,
                ) -> Result<(), log::kv::Error> {
                    self.0.push_str(&format!("{key}={value} "));
                    Ok(())
                }
            }
            let mut kv = Kv(String::new());
            let _ = record.key_values().visit(&mut kv);
            into.lock()
                .unwrap()
                .push((record.args().to_string(), kv.0.trim_end().to_owned()));
        })));
        records
    }
}

#[test]
fn the_log_sink_gets_one_record_per_line_with_slot_and_pid() {
    let _lock = util::lock();
    let records = logging::collect("ufork::worker");
    let layer = Capture::builder()
        .sink(Sink::log())
        .build()
        .expect("capture");
    let counters = layer.counters();
    let arbiter = pool(1).layer(layer).build().expect("build");
    let handle = arbiter.handle();
    let stopper = util::stopper(move || {
        let _guard = util::StopOnPanic(handle.clone());
        util::wait_until("two records", || counters.lines_written() >= 2);
        handle.stop();
    });
    let outcome = arbiter
        .run(|w| -> WorkerResult {
            writeln!(std::io::stdout(), "first record")?;
            writeln!(std::io::stdout(), "second record")?;
            idle(w);
            Ok(())
        })
        .expect("run");
    stopper.join().unwrap();
    logging::forward(None);
    util::assert_nothing_left(&outcome.history);
    let pid = outcome.history[0].pid;
    let kv = format!("slot=0 pid={pid} stream=out+err");
    let records = records.lock().unwrap().clone();
    assert_eq!(
        records,
        vec![
            ("first record".to_owned(), kv.clone()),
            ("second record".to_owned(), kv)
        ]
    );
}

#[test]
fn arbiter_messages_go_through_the_same_sink_between_whole_lines() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink).build().expect("capture");
    let logger = layer.logger().prefix("[arb] ");
    logging::forward(Some(Box::new(move |record| {
        if record.target() == "ufork" {
            log::Log::log(&logger, record);
        }
    })));
    let watch = sink.clone();
    let outcome = run_until(
        pool(2).layer(layer),
        |w| {
            let mut out = std::io::stdout().lock();
            for i in 0..2000 {
                writeln!(out, "{i} {}", "q".repeat(300))?;
            }
            drop(out);
            idle(w);
            Ok(())
        },
        move || watch.wait_lines(4000),
    );
    logging::forward(None);
    let bytes = sink.bytes();
    let mut arbiter_lines = 0;
    for line in lines(&bytes) {
        let text = String::from_utf8_lossy(line);
        if text.starts_with("[arb] ") {
            arbiter_lines += 1;
        } else {
            let rest = text.split_once("] ").expect("worker line").1;
            let (_, fill) = rest.split_once(' ').expect("numbered");
            assert_eq!(fill, "q".repeat(300), "torn: {text}");
        }
    }
    for r in &outcome.history {
        let started = format!("[arb] worker {} pid {} started", r.slot, r.pid);
        assert!(contains(&bytes, started.as_bytes()), "missing {started:?}");
    }
    assert!(arbiter_lines >= 2);
}

/// A sink whose every write fails, like a full disk.
struct FailingSink;

impl Write for FailingSink {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk on fire"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink that takes `left` bytes in all, then fails every write.
struct FillingSink {
    left: usize,
}

impl Write for FillingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A write that fails midway counts what the sink took as written and only
/// the rest as lost.
#[test]
fn a_write_that_fails_midway_counts_the_bytes_the_sink_took() {
    let _lock = util::lock();
    let layer = Capture::builder()
        .sink(Sink::writer(FillingSink { left: 10 }))
        .build()
        .expect("capture");
    let counters = layer.counters();
    let watch = counters.clone();
    run_until(
        pool(1).layer(layer),
        |w| {
            std::io::stdout().write_all(b"0123456789abcdefghij\n")?;
            idle(w);
            Ok(())
        },
        move || util::wait_until("a failed write", || watch.write_errors() >= 1),
    );
    assert_eq!(counters.bytes_written(), 10);
    assert_eq!(counters.lines_written(), 0);
}

#[test]
fn a_failing_sink_is_reported_through_log_rate_limited_without_a_loop() {
    use std::sync::{Arc, Mutex};
    let _lock = util::lock();
    let layer = Capture::builder()
        .sink(Sink::writer(FailingSink))
        .build()
        .expect("capture");
    let counters = layer.counters();
    // As the CLI does: the arbiter's records, the warnings included, go into
    // the capture's own sink, which fails for them too.
    let logger = layer.logger();
    let warnings: Arc<Mutex<Vec<String>>> = Arc::default();
    let into = Arc::clone(&warnings);
    logging::forward(Some(Box::new(move |record| {
        // No assertion here: this runs on the capture's writer thread.
        if record.target() == "ufork_io" && record.level() == log::Level::Warn {
            into.lock().unwrap().push(record.args().to_string());
        }
        log::Log::log(&logger, record);
    })));
    let started = Instant::now();
    let watch = counters.clone();
    let seen = Arc::clone(&warnings);
    run_until(
        pool(1).layer(layer),
        |w| {
            // Separate writes, so the writer fails several times.
            let mut i = 0;
            loop {
                writeln!(std::io::stdout(), "line {i}")?;
                i += 1;
                if w.wait_for_stop(Some(Duration::from_millis(2))) {
                    return Ok(());
                }
            }
        },
        move || {
            util::wait_until("failed writes and a warning", || {
                watch.write_errors() >= 5 && !seen.lock().unwrap().is_empty()
            });
        },
    );
    logging::forward(None);
    let elapsed = started.elapsed();
    let warnings = warnings.lock().unwrap().clone();
    let first = &warnings[0];
    assert!(
        first.starts_with("worker output: sink write failed (1 times, ")
            && first.ends_with(" bytes lost): disk on fire"),
        "{first}"
    );
    let mut reported = 0;
    for warning in &warnings {
        let times = warning
            .strip_prefix("worker output: sink write failed (")
            .and_then(|rest| rest.split_once(" times, "))
            .unwrap_or_else(|| panic!("{warning}"))
            .0;
        reported += times.parse::<u64>().unwrap();
    }
    // The first failure at once, the rest summed up when the writer ends;
    // more only if the test took longer than the interval.
    if elapsed < Duration::from_secs(10) {
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
    }
    assert!(reported >= 5, "{warnings:#?}");
    assert!(reported <= counters.write_errors(), "{warnings:#?}");
}

#[test]
fn arbiter_records_and_worker_stderr_go_to_the_stderr_sink() {
    let _lock = util::lock();
    let out = MemorySink::new();
    let err = MemorySink::new();
    let layer = capture(&out)
        .split_streams(true)
        .stderr_sink(Sink::writer(err.clone()))
        .build()
        .expect("capture");
    let logger = layer.logger();
    let in_worker = layer.logger();
    logging::forward(Some(Box::new(move |record| {
        if record.target() == "ufork" {
            log::Log::log(&logger, record);
        }
    })));
    let watch = err.clone();
    let outcome = run_until(
        pool(1).layer(layer),
        move |w| {
            writeln!(std::io::stdout(), "to stdout")?;
            writeln!(std::io::stderr(), "to stderr")?;
            // In a worker the arbiter's logger writes to the worker's own
            // stderr (the capture pipe), never into the arbiter's queue.
            log::Log::log(
                &in_worker,
                &log::Record::builder()
                    .args(format_args!("from the worker"))
                    .level(log::Level::Warn)
                    .target("test")
                    .build(),
            );
            idle(w);
            Ok(())
        },
        move || watch.wait_for_text("from the worker"),
    );
    logging::forward(None);
    let pid = outcome.history[0].pid;
    let (out, err) = (out.bytes(), err.bytes());
    assert!(contains(&out, format!("[0 {pid}] to stdout\n").as_bytes()));
    assert!(!contains(&out, b"to stderr") && !contains(&out, b"[arbiter]"));
    for expected in [
        format!("[0 {pid} err] to stderr\n"),
        format!("[0 {pid} err] [arbiter] warning: from the worker\n"),
        format!("[arbiter] worker 0 pid {pid} started"),
    ] {
        assert!(contains(&err, expected.as_bytes()), "missing {expected:?}");
    }
}

#[test]
fn a_flush_timeout_too_large_for_instant_means_until_done() {
    let _lock = util::lock();
    let sink = MemorySink::new();
    let layer = capture(&sink)
        .flush_timeout(Duration::MAX)
        .build()
        .expect("capture");
    let counters = layer.counters();
    let watch = sink.clone();
    run_until(
        pool(1).layer(layer),
        |w| {
            writeln!(std::io::stdout(), "last words")?;
            idle(w);
            Ok(())
        },
        move || watch.wait_for_text("last words"),
    );
    assert_eq!(counters.abandoned_bytes(), 0);
}

#[test]
fn a_sink_still_stalled_at_the_flush_timeout_is_abandoned_and_counted() {
    let _lock = util::lock();
    let sink = MemorySink::stalled();
    let layer = capture(&sink)
        .flush_timeout(Duration::from_millis(100))
        .build()
        .expect("capture");
    let counters = layer.counters();
    let watch = sink.clone();
    run_until(
        pool(1).layer(layer),
        |w| {
            writeln!(std::io::stdout(), "stuck")?;
            idle(w);
            Ok(())
        },
        move || watch.wait_blocked(),
    );
    assert!(
        counters.abandoned_bytes() >= 6,
        "{}",
        counters.abandoned_bytes()
    );
    // Lets the abandoned writer thread finish.
    sink.set_stalled(false);
}

#[test]
fn formats_stamp_level_or_encode_worker_and_arbiter_lines() {
    use ufork_io::Format;
    let _lock = util::lock();
    for format in [Format::Timestamped, Format::Journal, Format::Json] {
        let sink = MemorySink::new();
        let layer = capture(&sink)
            .split_streams(true)
            .max_line(8)
            .format(format)
            .build()
            .expect("capture");
        let logger = layer.logger();
        logging::forward(Some(Box::new(move |record| {
            if record.target() == "ufork" {
                log::Log::log(&logger, record);
            }
        })));
        let watch = sink.clone();
        let outcome = run_until(
            pool(1).layer(layer),
            |w| {
                writeln!(std::io::stdout(), "0123456789")?;
                writeln!(std::io::stderr(), "oops")?;
                idle(w);
                Ok(())
            },
            move || watch.wait_lines(4),
        );
        logging::forward(None);
        let pid = outcome.history[0].pid;
        let text = String::from_utf8(sink.bytes()).expect("utf-8");
        let find = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{format:?}: no {needle:?} in {text}"))
                .to_owned()
        };
        let piece = find("01234567");
        // The continuation alone: "89" may also occur inside a pid or a
        // timestamp, so match the whole message, not a substring.
        let rest_line = match format {
            Format::Json => "\"message\":\"89\"".to_owned(),
            _ => format!("[0 {pid}] 89"),
        };
        let rest = text
            .lines()
            .find(|l| match format {
                Format::Json => l.contains(&rest_line),
                _ => l.ends_with(&rest_line),
            })
            .unwrap_or_else(|| panic!("{format:?}: no {rest_line:?} in {text}"))
            .to_owned();
        let err = find("oops");
        let started = find("started");
        match format {
            Format::Timestamped => {
                for line in [&piece, &rest, &err, &started] {
                    let (stamp, _) = line.split_once(' ').expect("stamp");
                    assert!(stamp.len() == 24 && stamp.ends_with('Z'), "{line}");
                }
                assert!(piece.ends_with(&format!("[0 {pid}] 01234567{CONTINUES}")));
                assert!(err.ends_with(&format!("[0 {pid} err] oops")));
                assert!(started.contains(" [arbiter] worker 0 pid"));
            }
            Format::Journal => {
                assert_eq!(piece, format!("<6>[0 {pid}] 01234567{CONTINUES}"));
                assert_eq!(rest, format!("<6>[0 {pid}] 89"));
                assert_eq!(err, format!("<4>[0 {pid} err] oops"));
                assert!(
                    started.starts_with("<6>[arbiter] worker 0 pid"),
                    "{started}"
                );
            }
            _ => {
                let fields = format!(
                    "\"level\":\"info\",\"source\":\"worker\",\"slot\":0,\"pid\":{pid},\"stream\":\"stdout\",\"message\":\"01234567\",\"continues\":true}}"
                );
                assert!(
                    piece.starts_with("{\"time\":\"") && piece.ends_with(&fields),
                    "{piece}"
                );
                assert!(
                    err.contains("\"level\":\"warning\"") && err.contains("\"stream\":\"stderr\"")
                );
                assert!(
                    started.contains("\"source\":\"arbiter\",\"slot\":null"),
                    "{started}"
                );
                assert!(started.contains("\"message\":\"worker 0 pid"), "{started}");
            }
        }
    }
}

/// One worker floods one stream into a sink that is a pipe nobody reads
/// until the stall timeout let the capture drop, then writes numbered lines
/// to its other stream, whose sink reads: they all arrive while the stalled
/// sink still takes nothing, and no drop notice is among them. The two
/// sinks have a queue and a writer thread each, so one stalled stream
/// neither holds up nor drops the other's lines; the warning names the
/// stalled sink, and once its reader reads again the drop notice is there.
/// `flooded_stderr`: stderr is the stream that stalls, stdout the one that
/// flows.
fn the_other_stream_flows_while_one_stalls(flooded_stderr: bool) {
    const LINES: usize = 200;
    let _lock = util::lock();
    let warnings = logging::collect("ufork_io::capture");
    // The stalled sink: a pipe whose reader never reads (a log reader that
    // stopped), held open until the end of the test.
    let (unread, stalled_end) = rustix::pipe::pipe().expect("pipe");
    let stalled = Sink::writer(std::fs::File::from(stalled_end));
    let flowing = MemorySink::new();
    let (out, err) = if flooded_stderr {
        (Sink::writer(flowing.clone()), stalled)
    } else {
        (stalled, Sink::writer(flowing.clone()))
    };
    let layer = Capture::builder()
        .sink(out)
        .stderr_sink(err)
        .split_streams(true)
        .stall_timeout(Duration::from_millis(200))
        .queue_bytes(LOSSY_QUEUE)
        .pipe_size(LOSSY_PIPE)
        .flush_timeout(Duration::from_millis(100))
        .build()
        .expect("capture");
    let counters = layer.counters();
    let flooded = util::Signal::new();
    let go = util::Signal::new();
    let written = util::Signal::new();
    let arbiter = pool(1).layer(layer).build().expect("build");
    let handle = arbiter.handle();
    let watch = flowing.clone();
    let outcome = std::thread::scope(|scope| {
        scope.spawn(|| {
            let _guard = util::StopOnPanic(handle.clone());
            // The burst is far more than the stalled pipe, the queue and
            // the worker's pipe hold: it ends only once the stall timeout
            // passed and the capture drops instead of holding it up.
            flooded.wait(1);
            assert!(counters.dropped_bytes() > 0, "nothing dropped");
            go.raise();
            written.wait(1);
            watch.wait_for(&format!("{LINES} lines of the other stream"), |b| {
                lines_with(b, b"other ") >= LINES
            });
            let pending = rustix::io::ioctl_fionread(&unread).expect("FIONREAD");
            assert!(pending > 0, "the stalled sink's pipe was read");
            // Its reader reads again: the notice of what it dropped
            // reaches it (and nothing of the other stream).
            let (tx, rx) = mpsc::channel();
            let reader = std::fs::File::from(unread.try_clone().expect("dup"));
            std::thread::spawn(move || {
                use std::io::Read;
                let mut reader = std::io::BufReader::new(reader);
                let mut chunk = [0u8; 65536];
                while let Ok(n @ 1..) = reader.read(&mut chunk) {
                    if tx.send(chunk[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
            let deadline = Instant::now() + util::DEADLINE;
            let mut read = Vec::new();
            while !contains(&read, b"[ufork-io: dropped ") {
                let left = deadline.saturating_duration_since(Instant::now());
                read.extend(
                    rx.recv_timeout(left)
                        .expect("a drop notice in the stalled sink"),
                );
            }
            assert!(
                !contains(&read, b"] other "),
                "the other stream in the stalled sink"
            );
            handle.stop();
        });
        arbiter
            .run(|w| -> WorkerResult {
                let line = "f".repeat(LOSSY_LINE - 11);
                if flooded_stderr {
                    let mut err = std::io::stderr().lock();
                    for i in 0..LOSSY_LINES * 4 {
                        writeln!(err, "{i:>9} {line}")?;
                    }
                } else {
                    let mut out = std::io::stdout().lock();
                    for i in 0..LOSSY_LINES * 4 {
                        writeln!(out, "{i:>9} {line}")?;
                    }
                }
                flooded.raise();
                go.wait(1);
                for i in 0..LINES {
                    if flooded_stderr {
                        writeln!(std::io::stdout(), "other {i}")?;
                    } else {
                        writeln!(std::io::stderr(), "other {i}")?;
                    }
                }
                written.raise();
                idle(w);
                Ok(())
            })
            .expect("run")
    });
    util::assert_nothing_left(&outcome.history);
    let bytes = flowing.bytes();
    assert!(
        !contains(&bytes, b"[ufork-io: dropped "),
        "a drop notice in the flowing stream: {}",
        String::from_utf8_lossy(&bytes)
    );
    // In order, each once.
    let others: Vec<String> = lines(&bytes)
        .into_iter()
        .filter_map(|l| {
            let text = String::from_utf8_lossy(l);
            text.split_once("] other ").map(|(_, n)| n.to_owned())
        })
        .collect();
    let expected: Vec<String> = (0..LINES).map(|i| i.to_string()).collect();
    assert_eq!(others, expected);
    // The reader thread and the writer end once the pipe is gone.
    drop(unread);
    logging::forward(None);
    let (sink, output) = if flooded_stderr {
        ("stderr sink", "stderr")
    } else {
        ("output sink", "output")
    };
    let warned = format!(
        "the {sink} took nothing for 0.2s: dropping the workers' {output} (counted) until it takes some"
    );
    let warnings = warnings.lock().unwrap().clone();
    assert!(
        warnings.iter().any(|(message, _)| *message == warned),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .all(|(message, _)| !message.contains("took nothing") || *message == warned),
        "the flowing sink was taken for stalled: {warnings:#?}"
    );
}

fn lines_with(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| contains(l, needle))
        .count()
}

#[test]
fn worker_stderr_flows_and_is_never_dropped_while_stdout_stalls() {
    the_other_stream_flows_while_one_stalls(false);
}

#[test]
fn worker_stdout_flows_and_is_never_dropped_while_stderr_stalls() {
    the_other_stream_flows_while_one_stalls(true);
}

/// The marker, stream and number in front of each long line the child of
/// [`stdout_and_stderr_onto_one_file_never_splice_a_line`] writes.
const ONE_FILE_LINE: usize = 20_000;
const ONE_FILE_LINES: usize = 30;

/// In the child process of the test below: a pool whose sinks are this
/// process' stdout and stderr, which the test made one pipe (`2>&1`). Two
/// workers write lines far longer than `PIPE_BUF` to both streams at once.
fn one_file_child() {
    let layer = Capture::builder()
        .sink(Sink::stdout())
        .stderr_sink(Sink::stderr())
        .split_streams(true)
        .build()
        .expect("capture");
    let done = util::Signal::new();
    let arbiter = pool(2).layer(layer).build().expect("build");
    let handle = arbiter.handle();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _guard = util::StopOnPanic(handle.clone());
            done.wait(2);
            handle.stop();
        });
        arbiter
            .run(|w| -> WorkerResult {
                if w.generation() == 0 {
                    let body = "x".repeat(ONE_FILE_LINE);
                    for i in 0..ONE_FILE_LINES {
                        writeln!(std::io::stdout().lock(), "one-file-out-{i}-{body}")?;
                        writeln!(std::io::stderr().lock(), "one-file-err-{i}-{body}")?;
                    }
                    done.raise();
                }
                while !w.should_stop() {
                    w.wait_for_stop(Some(Duration::from_secs(1)));
                }
                Ok(())
            })
            .expect("run");
    });
}

/// Sinks onto one file (`2>&1`, as journald and docker give a service its
/// output): the two streams share one writer, so a line longer than
/// `PIPE_BUF` never lands inside another. The pool runs in a child process
/// whose fds 1 and 2 are one pipe (this test's own fds are not touched).
#[test]
fn stdout_and_stderr_onto_one_file_never_splice_a_line() {
    if std::env::var_os("UFORK_IO_ONE_FILE_CHILD").is_some() {
        one_file_child();
        return;
    }
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    // One page: every long line takes several writes, each waiting for the
    // reader, so two writers on it would interleave.
    rustix::pipe::fcntl_setpipe_size(&write, 4096).expect("pipe size");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "stdout_and_stderr_onto_one_file_never_splice_a_line",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("UFORK_IO_ONE_FILE_CHILD", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::from(write.try_clone().expect("dup")))
        .stderr(std::fs::File::from(write))
        .spawn()
        .expect("spawn the child");
    let mut text = Vec::new();
    {
        use std::io::Read;
        std::fs::File::from(read)
            .read_to_end(&mut text)
            .expect("read the pipe");
    }
    let status = child.wait().expect("wait");
    let text = String::from_utf8_lossy(&text);
    assert!(
        status.success(),
        "child: {status}\n{}",
        &text[..text.len().min(2000)]
    );
    let body = "x".repeat(ONE_FILE_LINE);
    let mut whole = 0;
    for (at, _) in text.match_indices("one-file-") {
        let rest = &text[at + "one-file-".len()..];
        let (_, rest) = rest.split_once('-').expect("stream");
        let (_, rest) = rest.split_once('-').expect("number");
        assert!(
            rest.starts_with(&body) && rest[body.len()..].starts_with('\n'),
            "a line was cut into: {}",
            &rest[..rest.len().min(200)]
        );
        whole += 1;
    }
    assert_eq!(whole, 2 * 2 * ONE_FILE_LINES, "every line arrived whole");
}
