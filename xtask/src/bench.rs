//! `cargo xtask bench [core|io|http|ops|tail]...`: runs the benchmark examples in
//! release mode after installing the peers they compare with, by package
//! name: wrk, nginx and valgrind from Debian's packages, gunicorn and Python uFork
//! into a venv in the temp dir (hyper, axum and tokio are dev-dependencies
//! of the http bench). A peer that cannot be installed is reported as
//! skipped by the bench, which still runs.

use std::env;
use std::process::Command;
use std::time::Instant;

use crate::{cargo, step};

/// The benches: name on the command line, package, example. `ops` is
/// `bench_http`'s operations row, run against the release `ufork` binary;
/// `tail` is its keep-alive tail experiment, run only when named.
const BENCHES: [(&str, &str, &str); 5] = [
    ("core", "ufork-core", "bench_core"),
    ("io", "ufork-io", "bench_io"),
    ("http", "ufork-wsgi-like", "bench_http"),
    ("ops", "ufork-wsgi-like", "bench_http"),
    ("tail", "ufork-wsgi-like", "bench_http"),
];

pub fn run(which: &[String]) -> Result<(), String> {
    if let Some(unknown) = which
        .iter()
        .find(|w| !BENCHES.iter().any(|(name, ..)| name == w))
    {
        return Err(format!(
            "unknown bench {unknown:?}; the benches are core, io, http, ops and tail"
        ));
    }
    let all = which.is_empty();
    let wants = |name: &str| (all && name != "tail") || which.iter().any(|w| w == name);
    let started = Instant::now();
    let mut env_vars: Vec<(String, String)> = Vec::new();
    // Every bench has a Python peer: gunicorn (core, http) and uFork (io, http).
    if let Some(python) = venv(wants("http") || wants("core")) {
        env_vars.push(("UFORK_BENCH_PYTHON".into(), python));
    }
    if wants("http") || wants("ops") || wants("tail") {
        apt_install(&[("wrk", "wrk"), ("nginx", "nginx"), ("valgrind", "valgrind")]);
    }
    for (name, package, example) in BENCHES {
        if !wants(name) {
            continue;
        }
        let mut run = cargo();
        run.args([
            "run",
            "--release",
            "--quiet",
            "-p",
            package,
            "--example",
            example,
        ]);
        if package == "ufork-core" {
            run.args(["--features", "rng"]);
        }
        if name == "http" {
            // ufork-core's async example is a contender of the http bench,
            // which finds it beside its own executable.
            let mut build = cargo();
            build.args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "ufork-core",
                "--example",
                "async_tokio",
            ]);
            step("build the async_tokio example", build)?;
        }
        if name == "tail" {
            run.env("UFORK_BENCH_ROWS", "tail");
        }
        if name == "ops" || name == "http" {
            // The ops rows and http's recycle row run the `ufork` binary.
            let mut build = cargo();
            build.args(["build", "--release", "--quiet", "-p", "ufork-cli"]);
            step("build the ufork binary", build)?;
            let target = env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| crate::root().join("target"), Into::into);
            run.env("UFORK_BENCH_UFORK", target.join("release/ufork"));
            if name == "ops" {
                run.env("UFORK_BENCH_ROWS", "ops");
            }
        }
        for (k, v) in &env_vars {
            run.env(k, v);
        }
        step(&format!("bench {name}"), run)?;
    }
    eprintln!(
        "==> benches done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn on_path(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin"]
        .iter()
        .any(|dir| std::path::Path::new(dir).join(program).is_file())
        || env::var_os("PATH")
            .is_some_and(|paths| env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// Installs the missing `(program, package)` pairs with apt-get (refreshing
/// the package lists once if the first try fails); failures are left to
/// the bench to report as skipped peers.
fn apt_install(wanted: &[(&str, &str)]) {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("==> installing {} (apt-get)", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let _ = install();
    }
}

/// A venv in the temp dir with the Python peers; returns its python.
fn venv(with_gunicorn: bool) -> Option<String> {
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
