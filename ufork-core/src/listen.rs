//! Listening sockets for workers: bound in the arbiter before the fork (or
//! taken from systemd socket activation) and handed to each worker as owned
//! std types, ready for an async runtime's `from_std`.
//!
//! Bind first thing in `main`, before any other descriptor is opened and
//! before any thread starts: the sockets then sit at fds 3, 4, ... (so
//! [`Listeners::pass_to_exec`] finds them in place) and the socket activation
//! variables can be cleared soundly.
//!
//! ```no_run
//! use ufork_core::Arbiter;
//! use ufork_core::listen::{Listeners, Socket};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listeners = Listeners::builder()
//!     .named("web", "127.0.0.1:8000".parse()?)
//!     .build()?;
//! for (name, address) in listeners.iter() {
//!     println!("{name} listening on {address}");
//! }
//! Arbiter::builder().workers(2).build()?.run(|worker| -> Result<(), ufork_core::Error> {
//!     for listener in listeners.for_worker()? {
//!         if let Socket::Tcp(tcp) = listener.into_socket() {
//!             // tokio::net::TcpListener::from_std(tcp) in a runtime built here.
//!             # drop(tcp);
//!         }
//!     }
//!     # drop(worker);
//!     Ok(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! # Socket activation
//!
//! With [`Builder::socket_activation`] on (the default), sockets a supervisor
//! handed over by the systemd convention (fds 3.. with `LISTEN_FDS`,
//! `LISTEN_PID` and `LISTEN_FDNAMES`) are used instead of binding: only when
//! `LISTEN_PID` is this process' pid, matched to the requested sockets by name
//! first, then by address; inherited sockets nobody asked for are served too,
//! under their names. The descriptors become CLOEXEC once taken, and the
//! variables are removed from the environment (when the process has a single
//! thread, the only time that is sound) so they do not leak into programs the
//! workers start.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;

use rustix::net::{AddressFamily, SocketAddrAny, SocketFlags, SocketType, sockopt};

use crate::upgrade::sys as adopt;
use crate::{Error, Result};

/// The name of a socket nobody named, as systemd spells it in `LISTEN_FDNAMES`.
pub const UNNAMED: &str = "unknown";

