//! Assembling a pool from the common flags: listeners, privileges, the
//! prompt, the control socket, and the arbiter itself.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

use ufork_core::{Arbiter, Builder, Outcome, Worker};

use crate::cli::PoolArgs;
use crate::console::{self, Console};
use crate::control::Control;
use crate::failure::{self, Failure, Result, chain, io_text};
use crate::privs;

/// A bound listening socket and the name it is handed out under.
#[derive(Debug)]
pub struct Listener {
    /// LISTEN_FDNAMES entry.
    pub name: String,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    /// The socket.
    pub socket: TcpListener,
}

/// Binds every `--bind` address, in order. Called before anything else opens
/// a descriptor, so the sockets sit at fds 3, 4, ... already.
///
/// # Errors
///
/// A message naming the flag and the address.
pub fn bind_all(binds: &[String], allow_names: bool) -> Result<Vec<Listener>> {
    let mut listeners: Vec<Listener> = Vec::new();
    for bind in binds {
        let (name, address) = match bind.split_once('=') {
            Some((name, address)) if allow_names => {
                if name.is_empty() || name.contains(':') {
                    return Err(failure::usage(format!(
                        "--bind {bind}: a socket name must be non-empty and have no `:`"
                    )));
                }
                (name.to_owned(), address)
            }
            _ => ("listen".to_owned(), bind.as_str()),
        };
        let mut addrs = address.to_socket_addrs().map_err(|e| {
            failure::usage(format!(
                "--bind {address}: not an address ({}); use HOST:PORT, like 127.0.0.1:8000 or [::1]:8000",
                io_text(&e)
            ))
        })?;
        let addr = addrs.next().ok_or_else(|| {
            failure::usage(format!("--bind {address}: the name resolves to no address"))
        })?;
        let socket = TcpListener::bind(addr).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "; is another server running there? pick another port with --bind"
                }
                std::io::ErrorKind::PermissionDenied => {
                    "; ports below 1024 need root (bind as root and drop with --user)"
                }
                std::io::ErrorKind::AddrNotAvailable => "; no interface has this address",
                _ => "",
            };
            failure::runtime(format!("--bind {address}: {}{hint}", io_text(&e)))
        })?;
        let addr = socket.local_addr().unwrap_or(addr);
        listeners.push(Listener { name, addr, socket });
    }
    Ok(listeners)
}

/// What the subcommand decides about the pool.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Heartbeat timeout, if workers heartbeat.
    pub heartbeat: Option<Duration>,
    /// Whether core marks workers ready as their function starts.
    pub ready_on_start: bool,
}

/// The number of workers: `--workers`, or the number of CPUs.
pub fn workers(pool: &PoolArgs) -> usize {
    pool.workers.map(|w| w as usize).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Builds the arbiter with the common flags and runs it until it stops.
///
/// # Errors
///
/// A setting rejected by the arbiter, a control socket that cannot be made, a
/// failure of the monitor loop.
pub fn run<F, E>(
    pool: &PoolArgs,
    options: Options,
    configure: impl FnOnce(Builder) -> Builder,
    worker: F,
) -> Result<Outcome>
where
    F: FnMut(&mut Worker) -> std::result::Result<(), E>,
    E: std::fmt::Display,
{
    if pool.user.is_some() || pool.group.is_some() {
        privs::drop_to(pool.user.as_deref(), pool.group.as_deref())?;
    }
    let control_path = pool.control_socket.clone().or_else(|| {
        pool.daemon
            .then(|| pool.pidfile.as_ref().map(|p| p.with_extension("sock")))
            .flatten()
    });
    let control = control_path.as_deref().map(Control::bind).transpose()?;
    let mut builder = Arbiter::builder()
        .workers(workers(pool))
        .start_timeout(pool.start_timeout)
        .graceful_timeout(pool.graceful_timeout)
        .max_booting(pool.max_booting as usize)
        .memory_limit(pool.memory_limit)
        .heartbeat_timeout(options.heartbeat)
        .ready_on_start(options.ready_on_start);
    builder = configure(builder);
    let prompt = !pool.daemon && !pool.no_prompt && console::available();
    if prompt {
        builder = builder.layer(Console::new());
    }
    if let Some(control) = control {
        builder = builder.layer(control);
    }
    let arbiter = builder
        .build()
        .map_err(|e| failure::runtime(format!("cannot start the pool: {}", chain(&e))))?;
    if let Some(path) = &control_path {
        crate::term::say(format!("control socket: {}", path.display()));
    }
    if !prompt && !pool.daemon {
        crate::term::say("press Ctrl-C to stop");
    }
    arbiter.run(worker).map_err(|e| pool_failed(&e))
}

fn pool_failed(error: &ufork_core::Error) -> Failure {
    failure::runtime(format!("the pool failed: {}", chain(error)))
}
