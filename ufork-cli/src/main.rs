//! Skeleton: the `ufork` binary.
#![forbid(unsafe_code)]
fn main() {}
