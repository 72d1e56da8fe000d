//! Starting twice, and one exit-code table for every subcommand.

use std::io::Write;
use std::process::Stdio;

use rustix::process::Signal;

use crate::util::*;

/// The pidfile is looked at before anything is bound: a second start on the
/// same address names the running pid, not the address in use.
#[test]
fn a_second_start_names_the_running_pid_before_binding() {
    let dir = TempDir::new("twice");
    let pidfile = dir.str("ufork.pid");
    let mut first = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--pidfile",
        &pidfile,
    ]);
    let addr = first.http_addr().to_string();
    first.expect_line("started");
    let pid = first.pid().to_string();
    for daemon in [false, true] {
        let mut args = vec!["serve", "--bind", &addr, "--pidfile", &pidfile];
        if daemon {
            args.push("--daemon");
        }
        let out = run(&args);
        assert_one_line_error(
            &out,
            1,
            &[
                "--pidfile",
                &format!("already running as pid {pid}"),
                "ufork stop",
            ],
        );
        assert!(!out.stderr.contains("in use"), "{out:#?}");
        let mut run_args = vec!["run", "--bind", &addr, "--pidfile", &pidfile];
        if daemon {
            run_args.push("--daemon");
        }
        run_args.extend(["--", "true"]);
        let out = run(&run_args);
        assert_one_line_error(&out, 1, &[&format!("already running as pid {pid}")]);
    }
    first.signal(Signal::TERM);
    assert_eq!(first.wait().code(), Some(0), "{}", first.transcript());
}

/// Runs `ufork ctl` with `input` on a pipe.
fn ctl_piped(socket: &str, input: &str) -> Output {
    let mut child = ufork()
        .args(["ctl", "--control-socket", socket])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ufork ctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write commands");
    let output = child.wait_with_output().expect("wait for ufork ctl");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `ctl` follows the table: 3 when nothing listens, 1 when a piped command
/// fails (the others still run); the status header says "1 worker".
#[test]
fn ctl_follows_the_exit_code_table() {
    let dir = TempDir::new("ctlcodes");
    let socket = dir.str("ctl.sock");
    let out = run(&["ctl", "--control-socket", &socket, "status"]);
    assert_eq!(out.code(), Some(3), "{out:#?}");
    assert!(out.stderr.starts_with("ufork: not running"), "{out:#?}");
    let mut pool = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--control-socket",
        &socket,
    ]);
    pool.expect_line("control socket");
    wait_ready(&socket, 1);
    let out = ctl_piped(&socket, "status\n");
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stdout.starts_with("1 worker (target 1), 1 ready;"),
        "{out:#?}"
    );
    let out = ctl_piped(&socket, "dance\nworkers\n");
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(out.stdout.contains("error: unknown command"), "{out:#?}");
    assert!(out.stdout.contains("1 worker (1 running)"), "{out:#?}");
    assert_one_line_error(&out, 1, &["1 command failed"]);
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    let out = run(&["ctl", "--control-socket", &socket, "status"]);
    assert_eq!(out.code(), Some(3), "{out:#?}");
}

