//! RFC 9112 §3.2 / RFC 9110 §4.2.4: request targets a server should refuse.

use crate::util::get;
use crate::{rejected, test_server};

#[test]
fn raw_non_ascii_fragments_and_userinfo_in_targets_get_400() {
    let server = test_server();
    // Valid UTF-8, sent raw instead of percent-encoded.
    rejected(&server, "GET /caf\u{e9} HTTP/1.1\r\nHost: t\r\n\r\n", 400);
    rejected(&server, b"GET /caf\xc3 HTTP/1.1\r\nHost: t\r\n\r\n", 400);
    rejected(&server, "GET /page#top HTTP/1.1\r\nHost: t\r\n\r\n", 400);
    rejected(
        &server,
        "GET http://user:pass@t/ HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
    );
    // The same, encoded as a client must, is served.
    let addr = crate::util::addr_of(&server);
    assert_eq!(get(addr, "/caf%C3%A9?q=%23x").status, 200);
}

#[test]
fn connect_gets_501_and_never_reaches_the_app() {
    // The test app answers every path with a 200, which to a CONNECT would
    // say the tunnel is open.
    let server = test_server();
    rejected(
        &server,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        501,
    );
    rejected(&server, "CONNECT /uri HTTP/1.1\r\nHost: t\r\n\r\n", 400);
    // OPTIONS * is the app's to answer.
    let (resp, _) = crate::util::exchange(
        crate::util::addr_of(&server),
        "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
}
