//! The arbiter's benchmarks (run by `cargo xtask bench core`):
//!
//! - respawn latency: SIGKILL a worker → its replacement forked;
//! - shutdown latency: stop request → `run` returns, 4 and 64 prompt workers;
//! - startup: `run` called → all N workers running, N = 2, 16, 64;
//! - idle: arbiter wake-ups per second and CPU with 8 idle workers;
//! - heartbeat cost in ns per call;
//! - hang detection: how long after its timeout a silent worker is killed;
//! - boot 64 workers that take 50 ms each to become ready.
//!
//! Each figure is a median over repeated runs. With `UFORK_BENCH_PYTHON`
//! pointing at a python with gunicorn, gunicorn's respawn latency is measured
//! the same way from outside, for comparison.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ufork_core::{Arbiter, Context, ExitReason, Layer, Worker};

type Res = Result<(), String>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn fmt_ms(v: f64) -> String {
    if v < 1.0 {
        format!("{:.0} µs", v * 1000.0)
    } else {
        format!("{v:.2} ms")
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

fn read_bytes(fd: &OwnedFd, n: usize) {
    let mut got = 0;
    let mut buf = [0u8; 256];
    while got < n {
        got += rustix::io::read(fd, &mut buf[..(n - got).min(256)]).expect("read");
    }
}

fn respawn_latency(rounds: usize) -> Vec<f64> {
    let (tx, rx) = mpsc::channel::<(u32, Instant)>();
    let arbiter = Arbiter::builder()
        .workers(1)
        .backoff(Duration::ZERO, Duration::ZERO, Duration::ZERO)
        .pre_fork(move |_, generation| {
            let _ = tx.send((generation, Instant::now()));
        })
        .build()
        .unwrap();
    let (up_r, up_w) = pipe();
    let (handle, thread) = arbiter
        .spawn_thread(move |w: &mut Worker| -> Res {
            let pid = w.pid().to_ne_bytes();
            rustix::io::write(&up_w, &pid).map_err(|e| e.to_string())?;
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let mut samples = Vec::new();
    rx.recv().unwrap();
    for generation in 0..rounds as u32 {
        let mut pid = [0u8; 4];
        rustix::io::read(&up_r, &mut pid).unwrap();
        let pid = rustix::process::Pid::from_raw(i32::from_ne_bytes(pid)).unwrap();
        let killed = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        let (g, forked) = rx.recv().unwrap();
        assert_eq!(g, generation + 1);
        samples.push((forked - killed).as_secs_f64() * 1000.0);
    }
    handle.stop();
    thread.join().unwrap().unwrap();
    samples
}

fn shutdown_latency(workers: usize, rounds: usize) -> Vec<f64> {
    (0..rounds)
        .map(|_| {
            let (up_r, up_w) = pipe();
            let arbiter = Arbiter::builder().workers(workers).build().unwrap();
            let (handle, thread) = arbiter
                .spawn_thread(move |w: &mut Worker| -> Res {
                    rustix::io::write(&up_w, b"u").map_err(|e| e.to_string())?;
                    w.wait_for_stop(None);
                    Ok(())
                })
                .unwrap();
            read_bytes(&up_r, workers);
            let t = Instant::now();
            handle.stop();
            thread.join().unwrap().unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn startup(workers: usize, rounds: usize) -> Vec<f64> {
    (0..rounds)
        .map(|_| {
            let (up_r, up_w) = pipe();
            let arbiter = Arbiter::builder().workers(workers).build().unwrap();
            let t = Instant::now();
            let (handle, thread) = arbiter
                .spawn_thread(move |w: &mut Worker| -> Res {
                    rustix::io::write(&up_w, b"u").map_err(|e| e.to_string())?;
                    w.wait_for_stop(None);
                    Ok(())
                })
                .unwrap();
            read_bytes(&up_r, workers);
            let took = t.elapsed().as_secs_f64() * 1000.0;
            handle.stop();
            thread.join().unwrap().unwrap();
            took
        })
        .collect()
}

/// Records the arbiter thread's id so its counters can be read from /proc.
struct Tid(Arc<AtomicI32>);

impl Layer for Tid {
    fn started(&mut self, _: &mut Context<'_>) {
        self.0.store(
            rustix::thread::gettid().as_raw_nonzero().get(),
            Ordering::SeqCst,
        );
    }
}

fn thread_counters(tid: i32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let switches: u64 = status
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (switches, ticks as f64 * 10.0)
}

fn idle(seconds: u64) -> (f64, f64) {
    let tid = Arc::new(AtomicI32::new(0));
    let (up_r, up_w) = pipe();
    let arbiter = Arbiter::builder()
        .workers(8)
        .heartbeat_timeout(Duration::from_secs(10))
        .layer(Tid(Arc::clone(&tid)))
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_thread(move |w: &mut Worker| -> Res {
            rustix::io::write(&up_w, b"u").map_err(|e| e.to_string())?;
            while !w.wait_for_stop(Some(Duration::from_secs(1))) {
                w.heartbeat();
            }
            Ok(())
        })
        .unwrap();
    read_bytes(&up_r, 8);
    let tid = tid.load(Ordering::SeqCst);
    let (s0, c0) = thread_counters(tid);
    std::thread::sleep(Duration::from_secs(seconds));
    let (s1, c1) = thread_counters(tid);
    handle.stop();
    thread.join().unwrap().unwrap();
    (
        (s1 - s0) as f64 / seconds as f64,
        (c1 - c0) / seconds as f64,
    )
}

fn heartbeat_ns() -> f64 {
    let (r, w) = pipe();
    let arbiter = Arbiter::builder().workers(1).build().unwrap();
    let (handle, thread) = arbiter
        .spawn_thread(move |worker: &mut Worker| -> Res {
            let n = 50_000_000u32;
            let t = Instant::now();
            for _ in 0..n {
                worker.heartbeat();
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
            rustix::io::write(&w, &ns.to_ne_bytes()).map_err(|e| e.to_string())?;
            worker.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let mut buf = [0u8; 8];
    rustix::io::read(&r, &mut buf).unwrap();
    handle.stop();
    thread.join().unwrap().unwrap();
    f64::from_ne_bytes(buf)
}

fn hang_detection(rounds: usize, timeout: Duration) -> Vec<f64> {
    let (tx, rx) = mpsc::channel::<Duration>();
    let arbiter = Arbiter::builder()
        .workers(1)
        .heartbeat_timeout(timeout)
        .backoff(Duration::ZERO, Duration::ZERO, Duration::ZERO)
        .on_exit(move |record| {
            if let ExitReason::TimedOut { silent_for, .. } = record.reason {
                let _ = tx.send(silent_for);
            }
        })
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_thread(|_: &mut Worker| -> Res {
            // Ready (one beat), then silent forever.
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    let samples = (0..rounds)
        .map(|_| (rx.recv().unwrap().saturating_sub(timeout)).as_secs_f64() * 1000.0)
        .collect();
    handle.stop();
    thread.join().unwrap().unwrap();
    samples
}

fn slow_boot(max_booting: Option<usize>) -> f64 {
    let (up_r, up_w) = pipe();
    let mut builder = Arbiter::builder().workers(64).ready_on_start(false);
    if let Some(max) = max_booting {
        builder = builder.max_booting(max);
    }
    let arbiter = builder.build().unwrap();
    let t = Instant::now();
    let (handle, thread) = arbiter
        .spawn_thread(move |w: &mut Worker| -> Res {
            std::thread::sleep(Duration::from_millis(50));
            w.ready();
            rustix::io::write(&up_w, b"r").map_err(|e| e.to_string())?;
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    read_bytes(&up_r, 64);
    let took = t.elapsed().as_secs_f64() * 1000.0;
    handle.stop();
    thread.join().unwrap().unwrap();
    took
}

/// gunicorn's respawn latency, measured from outside: SIGKILL a worker and
/// watch the master's children until a new pid appears.
fn gunicorn_respawn(python: &str, rounds: usize) -> Result<Vec<f64>, String> {
    let dir = std::env::temp_dir().join(format!("ufork-bench-gunicorn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("app.py"),
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n",
    )
    .map_err(|e| e.to_string())?;
    let sock = dir.join("g.sock");
    let mut child = std::process::Command::new(python)
        .args(["-m", "gunicorn", "-w", "2", "--log-level", "warning", "-b"])
        .arg(format!("unix:{}", sock.display()))
        .arg("app:app")
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let master = child.id();
    let children = || -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = (|| {
        while children().len() < 2 {
            if Instant::now() > deadline {
                return Err("gunicorn did not start 2 workers".to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..rounds {
            let before = children();
            let victim = before[0];
            let t = Instant::now();
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(victim).unwrap(),
                rustix::process::Signal::KILL,
            )
            .map_err(|e| e.to_string())?;
            loop {
                let now = children();
                if now.iter().any(|p| !before.contains(p)) {
                    samples.push(t.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                if Instant::now() > deadline {
                    return Err("gunicorn did not respawn".to_string());
                }
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(master as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| samples)
}

fn main() {
    let _ = std::io::Write::flush(&mut std::io::stdout());
    println!("## ufork-core arbiter benchmarks (medians)\n");
    println!("| measure | ufork | peer |");
    println!("|---|---|---|");
    let respawn = respawn_latency(50);
    let gunicorn = std::env::var("UFORK_BENCH_PYTHON")
        .ok()
        .map(|py| gunicorn_respawn(&py, 10));
    let peer = match &gunicorn {
        Some(Ok(s)) => format!(
            "gunicorn sync: {} (ratio {:.0}x)",
            fmt_ms(median(s.clone())),
            median(s.clone()) / median(respawn.clone())
        ),
        Some(Err(e)) => format!("gunicorn: skipped ({e})"),
        None => "gunicorn: skipped (UFORK_BENCH_PYTHON not set)".into(),
    };
    println!(
        "| respawn latency, SIGKILL → replacement forked (50 kills; max {}) | {} | {peer} |",
        fmt_ms(respawn.iter().cloned().fold(0.0, f64::max)),
        fmt_ms(median(respawn))
    );
    for n in [4, 64] {
        println!(
            "| shutdown, stop → run returns, {n} workers | {} | |",
            fmt_ms(median(shutdown_latency(n, 7)))
        );
    }
    for n in [2, 16, 64] {
        println!(
            "| startup, run → {n} workers running | {} | |",
            fmt_ms(median(startup(n, 7)))
        );
    }
    let (wakeups, cpu) = idle(5);
    println!(
        "| idle, 8 workers beating every 1 s (timeout 10 s): arbiter wake-ups/s | {wakeups:.2} | uFork: ~11/s |"
    );
    println!("| idle: arbiter CPU ms/s | {cpu:.2} | |");
    println!(
        "| heartbeat cost per call | {:.1} ns | uFork, gunicorn: a syscall per beat |",
        heartbeat_ns()
    );
    let hang = hang_detection(5, Duration::from_millis(500));
    println!(
        "| hang detection, timeout 500 ms: killed at T + (median, max) | {} / {} | |",
        fmt_ms(median(hang.clone())),
        fmt_ms(hang.iter().cloned().fold(0.0, f64::max))
    );
    println!(
        "| boot 64 workers × 50 ms to ready, default throttle ({}) | {} | max_booting 1 (uFork's): {} |",
        ufork_core::DEFAULT_MAX_BOOTING,
        fmt_ms(median((0..3).map(|_| slow_boot(None)).collect())),
        fmt_ms(slow_boot(Some(1)))
    );
    let _ = std::io::stdout().as_fd();
}