/// The table is in `--help`.
#[test]
fn help_has_the_exit_code_table() {
    let out = run(&["--help"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    for row in [
        "0  success",
        "1  runtime failure",
        "2  usage error",
        "3  not running",
        "4  `status`: the pool runs degraded",
    ] {
        assert!(out.stdout.contains(row), "{row}: {out:#?}");
    }
}

/// The README shows `ufork --help` as it is.
#[test]
fn the_readme_shows_the_current_help() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let after = readme
        .split_once("`ufork --help`:\n\n```text\n")
        .expect("a `ufork --help` block in README.md")
        .1;
    let shown = &after[..after.find("```").expect("the block ends")];
    let out = run(&["--help"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(shown, out.stdout, "update README.md's `ufork --help` block");
}

/// The pidfile is locked before the sockets are bound, yet `run` still hands
/// the socket over as fd 3.
#[test]
fn the_pidfile_lock_leaves_fd_3_to_the_socket() {
    let dir = TempDir::new("fd3");
    let pidfile = dir.str("run.pid");
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--pidfile",
        &pidfile,
        "--bind",
        "127.0.0.1:0",
        "--",
        "python3",
        "-c",
        "import socket, time; s = socket.socket(fileno=3); print('fd', 3, 'is', s.type.name, s.getsockname()[0], flush=True); time.sleep(600)",
    ]);
    let line = pool.expect_match(|l| l.contains("[0 ") && l.contains("fd 3 is"), "fd 3");
    assert!(line.ends_with("fd 3 is SOCK_STREAM 127.0.0.1"), "{line}");
    let pid = pool.pid();
    let text = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(text.trim(), pid.to_string());
    let out = run(&["run", "--pidfile", &pidfile, "--", "true"]);
    assert_one_line_error(&out, 1, &[&format!("already running as pid {pid}")]);
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(
        !dir.join("run.pid").exists(),
        "the pidfile is removed at stop"
    );
}

/// README.md's "Errors" transcript is what the binary says (the commands
/// that need a setup of their own, or would bind port 8000, are left out).
#[test]
fn the_readme_error_transcript_is_true() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split_once("### Errors\n")
        .expect("an Errors section")
        .1;
    let block = section
        .split_once("```text\n")
        .expect("a transcript")
        .1
        .split_once("```")
        .expect("the block ends")
        .0;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_ufork"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = TempDir::new("readme-errors");
    let mut checked = 0;
    let mut rest = block;
    while let Some(at) = rest.find("$ ") {
        let text = &rest[at + 2..];
        let (command, after) = text.split_once('\n').unwrap_or((text, ""));
        let expected = after.split("\n$ ").next().unwrap_or_default();
        rest = after;
        if ["badinterp", "port taken", "--log-file /no/such"]
            .iter()
            .any(|skip| command.contains(skip))
        {
            continue;
        }
        let out = std::process::Command::new("bash")
            .args(["-c", command])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("UFORK_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("bash");
        let got = format!(
            "{}{}(exit {})\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code().unwrap_or(-1)
        );
        assert_eq!(got.trim_end(), expected.trim_end(), "$ {command}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} commands checked");
}

/// A worker that checks fd 3 is its listening socket (exit 1 otherwise),
/// says so (READY=1 too, under `--notify`) and serves.
const FD3_CHECK_PY: &str = r#"
import os, socket, sys
try:
    s = socket.socket(fileno=3)
    ok = os.environ.get("LISTEN_FDS") == "1" and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
except OSError as e:
    ok = False
if not ok:
    print("fd 3 is not the listening socket", flush=True)
    sys.exit(1)
print("fd 3 is the listening socket", flush=True)
addr = os.environ.get("NOTIFY_SOCKET")
if addr:
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
while True:
    c, _ = s.accept()
    c.sendall(b"served\n")
    c.close()
"#;

/// A descriptor inherited at fd 3 (a shell's `exec 3<file`, bats, a CI
/// runner) is where `run` must hand its socket: each worker gets the socket
/// there instead, as systemd does; the arbiter keeps its own copy.
#[test]
fn run_hands_its_socket_at_fd_3_over_an_inherited_descriptor() {
    let dir = TempDir::new("fd3");
    let check = dir.join("check.py");
    std::fs::write(&check, FD3_CHECK_PY).unwrap();
    let script = format!(
        "exec 3</dev/null; exec {} run -w 1 --bind 127.0.0.1:0 -- python3 {}",
        env!("CARGO_BIN_EXE_ufork"),
        check.display()
    );
    let mut pool = Running::start_with(
        std::process::Command::new("bash")
            .args(["-c", &script])
            .env_remove("UFORK_LOG")
            .stdin(Stdio::null()),
    );
    let line = pool.expect_line("listening on");
    let addr: std::net::SocketAddr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    pool.expect_line("fd 3 is the listening socket");
    assert_eq!(exchange(addr, b""), "served\n");
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// The same under `--daemon`, started from a command substitution that
/// leaves fd 3 open on its pipe (`3>&1`): the launcher reports the pool
/// ready (every worker found its socket at fd 3), and the substitution
/// ends, since the daemon keeps nothing of the pipe.
#[test]
fn run_daemon_started_with_fd_3_open_serves_and_lets_the_caller_go() {
    let dir = TempDir::new("fd3-daemon");
    let check = dir.join("check.py");
    std::fs::write(&check, FD3_CHECK_PY).unwrap();
    let pidfile = dir.join("ufork.pid");
    let _guard = DaemonGuard(pidfile.clone());
    let script = format!(
        "out=$({} run -w 2 --notify --daemon --pidfile {} --log-file {} --bind 127.0.0.1:0 -- python3 {} 3>&1 2>&1); echo \"[$out]\"",
        env!("CARGO_BIN_EXE_ufork"),
        pidfile.display(),
        dir.join("ufork.log").display(),
        check.display()
    );
    let out = std::process::Command::new("timeout")
        .args(["60", "bash", "-c", &script])
        .env_remove("UFORK_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("[ufork: daemon started as pid "),
        "{stdout}"
    );
    let stop = run(&["stop", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    let log = std::fs::read_to_string(dir.join("ufork.log")).unwrap();
    assert_eq!(
        log.matches("fd 3 is the listening socket").count(),
        2,
        "{log}"
    );
}

/// A pool whose every worker fails to boot gives up after 5 failures per
/// slot (the default) and exits 1, naming the last failure; the worker's own
/// words are in the output above it.
#[test]
fn a_pool_that_cannot_start_gives_up_and_exits_1_naming_the_failure() {
    let out = run(&[
        "run",
        "-w",
        "2",
        "--",
        "sh",
        "-c",
        "echo bad config >&2; exit 78",
    ]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(out.stderr.contains("] bad config"), "{out:#?}");
    assert!(
        out.stderr.contains("every slot failed 5 times in a row"),
        "{out:#?}"
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("ufork: error: gave up"), "{out:#?}");
    assert!(last.contains("exit code 78 (EX_CONFIG)"), "{out:#?}");
    assert!(!out.stderr.contains("panicked"), "{out:#?}");
}

/// A program that exits 0 at once is no server: without a planned recycle,
/// each young exit is a crash-loop step, so the pool backs off and gives up
/// instead of forking it as fast as it can forever.
#[test]
fn a_program_that_keeps_exiting_0_at_once_backs_off_and_gives_up() {
    let out = run(&["run", "-w", "1", "--", "true"]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("every slot failed 5 times in a row"),
        "{out:#?}"
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("ufork: error: gave up"), "{out:#?}");
}

/// `give_up_after` in a --config file; 0 never gives up (the pool then stops
/// as asked, exit 0).
#[test]
fn give_up_after_comes_from_the_config_file_and_0_never_gives_up() {
    let dir = TempDir::new("give-up");
    let file = dir.join("ufork.toml");
    std::fs::write(
        &file,
        "give_up_after = 1\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = run(&["run", "-c", file, "-w", "1"]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("failed 1 time in a row"), "{out:#?}");
    assert!(last.contains("exit code 3"), "{out:#?}");

    let mut pool = Running::start(&["run", "-c", file, "-w", "1", "--give-up-after", "0"]);
    pool.expect_line("worker 0 pid");
    // Past the default's 5 failures, still restarting.
    pool.expect_line("(generation 6)");
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(!pool.transcript().contains("giving up"));
}

/// `--user nobody` with the pidfile and control socket in a directory only
/// root may write: everything the arbiter makes there is made before the
/// privilege drop, so the daemon starts and answers; a start that fails
/// removes its pidfile (as root, before the drop).
#[test]
fn a_daemon_as_nobody_keeps_its_files_in_a_root_owned_directory() {
    use std::os::unix::fs::PermissionsExt as _;
    if !rustix::process::geteuid().is_root() {
        println!("skipped: only root can drop privileges to nobody");
        return;
    }
    let dir = TempDir::new("rootdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pidfile = dir.str("p.pid");
    let socket = dir.str("c.sock");
    let site = dir.path().to_str().unwrap();
    let daemon = |socket: &str| {
        run(&[
            "serve",
            site,
            "--daemon",
            "--user",
            "nobody",
            "--bind",
            "127.0.0.1:0",
            "-w",
            "1",
            "--pidfile",
            &pidfile,
            "--control-socket",
            socket,
        ])
    };
    // The control socket cannot be made at all: the start fails as root, and
    // leaves no pidfile behind.
    let out = daemon(&dir.str("missing/c.sock"));
    assert_one_line_error(&out, 1, &["--control-socket", "missing/c.sock"]);
    assert!(!dir.join("p.pid").exists(), "stale pidfile: {out:#?}");

    let out = daemon(&socket);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let status = run(&["status", "--control-socket", &socket]);
    assert_eq!(status.code(), Some(0), "{status:#?}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").map(str::to_owned))
        .unwrap();
    assert!(uid.split_whitespace().all(|id| id == "65534"), "uids {uid}");
    let stop = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    // Gone, or a zombie its new parent has not reaped yet.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    assert!(
        matches!(state, None | Some("Z")),
        "pid {pid} left: {state:?}"
    );
    // The pool could not remove its pidfile (nobody may not write the
    // directory); `ufork stop`, run by root, did once the pool had exited.
    assert!(!dir.join("p.pid").exists(), "stale pidfile");
}

/// `out=$(ufork serve --daemon ... 3>&1)`: the command substitution's pipe
/// at fd 3 is nobody's in the daemon, nor in its workers, so the shell reads
/// end of file as soon as the launcher is gone, not when the pool stops.
#[test]
fn a_daemon_and_its_workers_hold_no_descriptor_the_launcher_inherited() {
    daemon_lets_go_of_the_launchers_stdout(
        "sh",
        "exec \"$0\" \"$@\" 3>&1",
        "2",
        "the daemon or a worker still holds the launcher's fd 3",
    );
}

/// Starts `ufork serve --daemon` with `workers` workers through `shell -c
/// script`, which points an extra descriptor at the launcher's stdout and
/// runs `"$0" "$@"`: the launcher exits 0 once the daemon serves, and its
/// stdout reaches end of file (nobody holds the extra descriptor any more),
/// or the test fails with `held` after `DEADLINE`.
fn daemon_lets_go_of_the_launchers_stdout(shell: &str, script: &str, workers: &str, held: &str) {
    use std::io::Read;
    let dir = TempDir::new("daemon-inherited-fd");
    let pidfile = dir.join("d.pid");
    let _guard = DaemonGuard(pidfile.clone());
    let mut launcher = std::process::Command::new(shell)
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args(["serve", "--bind", "127.0.0.1:0", "-w", workers, "--daemon"])
        .args(["--pidfile", pidfile.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = launcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let status = launcher.wait().unwrap();
    let mut stderr = String::new();
    launcher
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{script}: {status:?} {stderr}");
    // The daemon is up, every worker forked from it.
    wait_ready(&dir.str("d.control.sock"), workers.parse().unwrap());
    assert!(rx.recv_timeout(DEADLINE).is_ok(), "{script}: {held}");
}

/// `-b 0.0.0.0:P -b [::]:P`, as nginx users write it: the IPv6 socket is
/// made IPv6-only, so the two do not clash (a dual-stack `[::]` would also
/// hold the IPv4 port), and each family is served on its own socket.
#[test]
fn ipv4_and_ipv6_wildcards_on_one_port_are_both_served() {
    // A port free in both families: a dual-stack socket holds both.
    let probe = std::net::TcpListener::bind("[::]:0")
        .expect("this test needs IPv6: a dual-stack socket on [::] could not be bound");
    let port = probe.local_addr().expect("address").port();
    drop(probe);
    let (v4, v6) = (format!("0.0.0.0:{port}"), format!("[::]:{port}"));
    let mut pool = Running::start(&["serve", "-w", "1", "-b", &v4, "-b", &v6]);
    pool.http_addr();
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let (status, _, body) = get(addr.parse().expect("address"), "/");
        assert_eq!(status, 200, "{addr}: {}", pool.transcript());
        assert!(!body.is_empty(), "{addr}");
    }
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

/// A descriptor the launcher inherited at a number the open-files limit no
/// longer reaches (`prlimit --nofile=128:128` over a shell's fd 251): the
/// daemon still starts, and lets go of it. Under the soft limit alone
/// (`128:`, the hard one as it was) and under both.
#[test]
fn a_daemon_starts_with_an_inherited_descriptor_past_the_open_files_limit() {
    for limits in ["128:", "128:128"] {
        daemon_lets_go_of_the_launchers_stdout(
            "bash",
            &format!("exec 251>&1; exec prlimit --nofile={limits} \"$0\" \"$@\""),
            "1",
            "the daemon or its worker still holds the launcher's fd 251",
        );
    }
}

/// A `--daemon` launcher waits for its daemon's readiness with the pool's
/// signals unblocked (the daemon keeps them held until its handlers are in
/// place): Ctrl-C ends the wait at once, as it always did, instead of being
/// held until the daemon is ready or its 30 s run out.
#[test]
fn a_daemon_launcher_waiting_for_readiness_obeys_ctrl_c() {
    let dir = TempDir::new("launcher-sigint");
    let pidfile = dir.join("ufork.pid");
    // `--notify` and a program that never says READY=1: never ready.
    let mut launcher = ufork()
        .args(["run", "--daemon", "--notify", "-w", "1", "--pidfile"])
        .arg(&pidfile)
        .args(["--", "sleep", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ufork");
    // The daemon took the pidfile: the launcher waits for it (or is about
    // to; a signal before it unblocks waits for that, not for 30 s).
    let daemon = pid_once_named(&pidfile);
    let sent = std::time::Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(launcher.id() as i32).unwrap(),
        Signal::INT,
    )
    .unwrap();
    let status = launcher.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(Signal::INT.as_raw()), "{status:?}");
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(10),
        "the launcher took {:?}",
        sent.elapsed()
    );
    // The daemon, left behind as before, is stopped here.
    assert!(ufork_daemon::signal(daemon, Signal::TERM).unwrap());
    assert!(ufork_daemon::wait_for_exit(daemon, Some(DEADLINE)).unwrap());
}

/// SIGTERM, then SIGINT while workers that ignore SIGTERM hold the graceful
/// stop up: the stop becomes immediate, and the log says why (not "second
/// SIGINT", which no one sent).
#[test]
fn sigint_during_a_sigterm_stop_stops_at_once_and_says_so() {
    let mut pool = Running::start(&[
        "run",
        "-w",
        "1",
        "--graceful-timeout",
        "600",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo up; while :; do sleep 1; done",
    ]);
    pool.expect_line("] up");
    pool.signal(Signal::TERM);
    pool.expect_line("SIGTERM: stopping 1 worker gracefully");
    pool.signal(Signal::INT);
    pool.expect_line("SIGINT during a graceful stop: stopping every worker now");
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}
