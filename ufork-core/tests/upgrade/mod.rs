//! In-place upgrade through the library: `Upgrader` re-executes a program with
//! the listening sockets handed over, waits for its report, and the old pool
//! drains (or keeps serving when the new one fails).

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use ufork_core::upgrade::{Reexec, UpgradeError, UpgradeHandle, Upgrader};
use ufork_core::{Arbiter, StopCause};

use crate::util::{self, DEADLINE, Joiner, SpawnGuarded, lock};

/// A stand-in for the new arbiter: checks what it was handed (systemd's
/// variables naming itself, the listener at fd 3, the report socket at fd 4)
/// and reports like `ReadyReporter`, one message per write.
const CHECK_AND_REPORT: &str = r#"
[ "$LISTEN_PID" = "$$" ] && [ "$LISTEN_FDS" = 1 ] && [ "$LISTEN_FDNAMES" = http ] \
  && [ "$UFORK_UPGRADE_FD" = 4 ] || exit 7
[ "$(readlink /proc/$$/fd/3)" = "socket:[$1]" ] || exit 8
printf 'MAINPID=%s\n' $$ >&4
printf 'READY=1\n' >&4
"#;

fn inode(listener: &TcpListener) -> String {
    rustix::fs::fstat(listener.as_fd())
        .unwrap()
        .st_ino
        .to_string()
}

/// An upgrader of `listener` (named `http`) whose new arbiter is
/// [`CHECK_AND_REPORT`]: ready only if it was handed that very socket.
fn checked_handover(listener: &TcpListener) -> Upgrader {
    Upgrader::new(sh(CHECK_AND_REPORT, &[&inode(listener)]))
        .unwrap()
        .timeout(DEADLINE)
        .listener("http", listener)
        .unwrap()
}

fn sh(script: &str, args: &[&str]) -> Reexec {
    let mut all = vec!["-c", script, "sh"];
    all.extend(args);
    Reexec::new("/bin/sh", all).unwrap()
}

fn wait_ready(handle: &ufork_core::Handle, n: usize) {
    util::wait_until("workers ready", || handle.snapshot().ready_count() == n);
}

fn idle_worker(worker: &mut ufork_core::Worker) -> Result<(), String> {
    while !worker.wait_for_stop(Some(Duration::from_millis(200))) {
        worker.heartbeat();
    }
    Ok(())
}

/// A pool of `workers` idle workers with `upgrader`, on a thread of its own,
/// once every worker is ready: its handle, the upgrader's, and its joiner.
fn idle_pool(upgrader: Upgrader, workers: usize) -> (ufork_core::Handle, UpgradeHandle, Joiner) {
    let upgrades = upgrader.handle();
    let arbiter = Arbiter::builder()
        .workers(workers)
        .layer(upgrader)
        .build()
        .unwrap();
    let (handle, joiner) = arbiter.spawn_guarded(idle_worker).unwrap();
    wait_ready(&handle, workers);
    (handle, upgrades, joiner)
}

/// A stand-in new arbiter that reports its pid and never becomes ready.
const REPORTS_AND_HANGS: &str = "printf 'MAINPID=%s\\n' $$ >&$UFORK_UPGRADE_FD; exec sleep 600";

/// Waits until a child of this process runs with `text` in its command line.
fn wait_for_child_with(text: &str) {
    util::wait_until("the new arbiter runs", || {
        util::children_of_self().iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
        })
    });
}

#[test]
fn upgrade_hands_the_listener_over_and_the_old_pool_drains() {
    let _g = lock();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upgrader = checked_handover(&listener);
    let (_, upgrades, joiner) = idle_pool(upgrader, 2);

    let done = upgrades.upgrade().wait(Some(DEADLINE)).expect("an outcome");
    let done = done.expect("the upgrade succeeds");
    let outcome = joiner.join().unwrap().unwrap();
    assert_eq!(outcome.cause, StopCause::Handle);
    assert!(outcome.graceful);
    assert_eq!(outcome.history.len(), 2, "both old workers drained");

    // READY=1 came only after the stand-in's checks passed. It is this
    // process' child: reap it unless the upgrader already did.
    let pid = rustix::process::Pid::from_raw(done.pid).unwrap();
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    // A handover stop leaves the sockets listening for the new arbiter.
    TcpStream::connect(addr).expect("the listener still accepts after a handover");
    assert_eq!(util::children_of_self(), Vec::<i32>::new());
}

