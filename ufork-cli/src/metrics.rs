//! `--metrics-bind ADDR`: a tiny HTTP/1.1 listener served by the arbiter's
//! own poll loop (a [`Layer`]), so it answers even when every worker is
//! wedged. `GET /metrics` is the Prometheus text exposition format (0.0.4);
//! `GET /healthz` is 200 when every target worker is ready and 503 otherwise,
//! for Kubernetes readiness and liveness probes.
//!
//! After an upgrade the old arbiter, still draining, leaves the socket to the
//! new one: probes read the new pool's health, not the old one's 503.
//!
//! Every connection gets one answer and is closed. A client gets
//! [`IDLE_TIMEOUT`] to send its request head (at most [`MAX_HEAD`] bytes);
//! with [`MAX_CONNECTIONS`] open, the oldest makes room for a new one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use ufork_core::{Context, Interest, Layer, Readiness, Token, WorkerState};

use crate::failure::{self, Failure, io_text};
use crate::health::{self, Health, View};

/// At most this many scrapers at once.
pub const MAX_CONNECTIONS: usize = 32;
/// A client that has not sent its request (or read the answer) this long is
/// closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head accepted.
pub const MAX_HEAD: usize = 8192;

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    answered: bool,
    since: Instant,
}

/// The metrics and health endpoint.
#[derive(Debug)]
pub struct Metrics {
    listener: TcpListener,
    addr: SocketAddr,
    token: Option<Token>,
    /// This arbiter's stop hands the pool over: the new one takes the
    /// socket's connections.
    handed_over: bool,
    connections: HashMap<Token, Connection>,
}

/// The address `--metrics-bind ADDR` binds (HOST:PORT, the first address
/// a name resolves to), without binding it.
///
/// # Errors
///
/// A usage failure naming `--metrics-bind`.
pub fn resolve(address: &str) -> Result<SocketAddr, Failure> {
    address
        .to_socket_addrs()
        .map_err(|e| {
            failure::usage(format!(
                "--metrics-bind {address}: not an address ({}); use HOST:PORT, like 127.0.0.1:9100",
                io_text(&e)
            ))
        })?
        .next()
        .ok_or_else(|| {
            failure::usage(format!(
                "--metrics-bind {address}: the name resolves to no address"
            ))
        })
}

impl Metrics {
    /// Binds `address` (HOST:PORT; port 0 picks one).
    ///
    /// # Errors
    ///
    /// A message naming `--metrics-bind`.
    pub fn bind(address: &str) -> Result<Self, Failure> {
        let addr = resolve(address)?;
        // A new arbiter started by an upgrade takes the old one's socket.
        let listener = match crate::upgrade::take_named(crate::upgrade::METRICS) {
            Some(fd) => TcpListener::from(fd),
            None => TcpListener::bind(addr).map_err(|e| {
                failure::runtime(format!("--metrics-bind {address}: {}", io_text(&e)))
            })?,
        };
        crate::upgrade::remember_fd(crate::upgrade::METRICS, &listener);
        listener
            .set_nonblocking(true)
            .map_err(|e| failure::runtime(format!("--metrics-bind: {}", io_text(&e))))?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(Self {
            listener,
            addr,
            token: None,
            handed_over: false,
            connections: HashMap::new(),
        })
    }

    /// The address bound (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the socket's connections from now on, unless this arbiter
    /// does already, handed the pool over, or is a new arbiter the old one
    /// has not handed the service to yet: until then the socket is the old
    /// pool's (it answers for the service), and a probe this one accepted
    /// would be dropped unanswered should it fail and exit. Connections
    /// queue meanwhile.
    fn listen_once_ours(&mut self, ctx: &mut Context<'_>) {
        if self.token.is_none() && !self.handed_over && ufork_core::upgrade::owns_listeners() {
            self.token = Some(ctx.register(self.listener.as_fd(), Interest::READABLE));
        }
    }

    fn accept(&mut self, ctx: &mut Context<'_>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.connections.len() >= MAX_CONNECTIONS {
                let oldest = self
                    .connections
                    .iter()
                    .min_by_key(|(_, c)| c.since)
                    .map(|(t, _)| *t);
                if let Some(token) = oldest {
                    self.close(token, ctx);
                }
            }
            let token = ctx.register(stream.as_fd(), Interest::READABLE);
            self.connections.insert(
                token,
                Connection {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    answered: false,
                    since: Instant::now(),
                },
            );
        }
    }

    fn close(&mut self, token: Token, ctx: &mut Context<'_>) {
        if self.connections.remove(&token).is_some() {
            ctx.deregister(token);
        }
    }

    fn serve(&mut self, token: Token, ctx: &mut Context<'_>) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        match progress(conn, || health::view(ctx.handle().snapshot())) {
            Progress::Waiting => ctx.reregister(token, Interest::READABLE),
            Progress::Writing => ctx.reregister(token, Interest::WRITABLE),
            Progress::Done => self.close(token, ctx),
        }
    }
}

