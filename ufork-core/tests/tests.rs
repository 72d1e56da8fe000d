//! End-to-end tests of the arbiter through its public API.

mod async_tokio;
mod upgrade;
mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ufork_core::{
    Arbiter, Context, Error, ExitReason, ExitStatus, FdLimit, Interest, Layer, Readiness,
    StopCause, Token, Worker, WorkerState,
};
use util::{DEADLINE, Events, SpawnGuarded, lock};

type Res = Result<(), String>;

fn no_backoff(b: ufork_core::Builder) -> ufork_core::Builder {
    b.backoff(Duration::ZERO, Duration::ZERO, Duration::ZERO)
}

/// Every pid in the history is gone, and this process has no child left.
fn assert_nothing_left(history: &[ufork_core::ExitRecord]) {
    for r in history {
        assert!(!util::exists(r.pid), "worker pid {} still exists", r.pid);
    }
    assert_eq!(
        util::children_of_self(),
        Vec::<i32>::new(),
        "children left behind"
    );
}

#[test]
fn pool_forks_workers_in_stable_slots_and_stop_reaps_them_all() {
    let _g = lock();
    // The signal self-pipe is made by the first `run` of a process and kept
    // for its life (a late handler never writes to a reused descriptor):
    // make it before counting.
    let first = Arbiter::builder().build().unwrap();
    first.handle().stop();
    first.run(|_: &mut Worker| -> Res { Ok(()) }).unwrap();
    let fds_before = util::open_fds();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(3).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {} {} {}", w.slot(), w.generation(), w.pid()));
            w.wait_for_stop(None);
            tx.send(&format!("bye {}", w.slot()));
            Ok(())
        })
        .unwrap();
    let mut slots = Vec::new();
    for _ in 0..3 {
        let line = ev.expect("a worker up", |l| l.starts_with("up "));
        let parts: Vec<&str> = line.split(' ').collect();
        slots.push(parts[1].parse::<usize>().unwrap());
        assert_eq!(parts[2], "0", "first generation");
    }
    slots.sort();
    assert_eq!(slots, vec![0, 1, 2]);
    util::wait_until("all three are published", || {
        handle.snapshot().workers.len() == 3
    });
    let snap = handle.snapshot();
    assert!(snap.running);
    assert_eq!(snap.workers.len(), 3);
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.cause, StopCause::Handle);
    assert!(outcome.graceful);
    assert_eq!(outcome.killed_at_timeout, 0);
    assert_eq!(outcome.history.len(), 3);
    for r in &outcome.history {
        assert_eq!(r.reason, ExitReason::Stopped);
        assert_eq!(r.status, ExitStatus::Code(0));
    }
    for _ in 0..3 {
        ev.expect("a worker saying bye", |l| l.starts_with("bye "));
    }
    assert_nothing_left(&outcome.history);
    drop((ev, handle));
    assert_eq!(
        util::open_fds(),
        fds_before,
        "the arbiter leaked descriptors"
    );
}

#[test]
fn exits_are_recorded_with_code_reason_and_message_and_slots_are_reused() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = no_backoff(Arbiter::builder().workers(1)).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            match w.generation() {
                0 => Err("bad config".into()),
                1 => panic!("boom at {}", 42),
                2 => Ok(()),
                _ => {
                    tx.send(&format!("steady {} {}", w.slot(), w.generation()));
                    w.wait_for_stop(None);
                    Ok(())
                }
            }
        })
        .unwrap();
    ev.expect("generation 3", |l| l == "steady 0 3");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let h = &outcome.history;
    assert_eq!(h.len(), 4, "{h:#?}");
    assert!(h.iter().all(|r| r.slot == 0));
    assert_eq!((h[0].generation, &h[0].reason), (0, &ExitReason::Failed));
    assert_eq!(h[0].status, ExitStatus::Code(ufork_core::EXIT_FAILED));
    assert_eq!(h[0].message.as_deref(), Some("bad config"));
    assert!(h[0].to_string().contains("EX_SOFTWARE"), "{}", h[0]);
    assert_eq!(h[1].reason, ExitReason::Panicked);
    assert_eq!(h[1].status, ExitStatus::Code(ufork_core::EXIT_PANICKED));
    assert_eq!(h[1].message.as_deref(), Some("boom at 42"));
    assert_eq!(
        (h[2].reason.clone(), h[2].status),
        (ExitReason::Exited, ExitStatus::Code(0))
    );
    assert_eq!(h[3].reason, ExitReason::Stopped);
    assert_eq!(outcome.spawned, 4);
    assert_nothing_left(h);
}

#[test]
fn a_killed_worker_is_replaced_in_its_slot_and_the_kill_is_named() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = no_backoff(Arbiter::builder().workers(2)).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {} {} {}", w.slot(), w.generation(), w.pid()));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let line = ev.expect("slot 1 up", |l| l.starts_with("up 1 0 "));
    let pid: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    ev.expect("slot 1 respawned", |l| l.starts_with("up 1 1 "));
    util::wait_until("the replacement is published", || {
        handle
            .snapshot()
            .workers
            .iter()
            .any(|w| w.slot == 1 && w.generation == 1)
    });
    let snap = handle.snapshot();
    let info = snap.workers.iter().find(|w| w.slot == 1).unwrap();
    assert_eq!(info.generation, 1);
    assert_eq!(info.restarts, 1);
    assert_eq!(snap.history.len(), 1);
    let record = &snap.history[0];
    assert_eq!(record.reason, ExitReason::Killed);
    assert_eq!(record.status, ExitStatus::Signal(9));
    // An operator's kill -9 is no OOM kill: the record does not guess.
    let text = record.to_string();
    assert!(
        text.contains("SIGKILL") && !text.contains("out of memory") && !record.oom_killed,
        "{text}"
    );
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_nothing_left(&outcome.history);
}

