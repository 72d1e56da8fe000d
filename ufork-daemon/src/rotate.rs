//! A log file that rotates by size at line boundaries.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::links;
use crate::privsep::Privsep;

/// Default size at which the file is rotated: 8 MiB, like uFork.
pub const DEFAULT_MAX_SIZE: u64 = 8 * 1024 * 1024;
/// Default number of rotated files kept (`path.1` … `path.8`), like uFork.
pub const DEFAULT_BACKUPS: usize = 8;
/// Default mode of the files created: owner read-write, group read.
pub const DEFAULT_MODE: u32 = 0o640;

/// A partial line is held in memory until its newline arrives; past this many
/// bytes it is written out as it is (it then continues in the same file, so it
/// is still never split across two files).
const MAX_PENDING: usize = 64 * 1024;

/// Settings of a [`RotatingFile`]; made by [`RotatingFile::builder`].
#[derive(Debug, Clone)]
pub struct RotatingFileBuilder {
    path: PathBuf,
    max_size: u64,
    backups: usize,
    mode: u32,
    redirect_stdio: bool,
}

impl RotatingFileBuilder {
    /// The size in bytes past which the file is rotated (default 8 MiB). A file
    /// only exceeds it when a single line is longer than that.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes.max(1);
        self
    }

    /// How many rotated files to keep, `path.1` (newest) to `path.N` (oldest;
    /// the one before is dropped). Default 8. With 0, rotation starts the file
    /// over.
    pub fn backups(mut self, count: usize) -> Self {
        self.backups = count;
        self
    }

    /// The permission bits of files this creates (default 0640), set exactly,
    /// whatever the umask. Existing files keep theirs.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Also point stdout and stderr (fds 1 and 2) at the current file, now and
    /// after every rotation and reopen, so stray prints and panic messages land
    /// in the log too (default off; [`Daemonize`](crate::Daemonize) turns it
    /// on). Bytes written straight to fd 1 or 2 are not counted towards
    /// [`max_size`](Self::max_size) and do not go through the line buffer.
    pub fn redirect_stdio(mut self, on: bool) -> Self {
        self.redirect_stdio = on;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many rotated files are kept.
    pub(crate) fn backup_count(&self) -> usize {
        self.backups
    }

    /// The mode of files this creates.
    pub(crate) fn file_mode(&self) -> u32 {
        self.mode
    }

    /// The same settings for another path.
    pub(crate) fn with_path(mut self, path: PathBuf) -> Self {
        self.path = path;
        self
    }

    /// Opens (creating if needed) the file for appending. A symbolic link at
    /// the path is followed only where no other user could have put it, as
    /// [`open_append`] says (so `/dev/stdout` is followed); the same holds
    /// for every reopen and rotation.
    ///
    /// # Errors
    ///
    /// [`Error::OpenLog`] if it cannot be opened (or fds 1 and 2 redirected),
    /// or it is a symbolic link that rule refuses.
    pub fn open(self) -> Result<RotatingFile> {
        let (file, size) = open_log(&self.path, self.mode).map_err(|source| Error::OpenLog {
            path: self.path.clone(),
            source,
        })?;
        if self.redirect_stdio {
            point_stdio_at(&file).map_err(|source| Error::OpenLog {
                path: self.path.clone(),
                source,
            })?;
        }
        let state = State {
            regular: is_regular(&file),
            file,
            size,
            pending: Vec::new(),
            mid_line: false,
            retry_at: 0,
            error: None,
            failing: false,
            unlogged: None,
        };
        Ok(RotatingFile {
            shared: Arc::new(Shared {
                config: self,
                state: Mutex::new(state),
                privsep: OnceLock::new(),
            }),
        })
    }
}

