//! Workers' stdin as a pipe the arbiter side writes to (uFork's `Worker.send`).

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// The arbiter's ends of the stdin pipes, by slot: (pid, write end).
pub(crate) type Table = Mutex<Vec<Option<(i32, Arc<OwnedFd>)>>>;

/// Sends bytes to a worker's stdin, from any thread. Made by
/// [`Capture::stdin`](crate::Capture::stdin) when the capture was built with
/// [`stdin_pipe`](crate::CaptureBuilder::stdin_pipe); cheap to clone.
#[derive(Clone)]
pub struct StdinHandle {
    pub(crate) table: Arc<Table>,
}

impl fmt::Debug for StdinHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdinHandle").finish_non_exhaustive()
    }
}

impl StdinHandle {
    /// Writes all of `bytes` to the stdin of the worker now in `slot`. Blocks
    /// while its pipe is full (the worker is not reading): do not call it from
    /// the arbiter's own thread (a layer) with more than a pipe's worth.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if no worker runs in `slot`, [`Error::Send`] if the
    /// write fails (the worker exited or closed its stdin).
    pub fn send(&self, slot: usize, bytes: &[u8]) -> Result<()> {
        let fd = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(slot)
            .and_then(|entry| entry.as_ref().map(|(_, fd)| Arc::clone(fd)))
            .ok_or(Error::NoWorker { slot })?;
        // Written without the table's lock, so a full pipe does not block the
        // arbiter's bookkeeping.
        crate::sink::write_fd(std::os::fd::AsFd::as_fd(&*fd), bytes)
            .map_err(|source| Error::Send { slot, source })
    }

    /// The pid of the worker whose stdin [`send`](Self::send) would write
    /// to, if one runs in `slot`.
    pub fn pid(&self, slot: usize) -> Option<i32> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(slot)
            .and_then(|entry| entry.as_ref().map(|(pid, _)| *pid))
    }
}