#[test]
fn workers_start_clean_signals_stdin_and_descriptors() {
    let _g = lock();
    let report = |workers: usize, kills: usize| -> Vec<String> {
        let mut ev = Events::new();
        let tx = ev.sender();
        let arbiter = no_backoff(Arbiter::builder().workers(workers))
            .build()
            .unwrap();
        let (handle, thread) = arbiter
            .spawn_guarded(move |w: &mut Worker| -> Res {
                let fds = util::open_fds();
                let stdin = std::fs::read_link("/proc/self/fd/0").unwrap();
                tx.send(&format!(
                    "report {} {} ign={:x} cgt={:x} blk={:x} fds={fds} stdin={}",
                    w.slot(),
                    w.generation(),
                    util::signal_mask("SigIgn:"),
                    util::signal_mask("SigCgt:"),
                    util::signal_mask("SigBlk:"),
                    stdin.display()
                ));
                w.wait_for_stop(None);
                Ok(())
            })
            .unwrap();
        let mut reports = Vec::new();
        for _ in 0..workers {
            reports.push(ev.expect("a report", |l| l.starts_with("report ")));
        }
        for k in 0..kills {
            handle.kill(0);
            let want = format!("report 0 {} ", k + 1);
            reports.push(ev.expect("a respawned report", |l| l.starts_with(&want)));
        }
        handle.stop();
        let outcome = thread.join().unwrap().unwrap();
        assert_nothing_left(&outcome.history);
        reports
    };
    let small = report(1, 0);
    let large = report(6, 3);
    let field = |line: &str, name: &str| -> String {
        line.split(' ')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let sigint = 1u64 << (libc::SIGINT - 1);
    let sigterm = 1u64 << (libc::SIGTERM - 1);
    for line in small.iter().chain(&large) {
        let ign = u64::from_str_radix(&field(line, "ign"), 16).unwrap();
        let cgt = u64::from_str_radix(&field(line, "cgt"), 16).unwrap();
        assert!(
            ign & sigint != 0,
            "SIGINT must be ignored in workers: {line}"
        );
        // Signals 32 and up belong to the C library (thread cancellation).
        assert_eq!(
            cgt & 0xffff_ffff,
            sigterm,
            "only SIGTERM is caught in workers: {line}"
        );
        assert_eq!(field(line, "blk"), "0", "no signal blocked: {line}");
        assert_eq!(field(line, "stdin"), "/dev/null");
    }
    let baseline = field(&small[0], "fds");
    for line in &large {
        assert_eq!(
            field(line, "fds"),
            baseline,
            "fd count grew with pool size or respawns: {line}"
        );
    }
}

#[test]
fn the_arbiters_sd_notify_variables_never_reach_a_worker() {
    let _g = lock();
    let mut child = util::Reaped(
        Command::new(env!("CARGO_BIN_EXE_ufork-core-testbin"))
            .arg("env")
            .env("NOTIFY_SOCKET", "/run/systemd/notify")
            .env("WATCHDOG_USEC", "30000000")
            .env("WATCHDOG_PID", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("testbin output").unwrap();
        if line.starts_with("worker ") {
            break;
        }
        seen.push(line);
    }
    assert_eq!(
        seen,
        [
            "env NOTIFY_SOCKET unset",
            "env WATCHDOG_USEC unset",
            "env WATCHDOG_PID unset"
        ]
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(lines.any(|l| l.unwrap() == "done"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn workers_die_with_an_arbiter_killed_by_sigkill() {
    let _g = lock();
    let mut child = util::Reaped(
        Command::new(env!("CARGO_BIN_EXE_ufork-core-testbin"))
            .args(["orphan", "3"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut workers = Vec::new();
    while workers.len() < 3 {
        let line = lines.next().expect("testbin output").unwrap();
        if let Some(pid) = line.strip_prefix("worker ") {
            workers.push(pid.parse::<i32>().unwrap());
        }
    }
    child.kill().unwrap();
    let killed_at = Instant::now();
    child.wait().unwrap();
    for pid in workers {
        assert!(
            util::wait_exit(pid, DEADLINE),
            "worker {pid} outlived its arbiter"
        );
    }
    // The design goal is well under a second; the bound here is generous for
    // a loaded machine.
    assert!(killed_at.elapsed() < Duration::from_secs(10));
}

#[test]
fn orphans_reparented_to_a_subreaper_arbiter_are_reaped_quietly() {
    let _g = lock();
    let mut child = util::Reaped(
        Command::new(env!("CARGO_BIN_EXE_ufork-core-testbin"))
            .arg("subreaper")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.id() as i32;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut grandchild = None;
    loop {
        let line = lines.next().expect("testbin output").unwrap();
        if let Some(g) = line.strip_prefix("grandchild ") {
            grandchild = Some(g.parse::<i32>().unwrap());
        }
        if line.starts_with("worker ") {
            break;
        }
    }
    let grandchild = grandchild.expect("the grandchild's pid");
    // The orphan ends once its parent worker is gone; then only the arbiter
    // (its subreaper) can reap it.
    util::wait_until("the orphan is reaped", || !util::exists(grandchild));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    let exits: Vec<&String> = rest.iter().filter(|l| l.starts_with("exit ")).collect();
    assert_eq!(
        exits,
        vec!["exit 0 0 exited", "exit 0 1 stopped"],
        "{rest:?}"
    );
    assert!(rest.contains(&"children 0".to_owned()), "{rest:?}");
}

#[test]
fn hooks_run_where_and_when_they_should() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let order = Arc::new(Mutex::new(Vec::<String>::new()));
    let (o1, o2, o3) = (Arc::clone(&order), Arc::clone(&order), Arc::clone(&order));
    let parent = std::process::id() as i32;
    let arbiter = Arbiter::builder()
        .workers(2)
        .pre_fork(move |slot, generation| {
            o1.lock()
                .unwrap()
                .push(format!("pre_fork {slot} {generation}"));
        })
        .post_fork(move |w: &mut Worker| {
            // Runs in the child: a different pid from the arbiter's.
            if w.pid() == parent {
                return Err("post_fork ran in the arbiter".into());
            }
            w.set_activity("post-fork done");
            Ok(())
        })
        .on_exit(move |record| o2.lock().unwrap().push(format!("exit {}", record.slot)))
        .pre_stop(move || o3.lock().unwrap().push("pre_stop".into()))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("main {}", w.vitals().state()));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("worker main", |l| l.starts_with("main"));
    ev.expect("worker main", |l| l.starts_with("main"));
    util::wait_until("both workers are published", || {
        handle.snapshot().workers.len() == 2
    });
    let snap = handle.snapshot();
    assert!(
        snap.workers.iter().all(|w| w.activity == "post-fork done"),
        "{snap:#?}"
    );
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let order = order.lock().unwrap().clone();
    assert_eq!(&order[..2], &["pre_fork 0 0", "pre_fork 1 0"]);
    assert_eq!(order[2], "pre_stop");
    let mut exits = order[3..].to_vec();
    exits.sort();
    assert_eq!(exits, vec!["exit 0", "exit 1"]);
    assert!(ev.seen.iter().all(|l| l == "main ready"), "{:?}", ev.seen);
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_at_the_graceful_timeout() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(2)
        .graceful_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {}", w.slot()));
            w.wait_for_stop(None);
            if w.slot() == 1 {
                // Wedged: never returns.
                loop {
                    std::thread::park();
                }
            }
            Ok(())
        })
        .unwrap();
    ev.expect("up", |l| l.starts_with("up"));
    ev.expect("up", |l| l.starts_with("up"));
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.killed_at_timeout, 1);
    let wedged = outcome.history.iter().find(|r| r.slot == 1).unwrap();
    assert_eq!(wedged.status, ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(wedged.reason, ExitReason::Stopped);
    let clean = outcome.history.iter().find(|r| r.slot == 0).unwrap();
    assert_eq!(clean.status, ExitStatus::Code(0));
    assert_nothing_left(&outcome.history);
}

#[test]
fn stop_now_kills_every_worker_at_once() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(3)
        .graceful_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |_: &mut Worker| -> Res {
            tx.send("up");
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    for _ in 0..3 {
        ev.expect("up", |l| l == "up");
    }
    handle.stop_now();
    let outcome = thread.join().unwrap().unwrap();
    assert!(!outcome.graceful);
    assert!(
        outcome
            .history
            .iter()
            .all(|r| r.status == ExitStatus::Signal(libc::SIGKILL))
    );
    assert_nothing_left(&outcome.history);
}

/// Sends `sig` to this process once `ev` shows `n` workers up.
fn signal_self(sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::getpid(), sig).unwrap();
}

#[test]
fn sigterm_stops_run_on_the_calling_thread_and_handlers_are_restored() {
    let _g = lock();
    let sigterm = 1u64 << (libc::SIGTERM - 1);
    let sighup = 1u64 << (libc::SIGHUP - 1);
    let caught_before = util::signal_mask("SigCgt:") & (sigterm | sighup);
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(2).build().unwrap();
    let watcher = std::thread::spawn(move || {
        ev.expect("up", |l| l == "up");
        ev.expect("up", |l| l == "up");
        signal_self(rustix::process::Signal::TERM);
        ev
    });
    let outcome = arbiter
        .run(move |w: &mut Worker| -> Res {
            tx.send("up");
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    watcher.join().unwrap();
    assert_eq!(outcome.cause, StopCause::Signal(libc::SIGTERM));
    assert!(outcome.graceful);
    assert_eq!(
        util::signal_mask("SigCgt:") & (sigterm | sighup),
        caught_before
    );
    assert_nothing_left(&outcome.history);
}

/// Sends this process `signal` as the loop starts: before any fork, as a
/// signal sent while a caller held it blocked arrives when it unblocks it.
struct SignalAtStart(rustix::process::Signal);

impl Layer for SignalAtStart {
    fn started(&mut self, _: &mut Context<'_>) {
        // raise(3): to this thread, the arbiter's: its handler has run when it
        // returns (a kill(2) to the process may be taken by another thread
        // of the test, later, under load).
        let signal = nix::sys::signal::Signal::try_from(self.0.as_raw()).unwrap();
        nix::sys::signal::raise(signal).unwrap();
    }
}

/// A stop signal that came before the loop stops the pool before its first
/// fork: no worker, no pre-fork hook, the stop hooks as for any stop; a
/// SIGHUP that came with it is for a pool that runs, and is not acted on.
#[test]
fn a_stop_signal_before_the_loop_stops_the_pool_before_any_fork() {
    for (signal, name, graceful) in [
        (
            rustix::process::Signal::TERM,
            "SIGTERM: stopping 0 workers",
            true,
        ),
        (
            rustix::process::Signal::INT,
            "SIGINT: stopping 0 workers",
            true,
        ),
        (rustix::process::Signal::QUIT, "SIGQUIT: stopping", false),
    ] {
        let _g = lock();
        let before = util::logs().len();
        let forks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, s) = (Arc::clone(&forks), Arc::clone(&stops));
        let arbiter = Arbiter::builder()
            .workers(2)
            .layer(SignalAtStart(rustix::process::Signal::HUP))
            .layer(SignalAtStart(signal))
            .pre_fork(move |_, _| {
                f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .pre_stop(move || {
                s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .build()
            .unwrap();
        let outcome = arbiter
            .run(|w: &mut Worker| -> Res {
                w.wait_for_stop(None);
                Ok(())
            })
            .unwrap();
        assert_eq!(outcome.cause, StopCause::Signal(signal.as_raw()));
        assert_eq!(outcome.graceful, graceful);
        assert!(outcome.history.is_empty(), "{:?}", outcome.history);
        assert_eq!(forks.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(stops.load(std::sync::atomic::Ordering::SeqCst), 1);
        let logs: Vec<String> = util::logs().into_iter().skip(before).collect();
        assert!(logs.iter().any(|l| l.contains(name)), "{logs:?}");
        assert!(!logs.iter().any(|l| l.contains("SIGHUP")), "{logs:?}");
    }
}

#[test]
fn a_second_sigint_stops_at_once() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(1)
        .graceful_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (_handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send("up");
            w.wait_for_stop(None);
            tx.send("ignoring the stop");
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    ev.expect("up", |l| l == "up");
    signal_self(rustix::process::Signal::INT);
    ev.expect("the worker saw the graceful stop", |l| {
        l == "ignoring the stop"
    });
    signal_self(rustix::process::Signal::INT);
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.cause, StopCause::Signal(libc::SIGINT));
    assert!(!outcome.graceful);
    assert_eq!(outcome.history[0].status, ExitStatus::Signal(libc::SIGKILL));
    assert_nothing_left(&outcome.history);
}

#[test]
fn scaling_by_handle_and_by_ttin_ttou() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(2).capacity(4).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {}", w.slot()));
            w.wait_for_stop(None);
            tx.send(&format!("down {}", w.slot()));
            Ok(())
        })
        .unwrap();
    ev.expect("up", |l| l.starts_with("up"));
    ev.expect("up", |l| l.starts_with("up"));
    handle.set_workers(4).unwrap();
    let mut ups = vec![
        ev.expect("a new slot", |l| l.starts_with("up")),
        ev.expect("a new slot", |l| l.starts_with("up")),
    ];
    ups.sort();
    assert_eq!(ups, vec!["up 2", "up 3"]);
    assert!(matches!(
        handle.set_workers(5),
        Err(Error::OverCapacity {
            requested: 5,
            capacity: 4
        })
    ));
    signal_self(rustix::process::Signal::TTOU);
    ev.expect("the highest slot stops", |l| l == "down 3");
    handle.set_workers(1).unwrap();
    let mut downs = vec![
        ev.expect("a slot stops", |l| l.starts_with("down")),
        ev.expect("a slot stops", |l| l.starts_with("down")),
    ];
    downs.sort();
    assert_eq!(downs, vec!["down 1", "down 2"]);
    // At one worker, TTOU says why it does nothing.
    signal_self(rustix::process::Signal::TTOU);
    util::wait_until("the TTOU at one worker is logged", || {
        util::logs()
            .iter()
            .any(|l| l.contains("workers: 1 already, the fewest a pool runs"))
    });
    signal_self(rustix::process::Signal::TTIN);
    ev.expect("slot 1 back", |l| l == "up 1");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.spawned, 5);
    assert_nothing_left(&outcome.history);
}

#[test]
fn rolling_restart_brings_each_replacement_up_before_stopping_the_next() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    // Each worker says "up" before it declares itself ready, so the order of
    // lines is the order the arbiter saw.
    let arbiter = Arbiter::builder()
        .workers(3)
        .ready_on_start(false)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {} {}", w.slot(), w.generation()));
            w.ready();
            w.wait_for_stop(None);
            tx.send(&format!("down {} {}", w.slot(), w.generation()));
            Ok(())
        })
        .unwrap();
    for _ in 0..3 {
        ev.expect("up", |l| l.starts_with("up"));
    }
    signal_self(rustix::process::Signal::HUP);
    for slot in 0..3 {
        ev.expect("replacement", |l| l == format!("up {slot} 1"));
    }
    let seen = ev.seen.clone();
    let pos = |l: &str| {
        seen.iter()
            .position(|s| s == l)
            .unwrap_or_else(|| panic!("{l} in {seen:?}"))
    };
    for slot in 0..2 {
        assert!(
            pos(&format!("up {slot} 1")) < pos(&format!("down {} 0", slot + 1)),
            "{seen:?}"
        );
    }
    handle.restart_all();
    for slot in 0..3 {
        ev.expect("second round", |l| l == format!("up {slot} 2"));
    }
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    // Per round and slot: a stand-in in spare slot 3 and the replacement.
    assert_eq!(outcome.spawned, 15);
    assert_eq!(outcome.history.len(), 15);
    assert!(
        outcome
            .history
            .iter()
            .all(|r| r.reason == ExitReason::Stopped)
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_one_worker_pool_keeps_a_ready_worker_throughout_a_rolling_restart() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(1)
        .ready_on_start(false)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            let pid = rustix::process::getpid().as_raw_nonzero().get();
            // Sent before it is ready and after SIGTERM arrived: the order
            // of lines is the order of "ready" and "asked to stop".
            tx.send(&format!("up {} {} {pid}", w.slot(), w.generation()));
            w.ready();
            w.wait_for_stop(None);
            tx.send(&format!("down {} {} {pid}", w.slot(), w.generation()));
            Ok(())
        })
        .unwrap();
    ev.expect("first worker", |l| l.starts_with("up 0 0 "));
    let serving = |snap: &ufork_core::Snapshot| {
        snap.workers
            .iter()
            .filter(|w| {
                matches!(
                    w.state,
                    WorkerState::Ready | WorkerState::Busy | WorkerState::Idle
                )
            })
            .count()
    };
    util::wait_until("the first worker is ready", || {
        serving(&handle.snapshot()) == 1
    });
    handle.restart_all();
    let mut looks = 0u32;
    let mut most = 0;
    util::wait_until("the roll ends", || {
        let snap = handle.snapshot();
        looks += 1;
        most = most.max(snap.workers.len());
        assert!(serving(&snap) >= 1, "no worker serving: {snap:#?}");
        snap.rolls == 1 && !snap.rolling
    });
    assert!(looks > 0);
    assert!(most <= 2, "at most target + 1 processes, saw {most}");
    let snap = handle.snapshot();
    let workers: Vec<(usize, u32)> = snap
        .workers
        .iter()
        .map(|w| (w.slot, w.generation))
        .collect();
    assert_eq!(workers, vec![(0, 1)], "the spare slot is free again");
    // The stand-in's "down" is the last line of the roll: every other one
    // is in `seen` by then.
    ev.expect("the stand-in stopped", |l| l.starts_with("down 1 0 "));
    let seen = ev.seen.clone();
    let pos = |prefix: &str| {
        seen.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix:?} in {seen:?}"))
    };
    assert!(
        pos("up 1 0 ") < pos("down 0 0 "),
        "the stand-in was ready before the old worker was asked to stop: {seen:?}"
    );
    assert!(pos("up 0 1 ") < pos("down 1 0 "), "{seen:?}");
    let stand_in = seen[pos("up 1 0 ")].clone();
    let replacement = seen[pos("up 0 1 ")].clone();
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.spawned, 3);
    let pid_of = |l: &str| l.rsplit(' ').next().unwrap().parse::<i32>().unwrap();
    let exits: Vec<(usize, i32)> = outcome.history.iter().map(|r| (r.slot, r.pid)).collect();
    assert_eq!(exits.len(), 3, "{exits:?}");
    assert!(exits.contains(&(1, pid_of(&stand_in))), "{exits:?}");
    assert_eq!(exits[2], (0, pid_of(&replacement)), "{exits:?}");
    assert!(
        outcome
            .history
            .iter()
            .all(|r| r.reason == ExitReason::Stopped)
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_new_worker_failing_before_it_is_ready_leaves_the_stand_in_serving_its_slot() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    // Slot 0's generation 2 waits for a byte before it is ready.
    let (release_r, release_w) = rustix::pipe::pipe().unwrap();
    let arbiter = no_backoff(Arbiter::builder().workers(1).ready_on_start(false))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {} {}", w.slot(), w.generation()));
            match (w.slot(), w.generation()) {
                (0, 1) => return Err("generation 1 cannot start".to_owned()),
                (0, 2) => {
                    let mut byte = [0u8; 1];
                    rustix::io::read(&release_r, &mut byte).map_err(|e| e.to_string())?;
                }
                _ => {}
            }
            w.ready();
            w.wait_for_stop(None);
            tx.send(&format!("down {} {}", w.slot(), w.generation()));
            Ok(())
        })
        .unwrap();
    ev.expect("first worker", |l| l == "up 0 0");
    util::wait_until("the first worker is ready", || {
        handle.snapshot().ready_count() == 1
    });
    handle.restart_all();
    let check = |snap: &ufork_core::Snapshot| {
        assert!(snap.ready_count() >= 1, "no worker serving: {snap:#?}");
        assert!(snap.workers.len() <= 2, "past target + 1: {snap:#?}");
    };
    util::wait_until("the roll is abandoned", || {
        let snap = handle.snapshot();
        check(&snap);
        snap.rolls == 1 && !snap.rolling
    });
    let why = handle.snapshot().roll_abandoned.expect("a reason");
    assert!(
        why.starts_with("worker 0's new worker (pid ") && why.contains("generation 1 cannot start"),
        "{why}"
    );
    // The slot is refilled (generation 2); while it boots, the stand-in
    // still serves, not asked to stop (that would show it `stopping`).
    ev.expect("the slot refilled", |l| l == "up 0 2");
    let snap = handle.snapshot();
    let serving: Vec<(usize, u32)> = snap
        .workers
        .iter()
        .filter(|w| w.state.is_up())
        .map(|w| (w.slot, w.generation))
        .collect();
    assert_eq!(serving, vec![(1, 0)], "{snap:#?}");
    rustix::io::write(&release_w, b"x").unwrap();
    util::wait_until("the stand-in is gone", || {
        let snap = handle.snapshot();
        check(&snap);
        snap.workers.len() == 1 && snap.ready_count() == 1 && snap.workers[0].generation == 2
    });
    ev.expect("the stand-in stopped", |l| l == "down 1 0");
    let seen = ev.seen.clone();
    let pos = |l: &str| {
        seen.iter()
            .position(|s| s == l)
            .unwrap_or_else(|| panic!("{l} in {seen:?}"))
    };
    assert!(pos("up 0 1") < pos("up 0 2"), "{seen:?}");
    assert!(pos("up 0 2") < pos("down 1 0"), "{seen:?}");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.spawned, 4);
    let failed: Vec<(usize, u32)> = outcome
        .history
        .iter()
        .filter(|r| r.reason != ExitReason::Stopped)
        .map(|r| (r.slot, r.generation))
        .collect();
    assert_eq!(failed, vec![(0, 1)]);
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_roll_of_workers_ready_at_once_ends_without_waiting_for_a_timeout() {
    let _g = lock();
    // Ready on start: the stand-in may be ready before the arbiter is back
    // from forking it, and the roll must still see it (no note then).
    let arbiter = Arbiter::builder().workers(1).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(|w: &mut Worker| -> Res {
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    util::wait_until("ready", || handle.snapshot().ready_count() == 1);
    for round in 1..=3 {
        handle.restart_all();
        util::wait_until("the roll ends", || {
            let snap = handle.snapshot();
            snap.rolls == round && !snap.rolling
        });
    }
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.spawned, 7);
    assert_nothing_left(&outcome.history);
}

#[test]
fn the_exit_history_keeps_the_last_n() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = no_backoff(Arbiter::builder().workers(1).history(5))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            if w.generation() < 12 {
                return Err(format!("generation {}", w.generation()));
            }
            tx.send("steady");
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("steady", |l| l == "steady");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let gens: Vec<u32> = outcome.history.iter().map(|r| r.generation).collect();
    assert_eq!(gens, vec![8, 9, 10, 11, 12]);
    assert_eq!(outcome.history[0].message.as_deref(), Some("generation 8"));
}