#[test]
fn a_failed_upgrade_keeps_the_pool_serving_and_a_stop_refuses_new_connections() {
    let _g = lock();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upgrader = Upgrader::new(sh("exit 3", &[]))
        .unwrap()
        .timeout(DEADLINE)
        .listener("http", &listener)
        .unwrap();
    let (handle, upgrades, joiner) = idle_pool(upgrader, 2);

    let err = upgrades
        .upgrade()
        .wait(Some(DEADLINE))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, UpgradeError::Exited { how, .. } if how == "exited with status 3"),
        "{err}"
    );
    assert!(
        util::logs()
            .iter()
            .any(|l| l.contains("upgrade failed, still serving")),
        "{:?}",
        util::logs()
    );
    let snapshot = handle.snapshot();
    assert!(snapshot.running && !snapshot.stopping);
    assert_eq!(snapshot.ready_count(), 2);
    TcpStream::connect(addr).expect("still listening");

    handle.stop();
    let outcome = joiner.join().unwrap().unwrap();
    assert!(outcome.graceful);
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(util::children_of_self(), Vec::<i32>::new());
}

/// `after_failed` hears of a failed upgrade's new arbiter once it ended: one
/// that exited, and one the timeout stopped.
#[test]
fn after_failed_is_told_the_pid_of_each_failed_new_arbiter_once_it_ended() {
    let _g = lock();
    for (script, timeout) in [
        ("exit 3", DEADLINE),
        (REPORTS_AND_HANGS, Duration::from_millis(200)),
    ] {
        let (tx, rx) = std::sync::mpsc::channel();
        let upgrader = Upgrader::new(sh(script, &[]))
            .unwrap()
            .timeout(timeout)
            .after_failed(move |pid| {
                let _ = tx.send((pid, util::exists(pid)));
            });
        let (handle, upgrades, joiner) = idle_pool(upgrader, 1);
        let err = upgrades
            .upgrade()
            .wait(Some(DEADLINE))
            .unwrap()
            .unwrap_err();
        let pid = match err {
            UpgradeError::Exited { pid, .. } | UpgradeError::Timeout { pid, .. } => pid,
            e => panic!("{e:?}"),
        };
        let (told, existed) = rx.recv_timeout(DEADLINE).expect("after_failed was called");
        assert_eq!(told, pid);
        assert!(!existed, "pid {pid} was reaped before the hook ran");
        handle.stop();
        joiner.join().unwrap().unwrap();
    }
}

/// A stand-in new arbiter that asks to take over, then waits at the FIFO
/// `$1` (between its takeover and `READY=1`, where a real one renames the
/// pidfile and the control socket into place) before it reports ready.
const ASKS_THEN_WAITS: &str = r#"
printf 'MAINPID=%s\n' $$ >&$UFORK_UPGRADE_FD
printf 'TAKEOVER=1\n' >&$UFORK_UPGRADE_FD
read go < "$1"
printf 'READY=1\n' >&$UFORK_UPGRADE_FD
"#;

