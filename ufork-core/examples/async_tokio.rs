//! axum on a tokio runtime in every worker: the pre-fork way to run async code.
//!
//! ```text
//! cargo run --release -p ufork-core --example async_tokio -- --bind 127.0.0.1:8000 --workers 2
//! ```
//!
//! The listeners are bound (or taken from systemd socket activation) in the
//! arbiter before the fork; each worker builds its own current-thread runtime
//! after the fork, heartbeats from a task on it, marks itself ready once it
//! serves, and on SIGTERM (a stop or a rolling restart) drains: it stops
//! accepting at once, finishes the requests in flight, answers a request
//! that arrives on a connection it holds for a drain window (with
//! `Connection: close`), then closes what is left and exits 0. Without the
//! window, a keep-alive client that sends its next request just as the
//! worker closes the idle connection gets no answer (wrk counted 279 read
//! errors over two rolling restarts at 64 connections).
//!
//! Flags: `--bind ADDR` (HOST:PORT or unix:PATH; repeatable; default
//! 127.0.0.1:8000), `--workers N` (default: one per CPU), `--timeout SECS`
//! (hang timeout, default 10), `--drain-window SECS` (default 1; it ends
//! early once every connection is closed).
//!
//! Routes: `/` says hello; `/work?us=N` burns N µs of CPU (at most 1 s);
//! `/until-stop` answers only once the worker is told to stop (a request in
//! flight across a graceful stop); `/block` blocks the runtime's thread, so
//! the heartbeat task stops and the arbiter kills the worker at the hang
//! timeout; `/listen-fds` shows the worker's `LISTEN_FDS` (unset: socket
//! activation's variables do not leak).

use std::error::Error;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use ufork_core::listen::{Address, Listeners, Socket};
use ufork_core::{Arbiter, StopNotifier, Vitals, Worker};

/// What the command line asked for.
#[derive(Debug)]
pub struct Args {
    /// Where to listen.
    pub binds: Vec<Address>,
    /// Workers to run.
    pub workers: usize,
    /// Kill a worker silent for this long.
    pub timeout: Duration,
    /// How long a stopping worker answers requests on the connections it
    /// holds.
    pub drain_window: Duration,
}

const USAGE: &str = "usage: async_tokio [--bind HOST:PORT|unix:PATH]... [--workers N] [--timeout SECS] [--drain-window SECS]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        binds: Vec::new(),
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        timeout: Duration::from_secs(10),
        drain_window: Duration::from_secs(1),
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bind" => parsed
                .binds
                .push(value()?.parse().map_err(|e| format!("--bind: {e}"))?),
            "--workers" => {
                parsed.workers = value()?
                    .parse()
                    .ok()
                    .filter(|&n| (1..=1024).contains(&n))
                    .ok_or("--workers: a count from 1 to 1024")?;
            }
            "--timeout" => {
                let secs: f64 = value()?
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && (0.01..=86_400.0).contains(s))
                    .ok_or("--timeout: seconds from 0.01 to 86400")?;
                parsed.timeout = Duration::from_secs_f64(secs);
            }
            "--drain-window" => {
                let secs: f64 = value()?
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && (0.0..=3_600.0).contains(s))
                    .ok_or("--drain-window: seconds from 0 to 3600")?;
                parsed.drain_window = Duration::from_secs_f64(secs);
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if parsed.binds.is_empty() {
        parsed
            .binds
            .push(Address::Tcp(([127, 0, 0, 1], 8000).into()));
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    // First thing, while the process has one thread: the sockets land at
    // fds 3.. and socket activation's variables can be cleared.
    let mut builder = Listeners::builder();
    for address in args.binds {
        builder = builder.address(address);
    }
    let listeners = match builder.build() {
        Ok(listeners) => listeners,
        Err(e) => return fail(&e),
    };
    for (name, address) in listeners.iter() {
        println!("listening on {address} ({name})");
    }
    let arbiter = Arbiter::builder()
        .workers(args.workers)
        .heartbeat_timeout(args.timeout)
        .ready_on_start(false)
        .on_exit(|record| eprintln!("exit: {record}"))
        .build();
    let beat = heartbeat_interval(args.timeout);
    let window = args.drain_window;
    let outcome =
        match arbiter.and_then(|a| a.run(|worker| serve(worker, &listeners, beat, window))) {
            Ok(outcome) => outcome,
            Err(e) => return fail(&e),
        };
    println!(
        "stopped by {:?}, graceful: {}",
        outcome.cause, outcome.graceful
    );
    if outcome.graceful && outcome.killed_at_timeout == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(error: &dyn Error) -> ExitCode {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("async_tokio: {text}");
    ExitCode::FAILURE
}

/// Four beats per hang timeout: a late beat or two is not a hang.
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(10))
}

