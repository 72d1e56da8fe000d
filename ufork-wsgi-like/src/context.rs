//! [`WorkerContext`]: the worker serving a request, as the app sees it.

use std::fmt;
use std::sync::Arc;

use ufork_core::{Vitals, WorkerState};

/// The worker serving a request, in every request's extensions: the app's
/// way to reach its worker without a `post_fork` hook or a static.
///
/// ```no_run
/// use http::{Request, Response};
/// use ufork_wsgi_like::{Body, ResponseBody, WorkerContext};
///
/// fn report(request: Request<Body>) -> Response<ResponseBody> {
///     let worker = request.extensions().get::<WorkerContext>().cloned();
///     for step in 0..60 {
///         if let Some(w) = &worker {
///             // A long request that beats is not taken for a hung worker.
///             w.heartbeat();
///             w.set_activity(&format!("report: step {step} of 60"));
///         }
///         std::thread::sleep(std::time::Duration::from_secs(1));
///     }
///     Response::new("done\n".into())
/// }
/// ```
///
/// The server already heartbeats on every request and while bytes move,
/// marks the worker busy from a complete request head until its response is
/// written, and sets the request line as activity. An app needs this
/// context when one request runs longer than the heartbeat timeout without
/// reading its body ([`heartbeat`](Self::heartbeat)), to say what it is
/// doing ([`set_activity`](Self::set_activity)), or to know which worker it
/// runs in ([`slot`](Self::slot), [`generation`](Self::generation)).
///
/// On a server on local threads ([`Server::spawn_local`](crate::Server::spawn_local))
/// there is no arbiter: the reporting methods do nothing and `slot`,
/// `generation` and `state` are `None`.
#[derive(Clone)]
pub struct WorkerContext {
    inner: Arc<Inner>,
}

struct Inner {
    vitals: Option<Vitals>,
    slot: Option<usize>,
    generation: Option<u32>,
}

impl WorkerContext {
    pub(crate) fn new(
        vitals: Option<Vitals>,
        slot: Option<usize>,
        generation: Option<u32>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                vitals,
                slot,
                generation,
            }),
        }
    }

    /// Tells the arbiter the worker is alive: one store into the
    /// scoreboard, no system call. Call it at least once per heartbeat
    /// timeout during a long request.
    pub fn heartbeat(&self) {
        if let Some(v) = &self.inner.vitals {
            v.heartbeat();
        }
    }

    /// Sets the worker's activity text, shown by the status table and
    /// named in the log if the worker is killed (the server sets the
    /// request line; this replaces it until the next request).
    pub fn set_activity(&self, text: &str) {
        if let Some(v) = &self.inner.vitals {
            v.set_activity(text);
        }
    }

    /// Marks the worker busy (the server does it for every request).
    pub fn busy(&self) {
        if let Some(v) = &self.inner.vitals {
            v.busy();
        }
    }

    /// Marks the worker idle, say while a long poll waits for an event
    /// (the server marks it busy again for the next request).
    pub fn idle(&self) {
        if let Some(v) = &self.inner.vitals {
            v.idle();
        }
    }

    /// The worker's state in the scoreboard (busy or idle while serving).
    pub fn state(&self) -> Option<WorkerState> {
        self.inner.vitals.as_ref().map(Vitals::state)
    }

    /// The worker's slot in the pool: 0 to workers − 1.
    pub fn slot(&self) -> Option<usize> {
        self.inner.slot
    }

    /// How many workers this slot had before this one.
    pub fn generation(&self) -> Option<u32> {
        self.inner.generation
    }
}

impl fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("slot", &self.inner.slot)
            .field("generation", &self.inner.generation)
            .finish_non_exhaustive()
    }
}