/// Where a connection stands after an event.
enum Progress {
    /// The request head is not complete.
    Waiting,
    /// The answer is partly written.
    Writing,
    /// Answered (or broken): close it.
    Done,
}

/// Reads what the client sent, answers once the head is complete, writes
/// what the socket takes.
fn progress(conn: &mut Connection, view: impl FnOnce() -> View) -> Progress {
    if !conn.answered {
        let mut buf = [0u8; 2048];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => return Progress::Done,
                Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Progress::Done,
            }
            if conn.input.len() > MAX_HEAD {
                break;
            }
        }
        let Some(response) = respond(&conn.input, view) else {
            return Progress::Waiting;
        };
        conn.output = response;
        conn.answered = true;
        conn.since = Instant::now();
    }
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => return Progress::Done,
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Writing,
            Err(_) => return Progress::Done,
        }
    }
    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
    Progress::Done
}

impl Layer for Metrics {
    fn started(&mut self, ctx: &mut Context<'_>) {
        self.listen_once_ours(ctx);
    }

    fn event(&mut self, token: Token, _readiness: Readiness, ctx: &mut Context<'_>) {
        if Some(token) == self.token {
            self.accept(ctx);
        } else {
            self.serve(token, ctx);
        }
    }

    fn stopping(&mut self, ctx: &mut Context<'_>) {
        // After an upgrade the new arbiter serves this same socket: stop
        // taking its connections here, or a probe that this draining
        // arbiter happened to accept would read 503 (stopping) while the
        // service is up. Connections already accepted are still answered.
        if ufork_core::upgrade::handed_over_to().is_some() {
            self.handed_over = true;
            if let Some(token) = self.token.take() {
                ctx.deregister(token);
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<'_>) {
        self.listen_once_ours(ctx);
        let now = Instant::now();
        let expired: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, c)| now.duration_since(c.since) >= IDLE_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            self.close(token, ctx);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.connections
            .values()
            .map(|c| c.since + IDLE_TIMEOUT)
            .min()
    }
}

/// The whole response to the request head in `input`, or `None` while the
/// head is incomplete. `view` is only taken for a request that needs it.
fn respond(input: &[u8], view: impl FnOnce() -> View) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let (method, path) = match request.parse(input) {
        Ok(httparse::Status::Complete(_)) => (
            request.method.unwrap_or_default(),
            request.path.unwrap_or_default(),
        ),
        Ok(httparse::Status::Partial) if input.len() <= MAX_HEAD => return None,
        Ok(httparse::Status::Partial) => {
            return Some(response(
                431,
                "text/plain",
                "request head too large\n",
                false,
            ));
        }
        Err(_) => return Some(response(400, "text/plain", "bad request\n", false)),
    };
    let head = method == "HEAD";
    if method != "GET" && !head {
        return Some(response(405, "text/plain", "only GET and HEAD\n", false));
    }
    let path = path.split('?').next().unwrap_or_default();
    Some(match path {
        "/metrics" => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &exposition(&view()),
            head,
        ),
        "/healthz" => {
            let view = view();
            let status = if view.health == Health::Healthy {
                200
            } else {
                503
            };
            let body = format!(
                "{} ({}/{} workers ready)\n",
                view.health.as_str(),
                view.snapshot.ready_count(),
                view.snapshot.target
            );
            response(status, "text/plain; charset=utf-8", &body, head)
        }
        _ => response(
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n",
            head,
        ),
    })
}

