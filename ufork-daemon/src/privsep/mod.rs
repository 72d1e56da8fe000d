//! Privilege separation: a small helper process that keeps the privileges
//! the server drops, and does for it the few file operations that need them.

mod helper;
mod wire;

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendFlags, Shutdown, SocketFlags, SocketType,
};
use rustix::process::{Pid, Signal, WaitOptions};

use self::helper::{FileGrant, Grants, LogGrant};
use self::wire::{ANSWER_LEN, Request};
use crate::control::{open_pidfd, poll_timeout, wait_pidfd};
use crate::error::{Error, Result};
use crate::pidfile::Pidfile;
use crate::rotate::RotatingFile;
use crate::sys::{self, Forked};

/// How long a request waits for the helper's answer. The helper answers at
/// once unless a file system hangs; past this, the channel is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Privsep::finish`] waits for the helper to exit before it
/// kills it.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A privileged helper, forked before the process drops its privileges: the
/// model of OpenSSH's privilege separation and nginx's master process.
///
/// A server that switches to an unprivileged user (`setresuid`) still has
/// files to manage that live in directories only root may write: its log
/// file must be rotated (renamed, recreated) and reopened after an external
/// logrotate, and its pidfile removed when it stops. The helper is forked
/// while the process is still privileged and single-threaded; it keeps
/// root's uid (with only the file capabilities: `CAP_DAC_OVERRIDE`,
/// `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`) and does nothing but answer, on a
/// `SOCK_SEQPACKET` socket pair, these fixed requests:
///
/// - rotate a granted log (`path` → `path.1` …) and send the fresh file's
///   descriptor back (`SCM_RIGHTS`); reopen a granted log the same way;
/// - remove a granted file (a pidfile, a control socket) if its path still
///   names the very file granted (device and inode);
/// - finish: remove the granted files still there, answer, exit.
///
/// Requests carry grant numbers, never paths: what the helper may touch is
/// fixed when it is forked ([`PrivsepBuilder::log`],
/// [`PrivsepBuilder::pidfile`], [`PrivsepBuilder::remove_at_stop`]), each
/// path pinned by a descriptor on its directory; a log is opened with
/// `O_NOFOLLOW` and must be a regular file with one name (no hard link)
/// owned by root or by the user given to [`PrivsepBuilder::user`], and the
/// new file of a rotation is created (`O_EXCL`), never opened. A [`RotatingFile`] or
/// [`Pidfile`] given to the builder uses the helper from then on, by
/// itself.
///
/// The helper ends when its channel does: [`finish`](Self::finish) (or the
/// drop of the last handle) asks it to clean up, waits for it to exit and
/// reaps it. If the process that made it dies, the channel closes, and
/// `PR_SET_PDEATHSIG` (SIGKILL) guards the case where a copy of the
/// channel outlives it. It ignores SIGINT, SIGTERM, SIGHUP, SIGQUIT and the
/// like, so a signal sent to the whole process group (Ctrl-C, systemd's
/// stop) cannot end it before the server asked it to clean up. It shows as
/// `ufork-privsep` in `ps`.
///
/// A process forked from the server afterwards (a worker) must not use the
/// channel: call [`close_in_child`](Self::close_in_child) in it first.
///
/// # Examples
///
/// ```no_run
/// use ufork_daemon::{Pidfile, Privsep, RotatingFile};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // As root, before threads start:
/// let pidfile = Pidfile::create("/run/myserver/pid")?;
/// let log = RotatingFile::open("/var/log/myserver.log")?;
/// let helper = Privsep::builder()
///     .log(&log)
///     .pidfile(&pidfile)
///     .remove_at_stop("/run/myserver/control.sock")
///     .start()?;
/// // ... drop privileges (setresgid, setresuid) and serve: `log` rotates
/// // and reopens through the helper, `pidfile` is removed through it.
/// drop(pidfile);
/// helper.finish()?;
/// # Ok(())
/// # }
/// ```
///
/// # Limitations
///
/// - [`start`](PrivsepBuilder::start) refuses a process with more than one
///   thread, and must be called from the thread that lives longest (the
///   parent-death signal fires when the *thread* that forked exits).
/// - Files the helper creates belong to root (mode as configured), like the
///   log opened before the drop: the server writes them through the
///   descriptors it is sent.
#[derive(Clone)]
pub struct Privsep {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server's end of the socket pair.
    channel: OwnedFd,
    state: Mutex<State>,
    /// The helper's pid.
    pid: Pid,
    /// Readable once the helper exits (`None` if it could not be opened).
    pidfd: Option<OwnedFd>,
    /// The process that made the helper: only it talks to it or reaps it.
    owner: Pid,
    /// The paths granted by [`PrivsepBuilder::remove_at_stop`], with their
    /// numbers in the grants.
    at_stop: Vec<(PathBuf, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Serving requests.
    Open,
    /// The channel is closed (finished or broken); the helper not reaped.
    Closed,
    /// The helper is reaped.
    Reaped,
}

impl fmt::Debug for Privsep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Privsep")
            .field("pid", &self.inner.pid.as_raw_nonzero())
            .field("state", &*self.inner.lock())
            .finish()
    }
}

