//! A pidfile held under `flock(2)` for the life of its owner.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::privsep::Privsep;

/// How long to wait for the lock holder to write its pid. The holder writes it
/// right after taking the lock, so an empty file under a held lock is a window
/// of microseconds; the bound only matters if the holder died in between and
/// left the lock to a forked child.
const HOLDER_WRITE_GRACE: Duration = Duration::from_secs(1);

/// A pidfile this process holds: opened `O_CLOEXEC`, locked with
/// `flock(LOCK_EX | LOCK_NB)` and only then truncated and written with the pid.
///
/// The lock lives as long as the open file description: while this value (or a
/// process forked from its owner, which shares the description) lives, every
/// other [`Pidfile::create`] on the same path fails with
/// [`Error::AlreadyRunning`], and [`status`](crate::status) reports the owner
/// as running. A file left behind by a crash holds no lock: it is *stale* and
/// the next `create` takes it over.
///
/// Dropping it in the owning process removes the file (if the path still names
/// this file) and releases the lock; drops in forked children do nothing.
///
/// # Examples
///
/// A foreground server that refuses to start twice:
///
/// ```no_run
/// use ufork_daemon::{Error, Pidfile};
///
/// match Pidfile::create("/run/myserver.pid") {
///     Ok(pidfile) => {
///         // ... serve; the file goes away when `pidfile` is dropped
///         drop(pidfile);
///     }
///     Err(Error::AlreadyRunning { pid, .. }) => eprintln!("already running as pid {pid}"),
///     Err(other) => eprintln!("{}", other.report()),
/// }
/// ```
#[derive(Debug)]
pub struct Pidfile {
    file: File,
    path: PathBuf,
    pid: i32,
    /// The privileged helper that removes the file once this process may
    /// not, and the file's number in its grants.
    privsep: OnceLock<(Privsep, u32)>,
}

impl Pidfile {
    /// Creates (or takes over a stale) pidfile at `path`, locks it, and writes
    /// the calling process' pid followed by a newline. The file is created with
    /// mode 0644 (less the umask).
    ///
    /// A symbolic link at `path` is never followed (`O_NOFOLLOW`): whoever
    /// may write the pidfile's directory could otherwise point it at any file,
    /// and a process started as root would truncate and overwrite that file
    /// with its pid. Such a path is refused; the directories leading to it
    /// may still be links.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] if another process holds the lock (with the pid
    /// it wrote), [`Error::OpenPidfile`] (also when `path` is a symbolic
    /// link), [`Error::LockPidfile`] or [`Error::WritePidfile`] if a step
    /// fails. A file locked by someone else is never truncated or written.
    pub fn create(path: impl AsRef<Path>) -> Result<Pidfile> {
        let path = path.as_ref().to_path_buf();
        let pid = rustix::process::getpid().as_raw_pid();
        let fd = lock_fresh(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW,
            FlockOperation::NonBlockingLockExclusive,
        )?;
        let mut file = File::from(fd);
        write_pid(&mut file, pid).map_err(|source| Error::WritePidfile {
            path: path.clone(),
            source,
        })?;
        Ok(Pidfile {
            file,
            path,
            pid,
            privsep: OnceLock::new(),
        })
    }

    /// The pidfile's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid written in the file (the process that created it).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The device and inode of the file.
    pub(crate) fn file_id(&self) -> rustix::io::Result<(u64, u64)> {
        rustix::fs::fstat(&self.file).map(|s| (s.st_dev, s.st_ino))
    }

    /// From now on, the file is removed by `helper` (file number `index` of
    /// its grants).
    pub(crate) fn attach(&self, helper: Privsep, index: u32) {
        let _ = self.privsep.set((helper, index));
    }

    /// The open file (holding the lock).
    #[cfg(test)]
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whether a privileged helper removes the file.
    pub(crate) fn is_attached(&self) -> bool {
        self.privsep.get().is_some()
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        // A forked worker shares the description but must not remove its
        // parent's file; and the path may have been replaced by someone else's.
        if rustix::process::getpid().as_raw_pid() == self.pid && names_file(&self.path, &self.file)
        {
            // Removed while still locked, so nobody can take over a file that
            // is about to disappear (see `lock_fresh`); by the privileged
            // helper when this process dropped the right to.
            let removed = match self.privsep.get() {
                Some((helper, index)) => helper.remove_file(*index).is_ok(),
                None => false,
            };
            if !removed {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Opens `path` with `flags | O_CLOEXEC` and takes `lock` on it, retrying when
/// the file was unlinked between the open and the lock (its previous owner
/// exited cleanly): a lock on an unlinked inode would protect nothing.
pub(crate) fn lock_fresh(path: &Path, flags: OFlags, lock: FlockOperation) -> Result<OwnedFd> {
    loop {
        let fd = rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::from_raw_mode(0o644))
            .map_err(|errno| Error::OpenPidfile {
                path: path.to_path_buf(),
                source: refused_link(path, errno),
            })?;
        match rustix::fs::flock(&fd, lock) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let pid = holder_pid(path, &fd)?;
                return Err(Error::AlreadyRunning {
                    pid,
                    path: path.to_path_buf(),
                });
            }
            Err(errno) => {
                return Err(Error::LockPidfile {
                    path: path.to_path_buf(),
                    source: errno.into(),
                });
            }
        }
        if names_file(path, &fd) {
            return Ok(fd);
        }
    }
}

/// The error of an open of `path` that failed with `errno`: a plain one,
/// unless `O_NOFOLLOW` met a symbolic link (`ELOOP`), which says so.
pub(crate) fn refused_link(path: &Path, errno: Errno) -> io::Error {
    let is_link = errno == Errno::LOOP
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a symbolic link, which is not followed; remove it or give the path it points to",
        )
    } else {
        errno.into()
    }
}

