//! `ufork serve [DIR]`: static files (or the hello app) over HTTP from a pool
//! of ufork-wsgi-like workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::cli::PoolArgs;
use crate::failure::{self, Result, runtime};
use crate::units::{parse_count_u64, parse_seconds};
use crate::{pool, term};

/// Flags for `ufork serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
The pool keeps --workers processes alive; each one accepts connections on the shared
socket. With a terminal, a `ufork>>` prompt runs while serving (type `help`);
Ctrl-C stops every worker gracefully.

Examples:
  ufork serve                        hello app on http://127.0.0.1:8000
  ufork serve ./public --bind 0.0.0.0:8080 -w 8
  ufork serve --bind 127.0.0.1:0     any free port; the address is printed")]
pub struct ServeArgs {
    /// Directory to serve as static files (index.html for directories). Without it,
    /// the built-in hello app answers every request.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Address to listen on, HOST:PORT (repeatable). Port 0 picks a free port.
    #[arg(short, long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    pub bind: Vec<String>,

    /// Recycle a worker after it has served this many requests.
    #[arg(long, value_name = "N", value_parser = parse_count_u64, allow_negative_numbers = true)]
    pub max_requests: Option<u64>,

    /// Kill and replace a worker silent for this long [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub timeout: Option<Duration>,

    #[command(flatten)]
    pub pool: PoolArgs,
}

/// Runs `ufork serve`.
pub fn exec(args: ServeArgs) -> Result<()> {
    pool::check_pidfile(&args.pool)?;
    let root = match &args.dir {
        Some(dir) => Some(
            ufork_wsgi_like::static_files::StaticFiles::new(dir).map_err(|e| {
                runtime(format!(
                    "DIR {}: {}; give an existing directory to serve, or none for the hello app",
                    dir.display(),
                    failure::io_text(&e)
                ))
            })?,
        ),
        None => None,
    };
    let listeners = pool::bind_all(&args.bind, false)?;
    let workers = pool::workers(&args.pool);
    let what = match &root {
        Some(files) => format!("files from {}", files.root().display()),
        None => "the hello app".to_owned(),
    };
    let banner: Vec<String> = listeners
        .iter()
        .map(|l| {
            format!(
                "serving {what} on http://{} with {workers} worker{} (arbiter pid {})",
                l.addr,
                if workers == 1 { "" } else { "s" },
                std::process::id()
            )
        })
        .collect();
    let mut session = pool::Session::start(&args.pool)?;
    if !args.pool.daemon {
        banner.iter().for_each(term::say);
    }
    if let Some(dir) = &args.dir {
        warn_if_unreadable(dir);
    }
    let mut builder = ufork_wsgi_like::Server::builder()
        .workers(workers)
        .graceful_timeout(args.pool.graceful_timeout)
        .heartbeat_timeout(
            args.timeout
                .unwrap_or(ufork_wsgi_like::DEFAULT_HEARTBEAT_TIMEOUT),
        );
    for l in listeners {
        builder = builder.listener(l.socket);
    }
    if let Some(max) = args.max_requests {
        // The jitter is added to the limit: keep the sum a `u64`.
        builder = builder.max_requests(max, (max / 10).min(u64::MAX - max));
    }
    let builder = builder.arbiter(|b| session.configure(&args.pool, b).workers(workers));
    let built = match root {
        Some(files) => builder.build(files),
        None => builder.build(ufork_wsgi_like::hello),
    };
    let server = built.map_err(|e| {
        let f = runtime(format!("cannot start the server: {}", failure::chain(&e)));
        session.fail(&f);
        f
    })?;
    session.announce(&args.pool);
    server
        .run()
        .map_err(|e| runtime(format!("the server failed: {}", failure::chain(&e))))?;
    Ok(())
}

/// Warns when the workers could not read DIR: checked after `--user` took
/// effect, so as the user the workers run as (access(2) checks the real ids,
/// which the switch sets too).
fn warn_if_unreadable(dir: &Path) {
    use rustix::fs::{Access, access};
    if let Err(e) = access(dir, Access::READ_OK | Access::EXEC_OK) {
        log::warn!(
            target: "ufork",
            "DIR {}: the workers (uid {}) cannot read it ({}); every request will fail",
            dir.display(),
            rustix::process::getuid().as_raw(),
            failure::io_text(&e.into())
        );
    }
}