/// The socket activation variables, cleared once read.
const ACTIVATION_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The default listen backlog.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// Where to listen: a TCP address or a unix-domain socket path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A unix-domain stream socket at a path.
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = Error;

    /// Parses `unix:PATH`, an absolute path (a unix socket), or `HOST:PORT`
    /// (resolved; the first address is used).
    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            setting: "listen address",
            reason: format!("`{text}`: {reason}"),
        };
        if let Some(path) = text
            .strip_prefix("unix:")
            .or(text.starts_with('/').then_some(text))
        {
            if path.is_empty() {
                return Err(bad("no path after `unix:`".into()));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let mut addrs = text
            .to_socket_addrs()
            .map_err(|e| bad(format!("not HOST:PORT or unix:PATH ({e})")))?;
        addrs
            .next()
            .map(Address::Tcp)
            .ok_or_else(|| bad("the name resolves to no address".into()))
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Tcp(addr)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A listening socket as a std type: hand it to `tokio::net::TcpListener::from_std`
/// (or `UnixListener::from_std`), or accept on it directly.
#[derive(Debug)]
pub enum Socket {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A unix-domain stream listener.
    Unix(UnixListener),
}

impl Socket {
    /// Another handle to the same socket (a CLOEXEC `dup`).
    ///
    /// # Errors
    ///
    /// When the process is out of descriptors.
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    /// The address the socket is bound to (with the real port when 0 was
    /// asked for).
    ///
    /// # Errors
    ///
    /// When the socket has no address (an unnamed unix socket) or the OS
    /// refuses.
    pub fn local_address(&self) -> io::Result<Address> {
        match self {
            Socket::Tcp(s) => s.local_addr().map(Address::Tcp),
            Socket::Unix(s) => s
                .local_addr()?
                .as_pathname()
                .map(|p| Address::Unix(p.to_owned()))
                .ok_or_else(|| io::Error::other("unix socket without a path")),
        }
    }

    /// Checks that `fd` is a listening stream socket and wraps it.
    fn from_listening(fd: OwnedFd) -> std::result::Result<Socket, String> {
        match sockopt::socket_type(&fd) {
            Ok(SocketType::STREAM) => {}
            Ok(_) => return Err("is not a stream socket".into()),
            Err(rustix::io::Errno::NOTSOCK) => return Err("is not a socket".into()),
            Err(e) => return Err(format!("cannot be inspected ({e})")),
        }
        if !sockopt::socket_acceptconn(&fd).unwrap_or(false) {
            return Err("is a socket that is not listening".into());
        }
        let family = rustix::net::getsockname(&fd)
            .map(|a: SocketAddrAny| a.address_family())
            .map_err(|e| format!("has no address ({e})"))?;
        if family == AddressFamily::INET || family == AddressFamily::INET6 {
            Ok(Socket::Tcp(TcpListener::from(fd)))
        } else if family == AddressFamily::UNIX {
            Ok(Socket::Unix(UnixListener::from(fd)))
        } else {
            Err("is neither a TCP nor a unix-domain socket".into())
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_nonblocking(on),
            Socket::Unix(s) => s.set_nonblocking(on),
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(s) => s.as_fd(),
            Socket::Unix(s) => s.as_fd(),
        }
    }
}

impl From<Socket> for OwnedFd {
    fn from(socket: Socket) -> OwnedFd {
        match socket {
            Socket::Tcp(s) => s.into(),
            Socket::Unix(s) => s.into(),
        }
    }
}

/// A named listening socket.
#[derive(Debug)]
pub struct Listener {
    name: String,
    address: Address,
    socket: Socket,
    inherited: bool,
}

impl Listener {
    /// Its name: the one it was asked for under, else the one socket
    /// activation gave it, else [`UNNAMED`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it is bound to (port 0 resolved).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Whether it came from socket activation rather than being bound here.
    pub fn is_inherited(&self) -> bool {
        self.inherited
    }

    /// The socket.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The socket, owned.
    pub fn into_socket(self) -> Socket {
        self.socket
    }
}

/// Takes the sockets socket activation handed to this process (fds 3.. with
/// `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), CLOEXEC and non-blocking.
/// Empty when the variables are absent or name another pid, and on every call
/// after the first. The variables are removed from the environment when the
/// process has a single thread (else a warning is logged and they stay).
///
/// # Errors
///
/// [`Error::SocketActivation`] when the variables are malformed (naming the
/// variable) or a descriptor is not an open, listening stream socket (naming
/// the descriptor).
pub fn activated() -> Result<Vec<Listener>> {
    let var = |name| std::env::var(name).ok();
    let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    if pid.is_none() && fds.is_none() && names.is_none() {
        return Ok(Vec::new());
    }
    if std::env::var_os(crate::upgrade::REPORT_FD_ENV).is_some() {
        // An upgrade handed these over: `upgrade::Handover::take` takes them
        // (with its report descriptor), and `Builder::inherit` matches them.
        return Ok(Vec::new());
    }
    if !adopt::remove_env(&ACTIVATION_VARS) {
        log::warn!(
            target: "ufork",
            "LISTEN_FDS and LISTEN_PID stay in the environment: the process has several threads (take the sockets before starting any)"
        );
    }
    let Some(names) = parse_activation(pid.as_deref(), fds.as_deref(), names.as_deref())? else {
        return Ok(Vec::new());
    };
    // LISTEN_PID is ours (checked above). The adoption happens once per
    // process, shared with `upgrade::Handover`, so no descriptor gets two
    // owners.
    let Some(fds) = adopt::adopt(names.len(), None).map_err(|e| Error::SocketActivation {
        reason: format!(
            "LISTEN_FDS={} but not every descriptor from 3 on is open ({e})",
            names.len()
        ),
    })?
    else {
        return Ok(Vec::new());
    };
    fds.into_iter()
        .zip(names)
        .map(|(fd, name)| inherited_listener(name, fd))
        .collect()
}

/// Checks and wraps a socket handed over by a supervisor or an upgrade.
fn inherited_listener(name: String, fd: OwnedFd) -> Result<Listener> {
    let fail = |reason: String| Error::SocketActivation { reason };
    let raw = fd.as_raw_fd();
    let socket =
        Socket::from_listening(fd).map_err(|why| fail(format!("fd {raw} (`{name}`) {why}")))?;
    socket.set_nonblocking(true).map_err(|e| {
        fail(format!(
            "fd {raw} (`{name}`): cannot make it non-blocking ({e})"
        ))
    })?;
    let address = socket
        .local_address()
        .map_err(|e| fail(format!("fd {raw} (`{name}`) has no address ({e})")))?;
    Ok(Listener {
        name,
        address,
        socket,
        inherited: true,
    })
}

/// Reads the activation variables: `None` when they are not for this
/// process, else one name per descriptor.
fn parse_activation(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
) -> Result<Option<Vec<String>>> {
    let fail = |reason: String| Error::SocketActivation { reason };
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| fail(format!("LISTEN_PID=`{pid}` is not a process id")))?;
    if i64::from(pid) != i64::from(rustix::process::getpid().as_raw_nonzero().get()) {
        return Ok(None);
    }
    let count: usize = fds
        .parse()
        .ok()
        .filter(|&n: &usize| i32::try_from(n).is_ok_and(|n| n.checked_add(3).is_some()))
        .ok_or_else(|| fail(format!("LISTEN_FDS=`{fds}` is not a count of descriptors")))?;
    let names: Vec<String> = match names {
        None => vec![UNNAMED.to_owned(); count],
        Some("") if count == 0 => Vec::new(),
        Some(list) => list.split(':').map(str::to_owned).collect(),
    };
    if names.len() != count {
        return Err(fail(format!(
            "LISTEN_FDNAMES names {} sockets but LISTEN_FDS is {count}",
            names.len()
        )));
    }
    Ok(Some(names))
}

/// One socket asked for.
#[derive(Debug, Clone)]
struct Request {
    name: Option<String>,
    address: Address,
}

/// Which inherited socket serves each request (`None`: bind it), then the
/// inherited sockets nobody asked for, in order.
fn assign(
    requests: &[Request],
    inherited: &[(&str, &Address)],
) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut used = vec![false; inherited.len()];
    let mut take = |pred: &dyn Fn(&(&str, &Address)) -> bool| {
        let i = (0..inherited.len()).find(|&i| !used[i] && pred(&inherited[i]))?;
        used[i] = true;
        Some(i)
    };
    let mut plan = Vec::with_capacity(requests.len());
    for request in requests {
        let by_name = request
            .name
            .as_deref()
            .and_then(|name| take(&|(n, _)| *n == name));
        let by_address = || {
            let port_zero = matches!(request.address, Address::Tcp(a) if a.port() == 0);
            if port_zero {
                None
            } else {
                take(&|(_, a)| **a == request.address)
            }
        };
        plan.push(by_name.or_else(by_address));
    }
    let rest = (0..inherited.len()).filter(|&i| !used[i]).collect();
    (plan, rest)
}

