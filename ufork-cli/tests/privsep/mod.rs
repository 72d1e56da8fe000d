//! `--user` with the daemon's files in a directory only root may write: the
//! privileged helper (ufork-daemon's `Privsep`) rotates and reopens the log
//! and removes the pidfile and the control socket once the arbiter runs as
//! `nobody`. Issue 10, must-have 6.

mod links;

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitOptions};

use crate::util::*;

/// The uid on a `/proc/PID/status` line `Uid:` (all four ids must agree).
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let ids: HashSet<&str> = line.split_whitespace().collect();
    match ids.into_iter().collect::<Vec<_>>()[..] {
        [one] => one.parse().ok(),
        _ => None,
    }
}

/// The capabilities root has in this test process (`CapEff`).
fn root_caps() -> u64 {
    capabilities("self")[0]
}

/// The children of `parent`, each with its `comm`.
fn children(parent: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if ppid == Some(&parent.to_string()) {
            found.push((pid, stat[open + 1..close].to_owned()));
        }
    }
    found
}

/// The socket inodes `pid` holds open.
fn sockets_of(pid: i32) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The inodes of every `SOCK_SEQPACKET` unix socket (the helper's channel
/// is one), from /proc/net/unix.
fn seqpacket_inodes() -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(4) == Some(&"0005")).then(|| fields.get(6)?.parse().ok())?
        })
        .collect()
}

/// Waits until `done` holds, re-checking every 10 ms: for effects of the
/// daemon's writer thread, which nothing else announces.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes this test process the subreaper of what it starts: a process
/// orphaned below it (the daemon, a helper its arbiter left unreaped)
/// becomes its child rather than init's, and stays visible as a zombie
/// until this process reaps it.
fn become_subreaper() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
}

/// A pidfd on `pid`, opened while it runs: it names that process even
/// after its number is reused.
fn pidfd(pid: i32) -> OwnedFd {
    rustix::process::pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap()
}

/// Whether the process of `pidfd` exits (within [`DEADLINE`]) and is reaped
/// by its own parent. Call it once that parent is gone, from the subreaper
/// above it ([`become_subreaper`]): a process its parent did not reap was
/// handed to this one, and is reaped here (so nothing is left) but counts
/// as not reaped.
fn reaped_by_its_parent(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::time::Timespec {
        tv_sec: DEADLINE.as_secs() as i64,
        tv_nsec: 0,
    };
    assert_eq!(
        rustix::event::poll(&mut fds, Some(&timeout)).unwrap(),
        1,
        "the process did not exit"
    );
    match rustix::process::waitid(
        WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        // Not a child of this process: its parent reaped it.
        Err(Errno::CHILD) => true,
        Ok(Some(_)) => false,
        // This process' child, not a zombie yet: reaped when it is.
        Ok(None) => {
            let _ = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
            false
        }
        Err(errno) => panic!("waitid: {errno}"),
    }
}

