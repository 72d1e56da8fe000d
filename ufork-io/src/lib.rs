//! Capture of every worker's stdout and stderr into the arbiter, as a
//! [`ufork_core::Layer`]: whole lines, prefixed with the worker that wrote
//! them, never lost, never blocking supervision.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod capture;
mod error;
mod line;
mod logger;
mod sink;
mod stdin;

pub use capture::{
    CONTINUES, Capture, CaptureBuilder, DEFAULT_MAX_LINE, DEFAULT_QUEUE_BYTES, LineInfo,
    NO_NEWLINE, Prefix,
};
pub use error::{Error, Result};
pub use logger::ArbiterLog;
pub use sink::{Counters, Sink, Stream};
pub use stdin::StdinHandle;
