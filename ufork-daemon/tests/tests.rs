//! Integration tests: the real daemon, run by the test helper binary
//! (`src/bin/ufork-daemon-testbin.rs`), checked from outside through /proc,
//! the pidfile's lock and the launcher's output; and the rotating log.

mod util;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ufork_daemon::{Error, Pidfile, RotatingFile, Signal, Status};
use util::{DaemonGuard, TestDir, os, run, started_pid, stderr, testbin};

fn daemon_cmd(args: &[&OsStr]) -> std::process::Command {
    let mut all = vec![os("daemon")];
    all.extend_from_slice(args);
    testbin(&all)
}

// ---------------------------------------------------------------------------
// Readiness handshake

#[test]
fn launcher_returns_only_after_ready() {
    let dir = TestDir::new("ready");
    let (gate, marker, pidfile) = (dir.join("gate"), dir.join("marker"), dir.join("pid"));
    util::mkfifo(&gate);
    // A readiness timeout too long for `Instant` means no timeout.
    let mut launcher = daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--gate"),
        gate.as_os_str(),
        os("--marker"),
        marker.as_os_str(),
        os("--timeout-ms"),
        os(&u64::MAX.to_string()),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn launcher");
    // The daemon is set up (pidfile taken) and blocked before `ready`.
    let writer = util::open_fifo_writer(&gate);
    let guard = util::guard_pidfile(&pidfile);
    assert!(
        launcher.try_wait().expect("try_wait").is_none(),
        "the launcher exited before the daemon was ready"
    );
    assert!(!marker.exists());
    drop(writer);
    let output = run_to_end(launcher);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(started_pid(&output), guard.pid);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "setup done\n");
    assert!(proc_alive(guard.pid));
    guard.stop();
    dir.finish();
}

#[test]
fn a_multi_threaded_process_is_not_daemonized() {
    let dir = TestDir::new("threads");
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[
        os("--thread"),
        os("--pidfile"),
        pidfile.as_os_str(),
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot daemonize a process with 2 threads"),
        "{}",
        stderr(&output)
    );
    assert!(!pidfile.exists(), "nothing was forked, no pidfile taken");
    dir.finish();
}

#[test]
fn daemon_failure_before_ready_is_printed_by_the_launcher() {
    let dir = TestDir::new("port-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--bind"),
        os(&addr),
    ]));
    util::assert_no_holder(&pidfile);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("cannot bind {addr}")),
        "stderr: {err}"
    );
    assert!(err.contains("in use"), "stderr: {err}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("started"));
    // The daemon returned from main: its pidfile went with it.
    assert!(!pidfile.exists());
    dir.finish();
}

#[test]
fn fail_and_drop_before_ready_fail_the_launcher() {
    let dir = TestDir::new("fail-drop");
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--then"),
        os("fail"),
    ]));
    util::assert_no_holder(&pidfile);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("error: the test asked the daemon to fail"),
        "{}",
        stderr(&output)
    );

    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--then"),
        os("drop"),
    ]));
    util::assert_no_holder(&pidfile);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("gave up before reporting readiness"),
        "{}",
        stderr(&output)
    );
    assert!(!pidfile.exists());
    dir.finish();
}

#[test]
fn silent_exit_before_ready_fails_the_launcher() {
    let dir = TestDir::new("silent-exit");
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--then"),
        os("exit"),
    ]));
    util::assert_no_holder(&pidfile);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("exited before reporting readiness"),
        "{}",
        stderr(&output)
    );
    dir.finish();
}

#[test]
fn readiness_timeout_stops_the_daemon() {
    let dir = TestDir::new("timeout");
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--then"),
        os("hang"),
        os("--timeout-ms"),
        os("300"),
    ]));
    util::assert_no_holder(&pidfile);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("did not report readiness within 300ms"),
        "{}",
        stderr(&output)
    );
    // The launcher only returns once the daemon is gone: nothing holds the
    // lock. On a loaded machine the 300 ms can pass before the daemon made
    // its pidfile at all: then there is none, which is as good.
    let status = ufork_daemon::status(&pidfile).unwrap();
    assert!(
        status == Status::NotRunning
            || status
                == Status::Stale {
                    pid: proc_pid_hint(&pidfile)
                },
        "{status:?}"
    );
    dir.finish();
}

