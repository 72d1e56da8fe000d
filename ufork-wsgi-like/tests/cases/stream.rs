//! A streamed response reaches the client chunk by chunk, as the app
//! yields it.

use std::io::Read;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use ufork_wsgi_like::{Body, ResponseBody, Server};

use crate::util::{Client, addr_of, local};

/// Reads from `client` until `buf` holds `needle`; fails on EOF or when
/// the read times out (the client's read timeout is the test's patience).
pub fn read_until(client: &mut Client, buf: &mut Vec<u8>, needle: &str) {
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(buf).contains(needle) {
        let n = client
            .stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("waiting for {needle:?} after {buf:?}: {e}"));
        assert!(n > 0, "closed before {needle:?}: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A stream whose every chunk waits for the test to say the client has the
/// one before: with chunks held back in a buffer, the test would wait for
/// bytes that never come and fail at its read timeout.
fn gated(gate: Arc<Mutex<Receiver<()>>>) -> impl Iterator<Item = String> + Send {
    (1..=4).map(move |i| {
        gate.lock().unwrap().recv().expect("gate");
        format!("event {i}\n")
    })
}

/// A stream whose chunks come slowly (20 ms each to make, like events the
/// app waits for) leaves its thread to the other connections between
/// chunks: a request that came after the stream began is answered while
/// the stream goes on, not at its end.
#[test]
fn a_slow_stream_lets_its_thread_serve_others_between_chunks() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const EVENTS: usize = 40;
    let made = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&made);
    let (open, gate) = channel::<()>();
    let gate = Arc::new(Mutex::new(Some(gate)));
    let server = local(Server::builder(), move |request: Request<Body>| {
        if request.uri().path() != "/events" {
            return Response::new("hello\n".into());
        }
        let gate = gate.lock().unwrap().take().expect("one stream");
        let made = Arc::clone(&counted);
        let events = (1..=EVENTS).map(move |i| {
            if i == 1 {
                // The first event waits until the other client has asked.
                gate.recv().expect("gate");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            made.fetch_add(1, Ordering::SeqCst);
            format!("event {i}\n")
        });
        Response::new(ResponseBody::stream(events))
    });
    let mut events = Client::new(addr_of(&server));
    events.send("GET /events HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = Vec::new();
    read_until(&mut events, &mut buf, "\r\n\r\n");
    let mut other = Client::new(addr_of(&server));
    other.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    open.send(()).unwrap();
    let answer = other.read_response();
    let made_by_then = made.load(Ordering::SeqCst);
    assert_eq!(answer.status, 200);
    assert!(
        made_by_then < EVENTS,
        "the other client was answered only after all {EVENTS} events"
    );
    read_until(&mut events, &mut buf, &format!("event {EVENTS}\n"));
    read_until(&mut events, &mut buf, "\r\n0\r\n\r\n");
}

#[test]
fn each_chunk_is_on_the_wire_when_yielded_head_first() {
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let (open, gate) = channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let server = local(Server::builder(), move |_request: Request<Body>| {
            Response::new(ResponseBody::stream(gated(Arc::clone(&gate))))
        });
        let mut client = Client::new(addr_of(&server));
        client.send(format!("GET /events {version}\r\nHost: t\r\n\r\n"));
        let mut buf = Vec::new();
        // The head arrives before the app yields its first chunk.
        read_until(&mut client, &mut buf, "\r\n\r\n");
        for i in 1..=4 {
            open.send(()).unwrap();
            read_until(&mut client, &mut buf, &format!("event {i}\n"));
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        if version == "HTTP/1.1" {
            assert!(text.contains("transfer-encoding: chunked"), "{text}");
            read_until(&mut client, &mut buf, "\r\n0\r\n\r\n");
        } else {
            client.assert_closed();
        }
    }
}

/// Streams the request body back as it reads it; `/ignore` streams a
/// greeting and leaves the body unread.
fn duplex(mut request: Request<Body>) -> Response<ResponseBody> {
    if request.uri().path() == "/ignore" {
        return Response::new(ResponseBody::stream(["ignored\n"]));
    }
    let mut body = std::mem::take(request.body_mut());
    Response::new(ResponseBody::try_stream(std::iter::from_fn(move || {
        let mut buf = vec![0u8; 4096];
        match body.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok(buf))
            }
            Err(e) => Some(Err(e)),
        }
    })))
}