/// A log file that rotates by size (`path`, `path.1` … `path.N`) and never
/// splits a line across two files.
///
/// Bytes up to the last newline of each `write` go to the file; a partial last
/// line waits in memory for its newline ([`flush`](Write::flush) writes it out,
/// and the rest of that line then follows it into the same file). Rotation
/// happens between lines, when the next line would take the file past
/// [`max_size`](RotatingFileBuilder::max_size). Only a regular file is
/// rotated: a path that names anything else (`/dev/null`, a FIFO, a
/// terminal) is written to as it is, and never renamed away.
///
/// If rotating fails (a rename refused, the disk full), the error is kept for
/// [`take_rotation_error`](Self::take_rotation_error), logged once through
/// the `log` crate (outside the internal lock, so a logger writing into this
/// very file does not deadlock), and writing goes on to the current file: no
/// data is lost. The next attempt comes after another `max_size` bytes.
///
/// Cheap to share: clones are handles on the same file (an `Arc` and a mutex
/// inside), and `&RotatingFile` implements `Write`, so one clone can feed a
/// sink while another serves [`reopen`](Self::reopen) on SIGUSR1. Each `write`
/// is applied under the lock as a whole; write whole lines from concurrent
/// writers, or their partial lines meet in the shared buffer.
///
/// # Examples
///
/// ```no_run
/// use std::io::Write;
/// use ufork_daemon::RotatingFile;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut log = RotatingFile::builder("/var/log/myserver.log")
///     .max_size(1024 * 1024)
///     .backups(4)
///     .open()?;
/// writeln!(log, "started")?;
/// // After an external logrotate renamed the file (e.g. on SIGUSR1):
/// log.reopen()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RotatingFile {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: RotatingFileBuilder,
    state: Mutex<State>,
    /// The privileged helper that renames and opens the files once this
    /// process dropped its privileges, and this log's number in its grants.
    privsep: OnceLock<(Privsep, u32)>,
}

#[derive(Debug)]
struct State {
    file: File,
    /// The file is a regular file. Anything else (`/dev/null`, a FIFO, a
    /// terminal) is written to as it is and never rotated: renaming a
    /// device node away and putting a regular file in its place would break
    /// every other user of it.
    regular: bool,
    /// Bytes in the current file (its size when opened plus what was written).
    size: u64,
    /// A partial line waiting for its newline.
    pending: Vec<u8>,
    /// The current file ends inside a line (a partial line was flushed):
    /// the rest of it must follow into the same file.
    mid_line: bool,
    /// After a failed rotation, no new attempt before the file reaches this size.
    retry_at: u64,
    /// The last rotation error, until taken.
    error: Option<Error>,
    /// A rotation failed and none has succeeded since.
    failing: bool,
    /// The first failure of the current streak, still to be logged.
    unlogged: Option<String>,
}

impl RotatingFile {
    /// Settings for a rotating file at `path`: 8 MiB × 8 backups, mode 0640.
    pub fn builder(path: impl Into<PathBuf>) -> RotatingFileBuilder {
        RotatingFileBuilder {
            path: path.into(),
            max_size: DEFAULT_MAX_SIZE,
            backups: DEFAULT_BACKUPS,
            mode: DEFAULT_MODE,
            redirect_stdio: false,
        }
    }

    /// Opens a rotating file at `path` with the default settings.
    ///
    /// # Errors
    ///
    /// [`Error::OpenLog`] if it cannot be opened.
    pub fn open(path: impl Into<PathBuf>) -> Result<RotatingFile> {
        Self::builder(path).open()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.config.path
    }

    /// Reopens the path, for an external logrotate that renamed the file:
    /// later lines go to a fresh file at `path`. A partial line still waiting
    /// for its newline goes there too.
    ///
    /// # Errors
    ///
    /// [`Error::OpenLog`] if the path cannot be opened; writing then goes on
    /// to the file open before.
    pub fn reopen(&self) -> Result<()> {
        let config = &self.shared.config;
        let opened = match self.shared.privsep.get() {
            Some((helper, index)) => helper.reopen_log(*index),
            None => open_log(&config.path, config.mode),
        };
        let (file, size) = opened.map_err(|source| Error::OpenLog {
            path: config.path.clone(),
            source,
        })?;
        if config.redirect_stdio {
            point_stdio_at(&file).map_err(|source| Error::OpenLog {
                path: config.path.clone(),
                source,
            })?;
        }
        let mut state = self.lock();
        state.regular = is_regular(&file);
        state.file = file;
        state.size = size;
        state.mid_line = false;
        state.retry_at = 0;
        Ok(())
    }

    /// Rotates now, at the current line boundary (a partial line waiting for
    /// its newline goes to the new file). A path that is not a regular file
    /// (`/dev/null`, a FIFO) is never rotated: this does nothing then.
    ///
    /// # Errors
    ///
    /// [`Error::RotateLog`] if a rename or the new file's open fails; writing
    /// then goes on to the current file.
    pub fn rotate(&self) -> Result<()> {
        let mut state = self.lock();
        let result = state.rotate(&self.shared);
        // The caller gets this failure: it needs no log line.
        state.unlogged = None;
        result
    }

    /// The settings this file was opened with.
    pub(crate) fn config(&self) -> &RotatingFileBuilder {
        &self.shared.config
    }

    /// From now on, rotations and reopens are done by `helper` (log number
    /// `index` of its grants). Returns `false` if a helper was attached
    /// already.
    pub(crate) fn attach(&self, helper: Privsep, index: u32) -> bool {
        self.shared.privsep.set((helper, index)).is_ok()
    }