/// Once the old arbiter granted the takeover, its timeout no longer ends
/// the upgrade: the new arbiter may be renaming the pidfile and control
/// socket into place, and giving up on it then would leave two pools
/// owning them. It waits for the outcome, here `READY=1` well past the
/// timeout.
#[test]
fn a_granted_takeover_outlives_the_upgrade_timeout() {
    let _g = lock();
    let before = util::logs().len();
    let dir = std::env::temp_dir().join(format!("ufork-core-granted-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let gate = dir.join("gate");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&gate)
            .status()
            .unwrap()
            .success()
    );
    let timeout = Duration::from_millis(200);
    let upgrader = Upgrader::new(sh(ASKS_THEN_WAITS, &[gate.to_str().unwrap()]))
        .unwrap()
        .timeout(timeout);
    let (_, upgrades, joiner) = idle_pool(upgrader, 1);
    let pending = upgrades.upgrade();
    util::wait_until("the takeover is granted", || {
        util::logs()
            .iter()
            .skip(before)
            .any(|l| l.contains("is taking over; waiting for it to finish"))
    });
    // What is tested is that nothing happens while the timeout passes, so
    // the test lets it pass (five times over) rather than wait for an event.
    std::thread::sleep(timeout * 5);
    assert!(pending.try_result().is_none(), "the upgrade ended early");
    std::fs::write(&gate, "go\n").unwrap();
    let done = pending
        .wait(Some(DEADLINE))
        .unwrap()
        .expect("the upgrade succeeds");
    let outcome = joiner.join().unwrap().unwrap();
    assert_eq!(outcome.cause, StopCause::Handle);
    let pid = rustix::process::Pid::from_raw(done.pid).unwrap();
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    let logs: Vec<String> = util::logs().into_iter().skip(before).collect();
    assert!(
        !logs.iter().any(|l| l.contains("upgrade failed")),
        "{logs:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_binary_is_an_error_and_a_second_request_during_an_upgrade_is_refused() {
    let _g = lock();
    let missing = Reexec::new("/nonexistent/ufork-new", ["serve"]).unwrap();
    let upgrader = Upgrader::new(missing).unwrap();
    let (handle, upgrades, joiner) = idle_pool(upgrader, 1);
    let err = upgrades
        .upgrade()
        .wait(Some(DEADLINE))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, UpgradeError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    handle.stop();
    joiner.join().unwrap().unwrap();

    // A new arbiter that reports its pid, then waits on a FIFO: a second
    // request meanwhile is refused; released, it exits 5 before it was ready.
    let fifo = std::env::temp_dir().join(format!("ufork-upgrade-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let waits = sh(
        "printf 'MAINPID=%s\\n' $$ >&$UFORK_UPGRADE_FD; read x < \"$1\"; exit 5",
        &[fifo.to_str().unwrap()],
    );
    let upgrader = Upgrader::new(waits).unwrap().timeout(DEADLINE);
    let (handle, upgrades, joiner) = idle_pool(upgrader, 1);
    let first = upgrades.upgrade();
    wait_for_child_with(fifo.to_str().unwrap());
    let second = upgrades
        .upgrade()
        .wait(Some(DEADLINE))
        .unwrap()
        .unwrap_err();
    let UpgradeError::InProgress { pid } = second else {
        panic!("{second:?}")
    };
    assert!(
        util::logs()
            .iter()
            .any(|l| l.contains("upgrade refused: one is already under way")),
    );
    std::fs::write(&fifo, "go\n").unwrap();
    let first = first.wait(Some(DEADLINE)).unwrap().unwrap_err();
    assert!(
        matches!(&first, UpgradeError::Exited { pid: p, how } if *p == pid && how == "exited with status 5"),
        "{first:?}"
    );
    let _ = std::fs::remove_file(&fifo);
    assert!(handle.snapshot().running);
    handle.stop();
    joiner.join().unwrap().unwrap();

    // Never READY=1 within the timeout: stopped with SIGTERM and reaped.
    let hangs = sh(REPORTS_AND_HANGS, &[]);
    let upgrader = Upgrader::new(hangs)
        .unwrap()
        .timeout(Duration::from_millis(300));
    let (handle, upgrades, joiner) = idle_pool(upgrader, 1);
    let err = upgrades
        .upgrade()
        .wait(Some(DEADLINE))
        .unwrap()
        .unwrap_err();
    let UpgradeError::Timeout { pid, .. } = err else {
        panic!("{err:?}")
    };
    assert!(
        util::wait_exit(pid, DEADLINE),
        "the new arbiter was stopped"
    );
    util::wait_until("the stopped arbiter was reaped", || {
        util::children_of_self().iter().all(|c| *c != pid)
    });
    assert!(handle.snapshot().running);
    handle.stop();
    joiner.join().unwrap().unwrap();
    assert_eq!(util::children_of_self(), Vec::<i32>::new());
}

#[test]
fn sigusr2_upgrades_a_pool_with_an_upgrader_and_is_ignored_without_one() {
    let _g = lock();
    // Without an upgrader, SIGUSR2 and Handle::upgrade are logged and ignored.
    let arbiter = Arbiter::builder().workers(1).build().unwrap();
    let (handle, joiner) = arbiter.spawn_guarded(idle_worker).unwrap();
    wait_ready(&handle, 1);
    handle.upgrade();
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::USR2)
        .unwrap();
    // Two round trips through the loop after both requests: both were handled.
    handle.set_workers(2).unwrap();
    wait_ready(&handle, 2);
    handle.set_workers(1).unwrap();
    util::wait_until("one worker again", || handle.snapshot().workers.len() == 1);
    let ignored = util::logs()
        .iter()
        .filter(|l| l.contains("upgrade ignored"))
        .count();
    assert_eq!(ignored, 2, "{:?}", util::logs());
    assert!(handle.snapshot().running, "SIGUSR2 did not end the pool");
    handle.stop();
    joiner.join().unwrap().unwrap();

    // With one, SIGUSR2 hands the listener over and the old pool drains.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upgrader = checked_handover(&listener);
    let (_, _, joiner) = idle_pool(upgrader, 2);
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::USR2)
        .unwrap();
    let outcome = joiner.join().unwrap().unwrap();
    assert_eq!(outcome.cause, StopCause::Handle);
    let logs = util::logs();
    assert!(logs.iter().any(|l| l.contains("SIGUSR2: in-place upgrade")));
    let serving = logs
        .iter()
        .find_map(|l| l.split("upgrade: pid ").nth(1))
        .expect("the handover is logged");
    let pid: i32 = serving.split_whitespace().next().unwrap().parse().unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    assert_eq!(util::children_of_self(), Vec::<i32>::new());
}

#[test]
fn a_graceful_stop_removes_a_unix_socket_path_and_workers_finish_what_they_hold() {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let _g = lock();
    let dir = std::env::temp_dir().join(format!("ufork-core-unix-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("pool.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let upgrader = Upgrader::new(sh("exit 3", &[]))
        .unwrap()
        .listener("unix", &listener)
        .unwrap();
    let mut ev = util::Events::new();
    let tx = ev.sender();
    let (release_r, release_w) = rustix::pipe::pipe().unwrap();
    let arbiter = Arbiter::builder()
        .workers(1)
        .graceful_timeout(DEADLINE)
        .layer(upgrader)
        .build()
        .unwrap();
    let (handle, joiner) = arbiter
        .spawn_guarded(move |w: &mut ufork_core::Worker| -> Result<(), String> {
            let (mut held, _) = listener.accept().map_err(|e| e.to_string())?;
            w.ready();
            tx.send("accepted");
            w.wait_for_stop(None);
            tx.send("stopping");
            let mut byte = [0u8; 1];
            let _ = rustix::io::read(&release_r, &mut byte);
            // What it held, and what was queued before the stop, are served.
            held.write_all(b"held").map_err(|e| e.to_string())?;
            let (mut queued, _) = listener.accept().map_err(|e| e.to_string())?;
            queued.write_all(b"queued").map_err(|e| e.to_string())?;
            Ok(())
        })
        .unwrap();
    let mut held = UnixStream::connect(&path).unwrap();
    ev.expect("the first connection accepted", |l| l == "accepted");
    let mut queued = UnixStream::connect(&path).unwrap();
    handle.stop();
    ev.expect("the worker heard the stop", |l| l == "stopping");
    util::wait_until("the socket's path is removed", || {
        std::fs::symlink_metadata(&path).is_err()
    });
    let err = UnixStream::connect(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    rustix::io::write(&release_w, &[0]).unwrap();
    for (stream, want) in [(&mut held, "held"), (&mut queued, "queued")] {
        let mut got = String::new();
        stream.read_to_string(&mut got).unwrap();
        assert_eq!(got, want);
    }
    let outcome = joiner.join().unwrap().unwrap();
    assert!(outcome.graceful);
    assert_eq!(util::children_of_self(), Vec::<i32>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stop_leaves_a_unix_socket_path_a_later_server_took_over() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let _g = lock();
    let dir = std::env::temp_dir().join(format!("ufork-core-unix-later-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("pool.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let upgrader = Upgrader::new(sh("exit 3", &[]))
        .unwrap()
        .listener("unix", &listener)
        .unwrap();
    // Another server replaced the file meanwhile.
    std::fs::remove_file(&path).unwrap();
    let later = UnixListener::bind(&path).unwrap();
    let (handle, _, joiner) = idle_pool(upgrader, 1);
    handle.stop();
    let outcome = joiner.join().unwrap().unwrap();
    assert!(outcome.graceful);
    UnixStream::connect(&path).expect("the later server's socket is left alone");
    drop((listener, later));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stop while the new arbiter is starting abandons the upgrade: the request
/// fails with `Stopping`, the new arbiter is stopped and reaped, and the log
/// says the upgrade was abandoned, not that the pool is "still serving".
#[test]
fn a_stop_during_an_upgrade_abandons_it_and_reaps_the_new_arbiter() {
    let _g = lock();
    let before = util::logs().len();
    let hangs = sh(REPORTS_AND_HANGS, &[]);
    let upgrader = Upgrader::new(hangs).unwrap().timeout(DEADLINE);
    let (handle, upgrades, joiner) = idle_pool(upgrader, 1);
    let pending = upgrades.upgrade();
    wait_for_child_with("sleep");
    handle.stop();
    let err = pending.wait(Some(DEADLINE)).unwrap().unwrap_err();
    assert!(matches!(err, UpgradeError::Stopping), "{err:?}");
    joiner.join().unwrap().unwrap();
    util::wait_until("the new arbiter was reaped", || {
        util::children_of_self().is_empty()
    });
    let logs: Vec<String> = util::logs().into_iter().skip(before).collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("upgrade abandoned: the pool is stopping")),
        "{logs:?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("still serving")),
        "{logs:?}"
    );
}

/// SIGKILL at the end of a test to a process it started that may outlive it.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0).filter(|_| util::running(self.0))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A new arbiter that daemonized (its `MAINPID=` is not the process the
/// upgrade started, which exited) and ignores SIGTERM: a stop during the
/// upgrade kills that arbiter at the deadline, not only the started
/// process, and `run` returns only once it is gone.
#[test]
fn a_stop_during_an_upgrade_kills_the_arbiter_the_new_one_daemonized_into() {
    let _g = lock();
    let before = util::logs().len();
    let daemonizes = sh(
        "sh -c 'trap \"\" TERM; printf \"MAINPID=%s\\n\" $$ >&$UFORK_UPGRADE_FD; exec sleep 600' &",
        &[],
    );
    let upgrader = Upgrader::new(daemonizes)
        .unwrap()
        .timeout(Duration::from_secs(1));
    let (handle, upgrades, joiner) = idle_pool(upgrader, 1);
    let pending = upgrades.upgrade();
    let mut daemon = 0;
    util::wait_until("the new arbiter reports its pid", || {
        daemon = util::logs()
            .iter()
            .skip(before)
            .find_map(|l| l.split("reports its arbiter is pid ").nth(1)?.parse().ok())
            .unwrap_or(0);
        daemon != 0
    });
    // Whatever happens below, it does not outlive the test.
    let _kill = KillOnDrop(daemon);
    handle.stop();
    // The stop abandoned it, or the 1 s start timeout passed first: either
    // way it was told to stop and ignored it.
    let err = pending.wait(Some(DEADLINE)).unwrap().unwrap_err();
    assert!(
        matches!(err, UpgradeError::Stopping | UpgradeError::Timeout { .. }),
        "{err:?}"
    );
    joiner.join().unwrap().unwrap();
    assert!(
        !util::running(daemon),
        "the new arbiter (pid {daemon}) outlived run"
    );
    assert!(util::children_of_self().is_empty());
    let logs: Vec<String> = util::logs().into_iter().skip(before).collect();
    assert!(
        logs.iter().any(|l| l.contains(&format!(
            "pid {daemon} did not stop in time; sending SIGKILL"
        ))),
        "{logs:?}"
    );
}