/// How to bind the sockets; see [`Listeners::builder`].
#[derive(Debug)]
pub struct Builder {
    requests: Vec<Request>,
    given: Vec<(String, OwnedFd)>,
    reuse_port: bool,
    backlog: u32,
    activation: bool,
}

impl Builder {
    /// Listens on `address`, unnamed.
    pub fn address(mut self, address: Address) -> Self {
        self.requests.push(Request {
            name: None,
            address,
        });
        self
    }

    /// Listens on `address` under `name` (matched against `LISTEN_FDNAMES`,
    /// and handed on under it by [`Listeners::pass_to_exec`]).
    pub fn named(mut self, name: &str, address: Address) -> Self {
        self.requests.push(Request {
            name: Some(name.to_owned()),
            address,
        });
        self
    }

    /// Give each worker a TCP socket of its own on the same address
    /// (`SO_REUSEPORT`; the kernel spreads connections over them) instead of
    /// one shared socket (default false). The arbiter then holds the address
    /// with a bound, non-listening socket, so no connection waits on a socket
    /// nobody accepts from. Inherited and unix sockets stay shared.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// The listen backlog (default [`DEFAULT_BACKLOG`]; the kernel caps it at
    /// `net.core.somaxconn`, and so does this at `i32::MAX`).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Adds a socket handed over some other way (an upgrade's
    /// [`Handover::take_all`](crate::upgrade::Handover::take_all)), matched
    /// to the requests like an activated one.
    pub fn inherit(mut self, name: &str, socket: OwnedFd) -> Self {
        self.given.push((name.to_owned(), socket));
        self
    }

    /// Take sockets from socket activation (default true); see [`activated`].
    pub fn socket_activation(mut self, on: bool) -> Self {
        self.activation = on;
        self
    }

