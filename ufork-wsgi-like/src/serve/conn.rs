//! One connection's state machine: what its bytes and its deadline mean
//! for it, decided apart from the event loop that watches many of them and
//! from the dispatch that runs the app.
//!
//! A connection is `Fresh` (accepted, nothing received), `Head` (part of a
//! request head buffered), `Idle` (between requests), `Sending` (the rest
//! of an answer goes out as the socket drains; a stream's app is asked
//! for more as it does) or `Closing` (answered
//! and shut down for writing, draining input). Every step returns a
//! [`Next`] the event loop carries out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use super::Peer;
use super::dispatch::{Dispatch, StreamEnd};
use crate::Limits;
use crate::body::{Blocked, Drained, Framing, Input, Stall, lock};
use crate::response::{self, Rest};

/// Requests answered from one connection's buffer before others get a turn.
pub(super) const PIPELINE_BUDGET: usize = 16;
/// How long a closing connection's unread input is drained (so the kernel does
/// not answer it with a reset that destroys the response in flight).
pub(super) const LINGER: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Accepted, nothing received yet: the header timeout runs.
    Fresh,
    /// Between requests: the keep-alive timeout runs.
    Idle,
    /// Part of a request head received: the header timeout runs.
    Head,
    /// Answered but for part of the answer (a body in memory, a file, a
    /// stream), which goes out as the socket drains (the write timeout runs
    /// while the client takes nothing); nothing more is read until it is
    /// all out.
    Sending,
    /// Answered and shut down for writing; draining input until EOF.
    Closing,
}

/// What to do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    Keep,
    /// More requests are buffered: come back without waiting for input.
    Again,
    Close,
    /// Shut down writing, drain input for a while, then close.
    Linger,
    /// Close with a reset: the response in flight is incomplete.
    Abort,
    /// Part of the answer is left: come back when the socket is writable
    /// (or at the deadline) and send more ([`Conn::writable`]).
    Write,
}

/// How long a stopping worker's connections wait for a request: the drain
/// window, or less when the keep-alive timeout is shorter (a zero one turns
/// keep-alive off, and does not shorten it).
pub(super) fn stop_window(limits: &Limits) -> Duration {
    if limits.keep_alive_timeout.is_zero() {
        limits.drain_window
    } else {
        limits.drain_window.min(limits.keep_alive_timeout)
    }
}

/// `now + timeout`, or `None` (never) past what an `Instant` can hold.
pub(crate) fn deadline_after(now: Instant, timeout: Duration) -> Option<Instant> {
    now.checked_add(timeout)
}

pub(super) struct Conn {
    pub(super) input: Arc<Mutex<Input>>,
    pub(super) peer: Peer,
    pub(super) state: State,
    /// When the current state times out; `None`: never.
    pub(super) deadline: Option<Instant>,
    /// The client ended its side.
    pub(super) eof: bool,
    /// In `Sending`: the rest of the body, and what to do once it is out.
    /// Boxed: rare, and a `Conn` small enough to move without a memcpy
    /// call is cheaper on every request (callgrind: 90 instructions).
    sending: Option<Box<Sending>>,
    /// The event loop watches the socket for room to write (`Sending`),
    /// not for input.
    pub(super) watching_out: bool,
}

/// An answer being sent as the socket drains.
struct Sending {
    rest: Box<Rest>,
    stall: Stall,
    timeout: Duration,
    then: Then,
}

/// What becomes of the connection once the answer is all out.
enum Then {
    /// What the answer decided.
    Decided(Next),
    /// A stream's end decides ([`Dispatch::finish_stream`]).
    Stream(Box<StreamEnd>),
}

impl Conn {
    pub(super) fn new(input: Input, peer: Peer, limits: &Limits) -> Self {
        Self {
            input: Arc::new(Mutex::new(input)),
            peer,
            state: State::Fresh,
            deadline: deadline_after(Instant::now(), limits.header_timeout),
            eof: false,
            sending: None,
            watching_out: false,
        }
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.deadline = deadline_after(Instant::now(), timeout);
    }

    /// The worker stops: a connection waiting for a request waits at most
    /// `window` more (a request on its way is still answered); one with a
    /// request under way keeps its deadline. Returns the deadline.
    pub(super) fn drain(&mut self, now: Instant, window: Duration) -> Option<Instant> {
        if matches!(self.state, State::Fresh | State::Idle) {
            let end = deadline_after(now, window);
            self.deadline = match (self.deadline, end) {
                (Some(d), Some(e)) => Some(d.min(e)),
                (d, e) => d.or(e),
            };
        }
        self.deadline
    }

