//! `ufork serve [DIR]`: static files (or the hello app) over HTTP from a pool
//! of ufork-wsgi-like workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::cli::PoolArgs;
use crate::failure::{self, Result, runtime};
use crate::units::{
    parse_count_or_zero, parse_head_bytes, parse_head_fields, parse_seconds_or_never,
    parse_seconds_or_zero, parse_threads,
};
use crate::{access, listen, pool, term};

/// Flags for `ufork serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
The pool keeps --workers processes alive; each one accepts connections on the shared
socket. With a terminal, a `ufork>>` prompt runs while serving (type `help`);
Ctrl-C stops every worker gracefully.

Examples:
  ufork serve                        hello app on http://127.0.0.1:8000
  ufork serve ./public --bind 0.0.0.0:8080 -w 8
  ufork serve --bind 127.0.0.1:0     any free port; the address is printed
  ufork serve --bind unix:/run/app.sock   a unix socket, for a proxy in front")]
pub struct ServeArgs {
    /// Directory to serve as static files (index.html for directories). Without it,
    /// the built-in hello app answers every request.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Address to listen on, HOST:PORT or unix:PATH (repeatable). Port 0
    /// picks a free port. A unix socket is created with --unix-mode, refused
    /// while a live server listens on PATH (a stale one is replaced), and
    /// removed when the pool stops [default: 127.0.0.1:8000; 0.0.0.0:$PORT
    /// when PORT is set, as gunicorn does; only the sockets socket
    /// activation hands over, if any].
    #[arg(short, long, value_name = "ADDR")]
    pub bind: Vec<String>,

    /// Permission bits of `--bind unix:PATH` sockets (octal).
    #[arg(long, value_name = "MODE", value_parser = listen::parse_mode, default_value = "660")]
    pub unix_mode: u32,

    /// Recycle a worker after it has served this many requests; 0: never
    /// (gunicorn's default).
    #[arg(long, value_name = "N", value_parser = parse_count_or_zero, allow_negative_numbers = true)]
    pub max_requests: Option<u64>,

    /// Kill and replace a worker silent for this long; 0: never, as
    /// gunicorn's `--timeout 0` (a hung worker then stays hung) [default: 30].
    #[arg(short, long, value_name = "SECS", value_parser = parse_seconds_or_never, allow_negative_numbers = true)]
    pub timeout: Option<Duration>,

    /// With --max-requests: recycle after up to this many more, picked at
    /// random per worker, so workers do not all restart at once [default: a
    /// tenth of --max-requests].
    #[arg(long, value_name = "N", value_parser = parse_count_or_zero, requires = "max_requests", allow_negative_numbers = true)]
    pub max_requests_jitter: Option<u64>,

    /// Serving threads per worker, each with its own connections [default: 1].
    #[arg(long, value_name = "N", value_parser = parse_threads, allow_negative_numbers = true)]
    pub threads: Option<usize>,

    /// Close a keep-alive connection idle for this long; 0: no keep-alive,
    /// every response closes its connection (as gunicorn's 0) [default: 5].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds_or_zero, allow_negative_numbers = true)]
    pub keep_alive: Option<Duration>,

    /// Longest request line; longer gets 414 [default: 8K; at most 1M, and
    /// 0, gunicorn's "no limit", means 1M].
    #[arg(long, value_name = "BYTES", value_parser = parse_head_bytes, allow_negative_numbers = true)]
    pub limit_request_line: Option<usize>,

    /// Most header fields in a request; more gets 431 [default: 100; at most
    /// 32768, and 0, gunicorn's "no limit", means 32768].
    #[arg(long, value_name = "N", value_parser = parse_head_fields, allow_negative_numbers = true)]
    pub limit_request_fields: Option<u32>,

    /// Largest request head, the request line and every header field
    /// together (gunicorn limits each field); larger gets 431 [default: 64K;
    /// at most 1M, and 0 means 1M].
    #[arg(long, value_name = "BYTES", value_parser = parse_head_bytes, allow_negative_numbers = true)]
    pub limit_request_field_size: Option<usize>,