fn response(status: u16, content_type: &str, body: &str, head: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The states a worker is counted under in `ufork_workers`.
const STATES: [WorkerState; 5] = [
    WorkerState::Booting,
    WorkerState::Ready,
    WorkerState::Busy,
    WorkerState::Idle,
    WorkerState::Stopping,
];

/// Every exit reason, so each counter exists from the start.
const REASONS: [&str; 11] = [
    "exited",
    "failed",
    "panicked",
    "killed",
    "stopped",
    "recycled",
    "timed-out",
    "hung",
    "boot-timed-out",
    "over-memory",
    "too-many-fds",
];

/// The Prometheus text exposition of `view`.
pub fn exposition(view: &View) -> String {
    let snap = &view.snapshot;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: String| vec![(String::new(), value)];
    family(
        "ufork_up",
        "gauge",
        "1 while the arbiter's loop runs.",
        &one("1".into()),
    );
    family(
        "ufork_workers_target",
        "gauge",
        "Workers the arbiter keeps.",
        &one(snap.target.to_string()),
    );
    let by_state: Vec<(String, String)> = STATES
        .iter()
        .map(|&state| {
            let n = snap.workers.iter().filter(|w| w.state == state).count();
            (format!("{{state=\"{}\"}}", state.as_str()), n.to_string())
        })
        .collect();
    family(
        "ufork_workers",
        "gauge",
        "Live workers by state.",
        &by_state,
    );
    family(
        "ufork_workers_ready",
        "gauge",
        "Workers that declared themselves ready.",
        &one(snap.ready_count().to_string()),
    );
    let health: Vec<(String, String)> = [
        Health::Healthy,
        Health::Starting,
        Health::Degraded,
        Health::Stopping,
    ]
    .iter()
    .map(|&h| {
        let on = u8::from(h == view.health);
        (format!("{{health=\"{}\"}}", h.as_str()), on.to_string())
    })
    .collect();
    family(
        "ufork_pool_health",
        "gauge",
        "1 for the pool's current health.",
        &health,
    );
    family(
        "ufork_rolling_restart",
        "gauge",
        "1 while a rolling restart runs.",
        &one(u8::from(snap.rolling).to_string()),
    );
    family(
        "ufork_arbiter_uptime_seconds",
        "gauge",
        "Seconds since the arbiter's loop started.",
        &one(seconds(view.uptime)),
    );
    family(
        "ufork_worker_spawns_total",
        "counter",
        "Workers forked.",
        &one(snap.spawned.to_string()),
    );
    family(
        "ufork_worker_restarts_total",
        "counter",
        "Worker exits the arbiter did not ask for.",
        &one(view.totals.restarts.to_string()),
    );
    let exits: Vec<(String, String)> = REASONS
        .iter()
        .map(|reason| {
            let n = view.totals.exits.get(reason).copied().unwrap_or(0);
            (format!("{{reason=\"{reason}\"}}"), n.to_string())
        })
        .collect();
    family(
        "ufork_worker_exits_total",
        "counter",
        "Worker exits by reason.",
        &exits,
    );
    family(
        "ufork_requests_total",
        "counter",
        "Requests served by every worker the pool had.",
        &one(view.requests_total().to_string()),
    );
    let per_slot = |value: &dyn Fn(&ufork_core::WorkerInfo) -> Option<String>| {
        snap.workers
            .iter()
            .filter_map(|w| value(w).map(|v| (format!("{{slot=\"{}\"}}", w.slot), v)))
            .collect::<Vec<_>>()
    };
    family(
        "ufork_worker_resident_memory_bytes",
        "gauge",
        "Resident memory of each live worker.",
        &per_slot(&|w| w.rss.map(|b| b.to_string())),
    );
    family(
        "ufork_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since each live worker's last heartbeat.",
        &per_slot(&|w| w.last_beat_age.map(seconds)),
    );
    family(
        "ufork_worker_uptime_seconds",
        "gauge",
        "Seconds since each live worker was forked.",
        &per_slot(&|w| Some(seconds(w.uptime))),
    );
    family(
        "ufork_worker_requests",
        "gauge",
        "Requests served by each live worker (reset when it is replaced).",
        &per_slot(&|w| Some(w.requests.to_string())),
    );
    out
}

fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_heads_wait_and_bad_ones_are_answered() {
        let never = || -> View { unreachable!("no view for this request") };
        assert!(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", never).is_none());
        let text =
            |r: Option<Vec<u8>>| String::from_utf8(r.unwrap_or_default()).unwrap_or_default();
        assert!(text(respond(b"\x01\x02 nonsense\r\n\r\n", never)).starts_with("HTTP/1.1 400 "));
        assert!(
            text(respond(b"POST /metrics HTTP/1.1\r\n\r\n", never)).starts_with("HTTP/1.1 405 ")
        );
        assert!(text(respond(b"GET /nope HTTP/1.1\r\n\r\n", never)).starts_with("HTTP/1.1 404 "));
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(text(respond(huge.as_bytes(), never)).starts_with("HTTP/1.1 431 "));
    }
}
