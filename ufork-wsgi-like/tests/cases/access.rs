//! The access log: formats, its own sink, rejections with their request line.

use std::path::{Path, PathBuf};

use ufork_wsgi_like::{AccessFormat, AccessLog, AccessSink, Server};

use crate::util::{self, Client, Forked, addr_of, exchange, local};

fn temp_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ufork-wsgi-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits until `path` holds `lines` lines (a line is written after its
/// response).
fn lines_of(path: &Path, lines: usize) -> Vec<String> {
    let mut text = String::new();
    util::eventually("the access log lines", || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().count() >= lines
    });
    text.lines().map(str::to_owned).collect()
}

fn server_logging_to(format: AccessFormat, path: &Path) -> ufork_wsgi_like::LocalServer {
    local(
        Server::builder()
            .max_body_bytes(10)
            .access_log_to(AccessLog {
                format,
                sink: AccessSink::File(path.to_owned()),
            }),
        crate::app,
    )
}

#[test]
fn common_and_combined_lines_are_timestamped_in_their_own_file() {
    let path = temp_file("common");
    let server = server_logging_to(AccessFormat::Common, &path);
    let mut client = Client::new(addr_of(&server));
    client.get("/uri?q=1");
    // Rejected after its head was parsed: the line still names the request.
    let (resp, _) = exchange(
        addr_of(&server),
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 99\r\n\r\n",
    );
    assert_eq!(resp.status, 413);
    let lines = lines_of(&path, 2);
    let stamp = |line: &str| {
        // 127.0.0.1 - - [01/Dec/2026:17:35:53 +0000] "...
        let open = line.find('[').unwrap();
        let close = line.find(']').unwrap();
        assert_eq!(close - open, 27, "{line}");
        assert!(line[open..close].ends_with(" +0000"), "{line}");
    };
    assert!(lines[0].starts_with("127.0.0.1 - - ["), "{lines:?}");
    assert!(
        lines[0].ends_with("\"GET /uri?q=1 HTTP/1.1\" 200 31"),
        "{lines:?}"
    );
    stamp(&lines[0]);
    assert!(
        lines[1].ends_with("\"POST /upload HTTP/1.1\" 413 18"),
        "{lines:?}"
    );
    stamp(&lines[1]);
    // Not through the log facade.
    assert!(util::logged("/upload").is_empty());
    drop(server);
    let _ = std::fs::remove_file(&path);

    let path = temp_file("combined");
    let server = server_logging_to(AccessFormat::Combined, &path);
    let mut client = Client::new(addr_of(&server));
    client
        .send("GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: probe \"1\"\r\nReferer: http://r/\r\n\r\n");
    client.read_response();
    let lines = lines_of(&path, 1);
    assert!(
        lines[0].contains("\"GET / HTTP/1.1\" 200 6 \"http://r/\" \"probe \\\"1\\\"\" "),
        "{lines:?}"
    );
    drop(server);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn json_lines_from_forked_workers() {
    let path = temp_file("json");
    let forked = Forked::start(
        Server::builder().workers(2).access_log_to(AccessLog {
            format: AccessFormat::Json,
            sink: AccessSink::File(path.clone()),
        }),
        crate::app,
    );
    for i in 0..4 {
        assert_eq!(util::get(forked.addr, &format!("/n{i}")).status, 200);
    }
    // A request line too long to read is logged as "-".
    let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "x".repeat(9000));
    assert_eq!(exchange(forked.addr, long).0.status, 414);
    let mut lines = lines_of(&path, 5);
    forked.finish();
    // Two workers write in the order they finish, not the requests'.
    lines.sort_by_key(|l| l.contains("\"status\":414"));
    for line in &lines[..4] {
        assert!(line.starts_with("{\"time\":\"20"), "{line}");
        assert!(
            line.contains("Z\",\"client\":\"127.0.0.1\",\"request\":\"GET /n"),
            "{line}"
        );
        assert!(line.contains(",\"status\":200,\"bytes\":6,"), "{line}");
        assert!(
            line.ends_with(",\"referer\":null,\"user_agent\":null}"),
            "{line}"
        );
    }
    assert!(
        lines[4].contains("\"request\":\"-\",\"status\":414"),
        "{lines:?}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_access_log_file_that_cannot_be_opened_is_a_build_error() {
    let err = Server::builder()
        .bind("127.0.0.1:0")
        .access_log_to(AccessLog {
            format: AccessFormat::Common,
            sink: AccessSink::File("/no/such/dir/access.log".into()),
        })
        .build(crate::app)
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/dir/access.log"), "{err}");
}
