//! `serve --access-log PATH|-`: one line per request, formatted by
//! ufork-wsgi-like in the `--access-log-format` (Common, Combined or JSON,
//! each timestamped), handed to the CLI's logger under [`TARGET`] and
//! written here, apart from the arbiter's own log.
//!
//! The workers write the lines themselves: to their stdout with `-` (so the
//! capture prefixes them with the worker's slot, like any worker output), or
//! appended to PATH, which the arbiter opens before the fork (so a worker
//! that runs as `--user` can still write it) and every worker inherits. Each
//! line is one `write(2)` to a file opened with O_APPEND, so lines from many
//! workers never interleave. On SIGUSR1 (or `reopen`) the arbiter reopens
//! PATH, creating the new file; before each line a worker compares PATH's
//! inode with its open file's (one `stat(2)`) and, when they differ and PATH
//! exists, reopens it too, so a rotation reaches every worker's next line
//! without replacing the workers.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ufork_core::{Context, Layer};

use crate::failure::{self, Result, io_text};

/// The log target ufork-wsgi-like writes access lines to.
pub const TARGET: &str = "ufork_wsgi_like::access";

/// Where access lines go, once `--access-log` set it.
static SINK: Mutex<Option<Sink>> = Mutex::new(None);

#[derive(Debug)]
enum Sink {
    Stdout,
    File {
        file: File,
        path: PathBuf,
        /// The open file's device and inode.
        id: (u64, u64),
    },
}

/// A file's device and inode.
fn id_of(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Reopens `path` into `file` when it names another file than the open one.
fn follow(file: &mut File, path: &Path, id: &mut (u64, u64)) {
    let Ok(meta) = std::fs::metadata(path) else {
        // Moved away and not yet recreated: keep the open file.
        return;
    };
    if id_of(&meta) == *id {
        return;
    }
    if let Ok(new) = open_file(path)
        && let Ok(meta) = new.metadata()
    {
        *id = id_of(&meta);
        *file = new;
    }
}

/// Opens PATH as the log file is opened: a symbolic link at it only where
/// no other user could have put it (see [`ufork_daemon::open_append`]).
fn open_file(path: &Path) -> std::io::Result<File> {
    ufork_daemon::open_append(path, 0o640)
}

/// Opens `--access-log`: `-` for stdout, or a file to append to.
///
/// # Errors
///
/// A runtime failure naming the flag and the path.
pub fn open(spec: &Path) -> Result<()> {
    let sink = if spec == Path::new("-") {
        Sink::Stdout
    } else {
        let file = open_file(spec).map_err(|e| {
            failure::runtime(format!(
                "--access-log {}: cannot open it: {}",
                spec.display(),
                io_text(&e)
            ))
        })?;
        let id = file.metadata().map(|m| id_of(&m)).unwrap_or_default();
        Sink::File {
            file,
            path: spec.to_owned(),
            id,
        }
    };
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    Ok(())
}

/// Writes `record` if it is an access line and an access log is open;
/// whether it was one (and so is taken care of).
pub fn log(record: &log::Record<'_>) -> bool {
    if record.target() != TARGET {
        return false;
    }
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    let line = format!("{}\n", record.args());
    match sink.as_mut() {
        Some(Sink::File { file, path, id }) => {
            follow(file, path, id);
            let _ = file.write_all(line.as_bytes());
        }
        Some(Sink::Stdout) => {
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
        None => return false,
    }
    true
}

/// Reopens the access log file on SIGUSR1 (or the `reopen` command).
#[derive(Debug)]
pub struct Reopen;

impl Layer for Reopen {
    fn reopen(&mut self, _ctx: &mut Context<'_>) {
        let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Sink::File { file, path, id }) = sink.as_mut() {
            match open_file(path) {
                Ok(new) => {
                    *id = new.metadata().map(|m| id_of(&m)).unwrap_or_default();
                    *file = new;
                    log::info!(target: "ufork", "reopened the access log {}", path.display());
                }
                Err(e) => log::error!(
                    target: "ufork",
                    "--access-log {}: cannot reopen it: {}",
                    path.display(),
                    io_text(&e)
                ),
            }
        }
    }
}