    /// Write one timestamped line per request to PATH, appending, reopened
    /// on SIGUSR1 by the arbiter and every worker; `-` for the workers'
    /// stdout. A symbolic link at PATH is followed as --log-file says.
    #[arg(long, visible_alias = "access-logfile", value_name = "PATH|-")]
    pub access_log: Option<PathBuf>,

    /// The --access-log line format: `common` (Common Log Format),
    /// `combined` (plus Referer, User-Agent and the duration in µs) or
    /// `json` (one object per line: time, client, request, status, bytes,
    /// duration_us, referer, user_agent).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Common)]
    pub access_log_format: LogFormat,

    /// Each worker binds its own socket with SO_REUSEPORT and the kernel
    /// spreads connections between them (not with port 0).
    #[arg(long)]
    pub reuse_port: bool,

    #[command(flatten)]
    pub pool: PoolArgs,
}

/// `--access-log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Common,
    Combined,
    Json,
}

impl From<LogFormat> for ufork_wsgi_like::AccessFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Common => Self::Common,
            LogFormat::Combined => Self::Combined,
            LogFormat::Json => Self::Json,
        }
    }
}

/// Where `serve` listens without `--bind` (and without socket activation).
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";

/// Raises the soft limit on open files to the hard one: every connection a
/// worker holds is a descriptor, and the soft limit systemd gives services
/// (1024, kept low for programs that use select(2)) would cap a worker at
/// about a thousand connections, after which accepting pauses. Go's runtime
/// does the same at start. Only `serve`: a `run` program inherits limits
/// as they were given.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum) {
        if current < maximum {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                log::debug!(target: "ufork", "cannot raise the open files limit from {current} to {maximum}: {e}");
            }
        }
    }
}

/// What `serve` binds without `--bind` (and without sockets from socket
/// activation): `0.0.0.0:$PORT` when the environment sets `PORT`, as gunicorn
/// does for the platforms that pick the port (Heroku, Cloud Run), else
/// [`DEFAULT_BIND`].
fn default_bind() -> Result<String> {
    match std::env::var_os("PORT") {
        None => Ok(DEFAULT_BIND.to_owned()),
        Some(value) => {
            let text = value.to_string_lossy();
            match text.trim().parse::<u16>() {
                Ok(port) => Ok(format!("0.0.0.0:{port}")),
                Err(_) => Err(failure::usage(format!(
                    "PORT={text:?}: not a port number (0 to 65535); unset it or pass --bind"
                ))),
            }
        }
    }
}

