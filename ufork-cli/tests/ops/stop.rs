//! How a pool stops, seen from the programs `ufork run` supervises and from
//! their clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use rustix::process::Signal;

use crate::util::*;

/// A worker as gunicorn's sync worker is written: it waits for its listener
/// or the signal wake-up pipe, and keeps accepting after SIGTERM until it
/// gets round to stopping (here: one more connection, the test's). Every
/// accept error is printed: a program ufork runs must see none.
const LATE_ACCEPTOR_PY: &str = r#"
import os, select, signal, socket, sys
listener = socket.socket(fileno=3)
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
signal.signal(signal.SIGTERM, lambda *a: None)
def accept():
    try:
        return listener.accept()[0]
    except OSError as e:
        print("accept error:", e, flush=True)
        sys.exit(1)
print("accepting", flush=True)
while True:
    ready, _, _ = select.select([listener, r], [], [])
    if r in ready:
        break
    conn = accept()
    conn.sendall(b"served\n")
    conn.close()
print("got SIGTERM", flush=True)
select.select([listener], [], [], 60)
conn = accept()
listener.close()
print("listener closed", flush=True)
conn.recv(1024)
conn.sendall(b"served late\n")
conn.close()
"#;

fn listening_addr(pool: &mut Running) -> SocketAddr {
    let line = pool.expect_line("listening on");
    line.split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"))
}

#[test]
fn a_graceful_stop_of_run_leaves_accepting_to_the_program_and_refuses_once_it_closes() {
    let dir = TempDir::new("run-stop");
    let script = dir.join("late.py");
    std::fs::write(&script, LATE_ACCEPTOR_PY).unwrap();
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--",
        "python3",
        script.to_str().unwrap(),
    ]);
    let addr = listening_addr(&mut pool);
    pool.expect_line("accepting");
    pool.signal(Signal::TERM);
    pool.expect_line("got SIGTERM");
    // The arbiter has begun the stop (it relayed the line after sending
    // SIGTERM): a program still in its accept loop gets this connection,
    // and its accept does not fail (a shut-down socket made it fail with
    // EINVAL, and uvicorn logged a traceback per try).
    let mut late = TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect after SIGTERM: {e}; saw {}", pool.transcript()));
    late.set_read_timeout(Some(DEADLINE)).unwrap();
    pool.expect_line("listener closed");
    // The program closed the last copy but its own: the arbiter holds none,
    // so a new connection is refused while the accepted one is served.
    let refused = TcpStream::connect(addr).map(|_| ()).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    late.write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "served late\n");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    let transcript = pool.transcript();
    assert!(!transcript.contains("accept error"), "{transcript}");
}