    /// Whether a privileged helper rotates and reopens the file.
    pub(crate) fn is_attached(&self) -> bool {
        self.shared.privsep.get().is_some()
    }

    /// The last rotation error not taken yet (rotation errors never fail a
    /// `write`).
    pub fn take_rotation_error(&self) -> Option<Error> {
        self.lock().error.take()
    }

    /// Bytes in the current file, as counted by this handle.
    pub fn size(&self) -> u64 {
        self.lock().size
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent enough
        // to keep logging: every field is updated after its write succeeds.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Write for &RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (result, failure) = {
            let mut state = self.lock();
            let result = state.write(&self.shared, buf);
            (result, state.take_unreported())
        };
        if let Some(message) = failure {
            log::warn!("{message}; still writing to the current file");
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut state = self.lock();
        state.flush_pending()
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = state.flush_pending();
    }
}

impl State {
    fn write(&mut self, shared: &Shared, buf: &[u8]) -> io::Result<usize> {
        let Some(last_newline) = buf.iter().rposition(|&b| b == b'\n') else {
            self.pending.extend_from_slice(buf);
            if self.pending.len() > MAX_PENDING {
                self.flush_pending()?;
            }
            return Ok(buf.len());
        };
        let (lines, rest) = buf.split_at(last_newline + 1);
        if self.pending.is_empty() {
            self.write_lines(shared, lines)?;
        } else {
            let before = self.pending.len();
            self.pending.extend_from_slice(lines);
            let joined = std::mem::take(&mut self.pending);
            let result = self.write_lines(shared, &joined);
            self.pending = joined;
            if let Err(error) = result {
                self.pending.truncate(before);
                return Err(error);
            }
            self.pending.clear();
        }
        self.pending.extend_from_slice(rest);
        Ok(buf.len())
    }

    /// Writes `data`, which ends with a newline, rotating between lines.
    fn write_lines(&mut self, shared: &Shared, data: &[u8]) -> io::Result<()> {
        if !self.regular {
            return self.write_raw(data);
        }
        let config = &shared.config;
        let mut rest = data;
        if self.mid_line {
            // The file ends inside a line: its remainder belongs here.
            let end = first_line_end(rest);
            self.write_raw(&rest[..end])?;
            rest = &rest[end..];
            self.mid_line = false;
        }
        while !rest.is_empty() {
            if self.size.saturating_add(rest.len() as u64) <= config.max_size {
                return self.write_raw(rest);
            }
            let room = usize::try_from(config.max_size.saturating_sub(self.size))
                .map_or(rest.len(), |room| room.min(rest.len()));
            if let Some(fit) = rest[..room].iter().rposition(|&b| b == b'\n') {
                self.write_raw(&rest[..=fit])?;
                rest = &rest[fit + 1..];
                continue;
            }
            if self.size == 0 {
                // One line longer than max_size: it gets a file of its own.
                let end = first_line_end(rest);
                self.write_raw(&rest[..end])?;
                rest = &rest[end..];
                continue;
            }
            if self.size < self.retry_at || self.rotate(shared).is_err() {
                return self.write_raw(rest);
            }
        }
        Ok(())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.size = self.size.saturating_add(bytes.len() as u64);
        Ok(())
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.write_raw(&pending)?;
            self.mid_line = true;
        }
        self.file.flush()
    }

    /// Shifts `path.N-1` … `path` one step up and opens a fresh `path`. On
    /// failure the current file stays in use.
    fn rotate(&mut self, shared: &Shared) -> Result<()> {
        if !self.regular {
            return Ok(());
        }
        let config = &shared.config;
        match self.try_rotate(shared) {
            Ok(()) => {
                self.retry_at = 0;
                self.failing = false;
                Ok(())
            }
            Err(source) => {
                self.retry_at = self.size.saturating_add(config.max_size);
                let error = Error::RotateLog {
                    path: config.path.clone(),
                    source,
                };
                if !self.failing {
                    self.failing = true;
                    self.unlogged = Some(error.report());
                }
                let copy = Error::RotateLog {
                    path: config.path.clone(),
                    source: copy_io_error(&error),
                };
                self.error = Some(error);
                Err(copy)
            }
        }
    }

    fn try_rotate(&mut self, shared: &Shared) -> io::Result<()> {
        let config = &shared.config;
        // If this fails, the old file (now path.1) keeps receiving lines.
        let (file, size) = match shared.privsep.get() {
            Some((helper, index)) => helper.rotate_log(*index)?,
            None => {
                shift(CWD, &config.path, config.backups)?;
                open_log_at(CWD, &config.path, config.mode, Follow::Trusted)?
            }
        };
        if config.redirect_stdio {
            point_stdio_at(&file)?;
        }
        self.regular = is_regular(&file);
        self.file = file;
        self.size = size;
        self.mid_line = false;
        Ok(())
    }

    /// The message of a rotation failure to log, once per failing streak.
    fn take_unreported(&mut self) -> Option<String> {
        self.unlogged.take()
    }
}