/// A layer with a pipe of its own in the loop: it counts what it hears.
struct PipeLayer {
    read: Option<std::os::fd::OwnedFd>,
    token: Option<Token>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Layer for PipeLayer {
    fn started(&mut self, ctx: &mut Context<'_>) {
        let fd = self.read.as_ref().unwrap();
        self.token = Some(ctx.register(std::os::fd::AsFd::as_fd(fd), Interest::READABLE));
        self.log.lock().unwrap().push("started".into());
    }
    fn in_child(&mut self, child: &ufork_core::ChildInfo) -> std::io::Result<()> {
        // The arbiter's end of the layer's pipe is closed in the child.
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.read.as_ref().unwrap());
        if std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists() {
            return Err(std::io::Error::other("layer fd leaked into the child"));
        }
        let _ = child;
        Ok(())
    }
    fn spawned(&mut self, spawn: &ufork_core::Spawn, _: &mut Context<'_>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("spawned {}", spawn.slot));
    }
    fn event(&mut self, token: Token, readiness: Readiness, ctx: &mut Context<'_>) {
        assert_eq!(Some(token), self.token);
        let mut buf = [0u8; 64];
        let n = rustix::io::read(self.read.as_ref().unwrap(), &mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.log
            .lock()
            .unwrap()
            .push(format!("event {text} {}", readiness.readable));
        if text.contains("stop") {
            ctx.handle().stop();
        }
    }
    fn exited(&mut self, record: &ufork_core::ExitRecord, _: &mut Context<'_>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("exited {}", record.slot));
    }
    fn stopping(&mut self, _: &mut Context<'_>) {
        self.log.lock().unwrap().push("stopping".into());
    }
    fn stopped(&mut self) {
        self.log.lock().unwrap().push("stopped".into());
    }
}

#[test]
fn a_layer_registers_a_descriptor_and_hears_the_lifecycle() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let (read, write) = rustix::pipe::pipe().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = PipeLayer {
        read: Some(read),
        token: None,
        log: Arc::clone(&log),
    };
    let arbiter = Arbiter::builder().workers(1).layer(layer).build().unwrap();
    let (_handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send("up");
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("up", |l| l == "up");
    rustix::io::write(&write, b"stop").unwrap();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.cause, StopCause::Handle);
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            "started",
            "spawned 0",
            "event stop true",
            "stopping",
            "exited 0",
            "stopped"
        ]
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn settings_out_of_range_are_refused_with_the_setting_named() {
    let _g = lock();
    let err = Arbiter::builder()
        .workers(8)
        .capacity(4)
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::OverCapacity {
            requested: 8,
            capacity: 4
        }
    ));
    assert!(err.to_string().contains("capacity"), "{err}");
    let err = Arbiter::builder().capacity(1 << 57).build().unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
    let err = Arbiter::builder().max_booting(0).build().unwrap_err();
    assert!(err.to_string().contains("max_booting"), "{err}");
    let err = Arbiter::builder()
        .heartbeat_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("heartbeat_timeout"), "{err}");
    let err = Arbiter::builder()
        .fd_limit(FdLimit::FractionOfRlimit(1.5))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("fd_limit"), "{err}");
}

