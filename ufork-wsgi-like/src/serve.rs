//! The serving loop each worker thread runs.
//!
//! One thread multiplexes many connections: an epoll set holds the listeners,
//! the stop descriptors and every open connection, level-triggered. When a
//! connection has a complete request head buffered, the request is handled
//! synchronously (the app runs, the response is written) and the loop moves
//! on; a connection waiting for its next request costs nothing but a slot in
//! the set. So 32 keep-alive connections on one thread are served in turn as
//! their requests arrive, not one connection to its end before the next.
//! Pipelined requests are answered in order, at most [`PIPELINE_BUDGET`] in a
//! row before other connections get their turn.

use std::any::Any;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;
use ufork_core::Vitals;

use crate::body::{Fault, Framing, Heartbeat, Input, lock};
use crate::date::DateCache;
use crate::response::{self, Reply};
use crate::{App, Body, Error, Limits, PeerAddr, Result, http1};

/// Requests answered from one connection's buffer before others get a turn.
const PIPELINE_BUDGET: usize = 16;
/// How long a closing connection's unread input is drained (so the kernel does
/// not answer it with a reset that destroys the response in flight).
const LINGER: Duration = Duration::from_millis(500);
/// How long accepting pauses after EMFILE and the like.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// First size of a connection's read buffer.
const INITIAL_BUFFER: usize = 8 * 1024;

const SPECIAL: u64 = 1 << 63;
const STOP_TOKEN: u64 = SPECIAL;

/// Settings the loop needs, shared by every thread of every worker.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) limits: Limits,
    pub(crate) access_log: bool,
    pub(crate) tick: Duration,
    pub(crate) threads: usize,
    /// The arbiter's heartbeat timeout, if it watches heartbeats.
    pub(crate) heartbeat_timeout: Option<Duration>,
}

/// What every thread of one worker shares.
pub(crate) struct WorkerShared {
    pub(crate) app: Arc<dyn App>,
    pub(crate) config: Arc<Config>,
    pub(crate) vitals: Option<Vitals>,
    /// The limits connections work with: the configured ones, the read and
    /// write timeouts capped under the heartbeat timeout.
    limits: Limits,
    pub(crate) busy: AtomicUsize,
    pub(crate) served: AtomicU64,
    /// Requests after which the worker recycles itself.
    pub(crate) max_requests: Option<u64>,
    pub(crate) recycling: AtomicBool,
    /// Our own stop pipe: written to stop every thread of this worker.
    pub(crate) stop_r: OwnedFd,
    pub(crate) stop_w: OwnedFd,
}

impl WorkerShared {
    pub(crate) fn new(
        app: Arc<dyn App>,
        config: Arc<Config>,
        vitals: Option<Vitals>,
        max_requests: Option<u64>,
    ) -> Result<Self> {
        let (stop_r, stop_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .map_err(|e| Error::EventLoop(e.into()))?;
        let mut limits = config.limits.clone();
        if let (Some(_), Some(timeout)) = (&vitals, config.heartbeat_timeout) {
            // While a thread waits for one client to send more of a body or
            // take more of a response, it neither heartbeats (only progress
            // does) nor serves anyone else. A client that stalls must be
            // dropped before the arbiter takes the worker for hung and
            // kills it with every connection it holds.
            let cap = timeout / 2;
            limits.read_timeout = limits.read_timeout.min(cap);
            limits.write_timeout = limits.write_timeout.min(cap);
        }
        Ok(Self {
            app,
            config,
            vitals,
            limits,
            busy: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            max_requests,
            recycling: AtomicBool::new(false),
            stop_r,
            stop_w,
        })
    }

    /// Asks every thread of this worker to stop gracefully.
    pub(crate) fn stop(&self) {
        // A full pipe already holds a wake-up.
        let _ = rustix::io::write(&self.stop_w, &[1]);
    }

    fn busy(&self, line: &str) {
        if let Some(v) = &self.vitals {
            if self.config.threads == 1 || self.busy.fetch_add(1, Ordering::Relaxed) == 0 {
                v.busy();
            }
            v.set_activity(line);
        }
    }

    /// Marks a request's response fully written (or abandoned): the thread
    /// is no longer busy with it.
    fn done(&self) {
        if let Some(v) = &self.vitals {
            if self.config.threads == 1 || self.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
                v.idle();
            }
        }
    }

