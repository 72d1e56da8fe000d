//! Runs a pool of four workers that heartbeat and print once a second until
//! Ctrl-C; then prints how the run ended.
//!
//! ```text
//! cargo run -p ufork-core --example pool
//! ```

use std::time::Duration;

use ufork_core::Arbiter;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger_lite();
    let arbiter = Arbiter::builder()
        .workers(4)
        .heartbeat_timeout(Duration::from_secs(10))
        .graceful_timeout(Duration::from_secs(5))
        .build()?;
    println!(
        "arbiter pid {}: 4 workers; Ctrl-C stops them, SIGHUP restarts them",
        std::process::id()
    );
    let outcome = arbiter.run(|worker| -> Result<(), std::io::Error> {
        println!(
            "worker {} (pid {}, generation {}) up",
            worker.slot(),
            worker.pid(),
            worker.generation()
        );
        while !worker.wait_for_stop(Some(Duration::from_secs(1))) {
            worker.heartbeat();
        }
        println!("worker {} stopping", worker.slot());
        Ok(())
    })?;
    println!(
        "stopped by {:?}, {} workers forked, {} exits recorded:",
        outcome.cause,
        outcome.spawned,
        outcome.history.len()
    );
    for record in &outcome.history {
        println!("  {record}");
    }
    Ok(())
}

/// Prints the arbiter's `log` records to stderr (the CLI has a real logger).
fn env_logger_lite() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Info
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                eprintln!("[arbiter] {}: {}", record.level(), record.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}
