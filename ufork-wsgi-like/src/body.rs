//! The request body: [`Body`], and the connection's input side it reads from.

use std::fmt;
use std::io::{self, IoSlice, Read};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::StatusCode;
use rustix::event::{PollFd, PollFlags, poll};
use ufork_core::Vitals;

/// Longest chunk-size line (size, extensions, CRLF) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// The worker's heartbeat, beaten on every bit of progress a connection
/// makes while the event loop is not running (a long response being
/// written, a body the app reads): the arbiter then sees a worker that
/// moves bytes as alive, and one stuck past the read or write timeout as
/// hung. A server on local threads has no heartbeat.
#[derive(Clone, Debug, Default)]
pub(crate) struct Heartbeat(Option<Vitals>);

impl Heartbeat {
    pub(crate) fn new(vitals: Option<Vitals>) -> Self {
        Self(vitals)
    }

    /// One store into the scoreboard, no system call.
    #[inline]
    pub(crate) fn beat(&self) {
        if let Some(v) = &self.0 {
            v.heartbeat();
        }
    }
}

/// How the current request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body, or all of it was read.
    Done,
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, in this state.
    Chunked(Chunk),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, reading trailer lines (bytes so far).
    Trailers(u64),
}

/// Why reading a body failed, and what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Bad chunked framing: 400.
    Malformed,
    /// More than the body limit: 413.
    TooLarge,
    /// A trailer section over the header size limit: 431, like a head.
    TrailersTooLarge,
    /// The client was too slow: 408.
    Timeout,
    /// The client ended its side of the connection before the body did. It
    /// may still read: the app's answer is sent (400 if it panicked), then
    /// the connection closes.
    Eof,
    /// The socket failed (a reset): nothing to answer.
    Gone,
}

impl Fault {
    /// The status to answer with, if the client can still hear one.
    pub(crate) fn status(self) -> Option<StatusCode> {
        match self {
            Fault::Malformed => Some(StatusCode::BAD_REQUEST),
            Fault::TooLarge => Some(StatusCode::PAYLOAD_TOO_LARGE),
            Fault::TrailersTooLarge => Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Fault::Timeout => Some(StatusCode::REQUEST_TIMEOUT),
            Fault::Eof => Some(StatusCode::BAD_REQUEST),
            Fault::Gone => None,
        }
    }

    fn error(self) -> io::Error {
        match self {
            Fault::Malformed => {
                io::Error::new(io::ErrorKind::InvalidData, "malformed chunked request body")
            }
            Fault::TooLarge => {
                io::Error::new(io::ErrorKind::InvalidData, "request body over the limit")
            }
            Fault::TrailersTooLarge => io::Error::new(
                io::ErrorKind::InvalidData,
                "request trailers over the header size limit",
            ),
            Fault::Timeout => io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out reading the request body",
            ),
            Fault::Eof => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection mid-body",
            ),
            Fault::Gone => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the connection to the client failed mid-body",
            ),
        }
    }
}

/// The input side of a connection: the socket, the read buffer and the state
/// of the current request's body. Shared (behind a mutex) between the event
/// loop and the [`Body`] handed to the app.
pub(crate) struct Input {
    /// Shared, so a response is written without holding the lock: a
    /// streamed response may read the request body as it goes.
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) framing: Framing,
    /// Bumped per request, so a `Body` kept past its request reads nothing.
    pub(crate) generation: u64,
    /// `100 Continue` is owed before the first body read.
    pub(crate) continue_pending: bool,
    /// Body bytes delivered so far.
    pub(crate) received: u64,
    /// Bytes of this request's body the server dropped for an app that
    /// left them unread, across wake-ups (see [`drain`](Self::drain)).
    pub(crate) discarded: u64,
    pub(crate) max_body: u64,
    /// Most bytes of a trailer section (the header size limit).
    max_trailers: usize,
    /// Longest wait for more of a body, as [`Limits`](crate::Limits) says
    /// (capped by the heartbeat timeout).
    pub(crate) read_timeout: Duration,
    /// Longest wait for the client to take more of a response.
    pub(crate) write_timeout: Duration,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) fault: Option<Fault>,
}

