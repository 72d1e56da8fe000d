//! The server: [`Builder`], [`Server`] (pre-forked), [`LocalServer`]
//! (threads in this process) and the one-call [`serve`].

use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
use ufork_core::{Arbiter, Context, ExitRecord, Handle, Layer, Outcome, Worker};

use crate::access::Writer;
use crate::serve::balance::Table;
use crate::serve::{self, Config, Listener, WorkerShared};
use crate::{AccessFormat, AccessLog, AccessSink, App, Error, Result, WorkerContext};

/// Default heartbeat timeout: a worker silent this long is killed and replaced.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sizes and timeouts that bound what one client can make a worker do.
///
/// Every field has a default (see [`Limits::default`]); change fields on a
/// default value or use the [`Builder`] methods of the same names.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest request line (method, target and version, without the CRLF):
    /// 8 KiB, the 8000 octets RFC 9112 §3 asks every server to take. Over
    /// it: 414 URI Too Long. A request line also counts towards
    /// [`max_header_bytes`](Self::max_header_bytes).
    pub max_request_line_bytes: usize,
    /// Largest request head (request line and headers), and largest trailer
    /// section of a chunked request body: 64 KiB. Over it: 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request: 100. Over it: 431.
    pub max_headers: usize,
    /// Largest request body: 10 MiB. Over it: 413.
    pub max_body_bytes: u64,
    /// Most bytes of a body the app left unread that are read and dropped to
    /// keep the connection alive (64 KiB), whether they had arrived when the
    /// answer went out or arrive after it (the connection then waits for
    /// them like an idle one, no thread held); a longer body closes the
    /// connection.
    pub max_drain_bytes: u64,
    /// Time a client has to send a complete request head, from its first
    /// byte (from the connection for the first request): 10 s. Then: 408.
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is kept open: 5 s. Zero: no
    /// keep-alive, every answer says `Connection: close` (gunicorn's
    /// `keepalive = 0`).
    pub keep_alive_timeout: Duration,
    /// Longest wait for more of a request body: 30 s. Then: 408. In
    /// pre-forked workers, at most half the heartbeat timeout (see
    /// [`Builder::heartbeat_timeout`]).
    pub read_timeout: Duration,
    /// Longest wait for the client to take more of a response, from the
    /// last bytes it took (a slow client is not cut off while it keeps
    /// reading): 30 s. Then the connection is reset. The writer tries again
    /// every quarter of this while it waits, so bytes taken are noticed
    /// within a quarter of it, even when the kernel would not yet call the
    /// socket writable. In pre-forked workers, at most half the heartbeat
    /// timeout (see [`Builder::heartbeat_timeout`]).
    pub write_timeout: Duration,
    /// How long a stopping worker (a graceful stop, a rolling restart,
    /// `max_requests` recycling) keeps an idle keep-alive connection open
    /// for a request that may already be on its way: 1 s. A request that
    /// arrives in it is answered with `Connection: close`; a connection
    /// with no request in it is closed. At most the keep-alive timeout.
    pub drain_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line_bytes: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            max_drain_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            drain_window: Duration::from_secs(1),
        }
    }
}

