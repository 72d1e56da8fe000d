//! The serving loop each worker thread runs.
//!
//! One thread multiplexes many connections: an epoll set holds the listeners,
//! the stop descriptors and every open connection, level-triggered. When a
//! connection has a complete request head buffered, the request is handled
//! synchronously (the app runs, the response is written) and the loop moves
//! on; a connection waiting for its next request costs nothing but a slot in
//! the set. So 32 keep-alive connections on one thread are served in turn as
//! their requests arrive, not one connection to its end before the next.
//! Pipelined requests are answered in order, at most
//! [`PIPELINE_BUDGET`](conn::PIPELINE_BUDGET) in a row before other
//! connections get their turn.
//!
//! The concerns are split as hyper's h1 splits them: this module is the
//! event loop (epoll, accepting, deadlines, stopping); [`conn`] is one
//! connection's state machine (what its bytes and its deadline mean);
//! [`dispatch`] calls the app and writes every answer, the app's and the
//! rejections of bad input, through one reply path; [`worker`] is what the
//! threads of one worker share; [`balance`] keeps the load on a shared
//! listener even across workers; [`turn`] lets the kernel end a busy
//! thread's turn on the CPU when its slice is used up, not at the tick.

pub(crate) mod balance;
mod conn;
mod dispatch;
mod turn;
mod worker;

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;

use self::balance::{Balance, Table};
use self::conn::{Conn, Next, State, deadline_after, stop_window};
use self::dispatch::Dispatch;
use self::turn::Turn;
pub(crate) use self::worker::{Config, WorkerShared, panic_message};
use crate::body::{Heartbeat, Input, lock};
use crate::{Error, PeerAddr, Result, UnixSocketPath};

/// How long accepting pauses after EMFILE and the like.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// First size of a connection's read buffer.
const INITIAL_BUFFER: usize = 8 * 1024;

const SPECIAL: u64 = 1 << 63;
const STOP_TOKEN: u64 = SPECIAL;

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// A listening socket the serving threads accept from.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// A unix-domain stream socket, and its path when it has one.
    Unix(UnixListener, Option<Arc<Path>>),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l, _) => l.as_fd(),
        }
    }
}

/// The other end of a connection, as the app and the access log see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    /// A client of a unix-domain socket (of this path): it has no address
    /// of its own worth naming.
    Unix(Option<Arc<Path>>),
    Unknown,
}

impl Peer {
    /// The client's host for a log line: its IP address, `unix`, or `-`.
    pub(crate) fn host(&self) -> String {
        match self {
            Self::Tcp(addr) => addr.ip().to_string(),
            Self::Unix(_) => "unix".to_owned(),
            Self::Unknown => "-".to_owned(),
        }
    }

    /// Tells the app: a [`PeerAddr`] for TCP, a [`UnixSocketPath`] for a
    /// unix socket with a path.
    pub(crate) fn insert_into(&self, extensions: &mut http::Extensions) {
        match self {
            Self::Tcp(addr) => {
                extensions.insert(PeerAddr(*addr));
            }
            Self::Unix(Some(path)) => {
                extensions.insert(UnixSocketPath(Arc::clone(path)));
            }
            Self::Unix(None) | Self::Unknown => {}
        }
    }
}

/// `ADDR:PORT`, `unix` or `-`.
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(_) => f.write_str("unix"),
            Self::Unknown => f.write_str("-"),
        }
    }
}

/// Runs one serving thread until it is asked to stop and its connections are
/// done. `table` and `cell` place it in the shared connection counts that
/// keep the listeners' load even (none: nothing to balance with). Once set
/// up, it waits for the worker's other threads (see
/// [`WorkerShared::set_up`]).
pub(crate) fn run(
    worker: &WorkerShared,
    listeners: &[&Listener],
    stop_fd: Option<BorrowedFd<'_>>,
    table: Option<&Table>,
    cell: usize,
) -> Result<()> {
    worker.enter();
    let epoll_fd = match watch(worker, listeners, stop_fd) {
        Ok(fd) => fd,
        Err(e) => {
            worker.startup_failed();
            return Err(e);
        }
    };
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
        dispatch: Dispatch::new(worker),
        stopping: false,
        accepting: true,
        gone: false,
        accept_resume: None,
        balance: Balance::new(table, cell),
        next_check: Some(Instant::now()),
        turn: Turn::new(Instant::now()),
    };
    worker.set_up();
    lp.run()
}