#[test]
fn failed_setup_step_is_reported_with_its_os_error() {
    let dir = TestDir::new("chdir");
    let (missing, pidfile) = (dir.join("no-such-dir"), dir.join("pid"));
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--cwd"),
        missing.as_os_str(),
    ]));
    util::assert_no_holder(&pidfile);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "cannot change directory to {}: No such file or directory",
            missing.display()
        )),
        "stderr: {err}"
    );
    dir.finish();
}

#[test]
fn convenience_daemonize_exits_the_launcher_with_the_outcome() {
    let dir = TestDir::new("convenience");
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[
        os("--convenience"),
        os("--pidfile"),
        pidfile.as_os_str(),
    ]));
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(output.stdout.is_empty() && output.stderr.is_empty());
    let guard = util::guard_pidfile(&pidfile);

    let output = run(daemon_cmd(&[
        os("--convenience"),
        os("--pidfile"),
        pidfile.as_os_str(),
    ]));
    let second = ufork_daemon::read_pid(&pidfile)
        .unwrap()
        .filter(|&pid| pid != guard.pid)
        .map(DaemonGuard::new);
    assert!(second.is_none(), "a second daemon took the pidfile");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!("error: already running as pid {}", guard.pid)),
        "{}",
        stderr(&output)
    );
    guard.stop();
    dir.finish();
}

// ---------------------------------------------------------------------------
// The daemon's process state

#[test]
fn daemon_is_detached_with_configured_cwd_and_umask() {
    let dir = TestDir::new("cwd-umask");
    let pidfile = dir.join("pid");
    let pgrpfile = dir.join("pgrp");
    let launcher = daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--pgrpfile"),
        pgrpfile.as_os_str(),
        os("--cwd"),
        dir.path.as_os_str(),
        os("--umask"),
        os("077"),
    ])
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let launcher_pid = launcher.id() as i32;
    let output = run_to_end(launcher);
    let guard = DaemonGuard::new(started_pid(&output));
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", guard.pid)).unwrap(),
        dir.path
    );
    assert_eq!(util::proc_umask(guard.pid), 0o077);
    let stat = util::proc_stat(guard.pid);
    assert_ne!(stat.ppid, launcher_pid, "still a child of the launcher");
    assert_ne!(
        stat.session, guard.pid,
        "a session leader could acquire a terminal"
    );
    assert_ne!(
        stat.session,
        util::proc_stat(std::process::id() as i32).session,
        "setsid was not called"
    );
    assert_eq!(stat.tty_nr, 0, "has a controlling terminal");
    assert_eq!(ufork_daemon::read_pid(&pgrpfile).unwrap(), Some(stat.pgrp));
    guard.stop();
    dir.finish();
}

#[test]
fn defaults_are_root_cwd_umask_0027_and_dev_null_stdio() {
    let dir = TestDir::new("defaults");
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[os("--pidfile"), pidfile.as_os_str()]));
    let guard = DaemonGuard::new(started_pid(&output));
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", guard.pid)).unwrap(),
        Path::new("/")
    );
    assert_eq!(util::proc_umask(guard.pid), 0o027);
    for fd in 0..3 {
        assert_eq!(
            util::fd_target(guard.pid, fd),
            Path::new("/dev/null"),
            "fd {fd}"
        );
    }
    guard.stop();
    dir.finish();
}

#[test]
fn stdout_and_stderr_point_at_the_log() {
    let dir = TestDir::new("stdio-log");
    let (pidfile, log) = (dir.join("pid"), dir.join("out.log"));
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--log"),
        log.as_os_str(),
    ]));
    let guard = DaemonGuard::new(started_pid(&output));
    assert_eq!(util::fd_target(guard.pid, 0), Path::new("/dev/null"));
    assert_eq!(util::fd_target(guard.pid, 1), log);
    assert_eq!(util::fd_target(guard.pid, 2), log);
    let content = std::fs::read_to_string(&log).unwrap();
    assert!(
        content.contains("hello from daemon stdout\n"),
        "{content:?}"
    );
    assert!(
        content.contains("hello from daemon stderr\n"),
        "{content:?}"
    );
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o640
    );
    guard.stop();
    dir.finish();
}