/// Builds a [`Server`]; see [`Server::builder`]. Every setting has a default.
pub struct Builder {
    binds: Vec<Result<SocketAddr>>,
    listeners: Vec<Listener>,
    threads: usize,
    limits: Limits,
    access_log: Option<AccessLog>,
    reuse_port: bool,
    backlog: i32,
    max_requests: Option<(u64, u64)>,
    heartbeat_timeout: Option<Duration>,
    core: ufork_core::Builder,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("listeners", &self.listeners)
            .field("threads", &self.threads)
            .field("limits", &self.limits)
            .field("access_log", &self.access_log)
            .field("reuse_port", &self.reuse_port)
            .field("max_requests", &self.max_requests)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl Builder {
    fn new() -> Self {
        Self {
            binds: Vec::new(),
            listeners: Vec::new(),
            threads: 1,
            limits: Limits::default(),
            access_log: None,
            reuse_port: false,
            backlog: 1024,
            max_requests: None,
            heartbeat_timeout: Some(DEFAULT_HEARTBEAT_TIMEOUT),
            // A worker is ready once every serving thread waits on the
            // listeners (with `reuse_port` it binds its own socket first).
            core: Arbiter::builder()
                .heartbeat_timeout(DEFAULT_HEARTBEAT_TIMEOUT)
                .ready_on_start(false),
        }
    }

    /// Listens on `addr` (its first resolved address); may be called more
    /// than once. Binding happens in [`build`](Self::build), in the arbiter,
    /// before any fork.
    pub fn bind(mut self, addr: impl ToSocketAddrs + fmt::Display) -> Self {
        let resolved = addr
            .to_socket_addrs()
            .and_then(|mut addrs| {
                addrs.next().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")
                })
            })
            .map_err(|source| Error::Resolve {
                addr: addr.to_string(),
                source,
            });
        self.binds.push(resolved);
        self
    }

    /// Serves connections from a listener bound elsewhere (by a supervisor or
    /// the CLI); every worker inherits it. May be called more than once.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listeners.push(Listener::Tcp(listener));
        self
    }

    /// Serves connections from a unix-domain stream socket bound elsewhere
    /// (its file's mode and removal are up to the caller); every worker
    /// inherits it. The app finds its path as a [`UnixSocketPath`](crate::UnixSocketPath)
    /// in each request's extensions (no [`PeerAddr`](crate::PeerAddr)); the
    /// access log names the client `unix`. May be called more than once.
    pub fn unix_listener(mut self, listener: UnixListener) -> Self {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Arc::<Path>::from));
        self.listeners.push(Listener::Unix(listener, path));
        self
    }

    /// Worker processes (default 1).
    pub fn workers(mut self, workers: usize) -> Self {
        self.core = self.core.workers(workers);
        self
    }

    /// Serving threads per worker, each with its own event loop over its own
    /// connections (default 1). A thread stuck on one request is not
    /// covered for by the others' heartbeats: once it has been busy with it
    /// for a tenth of the [heartbeat timeout](Self::heartbeat_timeout)
    /// without progress of its own, the others stop beating, so the worker
    /// is killed at the timeout as with one thread (gunicorn's threaded
    /// workers keep such a worker alive).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// All size and time limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// See [`Limits::max_request_line_bytes`].
    pub fn max_request_line_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_request_line_bytes = bytes;
        self
    }

    /// See [`Limits::max_header_bytes`].
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_header_bytes = bytes;
        self
    }

    /// See [`Limits::max_headers`].
    pub fn max_headers(mut self, headers: usize) -> Self {
        self.limits.max_headers = headers;
        self
    }

    /// See [`Limits::max_body_bytes`].
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.limits.max_body_bytes = bytes;
        self
    }

    /// See [`Limits::header_timeout`].
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_timeout = timeout;
        self
    }

    /// See [`Limits::keep_alive_timeout`].
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.limits.keep_alive_timeout = timeout;
        self
    }

    /// See [`Limits::read_timeout`].
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.limits.read_timeout = timeout;
        self
    }

    /// See [`Limits::write_timeout`].
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.limits.write_timeout = timeout;
        self
    }

    /// See [`Limits::drain_window`].
    pub fn drain_window(mut self, window: Duration) -> Self {
        self.limits.drain_window = window;
        self
    }

    /// Logs one line per request through `log` at info level, target
    /// `ufork_wsgi_like::access`: client, request line, status, body bytes,
    /// duration ([`AccessFormat::Brief`], for a logger that adds the time;
    /// default off). See [`access_log_to`](Self::access_log_to) for the
    /// standard formats and a sink of its own.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on.then_some(AccessLog {
            format: AccessFormat::Brief,
            sink: AccessSink::Log,
        });
        self
    }

    /// Logs one line per answered request (rejections of bad input
    /// included, with their request line once it was read) in `log.format`
    /// to `log.sink`: Common, Combined or JSON lines, timestamped, straight
    /// to standard output or a file the workers append to, apart from any
    /// logger (default off).
    pub fn access_log_to(mut self, log: AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// Each worker binds its own socket with `SO_REUSEPORT` and the kernel
    /// spreads connections between them (default off: one socket bound by
    /// the arbiter, inherited by every worker). Applies to [`bind`](Self::bind)
    /// addresses, not to given listeners. Connections queued on a worker's
    /// socket when it exits are lost.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// The listen backlog of bound sockets (default 1024).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Recycle a worker after it served `max` requests plus a random
    /// `0..=jitter` (so workers do not all restart at once): it stops
    /// accepting, finishes its connections, exits, and the arbiter replaces
    /// it at once: a planned exit ([`ExitReason::Recycled`](ufork_core::ExitReason::Recycled)),
    /// never counted as a restart or a crash (default: never). Huge values
    /// mean never.
    pub fn max_requests(mut self, max: u64, jitter: u64) -> Self {
        self.max_requests = (max > 0).then_some((max, jitter));
        self
    }

    /// Kill and replace a worker that stops heartbeating for this long
    /// (default [`DEFAULT_HEARTBEAT_TIMEOUT`]; `None` turns monitoring off).
    /// Workers heartbeat per request and while idle, every third of this (an
    /// idle worker wakes for nothing else; with `None` it sleeps until a
    /// connection or a deadline wakes it), and on every bit of progress
    /// while reading a request body or writing a response: a long download
    /// keeps its worker alive as long as the client takes bytes. An app that
    /// runs longer than this on one request without reading its body is
    /// killed (its request line named in the arbiter's log) unless it beats
    /// through the [`WorkerContext`](crate::WorkerContext) in the request's
    /// extensions; with [several threads](Self::threads), within a tenth
    /// more.
    ///
    /// A thread waiting for a stalled client heartbeats no more than it
    /// serves others, so the [read](Limits::read_timeout) and
    /// [write](Limits::write_timeout) timeouts are capped at half of this:
    /// the stalled client is dropped, not the worker.
    pub fn heartbeat_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        self.heartbeat_timeout = timeout;
        self.core = self.core.heartbeat_timeout(timeout);
        self
    }

    /// How long a stopping worker may take to finish its requests before it
    /// is killed (ufork-core's default, 30 s).
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.core = self.core.graceful_timeout(timeout);
        self
    }

    /// Adds a ufork-core [`Layer`] to the arbiter.
    pub fn layer(mut self, layer: impl Layer + 'static) -> Self {
        self.core = self.core.layer(layer);
        self
    }

    /// Configures the ufork-core arbiter directly: `configure` gets the
    /// builder as set so far and returns it (or a replacement). Settings made
    /// here and by this builder's own methods apply in call order. If the
    /// arbiter's heartbeat timeout is set here, set it with
    /// [`heartbeat_timeout`](Self::heartbeat_timeout) too: the idle heartbeat
    /// interval is derived from that one.
    pub fn arbiter(
        mut self,
        configure: impl FnOnce(ufork_core::Builder) -> ufork_core::Builder,
    ) -> Self {
        self.core = configure(self.core);
        self
    }

    fn config(&self) -> Result<Config> {
        let l = &self.limits;
        let zero = |setting: &'static str| Error::Config {
            setting,
            reason: "must be more than zero".into(),
        };
        if self.threads == 0 {
            return Err(zero("threads"));
        }
        if l.max_request_line_bytes == 0 {
            return Err(zero("max_request_line_bytes"));
        }
        if l.max_header_bytes == 0 {
            return Err(zero("max_header_bytes"));
        }
        if l.max_headers == 0 {
            return Err(zero("max_headers"));
        }
        for (name, d) in [
            ("header_timeout", l.header_timeout),
            ("read_timeout", l.read_timeout),
            ("write_timeout", l.write_timeout),
        ] {
            if d.is_zero() {
                return Err(zero(name));
            }
        }
        let tick = idle_tick(self.heartbeat_timeout);
        Ok(Config {
            limits: self.limits.clone(),
            access_log: None,
            tick,
            threads: self.threads,
            heartbeat_timeout: self.heartbeat_timeout,
        })
    }

    /// Binds the listening sockets (in this process, before any fork) and
    /// builds the arbiter.
    ///
    /// # Errors
    ///
    /// [`Error::NoListener`] with nothing to listen on, [`Error::Config`] for
    /// a zero limit or thread count, [`Error::Resolve`], [`Error::Socket`],
    /// [`Error::SocketOption`], [`Error::Bind`] or [`Error::Listen`] from the
    /// sockets, [`Error::AccessLog`] for an access log file that cannot be
    /// opened, [`Error::Build`] from ufork-core.
    pub fn build(self, app: impl App) -> Result<Server> {
        let mut config = self.config()?;
        if let Some(log) = &self.access_log {
            let writer = Writer::open(&log.sink).map_err(|source| Error::AccessLog {
                path: match &log.sink {
                    AccessSink::File(path) => path.clone(),
                    _ => "-".into(),
                },
                source,
            })?;
            config.access_log = Some((log.format, writer));
        }
        let config = Arc::new(config);
        if self.binds.is_empty() && self.listeners.is_empty() {
            return Err(Error::NoListener);
        }
        let mut listeners = self.listeners;
        for listener in &listeners {
            let nonblocking = match listener {
                Listener::Tcp(l) => l.set_nonblocking(true),
                Listener::Unix(l, _) => l.set_nonblocking(true),
            };
            nonblocking.map_err(Error::LocalAddr)?;
        }
        let mut reserved = Vec::new();
        let mut reuse_addrs = Vec::new();
        for addr in self.binds {
            let addr = addr?;
            if self.reuse_port {
                // Hold the address (and learn the port for port 0); each
                // worker binds and listens on its own socket.
                let socket = bind(addr, true, None)?;
                let local = TcpListener::from(socket);
                reuse_addrs.push(local.local_addr().map_err(Error::LocalAddr)?);
                reserved.push(OwnedFd::from(local));
            } else {
                let socket = bind(addr, false, Some(self.backlog))?;
                listeners.push(Listener::Tcp(TcpListener::from(socket)));
            }
        }
        let mut addrs = Vec::new();
        for listener in &listeners {
            if let Listener::Tcp(l) = listener {
                addrs.push(l.local_addr().map_err(Error::LocalAddr)?);
            }
        }
        addrs.extend(&reuse_addrs);
        // Connections on a shared listener are balanced by counts every
        // thread keeps in a table made here, before the fork. Sockets of a
        // worker's own (`reuse_port`) are its alone: nothing to balance.
        let table = if reuse_addrs.is_empty() {
            balance_table()
        } else {
            None
        };
        let core = match &table {
            Some(table) => self.core.layer(ClearCells {
                table: Arc::clone(table),
                threads: config.threads,
            }),
            None => self.core,
        };
        let arbiter = core.build().map_err(Error::Build)?;
        Ok(Server {
            arbiter,
            shared: Arc::new(Shared {
                app: Arc::new(app),
                config,
                listeners,
                reuse_addrs,
                _reserved: reserved,
                backlog: self.backlog,
                max_requests: self.max_requests,
                addrs,
                table,
            }),
        })
    }
}

