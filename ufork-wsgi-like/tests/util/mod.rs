//! Helpers for the integration tests: a raw HTTP client, servers on threads
//! or pre-forked, a capturing logger, and the process-wide fork lock.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ufork_core::{Handle, Outcome};
use ufork_wsgi_like::{App, Builder, LocalServer};

/// Generous bound on any single wait in a test (a watchdog, not a sleep).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Tests that fork hold this: `cargo test` runs tests as threads of one
/// process, and a fork while another test forks or holds a lock is unsound.
static FORK_LOCK: Mutex<()> = Mutex::new(());

pub fn fork_lock() -> MutexGuard<'static, ()> {
    FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A server on threads of the test process.
pub fn local(builder: Builder, app: impl App) -> LocalServer {
    builder
        .bind("127.0.0.1:0")
        .build(app)
        .expect("build server")
        .spawn_local()
        .expect("start local server")
}

pub fn addr_of(server: &LocalServer) -> SocketAddr {
    server.local_addrs()[0]
}

/// A pre-forked server run by an arbiter thread; stopped and every worker
/// reaped on `finish` (or drop).
pub struct Forked {
    pub addr: SocketAddr,
    pub handle: Handle,
    thread: Option<JoinHandle<ufork_core::Result<Outcome>>>,
    _lock: MutexGuard<'static, ()>,
}

impl Forked {
    pub fn start(builder: Builder, app: impl App) -> Self {
        let lock = fork_lock();
        let server = builder
            .bind("127.0.0.1:0")
            .arbiter(|b| b.handle_signals(false))
            .build(app)
            .expect("build server");
        let addr = server.local_addrs()[0];
        let (handle, thread) = server.spawn_thread().expect("spawn arbiter");
        Self {
            addr,
            handle,
            thread: Some(thread),
            _lock: lock,
        }
    }

    /// Pids of the live workers.
    pub fn pids(&self) -> Vec<i32> {
        self.handle
            .snapshot()
            .workers
            .iter()
            .map(|w| w.pid)
            .collect()
    }

    /// Waits until `n` workers are ready: every serving thread of each
    /// waits on the listeners, with its connection count published, so a
    /// burst queued from now on is spread over all of them.
    pub fn wait_ready(&self, n: usize) {
        eventually(&format!("{n} workers to be ready"), || {
            self.handle.snapshot().ready_count() == n
        });
    }

    /// Stops gracefully, waits for the arbiter, checks every worker is gone.
    pub fn finish(mut self) -> Outcome {
        self.stop_and_join().expect("arbiter outcome")
    }

    fn stop_and_join(&mut self) -> Option<Outcome> {
        let thread = self.thread.take()?;
        let pids = self.pids();
        self.handle.stop();
        let outcome = thread.join().expect("arbiter thread").expect("arbiter run");
        for pid in pids {
            let pid = rustix::process::Pid::from_raw(pid).expect("pid");
            assert!(
                rustix::process::test_kill_process(pid).is_err(),
                "worker {pid:?} still exists after the arbiter returned"
            );
        }
        assert!(self.handle.snapshot().workers.is_empty());
        Some(outcome)
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.thread.is_some() && !std::thread::panicking() {
            self.stop_and_join();
        } else if let Some(thread) = self.thread.take() {
            self.handle.stop_now();
            let _ = thread.join();
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads responses from one connection, keeping bytes past the current one.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            stream: connect(addr),
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: impl AsRef<[u8]>) {
        self.stream.write_all(raw.as_ref()).expect("send");
    }

    /// Reads what arrives next into the buffer (for `read_response`).
    pub fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).expect("read (timed out?)");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response; `head_only` for the answer to a HEAD.
    pub fn read_response_to(&mut self, head_only: bool) -> Resp {
        let (status, headers, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf).expect("parse response") {
                httparse::Status::Complete(len) => {
                    let headers = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (resp.code.unwrap(), headers, len);
                }
                httparse::Status::Partial => {
                    assert!(
                        self.fill() > 0,
                        "connection closed mid-head: {:?}",
                        self.buf
                    );
                }
            }
        };
        self.buf.drain(..len);
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 || status < 200 {
            return resp;
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill() > 0, "connection closed mid-body");
            }
            resp.body = self.buf.drain(..len).collect();
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill() > 0, "connection closed mid-chunk");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16)
                        .unwrap();
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill() > 0, "connection closed mid-chunk");
                }
                resp.body.extend(self.buf.drain(..size));
                assert_eq!(self.buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill() > 0 {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    pub fn read_response(&mut self) -> Resp {
        self.read_response_to(false)
    }

    /// Asserts the server closes the connection with nothing more to say.
    pub fn assert_closed(&mut self) {
        let mut chunk = [0u8; 1024];
        let n = match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("expected the connection to close: {e}"),
        };
        assert_eq!(
            n,
            0,
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        assert!(self.buf.is_empty(), "unexpected bytes {:?}", self.buf);
    }

    /// One request, one response.
    pub fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"));
        self.read_response()
    }
}

/// A fresh connection, one request, its response.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    Client::new(addr).get(path)
}

/// Sends `raw` on a fresh connection and reads one response.
pub fn exchange(addr: SocketAddr, raw: impl AsRef<[u8]>) -> (Resp, Client) {
    let mut client = Client::new(addr);
    client.send(raw);
    let resp = client.read_response();
    (resp, client)
}

/// Polls `check` until it holds or the deadline passes (for states that have
/// no event to wait for, like the scoreboard).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Records of the access log target, captured in this process only (a forked
/// worker must not touch a lock another thread may have held at the fork).
pub fn access_log() -> &'static Mutex<Vec<String>> {
    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static PID: OnceLock<u32> = OnceLock::new();
    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            if PID.get() != Some(&std::process::id()) {
                return;
            }
            if record.target() == "ufork_wsgi_like::access" || record.level() <= log::Level::Error {
                LINES
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{} {}", record.target(), record.args()));
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Capture = Capture;
    PID.get_or_init(|| {
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(log::LevelFilter::Info);
        std::process::id()
    });
    &LINES
}

/// The captured log lines that contain `needle`.
pub fn logged(needle: &str) -> Vec<String> {
    access_log()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}