/// What the helper may do, before [`start`](Self::start) forks it; made by
/// [`Privsep::builder`].
#[derive(Debug, Default)]
pub struct PrivsepBuilder<'a> {
    logs: Vec<RotatingFile>,
    pidfiles: Vec<&'a Pidfile>,
    at_stop: Vec<PathBuf>,
    owners: Vec<u32>,
}

impl Privsep {
    /// Grants to choose, then [`PrivsepBuilder::start`].
    pub fn builder<'a>() -> PrivsepBuilder<'a> {
        PrivsepBuilder::default()
    }

    /// The helper's pid.
    pub fn pid(&self) -> i32 {
        self.inner.pid.as_raw_nonzero().get()
    }

    /// Asks the helper to remove the granted files still there, waits for it
    /// to exit (5 s, then SIGKILL) and reaps it. Later requests fail; calling
    /// it again does nothing. Does nothing in a process forked from the one
    /// that started the helper.
    ///
    /// # Errors
    ///
    /// [`Error::Privsep`] if the helper could not be asked (it had died, or
    /// the channel broke before), or did not exit in time and was killed.
    /// It is reaped either way.
    pub fn finish(&self) -> Result<()> {
        if rustix::process::getpid() != self.inner.owner {
            return Ok(());
        }
        let mut state = self.inner.lock();
        let asked = match *state {
            State::Open => {
                let outcome = self.inner.exchange(Request::Finish).map(drop);
                self.inner.close(&mut state);
                outcome
            }
            State::Closed => Ok(()),
            State::Reaped => return Ok(()),
        };
        let exited = self.inner.reap();
        *state = State::Reaped;
        asked
            .and(exited)
            .map_err(|source| Error::Privsep { source })
    }

    /// For a process forked from the one that started the helper (a worker):
    /// points this copy of the channel at /dev/null, so the new process can
    /// neither send the helper requests nor take the answers meant for its
    /// parent. Requests made through it then fail.
    ///
    /// # Errors
    ///
    /// Opening /dev/null failed.
    pub fn close_in_child(&self) -> io::Result<()> {
        sys::point_at_devnull(&self.inner.channel)
    }

    /// Rotates log `index` through the helper; returns the fresh file and its
    /// size.
    pub(crate) fn rotate_log(&self, index: u32) -> io::Result<(File, u64)> {
        self.opened(Request::RotateLog(index))
    }

    /// Reopens log `index` through the helper.
    pub(crate) fn reopen_log(&self, index: u32) -> io::Result<(File, u64)> {
        self.opened(Request::ReopenLog(index))
    }

