//! Instructions per request of the in-process serving loop
//! (`Server::spawn_local`, one thread) under callgrind: the loop answers
//! `n` keep-alive requests from one client thread, one at a time, and only
//! the serving thread's instructions are counted.

use std::io::{Read, Write};
use std::process::Command;

use crate::BoxError;

/// The function every instruction of the serving thread runs under.
const SERVING_THREAD: &str = "ufork_wsgi_like::serve::run";

/// The measured run: `bench_http --local N`.
pub fn local_requests(n: usize) -> Result<(), BoxError> {
    let server = ufork_wsgi_like::Server::builder()
        .bind("127.0.0.1:0")
        .build(ufork_wsgi_like::hello)?
        .spawn_local()?;
    let mut stream = std::net::TcpStream::connect(server.local_addrs()[0])?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 1024];
    for _ in 0..n {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut got = 0;
        while !buf[..got].ends_with(crate::servers::HELLO.as_bytes()) {
            let k = stream.read(&mut buf[got..])?;
            if k == 0 || got + k == buf.len() {
                return Err("the server closed or sent more than a hello".into());
            }
            got += k;
        }
    }
    drop(stream);
    server.stop();
    server.join()?;
    Ok(())
}

/// Instructions the serving thread ran for `n` requests.
fn collected(n: usize) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            &format!("--toggle-collect={SERVING_THREAD}"),
        ])
        .arg(exe)
        .args(["--local", &n.to_string()])
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    if !out.status.success() {
        return Err(format!("the run under valgrind failed ({})", out.status));
    }
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "callgrind printed no instruction count".into())
}

/// Instructions per request: the difference of two runs, so start-up and
/// shut-down cancel out.
pub fn per_request() -> Result<f64, String> {
    let ok = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    let (few, many) = (1_000, 11_000);
    let a = collected(few)?;
    let b = collected(many)?;
    Ok(b.saturating_sub(a) as f64 / (many - few) as f64)
}