impl Input {
    /// `limits` gives the sizes and the read and write timeouts.
    pub(crate) fn new(
        stream: TcpStream,
        buf_size: usize,
        limits: &crate::Limits,
        heartbeat: Heartbeat,
    ) -> Self {
        Self {
            stream: Arc::new(stream),
            buf: vec![0; buf_size],
            start: 0,
            end: 0,
            framing: Framing::Done,
            generation: 0,
            continue_pending: false,
            received: 0,
            discarded: 0,
            max_body: limits.max_body_bytes,
            max_trailers: limits.max_header_bytes,
            read_timeout: limits.read_timeout,
            write_timeout: limits.write_timeout,
            heartbeat,
            fault: None,
        }
    }

    /// The buffered, unparsed bytes.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Moves buffered bytes to the front so there is room at the end.
    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// One non-blocking read into the buffer, which may grow up to `max`
    /// bytes. Returns the bytes read (0 at end of stream); `WouldBlock` if
    /// nothing was there; `Ok` with a full buffer means no room.
    pub(crate) fn read_some(&mut self, max: usize) -> io::Result<usize> {
        self.compact();
        if self.end == self.buf.len() {
            if self.buf.len() >= max {
                return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer full"));
            }
            let grown = (self.buf.len() * 2).min(max);
            self.buf.resize(grown, 0);
        }
        // rustix's read(2), not std's recv(2) through libc: the same call
        // without libc's thread-cancellation bookkeeping around it.
        let n = rustix::io::read(&self.stream, &mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Reads at least one byte into the buffer, waiting up to the read
    /// timeout; 0 at end of stream.
    fn fill(&mut self) -> Result<usize, Fault> {
        self.fill_up_to(self.buf.len())
    }

    /// Like [`fill`](Self::fill), growing the buffer up to `cap` bytes if it
    /// is full.
    fn fill_up_to(&mut self, cap: usize) -> Result<usize, Fault> {
        if self.continue_pending {
            self.continue_pending = false;
            write_all(
                &self.stream,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                self.write_timeout,
                &self.heartbeat,
            )
            .map_err(|_| Fault::Gone)?;
        }
        // `None`: a read timeout too large for an `Instant` never expires.
        let deadline = Instant::now().checked_add(self.read_timeout);
        loop {
            match self.read_some(cap) {
                Ok(n) => {
                    if n > 0 {
                        self.heartbeat.beat();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait(&self.stream, PollFlags::IN, deadline) {
                        return Err(Fault::Timeout);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                    return Err(Fault::Malformed);
                }
                Err(_) => return Err(Fault::Gone),
            }
        }
    }

    /// Reads body bytes into `out`: 0 once the body is complete.
    pub(crate) fn read_body(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(fault) = self.fault {
            return Err(fault.error());
        }
        match self.read_body_inner(out) {
            Ok(n) => Ok(n),
            Err(fault) => {
                self.fault = Some(fault);
                Err(fault.error())
            }
        }
    }

    fn read_body_inner(&mut self, out: &mut [u8]) -> Result<usize, Fault> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.framing {
                Framing::Done => return Ok(0),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(0);
                }
                Framing::Length(rest) => {
                    let n = self.take_data(out, rest)?;
                    self.framing = Framing::Length(rest - n as u64);
                    return Ok(n);
                }
                Framing::Chunked(Chunk::Data(rest)) => {
                    let n = self.take_data(out, rest)?;
                    self.framing = Framing::Chunked(if rest == n as u64 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rest - n as u64)
                    });
                    return Ok(n);
                }
                Framing::Chunked(Chunk::Size) => {
                    let line = self.line(MAX_CHUNK_LINE, Fault::Malformed)?;
                    let size = parse_chunk_size(&self.buf[line.0..line.1])?;
                    self.framing = if size == 0 {
                        Framing::Chunked(Chunk::Trailers(0))
                    } else {
                        if self.received.saturating_add(size) > self.max_body {
                            return Err(Fault::TooLarge);
                        }
                        Framing::Chunked(Chunk::Data(size))
                    };
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    while self.end - self.start < 2 {
                        if self.fill()? == 0 {
                            return Err(Fault::Eof);
                        }
                    }
                    if &self.buf[self.start..self.start + 2] != b"\r\n" {
                        return Err(Fault::Malformed);
                    }
                    self.start += 2;
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers(seen)) => {
                    let room = (self.max_trailers as u64).saturating_sub(seen);
                    let room = usize::try_from(room).unwrap_or(usize::MAX);
                    let (from, to) = self.line(room, Fault::TrailersTooLarge)?;
                    let seen = seen + (to - from) as u64 + 2;
                    if seen > self.max_trailers as u64 {
                        return Err(Fault::TrailersTooLarge);
                    }
                    self.framing = if from == to {
                        Framing::Done
                    } else {
                        Framing::Chunked(Chunk::Trailers(seen))
                    };
                }
            }
        }
    }

    /// Copies up to `rest` body bytes into `out`, reading if none are buffered.
    fn take_data(&mut self, out: &mut [u8], rest: u64) -> Result<usize, Fault> {
        if self.start == self.end && self.fill()? == 0 {
            return Err(Fault::Eof);
        }
        let n = out
            .len()
            .min(self.end - self.start)
            .min(usize::try_from(rest).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        self.received += n as u64;
        Ok(n)
    }

    /// The next CRLF-terminated line (without the CRLF) as a buffer range,
    /// consumed from the buffer; `too_long` once `max` bytes came without
    /// one.
    fn line(&mut self, max: usize, too_long: Fault) -> Result<(usize, usize), Fault> {
        let mut searched = 0;
        loop {
            let data = &self.buf[self.start + searched..self.end];
            if let Some(i) = data.iter().position(|&b| b == b'\n') {
                let nl = self.start + searched + i;
                if nl == self.start || self.buf[nl - 1] != b'\r' {
                    return Err(Fault::Malformed);
                }
                let range = (self.start, nl - 1);
                self.start = nl + 1;
                return Ok(range);
            }
            searched = self.end - self.start;
            if searched >= max {
                return Err(too_long);
            }
            let before = self.start;
            // A line may be longer than the buffer is now (a long trailer):
            // let it grow to hold one line of `max` bytes and its CRLF.
            if self.fill_up_to(self.buf.len().max(max.saturating_add(2)))? == 0 {
                return Err(Fault::Eof);
            }
            // `fill` may have moved the buffered bytes to the front.
            debug_assert!(self.start <= before);
        }
    }

    /// Reads and discards what is left of the body, at most `max` bytes,
    /// without waiting for the client: only bytes already buffered or
    /// already in the socket count. A body nobody reads is not worth a
    /// thread's time: waiting for it would let a client that sends a head
    /// and then its body a byte at a time hold the thread for as long as it
    /// likes.
    ///
    /// `max` bounds what is dropped of one body over every call: a body
    /// still arriving can be dropped in later wake-ups of the event loop
    /// ([`Drained::Pending`]) while the connection waits like an idle one.
    pub(crate) fn drain(&mut self, max: u64) -> Drained {
        if self.fault.is_some() {
            return Drained::from_fault(self.fault);
        }
        // A zero read timeout: `fill` looks once and waits for nothing.
        let patience = std::mem::replace(&mut self.read_timeout, Duration::ZERO);
        let mut scratch = [0u8; 4096];
        let outcome = loop {
            if self.framing == Framing::Done {
                break Drained::Complete;
            }
            if self.discarded > max {
                break Drained::Incomplete;
            }
            if let Framing::Length(left) = self.framing {
                // More to come than the bound allows: the connection cannot
                // go on, and the answer can say so at once.
                if self.discarded.saturating_add(left) > max {
                    break Drained::Incomplete;
                }
            }
            match self.read_body(&mut scratch) {
                Ok(0) => break Drained::Complete,
                Ok(n) => self.discarded += n as u64,
                Err(_) if self.fault == Some(Fault::Timeout) => {
                    // Nothing more has arrived yet: not a fault of the
                    // client's, who may send the rest later.
                    self.fault = None;
                    break Drained::Pending;
                }
                Err(_) => break Drained::from_fault(self.fault),
            }
        };
        self.read_timeout = patience;
        outcome
    }
}

