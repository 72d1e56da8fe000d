//! Integration tests against real sockets: the protocol on an in-process
//! server (threads, no fork), then the pre-forked server end to end.

mod cases;
mod util;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use ufork_wsgi_like::static_files::StaticFiles;
use ufork_wsgi_like::{Body, PeerAddr, ResponseBody, Server};
use util::{Client, Forked, PATIENCE, addr_of, exchange, get, local};

/// The app most tests talk to: its path picks a behaviour.
pub(crate) fn app(mut request: Request<Body>) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/echo" => {
            let mut body = Vec::new();
            match request.body_mut().read_to_end(&mut body) {
                Ok(_) => Response::new(body.into()),
                Err(e) => Response::builder()
                    .status(StatusCode::UNPROCESSABLE_ENTITY)
                    .body(e.to_string().into())
                    .unwrap(),
            }
        }
        "/count" => match std::io::copy(request.body_mut(), &mut std::io::sink()) {
            Ok(n) => Response::new(n.to_string().into()),
            Err(e) => Response::builder()
                .status(StatusCode::UNPROCESSABLE_ENTITY)
                .body(e.to_string().into())
                .unwrap(),
        },
        "/ignore" => Response::new("ignored\n".into()),
        "/spin" => {
            // A millisecond of CPU.
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1) {
                std::hint::spin_loop();
            }
            Response::new("spun\n".into())
        }
        "/panic" => panic!("the app blew up on purpose"),
        "/uri" => Response::new(
            format!(
                "{} {} {:?} peer={}",
                request.method(),
                request.uri(),
                request.version(),
                request.extensions().get::<PeerAddr>().is_some()
            )
            .into(),
        ),
        "/stream" => Response::new(ResponseBody::stream(vec![
            "hello ",
            "",
            "streaming ",
            "world",
        ])),
        "/stream-len" => Response::builder()
            .header("content-length", "11")
            .body(ResponseBody::stream(vec!["hello", " ", "world"]))
            .unwrap(),
        "/big" => Response::new(vec![b'x'; 100 * 1024].into()),
        "/no-content" => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(ResponseBody::empty())
            .unwrap(),
        "/slow" => {
            std::thread::sleep(Duration::from_millis(300));
            Response::new("slow done\n".into())
        }
        "/close" => Response::builder()
            .header("connection", "close")
            .body("bye\n".into())
            .unwrap(),
        _ => Response::new("hello\n".into()),
    }
}

const THIS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tests.rs");

pub(crate) fn test_server() -> ufork_wsgi_like::LocalServer {
    local(Server::builder(), app)
}

// ---------------------------------------------------------------- protocol

#[test]
fn keep_alive_serves_several_requests_with_date_and_length() {
    let server = test_server();
    let mut client = Client::new(addr_of(&server));
    for _ in 0..3 {
        let resp = client.get("/");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "hello\n");
        assert_eq!(resp.header("content-length"), Some("6"));
        let date = resp.header("date").expect("date header");
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
        assert!(!resp.closes());
    }
}

