//! What every serving thread of one worker shares: the app, the settings,
//! the worker's scoreboard slot, the request count and the stop pipe.

use std::any::Any;
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ufork_core::Vitals;

use crate::{App, Error, Limits, Result, WorkerContext};

/// Settings the loop needs, shared by every thread of every worker.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) limits: Limits,
    /// The access log's format and open sink, if on.
    pub(crate) access_log: Option<(crate::AccessFormat, crate::access::Writer)>,
    /// How often an idle thread wakes to heartbeat; `None`: never (no
    /// heartbeat timeout is watched, so only events and deadlines wake it).
    pub(crate) tick: Option<Duration>,
    pub(crate) threads: usize,
    /// The arbiter's heartbeat timeout, if it watches heartbeats.
    pub(crate) heartbeat_timeout: Option<Duration>,
}

/// What every thread of one worker shares.
pub(crate) struct WorkerShared {
    pub(crate) app: Arc<dyn App>,
    pub(crate) config: Arc<Config>,
    pub(crate) vitals: Option<Vitals>,
    /// Handed to the app in every request's extensions.
    pub(crate) context: WorkerContext,
    /// The limits connections work with: the configured ones, the read and
    /// write timeouts capped under the heartbeat timeout.
    pub(super) limits: Limits,
    pub(crate) busy: AtomicUsize,
    pub(crate) served: AtomicU64,
    /// Requests after which the worker recycles itself.
    pub(crate) max_requests: Option<u64>,
    pub(crate) recycling: AtomicBool,
    /// Our own stop pipe: written to stop every thread of this worker.
    pub(crate) stop_r: OwnedFd,
    pub(crate) stop_w: OwnedFd,
    /// The serving threads still setting up (see [`WorkerShared::set_up`]).
    startup: Mutex<Startup>,
    all_set_up: Condvar,
    /// With several threads: since when each has been busy with its
    /// current request (nanoseconds since `epoch`, 0: not busy), so that
    /// the heartbeats of idle threads do not cover for a stuck one (see
    /// [`WorkerShared::heartbeat`]).
    busy_since: Vec<AtomicU64>,
    /// Hands each serving thread its index into `busy_since`.
    next_thread: AtomicUsize,
    epoch: Instant,
}

