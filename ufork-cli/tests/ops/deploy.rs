//! The deployment files in `ufork-cli/deploy/`: checked by systemd's own
//! verifier, and held consistent with the flags they pass (the Kubernetes
//! manifest's schema is checked by `.ci/run` with kubernetes-validate).

use std::path::PathBuf;
use std::process::Command;

use crate::util::*;

fn deploy(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The installed systemd's version (`systemd 252 (...)`).
fn systemd_version() -> u32 {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian's systemd package; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {text:?}"))
}

/// The value of `--flag VALUE` in a command line given as words.
fn flag<'a>(words: &[&'a str], name: &str) -> &'a str {
    let at = words
        .iter()
        .position(|w| *w == name)
        .unwrap_or_else(|| panic!("no {name} in {words:?}"));
    words[at + 1]
}

/// `ExecStart=` with its continuation lines joined, as words.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let dir = TempDir::new("units");
    let binary = env!("CARGO_BIN_EXE_ufork");
    // The verifier checks that ExecStart's program exists: point it at the
    // binary under test.
    let service = deploy("ufork.service").replace("/usr/local/bin/ufork", binary);
    std::fs::write(dir.join("ufork.service"), service).unwrap();
    std::fs::write(dir.join("ufork.socket"), deploy("ufork.socket")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "./ufork.service", "./ufork.socket"])
        .current_dir(dir.path())
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // systemd before 253 knows neither Type=notify-reload nor ReloadSignal=
    // (the unit's comment says what to use there); nothing else may be wrong.
    let older = systemd_version() < 253;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let known_new = line.contains("Failed to parse service type, ignoring: notify-reload")
            || line.contains("Unknown key 'ReloadSignal'");
        assert!(
            older && known_new,
            "systemd-analyze verify: {line}\n{stderr}"
        );
    }
}

#[test]
fn the_units_and_the_manifest_agree_with_the_flags_they_pass() {
    let service = deploy("ufork.service");
    let socket = deploy("ufork.socket");
    let words = exec_start(&service);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    // Every flag ExecStart passes is one `ufork serve` accepts.
    let mut check = ufork_command(&words);
    check.arg("--help");
    let out = check.output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in words.iter().filter(|w| w.starts_with("--")) {
        assert!(help.contains(word), "`ufork serve` has no {word}");
    }
    // The service binds what its socket unit listens on (so it adopts it).
    let listen = socket
        .lines()
        .find_map(|l| l.strip_prefix("ListenStream="))
        .expect("ListenStream=");
    assert_eq!(flag(&words, "--bind"), listen);
    let graceful: u64 = flag(&words, "--graceful-timeout").parse().unwrap();
    let stop_timeout: u64 = service
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec=")
        .parse()
        .unwrap();
    assert!(stop_timeout > graceful, "{stop_timeout} <= {graceful}");
    assert!(service.contains("\nType=notify-reload\n"));
    assert!(service.contains("\nWatchdogSec="));
    assert!(service.contains("\nExecReload=/usr/local/bin/ufork reload "));

    let manifest = deploy("kubernetes.yaml");
    let command = container_command(&manifest);
    assert_eq!(
        command.first(),
        Some(&"/usr/local/bin/ufork"),
        "ufork is PID 1"
    );
    let graceful: u64 = flag(&command, "--graceful-timeout").parse().unwrap();
    let grace: u64 = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds")
        .trim()
        .parse()
        .unwrap();
    // Traffic still arrives for a moment after SIGTERM, which ufork's stop
    // refuses at once: the pod sleeps before it is sent.
    let pre_stop: u64 = manifest
        .lines()
        .skip_while(|l| l.trim() != "preStop:")
        .find_map(|l| l.trim().strip_prefix("seconds:"))
        .expect("a preStop sleep")
        .trim()
        .parse()
        .unwrap();
    assert!(pre_stop >= 5, "preStop sleep {pre_stop}");
    assert!(
        grace > pre_stop + graceful,
        "{grace} <= preStop {pre_stop} + --graceful-timeout {graceful}"
    );
    let metrics_port = flag(&command, "--metrics-bind").rsplit(':').next().unwrap();
    assert!(
        manifest.contains(&format!(
            "- name: metrics\n              containerPort: {metrics_port}\n"
        )),
        "the metrics port is {metrics_port}"
    );
    for probe in ["readinessProbe:", "livenessProbe:"] {
        let block: Vec<&str> = manifest
            .lines()
            .skip_while(|l| l.trim() != probe)
            .take(4)
            .collect();
        assert!(
            block.iter().any(|l| l.trim() == "path: /healthz"),
            "{probe} {block:?}"
        );
        assert!(
            block.iter().any(|l| l.trim() == "port: metrics"),
            "{probe} {block:?}"
        );
    }
}

/// The container's command, one `- word` per line under `command:`.
fn container_command(manifest: &str) -> Vec<&str> {
    manifest
        .lines()
        .skip_while(|l| l.trim() != "command:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|w| w.trim_matches('"'))
        .collect()
}

#[test]
fn the_kubernetes_command_serves_as_pid_1_and_answers_its_probes() {
    let dir = TempDir::new("pid1");
    std::fs::create_dir(dir.join("www")).unwrap();
    let manifest = deploy("kubernetes.yaml");
    let www = dir.str("www");
    let args: Vec<&str> = container_command(&manifest)
        .into_iter()
        .skip(1) // /usr/local/bin/ufork: the binary under test instead
        .map(|w| match w {
            "/srv/www" => www.as_str(),
            "0.0.0.0:8000" | "0.0.0.0:9100" => "127.0.0.1:0",
            other => other,
        })
        .collect();
    // A new pid namespace (and its own /proc), as a container has.
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args(&args);
    let mut pool = Running::start_with(&mut command);
    pool.expect_line("(arbiter pid 1)");
    let health = pool.health_addr();
    let deadline = std::time::Instant::now() + DEADLINE;
    while get(health, "/healthz").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::yield_now();
    }
    // The kubelet's SIGTERM, to ufork (PID 1 in there; unshare's child here).
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pool.pid()))
        .expect("unshare's children");
    let ufork: i32 = children.trim().parse().expect("one child: ufork");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(ufork).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(
        pool.transcript()
            .contains("arbiter pid 1 stopped: every worker reaped")
    );
}

/// `ufork SUBCOMMAND` from the words of a deployment's command line.
fn ufork_command(words: &[&str]) -> Command {
    assert!(words[0].ends_with("/ufork"), "{words:?}");
    let mut command = ufork();
    command.arg(words[1]);
    command
}
