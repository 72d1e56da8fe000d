//! The system calls of an upgrade that need `unsafe`: forking and exec-ing the
//! new arbiter with its descriptors at fixed numbers and `LISTEN_PID` set to
//! its own pid (std's `Command` cannot: the pid is only known after the fork),
//! and adopting the descriptors an upgrading arbiter handed over.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first handed-over descriptor (`SD_LISTEN_FDS_START`).
pub(crate) const FDS_START: RawFd = 3;

/// Everything the child needs, prepared before the fork so the child only
/// makes async-signal-safe calls (no allocation, no locks).
#[derive(Debug)]
pub(crate) struct ExecPlan {
    pub(crate) program: CString,
    pub(crate) args: Vec<CString>,
    /// `KEY=VALUE` entries, without `LISTEN_PID`.
    pub(crate) env: Vec<CString>,
    pub(crate) cwd: CString,
    /// Descriptors to place at 3, 4, ... in this order.
    pub(crate) fds: Vec<RawFd>,
}

/// `LISTEN_PID=` and room for any pid, NUL-terminated in the child.
const PID_ENTRY_PREFIX: &[u8] = b"LISTEN_PID=";
const PID_ENTRY_LEN: usize = PID_ENTRY_PREFIX.len() + 21;

/// Forks and execs `plan`; returns the child's pid once the exec succeeded.
///
/// Every signal is blocked across the fork; the child puts every handled
/// signal back to its default and restores the mask right before `execve`,
/// so none of the arbiter's handlers runs in it. A failing `chdir`, `dup2` or
/// `execve` is reported back over a CLOEXEC pipe (as std's spawn does) and
/// returned here; the child is reaped then.
///
/// # Errors
///
/// The fork, or the child's preparation or exec, failed.
pub(crate) fn spawn(plan: &ExecPlan) -> io::Result<i32> {
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let mut pid_entry = [0u8; PID_ENTRY_LEN];
    pid_entry[..PID_ENTRY_PREFIX.len()].copy_from_slice(PID_ENTRY_PREFIX);
    let mut argv: Vec<*const libc::c_char> = Vec::with_capacity(plan.args.len().saturating_add(2));
    argv.push(plan.program.as_ptr());
    argv.extend(plan.args.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = Vec::with_capacity(plan.env.len().saturating_add(2));
    envp.extend(plan.env.iter().map(|e| e.as_ptr()));
    let pid_entry = pid_entry.as_mut_ptr();
    envp.push(pid_entry.cast_const().cast());
    envp.push(std::ptr::null());
    // Copies of the handed-over descriptors go above every target number first,
    // so placing one never overwrites a source still to be placed.
    let high = i32::try_from(plan.fds.len())
        .ok()
        .and_then(|n| n.checked_add(FDS_START)?.checked_add(1))
        .ok_or_else(overflow)?;
    let err_fd = raw(&err_w);
    let mut copies = vec![-1; plan.fds.len()];

    // SAFETY: sigset_t is plain data; sigfillset initialises it; the mask
    // calls only read `all` and write `old`.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    // SAFETY: libc's fork runs the atfork handlers; the child branch only
    // makes async-signal-safe calls on memory prepared above and ends in
    // execve or _exit, never returning into the caller's stack.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child; `child` only uses what was
        // prepared before the fork and never returns.
        unsafe {
            child(
                plan,
                &argv,
                &envp,
                pid_entry,
                &mut copies,
                high,
                err_fd,
                &old,
            )
        }
    }
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    drop(err_w);
    let mut buf = [0u8; 4];
    let mut got = 0;
    loop {
        match rustix::io::read(&err_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got = got.saturating_add(n);
                if got == buf.len() {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if got == 0 {
        return Ok(pid);
    }
    // The child failed before exec and `_exit`s: reap it here.
    let pid_nz = rustix::process::Pid::from_raw(pid);
    let _ = rustix::process::waitpid(pid_nz, rustix::process::WaitOptions::empty());
    Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)))
}

fn overflow() -> io::Error {
    io::Error::from(io::ErrorKind::InvalidInput)
}

