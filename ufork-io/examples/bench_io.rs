//! Throughput of the capture layer: 4 workers each copy `UFORK_BENCH_MB`
//! (default 50) MB of 80-byte lines from a file to their stdout as fast as
//! they can, into a file sink. Reports MB/s reaching the file, lines lost or
//! torn (verified in the file) and CPU per MB; against the floor, the same
//! four files through `cat | cat > file` (one pipe), and Python uFork when
//! `UFORK_BENCH_PYTHON` names a python with `ufork` installed.
//!
//! The comparison with `cat` is like for like: the same files (made before
//! any clock starts), the same reads and writes in the processes that
//! produce the output (128 KiB `read`, then `write` of what was read, as GNU
//! `cat` does), the same kind of sink (a new file in the same directory).
//! The contenders take turns for `UFORK_BENCH_ROUNDS` (default 5) rounds,
//! so that a machine busy with something else slows each of them alike;
//! each row shows the median round, and the median (and range) of its
//! ratios to the floor's run of the same round.
//! CPU counts every process of a contender (the workers and both cats
//! included), except Python uFork's, which counts its arbiter only.
//!
//! The ufork-io rows ask for 64 KiB, 256 KiB and 1 MiB pipes, whoever runs
//! the bench; `UFORK_BENCH_PIPES` (KiB, comma-separated, e.g. `64`) runs
//! only those sizes, for a profile of one of them. With `UFORK_BENCH_SPLIT=1`
//! each ufork-io row is followed by where its CPU went: the arbiter's
//! thread, the writer thread and the workers (medians, ms per MB).
//!
//! `cargo run --release -p ufork-io --example bench_io`

use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ufork_core::Arbiter;
use ufork_io::{Capture, Sink};

const WORKERS: usize = 4;
const LINE: usize = 80;
/// GNU `cat`'s buffer: what it reads, then writes, at a time.
const COPY_BUFFER: usize = 128 * 1024;

fn line(slot: usize, seq: usize, out: &mut Vec<u8>) {
    let start = out.len();
    write!(out, "{slot} {seq:012} ").unwrap();
    out.resize(start + LINE - 1, b'x');
    out.push(b'\n');
}

/// Writes each worker's lines to a file of its own, `src-<slot>`.
fn make_sources(dir: &Path, lines: usize) -> Vec<PathBuf> {
    (0..WORKERS)
        .map(|slot| {
            let path = dir.join(format!("src-{slot}"));
            let mut f =
                std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
            let mut buf = Vec::new();
            for seq in 0..lines {
                buf.clear();
                line(slot, seq, &mut buf);
                f.write_all(&buf).unwrap();
            }
            f.flush().unwrap();
            path
        })
        .collect()
}

/// What `cat` does: read up to 128 KiB, write what was read, until EOF.
fn copy_like_cat(mut from: impl Read, mut to: impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// One contender's run: wall time, CPU seconds, lines lost, lines torn.
#[derive(Clone, Copy)]
struct Run {
    wall: f64,
    cpu: f64,
    lost: usize,
    torn: usize,
    /// CPU seconds of the arbiter's thread and of the writer thread (ufork-io
    /// runs only).
    split: Option<(f64, f64)>,
}

/// CPU seconds each thread of this process has run so far, by name (the
/// scheduler's nanosecond count, `/proc/self/task/*/schedstat`); the
/// main thread is named `main`.
fn thread_cpu() -> Vec<(String, f64)> {
    let pid = std::process::id().to_string();
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let ns: f64 = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let name = if task.file_name().to_str() == Some(pid.as_str()) {
            "main".to_string()
        } else {
            comm.trim().to_string()
        };
        threads.push((name, ns / 1e9));
    }
    threads
}

fn cpu_of(threads: &[(String, f64)], name: &str) -> f64 {
    threads
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, s)| s)
        .sum()
}

struct Row {
    name: String,
    mb_s: String,
    ratio: String,
    lost: String,
    torn: String,
    cpu_per_mb: String,
}

