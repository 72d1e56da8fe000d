//! `tail` row (only when asked for, as `cargo xtask bench tail` does): the
//! experiment behind the keep-alive p99 at c64 on a small machine. Hello
//! world, wrk -t2 -c64, the contenders below in turns for
//! `UFORK_BENCH_TAIL_ROUNDS` rounds (default 3), so that a machine busy with
//! something else slows each of them alike. Each row shows the medians of
//! req/s and p99, the p99 range, the server's CPU time and context switches
//! per request (every thread of every process of it), and how the
//! connections were split between its workers, and the burst: 64
//! connections opened one after another with a request sent on each at
//! once, as a wrk run starts, until every one is answered (measured once
//! the server holds none of wrk's connections; the client's own connecting
//! and writing, ~2 ms, is part of it).
//!
//! The contenders separate three suspects: the split of connections
//! between workers (the floor with a shared listener often gives one
//! worker nearly all of them; with `SO_REUSEPORT` the split is even), the
//! work done per request (the floor spending 0.25 µs or 1 µs more on each;
//! ufork-wsgi-like spends ~0.7 µs more of user CPU than the floor on a
//! hello request, parsing it and building the `http::Request` and the
//! answer), and
//! whether a connection is pinned to one thread (hyper on one runtime of
//! two threads, where an idle thread takes over a busy one's ready
//! connections, against hyper on two single-threaded runtimes). Two more
//! rows test the mechanism, each on the floor with 1 µs more per request:
//! one yields the CPU (`sched_yield`) after every wait that found 4 or more
//! connections ready, letting the co-located wrk run before the scheduler
//! tick would; the other reads its thread's CPU clock at most every 250 µs
//! once a wait's answers are written, much as ufork-wsgi-like's loop does,
//! which lets the kernel end its turn when the slice is used up (see the
//! serving loop's `turn` module). p50 is shown beside p99, since cutting the tail can cost
//! the median. wrk corrects its latency histogram for coordinated omission:
//! a response that took at least twice the mean interval between requests
//! on a connection (about 0.5 ms here) adds samples for the requests it held
//! up, one per interval. So a connection stalled for a few ms weighs in
//! wrk's percentiles as many slow requests, and p99 says how much of the
//! run connections spent stalled (a burst's first answers included) more
//! than how many requests were slow, and its mean is not bound by
//! 64 ÷ req/s.

use std::time::Duration;

use crate::load::{self, Measure};
use crate::procs;
use crate::{Ctx, Spec};

const CONNECTIONS: u32 = 64;

struct Contender {
    name: &'static str,
    spec: Spec,
    workers: usize,
    env: &'static [(&'static str, &'static str)],
}

const CONTENDERS: [Contender; 10] = [
    Contender {
        name: "ufork-wsgi-like -w 2",
        spec: Spec::Rust("ufork"),
        workers: 2,
        env: &[],
    },
    Contender {
        name: "ufork-wsgi-like -w 1",
        spec: Spec::Rust("ufork"),
        workers: 1,
        env: &[],
    },
    Contender {
        name: "floor -w 2",
        spec: Spec::Rust("floor"),
        workers: 2,
        env: &[],
    },
    Contender {
        name: "floor -w 2 reuse_port",
        spec: Spec::Rust("floor-reuseport"),
        workers: 2,
        env: &[],
    },
    Contender {
        name: "floor -w 2 reuse_port +0.25 µs/req",
        spec: Spec::Rust("floor-reuseport"),
        workers: 2,
        env: &[("UFORK_BENCH_SPIN_NS", "250")],
    },
    Contender {
        name: "floor -w 2 reuse_port +1 µs/req",
        spec: Spec::Rust("floor-reuseport"),
        workers: 2,
        env: &[("UFORK_BENCH_SPIN_NS", "1000")],
    },
    Contender {
        name: "floor rp +1 µs/req, sched_yield",
        spec: Spec::Rust("floor-reuseport"),
        workers: 2,
        env: &[("UFORK_BENCH_SPIN_NS", "1000"), ("UFORK_BENCH_YIELD", "4")],
    },
    Contender {
        name: "floor rp +1 µs/req, clock reads",
        spec: Spec::Rust("floor-reuseport"),
        workers: 2,
        env: &[("UFORK_BENCH_SPIN_NS", "1000"), ("UFORK_BENCH_CLOCK", "1")],
    },
    Contender {
        name: "hyper, 2 threads",
        spec: Spec::Rust("hyper"),
        workers: 2,
        env: &[],
    },
    Contender {
        name: "hyper, 2 pinned runtimes",
        spec: Spec::Rust("hyper-pinned"),
        workers: 2,
        env: &[],
    },
];