/// Runs `ufork serve`.
pub fn exec(mut args: ServeArgs) -> Result<()> {
    raise_open_files_limit();
    pool::chdir(&args.pool)?;
    pool::check_control_path(&args.pool, &args.bind, false)?;
    // serve's default address counts only beside --metrics-bind (PORT is
    // read only then).
    let default = match (&args.pool.metrics_bind, args.bind.is_empty()) {
        (Some(_), true) => Some(default_bind()?),
        _ => None,
    };
    pool::check_addresses(
        &args.pool,
        &args.bind,
        false,
        args.reuse_port,
        default.as_deref(),
    )?;
    // Before the pidfile and the sockets: a --user that cannot be switched
    // to is a usage error, found by --check-config too.
    crate::privs::resolve(args.pool.user.as_deref(), args.pool.group.as_deref())?;
    if args.pool.check_config {
        return check_config(&args);
    }
    let pidfile = pool::lock_pidfile(
        &args.pool,
        if args.reuse_port {
            0
        } else {
            args.bind.len().max(1)
        },
    )?;
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
    let options = listen::Options {
        for_run: false,
        unix_mode: args.unix_mode,
        backlog: args.pool.backlog,
    };
    // PORT is read only where the default bind applies: a bad one does not
    // stop a pool given --bind.
    let default = if args.bind.is_empty() {
        Some(default_bind()?)
    } else {
        None
    };
    // With --reuse-port every worker binds its own socket; otherwise the
    // arbiter binds one that every worker inherits.
    let (listeners, reused) = if args.reuse_port {
        let binds = match &default {
            Some(address) => listen::resolve_all(std::slice::from_ref(address), options)?,
            None => listen::resolve_all(&args.bind, options)?,
        };
        let addrs = reuse_port_addrs(&binds)?;
        (Vec::new(), addrs)
    } else {
        (
            listen::bind_all(&args.bind, default.as_deref(), options)?,
            Vec::new(),
        )
    };
    let workers = pool::workers(&args.pool)?;
    let what = match &root {
        Some(files) => format!("files from {}", files.root().display()),
        None => "the hello app".to_owned(),
    };
    let banner: Vec<String> = listeners
        .iter()
        .map(|l| match &l.addr {
            listen::Address::Tcp(addr) => format!("http://{addr}"),
            unix @ listen::Address::Unix(_) => unix.to_string(),
        })
        .chain(reused.iter().map(|addr| format!("http://{addr}")))
        .map(|addr| {
            format!(
                "serving {what} on {addr} with {workers} worker{} (arbiter pid {})",
                if workers == 1 { "" } else { "s" },
                std::process::id()
            )
        })
        .collect();
    // Opened before the fork and any --user switch: every worker inherits it.
    if let Some(path) = &args.access_log {
        access::open(path)?;
    }
    let (stall, lowered) = log_stall(&args);
    args.pool.log_stall_timeout = Some(stall);
    let mut session = pool::Session::start(&args.pool, pidfile, &pool::unix_paths(&listeners))?;
    if !args.pool.daemon {
        banner.iter().for_each(term::say);
    }
    if let Some(warning) = lowered {
        log::warn!(target: "ufork", "{warning}");
    }
    if let Some(dir) = &args.dir {
        warn_if_unreadable(dir);
    }
    if args.reuse_port {
        warn_unless_requests_migrate();
    }
    let mut builder = ufork_wsgi_like::Server::builder()
        .workers(workers)
        .graceful_timeout(args.pool.graceful_timeout)
        .heartbeat_timeout(
            args.timeout
                .unwrap_or(ufork_wsgi_like::DEFAULT_HEARTBEAT_TIMEOUT),
        );
    // The unix socket files live as long as this frame: removed when the
    // pool stops (a worker never returns here).
    let mut socket_files = Vec::new();
    for l in listeners {
        match l.socket {
            listen::Socket::Tcp(socket) => builder = builder.listener(socket),
            listen::Socket::Unix(socket, file) => {
                builder = builder.unix_listener(socket);
                socket_files.push(file);
            }
        }
    }
    for addr in reused {
        builder = builder.bind(addr);
    }
    builder = builder
        .reuse_port(args.reuse_port)
        .backlog(i32::try_from(args.pool.backlog).unwrap_or(i32::MAX));
    if let Some(max) = args.max_requests {
        // The jitter is added to the limit: keep the sum a `u64`.
        let jitter = args.max_requests_jitter.unwrap_or(max / 10);
        builder = builder.max_requests(max, jitter.min(u64::MAX - max));
    }
    builder = limits(builder, &args);
    if args.access_log.is_some() {
        // The library formats the line; `access` writes (and reopens) it.
        builder = builder.access_log_to(ufork_wsgi_like::AccessLog {
            format: args.access_log_format.into(),
            sink: ufork_wsgi_like::AccessSink::Log,
        });
    }
    let access_log = args.access_log.is_some();
    let builder = builder.arbiter(|b| {
        let b = session.configure(&args.pool, workers, b);
        if access_log {
            b.layer(access::Reopen)
        } else {
            b
        }
    });
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
    let outcome = server
        .run()
        .map_err(|e| runtime(format!("the server failed: {}", failure::chain(&e))))?;
    drop(socket_files);
    session.takeover_result()?;
    failure::gave_up(&outcome, args.pool.give_up_after)
}

/// `--log-stall-timeout` as the pool uses it, at most half of `--timeout`
/// (see [`crate::cli::log_stall`]), and the warning when a value given was
/// lowered.
fn log_stall(args: &ServeArgs) -> (Duration, Option<String>) {
    crate::cli::log_stall(
        args.pool.log_stall_timeout,
        Some(
            args.timeout
                .unwrap_or(ufork_wsgi_like::DEFAULT_HEARTBEAT_TIMEOUT),
        ),
        args.timeout.is_none(),
    )
}

