//! The helper's side: the grants it was forked with, and the loop that
//! serves the arbiter's requests on them until the channel closes.
//!
//! Nothing here logs or prints: the helper is a fork of a process whose
//! logger and output it must not touch.

use std::ffi::CStr;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use rustix::process::{Pid, Signal};
use rustix::thread::{CapabilitySet, CapabilitySets};

use super::wire::{self, REQUEST_LEN, Request};
use crate::rotate::{self, Follow};

/// The name the helper shows in `ps` and /proc/PID/comm.
pub(crate) const NAME: &CStr = c"ufork-privsep";

/// A log the helper may rotate and reopen.
#[derive(Debug)]
pub(crate) struct LogGrant {
    /// The log's directory, opened when the helper was made: a directory
    /// renamed or replaced by a symlink later does not move the helper.
    pub(crate) dir: OwnedFd,
    /// The file's name in `dir`.
    pub(crate) name: PathBuf,
    pub(crate) backups: usize,
    pub(crate) mode: u32,
    /// Who may own the file the helper hands out, besides root.
    pub(crate) owners: Vec<u32>,
}

/// A file the helper may remove (on request, and when it finishes).
#[derive(Debug)]
pub(crate) struct FileGrant {
    pub(crate) dir: OwnedFd,
    pub(crate) name: PathBuf,
    /// The file's device and inode when granted: only that file is removed,
    /// never one that replaced it.
    pub(crate) id: (u64, u64),
    /// A pidfile: at the end it is removed only if nobody holds its lock
    /// (the lock holder asks for it by request, while it holds the lock).
    pub(crate) pidfile: bool,
    pub(crate) removed: bool,
}

/// Everything the helper may do: fixed when it is forked.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    pub(crate) logs: Vec<LogGrant>,
    pub(crate) files: Vec<FileGrant>,
}

impl Grants {
    /// The descriptors the helper keeps.
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        let logs = self.logs.iter().map(|g| g.dir.as_raw_fd());
        logs.chain(self.files.iter().map(|g| g.dir.as_raw_fd()))
            .collect()
    }

    /// Carries out one request; an opened log comes back as its descriptor.
    fn answer(&mut self, request: Request) -> io::Result<Option<OwnedFd>> {
        let log = |n: u32| {
            usize::try_from(n)
                .ok()
                .and_then(|n| self.logs.get(n))
                .ok_or_else(|| io::Error::from(Errno::INVAL))
        };
        match request {
            Request::RotateLog(n) => {
                let grant = log(n)?;
                rotate::shift(grant.dir.as_fd(), &grant.name, grant.backups)?;
                Ok(Some(create(grant)?))
            }
            Request::ReopenLog(n) => Ok(Some(open(log(n)?)?)),
            Request::RemoveFile(n) => {
                let grant = usize::try_from(n)
                    .ok()
                    .and_then(|n| self.files.get_mut(n))
                    .ok_or_else(|| io::Error::from(Errno::INVAL))?;
                if !grant.removed && names(grant) {
                    remove(grant)?;
                }
                Ok(None)
            }
            Request::Finish => {
                self.clean_up();
                Ok(None)
            }
        }
    }

    /// Removes every granted file not removed yet that still is the file
    /// granted: a pidfile only if its lock is free (the arbiter that held
    /// it is gone), taken while removing so nobody takes over a file about
    /// to disappear.
    pub(crate) fn clean_up(&mut self) {
        for grant in self.files.iter_mut().filter(|g| !g.removed) {
            if !grant.pidfile {
                if names(grant) {
                    let _ = remove(grant);
                }
                continue;
            }
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let Ok(fd) = rustix::fs::openat(&grant.dir, &grant.name, flags, Mode::empty()) else {
                continue;
            };
            let same = rustix::fs::fstat(&fd).is_ok_and(|s| (s.st_dev, s.st_ino) == grant.id);
            if same
                && rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok()
                && names(grant)
            {
                let _ = remove(grant);
            }
        }
    }
}

/// The log at the grant's name, opened (created if missing) for the
/// arbiter: see [`vetted`].
fn open(grant: &LogGrant) -> io::Result<OwnedFd> {
    let (file, _) = rotate::open_log_at(grant.dir.as_fd(), &grant.name, grant.mode, Follow::No)?;
    vetted(file.into(), grant)
}

