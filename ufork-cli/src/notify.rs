//! `ufork run --notify`: one datagram socket owned by the arbiter speaks the
//! sd_notify protocol. SO_PASSCRED tells which worker sent each datagram, and
//! the arbiter records READY=1, WATCHDOG=1, STATUS=, EXTEND_TIMEOUT_USEC=
//! (while booting) and WATCHDOG=trigger in that worker's scoreboard slot on
//! its behalf, so hang detection and the start timeout work the same for
//! exec'd programs.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
use ufork_core::{Context, ExitRecord, Interest, Layer, Readiness, Spawn, Token, Vitals};

use crate::failure::{self, Failure, io_text};

/// The notify socket layer.
#[derive(Debug)]
pub struct Notify {
    socket: UnixDatagram,
    address: String,
    token: Option<Token>,
    pids: HashMap<i32, usize>,
}

impl Notify {
    /// Binds a socket in the abstract namespace (nothing to clean up).
    ///
    /// # Errors
    ///
    /// The socket cannot be made.
    pub fn bind() -> Result<Self, Failure> {
        let fail = |e: std::io::Error| {
            failure::runtime(format!(
                "--notify: cannot create the notify socket: {}",
                io_text(&e)
            ))
        };
        let mut nonce = [0u8; 8];
        let _ = rustix::rand::getrandom(&mut nonce, rustix::rand::GetRandomFlags::empty());
        let name = format!(
            "ufork/{}/{:016x}/notify",
            std::process::id(),
            u64::from_le_bytes(nonce)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(fail)?;
        let socket = UnixDatagram::bind_addr(&addr).map_err(fail)?;
        socket.set_nonblocking(true).map_err(fail)?;
        rustix::net::sockopt::set_socket_passcred(&socket, true).map_err(|e| fail(e.into()))?;
        Ok(Self {
            socket,
            address: format!("@{name}"),
            token: None,
            pids: HashMap::new(),
        })
    }

    /// NOTIFY_SOCKET for the workers.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The slot of the worker that sent a datagram: its own pid, or (for a
    /// program started by a wrapper script) the nearest worker ancestor.
    fn slot_of(&self, pid: i32) -> Option<usize> {
        let mut pid = pid;
        for _ in 0..8 {
            if let Some(&slot) = self.pids.get(&pid) {
                return Some(slot);
            }
            pid = parent_of(pid)?;
        }
        None
    }

    fn receive(&mut self, ctx: &mut Context<'_>) {
        let mut buf = [0u8; 4096];
        loop {
            // Through nix: a sender outside this pool's pid namespace has
            // pid 0 here, which rustix's `UCred` (a non-zero `Pid`) cannot
            // hold; such a sender is never a worker.
            let mut space = nix::cmsg_space!(UnixCredentials);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let received = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            );
            let (n, sender) = match received {
                Ok(msg) => {
                    let sender = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                            _ => None,
                        })
                    });
                    (msg.bytes, sender.filter(|&pid| pid > 0))
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            let Some(pid) = sender else { continue };
            let Some(slot) = self.slot_of(pid) else {
                log::debug!(target: "ufork", "notify message from pid {pid}, not a worker; ignored");
                continue;
            };
            let Some(vitals) = ctx.vitals(slot) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            for line in text.lines() {
                match line.split_once('=') {
                    Some(("READY", "1")) => vitals.ready(),
                    Some(("WATCHDOG", "1")) => vitals.heartbeat(),
                    // systemd's immediate watchdog failure: killed and
                    // replaced as hung now (core logs that it asked).
                    Some(("WATCHDOG", "trigger")) => vitals.declare_hung(),
                    Some(("EXTEND_TIMEOUT_USEC", usec)) => extend_start(&vitals, slot, usec),
                    Some(("STATUS", status)) => {
                        vitals.heartbeat();
                        vitals.set_activity(status);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `EXTEND_TIMEOUT_USEC=usec`: while the worker boots, it has `usec` more
/// microseconds from now to send READY=1 (or another extension), past
/// `--start-timeout` if need be, never less than it; meanwhile `--timeout`
/// does not apply to it (core's rule for a running extension). systemd also
/// extends its runtime and stop timeouts with it. ufork has no runtime limit,
/// and hang detection of a ready worker must not be weakened behind
/// `--timeout`'s back, so from a ready worker it is ignored; a stopping
/// worker's is ignored too: it is killed at `--graceful-timeout` after its
/// SIGTERM regardless.
fn extend_start(vitals: &Vitals, slot: usize, usec: &str) {
    let Ok(usec) = usec.trim().parse::<u64>() else {
        log::warn!(
            target: "ufork",
            "worker {slot} sent EXTEND_TIMEOUT_USEC={}: not a number of microseconds; ignored",
            usec.chars().take(40).collect::<String>().escape_debug()
        );
        return;
    };
    if !vitals.extend_start(Duration::from_micros(usec)) {
        log::debug!(
            target: "ufork",
            "worker {slot} sent EXTEND_TIMEOUT_USEC while {}; ignored (it only extends the start timeout)",
            vitals.state()
        );
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl Layer for Notify {
    fn started(&mut self, ctx: &mut Context<'_>) {
        self.token = Some(ctx.register(self.socket.as_fd(), Interest::READABLE));
    }

    fn spawned(&mut self, spawn: &Spawn, _ctx: &mut Context<'_>) {
        self.pids.insert(spawn.pid, spawn.slot);
    }

    fn event(&mut self, token: Token, _readiness: Readiness, ctx: &mut Context<'_>) {
        if Some(token) == self.token {
            self.receive(ctx);
        }
    }

    fn exited(&mut self, record: &ExitRecord, _ctx: &mut Context<'_>) {
        self.pids.remove(&record.pid);
    }
}