    /// Takes the activated sockets and binds the rest (SO_REUSEADDR; every
    /// socket CLOEXEC and non-blocking). A unix socket path that exists as a
    /// socket nobody accepts on (left by a crash) is replaced.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a name that is empty or has a `:`,
    /// [`Error::SocketActivation`] (see [`activated`]), [`Error::Listen`]
    /// naming the address that could not be bound.
    pub fn build(self) -> Result<Listeners> {
        for request in &self.requests {
            if let Some(name) = &request.name {
                if name.is_empty() || name.contains(':') {
                    return Err(Error::Config {
                        setting: "listener name",
                        reason: format!("`{name}`: must be non-empty and have no `:`"),
                    });
                }
            }
        }
        let mut inherited = if self.activation {
            activated()?
        } else {
            Vec::new()
        };
        for (name, fd) in self.given {
            inherited.push(inherited_listener(name, fd)?);
        }
        let keys: Vec<(&str, &Address)> = inherited
            .iter()
            .map(|l| (l.name.as_str(), &l.address))
            .collect();
        let (plan, rest) = assign(&self.requests, &keys);
        let mut inherited: Vec<Option<Listener>> = inherited.into_iter().map(Some).collect();
        let backlog = i32::try_from(self.backlog).unwrap_or(i32::MAX);
        let mut set = Listeners {
            entries: Vec::new(),
            backlog,
            owner: rustix::process::getpid(),
            unlink: Vec::new(),
        };
        for (request, source) in self.requests.into_iter().zip(plan) {
            if let Some(mut listener) = source.and_then(|i| inherited[i].take()) {
                if let Some(name) = request.name {
                    listener.name = name;
                }
                set.entries.push(Entry::Shared(listener));
                continue;
            }
            let name = request.name.unwrap_or_else(|| UNNAMED.to_owned());
            let entry = match &request.address {
                Address::Tcp(addr) if self.reuse_port => {
                    let reserve = bind_tcp(*addr, true, None)?;
                    let address = Address::Tcp(local_tcp(&reserve, *addr)?);
                    Entry::PerWorker {
                        name,
                        address,
                        _reserve: reserve,
                    }
                }
                Address::Tcp(addr) => {
                    let socket = TcpListener::from(bind_tcp(*addr, false, Some(backlog))?);
                    let address = Address::Tcp(local_tcp(&socket, *addr)?);
                    Entry::Shared(Listener {
                        name,
                        address,
                        socket: Socket::Tcp(socket),
                        inherited: false,
                    })
                }
                Address::Unix(path) => {
                    let socket = bind_unix(path, backlog)?;
                    set.unlink.push(path.clone());
                    Entry::Shared(Listener {
                        name,
                        address: request.address.clone(),
                        socket: Socket::Unix(socket),
                        inherited: false,
                    })
                }
            };
            set.entries.push(entry);
        }
        for i in rest {
            if let Some(listener) = inherited[i].take() {
                log::info!(
                    target: "ufork",
                    "serving inherited socket `{}` ({}) too",
                    listener.name,
                    listener.address
                );
                set.entries.push(Entry::Shared(listener));
            }
        }
        Ok(set)
    }
}

fn listen_error(address: impl fmt::Display) -> impl FnOnce(rustix::io::Errno) -> Error {
    let address = address.to_string();
    move |e| Error::Listen {
        address,
        source: e.into(),
    }
}

fn local_tcp(fd: impl AsFd, asked: SocketAddr) -> Result<SocketAddr> {
    match rustix::net::getsockname(fd) {
        Ok(any) => SocketAddr::try_from(any).map_err(|e| listen_error(asked)(e)),
        Err(e) => Err(listen_error(asked)(e)),
    }
}

/// A TCP socket bound to `addr` (SO_REUSEADDR, optionally SO_REUSEPORT),
/// listening if `backlog` is given. `TCP_NODELAY` is set on it, and Linux
/// hands it on to every accepted connection: a program that takes the
/// socket as a descriptor and never sets it per connection (uvicorn
/// `--fd 3` sees a unix socket and does not) would otherwise answer every
/// request after the first on a keep-alive connection 40 ms late (Nagle's
/// algorithm against the client's delayed ACK). gunicorn sets it the same
/// way.
fn bind_tcp(addr: SocketAddr, reuse_port: bool, backlog: Option<i32>) -> Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fail = listen_error(addr);
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let setup = || -> rustix::io::Result<OwnedFd> {
        let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        sockopt::set_tcp_nodelay(&fd, true)?;
        if reuse_port {
            sockopt::set_socket_reuseport(&fd, true)?;
        }
        rustix::net::bind(&fd, &addr)?;
        if let Some(backlog) = backlog {
            rustix::net::listen(&fd, backlog)?;
        }
        Ok(fd)
    };
    setup().map_err(fail)
}

