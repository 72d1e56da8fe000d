//! Dispatch: turning a parsed request head into a call of the app, and any
//! answer (the app's, or a rejection of bad input) into bytes on the wire
//! through one reply path that also writes the access log.

use std::io;
use std::net::TcpStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use http::{Response, StatusCode, Version};

use super::Peer;
use super::conn::{Conn, Next};
use super::worker::{WorkerShared, panic_message};
use crate::access::{AccessLogger, Entry};
use crate::app::Kind;
use crate::body::{Drained, Fault, Framing, Heartbeat, Input, lock};
use crate::date::DateCache;
use crate::response::{self, Reply, Rest, Sent};
use crate::{Body, Limits, ResponseBody, http1};

/// Room for a few typical request heads before the head buffer is reused
/// from its start (or grown, for a larger head).
const HEADS_CAPACITY: usize = 4096;

/// Per-thread scratch space and the worker it serves for.
pub(super) struct Dispatch<'w> {
    worker: &'w WorkerShared,
    /// Where complete request heads are copied for the `http::Request`s to
    /// share (see [`http1::parse`]); reused once a request is dropped.
    heads: BytesMut,
    out: Vec<u8>,
    /// The request line of the request being answered, for the activity
    /// text and the access log.
    line: String,
    date: DateCache,
    access: Option<AccessLogger>,
    /// The request's `Referer` and `User-Agent`, when the access log wants
    /// them.
    referer: Option<String>,
    user_agent: Option<String>,
    /// The worker's heartbeat, beaten while a response is written.
    heartbeat: Heartbeat,
    /// What the socket did not take at once of the last answer, for the
    /// connection to send as the socket drains (see
    /// [`take_rest`](Self::take_rest)), and for a streamed one what is
    /// left to do once it ends.
    rest: Option<(Box<Rest>, Option<Box<StreamEnd>>)>,
    /// How many more keep-alive connections to close after their next
    /// answer: this thread holds more than its share (see
    /// [`Balance::look`](super::balance::Balance::look)).
    pub(super) shed: u64,
}

/// What is left to do for a streamed answer once the event loop has sent
/// the rest of it ([`Dispatch::finish_stream`]).
pub(super) struct StreamEnd {
    status: StatusCode,
    /// The head said the connection goes on.
    keep_alive: bool,
    /// The client waited for a `100 Continue` it was not sent.
    awaited_continue: bool,
    /// The request line: the worker's activity while the stream's iterator
    /// runs, and the access log's.
    line: String,
    /// The access log's line, written when the stream ends.
    log: Option<LogLater>,
}

impl StreamEnd {
    /// The request line of the streamed answer.
    pub(super) fn line(&self) -> &str {
        &self.line
    }
}

/// An access log line put off until its answer is all out: what of it the
/// thread's scratch space held when the answer began.
struct LogLater {
    at: SystemTime,
    referer: Option<String>,
    user_agent: Option<String>,
    started: Option<Instant>,
}

/// How a response goes out.
struct Answer {
    version: Version,
    head_only: bool,
    keep_alive: bool,
    /// When the request's head was complete (for the access log).
    at: SystemTime,
    /// The worker is stopping or the client ended its side: the
    /// connection closes after this answer unless more requests are
    /// buffered behind it.
    last_unless_buffered: bool,
    /// When the answer began, for the access log's duration (`None`: no
    /// access log, so no clock read).
    started: Option<Instant>,
    /// A streamed body may go on from the event loop once the socket is
    /// full (see [`Reply::stream_rest`]).
    stream_rest: bool,
}

impl<'w> Dispatch<'w> {
    pub(super) fn new(worker: &'w WorkerShared) -> Self {
        Self {
            worker,
            heads: BytesMut::with_capacity(HEADS_CAPACITY),
            out: Vec::with_capacity(16 * 1024),
            line: String::with_capacity(256),
            date: DateCache::new(),
            access: worker
                .config
                .access_log
                .as_ref()
                .map(|(format, writer)| AccessLogger::new(*format, writer.clone())),
            referer: None,
            user_agent: None,
            heartbeat: Heartbeat::new(worker.vitals.clone()),
            rest: None,
            shed: 0,
        }
    }