/// A fresh log at the grant's name, after a rotation renamed the old one:
/// created here and now, or an error (`EEXIST`) if something was put at
/// the name between the rename and the create; never opened.
fn create(grant: &LogGrant) -> io::Result<OwnedFd> {
    let flags = OFlags::WRONLY
        | OFlags::APPEND
        | OFlags::CLOEXEC
        | OFlags::CREATE
        | OFlags::EXCL
        | OFlags::NOFOLLOW
        | OFlags::NONBLOCK;
    let mode = Mode::from_raw_mode(grant.mode);
    let fd = rustix::fs::openat(&grant.dir, &grant.name, flags, mode)?;
    // The umask may have taken bits away.
    rustix::fs::fchmod(&fd, mode)?;
    rustix::fs::fcntl_setfl(&fd, OFlags::APPEND)?;
    vetted(fd, grant)
}

/// `fd` if the arbiter may have it: a file with one name only (`EMLINK`
/// otherwise: a hard link to a file of root's, planted at the log's name
/// where `fs.protected_hardlinks` is 0, would hand that file out), owned by
/// root or a user the grant names (`EPERM` otherwise). A refused `fd` is
/// closed.
fn vetted(fd: OwnedFd, grant: &LogGrant) -> io::Result<OwnedFd> {
    let stat = rustix::fs::fstat(&fd)?;
    if stat.st_nlink != 1 {
        return Err(Errno::MLINK.into());
    }
    if stat.st_uid != 0 && !grant.owners.contains(&stat.st_uid) {
        return Err(Errno::PERM.into());
    }
    Ok(fd)
}

/// Whether the grant's path (not following a symlink) is the file granted.
fn names(grant: &FileGrant) -> bool {
    rustix::fs::statat(&grant.dir, &grant.name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| (s.st_dev, s.st_ino) == grant.id)
}

fn remove(grant: &mut FileGrant) -> io::Result<()> {
    match rustix::fs::unlinkat(&grant.dir, &grant.name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {
            grant.removed = true;
            Ok(())
        }
        Err(errno) => Err(errno.into()),
    }
}

/// The helper's life after the fork: guards first (it dies with the
/// process that made it, `parent`), then the loop. Returns the exit code.
pub(crate) fn run(parent: Pid, channel: &OwnedFd, grants: &mut Grants) -> i32 {
    // The channel's end of stream is the normal way out; this guards the
    // case where a copy of the arbiter's end outlives the arbiter.
    if rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err()
        || rustix::process::getppid() != Some(parent)
    {
        return 1;
    }
    let _ = rustix::thread::set_name(NAME);
    keep_only_file_capabilities();
    serve(channel, grants);
    0
}

/// Root keeps its uid but only the capabilities the grants need: override
/// file permissions (open, rename and unlink in a directory it may not
/// write otherwise) and act as any file's owner (a sticky directory). Where
/// capabilities cannot be changed, it carries on with what it has.
fn keep_only_file_capabilities() {
    let keep = CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH | CapabilitySet::FOWNER;
    if let Ok(current) = rustix::thread::capabilities(None) {
        let _ = rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: current.effective & keep,
                permitted: current.permitted & keep,
                inheritable: CapabilitySet::empty(),
            },
        );
    }
}

/// Serves requests until the channel ends (or breaks), or `Finish`; cleans
/// up at the end either way.
pub(crate) fn serve(channel: &OwnedFd, grants: &mut Grants) {
    loop {
        let mut buf = [0u8; REQUEST_LEN + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            channel,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        // Descriptors sent to the helper are never used: close them.
        control.drain().for_each(drop);
        let request = match received {
            Ok(msg) if msg.bytes == 0 => break,
            Ok(msg) => Request::decode(buf.get(..msg.bytes).unwrap_or(&buf)),
            Err(Errno::INTR) => continue,
            Err(_) => break,
        };
        let outcome = match request {
            Some(request) => grants.answer(request),
            None => Err(Errno::INVAL.into()),
        };
        if reply(channel.as_fd(), &outcome).is_err() || request == Some(Request::Finish) {
            break;
        }
    }
    grants.clean_up();
}

fn reply(channel: BorrowedFd<'_>, outcome: &io::Result<Option<OwnedFd>>) -> io::Result<()> {
    let answer = wire::encode_answer(outcome);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Ok(Some(fd)) = outcome {
        fds = [fd.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    loop {
        match rustix::net::sendmsg(
            channel,
            &[IoSlice::new(&answer)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// The directory and name of `path` for a grant: its parent (`.` for a bare
/// name) opened as a directory, and its last component.
pub(crate) fn split(path: &Path) -> io::Result<(OwnedFd, PathBuf)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((dir, PathBuf::from(name)))
}
