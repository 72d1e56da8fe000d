//! Writing a response: head and body in as few writes as the body allows,
//! and a streamed body chunk by chunk as the app yields it. What the socket
//! does not take at once is a [`Rest`], which the caller sends as the
//! socket drains.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, IoSlice, Read};
use std::net::TcpStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Response, StatusCode, Version};

use crate::ResponseBody;
use crate::app::Kind;
use crate::body::{Heartbeat, Stall, wait_for_room, write_all};
use crate::date::DateCache;
use crate::http1::{header_line, status_line};

/// Bodies up to this size are copied behind the head and sent in one write.
const COPY_LIMIT: usize = 16 * 1024;

/// What the request asks of the response, and how to write it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reply<'a> {
    pub(crate) version: Version,
    pub(crate) head_only: bool,
    pub(crate) keep_alive: bool,
    /// Longest wait for the client to take more of the response.
    pub(crate) timeout: Duration,
    /// Beaten on every write that makes progress, and on every chunk a
    /// stream yields: a long response keeps the worker alive as long as it
    /// moves.
    pub(crate) heartbeat: &'a Heartbeat,
    /// A streamed body may stop where the socket is full and go on from
    /// the event loop ([`Rest::Stream`]); otherwise this thread writes it
    /// to its end, waiting for the client (a stream that may read the
    /// request body as it goes: see `Dispatch::settle`).
    pub(crate) stream_rest: bool,
}

/// What was sent.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) status: StatusCode,
    pub(crate) body_bytes: u64,
    /// Whether the connection may serve another request.
    pub(crate) keep_alive: bool,
    /// What of the response the socket did not take at once (a body in
    /// memory or a file): the caller sends it as the socket drains
    /// ([`send_rest`]), instead of a thread waiting on a slow reader. Boxed:
    /// rare, and `Sent` is moved on every answer.
    pub(crate) rest: Option<Box<Rest>>,
}

/// The part of a response still to send.
#[derive(Debug)]
pub(crate) enum Rest {
    /// The end of the head the socket did not take, then the body from
    /// `body_at`.
    Bytes {
        head: Vec<u8>,
        body: Cow<'static, [u8]>,
        body_at: usize,
    },
    /// `left` bytes of `file`, from its position.
    File { file: std::fs::File, left: u64 },
    /// A streamed body: the bytes made but not yet sent, then the chunks
    /// the app has not yet yielded.
    Stream(StreamBody),
}

impl Rest {
    /// Nothing is left to send.
    pub(crate) fn is_done(&self) -> bool {
        match self {
            Self::Bytes {
                head,
                body,
                body_at,
            } => head.is_empty() && *body_at >= body.len(),
            Self::File { left, .. } => *left == 0,
            Self::Stream(body) => body.is_done(),
        }
    }
}

/// A streamed body's chunks, as the app's iterator yields them.
type Chunks = Box<dyn Iterator<Item = io::Result<Vec<u8>>> + Send>;

/// Body bytes a stream sends in one go before the thread looks at its other
/// connections (a client that takes everything at once would otherwise
/// have the thread until the app's iterator ends).
const STREAM_TURN: usize = 256 * 1024;

/// How long a stream's turn on the event loop lasts at most, counted in
/// whole chunks: a chunk slow to make (a server-sent event the app waits
/// for) ends the turn once it is out, so the thread serves its other
/// connections between such chunks, not only at the stream's end; an app
/// yielding empty chunks does not keep the thread either.
const STREAM_TURN_TIME: Duration = Duration::from_millis(1);

/// A streamed body under way: its framing, what of it is made and not yet
/// sent (`lead`, `data`, `tail` in that order: the end of the head or a
/// chunk-size line, a chunk's data, its CRLF or the last chunk), and the
/// app's iterator, asked for the next chunk only once all of that is out.
pub(crate) struct StreamBody {
    chunks: Chunks,
    mode: Mode,
    /// Body bytes taken from the app so far (a chunk cut at the
    /// `Content-Length` counts what is left of it; no framing).
    total: u64,
    lead: Vec<u8>,
    data: Vec<u8>,
    tail: &'static [u8],
    /// How much of `lead`, `data` and `tail` has been sent.
    at: usize,
    /// The app's iterator is done with: once the bytes made are out, so is
    /// the body.
    ended: bool,
    /// The body ends where its framing does (`false`: the app's was longer
    /// than its `Content-Length`, and the connection closes after it).
    complete: bool,
}

