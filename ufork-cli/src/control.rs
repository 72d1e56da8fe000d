//! The control socket: a unix stream socket (mode 0600, peer uid checked) that
//! speaks the console's command language, served from the arbiter's poll loop;
//! and the client side used by `ufork ctl`, `status`, `stop` and `reload`.
//!
//! Protocol: the client sends one command per line; each line gets its own
//! reply, its text followed by `\0ok\n` or `\0err\n`. The server closes every
//! connection when the pool has stopped, so a client that sent `stop` waits
//! for end of file.
//!
//! A client cannot hold a connection forever: one without a complete command
//! (or progress reading its reply) for [`IDLE_TIMEOUT`] is closed, and when
//! [`MAX_CONNECTIONS`] are open the one idle longest makes room for a new one.
//! Clients waiting for a `stop` to finish are exempt from both. The
//! interactive `ufork ctl` reconnects when its idle connection was closed.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ufork_core::{Context, Interest, Layer, Readiness, Token};

use crate::commands;
use crate::failure::{self, Failure, io_text};

/// At most this many clients at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A client silent this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_LINE: usize = 4096;
/// The longest path a unix socket address holds (sun_path less its NUL).
const MAX_PATH: usize = 107;

/// The control socket of a pool started with `--pidfile PATH` (and no
/// `--control-socket`): PATH with the extension `.control.sock`
/// (`/run/app.pid` -> `/run/app.control.sock`), so `ufork reload --pidfile
/// PATH` can wait for the roll. Not `.sock`: `/run/app.sock` is the name an
/// operator gives the pool's own `--bind unix:` listener. `None` when that
/// is PATH itself.
pub fn beside_pidfile(pidfile: &Path) -> Option<PathBuf> {
    let path = pidfile.with_extension("control.sock");
    (path != pidfile).then_some(path)
}

/// Where binaries before `.control.sock` put the control socket beside a
/// pidfile (PATH with the extension `.sock`): looked up only when
/// [`beside_pidfile`] does not exist, so a pool started by such a binary is
/// still found. `None` when that is PATH itself.
pub fn beside_pidfile_before(pidfile: &Path) -> Option<PathBuf> {
    let path = pidfile.with_extension("sock");
    (path != pidfile).then_some(path)
}

/// The same socket file, however the two paths spell it: relative to the
/// current directory, through `.` or `..` or a symlinked directory.
pub fn same_socket(a: &Path, b: &Path) -> bool {
    fn key(path: &Path) -> Option<PathBuf> {
        let name = path.file_name()?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let dir = std::fs::canonicalize(&parent)
            .or_else(|_| std::env::current_dir().map(|cwd| cwd.join(&parent)))
            .ok()?;
        Some(dir.join(name))
    }
    a == b || matches!((key(a), key(b)), (Some(x), Some(y)) if x == y)
}

/// A path too long for a unix socket address, as a message.
pub fn too_long(path: &Path) -> Option<String> {
    let len = path.as_os_str().len();
    (len > MAX_PATH).then(|| {
        format!(
            "--control-socket: the path is {len} bytes; unix socket paths are limited to {MAX_PATH}"
        )
    })
}

/// A path that fits but leaves no room for an upgrade's temporary socket
/// beside it (`PATH.PID.new`, up to 12 bytes more), as a message.
pub fn too_long_to_upgrade(path: &Path) -> Option<String> {
    let len = path.as_os_str().len();
    (len <= MAX_PATH && len + UPGRADE_SUFFIX > MAX_PATH).then(|| {
        format!(
            "--control-socket {}: the path is {len} bytes, too long for an upgrade's temporary socket beside it (PATH.PID.new, up to {UPGRADE_SUFFIX} bytes more; unix socket paths are limited to {MAX_PATH}): `ufork upgrade` would fail; a shorter path allows it",
            path.display()
        )
    })
}

/// `.PID.new` with the largest pid Linux gives (`pid_max` is at most 2^22).
const UPGRADE_SUFFIX: usize = ".4194304.new".len();

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    closing: bool,
    /// The last complete command, write progress, or the accept.
    active: Instant,
    /// Sent `stop`: waits for the pool to close the connection.
    awaiting_stop: bool,
    /// Sent `upgrade` or `reload`: waits for the outcome.
    waiting: Option<crate::waiting::Waiting>,
}