/// What every request handler of one worker shares.
struct Shared {
    vitals: Vitals,
    slot: usize,
    stop: StopNotifier,
    in_flight: AtomicUsize,
    /// Set once the worker is told to stop: every answer from then on says
    /// `Connection: close`.
    stopping: AtomicBool,
    /// Connections accepted and not yet closed, on every listener.
    open: AtomicUsize,
    /// Told when the last open connection closes.
    all_closed: Notify,
}

type BoxError = Box<dyn Error + Send + Sync>;

/// The worker: one current-thread runtime, built here, after the fork.
///
/// A runtime made before the fork would be broken in every child: fork copies
/// only the calling thread, so its worker threads, blocking pool and timer
/// driver would be gone while its state still points at them.
pub fn serve(
    worker: &mut Worker,
    listeners: &Listeners,
    beat: Duration,
    drain_window: Duration,
) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        vitals: worker.vitals().clone(),
        slot: worker.slot(),
        stop: worker.stop_notifier()?,
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        open: AtomicUsize::new(0),
        all_closed: Notify::new(),
    });
    let sockets = listeners.for_worker()?;
    runtime.block_on(async move {
        // The heartbeat comes from a task on the same thread as the handlers:
        // it proves the scheduler turns. A handler that blocks the thread
        // stops it, and the arbiter kills the worker at the hang timeout.
        let vitals = shared.vitals.clone();
        tokio::spawn(async move {
            loop {
                vitals.heartbeat();
                tokio::time::sleep(beat).await;
            }
        });
        let app = Router::new()
            .route("/", get(hello))
            .route("/work", get(work))
            .route("/until-stop", get(until_stop))
            .route("/block", get(block))
            .route("/listen-fds", get(listen_fds))
            .layer(middleware::from_fn_with_state(Arc::clone(&shared), track))
            .with_state(Arc::clone(&shared));
        // From the stop on, every answer says `Connection: close`.
        let flag = Arc::clone(&shared);
        let stop = stopped(&shared.stop)?;
        tokio::spawn(async move {
            stop.await;
            flag.stopping.store(true, Ordering::SeqCst);
        });
        let mut servers = Vec::new();
        for listener in sockets {
            let shutdown = drained(&shared, drain_window)?;
            let server = match listener.into_socket() {
                Socket::Tcp(tcp) => {
                    let listener = Draining::new(tokio::net::TcpListener::from_std(tcp)?, &shared)?;
                    tokio::spawn(
                        axum::serve(listener, app.clone())
                            .with_graceful_shutdown(shutdown)
                            .into_future(),
                    )
                }
                Socket::Unix(unix) => {
                    let listener =
                        Draining::new(tokio::net::UnixListener::from_std(unix)?, &shared)?;
                    tokio::spawn(
                        axum::serve(listener, app.clone())
                            .with_graceful_shutdown(shutdown)
                            .into_future(),
                    )
                }
            };
            servers.push(server);
        }
        // Listening (connections queue from now on) and serving once this
        // task yields: ready.
        shared.vitals.ready();
        for server in servers {
            server.await??;
        }
        Ok(())
    })
}

/// Resolves when the worker is asked to stop: the stop notification in the
/// runtime's reactor, no `unsafe`.
fn stopped(stop: &StopNotifier) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let receiver = pipe::Receiver::from_owned_fd(stop.try_clone()?.into())?;
    Ok(async move {
        let _ = receiver.readable().await;
    })
}

