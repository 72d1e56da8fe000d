//! sd_notify to the arbiter's own supervisor (systemd with `Type=notify` or
//! `Type=notify-reload`, or anything that speaks the protocol): `READY=1`
//! once every target worker is ready for the first time, `STATUS=` as the
//! pool changes (before `READY=1`, `EXTEND_TIMEOUT_USEC=` when a worker
//! extends its start past what the supervisor was told), `RELOADING=1` with
//! `MONOTONIC_USEC=` when a rolling restart
//! starts and `READY=1` when it has ended, `STOPPING=1` at a stop, and
//! `WATCHDOG=1` at half of `WATCHDOG_USEC` while the arbiter's loop runs.
//!
//! The new arbiter of an upgrade holds every message until the old one has
//! told the supervisor `MAINPID=` it ([`ufork_core::upgrade::speaks_for_service`]):
//! under `NotifyAccess=main` systemd drops what it sends before, `READY=1`
//! included. The old arbiter's `MAINPID=` goes with `READY=1` and its last
//! `STATUS=` in one datagram, so the service is ready under its new main pid
//! at once.
//!
//! The sending side is a few lines over a unix datagram socket rather than
//! the `sd-notify` crate: that crate reads `NOTIFY_SOCKET` from the
//! environment at every call and can only clear it through an `unsafe` fn,
//! while this binary forbids `unsafe` and must read the variables once,
//! before any worker exists. A socket is connected per message, so no
//! descriptor of the supervisor's lives on in the workers. Workers never see
//! the arbiter's variables: `run` sets or removes `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC` and `WATCHDOG_PID` for every program it executes.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::health::{Health, View};

/// Where the arbiter's supervisor listens, and what it expects.
#[derive(Debug)]
pub struct Supervisor {
    address: OsString,
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
    ready_sent: bool,
    /// Until when the supervisor was told the start may take
    /// (`EXTEND_TIMEOUT_USEC=`), because a worker extended its own.
    start_told_until: Option<Instant>,
    reloading: bool,
    rolls_seen: u64,
    status: String,
    /// Messages the supervisor's full queue refused, oldest first: sent
    /// again from the loop, never waited for (see [`send_to`]).
    pending: VecDeque<String>,
    retry_at: Option<Instant>,
    /// Our `MAINPID=` for the new arbiter of an upgrade waits in `pending`:
    /// the new arbiter is not told to speak until it went out.
    mainpid_held: bool,
    /// Messages lost to a failing socket (a supervisor gone, a wrong path)
    /// since it last took one, and when that was last said.
    lost: u64,
    lost_said: Option<Instant>,
}

/// A socket that keeps failing is reported at its first failure, then at
/// most this often (the watchdog alone sends several messages a second).
const LOST_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// What the supervisor's start timeout gets on top of a worker's extended
/// start deadline: room for the arbiter to see the worker ready and say
/// `READY=1`.
const EXTENSION_MARGIN: Duration = Duration::from_secs(5);

/// How much later a worker's extended start deadline must be than what the
/// supervisor was told for it to be told again (well within the margin).
const EXTENSION_JITTER: Duration = Duration::from_secs(1);

/// How soon a message the supervisor's full queue refused is tried again.
const RETRY: Duration = Duration::from_millis(50);

/// At most this many messages wait for a supervisor that does not read.
const MAX_PENDING: usize = 64;

impl Supervisor {
    /// The supervisor named by `NOTIFY_SOCKET`, with the watchdog interval
    /// from `WATCHDOG_USEC` when `WATCHDOG_PID` is unset or this process.
    /// `None` without `NOTIFY_SOCKET` (or with an empty one).
    pub fn from_env() -> Option<Self> {
        Self::new(
            std::env::var_os("NOTIFY_SOCKET")?,
            std::env::var_os("WATCHDOG_USEC"),
            std::env::var_os("WATCHDOG_PID"),
            std::process::id(),
        )
    }

    fn new(
        address: OsString,
        usec: Option<OsString>,
        watchdog_pid: Option<OsString>,
        pid: u32,
    ) -> Option<Self> {
        if address.is_empty() {
            return None;
        }
        let number = |v: &OsString| v.to_str().and_then(|s| s.trim().parse::<u64>().ok());
        let ours = watchdog_pid
            .as_ref()
            .is_none_or(|p| number(p) == Some(pid.into()));
        let watchdog = usec
            .as_ref()
            .and_then(number)
            .filter(|&usec| usec > 0 && ours)
            .map(Duration::from_micros);
        Some(Self {
            address,
            watchdog,
            next_watchdog: watchdog.map(|_| Instant::now()),
            ready_sent: false,
            start_told_until: None,
            reloading: false,
            rolls_seen: 0,
            status: String::new(),
            pending: VecDeque::new(),
            retry_at: None,
            mainpid_held: false,
            lost: 0,
            lost_said: None,
        })
    }

