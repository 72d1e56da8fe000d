//! A synchronous HTTP/1.1 adapter: an app is a function of a request, served
//! by pre-forked workers that [ufork-core](ufork_core) supervises — the Rust
//! analogue of a WSGI app under a pre-forking server.
//!
//! An [`App`] is any `Fn(Request<Body>) -> Response<ResponseBody>` over the
//! [`http`] crate's types. [`Body`] streams the request body from the socket;
//! [`ResponseBody`] is bytes, a file, or an iterator of chunks. The listening
//! socket is bound in the arbiter before the fork and inherited by every
//! worker (or bound per worker with `SO_REUSEPORT`); each worker thread runs
//! an event loop over its connections and calls the app synchronously for
//! each complete request.
//!
//! # Examples
//!
//! The one-call entry point, serving until Ctrl-C or SIGTERM:
//!
//! ```no_run
//! use http::{Request, Response};
//! use ufork_wsgi_like::{Body, ResponseBody};
//!
//! fn app(request: Request<Body>) -> Response<ResponseBody> {
//!     Response::new(format!("you asked for {}\n", request.uri().path()).into())
//! }
//!
//! # fn main() -> Result<(), ufork_wsgi_like::Error> {
//! ufork_wsgi_like::serve("127.0.0.1:8000", app, 4)?;
//! # Ok(())
//! # }
//! ```
//!
//! The full builder, with a handle to stop the server from another thread:
//!
//! ```no_run
//! use std::io::Read;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use ufork_wsgi_like::{Body, ResponseBody, Server};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .bind("0.0.0.0:8000")
//!     .workers(4)
//!     .threads(2)
//!     .max_body_bytes(1 << 20)
//!     .header_timeout(Duration::from_secs(5))
//!     .max_requests(10_000, 1_000)
//!     .access_log(true)
//!     .graceful_timeout(Duration::from_secs(10))
//!     .build(|mut request: Request<Body>| {
//!         let mut text = String::new();
//!         match request.body_mut().read_to_string(&mut text) {
//!             Ok(_) => Response::new(ResponseBody::from(text)),
//!             Err(e) => Response::builder().status(400).body(e.to_string().into()).unwrap(),
//!         }
//!     })?;
//! let handle = server.handle();
//! std::thread::spawn(move || {
//!     std::thread::sleep(Duration::from_secs(60));
//!     handle.stop();
//! });
//! let outcome = server.run()?;
//! println!("stopped: {:?}", outcome.cause);
//! # Ok(())
//! # }
//! ```
//!
//! # Protocol
//!
//! HTTP/1.0 and 1.1 parsed with httparse: keep-alive (`Connection: close`,
//! and HTTP/1.0's `Connection: keep-alive`), pipelined requests answered in
//! order, chunked request bodies, `Expect: 100-continue` (answered on the
//! app's first body read), `HEAD` (headers of the `GET`, no body),
//! origin-form and absolute-form targets, `OPTIONS *` (no tunnels: a
//! `CONNECT` gets 501 and never reaches the app, whose 2xx would tell the
//! client a tunnel is open). Responses carry `Date` and either
//! `Content-Length` or chunked encoding. Bad input gets its status and a
//! closed connection: malformed → 400, an HTTP/1.1 request without `Host`
//! or any request with several `Host`s or an invalid one → 400 (RFC 9112
//! §3.2; an absolute-form target's authority wins over `Host`), a request
//! target with raw bytes outside visible ASCII, a `#fragment` or user
//! information (`user:pass@host`) → 400 (RFC 9112 §3.2, RFC 9110 §4.2.4), request
//! line (so its target) too long → 414, head too large or too many headers →
//! 431, body too large → 413, `Content-Length` with `Transfer-Encoding` or
//! differing `Content-Length`s or bad chunk sizes → 400, an HTTP version other
//! than 1.x → 505, a head not complete within the header timeout → 408. See
//! [`Limits`]. A client that ends its side of the connection before its
//! body is complete still gets an answer before the close: the app's own
//! response to the `UnexpectedEof` its body read returned, or 400 if the app
//! panicked (see [`Body`]).
//!
//! # Serving model
//!
//! Each worker thread owns an epoll set with the listeners, the stop
//! descriptors and its open connections (level-triggered). A connection whose
//! buffered bytes form a complete request is served at once and
//! synchronously: the app runs, the response is written (head and small body
//! in one write; a stream's head at once, then each chunk as it is
//! yielded), and the loop goes on to the next ready connection. An idle
//! keep-alive connection costs a slot in the set, not a thread, so one thread
//! serves many keep-alive clients in turn instead of one to its end. The
//! worker heartbeats on every wake-up (an idle one wakes every third of the
//! heartbeat timeout, for nothing else) and on every bit of progress while
//! reading a body or writing a response, so a long download keeps it alive
//! while the client takes bytes; a client that stalls is dropped after the write timeout. It
//! marks itself busy with the request line as activity from a complete
//! request head until the thread is done with its response (what the socket
//! did not take at once goes out from the event loop, the worker idle
//! meanwhile), and counts requests. The
//! app reaches its worker (heartbeat, activity, busy/idle, slot,
//! generation) through the [`WorkerContext`] in every request's
//! extensions.
//!
//! On SIGTERM (a graceful stop or a rolling restart) and on reaching
//! `max_requests`, a worker stops accepting at once and drains what it
//! holds: it answers every request it has read or that arrives on a
//! connection it holds, the last on each connection with `Connection:
//! close`, and closes a connection only once it has answered everything it
//! read from it and, for an idle one, after [`Limits::drain_window`] with
//! no request. Then it exits.
//!
//! # Limitations
//!
//! - Linux only (epoll, and ufork-core's pidfds).
//! - While the app runs (and while a stream's iterator makes its next
//!   chunk), its thread serves nothing else: a slow app needs more workers
//!   or [`Builder::threads`]. Of every response body, in memory, a file
//!   ([`ResponseBody::file`], so every [`static_files`] answer) or a stream
//!   ([`ResponseBody::stream`]), what the socket does not take at once is
//!   sent by the event loop as the client reads, the thread serving others
//!   meanwhile; a stream is asked for its next chunk only once the socket
//!   took the last, and after a chunk that took over a millisecond to make
//!   (an event the app waited for) the thread serves its other connections
//!   before it asks for the next. The access log counts a body's length when the answer
//!   starts, a stream's bytes (not its chunked framing) when it ends, or
//!   status 0 and no bytes for a stream cut short (it failed, or its
//!   client reset or stopped taking it). The exception is a stream
//!   that may read the request body as it goes (the iterator holds the
//!   request's [`Body`], not all read): its thread writes it to its end,
//!   waiting for the client. A connection stays with the
//!   thread that accepted it. The same holds for a request body the app
//!   reads: [`Limits::read_timeout`] bounds each wait for more of it, not
//!   the whole body, so a client that trickles a byte now and then holds
//!   the thread for as long as the app reads (a body the app leaves unread
//!   is never waited for). Put a buffering proxy in front to take slow
//!   uploads off the workers.
//! - No HTTP/2, no TLS, no `Upgrade` (WebSocket), no trailers in responses;
//!   request trailers are read and dropped (a trailer section over
//!   [`Limits::max_header_bytes`] gets 431).
//! - With `reuse_port`, connections queued on a worker's socket when that
//!   worker exits are reset.
//! - Load on the shared listener is balanced by open connections, not by
//!   busy time: idle threads take new connections in turn, and a thread
//!   holding clearly more than the mean of every thread's connections (a
//!   count kept in a table shared by the workers) stands aside for 1–2 ms,
//!   so a burst (64 keep-alive connections opened at once) spreads evenly.
//!   A connection that arrives while every thread holding fewer is busy in
//!   a long request can wait those 1–2 ms for a thread that stands aside.
//!   Keep-alive connections already held are moved too: a thread holding
//!   clearly more than the mean (the survivor that took the connections of
//!   a worker that exited, before its replacement was up) while it has
//!   more work than it can do answers the next requests on its excess
//!   connections with `Connection: close`, looking at most every 2 ms while
//!   it works, so their clients reconnect to the threads holding fewer.
//!   Never on a connection with a request behind the answer (read, or in
//!   the socket), nor under a light load (a thread that sleeps a third of
//!   the time or more); while what it shed keeps coming back (the others
//!   busy), it looks less often, down to once a second. A client must
//!   expect a keep-alive connection to close after any answer that says
//!   `Connection: close`, as HTTP/1.1 allows.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod access;
mod app;
mod body;
mod context;
mod date;
mod error;
mod http1;
mod response;
mod serve;
mod server;
pub mod static_files;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use access::{AccessFormat, AccessLog, AccessSink};
pub use app::{App, ResponseBody};
pub use body::Body;
pub use context::WorkerContext;
pub use error::{Error, Result};
pub use server::{Builder, DEFAULT_HEARTBEAT_TIMEOUT, Limits, LocalServer, Server, serve};

/// The client's address, in every request's extensions (beside the
/// [`WorkerContext`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// For a request that came in on a unix-domain socket (see
/// [`Builder::unix_listener`]), that socket's path, in the request's
/// extensions instead of a [`PeerAddr`]: a unix client has no address of its
/// own worth naming. The access log names such a client `unix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixSocketPath(pub Arc<Path>);

/// The built-in hello app: `Hello, world!` as plain text, for any request.
pub fn hello(_request: http::Request<Body>) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(ResponseBody::from("Hello, world!\n"));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
