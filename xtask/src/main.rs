//! Project tasks: `cargo xtask test` (everything CI checks) and `cargo xtask
//! bench` (the benchmark suite against the peers it can install).
#![forbid(unsafe_code)]

mod readme;
mod tidy;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("tidy") => tidy::run(&root()),
        Some("readme") => readme::run(&root(), &cargo),
        _ => {
            eprintln!("usage: cargo xtask test | bench [core|io|http]... | tidy | readme");
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

/// Runs the benchmarks. Installs what the peers need where it can (wrk from
/// Debian's packages; gunicorn and Python uFork into a venv in the temp dir)
/// and passes them on by environment; a missing peer is reported as skipped.
fn bench(which: &[String]) -> Result<(), String> {
    let all = which.is_empty();
    let wants = |name: &str| all || which.iter().any(|w| w == name);
    let mut env_vars: Vec<(String, String)> = Vec::new();
    // Every bench has a Python peer: gunicorn (core, http) and uFork (io, http).
    if let Some(python) = bench_venv(wants("http") || wants("core")) {
        env_vars.push(("UFORK_BENCH_PYTHON".into(), python));
    }
    if wants("http") && !on_path("wrk") {
        eprintln!("==> installing wrk (apt-get)");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "wrk"])
            .status();
        if !on_path("wrk") {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-q", "wrk"])
                .status();
        }
    }
    for (name, package) in [
        ("core", "ufork-core"),
        ("io", "ufork-io"),
        ("http", "ufork-wsgi-like"),
    ] {
        if !wants(name) {
            continue;
        }
        let mut run = cargo();
        let example = format!("bench_{name}");
        run.args([
            "run",
            "--release",
            "--quiet",
            "-p",
            package,
            "--example",
            &example,
        ]);
        if package == "ufork-core" {
            run.args(["--features", "rng"]);
        }
        for (k, v) in &env_vars {
            run.env(k, v);
        }
        step(&format!("bench {name}"), run)?;
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// A venv in the temp dir with the Python peers; returns its python.
fn bench_venv(with_gunicorn: bool) -> Option<String> {
    let venv = env::temp_dir().join("ufork-bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!(
            "==> making a venv for the Python peers in {}",
            venv.display()
        );
        let made = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("    cannot make a venv; Python peers will be skipped");
            return None;
        }
    }
    let mut packages = vec!["ufork"];
    if with_gunicorn {
        packages.push("gunicorn");
    }
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(&packages)
        .status();
    if !installed.is_ok_and(|s| s.success()) {
        eprintln!(
            "    pip install {} failed; those peers will be skipped",
            packages.join(" ")
        );
    }
    Some(python.display().to_string())
}
