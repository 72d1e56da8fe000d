//! Errors of this crate, one variant per step that can fail.

use std::io;

/// What went wrong building a [`Capture`](crate::Capture) or sending to a
/// worker's stdin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The builder method whose value is wrong.
        setting: &'static str,
        /// Why the value is refused.
        reason: &'static str,
    },
    /// Creating the writer's wake pipe failed.
    #[error("cannot create a pipe")]
    Pipe(#[source] io::Error),
    /// Starting the writer thread failed.
    #[error("cannot start the writer thread")]
    SpawnWriter(#[source] io::Error),
    /// No worker with a stdin pipe runs in that slot.
    #[error("no worker with a stdin pipe in slot {slot}")]
    NoWorker {
        /// The slot.
        slot: usize,
    },
    /// Writing to a worker's stdin failed (it exited or closed its stdin).
    #[error("cannot write to the stdin of worker {slot}")]
    Send {
        /// The slot.
        slot: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
