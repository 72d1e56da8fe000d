//! The Rust contenders, each started as `bench_http --serve KIND WORKERS`:
//! it binds a port of its choosing, prints it on stdout and serves until
//! SIGTERM. Every contender answers the same routes with the same work:
//!
//! - `/`: `Hello, world!`;
//! - `/cpu`: SHA-256 of a 16 KiB block, `UFORK_BENCH_CPU_ROUNDS` times
//!   (the bench picks the rounds for ~200 µs), the last digest in hex;
//! - `/mem` (ufork only, with `UFORK_BENCH_MEM_MB`): reads 64 of the 1 KiB
//!   chunks built before the fork, the next 64 on every request;
//! - `/stream` and `/file/NAME` (ufork only): 1 GiB in 64 KiB chunks, and a
//!   file of `UFORK_BENCH_FILES`.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use ufork_wsgi_like::{Body, ResponseBody};

use crate::BoxError;

pub const HELLO: &str = "Hello, world!\n";
const BLOCK: [u8; 16 * 1024] = [b'x'; 16 * 1024];
/// Chunks per request of the memory route.
pub const MEM_STRIDE: usize = 64;
pub const STREAM_CHUNK: usize = 64 * 1024;
pub const STREAM_CHUNKS: usize = 16 * 1024;

fn env_usize(name: &str) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The CPU-bound work: `rounds` SHA-256 digests of a 16 KiB block.
pub fn cpu_work(rounds: usize) -> String {
    let mut digest = [0u8; 32];
    for _ in 0..rounds {
        digest = Sha256::digest(std::hint::black_box(&BLOCK[..])).into();
    }
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.push('\n');
    hex
}

fn cpu() -> String {
    static ROUNDS: OnceLock<usize> = OnceLock::new();
    cpu_work(*ROUNDS.get_or_init(|| env_usize("UFORK_BENCH_CPU_ROUNDS").max(1)))
}

static DATA: OnceLock<Vec<Box<[u8]>>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Builds `mb` MiB of 1 KiB chunks (before the fork, like a loaded model).
fn build_data(mb: usize) {
    let data = (0..mb * 1024).map(|i| vec![i as u8; 1024].into_boxed_slice());
    let _ = DATA.set(data.collect());
}

fn mem() -> String {
    let Some(data) = DATA.get().filter(|d| !d.is_empty()) else {
        return HELLO.into();
    };
    let start = NEXT.fetch_add(MEM_STRIDE, Ordering::Relaxed) % data.len();
    let sum: u64 = data[start..]
        .iter()
        .take(MEM_STRIDE)
        .map(|c| u64::from(c[0]))
        .sum();
    format!("{sum}\n")
}

pub fn serve(kind: &str, workers: usize) -> Result<(), BoxError> {
    match kind {
        "ufork" => serve_ufork(workers, false),
        "ufork-reuseport" => serve_ufork(workers, true),
        "floor" => floor::serve(workers),
        "floor-reuseport" => floor::serve_reuse_port(workers),
        "hyper-pinned" => serve_hyper_pinned(workers),
        "hyper" => serve_hyper(workers),
        "axum" => serve_axum(workers),
        _ => Err(format!("unknown server {kind}").into()),
    }
}

fn announce(port: u16) -> Result<(), BoxError> {
    println!("{port}");
    std::io::stdout().flush()?;
    Ok(())
}

fn text(body: impl Into<ResponseBody>) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(body.into());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

fn ufork_app(request: http::Request<Body>) -> http::Response<ResponseBody> {
    let path = request.uri().path();
    match path {
        "/cpu" => text(cpu()),
        "/mem" => text(mem()),
        "/stream" => {
            let chunk: &'static [u8] = &[b'x'; STREAM_CHUNK];
            text(ResponseBody::stream(
                std::iter::repeat_n(chunk, STREAM_CHUNKS).map(<[u8]>::to_vec),
            ))
        }
        _ if path.starts_with("/file/") => {
            let dir = std::env::var_os("UFORK_BENCH_FILES").unwrap_or_default();
            let name = &path["/file/".len()..];
            match std::fs::File::open(std::path::Path::new(&dir).join(name))
                .and_then(ResponseBody::file)
            {
                Ok(body) => http::Response::new(body),
                Err(_) => {
                    let mut response = text(HELLO);
                    *response.status_mut() = http::StatusCode::NOT_FOUND;
                    response
                }
            }
        }
        _ => ufork_wsgi_like::hello(request),
    }
}