#[test]
fn a_streamed_response_may_read_the_request_body_as_it_goes() {
    // A server that held the connection while writing would deadlock on
    // the stream's first read and never stop: it is left behind unless
    // the test gets that far.
    let server = std::mem::ManuallyDrop::new(local(Server::builder(), duplex));
    let mut client = Client::new(addr_of(&server));
    client.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut buf = Vec::new();
    // Each piece comes back before the next is sent.
    for piece in ["one ", "two ", "three"] {
        client.send(format!("{:x}\r\n{piece}\r\n", piece.len()));
        read_until(&mut client, &mut buf, piece);
    }
    client.send("0\r\n\r\n");
    read_until(&mut client, &mut buf, "three\r\n0\r\n\r\n");
    // The connection goes on, with a body read whole or left unread.
    client.send(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
         POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
         POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(client.read_response().text(), "hello");
    assert_eq!(client.read_response().text(), "ignored\n");
    let last = client.read_response();
    assert_eq!(last.text(), "ok");
    assert!(!last.closes());
    drop(client);
    std::mem::ManuallyDrop::into_inner(server);
}

/// A client that waits for `100 Continue` before sending its body gets it
/// before a streamed answer's head, so a stream that reads the body (an
/// echo) is not left waiting for a body the client holds back.
#[test]
fn a_streamed_echo_sends_100_continue_before_its_head() {
    let server = local(Server::builder(), duplex);
    let mut client = Client::new(addr_of(&server));
    client.send(
        "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    let mut buf = Vec::new();
    read_until(&mut client, &mut buf, "\r\n\r\n");
    assert!(
        buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    client.send("hello");
    read_until(&mut client, &mut buf, "hello");
}

#[test]
fn a_streamed_echo_cut_by_the_client_resets_instead_of_ending_cleanly() {
    // Close-delimited (HTTP/1.0): only a reset tells the client the echo
    // stopped short because its body did.
    let server = local(Server::builder(), duplex);
    let mut client = Client::new(addr_of(&server));
    client.send("POST /echo HTTP/1.0\r\nContent-Length: 10\r\n\r\nabc");
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (data, end) = crate::read_to_end_or_reset(&mut client);
    let err = end.expect_err(&format!(
        "a clean end after {:?}",
        String::from_utf8_lossy(&data)
    ));
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[test]
fn a_streamed_answer_to_a_bad_body_reaches_the_client_before_the_close() {
    // The stream reads the body, swallows its error and answers whole; the
    // client's bytes after the bad chunk stay unread. Closed at once, the
    // socket would answer them with a reset that drops what of the answer
    // is still unsent (9 MB: more than the socket buffers hold). Without
    // the linger this fails most runs, not every one: the client may have
    // taken everything before the close.
    let server = local(Server::builder(), |mut request: Request<Body>| {
        let mut body = std::mem::take(request.body_mut());
        Response::new(ResponseBody::stream(std::iter::once_with(move || {
            let mut sink = Vec::new();
            let outcome = body.read_to_end(&mut sink);
            format!(
                "{}\n",
                outcome.map_or_else(|e| e.to_string(), |n| n.to_string())
            )
            .repeat(300_000)
        })))
    });
    let mut client = Client::new(addr_of(&server));
    let mut raw =
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
    raw.extend_from_slice(&[b'j'; 100_000]);
    client.send(raw);
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert!(resp.text().starts_with("malformed chunked request body\n"));
    assert_eq!(
        resp.body.len(),
        "malformed chunked request body\n".len() * 300_000
    );
}

/// Chunks of a large stream: more than the socket buffers hold.
const BIG_CHUNK: usize = 64 << 10;
const BIG_CHUNKS: usize = 256;

/// The byte at `i` of the large streams: a pattern a lost, doubled or
/// reordered piece breaks.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// The large stream's body as the client must see it.
fn big_body() -> Vec<u8> {
    (0..BIG_CHUNK * BIG_CHUNKS).map(pattern).collect()
}

/// The large stream's chunks, made as the app is asked for each (the last
/// `extra` more, past the end of the body).
fn big_chunks(extra: usize) -> impl Iterator<Item = Vec<u8>> + Send {
    (0..BIG_CHUNKS + extra).map(|c| (c * BIG_CHUNK..(c + 1) * BIG_CHUNK).map(pattern).collect())
}

/// Chunks made for `/endless` streams.
static ENDLESS_MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `/big`: the large stream, chunked; `/big-len`: with its length;
/// `/big-long`: 16 MiB announced, a chunk more yielded; `/big-short`: a
/// chunk more announced than yielded; `/big-panics` and `/big-fails`: a
/// panic or an error where the last chunk would be; `/endless`: chunks for
/// as long as it is asked for them (counted), `/forever` too (not
/// counted); anything else: hello.
fn streams(request: Request<Body>) -> Response<ResponseBody> {
    let len = (BIG_CHUNK * BIG_CHUNKS).to_string();
    let longer = (BIG_CHUNK * (BIG_CHUNKS + 1)).to_string();
    let failing = |panic: bool| {
        ResponseBody::try_stream(big_chunks(0).map(Ok).chain(std::iter::once_with(move || {
            assert!(!panic, "the stream blew up on purpose");
            Err(std::io::Error::other("the stream failed on purpose"))
        })))
    };
    let sized = |length: &str, extra| {
        Response::builder()
            .header("content-length", length)
            .body(ResponseBody::stream(big_chunks(extra)))
            .unwrap()
    };
    match request.uri().path() {
        "/big" => Response::new(ResponseBody::stream(big_chunks(0))),
        "/big-len" => sized(&len, 0),
        "/big-long" => sized(&len, 1),
        "/big-short" => sized(&longer, 0),
        "/big-panics" => Response::new(failing(true)),
        "/big-fails" => Response::new(failing(false)),
        "/forever" => Response::new(ResponseBody::stream((0..).map(|c| {
            (c * BIG_CHUNK..(c + 1) * BIG_CHUNK)
                .map(pattern)
                .collect::<Vec<u8>>()
        }))),
        "/endless" => Response::new(ResponseBody::stream((0..).map(|c| {
            ENDLESS_MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (c * BIG_CHUNK..(c + 1) * BIG_CHUNK)
                .map(pattern)
                .collect::<Vec<u8>>()
        }))),
        _ => Response::new("hello\n".into()),
    }
}

/// A client with a small receive buffer, so the server's writes stop
/// fitting soon.
fn slow_client(addr: std::net::SocketAddr) -> Client {
    let client = Client::new(addr);
    rustix::net::sockopt::set_socket_recv_buffer_size(&client.stream, 64 << 10).unwrap();
    client
}

/// A slow client that asked for `path`, and has the start of the answer:
/// the server is past the app, in the stream.
fn stream_begun(addr: std::net::SocketAddr, path: &str) -> Client {
    requests_begun(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
}

/// A slow client that sent `raw` in one write, and has the start of the
/// answer.
fn requests_begun(addr: std::net::SocketAddr, raw: impl AsRef<[u8]>) -> Client {
    let mut slow = slow_client(addr);
    slow.send(raw);
    assert!(slow.fill() > 0);
    slow
}

/// A one-thread server of [`streams`] logging each request, in Common
/// format, to a fresh file named after `name`.
fn logged_streams(name: &str) -> (ufork_wsgi_like::LocalServer, std::path::PathBuf) {
    let log = std::env::temp_dir().join(format!("ufork-wsgi-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let server = local(
        Server::builder().access_log_to(ufork_wsgi_like::AccessLog {
            format: ufork_wsgi_like::AccessFormat::Common,
            sink: ufork_wsgi_like::AccessSink::File(log.clone()),
        }),
        streams,
    );
    (server, log)
}

/// Clients that take nothing of large streams hold no serving thread: the
/// rest of each goes out from the event loop as its socket drains, the app
/// asked for the next chunk only once the socket took the last, so another
/// client of the same one-thread server is answered at once. Then the
/// streams arrive whole, in valid chunked framing, at their length or
/// ended by the close (HTTP/1.0, a FIN after the last byte, no reset),
/// what was pipelined behind one is answered after it (sent after the
/// answer began, or with the request), and the access log counts each
/// stream's body bytes once it ended.
#[test]
fn slow_readers_of_streams_hold_no_serving_thread() {
    let (server, log) = logged_streams("streams");
    let addr = addr_of(&server);
    let mut chunked = stream_begun(addr, "/big");
    chunked.send("GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut sized = requests_begun(
        addr,
        "GET /big-len HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let mut closed = requests_begun(addr, "GET /big HTTP/1.0\r\n\r\n");
    // Held by a slow reader, the thread would answer this only when the
    // write timeout (30 s) gave up on it: past this client's patience.
    assert_eq!(crate::util::get(addr, "/").text(), "hello\n");
    let big = big_body();
    let resp = chunked.read_response();
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert!(
        resp.body == big,
        "{} bytes, not the stream",
        resp.body.len()
    );
    assert_eq!(chunked.read_response().text(), "hello\n");
    let resp = sized.read_response();
    assert_eq!(resp.header("content-length"), Some(&*big.len().to_string()));
    assert!(
        resp.body == big,
        "{} bytes, not the stream",
        resp.body.len()
    );
    assert!(!resp.closes());
    assert_eq!(sized.read_response().text(), "hello\n");
    assert_eq!(sized.get("/").text(), "hello\n");
    let resp = closed.read_response();
    assert!(resp.closes(), "{:?}", resp.headers);
    assert!(
        resp.body == big,
        "{} bytes, not the stream",
        resp.body.len()
    );
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    let streams: Vec<_> = text.lines().filter(|l| l.contains("\"GET /big")).collect();
    assert_eq!(streams.len(), 3, "{text}");
    for line in streams {
        assert!(line.ends_with(&format!(" 200 {}", big.len())), "{line}");
    }
    let _ = std::fs::remove_file(&log);
}

/// Whether `client`'s connection was reset (or hung up) within `wait`.
fn reset_within(client: &Client, wait: std::time::Duration) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &client.stream,
        rustix::event::PollFlags::empty(),
    )];
    let wait = rustix::time::Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: wait.subsec_nanos().into(),
    };
    rustix::event::poll(&mut fds, Some(&wait)).unwrap() == 1
}

/// A client that stops taking an endless stream is reset once it took
/// nothing for the write timeout, as one that stops taking any other body;
/// meanwhile, and after, the thread serves others, and the app was asked
/// for no more chunks than the socket buffers held. Its access log line
/// says the answer was cut short (status 0, no bytes), as for a stream
/// that fails.
#[test]
fn a_stream_reader_that_stops_reading_is_reset_after_the_write_timeout() {
    // Long enough for another client to be served first on a loaded
    // machine, short enough for the suite.
    const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
    let log = std::env::temp_dir().join(format!("ufork-wsgi-stalled-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let server = local(
        Server::builder()
            .write_timeout(WRITE_TIMEOUT)
            .access_log_to(ufork_wsgi_like::AccessLog {
                format: ufork_wsgi_like::AccessFormat::Common,
                sink: ufork_wsgi_like::AccessSink::File(log.clone()),
            }),
        streams,
    );
    let addr = addr_of(&server);
    let mut stalled = stream_begun(addr, "/endless");
    // Answered at once, not once the thread gave up on the stalled client.
    assert_eq!(crate::util::get(addr, "/").text(), "hello\n");
    assert!(
        !reset_within(&stalled, std::time::Duration::ZERO),
        "the stalled client was reset before another was served"
    );
    // Still taking nothing, it is reset (an error on the socket, the
    // unread bytes still queued).
    assert!(reset_within(&stalled, crate::util::PATIENCE), "no reset");
    let (_, end) = crate::read_to_end_or_reset(&mut stalled);
    // Megabytes in the kernel's buffers at most, not gigabytes in memory.
    let made = ENDLESS_MADE.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        made < 1024,
        "{made} chunks made for a client that took none"
    );
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(crate::util::get(addr, "/").text(), "hello\n");
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"GET /endless "))
        .unwrap_or_else(|| panic!("no line for the stream in {text}"));
    // Common Log Format: `-` for no body bytes.
    assert!(line.ends_with(" 0 -"), "{line}");
    let _ = std::fs::remove_file(&log);
}

/// A stop while a stream goes out to a slow client lets it finish, and
/// the thread meanwhile answers the requests of the other connections it
/// holds (the last on each saying close); the slow client gets the whole
/// stream, then the answer to what it sent meanwhile, then the close.
#[test]
fn a_stop_during_a_stream_finishes_it_and_serves_others_meanwhile() {
    let server = local(Server::builder(), streams);
    let addr = addr_of(&server);
    let mut other = Client::new(addr);
    assert_eq!(other.get("/").text(), "hello\n");
    let mut slow = stream_begun(addr, "/big");
    slow.send("GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    server.stop();
    // Held by the slow client, the thread would answer this only when the
    // write timeout (30 s) gave up on it: past this client's patience.
    let resp = other.get("/");
    assert_eq!(resp.text(), "hello\n");
    assert!(resp.closes(), "{resp:?}");
    other.assert_closed();
    let resp = slow.read_response();
    assert!(
        resp.body == big_body(),
        "{} bytes, not the stream",
        resp.body.len()
    );
    let resp = slow.read_response();
    assert_eq!(resp.text(), "hello\n");
    assert!(resp.closes(), "{resp:?}");
    slow.assert_closed();
    server.join().unwrap();
}

/// A stream that fails once the socket filled (the rest went out from the
/// event loop) ends as one that fails at once: a panic, an error or fewer
/// bytes than its length reset the connection, so no client takes the
/// answer for whole; more bytes than its length are cut to it and the
/// connection closes cleanly. The access log says which were cut short
/// (status 0, no bytes), as it does for one whose client reset it.
#[test]
fn a_stream_failing_after_the_socket_filled_resets_the_connection() {
    let (server, log) = logged_streams("failing");
    let addr = addr_of(&server);
    for path in ["/big-panics", "/big-fails", "/big-short"] {
        let mut slow = stream_begun(addr, path);
        let (data, end) = crate::read_to_end_or_reset(&mut slow);
        let err = end.expect_err(&format!("{path}: a clean end after {} bytes", data.len()));
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{path}");
    }
    // A client that resets the connection mid-stream.
    let gone = stream_begun(addr, "/big-len");
    rustix::net::sockopt::set_socket_linger(&gone.stream, Some(std::time::Duration::ZERO)).unwrap();
    drop(gone);
    let mut slow = stream_begun(addr, "/big-long");
    let resp = slow.read_response();
    assert!(
        resp.body == big_body(),
        "{} bytes, not the stream",
        resp.body.len()
    );
    slow.assert_closed();
    assert_eq!(crate::util::get(addr, "/").text(), "hello\n");
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    for (path, end) in [
        ("/big-panics", " 0 -".to_owned()),
        ("/big-fails", " 0 -".to_owned()),
        ("/big-short", " 0 -".to_owned()),
        ("/big-len", " 0 -".to_owned()),
        ("/big-long", format!(" 200 {}", BIG_CHUNK * BIG_CHUNKS)),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("\"GET {path} ")))
            .unwrap_or_else(|| panic!("no line for {path} in {text}"));
        assert!(line.ends_with(&end), "{line}");
    }
    let _ = std::fs::remove_file(&log);
}