/// What became of a body the app left unread once the server drained it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Read to its end: the next request starts at its first byte.
    Complete,
    /// Not all there yet, and under the drain bound: the rest is dropped
    /// as it arrives, before the connection's next request is read.
    Pending,
    /// Past the drain bound, or the client ended its side: the connection
    /// cannot go on, but the answer stands.
    Incomplete,
    /// The body is bad (malformed chunks, over a limit): answered with this
    /// status instead, as if the app had read it.
    Bad(StatusCode),
}

impl Drained {
    fn from_fault(fault: Option<Fault>) -> Self {
        match fault {
            Some(f @ (Fault::Malformed | Fault::TooLarge | Fault::TrailersTooLarge)) => {
                f.status().map_or(Self::Incomplete, Self::Bad)
            }
            _ => Self::Incomplete,
        }
    }
}

/// Parses a chunk-size line: hex digits, then optional extensions.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Fault> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(Fault::Malformed);
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty() || {
        let trimmed = rest.iter().skip_while(|&&b| b == b' ' || b == b'\t');
        let first = trimmed.clone().next();
        first == Some(&b';')
            && trimmed
                .clone()
                .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b))
    };
    if !rest_ok {
        return Err(Fault::Malformed);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        size = size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
    }
    Ok(size)
}

