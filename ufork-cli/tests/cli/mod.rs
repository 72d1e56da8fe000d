//! End-to-end tests for issue 14 (the command line a newcomer and a gunicorn
//! user expect) and the command's share of issue 10 (huge values), one
//! module per concern.

mod config;
mod flags;
mod lifecycle;
mod limits;
mod serve_unix;