#[test]
fn connection_close_is_honoured() {
    let server = test_server();
    let (resp, mut client) = exchange(
        addr_of(&server),
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert!(resp.closes());
    client.assert_closed();
    // The app can ask for it too.
    let mut client = Client::new(addr_of(&server));
    let resp = client.get("/close");
    assert!(resp.closes());
    client.assert_closed();
}

#[test]
fn http10_closes_unless_keep_alive() {
    let server = test_server();
    let (resp, mut client) = exchange(addr_of(&server), "GET / HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    client.assert_closed();

    let mut client = Client::new(addr_of(&server));
    for _ in 0..2 {
        client.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let resp = client.read_response();
        assert_eq!(resp.text(), "hello\n");
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = test_server();
    let mut client = Client::new(addr_of(&server));
    let mut raw = String::new();
    for i in 0..20 {
        raw.push_str(&format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\nbody {i}",
            format!("body {i}").len()
        ));
    }
    raw.push_str("GET /uri HTTP/1.1\r\nHost: t\r\n\r\n");
    client.send(raw);
    for i in 0..20 {
        assert_eq!(client.read_response().text(), format!("body {i}"));
    }
    assert!(client.read_response().text().starts_with("GET /uri"));
}

#[test]
fn chunked_request_body_is_decoded() {
    let server = test_server();
    let (resp, mut client) = exchange(
        addr_of(&server),
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello 0123456789");
    // The connection is still in step.
    assert_eq!(client.get("/").text(), "hello\n");
}

#[test]
fn expect_100_continue_is_sent_on_first_read() {
    let server = test_server();
    let mut client = Client::new(addr_of(&server));
    client.send(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = client.read_response_to(true);
    assert_eq!(interim.status, 100);
    client.send("ping");
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ping");
    assert_eq!(client.get("/").status, 200);
}

#[test]
fn expect_100_continue_is_not_sent_when_the_body_is_not_read() {
    let server = test_server();
    let (resp, mut client) = exchange(
        addr_of(&server),
        "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "the final answer, not 100");
    assert!(
        resp.closes(),
        "the body never came, so the connection cannot go on"
    );
    client.assert_closed();
}

#[test]
fn head_has_the_length_and_no_body() {
    let server = test_server();
    let mut client = Client::new(addr_of(&server));
    for path in ["/", "/big", "/stream-len"] {
        client.send(format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        let head = client.read_response_to(true);
        assert_eq!(head.status, 200);
        let get = client.get(path);
        assert_eq!(
            head.header("content-length").map(str::to_owned),
            Some(get.body.len().to_string()),
            "{path}"
        );
    }
}

#[test]
fn absolute_and_origin_form_targets() {
    let server = test_server();
    let resp = exchange(
        addr_of(&server),
        "GET http://example.com:8080/uri?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
    )
    .0;
    assert_eq!(
        resp.text(),
        "GET http://example.com:8080/uri?x=1 HTTP/1.1 peer=true"
    );
    let resp = get(addr_of(&server), "/uri?y=2");
    assert_eq!(resp.text(), "GET /uri?y=2 HTTP/1.1 peer=true");
}

#[test]
fn response_bodies_bytes_file_and_streams() {
    let server = local(Server::builder(), |request: Request<Body>| {
        if request.uri().path() == "/file" {
            let file = std::fs::File::open(THIS_FILE).unwrap();
            Response::new(ResponseBody::file(file).unwrap())
        } else {
            app(request)
        }
    });
    let addr = addr_of(&server);
    let mut client = Client::new(addr);
    let resp = client.get("/file");
    assert_eq!(resp.body, std::fs::read(THIS_FILE).unwrap());
    assert_eq!(
        resp.header("content-length").map(str::to_owned),
        Some(resp.body.len().to_string())
    );

    let resp = client.get("/stream");
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.text(), "hello streaming world");

    let resp = client.get("/stream-len");
    assert_eq!(resp.header("content-length"), Some("11"));
    assert_eq!(resp.text(), "hello world");

    let resp = client.get("/big");
    assert_eq!(resp.body.len(), 100 * 1024);

    let resp = client.get("/no-content");
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(client.get("/").text(), "hello\n");

    // HTTP/1.0 cannot take chunks: the body ends with the connection.
    let (resp, mut client) = exchange(addr, "GET /stream HTTP/1.0\r\n\r\n");
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.text(), "hello streaming world");
    client.assert_closed();
}

/// Reads to the end of the connection: the bytes, and how it ended.
fn read_to_end_or_reset(client: &mut Client) -> (Vec<u8>, std::io::Result<()>) {
    let mut data = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match client.stream.read(&mut chunk) {
            Ok(0) => return (data, Ok(())),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (data, Err(e)),
        }
    }
}

/// A body that fails after the head was sent cannot be reported through
/// close-delimited or `Content-Length` framing: the connection is reset, so
/// the client cannot mistake the truncated body for a whole one.
#[test]
fn a_body_failing_midway_resets_the_connection() {
    util::access_log();
    let short_file = std::env::temp_dir().join(format!("ufork-wsgi-short-{}", std::process::id()));
    std::fs::write(&short_file, "only this").unwrap();
    let path = short_file.clone();
    let server = local(Server::builder(), move |request: Request<Body>| {
        let fail_after_one = |panic: bool| {
            let mut sent = false;
            ResponseBody::try_stream(std::iter::from_fn(move || {
                if !sent {
                    sent = true;
                    return Some(Ok(vec![b'x'; 1000]));
                }
                assert!(!panic, "the body blew up on purpose");
                Some(Err(std::io::Error::other("the body failed on purpose")))
            }))
        };
        match request.uri().path() {
            "/stream-panics" => Response::new(fail_after_one(true)),
            "/stream-fails" => Response::new(fail_after_one(false)),
            // The file shrank after its length was taken.
            "/short-file" => Response::new(ResponseBody::file_with_len(
                std::fs::File::open(&path).unwrap(),
                1000,
            )),
            "/short-stream" => Response::builder()
                .header("content-length", "1000")
                .body(ResponseBody::stream(vec!["not enough"]))
                .unwrap(),
            "/long-stream" => Response::builder()
                .header("content-length", "5")
                .body(ResponseBody::stream(vec!["hello", " world"]))
                .unwrap(),
            _ => app(request),
        }
    });
    let addr = addr_of(&server);
    for (version, path) in [
        ("1.0", "/stream-panics"),
        ("1.0", "/stream-fails"),
        ("1.1", "/stream-panics"),
        ("1.1", "/stream-fails"),
        ("1.1", "/short-file"),
        ("1.0", "/short-file"),
        ("1.1", "/short-stream"),
    ] {
        let mut client = Client::new(addr);
        client.send(format!("GET {path} HTTP/{version}\r\nHost: t\r\n\r\n"));
        let (data, end) = read_to_end_or_reset(&mut client);
        let err = end.expect_err(&format!(
            "HTTP/{version} {path}: a clean end after {} bytes: {:?}",
            data.len(),
            String::from_utf8_lossy(&data[..data.len().min(200)])
        ));
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset,
            "HTTP/{version} {path}"
        );
    }
    // A body longer than its Content-Length is cut to it: the client has a
    // whole response and a clean close.
    let (resp, mut client) = exchange(addr, "GET /long-stream HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.text(), "hello");
    client.assert_closed();
    assert_eq!(get(addr, "/").status, 200);
    drop(server);
    let _ = std::fs::remove_file(short_file);
}

#[test]
fn unread_body_is_drained_or_the_connection_closed() {
    let server = local(Server::builder().max_body_bytes(1 << 20), app);
    let mut client = Client::new(addr_of(&server));
    client.send(
        "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789\
         GET /uri HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(client.read_response().text(), "ignored\n");
    assert!(client.read_response().text().starts_with("GET /uri"));

    // Past the drain bound (64 KiB) the connection closes instead.
    let mut client = Client::new(addr_of(&server));
    client.send("POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n");
    client.send(vec![b'a'; 500_000]);
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert!(resp.closes());
}

#[test]
fn a_panicking_app_gets_a_500_and_the_worker_lives_on() {
    util::access_log();
    let server = test_server();
    let mut client = Client::new(addr_of(&server));
    let resp = client.get("/panic");
    assert_eq!(resp.status, 500);
    assert_eq!(client.get("/").text(), "hello\n");
    assert!(
        !util::logged("the app blew up on purpose").is_empty(),
        "the panic is logged"
    );
}

#[test]
fn an_interim_status_from_the_app_becomes_a_500_not_a_desync() {
    let server = local(Server::builder(), |request: Request<Body>| {
        let status = match request.uri().path() {
            "/100" => StatusCode::CONTINUE,
            "/101" => StatusCode::SWITCHING_PROTOCOLS,
            _ => StatusCode::OK,
        };
        Response::builder()
            .status(status)
            .body(format!("{}\n", request.uri().path()).into())
            .unwrap()
    });
    let mut client = Client::new(addr_of(&server));
    for path in ["/100", "/101"] {
        // Both in one write: a 1xx on the wire would be read as interim
        // and the answer to "/next" taken for this request's.
        client.send(format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t\r\n\r\n"
        ));
        let resp = client.read_response_to(false);
        assert_eq!(resp.status, 500, "{path}");
        let next = client.read_response();
        assert_eq!((next.status, next.text().as_str()), (200, "/next\n"));
    }
}

#[test]
fn access_log_has_one_line_per_request() {
    util::access_log();
    let server = local(Server::builder().access_log(true), app);
    let mut client = Client::new(addr_of(&server));
    client.get("/uri?access-log-test");
    // The line is written after the response.
    util::eventually("the access log line", || {
        !util::logged("/uri?access-log-test").is_empty()
    });
    let lines = util::logged("/uri?access-log-test");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(line.contains("127.0.0.1:"), "{line}");
    assert!(
        line.contains("\"GET /uri?access-log-test HTTP/1.1\" 200 "),
        "{line}"
    );
    assert!(line.ends_with("ms"), "{line}");
    // Off by default.
    let server = test_server();
    Client::new(addr_of(&server)).get("/uri?access-log-off");
    assert!(util::logged("/uri?access-log-off").is_empty());
}

/// Many keep-alive connections on one thread are served as their requests
/// arrive, not one connection to its end before the next.
#[test]
fn one_thread_multiplexes_keep_alive_connections() {
    let server = local(Server::builder().threads(1), app);
    let mut clients: Vec<Client> = (0..16).map(|_| Client::new(addr_of(&server))).collect();
    for round in 0..3 {
        for client in clients.iter_mut().rev() {
            client.send("GET /uri HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        for client in clients.iter_mut().rev() {
            assert_eq!(client.read_response().status, 200, "round {round}");
        }
    }
}

#[test]
fn several_threads_serve() {
    let server = local(Server::builder().threads(3), app);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr_of(&server);
            std::thread::spawn(move || {
                let mut client = Client::new(addr);
                (0..20).all(|_| {
                    let resp = client.get("/");
                    if resp.closes() {
                        // A thread holding more than its share may close
                        // a keep-alive connection after an answer.
                        client = Client::new(addr);
                    }
                    resp.status == 200
                })
            })
        })
        .collect();
    for c in clients {
        assert!(c.join().unwrap());
    }
}

// --------------------------------------------------------------- bad input

/// Sends `raw`, expects `status` and a closed connection, then checks a good
/// request is still served.
pub(crate) fn rejected(server: &ufork_wsgi_like::LocalServer, raw: impl AsRef<[u8]>, status: u16) {
    let addr = addr_of(server);
    let (resp, mut client) = exchange(addr, raw);
    assert_eq!(resp.status, status, "{}", resp.text());
    assert!(resp.closes());
    client.assert_closed();
    assert_eq!(get(addr, "/").status, 200, "a good request right after");
}

#[test]
fn malformed_requests_get_400() {
    let server = test_server();
    rejected(&server, "GARBAGE\r\n\r\n", 400);
    rejected(
        &server,
        "GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
        400,
    );
    rejected(
        &server,
        "GET / HTTP/1.1\r\nHost: t\r\nHo st: x\r\n\r\n",
        400,
    );
    rejected(&server, "GET nopath HTTP/1.1\r\nHost: t\r\n\r\n", 400);
    rejected(&server, "G\0T / HTTP/1.1\r\nHost: t\r\n\r\n", 400);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with
/// more than one or with a malformed one, is answered 400.
#[test]
fn host_header_is_required_once_and_valid() {
    let server = test_server();
    rejected(&server, "GET / HTTP/1.1\r\n\r\n", 400);
    rejected(&server, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    rejected(&server, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
    rejected(&server, "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    rejected(&server, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
    rejected(&server, "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400);
    rejected(
        &server,
        "GET http://a.example/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
    );
    let addr = addr_of(&server);
    // HTTP/1.0 may leave Host out; an empty Host is allowed.
    let (resp, _) = exchange(addr, "GET /uri HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    let (resp, _) = exchange(addr, "GET /uri HTTP/1.1\r\nHost:\r\n\r\n");
    assert_eq!(resp.status, 200);
    // An absolute-form target's authority wins over Host.
    let (resp, _) = exchange(
        addr,
        "GET http://a.example/uri HTTP/1.1\r\nHost: b.example\r\n\r\n",
    );
    assert_eq!(resp.text(), "GET http://a.example/uri HTTP/1.1 peer=true");
}

#[test]
fn oversized_heads_get_431() {
    let server = local(
        Server::builder().max_header_bytes(4096).max_headers(10),
        app,
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    rejected(&server, big, 431);
    // Never ending: the limit applies before the head completes.
    let endless = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}", "a".repeat(8000));
    rejected(&server, endless, 431);
    let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
    rejected(
        &server,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n"),
        431,
    );
}

/// A chunked body's trailer section is bounded by the header size limit and
/// answered like an oversized head.
#[test]
fn oversized_trailers_get_431() {
    let server = local(Server::builder().max_header_bytes(4096), app);
    let chunked =
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n";
    let many: String = (0..50)
        .map(|i| format!("X-{i}: {}\r\n", "a".repeat(100)))
        .collect();
    rejected(&server, format!("{chunked}{many}\r\n"), 431);
    let long = format!("X-Long: {}\r\n", "a".repeat(5000));
    rejected(&server, format!("{chunked}{long}\r\n"), 431);
    // Within the limit, even a line longer than a chunk-size line may be.
    let fits = format!("X-Fits: {}\r\n", "a".repeat(3000));
    let (resp, mut client) = exchange(addr_of(&server), format!("{chunked}{fits}\r\n"));
    assert_eq!(resp.text(), "hello");
    assert_eq!(client.get("/").status, 200);
}

/// RFC 9112 §3: a request target longer than the server will take gets
/// 414 URI Too Long and a closed connection, whether its line ever ends or
/// not; a long header with a short target stays 431.
#[test]
fn long_request_targets_get_414() {
    let server = test_server();
    let addr = addr_of(&server);
    let path = |len: usize| format!("/uri?{}", "a".repeat(len - 5));
    // 100 KB, never ending: answered once 8 KiB arrived without a line end.
    rejected(&server, format!("GET {} HTTP/1.1", path(100_000)), 414);
    rejected(
        &server,
        format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", path(100_000)),
        414,
    );
    // The default limit is 8 KiB of request line.
    let fits = path(8 * 1024 - "GET  HTTP/1.1".len());
    let (resp, _) = exchange(addr, format!("GET {fits} HTTP/1.1\r\nHost: t\r\n\r\n"));
    assert_eq!(resp.status, 200);
    assert!(resp.text().starts_with(&format!("GET {fits} ")));
    let over = path(8 * 1024 - "GET  HTTP/1.1".len() + 1);
    rejected(
        &server,
        format!("GET {over} HTTP/1.1\r\nHost: t\r\n\r\n"),
        414,
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    rejected(&server, big, 431);

    // Configurable.
    let server = local(Server::builder().max_request_line_bytes(100), app);
    rejected(
        &server,
        format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", path(100)),
        414,
    );
    let (resp, _) = exchange(
        addr_of(&server),
        format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", path(80)),
    );
    assert_eq!(resp.status, 200);
}

#[test]
fn default_header_limit_is_64_kib() {
    let server = test_server();
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    assert_eq!(exchange(addr_of(&server), ok).0.status, 200);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(65 * 1024)
    );
    rejected(&server, big, 431);
}

#[test]
fn oversized_bodies_get_413() {
    let server = local(Server::builder().max_body_bytes(100), app);
    rejected(
        &server,
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n",
        413,
    );
    let chunk = "a".repeat(60);
    rejected(
        &server,
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
             3c\r\n{chunk}\r\n3c\r\n{chunk}\r\n0\r\n\r\n"
        ),
        413,
    );
}

#[test]
fn smuggling_attempts_get_400() {
    let server = test_server();
    rejected(
        &server,
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    rejected(
        &server,
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    );
    rejected(
        &server,
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    );
    rejected(
        &server,
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    );
    rejected(
        &server,
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        400,
    );
    rejected(
        &server,
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        400,
    );
    rejected(
        &server,
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        400,
    );
    rejected(
        &server,
        "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn unsupported_versions_get_505() {
    let server = test_server();
    rejected(&server, "GET / HTTP/2.0\r\n\r\n", 505);
    rejected(&server, "GET / HTTP/3\r\n\r\n", 505);
    rejected(&server, "GET / HTTP/0.9\r\n\r\n", 505);
}

/// RFC 9110 §2.5: a request of a higher minor version of HTTP/1 is served
/// as HTTP/1.1, and answered as HTTP/1.1.
#[test]
fn higher_minor_versions_are_served_as_http11() {
    let server = test_server();
    let mut client = Client::new(addr_of(&server));
    for _ in 0..2 {
        client.send("GET /uri HTTP/1.2\r\nHost: t\r\n\r\n");
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "GET /uri HTTP/1.1 peer=true");
        assert!(!resp.closes(), "keep-alive as in 1.1");
    }
    let mut raw = Vec::new();
    client
        .stream
        .write_all(b"GET / HTTP/1.9\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    client.stream.read_to_end(&mut raw).unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn slow_headers_get_408_after_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let server = local(Server::builder().header_timeout(timeout), app);
    // The clock starts before the connect, so before the server's (at its
    // accept): however late this thread runs, it never measures less than
    // the server waited.
    let started = Instant::now();
    let mut client = Client::new(addr_of(&server));
    client.send("GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ");
    let resp = client.read_response();
    let waited = started.elapsed();
    assert_eq!(resp.status, 408);
    assert!(waited >= timeout, "{waited:?}");
    assert!(waited < PATIENCE / 2, "{waited:?}");
    client.assert_closed();
    // Trickling bytes does not reset the clock. That shows only when no
    // pause between two lines was as long as the timeout (a clock restarted
    // by every line would then never run out); a longer one means this
    // thread was not scheduled for that long, and proves nothing, so that
    // attempt is made again.
    let mut pauses = Vec::new();
    loop {
        let (status, longest) = trickle_header_lines(addr_of(&server));
        assert_eq!(status, 408, "longest pause {longest:?}");
        if longest < timeout {
            break;
        }
        pauses.push(longest);
        assert!(
            pauses.len() < 5,
            "never trickled without a pause as long as the timeout: {pauses:?}"
        );
    }
    assert_eq!(get(addr_of(&server), "/").status, 200);
}

/// Sends a request head a header line at a time, as long as the server
/// says nothing; returns its answer's status and the longest pause between
/// two lines (the connect, the last line and the answer included).
fn trickle_header_lines(addr: std::net::SocketAddr) -> (u16, Duration) {
    let mut last = Instant::now();
    let give_up = last + PATIENCE;
    let mut longest = Duration::ZERO;
    let mut client = Client::new(addr);
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut line: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n";
    loop {
        longest = longest.max(last.elapsed());
        last = Instant::now();
        // A failed write: the server answered and closed.
        if client.stream.write_all(line).is_err() {
            break;
        }
        line = b"X-A: b\r\n";
        let mut probe = [0u8; 1];
        if client.stream.peek(&mut probe).is_ok() {
            break;
        }
        assert!(Instant::now() < give_up, "no answer while trickling");
    }
    longest = longest.max(last.elapsed());
    client.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    (client.read_response().status, longest)
}

#[test]
fn idle_keep_alive_connections_are_closed_after_their_timeout() {
    let timeout = Duration::from_millis(300);
    let server = local(Server::builder().keep_alive_timeout(timeout), app);
    let mut client = Client::new(addr_of(&server));
    assert_eq!(client.get("/").status, 200);
    let idle_from = Instant::now();
    client.assert_closed();
    let waited = idle_from.elapsed();
    assert!(waited >= timeout - Duration::from_millis(50), "{waited:?}");
    assert!(waited < PATIENCE / 2, "{waited:?}");
    assert_eq!(get(addr_of(&server), "/").status, 200);
}

/// A zero keep-alive timeout turns keep-alive off (gunicorn's
/// `keepalive = 0`): every answer says close, and the connection ends.
#[test]
fn a_zero_keep_alive_timeout_closes_after_every_answer() {
    let server = local(Server::builder().keep_alive_timeout(Duration::ZERO), app);
    let mut client = Client::new(addr_of(&server));
    let resp = client.get("/");
    assert_eq!(resp.status, 200);
    assert!(resp.closes(), "{resp:?}");
    client.assert_closed();
}

#[test]
fn a_stalled_body_gets_408() {
    let server = local(
        Server::builder().read_timeout(Duration::from_millis(300)),
        app,
    );
    let (resp, mut client) = exchange(
        addr_of(&server),
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
    );
    assert_eq!(resp.status, 408);
    client.assert_closed();
    assert_eq!(get(addr_of(&server), "/").status, 200);
}

/// A client that shuts down its writing side mid-body but goes on reading
/// gets an answer before the close: the app's, or 400 if the app panics.
#[test]
fn a_client_half_closing_mid_body_still_gets_an_answer() {
    let server = local(Server::builder(), |mut request: Request<Body>| {
        if request.uri().path() == "/strict" {
            let mut body = Vec::new();
            request
                .body_mut()
                .read_to_end(&mut body)
                .expect("a whole body");
            return Response::new(body.into());
        }
        app(request)
    });
    let addr = addr_of(&server);
    for (path, status) in [("/echo", 422), ("/strict", 400)] {
        let mut client = Client::new(addr);
        client.send(format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc"
        ));
        client.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let resp = client.read_response();
        assert_eq!(resp.status, status, "{path}: {}", resp.text());
        assert!(resp.closes(), "{path}");
        client.assert_closed();
    }
    // Chunked, cut inside a chunk.
    let mut client = Client::new(addr);
    client.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let resp = client.read_response();
    assert_eq!(resp.status, 422);
    assert!(resp.text().contains("mid-body"), "{}", resp.text());
    client.assert_closed();
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn a_client_half_closing_after_pipelined_requests_gets_every_answer() {
    // The first request holds the thread until the rest and the client's
    // end of input are on their way, so the server reads the end while
    // most of them are still buffered (it answers 16 in a row, then reads).
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let server = local(Server::builder(), move |request: Request<Body>| {
        if request.uri().path() == "/gate" {
            gate.lock().unwrap().recv().expect("released");
        }
        Response::new(format!("{}\n", request.uri().path()).into())
    });
    let mut client = Client::new(addr_of(&server));
    client.send("GET /gate HTTP/1.1\r\nHost: t\r\n\r\n");
    let rest: String = (0..40)
        .map(|i| format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    client.send(rest);
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    release.send(()).unwrap();
    assert_eq!(client.read_response().text(), "/gate\n");
    for i in 0..40 {
        let resp = client.read_response();
        assert_eq!(resp.text(), format!("/{i}\n"));
        assert_eq!(resp.closes(), i == 39, "only the last says close");
    }
    client.assert_closed();
}

#[test]
fn a_client_vanishing_mid_request_harms_nothing() {
    let server = test_server();
    for raw in [
        "GET / HTTP/1.1\r\nHost:",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ] {
        let mut client = Client::new(addr_of(&server));
        client.send(raw);
        drop(client);
        assert_eq!(get(addr_of(&server), "/").status, 200);
    }
}

#[test]
fn graceful_stop_of_a_local_server_finishes_requests_and_closes_idle() {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
    let (started_tx, started_rx) = sync_channel::<()>(1);
    let (proceed_tx, proceed_rx) = sync_channel::<()>(1);
    let channels: Mutex<(SyncSender<()>, Receiver<()>)> = Mutex::new((started_tx, proceed_rx));
    let server = local(Server::builder(), move |request: Request<Body>| {
        if request.uri().path() == "/wait" {
            let channels = channels.lock().unwrap();
            channels.0.send(()).unwrap();
            channels.1.recv().unwrap();
            return Response::new("waited\n".into());
        }
        app(request)
    });
    let addr = addr_of(&server);
    let mut idle = Client::new(addr);
    assert_eq!(idle.get("/").status, 200);
    let mut busy = Client::new(addr);
    busy.send("GET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
    started_rx.recv().unwrap();
    server.stop();
    proceed_tx.send(()).unwrap();
    assert_eq!(busy.read_response().text(), "waited\n");
    busy.assert_closed();
    idle.assert_closed();
    server.join().unwrap();
}

// ------------------------------------------------------------ static files

fn site() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ufork-wsgi-static-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("public/sub")).unwrap();
    std::fs::create_dir_all(dir.join("public/empty")).unwrap();
    std::fs::write(dir.join("public/index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(dir.join("public/style.css"), "body{}").unwrap();
    std::fs::write(dir.join("public/sub/index.html"), "<h1>sub</h1>").unwrap();
    std::fs::write(dir.join("public/sub/data.json"), "{}").unwrap();
    std::fs::write(dir.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("public/escape.txt")).unwrap();
    std::os::unix::fs::symlink(dir.join("public/style.css"), dir.join("public/alias.css")).unwrap();
    dir
}

#[test]
fn static_files_are_served_safely() {
    let dir = site();
    let server = local(
        Server::builder(),
        StaticFiles::new(dir.join("public")).unwrap(),
    );
    let addr = addr_of(&server);
    let mut client = Client::new(addr);

    let resp = client.get("/");
    assert_eq!((resp.status, resp.text().as_str()), (200, "<h1>home</h1>"));
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let resp = client.get("/style.css");
    assert_eq!(resp.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(resp.header("content-length"), Some("6"));
    assert_eq!(client.get("/sub/").text(), "<h1>sub</h1>");
    assert_eq!(
        client.get("/sub/data.json").header("content-type"),
        Some("application/json")
    );
    assert_eq!(
        client.get("/alias.css").status,
        200,
        "a link inside the root is fine"
    );

    let resp = client.get("/sub");
    assert_eq!((resp.status, resp.header("location")), (301, Some("/sub/")));
    assert_eq!(client.get("/missing.txt").status, 404);
    assert_eq!(client.get("/empty/").status, 404, "no listings");
    assert_eq!(
        client.get("/escape.txt").status,
        404,
        "a link out of the root"
    );
    assert_eq!(client.get("/../secret.txt").status, 404);
    assert_eq!(client.get("/sub/../../secret.txt").status, 404);
    assert_eq!(client.get("/%2e%2e/secret.txt").status, 404);
    assert_eq!(client.get("/sub/%2E%2E/%2E%2E/secret.txt").status, 404);
    assert_eq!(client.get("/%2fetc%2fpasswd").status, 404);
    client.send("DELETE /style.css HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response().status, 405);
    client.send("HEAD /style.css HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = client.read_response_to(true);
    assert_eq!(head.header("content-length"), Some("6"));
    assert_eq!(client.get("/").status, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_hello_app() {
    let server = local(Server::builder(), ufork_wsgi_like::hello);
    let resp = get(addr_of(&server), "/anything");
    assert_eq!(resp.text(), "Hello, world!\n");
}

#[test]
fn builder_rejects_bad_settings() {
    let err = Server::builder().build(app).unwrap_err();
    assert!(matches!(err, ufork_wsgi_like::Error::NoListener), "{err}");
    let err = Server::builder()
        .bind("127.0.0.1:0")
        .threads(0)
        .build(app)
        .unwrap_err();
    assert!(err.to_string().contains("threads"), "{err}");
    let err = Server::builder()
        .bind("127.0.0.1:0")
        .max_request_line_bytes(0)
        .build(app)
        .unwrap_err();
    assert!(err.to_string().contains("max_request_line_bytes"), "{err}");
    let err = Server::builder()
        .bind("no-such-host.invalid:80")
        .build(app)
        .unwrap_err();
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
}

#[test]
fn given_listener_is_served() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder().listener(listener).build(app).unwrap();
    assert_eq!(server.local_addrs(), [addr]);
    let server = server.spawn_local().unwrap();
    assert_eq!(get(addr, "/").text(), "hello\n");
    drop(server);
}

// -------------------------------------------------------------- pre-forked

#[test]
fn forked_workers_serve_count_and_stop_cleanly() {
    let forked = Forked::start(Server::builder().workers(2), app);
    let mut client = Client::new(forked.addr);
    for _ in 0..10 {
        assert_eq!(client.get("/").text(), "hello\n");
    }
    assert_eq!(get(forked.addr, "/panic").status, 500);
    assert_eq!(client.get("/").status, 200);
    let snapshot = forked.handle.snapshot();
    assert_eq!(snapshot.workers.len(), 2);
    let served: u64 = snapshot.workers.iter().map(|w| w.requests).sum();
    assert_eq!(served, 12);
    assert!(
        snapshot
            .workers
            .iter()
            .any(|w| w.activity.starts_with("GET / HTTP/1.1"))
    );
    let outcome = forked.finish();
    assert!(outcome.graceful);
    assert_eq!(outcome.killed_at_timeout, 0);
    assert_eq!(outcome.spawned, 2, "no worker died: {:?}", outcome.history);
}

#[test]
fn forked_graceful_stop_finishes_in_flight_and_closes_idle() {
    let forked = Forked::start(Server::builder().workers(1), app);
    let mut idle = Client::new(forked.addr);
    assert_eq!(idle.get("/").status, 200);
    let mut busy = Client::new(forked.addr);
    busy.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    // Busy with /slow, not still with the first request's response.
    util::eventually("the worker to be busy with /slow", || {
        forked
            .handle
            .snapshot()
            .workers
            .iter()
            .any(|w| w.busy_for.is_some() && w.activity.starts_with("GET /slow "))
    });
    let pids = forked.pids();
    let handle = forked.handle.clone();
    handle.stop();
    let resp = busy.read_response();
    assert_eq!(resp.text(), "slow done\n");
    busy.assert_closed();
    idle.assert_closed();
    let outcome = forked.finish();
    assert_eq!(outcome.killed_at_timeout, 0);
    assert_eq!(outcome.history.len(), pids.len());
}

#[test]
fn max_requests_recycles_workers() {
    let forked = Forked::start(Server::builder().workers(1).max_requests(3, 2), app);
    for _ in 0..12 {
        assert_eq!(get(forked.addr, "/").status, 200);
    }
    let snapshot = forked.handle.snapshot();
    assert!(
        snapshot.spawned >= 3,
        "12 requests at most 5 per worker: {snapshot:?}"
    );
    let outcome = forked.finish();
    assert!(
        outcome.history.iter().all(|r| r.status.success()),
        "{:?}",
        outcome.history
    );
    // A recycle is a planned exit, not a crash: never a restart.
    let recycled = outcome
        .history
        .iter()
        .filter(|r| r.reason == ufork_core::ExitReason::Recycled)
        .count();
    assert!(recycled >= 2, "{:?}", outcome.history);
    assert!(
        outcome.history.iter().all(|r| r.reason.is_requested()),
        "{:?}",
        outcome.history
    );
}

#[test]
fn reuse_port_workers_serve() {
    let forked = Forked::start(Server::builder().workers(2).reuse_port(true), app);
    // No socket listens until a worker binds its own; a worker declares
    // itself ready once it has.
    util::eventually("both workers ready", || {
        forked.handle.snapshot().ready_count() == 2
    });
    for _ in 0..20 {
        assert_eq!(get(forked.addr, "/").status, 200);
    }
    forked.finish();
}

#[test]
fn a_stopping_reuse_port_worker_refuses_new_connections_while_it_finishes() {
    use std::os::fd::OwnedFd;
    use std::sync::Arc;
    let (hold_r, hold_w) = rustix::pipe::pipe().unwrap();
    let hold_r: Arc<OwnedFd> = Arc::new(hold_r);
    let held = move |request: Request<Body>| {
        if request.uri().path() == "/hold" {
            // In flight until the test lets it go.
            let _ = rustix::io::read(&*hold_r, &mut [0u8; 1]);
            return Response::new("released\n".into());
        }
        app(request)
    };
    let forked = Forked::start(Server::builder().workers(1).reuse_port(true), held);
    util::eventually("the worker ready", || {
        forked.handle.snapshot().ready_count() == 1
    });
    let mut busy = Client::new(forked.addr);
    busy.send("GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    util::eventually("the worker to be busy with /hold", || {
        forked
            .handle
            .snapshot()
            .workers
            .iter()
            .any(|w| w.busy_for.is_some() && w.activity.starts_with("GET /hold "))
    });
    forked.handle.stop();
    // The request is still in flight (the worker runs): yet a new
    // connection is refused, not queued on the stopping worker's socket.
    util::eventually("a new connection to be refused", || {
        std::net::TcpStream::connect(forked.addr)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    rustix::io::write(&hold_w, &[0]).unwrap();
    assert_eq!(busy.read_response().text(), "released\n");
    let outcome = forked.finish();
    assert_eq!(outcome.killed_at_timeout, 0);
}

const IDLE_HEARTBEAT: Duration = Duration::from_millis(1500);

#[test]
fn forked_workers_heartbeat_while_idle() {
    let forked = Forked::start(
        Server::builder()
            .workers(1)
            .heartbeat_timeout(IDLE_HEARTBEAT),
        app,
    );
    assert_eq!(get(forked.addr, "/").status, 200);
    only_worker(&forked);
    // Idle for several heartbeat timeouts: the worker must not be replaced,
    // and its last beat is never as old as the timeout (it beats every third
    // of it; the margin absorbs a loaded machine's scheduling delays).
    let idle_until = Instant::now() + IDLE_HEARTBEAT * 3;
    while Instant::now() < idle_until {
        let snapshot = forked.handle.snapshot();
        let worker = snapshot
            .workers
            .first()
            .unwrap_or_else(|| panic!("the worker is alive: {snapshot:?}"));
        let age = worker.last_beat_age.expect("it heartbeats");
        assert!(age < IDLE_HEARTBEAT, "silent for {age:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(forked.addr, "/").status, 200);
    let outcome = forked.finish();
    assert_eq!(outcome.spawned, 1, "{:?}", outcome.history);
}

#[test]
fn accept_errors_back_off_and_recover() {
    // The worker may hold only a few descriptors: accepting more fails with
    // EMFILE, which must be survived, not fatal.
    let forked = Forked::start(
        Server::builder().workers(1).arbiter(|b| {
            b.post_fork(|_| {
                // What is open now (counting read_dir's own descriptor),
                // plus the worker's stop pipe and epoll, plus one connection.
                let open = std::fs::read_dir("/proc/self/fd")?.count() as u64 + 3;
                let limit = rustix::process::Rlimit {
                    current: Some(open + 3),
                    maximum: None,
                };
                let max = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
                rustix::process::setrlimit(
                    rustix::process::Resource::Nofile,
                    rustix::process::Rlimit {
                        maximum: max,
                        ..limit
                    },
                )?;
                Ok(())
            })
        }),
        app,
    );
    // Once it answers, the worker is forked: it cannot inherit (and keep
    // open) the client sockets below.
    assert_eq!(get(forked.addr, "/").status, 200);
    let mut clients: Vec<Client> = (0..8).map(|_| Client::new(forked.addr)).collect();
    // Some were accepted, the rest wait in the backlog.
    clients[0].send("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(clients[0].read_response().status, 200);
    drop(clients);
    for _ in 0..5 {
        assert_eq!(get(forked.addr, "/").status, 200);
    }
    let outcome = forked.finish();
    assert_eq!(
        outcome.spawned, 1,
        "the worker survived: {:?}",
        outcome.history
    );
}

/// Bytes of each long transfer below: far more than the kernel buffers on
/// both sides of a loopback connection whose receive buffer is held small,
/// so the worker is writing (or reading) it for the whole transfer.
const LONG_TRANSFER: usize = 24 << 20;
/// A slow peer moves this much at a time, then pauses for [`SLOW_PAUSE`]:
/// at least 3.8 s for [`LONG_TRANSFER`], almost twice the heartbeat timeout
/// below.
const SLOW_STEP: usize = 64 << 10;
const SLOW_PAUSE: Duration = Duration::from_millis(10);
/// Short, but long enough that half of it (the write timeout it caps) is
/// more than a loaded machine (load 15 on 2 cores) may take to schedule the
/// slow peer.
const SHORT_HEARTBEAT: Duration = Duration::from_millis(2000);

/// Downloads `path` from a fresh connection, `SLOW_STEP` bytes at a time
/// with a pause after each; calls `midway` once the first MiB of the body
/// has arrived. Returns the body.
fn slow_download(addr: std::net::SocketAddr, path: &str, mut midway: impl FnMut()) -> Vec<u8> {
    let mut stream = util::connect(addr);
    // Without this the receive buffer grows to megabytes and the kernel,
    // not the worker, would hold most of the body.
    rustix::net::sockopt::set_socket_recv_buffer_size(&stream, SLOW_STEP).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let (head_len, len) = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed mid-head");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = resp.parse(&buf).unwrap() {
            assert_eq!(resp.code, Some(200));
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap()
                })
                .expect("content-length");
            break (head_len, len);
        }
    };
    let mut body = buf.split_off(head_len);
    let mut chunk = vec![0u8; SLOW_STEP];
    let mut called = false;
    while body.len() < len {
        let want = SLOW_STEP.min(len - body.len());
        let n = stream
            .read(&mut chunk[..want])
            .unwrap_or_else(|e| panic!("{path}: after {} of {len} body bytes: {e}", body.len()));
        assert!(
            n > 0,
            "{path}: closed after {} of {len} body bytes",
            body.len()
        );
        body.extend_from_slice(&chunk[..n]);
        if !called && body.len() >= 1 << 20 {
            called = true;
            midway();
        }
        std::thread::sleep(SLOW_PAUSE);
    }
    body
}

/// The worker's one slot in a snapshot.
fn only_worker(forked: &Forked) -> ufork_core::WorkerInfo {
    // The arbiter lists a worker once it publishes its state, which may be
    // after the worker answered its first request.
    let mut worker = None;
    util::eventually("the worker to be listed", || {
        let snapshot = forked.handle.snapshot();
        assert!(snapshot.workers.len() <= 1, "{snapshot:?}");
        worker = snapshot.workers.first().cloned();
        worker.is_some()
    });
    worker.expect("listed")
}

/// A response that takes several heartbeat timeouts to send keeps the
/// worker alive (it heartbeats as the client takes bytes): bytes, a file
/// (sendfile) and a stream (the app asked for chunks as the socket takes
/// them) go out from the event loop as the socket drains, the worker idle
/// and free for other clients meanwhile.
#[test]
fn forked_worker_heartbeats_while_sending_a_long_response() {
    let file = std::env::temp_dir().join(format!("ufork-wsgi-long-{}.bin", std::process::id()));
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(LONG_TRANSFER as u64))
        .unwrap();
    let path = file.clone();
    let pattern = |i: usize| (i % 251) as u8;
    // Made once: the app must not itself run for a heartbeat timeout.
    let data: std::sync::Arc<Vec<u8>> =
        std::sync::Arc::new((0..LONG_TRANSFER).map(pattern).collect());
    let expected = std::sync::Arc::clone(&data);
    let forked = Forked::start(
        Server::builder()
            .workers(1)
            .heartbeat_timeout(SHORT_HEARTBEAT),
        move |request: Request<Body>| match request.uri().path() {
            "/file" => {
                Response::new(ResponseBody::file(std::fs::File::open(&path).unwrap()).unwrap())
            }
            "/bytes" => Response::new(data.to_vec().into()),
            "/stream" => {
                let data = std::sync::Arc::clone(&data);
                let chunks =
                    (0..LONG_TRANSFER / 4096).map(move |c| data[c * 4096..(c + 1) * 4096].to_vec());
                Response::builder()
                    .header("content-length", LONG_TRANSFER)
                    .body(ResponseBody::stream(chunks))
                    .unwrap()
            }
            _ => Response::new("hello\n".into()),
        },
    );
    assert_eq!(get(forked.addr, "/").status, 200);
    for path in ["/file", "/bytes", "/stream"] {
        let started = Instant::now();
        let body = slow_download(forked.addr, path, || {
            util::eventually("the worker to be idle while the body goes out", || {
                only_worker(&forked).state == ufork_core::WorkerState::Idle
            });
        });
        let took = started.elapsed();
        assert_eq!(body.len(), LONG_TRANSFER, "{path}");
        if path == "/file" {
            assert!(body.iter().all(|&b| b == 0), "{path}");
        } else {
            assert!(body == *expected, "{path}");
        }
        assert!(
            took > SHORT_HEARTBEAT * 3 / 2,
            "{path} took {took:?}: too fast to test anything"
        );
        // Done writing: idle again.
        util::eventually("the worker to be idle", || {
            only_worker(&forked).state == ufork_core::WorkerState::Idle
        });
    }
    let snapshot = forked.handle.snapshot();
    assert!(snapshot.history.is_empty(), "{:?}", snapshot.history);
    let outcome = forked.finish();
    let _ = std::fs::remove_file(&file);
    assert_eq!(outcome.spawned, 1, "{:?}", outcome.history);
    assert_eq!(outcome.killed_at_timeout, 0);
}

/// An app reading a request body that takes several heartbeat timeouts to
/// arrive keeps its worker alive: reading heartbeats as bytes come in.
#[test]
fn forked_worker_heartbeats_while_reading_a_long_request_body() {
    let forked = Forked::start(
        Server::builder()
            .workers(1)
            .heartbeat_timeout(SHORT_HEARTBEAT)
            .max_body_bytes(LONG_TRANSFER as u64),
        app,
    );
    let mut client = Client::new(forked.addr);
    client.send(format!(
        "POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: {LONG_TRANSFER}\r\n\r\n"
    ));
    let started = Instant::now();
    let step = vec![b'u'; SLOW_STEP];
    for _ in 0..LONG_TRANSFER / SLOW_STEP {
        client.send(&step);
        std::thread::sleep(SLOW_PAUSE);
    }
    let resp = client.read_response();
    let took = started.elapsed();
    assert_eq!(resp.text(), LONG_TRANSFER.to_string());
    assert!(
        took > SHORT_HEARTBEAT * 3 / 2,
        "took {took:?}: too fast to test anything"
    );
    let snapshot = forked.handle.snapshot();
    assert!(snapshot.history.is_empty(), "{:?}", snapshot.history);
    let outcome = forked.finish();
    assert_eq!(outcome.spawned, 1, "{:?}", outcome.history);
}

/// The write timeout runs from the last bytes the client took, not from
/// the last time the kernel said the socket had room (which it says only
/// once about a third of a send buffer of megabytes is free again): a
/// client that keeps taking a little at a time, far less than that per
/// timeout, is not cut off. Alike for a body in memory, written by the
/// serving thread, and a file, sent by the event loop as the socket drains.
#[test]
fn a_client_taking_a_little_at_a_time_is_not_cut_off_by_the_write_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    const BODY: usize = 8 << 20;
    let file = std::env::temp_dir().join(format!("ufork-wsgi-slow-{}", std::process::id()));
    std::fs::write(&file, vec![b'w'; BODY]).unwrap();
    let path = file.clone();
    let server = local(
        Server::builder().write_timeout(TIMEOUT),
        move |request: Request<Body>| match request.uri().path() {
            "/file" => {
                Response::new(ResponseBody::file(std::fs::File::open(&path).unwrap()).unwrap())
            }
            _ => Response::new(vec![b'w'; BODY].into()),
        },
    );
    for path in ["/", "/file"] {
        take_slowly(addr_of(&server), path, BODY);
    }
    let _ = std::fs::remove_file(&file);
}

/// A client that takes a large body in memory slowly, or not at all for
/// now, holds no serving thread: another client on the same one-thread
/// server is answered at once, and the slow one then gets the whole body
/// and what it pipelined behind it, in order.
#[test]
fn a_slow_reader_of_a_large_body_holds_no_serving_thread() {
    const BODY: usize = 16 << 20;
    let server = local(Server::builder(), |request: Request<Body>| {
        match request.uri().path() {
            "/big" => Response::new(vec![b'b'; BODY].into()),
            _ => Response::new("small\n".into()),
        }
    });
    let mut slow = Client::new(addr_of(&server));
    rustix::net::sockopt::set_socket_recv_buffer_size(&slow.stream, SLOW_STEP).unwrap();
    slow.send("GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /small HTTP/1.1\r\nHost: t\r\n\r\n");
    // The answer has begun: the server is past the app, in the body.
    assert!(slow.fill() > 0);
    // Held by the slow client, the thread would answer this only when the
    // write timeout (30 s) gave up on it: past this client's patience.
    assert_eq!(get(addr_of(&server), "/small").text(), "small\n");
    let resp = slow.read_response();
    assert_eq!(resp.body.len(), BODY);
    assert!(resp.body.iter().all(|&b| b == b'b'));
    assert_eq!(slow.read_response().text(), "small\n");
    assert_eq!(slow.get("/small").text(), "small\n");
}

/// Gets `path` taking [`SLOW_STEP`] bytes every 250 ms; checks the body is
/// `len` bytes.
fn take_slowly(addr: std::net::SocketAddr, path: &str, len: usize) {
    const PAUSE: Duration = Duration::from_millis(250);
    let mut stream = util::connect(addr);
    rustix::net::sockopt::set_socket_recv_buffer_size(&stream, SLOW_STEP).unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    // A step every quarter of the timeout for three timeouts: 4 steps, 256
    // KiB, per timeout.
    let mut raw = Vec::new();
    let mut step = vec![0u8; SLOW_STEP];
    for _ in 0..12 {
        let mut taken = 0;
        while taken < SLOW_STEP {
            let n = stream
                .read(&mut step[taken..])
                .unwrap_or_else(|e| panic!("after {} bytes: {e}", raw.len() + taken));
            assert!(n > 0, "closed after {} bytes", raw.len() + taken);
            taken += n;
        }
        raw.extend_from_slice(&step);
        std::thread::sleep(PAUSE);
    }
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("after {} bytes: {e}", raw.len()));
    let head = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"), "{path}");
    assert_eq!(raw.len() - head, len, "{path}");
}

/// A client that stops reading a long response is dropped after the write
/// timeout, which a pre-forked worker caps at half its heartbeat timeout;
/// meanwhile the worker serves other clients (the rest of the response is
/// the connection's, not a thread's), and it is not taken for hung.
#[test]
fn forked_worker_drops_a_client_that_stops_reading() {
    let forked = Forked::start(
        Server::builder()
            .workers(1)
            .heartbeat_timeout(SHORT_HEARTBEAT)
            // Past the test's patience: only the cap can end it in time.
            .write_timeout(Duration::from_secs(60)),
        |request: Request<Body>| match request.uri().path() {
            "/bytes" => Response::new(vec![b'x'; LONG_TRANSFER].into()),
            _ => Response::new("hello\n".into()),
        },
    );
    assert_eq!(get(forked.addr, "/").status, 200);
    let mut stalled = util::connect(forked.addr);
    rustix::net::sockopt::set_socket_recv_buffer_size(&stalled, SLOW_STEP).unwrap();
    stalled
        .write_all(b"GET /bytes HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The answer has begun (the worker is past the app)...
    let mut first = [0u8; 1];
    stalled.read_exact(&mut first).unwrap();
    // ...and another client is served while the stalled one takes nothing.
    assert_eq!(get(forked.addr, "/").text(), "hello\n");
    // Still taking nothing, it is reset at the write timeout (an error on
    // the socket, the unread bytes still queued)...
    let mut fds = [rustix::event::PollFd::new(
        &stalled,
        rustix::event::PollFlags::empty(),
    )];
    let patience = rustix::time::Timespec {
        tv_sec: util::PATIENCE.as_secs() as i64,
        tv_nsec: 0,
    };
    assert_eq!(
        rustix::event::poll(&mut fds, Some(&patience)).unwrap(),
        1,
        "no reset"
    );
    // ...so it reads part of the body, then the reset.
    let mut received = 1;
    let mut chunk = vec![0u8; SLOW_STEP];
    let end = loop {
        match stalled.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => received += n,
            Err(e) => break Err(e),
        }
    };
    assert!(received < LONG_TRANSFER, "{received}");
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let snapshot = forked.handle.snapshot();
    assert!(snapshot.history.is_empty(), "{:?}", snapshot.history);
    let outcome = forked.finish();
    assert_eq!(outcome.spawned, 1, "{:?}", outcome.history);
}
