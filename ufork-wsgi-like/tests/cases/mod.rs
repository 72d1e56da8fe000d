//! Tests grouped by feature, in the crate's one integration binary.

mod stream;