/// Waits until `stream` is ready for `flags` or the deadline passes (`None`:
/// never); returns whether it is ready. A thread that only gets to run
/// after its deadline still looks once: a client that sent (or took) bytes
/// in time is not failed because this worker was not scheduled.
pub(crate) fn wait(stream: &TcpStream, flags: PollFlags, deadline: Option<Instant>) -> bool {
    loop {
        let ts = deadline.map(|deadline| {
            let left = deadline.saturating_duration_since(Instant::now());
            rustix::time::Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: left.subsec_nanos().into(),
            }
        });
        let mut fds = [PollFd::new(stream, flags)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "write timed out")
}

/// A response the client is not taking as fast as it is written: when the
/// writer gives up on the client, and when it tries again meanwhile.
///
/// The kernel reports a TCP socket writable only once about a third of its
/// send buffer is free again, and the send buffer grows to megabytes (on
/// loopback, at once). A client that keeps taking bytes, but fewer than that
/// within a write timeout, would never wake a writer waiting for
/// writability, and would be dropped as if it had stalled. So the writer
/// also tries again every quarter of the timeout: a write fits as soon as
/// the client has taken any bytes, and every write that fits starts the
/// timeout over. The writer gives up once a whole timeout passed in which
/// not one write fit.
#[derive(Debug)]
pub(crate) struct Stall {
    timeout: Duration,
    /// When the first write that did not fit since the last one that did
    /// was tried.
    since: Option<Instant>,
}

/// What a writer whose write did not fit does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// The client took nothing for the whole timeout.
    GiveUp,
    /// Wait for the socket to be writable until then (`None`: for as long
    /// as it takes), then try again.
    WaitUntil(Option<Instant>),
}

impl Stall {
    /// A writer that has not been blocked yet.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            since: None,
        }
    }

    /// A write fit: the client took bytes.
    pub(crate) fn progress(&mut self) {
        self.since = None;
    }

    /// A write did not fit at `now`.
    pub(crate) fn blocked(&mut self, now: Instant) -> Blocked {
        let since = *self.since.get_or_insert(now);
        // `None`: a timeout too large for an `Instant` never expires.
        let Some(deadline) = since.checked_add(self.timeout) else {
            // A timeout too large for an `Instant` never expires, so there
            // is nothing to find out early.
            return Blocked::WaitUntil(None);
        };
        if now >= deadline {
            return Blocked::GiveUp;
        }
        let probe = now.checked_add(self.timeout / 4);
        Blocked::WaitUntil(Some(probe.map_or(deadline, |p| p.min(deadline))))
    }
}