/// The capability sets of `pid` (`CapEff`, `CapPrm`, `CapInh`).
fn capabilities(pid: &str) -> [u64; 3] {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    ["CapEff:", "CapPrm:", "CapInh:"].map(|field| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap()
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every file of the log: `l`, `l.1`, `l.2`, and one moved away.
fn whole_log(dir: &TempDir) -> String {
    ["l.2", "l.1", "moved", "l"]
        .iter()
        .map(|name| read(&dir.join(name)))
        .collect()
}

/// Whether this test can run a pool as `nobody`; if not, says why it skips.
fn can_drop_to_nobody() -> bool {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: only root can drop privileges to nobody");
        return false;
    }
    if !matches!(nix::unistd::User::from_name("nobody"), Ok(Some(_))) {
        println!("skipped: no user nobody");
        return false;
    }
    true
}

#[test]
fn a_daemon_as_nobody_rotates_reopens_and_removes_its_files_in_a_root_owned_directory() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: only root can drop privileges to nobody");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        println!("skipped: no user nobody");
        return;
    };
    let dir = TempDir::new("privsep");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (pidfile, log) = (dir.str("p"), dir.str("l"));
    let _guard = DaemonGuard(dir.join("p"));
    become_subreaper();
    let out = run(&[
        "serve",
        dir.path().to_str().unwrap(),
        "--daemon",
        "--user",
        "nobody",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--pidfile",
        &pidfile,
        "--log-file",
        &log,
        "--log-max-bytes",
        "300",
        "--log-keep",
        "2",
    ]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let pid: i32 = read(&dir.join("p")).trim().parse().unwrap();
    assert_eq!(
        uid_of(pid),
        Some(nobody.uid.as_raw()),
        "the arbiter is nobody"
    );

    // Root after the drop: the helper, and nothing else.
    let kids = children(pid);
    let helpers: Vec<i32> = kids
        .iter()
        .filter(|(_, comm)| comm == "ufork-privsep")
        .map(|&(pid, _)| pid)
        .collect();
    let [helper] = helpers[..] else {
        panic!("one helper expected: {kids:?}");
    };
    let helper_pidfd = pidfd(helper);
    assert_eq!(uid_of(helper), Some(0), "the helper keeps root");
    // ... with the file capabilities only, effective and permitted:
    // CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3), as far
    // as root here has them; none inheritable. Nothing open but /dev/null
    // as 0-2, its channel and the directories of its grants.
    let files = [root_caps() & 0b1110, root_caps() & 0b1110, 0];
    assert_ne!(files[0], 0, "root here has none of the file capabilities");
    let caps = capabilities(&helper.to_string());
    assert_eq!(
        caps, files,
        "the helper's CapEff, CapPrm, CapInh: {caps:#x?}, expected {files:#x?}"
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{helper}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    let mut nulls: Vec<&String> = fds.iter().filter(|f| f.ends_with("/dev/null")).collect();
    nulls.sort();
    assert_eq!(
        nulls,
        ["0 -> /dev/null", "1 -> /dev/null", "2 -> /dev/null"]
    );
    let dir_name = dir.path().display().to_string();
    for fd in &fds {
        assert!(
            fd.ends_with("/dev/null") || fd.ends_with(&dir_name) || fd.contains("socket:["),
            "the helper keeps {fd}: {fds:?}"
        );
    }
    assert_eq!(
        fds.iter().filter(|f| f.contains("socket:[")).count(),
        1,
        "{fds:?}"
    );
    let workers: Vec<i32> = kids
        .iter()
        .map(|&(p, _)| p)
        .filter(|&p| p != helper)
        .collect();
    assert!(!workers.is_empty(), "{kids:?}");
    // The channel is the arbiter's alone: no worker holds it.
    let channels: HashSet<u64> = &sockets_of(pid) & &seqpacket_inodes();
    assert!(
        !channels.is_empty(),
        "the arbiter holds the helper's channel"
    );
    for &worker in &workers {
        assert_eq!(uid_of(worker), Some(nobody.uid.as_raw()));
        assert!(
            sockets_of(worker).is_disjoint(&channels),
            "worker {worker} holds the helper's channel"
        );
    }

    // Size-triggered rotation: each reload logs a few lines, past 300 bytes
    // after two at most. Renaming in this directory takes root.
    for _ in 0..2 {
        let reload = run(&["reload", "--pidfile", &pidfile]);
        assert_eq!(reload.code(), Some(0), "{reload:#?}");
    }
    wait_until("a rotation (l.1 and l.2)", || {
        dir.join("l.1").exists() && dir.join("l.2").exists()
    });
    let meta = std::fs::metadata(dir.join("l.1")).unwrap();
    assert!(meta.len() <= 300, "rotated at the size: {}", meta.len());

    // logrotate's way: move the file, then SIGUSR1. Creating the new file
    // takes root too.
    std::fs::rename(dir.join("l"), dir.join("moved")).unwrap();
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::USR1)
        .unwrap();
    wait_until("the reopened log file", || {
        read(&dir.join("l")).contains("reopened the log file")
    });

    // `ufork stop` through the control socket (which removes nothing
    // itself), then the arbiter's exit: by then the helper removed the
    // pidfile and the socket, and the arbiter reaped it (this process is
    // the daemon's subreaper: a helper left unreaped would be its zombie).
    let stop = run(&["stop", "--control-socket", &dir.str("p.control.sock")]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert!(
        ufork_daemon::wait_for_exit(pid, Some(DEADLINE)).unwrap(),
        "the arbiter did not exit"
    );
    // The daemon was handed to this process when its launcher exited: it
    // has exited, so this returns at once.
    let _ = rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::empty());
    assert!(
        reaped_by_its_parent(&helper_pidfd),
        "helper {helper} not reaped by the arbiter"
    );
    assert!(!dir.join("p").exists(), "pidfile left: {}", whole_log(&dir));
    assert!(
        !dir.join("p.control.sock").exists(),
        "control socket left: {}",
        whole_log(&dir)
    );
    for gone in workers {
        assert!(
            !Path::new(&format!("/proc/{gone}")).exists(),
            "pid {gone} left behind"
        );
    }
    let text = whole_log(&dir);
    assert!(!text.contains("cannot"), "{text}");
    assert!(text.contains("every worker reaped"), "{text}");
    let stop = run(&["stop", "--pidfile", &pidfile]);
    assert_eq!(stop.code(), Some(3), "nothing left to stop: {stop:#?}");
}