/// A unix stream socket listening at `path`; a stale socket file there (one
/// nobody accepts on) is replaced, a live one is an error.
fn bind_unix(path: &std::path::Path, backlog: i32) -> Result<UnixListener> {
    let address = Address::Unix(path.to_owned());
    let addr = rustix::net::SocketAddrUnix::new(path).map_err(listen_error(&address))?;
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)
        .map_err(listen_error(&address))?;
    match rustix::net::bind(&fd, &addr) {
        Err(rustix::io::Errno::ADDRINUSE) if is_stale_socket(path) => {
            std::fs::remove_file(path).map_err(|e| Error::Listen {
                address: address.to_string(),
                source: e,
            })?;
            rustix::net::bind(&fd, &addr).map_err(listen_error(&address))?;
        }
        other => other.map_err(listen_error(&address))?,
    }
    rustix::net::listen(&fd, backlog).map_err(listen_error(&address))?;
    Ok(UnixListener::from(fd))
}

fn is_stale_socket(path: &std::path::Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    is_socket
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
}

#[derive(Debug)]
enum Entry {
    /// One socket every worker shares.
    Shared(Listener),
    /// Each worker binds its own (`SO_REUSEPORT`); the arbiter holds the
    /// address with a bound, non-listening socket.
    PerWorker {
        name: String,
        address: Address,
        _reserve: OwnedFd,
    },
}

/// The listening sockets of a pool, made in the arbiter before the fork; each
/// worker takes its own handles with [`for_worker`](Listeners::for_worker).
/// Dropping the set in the process that made it removes the unix socket files
/// it created.
#[derive(Debug)]
pub struct Listeners {
    entries: Vec<Entry>,
    backlog: i32,
    owner: rustix::process::Pid,
    unlink: Vec<PathBuf>,
}

impl Listeners {
    /// Starts describing the sockets to listen on.
    pub fn builder() -> Builder {
        Builder {
            requests: Vec::new(),
            given: Vec::new(),
            reuse_port: false,
            backlog: DEFAULT_BACKLOG,
            activation: true,
        }
    }

    /// Names and bound addresses (port 0 resolved), in order: the requested
    /// sockets, then inherited ones nobody asked for.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Address)> {
        self.entries.iter().map(|entry| match entry {
            Entry::Shared(l) => (l.name.as_str(), &l.address),
            Entry::PerWorker { name, address, .. } => (name.as_str(), address),
        })
    }

    /// How many sockets.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// This worker's own handles, in [`iter`](Listeners::iter)'s order: a dup
    /// of each shared socket, and a freshly bound socket for each
    /// [`reuse_port`](Builder::reuse_port) address. Call it in the worker,
    /// after the fork: the sockets bound per worker then refuse new
    /// connections as soon as the worker is asked to stop
    /// ([`Worker::refuse_at_stop`](crate::Worker::refuse_at_stop)).
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] when a dup or a bind fails.
    pub fn for_worker(&self) -> Result<Vec<Listener>> {
        self.entries.iter().map(|entry| self.own(entry)).collect()
    }

    fn own(&self, entry: &Entry) -> Result<Listener> {
        match entry {
            Entry::Shared(l) => Ok(Listener {
                name: l.name.clone(),
                address: l.address.clone(),
                socket: l.socket.try_clone().map_err(|e| Error::Listen {
                    address: l.address.to_string(),
                    source: e,
                })?,
                inherited: l.inherited,
            }),
            Entry::PerWorker { name, address, .. } => {
                let Address::Tcp(addr) = address else {
                    unreachable!("only TCP addresses are bound per worker")
                };
                let fd = bind_tcp(*addr, true, Some(self.backlog))?;
                if crate::sys::in_worker() {
                    // This socket is the worker's alone: refuse new
                    // connections on it once the worker is asked to stop.
                    crate::sys::refuse_at_stop(fd.as_fd()).map_err(|e| Error::Listen {
                        address: address.to_string(),
                        source: e,
                    })?;
                }
                Ok(Listener {
                    name: name.clone(),
                    address: address.clone(),
                    socket: Socket::Tcp(TcpListener::from(fd)),
                    inherited: false,
                })
            }
        }
    }

    /// Hands the sockets to a program about to be exec'd in this process (a
    /// worker, after the fork), by the socket activation convention: they are
    /// put at fds 3, 4, ... without CLOEXEC, and `command` gets `LISTEN_FDS`,
    /// `LISTEN_PID` (this process' pid, which exec keeps) and
    /// `LISTEN_FDNAMES`. Keep the returned descriptors until
    /// [`CommandExt::exec`](std::os::unix::process::CommandExt::exec).
    /// `reuse_port` addresses get a socket of their own, as
    /// [`for_worker`](Listeners::for_worker) gives.
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] when a socket cannot be duplicated or bound, or a
    /// descriptor that is not one of these sockets holds one of fds 3, 4, ...
    pub fn pass_to_exec(mut self, command: &mut Command) -> Result<Vec<OwnedFd>> {
        // The exec'd program owns the socket files now.
        self.unlink.clear();
        let entries = std::mem::take(&mut self.entries);
        let mut names = Vec::with_capacity(entries.len());
        let mut fds: Vec<OwnedFd> = Vec::with_capacity(entries.len());
        for entry in entries {
            let listener = match entry {
                Entry::Shared(l) => l,
                per_worker => self.own(&per_worker)?,
            };
            names.push(listener.name);
            fds.push(listener.socket.into());
        }
        let placed = place(fds).map_err(|e| Error::Listen {
            address: "the inherited descriptors".into(),
            source: e,
        })?;
        if placed.is_empty() {
            for var in ACTIVATION_VARS {
                command.env_remove(var);
            }
        } else {
            command
                .env("LISTEN_FDS", placed.len().to_string())
                .env(
                    "LISTEN_PID",
                    rustix::process::getpid().as_raw_nonzero().to_string(),
                )
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        Ok(placed)
    }
}