/// A write to `stream` did not fit: waits for room as `stall` says, or
/// fails with `TimedOut` once the client took nothing for its timeout.
pub(crate) fn wait_for_room(stream: &TcpStream, stall: &mut Stall) -> io::Result<()> {
    match stall.blocked(Instant::now()) {
        Blocked::GiveUp => Err(timed_out()),
        Blocked::WaitUntil(until) => {
            // Ready or not, the caller tries the write again: its outcome,
            // not the socket's writability, says whether the client took
            // bytes.
            wait(stream, PollFlags::OUT, until);
            Ok(())
        }
    }
}

/// Writes all of `data` to a non-blocking socket, giving up once the
/// client took nothing for `timeout` (see [`Stall`]); every write that
/// makes progress beats `heartbeat`.
pub(crate) fn write_all(
    stream: &TcpStream,
    data: &[u8],
    timeout: Duration,
    heartbeat: &Heartbeat,
) -> io::Result<()> {
    write_all_vectored(stream, &mut [IoSlice::new(data)], timeout, heartbeat)
}

/// Writes all of `bufs` (one `writev` when the socket takes it), with the
/// timeout and heartbeat of [`write_all`].
pub(crate) fn write_all_vectored(
    stream: &TcpStream,
    mut bufs: &mut [IoSlice<'_>],
    timeout: Duration,
    heartbeat: &Heartbeat,
) -> io::Result<()> {
    let mut stall = Stall::new(timeout);
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        // rustix's writev(2), which std would call through libc with its
        // thread-cancellation bookkeeping around it.
        match rustix::io::writev(stream, bufs).map_err(io::Error::from) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                IoSlice::advance_slices(&mut bufs, n);
                stall.progress();
                heartbeat.beat();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_for_room(stream, &mut stall)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn lock(input: &Mutex<Input>) -> MutexGuard<'_, Input> {
    input.lock().unwrap_or_else(|poison| poison.into_inner())
}

enum Inner {
    Empty,
    Bytes(io::Cursor<Vec<u8>>),
    Conn {
        input: Arc<Mutex<Input>>,
        generation: u64,
        len: Option<u64>,
    },
}

/// The body of a request, read as a stream ([`Read`]) straight from the
/// connection.
///
/// Reading stops at the end of the body (by `Content-Length` or the last
/// chunk). If the client sent `Expect: 100-continue`, the `100 Continue` goes
/// out on the first read, so an app that answers without reading never asks
/// for the body. Errors: `InvalidData` for a body over the limit (answered
/// `413` whatever the app returns), malformed chunks (`400`) or a trailer
/// section over the header size limit (`431`), `TimedOut` when the client
/// stalls longer than the read timeout (`408`), `UnexpectedEof` when the
/// client ends its side of the connection before the body is complete, and
/// `ConnectionReset` when the connection fails.
///
/// After `UnexpectedEof` the client may still be reading (it only shut down
/// its writing side), so it gets an answer: the app's own response, or `400
/// Bad Request` if the app panicked, with `Connection: close`. After
/// `ConnectionReset` nothing can be sent and the connection is closed.
///
/// Of a body not read to the end, what has already arrived is read and
/// dropped (up to [`Limits::max_drain_bytes`](crate::Limits::max_drain_bytes))
/// before the next request on the connection; if it has not all arrived,
/// the connection waits for the rest like an idle one (the keep-alive
/// timeout), dropping it as it comes, and then reads the next request:
/// the server never holds a thread for a body nobody reads, and a client
/// that sends its body in a second write (Python's `http.client`) keeps
/// its connection. A client that asked for `100 Continue` and has not sent
/// the body gets `Connection: close` instead (it may never send it). If
/// the unread rest turns out malformed or over a limit, the answer is that
/// `400`, `413` or `431` instead of the app's response (or, once the answer
/// is out, the connection closes).
pub struct Body {
    inner: Inner,
}

impl Body {
    /// A body with nothing in it.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Empty,
        }
    }

    pub(crate) fn conn(input: Arc<Mutex<Input>>, generation: u64, len: Option<u64>) -> Self {
        Self {
            inner: Inner::Conn {
                input,
                generation,
                len,
            },
        }
    }

    /// The length the client declared (`Content-Length`), if any; `None` for
    /// a chunked body.
    pub fn content_length(&self) -> Option<u64> {
        match &self.inner {
            Inner::Empty => Some(0),
            Inner::Bytes(c) => Some(c.get_ref().len() as u64),
            Inner::Conn { len, .. } => *len,
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self {
            inner: Inner::Bytes(io::Cursor::new(bytes)),
        }
    }
}

