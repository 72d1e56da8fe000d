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