/// The child between fork and exec.
///
/// # Safety
///
/// Only in the child right after `fork`: every pointer in `argv` and `envp`
/// points into `plan` or the `PID_ENTRY_LEN` bytes at `pid_entry`, which the
/// child owns a copy of.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    plan: &ExecPlan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pid_entry: *mut u8,
    copies: &mut [RawFd],
    high: RawFd,
    err_fd: RawFd,
    old_mask: &libc::sigset_t,
) -> ! {
    let fail = |err_fd: RawFd| -> ! {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        let bytes = errno.to_ne_bytes();
        // SAFETY: write and _exit are async-signal-safe; `bytes` is ours.
        unsafe {
            libc::write(err_fd, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    };
    // The error pipe may sit in the target range: move it above first.
    // SAFETY: fcntl on a raw number has no memory effects.
    let moved = unsafe { libc::fcntl(err_fd, libc::F_DUPFD_CLOEXEC, high) };
    if moved == -1 {
        fail(err_fd);
    }
    let err_fd = moved;
    // LISTEN_PID is this process' pid, written without allocating.
    // SAFETY: getpid is async-signal-safe and cannot fail.
    let mut pid = u64::try_from(unsafe { libc::getpid() }).unwrap_or(0);
    // Least significant digit first; a u64 has at most 20.
    let mut digits = [0u8; 20];
    let mut n = 0usize;
    for digit in digits.iter_mut() {
        *digit = b'0'.wrapping_add(u8::try_from(pid.wrapping_rem(10)).unwrap_or(0));
        n = n.wrapping_add(1);
        pid = pid.wrapping_div(10);
        if pid == 0 {
            break;
        }
    }
    let written = digits[..n].iter().rev().copied().chain([0]);
    for (i, byte) in written.enumerate() {
        // SAFETY: PREFIX + 20 digits + NUL fit in the PID_ENTRY_LEN bytes.
        unsafe {
            pid_entry
                .add(PID_ENTRY_PREFIX.len().wrapping_add(i))
                .write(byte)
        };
    }
    // Two passes: every source is copied above the target range before any
    // target is overwritten, since a source may sit at another's target.
    for (copy, &fd) in copies.iter_mut().zip(&plan.fds) {
        // SAFETY: fcntl on a raw number has no memory effects.
        *copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high) };
        if *copy == -1 {
            fail(err_fd);
        }
    }
    for (i, &copy) in copies.iter().enumerate() {
        // dup2 clears CLOEXEC on the target; the CLOEXEC copies vanish at exec.
        let target = RawFd::try_from(i).map_or(RawFd::MAX, |i| FDS_START.saturating_add(i));
        // SAFETY: dup2 on raw numbers has no memory effects.
        if unsafe { libc::dup2(copy, target) } == -1 {
            fail(err_fd);
        }
    }
    // SAFETY: chdir reads a NUL-terminated string we own.
    if unsafe { libc::chdir(plan.cwd.as_ptr()) } == -1 {
        fail(err_fd);
    }
    for sig in 1..libc::SIGRTMIN() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction with a null new action only reads the current one.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `current` is a valid out-pointer.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut current) } == 0
            && current.sa_sigaction != libc::SIG_IGN
            && current.sa_sigaction != libc::SIG_DFL
        {
            // SAFETY: signal() with SIG_DFL installs no code of ours.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: `old_mask` is the mask saved before the fork.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old_mask, std::ptr::null_mut()) };
    // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated
    // strings that live in this (copied) address space until exec.
    unsafe { libc::execve(plan.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    fail(err_fd)
}

/// Set once the handed-over descriptors were taken, so none is owned twice.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of descriptors `3 .. 3 + count` and of `extra` (the report
/// socket), handed over by an upgrading arbiter to this very process
/// (`LISTEN_PID` was checked by the caller), and makes them CLOEXEC. `None`
/// when they were already taken in this process.
///
/// # Errors
///
/// When a descriptor is not open; those checked before are closed again.
pub(crate) fn adopt(count: usize, extra: Option<RawFd>) -> io::Result<Option<Vec<OwnedFd>>> {
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let count = i32::try_from(count)
        .ok()
        .filter(|n| n.checked_add(FDS_START).is_some())
        .ok_or_else(overflow)?;
    let mut taken = Vec::new();
    for fd in (FDS_START..FDS_START.saturating_add(count)).chain(extra) {
        if fd < FDS_START || taken.iter().any(|t: &OwnedFd| raw(t) == fd) {
            return Err(overflow());
        }
        // SAFETY: F_SETFD on a raw number has no memory effects; it fails with
        // EBADF when the descriptor is not open.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is open (above) and the upgrading arbiter
        // handed it to this very process (LISTEN_PID is our pid); nothing
        // else claims this range, and this function does so once per process
        // (ADOPTED), so the OwnedFd is its only owner.
        taken.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(Some(taken))
}

fn raw(fd: &OwnedFd) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Removes `names` from the environment while that is sound: only with a
/// single thread (a `getenv` elsewhere could race it). Whether they were.
pub(crate) fn remove_env(names: &[&str]) -> bool {
    if crate::proc::thread_count() != Some(1) {
        return false;
    }
    for name in names {
        // SAFETY: the process has one thread (checked above), so no other
        // thread reads or writes the environment meanwhile.
        unsafe { std::env::remove_var(name) };
    }
    true
}

/// A NUL-free C string, or `InvalidInput` naming what held the NUL.
pub(crate) fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or variable holds a NUL byte",
        )
    })
}

/// The C string's bytes, for log lines.
pub(crate) fn lossy(s: &CStr) -> String {
    s.to_string_lossy().into_owned()
}
