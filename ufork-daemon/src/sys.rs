//! The system calls rustix has no safe wrapper for: `fork`, `_exit`, and
//! what turns a fork into the privileged helper (closing inherited
//! descriptors, ignoring signals, `dup3` over a descriptor in place).
//! Everything else goes through rustix's safe API.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

/// Which side of a fork the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The calling process; the child has this pid.
    Parent(i32),
}

/// Forks the calling process.
///
/// Unlike an arbiter's worker, the daemon *does* come back into the caller's
/// stack: it is the process that carries on with the program. That is sound
/// because the launcher is required (and documented) to be single-threaded
/// when it daemonizes, so the child's copy of every lock is in the state the
/// only thread left it in.
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: libc's fork runs the atfork handlers, so malloc stays usable in
    // the child; the launcher is single-threaded by contract (see
    // `Daemonize::start`), so no lock in the child can be held by a thread
    // that no longer exists.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Unblocks `signals` on the calling thread (numbers that are no signal are
/// skipped).
pub(crate) fn unblock_signals(signals: &[i32]) {
    if signals.is_empty() {
        return;
    }
    // SAFETY: `set` is a valid signal set, initialised by sigemptyset before
    // sigaddset and pthread_sigmask read it; a null old-set pointer is
    // allowed. Changing this thread's mask has no memory-safety contract.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(set.as_mut_ptr());
        for &signal in signals {
            libc::sigaddset(set.as_mut_ptr(), signal);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Ends the calling process at once with `code`, without running atexit
/// handlers, destructors or std's stdout flush: a forked intermediate must not
/// flush or drop what belongs to the launcher.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Turns the calling process, just forked, into a helper that runs `body`
/// and exits with its code: every descriptor but those in `keep` is closed
/// (0, 1 and 2 too, unless kept), the signals a stop or a reload sends to a
/// whole process group or cgroup are ignored (the helper's life is its
/// channel's, not theirs), the signal mask is emptied, and a panic in `body`
/// ends the process with 70 (EX_SOFTWARE) instead of unwinding into the
/// caller's stack. Never returns.
///
/// Memory the fork copied may hold `OwnedFd`s for the numbers closed here:
/// they are never used nor dropped, because the process ends with `_exit`
/// as soon as `body` returns, and `body` only touches what it captured.
pub(crate) fn become_helper(keep: &[RawFd], body: impl FnOnce() -> i32) -> ! {
    close_all_except(keep);
    // 0, 1 and 2 on /dev/null: a descriptor the helper opens later must
    // never take their numbers, where a stray write (a panic message) would
    // land in it.
    if let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
        if null.as_raw_fd() <= 2 {
            // It took the number of a standard stream (0, closed above):
            // stays open as that stream.
            let _ = null.into_raw_fd();
        }
    }
    for signal in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler, so no code runs in signal
        // context; `signal` only changes this process' disposition.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    // SAFETY: `set` is a valid, initialised (emptied) signal set that lives
    // across both calls; a null old-set pointer is allowed.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
    }
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(70);
    exit_now(code)
}

/// Closes every descriptor not in `keep`: `close_range(2)` over the gaps,
/// or each number listed in /proc/self/fd where that call is missing.
fn close_all_except(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    let mut first = 0u32;
    let mut ranges = Vec::new();
    for &fd in &keep {
        if fd > first {
            ranges.push((first, fd - 1));
        }
        first = fd.saturating_add(1);
    }
    ranges.push((first, u32::MAX));
    for (low, high) in ranges {
        // SAFETY: close_range only closes descriptors; see `become_helper`
        // for why no owner of these numbers is used again.
        let done = unsafe { libc::syscall(libc::SYS_close_range, low, high, 0u32) } == 0;
        if !done {
            close_listed(low, high);
        }
    }
}

fn close_listed(low: u32, high: u32) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let numbers: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| (low..=high).contains(fd))
        .collect();
    for fd in numbers {
        if let Ok(fd) = RawFd::try_from(fd) {
            // SAFETY: as in `close_all_except` (the directory's own
            // descriptor is closed already and fails harmlessly).
            unsafe { libc::close(fd) };
        }
    }
}