    /// When the next `WATCHDOG=1` is due, or a refused message is tried
    /// again, whichever comes first.
    pub fn next_watchdog(&self) -> Option<Instant> {
        match (self.next_watchdog, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends `WATCHDOG=1` if it is due; the loop calling this is alive.
    /// Tries again what the supervisor's full queue refused.
    pub fn watchdog(&mut self, now: Instant) {
        // Held until this process speaks for the service, or refused by a
        // full queue and due again.
        let held = self.retry_at.is_none() && !self.pending.is_empty();
        if held || self.retry_at.is_some_and(|at| now >= at) {
            self.flush();
        }
        let (Some(due), Some(interval)) = (self.next_watchdog, self.watchdog) else {
            return;
        };
        if now >= due {
            self.send("WATCHDOG=1");
            self.next_watchdog = now.checked_add(interval / 2);
        }
    }

    /// Messages wait that were never refused: held while this process did
    /// not speak for the service (an upgrade's new arbiter).
    pub fn holding(&self) -> bool {
        self.retry_at.is_none() && !self.pending.is_empty()
    }

    /// Tells the supervisor what changed since the last view.
    pub fn update(&mut self, view: &View) {
        let snap = &view.snapshot;
        if view.health == Health::Stopping {
            return;
        }
        let all_ready = snap.target > 0 && snap.ready_count() >= snap.target;
        if !self.ready_sent {
            // A roll asked for before the first READY=1 is part of starting.
            self.rolls_seen = snap.rolls;
            if all_ready {
                self.status = status_text(view);
                self.send(&format!("READY=1\nSTATUS={}", self.status));
                self.ready_sent = true;
            } else {
                self.extend_start(snap.start_extended_until());
                self.set_status(view);
            }
            return;
        }
        if snap.rolls > self.rolls_seen {
            self.rolls_seen = snap.rolls;
            if !self.reloading {
                let usec = monotonic_usec();
                self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
                self.reloading = true;
            }
        }
        if self.reloading && !snap.rolling && all_ready {
            self.reloading = false;
            self.status = status_text(view);
            self.send(&format!("READY=1\nSTATUS={}", self.status));
            return;
        }
        self.set_status(view);
    }

    /// Before `READY=1`: a worker's start extension past what the
    /// supervisor was told is passed on as systemd's own
    /// `EXTEND_TIMEOUT_USEC=`, the time until the worker's extended start
    /// deadline plus [`EXTENSION_MARGIN`] (for the rest of the pool's start
    /// and this arbiter's `READY=1`), so `TimeoutStartSec=` does not kill a
    /// service whose worker asked ufork for more time. An extension never
    /// shortens systemd's timeout either, so a later one is all that is sent.
    fn extend_start(&mut self, until: Option<Instant>) {
        let now = Instant::now();
        let Some(until) = until.filter(|&u| u > now) else {
            return;
        };
        // The extension is read through two clocks, a few microseconds
        // apart at each look: only a move later by more than that counts.
        if self.start_told_until.is_some_and(|told| {
            told.checked_add(EXTENSION_JITTER)
                .is_none_or(|t| t >= until)
        }) {
            return;
        }
        self.start_told_until = Some(until);
        let usec = (until - now).saturating_add(EXTENSION_MARGIN).as_micros();
        self.send(&format!("EXTEND_TIMEOUT_USEC={usec}"));
    }

    /// A stop began. After an upgrade handed the pool to a new arbiter, the
    /// service goes on: the supervisor hears `MAINPID=` the new arbiter
    /// (accepted from this process, still its main one), with `READY=1`,
    /// instead of `STOPPING=1`, which would stop the whole service.
    pub fn stopping(&mut self) {
        match ufork_core::upgrade::handed_over_to() {
            Some(pid) => {
                // Held before it is sent: the new arbiter must not be told
                // to speak between a refused send and the hold.
                ufork_core::upgrade::mainpid_undelivered(true);
                self.mainpid_held = true;
                self.send(&format!(
                    "MAINPID={pid}\nREADY=1\nSTATUS=handed over to pid {pid} (upgrade)"
                ));
                if self.mainpid_held {
                    log::info!(
                        target: "ufork",
                        "upgrade: the supervisor has not heard MAINPID={pid} yet (its queue is full); pid {pid} speaks for the service once it has"
                    );
                }
            }
            None => self.send("STOPPING=1\nSTATUS=stopping"),
        }
    }

    /// At the end of the arbiter's run: what the supervisor's full queue
    /// still refuses is sent waiting for room, for at most `within` in all
    /// (a `STOPPING=1`, an upgrade's `MAINPID=`, lost otherwise).
    pub fn finish(&mut self, within: Duration) {
        if !ufork_core::upgrade::speaks_for_service() {
            return;
        }
        // A beat says nothing once the loop is over, and after our
        // `MAINPID=` went out the supervisor takes nothing more from us.
        self.pending.retain(|m| m != "WATCHDOG=1");
        if ufork_core::upgrade::handed_over_to().is_some() && !self.mainpid_held {
            self.pending.clear();
        }
        let deadline = Instant::now().checked_add(within);
        while let Some(message) = self.pending.front() {
            let left = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .filter(|left| !left.is_zero());
            let Some(left) = left else { break };
            match send_waiting(&self.address, message, left) {
                Ok(()) if message.starts_with("MAINPID=") => self.pending.clear(),
                Ok(()) => {
                    self.pending.pop_front();
                }
                Err(_) => break,
            }
        }
        self.release_mainpid();
        if !self.pending.is_empty() {
            log::warn!(
                target: "ufork",
                "NOTIFY_SOCKET {}: the supervisor did not read {} message(s) before the arbiter ended",
                self.address.to_string_lossy(),
                self.pending.len()
            );
        }
    }

    /// Once our `MAINPID=` is no longer waiting (sent, or dropped), the new
    /// arbiter may be told to speak.
    fn release_mainpid(&mut self) {
        if self.mainpid_held && !self.pending.iter().any(|m| m.starts_with("MAINPID=")) {
            self.mainpid_held = false;
            ufork_core::upgrade::mainpid_undelivered(false);
        }
    }

    fn set_status(&mut self, view: &View) {
        let text = status_text(view);
        if text != self.status {
            self.send(&format!("STATUS={text}"));
            self.status = text;
        }
    }

    fn send(&mut self, message: &str) {
        self.pending.retain(|old| !supersedes(message, old));
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(message.to_owned());
        self.flush();
    }

    /// Sends what is pending, in order, until the supervisor's queue is full;
    /// nothing while a new arbiter does not speak for the service yet.
    fn flush(&mut self) {
        self.flush_pending();
        self.release_mainpid();
    }

    fn flush_pending(&mut self) {
        if !ufork_core::upgrade::speaks_for_service() {
            return;
        }
        while let Some(message) = self.pending.front() {
            match send_to(&self.address, message) {
                Ok(()) => {
                    self.pending.pop_front();
                    if self.lost > 0 {
                        log::info!(
                            target: "ufork",
                            "NOTIFY_SOCKET {}: the supervisor takes messages again ({} lost)",
                            self.address.to_string_lossy(),
                            self.lost
                        );
                        self.lost = 0;
                        self.lost_said = None;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.retry_at.is_none() {
                        log::warn!(
                            target: "ufork",
                            "NOTIFY_SOCKET {}: the supervisor is not reading (its queue is full); holding its messages and trying again",
                            self.address.to_string_lossy()
                        );
                    }
                    self.retry_at = Instant::now().checked_add(RETRY);
                    return;
                }
                Err(e) => {
                    self.lost += 1;
                    let now = Instant::now();
                    let due = self
                        .lost_said
                        .is_none_or(|at| now.saturating_duration_since(at) >= LOST_REPORT_INTERVAL);
                    if due {
                        let lost = if self.lost > 1 {
                            format!(" ({} messages lost so far)", self.lost)
                        } else {
                            String::new()
                        };
                        log::warn!(
                            target: "ufork",
                            "NOTIFY_SOCKET {}: cannot notify the supervisor: {}{lost}; said again at most once a minute",
                            self.address.to_string_lossy(),
                            crate::failure::io_text(&e)
                        );
                        self.lost_said = Some(now);
                    }
                    self.pending.pop_front();
                }
            }
        }
        self.retry_at = None;
    }
}

/// Whether queued `old` says nothing once `new` is queued: a watchdog beat
/// after a beat, and a status alone after any message with a status (one
/// held while an upgrade's new arbiter booted is stale by the time its
/// `READY=1` with a status goes out).
fn supersedes(new: &str, old: &str) -> bool {
    (new == "WATCHDOG=1" && old == "WATCHDOG=1")
        || (new.lines().any(|l| l.starts_with("STATUS="))
            && old.starts_with("STATUS=")
            && !old.contains('\n'))
}

/// One datagram to `address` (a path, or `@name` in the abstract namespace).
/// Never blocks: a supervisor whose queue is full (it stopped reading, or is
/// busy) gets `WouldBlock`, and the arbiter's loop, which sends from its
/// only thread, goes on supervising.
fn send_to(address: &OsString, message: &str) -> std::io::Result<()> {
    let bytes = address.as_bytes();
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    match bytes.strip_prefix(b"@") {
        Some(name) => socket.connect_addr(&SocketAddr::from_abstract_name(name)?)?,
        None => socket.connect(address)?,
    }
    socket.send(message.as_bytes())?;
    Ok(())
}

/// One datagram to `address`, waiting at most `timeout` for room in the
/// supervisor's queue: only once the arbiter's loop is over.
fn send_waiting(address: &OsString, message: &str, timeout: Duration) -> std::io::Result<()> {
    let bytes = address.as_bytes();
    let socket = UnixDatagram::unbound()?;
    socket.set_write_timeout(Some(timeout))?;
    match bytes.strip_prefix(b"@") {
        Some(name) => socket.connect_addr(&SocketAddr::from_abstract_name(name)?)?,
        None => socket.connect(address)?,
    }
    socket.send(message.as_bytes())?;
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it.
fn monotonic_usec() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1_000
}

/// `STATUS=` text: readiness, and what is going on.
fn status_text(view: &View) -> String {
    let snap = &view.snapshot;
    let ready = format!("{}/{} workers ready", snap.ready_count(), snap.target);
    match view.health {
        Health::Stopping => "stopping".to_owned(),
        _ if snap.rolling => format!("rolling restart: {ready}"),
        Health::Degraded => format!("degraded: {ready}"),
        Health::Healthy | Health::Starting => ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_follows_watchdog_pid() {
        let make = |usec: Option<&str>, pid: Option<&str>| {
            Supervisor::new(
                "/run/notify".into(),
                usec.map(Into::into),
                pid.map(Into::into),
                42,
            )
            .and_then(|s| s.watchdog)
        };
        assert_eq!(make(Some("2000000"), None), Some(Duration::from_secs(2)));
        assert_eq!(
            make(Some("2000000"), Some("42")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(make(Some("2000000"), Some("43")), None);
        assert_eq!(make(Some("0"), None), None);
        assert_eq!(make(Some("many"), None), None);
        assert_eq!(make(None, None), None);
        assert!(Supervisor::new("".into(), None, None, 42).is_none());
    }

    /// While an upgrade's new arbiter boots it holds its messages; the
    /// statuses of its boot are stale once its `READY=1` is queued.
    #[test]
    fn a_status_alone_is_superseded_by_any_later_status() {
        let ready = "READY=1\nSTATUS=2/2 workers ready";
        assert!(supersedes(ready, "STATUS=0/2 workers ready"));
        assert!(supersedes("STATUS=b", "STATUS=a"));
        assert!(supersedes("WATCHDOG=1", "WATCHDOG=1"));
        assert!(!supersedes(ready, "RELOADING=1\nMONOTONIC_USEC=1"));
        assert!(!supersedes("STATUS=b", "READY=1\nSTATUS=a"));
        assert!(!supersedes("WATCHDOG=1", "STATUS=a"));
        assert!(!supersedes("MAINPID=2\nREADY=1", "STATUS=a"));
    }

    /// A socket that keeps failing is said once (then once a minute), and
    /// its coming back says how many messages were lost.
    #[test]
    fn a_failing_notify_socket_is_reported_once_not_per_message() {
        let dir = std::env::temp_dir().join(format!("ufork-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify.sock");
        let mut sup = Supervisor::new(path.clone().into(), None, None, 42).unwrap();
        sup.send("STATUS=one");
        let said = sup.lost_said.expect("the first failure is said");
        for n in 0..20 {
            sup.send(&format!("STATUS={n}"));
        }
        assert_eq!(sup.lost, 21);
        assert_eq!(
            sup.lost_said,
            Some(said),
            "not said again within the minute"
        );
        assert!(sup.pending.is_empty());
        let listener = UnixDatagram::bind(&path).unwrap();
        sup.send("STATUS=back");
        assert_eq!((sup.lost, sup.lost_said), (0, None));
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=back");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
