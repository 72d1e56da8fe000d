//! A request body the app leaves unread: dropped when it is all there,
//! never waited for, and answered with its own status when it is bad.

use std::time::Duration;

use ufork_wsgi_like::Server;

use crate::rejected;
use crate::util::{addr_of, exchange, get, local};

#[test]
fn an_unread_body_that_has_not_arrived_is_not_waited_for() {
    // No read timeout and one thread: a server that waited for the body
    // would wait for as long as the client holds it back (a byte a second
    // keeps any read timeout from firing), serving no one else; this
    // client's read would then fail at its own patience.
    let server = local(
        Server::builder().threads(1).read_timeout(Duration::MAX),
        crate::app,
    );
    let addr = addr_of(&server);
    for (head, rest) in [
        (
            "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n".to_owned(),
            "x".repeat(100),
        ),
        (
            "POST /ignore HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
                .to_owned(),
            "cde\r\n0\r\n\r\n".to_owned(),
        ),
    ] {
        let (resp, mut held) = exchange(addr, &head);
        assert_eq!(resp.text(), "ignored\n");
        // The thread is free while that client still holds its body back.
        assert_eq!(get(addr, "/").status, 200);
        // The rest is dropped when it comes, and the connection goes on.
        assert!(!resp.closes(), "a body on its way keeps the connection");
        held.send(format!("{rest}GET /uri HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert!(held.read_response().text().starts_with("GET /uri"));
    }
    // A body sent with its head is dropped and the connection goes on.
    let (resp, mut client) = exchange(
        addr,
        "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert!(!resp.closes());
    assert_eq!(client.get("/").text(), "hello\n");
}

/// Python's `http.client` (and `requests` for larger bodies) sends a head
/// and its body in two writes: an app that answers before the body arrives
/// must not cost the client its connection.
#[test]
fn a_body_sent_after_the_head_keeps_the_connection_when_the_app_ignores_it() {
    let server = local(Server::builder(), crate::app);
    let mut client = crate::util::Client::new(addr_of(&server));
    for _ in 0..5 {
        client.send("POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
        let resp = client.read_response();
        assert_eq!(resp.text(), "ignored\n");
        assert!(!resp.closes());
        client.send("y".repeat(1000));
    }
    assert!(client.get("/uri").text().starts_with("GET /uri"));
}

/// The rest of an ignored body that turns out malformed after the answer
/// went out cannot be answered any more: the connection closes, and what
/// follows it is never taken for a request.
#[test]
fn an_unread_rest_found_malformed_after_the_answer_closes_the_connection() {
    let server = local(Server::builder(), crate::app);
    let mut client = crate::util::Client::new(addr_of(&server));
    client.send("POST /ignore HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    let resp = client.read_response();
    assert_eq!(resp.text(), "ignored\n");
    assert!(!resp.closes(), "the rest may still come: {resp:?}");
    client.send("lo\r\nnot-hex\r\n\r\nGET /uri HTTP/1.1\r\nHost: t\r\n\r\n");
    client.assert_closed();
}

/// A client that waits for `100 Continue` and gets the final answer instead
/// may never send the body (curl sends its next request): the connection
/// closes rather than take that request for the body.
#[test]
fn a_body_awaiting_100_continue_that_the_app_ignores_closes_the_connection() {
    let server = local(Server::builder(), crate::app);
    let (resp, mut client) = exchange(
        addr_of(&server),
        "POST /ignore HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "the final answer, no 100 first");
    assert!(resp.closes());
    client.assert_closed();
}

#[test]
fn an_unread_body_that_is_malformed_or_too_large_gets_its_status() {
    let server = local(
        Server::builder().max_body_bytes(1000).max_header_bytes(200),
        crate::app,
    );
    let head = "POST /ignore HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    let long_trailer = format!("0\r\nX: {}\r\n\r\n", "a".repeat(300));
    for (body, status) in [
        ("ffffffffffffffff1\r\nabc\r\n0\r\n\r\n", 400),
        ("-3\r\nabc\r\n0\r\n\r\n", 400),
        ("0x3\r\nabc\r\n0\r\n\r\n", 400),
        ("3\r\nabcXX0\r\n\r\n", 400),
        ("3\nabc\n0\n\n", 400),
        ("1000\r\nabc", 413),
        (&long_trailer, 431),
    ] {
        rejected(&server, format!("{head}{body}"), status);
    }
}

#[test]
fn an_unread_body_sent_without_waiting_for_100_continue_is_dropped() {
    let server = local(Server::builder(), crate::app);
    let mut client = crate::util::Client::new(addr_of(&server));
    client.send(
        "POST /ignore HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd\
         GET /uri HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let resp = client.read_response();
    assert_eq!(resp.status, 200, "the final answer, no 100 first");
    assert_eq!(resp.text(), "ignored\n");
    assert!(!resp.closes());
    assert!(client.read_response().text().starts_with("GET /uri"));
}
