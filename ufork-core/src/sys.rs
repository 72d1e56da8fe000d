//! The few system calls that need `unsafe`: fork, signal dispositions, the shared
//! mapping and `_exit`. Everything else goes through rustix's safe API.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::scoreboard::{Cell, Header};

/// Highest signal number plus one on Linux.
pub(crate) const NSIG: usize = 65;
const NSIG_I32: i32 = 65;

/// Forks the calling process. In the child, `child` runs and, as its type
/// says, never returns: the child never comes back into the caller's stack.
/// Returns the child's pid in the parent.
///
/// Every signal is blocked across the fork: until the child has reset its
/// dispositions, the arbiter's handler would swallow a SIGTERM meant for the
/// new worker (it writes to the arbiter's pipe). The child unblocks in
/// [`reset_child_signals`], after installing its own handlers, so a signal
/// sent in between stays pending and is delivered then. The parent restores
/// its mask right after the fork.
///
/// The arbiter calls this from its single-threaded loop; with other threads
/// alive, the child must not take locks they may hold (see
/// `Arbiter::spawn_thread`).
#[allow(unreachable_code)] // `child` returns an uninhabited type
pub(crate) fn fork_into(child: impl FnOnce() -> std::convert::Infallible) -> io::Result<i32> {
    with_signals_blocked(|| {
        // SAFETY: libc's fork runs the atfork handlers, so malloc stays
        // usable in the child; the child branch diverges into `child`, which
        // ends the process, so no code of the parent's stack frames runs
        // twice.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            match child() {}
        }
        if pid == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(pid)
        }
    })
}

/// Runs `f` with every signal blocked in the calling thread, then puts the
/// thread's mask back. A thread started inside `f` inherits the full mask.
pub(crate) fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigset_t is plain data; sigfillset initialises it; the mask
    // calls only read `all` and write `old`.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let result = f();
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

/// Ends the calling process at once with `code`, without running atexit
/// handlers or destructors (the child must never run the arbiter's).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

// ---------------------------------------------------------------------------
// Signals of the arbiter: counted per signal and announced on a self-pipe.

static ARBITER_PIPE: AtomicI32 = AtomicI32::new(-1);
/// Signals sent by a process (`kill`, `raise`...), per signal number.
static COUNTS: [AtomicU32; NSIG] = [const { AtomicU32::new(0) }; NSIG];
/// Signals the kernel generated itself (terminal hangup, job control, Ctrl-C
/// on a terminal), told apart by `si_code == SI_KERNEL`.
static KERNEL_COUNTS: [AtomicU32; NSIG] = [const { AtomicU32::new(0) }; NSIG];

extern "C" fn arbiter_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only atomics and write(2) here: both are async-signal-safe. errno is
    // saved because the interrupted code may be about to read it.
    // SAFETY: __errno_location returns the calling thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo (or null).
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    let counts = if from_kernel { &KERNEL_COUNTS } else { &COUNTS };
    if let Some(count) = counts.get(sig as usize) {
        count.fetch_add(1, Ordering::SeqCst);
    }
    let fd = ARBITER_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = u8::try_from(sig).unwrap_or(0);
        // SAFETY: writing one byte from a valid stack address; a full pipe
        // (EAGAIN, non-blocking) is fine, the counter already holds the signal.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// A signal disposition saved to be put back later.
#[derive(Clone, Copy)]
pub(crate) struct Disposition(libc::sigaction);

impl std::fmt::Debug for Disposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Disposition")
            .field(&self.0.sa_sigaction)
            .finish()
    }
}

impl Disposition {
    fn is_ignore(&self) -> bool {
        self.0.sa_sigaction == libc::SIG_IGN
    }
}

