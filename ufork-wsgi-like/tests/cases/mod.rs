//! Tests grouped by feature, in the crate's one integration binary.

mod context;
mod extremes;
mod stream;
mod targets;
