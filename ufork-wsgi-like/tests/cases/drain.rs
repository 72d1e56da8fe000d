//! Worker-side drain: a stopping worker stops accepting at once, answers
//! every request it has read or that arrives on a connection it holds (with
//! `Connection: close`), and closes idle connections only after the drain
//! window.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use http::{Request, Response};
use ufork_wsgi_like::{Body, Server};

use crate::util::{Client, Forked, addr_of, get, local};

#[test]
fn a_stopping_server_answers_requests_on_held_connections_then_closes_them() {
    let (started_tx, started_rx) = sync_channel::<()>(1);
    let (proceed_tx, proceed_rx) = sync_channel::<()>(1);
    let gate: Mutex<(SyncSender<()>, Receiver<()>)> = Mutex::new((started_tx, proceed_rx));
    // Long enough that the test's steps fit in it on a loaded machine.
    let window = Duration::from_secs(8);
    let server = local(
        Server::builder()
            .drain_window(window)
            .keep_alive_timeout(window),
        move |request: Request<Body>| {
            if request.uri().path() == "/wait" {
                let gate = gate.lock().unwrap();
                gate.0.send(()).unwrap();
                gate.1.recv().unwrap();
                return Response::new("waited\n".into());
            }
            crate::app(request)
        },
    );
    let addr = addr_of(&server);
    let mut held = Client::new(addr);
    assert_eq!(held.get("/").status, 200);
    let mut late = Client::new(addr);
    assert_eq!(late.get("/").status, 200);
    let mut pipelined = Client::new(addr);
    assert_eq!(pipelined.get("/").status, 200);
    let mut silent = Client::new(addr);
    assert_eq!(silent.get("/").status, 200);
    let mut busy = Client::new(addr);
    busy.send("GET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
    started_rx.recv().unwrap();
    // While the only thread runs the app: stop, and requests arrive on
    // connections the server holds.
    server.stop();
    held.send("GET /uri HTTP/1.1\r\nHost: t\r\n\r\n");
    pipelined.send(
        "GET /one HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let stopped_at = Instant::now();
    proceed_tx.send(()).unwrap();

    // The request under way when the stop came is answered; its
    // connection is then held like any other for the drain window.
    assert_eq!(busy.read_response().text(), "waited\n");
    let resp = busy.get("/");
    assert_eq!(resp.status, 200);
    assert!(resp.closes());
    busy.assert_closed();
    let resp = held.read_response();
    assert!(resp.text().starts_with("GET /uri"), "{}", resp.text());
    assert!(resp.closes(), "{:?}", resp.headers);
    held.assert_closed();
    // Every request read is answered; only the last says close.
    let first = pipelined.read_response();
    assert_eq!(first.text(), "hello\n");
    assert!(!first.closes());
    let second = pipelined.read_response();
    assert_eq!(second.text(), "abc");
    assert!(!second.closes());
    let third = pipelined.read_response();
    assert_eq!(third.text(), "hello\n");
    assert!(third.closes());
    pipelined.assert_closed();
    // A request sent well after the stop, within the window, is answered.
    let resp = late.get("/");
    assert_eq!(resp.status, 200);
    assert!(resp.closes());
    late.assert_closed();
    // A connection with no request in the window is closed after it.
    silent.assert_closed();
    assert!(stopped_at.elapsed() >= window - Duration::from_millis(100));
    server.join().unwrap();
}

/// Stops the pool; its worker must have been recycled on the way.
pub(super) fn finish_recycled(forked: Forked) {
    let outcome = forked.finish();
    assert!(
        outcome
            .history
            .iter()
            .any(|r| r.reason == ufork_core::ExitReason::Recycled),
        "{:?}",
        outcome.history
    );
}

/// A streamed answer that never reads the request's body.
fn streamed_ignoring_body(_request: Request<Body>) -> Response<ufork_wsgi_like::ResponseBody> {
    Response::new(ufork_wsgi_like::ResponseBody::stream(std::iter::once(
        "streamed\n",
    )))
}

#[test]
fn a_recycling_worker_closes_after_a_streamed_answer_that_left_the_body_unread() {
    // The unread body is buffered when the answer goes out: it is not a
    // request behind this one, so the answer says close (it used to say
    // keep-alive, and the recycled worker closed the connection after it).
    let forked = Forked::start(
        Server::builder().workers(1).max_requests(1, 0),
        streamed_ignoring_body,
    );
    let mut client = Client::new(forked.addr);
    client.send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert!(resp.closes(), "{resp:?}");
    client.assert_closed();
    assert_eq!(get(forked.addr, "/").status, 200);
    finish_recycled(forked);
}

#[test]
fn max_requests_recycling_drains_keep_alive_connections() {
    let forked = Forked::start(Server::builder().workers(1).max_requests(4, 0), crate::app);
    // Three requests, then the fourth on another connection recycles.
    let mut idle = Client::new(forked.addr);
    for _ in 0..3 {
        let resp = idle.get("/");
        assert!(!resp.closes());
    }
    let mut last = Client::new(forked.addr);
    last.send("GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /two HTTP/1.1\r\nHost: t\r\n\r\n");
    // Both pipelined requests are answered; the last says close.
    assert!(!last.read_response().closes());
    assert!(last.read_response().closes());
    last.assert_closed();
    // The idle connection is closed after the drain window, without a byte.
    idle.assert_closed();
    assert_eq!(get(forked.addr, "/").status, 200);
    finish_recycled(forked);
}