fn sigaction(sig: i32, new: Option<&libc::sigaction>) -> io::Result<Disposition> {
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let new_ptr = new.map_or(std::ptr::null(), |n| n as *const _);
    // SAFETY: both pointers are valid for the call; the handlers we install
    // are async-signal-safe.
    if unsafe { libc::sigaction(sig, new_ptr, &mut old) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(Disposition(old))
}

fn action(handler: libc::sighandler_t) -> libc::sigaction {
    // SAFETY: an all-zero sigaction is a valid value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    act
}

/// The arbiter's signal self-pipe (read end, write end), made on first use
/// and never closed: a handler still running on another thread after `run`
/// restored the dispositions writes to a descriptor that is still this pipe,
/// never to a number since reused for something else.
pub(crate) fn signal_pipe() -> io::Result<(BorrowedFd<'static>, BorrowedFd<'static>)> {
    use rustix::pipe::{PipeFlags, pipe_with};
    static PIPE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    static MAKING: Mutex<()> = Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let (r, w) = match PIPE.get() {
        Some(pair) => pair,
        None => {
            let pair = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            ARBITER_PIPE.store(pair.1.as_raw_fd(), Ordering::SeqCst);
            PIPE.get_or_init(|| pair)
        }
    };
    Ok((r.as_fd(), w.as_fd()))
}

/// Takes the number of times a process sent `sig` since the last call.
pub(crate) fn take_count(sig: i32) -> u32 {
    COUNTS[sig as usize].swap(0, Ordering::SeqCst)
}

/// Takes the number of times the kernel itself raised `sig` since the last call.
pub(crate) fn take_kernel_count(sig: i32) -> u32 {
    KERNEL_COUNTS[sig as usize].swap(0, Ordering::SeqCst)
}

/// Installs the arbiter's handler for `sig` and returns the disposition it replaced.
pub(crate) fn install_arbiter_handler(sig: i32) -> io::Result<Disposition> {
    COUNTS[sig as usize].store(0, Ordering::SeqCst);
    KERNEL_COUNTS[sig as usize].store(0, Ordering::SeqCst);
    let handler =
        arbiter_handler as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
    let mut act = action(handler as libc::sighandler_t);
    act.sa_flags |= libc::SA_SIGINFO;
    sigaction(sig, Some(&act))
}

/// Puts back a disposition saved by [`install_arbiter_handler`].
pub(crate) fn restore(sig: i32, old: &Disposition) -> io::Result<()> {
    sigaction(sig, Some(&old.0)).map(drop)
}

// ---------------------------------------------------------------------------
// Signals of a worker, right after fork.

static WORKER_STOP: AtomicBool = AtomicBool::new(false);
static WORKER_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Room for this many sockets in [`refuse_at_stop`].
pub(crate) const REFUSE_SLOTS: usize = 64;

/// Listening sockets of this worker (duplicates it never closes) whose
/// reading side the SIGTERM handler shuts down; -1 marks a free slot.
static REFUSE_AT_STOP: [AtomicI32; REFUSE_SLOTS] = [const { AtomicI32::new(-1) }; REFUSE_SLOTS];

extern "C" fn worker_term_handler(_sig: libc::c_int) {
    // SAFETY: see arbiter_handler.
    let errno = unsafe { *libc::__errno_location() };
    // Refuse first, so a worker that sees the stop sees refusing sockets.
    for slot in &REFUSE_AT_STOP {
        let fd = slot.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: shutdown(2) is async-signal-safe; `fd` is a duplicate
            // this process never closes (`refuse_at_stop`), so it is still
            // the socket that was registered.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }
    WORKER_STOP.store(true, Ordering::SeqCst);
    let fd = WORKER_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: one byte from a valid address to a non-blocking pipe.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// In a worker: keeps a duplicate of `socket` for the rest of the process'
/// life and shuts its reading side down when SIGTERM asks the worker to stop
/// (at once if it did already), so the kernel refuses new connections to it.
///
/// # Errors
///
/// Not in a worker process, the descriptor cannot be duplicated, or
/// [`REFUSE_SLOTS`] sockets are registered already.
pub(crate) fn refuse_at_stop(socket: BorrowedFd<'_>) -> io::Result<()> {
    if WORKER_PIPE.load(Ordering::SeqCst) < 0 {
        return Err(io::Error::other(
            "only a worker process refuses its sockets at stop",
        ));
    }
    let dup = rustix::io::fcntl_dupfd_cloexec(socket, 0)?;
    let raw = dup.as_raw_fd();
    for slot in &REFUSE_AT_STOP {
        if slot
            .compare_exchange(-1, raw, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            // The handler may use the number from now on, so it is never
            // closed: the process ends with it.
            let _ = std::os::fd::IntoRawFd::into_raw_fd(dup);
            // A SIGTERM that came before the slot was filled missed it.
            if WORKER_STOP.load(Ordering::SeqCst) {
                let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Read);
            }
            return Ok(());
        }
    }
    Err(io::Error::other(format!(
        "at most {REFUSE_SLOTS} sockets per worker are refused at stop"
    )))
}

/// In a worker about to exec: makes fd number `target` refer to `socket`'s
/// open file, without CLOEXEC (so exec keeps it), whatever the number
/// referred to before.
///
/// # Errors
///
/// Not in a worker process, or dup3 failed.
pub(crate) fn place_over(socket: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if !in_worker() {
        return Err(io::Error::other(
            "only a worker about to exec places sockets over other descriptors",
        ));
    }
    // SAFETY: `socket` is open (borrowed for the call). dup3 replaces what
    // `target` refers to atomically: if the number was open, it never
    // dangles, and whoever might own it (nobody, for a descriptor the
    // process inherited and never took) keeps one valid descriptor to
    // close; if it was free, nothing in this process owns it and exec
    // hands it on.
    if unsafe { libc::dup3(socket.as_raw_fd(), target, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process is a worker (its SIGTERM handler is installed).
pub(crate) fn in_worker() -> bool {
    WORKER_PIPE.load(Ordering::SeqCst) >= 0
}

/// Whether the worker was asked to stop (SIGTERM arrived).
pub(crate) fn worker_stop_requested() -> bool {
    WORKER_STOP.load(Ordering::Relaxed)
}

/// Gives SIGTERM its default action back (what `exec` would do to a caught
/// signal), then says whether a stop was requested before that. Every
/// SIGTERM is then either counted already (the flag) or, from now on,
/// ends the process by default (before an `exec`, or the program after it).
pub(crate) fn default_stop_action() -> bool {
    let _ = sigaction(libc::SIGTERM, Some(&action(libc::SIG_DFL)));
    WORKER_STOP.load(Ordering::SeqCst)
}

/// Gives every signal the disposition an `exec` would: handlers back to the
/// default, ignored signals stay ignored (`saved` holds what the arbiter's
/// handlers replaced). Then SIGINT is ignored, SIGTERM sets the stop flag and
/// writes to `stop_pipe`, and the signal mask is emptied.
pub(crate) fn reset_child_signals(saved: &[(i32, Disposition)], stop_pipe: RawFd) {
    WORKER_STOP.store(false, Ordering::SeqCst);
    // A worker that forks a pool of its own hands its children none of its
    // sockets to refuse.
    for slot in &REFUSE_AT_STOP {
        slot.store(-1, Ordering::SeqCst);
    }
    WORKER_PIPE.store(stop_pipe, Ordering::SeqCst);
    ARBITER_PIPE.store(-1, Ordering::SeqCst);
    let dfl = action(libc::SIG_DFL);
    let ign = action(libc::SIG_IGN);
    for sig in 1..NSIG_I32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let was_ignored = match saved.iter().find(|(s, _)| *s == sig) {
            Some((_, original)) => original.is_ignore(),
            None => match sigaction(sig, None) {
                Ok(current) => current.is_ignore(),
                Err(_) => continue,
            },
        };
        let _ = sigaction(sig, Some(if was_ignored { &ign } else { &dfl }));
    }
    let _ = sigaction(libc::SIGINT, Some(&ign));
    let handler = worker_term_handler as extern "C" fn(libc::c_int);
    let _ = sigaction(libc::SIGTERM, Some(&action(handler as libc::sighandler_t)));
    // SAFETY: an empty set is a valid mask; pthread_sigmask only reads it.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

// ---------------------------------------------------------------------------
// File descriptors.

/// Closes a descriptor the child inherited but must not keep.
pub(crate) fn close_inherited(fd: RawFd) {
    // SAFETY: called in the child right after fork on descriptors that belong to
    // the arbiter; no object in the child uses them again (the child never
    // returns into the arbiter's code, so their owners are never dropped).
    unsafe { rustix::io::close(fd) };
}

/// Whether the descriptor number `number` (which may be closed, or reused)
/// is the open file `registered` duplicates: `kcmp(KCMP_FILE)` compares the
/// open file descriptions themselves. Where the kernel refuses kcmp (built
/// without it, or a seccomp filter), device and inode are compared: as
/// `registered` keeps its file open, no other file can have them, though
/// another open of the same file can.
pub(crate) fn same_open_file(number: RawFd, registered: BorrowedFd<'_>) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(rustix::process::getpid().as_raw_nonzero().get());
    // SAFETY: kcmp compares two kernel objects by the numbers given and
    // touches no memory of ours; a number that is not open gives EBADF.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(number),
            libc::c_long::from(registered.as_raw_fd()),
        )
    };
    match rc {
        0 => true,
        -1 if matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOSYS | libc::EPERM | libc::EACCES)
        ) =>
        {
            let id = |st: libc::stat| (st.st_dev, st.st_ino);
            let theirs = stat_number(number).map(id);
            theirs.is_some() && theirs == stat_number(registered.as_raw_fd()).map(id)
        }
        _ => false,
    }
}

/// `fstat` of a descriptor number that may not be open.
fn stat_number(number: RawFd) -> Option<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat through a valid pointer and does no I/O
    // on the file; a number that is not open gives EBADF.
    let rc = unsafe { libc::fstat(number, &mut st) };
    (rc == 0).then_some(st)
}

