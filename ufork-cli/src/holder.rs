//! Which process a pidfile really names, before anything signals it.
//!
//! A pidfile holds the pid its arbiter saw for itself. From another pid
//! namespace that number names another process: a pool started under
//! `unshare --pid --fork` (or as a container's entrypoint) writes `1`, and a
//! `kill -HUP 1` from the host would hit the host's init. So a pid from a
//! pidfile is signalled only once it is verified: the process that holds the
//! file's lock, as `/proc/locks` reports it (the kernel translates the pid
//! into the reader's pid namespace), must be the pid in the file, or be that
//! pid in its own namespace (the last `NSpid:` of its `/proc/PID/status`),
//! and have the file open (the lock table keeps the pid that took the lock,
//! which a forked worker sharing the file can outlive, and which may name
//! another process by then). A holder whose descriptors this user cannot
//! read is not verified: the control socket, or root, is the way then.
//! Where `/proc/locks` does not name the file by its device and inode (an
//! overlay file system reports other numbers than `stat`), the lock holders
//! whose open descriptors include the file count instead.
//!
//! The deciding part ([`parse_locks`], [`parse_nspid`], [`decide`]) reads no
//! file and is tested inline.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A process that holds a pidfile's lock, as seen from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid in this process' pid namespace.
    pub pid: i32,
    /// Its pids from this namespace inward (`NSpid:`); the last is the pid
    /// it sees for itself. Empty when unknown.
    pub nspid: Vec<i32>,
    /// Whether it has the pidfile open (`None`: its descriptors cannot be
    /// read from here, which counts as not verified). The lock table keeps
    /// the pid that took the lock,
    /// which outlives it when a forked worker still holds the file: a
    /// process with that pid now, without the file open, is someone else.
    pub has_file: Option<bool>,
}

/// The arbiter a pidfile names, verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arbiter {
    /// The pid to signal and wait for, in this pid namespace.
    pub pid: i32,
    /// The pid written in the pidfile (the arbiter's own view).
    pub file_pid: i32,
}

impl Arbiter {
    /// "pid N", or "pid N (pid M in its own pid namespace)".
    pub fn describe(&self) -> String {
        if self.pid == self.file_pid {
            format!("pid {}", self.pid)
        } else {
            format!(
                "pid {} (pid {} in its own pid namespace)",
                self.pid, self.file_pid
            )
        }
    }
}

/// Finds the process holding the lock of the pidfile at `path`, which says
/// `file_pid`, and checks it is that pid.
///
/// # Errors
///
/// Why the pid cannot be trusted, as a sentence for the user.
pub fn verify(path: &Path, file_pid: i32) -> Result<Arbiter, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot look at it: {}", crate::failure::io_text(&e)))?;
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let (major, minor) = (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev()));
    let mut pids = parse_locks(&locks, Some((major, minor, meta.ino())));
    if pids.is_empty() {
        // Device numbers that differ between stat and the lock table: ask
        // the exclusive flock holders whether they have the file open.
        pids = parse_locks(&locks, None)
            .into_iter()
            .filter(|&pid| has_open(pid, meta.dev(), meta.ino()) == Some(true))
            .collect();
    }
    let holders: Vec<Holder> = pids
        .into_iter()
        .map(|pid| Holder {
            pid,
            nspid: std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map(|s| parse_nspid(&s))
                .unwrap_or_default(),
            has_file: has_open(pid, meta.dev(), meta.ino()),
        })
        .collect();
    decide(file_pid, &holders)
}