    /// The rest of the last answer that the socket did not take at once,
    /// if any: the connection sends it before anything else; for a stream,
    /// then hands it back with what it became ([`finish_stream`](Self::finish_stream)).
    pub(super) fn take_rest(&mut self) -> Option<(Box<Rest>, Option<Box<StreamEnd>>)> {
        self.rest.take()
    }

    /// The write timeout answers are sent with: the configured one, capped
    /// at half the heartbeat timeout in a pre-forked worker.
    pub(super) fn write_timeout(&self) -> Duration {
        self.worker.limits.write_timeout
    }

    /// Runs app code outside a request's handling for the request `line`
    /// (see [`WorkerShared::app_code`]).
    pub(super) fn app_code<R>(&self, line: &str, work: impl FnOnce() -> R) -> R {
        self.worker.app_code(line, work)
    }

    pub(super) fn limits(&self) -> &'w Limits {
        &self.worker.config.limits
    }

    /// Parses the request head at the start of `buf` (see [`http1::parse`]).
    #[inline]
    pub(super) fn parse(&mut self, buf: &[u8]) -> Result<Option<http1::Head>, StatusCode> {
        http1::parse(buf, self.limits(), &mut self.heads)
    }

    /// Answers bad input with `status`; the connection then lingers closed.
    /// The access log names the request line if a whole one was read.
    pub(super) fn reject(&mut self, conn: &Conn, status: StatusCode) -> Next {
        let input = lock(&conn.input);
        self.line.clear();
        let buffered = input.buffered();
        let limit = self.limits().max_request_line_bytes.saturating_add(2);
        match buffered[..buffered.len().min(limit)]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(end) => {
                let line = buffered[..end]
                    .strip_suffix(b"\r")
                    .unwrap_or(&buffered[..end]);
                self.line.push_str(&String::from_utf8_lossy(line));
            }
            None => self.line.push('-'),
        }
        self.referer = None;
        self.user_agent = None;
        let answer = Answer {
            version: Version::HTTP_11,
            head_only: false,
            keep_alive: false,
            at: SystemTime::now(),
            last_unless_buffered: true,
            started: self.access.is_some().then(Instant::now),
            stream_rest: true,
        };
        let _ = self.reply(
            &input.stream,
            &conn.peer,
            response::error_response(status),
            answer,
        );
        Next::Linger
    }

    /// Runs the app on one request, whose head [`take_head`](Self::take_head)
    /// took, and writes its response; `Keep` if the connection may go on.
    pub(super) fn handle(
        &mut self,
        conn: &mut Conn,
        head: http1::Head,
        generation: u64,
        stopping: bool,
    ) -> Next {
        let started = self.access.is_some().then(Instant::now);
        self.worker.busy(&self.line);
        let answer = Answer {
            version: head.request.version(),
            head_only: head.request.method() == http::Method::HEAD,
            keep_alive: head.keep_alive && !self.limits().keep_alive_timeout.is_zero(),
            at: if self.access.is_some() {
                SystemTime::now()
            } else {
                std::time::UNIX_EPOCH
            },
            // A client that shut down its writing side may have sent
            // every request it has in mind: each one read is answered.
            last_unless_buffered: stopping || conn.eof,
            started,
            stream_rest: true,
        };
        if self.access.as_ref().is_some_and(AccessLogger::wants_agent) {
            let text = |name| {
                head.request
                    .headers()
                    .get(name)
                    .map(|v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            self.referer = text(http::header::REFERER);
            self.user_agent = text(http::header::USER_AGENT);
        }
        let body = Body::conn(Arc::clone(&conn.input), generation, head.content_length);
        let mut request = head.request.map(|()| body);
        conn.peer.insert_into(request.extensions_mut());
        request.extensions_mut().insert(self.worker.context.clone());
        let (response, panicked) = self.call_app(request);
        let next = self.settle(&conn.input, &conn.peer, response, panicked, answer);
        // Busy until the thread is done with the answer: what the socket
        // took at once (the event loop sends the rest as the client reads,
        // and asks a stream for more then); the last byte of a stream that
        // may read the request body.
        self.worker.done();
        next
    }

    /// Consumes the head from the buffer (under the lock the parse held)
    /// and sets the body's state up for the new request; returns the
    /// request's body generation.
    pub(super) fn take_head(&mut self, input: &mut Input, head: &http1::Head) -> u64 {
        let line = &input.buffered()[..head.line_len];
        self.line.clear();
        self.line
            .push_str(std::str::from_utf8(line).unwrap_or("<request line not utf-8>"));
        input.start += head.len;
        input.generation += 1;
        input.framing = head.framing;
        input.continue_pending = head.expect_continue;
        input.received = 0;
        input.discarded = 0;
        input.fault = None;
        input.generation
    }

    /// The app's response, or a 500 if it panicked (and whether it did).
    fn call_app(&self, request: http::Request<Body>) -> (Response<ResponseBody>, bool) {
        let app = &self.worker.app;
        match catch_unwind(AssertUnwindSafe(|| app.call(request))) {
            // A 1xx is an interim answer (RFC 9110 §15.2): the client would
            // wait on for the final one and take the next request's for it.
            // This server has no protocol to switch to (101) and sends its
            // own 100 Continue: an app's 1xx is its bug, answered 500.
            Ok(response) if response.status().is_informational() => {
                log::error!(
                    target: "ufork_wsgi_like",
                    "the app answered \"{}\" with {}, an interim status, as its final response; sent 500 instead",
                    self.line,
                    response.status()
                );
                (
                    response::error_response(StatusCode::INTERNAL_SERVER_ERROR),
                    false,
                )
            }
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
        }
    }

    /// Reconciles the response with what became of the request body, then
    /// writes it.
    fn settle(
        &mut self,
        conn_input: &Arc<Mutex<Input>>,
        peer: &Peer,
        mut response: Response<ResponseBody>,
        panicked: bool,
        mut answer: Answer,
    ) -> Next {
        let mut input = lock(conn_input);
        // A streamed body may read the request body as it goes (a
        // transformation of an upload): the request's body is left to it,
        // and what it leaves is seen to once it has ended.
        let streamed = matches!(response.body().kind, Kind::Stream(_));
        // The final answer is under way: a `100 Continue` now would land
        // inside it. A client still waiting for one may never send the body
        // (curl sends its next request instead): then the connection cannot
        // go on unless the body is all there.
        let mut awaited_continue = std::mem::replace(&mut input.continue_pending, false);
        if streamed && awaited_continue && input.fault.is_none() && input.framing != Framing::Done {
            // A streamed response may read the body as it goes (an echo):
            // the client that waits for `100 Continue` gets it now, before
            // the final head, or it would hold the body back until its own
            // patience ran out. A failed write fails the reply below too.
            let _ = crate::body::write_all(
                &input.stream,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                input.write_timeout,
                &input.heartbeat,
            );
            awaited_continue = false;
        }
        if let Some(fault) = input.fault {
            answer.keep_alive = false;
            match fault.status() {
                // A client that shut down its writing side may still read:
                // it gets the app's answer to the truncated body.
                Some(_) if fault == Fault::Eof && !panicked => {}
                Some(status) => response = response::error_response(status),
                None => {
                    input.generation += 1;
                    self.worker.count();
                    return Next::Close;
                }
            }
        } else if input.framing != Framing::Done && !streamed {
            // The app left part of the body unread. Drop what of it has
            // arrived, up to a bound, so the next request starts at its
            // first byte; the rest is dropped as it arrives (see
            // `Conn::serve_buffered`), never waited for by this thread. A
            // client still waiting for `100 Continue` is not asked for the
            // body now (it may have sent it anyway: then it is dropped like
            // any other), and one that has not sent it all closes.
            let drained = input.drain(self.limits().max_drain_bytes);
            let goes_on = match drained {
                Drained::Complete => true,
                Drained::Pending => !awaited_continue,
                Drained::Incomplete | Drained::Bad(_) => false,
            };
            if !goes_on {
                answer.keep_alive = false;
            }
            if let Drained::Bad(status) = drained {
                response = response::error_response(status);
            }
        }
        // A stopping worker, like one whose client ended its side, still
        // answers every request it has read: the connection stays open
        // while more are buffered behind this one, and the last one
        // answered says `Connection: close`.
        // Behind a body a streamed response may still read, what is
        // buffered is not known to be a request: the answer says close,
        // and the connection lingers while the rest of the body arrives.
        let recycling = self.worker.count();
        let body_left = streamed && input.framing != Framing::Done;
        if (answer.last_unless_buffered || recycling) && (input.start >= input.end || body_left) {
            answer.keep_alive = false;
        } else if self.shed > 0
            && answer.keep_alive
            && !streamed
            && input.start >= input.end
            && !unread_input(&input.stream)
        {
            // This thread holds more than its share: the client reconnects,
            // to a thread holding fewer. Never with a request buffered
            // behind this one, here or in the socket, which the close would
            // drop.
            self.shed -= 1;
            answer.keep_alive = false;
        }
        // A stream that may read the request body as it goes (the body is
        // not all read, and someone holds a `Body`: the connection's input
        // has an owner besides the connection) is written to its end by
        // this thread, waiting for the client as it must, as before. Run
        // from the event loop, it would block the loop in `Body::read`, a
        // blocking `Read` the app's code calls and that cannot be
        // suspended and resumed when the client sends more: the loop
        // would wait on one client's upload while looking free (the
        // worker idle, its other connections' deadlines unchecked). Any
        // other stream goes on from the loop once the socket is full.
        answer.stream_rest = !(body_left && Arc::strong_count(conn_input) > 1);
        // Written without the lock, which a streamed body's reads take.
        let stream = Arc::clone(&input.stream);
        drop(input);
        let sent = self.reply(&stream, peer, response, answer);
        if let Some((_, Some(end))) = &mut self.rest {
            // A stream goes on from the event loop: what becomes of the
            // connection is decided when it ends (`finish_stream`).
            end.awaited_continue = awaited_continue;
            return Next::Write;
        }
        self.after_reply(
            conn_input,
            streamed,
            awaited_continue,
            sent.map(|s| s.keep_alive),
        )
    }

    /// A streamed answer the event loop sent the rest of ended: `outcome`
    /// is its body bytes and whether it ended where its framing did, or
    /// the error that cut it short. Writes its access log line (the body
    /// bytes the app yielded, up to a `Content-Length`; status 0 and no
    /// bytes for an answer cut short, as for any other) and decides, as
    /// for an answer written at once, what becomes of the connection.
    pub(super) fn finish_stream(
        &mut self,
        conn: &Conn,
        end: &StreamEnd,
        outcome: io::Result<(u64, bool)>,
    ) -> Next {
        if let (Some(access), Some(log)) = (&mut self.access, &end.log) {
            let (status, bytes) = match &outcome {
                Ok((bytes, _)) => (end.status.as_u16(), *bytes),
                Err(_) => (0, 0),
            };
            access.log(&Entry {
                at: log.at,
                peer: &conn.peer,
                line: &end.line,
                status,
                bytes,
                took: log.started.map_or(Duration::ZERO, |t| t.elapsed()),
                referer: log.referer.as_deref(),
                user_agent: log.user_agent.as_deref(),
            });
        }
        let keep_alive = outcome.map(|(_, complete)| end.keep_alive && complete);
        self.after_reply(&conn.input, true, end.awaited_continue, keep_alive)
    }

    /// The answer is out (`keep_alive`: whether it lets the connection go
    /// on), or was cut short: what becomes of the connection.
    // Always inlined: on every answer's path, where a call costs more than
    // the work (callgrind).
    #[inline(always)]
    fn after_reply(
        &self,
        conn_input: &Arc<Mutex<Input>>,
        streamed: bool,
        awaited_continue: bool,
        keep_alive: io::Result<bool>,
    ) -> Next {
        let mut input = lock(conn_input);
        input.generation += 1;
        if keep_alive.is_err() {
            // Cut short: a reset, so that no client takes it for whole.
            return Next::Abort;
        }
        match input.fault {
            // The stream read a bad or cut body and ended all the same:
            // the answer is out, but the connection cannot go on. Unless
            // the socket failed, it lingers like any other closing one, so
            // the client's unread bytes do not reset the answer away.
            Some(Fault::Gone) if streamed => return Next::Close,
            Some(_) if streamed => return Next::Linger,
            _ => {}
        }
        if streamed && input.framing != Framing::Done {
            // The stream left part of the body unread: as above, but the
            // answer already went out saying nothing of a close.
            match input.drain(self.limits().max_drain_bytes) {
                Drained::Complete => {}
                Drained::Pending if !awaited_continue => {}
                _ => return Next::Linger,
            }
        }
        // An answer that closes the connection lingers: the FIN follows its
        // last byte, and what the client sent meanwhile (the next request it
        // pipelined, a body nobody read) is drained instead of turning the
        // close into a reset that drops the answer's unsent end.
        match keep_alive {
            Ok(true) => Next::Keep,
            Ok(false) => Next::Linger,
            Err(_) => Next::Abort,
        }
    }

    /// The one reply path: writes `response` and logs it.
    fn reply(
        &mut self,
        stream: &TcpStream,
        peer: &Peer,
        response: Response<ResponseBody>,
        answer: Answer,
    ) -> io::Result<Sent> {
        let reply = Reply {
            version: answer.version,
            head_only: answer.head_only,
            keep_alive: answer.keep_alive,
            timeout: self.worker.limits.write_timeout,
            heartbeat: &self.heartbeat,
            stream_rest: answer.stream_rest,
        };
        let mut sent = response::write(stream, &mut self.out, &mut self.date, response, reply);
        if let Some(rest) = sent.as_mut().ok().and_then(|s| s.rest.take()) {
            if let (Rest::Stream(_), Ok(s)) = (&*rest, &sent) {
                // Logged once the stream ends: its length is not known
                // before.
                let end = Box::new(StreamEnd {
                    status: s.status,
                    keep_alive: s.keep_alive,
                    awaited_continue: false,
                    line: self.line.clone(),
                    log: self.access.is_some().then(|| LogLater {
                        at: answer.at,
                        referer: self.referer.take(),
                        user_agent: self.user_agent.take(),
                        started: answer.started,
                    }),
                });
                self.rest = Some((rest, Some(end)));
                return sent;
            }
            self.rest = Some((rest, None));
        }
        if let Some(access) = &mut self.access {
            let (status, bytes) = match &sent {
                Ok(s) => (s.status.as_u16(), s.body_bytes),
                Err(_) => (0, 0),
            };
            access.log(&Entry {
                at: answer.at,
                peer,
                line: &self.line,
                status,
                bytes,
                took: answer.started.map_or(Duration::ZERO, |t| t.elapsed()),
                referer: self.referer.as_deref(),
                user_agent: self.user_agent.as_deref(),
            });
        }
        sent
    }
}

/// Whether the client sent bytes not read yet (the next request, on its
/// way in the socket's buffer).
fn unread_input(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    matches!(rustix::net::recv(stream, &mut byte, flags), Ok((n, _)) if n > 0)
}
