//! `--bind`: TCP addresses (`HOST:PORT`) and unix sockets (`unix:PATH`),
//! with an optional `NAME=` for LISTEN_FDNAMES (`run`).
//!
//! A unix socket is created with mode 0660 (or `--unix-mode`), refused when a
//! live server listens on the path, replaces a stale socket left by a server
//! that died, and is removed when the pool stops.

use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::failure::{self, Result, io_text};

/// The longest unix socket path (`sun_path` less its NUL).
const MAX_UNIX_PATH: usize = 107;

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP address (port 0 resolved once bound).
    Tcp(SocketAddr),
    /// A unix stream socket's path.
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound listening socket and the name it is handed out under.
#[derive(Debug)]
pub struct Listener {
    /// LISTEN_FDNAMES entry.
    pub name: String,
    /// The address actually bound.
    pub addr: Address,
    /// The socket.
    pub socket: Socket,
}

/// A bound socket.
#[derive(Debug)]
pub enum Socket {
    /// TCP.
    Tcp(TcpListener),
    /// A unix stream socket, and the file to remove when the pool stops
    /// (none for one socket activation handed over: its file is the
    /// supervisor's).
    Unix(UnixListener, Option<SocketFile>),
}

impl Socket {
    /// The descriptor to hand to a program, and the file to remove later.
    pub fn into_fd(self) -> (OwnedFd, Option<SocketFile>) {
        match self {
            Self::Tcp(l) => (l.into(), None),
            Self::Unix(l, file) => (l.into(), file),
        }
    }
}

/// A unix socket's file, removed on drop if the path still names the socket
/// this pool made (not one a later server put there).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How to bind: whether `NAME=` and `unix:` are taken (`run`), and the mode
/// of unix sockets.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `run` takes `NAME=ADDR` (a name for LISTEN_FDNAMES); `serve` does not.
    pub for_run: bool,
    /// Mode of unix sockets.
    pub unix_mode: u32,
    /// The listen backlog of the sockets bound here (`--backlog`).
    pub backlog: u32,
}

/// `--backlog`'s default: ufork-core's (std's `bind` would leave 128, which
/// a burst of connects at a busy moment overflows).
pub const DEFAULT_BACKLOG: u32 = ufork_core::listen::DEFAULT_BACKLOG;

/// Sets the backlog of a socket `bind` left listening (calling listen(2)
/// again changes it; the kernel caps it at `net.core.somaxconn`).
fn set_backlog(socket: impl std::os::fd::AsFd, backlog: u32, address: &str) -> Result<()> {
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    rustix::net::listen(socket, backlog)
        .map_err(|e| failure::runtime(format!("--bind {address}: listen: {e}")))
}

/// One parsed `--bind`: its name and what to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// LISTEN_FDNAMES entry.
    pub name: String,
    /// The address as given, for messages.
    pub text: String,
    /// What to bind.
    pub addr: Address,
}

/// Parses and resolves every `--bind` (without binding), refusing
/// duplicates.
///
/// # Errors
///
/// A usage failure naming the flag and the address.
pub fn resolve_all(binds: &[String], options: Options) -> Result<Vec<Bind>> {
    let mut resolved: Vec<Bind> = Vec::new();
    for bind in binds {
        let one = resolve(bind, options)?;
        let duplicate = match &one.addr {
            Address::Tcp(addr) => addr.port() != 0 && resolved.iter().any(|b| b.addr == one.addr),
            Address::Unix(_) => resolved.iter().any(|b| b.addr == one.addr),
        };
        if duplicate {
            return Err(failure::usage(format!(
                "duplicate --bind {}; give each address once",
                one.text
            )));
        }
        resolved.push(one);
    }
    Ok(resolved)
}