/// Puts `sockets` at fds 3, 4, ... without CLOEXEC, for the program this
/// worker is about to exec (the socket activation convention; set
/// `LISTEN_FDS` and the rest yourself, or use
/// [`Listeners::pass_to_exec`]), over whatever else held those numbers.
/// A descriptor the process inherited there (a shell's `exec 3<file`,
/// flock(1)'s lock, a CI runner's pipe) is not passed on, as systemd does:
/// the program's fds 3, 4, ... are the sockets; the arbiter keeps its own
/// copy (a flock(1) lock stays held). Any other descriptor of this process
/// at those numbers refers to a socket from then on (exec closes it if it
/// is CLOEXEC): move what the worker still needs before exec elsewhere
/// first. The placed numbers have no owner in this process.
///
/// # Errors
///
/// Not called in a worker process (after the fork), or a descriptor cannot
/// be duplicated.
pub fn place_for_exec(sockets: Vec<OwnedFd>) -> io::Result<()> {
    let start = adopt::FDS_START;
    let count = i32::try_from(sockets.len()).unwrap_or(i32::MAX);
    // Copies above every socket and target first, so none sits where
    // another must go.
    let above = sockets
        .iter()
        .map(AsRawFd::as_raw_fd)
        .max()
        .unwrap_or(0)
        .max(start)
        .saturating_add(1)
        .saturating_add(count);
    let moved = sockets
        .iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, above))
        .collect::<rustix::io::Result<Vec<_>>>()?;
    drop(sockets);
    for (fd, target) in moved.iter().zip(start..) {
        crate::sys::place_over(fd.as_fd(), target)?;
    }
    Ok(())
}

/// Puts `fds` at 3, 4, ... without CLOEXEC (in place when they are there).
fn place(fds: Vec<OwnedFd>) -> io::Result<Vec<OwnedFd>> {
    let start = adopt::FDS_START;
    let in_place = fds.iter().enumerate().all(|(i, fd)| {
        i32::try_from(i).ok().and_then(|i| i.checked_add(start)) == Some(fd.as_raw_fd())
    });
    if !in_place {
        // Move every socket out of the way first, so none sits where another
        // must go; then each target must be free.
        let count = i32::try_from(fds.len()).unwrap_or(i32::MAX);
        let above = fds
            .iter()
            .map(|fd| fd.as_raw_fd())
            .max()
            .unwrap_or(0)
            .max(start)
            .saturating_add(1)
            .saturating_add(count);
        let moved = fds
            .iter()
            .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, above))
            .collect::<rustix::io::Result<Vec<_>>>()?;
        drop(fds);
        let mut placed = Vec::with_capacity(moved.len());
        for (fd, want) in moved.iter().zip(start..) {
            let new = rustix::io::fcntl_dupfd_cloexec(fd, want)?;
            if new.as_raw_fd() != want {
                return Err(io::Error::other(format!(
                    "fd {want} is held by a descriptor that is not a listener"
                )));
            }
            placed.push(new);
        }
        return place(placed);
    }
    for fd in &fds {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    }
    Ok(fds)
}