/// A recycling worker's stream that left the request body unread says
/// close (what follows an unread body is not known to be a request), and
/// the connection closes once the stream, sent from the event loop as the
/// socket drained, is all out.
#[test]
fn a_recycling_worker_closes_after_a_long_stream_that_left_the_body_unread() {
    let forked =
        crate::util::Forked::start(Server::builder().workers(1).max_requests(1, 0), streams);
    let mut slow = slow_client(forked.addr);
    slow.send("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    let resp = slow.read_response();
    assert!(resp.closes(), "{:?}", resp.headers);
    assert!(
        resp.body == big_body(),
        "{} bytes, not the stream",
        resp.body.len()
    );
    slow.assert_closed();
    assert_eq!(crate::util::get(forked.addr, "/").text(), "hello\n");
    super::drain::finish_recycled(forked);
}

/// A client that takes an endless stream as fast as it is made, so that
/// the socket never fills, does not keep the thread from its other
/// connections: a stream goes out 256 KiB at a time before they get a
/// turn.
#[test]
fn a_fast_reader_of_an_endless_stream_leaves_the_thread_to_others_too() {
    let server = local(Server::builder(), streams);
    let addr = addr_of(&server);
    let mut fast = Client::new(addr);
    fast.send("GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (begun, reading) = channel::<()>();
    let reader = std::thread::spawn({
        let done = Arc::clone(&done);
        move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut taken = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let n = fast.stream.read(&mut buf).expect("the stream goes on");
                assert!(n > 0, "the stream ended");
                taken += n;
                if taken > 1 << 20 {
                    let _ = begun.send(());
                }
            }
        }
    });
    reading.recv().expect("the stream began");
    assert_eq!(crate::util::get(addr, "/").text(), "hello\n");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(crate::util::get(addr, "/").text(), "hello\n");
}

