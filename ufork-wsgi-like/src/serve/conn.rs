//! One connection's state machine: what its bytes and its deadline mean
//! for it, decided apart from the event loop that watches many of them and
//! from the dispatch that runs the app.
//!
//! A connection is `Fresh` (accepted, nothing received), `Head` (part of a
//! request head buffered), `Idle` (between requests) or `Closing` (answered
//! and shut down for writing, draining input). Every step returns a
//! [`Next`] the event loop carries out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use super::Peer;
use super::dispatch::Dispatch;
use crate::Limits;
use crate::body::{Drained, Framing, Input, lock};

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
}

impl Conn {
    pub(super) fn new(input: Input, peer: Peer, limits: &Limits) -> Self {
        Self {
            input: Arc::new(Mutex::new(input)),
            peer,
            state: State::Fresh,
            deadline: deadline_after(Instant::now(), limits.header_timeout),
            eof: false,
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
                    return dispatch.reject(self, status);
                }
            };
            let generation = dispatch.take_head(&mut input, &head);
            drop(input);
            self.state = State::Idle;
            let next = dispatch.handle(self, head, generation, stopping);
            if next != Next::Keep {
                return next;
            }
        }
        Next::Again
    }

    /// The deadline passed: a request head that is late gets 408, anything
    /// else closes.
    pub(super) fn expired(&mut self, dispatch: &mut Dispatch<'_>) -> Next {
        match self.state {
            State::Head => dispatch.reject(self, StatusCode::REQUEST_TIMEOUT),
            State::Fresh | State::Idle | State::Closing => Next::Close,
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
