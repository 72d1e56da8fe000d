//! Errors of the server, one variant per step that can fail.

use std::io;
use std::net::SocketAddr;

/// What went wrong while setting up or running a [`Server`](crate::Server).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither an address to bind nor a listener was given.
    #[error("nothing to listen on: call bind or listener on the builder")]
    NoListener,
    /// A builder setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The builder method whose value is wrong.
        setting: &'static str,
        /// Why the value is rejected.
        reason: String,
    },
    /// An address to bind could not be resolved.
    #[error("cannot resolve the address {addr}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Creating a socket failed.
    #[error("cannot create a socket for {addr}")]
    Socket {
        /// The address the socket was for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Setting a socket option failed.
    #[error("cannot set {option} on the socket for {addr}")]
    SocketOption {
        /// The option.
        option: &'static str,
        /// The address the socket is for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Binding a socket failed.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Listening on a bound socket failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading the local address of a listener failed.
    #[error("cannot read the local address of a listener")]
    LocalAddr(#[source] io::Error),
    /// Opening the access log file failed.
    #[error("cannot open the access log {path}")]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Creating the event loop (epoll or its stop pipe) failed.
    #[error("cannot create the event loop")]
    EventLoop(#[source] io::Error),
    /// Waiting in the event loop failed.
    #[error("waiting for events failed")]
    Wait(#[source] io::Error),
    /// Starting a serving thread failed.
    #[error("cannot start a serving thread")]
    Thread(#[source] io::Error),
    /// Building the arbiter failed.
    #[error("cannot build the arbiter")]
    Build(#[source] ufork_core::Error),
    /// The arbiter's run failed.
    #[error("the arbiter failed")]
    Run(#[source] ufork_core::Error),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