/// Refuses two `--bind`s the kernel would not listen on both of (see
/// [`overlap`]): the start would fail at the second. With `reuse_port`,
/// every socket is bound `SO_REUSEPORT`, and Linux lets such sockets
/// overlap (`-b 0.0.0.0:80 -b 127.0.0.1:80`): only the same address twice
/// is refused then, by [`resolve_all`].
///
/// # Errors
///
/// A usage failure naming both `--bind`s.
pub fn check_overlaps(binds: &[Bind], reuse_port: bool) -> Result<()> {
    if reuse_port {
        return Ok(());
    }
    let v6only = v6only_addrs(binds);
    for (i, a) in binds.iter().enumerate() {
        for b in &binds[i + 1..] {
            let (Address::Tcp(x), Address::Tcp(y)) = (&a.addr, &b.addr) else {
                continue;
            };
            if let Some(why) = overlap(*x, v6only.contains(x), *y, v6only.contains(y)) {
                return Err(failure::usage(format!(
                    "--bind {} and --bind {} overlap ({}); keep one of them",
                    a.text,
                    b.text,
                    why.unwrap_or_else(|| "the same address".to_owned())
                )));
            }
        }
    }
    Ok(())
}

/// The IPv6 addresses among `binds` bound `IPV6_V6ONLY` (see [`bind_all`]):
/// those beside an IPv4 bind of the same port (`-b 0.0.0.0:80 -b [::]:80`,
/// as nginx users write), which would clash with it otherwise.
fn v6only_addrs(binds: &[Bind]) -> Vec<SocketAddr> {
    let v4_ports: Vec<u16> = binds
        .iter()
        .filter_map(|b| match b.addr {
            Address::Tcp(SocketAddr::V4(a)) if a.port() != 0 => Some(a.port()),
            _ => None,
        })
        .collect();
    binds
        .iter()
        .filter_map(|b| match b.addr {
            Address::Tcp(addr @ SocketAddr::V6(a)) if v4_ports.contains(&a.port()) => Some(addr),
            _ => None,
        })
        .collect()
}

/// Whether two listening TCP sockets on `a` and `b` would clash (the
/// second bind fails with "address in use", whichever comes second): one
/// port on one address, or on the wildcard address and another of its
/// family, or on an IPv6 wildcard without `IPV6_V6ONLY` (`*_v6only`), which
/// takes IPv4 connections too, and an IPv4 address. `Some(None)`: the same
/// address; `Some(Some(why))`: the wildcard that covers the other. Port 0
/// never clashes: each socket gets a port of its own, and neither do one
/// link-local address on two interfaces (scope ids).
fn overlap(a: SocketAddr, a_v6only: bool, b: SocketAddr, b_v6only: bool) -> Option<Option<String>> {
    use std::net::IpAddr;
    if a.port() == 0 || a.port() != b.port() {
        return None;
    }
    /// The address as a socket listens on it: an IPv4-mapped IPv6 address
    /// is its IPv4 address.
    fn plain(addr: SocketAddr) -> IpAddr {
        match addr.ip() {
            IpAddr::V6(ip) => ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4),
            ip => ip,
        }
    }
    /// The IP as written in HOST:PORT.
    fn host(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        }
    }
    /// An IPv6 address's interface (`fe80::1%eth0`): one address on two
    /// interfaces is two addresses.
    fn scope(addr: SocketAddr) -> u32 {
        match addr {
            SocketAddr::V6(a) => a.scope_id(),
            SocketAddr::V4(_) => 0,
        }
    }
    let (x, y) = (plain(a), plain(b));
    if x == y {
        return (scope(a) == scope(b)).then_some(None);
    }
    let dual = |ip: IpAddr, v6only: bool| ip.is_ipv6() && ip.is_unspecified() && !v6only;
    let covers = |wide: IpAddr, wide_v6only: bool, other: IpAddr| {
        wide.is_unspecified()
            && (wide.is_ipv6() == other.is_ipv6() || (dual(wide, wide_v6only) && other.is_ipv4()))
    };
    let (wide, other) = if covers(x, a_v6only, y) {
        (x, y)
    } else if covers(y, b_v6only, x) {
        (y, x)
    } else {
        return None;
    };
    let every = match (wide.is_ipv6(), other.is_ipv6()) {
        (false, _) => "every IPv4 address",
        (true, true) => "every IPv6 address",
        (true, false) => "every IPv6 and IPv4 address",
    };
    Some(Some(if other.is_unspecified() {
        format!("{} listens on {every} of this machine", host(wide))
    } else {
        format!(
            "{} listens on {every} of this machine, {} included",
            host(wide),
            host(other)
        )
    }))
}