    /// Counts a request whose response is about to be written; returns
    /// whether the worker should then recycle (the response says it closes).
    fn count(&self) -> bool {
        if let Some(v) = &self.vitals {
            v.count_request();
        }
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        match self.max_requests {
            Some(max) if served >= max => {
                if !self.recycling.swap(true, Ordering::Relaxed) {
                    log::info!(
                        target: "ufork_wsgi_like",
                        "served {served} requests (max_requests): recycling this worker"
                    );
                    self.stop();
                }
                true
            }
            _ => false,
        }
    }

    fn heartbeat(&self) {
        if let Some(v) = &self.vitals {
            v.heartbeat();
        }
    }
}

/// A panic payload as text.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "a non-string panic payload"
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Accepted, nothing received yet: the header timeout runs.
    Fresh,
    /// Between requests: the keep-alive timeout runs.
    Idle,
    /// Part of a request head received: the header timeout runs.
    Head,
    /// Answered and shut down for writing; draining input until EOF.
    Closing,
}

struct Conn {
    input: Arc<Mutex<Input>>,
    peer: Option<SocketAddr>,
    state: State,
    deadline: Instant,
    eof: bool,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// What to do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Keep,
    /// More requests are buffered: come back without waiting for input.
    Again,
    Close,
    /// Shut down writing, drain input for a while, then close.
    Linger,
    /// Close with a reset: the response in flight is incomplete.
    Abort,
}

/// Runs one serving thread until it is asked to stop and its connections are
/// done.
pub(crate) fn run(
    worker: &WorkerShared,
    listeners: &[&TcpListener],
    stop_fd: Option<BorrowedFd<'_>>,
) -> Result<()> {
    let epoll_fd =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| Error::EventLoop(e.into()))?;
    let add = |fd: BorrowedFd<'_>, token: u64, flags: epoll::EventFlags| {
        epoll::add(&epoll_fd, fd, epoll::EventData::new_u64(token), flags)
            .map_err(|e| Error::EventLoop(e.into()))
    };
    add(worker.stop_r.as_fd(), STOP_TOKEN, epoll::EventFlags::IN)?;
    if let Some(fd) = stop_fd {
        add(fd, STOP_TOKEN, epoll::EventFlags::IN)?;
    }
    for (i, listener) in listeners.iter().enumerate() {
        // EXCLUSIVE: one new connection wakes one waiting thread or worker,
        // not all of them.
        add(
            listener.as_fd(),
            SPECIAL | (i as u64 + 1),
            epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE,
        )?;
    }
    let now = Instant::now();
    let mut lp = Loop {
        worker,
        config: &worker.config,
        epoll: epoll_fd,
        listeners,
        stop_fd,
        slots: Vec::new(),
        free: Vec::new(),
        live: 0,
        pending: Vec::new(),
        out: Vec::with_capacity(16 * 1024),
        line: String::with_capacity(256),
        date: DateCache::new(),
        stopping: false,
        accepting: true,
        accept_resume: None,
        next_check: now + worker.config.tick,
    };
    lp.run()
}

struct Loop<'w> {
    worker: &'w WorkerShared,
    config: &'w Config,
    epoll: OwnedFd,
    listeners: &'w [&'w TcpListener],
    stop_fd: Option<BorrowedFd<'w>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    pending: Vec<u64>,
    out: Vec<u8>,
    line: String,
    date: DateCache,
    stopping: bool,
    accepting: bool,
    accept_resume: Option<Instant>,
    next_check: Instant,
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