impl Connection {
    fn evictable(&self) -> bool {
        !self.awaiting_stop && self.waiting.is_none()
    }
}

/// The control socket layer.
#[derive(Debug)]
pub struct Control {
    path: PathBuf,
    listener: UnixListener,
    token: Option<Token>,
    connections: HashMap<Token, Connection>,
    uid: u32,
    /// The socket file as bound (device, inode): removed at the end only if
    /// a path still names it, never a successor's socket renamed over it.
    bound: Option<(u64, u64)>,
    /// Where a new arbiter renames its socket once it takes over.
    final_path: Option<PathBuf>,
    /// The process that bound it: only that one removes it.
    pid: u32,
}

impl Control {
    /// Binds the socket at `path` (mode 0600). A stale socket left by a pool
    /// that died is replaced; a live one is an error.
    ///
    /// # Errors
    ///
    /// A message naming the path, for the `--control-socket` flag.
    pub fn bind(path: &Path) -> Result<Self, Failure> {
        if let Some(message) = too_long(path) {
            return Err(failure::usage(message));
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(failure::runtime(format!(
                    "--control-socket {}: the path exists and is not a socket; remove it or choose another path",
                    path.display()
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(failure::runtime(format!(
                    "--control-socket {}: a running pool is already listening there (see `ufork status --control-socket {}`)",
                    path.display(),
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(path);
        }
        // The socket is created with mode 0600 by the umask, never wider even
        // for an instant.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
        let bound = UnixListener::bind(path);
        rustix::process::umask(old);
        let listener = bound.map_err(|e| {
            failure::runtime(format!(
                "--control-socket {}: cannot create the socket: {}",
                path.display(),
                io_text(&e)
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| failure::runtime(format!("--control-socket: {}", io_text(&e))))?;
        Ok(Self {
            path: path.to_owned(),
            listener,
            token: None,
            connections: HashMap::new(),
            uid: rustix::process::geteuid().as_raw(),
            bound: file_id(path),
            final_path: None,
            pid: std::process::id(),
        })
    }

    /// For a new arbiter during an upgrade: binds at `temporary`, to be
    /// renamed over `path` (where the old arbiter still listens) once ready.
    ///
    /// # Errors
    ///
    /// As [`bind`](Self::bind), for the temporary path.
    pub fn bind_beside(temporary: &Path, path: &Path) -> Result<Self, Failure> {
        let mut control = Self::bind(temporary)?;
        control.final_path = Some(path.to_owned());
        Ok(control)
    }

    fn answer_waiting(&mut self, ctx: &mut Context<'_>) {
        let handle = ctx.handle();
        // Progress first (a waiting `reload` tells each replaced worker as it
        // goes), in the reply's text: the client prints it as it comes.
        let told: Vec<Token> = self
            .connections
            .iter_mut()
            .filter_map(|(token, conn)| {
                let text = crate::waiting::progress(conn.waiting.as_mut()?, &handle)?;
                conn.output.extend_from_slice(text.as_bytes());
                Some(*token)
            })
            .collect();
        for token in told {
            self.flush(token, ctx);
        }
        let done: Vec<(Token, String, bool)> = self
            .connections
            .iter()
            .filter_map(|(token, conn)| {
                let (text, ok) = crate::waiting::answer(conn.waiting.as_ref()?, &handle)?;
                Some((*token, text, ok))
            })
            .collect();
        for (token, text, ok) in done {
            if let Some(conn) = self.connections.get_mut(&token) {
                conn.waiting = None;
                conn.output.extend_from_slice(text.as_bytes());
                conn.output
                    .extend_from_slice(if ok { b"\0ok\n" } else { b"\0err\n" });
                conn.active = Instant::now();
            }
            self.serve(token, ctx);
        }
    }

    fn accept(&mut self, ctx: &mut Context<'_>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let allowed = peer_uid(&stream).is_some_and(|uid| uid == self.uid || uid == 0);
            let mut stream = stream;
            if !allowed {
                let _ = stream.write_all(b"permission denied: not the pool's user\0err\n");
                continue;
            }
            if self.connections.len() >= MAX_CONNECTIONS && !self.evict_one(ctx) {
                let _ = stream.write_all(b"too many control connections\0err\n");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = ctx.register(stream.as_fd(), Interest::READABLE);
            self.connections.insert(
                token,
                Connection {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    closing: false,
                    active: Instant::now(),
                    awaiting_stop: false,
                    waiting: None,
                },
            );
        }
    }

    /// Closes the connection idle longest to make room; whether there was one.
    fn evict_one(&mut self, ctx: &mut Context<'_>) -> bool {
        let oldest = self
            .connections
            .iter()
            .filter(|(_, c)| c.evictable())
            .min_by_key(|(_, c)| c.active)
            .map(|(t, _)| *t);
        match oldest {
            Some(token) => {
                self.close(token, ctx);
                true
            }
            None => false,
        }
    }

    fn close(&mut self, token: Token, ctx: &mut Context<'_>) {
        if self.connections.remove(&token).is_some() {
            ctx.deregister(token);
        }
    }

    fn serve(&mut self, token: Token, ctx: &mut Context<'_>) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 1024];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.closing = true;
                    break;
                }
                Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.closing = true;
                    conn.output.clear();
                    break;
                }
            }
        }
        while let Some(end) = conn.input.iter().position(|&b| b == b'\n') {
            if conn.waiting.is_some() {
                // Replies stay in order: the rest waits for the outcome.
                break;
            }
            let line: Vec<u8> = conn.input.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            conn.active = Instant::now();
            match crate::waiting::start(line, &ctx.handle()) {
                Some(Ok(waiting)) => {
                    conn.waiting = Some(waiting);
                    continue;
                }
                Some(Err(e)) => {
                    conn.output
                        .extend_from_slice(format!("{e}\0err\n").as_bytes());
                    continue;
                }
                None => {}
            }
            let reply = commands::execute(line, &ctx.handle());
            if reply.ok && line.split_whitespace().next() == Some("stop") {
                conn.awaiting_stop = true;
            }
            conn.output.extend_from_slice(reply.text.as_bytes());
            conn.output
                .extend_from_slice(if reply.ok { b"\0ok\n" } else { b"\0err\n" });
        }
        if conn.input.len() > MAX_LINE {
            conn.output
                .extend_from_slice(b"command line too long\0err\n");
            conn.input.clear();
            conn.closing = true;
        }
        self.flush(token, ctx);
    }

    fn flush(&mut self, token: Token, ctx: &mut Context<'_>) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        while !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(0) => {
                    conn.output.clear();
                    conn.closing = true;
                }
                Ok(n) => {
                    conn.output.drain(..n);
                    conn.active = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.output.clear();
                    conn.closing = true;
                }
            }
        }
        if conn.output.is_empty() && conn.closing {
            ctx.deregister(token);
            self.connections.remove(&token);
        } else if conn.output.is_empty() {
            ctx.reregister(token, Interest::READABLE);
        } else {
            ctx.reregister(token, Interest::BOTH);
        }
    }
}

impl Layer for Control {
    fn started(&mut self, ctx: &mut Context<'_>) {
        self.token = Some(ctx.register(self.listener.as_fd(), Interest::READABLE));
    }

    fn event(&mut self, token: Token, _readiness: Readiness, ctx: &mut Context<'_>) {
        if Some(token) == self.token {
            self.accept(ctx);
        } else {
            self.serve(token, ctx);
        }
    }

    fn tick(&mut self, ctx: &mut Context<'_>) {
        self.answer_waiting(ctx);
        let now = Instant::now();
        let expired: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, c)| c.evictable() && now.duration_since(c.active) >= IDLE_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            self.close(token, ctx);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let rolling = self
            .connections
            .values()
            .any(|c| matches!(c.waiting, Some(crate::waiting::Waiting::Roll { .. })));
        let idle = self
            .connections
            .values()
            .filter(|c| c.evictable())
            .map(|c| c.active + IDLE_TIMEOUT)
            .min();
        match rolling.then(|| Instant::now() + crate::waiting::ROLL_POLL) {
            Some(poll) => Some(idle.map_or(poll, |i| i.min(poll))),
            None => idle,
        }
    }

    fn stopped(&mut self) {
        // Closing the connections tells a waiting `ufork stop` the pool is gone.
        self.connections.clear();
        self.remove_file();
    }
}

impl Control {
    /// Removes the socket's file, under whichever of its paths still names
    /// it (never a successor's socket renamed over the path).
    fn remove_file(&self) {
        if self.pid != std::process::id() {
            return;
        }
        for path in std::iter::once(&self.path).chain(&self.final_path) {
            if self.bound.is_some() && file_id(path) == self.bound {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A pool that fails between binding the socket and its loop's end (its
/// setup, building the arbiter, the arbiter's own start) drops the layer
/// without `stopped`: the file goes then, so a new arbiter of a failed
/// upgrade leaves no `<socket>.<pid>.new` behind.
impl Drop for Control {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// The user id of the process at the other end of `stream` (SO_PEERCRED).
///
/// Through nix, not rustix: a client outside the pool's pid namespace (a
/// host's root looking into a container) has pid 0 there, which rustix's
/// `UCred` (a non-zero `Pid`) cannot hold, and its read of it fails or
/// worse. The pid plays no part in the check: the uid does, translated by
/// the kernel into the pool's user namespace.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|cred| cred.uid())
}

/// A reply's bytes for a terminal: lines, but no escape sequences.
fn printable(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// The (device, inode) a path names, not following a symlink.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// A connection to a pool's control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

/// Why a client could not reach the pool.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing listens there: the pool is not running.
    NotRunning(String),
    /// Another problem (permissions, say).
    Other(String),
}

impl Client {
    /// Connects to the socket at `path`.
    ///
    /// # Errors
    ///
    /// [`ConnectError::NotRunning`] when there is no socket or nobody listens.
    pub fn connect(path: &Path) -> Result<Self, ConnectError> {
        if let Some(message) = too_long(path) {
            return Err(ConnectError::Other(message));
        }
        match std::fs::metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ConnectError::Other(format!(
                    "{}: not a socket (is it the pool's --control-socket?)",
                    path.display()
                )));
            }
            _ => {}
        }
        match UnixStream::connect(path) {
            Ok(stream) => Ok(Self {
                reader: BufReader::new(stream),
                path: path.to_owned(),
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Err(ConnectError::NotRunning(format!(
                    "no pool is listening on {} ({})",
                    path.display(),
                    io_text(&e)
                )))
            }
            Err(e) => Err(ConnectError::Other(format!(
                "cannot connect to {}: {}",
                path.display(),
                io_text(&e)
            ))),
        }
    }

    /// Sends one command and returns its reply text and whether it succeeded.
    ///
    /// # Errors
    ///
    /// The connection broke, or the pool closed it without answering.
    pub fn send(&mut self, command: &str) -> Result<(String, bool), Failure> {
        self.exchange(command)?.ok_or_else(|| self.unanswered())
    }

    /// Like [`send`](Self::send), but when the pool had closed this
    /// connection (idle too long, say) before the command reached it,
    /// connects again and sends it once more: for the interactive prompt.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), or the pool is gone.
    pub fn send_reconnecting(&mut self, command: &str) -> Result<(String, bool), Failure> {
        if let Some(reply) = self.exchange(command)? {
            return Ok(reply);
        }
        *self = Self::connect(&self.path).map_err(|e| match e {
            ConnectError::NotRunning(m) | ConnectError::Other(m) => failure::runtime(m),
        })?;
        self.send(command)
    }

    fn unanswered(&self) -> Failure {
        failure::runtime(format!(
            "the pool at {} closed the connection without answering",
            self.path.display()
        ))
    }

    /// Like [`send`](Self::send), but hands the reply's text to `show`, whole
    /// lines as they arrive (the progress of a waiting `reload`), and returns
    /// the text that came with the reply's end (its outcome, on which the
    /// caller decides) and whether the command succeeded; `None` when
    /// `deadline` passed first (`None`: no deadline).
    ///
    /// # Errors
    ///
    /// The connection broke, or the pool closed it without answering.
    pub fn send_streaming(
        &mut self,
        command: &str,
        deadline: Option<Instant>,
        mut show: impl FnMut(&str),
    ) -> Result<Option<(String, bool)>, Failure> {
        let command = command.trim();
        if command.contains(['\n', '\r', '\0']) {
            return Err(failure::usage(
                "a command is one line: no newline, carriage return or NUL",
            ));
        }
        let path = self.path.clone();
        let broken = |e: io::Error| {
            failure::runtime(format!(
                "the pool at {} closed the connection: {}",
                path.display(),
                io_text(&e)
            ))
        };
        self.reader
            .get_mut()
            .write_all(format!("{command}\n").as_bytes())
            .map_err(broken)?;
        let mut pending = Vec::new();
        loop {
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                self.reader
                    .get_ref()
                    .set_read_timeout(Some(left))
                    .map_err(broken)?;
            }
            let chunk = match self.reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(broken(e)),
            };
            if chunk.is_empty() {
                return Err(self.unanswered());
            }
            if let Some(at) = chunk.iter().position(|&b| b == 0) {
                // The pool writes its outcome and the end in one piece.
                pending.extend_from_slice(&chunk[..at]);
                self.reader.consume(at + 1);
                let mut status = String::new();
                self.reader.read_line(&mut status).map_err(broken)?;
                return Ok(Some((printable(&pending), status.trim() == "ok")));
            }
            pending.extend_from_slice(chunk);
            let used = chunk.len();
            self.reader.consume(used);
            // Whole lines only, so no character is split between two calls.
            if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                show(&printable(&pending[..=end]));
                pending.drain(..=end);
            }
        }
    }