    /// Shuts down writing and drains input for [`LINGER`] before closing.
    pub(super) fn linger(&mut self, now: Instant) {
        let input = lock(&self.input);
        let _ = input.stream.shutdown(std::net::Shutdown::Write);
        drop(input);
        self.state = State::Closing;
        self.deadline = deadline_after(now, LINGER);
    }

    /// The socket is readable: reads what is there, then answers the
    /// complete requests buffered.
    pub(super) fn readable(&mut self, dispatch: &mut Dispatch<'_>, stopping: bool) -> Next {
        let max = dispatch.limits().max_header_bytes.saturating_add(1);
        {
            let mut input = lock(&self.input);
            if self.state == State::Closing {
                return drain_closing(&input.stream);
            }
            if self.state == State::Sending {
                return Next::Write;
            }
            match input.read_some(max) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Next::Keep,
                // A full buffer: the head parser answers 431 below.
                Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {}
                Err(_) => return Next::Close,
            }
        }
        self.serve_buffered(dispatch, stopping)
    }

    /// Answers the complete requests in the buffer, at most
    /// [`PIPELINE_BUDGET`] of them before other connections get a turn.
    pub(super) fn serve_buffered(&mut self, dispatch: &mut Dispatch<'_>, stopping: bool) -> Next {
        if self.state == State::Sending {
            // The answer before is still going out: the next waits.
            return Next::Write;
        }
        for _ in 0..PIPELINE_BUDGET {
            let mut input = lock(&self.input);
            if input.framing != Framing::Done {
                // The last request's app left its body unread and not all
                // of it had arrived: drop what has come before reading the
                // next request.
                match input.drain(dispatch.limits().max_drain_bytes) {
                    Drained::Complete => {}
                    Drained::Pending if !self.eof && !stopping => {
                        drop(input);
                        self.state = State::Idle;
                        self.set_timeout(dispatch.limits().keep_alive_timeout);
                        return Next::Keep;
                    }
                    _ => return Next::Close,
                }
            }
            if input.start == input.end {
                drop(input);
                if self.eof || stopping {
                    return Next::Close;
                }
                if self.state != State::Fresh {
                    self.state = State::Idle;
                    self.set_timeout(dispatch.limits().keep_alive_timeout);
                }
                return Next::Keep;
            }
            let head = match dispatch.parse(input.buffered()) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    drop(input);
                    if self.eof {
                        return Next::Close;
                    }
                    // The header timeout runs from the request's first byte
                    // (from the accept for a connection's first request,
                    // unless a stop shortened that wait to the drain window).
                    if self.state == State::Idle || (stopping && self.state == State::Fresh) {
                        self.set_timeout(dispatch.limits().header_timeout);
                    }
                    self.state = State::Head;
                    return Next::Keep;
                }
                Err(status) => {
                    drop(input);
                    let next = dispatch.reject(self, status);
                    return self.after_answer(dispatch, next);
                }
            };
            let generation = dispatch.take_head(&mut input, &head);
            drop(input);
            self.state = State::Idle;
            let next = dispatch.handle(self, head, generation, stopping);
            let next = self.after_answer(dispatch, next);
            if next != Next::Keep {
                return next;
            }
        }
        Next::Again
    }

    /// The deadline passed: a request head that is late gets 408, an answer
    /// going out is tried again (or given up on), anything else closes.
    pub(super) fn expired(&mut self, dispatch: &mut Dispatch<'_>, stopping: bool) -> Next {
        match self.state {
            State::Head => {
                let next = dispatch.reject(self, StatusCode::REQUEST_TIMEOUT);
                self.after_answer(dispatch, next)
            }
            // Time to try again whether or not the kernel called the socket
            // writable: it does only once a third of the send buffer is free,
            // and a slow reader that keeps taking bytes is not stalled.
            State::Sending => self.writable(dispatch, stopping),
            State::Fresh | State::Idle | State::Closing => Next::Close,
        }
    }

    /// An answer was written, and `then` decided: unless the socket did not
    /// take all of it, in which case the connection sends the rest as the
    /// socket drains, and does `then` after.
    #[inline(always)]
    fn after_answer(&mut self, dispatch: &mut Dispatch<'_>, then: Next) -> Next {
        let Some((rest, end)) = dispatch.take_rest() else {
            return then;
        };
        let timeout = dispatch.write_timeout();
        self.state = State::Sending;
        self.sending = Some(Box::new(Sending {
            rest,
            stall: Stall::new(timeout),
            timeout,
            then: end.map_or(Then::Decided(then), Then::Stream),
        }));
        self.blocked(dispatch)
    }

    /// A write did not fit: wait for room until the stall's next probe, or
    /// give up (a reset: the body is cut short) once the client took
    /// nothing for the write timeout.
    fn blocked(&mut self, dispatch: &mut Dispatch<'_>) -> Next {
        let Some(sending) = &mut self.sending else {
            return Next::Abort;
        };
        match sending.stall.blocked(Instant::now()) {
            Blocked::GiveUp => self.cut_short(dispatch),
            Blocked::WaitUntil(until) => {
                self.deadline = until;
                Next::Write
            }
        }
    }

    /// The rest of the answer cannot go out (the socket failed, the client
    /// stalled, a stream failed): a reset, so no client takes it for whole;
    /// a stream's access log line says so.
    fn cut_short(&mut self, dispatch: &mut Dispatch<'_>) -> Next {
        if let Some(sending) = self.sending.take() {
            if let Then::Stream(end) = &sending.then {
                dispatch.finish_stream(self, end, Err(std::io::ErrorKind::TimedOut.into()));
            }
        }
        Next::Abort
    }

    /// The socket may have room: sends what it takes of the answer's rest;
    /// once all of it is out, the connection goes on as the answer decided:
    /// kept, it is an idle connection again (what the client pipelined
    /// meanwhile is answered in order; at a stop it waits the drain window,
    /// like every idle one); closed, it lingers, so that what the client
    /// sent meanwhile does not turn the close into a reset that drops the
    /// answer's last bytes.
    pub(super) fn writable(&mut self, dispatch: &mut Dispatch<'_>, stopping: bool) -> Next {
        let input = lock(&self.input);
        let (stream, heartbeat) = (Arc::clone(&input.stream), input.heartbeat.clone());
        drop(input);
        let Some(sending) = &mut self.sending else {
            return Next::Abort;
        };
        let app_code = matches!(*sending.rest, Rest::Stream(_));
        let mut send =
            || response::send_rest(&stream, &mut sending.rest, sending.timeout, &heartbeat);
        let sent = if app_code {
            // The app's iterator runs here, asked for its next chunks.
            let line = match &sending.then {
                Then::Stream(end) => end.line(),
                Then::Decided(_) => "",
            };
            dispatch.app_code(line, send)
        } else {
            send()
        };
        match sent {
            Ok(true) => sending.stall.progress(),
            Ok(false) => {}
            Err(_) => return self.cut_short(dispatch),
        }
        if !sending.rest.is_done() {
            return self.blocked(dispatch);
        }
        let Some(Sending { rest, then, .. }) = self.sending.take().map(|s| *s) else {
            return Next::Abort;
        };
        self.state = State::Idle;
        let then = match then {
            // An answer that closes lingers (see `Dispatch::after_reply`).
            Then::Decided(Next::Close) => Next::Linger,
            Then::Decided(next) => next,
            Then::Stream(end) => {
                let outcome = match *rest {
                    Rest::Stream(body) => Ok(body.outcome()),
                    _ => Err(std::io::ErrorKind::InvalidData.into()),
                };
                dispatch.finish_stream(self, &end, outcome)
            }
        };
        let limits = dispatch.limits();
        match then {
            Next::Keep => {
                self.set_timeout(limits.keep_alive_timeout);
                if stopping {
                    self.drain(Instant::now(), stop_window(limits));
                }
                let input = lock(&self.input);
                if input.start < input.end {
                    Next::Again
                } else {
                    Next::Keep
                }
            }
            other => other,
        }
    }
}

/// Reads and drops a closing connection's input until its end.
fn drain_closing(stream: &std::net::TcpStream) -> Next {
    let mut scratch = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut &*stream, &mut scratch) {
            Ok(0) => return Next::Close,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Next::Keep,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_off_does_not_shorten_the_stop_window() {
        let window = Duration::from_secs(8);
        let limits = |keep_alive| Limits {
            drain_window: window,
            keep_alive_timeout: keep_alive,
            ..Limits::default()
        };
        assert_eq!(stop_window(&limits(Duration::ZERO)), window);
        assert_eq!(
            stop_window(&limits(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(stop_window(&limits(Duration::from_secs(60))), window);
    }
}