/// The pids holding an exclusive `flock` in the text of `/proc/locks`: on
/// the file `(major, minor, inode)` when given, on any file otherwise.
/// Waiters (`->` lines) and pids not visible here (0) are left out.
pub fn parse_locks(text: &str, file: Option<(u32, u32, u64)>) -> Vec<i32> {
    let mut pids = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 32511 fe:00:5719767 0 EOF"
        let [_, kind, _, mode, pid, id, ..] = fields.as_slice() else {
            continue;
        };
        if *kind != "FLOCK" || *mode != "WRITE" {
            continue;
        }
        let Some(pid) = pid.parse::<i32>().ok().filter(|&p| p > 0) else {
            continue;
        };
        if let Some(want) = file {
            let mut parts = id.split(':');
            let got = (|| {
                let major = u32::from_str_radix(parts.next()?, 16).ok()?;
                let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
                let inode = parts.next()?.parse::<u64>().ok()?;
                Some((major, minor, inode))
            })();
            if got != Some(want) {
                continue;
            }
        }
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids
}

/// The `NSpid:` line of a `/proc/PID/status` text: the pid from the
/// reader's namespace inward.
pub fn parse_nspid(status: &str) -> Vec<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| {
            rest.split_whitespace()
                .map_while(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the process `pid` has the file `(dev, ino)` open; `None` when
/// its descriptors cannot be read (another user's process, say).
fn has_open(pid: i32, dev: u64, ino: u64) -> Option<bool> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.flatten().any(|entry| {
        std::fs::metadata(entry.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    }))
}

/// Which holder the pidfile's `file_pid` names: the one with that pid here,
/// or the one that has that pid in its own namespace.
///
/// # Errors
///
/// A sentence saying why no holder matches.
pub fn decide(file_pid: i32, holders: &[Holder]) -> Result<Arbiter, String> {
    let (all, holders): (&[Holder], Vec<&Holder>) = (
        holders,
        holders
            .iter()
            .filter(|h| h.has_file == Some(true))
            .collect(),
    );
    if holders.is_empty() {
        if let Some(h) = all.iter().find(|h| h.has_file.is_none()) {
            // Unverifiable is not verified: the lock table's pid may name
            // another process by now (one whose descriptors this user may
            // not read, yet may signal).
            return Err(format!(
                "it names pid {file_pid}, and its lock was taken by pid {}, but this user cannot read /proc/{}/fd to check that it still has the file open (run as root, or as the user who started the pool; a pool started with --user drops the right to read it)",
                h.pid, h.pid
            ));
        }
        if let Some(h) = all.first() {
            return Err(format!(
                "it names pid {file_pid}, but its lock was taken by pid {}, which does not have it open now (its arbiter is gone; a worker that shares the file may hold the lock a moment longer)",
                h.pid
            ));
        }
    }
    if let Some(h) = holders.iter().find(|h| h.pid == file_pid) {
        return Ok(Arbiter {
            pid: h.pid,
            file_pid,
        });
    }
    if let Some(h) = holders.iter().find(|h| h.nspid.last() == Some(&file_pid)) {
        return Ok(Arbiter {
            pid: h.pid,
            file_pid,
        });
    }
    match holders.first() {
        None => Err(format!(
            "it names pid {file_pid}, but no process visible from here holds its lock (is the pool in a pid namespace this one cannot see?)"
        )),
        Some(h) => Err(format!(
            "it names pid {file_pid}, but its lock is held by pid {}{}",
            h.pid,
            match h.nspid.last() {
                Some(own) if *own != h.pid => format!(" (pid {own} in its own pid namespace)"),
                _ => String::new(),
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "\
1: FLOCK  ADVISORY  WRITE 32511 fe:00:5719767 0 EOF
1: -> FLOCK  ADVISORY  WRITE 40000 fe:00:5719767 0 EOF
2: FLOCK  ADVISORY  READ 32511 fe:00:10133506 0 EOF
3: POSIX  ADVISORY  WRITE 2706 fe:00:10019296 0 EOF
4: FLOCK  ADVISORY  WRITE 0 fe:00:777 0 EOF
5: FLOCK  ADVISORY  WRITE 2678 fe:00:10019296 0 EOF
6: OFDLCK ADVISORY  WRITE -1 08:01:10019296 0 EOF
";

    #[test]
    fn locks_are_matched_by_device_and_inode() {
        assert_eq!(
            parse_locks(LOCKS, Some((0xfe, 0, 10019296))),
            vec![2678],
            "the POSIX lock and the OFD lock are not pidfile locks"
        );
        assert_eq!(parse_locks(LOCKS, Some((0xfe, 0, 5719767))), vec![32511]);
        // Read locks (someone's `ufork status`) and invisible pids do not count.
        assert_eq!(parse_locks(LOCKS, Some((0xfe, 0, 10133506))), vec![]);
        assert_eq!(parse_locks(LOCKS, Some((0xfe, 0, 777))), vec![]);
        assert_eq!(parse_locks(LOCKS, None), vec![32511, 2678]);
        assert_eq!(parse_locks("", None), vec![]);
        assert_eq!(parse_locks("garbage\n1: FLOCK\n", None), vec![]);
        assert_eq!(
            parse_locks(
                "1: FLOCK ADVISORY WRITE 12 zz:00:1 0 EOF\n",
                Some((0, 0, 1))
            ),
            vec![]
        );
    }

    #[test]
    fn nspid_lists_the_pid_from_here_inward() {
        let status = "Name:\tufork\nPid:\t6147\nNSpid:\t6147\t1\nPPid:\t6145\n";
        assert_eq!(parse_nspid(status), vec![6147, 1]);
        assert_eq!(parse_nspid("NSpid:\t42\n"), vec![42]);
        assert_eq!(parse_nspid("Name:\tx\n"), Vec::<i32>::new());
    }

    #[test]
    fn the_pid_in_the_file_must_be_the_lock_holder() {
        let here = Holder {
            pid: 500,
            nspid: vec![500],
            has_file: Some(true),
        };
        assert_eq!(
            decide(500, std::slice::from_ref(&here)),
            Ok(Arbiter {
                pid: 500,
                file_pid: 500
            })
        );
        // A pool in a child pid namespace wrote 1: signal its pid here.
        let inside = Holder {
            pid: 6147,
            nspid: vec![6147, 1],
            has_file: Some(true),
        };
        let arbiter = decide(1, std::slice::from_ref(&inside)).unwrap();
        assert_eq!(arbiter.pid, 6147);
        assert_eq!(
            arbiter.describe(),
            "pid 6147 (pid 1 in its own pid namespace)"
        );
        // The file says 1, the holder is someone else: never signal 1.
        let err = decide(1, std::slice::from_ref(&here)).unwrap_err();
        assert!(
            err.contains("pid 1") && err.contains("held by pid 500"),
            "{err}"
        );
        let err = decide(7, &[inside]).unwrap_err();
        assert!(err.contains("6147 (pid 1 in its own"), "{err}");
        let err = decide(1, &[]).unwrap_err();
        assert!(err.contains("no process visible"), "{err}");
        // Unknown NSpid: only an exact match counts.
        let unknown = Holder {
            pid: 9,
            nspid: vec![],
            has_file: None,
        };
        assert!(decide(1, std::slice::from_ref(&unknown)).is_err());
        // Descriptors we may not read: the lock table's pid may have been
        // reused by such a process, so it is not trusted.
        let err = decide(9, &[unknown]).unwrap_err();
        assert!(err.contains("cannot read /proc/9/fd"), "{err}");
        // The --user a pool switched to cannot read them either (the switch
        // makes the arbiter undumpable): the hint names who can.
        assert!(err.contains("the user who started the pool"), "{err}");
    }

    #[test]
    fn a_lock_holder_without_the_file_open_is_a_reused_pid() {
        // The arbiter that took the lock died; a forked worker still holds
        // the file, and the arbiter's pid now names another process.
        let reused = Holder {
            pid: 500,
            nspid: vec![500],
            has_file: Some(false),
        };
        let err = decide(500, &[reused]).unwrap_err();
        assert!(err.contains("does not have it open"), "{err}");
    }
}