/// Creates a TCP socket bound to `addr`, listening if `backlog` is given.
/// How often an idle serving thread wakes to heartbeat: three times per
/// heartbeat timeout (so one late wake-up on a loaded machine is not taken
/// for a hang), and never when no heartbeat timeout is watched. Events and
/// connection deadlines wake it in between; every wake-up is a heartbeat.
fn idle_tick(heartbeat_timeout: Option<Duration>) -> Option<Duration> {
    heartbeat_timeout.map(|t| (t / 3).max(Duration::from_millis(1)))
}

fn bind(addr: SocketAddr, reuse_port: bool, backlog: Option<i32>) -> Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None).map_err(|e| {
        Error::Socket {
            addr,
            source: e.into(),
        }
    })?;
    let option = |option: &'static str| {
        move |e: rustix::io::Errno| Error::SocketOption {
            option,
            addr,
            source: e.into(),
        }
    };
    sockopt::set_socket_reuseaddr(&fd, true).map_err(option("SO_REUSEADDR"))?;
    if reuse_port {
        sockopt::set_socket_reuseport(&fd, true).map_err(option("SO_REUSEPORT"))?;
    }
    rustix::net::bind(&fd, &addr).map_err(|e| Error::Bind {
        addr,
        source: e.into(),
    })?;
    if let Some(backlog) = backlog {
        rustix::net::listen(&fd, backlog).map_err(|e| Error::Listen {
            addr,
            source: e.into(),
        })?;
    }
    Ok(fd)
}