/// Per slot, counts lines that are whole and in sequence. Returns (good, torn).
fn verify(path: &Path, strip: impl Fn(&str) -> &str) -> (usize, usize) {
    let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).unwrap());
    let mut next = [0usize; WORKERS];
    let (mut good, mut torn) = (0, 0);
    for l in file.split(b'\n') {
        let l = l.unwrap();
        let Ok(text) = std::str::from_utf8(&l) else {
            torn += 1;
            continue;
        };
        let body = strip(text);
        let ok = body.len() == LINE - 1
            && body.ends_with('x')
            && body
                .split_once(' ')
                .and_then(|(s, rest)| {
                    Some((s.parse::<usize>().ok()?, rest.get(..12)?.parse().ok()?))
                })
                .is_some_and(|(slot, seq): (usize, usize)| {
                    slot < WORKERS && {
                        let in_order = seq == next[slot];
                        next[slot] = seq + 1;
                        in_order
                    }
                });
        if ok {
            good += 1;
        } else if !body.is_empty() {
            torn += 1;
        }
    }
    (good, torn)
}

fn run_ufork_io(dir: &Path, sources: &[PathBuf], lines: usize, pipe_size: usize) -> Run {
    let path = dir.join("ufork-io.log");
    let file = std::fs::File::create(&path).unwrap();
    let capture = Capture::builder()
        .sink(Sink::writer(file))
        .pipe_size(pipe_size)
        .build()
        .unwrap();
    let counters = capture.counters();
    let arbiter = Arbiter::builder()
        .workers(WORKERS)
        .handle_signals(false)
        .layer(capture)
        .build()
        .unwrap();
    let handle = arbiter.handle();
    let expected = (WORKERS * lines) as u64;
    let cpu_start = cpu_seconds() + children_cpu_seconds();
    let threads_start = thread_cpu();
    let start = Instant::now();
    let watcher = std::thread::spawn(move || {
        // A benchmark, not a test: a coarse poll keeps the watcher cheap.
        while counters.lines_written() < expected {
            std::thread::sleep(Duration::from_millis(1));
        }
        let wall = start.elapsed();
        let threads = thread_cpu();
        handle.stop();
        (wall, threads)
    });
    arbiter
        .run(|w| -> std::io::Result<()> {
            // Straight to fd 1 (std's stdout would cut the writes at the
            // last newline), as `cat` writes.
            let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
            copy_like_cat(std::fs::File::open(&sources[w.slot()])?, stdout)?;
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let (wall, threads) = watcher.join().unwrap();
    let split = ["main", "ufork-io-writer"]
        .map(|name| cpu_of(&threads, name) - cpu_of(&threads_start, name));
    // The workers' CPU counts too (they are reaped by now), as both cats' do.
    let cpu = cpu_seconds() + children_cpu_seconds() - cpu_start;
    let (good, torn) = verify(&path, |t| t.split_once("] ").map_or(t, |(_, b)| b));
    let _ = std::fs::remove_file(&path);
    Run {
        wall: wall.as_secs_f64(),
        cpu,
        lost: WORKERS * lines - good,
        torn,
        split: Some((split[0], split[1])),
    }
}

fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // cutime and cstime: fields 16 and 17 of stat(5), here 13 and 14.
    let ticks: f64 = fields[13].parse::<f64>().unwrap() + fields[14].parse::<f64>().unwrap();
    ticks / rustix::param::clock_ticks_per_second() as f64
}

fn run_cat(dir: &Path, sources: &[PathBuf], lines: usize) -> Run {
    let dst = dir.join("cat-dst");
    let files: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    let cpu_start = children_cpu_seconds();
    let start = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cat {} | cat > {}", files.join(" "), dst.display()))
        .status()
        .unwrap();
    let wall = start.elapsed();
    let cpu = children_cpu_seconds() - cpu_start;
    assert!(status.success());
    let (good, torn) = verify(&dst, |t| t);
    let _ = std::fs::remove_file(&dst);
    Run {
        wall: wall.as_secs_f64(),
        cpu,
        lost: WORKERS * lines - good,
        torn,
        split: None,
    }
}

/// The median of `runs` by wall time (the upper one of an even count).
fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    sorted[sorted.len() / 2]
}