/// A new epoll set watching the stop descriptors and the listeners.
fn watch(
    worker: &WorkerShared,
    listeners: &[&Listener],
    stop_fd: Option<BorrowedFd<'_>>,
) -> Result<OwnedFd> {
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
        add(listener.as_fd(), listener_token(i), LISTENER_FLAGS)?;
    }
    Ok(epoll_fd)
}

/// EXCLUSIVE: one new connection wakes one waiting thread or worker, not
/// all of them — the first waiting one in the listener's wait queue, so a
/// thread re-registers after each accept to move to the back of it (see
/// [`Loop::requeue`]), or stands aside for a while when it holds more than
/// its share (see [`balance`]).
const LISTENER_FLAGS: epoll::EventFlags = epoll::EventFlags::IN.union(epoll::EventFlags::EXCLUSIVE);

fn listener_token(i: usize) -> u64 {
    SPECIAL | (i as u64 + 1)
}

/// A connection's event token: its slot and the slot's generation, so an
/// event for a connection since closed is not taken for its successor's.
fn conn_token(generation: u32, idx: usize) -> u64 {
    (u64::from(generation) << 32) | idx as u64
}

/// The event loop of one serving thread.
struct Loop<'w> {
    worker: &'w WorkerShared,
    config: &'w Config,
    epoll: OwnedFd,
    listeners: &'w [&'w Listener],
    stop_fd: Option<BorrowedFd<'w>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Connections with requests still buffered, to serve without waiting.
    pending: Vec<u64>,
    dispatch: Dispatch<'w>,
    stopping: bool,
    /// The listeners are registered with the event loop.
    accepting: bool,
    /// A listener was shut down: accepting is over for good.
    gone: bool,
    /// Accepting pauses until then after an error like EMFILE.
    accept_resume: Option<Instant>,
    /// This thread's connection count in the shared table, and whether it
    /// stands aside from the listeners.
    balance: Balance<'w>,
    /// When to look at the connections' deadlines next (`None`: nothing
    /// to look at until a connection sets a deadline).
    next_check: Option<Instant>,
    /// How long this thread has run without a pause (see [`turn`]).
    turn: Turn,
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
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
            // Alive before the wait as well as after it: handling the last
            // events may have taken up to a read or write timeout without a
            // beat (a client given up on), and the wait may last a tick.
            self.worker.heartbeat();
            self.wait(&mut events)?;
            self.worker.heartbeat();
            // A stop seen in the same wake-up as requests applies to them:
            // they are answered with `Connection: close`.
            if events.iter().any(|e| e.data.u64() == STOP_TOKEN) {
                self.begin_stop();
            }
            for event in &events {
                let token = event.data.u64();
                if token == STOP_TOKEN {
                } else if token & SPECIAL != 0 {
                    self.accept((token & !SPECIAL) as usize - 1);
                } else {
                    self.event(token, true);
                }
            }
            std::mem::swap(&mut again, &mut self.pending);
            let worked = !events.is_empty() || !again.is_empty();
            for token in again.drain(..) {
                self.event(token, false);
            }
            let now = Instant::now();
            if worked {
                // Every answer of this wake-up is written: a good moment to
                // let the kernel end this thread's turn (see [`turn`]).
                self.turn.worked(now);
                // And to see whether this thread holds more than its share
                // while it has more work than it can do (see [`balance`]).
                let turn = &mut self.turn;
                let unused = self.dispatch.shed;
                if let Some(shed) = self.balance.look(now, unused, || turn.take_saturated(now)) {
                    self.dispatch.shed = shed;
                }
            }
            if self.next_check.is_some_and(|c| now >= c) {
                self.check_timeouts(now);
            }
            if self.accept_resume.is_some_and(|r| now >= r) {
                self.accept_resume = None;
                self.sync_accepting();
            }
            if self.balance.rejoin(now) {
                self.sync_accepting();
            }
        }
    }

    /// Waits for events until the next deadline (at most a tick: the idle
    /// heartbeat; with neither, until an event), not at all when requests
    /// are pending.
    fn wait(&mut self, events: &mut Vec<epoll::Event>) -> Result<()> {
        let now = Instant::now();
        let timeout = if self.pending.is_empty() {
            let until = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(now));
            [
                self.config.tick,
                until(self.next_check),
                until(self.accept_resume),
                until(self.balance.aside_until()),
            ]
            .into_iter()
            .flatten()
            .min()
        } else {
            Some(Duration::ZERO)
        };
        events.clear();
        let waited = epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            timeout.map(timespec).as_ref(),
        );
        // A wait that slept (or lost the CPU) starts a new stretch of work;
        // one that did not continues it (see [`turn`]).
        self.turn.waited(now, Instant::now());
        match waited {
            Ok(_) | Err(Errno::INTR) => Ok(()),
            Err(e) => Err(Error::Wait(e.into())),
        }
    }

    /// Registers the listeners when nothing keeps this thread from
    /// accepting (a stop, a shut-down listener, an error pause, standing
    /// aside), deregisters them otherwise.
    fn sync_accepting(&mut self) {
        let on = !self.stopping
            && !self.gone
            && self.accept_resume.is_none()
            && self.balance.aside_until().is_none();
        self.set_accepting(on);
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
                    epoll::EventData::new_u64(listener_token(i)),
                    LISTENER_FLAGS,
                )
            } else {
                epoll::delete(&self.epoll, listener)
            };
            if let Err(e) = result {
                log::error!(target: "ufork_wsgi_like", "cannot update the listener in the event loop: {e}");
            }
        }
    }

    /// Stops accepting at once. Every connection it holds is drained, not
    /// dropped: a request already buffered or arriving within the drain
    /// window is answered (with `Connection: close`), a connection with no
    /// request in that window is closed; the loop ends when none is left.
    fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.balance.leave();
        self.sync_accepting();
        // The stop descriptors stay readable; stop listening to them.
        let _ = epoll::delete(&self.epoll, &self.worker.stop_r);
        if let Some(fd) = self.stop_fd {
            let _ = epoll::delete(&self.epoll, fd);
        }
        let window = stop_window(&self.config.limits);
        let now = Instant::now();
        for idx in 0..self.slots.len() {
            if let Some(conn) = &mut self.slots[idx].conn {
                let deadline = conn.drain(now, window);
                self.watch_deadline(deadline);
            }
        }
    }

    fn accept(&mut self, i: usize) {
        if self.stopping || !self.accepting {
            return;
        }
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let listener = self.listeners[i];
        match rustix::net::acceptfrom_with(listener, flags) {
            Ok((fd, addr)) => {
                let peer = match listener {
                    Listener::Tcp(_) => {
                        let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                        addr.and_then(|a| SocketAddr::try_from(a).ok())
                            .map_or(Peer::Unknown, Peer::Tcp)
                    }
                    Listener::Unix(_, path) => Peer::Unix(path.clone()),
                };
                // A unix connection travels in a `TcpStream` too: the
                // serving code only reads, writes (sendfile included), polls
                // and shuts down, which every stream socket does alike.
                if self.insert(TcpStream::from(fd), peer) && self.balance.accepted(Instant::now()) {
                    // Holding more than its share: leave the rest of the
                    // queue to the others for a while.
                    self.sync_accepting();
                } else {
                    self.requeue(i);
                }
            }
            Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED | Errno::PROTO | Errno::PERM) => {}
            Err(Errno::INVAL) => {
                // The arbiter shut the listening socket down for a graceful
                // stop: the listener is gone, so stop accepting for good.
                log::debug!(
                    target: "ufork_wsgi_like",
                    "listener {i} is shut down; no longer accepting"
                );
                self.gone = true;
                self.sync_accepting();
            }
            Err(e) => {
                // Out of descriptors or memory: the listener stays readable,
                // so accepting again at once would spin. Pause, then retry.
                log::warn!(
                    target: "ufork_wsgi_like",
                    "cannot accept a connection: {e}; pausing accepts for {} ms",
                    ACCEPT_BACKOFF.as_millis()
                );
                self.accept_resume = deadline_after(Instant::now(), ACCEPT_BACKOFF);
                if self.accept_resume.is_none() {
                    // No deadline fits in an `Instant`: never resume.
                    self.gone = true;
                }
                self.sync_accepting();
            }
        }
    }

    /// Moves this thread to the back of listener `i`'s wait queue. An
    /// exclusive wake-up goes to the first waiter in the queue; without
    /// this, the thread registered first takes nearly every connection
    /// whenever it is idle (158,817 / 25,257 / 41 requests over 3 workers
    /// under wrk). Re-registering (an epoll delete and add) queues it
    /// behind the others, so idle threads take new connections in turn.
    fn requeue(&mut self, i: usize) {
        let listener = self.listeners[i];
        let token = epoll::EventData::new_u64(listener_token(i));
        let moved = epoll::delete(&self.epoll, listener)
            .and_then(|()| epoll::add(&self.epoll, listener, token, LISTENER_FLAGS));
        if let Err(e) = moved {
            log::error!(target: "ufork_wsgi_like", "cannot requeue the listener in the event loop: {e}");
            // Accepting must go on: try to register it again.
            let _ = epoll::add(&self.epoll, listener, token, LISTENER_FLAGS);
        }
    }

    /// Starts serving a new connection; false if it could not be watched
    /// (it is closed).
    fn insert(&mut self, stream: TcpStream, peer: Peer) -> bool {
        let limits = &self.config.limits;
        let buffer = INITIAL_BUFFER.min(limits.max_header_bytes.saturating_add(1));
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
        let token = conn_token(slot.generation, idx);
        if let Err(e) = epoll::add(
            &self.epoll,
            &stream,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        ) {
            log::error!(target: "ufork_wsgi_like", "cannot watch a new connection: {e}");
            self.free.push(idx as u32);
            return false;
        }
        let input = Input::new(
            stream,
            buffer,
            &self.worker.limits,
            Heartbeat::new(self.worker.vitals.clone()),
        );
        let conn = Conn::new(input, peer, limits);
        let deadline = conn.deadline;
        slot.conn = Some(conn);
        self.live += 1;
        self.watch_deadline(deadline);
        true
    }

    fn watch_deadline(&mut self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            self.next_check = Some(self.next_check.map_or(d, |c| c.min(d)));
        }
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
        if conn.state != State::Closing {
            self.balance.closed();
        }
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
        if std::sync::Arc::strong_count(&conn.input) > 1 {
            // A Body the app kept holds the socket open, so dropping ours
            // does not close it. Disconnecting resets it now all the same
            // (a shutdown would send the FIN we must not send).
            let _ = rustix::net::connect_unspec(&input.stream);
        }
        drop(input);
        self.free.push(idx as u32);
        self.live -= 1;
        if conn.state != State::Closing {
            self.balance.closed();
        }
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
        let next = if conn.state == State::Sending {
            // Registered for room to write, so an event means room (or an
            // error, which the write finds).
            if read {
                conn.writable(&mut self.dispatch, self.stopping)
            } else {
                Next::Write
            }
        } else if read {
            conn.readable(&mut self.dispatch, self.stopping)
        } else {
            conn.serve_buffered(&mut self.dispatch, self.stopping)
        };
        if next == Next::Again {
            self.pending.push(token);
        }
        self.carry_out(idx, conn, next);
    }

    /// Carries out what a connection's state machine decided.
    fn carry_out(&mut self, idx: usize, mut conn: Conn, next: Next) {
        match next {
            Next::Keep | Next::Again | Next::Write => {}
            Next::Close => return self.close(idx, conn),
            Next::Abort => return self.abort(idx, conn),
            Next::Linger => {
                if conn.state != State::Closing {
                    // Leaving: it no longer counts as held (see [`balance`]).
                    self.balance.closed();
                }
                conn.linger(Instant::now());
            }
        }
        // A connection sending the rest of an answer waits for room to
        // write, every other one for input.
        let out = conn.state == State::Sending;
        if out != conn.watching_out {
            let token = conn_token(self.slots[idx].generation, idx);
            let flags = if out {
                epoll::EventFlags::OUT
            } else {
                epoll::EventFlags::IN
            };
            let input = lock(&conn.input);
            let watched = epoll::modify(
                &self.epoll,
                &input.stream,
                epoll::EventData::new_u64(token),
                flags,
            );
            drop(input);
            if let Err(e) = watched {
                log::error!(target: "ufork_wsgi_like", "cannot watch a connection in the event loop: {e}");
                return self.abort(idx, conn);
            }
            conn.watching_out = out;
        }
        self.watch_deadline(conn.deadline);
        self.slots[idx].conn = Some(conn);
    }

    fn check_timeouts(&mut self, now: Instant) {
        self.next_check = self.config.tick.and_then(|t| deadline_after(now, t));
        for idx in 0..self.slots.len() {
            let Some(conn) = &self.slots[idx].conn else {
                continue;
            };
            match conn.deadline {
                Some(d) if d <= now => {}
                other => {
                    self.watch_deadline(other);
                    continue;
                }
            }
            let Some(mut conn) = self.slots[idx].conn.take() else {
                continue;
            };
            let next = conn.expired(&mut self.dispatch, self.stopping);
            if next == Next::Again {
                // An answer finished going out: serve what is buffered
                // behind it.
                let token = conn_token(self.slots[idx].generation, idx);
                self.pending.push(token);
            }
            self.carry_out(idx, conn, next);
        }
    }
}