/// The shared connection counts, if the kernel gives a memfd for them
/// (without one, accepting works as before, unbalanced).
fn balance_table() -> Option<Arc<Table>> {
    match Table::new() {
        Ok(table) => Some(Arc::new(table)),
        Err(e) => {
            log::warn!(
                target: "ufork_wsgi_like",
                "cannot create the connection-count table ({e}); connections are not balanced across workers"
            );
            None
        }
    }
}

/// Clears an exited worker's cells in the connection-count table, so the
/// others do not measure themselves against connections that are gone.
struct ClearCells {
    table: Arc<Table>,
    threads: usize,
}

impl Layer for ClearCells {
    fn exited(&mut self, record: &ExitRecord, _ctx: &mut Context<'_>) {
        self.table.clear_slot(record.slot, self.threads);
    }
}

/// What the arbiter and every worker share.
struct Shared {
    app: Arc<dyn App>,
    config: Arc<Config>,
    /// Listening sockets every worker inherits.
    listeners: Vec<Listener>,
    /// Addresses each worker binds itself (`reuse_port`).
    reuse_addrs: Vec<SocketAddr>,
    _reserved: Vec<OwnedFd>,
    backlog: i32,
    max_requests: Option<(u64, u64)>,
    addrs: Vec<SocketAddr>,
    /// Connection counts per serving thread, for an even load.
    table: Option<Arc<Table>>,
}