impl fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamBody")
            .field("total", &self.total)
            .field("unsent", &(self.made() - self.at))
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl StreamBody {
    fn new(chunks: Chunks, mode: Mode) -> Self {
        Self {
            chunks,
            mode,
            total: 0,
            lead: Vec::new(),
            data: Vec::new(),
            tail: &[],
            at: 0,
            ended: false,
            complete: true,
        }
    }

    /// Body bytes taken from the app so far, and whether the body ends
    /// where its framing does: once [`is_done`](Self::is_done), what the
    /// access log counts and whether the connection may go on.
    pub(crate) fn outcome(&self) -> (u64, bool) {
        (self.total, self.complete)
    }

    fn made(&self) -> usize {
        self.lead.len() + self.data.len() + self.tail.len()
    }

    fn is_done(&self) -> bool {
        self.ended && self.at == self.made()
    }

    /// Sends what is made, then asks the app for chunks and sends them,
    /// until the socket is full, the body is all out, or `budget` bytes
    /// went out or (with a budget, on the event loop) [`STREAM_TURN_TIME`]
    /// passed (then the socket may have room still). Returns whether any
    /// byte went out. An `Err`: the socket failed, or the app's iterator
    /// failed or panicked, or ended short of the `Content-Length` (logged
    /// here); the connection must be reset.
    fn pump(
        &mut self,
        stream: &TcpStream,
        heartbeat: &Heartbeat,
        budget: usize,
    ) -> io::Result<bool> {
        let mut sent = 0usize;
        let turn = (budget != usize::MAX).then(Instant::now);
        loop {
            while self.at < self.made() {
                let mut at = self.at;
                let mut bufs = [IoSlice::new(&[]); 3];
                for (buf, part) in bufs
                    .iter_mut()
                    .zip([&self.lead[..], &self.data[..], self.tail])
                {
                    let skip = at.min(part.len());
                    *buf = IoSlice::new(&part[skip..]);
                    at -= skip;
                }
                // rustix's writev(2), as for every other body.
                match rustix::io::writev(stream, &bufs) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.at += n;
                        sent = sent.saturating_add(n);
                        heartbeat.beat();
                    }
                    Err(rustix::io::Errno::AGAIN) => return Ok(sent > 0),
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.lead.clear();
            self.data = Vec::new();
            self.tail = &[];
            self.at = 0;
            if self.ended || sent >= budget || turn.is_some_and(|t| t.elapsed() >= STREAM_TURN_TIME)
            {
                return Ok(sent > 0);
            }
            self.next_chunk(heartbeat)?;
        }
    }

    /// Asks the app for the next chunk and makes its bytes (or, at the
    /// iterator's end, the last chunk's).
    fn next_chunk(&mut self, heartbeat: &Heartbeat) -> io::Result<()> {
        let chunk = match catch_unwind(AssertUnwindSafe(|| self.chunks.next())) {
            Ok(None) => return self.end(),
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(e))) => {
                log::error!(target: "ufork_wsgi_like", "the app's response body failed: {e}");
                return Err(e);
            }
            Err(panic) => {
                log::error!(
                    target: "ufork_wsgi_like",
                    "the app's response body panicked: {}",
                    crate::serve::panic_message(&*panic)
                );
                return Err(broken("the response body panicked"));
            }
        };
        if chunk.is_empty() {
            return Ok(());
        }
        // A chunk is progress even before it is written; a stream that
        // yields nothing beats nothing.
        heartbeat.beat();
        let mut data = chunk;
        let yielded = data.len();
        if let Mode::Length(n) = self.mode {
            let room = usize::try_from(n.saturating_sub(self.total)).unwrap_or(usize::MAX);
            data.truncate(room);
        }
        self.total = self.total.saturating_add(data.len() as u64);
        if self.mode == Mode::Chunked {
            hex(&mut self.lead, data.len());
            self.tail = b"\r\n";
        }
        self.data = data;
        if matches!(self.mode, Mode::Length(n) if self.total == n) && self.data.len() < yielded {
            log::error!(
                target: "ufork_wsgi_like",
                "the app's response body is longer than its content-length ({}); the rest was dropped",
                self.total
            );
            self.ended = true;
            self.complete = false;
        }
        Ok(())
    }

    /// The app's iterator ended: the last chunk, or an `Err` if the body
    /// is shorter than its `Content-Length`.
    fn end(&mut self) -> io::Result<()> {
        self.ended = true;
        match self.mode {
            Mode::Chunked => self.tail = b"0\r\n\r\n",
            Mode::Length(n) if self.total != n => {
                log::error!(
                    target: "ufork_wsgi_like",
                    "the app's response body is shorter ({}) than its content-length",
                    self.total
                );
                return Err(broken(
                    "the response body is shorter than its content-length",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoBody,
    Length(u64),
    Chunked,
    UntilClose,
}

fn broken(text: &'static str) -> io::Error {
    io::Error::other(text)
}

/// Writes `response` to `stream`, using `out` as scratch space.
///
/// An `Err` means the response could not be completed — the socket failed,
/// or the body failed after the head was sent (an error or a panic of a
/// stream, a stream or a file shorter than the announced length). The
/// framing cannot tell the client so; the caller must reset the connection.
pub(crate) fn write(
    stream: &TcpStream,
    out: &mut Vec<u8>,
    date: &mut DateCache,
    response: Response<ResponseBody>,
    reply: Reply<'_>,
) -> io::Result<Sent> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    out.clear();
    status_line(out, status);
    // One pass over the app's headers: copy them out, and note the ones
    // the framing decides (the first `Content-Length`, as `get` would
    // return, and whether any `Connection` says `close`).
    let mut has_date = false;
    let mut close = false;
    let mut app_len_header = None;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            app_len_header.get_or_insert(value);
            continue;
        }
        if name == CONNECTION {
            close |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name == TRANSFER_ENCODING {
            continue;
        }
        has_date |= name == DATE;
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_date {
        out.extend_from_slice(date.line());
    }
    let mut keep_alive = reply.keep_alive && !close;
    let app_len = app_len_header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let len = match &body.kind {
        Kind::Stream(_) => app_len,
        _ => body.len(),
    };
    let mode = if no_body {
        Mode::NoBody
    } else if let Some(n) = len {
        Mode::Length(n)
    } else if reply.version == Version::HTTP_11 {
        Mode::Chunked
    } else {
        keep_alive = false;
        Mode::UntilClose
    };
    match mode {
        Mode::Length(n) => content_length(out, n),
        Mode::NoBody if status == StatusCode::NOT_MODIFIED => {
            if let Some(n) = app_len {
                content_length(out, n);
            }
        }
        Mode::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Mode::NoBody | Mode::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if reply.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    let mut sent = Sent {
        status,
        body_bytes: 0,
        keep_alive,
        rest: None,
    };
    if reply.head_only || mode == Mode::NoBody {
        sent.rest = write_some(stream, out, Cow::Borrowed(&[]), reply.heartbeat)?;
        return Ok(sent);
    }
    match body.kind {
        Kind::Empty => sent.rest = write_some(stream, out, Cow::Borrowed(&[]), reply.heartbeat)?,
        Kind::Bytes(bytes) => {
            sent.body_bytes = bytes.len() as u64;
            sent.rest = if bytes.len() <= COPY_LIMIT {
                out.extend_from_slice(&bytes);
                write_some(stream, out, Cow::Borrowed(&[]), reply.heartbeat)?
            } else {
                write_some(stream, out, bytes, reply.heartbeat)?
            };
        }
        Kind::File { file, len } => {
            if len == 0 {
                sent.rest = write_some(stream, out, Cow::Borrowed(&[]), reply.heartbeat)?;
                return Ok(sent);
            }
            send_head_more(stream, out, reply.timeout, reply.heartbeat)?;
            let mut rest = Rest::File { file, left: len };
            send_rest(stream, &mut rest, reply.timeout, reply.heartbeat)?;
            sent.body_bytes = len;
            if !rest.is_done() {
                sent.rest = Some(Box::new(rest));
            }
        }
        Kind::Stream(chunks) => {
            let body = send_stream(stream, out, chunks, mode, &reply)?;
            if body.is_done() {
                let (bytes, complete) = body.outcome();
                sent.body_bytes = bytes;
                sent.keep_alive &= complete;
            } else {
                // Bytes and whether the connection goes on are known once
                // the rest is out (`StreamBody::outcome`).
                sent.rest = Some(Box::new(Rest::Stream(body)));
            }
        }
    }
    Ok(sent)
}

/// Appends `content-length: n\r\n`, made on the stack and copied once.
fn content_length(out: &mut Vec<u8>, n: u64) {
    const NAME: &[u8] = b"content-length: ";
    let mut line = [0u8; NAME.len() + 20 + 2];
    let mut end = line.len() - 2;
    line[end..].copy_from_slice(b"\r\n");
    let mut n = n;
    loop {
        end -= 1;
        line[end] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = end - NAME.len();
    line[start..end].copy_from_slice(NAME);
    out.extend_from_slice(&line[start..]);
}

/// Sends a head that a file body follows at once, with `MSG_MORE`: the
/// kernel holds it back to go out in the same packet as the first bytes of
/// the body (with `TCP_NODELAY` on, a plain write would send it alone).
/// The next write without the flag (every `sendfile` but a partial one
/// ends so) pushes it. Waits and beats as [`write_all`].
fn send_head_more(
    stream: &TcpStream,
    mut head: &[u8],
    timeout: Duration,
    heartbeat: &Heartbeat,
) -> io::Result<()> {
    let mut stall = Stall::new(timeout);
    while !head.is_empty() {
        match rustix::net::send(stream, head, rustix::net::SendFlags::MORE) {
            Ok(n) => {
                head = &head[n..];
                stall.progress();
                heartbeat.beat();
            }
            Err(rustix::io::Errno::AGAIN) => wait_for_room(stream, &mut stall)?,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes `head` then `body` as far as the socket takes them at once (one
/// `writev` when it takes all); what it does not take is returned, for the
/// caller to send as the socket drains ([`send_rest`]).
fn write_some(
    stream: &TcpStream,
    head: &[u8],
    body: Cow<'static, [u8]>,
    heartbeat: &Heartbeat,
) -> io::Result<Option<Box<Rest>>> {
    let (mut head_at, mut body_at) = (0, 0);
    if writev_until_full(stream, head, &mut head_at, &body, &mut body_at, heartbeat)? {
        return Ok(None);
    }
    Ok(Some(Box::new(Rest::Bytes {
        head: head[head_at..].to_vec(),
        body,
        body_at,
    })))
}

/// Writes `head[*head_at..]` then `body[*body_at..]` until the socket is
/// full or all is written (then `true`), advancing both positions.
fn writev_until_full(
    stream: &TcpStream,
    head: &[u8],
    head_at: &mut usize,
    body: &[u8],
    body_at: &mut usize,
    heartbeat: &Heartbeat,
) -> io::Result<bool> {
    while *head_at < head.len() || *body_at < body.len() {
        let bufs = [
            IoSlice::new(&head[*head_at..]),
            IoSlice::new(&body[*body_at..]),
        ];
        // rustix's writev(2), without libc's cancellation bookkeeping.
        match rustix::io::writev(stream, &bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let into_head = n.min(head.len() - *head_at);
                *head_at += into_head;
                *body_at += n - into_head;
                heartbeat.beat();
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Sends what the socket takes at once of `rest` (writev(2), or sendfile(2)
/// from the file's position; a stream asks the app for chunks as the socket
/// takes them, up to [`STREAM_TURN`] bytes); returns whether any of it went
/// out. Where the file system cannot sendfile, reads and writes the whole
/// rest of a file instead, waiting for the client as [`write_all`] does.
/// An `Err`: the socket failed, the file ended before its announced
/// length, or the stream failed (see [`send_stream`]).
pub(crate) fn send_rest(
    stream: &TcpStream,
    rest: &mut Rest,
    timeout: Duration,
    heartbeat: &Heartbeat,
) -> io::Result<bool> {
    let (file, left) = match rest {
        Rest::Bytes {
            head,
            body,
            body_at,
        } => {
            let (mut head_at, body_before) = (0, *body_at);
            writev_until_full(stream, head, &mut head_at, body, body_at, heartbeat)?;
            head.drain(..head_at);
            return Ok(head_at > 0 || *body_at > body_before);
        }
        Rest::File { file, left } => (file, left),
        Rest::Stream(body) => return body.pump(stream, heartbeat, STREAM_TURN),
    };
    let mut progress = false;
    while *left > 0 {
        let count = usize::try_from((*left).min(1 << 30)).unwrap_or(1 << 30);
        match rustix::fs::sendfile(stream, &*file, None, count) {
            Ok(0) => return Err(broken("the file is shorter than its announced length")),
            Ok(n) => {
                *left -= n as u64;
                progress = true;
                heartbeat.beat();
            }
            Err(rustix::io::Errno::AGAIN) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                let mut buf = vec![0u8; 64 * 1024];
                while *left > 0 {
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = (&*file).read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(broken("the file is shorter than its announced length"));
                    }
                    write_all(stream, &buf[..n], timeout, heartbeat)?;
                    *left -= n as u64;
                    progress = true;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(progress)
}

/// Sends the `head` at once, then each chunk the app yields as it is
/// yielded (one `writev` per chunk: its chunk-size line, its data, its
/// CRLF), so a client sees every piece of a slow stream when it is made
/// (PEP 3333 forbids holding them back). With `stream_rest`, stops where
/// the socket is full (or after [`STREAM_TURN`] bytes) and returns the
/// rest, which the caller sends as the socket drains, asking the app for
/// the next chunk only once the socket took the last; otherwise waits for
/// the client, giving up once it took nothing for `timeout` (see
/// [`Stall`]). Once the body is all out, [`StreamBody::outcome`] tells
/// the bytes and whether the connection may go on. An `Err` (an error or
/// a panic from the iterator, fewer bytes than `Content-Length`, a socket
/// that failed or a client that stalled): the connection must be reset.
/// More bytes than `Content-Length` are cut off: the client has a whole
/// response, but the connection closes.
fn send_stream(
    stream: &TcpStream,
    head: &[u8],
    chunks: Chunks,
    mode: Mode,
    reply: &Reply<'_>,
) -> io::Result<StreamBody> {
    let mut body = StreamBody::new(chunks, mode);
    // The head goes out before the app is asked for its first chunk, which
    // may take a while (server-sent events, long polling).
    let (mut head_at, mut none) = (0, 0);
    if !writev_until_full(stream, head, &mut head_at, &[], &mut none, reply.heartbeat)? {
        body.lead.extend_from_slice(&head[head_at..]);
    }
    if reply.stream_rest {
        body.pump(stream, reply.heartbeat, STREAM_TURN)?;
        return Ok(body);
    }
    let mut stall = Stall::new(reply.timeout);
    loop {
        if body.pump(stream, reply.heartbeat, usize::MAX)? {
            stall.progress();
        }
        if body.is_done() {
            return Ok(body);
        }
        wait_for_room(stream, &mut stall)?;
    }
}

/// Appends `n` in hexadecimal and a CRLF: a chunk-size line.
fn hex(out: &mut Vec<u8>, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
    out.extend_from_slice(b"\r\n");
}

/// A short plain-text response with the status's reason as body, closing the
/// connection: the answer to bad input.
pub(crate) fn error_response(status: StatusCode) -> Response<ResponseBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut response = Response::new(ResponseBody::bytes(format!("{reason}\n").into_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_lines() {
        for n in [0u64, 7, 10, 14, 12345, u64::MAX] {
            let mut out = b"x".to_vec();
            content_length(&mut out, n);
            assert_eq!(out, format!("xcontent-length: {n}\r\n").as_bytes());
        }
    }

    /// Sends `body` through a socket with a small buffer, taking a little
    /// of it after each turn so that writes end at every kind of place (in
    /// the head, a size line, a chunk's data, its CRLF); returns the bytes
    /// on the wire, and what `pump` said last.
    fn through_a_small_socket(mut body: StreamBody) -> (Vec<u8>, io::Result<bool>, StreamBody) {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&ours, 4096).unwrap();
        let ours = TcpStream::from(std::os::fd::OwnedFd::from(ours));
        body.lead.extend_from_slice(b"HEAD\r\n\r\n");
        let heartbeat = Heartbeat::default();
        let mut wire = Vec::new();
        let mut buf = [0u8; 777];
        let last = loop {
            let pumped = body.pump(&ours, &heartbeat, 3000);
            if pumped.is_err() || body.is_done() {
                break pumped;
            }
            // Full, or the turn's budget spent: either way bytes are there.
            let n = io::Read::read(&mut theirs, &mut buf).unwrap();
            wire.extend_from_slice(&buf[..n]);
        };
        drop(ours);
        io::Read::read_to_end(&mut theirs, &mut wire).unwrap();
        (wire, last, body)
    }

    fn lettered(sizes: &[usize]) -> (Chunks, Vec<u8>) {
        let chunks: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![b'a' + i as u8; n])
            .collect();
        let all = chunks.concat();
        (Box::new(chunks.into_iter().map(Ok)), all)
    }

    #[test]
    fn a_stream_resumed_after_partial_writes_keeps_its_chunked_framing() {
        let (chunks, all) = lettered(&[1, 0, 5000, 70_000, 3, 0, 20_000, 16]);
        let (wire, last, body) = through_a_small_socket(StreamBody::new(chunks, Mode::Chunked));
        last.unwrap();
        assert_eq!(body.outcome(), (all.len() as u64, true));
        let mut rest = wire.strip_prefix(b"HEAD\r\n\r\n").expect("the head first");
        let mut decoded = Vec::new();
        loop {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a size line");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap(), 16)
                .expect("a hex size");
            rest = &rest[end + 2..];
            decoded.extend_from_slice(&rest[..size]);
            assert_eq!(&rest[size..size + 2], b"\r\n");
            rest = &rest[size + 2..];
            if size == 0 {
                break;
            }
        }
        assert!(rest.is_empty(), "{} bytes after the last chunk", rest.len());
        assert!(decoded == all, "{} bytes, not the stream", decoded.len());
    }

    #[test]
    fn a_resumed_stream_is_cut_at_its_length_or_fails_short_of_it() {
        let (chunks, all) = lettered(&[5000, 70_000, 3]);
        let (wire, last, body) =
            through_a_small_socket(StreamBody::new(chunks, Mode::Length(60_000)));
        last.unwrap();
        assert_eq!(body.outcome(), (60_000, false));
        assert!(wire[b"HEAD\r\n\r\n".len()..] == all[..60_000]);
        let (chunks, all) = lettered(&[5000, 70_000]);
        let (wire, last, _) = through_a_small_socket(StreamBody::new(chunks, Mode::Length(80_000)));
        assert!(last.is_err());
        assert!(wire[b"HEAD\r\n\r\n".len()..] == all[..]);
    }

    #[test]
    fn chunk_size_lines_are_hex() {
        for (n, text) in [(0, "0\r\n"), (10, "a\r\n"), (65536, "10000\r\n")] {
            let mut out = Vec::new();
            hex(&mut out, n);
            assert_eq!(out, text.as_bytes());
        }
        let mut out = Vec::new();
        hex(&mut out, usize::MAX);
        assert_eq!(out, format!("{:x}\r\n", usize::MAX).as_bytes());
    }
}