/// Refuses `--metrics-bind` on an address a `--bind` listens on (or
/// overlapping one, see [`overlap`]), before anything is bound: the second
/// socket would fail with "address in use", after the first was made
/// (with `--reuse-port`, the workers' would, over and over). The metrics
/// socket is never `SO_REUSEPORT`, so `reuse_port` refuses the same pairs;
/// but then no `--bind` is made IPv6-only (the workers bind each address
/// as it is), so every `[::]` one takes IPv4 too.
///
/// # Errors
///
/// A usage failure naming `--metrics-bind` and the `--bind` it collides with.
pub fn check_metrics(
    binds: &[Bind],
    text: &str,
    metrics: SocketAddr,
    reuse_port: bool,
) -> Result<()> {
    let v6only = if reuse_port {
        Vec::new()
    } else {
        v6only_addrs(binds)
    };
    for bind in binds {
        let Address::Tcp(addr) = bind.addr else {
            continue;
        };
        // The metrics socket is bound as std binds: dual stack.
        match overlap(metrics, false, addr, v6only.contains(&addr)) {
            None => {}
            Some(None) => {
                return Err(failure::usage(format!(
                    "--metrics-bind {text} is the address of --bind {}; give --metrics-bind a port of its own",
                    bind.text
                )));
            }
            Some(Some(why)) => {
                return Err(failure::usage(format!(
                    "--metrics-bind {text} overlaps --bind {} ({why}); give --metrics-bind a port of its own",
                    bind.text
                )));
            }
        }
    }
    Ok(())
}

fn resolve(bind: &str, options: Options) -> Result<Bind> {
    let (name, address) = match bind.split_once('=') {
        Some((name, address)) if options.for_run => {
            if name.is_empty() || name.contains(':') {
                return Err(failure::usage(format!(
                    "--bind {bind}: a socket name must be non-empty and have no `:`"
                )));
            }
            (name.to_owned(), address)
        }
        _ => ("listen".to_owned(), bind),
    };
    let text = address.to_owned();
    if let Some(path) = address.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(failure::usage(format!(
                "--bind {address}: no path; use unix:/run/app.sock"
            )));
        }
        if path.len() > MAX_UNIX_PATH {
            return Err(failure::usage(format!(
                "--bind {address}: the path is {} bytes; unix socket paths are limited to {MAX_UNIX_PATH}",
                path.len()
            )));
        }
        return Ok(Bind {
            name,
            text,
            addr: Address::Unix(PathBuf::from(path)),
        });
    }
    if let Some(port) = address.strip_prefix(':') {
        // Which interfaces is a choice to make, not to guess.
        return Err(failure::usage(format!(
            "--bind {address}: no host; use 127.0.0.1:{port} (this machine only) or 0.0.0.0:{port} (every interface)"
        )));
    }
    let mut addrs = address.to_socket_addrs().map_err(|e| {
        failure::usage(format!(
            "--bind {address}: not an address ({}); use HOST:PORT, like 127.0.0.1:8000 or [::1]:8000, or unix:PATH",
            io_text(&e)
        ))
    })?;
    let addr = addrs.next().ok_or_else(|| {
        failure::usage(format!("--bind {address}: the name resolves to no address"))
    })?;
    Ok(Bind {
        name,
        text,
        addr: Address::Tcp(addr),
    })
}

