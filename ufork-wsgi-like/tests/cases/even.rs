//! Even load: connections on the shared listener are spread over the
//! workers, not taken by the one registered first nor by the ones that
//! happened to run during a burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use ufork_wsgi_like::Server;

use crate::util::{Client, Forked, PATIENCE};

#[test]
fn new_connections_go_to_the_workers_in_turn() {
    const WORKERS: usize = 3;
    const CONNECTIONS: usize = 60;
    let forked = Forked::start(Server::builder().workers(WORKERS), crate::app);
    forked.wait_ready(WORKERS);
    // One at a time, each answered before the next connects: every worker
    // is idle in its event loop each time, the case where the kernel's
    // exclusive wake-up always picked the same one.
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut client = Client::new(forked.addr);
        assert_eq!(client.get("/").status, 200);
        held.push(client);
    }
    assert_each_served_half_its_share(&forked, CONNECTIONS, WORKERS);
    drop(held);
    forked.finish();
}

#[test]
fn a_burst_of_connections_is_spread_over_the_workers() {
    const WORKERS: usize = 3;
    const CONNECTIONS: usize = 60;
    let forked = Forked::start(Server::builder().workers(WORKERS), crate::app);
    forked.wait_ready(WORKERS);
    // Every connection is queued on the listener before any request is
    // sent, as `wrk -c64` opens its connections: whichever workers run
    // first would take them all.
    let mut held: Vec<Client> = (0..CONNECTIONS).map(|_| Client::new(forked.addr)).collect();
    for client in &mut held {
        client.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    for client in &mut held {
        assert_eq!(client.read_response().status, 200);
    }
    assert_each_served_half_its_share(&forked, CONNECTIONS, WORKERS);
    drop(held);
    forked.finish();
}

#[test]
fn connections_arriving_while_a_worker_is_replaced_are_all_served() {
    const WORKERS: usize = 2;
    let forked = Forked::start(Server::builder().workers(WORKERS), crate::app);
    forked.wait_ready(WORKERS);
    // Both workers hold connections, so either may be standing aside.
    let mut held: Vec<Client> = (0..40).map(|_| Client::new(forked.addr)).collect();
    for client in &mut held {
        assert_eq!(client.get("/").status, 200);
    }
    let snapshot = forked.handle.snapshot();
    let victim = snapshot
        .workers
        .iter()
        .find(|w| w.slot == 0)
        .expect("slot 0")
        .pid;
    forked.handle.kill(0);
    crate::util::eventually("the killed worker to be reaped", || {
        forked
            .handle
            .snapshot()
            .workers
            .iter()
            .all(|w| w.pid != victim)
    });
    // Queued on the shared listener while the dead worker's connections
    // still count in the table and its replacement starts: the survivor
    // or the replacement takes each one.
    let mut burst: Vec<Client> = (0..20).map(|_| Client::new(forked.addr)).collect();
    for client in &mut burst {
        client.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    for client in &mut burst {
        assert_eq!(client.read_response().status, 200);
    }
    drop(held);
    drop(burst);
    forked.finish();
}

#[test]
fn keep_alive_connections_move_to_a_worker_that_joins_later() {
    moves_to_a_worker_that_joins_later("/", 50);
}

/// A request that takes a millisecond of CPU: one wake-up of the loaded
/// worker brings milliseconds of work, and it is still judged saturated.
#[test]
fn connections_with_slow_requests_move_to_a_worker_that_joins_later() {
    moves_to_a_worker_that_joins_later("/spin", 10);
}

/// Clients that pipeline: an answer with requests buffered behind it,
/// read or still in the socket, never closes the connection.
#[test]
fn shedding_never_closes_a_connection_with_pipelined_requests() {
    const DEPTH: usize = 64;
    let batch = "GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(DEPTH);
    let drive = Drive::grown(move |client: &mut Client| {
        client.send(&batch);
        for i in 0..DEPTH {
            let resp = client.read_response();
            assert_eq!(resp.status, 200);
            if resp.closes() {
                return Some(DEPTH - 1 - i);
            }
        }
        None
    });
    let (new, total) = drive.window(DEPTH as u64 * 200);
    assert_eq!(drive.lost(), 0, "requests dropped by a close");
    // Connections moved all the same, between batches.
    assert!(
        drive.closes() > 0 && new > 0,
        "no connection moved: the new worker served {new} of {total}"
    );
    drive.finish();
}

fn moves_to_a_worker_that_joins_later(path: &'static str, rounds: u64) {
    let drive = Drive::grown(move |client: &mut Client| {
        let resp = client.get(path);
        assert_eq!(resp.status, 200);
        resp.closes().then_some(0)
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (new, total) = drive.window(CONNECTIONS as u64 * rounds);
        // An even split, within the over-share margin.
        if new * 16 >= total * 7 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new worker served {new} of the last {total} requests after {} connections were shed",
            drive.closes()
        );
    }
    let shed = drive.closes();
    assert!(shed >= CONNECTIONS / 2 - 1, "only {shed} connections moved");
    // Once even, shedding stops: no connection churns.
    let (new, total) = drive.window(CONNECTIONS as u64 * rounds * 4);
    let churn = drive.closes() - shed;
    assert!(
        churn <= CONNECTIONS / 2,
        "{churn} more connections shed while the new worker served {new} of {total}"
    );
    drive.finish();
}

/// Keep-alive connections the shedding tests drive.
const CONNECTIONS: usize = 16;

/// A pool of one worker that took [`CONNECTIONS`] keep-alive connections,
/// grown to two, as a survivor holds them all once the clients of a worker
/// that exited (a recycle, a crash) reconnected before its replacement was
/// up; each connection then driven on its own thread by a client that goes
/// on as wrk or a proxy's pool does, with a new connection when an answer
/// says close. Without shedding, the new worker would serve none of them
/// for as long as they live.
struct Drive {
    forked: Forked,
    stop: Arc<AtomicBool>,
    closes: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Drive {
    /// `exchange` makes one round on a connection: `Some(lost)` when an
    /// answer said close (with how many requests sent went unanswered).
    fn grown(exchange: impl Fn(&mut Client) -> Option<usize> + Clone + Send + 'static) -> Self {
        let forked = Forked::start(
            Server::builder().workers(1).arbiter(|b| b.capacity(2)),
            crate::app,
        );
        forked.wait_ready(1);
        let held: Vec<Client> = (0..CONNECTIONS)
            .map(|_| {
                let mut client = Client::new(forked.addr);
                assert_eq!(client.get("/").status, 200);
                client
            })
            .collect();
        forked.handle.set_workers(2).expect("grow to 2 workers");
        forked.wait_ready(2);
        let stop = Arc::new(AtomicBool::new(false));
        let closes = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let addr = forked.addr;
        let clients = held
            .into_iter()
            .map(|mut client| {
                let (stop, closes, lost) =
                    (Arc::clone(&stop), Arc::clone(&closes), Arc::clone(&lost));
                let exchange = exchange.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(unanswered) = exchange(&mut client) {
                            closes.fetch_add(1, Ordering::Relaxed);
                            lost.fetch_add(unanswered, Ordering::Relaxed);
                            client = Client::new(addr);
                        }
                    }
                })
            })
            .collect();
        Self {
            forked,
            stop,
            closes,
            lost,
            clients,
        }
    }

    fn closes(&self) -> usize {
        self.closes.load(Ordering::Relaxed)
    }

    fn lost(&self) -> usize {
        self.lost.load(Ordering::Relaxed)
    }

    /// (requests of the new worker, requests of both) over the next `n`.
    fn window(&self, n: u64) -> (u64, u64) {
        let counts = || {
            let workers = self.forked.handle.snapshot().workers;
            let of = |slot| {
                workers
                    .iter()
                    .find(|w| w.slot == slot)
                    .map_or(0, |w| w.requests)
            };
            (of(1), of(0) + of(1))
        };
        let (new, total) = counts();
        let mut now = counts();
        crate::util::eventually("the clients to make more requests", || {
            now = counts();
            now.1 >= total + n
        });
        (now.0 - new, now.1 - total)
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().expect("client thread");
        }
        self.forked.finish();
    }
}

/// Every one of `connections` one-request connections was served, and each
/// of the `workers` served at least half of its fair share of them.
fn assert_each_served_half_its_share(forked: &Forked, connections: usize, workers: usize) {
    let snapshot = forked.handle.snapshot();
    let counts: Vec<u64> = snapshot.workers.iter().map(|w| w.requests).collect();
    assert_eq!(counts.iter().sum::<u64>(), connections as u64, "{counts:?}");
    let fair = (connections / workers) as u64;
    assert!(
        counts.iter().all(|&c| c >= fair / 2),
        "each worker should serve at least half of {fair}: {counts:?}"
    );
}