/// Our server, as the bench runs it; with `reuse_port` each worker binds
/// its own socket (SO_REUSEPORT) and the kernel spreads the connections.
fn serve_ufork(workers: usize, reuse_port: bool) -> Result<(), BoxError> {
    let mb = env_usize("UFORK_BENCH_MEM_MB");
    if mb > 0 {
        build_data(mb);
    }
    // SO_REUSEPORT needs one port for every worker's socket: not port 0.
    let port = if reuse_port {
        crate::procs::free_port()?
    } else {
        0
    };
    let server = ufork_wsgi_like::Server::builder()
        .bind(format!("127.0.0.1:{port}"))
        .reuse_port(reuse_port)
        .workers(workers)
        .build(ufork_app)?;
    announce(server.local_addrs()[0].port())?;
    server.run()?;
    Ok(())
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}

/// The hyper contenders' app.
async fn hyper_app(
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>, std::convert::Infallible> {
    use hyper::body::Bytes;
    let body = match request.uri().path() {
        "/cpu" => Bytes::from(cpu()),
        _ => Bytes::from_static(HELLO.as_bytes()),
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(response)
}

/// Serves one accepted connection with hyper's HTTP/1 server.
async fn hyper_connection(stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper::service::service_fn(hyper_app),
        )
        .await;
}

/// hyper 1.x on a tokio runtime with `threads` worker threads (any thread
/// serves any connection: an idle one steals a busy one's work).
fn serve_hyper(threads: usize) -> Result<(), BoxError> {
    runtime(threads)?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        announce(listener.local_addr()?.port())?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(hyper_connection(stream));
        }
    })
}

/// hyper on `threads` single-threaded tokio runtimes, each accepting from
/// one shared listener: a connection stays on the thread that accepted it,
/// as in a pre-fork server (the `tail` row's control for work stealing).
fn serve_hyper_pinned(threads: usize) -> Result<(), BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    announce(listener.local_addr()?.port())?;
    let listeners = (0..threads)
        .map(|_| listener.try_clone())
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::scope(|scope| {
        let handles: Vec<_> = listeners
            .into_iter()
            .map(|listener| {
                scope.spawn(move || -> Result<(), String> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    runtime.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)
                            .map_err(|e| e.to_string())?;
                        let local = tokio::task::LocalSet::new();
                        local
                            .run_until(async move {
                                loop {
                                    let (stream, _) =
                                        listener.accept().await.map_err(|e| e.to_string())?;
                                    tokio::task::spawn_local(hyper_connection(stream));
                                }
                            })
                            .await
                    })
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(result) => result?,
                Err(_) => return Err("a serving thread panicked".into()),
            }
        }
        Ok(())
    })
}