/// In the child: closes core's duplicate of a descriptor a layer registered,
/// and the layer's number too (0, 1 and 2 excepted) if it is still that open
/// file.
pub(crate) fn close_registered(number: RawFd, registered: RawFd) {
    // SAFETY: `registered` is core's own duplicate, open in the arbiter at
    // the fork and so in the child; the borrow ends before it is closed.
    let same = same_open_file(number, unsafe { BorrowedFd::borrow_raw(registered) });
    if number > 2 && same {
        close_inherited(number);
    }
    close_inherited(registered);
}

// ---------------------------------------------------------------------------
// The shared scoreboard mapping.

/// An anonymous `MAP_SHARED` mapping holding the scoreboard: a header block and
/// `capacity` cells, inherited by every child forked after it was made.
pub(crate) struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: the mapping is only ever accessed as `Header` and `Cell`, which are
// made of atomics; sharing them between threads is what they are for.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps zeroed memory for a header and `capacity` cells.
    pub(crate) fn new(capacity: usize) -> io::Result<Self> {
        use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous};
        let len = capacity
            .checked_add(1)
            .and_then(|cells| cells.checked_mul(std::mem::size_of::<Cell>()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: a fresh anonymous mapping aliases no Rust object.
        let ptr = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
            )
        }?;
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len, capacity })
    }

    /// The header block.
    pub(crate) fn header(&self) -> &Header {
        const _: () = assert!(std::mem::size_of::<Header>() <= std::mem::size_of::<Cell>());
        // SAFETY: the first cell-sized block is reserved for the header; the
        // mapping is page-aligned, zero-filled (a valid all-atomics Header) and
        // lives as long as `self`.
        unsafe { &*self.ptr.as_ptr().cast::<Header>() }
    }

    /// The cells, one per slot.
    pub(crate) fn cells(&self) -> &[Cell] {
        // SAFETY: the mapping holds capacity + 1 cell-sized blocks; blocks 1..
        // are cells, aligned (Cell's size is a multiple of its alignment and
        // the mapping is page-aligned), zero-filled (a valid all-atomics Cell)
        // and alive as long as `self`.
        unsafe {
            let first = self.ptr.as_ptr().cast::<Cell>().add(1);
            std::slice::from_raw_parts(first, self.capacity)
        }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: pointer and length come from mmap; every borrow of the
        // header or a cell is tied to `self`, so nothing refers into it now.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Whether this process reaps orphans: it is PID 1 or a child subreaper. Then
/// the arbiter also reaps children that are not its workers.
pub(crate) fn is_reaper() -> bool {
    if rustix::process::getpid().is_init() {
        return true;
    }
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer.
    let rc = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut libc::c_int) };
    rc == 0 && flag != 0
}