/// Whether `path` still names the file open as `fd`.
pub(crate) fn names_file(path: &Path, fd: impl AsFd) -> bool {
    match (rustix::fs::stat(path), rustix::fs::fstat(fd)) {
        (Ok(by_path), Ok(by_fd)) => {
            by_path.st_dev == by_fd.st_dev && by_path.st_ino == by_fd.st_ino
        }
        _ => false,
    }
}

/// The pid written by the holder of the lock on `fd`, waiting briefly for a
/// holder that has locked but not yet written.
pub(crate) fn holder_pid(path: &Path, fd: &OwnedFd) -> Result<i32> {
    let deadline = Instant::now().checked_add(HOLDER_WRITE_GRACE);
    loop {
        match read_pid_from(path, fd)? {
            Some(pid) => return Ok(pid),
            None if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(Error::LockPidfile {
                    path: path.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "locked by a process that wrote no pid",
                    ),
                });
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads and parses the pid in the file open as `fd`: `Ok(None)` for an empty
/// file, [`Error::InvalidPidfile`] for anything but a positive decimal number.
pub(crate) fn read_pid_from(path: &Path, fd: impl AsFd) -> Result<Option<i32>> {
    let mut file =
        File::from(
            fd.as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::ReadPidfile {
                    path: path.to_path_buf(),
                    source,
                })?,
        );
    let mut content = String::new();
    file.rewind()
        .and_then(|_| file.read_to_string(&mut content))
        .map_err(|source| Error::ReadPidfile {
            path: path.to_path_buf(),
            source,
        })?;
    parse_pid(path, &content)
}

/// Parses pidfile content: whitespace around a positive decimal number.
pub(crate) fn parse_pid(path: &Path, content: &str) -> Result<Option<i32>> {
    let trimmed = content.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    match trimmed.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Some(pid)),
        _ => Err(Error::InvalidPidfile {
            path: path.to_path_buf(),
            content: trimmed.chars().take(64).collect(),
        }),
    }
}

/// Truncates `file` and writes `pid` and a newline at offset 0.
pub(crate) fn write_pid(file: &mut File, pid: i32) -> io::Result<()> {
    use std::io::Write;
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(format!("{pid}\n").as_bytes())?;
    Ok(())
}

/// The process-group file of a daemon: the pgid as text, removed when the
/// owning process drops it. Not locked: the pidfile's lock is the liveness
/// signal.
#[derive(Debug)]
pub(crate) struct GroupFile {
    file: File,
    path: PathBuf,
    owner: i32,
}

impl GroupFile {
    /// Writes the calling process' group id into `path`.
    pub(crate) fn create(path: &Path) -> Result<GroupFile> {
        let wrap = |source: io::Error| Error::WritePgrpfile {
            path: path.to_path_buf(),
            source,
        };
        // Truncated and written like the pidfile: never through a link.
        let fd = rustix::fs::open(
            path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|errno| wrap(refused_link(path, errno)))?;
        let mut file = File::from(fd);
        write_pid(&mut file, rustix::process::getpgrp().as_raw_pid()).map_err(wrap)?;
        Ok(GroupFile {
            file,
            path: path.to_path_buf(),
            owner: rustix::process::getpid().as_raw_pid(),
        })
    }
}

impl Drop for GroupFile {
    fn drop(&mut self) {
        if rustix::process::getpid().as_raw_pid() == self.owner
            && names_file(&self.path, &self.file)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whoever may write the directory could point a link at a file of
    /// root's: neither the pidfile nor the process-group file writes
    /// through it.
    #[test]
    fn a_symbolic_link_at_the_path_is_refused_and_its_target_untouched() {
        let dir = std::env::temp_dir().join(format!("ufork-pidlink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "important\n").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = Pidfile::create(&link).unwrap_err();
        assert!(matches!(err, Error::OpenPidfile { .. }), "{err:?}");
        assert!(
            err.report().contains("is a symbolic link"),
            "{}",
            err.report()
        );
        let err = GroupFile::create(&link).unwrap_err();
        assert!(
            err.report().contains("is a symbolic link"),
            "{}",
            err.report()
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "important\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_pid_accepts_trimmed_positive_numbers_only() {
        let path = Path::new("p");
        assert_eq!(parse_pid(path, " 42\n").unwrap(), Some(42));
        assert_eq!(parse_pid(path, "\n").unwrap(), None);
        assert!(matches!(
            parse_pid(path, "0"),
            Err(Error::InvalidPidfile { .. })
        ));
        assert!(matches!(
            parse_pid(path, "-3"),
            Err(Error::InvalidPidfile { .. })
        ));
        assert!(matches!(
            parse_pid(path, "12x"),
            Err(Error::InvalidPidfile { .. })
        ));
    }
}