impl Shared {
    /// This worker's listeners: the inherited ones and, with `reuse_port`,
    /// its own.
    fn own_listeners(&self) -> Result<Vec<Listener>> {
        self.reuse_addrs
            .iter()
            .map(|&addr| {
                bind(addr, true, Some(self.backlog)).map(|fd| Listener::Tcp(TcpListener::from(fd)))
            })
            .collect()
    }

    fn max_requests(&self) -> Option<u64> {
        self.max_requests.map(|(max, jitter)| {
            if jitter == 0 {
                return max;
            }
            let mut bytes = [0u8; 8];
            let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
            let random = u64::from_ne_bytes(bytes);
            // A jitter of u64::MAX takes any value; past u64::MAX is never.
            let extra = jitter.checked_add(1).map_or(random, |span| random % span);
            max.saturating_add(extra)
        })
    }

    fn worker(&self, worker: &mut Worker) -> Result<()> {
        let own = self.own_listeners()?;
        for (socket, &addr) in own.iter().zip(&self.reuse_addrs) {
            // This worker's own socket: refuse new connections on it the
            // moment the worker is asked to stop.
            worker
                .refuse_at_stop(socket)
                .map_err(|source| Error::Listen { addr, source })?;
        }
        let mut listeners: Vec<&Listener> = self.listeners.iter().collect();
        listeners.extend(&own);
        let vitals = worker.vitals().clone();
        let context = WorkerContext::new(
            Some(vitals.clone()),
            Some(worker.slot()),
            Some(worker.generation()),
        );
        let shared = WorkerShared::new(
            Arc::clone(&self.app),
            Arc::clone(&self.config),
            context,
            Some(vitals),
            self.max_requests(),
        )?;
        // Ready once every serving thread waits on the listeners: the last
        // one to get there says so (see `WorkerShared::set_up`).
        let cells = Cells {
            table: self.table.as_deref(),
            first: worker.slot().saturating_mul(self.config.threads),
        };
        run_threads(&shared, &listeners, Some(worker.stop_fd()), cells)
    }
}

