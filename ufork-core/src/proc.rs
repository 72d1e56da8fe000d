//! Reading a worker's resource use from /proc. The arbiter reads it (rather
//! than the worker sampling itself) so that limits hold for a wedged worker
//! and for exec'd programs that know nothing of ufork.

use std::fs;

/// Resident set size of `pid` in bytes.
pub(crate) fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(u64::try_from(rustix::param::page_size()).ok()?))
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

/// `n * fraction`, rounded down, for a fraction in (0, 1].
pub(crate) fn fraction_of(n: u64, fraction: f64) -> u64 {
    let product = (n as f64) * fraction;
    if product >= u64::MAX as f64 {
        u64::MAX
    } else if product > 0.0 {
        // In range and non-negative (`as` would saturate anyway).
        #[allow(clippy::cast_possible_truncation)]
        let rounded_down = product as u64;
        rounded_down
    } else {
        0
    }
}

/// How many processes the kernel's OOM killer has killed: in this process'
/// cgroup (v2 `memory.events`, which counts its whole subtree, workers
/// included) when there is one, else system-wide (`/proc/vmstat`). A worker
/// ended by SIGKILL while this moved was most likely the OOM killer's.
pub(crate) fn oom_kills() -> Option<u64> {
    cgroup_oom_kills().or_else(|| {
        let vmstat = fs::read_to_string("/proc/vmstat").ok()?;
        oom_kill_field(&vmstat)
    })
}

fn cgroup_oom_kills() -> Option<u64> {
    let cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let events = fs::read_to_string(format!("/sys/fs/cgroup{}/memory.events", path.trim())).ok()?;
    oom_kill_field(&events)
}

/// The `oom_kill N` line of memory.events or /proc/vmstat.
pub(crate) fn oom_kill_field(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_is_read_from_memory_events_and_vmstat() {
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kill_field(events), Some(2));
        assert_eq!(oom_kill_field("pgfault 9\noom_kill 17\n"), Some(17));
        assert_eq!(oom_kill_field("oom_kill_disable 0\n"), None);
        assert_eq!(oom_kill_field(""), None);
    }

    #[test]
    fn fractions_of_a_limit_round_down_and_saturate() {
        assert_eq!(fraction_of(1024, 0.5), 512);
        assert_eq!(fraction_of(u64::MAX, 1.0), u64::MAX);
        assert_eq!(fraction_of(0, 1.0), 0);
    }
}