    /// Removes a file granted by [`PrivsepBuilder::remove_at_stop`] now,
    /// rather than when the helper finishes (a unix socket's path when a
    /// graceful stop begins, so that new clients are refused), if `path`
    /// still names the file granted. Asking again does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::GrantPath`] if `path` is not granted (not given to
    /// `remove_at_stop`, or missing when the helper started);
    /// [`Error::Privsep`] if the helper could not be asked, or could not
    /// remove the file.
    pub fn remove_now(&self, path: &std::path::Path) -> Result<()> {
        let Some(&(_, index)) = self.inner.at_stop.iter().find(|(p, _)| p == path) else {
            return Err(Error::GrantPath {
                path: path.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "not granted to the privileged helper",
                ),
            });
        };
        self.remove_file(index)
            .map_err(|source| Error::Privsep { source })
    }

    /// Removes file `index` through the helper (if it still is the file
    /// granted).
    pub(crate) fn remove_file(&self, index: u32) -> io::Result<()> {
        self.call(Request::RemoveFile(index)).map(drop)
    }

    fn opened(&self, request: Request) -> io::Result<(File, u64)> {
        let fd = self.call(request)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the privileged helper sent no file",
            )
        })?;
        let size = rustix::fs::fstat(&fd)?.st_size;
        Ok((File::from(fd), u64::try_from(size).unwrap_or(0)))
    }

    fn call(&self, request: Request) -> io::Result<Option<OwnedFd>> {
        let mut state = self.inner.lock();
        if *state != State::Open {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the privileged helper has stopped",
            ));
        }
        match self.inner.exchange(request) {
            Ok(answer) => answer,
            Err(broken) => {
                // Out of step with the helper now: give the channel up.
                self.inner.close(&mut state);
                Err(broken)
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `request` and takes its answer. The outer error means the
    /// channel broke; the inner one is the helper's answer.
    fn exchange(&self, request: Request) -> io::Result<io::Result<Option<OwnedFd>>> {
        let bytes = request.encode();
        loop {
            let mut control = SendAncillaryBuffer::default();
            match rustix::net::sendmsg(
                &self.channel,
                &[IoSlice::new(&bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(_) => break,
                Err(Errno::INTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        let deadline = Instant::now().checked_add(ANSWER_TIMEOUT);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the privileged helper did not answer",
                ));
            }
            let mut fds = [PollFd::new(&self.channel, PollFlags::IN)];
            match rustix::event::poll(&mut fds, left.map(poll_timeout).as_ref()) {
                Ok(0) | Err(Errno::INTR) => continue,
                Ok(_) => break,
                Err(errno) => return Err(errno.into()),
            }
        }
        let mut buf = [0u8; ANSWER_LEN + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = loop {
            match rustix::net::recvmsg(
                &self.channel,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            ) {
                Err(Errno::INTR) => {}
                other => break other?,
            }
        };
        let mut fd = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for received in fds {
                    fd = fd.or(Some(received));
                }
            }
        }
        if received.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the privileged helper exited",
            ));
        }
        let answer = buf.get(..received.bytes).unwrap_or(&buf);
        Ok(wire::decode_answer(answer).map(|()| fd))
    }

    /// Ends the conversation: the helper sees the end of its channel.
    fn close(&self, state: &mut State) {
        let _ = rustix::net::shutdown(&self.channel, Shutdown::Both);
        *state = State::Closed;
    }

    /// Waits for the helper to exit (killing it after [`EXIT_TIMEOUT`]) and
    /// reaps it. A helper someone else reaped (a subreaper's wait on any
    /// child) counts as exited.
    fn reap(&self) -> io::Result<()> {
        let mut outcome = Ok(());
        if let Some(pidfd) = &self.pidfd {
            let exited = wait_pidfd(pidfd, Instant::now().checked_add(EXIT_TIMEOUT));
            if !matches!(exited, Ok(true)) {
                let _ = rustix::process::pidfd_send_signal(pidfd, Signal::KILL);
                outcome = Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the privileged helper did not exit and was killed",
                ));
            }
        }
        loop {
            match rustix::process::waitpid(Some(self.pid), WaitOptions::empty()) {
                Err(Errno::INTR) => {}
                _ => return outcome,
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if rustix::process::getpid() != self.owner {
            return;
        }
        let mut state = *self.lock();
        if state == State::Open {
            let _ = self.exchange(Request::Finish);
            self.close(&mut state);
        }
        if state != State::Reaped {
            let _ = self.reap();
        }
    }
}

