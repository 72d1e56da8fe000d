//! Load generators: wrk for request rates and latencies, a plain client
//! for download throughput.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxError;

/// One wrk run's result.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measure {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
    pub errors: u64,
    /// Of `errors`: connections refused (or otherwise not made).
    pub connect_errors: u64,
    /// Of `errors`: requests wrk gave up waiting for.
    pub timeouts: u64,
    /// Of `errors`: answers that were not 2xx or 3xx.
    pub non_2xx: u64,
}

/// Starts wrk against `http://127.0.0.1:port{path}`; [`finish`] reads it.
pub fn start(port: u16, path: &str, connections: u32, secs: u64) -> Result<Child, BoxError> {
    start_with(port, path, connections, secs, None)
}

/// [`start`] with one more request header (`Connection: close`...).
pub fn start_with(
    port: u16,
    path: &str,
    connections: u32,
    secs: u64,
    header: Option<&str>,
) -> Result<Child, BoxError> {
    let mut command = Command::new("wrk");
    if let Some(header) = header {
        command.args(["-H", header]);
    }
    Ok(command
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Waits for wrk and parses what it printed.
pub fn finish(child: Child) -> Result<Measure, BoxError> {
    let output = child.wait_with_output()?;
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// Runs wrk to its end.
pub fn wrk(port: u16, path: &str, connections: u32, secs: u64) -> Result<Measure, BoxError> {
    finish(start(port, path, connections, secs)?)
}

fn parse(text: &str) -> Result<Measure, BoxError> {
    let mut m = Measure::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            m.rps = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("99%") {
            m.p99_ms = duration_ms(v.trim()).ok_or_else(|| format!("bad latency {v:?}"))?;
        } else if let Some(v) = line.strip_prefix("50%") {
            m.p50_ms = duration_ms(v.trim()).ok_or_else(|| format!("bad latency {v:?}"))?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 0"
            for part in v.split(',') {
                let mut words = part.split_whitespace();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                m.errors += n;
                match kind {
                    "connect" => m.connect_errors += n,
                    "timeout" => m.timeouts += n,
                    _ => {}
                }
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            let n = v.trim().parse::<u64>().unwrap_or(0);
            m.errors += n;
            m.non_2xx += n;
        }
    }
    if m.rps == 0.0 {
        return Err(format!("wrk printed no result: {text}").into());
    }
    Ok(m)
}

fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

/// Downloads `path` once over a fresh connection (`Connection: close`) and
/// returns the bytes received after the head (chunk framing included) and
/// the MB/s they came at.
pub fn download(port: u16, path: &str) -> Result<(u64, f64), BoxError> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut head_done = false;
    let mut body: u64 = 0;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head_done {
            body += n as u64;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 200") {
                let line = String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned();
                return Err(format!("answer was {line:?}").into());
            }
            head_done = true;
            body = (head.len() - end - 4) as u64;
        } else if head.len() > 64 * 1024 {
            return Err("no end of the response head in 64 KiB".into());
        }
    }
    if !head_done {
        return Err("the connection closed before a response head".into());
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((body, body as f64 / 1e6 / secs))
}