/// The helper's life is the arbiter's: SIGKILL the arbiter (no clean-up,
/// no `finish`) and the helper goes too, by the end of its channel or its
/// parent-death signal, whichever comes first.
#[test]
fn the_helper_does_not_outlive_a_killed_arbiter() {
    if !can_drop_to_nobody() {
        return;
    }
    let dir = TempDir::new("privsep-kill");
    let pidfile = dir.str("p");
    let _guard = DaemonGuard(dir.join("p"));
    let out = run(&[
        "run",
        "--daemon",
        "--user",
        "nobody",
        "-w",
        "1",
        "--pidfile",
        &pidfile,
        "--log-file",
        &dir.str("l"),
        "--",
        "sleep",
        "1000",
    ]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let pid: i32 = read(&dir.join("p")).trim().parse().unwrap();
    let kids = children(pid);
    let Some(&(helper, _)) = kids.iter().find(|(_, comm)| comm == "ufork-privsep") else {
        panic!("no helper: {kids:?}");
    };
    let helper_pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(helper).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::KILL)
        .unwrap();
    // A pidfd turns readable when its process exits (reaped or not).
    let mut fds = [rustix::event::PollFd::new(
        &helper_pidfd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::time::Timespec {
        tv_sec: DEADLINE.as_secs() as i64,
        tv_nsec: 0,
    };
    let ready = rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
    assert_eq!(ready, 1, "helper {helper} outlived its arbiter");
    // The workers go with the arbiter too (their own parent-death signal).
    for (worker, _) in kids.into_iter().filter(|&(p, _)| p != helper) {
        assert!(
            ufork_daemon::wait_for_exit(worker, Some(DEADLINE)).unwrap(),
            "worker {worker} left behind"
        );
    }
}

/// In the foreground too: the pidfile the arbiter locked before binding and
/// an explicit control socket, in a root-owned directory, are gone when a
/// `--user nobody` pool stops on SIGTERM; the helper was reaped by then.
#[test]
fn a_foreground_pool_as_nobody_removes_its_files_at_the_stop() {
    if !can_drop_to_nobody() {
        return;
    }
    let dir = TempDir::new("privsep-fg");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.str("c.sock");
    become_subreaper();
    let mut pool = Running::start(&[
        "run",
        "--user",
        "nobody",
        "-w",
        "1",
        "--pidfile",
        &dir.str("p"),
        "--control-socket",
        &socket,
        "--log-file",
        &dir.str("l"),
        "--no-prompt",
        "--",
        "sleep",
        "1000",
    ]);
    wait_ready(&socket, 1);
    let kids = children(pool.pid());
    let Some(&(helper, _)) = kids.iter().find(|(_, comm)| comm == "ufork-privsep") else {
        panic!("no helper: {kids:?}");
    };
    let helper_pidfd = pidfd(helper);
    assert!(dir.join("p").exists() && dir.join("c.sock").exists());
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    assert!(!dir.join("p").exists(), "pidfile left");
    assert!(!dir.join("c.sock").exists(), "control socket left");
    assert!(
        reaped_by_its_parent(&helper_pidfd),
        "helper {helper} not reaped by the arbiter"
    );
    let text = read(&dir.join("l"));
    assert!(text.contains("every worker reaped"), "{text}");
}

/// `--bind unix:PATH` in a root-owned directory: the arbiter, as nobody,
/// may not remove the socket it bound as root; the helper does at the stop.
/// The socket is nobody's (user and group), so a proxy in that group can
/// connect through its 0660 mode. For `serve` and for `run` alike.
#[test]
fn a_unix_socket_in_a_root_owned_directory_is_removed_at_the_stop() {
    if !can_drop_to_nobody() {
        return;
    }
    let dir = TempDir::new("privsep-unix");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let control = dir.str("c.sock");
    let bind = format!("unix:{}", dir.str("s.sock"));
    let serve = [
        "serve",
        "--user",
        "nobody",
        "--bind",
        &bind,
        "-w",
        "1",
        "--control-socket",
        &control,
        "--no-prompt",
    ];
    let run_ = [
        "run",
        "--user",
        "nobody",
        "--bind",
        &bind,
        "-w",
        "1",
        "--control-socket",
        &control,
        "--no-prompt",
        "--",
        "sleep",
        "1000",
    ];
    for args in [&serve[..], &run_[..]] {
        let mut pool = Running::start(args);
        wait_ready(&control, 1);
        assert!(dir.join("s.sock").exists(), "{}", pool.transcript());
        let socket = std::fs::symlink_metadata(dir.join("s.sock")).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&socket),
                std::os::unix::fs::MetadataExt::gid(&socket)
            ),
            (nobody.uid.as_raw(), nobody.gid.as_raw()),
            "{}: the socket is the pool user's",
            args[0]
        );
        pool.signal(Signal::TERM);
        assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
        assert!(
            !dir.join("s.sock").exists(),
            "{}: the unix socket left: {}",
            args[0],
            pool.transcript()
        );
        assert!(!dir.join("c.sock").exists(), "control socket left");
    }
}

