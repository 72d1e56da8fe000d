//! Huge settings mean "never": no overflow, no panic.

use std::time::Duration;

use ufork_wsgi_like::Server;

use crate::util::{Client, addr_of, local};

#[test]
fn huge_timeouts_and_max_requests_mean_never() {
    let server = local(
        Server::builder()
            .header_timeout(Duration::MAX)
            .keep_alive_timeout(Duration::MAX)
            .read_timeout(Duration::MAX)
            .write_timeout(Duration::MAX)
            .max_requests(u64::MAX, u64::MAX),
        crate::app,
    );
    let mut client = Client::new(addr_of(&server));
    for _ in 0..3 {
        assert_eq!(client.get("/").text(), "hello\n");
    }
    // A body read waits with no deadline, and a response write too.
    client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n");
    client.send("hel");
    client.send("lo");
    let resp = client.read_response();
    assert_eq!(resp.text(), "hello");
    assert!(!resp.closes());
    assert_eq!(client.get("/big").body.len(), 100 * 1024);
    drop(client);
    server.stop();
    server.join().expect("the server ends cleanly");
}