/// Points every descriptor from 3 up that would survive an exec (no
/// `FD_CLOEXEC`) at `null`, in place; returns how many there were. Such a
/// descriptor came through the exec that started this process and was never
/// taken: std and rustix open every descriptor CLOEXEC, and taking an
/// inherited one (socket activation's, say) sets the flag. A shell's command
/// substitution (`out=$(cmd 3>&1)`) is such a descriptor, and its reader waits
/// until every copy is closed.
///
/// Replaced rather than closed: `dup3` keeps each number open, so whoever
/// might own one (a program that cleared the flag on a descriptor it
/// opened) still holds a valid descriptor and closes it once; it only
/// reaches /dev/null now. Call it while the process has one thread, so no
/// number is closed and reused between the listing and the `dup3`.
///
/// `dup3` refuses a number at or above the soft `RLIMIT_NOFILE` (EBADF), and
/// an inherited descriptor may be there: the limit was lowered after it was
/// opened (`prlimit --nofile=128:128` over a shell's fd 251). Below the hard
/// limit, the soft one is raised past the number for that `dup3`, then put
/// back. At or above the hard limit, which only a privileged process can
/// raise, the number is closed instead: `open`, `dup` and `fcntl` hand out
/// no number at or above the limit, so it is never reused, and an owner's
/// own `close` of it later fails with EBADF, closing nothing of anyone's.
pub(crate) fn release_inherited(null: &OwnedFd) -> io::Result<usize> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2 && fd != null.as_raw_fd())
        .collect();
    let limit = getrlimit(Resource::Nofile);
    let mut released = 0;
    for fd in listed {
        // SAFETY: F_GETFD only reads a number's flags; a number that is not
        // open (the listing's own directory, closed by now) fails with EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 || flags & libc::FD_CLOEXEC != 0 {
            continue;
        }
        // `fd` > 2 (filtered above), so both conversions hold.
        let number = u64::try_from(fd).unwrap_or(u64::MAX);
        let reaches = |bound: Option<u64>| bound.is_some_and(|bound| number >= bound);
        if reaches(limit.maximum) {
            // SAFETY: `fd` is open (just read) and at or above the hard
            // limit, so this process is never given that number again while
            // that limit stands (raising it takes CAP_SYS_RESOURCE, and no
            // ufork crate does): whoever might own it gets EBADF from its
            // own close, never closes a descriptor opened since.
            unsafe { libc::close(fd) };
            released += 1;
            continue;
        }
        let raise = reaches(limit.current);
        if raise {
            let past = rustix::process::Rlimit {
                current: number.checked_add(1),
                ..limit
            };
            setrlimit(Resource::Nofile, past)?;
        }
        // SAFETY: `null` is open and owned by a live `OwnedFd`, `fd` is open
        // (just read) and below the soft limit; dup3 replaces what `fd`'s
        // number refers to atomically, so that number never dangles and any
        // owner of it keeps one valid descriptor to close.
        let done = unsafe { libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) } != -1;
        let error = io::Error::last_os_error();
        if raise {
            setrlimit(Resource::Nofile, limit)?;
        }
        if !done {
            return Err(error);
        }
        released += 1;
    }
    Ok(released)
}

/// Points `fd` at /dev/null, in place: the number stays open and owned by
/// the same `OwnedFd`, but reaches nothing any more. For a process forked
/// from the owner of a channel it must not use (a worker must neither send
/// to the privileged helper nor take its answers).
pub(crate) fn point_at_devnull(fd: &OwnedFd) -> io::Result<()> {
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // SAFETY: both numbers are open and owned by live `OwnedFd`s (`null`
    // here, `fd` by the caller's); dup3 replaces what `fd`'s number refers
    // to atomically, so that number never dangles and keeps its one owner.
    let done = unsafe { libc::dup3(null.as_raw_fd(), fd.as_raw_fd(), libc::O_CLOEXEC) };
    if done == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