impl From<&str> for Body {
    fn from(text: &str) -> Self {
        Self::from(text.as_bytes().to_vec())
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Self::from(text.into_bytes())
    }
}

impl Read for Body {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Empty => Ok(0),
            Inner::Bytes(cursor) => cursor.read(out),
            Inner::Conn {
                input, generation, ..
            } => {
                let mut input = lock(input);
                if input.generation != *generation {
                    return Ok(0);
                }
                input.read_body(out)
            }
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("content_length", &self.content_length())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_writer_tries_again_each_quarter_and_gives_up_after_the_timeout() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut stall = Stall::new(ms(1000));
        assert_eq!(stall.blocked(t0), Blocked::WaitUntil(Some(t0 + ms(250))));
        assert_eq!(
            stall.blocked(t0 + ms(250)),
            Blocked::WaitUntil(Some(t0 + ms(500)))
        );
        // The last wait ends at the deadline, where one more try decides.
        assert_eq!(
            stall.blocked(t0 + ms(900)),
            Blocked::WaitUntil(Some(t0 + ms(1000)))
        );
        assert_eq!(stall.blocked(t0 + ms(1000)), Blocked::GiveUp);
        // A write that fits (the client took bytes) starts the timeout over.
        stall.progress();
        assert_eq!(
            stall.blocked(t0 + ms(1900)),
            Blocked::WaitUntil(Some(t0 + ms(2150)))
        );
        assert_eq!(
            stall.blocked(t0 + ms(2800)),
            Blocked::WaitUntil(Some(t0 + ms(2900)))
        );
        assert_eq!(stall.blocked(t0 + ms(2900)), Blocked::GiveUp);
    }

    #[test]
    fn a_huge_write_timeout_never_gives_up() {
        let t0 = Instant::now();
        let mut stall = Stall::new(Duration::MAX);
        assert_eq!(stall.blocked(t0), Blocked::WaitUntil(None));
        assert_eq!(
            stall.blocked(t0 + Duration::from_secs(1 << 20)),
            Blocked::WaitUntil(None)
        );
        // A zero timeout gives up at the first write that does not fit.
        assert_eq!(Stall::new(Duration::ZERO).blocked(t0), Blocked::GiveUp);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Ok(26));
        assert_eq!(parse_chunk_size(b"0"), Ok(0));
        assert_eq!(parse_chunk_size(b"10;name=value"), Ok(16));
        assert_eq!(parse_chunk_size(b"10 ;ext"), Ok(16));
        assert_eq!(parse_chunk_size(b""), Err(Fault::Malformed));
        assert_eq!(parse_chunk_size(b"-1"), Err(Fault::Malformed));
        assert_eq!(parse_chunk_size(b"0x10"), Err(Fault::Malformed));
        assert_eq!(parse_chunk_size(b"1 2"), Err(Fault::Malformed));
        assert_eq!(
            parse_chunk_size(b"ffffffffffffffffff"),
            Err(Fault::Malformed)
        );
    }
}