// -- health ------------------------------------------------------------------

#[test]
fn a_silent_worker_is_killed_and_the_record_says_why() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(1)
        .heartbeat_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            if w.generation() == 0 {
                w.busy();
                w.set_activity("GET /slow");
                tx.send("hanging");
                loop {
                    std::thread::park();
                }
            }
            tx.send("replacement");
            while !w.wait_for_stop(Some(Duration::from_millis(20))) {
                w.heartbeat();
            }
            Ok(())
        })
        .unwrap();
    ev.expect("hanging", |l| l == "hanging");
    ev.expect("replacement", |l| l == "replacement");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let hung = &outcome.history[0];
    assert_eq!(hung.status, ExitStatus::Signal(libc::SIGKILL));
    match &hung.reason {
        ExitReason::TimedOut {
            silent_for,
            state,
            activity,
        } => {
            assert!(*silent_for >= Duration::from_millis(300), "{silent_for:?}");
            assert_eq!(*state, WorkerState::Busy);
            assert_eq!(activity, "GET /slow");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let text = hung.to_string();
    assert!(
        text.contains("GET /slow") && text.contains("busy"),
        "{text}"
    );
    assert_eq!(
        outcome.history[1].reason,
        ExitReason::Stopped,
        "the beating replacement lived"
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_worker_never_ready_is_killed_at_the_start_timeout() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(1)
        .ready_on_start(false)
        .start_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            if w.generation() == 0 {
                tx.send("booting forever");
                loop {
                    std::thread::park();
                }
            }
            w.ready();
            tx.send("ready");
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("ready", |l| l == "ready");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert!(
        matches!(outcome.history[0].reason, ExitReason::BootTimedOut { after } if after >= Duration::from_millis(300)),
        "{:?}",
        outcome.history[0]
    );
    assert_nothing_left(&outcome.history);
}

/// A layer that reports, from the arbiter's loop at the end of each
/// iteration, what `say` finds in the pool's snapshot then (nothing if it
/// returns `None`): the test knows the arbiter has been through an
/// iteration that saw it.
struct Ticks {
    tx: util::Sender,
    say: fn(&ufork_core::Snapshot) -> Option<String>,
}

impl Layer for Ticks {
    fn tick(&mut self, ctx: &mut Context<'_>) {
        if let Some(line) = (self.say)(&ctx.handle().snapshot()) {
            self.tx.send(&line);
        }
    }
}

/// A layer that says "idle" once the arbiter, after a `reopen_logs` and
/// with every worker ready, has checked the pool's health and asks layers
/// for their deadlines: all that is left of that iteration is the wait.
struct IdleAfterReopen {
    tx: util::Sender,
    reopened: bool,
    ready: std::cell::Cell<bool>,
}

impl Layer for IdleAfterReopen {
    fn reopen(&mut self, _: &mut Context<'_>) {
        self.reopened = true;
    }
    fn tick(&mut self, ctx: &mut Context<'_>) {
        let snap = ctx.handle().snapshot();
        if std::mem::take(&mut self.reopened) && snap.ready_count() == snap.target {
            self.ready.set(true);
        }
    }
    fn next_deadline(&self) -> Option<Instant> {
        if self.ready.take() {
            self.tx.send("idle");
        }
        None
    }
}

#[test]
fn a_worker_that_extends_its_start_outlives_the_start_timeout() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    // Long enough that a child forked on a loaded machine extends well
    // within it; what is tested is that it then outlives it.
    let start_timeout = Duration::from_secs(2);
    let arbiter = Arbiter::builder()
        .workers(1)
        .ready_on_start(false)
        .start_timeout(start_timeout)
        .layer(Ticks {
            tx: ev.sender(),
            // The snapshot shows the extension, so a pool's health can
            // count the worker as starting until it is over.
            say: |snap| {
                let until = snap.start_extended_until()?;
                let ahead = until.saturating_duration_since(Instant::now());
                let worker = snap.workers.first()?.start_extended_until;
                Some(format!(
                    "tick extended {} s ahead, worker's {}",
                    ahead.as_secs(),
                    worker == Some(until)
                ))
            },
        })
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            if w.generation() > 0 {
                tx.send("replaced");
                w.wait_for_stop(None);
                return Ok(());
            }
            let extended = w.extend_start(DEADLINE);
            tx.send("extended");
            // What is tested is that nothing happens meanwhile: the
            // worker outlives its start timeout by a second.
            w.wait_for_stop(Some(start_timeout + Duration::from_secs(1)));
            w.ready();
            let again = w.extend_start(DEADLINE);
            tx.send(&format!("ready extended={extended} again={again}"));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("extended", |l| l == "extended" || l == "replaced");
    // Only to wake the loop: a tick after the extension.
    handle.set_workers(1).unwrap();
    let tick = ev.expect("a tick", |l| l.starts_with("tick"));
    let secs: u64 = tick.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(secs >= 10 && tick.ends_with("worker's true"), "{tick}");
    let line = ev.expect("ready", |l| l.starts_with("ready") || l == "replaced");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(
        line, "ready extended=true again=false",
        "{:?}",
        outcome.history
    );
    assert!(outcome.history.len() <= 2, "{:?}", outcome.history);
    assert!(
        outcome
            .history
            .iter()
            .all(|r| r.reason == ExitReason::Stopped),
        "{:?}",
        outcome.history
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_worker_that_declares_itself_hung_is_killed_and_replaced_at_once() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let (go_r, go_w) = rustix::pipe::pipe().unwrap();
    // No heartbeat timeout, nothing else due: once the worker is ready the
    // arbiter waits with no deadline, and only the worker's wake note can
    // have it act on the declaration.
    let arbiter = Arbiter::builder()
        .workers(1)
        .layer(IdleAfterReopen {
            tx: ev.sender(),
            reopened: false,
            ready: std::cell::Cell::new(false),
        })
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            if w.generation() == 0 {
                w.busy();
                w.set_activity("GET /stuck");
                tx.send("waiting");
                let mut byte = [0u8; 1];
                let _ = rustix::io::read(&go_r, &mut byte);
                w.declare_hung();
                w.declare_hung(); // a second one changes nothing
                tx.send("declared"); // if still alive
                loop {
                    std::thread::park();
                }
            }
            tx.send("replacement");
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("waiting", |l| l == "waiting");
    // The arbiter has checked the worker's health after it was ready, and
    // is about to wait with no deadline: only a wake-up can have it look.
    handle.reopen_logs();
    ev.expect("the arbiter idle", |l| l == "idle");
    rustix::io::write(&go_w, b"x").unwrap();
    let told = Instant::now();
    // The worker may be killed before it says "declared".
    ev.expect("replacement", |l| l == "replacement");
    let took = told.elapsed();
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let hung = &outcome.history[0];
    assert_eq!(hung.status, ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(
        hung.reason,
        ExitReason::Hung {
            state: WorkerState::Busy,
            activity: "GET /stuck".to_owned()
        }
    );
    assert_eq!(outcome.history[1].reason, ExitReason::Stopped);
    let logs = util::logs();
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("declared itself hung while busy (GET /stuck); killing it"))
            .count(),
        1,
        "{logs:?}"
    );
    // Promptly, not at some later wake-up (there is none without the note).
    assert!(took < DEADLINE / 2, "{took:?}");
    assert_nothing_left(&outcome.history);
}

#[test]
fn an_arbiter_stopped_longer_than_the_timeout_spares_healthy_workers() {
    let _g = lock();
    let mut child = util::Reaped(
        Command::new(env!("CARGO_BIN_EXE_ufork-core-testbin"))
            .arg("stall")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let arbiter = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut workers = Vec::new();
    while workers.len() < 2 {
        let line = lines.next().unwrap().unwrap();
        if let Some(pid) = line.strip_prefix("worker ") {
            workers.push(rustix::process::Pid::from_raw(pid.parse().unwrap()).unwrap());
        }
    }
    use rustix::process::{Signal, kill_process};
    // Freeze everything (a laptop suspend, or Ctrl-Z on the group) for more
    // than twice the 1 s heartbeat timeout, then thaw the arbiter first.
    kill_process(arbiter, Signal::STOP).unwrap();
    for &w in &workers {
        kill_process(w, Signal::STOP).unwrap();
    }
    std::thread::sleep(Duration::from_millis(2500));
    kill_process(arbiter, Signal::CONT).unwrap();
    for &w in &workers {
        kill_process(w, Signal::CONT).unwrap();
    }
    // Both workers beat again after the thaw.
    let mut fresh = [0u32; 2];
    while fresh.iter().any(|&n| n < 10) {
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.strip_prefix("beat ") {
            let slot: usize = rest.split(' ').next().unwrap().parse().unwrap();
            fresh[slot] += 1;
        }
    }
    kill_process(arbiter, Signal::TERM).unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    let exits: Vec<&String> = rest.iter().filter(|l| l.starts_with("exit ")).collect();
    assert_eq!(exits.len(), 2, "{rest:?}");
    assert!(
        exits.iter().all(|l| l.ends_with(" stopped")),
        "healthy workers were killed: {rest:?}"
    );
}

#[test]
fn the_spawn_throttle_lets_max_booting_workers_boot_at_once() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let (release_r, release_w) = rustix::pipe::pipe().unwrap();
    let arbiter = Arbiter::builder()
        .workers(5)
        .max_booting(2)
        .ready_on_start(false)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("booting {}", w.slot()));
            let mut byte = [0u8; 1];
            rustix::io::read(&release_r, &mut byte).map_err(|e| e.to_string())?;
            w.ready();
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("first boot", |l| l.starts_with("booting"));
    ev.expect("second boot", |l| l.starts_with("booting"));
    // The loop spawns before it publishes: two workers published means it
    // already declined to fork a third.
    util::wait_until("the snapshot shows two workers", || {
        handle.snapshot().workers.len() == 2
    });
    assert_eq!(handle.snapshot().workers.len(), 2);
    for n in 3..=5 {
        rustix::io::write(&release_w, b"x").unwrap();
        ev.expect("one more boot per release", |l| l.starts_with("booting"));
        util::wait_until("published", || handle.snapshot().workers.len() == n);
        let booting = handle
            .snapshot()
            .workers
            .iter()
            .filter(|w| w.state == WorkerState::Booting)
            .count();
        assert!(booting <= 2, "{booting} booting at once");
    }
    rustix::io::write(&release_w, b"xx").unwrap();
    util::wait_until("all ready", || handle.snapshot().ready_count() == 5);
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.spawned, 5);
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_crash_looping_worker_backs_off_instead_of_fork_bombing() {
    let _g = lock();
    let spawns = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let s = Arc::clone(&spawns);
    let arbiter = Arbiter::builder()
        .workers(1)
        .backoff(
            Duration::from_millis(50),
            Duration::from_secs(30),
            Duration::from_secs(1),
        )
        .pre_fork(move |_, _| s.lock().unwrap().push(Instant::now()))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(|_: &mut Worker| -> Res { Err("exits at once".into()) })
        .unwrap();
    // Wait for the seventh spawn (about 0.7 s in, later on a loaded
    // machine): no fixed watch window, so load cannot make too few spawns.
    // The first failure is replaced at once, then 50 ms * 1.5^n: 0, 0, 50,
    // 125, 237, 406, 660 ms in. Without backoff, thousands of forks would
    // come in that time; the gaps below show none came early.
    util::wait_until("seven spawns", || spawns.lock().unwrap().len() >= 7);
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let times = spawns.lock().unwrap().clone();
    assert!(times.len() >= 7, "{} spawns", times.len());
    // Each gap is at least its backoff step (a loaded machine only makes
    // it longer).
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (step, gap) in gaps.iter().enumerate().skip(1) {
        let least = Duration::from_millis(50).mul_f64(1.5f64.powi(step as i32 - 1));
        assert!(*gap >= least, "gap {step} under {least:?}: {gaps:?}");
    }
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_worker_over_its_memory_limit_is_recycled_gracefully() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(1)
        .memory_limit(64 * 1024 * 1024)
        .limit_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            let hog = if w.generation() == 0 {
                vec![1u8; 128 * 1024 * 1024]
            } else {
                Vec::new()
            };
            tx.send(&format!("up {} {}", w.generation(), hog.len()));
            w.wait_for_stop(None);
            tx.send(&format!("graceful {}", w.generation()));
            drop(hog);
            Ok(())
        })
        .unwrap();
    ev.expect("the hog stops gracefully", |l| l == "graceful 0");
    ev.expect("replacement", |l| l.starts_with("up 1"));
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let first = &outcome.history[0];
    assert_eq!(
        first.status,
        ExitStatus::Code(0),
        "SIGTERM first, not SIGKILL"
    );
    assert!(
        matches!(first.reason, ExitReason::OverMemory { rss, limit } if rss > limit && limit == 64 << 20),
        "{first:?}"
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_worker_with_too_many_open_files_is_recycled() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(1)
        .fd_limit(FdLimit::Count(64))
        .limit_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            let mut files = Vec::new();
            if w.generation() == 0 {
                for _ in 0..100 {
                    files.push(std::fs::File::open("/dev/null").map_err(|e| e.to_string())?);
                }
            }
            tx.send(&format!("up {}", w.generation()));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("replacement", |l| l == "up 1");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert!(
        matches!(outcome.history[0].reason, ExitReason::TooManyFds { open, limit: 64 } if open >= 64),
        "{:?}",
        outcome.history[0]
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn the_snapshot_shows_what_workers_report() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(2).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            if w.slot() == 1 {
                for _ in 0..3 {
                    w.count_request();
                }
                w.busy();
                w.set_activity("GET /report");
            } else {
                w.idle();
            }
            tx.send("reported");
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("reported", |l| l == "reported");
    ev.expect("reported", |l| l == "reported");
    // The arbiter publishes once per loop iteration, just after its forks.
    util::wait_until("both workers are published", || {
        handle.snapshot().workers.len() == 2
    });
    let snap = handle.snapshot();
    let busy = snap.workers.iter().find(|w| w.slot == 1).unwrap();
    assert_eq!(busy.state, WorkerState::Busy);
    assert_eq!(busy.requests, 3);
    assert_eq!(busy.activity, "GET /report");
    assert!(busy.busy_for.is_some() && busy.last_beat_age.is_some());
    assert!(busy.rss.is_some_and(|r| r > 0));
    let idle = snap.workers.iter().find(|w| w.slot == 0).unwrap();
    assert_eq!(idle.state, WorkerState::Idle);
    assert!(idle.busy_for.is_none());
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_nothing_left(&outcome.history);
}

#[cfg(feature = "rng")]
#[test]
fn every_worker_and_generation_gets_its_own_random_stream() {
    use rand_chacha::rand_core::Rng;
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = no_backoff(Arbiter::builder().workers(2)).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            let value = w.rng().next_u64();
            tx.send(&format!("rng {} {} {value}", w.slot(), w.generation()));
            if w.slot() == 0 && w.generation() < 2 {
                return Ok(());
            }
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let mut values = std::collections::HashSet::new();
    for _ in 0..4 {
        let line = ev.expect("a draw", |l| l.starts_with("rng "));
        values.insert(line.rsplit(' ').next().unwrap().to_owned());
    }
    assert_eq!(values.len(), 4, "streams repeated: {:?}", ev.seen);
    handle.stop();
    thread.join().unwrap().unwrap();
}

#[test]
fn a_worker_failing_while_it_stops_is_recorded_as_failing_not_stopped() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(2).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send("up");
            w.wait_for_stop(None);
            match w.slot() {
                0 => panic!("panicked while stopping"),
                _ => Err("could not flush".into()),
            }
        })
        .unwrap();
    ev.expect("up", |l| l == "up");
    ev.expect("up", |l| l == "up");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let by_slot = |slot| outcome.history.iter().find(|r| r.slot == slot).unwrap();
    assert_eq!(by_slot(0).reason, ExitReason::Panicked);
    assert_eq!(
        by_slot(0).message.as_deref(),
        Some("panicked while stopping")
    );
    assert_eq!(by_slot(1).reason, ExitReason::Failed);
    assert_eq!(by_slot(1).message.as_deref(), Some("could not flush"));
    assert_nothing_left(&outcome.history);
}