#[test]
fn daemon_log_rotation_moves_stdio_to_the_new_file() {
    let dir = TestDir::new("log-rotation");
    let (pidfile, log) = (dir.join("pid"), dir.join("out.log"));
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--log"),
        log.as_os_str(),
        os("--log-max"),
        os("300"),
        os("--log-backups"),
        os("2"),
        os("--spam"),
        os("20"),
    ]));
    let guard = DaemonGuard::new(started_pid(&output));
    assert!(numbered(&log, 1).exists() && numbered(&log, 2).exists());
    assert!(!numbered(&log, 3).exists());
    // fds 1 and 2 follow the rotations instead of staying on a renamed file.
    assert_eq!(util::fd_target(guard.pid, 1), log);
    assert_eq!(util::fd_target(guard.pid, 2), log);
    let current = std::fs::read_to_string(&log).unwrap();
    assert!(
        current.ends_with("spam line 0019 ..........................................\n"),
        "{current:?}"
    );
    guard.stop();
    dir.finish();
}

// ---------------------------------------------------------------------------
// Pidfile

#[test]
fn pidfile_is_locked_cloexec_and_holds_the_pid() {
    let dir = TestDir::new("pidfile");
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[os("--pidfile"), pidfile.as_os_str()]));
    let guard = DaemonGuard::new(started_pid(&output));
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", guard.pid)
    );
    assert!(util::is_locked(&pidfile));
    let fd = util::fd_open_on(guard.pid, &pidfile).expect("the daemon keeps the pidfile open");
    assert_ne!(
        util::fd_flags(guard.pid, fd) & libc::O_CLOEXEC as u32,
        0,
        "pidfile fd is not close-on-exec"
    );
    assert_eq!(
        ufork_daemon::status(&pidfile).unwrap(),
        Status::Running { pid: guard.pid }
    );
    guard.stop();
    // Killed: the lock went with it, the file stays behind, stale.
    assert!(!util::is_locked(&pidfile));
    assert_eq!(
        ufork_daemon::status(&pidfile).unwrap(),
        Status::Stale {
            pid: proc_pid_hint(&pidfile)
        }
    );
    dir.finish();
}

#[test]
fn second_start_is_refused_naming_the_running_pid() {
    let dir = TestDir::new("second");
    let pidfile = dir.join("pid");
    let first = run(daemon_cmd(&[os("--pidfile"), pidfile.as_os_str()]));
    let guard = DaemonGuard::new(started_pid(&first));
    let second = run(daemon_cmd(&[os("--pidfile"), pidfile.as_os_str()]));
    let second_guard = util::guard_if_started(&second);
    assert!(second_guard.is_none(), "a second daemon started");
    assert_eq!(second.status.code(), Some(1));
    let err = stderr(&second);
    assert!(
        err.contains(&format!("already running as pid {}", guard.pid)),
        "stderr: {err}"
    );
    // The refused daemon did not touch the file.
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", guard.pid)
    );
    assert!(util::is_locked(&pidfile));
    guard.stop();
    dir.finish();
}

#[test]
fn stale_pidfile_is_taken_over() {
    let dir = TestDir::new("stale");
    let pidfile = dir.join("pid");
    // A long, unlocked, bogus pidfile: it must be truncated, not overwritten in place.
    std::fs::write(
        &pidfile,
        "4194000\n# left behind by a crash, with trailing text\n",
    )
    .unwrap();
    assert_eq!(
        ufork_daemon::status(&pidfile).unwrap(),
        Status::Stale { pid: None }
    );
    std::fs::write(&pidfile, "4194000\n").unwrap();
    assert_eq!(
        ufork_daemon::status(&pidfile).unwrap(),
        Status::Stale { pid: Some(4194000) }
    );
    std::fs::write(
        &pidfile,
        "4194000\n# left behind by a crash, with trailing text\n",
    )
    .unwrap();
    let output = run(daemon_cmd(&[os("--pidfile"), pidfile.as_os_str()]));
    let guard = DaemonGuard::new(started_pid(&output));
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", guard.pid)
    );
    assert!(util::is_locked(&pidfile));
    guard.stop();
    dir.finish();
}

#[test]
fn clean_exit_removes_pidfile_and_pgrpfile() {
    let dir = TestDir::new("clean-exit");
    let (pidfile, pgrpfile, quit) = (dir.join("pid"), dir.join("pgrp"), dir.join("quit"));
    util::mkfifo(&quit);
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--pgrpfile"),
        pgrpfile.as_os_str(),
        os("--quit"),
        quit.as_os_str(),
    ]));
    let guard = DaemonGuard::new(started_pid(&output));
    assert!(pidfile.exists() && pgrpfile.exists());
    util::release_fifo(&quit);
    guard.wait_gone();
    assert!(!pidfile.exists(), "pidfile left behind");
    assert!(!pgrpfile.exists(), "pgrpfile left behind");
    assert_eq!(ufork_daemon::status(&pidfile).unwrap(), Status::NotRunning);
    dir.finish();
}