thread_local! {
    /// This serving thread's index into its worker's `busy_since`.
    static THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

#[derive(Debug)]
struct Startup {
    /// Threads that have not yet registered with the listeners.
    left: usize,
    /// One could not start: the worker is not ready, and stops.
    failed: bool,
}

impl WorkerShared {
    pub(crate) fn new(
        app: Arc<dyn App>,
        config: Arc<Config>,
        context: WorkerContext,
        vitals: Option<Vitals>,
        max_requests: Option<u64>,
    ) -> Result<Self> {
        let (stop_r, stop_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .map_err(|e| Error::EventLoop(e.into()))?;
        let threads = config.threads;
        let mut limits = config.limits.clone();
        if let (Some(_), Some(timeout)) = (&vitals, config.heartbeat_timeout) {
            // While a thread waits for one client to send more of a body or
            // take more of a response, it neither heartbeats (only progress
            // does) nor serves anyone else. A client that stalls must be
            // dropped before the arbiter takes the worker for hung and
            // kills it with every connection it holds.
            let cap = timeout / 2;
            limits.read_timeout = limits.read_timeout.min(cap);
            limits.write_timeout = limits.write_timeout.min(cap);
        }
        Ok(Self {
            app,
            config,
            vitals,
            context,
            limits,
            busy: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            max_requests,
            recycling: AtomicBool::new(false),
            stop_r,
            stop_w,
            startup: Mutex::new(Startup {
                left: threads,
                failed: false,
            }),
            all_set_up: Condvar::new(),
            busy_since: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            next_thread: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    /// Called first on each serving thread: gives it its index.
    pub(super) fn enter(&self) {
        let index = self.next_thread.fetch_add(1, Ordering::Relaxed);
        THREAD.with(|t| t.set(Some(index)));
    }

    /// This thread's cell in `busy_since`, with several threads.
    fn busy_cell(&self) -> Option<&AtomicU64> {
        if self.config.threads == 1 {
            return None;
        }
        THREAD.with(Cell::get).and_then(|i| self.busy_since.get(i))
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn startup(&self) -> MutexGuard<'_, Startup> {
        self.startup.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A serving thread has registered with the listeners and published
    /// its connection count; waits until every thread of the worker has.
    /// The last one declares the worker ready. So a ready worker takes its
    /// share of the connections queued at once (a thread not yet
    /// registered would get none of them, and a thread not yet counted
    /// would not hold the others back), and no thread turns the worker busy
    /// before it is ready.
    pub(super) fn set_up(&self) {
        let mut startup = self.startup();
        startup.left = startup.left.saturating_sub(1);
        if startup.left == 0 {
            if let Some(v) = self.vitals.as_ref().filter(|_| !startup.failed) {
                v.ready();
            }
            self.all_set_up.notify_all();
            return;
        }
        while startup.left > 0 {
            startup = self
                .all_set_up
                .wait(startup)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A serving thread could not be started or set up: the worker never
    /// becomes ready, the threads that did start stop waiting for it, and
    /// every thread is asked to stop.
    pub(crate) fn startup_failed(&self) {
        let mut startup = self.startup();
        startup.failed = true;
        startup.left = 0;
        self.all_set_up.notify_all();
        drop(startup);
        self.stop();
    }

    /// Asks every thread of this worker to stop gracefully.
    pub(crate) fn stop(&self) {
        // A full pipe already holds a wake-up.
        let _ = rustix::io::write(&self.stop_w, &[1]);
    }

    /// Marks the worker busy with the request `line` (its activity).
    pub(super) fn busy(&self, line: &str) {
        if let Some(cell) = self.busy_cell() {
            cell.store(self.now_ns().max(1), Ordering::Relaxed);
        }
        if let Some(v) = &self.vitals {
            if self.config.threads == 1 || self.busy.fetch_add(1, Ordering::Relaxed) == 0 {
                v.busy();
            }
            v.set_activity(line);
        }
    }

    /// Marks a request's response fully written (or abandoned): the thread
    /// is no longer busy with it.
    pub(super) fn done(&self) {
        if let Some(cell) = self.busy_cell() {
            cell.store(0, Ordering::Relaxed);
        }
        if let Some(v) = &self.vitals {
            if self.config.threads == 1 || self.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
                v.idle();
            }
        }
    }

    /// Runs `work`, app code the event loop runs outside a request's
    /// handling (a stream's iterator, asked for more as the socket
    /// drains), as busy with the request `line` while it runs, idle again
    /// after: a chunk never made gets the worker killed at the heartbeat
    /// timeout, as an app stuck in a request does, and the kill report
    /// names the request (`while busy (GET /feed HTTP/1.1)`). Between
    /// chunks the thread serves others and the worker shows idle.
    pub(super) fn app_code<R>(&self, line: &str, work: impl FnOnce() -> R) -> R {
        self.busy(line);
        let out = work();
        self.done();
        out
    }

    /// Counts a request whose response is about to be written; returns
    /// whether the worker should then recycle (the response says it closes).
    pub(super) fn count(&self) -> bool {
        if let Some(v) = &self.vitals {
            v.count_request();
        }
        let served = self
            .served
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        match self.max_requests {
            Some(max) if served >= max => {
                if !self.recycling.swap(true, Ordering::Relaxed) {
                    log::info!(
                        target: "ufork_wsgi_like",
                        "served {served} requests (max_requests): recycling this worker"
                    );
                    // A planned exit: the arbiter replaces the worker at
                    // once and counts neither a restart nor a crash.
                    if let Some(v) = &self.vitals {
                        v.recycle();
                    }
                    self.stop();
                }
                true
            }
            _ => false,
        }
    }

    /// The event loop's heartbeat. With several threads, none while
    /// another thread has been busy with one request for more than a tenth
    /// of the heartbeat timeout: an app stuck on one thread must get its
    /// worker killed at the timeout, as with one thread, not be covered for
    /// by the others' beats. (A thread making progress on a long request,
    /// reading its body or writing its stream, beats by itself.)
    pub(super) fn heartbeat(&self) {
        let Some(v) = &self.vitals else {
            return;
        };
        if self.config.threads > 1 {
            if let Some(timeout) = self.config.heartbeat_timeout {
                let grace = u64::try_from((timeout / 10).as_nanos()).unwrap_or(u64::MAX);
                let now = self.now_ns();
                let stuck = self.busy_since.iter().any(|since| {
                    let since = since.load(Ordering::Relaxed);
                    since != 0 && now.saturating_sub(since) > grace
                });
                if stuck {
                    return;
                }
            }
        }
        v.heartbeat();
    }
}

/// A panic payload as text.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "a non-string panic payload"
    }
}