/// Records the arbiter thread's id, to read its CPU time from /proc.
struct ArbiterTid(Arc<std::sync::atomic::AtomicI32>);

impl Layer for ArbiterTid {
    fn started(&mut self, _: &mut Context<'_>) {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        self.0.store(tid, std::sync::atomic::Ordering::SeqCst);
    }
}

fn thread_cpu(tid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn the_arbiter_does_not_spin_while_a_worker_boots_past_its_heartbeat_timeout() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let arbiter = Arbiter::builder()
        .workers(1)
        .ready_on_start(false)
        .heartbeat_timeout(Duration::from_millis(50))
        .layer(ArbiterTid(Arc::clone(&tid)))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send("booting");
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("booting", |l| l == "booting");
    let tid = tid.load(std::sync::atomic::Ordering::SeqCst);
    let before = thread_cpu(tid);
    // Ten heartbeat timeouts pass while the worker boots; the arbiter wakes
    // once per timeout, which costs next to no CPU. A spinning loop would
    // burn the whole window.
    std::thread::sleep(Duration::from_millis(500));
    let burnt = thread_cpu(tid) - before;
    assert!(
        burnt < Duration::from_millis(200),
        "the arbiter burnt {burnt:?} of 500 ms"
    );
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_failing_pool_is_reported_once_per_episode_and_as_a_whole() {
    let _g = lock();
    let spawns = Arc::new(Mutex::new(0usize));
    let s = Arc::clone(&spawns);
    let arbiter = Arbiter::builder()
        .workers(3)
        .backoff(
            Duration::from_millis(10),
            Duration::from_millis(40),
            Duration::from_secs(5),
        )
        .pre_fork(move |_, _| *s.lock().unwrap() += 1)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(|_: &mut Worker| -> Res { Err("no database".into()) })
        .unwrap();
    // Wait until every slot has died young several times over.
    util::wait_until("many young deaths", || *spawns.lock().unwrap() >= 24);
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let logs = util::logs();
    for slot in 0..3 {
        let episode = logs
            .iter()
            .filter(|l| l.contains(&format!("worker {slot} is crash-looping")))
            .count();
        assert_eq!(
            episode, 1,
            "slot {slot}: one crash-loop message per episode: {logs:#?}"
        );
    }
    let wedged = logs
        .iter()
        .filter(|l| l.contains("most workers are failing"))
        .count();
    assert_eq!(wedged, 1, "{logs:#?}");
    assert!(outcome.history.iter().all(|r| r.message.as_deref() == Some("no database")
        || r.reason == ExitReason::Stopped));
    assert_nothing_left(&outcome.history);
}

/// Stops the pool as soon as a worker is forked.
struct StopOnSpawn;

impl Layer for StopOnSpawn {
    fn spawned(&mut self, _: &ufork_core::Spawn, ctx: &mut Context<'_>) {
        ctx.handle().stop();
    }
}

#[test]
fn a_worker_stopped_the_moment_it_is_forked_still_stops_gracefully() {
    let _g = lock();
    // A SIGTERM that reaches a worker between fork and its own signal setup
    // must not be lost (it would be, were the arbiter's handler still in
    // place): then the worker would only go at the SIGKILL deadline.
    for round in 0..30 {
        let arbiter = Arbiter::builder()
            .workers(4)
            .graceful_timeout(Duration::from_secs(5))
            .layer(StopOnSpawn)
            .build()
            .unwrap();
        let (_, thread) = arbiter
            .spawn_guarded(|w: &mut Worker| -> Res {
                w.wait_for_stop(None);
                Ok(())
            })
            .unwrap();
        let outcome = thread.join().unwrap().unwrap();
        assert_eq!(
            outcome.killed_at_timeout, 0,
            "round {round}: {:#?}",
            outcome.history
        );
        assert_nothing_left(&outcome.history);
    }
}

#[test]
fn an_arbiter_whose_terminal_hangs_up_stops_instead_of_restarting() {
    let _g = lock();
    // python3's pty module gives the arbiter a controlling terminal, then
    // closes it: the kernel's SIGHUP must stop the pool, where a SIGHUP sent
    // with kill(1) would restart it.
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "orphan", "2"])
seen = b""
while seen.count(b"worker ") < 2:
    seen += os.read(fd, 4096)
