//! Reading a worker's resource use from /proc. The arbiter reads it (rather
//! than the worker sampling itself) so that limits hold for a wedged worker
//! and for exec'd programs that know nothing of ufork.

use std::fs;

/// Resident set size of `pid` in bytes.
pub(crate) fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Open descriptors of `pid`.
pub(crate) fn open_fds(pid: i32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Soft RLIMIT_NOFILE of `pid`.
pub(crate) fn nofile_limit(pid: i32) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Threads of the calling process.
pub(crate) fn thread_count() -> Option<usize> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
