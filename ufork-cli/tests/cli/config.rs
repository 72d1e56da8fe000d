//! `--config PATH`: a TOML file of long flag names, for `serve` and `run`.

use rustix::process::Signal;

use crate::util::*;

/// The address after `http://` in a banner line.
pub fn http_addr_in(line: &str) -> std::net::SocketAddr {
    let at = line.find("http://").expect("http://") + 7;
    let addr: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    addr.parse().expect("an address after http://")
}

#[test]
fn serve_reads_the_file_and_flags_override_it() {
    let dir = TempDir::new("config-serve");
    let socket = dir.str("ctl.sock");
    let file = dir.join("ufork.toml");
    std::fs::write(
        &file,
        format!(
            "# settings for ufork serve\nbind = [\"127.0.0.1:0\"]\nworkers = 3\nno-prompt = true\ncontrol_socket = \"{socket}\"\ngraceful_timeout = \"10s\"\npidfile = \"{}\"\n",
            dir.str("file.pid")
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    // A flag overrides the file under any of its names (gunicorn's --pid
    // for --pidfile).
    let cli_pid = dir.str("cli.pid");
    let mut server = Running::start(&["serve", "--config", file, "-w", "2", "--pid", &cli_pid]);
    let line = server.expect_line("http://");
    assert!(line.contains("with 2 workers"), "{line}");
    wait_ready(&socket, 2);
    assert!(std::path::Path::new(&cli_pid).exists());
    assert!(!dir.join("file.pid").exists());
    let (status, _, body) = get(http_addr_in(&line), "/");
    assert_eq!((status, body.as_str()), (200, "Hello, world!\n"));
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
}

#[test]
fn run_takes_its_command_and_environment_from_the_file() {
    let dir = TempDir::new("config-run");
    let file = dir.join("run.toml");
    std::fs::write(
        &file,
        "workers = 3\nenv = [\"GREETING=hello\", \"WHO=file\"]\ncommand = [\"sh\", \"-c\", \"echo \\\"$GREETING from $WHO\\\"; exec sleep 1000\"]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let mut pool = Running::start(&["run", "-c", file, "-w", "1"]);
    let line = pool.expect_line("running 1 ×");
    assert!(line.contains("exec sleep 1000"), "{line}");
    let line = pool.expect_line("hello from");
    assert!(line.ends_with("] hello from file"), "{line}");
    pool.signal(Signal::TERM);
    assert_eq!(pool.wait().code(), Some(0), "{}", pool.transcript());
}

#[test]
fn a_bad_file_names_the_file_the_line_and_the_key() {
    let dir = TempDir::new("config-bad");
    let file = dir.join("bad.toml");
    let path = file.to_str().unwrap();
    for (text, needles) in [
        (
            "workers = 2\n\nmax_request = 100\n",
            &["line 3", "max_request", "did you mean `max_requests`?"][..],
        ),
        (
            "workers = 0\n",
            &["line 1", "workers", "must be at least 1"],
        ),
        (
            "graceful_timeout = \"soon\"\n",
            &["line 1", "graceful_timeout", "`soon`"],
        ),
        ("bind = 8000\n", &["line 1", "bind", "not an address"]),
        (
            "bind = [\"web=unix:/tmp/x.sock\"]\n",
            &["line 1", "bind", "not an address"],
        ),
        ("workers = [\n", &["line 1"]),
        (
            "no_prompt = \"yes\"\n",
            &["no_prompt", "expected true or false"],
        ),
        ("config = \"other.toml\"\n", &["config", "unknown key"]),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = run(&["serve", "--config", path]);
        let mut all = vec![path];
        all.extend_from_slice(needles);
        assert_one_line_error(&out, 2, &all);
    }
    let out = run(&["run", "--config", &dir.str("missing.toml"), "--", "true"]);
    assert_one_line_error(&out, 2, &["missing.toml", "cannot read it"]);
    // A command as one string is split at spaces: one a shell would split
    // otherwise is refused rather than run wrong.
    std::fs::write(&file, "command = \"sh -c 'echo \\\"a  b\\\"'\"\n").unwrap();
    let out = run(&["run", "--config", path, "--check-config"]);
    assert_one_line_error(&out, 2, &[path, "line 1", "command", "give it as a list"]);
    std::fs::write(&file, "command = \"sleep 1000\"\n").unwrap();
    let out = run(&["run", "--config", path, "--check-config"]);
    assert_eq!(out.code(), Some(0), "{out:#?}");
}

#[test]
fn a_huge_or_special_file_is_refused_with_its_bound() {
    let dir = TempDir::new("config-huge");
    // One byte over the 1 MiB bound, and valid TOML all the way (comments),
    // so only the bound can refuse it.
    let file = dir.join("huge.toml");
    let mut text = "workers = 2\n".to_owned();
    while text.len() <= 1 << 20 {
        text.push_str("# padding padding padding padding padding padding\n");
    }
    std::fs::write(&file, text).unwrap();
    let out = run(&["serve", "--config", file.to_str().unwrap()]);
    assert_one_line_error(&out, 2, &["huge.toml", "1024 KiB"]);
    // A device that never ends, a directory and a FIFO nobody writes to are
    // refused at once, without reading (or waiting on) them.
    let fifo = dir.str("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    // (After the file over the bound: a binary without the bound fails there
    // instead of reading /dev/zero until memory runs out.)
    for path in ["/dev/zero", dir.path().to_str().unwrap(), &fifo] {
        let out = run(&["serve", "--config", path]);
        assert_one_line_error(&out, 2, &[path, "not a regular file"]);
    }
}

#[test]
fn serve_takes_dir_from_the_file() {
    let dir = TempDir::new("config-dir");
    std::fs::create_dir(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), "<p>from the file</p>\n").unwrap();
    let file = dir.join("site.toml");
    std::fs::write(
        &file,
        format!(
            "dir = \"{}\"\nbind = [\"127.0.0.1:0\"]\nworkers = 1\n",
            dir.join("site").display()
        ),
    )
    .unwrap();
    let mut server = Running::start(&["serve", "-c", file.to_str().unwrap()]);
    let line = server.expect_line("http://");
    assert!(line.contains("serving files from"), "{line}");
    server.expect_line("worker 0 pid");
    let (status, _, body) = get(http_addr_in(&line), "/");
    assert_eq!((status, body.as_str()), (200, "<p>from the file</p>\n"));
    server.signal(Signal::TERM);
    assert_eq!(server.wait().code(), Some(0), "{}", server.transcript());
}