impl<'a> PrivsepBuilder<'a> {
    /// Lets the helper rotate and reopen `log` (its path, backups and mode
    /// as configured), and makes `log` use the helper for both once it
    /// starts.
    pub fn log(mut self, log: &RotatingFile) -> Self {
        self.logs.push(log.clone());
        self
    }

    /// Lets the helper remove `pidfile` (as long as its path names that
    /// file), and makes its drop use the helper once it starts: the file is
    /// removed while its lock is still held. At [`Privsep::finish`] the
    /// helper removes it too if it is still there and nobody holds its lock.
    pub fn pidfile(mut self, pidfile: &'a Pidfile) -> Self {
        self.pidfiles.push(pidfile);
        self
    }

    /// Lets the helper remove `path` when it finishes (a control socket,
    /// say), if the path exists when the helper starts and still names the
    /// same file then (a successor's socket renamed over it stays). A path
    /// that does not exist at the start is not granted.
    pub fn remove_at_stop(mut self, path: impl Into<PathBuf>) -> Self {
        self.at_stop.push(path.into());
        self
    }

    /// Lets a granted log owned by `uid` (the user the server switches to,
    /// say) be reopened. Without it, the helper hands out only logs owned
    /// by root, and never one with more than one name (a hard link).
    pub fn user(mut self, uid: u32) -> Self {
        self.owners.push(uid);
        self
    }

    /// Forks the helper with these grants.
    ///
    /// # Errors
    ///
    /// [`Error::MultiThreaded`] if the process has more than one thread;
    /// [`Error::GrantPath`] if a granted path's directory cannot be opened
    /// (or a log or pidfile is already served by a helper);
    /// [`Error::Privsep`] if the socket pair or the fork fails. Nothing was
    /// forked then.
    pub fn start(self) -> Result<Privsep> {
        if let Some(threads) = crate::daemonize::thread_count().filter(|&n| n > 1) {
            return Err(Error::MultiThreaded { threads });
        }
        let (mut grants, at_stop) = self.grants()?;
        let privsep = |source: Errno| Error::Privsep {
            source: source.into(),
        };
        let (server_end, helper_end) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(privsep)?;
        let owner = rustix::process::getpid();
        match sys::fork().map_err(|source| Error::Privsep { source })? {
            Forked::Child => {
                let mut keep = grants.fds();
                keep.push(helper_end.as_raw_fd());
                sys::become_helper(&keep, || helper::run(owner, &helper_end, &mut grants))
            }
            Forked::Parent(pid) => {
                drop(helper_end);
                drop(grants);
                let pid = Pid::from_raw(pid).ok_or_else(|| privsep(Errno::SRCH))?;
                let helper = Privsep {
                    inner: Arc::new(Inner {
                        channel: server_end,
                        state: Mutex::new(State::Open),
                        pid,
                        pidfd: open_pidfd(pid.as_raw_nonzero().get()).ok(),
                        owner,
                        at_stop,
                    }),
                };
                self.attach(&helper);
                Ok(helper)
            }
        }
    }

    /// Makes the granted logs and pidfiles use `helper`.
    fn attach(&self, helper: &Privsep) {
        for (n, log) in (0u32..).zip(&self.logs) {
            log.attach(helper.clone(), n);
        }
        for (n, pidfile) in (0u32..).zip(&self.pidfiles) {
            pidfile.attach(helper.clone(), n);
        }
    }