/// Binds every `--bind` address, in order, or takes the socket socket
/// activation handed over for it (see [`activation`](crate::activation); the
/// inherited sockets no `--bind` claims come last). Without any `--bind`,
/// `default` is bound, unless socket activation handed sockets over: then
/// those are the pool's sockets, as gunicorn does (binding a port nobody
/// asked for beside them could only collide). Called before anything else
/// opens a descriptor, so the sockets sit at fds 3, 4, ... already.
///
/// # Errors
///
/// A message naming the flag and the address.
pub fn bind_all(
    binds: &[String],
    default: Option<&str>,
    options: Options,
) -> Result<Vec<Listener>> {
    // A new arbiter started by an upgrade takes the old one's sockets.
    if let Some(listeners) = crate::upgrade::inherited(binds, default)? {
        crate::upgrade::remember(&listeners);
        return Ok(listeners);
    }
    let mut activated = crate::activation::Activated::take()?;
    let defaulted: Vec<String> = match default {
        Some(address) if binds.is_empty() && activated.is_empty() => vec![address.to_owned()],
        _ => Vec::new(),
    };
    let binds = if binds.is_empty() { &defaulted } else { binds };
    let binds = resolve_all(binds, options)?;
    // An IPv6 socket also takes IPv4 connections (dual stack) unless told
    // not to: beside an IPv4 bind of the same port (`-b 0.0.0.0:80 -b
    // [::]:80`, as nginx users write) it must be IPv6 only, or the two clash.
    let ipv6_only = v6only_addrs(&binds);
    let mut listeners = Vec::new();
    for bind in binds {
        let v6only = matches!(bind.addr, Address::Tcp(addr) if ipv6_only.contains(&addr));
        match activated.claim(&bind, options)? {
            Some(inherited) => listeners.push(inherited),
            None => listeners.push(bind_one(bind, options, v6only)?),
        }
    }
    listeners.extend(activated.rest()?);
    crate::upgrade::remember(&listeners);
    Ok(listeners)
}