/// One round of one contender.
struct Round {
    m: Measure,
    burst_ms: f64,
    cpu_us: f64,
    switches: f64,
    split: String,
}

fn measure(ctx: &Ctx, c: &Contender) -> Result<Round, String> {
    let env: Vec<(&str, String)> = c.env.iter().map(|&(k, v)| (k, v.to_owned())).collect();
    let (peer, port) = ctx.start(&c.spec, c.workers, &env)?;
    ctx.warm_up(port, "/")?;
    let pids = procs::tree(peer.pid());
    let before: Vec<(u64, u64)> = pids.iter().map(|&p| procs::switches_and_cpu(p)).collect();
    let workers = procs::children(peer.pid());
    let idle: Vec<usize> = workers.iter().map(|&w| procs::sockets(w)).collect();
    // The processes holding the connections: the workers, or the server.
    let holders = if workers.is_empty() {
        vec![peer.pid()]
    } else {
        workers.clone()
    };
    let held: Vec<usize> = holders.iter().map(|&p| procs::sockets(p)).collect();
    let wrk = load::start(port, "/", CONNECTIONS, ctx.secs).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(ctx.secs) / 2);
    let split = if workers.len() > 1 {
        procs::split(&workers, &idle)
    } else {
        "-".into()
    };
    let m = load::finish(wrk).map_err(|e| e.to_string())?;
    // After the load, once the server has closed its connections (or 2 s
    // passed): they count neither in the split nor in ufork's balance.
    let settle = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < settle
        && holders
            .iter()
            .zip(&held)
            .any(|(&p, &n)| procs::sockets(p) > n)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let burst_ms = burst(port).map_err(|e| format!("burst: {e}"))?;
    let (mut switches, mut cpu_ns) = (0u64, 0u64);
    for (&p, &(s0, c0)) in pids.iter().zip(&before) {
        let (s1, c1) = procs::switches_and_cpu(p);
        switches += s1.saturating_sub(s0);
        cpu_ns += c1.saturating_sub(c0);
    }
    drop(peer);
    let requests = (m.rps * ctx.secs as f64).max(1.0);
    Ok(Round {
        m,
        burst_ms,
        cpu_us: cpu_ns as f64 / 1e3 / requests,
        switches: switches as f64 / requests,
        split,
    })
}

/// Opens [`CONNECTIONS`] connections one after another, sends a request on
/// each as soon as it is open (as `wrk` starts), and returns how long it took
/// until every one had its answer, in ms: a burst that waits on the
/// listener shows here.
fn burst(port: u16) -> std::io::Result<f64> {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        conns.push(conn);
    }
    let mut buf = [0u8; 4096];
    for conn in &mut conns {
        if conn.read(&mut buf)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(ctx: &Ctx) {
    let rounds: usize = std::env::var("UFORK_BENCH_TAIL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    println!(
        "\nkeep-alive tail: hello world, wrk -t2 -c{CONNECTIONS} -d{}s, {rounds} round(s) in turns, medians",
        ctx.secs
    );
    let mut results: Vec<Vec<Round>> = CONTENDERS.iter().map(|_| Vec::new()).collect();
    let mut failures: Vec<Option<String>> = CONTENDERS.iter().map(|_| None).collect();
    for _ in 0..rounds {
        for (i, c) in CONTENDERS.iter().enumerate() {
            match measure(ctx, c) {
                Ok(r) => results[i].push(r),
                Err(e) => failures[i] = Some(e),
            }
        }
    }
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>19} {:>12} {:>12} {:>9}  splits",
        "server", "req/s", "p50", "p99", "p99 range", "CPU µs/req", "switch/req", "burst"
    );
    for (i, c) in CONTENDERS.iter().enumerate() {
        let r = &results[i];
        if r.is_empty() {
            let why = failures[i].as_deref().unwrap_or("no round ran");
            println!("{:<34} skipped ({why})", c.name);
            continue;
        }
        let p99s: Vec<f64> = r.iter().map(|x| x.m.p99_ms).collect();
        let lo = p99s.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p99s.iter().copied().fold(0.0, f64::max);
        let splits: Vec<&str> = r.iter().map(|x| x.split.as_str()).collect();
        println!(
            "{:<34} {:>10.0} {:>7.2}ms {:>7.2}ms {:>19} {:>12.2} {:>12.3} {:>7.2}ms  {}",
            c.name,
            median(r.iter().map(|x| x.m.rps).collect()),
            median(r.iter().map(|x| x.m.p50_ms).collect()),
            median(p99s),
            format!("{lo:.2}–{hi:.2}ms"),
            median(r.iter().map(|x| x.cpu_us).collect()),
            median(r.iter().map(|x| x.switches).collect()),
            median(r.iter().map(|x| x.burst_ms).collect()),
            splits.join(" ")
        );
    }
}
