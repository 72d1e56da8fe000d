//! Serves the files under a directory from pre-forked workers until Ctrl-C.
//!
//! ```text
//! cargo run --release -p ufork-wsgi-like --example static_files -- DIR [ADDR] [WORKERS]
//! ```

use ufork_wsgi_like::Server;
use ufork_wsgi_like::static_files::StaticFiles;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8000".into());
    let workers: usize = match args.next() {
        Some(n) => n.parse()?,
        None => 2,
    };
    let app = StaticFiles::new(&dir)?;
    let server = Server::builder()
        .bind(addr.as_str())
        .workers(workers)
        .build(app)?;
    println!(
        "serving {} on http://{} with {workers} workers; Ctrl-C stops",
        dir,
        server.local_addrs()[0]
    );
    server.run()?;
    Ok(())
}
