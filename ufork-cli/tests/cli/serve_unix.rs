//! `ufork serve --bind unix:PATH`, through the real binary: served over the
//! socket, its mode, a live server's path refused, a stale one replaced,
//! the file removed at stop.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use rustix::process::Signal;

use crate::util::*;

/// One request over the unix socket at `path`; the whole response.
fn request(path: &Path) -> String {
    let mut stream = UnixStream::connect(path).expect("connect to the unix socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

#[test]
fn serve_listens_on_a_unix_socket() {
    let dir = TempDir::new("serve-unix");
    let path = dir.join("app.sock");
    let bind = format!("unix:{}", path.display());
    let log = dir.join("access.log");
    let args = [
        "serve",
        "--bind",
        &bind,
        "-w",
        "2",
        "--no-prompt",
        "--access-log",
        log.to_str().unwrap(),
    ];
    // A stale socket (its server died) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    let mut pool = Running::start(&args);
    let banner = pool.expect_line("serving the hello app on");
    assert!(
        banner.contains(&format!("on {bind} with 2 workers")),
        "{banner}"
    );
    for _ in 0..4 {
        let response = request(&path);
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("Hello, world!\n"), "{response}");
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    // The access log names the client `unix`.
    let mut lines = String::new();
    for _ in 0..2000 {
        lines = std::fs::read_to_string(&log).unwrap_or_default();
        if lines.lines().count() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        lines.lines().all(|l| l.starts_with("unix - - [")),
        "{lines}"
    );
    // A live server holds the path: refused, and its socket left alone.
    let out = run(&args);
    assert_one_line_error(&out, 1, &["a server is listening there already"]);
    assert!(request(&path).starts_with("HTTP/1.1 200 OK"));
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(!path.exists(), "the socket is removed at stop");
}

#[test]
fn serve_takes_a_unix_mode_and_refuses_reuse_port_on_a_unix_socket() {
    let dir = TempDir::new("serve-unix-mode");
    let path = dir.join("app.sock");
    let bind = format!("unix:{}", path.display());
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        &bind,
        "-w",
        "1",
        "--no-prompt",
        "--unix-mode",
        "600",
    ]);
    pool.expect_line("serving the hello app on");
    assert!(request(&path).starts_with("HTTP/1.1 200 OK"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    let other = format!("unix:{}", dir.join("other.sock").display());
    let out = run(&["serve", "--bind", &other, "--reuse-port"]);
    assert_one_line_error(&out, 2, &["--reuse-port is for TCP addresses"]);
}

/// A pool listening on a unix socket cannot be upgraded (unix sockets are
/// not handed over): SIGUSR2 says so, as `ufork upgrade` does, instead of
/// starting a new arbiter that can only fail with a misleading reason.
#[test]
fn sigusr2_to_a_pool_on_a_unix_socket_is_refused_with_the_reason() {
    let dir = TempDir::new("serve-unix-usr2");
    let path = dir.join("app.sock");
    let bind = format!("unix:{}", path.display());
    let control = dir.str("ctl.sock");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        &bind,
        "-w",
        "1",
        "--no-prompt",
        "--control-socket",
        &control,
    ]);
    wait_ready(&control, 1);
    let out = run(&["upgrade", "--control-socket", &control]);
    assert_one_line_error(&out, 1, &["unix sockets are not handed over"]);
    pool.signal(Signal::USR2);
    pool.expect_line("upgrade refused: cannot upgrade this pool: --bind unix:");
    assert!(
        request(&path).starts_with("HTTP/1.1 200 OK"),
        "still serving"
    );
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(
        !pool.transcript().contains("upgrade: started"),
        "no new arbiter was started: {}",
        pool.transcript()
    );
}
