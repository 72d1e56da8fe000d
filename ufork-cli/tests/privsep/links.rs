//! Symbolic links at the paths of the files ufork writes: a link another
//! user could have planted (the service user of `--user`, in a directory it
//! may write) is never followed by a process started as root, so it cannot
//! point the pidfile's truncate-and-write or the logs' appends at a file of
//! root's; `--log-file /dev/stdout` still works.

use std::os::unix::fs::PermissionsExt;

use rustix::process::Signal;

use crate::util::{From, *};

const VICTIM: &str = "important\n";

/// A directory holding `victim` (a file of this process' user) and
/// `name`, a symbolic link to it.
fn planted(dir: &TempDir, name: &str) -> String {
    std::fs::write(dir.join("victim"), VICTIM).unwrap();
    std::os::unix::fs::symlink(dir.join("victim"), dir.join(name)).unwrap();
    dir.str(name)
}

fn victim(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.join("victim")).unwrap()
}

#[test]
fn a_symlink_at_the_pidfile_is_refused_and_its_target_untouched() {
    let dir = TempDir::new("pidlink");
    let pidfile = planted(&dir, "sym.pid");
    let serve = ["serve", "-w", "1", "--bind", "127.0.0.1:0", "--no-prompt"];
    for daemon in [false, true] {
        let mut args = serve.to_vec();
        args.extend(["--pidfile", &pidfile]);
        if daemon {
            args.push("--daemon");
        }
        let out = run(&args);
        assert_one_line_error(&out, 1, &["--pidfile", &pidfile, "is a symbolic link"]);
        assert_eq!(victim(&dir), VICTIM, "daemon: {daemon}");
    }
    // `stop` never goes through it either: not to write (it takes a stale
    // pidfile's lock to remove it), not to read.
    let out = run(&["stop", "--pidfile", &pidfile]);
    assert_one_line_error(&out, 1, &["--pidfile", &pidfile, "is a symbolic link"]);
    assert_eq!(victim(&dir), VICTIM);
    assert!(dir.join("sym.pid").is_symlink());
    // A link planted at another service's locked pidfile: `stop`, `reload`
    // and `status` through it refuse, and that service is not signalled.
    let real = dir.str("real.pid");
    let mut other = Running::start(&["run", "-w", "1", "--pidfile", &real, "--", "sleep", "1000"]);
    other.expect_line("started");
    let planted = dir.str("planted.pid");
    std::os::unix::fs::symlink(&real, &planted).unwrap();
    for command in ["stop", "reload", "status"] {
        let out = run(&[command, "--pidfile", &planted]);
        assert_one_line_error(&out, 1, &["--pidfile", &planted, "is a symbolic link"]);
    }
    let out = run(&["status", "--pidfile", &real]);
    assert_eq!(out.code(), Some(0), "the other pool runs on: {out:#?}");
    other.signal(Signal::TERM);
    assert_eq!(other.wait().code(), Some(0), "{}", other.transcript());
}

/// In a directory others may write (mode 0777), any link at the log's path
/// is refused: `--log-file` (foreground and daemon) and `--access-log`.
#[test]
fn a_log_link_in_a_directory_others_may_write_is_refused() {
    let dir = TempDir::new("loglink");
    let link = planted(&dir, "sym.log");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let pidfile = dir.str("d.pid");
    let serve = ["serve", "-w", "1", "--bind", "127.0.0.1:0", "--no-prompt"];
    for extra in [
        &["--log-file", &link][..],
        &["--log-file", &link, "--daemon", "--pidfile", &pidfile],
    ] {
        let mut args = serve.to_vec();
        args.extend(extra);
        let out = run(&args);
        assert_one_line_error(
            &out,
            1,
            &[
                "--log-file",
                &link,
                "symbolic link in a directory other users may write",
            ],
        );
        assert_eq!(victim(&dir), VICTIM);
    }
    let mut args = serve.to_vec();
    args.extend(["--access-log", &link]);
    let out = run(&args);
    assert_one_line_error(&out, 1, &["--access-log", &link, "symbolic link"]);
    assert_eq!(victim(&dir), VICTIM);
}

/// As root, in root's own directory: a link owned by another user (the
/// service user's, say) is refused too.
#[test]
fn a_log_link_owned_by_another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: only root can give a link to another user");
        return;
    }
    let dir = TempDir::new("loglink-owner");
    let link = planted(&dir, "sym.log");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::lchown(dir.join("sym.log"), Some(65534), Some(65534)).unwrap();
    let out = run(&[
        "serve",
        "-w",
        "1",
        "--bind",
        "127.0.0.1:0",
        "--no-prompt",
        "--log-file",
        &link,
    ]);
    assert_one_line_error(
        &out,
        1,
        &["--log-file", &link, "owned by another user (uid 65534)"],
    );
    assert_eq!(victim(&dir), VICTIM);
}

/// `/dev/stdout` and `/dev/stderr` are root's links in root's `/dev`:
/// followed, so a container's log collector gets the pool's log.
#[test]
fn log_file_dev_stdout_and_dev_stderr_still_work() {
    for (path, stream) in [("/dev/stdout", From::Out), ("/dev/stderr", From::Err)] {
        let mut pool = Running::start(&[
            "run",
            "-w",
            "1",
            "--no-prompt",
            "--log-file",
            path,
            "--",
            "sh",
            "-c",
            // Computed, so the banner (which quotes the command) never matches.
            "echo worker-says-$((40 + 2)); exec sleep 1000",
        ]);
        // Both through the log file: the arbiter's lines and the worker's.
        pool.expect_line("starting 1 worker");
        pool.expect_line("worker-says-42");
        let through = |needle: &str| {
            pool.seen
                .iter()
                .any(|(from, line)| *from == stream && line.contains(needle))
        };
        assert!(
            through("starting 1 worker") && through("worker-says-42"),
            "{path}: {}",
            pool.transcript()
        );
        pool.signal(Signal::TERM);
        assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    }
}

/// In a user namespace whose `/dev` belongs to an unmapped uid (it shows as
/// nobody: `unshare -U -r`, sandboxes that bind-mount the host's `/dev`),
/// `/dev/stdout` is still this process' own stdout, and followed.
#[test]
fn log_file_dev_stdout_works_in_a_user_namespace() {
    let have = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !rustix::process::geteuid().is_root() || !have("setpriv") || !have("unshare") {
        eprintln!("skipped: needs root, setpriv and unshare");
        return;
    }
    let probe = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "-U", "-r", "stat", "-c", "%U", "/dev"])
        .output();
    match probe {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "nobody" => {}
        other => {
            eprintln!("skipped: no user namespace with an unmapped /dev here ({other:?})");
            return;
        }
    }
    // Its stdout a file of its own: reopening it through /proc needs that.
    let dir = TempDir::new("links-userns");
    let file = dir.join("stdout");
    std::fs::write(&file, "").unwrap();
    rustix::fs::chown(
        &file,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "-U", "-r"])
        .arg(env!("CARGO_BIN_EXE_ufork"))
        .args(["run", "-w", "1", "--no-prompt", "--give-up-after", "1"])
        .args(["--log-file", "/dev/stdout", "--"])
        .args(["sh", "-c", "echo worker-says-$((40 + 2)); exit 3"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::options().append(true).open(&file).unwrap())
        .output()
        .expect("run ufork in a user namespace");
    let stdout = std::fs::read_to_string(&file).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("symbolic link"), "{stderr}");
    assert!(stdout.contains("worker-says-42"), "{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "gave up: {stderr}");
}