/// Where Linux (5.14 and newer) says whether the connections queued on a
/// `SO_REUSEPORT` socket that closes move to another socket of its group.
const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// With `--reuse-port`, a worker that stops (a rolling restart, a stop, a
/// scale down) closes its own socket, and the kernel resets the
/// connections queued on it, unless `tcp_migrate_req` moves them to a
/// worker still serving. Measured with wrk -c64 and a SIGHUP a second:
/// 13 socket errors with 0, none with 1. Say so once, at the start.
fn warn_unless_requests_migrate() {
    if migrate_req_off(std::fs::read_to_string(MIGRATE_REQ).ok().as_deref()) {
        log::warn!(
            target: "ufork",
            "--reuse-port: connections queued on a stopping worker's socket (a rolling restart, a stop) are reset; set net.ipv4.tcp_migrate_req=1 (sysctl, Linux 5.14+) to have the kernel hand them to a worker still serving"
        );
    }
}

/// Whether the sysctl's text says queued requests are not migrated (no
/// such file: a kernel without the setting never migrates them).
fn migrate_req_off(text: Option<&str>) -> bool {
    text.is_none_or(|t| t.trim() == "0")
}

/// `--check-config`: what `exec` checks before it takes the pidfile and
/// binds, that `--user` and `--group` name a user and a group this process
/// may switch to (it does, last), and the `--log-stall-timeout` warning.
fn check_config(args: &ServeArgs) -> Result<()> {
    if let Some(dir) = &args.dir {
        ufork_wsgi_like::static_files::StaticFiles::new(dir).map_err(|e| {
            runtime(format!(
                "DIR {}: {}; give an existing directory to serve, or none for the hello app",
                dir.display(),
                failure::io_text(&e)
            ))
        })?;
    }
    let options = listen::Options {
        for_run: false,
        unix_mode: args.unix_mode,
        backlog: args.pool.backlog,
    };
    let binds = if args.bind.is_empty() {
        vec![default_bind()?]
    } else {
        args.bind.clone()
    };
    let resolved = listen::resolve_all(&binds, options)?;
    if args.reuse_port {
        reuse_port_addrs(&resolved)?;
    }
    pool::workers(&args.pool)?;
    if let (_, Some(warning)) = log_stall(args) {
        log::warn!(target: "ufork", "{warning}");
    }
    // Last: it switches this process to --user and --group.
    crate::privs::check(args.pool.user.as_deref(), args.pool.group.as_deref())?;
    term::say(format!(
        "ufork serve: the configuration is valid ({} to bind; nothing was started)",
        binds.join(", ")
    ));
    Ok(())
}

/// The addresses each worker binds with `--reuse-port`: TCP, with a port
/// (with port 0 every worker would get a port of its own).
fn reuse_port_addrs(binds: &[listen::Bind]) -> Result<Vec<std::net::SocketAddr>> {
    binds
        .iter()
        .map(|b| match b.addr {
            listen::Address::Tcp(addr) if addr.port() != 0 => Ok(addr),
            listen::Address::Unix(_) => Err(failure::usage(format!(
                "--bind {}: --reuse-port is for TCP addresses (a unix socket path has one listener)",
                b.text
            ))),
            listen::Address::Tcp(_) => Err(failure::usage(format!(
                "--bind {}: --reuse-port needs a fixed port (with port 0 each worker would listen on a port of its own)",
                b.text
            ))),
        })
        .collect()
}

/// The HTTP flags, each only when given (the library's defaults otherwise).
fn limits(mut builder: ufork_wsgi_like::Builder, args: &ServeArgs) -> ufork_wsgi_like::Builder {
    if let Some(threads) = args.threads {
        builder = builder.threads(threads);
    }
    if let Some(keep_alive) = args.keep_alive {
        builder = builder.keep_alive_timeout(keep_alive);
    }
    if let Some(bytes) = args.limit_request_line {
        builder = builder.max_request_line_bytes(bytes);
    }
    if let Some(fields) = args.limit_request_fields {
        builder = builder.max_headers(fields as usize);
    }
    if let Some(bytes) = args.limit_request_field_size {
        builder = builder.max_header_bytes(bytes);
    }
    builder
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_kernel_that_migrates_queued_connections_goes_unwarned() {
        assert!(migrate_req_off(Some("0\n")));
        assert!(migrate_req_off(None));
        assert!(!migrate_req_off(Some("1\n")));
    }
}
