//! Throughput of the capture layer: 4 workers each write `UFORK_BENCH_MB`
//! (default 50) MB of 80-byte lines as fast as they can into a file sink.
//! Reports MB/s reaching the file, lines lost or torn (verified in the file),
//! and the arbiter process' CPU per MB; against `cat | cat` (one pipe, the
//! floor) and Python uFork when `UFORK_BENCH_PYTHON` names a python with
//! `ufork` installed.
//!
//! `cargo run --release -p ufork-io --example bench_io`

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ufork_core::Arbiter;
use ufork_io::{Capture, Sink};

const WORKERS: usize = 4;
const LINE: usize = 80;

fn line(slot: usize, seq: usize, out: &mut Vec<u8>) {
    let start = out.len();
    write!(out, "{slot} {seq:012} ").unwrap();
    out.resize(start + LINE - 1, b'x');
    out.push(b'\n');
}

fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

struct Row {
    name: String,
    mb_s: String,
    lost: String,
    torn: String,
    cpu_per_mb: String,
}

/// Per slot, counts lines that are whole and in sequence. Returns (good, torn).
fn verify(path: &Path, strip: impl Fn(&str) -> &str, lines: usize) -> (usize, usize) {
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
    let _ = lines;
    (good, torn)
}

fn bench_ufork_io(dir: &Path, mb: usize, pipe_size: Option<usize>) -> Row {
    let lines = mb * 1_000_000 / LINE;
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
    // Each worker's lines are made before the clock starts (the workers
    // inherit them), as `cat` reads a file made before its clock starts:
    // both rows time moving the bytes, not formatting them.
    let blocks: Vec<Vec<u8>> = (0..WORKERS)
        .map(|slot| {
            let mut all = Vec::with_capacity(lines * LINE);
            (0..lines).for_each(|seq| line(slot, seq, &mut all));
            all
        })
        .collect();
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let watcher = std::thread::spawn(move || {
        // A benchmark, not a test: a coarse poll keeps the watcher cheap.
        while counters.lines_written() < expected {
            std::thread::sleep(Duration::from_millis(2));
        }
        let took = (start.elapsed(), cpu_seconds() - cpu_start);
        handle.stop();
        took
    });
    arbiter
        .run(|w| -> std::io::Result<()> {
            let mut stdout = std::io::stdout();
            // Whole lines per write, about 64 KiB each, as before.
            for block in blocks[w.slot()].chunks((1 << 16) / LINE * LINE) {
                stdout.write_all(block)?;
            }
            w.wait_for_stop(None);
            Ok(())
        })
        .unwrap();
    let (wall, cpu) = watcher.join().unwrap();
    let (good, torn) = verify(&path, |t| t.split_once("] ").map_or(t, |(_, b)| b), lines);
    let total_mb = (WORKERS * lines * LINE) as f64 / 1e6;
    let _ = std::fs::remove_file(&path);
    Row {
        name: match pipe_size {
            Some(size) => format!("ufork-io ({} KiB pipes)", size / 1024),
            None => "ufork-io (default 64 KiB pipes)".into(),
        },
        mb_s: format!("{:.0}", total_mb / wall.as_secs_f64()),
        lost: (WORKERS * lines - good).to_string(),
        torn: torn.to_string(),
        cpu_per_mb: format!("{:.2}", cpu * 1000.0 / total_mb),
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

fn bench_cat(dir: &Path, mb: usize) -> Row {
    let lines = mb * 1_000_000 / LINE;
    let src = dir.join("cat-src");
    let dst = dir.join("cat-dst");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut buf = Vec::new();
        for slot in 0..WORKERS {
            for seq in 0..lines {
                buf.clear();
                line(slot, seq, &mut buf);
                f.write_all(&buf).unwrap();
            }
        }
    }
    let cpu_start = children_cpu_seconds();
    let start = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cat {} | cat > {}", src.display(), dst.display()))
        .status()
        .unwrap();
    let wall = start.elapsed();
    let cpu = children_cpu_seconds() - cpu_start;
    assert!(status.success());
    let total_mb = (WORKERS * lines * LINE) as f64 / 1e6;
    let (good, torn) = verify(&dst, |t| t, lines);
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    Row {
        name: "cat file, one pipe, cat > file (the floor)".into(),
        mb_s: format!("{:.0}", total_mb / wall.as_secs_f64()),
        lost: (WORKERS * lines - good).to_string(),
        torn: torn.to_string(),
        cpu_per_mb: format!("{:.2} (both cats)", cpu * 1000.0 / total_mb),
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

fn bench_python(dir: &Path, mb: usize) -> Row {
    let name = "Python uFork 20.11".to_string();
    let Ok(python) = std::env::var("UFORK_BENCH_PYTHON") else {
        return Row {
            name,
            mb_s: "skipped (UFORK_BENCH_PYTHON unset)".into(),
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
            lost: "-".into(),
            torn: "-".into(),
            cpu_per_mb: "-".into(),
        };
    }
    let (wall, cpu) = (fields[0], fields[1]);
    // uFork prints `pid: <4 KiB read>` with the trailing newline stripped:
    // the first line of each read carries the prefix, the others none, and
    // reads cut lines apart.
    let (good, torn) = verify(&out, |t| t.split_once(": ").map_or(t, |(_, b)| b), lines);
    let total_mb = (WORKERS * lines * LINE) as f64 / 1e6;
    let _ = std::fs::remove_file(&out);
    Row {
        name,
        mb_s: format!(
            "{:.0}{}",
            total_mb / wall,
            if fields[2] == 0.0 { " (timed out)" } else { "" }
        ),
        lost: (WORKERS * lines).saturating_sub(good).to_string(),
        torn: torn.to_string(),
        cpu_per_mb: format!("{:.2}", cpu * 1000.0 / total_mb),
    }
}

fn main() {
    let mb: usize = std::env::var("UFORK_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir: PathBuf = std::env::temp_dir().join(format!("ufork-io-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rows = vec![
        bench_ufork_io(&dir, mb, None),
        bench_ufork_io(&dir, mb, Some(1 << 20)),
        bench_cat(&dir, mb),
        bench_python(&dir, mb),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{WORKERS} workers x {mb} MB of {LINE}-byte lines into a file ({} lines in all)\n",
        WORKERS * (mb * 1_000_000 / LINE)
    );
    println!("| contender | MB/s to the file | lines lost | lines torn | CPU ms per MB |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.mb_s, r.lost, r.torn, r.cpu_per_mb
        );
    }
}
