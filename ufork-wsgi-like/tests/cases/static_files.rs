//! Static files like a file server: a mount prefix, ranges, validators.

use ufork_wsgi_like::Server;
use ufork_wsgi_like::static_files::StaticFiles;

use crate::util::{Client, addr_of, local};

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
