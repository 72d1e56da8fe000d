//! The extension point: a [`Layer`] adds per-worker resources, child setup and
//! descriptors of its own to the arbiter's poll loop, without core knowing it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use crate::handle::{Handle, Shared};
use crate::scoreboard::Scoreboard;
use crate::{ExitRecord, Vitals};

/// Names one descriptor a layer registered with the poll loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// What a registered descriptor is polled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Interest {
    /// Wake when it is readable.
    pub readable: bool,
    /// Wake when it is writable.
    pub writable: bool,
}

impl Interest {
    /// Readable only.
    pub const READABLE: Self = Self {
        readable: true,
        writable: false,
    };
    /// Writable only.
    pub const WRITABLE: Self = Self {
        readable: false,
        writable: true,
    };
    /// Readable and writable.
    pub const BOTH: Self = Self {
        readable: true,
        writable: true,
    };
}

/// What `poll` reported for a registered descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Readiness {
    /// Data (or EOF) to read.
    pub readable: bool,
    /// Room to write.
    pub writable: bool,
    /// The other end is closed.
    pub hangup: bool,
    /// An error condition.
    pub error: bool,
}

/// A worker about to be set up in the child, as [`Layer::in_child`] sees it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ChildInfo {
    /// The slot.
    pub slot: usize,
    /// The generation in that slot.
    pub generation: u32,
}

/// A worker just forked, as [`Layer::spawned`] sees it in the arbiter.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Spawn {
    /// The slot.
    pub slot: usize,
    /// The generation in that slot.
    pub generation: u32,
    /// The worker's pid.
    pub pid: i32,
}

/// An extension of the arbiter. Every method has a default that does nothing.
///
/// Calls happen on the arbiter's thread, inside its single-threaded loop, except
/// [`in_child`](Layer::in_child), which runs in the freshly forked worker before
/// the post-fork hook and the worker function.
///
/// Descriptors a layer registers with [`Context::register`] belong to the
/// arbiter side: the child closes them right after fork (0, 1 and 2 excepted), so
/// a worker never holds another worker's pipes.
pub trait Layer: Send {
    /// The loop is starting: register long-lived descriptors here.
    fn started(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// In the arbiter, before forking a worker for `slot`: prepare what it will
    /// need (pipes, say). An error skips this spawn; the slot is retried later.
    ///
    /// # Errors
    ///
    /// Any I/O error preparing the resources.
    fn prepare(&mut self, slot: usize, generation: u32) -> io::Result<()> {
        let _ = (slot, generation);
        Ok(())
    }

    /// In the arbiter: the fork after a successful [`prepare`](Layer::prepare)
    /// failed, or another layer's `prepare` did; release what was prepared.
    fn fork_failed(&mut self, slot: usize) {
        let _ = slot;
    }

    /// In the child, right after fork: set the worker up (point fds 1 and 2 at
    /// a pipe, say). An error ends the worker with `EX_OSERR`.
    ///
    /// # Errors
    ///
    /// Any I/O error setting the child up.
    fn in_child(&mut self, child: &ChildInfo) -> io::Result<()> {
        let _ = child;
        Ok(())
    }

    /// In the arbiter, after the fork: close the child's ends, register fds.
    fn spawned(&mut self, spawn: &Spawn, ctx: &mut Context<'_>) {
        let _ = (spawn, ctx);
    }

    /// A descriptor this layer registered is ready.
    fn event(&mut self, token: Token, readiness: Readiness, ctx: &mut Context<'_>) {
        let _ = (token, readiness, ctx);
    }

    /// A worker was reaped (called before the child-exit hook).
    fn exited(&mut self, record: &ExitRecord, ctx: &mut Context<'_>) {
        let _ = (record, ctx);
    }

    /// A stop began (graceful or immediate); workers are still running.
    fn stopping(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// SIGUSR1 arrived: reopen log files.
    fn reopen(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// SIGUSR2 or [`Handle::upgrade`]: start an in-place upgrade if this
    /// layer can (see [`Upgrader`](crate::upgrade::Upgrader)); return whether
    /// it took the request. Later layers are not asked once one did.
    fn upgrade(&mut self, ctx: &mut Context<'_>) -> bool {
        let _ = ctx;
        false
    }

    /// Called once per loop iteration, after events were handled.
    fn tick(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// The next time this layer wants [`tick`](Layer::tick) called even if no
    /// event arrives; `None` when it has no deadline.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// Every worker is gone and the loop has ended; `run` returns next.
    fn stopped(&mut self) {}
}

#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) token: Token,
    pub(crate) layer: usize,
    pub(crate) fd: RawFd,
    /// Which open file `fd` was when registered (device and inode): a
    /// number the layer closed and the process reused for something else
    /// is never polled for the layer nor closed in a child.
    pub(crate) id: Option<FileId>,
    pub(crate) interest: Interest,
}

/// Device and inode of an open descriptor.
pub(crate) type FileId = (u64, u64);

/// The device and inode `fd` refers to now, if it is open.
pub(crate) fn file_id(fd: BorrowedFd<'_>) -> Option<FileId> {
    rustix::fs::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino))
}

impl Registration {
    /// Whether `fd` is still the descriptor that was registered.
    pub(crate) fn still_open(&self) -> bool {
        self.id.is_some() && crate::sys::registered_file_id(self.fd) == self.id
    }
}

/// The descriptors layers registered.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) entries: Vec<Registration>,
    next: u64,
}