/// axum 0.8 on a tokio runtime with `threads` worker threads.
fn serve_axum(threads: usize) -> Result<(), BoxError> {
    use axum::routing::get;

    runtime(threads)?.block_on(async {
        let app = axum::Router::new()
            .route("/", get(|| async { HELLO }))
            .route("/cpu", get(|| async { cpu() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        announce(listener.local_addr()?.port())?;
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// The floor: a hand-written pre-fork keep-alive loop answering every request
/// head with a fixed response, no parsing beyond finding the blank line.
mod floor {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use rustix::event::epoll;

    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, world!\n";

    pub fn serve(workers: usize) -> Result<(), crate::BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        super::announce(listener.local_addr()?.port())?;
        ufork_core::Arbiter::builder()
            .workers(workers)
            .build()?
            .run(|worker| -> std::io::Result<()> { serve_worker(&listener, worker, spin()) })?;
        Ok(())
    }

    /// The floor with a `SO_REUSEPORT` socket per worker: the kernel spreads
    /// the connections evenly by hash, where a shared listener with
    /// `EPOLLEXCLUSIVE` often gives most of them to one worker.
    pub fn serve_reuse_port(workers: usize) -> Result<(), crate::BoxError> {
        let port = crate::procs::free_port()?;
        super::announce(port)?;
        ufork_core::Arbiter::builder()
            .workers(workers)
            .build()?
            .run(|worker| -> std::io::Result<()> {
                use rustix::net::{AddressFamily, SocketType, bind, listen, socket, sockopt};
                let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
                sockopt::set_socket_reuseport(&fd, true)?;
                bind(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
                listen(&fd, 1024)?;
                let listener = TcpListener::from(fd);
                listener.set_nonblocking(true)?;
                serve_worker(&listener, worker, spin())
            })?;
        Ok(())
    }

    /// `UFORK_BENCH_SPIN_NS`: CPU time to spend on every request before
    /// answering it (default none), to see how the tail grows with work.
    fn spin() -> Duration {
        Duration::from_nanos(super::env_usize("UFORK_BENCH_SPIN_NS") as u64)
    }

    /// `UFORK_BENCH_YIELD`: give the CPU away (`sched_yield`) after every
    /// wait that returned this many events or more (default never), to see
    /// what the tail does when a busy worker lets a co-located client run.
    fn yield_after() -> Option<usize> {
        Some(super::env_usize("UFORK_BENCH_YIELD")).filter(|&n| n > 0)
    }

    /// `UFORK_BENCH_CLOCK=1`: read the thread's CPU clock at most every
    /// 250 µs, once the answers of a wait that found work are written, much
    /// as ufork-wsgi-like's serving loop does (`serve/turn.rs`, which also
    /// skips the read while its waits sleep), to show what that does to
    /// the tail.
    fn reads_clock() -> bool {
        super::env_usize("UFORK_BENCH_CLOCK") > 0
    }

    fn serve_worker(
        listener: &TcpListener,
        worker: &ufork_core::Worker,
        spin: Duration,
    ) -> std::io::Result<()> {
        let yield_after = yield_after();
        let reads_clock = reads_clock();
        let mut clock_read = Instant::now();
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let flags = epoll::EventFlags::IN;
        epoll::add(
            &ep,
            listener.as_fd(),
            epoll::EventData::new_u64(u64::MAX),
            flags | epoll::EventFlags::EXCLUSIVE,
        )?;
        epoll::add(
            &ep,
            worker.stop_fd(),
            epoll::EventData::new_u64(u64::MAX - 1),
            flags,
        )?;
        let mut conns: Vec<Option<TcpStream>> = Vec::new();
        let mut events = Vec::with_capacity(256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(64 * 1024);
        loop {
            events.clear();
            epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None)?;
            if yield_after.is_some_and(|n| events.len() >= n) {
                std::thread::yield_now();
            }
            for event in &events {
                match event.data.u64() {
                    u64::MAX => {
                        if let Ok((stream, _)) = listener.accept() {
                            stream.set_nonblocking(true)?;
                            stream.set_nodelay(true)?;
                            let idx = conns.iter().position(Option::is_none).unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            epoll::add(&ep, &stream, epoll::EventData::new_u64(idx as u64), flags)?;
                            conns[idx] = Some(stream);
                        }
                    }
                    t if t == u64::MAX - 1 => return Ok(()),
                    idx => {
                        let idx = idx as usize;
                        let Some(stream) = conns[idx].as_mut() else {
                            continue;
                        };
                        let n = match stream.read(&mut buf) {
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(_) => 0,
                        };
                        let requests = buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                        if !spin.is_zero() {
                            let started = Instant::now();
                            let work = spin.saturating_mul(requests as u32);
                            while started.elapsed() < work {
                                std::hint::spin_loop();
                            }
                        }
                        out.clear();
                        for _ in 0..requests {
                            out.extend_from_slice(RESPONSE);
                        }
                        if n == 0 || stream.write_all(&out).is_err() {
                            let _ = epoll::delete(&ep, &*stream);
                            conns[idx] = None;
                        }
                    }
                }
            }
            // Once the answers are written, as ufork-wsgi-like's loop does
            // (without its check that the waits did not sleep).
            if reads_clock
                && !events.is_empty()
                && clock_read.elapsed() >= Duration::from_micros(250)
            {
                let _ = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
                clock_read = Instant::now();
            }
        }
    }
}
