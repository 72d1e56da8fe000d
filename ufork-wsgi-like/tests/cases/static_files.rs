//! Static files like a file server: a mount prefix, ranges, validators.

use std::io::{Read, Write};

use ufork_wsgi_like::static_files::StaticFiles;
use ufork_wsgi_like::{App, Server};

use crate::util::{Client, Forked, addr_of, local};

fn tree(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ufork-wsgi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(dir.join("digits.txt"), "0123456789").unwrap();
    dir
}

fn request(client: &mut Client, path: &str, headers: &str) -> crate::util::Resp {
    client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n"));
    client.read_response()
}

#[test]
fn mounted_under_a_prefix_redirects_keep_it() {
    let dir = tree("mount");
    let server = local(
        Server::builder(),
        StaticFiles::new(&dir).unwrap().mount("/static/"),
    );
    let mut client = Client::new(addr_of(&server));
    assert_eq!(client.get("/static/digits.txt").text(), "0123456789");
    assert_eq!(client.get("/static/docs/").text(), "<h1>docs</h1>");
    let resp = client.get("/static/docs?x=1");
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("/static/docs/?x=1"));
    let resp = client.get("/static");
    assert_eq!(
        (resp.status, resp.header("location")),
        (301, Some("/static/"))
    );
    assert_eq!(client.get("/digits.txt").status, 404);
    assert_eq!(client.get("/staticdigits.txt").status, 404);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn single_ranges_get_206_or_416() {
    let dir = tree("range");
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut client = Client::new(addr_of(&server));
    let resp = request(&mut client, "/digits.txt", "Range: bytes=2-4\r\n");
    assert_eq!((resp.status, resp.text().as_str()), (206, "234"));
    assert_eq!(resp.header("content-range"), Some("bytes 2-4/10"));
    assert_eq!(resp.header("content-length"), Some("3"));
    let resp = request(&mut client, "/digits.txt", "Range: bytes=-3\r\n");
    assert_eq!((resp.status, resp.text().as_str()), (206, "789"));
    let resp = request(&mut client, "/digits.txt", "Range: bytes=7-\r\n");
    assert_eq!((resp.status, resp.text().as_str()), (206, "789"));
    let resp = request(&mut client, "/digits.txt", "Range: bytes=10-20\r\n");
    assert_eq!(resp.status, 416);
    assert_eq!(resp.header("content-range"), Some("bytes */10"));
    // Several ranges: the whole file.
    let resp = request(&mut client, "/digits.txt", "Range: bytes=0-1,4-5\r\n");
    assert_eq!((resp.status, resp.text().as_str()), (200, "0123456789"));
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));
    // An If-Range for another version: the whole file.
    let resp = request(
        &mut client,
        "/digits.txt",
        "Range: bytes=0-1\r\nIf-Range: \"other\"\r\n",
    );
    assert_eq!(resp.status, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn etag_and_last_modified_answer_conditional_requests_with_304() {
    let dir = tree("validators");
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut client = Client::new(addr_of(&server));
    let resp = client.get("/digits.txt");
    let etag = resp.header("etag").expect("an ETag").to_owned();
    let modified = resp
        .header("last-modified")
        .expect("a Last-Modified")
        .to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let resp = request(
        &mut client,
        "/digits.txt",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(resp.status, 304);
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("etag"), Some(etag.as_str()));
    let resp = request(&mut client, "/digits.txt", "If-None-Match: \"old\", *\r\n");
    assert_eq!(resp.status, 304);
    let resp = request(&mut client, "/digits.txt", "If-None-Match: \"old\"\r\n");
    assert_eq!(resp.status, 200);
    // If-None-Match decides when present, even against an
    // If-Modified-Since that would say 304.
    let resp = request(
        &mut client,
        "/digits.txt",
        &format!("If-None-Match: \"old\"\r\nIf-Modified-Since: {modified}\r\n"),
    );
    assert_eq!(resp.status, 200);
    client.send(format!(
        "HEAD /digits.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"
    ));
    assert_eq!(client.read_response_to(true).status, 304);
    let resp = request(
        &mut client,
        "/digits.txt",
        &format!("If-Modified-Since: {modified}\r\n"),
    );
    assert_eq!(resp.status, 304);
    let resp = request(
        &mut client,
        "/digits.txt",
        "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n",
    );
    assert_eq!(resp.status, 200);
    // A changed file has another tag.
    std::fs::write(dir.join("digits.txt"), "01234567890").unwrap();
    let resp = request(
        &mut client,
        "/digits.txt",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!((resp.status, resp.text().as_str()), (200, "01234567890"));
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// Reads one response head from `stream`: its status, its `Content-Length`
/// and the body bytes that came with it.
fn read_head(stream: &mut std::net::TcpStream) -> (u16, u64, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).expect("read the head");
        assert!(n > 0, "closed mid-head");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = resp.parse(&buf).unwrap() {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .expect("content-length");
            return (resp.code.unwrap(), len, buf.split_off(head_len));
        }
    }
}

/// Sends a GET for `path` with a small receive buffer, so the server
/// cannot push much of a big body ahead of the reader.
fn slow_get(addr: std::net::SocketAddr, path: &str) -> std::net::TcpStream {
    let mut stream = crate::util::connect(addr);
    rustix::net::sockopt::set_socket_recv_buffer_size(&stream, 64 * 1024).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    stream
}

/// A file that grows while it is sent is cut at the length it had when it
/// was opened: the connection carries exactly the announced bytes and
/// serves the next request.
#[test]
fn a_file_growing_while_sent_is_cut_at_its_announced_length() {
    let dir = tree("grow");
    let path = dir.join("grow.bin");
    let len = 64 << 20;
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut stream = slow_get(addr_of(&server), "/grow.bin");
    let (status, announced, mut body) = read_head(&mut stream);
    assert_eq!((status, announced), (200, len));
    // The server is now blocked on a full socket, far from the end.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[b'!'; 4096])
        .unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    while (body.len() as u64) < len {
        let want = (len - body.len() as u64).min(chunk.len() as u64) as usize;
        let n = stream.read(&mut chunk[..want]).expect("read the body");
        assert!(n > 0, "closed after {} of {len} bytes", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    assert!(body.iter().all(|&b| b == 0), "only the original bytes");
    // Nothing past the announced length: the next bytes are the next
    // response.
    stream
        .write_all(b"GET /digits.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut next = Vec::new();
    stream.read_to_end(&mut next).unwrap();
    let next = String::from_utf8_lossy(&next);
    assert!(
        next.starts_with("HTTP/1.1 200 OK\r\n") && next.ends_with("\r\n\r\n0123456789"),
        "{next}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A file that shrinks while it is sent cannot deliver its announced
/// length: the connection is reset (never a hang, never a short body that
/// looks whole).
#[test]
fn a_file_shrinking_while_sent_resets_the_connection() {
    let dir = tree("shrink");
    let path = dir.join("shrink.bin");
    let len = 64 << 20;
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut stream = slow_get(addr_of(&server), "/shrink.bin");
    let (status, announced, mut received) = read_head(&mut stream);
    assert_eq!((status, announced), (200, len));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let end = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break None,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    assert!(
        (received.len() as u64) < len,
        "{} bytes of a file cut to 1 MiB",
        received.len()
    );
    assert_eq!(
        end,
        Some(std::io::ErrorKind::ConnectionReset),
        "after {} bytes",
        received.len()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// Only regular files are served: a FIFO (whose open would block a worker
/// that did not ask for `O_NONBLOCK`) and a socket are 404, and the
/// connection goes on serving.
#[test]
fn fifos_and_sockets_are_404_and_never_block() {
    let dir = tree("odd");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("pipe.txt"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(dir.join("sock.txt")).unwrap();
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut client = Client::new(addr_of(&server));
    assert_eq!(client.get("/pipe.txt").status, 404);
    assert_eq!(client.get("/sock.txt").status, 404);
    assert_eq!(client.get("/digits.txt").text(), "0123456789");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A name is bytes: one that is not UTF-8, percent-encoded, is served; an
/// empty file is a 200 with `Content-Length: 0` (and any range of it
/// unsatisfiable); HEAD has the length and no body.
#[test]
fn odd_names_empty_files_and_head() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tree("names");
    std::fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9 menu.txt")),
        "latin-1",
    )
    .unwrap();
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut client = Client::new(addr_of(&server));
    let resp = client.get("/caf%E9%20menu.txt");
    assert_eq!((resp.status, resp.text().as_str()), (200, "latin-1"));
    assert_eq!(client.get("/caf%C3%A9%20menu.txt").status, 404);
    // A file is not a directory: `file/` is 404, as open(2) would have it.
    assert_eq!(client.get("/digits.txt/").status, 404);
    assert_eq!(client.get("/docs/index.html/").status, 404);
    assert_eq!(client.get("/docs/").status, 200);

    let resp = client.get("/empty.txt");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("0"));
    assert!(resp.body.is_empty());
    let resp = request(&mut client, "/empty.txt", "Range: bytes=0-\r\n");
    assert_eq!(
        (resp.status, resp.header("content-range")),
        (416, Some("bytes */0"))
    );
    let resp = request(&mut client, "/empty.txt", "Range: bytes=-5\r\n");
    assert_eq!(resp.status, 416);

    client.send("HEAD /digits.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = client.read_response_to(true);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("10"))
    );
    client.send("HEAD /digits.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=-4\r\n\r\n");
    let head = client.read_response_to(true);
    assert_eq!(
        (head.status, head.header("content-range")),
        (206, Some("bytes 6-9/10"))
    );
    // Nothing followed either head: the next response comes next.
    let resp = request(&mut client, "/digits.txt", "Range: bytes=-20\r\n");
    assert_eq!((resp.status, resp.text().as_str()), (206, "0123456789"));
    assert_eq!(resp.header("content-range"), Some("bytes 0-9/10"));
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// Links: relative or absolute, to a file or a directory, are followed
/// while they stay under the root; every way out of it is 404.
#[test]
fn links_are_followed_inside_the_root_only() {
    use std::os::unix::fs::symlink;
    let base = tree("links");
    let dir = base.join("root");
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(dir.join("digits.txt"), "0123456789").unwrap();
    symlink("digits.txt", dir.join("relative.txt")).unwrap();
    symlink(dir.join("digits.txt"), dir.join("absolute.txt")).unwrap();
    symlink("docs", dir.join("manual")).unwrap();
    symlink(dir.join("docs"), dir.join("abs-manual")).unwrap();
    symlink("docs/../digits.txt", dir.join("roundabout.txt")).unwrap();
    symlink("../digits.txt", dir.join("up.txt")).unwrap();
    symlink(base.join("digits.txt"), dir.join("out.txt")).unwrap();
    symlink("..", dir.join("parent")).unwrap();
    symlink("/", dir.join("slash")).unwrap();
    symlink("loop", dir.join("loop")).unwrap();
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut client = Client::new(addr_of(&server));
    for inside in ["/relative.txt", "/absolute.txt", "/roundabout.txt"] {
        assert_eq!(client.get(inside).text(), "0123456789", "{inside}");
    }
    assert_eq!(client.get("/manual/").text(), "<h1>docs</h1>");
    assert_eq!(client.get("/abs-manual/").text(), "<h1>docs</h1>");
    let resp = client.get("/manual");
    assert_eq!(
        (resp.status, resp.header("location")),
        (301, Some("/manual/"))
    );
    for outside in [
        "/up.txt",
        "/out.txt",
        "/parent/digits.txt",
        "/parent/",
        "/slash/etc/passwd",
        "/loop",
        // `..` in a request is refused before any lookup.
        "/docs/../digits.txt",
        "/%2e%2e/digits.txt",
        "/docs/%2E%2E/%2e%2e/digits.txt",
        "/..%2fdigits.txt",
    ] {
        assert_eq!(client.get(outside).status, 404, "{outside}");
    }
    assert_eq!(client.get("/digits.txt").status, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(base);
}

/// What the worker may not open is 403: a file without read permission, a
/// file in a directory it may not search, a directory index it may not
/// read. Run as root, the serving thread of the forked worker drops to
/// `nobody` first (a thread's credentials are its own in Linux), since root
/// reads anything.
#[test]
fn what_the_worker_may_not_read_is_403() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tree("denied");
    std::fs::create_dir_all(dir.join("private")).unwrap();
    std::fs::write(dir.join("private/inside.txt"), "hidden").unwrap();
    std::fs::write(dir.join("locked.txt"), "locked").unwrap();
    std::fs::write(dir.join("docs/index.html"), "<h1>locked docs</h1>").unwrap();
    let mode = |path: &str, mode: u32| {
        std::fs::set_permissions(dir.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode("private", 0o000);
    mode("locked.txt", 0o000);
    mode("docs/index.html", 0o000);
    let files = StaticFiles::new(&dir).unwrap();
    let app = move |request| {
        if rustix::process::geteuid().is_root() {
            let nobody = rustix::process::Uid::from_raw(65534);
            rustix::thread::set_thread_res_uid(nobody, nobody, nobody).expect("become nobody");
        }
        files.call(request)
    };
    let forked = Forked::start(Server::builder().workers(1), app);
    let mut client = Client::new(forked.addr);
    assert_eq!(client.get("/digits.txt").text(), "0123456789");
    assert_eq!(client.get("/locked.txt").status, 403);
    assert_eq!(client.get("/private/inside.txt").status, 403);
    assert_eq!(client.get("/docs/").status, 403);
    assert_eq!(client.get("/missing.txt").status, 404);
    forked.finish();
    mode("private", 0o755);
    let _ = std::fs::remove_dir_all(dir);
}

/// A root deleted and made anew while serving (a deploy by copy) is served
/// from the new directory; one replaced by a link is not followed.
#[test]
fn a_root_made_anew_is_served_from_the_new_directory() {
    let dir = tree("anew");
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut client = Client::new(addr_of(&server));
    assert_eq!(client.get("/digits.txt").text(), "0123456789");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(client.get("/digits.txt").status, 404);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("digits.txt"), "9876543210").unwrap();
    assert_eq!(client.get("/digits.txt").text(), "9876543210");
    assert_eq!(client.get("/docs/").status, 404, "the old tree is gone");
    // Moved away, and a link to another tree put in its place.
    let elsewhere = tree("anew-elsewhere");
    let moved = dir.with_extension("old");
    std::fs::rename(&dir, &moved).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    assert_eq!(client.get("/digits.txt").status, 404);
    drop(server);
    for path in [&moved, &elsewhere] {
        let _ = std::fs::remove_dir_all(path);
    }
    let _ = std::fs::remove_file(dir);
}

/// A file larger than the socket buffers can hold, of a known pattern.
fn big_file(dir: &std::path::Path) -> Vec<u8> {
    let big: Vec<u8> = (0..16usize << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    big
}

/// Room for the client's receive buffer: small, so the server's writes
/// stop fitting soon.
const SMALL_RCVBUF: usize = 64 << 10;

/// A client with a small receive buffer, so the server's writes stop
/// fitting soon.
fn slow_client(addr: std::net::SocketAddr) -> Client {
    let client = Client::new(addr);
    rustix::net::sockopt::set_socket_recv_buffer_size(&client.stream, SMALL_RCVBUF).unwrap();
    client
}

/// A slow client that asked for big.bin, got its first bytes, and sent its
/// next request while the file goes out (so the server has not read it).
fn big_file_begun(addr: std::net::SocketAddr) -> Client {
    let mut slow = slow_client(addr);
    slow.send("GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(slow.fill() > 0);
    slow.send("GET /digits.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    slow
}

/// A client reading a large file slowly (or not at all, for now) holds no
/// serving thread: the rest of the file goes out from the event loop as the
/// socket drains, so another client on the same one-thread server is
/// answered at once; the slow one gets the whole file, then what it
/// pipelined behind it, and its connection goes on.
#[test]
fn a_slow_reader_of_a_large_file_holds_no_serving_thread() {
    let dir = tree("slowfile");
    let big = big_file(&dir);
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut slow = slow_client(addr_of(&server));
    slow.send(
        "GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /digits.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    // The answer has begun: the server is past the app, in the file.
    assert!(slow.fill() > 0);
    // Held by the slow client, the thread would answer this one only when
    // the write timeout (30 s) gave up on it: past this client's patience.
    let mut other = Client::new(addr_of(&server));
    assert_eq!(request(&mut other, "/digits.txt", "").text(), "0123456789");
    let resp = slow.read_response();
    assert_eq!(resp.status, 200);
    assert!(resp.body == big, "{} bytes, not the file", resp.body.len());
    assert_eq!(slow.read_response().text(), "0123456789");
    assert_eq!(request(&mut slow, "/digits.txt", "").text(), "0123456789");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that stops taking a file is reset once it took nothing for the
/// write timeout, as one that stops taking any other body; the server goes
/// on serving.
#[test]
fn a_reader_that_stops_taking_a_file_is_reset_after_the_write_timeout() {
    let dir = tree("stalledfile");
    let big = big_file(&dir);
    let log = dir.join("access.log");
    let server = local(
        Server::builder()
            .write_timeout(std::time::Duration::from_millis(300))
            .access_log_to(ufork_wsgi_like::AccessLog {
                format: ufork_wsgi_like::AccessFormat::Common,
                sink: ufork_wsgi_like::AccessSink::File(log.clone()),
            }),
        StaticFiles::new(&dir).unwrap(),
    );
    let mut stalled = crate::util::connect(addr_of(&server));
    rustix::net::sockopt::set_socket_recv_buffer_size(&stalled, SMALL_RCVBUF).unwrap();
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Without reading: wait for the reset (an error or hang-up on the
    // socket, with the unread bytes still queued).
    let mut fds = [rustix::event::PollFd::new(
        &stalled,
        rustix::event::PollFlags::empty(),
    )];
    let patience = rustix::time::Timespec {
        tv_sec: crate::util::PATIENCE.as_secs() as i64,
        tv_nsec: 0,
    };
    assert_eq!(
        rustix::event::poll(&mut fds, Some(&patience)).unwrap(),
        1,
        "no reset"
    );
    let mut received = Vec::new();
    let end = stalled.read_to_end(&mut received);
    assert!(received.len() < big.len(), "{}", received.len());
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let mut next = Client::new(addr_of(&server));
    assert_eq!(request(&mut next, "/digits.txt", "").text(), "0123456789");
    // The access log counts the body's length when the answer starts (the
    // line is written then), not what the client took before the reset.
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("GET /big.bin"))
        .expect(&text);
    assert!(line.ends_with(&format!(" 200 {}", big.len())), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stop while a file goes out lets it finish: the client, which sent its
/// next request meanwhile, gets the whole file and then that answer (the
/// last, saying close), not a reset that drops the file's unsent end.
#[test]
fn a_stop_while_a_file_goes_out_finishes_it_and_answers_what_came_behind() {
    let dir = tree("stopfile");
    let big = big_file(&dir);
    let server = local(Server::builder(), StaticFiles::new(&dir).unwrap());
    let mut slow = big_file_begun(addr_of(&server));
    server.stop();
    let resp = slow.read_response();
    assert!(resp.body == big, "{} bytes, not the file", resp.body.len());
    let resp = slow.read_response();
    assert_eq!(resp.text(), "0123456789");
    assert!(resp.closes(), "{resp:?}");
    slow.assert_closed();
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An answer that closes its connection (keep-alive off here) reaches the
/// client whole although the client sent more meanwhile: the close is a
/// FIN after the last byte, not a reset.
#[test]
fn a_file_answer_that_closes_arrives_whole_despite_a_request_behind_it() {
    let dir = tree("closefile");
    let big = big_file(&dir);
    let server = local(
        Server::builder().keep_alive_timeout(std::time::Duration::ZERO),
        StaticFiles::new(&dir).unwrap(),
    );
    let mut slow = big_file_begun(addr_of(&server));
    let resp = slow.read_response();
    assert!(resp.closes(), "{resp:?}");
    assert!(resp.body == big, "{} bytes, not the file", resp.body.len());
    slow.assert_closed();
    let _ = std::fs::remove_dir_all(&dir);
}