/// Where a worker's threads keep their connection counts: cells `first`,
/// `first + 1`, ... of `table`.
#[derive(Clone, Copy)]
struct Cells<'t> {
    table: Option<&'t Table>,
    first: usize,
}

/// Runs `threads` serving loops (this thread being one) until they all end.
fn run_threads(
    shared: &WorkerShared,
    listeners: &[&Listener],
    stop_fd: Option<BorrowedFd<'_>>,
    cells: Cells<'_>,
) -> Result<()> {
    let threads = shared.config.threads;
    let cell = |i: usize| cells.first.saturating_add(i);
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for i in 1..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("ufork-http-{i}"))
                .spawn_scoped(scope, move || {
                    serve::run(shared, listeners, stop_fd, cells.table, cell(i))
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    shared.startup_failed();
                    for handle in handles {
                        let _ = handle.join();
                    }
                    return Err(Error::Thread(e));
                }
            }
        }
        let mut result = serve::run(shared, listeners, stop_fd, cells.table, cell(0));
        if result.is_err() {
            shared.stop();
        }
        for handle in handles {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        result
    })
}

/// An HTTP server: an app, listening sockets, and a ufork-core arbiter to run
/// its pre-forked workers.
///
/// ```no_run
/// use http::{Request, Response};
/// use ufork_wsgi_like::{Body, ResponseBody, Server};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder()
///     .bind("127.0.0.1:8000")
///     .workers(4)
///     .access_log(true)
///     .build(|_req: Request<Body>| Response::new(ResponseBody::from("hi\n")))?;
/// println!("listening on {:?}", server.local_addrs());
/// let outcome = server.run()?;
/// println!("stopped by {:?}", outcome.cause);
/// # Ok(())
/// # }
/// ```
pub struct Server {
    arbiter: Arbiter,
    shared: Arc<Shared>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addrs", &self.shared.addrs)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The TCP addresses the server listens on (with the real port when 0
    /// was asked for); unix listeners are not listed.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.shared.addrs
    }

    /// A handle to the arbiter: stop, scale, restart, snapshot. Get it before
    /// [`run`](Self::run) to control the server from another thread.
    pub fn handle(&self) -> Handle {
        self.arbiter.handle()
    }

    /// Forks the workers and supervises them on this thread until a stop
    /// (Ctrl-C, SIGTERM, or the [`Handle`]); returns once every worker has
    /// exited. See [`Arbiter::run`] for signals and the single-thread caveat.
    ///
    /// # Errors
    ///
    /// [`Error::Run`] if the arbiter fails.
    pub fn run(self) -> Result<Outcome> {
        let shared = self.shared;
        self.arbiter
            .run(move |worker| shared.worker(worker))
            .map_err(Error::Run)
    }

    /// Runs the arbiter on a new thread (see [`Arbiter::spawn_thread`] and
    /// its caveat about forking a process with threads).
    ///
    /// # Errors
    ///
    /// [`Error::Thread`] if the thread cannot start; the thread's own result
    /// is ufork-core's.
    pub fn spawn_thread(self) -> Result<(Handle, JoinHandle<ufork_core::Result<Outcome>>)> {
        let shared = self.shared;
        self.arbiter
            .spawn_thread(move |worker| shared.worker(worker))
            .map_err(Error::Thread)
    }

    /// Serves from threads of this process instead of forked workers (the
    /// arbiter is not used): for tests, and for embedding in a program that
    /// supervises itself. [`Builder::threads`] threads serve; `max_requests`
    /// stops the whole local server.
    ///
    /// # Errors
    ///
    /// [`Error::EventLoop`], socket errors for `reuse_port` addresses, or
    /// [`Error::Thread`].
    pub fn spawn_local(self) -> Result<LocalServer> {
        let shared = self.shared;
        let own = shared.own_listeners()?;
        let worker = Arc::new(WorkerShared::new(
            Arc::clone(&shared.app),
            Arc::clone(&shared.config),
            WorkerContext::new(None, None, None),
            None,
            shared.max_requests(),
        )?);
        let addrs = shared.addrs.clone();
        let own = Arc::new(own);
        let thread = {
            let worker = Arc::clone(&worker);
            std::thread::Builder::new()
                .name("ufork-http-local".into())
                .spawn(move || {
                    let mut listeners: Vec<&Listener> = shared.listeners.iter().collect();
                    listeners.extend(own.iter());
                    let cells = Cells {
                        table: shared.table.as_deref(),
                        first: 0,
                    };
                    run_threads(&worker, &listeners, None, cells)
                })
                .map_err(Error::Thread)?
        };
        Ok(LocalServer {
            worker,
            thread: Some(thread),
            addrs,
        })
    }
}