/// Prints when SIGTERM comes, then holds on until its FIFO is written.
const HOLDS_PY: &str = r#"
import signal, sys
signal.signal(signal.SIGTERM, lambda *a: print("worker-heard-term", flush=True))
print("worker-ready", flush=True)
with open(sys.argv[1]) as release:
    release.read()
"#;

/// Under `--user` too, a graceful stop removes a unix socket's path at once
/// (through the helper: the directory is root's), while a worker still
/// runs; nothing warns that the path could not be removed.
#[test]
fn a_graceful_stop_as_nobody_removes_a_unix_socket_at_once() {
    if !can_drop_to_nobody() {
        return;
    }
    let dir = TempDir::new("privsep-unix-early");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.join("holds.py");
    std::fs::write(&script, HOLDS_PY).unwrap();
    let release = dir.join("release");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &release,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let path = dir.join("s.sock");
    let bind = format!("unix:{}", path.display());
    let mut pool = Running::start(&[
        "run",
        "--user",
        "nobody",
        "-w",
        "1",
        "--bind",
        &bind,
        "--graceful-timeout",
        "60",
        "--no-prompt",
        "--",
        "python3",
        script.to_str().unwrap(),
        release.to_str().unwrap(),
    ]);
    pool.expect_line("worker-ready");
    assert!(path.exists(), "{}", pool.transcript());
    pool.signal(Signal::TERM);
    pool.expect_line("worker-heard-term");
    // The worker holds on: the stop has begun and not ended.
    wait_until("the socket's path removed", || !path.exists());
    std::fs::write(&release, "").unwrap();
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    let transcript = pool.transcript();
    assert!(!transcript.contains("cannot remove"), "{transcript}");
}

/// A uid no user database knows, or `None` (the test then skips).
fn unknown_uid() -> Option<u32> {
    (99_990..100_000).find(|&uid| {
        matches!(
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Ok(None)
        )
    })
}