fn copy_io_error(error: &Error) -> io::Error {
    match std::error::Error::source(error).and_then(|s| s.downcast_ref::<io::Error>()) {
        Some(io) => match io.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(io.kind(), io.to_string()),
        },
        None => io::Error::other(error.to_string()),
    }
}

fn first_line_end(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| i + 1)
}

/// `path.n`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Shifts `name.N-1` … `name` one step up in `dir` (`name` is dropped when
/// no backups are kept): the renames of a rotation. `dir` is [`CWD`] with a
/// whole path as `name`, or the privileged helper's directory descriptor
/// with a file name.
pub(crate) fn shift(dir: BorrowedFd<'_>, name: &Path, backups: usize) -> io::Result<()> {
    if backups == 0 {
        return remove_if_present(dir, name);
    }
    for n in (1..backups).rev() {
        rename_if_present(dir, &numbered(name, n), &numbered(name, n + 1))?;
    }
    rustix::fs::renameat(dir, name, dir, numbered(name, 1))?;
    Ok(())
}

fn rename_if_present(dir: BorrowedFd<'_>, from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat(dir, from, dir, to) {
        Err(Errno::NOENT) => Ok(()),
        other => Ok(other?),
    }
}

fn remove_if_present(dir: BorrowedFd<'_>, name: &Path) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::NOENT) => Ok(()),
        other => Ok(other?),
    }
}

/// Whether the last component of a log's path may be a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// As the user asked, where nobody else could have put the link: see
    /// [`crate::links`] (`/dev/stdout` is followed, a link another user
    /// planted is refused).
    Trusted,
    /// For the privileged helper, which hands the descriptor to an
    /// unprivileged process: only a regular file that is no symlink, or the
    /// helper could be made to open any file of root's for it.
    No,
}

/// Opens `path` for appending, creating it with exactly `mode` if it does not
/// exist. Returns the file and its current size.
fn open_log(path: &Path, mode: u32) -> io::Result<(File, u64)> {
    open_log_at(CWD, path, mode, Follow::Trusted)
}

/// Opens `path` for appending as a [`RotatingFile`] opens its file: created
/// with exactly `mode` if it does not exist, and through a symbolic link at
/// its last component only where nobody but root and this process' user
/// could have put the link — its directory is theirs and no one else may
/// write it (or it is sticky), and the link is theirs. `/dev/stdout` is
/// followed; a link planted in a directory a service user may write is
/// refused, so a process started as root never writes the file it points at.
///
/// # Errors
///
/// The open failed, or the path is a symbolic link the rule refuses (an
/// error that says so).
pub fn open_append(path: impl AsRef<Path>, mode: u32) -> io::Result<File> {
    open_log(path.as_ref(), mode).map(|(file, _)| file)
}