impl Registry {
    /// The registered descriptors, with what each was when registered.
    pub(crate) fn fds(&self) -> impl Iterator<Item = (RawFd, Option<FileId>)> + '_ {
        self.entries.iter().map(|r| (r.fd, r.id))
    }
}

/// What a layer may do from inside the loop.
pub struct Context<'a> {
    pub(crate) layer: usize,
    pub(crate) registry: &'a mut Registry,
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) board: &'a Arc<Scoreboard>,
    pub(crate) notes: &'a Arc<OwnedFd>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// Adds `fd` to the poll loop; [`Layer::event`] hears of it with the token.
    /// Every worker forked from now on closes it right after fork (unless it
    /// is 0, 1 or 2).
    ///
    /// The layer keeps `fd` open until it calls [`deregister`](Self::deregister).
    /// Core remembers which open file the descriptor was (device and inode):
    /// should the layer close it anyway and the number be reused, the new
    /// descriptor is neither polled for the layer nor closed in workers, and
    /// the registration is dropped with a warning.
    pub fn register(&mut self, fd: BorrowedFd<'_>, interest: Interest) -> Token {
        let token = Token(self.registry.next);
        self.registry.next = self.registry.next.wrapping_add(1);
        self.registry.entries.push(Registration {
            token,
            layer: self.layer,
            fd: fd.as_raw_fd(),
            id: file_id(fd),
            interest,
        });
        token
    }

    /// Changes what a registered descriptor is polled for.
    pub fn reregister(&mut self, token: Token, interest: Interest) {
        if let Some(entry) = self.registry.entries.iter_mut().find(|e| e.token == token) {
            entry.interest = interest;
        }
    }

    /// Removes a descriptor from the poll loop (before closing it).
    pub fn deregister(&mut self, token: Token) {
        self.registry.entries.retain(|e| e.token != token);
    }

    /// A handle to control the pool: stop, scale, restart, snapshot. Commands
    /// take effect in the loop's next iteration.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(self.shared),
        }
    }

    /// Reports into a slot's scoreboard cell on the worker's behalf (for
    /// workers that speak another protocol, like sd_notify).
    pub fn vitals(&self, slot: usize) -> Option<Vitals> {
        (slot < self.board.capacity())
            .then(|| Vitals::new(Arc::clone(self.board), slot, Some(Arc::clone(self.notes))))
    }
}