/// The ids on the worker's `/proc/self/status` line `FIELD:`, as the pool
/// printed it.
fn ids_line(pool: &mut Running, field: &str) -> Vec<u32> {
    let line = pool.expect_line(&format!("{field}:"));
    let (_, ids) = line.split_once(&format!("{field}:")).unwrap();
    ids.split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect()
}

/// `--user UID` for a uid with no passwd entry has no group of its own: the
/// process would keep root's group. Refused as a usage error that says to
/// give `--group`, by `--check-config` too, before anything is made.
#[test]
fn a_uid_with_no_passwd_entry_needs_group() {
    let Some(uid) = unknown_uid() else {
        println!("skipped: every uid tried has a passwd entry");
        return;
    };
    let uid = uid.to_string();
    let dir = TempDir::new("uid-nogroup");
    let pidfile = dir.str("p");
    let serve = ["serve", "-w", "1", "--bind", "127.0.0.1:0", "--user", &uid];
    let run_ = ["run", "-w", "1", "--user", &uid, "--", "true"];
    for (args, extra) in [
        (&serve[..], &["--no-prompt"][..]),
        (&serve, &["--check-config"]),
        (&serve, &["--daemon", "--pidfile", &pidfile]),
        (&run_, &["--no-prompt"]),
        (&run_, &["--check-config"]),
        (&run_, &["--daemon", "--pidfile", &pidfile]),
    ] {
        // The flags go before `--`.
        let at = args.iter().position(|&a| a == "--").unwrap_or(args.len());
        let mut all = args[..at].to_vec();
        all.extend(extra);
        all.extend(&args[at..]);
        let out = run(&all);
        assert_one_line_error(&out, 2, &[&format!("--user {uid}: "), "give --group"]);
        assert!(!dir.join("p").exists(), "{all:?}: a pidfile was made");
    }
    // Run as that uid already (an OpenShift-style uid), `--user` of its own
    // uid switches nothing and needs no group.
    use std::os::unix::process::CommandExt;
    let n: u32 = uid.parse().unwrap();
    let Ok(out) = ufork()
        .uid(n)
        .gid(n)
        .args(["serve", "--check-config", "--user", &uid])
        .output()
    else {
        println!("skipped: uid {uid} cannot run the binary here");
        return;
    };
    assert_eq!(out.status.code(), Some(0), "{out:#?}");
}

/// Whatever the user, the switch replaces root's supplementary groups: by
/// the user's own groups (`initgroups`) for a user with a passwd entry, by
/// the `--group` alone for a uid with none.
#[test]
fn the_switch_never_keeps_roots_groups() {
    if !can_drop_to_nobody() {
        return;
    }
    let Some(uid) = unknown_uid() else {
        println!("skipped: every uid tried has a passwd entry");
        return;
    };
    let uid = uid.to_string();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let print = "grep -E '^(Uid|Gid|Groups):' /proc/self/status; exec sleep 1000";
    for (user, group) in [(uid.as_str(), Some(uid.as_str())), ("nobody", None)] {
        let mut args = vec!["run", "-w", "1", "--no-prompt", "--user", user];
        if let Some(group) = group {
            args.extend(["--group", group]);
        }
        args.extend(["--", "sh", "-c", print]);
        let mut pool = Running::start(&args);
        let (uid_, gid) = match group {
            Some(_) => (uid.parse().unwrap(), uid.parse().unwrap()),
            None => (nobody.uid.as_raw(), nobody.gid.as_raw()),
        };
        assert_eq!(ids_line(&mut pool, "Uid"), vec![uid_; 4], "{user}");
        assert_eq!(ids_line(&mut pool, "Gid"), vec![gid; 4], "{user}");
        let groups = ids_line(&mut pool, "Groups");
        assert!(groups.contains(&gid), "{user}: {groups:?}");
        assert!(!groups.contains(&0), "{user} kept root's group: {groups:?}");
        if group.is_some() {
            assert_eq!(groups, vec![gid], "{user}");
        }
        pool.signal(Signal::TERM);
        assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
    }
}
