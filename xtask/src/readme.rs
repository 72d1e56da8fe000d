//! `cargo xtask readme`: runs every shell block of README.md marked
//! runnable (a fence whose info string is `sh runnable`), each in a fresh
//! `bash -euo pipefail` from the repository root, as a reader would paste it,
//! so the README cannot drift from what the code does.
//!
//! `ufork` is on PATH (the freshly built debug binary stands in for `cargo
//! install --path ufork-cli`) and CARGO_TARGET_DIR is the workspace's, so a
//! block that builds against the crates reuses what is compiled. Each block
//! has [`BLOCK_TIMEOUT`]; a block that outlives it is killed with its
//! process group and reported.

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
        let mut command = Command::new("bash");
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
