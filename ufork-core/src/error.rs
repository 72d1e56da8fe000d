//! Errors of the arbiter, one variant per step that can fail.

use std::io;

/// What went wrong while building or running an [`Arbiter`](crate::Arbiter).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The builder method whose value is wrong.
        setting: &'static str,
        /// Why the value is rejected.
        reason: String,
    },
    /// More workers were asked for than the scoreboard has slots.
    #[error(
        "cannot run {requested} workers: the scoreboard has {capacity} slots (raise Builder::capacity)"
    )]
    OverCapacity {
        /// Workers asked for.
        requested: usize,
        /// Slots in the scoreboard.
        capacity: usize,
    },
    /// Creating a pipe failed.
    #[error("cannot create a pipe")]
    Pipe(#[source] io::Error),
    /// Mapping the shared scoreboard failed.
    #[error("cannot map the shared scoreboard")]
    Scoreboard(#[source] io::Error),
    /// Installing or restoring a signal handler failed.
    #[error("cannot install the handler for signal {signal}")]
    Signal {
        /// The signal number.
        signal: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `poll(2)` failed in the monitor loop.
    #[error("poll failed in the monitor loop")]
    Poll(#[source] io::Error),
    /// `waitpid(2)` failed.
    #[error("cannot reap worker pid {pid}")]
    Wait {
        /// The worker's pid.
        pid: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another arbiter of this process is in `run` with signal handling (or
    /// as PID 1 / subreaper): one arbiter per process handles signals at a
    /// time. Turn [`Builder::handle_signals`](crate::Builder::handle_signals)
    /// off for the others.
    #[error("another arbiter of this process already handles signals")]
    AlreadyRunning,
    /// Binding or listening on a socket failed ([`listen`](crate::listen)).
    #[error("cannot listen on {address}")]
    Listen {
        /// The address, as given.
        address: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sockets handed over by socket activation (`LISTEN_FDS`) are unusable.
    #[error("socket activation: {reason}")]
    SocketActivation {
        /// What is wrong, naming the variable or descriptor.
        reason: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
