//! Async workers: the stop notification and vitals that move into a task,
//! and the `async_tokio` example driven end to end.

use ufork_core::{Arbiter, ExitReason, StopNotifier, Vitals, Worker};

use crate::util::{self, Events, SpawnGuarded, lock};

fn assert_moves_into_a_task<T: Send + Sync + 'static>() {}

#[test]
fn the_stop_notifier_and_vitals_move_into_a_thread_that_sees_the_stop() {
    assert_moves_into_a_task::<StopNotifier>();
    assert_moves_into_a_task::<Vitals>();
    let _g = lock();
    let mut ev = Events::new();
    let tx = std::sync::Arc::new(ev.sender());
    let arbiter = Arbiter::builder()
        .workers(1)
        .ready_on_start(false)
        .build()
        .unwrap();
    let (handle, thread) = arbiter
        .spawn_guarded(move |w: &mut Worker| -> Result<(), String> {
            let tx_main = std::sync::Arc::clone(&tx);
            let stop = w.stop_notifier().map_err(|e| e.to_string())?;
            let vitals = w.vitals().clone();
            let tx = std::sync::Arc::clone(&tx);
            let waiter = std::thread::spawn(move || {
                // Marked ready from the thread that owns the moved vitals.
                vitals.ready();
                tx.send(&format!("waiting {}", stop.should_stop()));
                let mut fds = [rustix::event::PollFd::new(
                    &stop,
                    rustix::event::PollFlags::IN,
                )];
                while rustix::event::poll(&mut fds, None).is_err() {}
                tx.send(&format!("stop seen {}", stop.should_stop()));
                // Still readable for every other watcher: nobody read it.
                drop(stop);
            });
            waiter.join().map_err(|_| "waiter panicked".to_owned())?;
            let still = rustix::event::poll(
                &mut [rustix::event::PollFd::new(
                    &w.stop_fd(),
                    rustix::event::PollFlags::IN,
                )],
                Some(&rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }),
            );
            tx_main.send(&format!("stop_fd readable {}", still == Ok(1)));
            Ok(())
        })
        .unwrap();
    ev.expect("the waiter running", |l| l == "waiting false");
    util::wait_until("the worker is ready", || {
        handle
            .snapshot()
            .workers
            .first()
            .is_some_and(|w| w.state == ufork_core::WorkerState::Ready)
    });
    handle.stop();
    ev.expect("the stop seen through the notifier", |l| {
        l == "stop seen true"
    });
    ev.expect("stop_fd still readable", |l| l == "stop_fd readable true");
    let outcome = thread.join().unwrap().unwrap();
    assert_eq!(outcome.history.len(), 1);
    assert_eq!(outcome.history[0].reason, ExitReason::Stopped);
}
