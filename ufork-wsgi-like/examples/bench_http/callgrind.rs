//! Instructions and heap allocations per request of the in-process serving
//! loop (`Server::spawn_local`, one thread) under callgrind: the loop
//! answers `n` keep-alive requests from one client thread, one at a time,
//! and only the serving thread's instructions and calls are counted.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use crate::BoxError;

/// The function every instruction of the serving thread runs under.
const SERVING_THREAD: &str = "ufork_wsgi_like::serve::run";
/// The C allocator's entry points that hand out a block: every Rust
/// allocation (`__rust_alloc`, `__rust_realloc`) ends in one of them.
const ALLOCATORS: [&str; 3] = ["malloc", "calloc", "realloc"];

/// What callgrind counted in one run.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Counts {
    instructions: u64,
    allocations: u64,
}

/// Per hello request: the difference of two runs, so start-up and
/// shut-down cancel out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerRequest {
    pub instructions: f64,
    pub allocations: f64,
}

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

/// Runs `n` requests under callgrind, its profile written to `out`.
fn collected(n: usize, out: &Path) -> Result<Counts, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let run = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            &format!("--toggle-collect={SERVING_THREAD}"),
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["--local", &n.to_string()])
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    if !run.status.success() {
        return Err(format!("the run under valgrind failed ({})", run.status));
    }
    let instructions = String::from_utf8_lossy(&run.stderr)
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("callgrind printed no instruction count")?;
    let profile = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(out);
    Ok(Counts {
        instructions,
        allocations: calls_to(&profile, &ALLOCATORS),
    })
}

/// How many calls a callgrind profile records to the functions named
/// `names`, from anywhere in the collected code.
///
/// The format names a callee in a `cfn=` line — `cfn=(id) name` the first
/// time, `cfn=(id)` after (as `fn=` lines do for the function a cost
/// belongs to) — followed by `calls=COUNT TARGET` and the call's cost.
fn calls_to(profile: &str, names: &[&str]) -> u64 {
    let mut ids: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut callee: Option<&str> = None;
    let mut total = 0;
    for line in profile.lines() {
        let named = line
            .strip_prefix("cfn=")
            .map(|rest| (true, rest))
            .or_else(|| line.strip_prefix("fn=").map(|rest| (false, rest)));
        if let Some((is_call, rest)) = named {
            let (id, name) = match rest.split_once(' ') {
                Some((id, name)) => {
                    ids.insert(id, name.trim());
                    (id, Some(name.trim()))
                }
                None => (rest.trim(), None),
            };
            if is_call {
                callee = name.or_else(|| ids.get(id).copied());
            }
        } else if let Some(rest) = line.strip_prefix("calls=") {
            if callee.is_some_and(|c| names.contains(&c)) {
                total += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Instructions and allocations per hello request.
pub fn per_request() -> Result<PerRequest, String> {
    let ok = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    let out = std::env::temp_dir().join(format!("ufork-callgrind-{}.out", std::process::id()));
    let (few, many) = (1_000, 11_000);
    let a = collected(few, &out)?;
    let b = collected(many, &out)?;
    let per = |x: u64, y: u64| y.saturating_sub(x) as f64 / (many - few) as f64;
    Ok(PerRequest {
        instructions: per(a.instructions, b.instructions),
        allocations: per(a.allocations, b.allocations),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_by_compressed_name() {
        let profile = "\
fn=(1) ufork_wsgi_like::serve::run
cfn=(2) malloc
calls=3 0x0
5 60
cfn=(3) free
calls=3 0x0
5 40
fn=(4) other
cfn=(2)
calls=2 0x0
7 40
cfn=(5) realloc
calls=1 0x0
8 20
";
        assert_eq!(calls_to(profile, &ALLOCATORS), 6);
        assert_eq!(calls_to(profile, &["free"]), 3);
    }
}
