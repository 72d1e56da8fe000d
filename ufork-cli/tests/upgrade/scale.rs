//! What a new arbiter takes from the old pool and what it reads afresh: the
//! worker count an operator set at runtime is kept, the `--config` file is
//! read again (a rolling restart does not read it).

use crate::util::*;

/// The pool's status through the control socket once `target` workers
/// are its target and ready.
fn wait_for_workers(socket: &str, target: usize) -> String {
    let want = format!("(target {target}), {target} ready");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let out = run(&["status", "--control-socket", socket]);
        if out.stdout.contains(&want) {
            return out.stdout;
        }
        assert!(std::time::Instant::now() < deadline, "{out:#?}");
        std::thread::yield_now();
    }
}

#[test]
fn upgrade_keeps_a_worker_count_set_at_runtime_and_reads_the_config_again() {
    let dir = TempDir::new("upgrade-scale");
    let socket = dir.str("ctl.sock");
    let config = dir.join("ufork.toml");
    std::fs::write(&config, "workers = 1\n").unwrap();
    let mut old = Running::start(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "--control-socket",
        &socket,
    ]);
    let addr = old.http_addr();
    wait_ready(&socket, 1);

    // A rolling restart keeps the settings the pool started with.
    std::fs::write(&config, "workers = 2\n").unwrap();
    let out = run(&["reload", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let status = run(&["status", "--control-socket", &socket]);
    assert!(status.stdout.contains("(target 1), 1 ready"), "{status:#?}");

    // An upgrade reads --config again.
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let first = super::upgraded_pid(&out.stdout);
    let _first_arbiter = super::failed::StopOnDrop(first);
    old.expect_line(&format!("arbiter pid {} stopped", old.pid()));
    wait_for_workers(&socket, 2);

    // Scaled up at runtime: the next upgrade keeps the capacity, not the
    // config's count, and says so.
    let out = run(&["ctl", "--control-socket", &socket, "workers", "3"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    wait_for_workers(&socket, 3);
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let second = super::upgraded_pid(&out.stdout);
    let _second_arbiter = super::failed::StopOnDrop(second);
    old.expect_line("starting 3 workers, the count the old pool was scaled to at runtime");
    assert!(ufork_daemon::wait_for_exit(first, Some(DEADLINE)).unwrap());
    let status = wait_for_workers(&socket, 3);
    assert!(
        status.contains(&format!("arbiter pid {second}")),
        "{status}"
    );
    assert_eq!(get(addr, "/").0, 200);
    let stop = run(&["stop", "--control-socket", &socket]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert!(ufork_daemon::wait_for_exit(second, Some(DEADLINE)).unwrap());
}

/// The listening sockets are what an upgrade does not read afresh: a
/// `--bind` added in the config fails the upgrade, with the reason in the
/// pool's log, and the old pool goes on serving; a `--bind` moved to
/// another address is served on the old socket, with a warning.
#[test]
fn a_bind_added_in_the_config_fails_the_upgrade_and_one_moved_is_not_taken_up() {
    let dir = TempDir::new("upgrade-bind");
    let socket = dir.str("ctl.sock");
    let config = dir.join("ufork.toml");
    std::fs::write(&config, "workers = 1\nbind = [\"127.0.0.1:0\"]\n").unwrap();
    let mut old = Running::start(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--control-socket",
        &socket,
    ]);
    let addr = old.http_addr();
    wait_ready(&socket, 1);
    std::fs::write(
        &config,
        "workers = 1\nbind = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_one_line_error(&out, 1, &["upgrade failed", "(the pool's log says why)"]);
    old.expect_line("the old arbiter handed over 1 socket but --bind gives 2");
    assert_eq!(get(addr, "/").0, 200, "the old pool serves on");
    // A --bind moved elsewhere: the upgrade serves the old socket and says so.
    std::fs::write(&config, "workers = 1\nbind = [\"127.0.0.1:1\"]\n").unwrap();
    let out = run(&["upgrade", "--control-socket", &socket]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    let new = super::upgraded_pid(&out.stdout);
    let _new_arbiter = super::failed::StopOnDrop(new);
    old.expect_line(&format!(
        "--bind 127.0.0.1:1 is not taken up: this arbiter serves the socket the old one handed over, {addr}"
    ));
    assert_eq!(old.wait().code(), Some(0), "{}", old.transcript());
    assert_eq!(get(addr, "/").0, 200, "the new pool serves the old socket");
    let stop = run(&["stop", "--control-socket", &socket]);
    assert_eq!(stop.code(), Some(0), "{stop:#?}");
    assert!(ufork_daemon::wait_for_exit(new, Some(DEADLINE)).unwrap());
}