print(pid, flush=True)
os.close(fd)
_, status = os.waitpid(pid, 0)
print("status", status, flush=True)
"#;
    let mut python = util::Reaped(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_ufork-core-testbin"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs"),
    );
    let mut lines = BufReader::new(python.stdout.take().unwrap()).lines();
    let arbiter: i32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    assert!(
        util::wait_exit(arbiter, DEADLINE),
        "the arbiter outlived its terminal"
    );
    let status = lines.next().unwrap().unwrap();
    assert_eq!(
        status, "status 0",
        "the arbiter exits 0 after a graceful stop"
    );
    assert!(python.wait().unwrap().success());
}

#[test]
fn commands_sent_before_run_take_effect_before_the_first_fork() {
    let _g = lock();
    let forks = Arc::new(Mutex::new(Vec::new()));
    let f = Arc::clone(&forks);
    let arbiter = Arbiter::builder()
        .workers(1)
        .history(0)
        .pre_fork(move |slot, _| f.lock().unwrap().push(slot))
        .build()
        .unwrap();
    let handle = arbiter.handle();
    handle.set_workers(3).unwrap();
    handle.stop();
    let (_, thread) = arbiter
        .spawn_guarded(|w: &mut Worker| -> Res {
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.spawned, 0, "stopped before anything was forked");
    assert!(forks.lock().unwrap().is_empty());
    let snap = handle.snapshot();
    assert_eq!(snap.target, 3);
    assert!(!snap.running && !snap.stopping);
    assert!(outcome.history.is_empty());
}

#[test]
fn with_process_groups_what_a_worker_started_goes_with_it() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = no_backoff(Arbiter::builder().workers(1).process_group(true))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            let child = Command::new("sleep")
                .arg("1000")
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            tx.send(&format!("child {} {}", w.generation(), child.id()));
            std::mem::forget(child);
            if w.generation() == 0 {
                // Exits, leaving its child behind.
                return Ok(());
            }
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let pid_of = |line: String| -> i32 { line.rsplit(' ').next().unwrap().parse().unwrap() };
    let left_behind = pid_of(ev.expect("generation 0's child", |l| l.starts_with("child 0 ")));
    let running = pid_of(ev.expect("generation 1's child", |l| l.starts_with("child 1 ")));
    assert!(
        util::wait_exit(left_behind, DEADLINE),
        "the child of an exited worker outlived it"
    );
    assert!(util::running(running));
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert!(
        util::wait_exit(running, DEADLINE),
        "the stop did not reach the worker's child"
    );
    assert_eq!(outcome.history.last().unwrap().reason, ExitReason::Stopped);
    assert_nothing_left(&outcome.history);
}

/// A backoff no test could wait out: anything delayed by it never shows up.
fn endless_backoff(b: ufork_core::Builder) -> ufork_core::Builder {
    let hour = Duration::from_secs(3600);
    b.backoff(hour, hour, hour)
}

#[test]
fn planned_exits_and_outside_kills_are_replaced_at_once_however_young() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = endless_backoff(Arbiter::builder().workers(1))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {} {}", w.generation(), w.pid()));
            if w.generation() < 5 {
                // max-requests style: leave on purpose, at once.
                w.recycle();
                return Ok(());
            }
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    for generation in 0..5 {
        ev.expect("a recycled generation", |l| {
            l.starts_with(&format!("up {generation} "))
        });
    }
    // Ready and young, killed from outside twice: replaced at once too.
    for generation in 5..7 {
        let line = ev.expect("a serving worker", |l| {
            l.starts_with(&format!("up {generation} "))
        });
        let pid: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
        util::wait_until("it is published", || {
            handle.snapshot().workers.iter().any(|w| w.pid == pid)
        });
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    }
    ev.expect("generation 7", |l| l.starts_with("up 7 "));
    util::wait_until("generation 7 is published", || {
        handle.snapshot().workers.iter().any(|w| w.generation == 7)
    });
    let snap = handle.snapshot();
    assert_eq!(
        snap.workers[0].restarts, 2,
        "recycles are no restarts, kills are"
    );
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    let reasons: Vec<&ExitReason> = outcome.history.iter().map(|r| &r.reason).collect();
    assert_eq!(&reasons[..5], &[&ExitReason::Recycled; 5]);
    assert_eq!(&reasons[5..7], &[&ExitReason::Killed; 2]);
    assert!(
        !util::logs().iter().any(|l| l.contains("crash-looping")),
        "{:#?}",
        util::logs()
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn the_first_failure_is_replaced_at_once_and_the_second_backs_off() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = endless_backoff(Arbiter::builder().workers(1))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {}", w.generation()));
            Err("no database".into())
        })
        .unwrap();
    ev.expect("generation 0", |l| l == "up 0");
    ev.expect("generation 1, at once", |l| l == "up 1");
    util::wait_until("the second failure is reaped", || {
        handle.snapshot().history.len() == 2
    });
    util::wait_until("the crash loop is reported", || {
        util::logs()
            .iter()
            .any(|l| l.contains("worker 0 is crash-looping"))
    });
    assert!(handle.snapshot().workers.is_empty(), "in backoff");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.history.len(), 2);
    assert_nothing_left(&outcome.history);
}

