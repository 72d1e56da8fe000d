//! Unix-domain listeners: served like TCP ones, the client named by the
//! socket's path.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use http::{Request, Response};
use ufork_wsgi_like::{
    AccessFormat, AccessLog, AccessSink, Body, PeerAddr, ResponseBody, Server, UnixSocketPath,
};

use crate::util::{self, Forked, PATIENCE};

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ufork-wsgi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// What the app says about where a request came from.
fn whence(request: Request<Body>) -> Response<ResponseBody> {
    let ext = request.extensions();
    let text = format!(
        "path={:?} peer={}",
        ext.get::<UnixSocketPath>().map(|p| p.0.to_path_buf()),
        ext.get::<PeerAddr>().is_some()
    );
    Response::new(text.into())
}

/// One request over the unix socket at `path`, the connection closed after
/// it; the whole response.
fn request(path: &Path, target: &str) -> String {
    let mut stream = UnixStream::connect(path).expect("connect to the unix socket");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

#[test]
fn a_unix_listener_is_served_and_the_app_sees_its_path() {
    let path = temp_path("unix-local.sock");
    let log = temp_path("unix-access.log");
    let server = Server::builder()
        .unix_listener(UnixListener::bind(&path).unwrap())
        .access_log_to(AccessLog {
            format: AccessFormat::Common,
            sink: AccessSink::File(log.clone()),
        })
        .build(whence)
        .unwrap()
        .spawn_local()
        .unwrap();
    assert!(server.local_addrs().is_empty(), "no TCP address");
    let response = request(&path, "/where");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with(&format!("path={:?} peer=false", Some(&path))),
        "{response}"
    );
    // Keep-alive works as on TCP: two requests, one connection.
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut both = String::new();
    stream.read_to_string(&mut both).unwrap();
    assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
    let mut lines = Vec::new();
    util::eventually("three access log lines", || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= 3
    });
    assert!(lines[0].starts_with("unix - - ["), "{lines:?}");
    assert!(
        lines[0].contains("\"GET /where HTTP/1.1\" 200"),
        "{lines:?}"
    );
    drop(server);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn pre_forked_workers_serve_a_unix_listener_beside_a_tcp_one() {
    let path = temp_path("unix-forked.sock");
    let forked = Forked::start(
        Server::builder()
            .workers(2)
            .unix_listener(UnixListener::bind(&path).unwrap()),
        whence,
    );
    util::eventually("both workers to be listed", || {
        forked.handle.snapshot().workers.len() == 2
    });
    for _ in 0..10 {
        let response = request(&path, "/");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("peer=false"), "{response}");
    }
    let tcp = util::get(forked.addr, "/");
    assert_eq!(tcp.text(), "path=None peer=true");
    let served: u64 = forked
        .handle
        .snapshot()
        .workers
        .iter()
        .map(|w| w.requests)
        .sum();
    assert_eq!(served, 11);
    forked.finish();
    let _ = std::fs::remove_file(&path);
}
