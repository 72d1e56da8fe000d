//! Serves "Hello, world!" from pre-forked workers until Ctrl-C.
//!
//! ```text
//! cargo run --release -p ufork-wsgi-like --example hello -- [ADDR] [WORKERS] [--access-log]
//! ```

use ufork_wsgi_like::Server;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let access_log = args.iter().any(|a| a == "--access-log");
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let addr = positional
        .next()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let workers: usize = match positional.next() {
        Some(n) => n.parse()?,
        None => 2,
    };
    stderr_logger();
    let server = Server::builder()
        .bind(addr.as_str())
        .workers(workers)
        .access_log(access_log)
        .build(ufork_wsgi_like::hello)?;
    println!(
        "serving hello on http://{} with {workers} workers; Ctrl-C stops",
        server.local_addrs()[0]
    );
    let outcome = server.run()?;
    println!("stopped by {:?}", outcome.cause);
    Ok(())
}

/// Prints `log` records to stderr (a real program would use its own logger).
fn stderr_logger() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Info
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                eprintln!(
                    "[{}] {}: {}",
                    record.target(),
                    record.level(),
                    record.args()
                );
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}