#[test]
fn workers_forked_while_another_thread_holds_stdout_never_hang_printing() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _g = lock();
    // Another thread of the host holds std's stdout and stderr locks most of
    // the time, as a busy printer does.
    let done = Arc::new(AtomicBool::new(false));
    let printer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let held = (std::io::stdout().lock(), std::io::stderr().lock());
                let until = Instant::now() + Duration::from_micros(200);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                drop(held);
                std::thread::yield_now();
            }
        })
    };
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(2).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            // A lock inherited held by a thread the child does not have
            // would block here forever.
            let _ = writeln!(std::io::stdout().lock(), "worker {} printing", w.pid());
            let _ = writeln!(std::io::stderr().lock(), "worker {} printing", w.pid());
            tx.send(&format!("up {}", w.pid()));
            w.recycle();
            Ok(())
        })
        .unwrap();
    for _ in 0..200 {
        ev.expect("a worker that printed", |l| l.starts_with("up "));
    }
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    done.store(true, Ordering::Relaxed);
    printer.join().unwrap();
    assert!(outcome.spawned >= 200);
    assert_nothing_left(&outcome.history);
}

#[test]
fn huge_timeouts_mean_never_not_an_immediate_sigkill() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let forever = Duration::MAX;
    let arbiter = Arbiter::builder()
        .workers(2)
        .graceful_timeout(forever)
        .start_timeout(forever)
        .heartbeat_timeout(forever)
        .backoff(forever, forever, forever)
        .limit_interval(forever)
        .memory_limit(u64::MAX)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            w.heartbeat();
            tx.send(&format!("up {}", w.slot()));
            // Stopped by SIGTERM, not by a timeout wrapped to zero.
            assert!(w.wait_for_stop(Some(Duration::MAX)));
            tx.send(&format!("bye {}", w.slot()));
            Ok(())
        })
        .unwrap();
    for _ in 0..2 {
        ev.expect("a worker up", |l| l.starts_with("up "));
    }
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert!(outcome.graceful);
    assert_eq!(outcome.killed_at_timeout, 0);
    for r in &outcome.history {
        assert_eq!(
            (&r.reason, r.status),
            (&ExitReason::Stopped, ExitStatus::Code(0))
        );
    }
    for _ in 0..2 {
        ev.expect("a worker leaving on SIGTERM", |l| l.starts_with("bye "));
    }
    assert_nothing_left(&outcome.history);
}

/// Records, when layers flush at the end of `run`, which of INT and TERM
/// the process still catches.
struct CaughtAtFlush(Arc<Mutex<Option<u64>>>);

impl Layer for CaughtAtFlush {
    fn stopped(&mut self) {
        let both = (1u64 << (libc::SIGINT - 1)) | (1u64 << (libc::SIGTERM - 1));
        *self.0.lock().unwrap() = Some(util::signal_mask("SigCgt:") & both);
    }
}

#[test]
fn signal_dispositions_are_restored_before_layers_flush() {
    let _g = lock();
    let seen = Arc::new(Mutex::new(None));
    let arbiter = Arbiter::builder()
        .workers(1)
        .layer(CaughtAtFlush(Arc::clone(&seen)))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(|w: &mut Worker| -> Res {
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    util::wait_until("the worker is up", || handle.snapshot().ready_count() == 1);
    assert_ne!(util::signal_mask("SigCgt:") & (1 << (libc::SIGTERM - 1)), 0);
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    // A flush stalled on a full pipe must not leave Ctrl-C caught by a loop
    // that no longer runs.
    assert_eq!(
        *seen.lock().unwrap(),
        Some(0),
        "INT/TERM still caught at flush"
    );
    assert_nothing_left(&outcome.history);
}

/// Registers a pipe, closes it without deregistering (a buggy layer), and
/// keeps another file open under the same descriptor number.
struct ClosesWithoutDeregistering {
    number: Arc<Mutex<Option<i32>>>,
    reused: Option<std::fs::File>,
}

impl Layer for ClosesWithoutDeregistering {
    fn started(&mut self, ctx: &mut Context<'_>) {
        use std::os::fd::{AsFd, AsRawFd};
        let (r, w) = rustix::pipe::pipe().unwrap();
        ctx.register(r.as_fd(), Interest::READABLE);
        let number = r.as_raw_fd();
        drop((r, w));
        // The lowest free number is the one just closed.
        let file = std::fs::File::open("/dev/null").unwrap();
        if file.as_raw_fd() == number {
            *self.number.lock().unwrap() = Some(number);
        }
        self.reused = Some(file);
    }
}

/// Registers a file, closes it without deregistering, and opens the same
/// file again under the same number: the same device and inode, another
/// open file.
struct ReopensTheSameFile {
    path: std::path::PathBuf,
    number: Arc<Mutex<Option<i32>>>,
    reopened: Option<std::fs::File>,
}

impl Layer for ReopensTheSameFile {
    fn started(&mut self, ctx: &mut Context<'_>) {
        use std::os::fd::{AsFd, AsRawFd};
        let first = std::fs::File::open(&self.path).unwrap();
        ctx.register(first.as_fd(), Interest::READABLE);
        let number = first.as_raw_fd();
        drop(first);
        let again = std::fs::File::open(&self.path).unwrap();
        if again.as_raw_fd() == number {
            *self.number.lock().unwrap() = Some(number);
        }
        self.reopened = Some(again);
    }
}

#[test]
fn a_number_reused_by_another_open_of_the_same_file_stays_open_in_workers() {
    let _g = lock();
    let path = std::env::temp_dir().join(format!("ufork-core-reopen-{}", std::process::id()));
    std::fs::write(&path, b"x").unwrap();
    let mut ev = Events::new();
    let tx = ev.sender();
    let number = Arc::new(Mutex::new(None));
    let arbiter = Arbiter::builder()
        .workers(1)
        .layer(ReopensTheSameFile {
            path: path.clone(),
            number: Arc::clone(&number),
            reopened: None,
        })
        .build()
        .unwrap();
    let n = Arc::clone(&number);
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            let fd = n.lock().unwrap().expect("the number was reused");
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}"));
            tx.send(&format!("fd {fd} {}", target.is_ok()));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let line = ev.expect("the worker's view", |l| l.starts_with("fd "));
    assert!(line.ends_with(" true"), "closed in the worker: {line}");
    util::wait_until("the registration is dropped", || {
        util::logs()
            .iter()
            .any(|l| l.contains("a layer's descriptor was closed while registered"))
    });
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_nothing_left(&outcome.history);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_reused_descriptor_number_is_not_closed_in_workers_nor_polled() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let number = Arc::new(Mutex::new(None));
    let arbiter = Arbiter::builder()
        .workers(1)
        .layer(ClosesWithoutDeregistering {
            number: Arc::clone(&number),
            reused: None,
        })
        .build()
        .unwrap();
    let n = Arc::clone(&number);
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            let fd = n.lock().unwrap().expect("the number was reused");
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}"));
            tx.send(&format!("fd {fd} {target:?}"));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let line = ev.expect("the worker's view", |l| l.starts_with("fd "));
    assert!(
        line.ends_with("Ok(\"/dev/null\")"),
        "closed in the worker: {line}"
    );
    util::wait_until("the stale registration is dropped", || {
        util::logs()
            .iter()
            .any(|l| l.contains("closed while registered"))
    });
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_nothing_left(&outcome.history);
}

/// Zombies whose parent is `parent`.
fn zombie_children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
                let state = rest.next();
                let ppid = rest.next().and_then(|p| p.parse::<i32>().ok());
                state == Some("Z") && ppid == Some(parent)
            })
        })
        .collect()
}