#[test]
fn foreground_pidfile_refuses_a_second_holder_and_is_removed_on_drop() {
    let dir = TestDir::new("foreground");
    let path = dir.join("pid");
    let pidfile = Pidfile::create(&path).unwrap();
    assert_eq!(pidfile.pid(), std::process::id() as i32);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", std::process::id())
    );
    // flock locks belong to the open file description: a second open in the
    // same process conflicts too.
    match Pidfile::create(&path) {
        Err(error @ Error::AlreadyRunning { pid, .. }) => {
            assert_eq!(pid, std::process::id() as i32);
            assert!(
                error
                    .to_string()
                    .contains(&format!("already running as pid {pid}"))
            );
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    drop(pidfile);
    assert!(!path.exists());
    let again = Pidfile::create(&path).unwrap();
    drop(again);
    dir.finish();
}

// ---------------------------------------------------------------------------
// Control helpers

#[test]
fn status_reports_running_stale_and_missing() {
    let dir = TestDir::new("status");
    let path = dir.join("pid");
    assert_eq!(ufork_daemon::status(&path).unwrap(), Status::NotRunning);
    assert_eq!(ufork_daemon::read_pid(&path).unwrap(), None);

    let mut holder = testbin(&[os("pidfile"), path.as_os_str()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let holder_pid = holder.id() as i32;
    assert_eq!(line, format!("locked {holder_pid}\n"));
    assert_eq!(
        ufork_daemon::status(&path).unwrap(),
        Status::Running { pid: holder_pid }
    );
    assert_eq!(
        ufork_daemon::status(&path).unwrap().running_pid(),
        Some(holder_pid)
    );
    assert_eq!(ufork_daemon::read_pid(&path).unwrap(), Some(holder_pid));

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert_eq!(ufork_daemon::status(&path).unwrap(), Status::NotRunning);

    std::fs::write(&path, "12345\n").unwrap();
    assert_eq!(
        ufork_daemon::status(&path).unwrap(),
        Status::Stale { pid: Some(12345) }
    );
    // A stale pid is never signalled.
    assert_eq!(
        ufork_daemon::signal_pidfile(&path, Signal::TERM).unwrap(),
        None
    );
    std::fs::write(&path, "").unwrap();
    assert_eq!(
        ufork_daemon::status(&path).unwrap(),
        Status::Stale { pid: None }
    );
    dir.finish();
}

#[test]
fn signal_pidfile_and_wait_for_exit() {
    let dir = TestDir::new("signal");
    let pidfile = dir.join("pid");
    let output = run(daemon_cmd(&[os("--pidfile"), pidfile.as_os_str()]));
    let guard = DaemonGuard::new(started_pid(&output));
    // A live process: the wait times out.
    assert!(!ufork_daemon::wait_for_exit(guard.pid, Some(Duration::from_millis(100))).unwrap());
    assert!(ufork_daemon::signal(guard.pid, Signal::CONT).unwrap());
    assert_eq!(
        ufork_daemon::signal_pidfile(&pidfile, Signal::TERM).unwrap(),
        Some(guard.pid)
    );
    // A timeout too long for `Instant` waits without a deadline.
    assert!(ufork_daemon::wait_for_exit(guard.pid, Some(Duration::MAX)).unwrap());
    assert!(!util::is_locked(&pidfile));
    assert_eq!(
        ufork_daemon::signal_pidfile(&pidfile, Signal::TERM).unwrap(),
        None
    );
    // Gone (whether reaped yet or not): waiting returns at once.
    assert!(ufork_daemon::wait_for_exit(guard.pid, Some(Duration::ZERO)).unwrap());
    guard.stop();
    dir.finish();
}

#[test]
fn signal_group_reaches_the_daemon_group() {
    let dir = TestDir::new("signal-group");
    let (pidfile, pgrpfile) = (dir.join("pid"), dir.join("pgrp"));
    let output = run(daemon_cmd(&[
        os("--pidfile"),
        pidfile.as_os_str(),
        os("--pgrpfile"),
        pgrpfile.as_os_str(),
    ]));
    let guard = DaemonGuard::new(started_pid(&output));
    let pgid = ufork_daemon::read_pid(&pgrpfile)
        .unwrap()
        .expect("pgrp written");
    assert!(ufork_daemon::signal_group(pgid, Signal::TERM).unwrap());
    assert!(ufork_daemon::wait_for_exit(guard.pid, Some(util::DEADLINE)).unwrap());
    guard.stop();
    dir.finish();
}

// ---------------------------------------------------------------------------
// Rotating file

/// `path.n`.
fn numbered(path: &Path, n: usize) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    name.into()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn rotation_happens_at_line_boundaries_and_keeps_n_files() {
    let dir = TestDir::new("rotate");
    let path = dir.join("log");
    let mut log = RotatingFile::builder(&path)
        .max_size(100)
        .backups(3)
        .open()
        .unwrap();
    let mut written = String::new();
    for n in 0..60 {
        let line = format!("line {n:03} {}\n", "x".repeat(n % 23));
        written.push_str(&line);
        // Split every line across several writes, cutting inside it.
        let (a, b) = line.split_at(line.len() / 2);
        log.write_all(a.as_bytes()).unwrap();
        log.write_all(b.as_bytes()).unwrap();
    }
    log.flush().unwrap();
    assert!(!numbered(&path, 4).exists(), "more than 3 backups kept");
    let files = [
        numbered(&path, 3),
        numbered(&path, 2),
        numbered(&path, 1),
        path.clone(),
    ];
    let mut kept = String::new();
    for file in &files {
        let content = read(file);
        assert!(
            content.ends_with('\n') && !content.is_empty(),
            "{} ends mid-line: {content:?}",
            file.display()
        );
        assert!(
            content.len() <= 100,
            "{} has {} bytes",
            file.display(),
            content.len()
        );
        for line in content.lines() {
            assert!(
                line.starts_with("line "),
                "split line {line:?} in {}",
                file.display()
            );
        }
        kept.push_str(&content);
    }
    // The oldest were dropped; what is kept is the end of what was written.
    assert!(kept.len() < written.len());
    assert!(written.ends_with(&kept));
    dir.finish();
}

#[test]
fn partial_line_waits_for_its_newline_and_flush_keeps_it_in_one_file() {
    let dir = TestDir::new("partial");
    let path = dir.join("log");
    let mut log = RotatingFile::builder(&path)
        .max_size(20)
        .backups(2)
        .open()
        .unwrap();
    log.write_all(b"0123456789012345\nabc").unwrap();
    assert_eq!(read(&path), "0123456789012345\n");
    // flush writes the partial line out; its rest must follow into the same
    // file even though the file is past its size by then.
    log.flush().unwrap();
    assert_eq!(read(&path), "0123456789012345\nabc");
    log.write_all(b"defghijkl\nnext\nunfinished").unwrap();
    assert_eq!(
        read(&numbered(&path, 1)),
        "0123456789012345\nabcdefghijkl\n"
    );
    assert_eq!(read(&path), "next\n");
    // The last handle going writes out what still waits.
    drop(log);
    assert_eq!(read(&path), "next\nunfinished");
    dir.finish();
}

#[test]
fn rotation_moves_files_up_one_step() {
    let dir = TestDir::new("rotate-order");
    let path = dir.join("log");
    let mut log = RotatingFile::builder(&path)
        .max_size(10)
        .backups(2)
        .open()
        .unwrap();
    for line in ["aaaaaaaa\n", "bbbbbbbb\n", "cccccccc\n", "dddddddd\n"] {
        log.write_all(line.as_bytes()).unwrap();
    }
    assert_eq!(read(&path), "dddddddd\n");
    assert_eq!(read(&numbered(&path, 1)), "cccccccc\n");
    assert_eq!(read(&numbered(&path, 2)), "bbbbbbbb\n");
    assert!(!numbered(&path, 3).exists());
    dir.finish();
}

#[test]
fn a_line_longer_than_max_size_gets_a_file_of_its_own() {
    let dir = TestDir::new("long-line");
    let path = dir.join("log");
    let mut log = RotatingFile::builder(&path)
        .max_size(10)
        .backups(3)
        .open()
        .unwrap();
    let long = format!("{}\n", "L".repeat(25));
    log.write_all(format!("short\n{long}tail\n").as_bytes())
        .unwrap();
    assert_eq!(read(&numbered(&path, 2)), "short\n");
    assert_eq!(read(&numbered(&path, 1)), long);
    assert_eq!(read(&path), "tail\n");
    dir.finish();
}

#[test]
fn reopen_after_external_rename() {
    let dir = TestDir::new("reopen");
    let path = dir.join("log");
    let moved = dir.join("log.old");
    let log = RotatingFile::open(&path).unwrap();
    writeln!(&log, "before").unwrap();
    std::fs::rename(&path, &moved).unwrap();
    writeln!(&log, "still old").unwrap();
    log.reopen().unwrap();
    writeln!(&log, "after").unwrap();
    assert_eq!(read(&moved), "before\nstill old\n");
    assert_eq!(read(&path), "after\n");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    dir.finish();
}

#[test]
fn files_are_created_with_mode_0640_or_as_configured() {
    let dir = TestDir::new("mode");
    let path = dir.join("log");
    let mut log = RotatingFile::builder(&path)
        .max_size(4)
        .backups(1)
        .open()
        .unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    log.write_all(b"abc\ndef\n").unwrap();
    for file in [&path, &numbered(&path, 1)] {
        assert_eq!(
            std::fs::metadata(file).unwrap().permissions().mode() & 0o7777,
            0o640
        );
    }
    let other = dir.join("other");
    let _log = RotatingFile::builder(&other).mode(0o600).open().unwrap();
    assert_eq!(
        std::fs::metadata(&other).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    dir.finish();
}

#[test]
fn rotation_error_is_reported_and_writing_continues() {
    let dir = TestDir::new("rotate-error");
    let path = dir.join("log");
    // A non-empty directory where the first backup goes: rename fails with
    // EISDIR, even for root.
    std::fs::create_dir(numbered(&path, 1)).unwrap();
    std::fs::write(numbered(&path, 1).join("keep"), "x").unwrap();
    let mut log = RotatingFile::builder(&path)
        .max_size(10)
        .backups(1)
        .open()
        .unwrap();
    for n in 0..5 {
        writeln!(log, "line {n}").unwrap();
    }
    assert_eq!(read(&path), "line 0\nline 1\nline 2\nline 3\nline 4\n");
    let error = log.take_rotation_error().expect("rotation error reported");
    assert!(matches!(error, Error::RotateLog { .. }));
    assert!(
        error
            .report()
            .starts_with(&format!("cannot rotate log file {}: ", path.display())),
        "{}",
        error.report()
    );
    // Once the obstacle is gone, rotation resumes (after another max_size of
    // growth since the last attempt, which this file has had).
    std::fs::remove_dir_all(numbered(&path, 1)).unwrap();
    writeln!(log, "line 5").unwrap();
    assert_eq!(
        read(&numbered(&path, 1)),
        "line 0\nline 1\nline 2\nline 3\nline 4\n"
    );
    assert_eq!(read(&path), "line 5\n");
    assert!(log.take_rotation_error().is_none());
    dir.finish();
}

#[test]
fn clones_share_one_file_without_splitting_lines() {
    let dir = TestDir::new("shared");
    let path = dir.join("log");
    let log = RotatingFile::builder(&path)
        .max_size(200)
        .backups(50)
        .open()
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    (&log)
                        .write_all(format!("thread {t} line {n:02}\n").as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut lines = Vec::new();
    for n in (1..=50).rev() {
        if let Ok(content) = std::fs::read_to_string(numbered(&path, n)) {
            assert!(content.ends_with('\n'));
            lines.extend(content.lines().map(str::to_owned));
        }
    }
    lines.extend(read(&path).lines().map(str::to_owned));
    assert_eq!(lines.len(), 200);
    for t in 0..4 {
        let mine: Vec<_> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("thread {t} ")))
            .collect();
        let expected: Vec<_> = (0..50).map(|n| format!("thread {t} line {n:02}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
    dir.finish();
}

// ---------------------------------------------------------------------------
// Small helpers

fn run_to_end(child: std::process::Child) -> std::process::Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(util::DEADLINE) {
        Ok(output) => output.expect("wait for launcher"),
        Err(_) => {
            let _ = ufork_daemon::signal(pid, Signal::KILL);
            panic!("launcher did not finish");
        }
    }
}

fn proc_alive(pid: i32) -> bool {
    !ufork_daemon::wait_for_exit(pid, Some(Duration::ZERO)).unwrap()
}

/// The pid a stale pidfile still holds, for comparing with `status`.
fn proc_pid_hint(path: &Path) -> Option<i32> {
    ufork_daemon::read_pid(path).ok().flatten()
}