    /// The grants, in the order the handles number them: logs, then
    /// pidfiles, then the files removed at the stop (also listed with their
    /// numbers, for [`Privsep::remove_now`]).
    fn grants(&self) -> Result<(Grants, Vec<(PathBuf, u32)>)> {
        let mut at_stop = Vec::new();
        let mut grants = Grants::default();
        for log in &self.logs {
            let config = log.config();
            let path = config.path();
            if log.is_attached() {
                return Err(already_served(path));
            }
            let (dir, name) = helper::split(path).map_err(|source| Error::GrantPath {
                path: path.to_owned(),
                source,
            })?;
            grants.logs.push(LogGrant {
                dir,
                name,
                backups: config.backup_count(),
                mode: config.file_mode(),
                owners: self.owners.clone(),
            });
        }
        for pidfile in &self.pidfiles {
            let path = pidfile.path();
            if pidfile.is_attached() {
                return Err(already_served(path));
            }
            let grant = |source| Error::GrantPath {
                path: path.to_owned(),
                source,
            };
            let (dir, name) = helper::split(path).map_err(grant)?;
            let id = pidfile.file_id().map_err(|e| grant(e.into()))?;
            grants.files.push(FileGrant {
                dir,
                name,
                id,
                pidfile: true,
                removed: false,
            });
        }
        for path in &self.at_stop {
            let Ok(stat) = rustix::fs::lstat(path) else {
                continue;
            };
            let (dir, name) = helper::split(path).map_err(|source| Error::GrantPath {
                path: path.to_owned(),
                source,
            })?;
            let index = u32::try_from(grants.files.len()).map_err(|_| Error::GrantPath {
                path: path.to_owned(),
                source: Errno::NOSPC.into(),
            })?;
            at_stop.push((path.clone(), index));
            grants.files.push(FileGrant {
                dir,
                name,
                id: (stat.st_dev, stat.st_ino),
                pidfile: false,
                removed: false,
            });
        }
        Ok((grants, at_stop))
    }
}

