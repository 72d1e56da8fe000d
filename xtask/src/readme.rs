//! `cargo xtask readme`: runs every shell block of README.md marked
//! runnable (a fence whose info string is `sh runnable`), each in a fresh
//! `bash -euo pipefail` from the repository root, as a reader would paste it,
//! so the README cannot drift from what the code does.
//!
//! `ufork` is on PATH (the freshly built debug binary stands in for `cargo
//! install --path ufork-cli`) and CARGO_TARGET_DIR is the workspace's, so a
//! block that builds against the crates reuses what is compiled. Each block
//! has [`BLOCK_TIMEOUT`]; a block that outlives it is killed with its
//! process group and reported, and the pools a failed block left running
//! (pidfiles under /tmp/ufork-demo) are stopped. Blocks run one at a time on
//! the machine (flock(1) on a file in the temp dir), since every checker uses
//! the same ports and directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The most one block may take.
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(240);

/// A runnable block: its first line number in README.md and its text.
#[derive(Debug, PartialEq, Eq)]
pub struct Block {
    /// 1-based line of the opening fence.
    pub line: usize,
    /// The commands.
    pub text: String,
}

/// The blocks fenced with ```` ```sh runnable ````.
pub fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut current {
            None => {
                let info = line.trim_start().strip_prefix("```").map(str::trim);
                if info.is_some_and(|info| info.split_whitespace().eq(["sh", "runnable"])) {
                    current = Some(Block {
                        line: i + 1,
                        text: String::new(),
                    });
                }
            }
            Some(block) => {
                if line.trim_start().starts_with("```") {
                    blocks.extend(current.take());
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    blocks
}

/// Builds `ufork`, then runs every runnable block of `root`/README.md.
pub fn run(root: &Path, cargo: &dyn Fn() -> Command) -> Result<(), String> {
    let mut build = cargo();
    build.args(["build", "--quiet", "-p", "ufork-cli"]);
    let built = build
        .status()
        .map_err(|e| format!("readme: cannot build ufork: {e}"))?;
    if !built.success() {
        return Err("readme: cannot build ufork".to_owned());
    }
    let readme = std::fs::read_to_string(root.join("README.md"))
        .map_err(|e| format!("readme: cannot read README.md: {e}"))?;
    let blocks = blocks(&readme);
    if blocks.is_empty() {
        return Err("readme: README.md has no ```sh runnable block".to_owned());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut path = std::ffi::OsString::from(target.join("debug"));
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    for block in &blocks {
        eprintln!("==> README.md line {}", block.line);
        let started = Instant::now();
        // Every engineer's checker uses the same ports and /tmp/ufork-demo:
        // one block at a time on the machine (flock(1), when there is one;
        // -o: the lock's descriptor is not inherited, fd 3 stays free).
        let lock = std::env::temp_dir().join("ufork-readme.lock");
        let mut command = if has_flock() {
            let mut c = Command::new("flock");
            c.args(["-o", "-w", "600"]).arg(&lock).arg("bash");
            c
        } else {
            Command::new("bash")
        };
        command
            .args([
                "--noprofile",
                "--norc",
                "-euo",
                "pipefail",
                "-c",
                &block.text,
            ])
            .current_dir(root)
            .env("PATH", &path)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("UFORK_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let output = run_bounded(command)?;
        if !output.0 {
            stop_leftovers(&path);
            return Err(format!(
                "README.md line {}: the block failed after {:.1}s\n--- block ---\n{}--- output ---\n{}",
                block.line,
                started.elapsed().as_secs_f64(),
                block.text,
                output.1
            ));
        }
    }
    eprintln!("==> {} README blocks ran", blocks.len());
    Ok(())
}

fn has_flock() -> bool {
    Command::new("flock")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// After a failed block: stops the pools it left running (by their
/// pidfiles under /tmp/ufork-demo), so they do not hold the next run's ports.
fn stop_leftovers(path: &std::ffi::OsStr) {
    let Ok(entries) = std::fs::read_dir("/tmp/ufork-demo") else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.path();
        if file.extension().is_some_and(|e| e == "pid") {
            let _ = Command::new("ufork")
                .args(["stop", "--timeout", "30", "--pidfile"])
                .arg(&file)
                .env("PATH", path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `command` within [`BLOCK_TIMEOUT`]: whether it succeeded, and its
/// output (stdout then stderr).
fn run_bounded(mut command: Command) -> Result<(bool, String), String> {
    let child = command
        .spawn()
        .map_err(|e| format!("readme: cannot run bash: {e}"))?;
    let pgid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(BLOCK_TIMEOUT) {
        Ok(output) => output,
        Err(_) => {
            // The block's process group: bash and whatever it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let _ = rx.recv();
            return Ok((
                false,
                format!("killed after {}s (the limit)", BLOCK_TIMEOUT.as_secs()),
            ));
        }
    };
    let output = output.map_err(|e| format!("readme: cannot wait for bash: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Ok((output.status.success(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blocks_marked_runnable_are_taken() {
        let readme = "# x\n```sh\nnot this\n```\n\n```sh runnable\necho one\necho two\n```\n```text\nno\n```\n  ```sh  runnable\necho three\n  ```\n";
        assert_eq!(
            blocks(readme),
            [
                Block {
                    line: 6,
                    text: "echo one\necho two\n".to_owned()
                },
                Block {
                    line: 13,
                    text: "echo three\n".to_owned()
                }
            ]
        );
    }
}