/// The median of `values`, with their range.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

/// A contender's row. Its ratio to the floor is taken round by round (the
/// floor ran just before it) and the median of those is shown, with their
/// range: a round the machine spent on something else moves one ratio,
/// not the row.
fn row(name: String, runs: &[Run], floor: &[Run], total_mb: f64) -> Row {
    let m = median(runs);
    let (ratio, low, high) = spread(
        floor
            .iter()
            .zip(runs)
            .map(|(f, r)| f.wall / r.wall)
            .collect(),
    );
    let (cpu, _, _) = spread(runs.iter().map(|r| r.cpu).collect());
    Row {
        name,
        mb_s: format!("{:.0}", total_mb / m.wall),
        ratio: format!("{ratio:.2} ({low:.2}–{high:.2})"),
        lost: runs.iter().map(|r| r.lost).max().unwrap_or(0).to_string(),
        torn: runs.iter().map(|r| r.torn).max().unwrap_or(0).to_string(),
        cpu_per_mb: format!("{:.2}", cpu * 1000.0 / total_mb),
    }
}

/// Where a ufork-io row's CPU went (medians of the rounds).
fn split_row(runs: &[Run], total_mb: f64) -> Row {
    let per_mb = |f: &dyn Fn(&Run) -> f64| {
        let (median, _, _) = spread(runs.iter().map(f).collect());
        format!("{:.2}", median * 1000.0 / total_mb)
    };
    let parts = |r: &Run| r.split.unwrap_or_default();
    Row {
        name: "└ CPU of the arbiter's thread / the writer thread / the rest (workers)".into(),
        mb_s: "-".into(),
        ratio: "-".into(),
        lost: "-".into(),
        torn: "-".into(),
        cpu_per_mb: [
            per_mb(&|r| parts(r).0),
            per_mb(&|r| parts(r).1),
            per_mb(&|r| r.cpu - parts(r).0 - parts(r).1),
        ]
        .join(" / "),
    }
}

const PYTHON: &str = r#"
import os, sys, time, resource, threading
import ufork
mb, out = int(sys.argv[1]), sys.argv[2]
lines = mb * 1000000 // 80
expected = 4 * lines * 80
f = open(out, 'w', buffering=1 << 20)
got = [0]
done = threading.Event()
def printfunc(msg):
    f.write(msg + '\n')
    if ': ' in msg:
        got[0] += len(msg) - msg.index(': ') - 2 + 1
        if got[0] >= expected * 0.999:
            done.set()
def post_fork():
    wid = ufork.cur_worker_id()
    out = sys.stdout
    seq = 0
    while seq < lines:
        block = []
        while len(block) < 819 and seq < lines:
            head = '%d %012d ' % (wid, seq)
            block.append(head + 'x' * (79 - len(head)) + '\n')
            seq += 1
        out.write(''.join(block))
    out.flush()
arb = ufork.Arbiter(post_fork, size=4, printfunc=printfunc, max_no_ping_children=4)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.time()
arb.spawn_thread()
finished = done.wait(timeout=max(60, mb * 4))
t1 = time.time()
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
f.flush()
for w in list(arb.workers.values()):
    try:
        os.kill(w.pid, 9)
    except OSError:
        pass
sys.stdout = sys.__stdout__
print('%f %f %d' % (t1 - t0, cpu, finished), flush=True)
os._exit(0)
"#;