/// A stream that holds the request's body, not all read, may read it as it
/// goes: its thread writes it to its end, waiting for the client, so the
/// worker shows busy with it until then (any other stream leaves the worker
/// idle once the socket is full). It reads the body at its end, and gets
/// all of it.
#[test]
fn a_stream_that_may_read_the_body_keeps_its_thread_to_its_end() {
    let forked = crate::util::Forked::start(
        Server::builder().workers(1),
        |mut request: Request<Body>| {
            let mut body = std::mem::take(request.body_mut());
            let last = std::iter::once_with(move || {
                let mut text = String::new();
                body.read_to_string(&mut text).unwrap();
                text.into_bytes()
            });
            Response::new(ResponseBody::stream(big_chunks(0).chain(last)))
        },
    );
    let mut slow = requests_begun(
        forked.addr,
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    // Half the stream in: past what any other stream's thread writes
    // before the event loop takes over (a turn, and what the socket buffers
    // hold), short of its end.
    let mut taken = 0;
    while taken < BIG_CHUNK * BIG_CHUNKS / 2 {
        taken += slow.fill();
    }
    let worker = crate::only_worker(&forked);
    assert_eq!(worker.state, ufork_core::WorkerState::Busy, "{worker:?}");
    let resp = slow.read_response();
    let mut expected = big_body();
    expected.extend_from_slice(b"hello");
    assert!(
        resp.body == expected,
        "{} bytes, not the stream",
        resp.body.len()
    );
    assert!(!resp.closes(), "{:?}", resp.headers);
    crate::util::eventually("the worker to be idle", || {
        crate::only_worker(&forked).state == ufork_core::WorkerState::Idle
    });
    forked.finish();
}