    /// One request and its reply; `None` when the connection had been closed
    /// before any of the reply came (so the command was not run).
    fn exchange(&mut self, command: &str) -> Result<Option<(String, bool)>, Failure> {
        let command = command.trim();
        if command.contains(['\n', '\r', '\0']) {
            return Err(failure::usage(
                "a command is one line: no newline, carriage return or NUL",
            ));
        }
        let path = self.path.clone();
        let broken = |e: io::Error| {
            failure::runtime(format!(
                "the pool at {} closed the connection: {}",
                path.display(),
                io_text(&e)
            ))
        };
        let closed = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            )
        };
        let stream = self.reader.get_mut();
        match stream.write_all(format!("{command}\n").as_bytes()) {
            Ok(()) => {}
            Err(e) if closed(&e) => return Ok(None),
            Err(e) => return Err(broken(e)),
        }
        let mut text = Vec::new();
        let n = match self.reader.read_until(0, &mut text) {
            Ok(n) => n,
            Err(e) if closed(&e) && text.is_empty() => return Ok(None),
            Err(e) => return Err(broken(e)),
        };
        if n == 0 {
            return Ok(None);
        }
        if text.last() != Some(&0) {
            return Err(self.unanswered());
        }
        text.pop();
        let mut status = String::new();
        self.reader.read_line(&mut status).map_err(broken)?;
        Ok(Some((printable(&text), status.trim() == "ok")))
    }

    /// Waits until the pool closes the connection (it has stopped), for at
    /// most `timeout`. Returns whether it did.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let stream = self.reader.get_mut();
        // A deadline past what `Instant` holds is no deadline.
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if left.is_some_and(|l| l.is_zero()) || stream.set_read_timeout(left).is_err() {
                return false;
            }
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ufork-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_dropped_control_socket_removes_its_temporary_path_and_not_a_successors() {
        let dir = temp_dir("drop");
        let path = dir.join("ctl.sock");
        let temporary = crate::upgrade::temporary_control_path(&path);
        // Dropped before it took over: the temporary file goes.
        drop(Control::bind_beside(&temporary, &path).unwrap());
        assert!(!temporary.exists());
        // Dropped after it took over: the file it renamed into place goes.
        let control = Control::bind_beside(&temporary, &path).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        drop(control);
        assert!(!path.exists());
        // A successor's socket renamed over the path stays.
        let control = Control::bind(&path).unwrap();
        let successor = Control::bind_beside(&temporary, &path).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        drop(control);
        assert!(path.exists());
        drop(successor);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
