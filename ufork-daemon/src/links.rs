//! Which symbolic link a log opened by path may go through.
//!
//! A log is written by a process that is often root. A link at the log's
//! name, put there by another user who may write its directory, would point
//! those writes at any file of root's (`/etc/shadow`): the link is followed
//! only where nobody but root and this process' user could have put it.
//! `/dev/stdout` and `/dev/stderr` (links into `/proc/self/fd`, which a
//! container's log collector reads) pass: root's links in root's `/dev`.
//!
//! The rule, for the last component of the path:
//! - its directory must be *safe*: owned by root or by this process'
//!   effective user, and writable by nobody else (no group or other write
//!   bit), or sticky (`/tmp`: others add names there but cannot replace
//!   this one) — otherwise the path is opened with `O_NOFOLLOW`;
//! - in a safe directory, a link must be owned by root or by this process'
//!   effective user.
//!
//! The directories leading to it, and the links a followed one leads to,
//! are the administrator's choice: the rule is about the name a service
//! user can plant a link at, as the kernel's `fs.protected_symlinks` is
//! about sticky directories.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Stat};

/// Whether `uid` may own a link or directory this process trusts: root or
/// this process' effective user.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Whether a link at `name` (relative to `dir`) may be followed at all: its
/// directory is safe (see the module's rule).
pub(crate) fn safe_dir(dir: BorrowedFd<'_>, name: &Path) -> io::Result<bool> {
    let parent = match name.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stat = rustix::fs::statat(dir, parent, AtFlags::empty())?;
    Ok(is_safe_dir(&stat))
}

fn is_safe_dir(stat: &Stat) -> bool {
    let sticky = stat.st_mode & 0o1000 != 0;
    trusted(stat.st_uid) && (stat.st_mode & 0o022 == 0 || sticky)
}

/// In a safe directory: an error if `name` is a link owned by another user
/// (nothing at the name, or no link, is fine); whether it is a (trusted)
/// link. Only then may the open that follows follow a link: in a sticky
/// directory the owner of a file there may replace it with a link of theirs
/// between this check and the open, so the open is `O_NOFOLLOW` otherwise.
pub(crate) fn vet(dir: BorrowedFd<'_>, name: &Path) -> io::Result<bool> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat)
            if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink
                && !trusted(stat.st_uid) =>
        {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "it is a symbolic link owned by another user (uid {}), which is not followed; give the path it points to",
                    stat.st_uid
                ),
            ))
        }
        Ok(stat) => Ok(FileType::from_raw_mode(stat.st_mode) == FileType::Symlink),
        _ => Ok(false),
    }
}

/// The error of an `O_NOFOLLOW` open of `name` in an unsafe directory that
/// failed with `errno`: says so when it met a link.
pub(crate) fn refused(dir: BorrowedFd<'_>, name: &Path, errno: rustix::io::Errno) -> io::Error {
    let is_link = errno == rustix::io::Errno::LOOP
        && rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
    if is_link {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it is a symbolic link in a directory other users may write, which is not followed; give the path it points to",
        )
    } else {
        errno.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_stat(uid: u32, mode: u32) -> Stat {
        // A real `stat` with its owner and mode changed.
        let mut stat = rustix::fs::stat("/").unwrap();
        stat.st_uid = uid;
        stat.st_mode = 0o040000 | mode;
        stat
    }

    #[test]
    fn a_directory_is_safe_when_only_root_or_this_user_may_write_it() {
        let me = rustix::process::geteuid().as_raw();
        assert!(is_safe_dir(&dir_stat(0, 0o755)));
        assert!(is_safe_dir(&dir_stat(me, 0o700)));
        // /tmp: others add names but cannot replace this one.
        assert!(is_safe_dir(&dir_stat(0, 0o1777)));
        // Group-writable (Debian's /var/log is root:syslog 0775).
        assert!(!is_safe_dir(&dir_stat(0, 0o775)));
        assert!(!is_safe_dir(&dir_stat(0, 0o757)));
        // Another user's (the service user's own directory).
        let other = if me == 65534 { 65533 } else { 65534 };
        assert!(!is_safe_dir(&dir_stat(other, 0o755)));
    }
}
