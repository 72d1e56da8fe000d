//! Project tasks: `cargo xtask test` (everything CI checks) and `cargo xtask
//! bench` (the benchmark suite against the peers it can install).
#![forbid(unsafe_code)]

mod bench;
mod readme;
mod tidy;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("bench") => bench::run(&args[1..]),
        Some("tidy") => tidy::run(&root()),
        Some("readme") => readme::run(&root(), &cargo),
        _ => {
            eprintln!("usage: cargo xtask test | bench [core|io|http|ops|tail]... | tidy | readme");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn step(name: &str, mut cmd: Command) -> Result<(), String> {
    eprintln!("==> {name}");
    let status = cmd
        .status()
        .map_err(|e| format!("{name}: cannot run: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn test() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    step("cargo fmt --check", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    step("cargo clippy", clippy)?;

    tidy::run(&root())?;

    let nextest = has_nextest();
    for features in [&["--all-features"][..], &[][..]] {
        let mut tests = cargo();
        if nextest {
            tests.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        } else {
            tests.args(["test", "--workspace", "--no-fail-fast"]);
        }
        tests.args(features);
        let label = if features.is_empty() {
            "default features"
        } else {
            "all features"
        };
        step(&format!("tests ({label})"), tests)?;
    }

    let mut doctests = cargo();
    doctests.args(["test", "--workspace", "--doc", "--all-features"]);
    step("doc tests", doctests)?;

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings");
    step("cargo doc", doc)?;

    // The README's runnable shell blocks, as a reader pastes them.
    readme::run(&root(), &cargo)?;
    eprintln!("==> all checks passed");
    Ok(())
}
