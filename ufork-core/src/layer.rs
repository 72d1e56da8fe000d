//! The extension point: a [`Layer`] adds per-worker resources, child setup and
//! descriptors of its own to the arbiter's poll loop, without core knowing it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
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
/// arbiter side: the child closes them (and core's duplicates of them) right
/// after fork (0, 1 and 2 excepted), so a worker never holds another worker's
/// pipes.
pub trait Layer: Send {
    /// The loop is starting: register long-lived descriptors here. No
    /// worker is forked yet; a stop signal that arrives by now (one the
    /// caller held blocked and unblocks here, say) is taken before the
    /// first fork.
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
    /// Core's own duplicate of the registered descriptor: what is polled,
    /// so the file polled for the layer is the one it registered for as
    /// long as the registration lasts, whatever happens to its number.
    pub(crate) fd: OwnedFd,
    /// The layer's descriptor number, closed in a child only while it is
    /// still the open file `fd` duplicates.
    pub(crate) number: RawFd,
    pub(crate) interest: Interest,
}

impl Registration {
    /// Whether the layer's number is still the descriptor it registered.
    pub(crate) fn still_open(&self) -> bool {
        crate::sys::same_open_file(self.number, self.fd.as_fd())
    }
}

/// The descriptors layers registered.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) entries: Vec<Registration>,
    next: u64,
}

impl Registry {
    /// The layers' numbers, each with core's duplicate of what it was when
    /// registered.
    pub(crate) fn fds(&self) -> impl Iterator<Item = (RawFd, RawFd)> + '_ {
        self.entries.iter().map(|r| (r.number, r.fd.as_raw_fd()))
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
    /// Core keeps a duplicate of `fd` (CLOEXEC) until
    /// [`deregister`](Self::deregister), and polls that: what is polled for
    /// the layer is always the open file it registered, never a descriptor
    /// that later took the same number. The layer keeps `fd` open until it
    /// deregisters. Should it close `fd` anyway, core notices at the next
    /// event on the registration and drops it with a warning, and workers
    /// forked meanwhile close the number only while it is still that open
    /// file (compared with `kcmp(2)`; where the kernel refuses it, by device
    /// and inode), so a descriptor that reused the number is left alone.
    ///
    /// Should the duplicate fail (no descriptor left), the error is logged
    /// and the token never hears an event; use
    /// [`try_register`](Self::try_register) to see the error.
    pub fn register(&mut self, fd: BorrowedFd<'_>, interest: Interest) -> Token {
        match self.try_register(fd, interest) {
            Ok(token) => token,
            Err(e) => {
                log::error!(target: "ufork", "cannot register a layer's descriptor with the poll loop: {e}");
                self.next_token()
            }
        }
    }

    /// [`register`](Self::register), failing when core cannot duplicate
    /// `fd`.
    ///
    /// # Errors
    ///
    /// The duplicate failed (out of descriptors, say).
    pub fn try_register(&mut self, fd: BorrowedFd<'_>, interest: Interest) -> io::Result<Token> {
        let dup = rustix::io::fcntl_dupfd_cloexec(fd, 0)?;
        let token = self.next_token();
        self.registry.entries.push(Registration {
            token,
            layer: self.layer,
            fd: dup,
            number: fd.as_raw_fd(),
            interest,
        });
        Ok(token)
    }

    fn next_token(&mut self) -> Token {
        let token = Token(self.registry.next);
        self.registry.next = self.registry.next.wrapping_add(1);
        token
    }

    /// Changes what a registered descriptor is polled for.
    pub fn reregister(&mut self, token: Token, interest: Interest) {
        if let Some(entry) = self.registry.entries.iter_mut().find(|e| e.token == token) {
            entry.interest = interest;
        }
    }

    /// Removes a descriptor from the poll loop (before closing it) and closes
    /// core's duplicate.
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