/// Reads the testbin's lines until its last worker is up; returns the
/// orphans it reported.
fn orphans_until_the_worker(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> usize {
    let mut orphans = 0;
    loop {
        let line = lines.next().expect("testbin output").unwrap();
        if line.starts_with("orphan ") {
            orphans += 1;
        }
        if line.starts_with("worker ") {
            return orphans;
        }
    }
}

#[test]
fn a_subreaper_arbiter_reaps_orphans_of_workers_in_their_own_process_groups() {
    let _g = lock();
    let mut child = util::Reaped(
        Command::new(env!("CARGO_BIN_EXE_ufork-core-testbin"))
            .args(["orphans", "5", "subreaper"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.id() as i32;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(orphans_until_the_worker(&mut lines), 5);
    // Each orphan was a zombie of the arbiter once its worker exited, in the
    // worker's process group: `waitpid(0)` never sees it, `wait` on any
    // child does.
    util::wait_until("every orphan is reaped", || {
        zombie_children_of(pid).is_empty()
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    assert!(rest.contains(&"children 0".to_owned()), "{rest:?}");
}

#[test]
fn as_pid_1_of_a_pid_namespace_the_arbiter_reaps_every_orphan() {
    let _g = lock();
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stderr(Stdio::piped())
        .output();
    // A machine that cannot run this test says so: it fails, unless asked
    // to skip it knowingly.
    let why = match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "cannot create a pid namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    };
    if let Some(why) = why {
        if std::env::var_os("UFORK_TESTS_WITHOUT_PIDNS").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED (UFORK_TESTS_WITHOUT_PIDNS=1): {why}");
            return;
        }
        panic!("{why}; run as root with unshare(1), or set UFORK_TESTS_WITHOUT_PIDNS=1 to skip");
    }
    let mut unshare = util::Reaped(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(env!("CARGO_BIN_EXE_ufork-core-testbin"))
            .args(["orphans", "5"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(unshare.stdout.take().unwrap()).lines();
    assert_eq!(orphans_until_the_worker(&mut lines), 5);
    // The arbiter is PID 1 inside; outside it is unshare's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let arbiter: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    util::wait_until("every orphan is reaped", || {
        zombie_children_of(arbiter).is_empty()
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(arbiter).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(unshare.wait().unwrap().success(), "{rest:?}");
    assert!(rest.contains(&"done".to_owned()), "{rest:?}");
}

#[test]
fn a_pool_that_cannot_start_gives_up_naming_the_last_failure() {
    let _g = lock();
    let spawns = Arc::new(Mutex::new(0usize));
    let s = Arc::clone(&spawns);
    let ms = Duration::from_millis(1);
    let arbiter = Arbiter::builder()
        .workers(2)
        .backoff(ms, ms, Duration::from_secs(3600))
        .give_up_after(3)
        // One slot may fail many times while the other's worker is slow to
        // fail on a loaded machine: keep every exit to count both.
        .history(100_000)
        .pre_fork(move |_, _| *s.lock().unwrap() += 1)
        .build()
        .unwrap();
    let (_handle, thread) = arbiter
        .spawn_guarded(|_: &mut Worker| -> Res { Err("no database".into()) })
        .unwrap();
    // No stop from the test: the arbiter ends the run itself.
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.cause, StopCause::GaveUp);
    let last = outcome.last_failure.expect("the last failure");
    assert_eq!(last.reason, ExitReason::Failed);
    assert_eq!(last.message.as_deref(), Some("no database"));
    for slot in 0..2 {
        let failures = outcome.history.iter().filter(|r| r.slot == slot).count();
        assert!(failures >= 3, "slot {slot}: {:#?}", outcome.history);
    }
    assert!(*spawns.lock().unwrap() >= 6);
    assert!(
        util::logs()
            .iter()
            .any(|l| l.contains("giving up") && l.contains("no database")),
        "{:#?}",
        util::logs()
    );
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_sigwinch_sent_by_habit_is_logged_and_ignored() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(1).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            tx.send(&format!("up {}", w.generation()));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("the worker", |l| l == "up 0");
    signal_self(rustix::process::Signal::WINCH);
    util::wait_until("the arbiter says it ignored SIGWINCH", || {
        util::logs().iter().any(|l| l.contains("SIGWINCH ignored"))
    });
    let snap = handle.snapshot();
    assert!(snap.running && !snap.stopping);
    assert_eq!(snap.workers.len(), 1);
    assert_eq!(snap.workers[0].generation, 0, "the worker was left alone");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.history.len(), 1);
    assert_nothing_left(&outcome.history);
}

#[test]
fn alrm_pwr_io_vtalrm_and_prof_are_ignored_by_the_arbiter_and_default_in_workers() {
    use rustix::process::Signal;
    let _g = lock();
    let signals = [
        (Signal::ALARM, "SIGALRM"),
        (Signal::POWER, "SIGPWR"),
        (Signal::IO, "SIGIO"),
        (Signal::VTALARM, "SIGVTALRM"),
        (Signal::PROF, "SIGPROF"),
    ];
    let bits = signals
        .iter()
        .fold(0u64, |acc, (s, _)| acc | 1u64 << (s.as_raw() - 1));
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder().workers(1).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            // A worker gets these signals back at their default disposition.
            let changed = (util::signal_mask("SigCgt:") | util::signal_mask("SigIgn:")) & bits;
            tx.send(&format!("up {} {changed:x}", w.generation()));
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    ev.expect("the worker, with default dispositions", |l| l == "up 0 0");
    for (sig, name) in signals {
        signal_self(sig);
        util::wait_until(&format!("the arbiter says it ignored {name}"), || {
            util::logs()
                .iter()
                .any(|l| l.contains(&format!("{name} ignored")))
        });
    }
    let snap = handle.snapshot();
    assert!(snap.running && !snap.stopping);
    assert_eq!(snap.workers.len(), 1);
    assert_eq!(snap.workers[0].generation, 0, "the worker was left alone");
    handle.stop();
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.history.len(), 1);
    assert_nothing_left(&outcome.history);
}

#[test]
fn a_stopping_worker_refuses_new_connections_on_its_own_reuse_port_socket() {
    use ufork_core::listen::{Address, Listeners};
    let _g = lock();
    let listeners = Listeners::builder()
        .socket_activation(false)
        .reuse_port(true)
        .address("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let addr = match listeners.iter().next() {
        Some((_, Address::Tcp(addr))) => *addr,
        other => panic!("{other:?}"),
    };
    let mut ev = Events::new();
    let tx = ev.sender();
    let (release_r, release_w) = rustix::pipe::pipe().unwrap();
    let arbiter = Arbiter::builder()
        .workers(2)
        .graceful_timeout(DEADLINE)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            let own = listeners.for_worker().map_err(|e| e.to_string())?;
            w.ready();
            tx.send("up");
            w.wait_for_stop(None);
            tx.send("stopping");
            // It still holds its socket, as a worker finishing a long
            // request does, until the test lets it go.
            let mut byte = [0u8; 1];
            let _ = rustix::io::read(&release_r, &mut byte);
            drop(own);
            Ok(())
        })
        .unwrap();
    for _ in 0..2 {
        ev.expect("a worker listening on its own socket", |l| l == "up");
    }
    std::net::TcpStream::connect(addr).expect("connections are taken before the stop");
    handle.stop();
    for _ in 0..2 {
        ev.expect("a worker heard the stop", |l| l == "stopping");
    }
    // Both workers still run and hold their sockets; nobody listens.
    let refused = std::net::TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    rustix::io::write(&release_w, &[0, 0]).unwrap();
    let outcome = thread.join().unwrap().unwrap();
    assert!(outcome.graceful);
    assert_eq!(outcome.history.len(), 2);
    assert_nothing_left(&outcome.history);
}

#[test]
fn before_exec_reports_an_earlier_stop_and_leaves_a_later_one_to_end_the_worker() {
    let _g = lock();
    let mut ev = Events::new();
    let tx = ev.sender();
    let arbiter = Arbiter::builder()
        .workers(2)
        .graceful_timeout(DEADLINE)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Res {
            if w.slot() == 0 {
                // Stopped before it would exec: the stop is reported.
                w.ready();
                tx.send("waiting 0");
                w.wait_for_stop(None);
                let stopped = w.before_exec();
                tx.send(&format!("before_exec 0 {stopped}"));
                return Ok(());
            }
            // Stopped after: SIGTERM has its default action and ends the
            // worker, as it would end the program the worker execs. Were
            // the stop-flag handler still in place, the worker would park
            // until the graceful timeout killed it.
            let stopped = w.before_exec();
            w.ready();
            // No other thread of the worker may handle a SIGTERM behind
            // before_exec's back: ufork-core's own helper thread blocks it.
            tx.send(&format!(
                "helper blocks SIGTERM: {}",
                helper_blocks_sigterm()
            ));
            tx.send(&format!("before_exec 1 {stopped}"));
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    // The two workers report in either order (`expect` drops what it skips).
    let mut want = vec!["waiting 0", "before_exec 1 false"];
    while !want.is_empty() {
        let line = ev.expect("slot 0 waiting and slot 1 past before_exec", |l| {
            want.contains(&l)
        });
        want.retain(|w| *w != line);
    }
    handle.stop();
    ev.expect("slot 0 told of the stop", |l| l == "before_exec 0 true");
    assert!(
        ev.seen.iter().any(|l| l == "helper blocks SIGTERM: true"),
        "{:?}",
        ev.seen
    );
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.killed_at_timeout, 0, "{:#?}", outcome.history);
    let ended = outcome.history.iter().find(|r| r.slot == 1).unwrap();
    assert_eq!(ended.status, ExitStatus::Signal(libc::SIGTERM));
    let returned = outcome.history.iter().find(|r| r.slot == 0).unwrap();
    assert_eq!(returned.status, ExitStatus::Code(0));
    assert_nothing_left(&outcome.history);
}

/// Whether every thread of this process but the caller blocks SIGTERM
/// (`SigBlk` in /proc), and there is one: in a worker, ufork-core's helper
/// thread. (Not found by its name: a new thread names itself only once it
/// runs; its mask it has from the start.)
fn helper_blocks_sigterm() -> bool {
    let me = rustix::thread::gettid().as_raw_nonzero().get().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    let others: Vec<bool> = tasks
        .flatten()
        .filter(|task| task.file_name().to_string_lossy() != me)
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
        })
        .collect();
    !others.is_empty() && others.iter().all(|&blocked| blocked)
}
