//! Socket activation in: the sockets a supervisor (systemd's `.socket` unit,
//! `systemd-socket-activate`) handed to `ufork serve` or `ufork run` by the
//! systemd convention are used instead of binding. Core's
//! [`listen::activated`](ufork_core::listen::activated) takes them (only when
//! `LISTEN_PID` is this process, clearing the variables so they do not leak);
//! here each `--bind` claims one: for `run`, the one its `NAME=` names in
//! `LISTEN_FDNAMES`, else (and for `serve`) the one on its address. A
//! `--bind` nothing matches is bound as usual, and inherited sockets no
//! `--bind` claimed are served too, under their names.

use std::os::fd::AsRawFd;

use ufork_core::listen::{self as core_listen, Socket as CoreSocket};

use crate::failure::{self, Result, io_text};
use crate::listen::{Address, Bind, Listener, Options, Socket};

/// The name a `--bind` without `NAME=` gets.
const DEFAULT_NAME: &str = "listen";

/// The sockets socket activation handed over, not yet claimed.
#[derive(Debug, Default)]
pub struct Activated {
    sockets: Vec<Option<core_listen::Listener>>,
}

/// Whether a supervisor handed this process sockets (`LISTEN_PID` names
/// it and `LISTEN_FDS` is more than 0), without taking them: then `serve`
/// binds no default address.
pub fn offered() -> bool {
    let var = |name| std::env::var(name).ok();
    let ours =
        var("LISTEN_PID").and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id());
    ours && var("LISTEN_FDS")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .is_some_and(|n| n > 0)
}

impl Activated {
    /// Takes the sockets handed to this process, if any. Call before any
    /// thread starts (the variables are cleared only then).
    ///
    /// # Errors
    ///
    /// Malformed variables or a descriptor that is not a listening socket.
    pub fn take() -> Result<Self> {
        let sockets = core_listen::activated().map_err(|e| {
            let text = failure::chain(&e);
            // Core's own errors name the step already.
            if text.starts_with("socket activation") {
                failure::runtime(text)
            } else {
                failure::runtime(format!("socket activation: {text}"))
            }
        })?;
        Ok(Self {
            sockets: sockets.into_iter().map(Some).collect(),
        })
    }

    /// Whether socket activation handed this process no socket.
    pub fn is_empty(&self) -> bool {
        self.sockets.iter().all(Option::is_none)
    }

    /// The inherited socket for `bind`, if one matches it (never a TCP
    /// address with port 0).
    ///
    /// # Errors
    ///
    /// The matching socket cannot be made blocking or its address read.
    pub fn claim(&mut self, bind: &Bind, options: Options) -> Result<Option<Listener>> {
        let by_name = options.for_run.then(|| {
            self.sockets
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.name() == bind.name))
        });
        let by_address = || {
            self.sockets.iter().position(|s| {
                s.as_ref()
                    .is_some_and(|s| same_address(s.address(), &bind.addr))
            })
        };
        let Some(at) = by_name.flatten().or_else(by_address) else {
            return Ok(None);
        };
        let Some(socket) = self.sockets[at].take() else {
            return Ok(None);
        };
        // A --bind without NAME= hands the socket on under systemd's name.
        let name = if bind.name == DEFAULT_NAME {
            socket.name().to_owned()
        } else {
            bind.name.clone()
        };
        adopt(name, socket).map(Some)
    }

    /// The inherited sockets no `--bind` claimed, in order, under their
    /// `LISTEN_FDNAMES` names.
    ///
    /// # Errors
    ///
    /// As [`claim`](Self::claim).
    pub fn rest(self) -> Result<Vec<Listener>> {
        self.sockets
            .into_iter()
            .flatten()
            .map(|s| adopt(s.name().to_owned(), s))
            .collect()
    }
}

fn same_address(inherited: &core_listen::Address, asked: &Address) -> bool {
    match (inherited, asked) {
        (core_listen::Address::Tcp(a), Address::Tcp(b)) => b.port() != 0 && a == b,
        (core_listen::Address::Unix(a), Address::Unix(b)) => a == b,
        _ => false,
    }
}

/// An inherited socket as the pool's listener: blocking, like a socket
/// `--bind` binds (an exec'd program gets it as systemd would give it). Its
/// file, for a unix socket, belongs to the supervisor and is left alone.
fn adopt(name: String, socket: core_listen::Listener) -> Result<Listener> {
    let address = socket.address().clone();
    let fail = |e: std::io::Error| {
        failure::runtime(format!(
            "socket activation: `{name}` at {address}: {}",
            io_text(&e)
        ))
    };
    let (fd, socket, addr) = match socket.into_socket() {
        CoreSocket::Tcp(tcp) => {
            tcp.set_nonblocking(false).map_err(fail)?;
            let addr = tcp.local_addr().map_err(fail)?;
            (tcp.as_raw_fd(), Socket::Tcp(tcp), Address::Tcp(addr))
        }
        CoreSocket::Unix(unix) => {
            unix.set_nonblocking(false).map_err(fail)?;
            let path = match &address {
                core_listen::Address::Unix(path) => path.clone(),
                other => other.to_string().into(),
            };
            (
                unix.as_raw_fd(),
                Socket::Unix(unix, None),
                Address::Unix(path),
            )
        }
    };
    log::info!(
        target: "ufork",
        "using the socket `{name}` on {addr} (fd {fd}) from socket activation"
    );
    if let Socket::Tcp(tcp) = &socket {
        crate::upgrade::supervised(tcp);
    }
    Ok(Listener { name, addr, socket })
}