impl Loop<'_> {
    fn run(&mut self) -> Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let mut again = Vec::new();
        loop {
            if self.worker.recycling.load(Ordering::Relaxed) {
                self.begin_stop();
            }
            if self.stopping && self.live == 0 {
                return Ok(());
            }
            let now = Instant::now();
            let mut timeout = if self.pending.is_empty() {
                self.config.tick
            } else {
                Duration::ZERO
            };
            timeout = timeout.min(self.next_check.saturating_duration_since(now));
            if let Some(resume) = self.accept_resume {
                timeout = timeout.min(resume.saturating_duration_since(now));
            }
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timespec(timeout)),
            ) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::Wait(e.into())),
            }
            self.worker.heartbeat();
            for event in &events {
                let token = event.data.u64();
                if token == STOP_TOKEN {
                    self.begin_stop();
                } else if token & SPECIAL != 0 {
                    self.accept((token & !SPECIAL) as usize - 1);
                } else {
                    self.event(token, true);
                }
            }
            std::mem::swap(&mut again, &mut self.pending);
            for token in again.drain(..) {
                self.event(token, false);
            }
            let now = Instant::now();
            if now >= self.next_check {
                self.check_timeouts(now);
            }
            if self.accept_resume.is_some_and(|r| now >= r) {
                self.accept_resume = None;
                if !self.stopping {
                    self.set_accepting(true);
                }
            }
        }
    }

    fn set_accepting(&mut self, on: bool) {
        if self.accepting == on {
            return;
        }
        self.accepting = on;
        for (i, listener) in self.listeners.iter().enumerate() {
            let result = if on {
                epoll::add(
                    &self.epoll,
                    listener,
                    epoll::EventData::new_u64(SPECIAL | (i as u64 + 1)),
                    epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE,
                )
            } else {
                epoll::delete(&self.epoll, listener)
            };
            if let Err(e) = result {
                log::error!(target: "ufork_wsgi_like", "cannot update the listener in the event loop: {e}");
            }
        }
    }

    /// Stops accepting, closes idle connections; the loop ends once the
    /// connections with a request under way are answered.
    fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.set_accepting(false);
        // The stop descriptors stay readable; stop listening to them.
        let _ = epoll::delete(&self.epoll, &self.worker.stop_r);
        if let Some(fd) = self.stop_fd {
            let _ = epoll::delete(&self.epoll, fd);
        }
        for idx in 0..self.slots.len() {
            let idle = self.slots[idx]
                .conn
                .as_ref()
                .is_some_and(|c| matches!(c.state, State::Fresh | State::Idle));
            if idle {
                if let Some(conn) = self.slots[idx].conn.take() {
                    self.close(idx, conn);
                }
            }
        }
    }

    fn accept(&mut self, i: usize) {
        if self.stopping || !self.accepting {
            return;
        }
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        match rustix::net::acceptfrom_with(self.listeners[i], flags) {
            Ok((fd, addr)) => {
                let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                let peer = addr.and_then(|a| SocketAddr::try_from(a).ok());
                self.insert(TcpStream::from(fd), peer);
            }
            Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED | Errno::PROTO | Errno::PERM) => {}
            Err(e) => {
                // Out of descriptors or memory: the listener stays readable,
                // so accepting again at once would spin. Pause, then retry.
                log::warn!(
                    target: "ufork_wsgi_like",
                    "cannot accept a connection: {e}; pausing accepts for {} ms",
                    ACCEPT_BACKOFF.as_millis()
                );
                self.set_accepting(false);
                self.accept_resume = Some(Instant::now() + ACCEPT_BACKOFF);
            }
        }
    }

    fn insert(&mut self, stream: TcpStream, peer: Option<SocketAddr>) {
        let limits = &self.config.limits;
        let buffer = INITIAL_BUFFER.min(limits.max_header_bytes + 1);
        let deadline = Instant::now() + limits.header_timeout;
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        slot.generation = slot.generation.wrapping_add(1);
        let token = (u64::from(slot.generation) << 32) | idx as u64;
        if let Err(e) = epoll::add(
            &self.epoll,
            &stream,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        ) {
            log::error!(target: "ufork_wsgi_like", "cannot watch a new connection: {e}");
            self.free.push(idx as u32);
            return;
        }
        slot.conn = Some(Conn {
            input: Arc::new(Mutex::new(Input::new(
                stream,
                buffer,
                &self.worker.limits,
                Heartbeat::new(self.worker.vitals.clone()),
            ))),
            peer,
            state: State::Fresh,
            deadline,
            eof: false,
        });
        self.live += 1;
        self.next_check = self.next_check.min(deadline);
    }

    fn close(&mut self, idx: usize, conn: Conn) {
        let input = lock(&conn.input);
        // Deregister explicitly: a Body the app kept alive holds the socket
        // open, and a level-triggered registration would then spin.
        let _ = epoll::delete(&self.epoll, &input.stream);
        let _ = input.stream.shutdown(std::net::Shutdown::Both);
        drop(input);
        self.free.push(idx as u32);
        self.live -= 1;
    }

    /// Closes with a reset (RST) instead of a FIN. After a response whose
    /// body failed midway, a FIN would end a close-delimited body as if it
    /// were whole, and reads as a clean end to a client that does not check
    /// lengths; a reset tells every client the response is broken.
    fn abort(&mut self, idx: usize, conn: Conn) {
        let input = lock(&conn.input);
        let _ = epoll::delete(&self.epoll, &input.stream);
        // With a zero linger, closing the socket sends RST and drops what
        // is still unsent, instead of a FIN after it.
        let _ = rustix::net::sockopt::set_socket_linger(&input.stream, Some(Duration::ZERO));
        if Arc::strong_count(&conn.input) > 1 {
            // A Body the app kept holds the socket open, so dropping ours
            // does not close it. Disconnecting resets it now all the same
            // (a shutdown would send the FIN we must not send).
            let _ = rustix::net::connect_unspec(&input.stream);
        }
        drop(input);
        self.free.push(idx as u32);
        self.live -= 1;
    }

    /// Handles readiness (`read`) or leftover buffered requests of a connection.
    fn event(&mut self, token: u64, read: bool) {
        let idx = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let Some(mut conn) = slot.conn.take() else {
            return;
        };
        let next = if read {
            self.read(&mut conn)
        } else {
            self.serve_buffered(&mut conn)
        };
        match next {
            Next::Keep => self.slots[idx].conn = Some(conn),
            Next::Again => {
                self.slots[idx].conn = Some(conn);
                self.pending.push(token);
            }
            Next::Close => self.close(idx, conn),
            Next::Abort => self.abort(idx, conn),
            Next::Linger => {
                let input = lock(&conn.input);
                let _ = input.stream.shutdown(std::net::Shutdown::Write);
                drop(input);
                conn.state = State::Closing;
                conn.deadline = Instant::now() + LINGER;
                self.next_check = self.next_check.min(conn.deadline);
                self.slots[idx].conn = Some(conn);
            }
        }
    }

    fn read(&mut self, conn: &mut Conn) -> Next {
        let max = self.config.limits.max_header_bytes + 1;
        {
            let mut input = lock(&conn.input);
            if conn.state == State::Closing {
                let mut scratch = [0u8; 4096];
                loop {
                    match std::io::Read::read(&mut &input.stream, &mut scratch) {
                        Ok(0) => return Next::Close,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Keep,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return Next::Close,
                    }
                }
            }
            match input.read_some(max) {
                Ok(0) => conn.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Next::Keep,
                // A full buffer: the head parser answers 431 below.
                Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {}
                Err(_) => return Next::Close,
            }
        }
        self.serve_buffered(conn)
    }

    /// Answers the complete requests in the buffer.
    fn serve_buffered(&mut self, conn: &mut Conn) -> Next {
        for _ in 0..PIPELINE_BUDGET {
            let parsed = {
                let input = lock(&conn.input);
                if input.start == input.end {
                    None
                } else {
                    Some(http1::parse(input.buffered(), &self.config.limits))
                }
            };
            match parsed {
                None => {
                    if conn.eof || self.stopping {
                        return Next::Close;
                    }
                    if conn.state != State::Fresh {
                        conn.state = State::Idle;
                        self.set_deadline(conn, self.config.limits.keep_alive_timeout);
                    }
                    return Next::Keep;
                }
                Some(Ok(None)) => {
                    if conn.eof {
                        return Next::Close;
                    }
                    // The header timeout runs from the request's first byte
                    // (from the accept for a connection's first request).
                    if conn.state == State::Idle {
                        self.set_deadline(conn, self.config.limits.header_timeout);
                    }
                    conn.state = State::Head;
                    return Next::Keep;
                }
                Some(Err(status)) => {
                    self.reject(conn, status);
                    return Next::Linger;
                }
                Some(Ok(Some(head))) => {
                    let next = self.handle(conn, head);
                    if next != Next::Keep {
                        return next;
                    }
                }
            }
        }
        Next::Again
    }

    fn set_deadline(&mut self, conn: &mut Conn, timeout: Duration) {
        conn.deadline = Instant::now() + timeout;
        self.next_check = self.next_check.min(conn.deadline);
    }

    /// Answers bad input with `status` and a closing connection.
    fn reject(&mut self, conn: &Conn, status: StatusCode) {
        let input = lock(&conn.input);
        let reply = Reply {
            version: http::Version::HTTP_11,
            head_only: false,
            keep_alive: false,
            timeout: input.write_timeout,
            heartbeat: &input.heartbeat,
        };
        let sent = response::write(
            &input.stream,
            &mut self.out,
            &mut self.date,
            response::error_response(status),
            reply,
        );
        drop(input);
        if self.config.access_log {
            log::info!(
                target: "ufork_wsgi_like::access",
                "{} \"-\" {} {} 0.000ms",
                PeerDisplay(conn.peer),
                status.as_u16(),
                sent.map_or(0, |s| s.body_bytes),
            );
        }
    }

    /// Runs the app on one request and writes its response; `Keep` if the
    /// connection may go on.
    fn handle(&mut self, conn: &mut Conn, head: http1::Head) -> Next {
        let started = Instant::now();
        let generation = {
            let mut input = lock(&conn.input);
            let line = &input.buffered()[..head.line_len];
            self.line.clear();
            self.line
                .push_str(std::str::from_utf8(line).unwrap_or("<request line not utf-8>"));
            input.start += head.len;
            input.generation += 1;
            input.framing = head.framing;
            input.continue_pending = head.expect_continue;
            input.received = 0;
            input.fault = None;
            input.generation
        };
        conn.state = State::Idle;
        self.worker.busy(&self.line);
        let version = head.request.version();
        let head_only = head.request.method() == http::Method::HEAD;
        let body = Body::conn(Arc::clone(&conn.input), generation, head.content_length);
        let mut request = head.request.map(|()| body);
        if let Some(peer) = conn.peer {
            request.extensions_mut().insert(PeerAddr(peer));
        }
        let app = &self.worker.app;
        let (mut response, panicked) = match catch_unwind(AssertUnwindSafe(|| app.call(request))) {
            Ok(response) => (response, false),
            Err(panic) => {
                log::error!(
                    target: "ufork_wsgi_like",
                    "the app panicked on \"{}\": {}",
                    self.line,
                    panic_message(&*panic)
                );
                (
                    response::error_response(StatusCode::INTERNAL_SERVER_ERROR),
                    true,
                )
            }
        };
        let mut keep_alive = head.keep_alive && !self.stopping && !conn.eof;
        let mut linger = false;
        let mut input = lock(&conn.input);
        if let Some(fault) = input.fault {
            keep_alive = false;
            linger = true;
            match fault.status() {
                // A client that shut down its writing side may still read:
                // it gets the app's answer to the truncated body.
                Some(_) if fault == Fault::Eof && !panicked => {}
                Some(status) => response = response::error_response(status),
                None => {
                    input.generation += 1;
                    drop(input);
                    self.worker.count();
                    self.worker.done();
                    return Next::Close;
                }
            }
        } else if input.framing != Framing::Done {
            // The app left part of the body unread. Unless the client still
            // waits for `100 Continue` (and so sends nothing), read and drop
            // a bounded amount so the next request starts at its first byte.
            if input.continue_pending || !input.drain(self.config.limits.max_drain_bytes) {
                keep_alive = false;
                linger = true;
            }
        }
        if self.worker.count() {
            keep_alive = false;
        }
        let reply = Reply {
            version,
            head_only,
            keep_alive,
            timeout: input.write_timeout,
            heartbeat: &input.heartbeat,
        };
        let sent = response::write(
            &input.stream,
            &mut self.out,
            &mut self.date,
            response,
            reply,
        );
        input.generation += 1;
        drop(input);
        // Busy until the last byte is written: a long response is work.
        self.worker.done();
        if self.config.access_log {
            let (status, bytes) = match &sent {
                Ok(s) => (s.status.as_u16(), s.body_bytes),
                Err(_) => (0, 0),
            };
            log::info!(
                target: "ufork_wsgi_like::access",
                "{} \"{}\" {} {} {:.3}ms",
                PeerDisplay(conn.peer),
                self.line,
                status,
                bytes,
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        match sent {
            Ok(sent) if sent.keep_alive => Next::Keep,
            Ok(_) if linger => Next::Linger,
            Ok(_) => Next::Close,
            Err(_) => Next::Abort,
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        let mut next = now + self.config.tick;
        for idx in 0..self.slots.len() {
            let Some(conn) = &self.slots[idx].conn else {
                continue;
            };
            if conn.deadline > now {
                next = next.min(conn.deadline);
                continue;
            }
            let Some(mut conn) = self.slots[idx].conn.take() else {
                continue;
            };
            match conn.state {
                State::Head => {
                    self.reject(&conn, StatusCode::REQUEST_TIMEOUT);
                    let input = lock(&conn.input);
                    let _ = input.stream.shutdown(std::net::Shutdown::Write);
                    drop(input);
                    conn.state = State::Closing;
                    conn.deadline = now + LINGER;
                    next = next.min(conn.deadline);
                    self.slots[idx].conn = Some(conn);
                }
                State::Fresh | State::Idle | State::Closing => self.close(idx, conn),
            }
        }
        self.next_check = next;
    }
}

struct PeerDisplay(Option<SocketAddr>);

impl std::fmt::Display for PeerDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("-"),
        }
    }
}