fn bind_one(bind: Bind, options: Options, v6only: bool) -> Result<Listener> {
    let address = &bind.text;
    match bind.addr {
        Address::Tcp(addr) => {
            let bound = if v6only {
                bind_v6only(addr)
            } else {
                TcpListener::bind(addr)
            };
            let socket = bound.map_err(|e| {
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
            // Every accepted connection inherits it (see ufork-core's
            // `listen::bind_tcp`): a program that takes the socket as a
            // descriptor and never sets it itself (uvicorn `--fd 3`) would
            // answer each keep-alive request after the first 40 ms late.
            rustix::net::sockopt::set_tcp_nodelay(&socket, true)
                .map_err(|e| failure::runtime(format!("--bind {address}: TCP_NODELAY: {e}")))?;
            set_backlog(&socket, options.backlog, address)?;
            let addr = socket.local_addr().unwrap_or(addr);
            Ok(Listener {
                name: bind.name,
                addr: Address::Tcp(addr),
                socket: Socket::Tcp(socket),
            })
        }
        Address::Unix(path) => {
            let (socket, file) = bind_unix(&path, address, options.unix_mode)?;
            set_backlog(&socket, options.backlog, address)?;
            Ok(Listener {
                name: bind.name,
                addr: Address::Unix(path),
                socket: Socket::Unix(socket, Some(file)),
            })
        }
    }
}

/// A listening IPv6 socket that takes IPv6 connections only
/// (`IPV6_V6ONLY`), set up as std's `TcpListener::bind` does otherwise.
fn bind_v6only(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let fd = rustix::net::socket_with(
        AddressFamily::INET6,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_ipv6_v6only(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 128)?;
    Ok(TcpListener::from(fd))
}

/// Binds a unix socket at `path` with `mode`: a live server there is an
/// error, a stale socket is replaced, any other file is left alone.
fn bind_unix(path: &Path, address: &str, mode: u32) -> Result<(UnixListener, SocketFile)> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(failure::runtime(format!(
                "--bind {address}: the path exists and is not a socket; remove it or choose another path"
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(failure::runtime(format!(
                "--bind {address}: a server is listening there already; stop it or choose another path"
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    // Created with no more than `mode` allows, even for an instant: the
    // umask masks the rest during bind(2).
    let mask = rustix::fs::Mode::from_raw_mode(!mode & 0o777);
    let old = rustix::process::umask(mask);
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let socket = bound.map_err(|e| {
        failure::runtime(format!(
            "--bind {address}: cannot create the socket: {}",
            io_text(&e)
        ))
    })?;
    // The umask can only take bits away: set exactly `mode`.
    let meta = std::fs::symlink_metadata(path)
        .and_then(|meta| {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map(|()| meta)
        })
        .map_err(|e| failure::runtime(format!("--bind {address}: {}", io_text(&e))))?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((socket, file))
}

/// Parses `--unix-mode`: octal permission bits, like 660 or 0600.
pub fn parse_mode(text: &str) -> std::result::Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        Ok(_) => Err("must be at most 777 (octal permission bits)".to_owned()),
        Err(_) => Err(format!("`{text}` is not an octal mode (like 660 or 0600)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: Options = Options {
        for_run: true,
        unix_mode: 0o660,
        backlog: DEFAULT_BACKLOG,
    };
    const SERVE: Options = Options {
        for_run: false,
        unix_mode: 0o660,
        backlog: DEFAULT_BACKLOG,
    };

    fn resolved(binds: &[&str]) -> Vec<Bind> {
        let binds: Vec<String> = binds.iter().map(|b| (*b).to_owned()).collect();
        resolve_all(&binds, SERVE).unwrap()
    }

    /// How a socket of a kernel check is bound.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum How {
        /// As `bind_all` binds a `--bind` (IPv6-only as `v6only_addrs`
        /// says).
        Start,
        /// As ufork-wsgi-like's workers bind one with `--reuse-port`:
        /// SO_REUSEADDR and SO_REUSEPORT, never IPv6-only.
        ReusePort,
        /// As `Metrics::bind` binds (std's `TcpListener::bind`).
        Metrics,
    }

    /// Whether the kernel listens on all of `socks` at once, each bound
    /// `How` on one free port in place of the tables' 8000 (another
    /// process may take that port in between: a refusal is tried again).
    /// `None` when this machine has no IPv6 and an address is IPv6.
    fn kernel_takes_all(socks: &[(&str, How)]) -> Option<bool> {
        let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
        if !ipv6 && socks.iter().any(|(a, _)| a.starts_with('[')) {
            eprintln!("no IPv6 on this machine: {socks:?} not checked against the kernel");
            return None;
        }
        let free = || {
            let probe = std::net::TcpListener::bind(if ipv6 { "[::]:0" } else { "0.0.0.0:0" });
            probe.unwrap().local_addr().unwrap().port()
        };
        let bind = |addr: SocketAddr, how: How, v6only: bool| match how {
            How::Start => {
                let bind = Bind {
                    name: "listen".to_owned(),
                    text: addr.to_string(),
                    addr: Address::Tcp(addr),
                };
                bind_one(bind, SERVE, v6only).map(|l| match l.socket {
                    Socket::Tcp(socket) => std::os::fd::OwnedFd::from(socket),
                    Socket::Unix(..) => unreachable!("a TCP address"),
                })
            }
            How::ReusePort => {
                use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
                let family = if addr.is_ipv4() {
                    AddressFamily::INET
                } else {
                    AddressFamily::INET6
                };
                let fd = rustix::net::socket_with(
                    family,
                    SocketType::STREAM,
                    SocketFlags::CLOEXEC,
                    None,
                )
                .unwrap();
                sockopt::set_socket_reuseaddr(&fd, true).unwrap();
                sockopt::set_socket_reuseport(&fd, true).unwrap();
                rustix::net::bind(&fd, &addr)
                    .and_then(|()| rustix::net::listen(&fd, 16))
                    .map(|()| fd)
                    .map_err(|e| failure::runtime(e.to_string()))
            }
            How::Metrics => std::net::TcpListener::bind(addr)
                .map(std::os::fd::OwnedFd::from)
                .map_err(|e| failure::runtime(e.to_string())),
        };
        for _ in 0..5 {
            let port = free().to_string();
            let texts: Vec<String> = socks
                .iter()
                .map(|(a, _)| a.replace("8000", &port))
                .collect();
            let binds: Vec<Bind> = texts.iter().flat_map(|t| resolved(&[t])).collect();
            // The --binds', as `bind_all` decides (the metrics socket is none).
            let flags: Vec<Bind> = (binds.iter().zip(socks))
                .filter(|(_, (_, how))| *how != How::Metrics)
                .map(|(b, _)| b.clone())
                .collect();
            let v6only = v6only_addrs(&flags);
            let mut held = Vec::new();
            let all = binds.iter().zip(socks).all(|(b, (_, how))| {
                let Address::Tcp(addr) = b.addr else {
                    unreachable!("a TCP address")
                };
                let only = *how == How::Start && v6only.contains(&addr);
                bind(addr, *how, only).map(|fd| held.push(fd)).is_ok()
            });
            if all {
                return Some(true);
            }
        }
        Some(false)
    }

    /// The pairs of `--bind`s refused, and those taken, with and without
    /// `--reuse-port`; each pair on one port is checked against the kernel,
    /// bound as the start binds it.
    #[test]
    fn overlapping_binds_are_refused_before_binding() {
        let check = |binds: &[&str], reuse_port| check_overlaps(&resolved(binds), reuse_port);
        for (a, b) in [
            ("0.0.0.0:8000", "127.0.0.1:8000"),
            ("[::]:8000", "[::1]:8000"),
            ("127.0.0.1:8000", "[::ffff:127.0.0.1]:8000"),
        ] {
            let err = check(&[a, b], false).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("--bind {a} and --bind {b} overlap (")),
                "{err}"
            );
            assert!(err.ends_with("); keep one of them"), "{err}");
            let kernel = kernel_takes_all(&[(a, How::Start), (b, How::Start)]);
            assert_ne!(kernel, Some(true), "{a} {b}");
            // With SO_REUSEPORT, Linux takes both.
            assert!(check(&[a, b], true).is_ok(), "{a} {b}");
            let kernel = kernel_takes_all(&[(a, How::ReusePort), (b, How::ReusePort)]);
            assert_ne!(kernel, Some(false), "{a} {b} with SO_REUSEPORT");
        }
        let err = check(&["0.0.0.0:8000", "127.0.0.1:8000"], false).unwrap_err();
        assert!(
            err.to_string().contains(
                "(0.0.0.0 listens on every IPv4 address of this machine, 127.0.0.1 included)"
            ),
            "{err}"
        );
        // IPv6 beside IPv4 (made IPv6-only then); with --reuse-port too
        // (every socket SO_REUSEPORT, so the dual stack [::] is no clash).
        for (a, b) in [
            ("0.0.0.0:8000", "[::]:8000"),
            ("127.0.0.1:8000", "[::]:8000"),
            ("[::1]:8000", "127.0.0.1:8000"),
        ] {
            for (reuse_port, how) in [(false, How::Start), (true, How::ReusePort)] {
                assert!(check(&[a, b], reuse_port).is_ok(), "{a} {b}");
                let kernel = kernel_takes_all(&[(a, how), (b, how)]);
                assert_ne!(kernel, Some(false), "{a} {b} reuse port {reuse_port}");
            }
        }
        // Other ports, port 0, one link-local address on two interfaces.
        for pair in [
            ["0.0.0.0:8000", "127.0.0.1:8001"],
            ["0.0.0.0:0", "127.0.0.1:0"],
            ["[fe80::1%1]:8000", "[fe80::1%2]:8000"],
        ] {
            assert!(check(&pair, false).is_ok(), "{pair:?}");
        }
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        let (eth1, eth2) = (at("[fe80::1%1]:8000"), at("[fe80::1%2]:8000"));
        assert_eq!(overlap(eth1, false, eth1, false), Some(None));
        assert_eq!(overlap(eth1, false, eth2, false), None);
        assert!(overlap(at("[::]:8000"), false, eth2, false).is_some());
        // The same address twice is refused with --reuse-port too.
        let binds = ["127.0.0.1:8000".to_owned(), "127.0.0.1:8000".to_owned()];
        assert!(resolve_all(&binds, SERVE).is_err());
    }

    /// The pairs of `--metrics-bind` and `--bind` refused, and those taken;
    /// each on one port is checked against the kernel, bound as the start
    /// binds them.
    #[test]
    fn a_metrics_bind_on_a_bind_address_is_refused() {
        let check = |binds: &[&str], metrics: &str, reuse_port| {
            let addr = metrics.parse().unwrap();
            check_metrics(&resolved(binds), metrics, addr, reuse_port).map_err(|e| e.to_string())
        };
        let kernel = |binds: &[&str], metrics: &str, reuse_port| {
            let how = if reuse_port {
                How::ReusePort
            } else {
                How::Start
            };
            let mut socks: Vec<(&str, How)> = binds.iter().map(|b| (*b, how)).collect();
            socks.push((metrics, How::Metrics));
            kernel_takes_all(&socks)
        };
        assert_eq!(
            check(&["127.0.0.1:8000"], "127.0.0.1:8000", false).unwrap_err(),
            "--metrics-bind 127.0.0.1:8000 is the address of --bind 127.0.0.1:8000; give --metrics-bind a port of its own"
        );
        assert_eq!(
            check(&["0.0.0.0:8000"], "127.0.0.1:8000", false).unwrap_err(),
            "--metrics-bind 127.0.0.1:8000 overlaps --bind 0.0.0.0:8000 (0.0.0.0 listens on every IPv4 address of this machine, 127.0.0.1 included); give --metrics-bind a port of its own"
        );
        // The metrics socket is dual stack: [::] takes IPv4 too.
        let err = check(&["0.0.0.0:8000"], "[::]:8000", false).unwrap_err();
        assert!(
            err.contains("([::] listens on every IPv6 and IPv4 address of this machine)"),
            "{err}"
        );
        let refused: [(&[&str], &str, bool); 7] = [
            (&["127.0.0.1:8000"], "127.0.0.1:8000", false),
            (&["0.0.0.0:8000"], "127.0.0.1:8000", false),
            (&["0.0.0.0:8000"], "[::]:8000", false),
            // A --bind [::] beside no IPv4 bind of its port is dual stack.
            (&["[::]:8000"], "127.0.0.1:8000", false),
            // The metrics socket is no SO_REUSEPORT one.
            (&["127.0.0.1:8000"], "127.0.0.1:8000", true),
            (&["0.0.0.0:8000"], "127.0.0.1:8000", true),
            // With --reuse-port every [::] is dual stack.
            (&["127.0.0.2:8000", "[::]:8000"], "127.0.0.1:8000", true),
        ];
        for (binds, metrics, reuse_port) in refused {
            assert!(
                check(binds, metrics, reuse_port).is_err(),
                "{binds:?} {metrics}"
            );
            let taken = kernel(binds, metrics, reuse_port);
            assert_ne!(taken, Some(true), "{binds:?} {metrics} {reuse_port}");
        }
        // A --bind [::] beside an IPv4 bind of its port is IPv6-only.
        let (binds, metrics) = (&["127.0.0.2:8000", "[::]:8000"][..], "127.0.0.1:8000");
        assert!(check(binds, metrics, false).is_ok());
        assert_ne!(kernel(binds, metrics, false), Some(false));
        // Other ports, port 0, unix sockets.
        assert!(check(&["0.0.0.0:8000"], "127.0.0.1:8001", false).is_ok());
        assert!(check(&["127.0.0.1:0"], "127.0.0.1:0", false).is_ok());
        assert!(check(&["unix:/tmp/x.sock"], "127.0.0.1:8000", false).is_ok());
    }

    /// How many of `n` connects to a TCP listener bound with `backlog`
    /// complete while nobody accepts: the kernel queues `backlog + 1` and
    /// drops the SYNs of the rest.
    fn queued_connects(backlog: u32, n: usize) -> usize {
        use rustix::event::{PollFd, PollFlags};
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let options = Options { backlog, ..RUN };
        let listeners = bind_all(&["127.0.0.1:0".to_owned()], None, options).unwrap();
        let Address::Tcp(addr) = listeners[0].addr else {
            panic!("tcp")
        };
        let clients: Vec<_> = (0..n)
            .map(|_| {
                let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
                let fd =
                    rustix::net::socket_with(AddressFamily::INET, SocketType::STREAM, flags, None)
                        .unwrap();
                match rustix::net::connect(&fd, &addr) {
                    Ok(()) | Err(rustix::io::Errno::INPROGRESS) => fd,
                    Err(e) => panic!("connect: {e}"),
                }
            })
            .collect();
        // Queued handshakes finish at once on loopback; a dropped SYN is
        // sent again only after a second (and dropped again): the count is
        // final once no pending connect finishes for most of a second.
        let mut pending: Vec<_> = clients.iter().collect();
        loop {
            let mut fds: Vec<PollFd<'_>> = pending
                .iter()
                .map(|c| PollFd::new(*c, PollFlags::OUT))
                .collect();
            let timeout = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 900_000_000,
            };
            if pending.is_empty() || rustix::event::poll(&mut fds, Some(&timeout)).unwrap() == 0 {
                break;
            }
            let still: Vec<bool> = fds
                .iter()
                .map(|f| !f.revents().contains(PollFlags::OUT))
                .collect();
            drop(fds);
            let mut still = still.into_iter();
            pending.retain(|_| still.next().unwrap_or(true));
        }
        n - pending.len()
    }

    #[test]
    fn tcp_binds_queue_as_many_connections_as_the_backlog_says() {
        // std's bind leaves a backlog of 128; the default is 1024.
        assert_eq!(queued_connects(DEFAULT_BACKLOG, 200), 200);
        assert!(queued_connects(8, 40) <= 9, "--backlog 8 is applied");
    }

    #[test]
    fn binds_parse_names_and_unix_paths() {
        let binds = resolve_all(
            &["web=unix:/run/a.sock".to_owned(), "127.0.0.1:0".to_owned()],
            RUN,
        )
        .unwrap();
        assert_eq!(binds[0].name, "web");
        assert_eq!(binds[0].addr, Address::Unix("/run/a.sock".into()));
        assert_eq!(binds[0].addr.to_string(), "unix:/run/a.sock");
        assert_eq!(binds[1].name, "listen");
        // `serve` takes unix sockets too, but no names.
        let serve = resolve_all(&["unix:/run/a.sock".to_owned()], SERVE).unwrap();
        assert_eq!(serve[0].addr, Address::Unix("/run/a.sock".into()));
        let named = resolve_all(&["web=unix:/run/a.sock".to_owned()], SERVE);
        assert!(named.is_err());
        let twice = ["unix:/a".to_owned(), "unix:/a".to_owned()];
        assert!(resolve_all(&twice, RUN).is_err());
        let long = format!("unix:/{}", "x".repeat(120));
        assert!(
            resolve_all(&[long], RUN)
                .unwrap_err()
                .to_string()
                .contains("limited to 107")
        );
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert!(parse_mode("1777").is_err());
        assert!(parse_mode("rw").is_err());
    }
}
