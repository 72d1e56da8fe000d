//! Even load: connections on the shared listener are spread over the
//! workers, not taken by the one registered first.

use ufork_wsgi_like::Server;

use crate::util::{Client, Forked};

#[test]
fn new_connections_go_to_the_workers_in_turn() {
    const WORKERS: usize = 3;
    const CONNECTIONS: usize = 60;
    let forked = Forked::start(Server::builder().workers(WORKERS), crate::app);
    crate::util::eventually("every worker to be listed", || {
        forked.handle.snapshot().workers.len() == WORKERS
    });
    // One at a time, each answered before the next connects: every worker
    // is idle in its event loop each time, the case where the kernel's
    // exclusive wake-up always picked the same one.
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut client = Client::new(forked.addr);
        assert_eq!(client.get("/").status, 200);
        held.push(client);
    }
    let snapshot = forked.handle.snapshot();
    let counts: Vec<u64> = snapshot.workers.iter().map(|w| w.requests).collect();
    assert_eq!(counts.iter().sum::<u64>(), CONNECTIONS as u64, "{counts:?}");
    let fair = (CONNECTIONS / WORKERS) as u64;
    assert!(
        counts.iter().all(|&c| c >= fair / 2),
        "each worker should serve at least half of {fair}: {counts:?}"
    );
    drop(held);
    forked.finish();
}
