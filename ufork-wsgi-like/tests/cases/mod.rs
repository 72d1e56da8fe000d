//! Tests grouped by feature, in the crate's one integration binary.

mod access;
mod context;
mod drain;
mod even;
mod extremes;
mod static_files;
mod stream;
mod targets;
mod unix;
mod unread;