/// [`open_log`] relative to `dir`.
pub(crate) fn open_log_at(
    dir: BorrowedFd<'_>,
    name: &Path,
    mode: u32,
    follow: Follow,
) -> io::Result<(File, u64)> {
    let mut flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CLOEXEC;
    // This process' own stdout and stderr, whoever owns `/dev` (in a user
    // namespace it may show as nobody): no service user can plant these.
    if follow == Follow::Trusted
        && (name == Path::new("/dev/stdout") || name == Path::new("/dev/stderr"))
    {
        let fd = rustix::fs::openat(CWD, name, flags, Mode::empty())?;
        return opened(fd, follow);
    }
    // The directory is resolved once: its check and every open below are
    // about the same directory, whatever happens to the path leading to it.
    let parent_fd;
    let (dir, name) = match (follow, name.file_name()) {
        (Follow::Trusted, Some(leaf)) => {
            let parent = match name.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            parent_fd = rustix::fs::openat(
                dir,
                parent,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            (parent_fd.as_fd(), Path::new(leaf))
        }
        _ => (dir, name),
    };
    let links = match follow {
        // NONBLOCK: opening a FIFO planted there must not hang the helper.
        Follow::No => {
            flags |= OFlags::NOFOLLOW | OFlags::NONBLOCK;
            false
        }
        Follow::Trusted if links::safe_dir(dir, name)? => true,
        Follow::Trusted => {
            flags |= OFlags::NOFOLLOW;
            false
        }
    };
    loop {
        match rustix::fs::openat(
            dir,
            name,
            flags | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(mode),
        ) {
            Ok(fd) => {
                // The umask may have taken bits away.
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
                return opened(fd, follow);
            }
            Err(Errno::EXIST) => {}
            Err(errno) => return Err(errno.into()),
        }
        let mut now = flags;
        if links && !links::vet(dir, name)? {
            now |= OFlags::NOFOLLOW;
        }
        match rustix::fs::openat(dir, name, now, Mode::empty()) {
            Ok(fd) => return opened(fd, follow),
            // Removed between the two opens: create it after all.
            Err(Errno::NOENT) => continue,
            Err(errno) if follow == Follow::Trusted => {
                return Err(links::refused(dir, name, errno));
            }
            Err(errno) => return Err(errno.into()),
        }
    }
}

fn opened(fd: OwnedFd, follow: Follow) -> io::Result<(File, u64)> {
    let stat = rustix::fs::fstat(&fd)?;
    if follow == Follow::No {
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        rustix::fs::fcntl_setfl(&fd, OFlags::APPEND)?;
    }
    Ok((File::from(fd), u64::try_from(stat.st_size).unwrap_or(0)))
}

/// Whether `file` is a regular file, the only kind that is rotated.
fn is_regular(file: &File) -> bool {
    file.metadata().is_ok_and(|m| m.file_type().is_file())
}

fn point_stdio_at(file: &File) -> io::Result<()> {
    rustix::stdio::dup2_stdout(file)?;
    rustix::stdio::dup2_stderr(file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--log-file /dev/null` must never rename the device away: a path
    /// that is not a regular file is written to, never rotated. Shown with
    /// a FIFO (no privilege needed, and nothing of the machine's at stake).
    #[test]
    fn a_path_that_is_not_a_regular_file_is_never_rotated() {
        use std::io::Read;
        use std::os::unix::fs::FileTypeExt;
        let dir =
            std::env::temp_dir().join(format!("ufork-daemon-unit-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("log");
        rustix::fs::mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o600)).unwrap();
        // The read end first, so opening the write end does not wait.
        let reader =
            rustix::fs::open(&fifo, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()).unwrap();
        let log = RotatingFile::builder(&fifo)
            .max_size(100)
            .backups(2)
            .open()
            .unwrap();
        let line = b"0123456789012345678901234567890123456789\n";
        for _ in 0..10 {
            (&log).write_all(line).unwrap();
        }
        log.rotate().unwrap();
        (&log).flush().unwrap();
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "the FIFO was replaced: {kind:?}");
        assert!(!dir.join("log.1").exists(), "the FIFO was rotated away");
        assert!(log.take_rotation_error().is_none());
        let mut got = Vec::new();
        let _ = File::from(reader).read_to_end(&mut got);
        assert_eq!(got.len(), 10 * line.len());
        drop(log);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbered_appends_the_generation() {
        assert_eq!(
            numbered(Path::new("/var/log/x.log"), 3),
            PathBuf::from("/var/log/x.log.3")
        );
    }

    #[test]
    fn a_failing_streak_is_logged_once() {
        let dir =
            std::env::temp_dir().join(format!("ufork-daemon-unit-streak-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("log.1/blocker")).unwrap();
        let log = RotatingFile::builder(dir.join("log"))
            .max_size(4)
            .backups(1)
            .open()
            .unwrap();
        let mut logged = 0;
        for _ in 0..10 {
            let mut state = log.lock();
            state.write(&log.shared, b"abc\n").unwrap();
            logged += usize::from(state.take_unreported().is_some());
        }
        assert_eq!(logged, 1, "one log line per failing streak");
        // A success ends the streak; the next failure is logged again.
        std::fs::remove_dir_all(dir.join("log.1")).unwrap();
        log.rotate().unwrap();
        std::fs::remove_file(dir.join("log.1")).unwrap();
        std::fs::create_dir_all(dir.join("log.1/blocker")).unwrap();
        let mut state = log.lock();
        for _ in 0..3 {
            state.write(&log.shared, b"abc\n").unwrap();
        }
        assert!(state.take_unreported().is_some());
        drop(state);
        drop(log);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn first_line_end_includes_the_newline() {
        assert_eq!(first_line_end(b"ab\ncd\n"), 3);
        assert_eq!(first_line_end(b"abc"), 3);
    }
}