fn already_served(path: &std::path::Path) -> Error {
    Error::GrantPath {
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "already served by a privileged helper",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::thread::JoinHandle;

    use rustix::fs::FlockOperation;

    use super::*;

    impl PrivsepBuilder<'_> {
        /// The helper's loop on a thread of this process instead of a fork:
        /// the protocol and the grants, without the process around them.
        fn start_on_thread(self) -> (Privsep, JoinHandle<()>) {
            let (mut grants, at_stop) = self.grants().unwrap();
            let (server_end, helper_end) = rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            let thread = std::thread::spawn(move || helper::serve(&helper_end, &mut grants));
            let me = rustix::process::getpid();
            let helper = Privsep {
                inner: Arc::new(Inner {
                    channel: server_end,
                    state: Mutex::new(State::Open),
                    // Waiting for oneself fails at once: "reaped".
                    pid: me,
                    pidfd: None,
                    owner: me,
                    at_stop,
                }),
            };
            self.attach(&helper);
            (helper, thread)
        }
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("ufork-privsep-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn send_raw(helper: &Privsep, bytes: &[u8]) -> io::Result<()> {
        rustix::net::send(&helper.inner.channel, bytes, SendFlags::NOSIGNAL)?;
        let mut buf = [0u8; 8];
        let n = rustix::net::recv(&helper.inner.channel, &mut buf, RecvFlags::empty())?.0;
        wire::decode_answer(&buf[..n])
    }

    #[test]
    fn a_log_rotates_and_reopens_through_the_helper() {
        let dir = Dir::new("rotate");
        let path = dir.join("log");
        let log = RotatingFile::builder(&path)
            .max_size(5)
            .backups(2)
            .mode(0o600)
            .open()
            .unwrap();
        let (helper, thread) = Privsep::builder().log(&log).start_on_thread();
        assert!(log.is_attached());
        for line in ["one\n", "two\n", "three\n"] {
            (&log).write_all(line.as_bytes()).unwrap();
        }
        assert_eq!(read(&path), "three\n");
        assert_eq!(read(&dir.join("log.1")), "two\n");
        assert_eq!(read(&dir.join("log.2")), "one\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600, "the granted mode");

        // logrotate moved it away: the reopened file is a fresh one.
        std::fs::rename(&path, dir.join("moved")).unwrap();
        log.reopen().unwrap();
        (&log).write_all(b"four\n").unwrap();
        assert_eq!(read(&path), "four\n");
        assert_eq!(read(&dir.join("moved")), "three\n");

        helper.finish().unwrap();
        thread.join().unwrap();
        // After the helper: the error says so, and writing goes on.
        let error = log.reopen().unwrap_err();
        assert!(
            error.report().contains("privileged helper has stopped"),
            "{}",
            error.report()
        );
        (&log).write_all(b"five\n").unwrap();
        assert_eq!(read(&path), "four\nfive\n");
    }

    #[test]
    fn the_helper_opens_no_symlink_and_no_fifo() {
        let dir = Dir::new("symlink");
        let path = dir.join("log");
        let log = RotatingFile::builder(&path).open().unwrap();
        let (helper, thread) = Privsep::builder().log(&log).start_on_thread();
        std::fs::write(dir.join("secret"), "secret\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), &path).unwrap();
        let error = log.reopen().unwrap_err();
        assert!(matches!(error, Error::OpenLog { .. }), "{error:?}");
        std::fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Neither blocks nor hands out the FIFO.
        assert!(log.reopen().is_err());
        assert_eq!(read(&dir.join("secret")), "secret\n");
        helper.finish().unwrap();
        thread.join().unwrap();
    }

    fn errno(error: &Error) -> Option<i32> {
        std::error::Error::source(error)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error)
    }

    #[test]
    fn a_hard_link_planted_at_the_log_is_refused() {
        if !rustix::process::geteuid().is_root() {
            println!("skipped: only root can give a file away (chown)");
            return;
        }
        let dir = Dir::new("hardlink");
        let path = dir.join("log");
        let log = RotatingFile::builder(&path).backups(1).open().unwrap();
        let (helper, thread) = Privsep::builder().log(&log).user(65534).start_on_thread();
        // A file only root may read or write, as in /etc.
        let secret = dir.join("secret");
        std::fs::write(&secret, "secret\n").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&secret, &path).unwrap();
        let error = log.reopen().unwrap_err();
        assert!(matches!(error, Error::OpenLog { .. }), "{error:?}");
        assert_eq!(errno(&error), Some(libc::EMLINK), "{error:?}");
        // Planted at the backup's name too: the rename of the rotation
        // does nothing (both names are the same file), so the log's name
        // is still there when the new file is created.
        std::fs::hard_link(&secret, dir.join("log.1")).unwrap();
        let error = log.rotate().unwrap_err();
        assert!(matches!(error, Error::RotateLog { .. }), "{error:?}");
        assert_eq!(errno(&error), Some(libc::EEXIST), "{error:?}");
        (&log).write_all(b"line\n").unwrap();
        assert_eq!(
            read(&secret),
            "secret\n",
            "never written through the helper"
        );

        // One name, but someone else's file: refused; the user's: handed out.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(dir.join("log.1")).unwrap();
        std::fs::write(&path, "").unwrap();
        std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
        let error = log.reopen().unwrap_err();
        assert_eq!(errno(&error), Some(libc::EPERM), "{error:?}");
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        log.reopen().unwrap();
        (&log).write_all(b"mine\n").unwrap();
        assert_eq!(read(&path), "mine\n");
        // A rotation creates the new file, root's, with one name.
        log.rotate().unwrap();
        (&log).write_all(b"fresh\n").unwrap();
        assert_eq!(read(&path), "fresh\n");
        assert_eq!(read(&dir.join("log.1")), "mine\n");
        helper.finish().unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn files_are_removed_only_while_they_are_the_files_granted() {
        let dir = Dir::new("remove");
        let pidfile = Pidfile::create(dir.join("pid")).unwrap();
        let socket = dir.join("control.sock");
        std::fs::write(&socket, "").unwrap();
        let replaced = dir.join("replaced");
        std::fs::write(&replaced, "").unwrap();
        let (helper, thread) = Privsep::builder()
            .pidfile(&pidfile)
            .remove_at_stop(&socket)
            .remove_at_stop(&replaced)
            .remove_at_stop(dir.join("missing"))
            .start_on_thread();
        assert!(pidfile.is_attached());
        // A successor's file at the same path is not the one granted.
        std::fs::rename(&replaced, dir.join("old")).unwrap();
        std::fs::write(&replaced, "successor").unwrap();
        // Numbers out of range and malformed requests are refused, and the
        // helper goes on serving.
        for bad in [
            &b"U\x09\0\0\0"[..],
            b"R\0\0\0\0",
            b"garbage",
            b"/etc/shadow",
        ] {
            let error = send_raw(&helper, bad).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
        // The lock holder's drop asks for the pidfile: removed while locked.
        drop(pidfile);
        assert!(!dir.join("pid").exists());
        assert!(socket.exists(), "removed at the stop only, or when asked");
        // Asked for by path: only a path granted, and only the file granted.
        let error = helper.remove_now(&dir.join("missing")).unwrap_err();
        assert!(matches!(error, Error::GrantPath { .. }), "{error:?}");
        helper.remove_now(&replaced).unwrap();
        assert_eq!(read(&replaced), "successor");
        helper.remove_now(&socket).unwrap();
        assert!(!socket.exists());
        helper.remove_now(&socket).unwrap();
        helper.finish().unwrap();
        thread.join().unwrap();
        assert!(!socket.exists());
        assert_eq!(read(&replaced), "successor");
        assert!(
            dir.join("old").exists(),
            "renamed away: not at the path granted"
        );
        helper.finish().unwrap();
    }

    #[test]
    fn at_the_end_a_locked_pidfile_stays_and_a_free_one_goes() {
        let dir = Dir::new("end");
        let held = Pidfile::create(dir.join("held")).unwrap();
        let free = Pidfile::create(dir.join("free")).unwrap();
        let socket = dir.join("socket");
        std::fs::write(&socket, "").unwrap();
        let (helper, thread) = Privsep::builder()
            .pidfile(&held)
            .pidfile(&free)
            .remove_at_stop(&socket)
            .start_on_thread();
        // `free`'s lock is released without its drop, as when its process
        // died and left the file.
        rustix::fs::flock(free.file(), FlockOperation::Unlock).unwrap();
        // The end of the channel (the server is gone) cleans up as
        // `finish` does.
        rustix::net::shutdown(&helper.inner.channel, Shutdown::Both).unwrap();
        thread.join().unwrap();
        assert!(!dir.join("free").exists());
        assert!(!socket.exists());
        assert!(dir.join("held").exists(), "its lock is held: not removed");
        // The helper is gone: the holder removes its file itself.
        drop(held);
        assert!(!dir.join("held").exists());
        drop(free);
    }

    #[test]
    fn a_copy_closed_in_a_child_reaches_nothing() {
        let dir = Dir::new("child");
        let socket = dir.join("socket");
        std::fs::write(&socket, "").unwrap();
        let (helper, thread) = Privsep::builder().remove_at_stop(&socket).start_on_thread();
        // In a worker this is a copy of the descriptor; here it is the one
        // descriptor, so the helper sees its channel end.
        helper.close_in_child().unwrap();
        let error = helper.remove_file(0).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOTSOCK), "{error}");
        thread.join().unwrap();
        assert!(!socket.exists(), "the end of the channel cleaned up");
    }

    #[test]
    fn a_multi_threaded_process_gets_no_helper() {
        let thread = std::thread::spawn(|| std::thread::park_timeout(Duration::from_secs(30)));
        let error = Privsep::builder().start().unwrap_err();
        assert!(matches!(error, Error::MultiThreaded { .. }), "{error:?}");
        thread.thread().unpark();
        thread.join().unwrap();
    }
}