fn bench_python(dir: &Path, mb: usize, floor: Run) -> Row {
    let name = "Python uFork 20.11".to_string();
    let Ok(python) = std::env::var("UFORK_BENCH_PYTHON") else {
        return Row {
            name,
            mb_s: "skipped (UFORK_BENCH_PYTHON unset)".into(),
            ratio: "-".into(),
            lost: "-".into(),
            torn: "-".into(),
            cpu_per_mb: "-".into(),
        };
    };
    let lines = mb * 1_000_000 / LINE;
    let script = dir.join("bench.py");
    std::fs::write(&script, PYTHON).unwrap();
    let out = dir.join("python.log");
    let output = std::process::Command::new(python)
        .arg(&script)
        .arg(mb.to_string())
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 3 {
        return Row {
            name,
            mb_s: format!("failed: {}", String::from_utf8_lossy(&output.stderr).trim()),
            ratio: "-".into(),
            lost: "-".into(),
            torn: "-".into(),
            cpu_per_mb: "-".into(),
        };
    }
    let (wall, cpu) = (fields[0], fields[1]);
    // uFork prints `pid: <4 KiB read>` with the trailing newline stripped:
    // the first line of each read carries the prefix, the others none, and
    // reads cut lines apart.
    let (good, torn) = verify(&out, |t| t.split_once(": ").map_or(t, |(_, b)| b));
    let total_mb = (WORKERS * lines * LINE) as f64 / 1e6;
    let _ = std::fs::remove_file(&out);
    Row {
        name,
        mb_s: format!(
            "{:.0}{}",
            total_mb / wall,
            if fields[2] == 0.0 { " (timed out)" } else { "" }
        ),
        ratio: format!("{:.2}", floor.wall / wall),
        lost: (WORKERS * lines).saturating_sub(good).to_string(),
        torn: torn.to_string(),
        cpu_per_mb: format!("{:.2}", cpu * 1000.0 / total_mb),
    }
}

fn main() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mb = env("UFORK_BENCH_MB", 50);
    let rounds = env("UFORK_BENCH_ROUNDS", 5).max(1);
    let split = env("UFORK_BENCH_SPLIT", 0) != 0;
    let lines = mb * 1_000_000 / LINE;
    let total_mb = (WORKERS * lines * LINE) as f64 / 1e6;
    let dir: PathBuf = std::env::temp_dir().join(format!("ufork-io-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sources = make_sources(&dir, lines);
    // Sizes asked for, so that the rows do not depend on who runs the
    // bench: 64 KiB is the default without CAP_SYS_RESOURCE, 256 KiB with.
    let sizes: Vec<usize> = match std::env::var("UFORK_BENCH_PIPES") {
        Ok(list) => {
            list.split(',')
                .map(|kib| {
                    let kib: usize = kib.trim().parse().unwrap_or_else(|_| {
                        panic!("UFORK_BENCH_PIPES: {kib:?} is not a size in KiB")
                    });
                    kib << 10
                })
                .collect()
        }
        Err(_) => vec![64 << 10, 256 << 10, 1 << 20],
    };
    let mut cat = Vec::new();
    let mut ufork: Vec<Vec<Run>> = vec![Vec::new(); sizes.len()];
    for _ in 0..rounds {
        cat.push(run_cat(&dir, &sources, lines));
        for (runs, &size) in ufork.iter_mut().zip(&sizes) {
            runs.push(run_ufork_io(&dir, &sources, lines, size));
        }
    }
    let floor = median(&cat);
    let mut rows = vec![row(
        "cat 4 files, one pipe, cat > file (the floor)".into(),
        &cat,
        &cat,
        total_mb,
    )];
    for (runs, &size) in ufork.iter().zip(&sizes) {
        let name = match size >> 10 {
            64 => "ufork-io (64 KiB pipes, the default without CAP_SYS_RESOURCE)".into(),
            256 => "ufork-io (256 KiB pipes, the default with CAP_SYS_RESOURCE)".into(),
            kib => format!("ufork-io ({kib} KiB pipes)"),
        };
        rows.push(row(name, runs, &cat, total_mb));
        if split {
            rows.push(split_row(runs, total_mb));
        }
    }
    rows.push(bench_python(&dir, mb, floor));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{WORKERS} workers x {mb} MB of {LINE}-byte lines into a file ({} lines in all), \
         median of {rounds} rounds\n",
        WORKERS * lines
    );
    println!(
        "| contender | MB/s to the file | ÷ floor | lines lost | lines torn | CPU ms per MB |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name, r.mb_s, r.ratio, r.lost, r.torn, r.cpu_per_mb
        );
    }
}
