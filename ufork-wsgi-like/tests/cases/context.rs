//! The app reaches its worker through the `WorkerContext` in each request.

use std::time::{Duration, Instant};

use http::{Request, Response};
use ufork_wsgi_like::{Body, ResponseBody, Server, WorkerContext};

use crate::util::{self, Client, Forked, addr_of, get, local};

const HEARTBEAT: Duration = Duration::from_millis(1500);
/// Longer than the heartbeat timeout, with margin for a loaded machine.
const LONG_REQUEST: Duration = Duration::from_millis(4000);

/// Works for `LONG_REQUEST` without reading a body, beating or not.
fn long_app(request: Request<Body>) -> Response<ResponseBody> {
    let worker = request
        .extensions()
        .get::<WorkerContext>()
        .cloned()
        .expect("a WorkerContext in every request");
    let beat = request.uri().path() == "/beat";
    match request.uri().path() {
        "/who" => Response::new(
            format!(
                "{:?} {:?} {:?}",
                worker.slot(),
                worker.generation(),
                worker.state()
            )
            .into(),
        ),
        "/beat" | "/silent" => {
            let started = Instant::now();
            // The work itself: a long computation, simulated.
            while started.elapsed() < LONG_REQUEST {
                if beat {
                    worker.heartbeat();
                    worker.set_activity("long report: working");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Response::new("finished\n".into())
        }
        _ => Response::new("hello\n".into()),
    }
}

#[test]
fn a_long_request_that_beats_survives_one_that_does_not_is_killed_and_named() {
    util::access_log();
    let forked = Forked::start(
        Server::builder().workers(1).heartbeat_timeout(HEARTBEAT),
        long_app,
    );
    let who = get(forked.addr, "/who").text();
    assert_eq!(who, "Some(0) Some(0) Some(Busy)");
    beating_lives_silent_is_killed(forked, "GET /silent?id=7 HTTP/1.1");
    let lines = util::logged("timed out");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("GET /silent?id=7 HTTP/1.1")),
        "{lines:?}"
    );
}

/// With two threads, the idle one's heartbeats do not cover for the other
/// stuck on one request: the worker is killed at the heartbeat timeout (and
/// a tenth), the request named, as with one thread; one that beats lives.
#[test]
fn a_request_stuck_on_one_of_two_threads_is_killed_at_the_heartbeat_timeout() {
    util::access_log();
    let forked = Forked::start(
        Server::builder()
            .workers(1)
            .threads(2)
            .heartbeat_timeout(HEARTBEAT),
        long_app,
    );
    beating_lives_silent_is_killed(forked, "GET /silent?id=9 HTTP/1.1");
}

/// `/beat` is answered and the worker lives; then `line` (a `/silent`
/// request) gets no response, just the end of the connection, the
/// replacement serves as a new generation, and the kill names `line`.
fn beating_lives_silent_is_killed(forked: Forked, line: &str) {
    assert_eq!(get(forked.addr, "/beat").text(), "finished\n");
    assert!(
        forked.handle.snapshot().history.is_empty(),
        "the beating worker survived"
    );
    let mut client = Client::new(forked.addr);
    client.send(format!("{line}\r\nHost: t\r\n\r\n"));
    // Killed mid-request: the client gets no response, just the end.
    let mut rest = Vec::new();
    let end = std::io::Read::read_to_end(&mut client.stream, &mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    util::eventually("the replacement to serve", || {
        get(forked.addr, "/who").text() == "Some(0) Some(1) Some(Busy)"
    });
    let outcome = forked.finish();
    let killed = outcome
        .history
        .iter()
        .find(|r| r.reason.as_str() == "timed-out")
        .unwrap_or_else(|| panic!("{:?}", outcome.history));
    assert!(killed.reason.to_string().contains(line), "{killed:?}");
}

#[test]
fn a_local_server_has_a_context_without_a_worker() {
    let server = local(Server::builder(), long_app);
    assert_eq!(get(addr_of(&server), "/who").text(), "None None None");
}

/// With two threads, a stream whose iterator gets stuck once the event loop
/// asks it for more (its first chunks went out as the answer began) gets
/// the worker killed at the heartbeat timeout too: the other thread's
/// beats do not cover for it, and the report names the stuck request.
#[test]
fn a_stream_stuck_on_one_of_two_threads_is_killed_at_the_heartbeat_timeout() {
    let forked = Forked::start(
        Server::builder()
            .workers(1)
            .threads(2)
            .heartbeat_timeout(HEARTBEAT),
        |_request: Request<Body>| {
            let chunks = (0..64)
                .map(|_| vec![b'x'; 64 << 10])
                .chain(std::iter::once_with(|| {
                    std::thread::sleep(LONG_REQUEST);
                    b"late".to_vec()
                }));
            Response::new(ResponseBody::stream(chunks))
        },
    );
    let mut client = Client::new(forked.addr);
    client.send("GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    let (data, _) = crate::read_to_end_or_reset(&mut client);
    assert!(
        !data.ends_with(b"late\r\n0\r\n\r\n"),
        "the stream ended whole: the worker lived on"
    );
    let outcome = forked.finish();
    // The report names the request whose iterator was stuck.
    assert!(
        outcome
            .history
            .iter()
            .any(|r| r.reason.as_str() == "timed-out"
                && r.reason
                    .to_string()
                    .contains("while busy (GET /stuck HTTP/1.1)")),
        "{:?}",
        outcome.history
    );
}
