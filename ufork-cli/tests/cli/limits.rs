//! Huge values mean "never" or a usage error naming the bound; no wrap, no
//! panic.

use crate::util::*;

#[test]
fn huge_durations_are_usage_errors_naming_the_bound() {
    let dir = TempDir::new("huge");
    let pidfile = dir.str("x.pid");
    for (args, flag) in [
        (
            &["serve", "--graceful-timeout", "18446744073"][..],
            "--graceful-timeout",
        ),
        (
            &["serve", "--start-timeout", "10000000000000000000"],
            "--start-timeout",
        ),
        (&["serve", "--timeout", "99999999999m"], "--timeout"),
        (
            &[
                "stop",
                "--pidfile",
                &pidfile,
                "--timeout",
                "10000000000000000000",
            ],
            "--timeout",
        ),
    ] {
        let out = run(args);
        assert_one_line_error(&out, 2, &[flag, "at most 3153600000 seconds (100 years)"]);
    }
}

/// The largest values each flag takes run a pool that serves, restarts
/// nothing and stops gracefully.
#[test]
fn the_largest_values_mean_never() {
    let dir = TempDir::new("never");
    let socket = dir.str("ctl.sock");
    let mut server = Running::start(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "-w",
        "1",
        "--max-requests",
        "18446744073709551615",
        "--graceful-timeout",
        "3153600000",
        "--start-timeout",
        "3153600000",
        "--timeout",
        "3153600000",
        "--control-socket",
        &socket,
    ]);
    let addr = server.http_addr();
    wait_ready(&socket, 1);
    for _ in 0..3 {
        let (status, _, body) = get(addr, "/");
        assert_eq!((status, body.as_str()), (200, "Hello, world!\n"));
    }
    let out = run(&["ctl", "--control-socket", &socket, "status"]);
    let row = out.stdout.lines().nth(2).unwrap_or_default().to_owned();
    let restarts: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(restarts.get(6), Some(&"0"), "no restart: {out:#?}");
    let out = run(&[
        "stop",
        "--control-socket",
        &socket,
        "--timeout",
        "3153600000",
    ]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
    let transcript = server.transcript();
    assert!(!transcript.contains("SIGKILL"), "{transcript}");
    assert!(!transcript.contains("panicked"), "{transcript}");
}