/// The graceful shutdown of one listener's server (which closes its idle
/// connections and waits for the others): the drain window after the stop,
/// or sooner once no connection is open.
fn drained(
    shared: &Arc<Shared>,
    window: Duration,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let stop = stopped(&shared.stop)?;
    let shared = Arc::clone(shared);
    Ok(async move {
        stop.await;
        let none_open = async {
            loop {
                let closed = shared.all_closed.notified();
                if shared.open.load(Ordering::SeqCst) == 0 {
                    return;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(window, none_open).await;
    })
}

/// A listener that accepts until the stop, and counts the connections it
/// accepted that are still open. After the stop, what is still queued is
/// left to the other workers (a rolling restart) or to the arbiter's
/// close (a stop).
struct Draining<L> {
    inner: L,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
    shared: Arc<Shared>,
}

impl<L: Listener> Draining<L> {
    fn new(inner: L, shared: &Arc<Shared>) -> std::io::Result<Self> {
        Ok(Self {
            inner,
            stop: Box::pin(stopped(&shared.stop)?),
            stopped: false,
            shared: Arc::clone(shared),
        })
    }
}

impl<L: Listener> Listener for Draining<L> {
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let Self {
            inner,
            stop,
            stopped,
            shared,
        } = self;
        let mut accept = std::pin::pin!(inner.accept());
        let (io, addr) = std::future::poll_fn(|cx| {
            if !*stopped && stop.as_mut().poll(cx).is_ready() {
                *stopped = true;
            }
            if *stopped {
                // Never again: the server waits for its graceful shutdown.
                return Poll::Pending;
            }
            accept.as_mut().poll(cx)
        })
        .await;
        shared.open.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::clone(shared);
        (Counted { io, shared }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection, counted open until dropped.
struct Counted<Io> {
    io: Io,
    shared: Arc<Shared>,
}

impl<Io> Drop for Counted<Io> {
    fn drop(&mut self) {
        if self.shared.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.all_closed.notify_waiters();
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Counted<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Counted<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Maps requests onto the scoreboard: busy while at least one request is in
/// flight (busy-since is when the worker last went from none to one), idle
/// when none is, the latest request line as the activity, and one request
/// counted as each leaves the worker.
async fn track(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    shared
        .vitals
        .set_activity(&format!("{} {}", request.method(), request.uri()));
    if shared.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
        shared.vitals.busy();
    }
    let _leaving = Leaving(Arc::clone(&shared));
    let mut response = next.run(request).await;
    if shared.stopping.load(Ordering::SeqCst) {
        // The client learns the connection ends here, and reconnects
        // (to another worker) for its next request instead of racing the
        // close.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Counts a request out even if its future is dropped (the client left).
struct Leaving(Arc<Shared>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.vitals.count_request();
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.vitals.idle();
        }
    }
}

async fn hello(State(shared): State<Arc<Shared>>) -> String {
    format!(
        "hello from worker {} (pid {})\n",
        shared.slot,
        std::process::id()
    )
}

async fn work(request: Request) -> Response {
    let micros = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("us=")))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n <= 1_000_000);
    let Some(micros) = micros else {
        return (
            StatusCode::BAD_REQUEST,
            "want ?us=N with N at most 1000000\n",
        )
            .into_response();
    };
    // CPU work on the runtime's thread, as a handler computing an answer does.
    let until = Instant::now() + Duration::from_micros(micros);
    let mut spins = 0u64;
    while Instant::now() < until {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
    format!("worked {micros} us\n").into_response()
}

async fn until_stop(State(shared): State<Arc<Shared>>) -> Result<String, StatusCode> {
    println!("in flight until the stop: pid {}", std::process::id());
    let stop = stopped(&shared.stop).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    stop.await;
    // A little more work after the stop, as a real request would have.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(format!(
        "finished after the stop (pid {})\n",
        std::process::id()
    ))
}

async fn block() -> &'static str {
    println!("blocking the runtime: pid {}", std::process::id());
    // A blocking call on the runtime's only thread: nothing else on it runs,
    // the heartbeat task included.
    std::thread::sleep(Duration::from_secs(24 * 3600));
    "unreachable in practice\n"
}

async fn listen_fds() -> String {
    match std::env::var("LISTEN_FDS") {
        Ok(value) => format!("LISTEN_FDS={value}\n"),
        Err(_) => "LISTEN_FDS unset\n".to_owned(),
    }
}