impl Drop for Listeners {
    fn drop(&mut self) {
        if rustix::process::getpid() == self.owner {
            for path in &self.unlink {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn our_pid() -> String {
        rustix::process::getpid().as_raw_nonzero().to_string()
    }

    fn tcp(text: &str) -> Address {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_parse_tcp_and_unix_and_bad_ones_are_named() {
        assert_eq!(
            tcp("127.0.0.1:80"),
            Address::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(tcp("unix:/run/a.sock"), Address::Unix("/run/a.sock".into()));
        assert_eq!(tcp("/run/a.sock"), Address::Unix("/run/a.sock".into()));
        assert_eq!(tcp("unix:/run/a.sock").to_string(), "unix:/run/a.sock");
        for bad in ["unix:", "nonsense", "127.0.0.1:99999"] {
            let err = bad.parse::<Address>().unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn activation_variables_are_read_only_for_our_pid() {
        let me = our_pid();
        let other = (rustix::process::getpid().as_raw_nonzero().get() + 1).to_string();
        assert!(parse_activation(None, Some("1"), None).unwrap().is_none());
        assert!(parse_activation(Some(&me), None, None).unwrap().is_none());
        assert!(
            parse_activation(Some(&other), Some("2"), None)
                .unwrap()
                .is_none()
        );
        let names = parse_activation(Some(&me), Some("2"), None)
            .unwrap()
            .unwrap();
        assert_eq!(names, [UNNAMED, UNNAMED]);
        let names = parse_activation(Some(&me), Some("2"), Some("web:admin"))
            .unwrap()
            .unwrap();
        assert_eq!(names, ["web", "admin"]);
        let names = parse_activation(Some(&me), Some("0"), Some(""))
            .unwrap()
            .unwrap();
        assert!(names.is_empty());
        let err = |pid: &str, fds: &str, names: Option<&str>| {
            parse_activation(Some(pid), Some(fds), names)
                .unwrap_err()
                .to_string()
        };
        assert!(err("x", "1", None).contains("LISTEN_PID=`x`"));
        assert!(err("0", "1", None).contains("LISTEN_PID=`0`"));
        assert!(err(&me, "-1", None).contains("LISTEN_FDS=`-1`"));
        assert!(err(&me, "99999999999", None).contains("LISTEN_FDS=`99999999999`"));
        assert!(err(&me, "2", Some("web")).contains("names 1 sockets but LISTEN_FDS is 2"));
    }

    #[test]
    fn requests_match_inherited_sockets_by_name_then_address() {
        let req = |name: Option<&str>, addr: &str| Request {
            name: name.map(str::to_owned),
            address: tcp(addr),
        };
        let a = tcp("127.0.0.1:8000");
        let b = tcp("127.0.0.1:8001");
        let c = tcp("unix:/run/c.sock");
        let inherited = [("web", &a), (UNNAMED, &b), ("admin", &c)];
        // By name, wherever the address; by address when the name is absent;
        // bind what nothing matches; port 0 never matches an address.
        let (plan, rest) = assign(
            &[
                req(Some("admin"), "127.0.0.1:9"),
                req(None, "127.0.0.1:8001"),
                req(Some("other"), "127.0.0.1:7000"),
                req(None, "127.0.0.1:0"),
            ],
            &inherited,
        );
        assert_eq!(plan, [Some(2), Some(1), None, None]);
        assert_eq!(rest, [0], "the unasked-for socket is served too");
        // No requests: every inherited socket, in order.
        let (plan, rest) = assign(&[], &inherited);
        assert!(plan.is_empty());
        assert_eq!(rest, [0, 1, 2]);
        // One inherited socket serves one request only.
        let (plan, _) = assign(
            &[
                req(Some("web"), "127.0.0.1:8000"),
                req(None, "127.0.0.1:8000"),
            ],
            &inherited,
        );
        assert_eq!(plan, [Some(0), None]);
    }

    #[test]
    fn a_tcp_socket_bound_once_is_shared_by_every_worker_handle() {
        let set = Listeners::builder()
            .named("web", tcp("127.0.0.1:0"))
            .socket_activation(false)
            .build()
            .unwrap();
        let (name, address) = set.iter().next().unwrap();
        assert_eq!(name, "web");
        let Address::Tcp(addr) = address.clone() else {
            panic!("{address}")
        };
        assert_ne!(addr.port(), 0, "the real port is reported");
        let mine = set.for_worker().unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].name(), "web");
        assert_eq!(mine[0].address(), address);
        assert!(!mine[0].is_inherited());
        let Socket::Tcp(listener) = mine.into_iter().next().unwrap().into_socket() else {
            panic!("not tcp")
        };
        let fd_flags = rustix::io::fcntl_getfd(&listener).unwrap();
        assert!(fd_flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert!(
            listener
                .accept()
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock),
            "non-blocking, as tokio's from_std wants"
        );
        let mut client = TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        assert!(
            sockopt::tcp_nodelay(&conn).unwrap(),
            "an accepted connection has TCP_NODELAY from the listener"
        );
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn with_reuse_port_each_worker_binds_its_own_socket_on_the_same_port() {
        let set = Listeners::builder()
            .address(tcp("127.0.0.1:0"))
            .reuse_port(true)
            .socket_activation(false)
            .build()
            .unwrap();
        let (_, Address::Tcp(addr)) = set.iter().next().unwrap() else {
            panic!("not tcp")
        };
        let addr = *addr;
        // Nobody accepts on the arbiter's socket: it does not listen.
        assert!(TcpStream::connect(addr).is_err());
        let one = set.for_worker().unwrap().remove(0).into_socket();
        let two = set.for_worker().unwrap().remove(0).into_socket();
        let (Socket::Tcp(one), Socket::Tcp(two)) = (one, two) else {
            panic!("not tcp")
        };
        assert_eq!(one.local_addr().unwrap(), addr);
        assert_eq!(two.local_addr().unwrap(), addr);
        let inode = |l: &TcpListener| rustix::fs::fstat(l).unwrap().st_ino;
        assert_ne!(inode(&one), inode(&two), "two sockets, not two handles");
        let _client = TcpStream::connect(addr).unwrap();
    }

    #[test]
    fn unix_sockets_replace_stale_files_refuse_live_ones_and_are_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("ufork-listen-{}", our_pid()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        // A socket file left behind by a process that died.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let set = Listeners::builder()
            .named("app", Address::Unix(path.clone()))
            .socket_activation(false)
            .build()
            .unwrap();
        let Socket::Unix(listener) = set.for_worker().unwrap().remove(0).into_socket() else {
            panic!("not unix")
        };
        let mut client = UnixStream::connect(&path).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        client.write_all(b"ok").unwrap();
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok");
        let live = Listeners::builder()
            .address(Address::Unix(path.clone()))
            .socket_activation(false)
            .build()
            .unwrap_err();
        assert!(
            live.to_string()
                .contains(&format!("unix:{}", path.display())),
            "{live}"
        );
        assert!(path.exists(), "a live socket's file is left alone");
        drop(set);
        assert!(!path.exists(), "the set that made the file removes it");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_socket_handed_over_is_matched_by_address_and_keeps_its_name() {
        let given = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = given.local_addr().unwrap();
        let set = Listeners::builder()
            .address(addr.into())
            .inherit("web", given.into())
            .socket_activation(false)
            .build()
            .unwrap();
        assert_eq!(set.len(), 1, "matched, not bound beside it");
        let mine = set.for_worker().unwrap().remove(0);
        assert_eq!((mine.name(), mine.address()), ("web", &Address::Tcp(addr)));
        assert!(mine.is_inherited());
        // Something that is not a listening socket is refused, named.
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let err = Listeners::builder()
            .inherit("pipe", r)
            .socket_activation(false)
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("(`pipe`) is not a socket"),
            "{err}"
        );
    }

    #[test]
    fn sockets_are_placed_over_other_descriptors_only_in_a_worker() {
        // Here it would replace whatever this test process holds at fd 3.
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let error = place_for_exec(vec![socket.into()]).unwrap_err();
        assert!(error.to_string().contains("worker"), "{error}");
    }

    #[test]
    fn names_with_a_colon_or_empty_are_refused() {
        for bad in ["", "a:b"] {
            let err = Listeners::builder()
                .named(bad, tcp("127.0.0.1:0"))
                .socket_activation(false)
                .build()
                .unwrap_err();
            assert!(err.to_string().contains("listener name"), "{err}");
        }
    }

    #[test]
    fn a_port_in_use_is_an_error_naming_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Listeners::builder()
            .address(addr.into())
            .socket_activation(false)
            .build()
            .unwrap_err();
        assert_eq!(err.to_string(), format!("cannot listen on {addr}"));
    }
}