/// A server running on threads of this process; see [`Server::spawn_local`].
/// Dropping it stops it gracefully and waits for it.
pub struct LocalServer {
    worker: Arc<WorkerShared>,
    thread: Option<JoinHandle<Result<()>>>,
    addrs: Vec<SocketAddr>,
}

impl fmt::Debug for LocalServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalServer")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl LocalServer {
    /// The TCP addresses it listens on (unix listeners are not listed).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Asks it to stop gracefully: no new connections; requests read or
    /// arriving on held connections are answered (with `Connection:
    /// close`); idle connections close after [`Limits::drain_window`].
    pub fn stop(&self) {
        self.worker.stop();
    }

    /// A descriptor that is readable once a stop was asked for.
    pub fn stop_fd(&self) -> BorrowedFd<'_> {
        self.worker.stop_r.as_fd()
    }

    /// Waits for it to end (after [`stop`](Self::stop), or `max_requests`).
    ///
    /// # Errors
    ///
    /// The serving loop failed ([`Error::Wait`], [`Error::EventLoop`]).
    ///
    /// # Panics
    ///
    /// If a serving thread panicked (the app's panics are caught; this would
    /// be a bug here).
    pub fn join(mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Ok(()),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.worker.stop();
            let _ = thread.join();
        }
    }
}

/// Serves `app` on `addr` from `workers` pre-forked workers until Ctrl-C or
/// SIGTERM: the one-call entry point (uFork's `serve_wsgi_gevent`).
///
/// ```no_run
/// # fn main() -> Result<(), ufork_wsgi_like::Error> {
/// ufork_wsgi_like::serve("127.0.0.1:8000", ufork_wsgi_like::hello, 4)?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`Builder::build`] and [`Server::run`].
pub fn serve(
    addr: impl ToSocketAddrs + fmt::Display,
    app: impl App,
    workers: usize,
) -> Result<Outcome> {
    Server::builder()
        .bind(addr)
        .workers(workers)
        .build(app)?
        .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_worker_wakes_three_times_per_heartbeat_timeout_or_never() {
        let tick = |secs| idle_tick(Some(Duration::from_secs(secs)));
        assert_eq!(tick(30), Some(Duration::from_secs(10)));
        assert_eq!(tick(3), Some(Duration::from_secs(1)));
        assert_eq!(idle_tick(None), None);
        // A tiny timeout still leaves the thread time to serve.
        assert_eq!(
            idle_tick(Some(Duration::from_nanos(1))),
            Some(Duration::from_millis(1))
        );
        // A huge one is a long sleep, not an overflow.
        assert_eq!(idle_tick(Some(Duration::MAX)), Some(Duration::MAX / 3));
    }
}
