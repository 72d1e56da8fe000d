//! A static-file app: serves the files under a directory.
//!
//! ```no_run
//! use ufork_wsgi_like::static_files::StaticFiles;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! ufork_wsgi_like::serve("127.0.0.1:8000", StaticFiles::new("public")?, 2)?;
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use http::header::{
    ACCEPT_RANGES, ALLOW, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, LAST_MODIFIED, LOCATION, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::date::{DATE_LEN, format as format_date, parse as parse_date};
use crate::{App, Body, ResponseBody};

/// Serves the files under a root directory: `GET` and `HEAD` only, the
/// `Content-Type` from the file extension, `index.html` for a directory (a
/// directory without one is 404: no listings), `301` to add the slash to a
/// directory path, 404 for a file path with one. Only regular files are served: a FIFO, socket or device
/// under the root is 404, and opening one never blocks the worker. Names
/// are bytes: a percent-encoded name that is not UTF-8 is served like any
/// other.
///
/// Nothing outside the root is reachable. `..` segments are refused (404),
/// and the kernel resolves every path beneath the root directory
/// (`openat2(2)` with `RESOLVE_BENEATH`): a symbolic link may point
/// anywhere inside the root, but a path that leads out of it is 404. The
/// root path is resolved once, at construction; the directory it names is
/// opened then, and again as soon as the path names another one (a deploy
/// that renames a new tree into place, or deletes and copies it anew), so
/// requests always see the tree at the root path now. A link put in the
/// root's place is not followed (404). A link with an absolute target,
/// which `RESOLVE_BENEATH` refuses, and kernels without `openat2` (before
/// Linux 5.6) take a slower path that resolves the whole path and checks
/// it lies under the root. A file or directory the server may not open is
/// `403 Forbidden`.
///
/// Like a file server: every file carries `Last-Modified` and a strong
/// `ETag` (inode, size and modification time), and a request whose
/// `If-None-Match` matches (or, without one, whose `If-Modified-Since` is
/// not older than the file) gets `304 Not Modified`. A single byte range
/// (`Range: bytes=A-B`, `A-`, `-N`) gets `206 Partial Content`, an
/// unsatisfiable one `416` with `Content-Range: bytes */LEN`; several
/// ranges (no multipart answers), or an `If-Range` that does not match,
/// get the whole file.
///
/// Bodies go out with `sendfile(2)`, the length being the file's when it
/// was opened: a file that grows meanwhile is cut at that length, and one
/// that shrinks ends the response early with a reset connection (see
/// [`ResponseBody`]), never a hang.
///
/// [`mount`](Self::mount) serves the tree under a path prefix (`/static`):
/// other paths get 404, and redirects keep the prefix.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    root: PathBuf,
    /// The root directory, opened once, and again whenever the path `root`
    /// names another one: every path is resolved beneath it. Shared by
    /// clones, so one reopening serves them all.
    root_dir: Arc<RwLock<RootDir>>,
    prefix: String,
}

/// How a file under the root is opened: read-only, and without blocking on
/// a FIFO (for a regular file `O_NONBLOCK` changes nothing).
const OPEN_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY);

/// Resolution stays beneath the root; `/proc` magic links are refused.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

impl StaticFiles {
    /// Serves the files under `root`.
    ///
    /// # Errors
    ///
    /// `root` cannot be resolved or opened, or is not a directory.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().canonicalize()?;
        let root_dir = RootDir::open(&root).map_err(|e| match e {
            Errno::NOTDIR => io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ),
            e => e.into(),
        })?;
        Ok(Self {
            root,
            root_dir: Arc::new(RwLock::new(root_dir)),
            prefix: String::new(),
        })
    }

    /// Serves the tree under the URL path `prefix` (say `/static`): a
    /// request for `/static/app.css` gets `ROOT/app.css`, and paths outside
    /// the prefix get 404. A trailing slash on `prefix` is ignored.
    #[must_use]
    pub fn mount(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_owned();
        if !self.prefix.is_empty() && !self.prefix.starts_with('/') {
            self.prefix.insert(0, '/');
        }
        self
    }

    /// The resolved root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens `rel`, a relative path of plain names, beneath the root: one
    /// `openat2(2)` that never follows a link out of it.
    fn open(&self, rel: &Path) -> Result<File, StatusCode> {
        match self.open_beneath(rel) {
            Ok(fd) => Ok(File::from(fd)),
            // An absolute link (which may still point into the root), a
            // link out of the root, a rename racing the lookup, or no
            // `openat2` (Linux before 5.6, or a seccomp filter): resolve
            // the path here and check where it leads.
            Err(Errno::XDEV | Errno::AGAIN | Errno::NOSYS | Errno::PERM) => self.open_resolved(rel),
            Err(e) => Err(errno_status(e)),
        }
    }

    /// One `openat2(2)` of `rel` beneath the root directory, after one
    /// `lstat(2)` of the root path: a root moved away, or deleted and made
    /// anew (a deploy by rename or by copy), is looked up in the directory
    /// the path names now, as a server that resolves whole paths would.
    fn open_beneath(&self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        let now = rustix::fs::lstat(&self.root)?;
        let now = (now.st_dev, now.st_ino);
        {
            let root = self.root_dir.read().unwrap_or_else(|p| p.into_inner());
            if root.id == now {
                return rustix::fs::openat2(&root.fd, rel, OPEN_FLAGS, Mode::empty(), BENEATH);
            }
        }
        let mut root = self.root_dir.write().unwrap_or_else(|p| p.into_inner());
        if root.id != now {
            // A link in its place is not followed: the root was resolved
            // once, at construction.
            *root = RootDir::open(&self.root)?;
        }
        rustix::fs::openat2(&root.fd, rel, OPEN_FLAGS, Mode::empty(), BENEATH)
    }

    /// The slow path of [`open`](Self::open): the path resolved (links
    /// included), checked to lie under the root, and opened without links.
    fn open_resolved(&self, rel: &Path) -> Result<File, StatusCode> {
        let resolved = self
            .root
            .join(rel)
            .canonicalize()
            .map_err(|e| io_status(&e))?;
        let Ok(inside) = resolved.strip_prefix(&self.root) else {
            return Err(StatusCode::NOT_FOUND);
        };
        let inside = if inside.as_os_str().is_empty() {
            Path::new(".")
        } else {
            inside
        };
        // Beneath the root again where the kernel can, so a link swapped
        // in since the check cannot lead out.
        match self.open_beneath(inside) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::NOSYS | Errno::PERM) => {
                rustix::fs::open(&resolved, OPEN_FLAGS, Mode::empty())
                    .map(File::from)
                    .map_err(errno_status)
            }
            Err(e) => Err(errno_status(e)),
        }
    }

    fn serve(&self, request: &Request<Body>) -> Response<ResponseBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = status(StatusCode::METHOD_NOT_ALLOWED);
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let uri_path = request.uri().path();
        // The path under the mount point: `/static` and `/static/x` are in
        // it, `/staticx` is not.
        let Some(rest) = uri_path.strip_prefix(self.prefix.as_str()) else {
            return status(StatusCode::NOT_FOUND);
        };
        if !rest.is_empty() && !rest.starts_with('/') {
            return status(StatusCode::NOT_FOUND);
        }
        let Some(decoded) = percent_decode(rest) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let Some(mut rel) = relative_path(&decoded) else {
            return status(StatusCode::NOT_FOUND);
        };
        let (file, meta) = match self.open_file(&rel) {
            Ok(opened) => opened,
            Err(code) => return status(code),
        };
        let (file, meta) = if meta.is_dir() {
            // The redirect names the whole request path, prefix included.
            if !uri_path.ends_with('/') {
                let mut location = format!("{uri_path}/");
                if let Some(query) = request.uri().query() {
                    location.push('?');
                    location.push_str(query);
                }
                let mut response = status(StatusCode::MOVED_PERMANENTLY);
                if let Ok(value) = HeaderValue::try_from(location) {
                    response.headers_mut().insert(LOCATION, value);
                }
                return response;
            }
            drop(file);
            rel.push("index.html");
            match self.open_file(&rel) {
                Ok(opened) => opened,
                // A directory without an index is 404: no listing.
                Err(code) => return status(code),
            }
        } else if decoded.ends_with(b"/") {
            // `file.txt/` names a directory that is not there (as open(2)
            // says of it): served, it would break the page's relative links.
            return status(StatusCode::NOT_FOUND);
        } else {
            (file, meta)
        };
        if !meta.is_file() {
            return status(StatusCode::NOT_FOUND);
        }
        let validators = Validators::of(&meta);
        let headers = request.headers();
        if validators.not_modified(headers) {
            let mut response = status(StatusCode::NOT_MODIFIED);
            *response.body_mut() = ResponseBody::empty();
            response.headers_mut().remove(CONTENT_TYPE);
            validators.insert(response.headers_mut());
            return response;
        }
        let len = meta.len();
        let range = match headers.get(RANGE) {
            Some(value) if validators.if_range(headers) => parse_range(value.as_bytes(), len),
            _ => Range::Whole,
        };
        let mut response = match range {
            Range::Whole => Response::new(ResponseBody::file_with_len(file, len)),
            Range::Unsatisfiable => {
                let mut response = status(StatusCode::RANGE_NOT_SATISFIABLE);
                if let Ok(value) = HeaderValue::try_from(format!("bytes */{len}")) {
                    response.headers_mut().insert(CONTENT_RANGE, value);
                }
                return response;
            }
            Range::Part(first, last) => {
                let mut file = file;
                if let Err(e) = file.seek(SeekFrom::Start(first)) {
                    return status(io_status(&e));
                }
                let mut response =
                    Response::new(ResponseBody::file_with_len(file, last - first + 1));
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(value) = HeaderValue::try_from(format!("bytes {first}-{last}/{len}")) {
                    response.headers_mut().insert(CONTENT_RANGE, value);
                }
                response
            }
        };
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&rel)));
        headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        validators.insert(headers);
        response
    }

    /// Opens `rel` beneath the root and reads its metadata.
    fn open_file(&self, rel: &Path) -> Result<(File, Metadata), StatusCode> {
        let file = self.open(rel)?;
        let meta = file.metadata().map_err(|e| io_status(&e))?;
        Ok((file, meta))
    }
}

/// The root directory, open to resolve paths beneath, and its identity.
#[derive(Debug)]
struct RootDir {
    fd: OwnedFd,
    /// Device and inode.
    id: (u64, u64),
}

impl RootDir {
    /// Opens the directory at `root`, an already resolved path: a link in
    /// its place is refused.
    fn open(root: &Path) -> rustix::io::Result<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        Ok(Self {
            fd,
            id: (stat.st_dev, stat.st_ino),
        })
    }
}

/// The path under the root that decoded request path names: its plain
/// names joined (`.` for the root itself), or `None` for a `..` segment or
/// a name no file can have (a NUL) or that another system reads as a
/// separator (a backslash).
fn relative_path(decoded: &[u8]) -> Option<PathBuf> {
    let mut rel = PathBuf::from(".");
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => return None,
            s if s.contains(&0) || s.contains(&b'\\') => return None,
            s => rel.push(OsStr::from_bytes(s)),
        }
    }
    Some(rel)
}

/// A file's `ETag` and `Last-Modified`.
struct Validators {
    etag: String,
    modified_secs: u64,
}

impl Validators {
    fn of(meta: &Metadata) -> Self {
        let secs = u64::try_from(meta.mtime()).unwrap_or(0);
        let nanos = meta.mtime_nsec();
        Self {
            // Strong: any change of content changes size or mtime (or, for a
            // replaced file, the inode).
            etag: format!(
                "\"{:x}-{:x}-{:x}.{:x}\"",
                meta.ino(),
                meta.len(),
                secs,
                nanos
            ),
            modified_secs: secs,
        }
    }

    fn insert(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::try_from(self.etag.as_str()) {
            headers.insert(ETAG, value);
        }
        let mut date = [0u8; DATE_LEN];
        format_date(self.modified_secs, &mut date);
        if let Ok(value) = HeaderValue::from_bytes(&date) {
            headers.insert(LAST_MODIFIED, value);
        }
    }

    /// RFC 9110 §13.2.2: `If-None-Match` first (`*` or a matching tag, weak
    /// comparison); without it, `If-Modified-Since`.
    fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(value) = headers.get(IF_NONE_MATCH) {
            return value.to_str().is_ok_and(|list| {
                list.split(',')
                    .map(str::trim)
                    .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag)
            });
        }
        headers
            .get(IF_MODIFIED_SINCE)
            .and_then(|v| parse_date(v.as_bytes()))
            .is_some_and(|since| self.modified_secs <= since)
    }

    /// Whether a `Range` applies: no `If-Range`, or one naming this file's
    /// entity tag (strong comparison) or its exact `Last-Modified` date.
    fn if_range(&self, headers: &HeaderMap) -> bool {
        match headers.get(IF_RANGE) {
            None => true,
            Some(value) => {
                value.as_bytes() == self.etag.as_bytes()
                    || parse_date(value.as_bytes()) == Some(self.modified_secs)
            }
        }
    }
}

/// What a `Range` header asks of a file of some length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Range {
    /// No usable single range: the whole file.
    Whole,
    /// First and last byte offsets, inclusive.
    Part(u64, u64),
    /// A single range that lies wholly past the end: 416.
    Unsatisfiable,
}

/// Parses `bytes=A-B`, `bytes=A-` or `bytes=-N` against a file of `len`
/// bytes. Anything else, several ranges included, is `Whole` (a server may
/// ignore `Range`, RFC 9110 §14.2).
fn parse_range(value: &[u8], len: u64) -> Range {
    let Some(spec) = value.strip_prefix(b"bytes=") else {
        return Range::Whole;
    };
    let Ok(spec) = std::str::from_utf8(spec) else {
        return Range::Whole;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => Range::Unsatisfiable,
            Some(n) if len > 0 => Range::Part(len.saturating_sub(n), len - 1),
            Some(_) => Range::Unsatisfiable,
            None => Range::Whole,
        },
        (first, last) => {
            let Some(first) = number(first) else {
                return Range::Whole;
            };
            let last = match last {
                "" => None,
                l => match number(l) {
                    Some(l) if l >= first => Some(l),
                    // A huge end is a valid "to the end"; an end before the
                    // start makes the header invalid, so it is ignored.
                    Some(_) => return Range::Whole,
                    None => return Range::Whole,
                },
            };
            if first >= len {
                return Range::Unsatisfiable;
            }
            Range::Part(first, last.map_or(len - 1, |l| l.min(len - 1)))
        }
    }
}

impl App for StaticFiles {
    fn call(&self, request: Request<Body>) -> Response<ResponseBody> {
        self.serve(&request)
    }
}

fn io_status(e: &io::Error) -> StatusCode {
    Errno::from_io_error(e).map_or(StatusCode::INTERNAL_SERVER_ERROR, errno_status)
}

/// What a failure to open or read a file under the root tells the client:
/// no such file (a missing name, a file where a directory should be, a
/// link loop or out of the root, a socket) is 404, no permission 403.
fn errno_status(e: Errno) -> StatusCode {
    match e {
        Errno::NOENT
        | Errno::NOTDIR
        | Errno::LOOP
        | Errno::NAMETOOLONG
        | Errno::NXIO
        | Errno::XDEV => StatusCode::NOT_FOUND,
        Errno::ACCESS | Errno::PERM => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn status(code: StatusCode) -> Response<ResponseBody> {
    let reason = code.canonical_reason().unwrap_or("Error");
    let mut response = Response::new(ResponseBody::from(format!("{reason}\n")));
    *response.status_mut() = code;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Decodes `%XX` escapes into the bytes of a name; `None` if an escape is
/// malformed.
fn percent_decode(path: &str) -> Option<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // Two hex digits: `from_str_radix` alone would take `+1`.
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The media type for a file name's extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "text" | "log" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some(&b"/a b"[..]));
        assert_eq!(percent_decode("/%2e%2E/x").as_deref(), Some(&b"/../x"[..]));
        assert_eq!(
            percent_decode("/%ff%C3").as_deref(),
            Some(&b"/\xff\xc3"[..])
        );
        assert_eq!(percent_decode("/%zz"), None);
        assert_eq!(percent_decode("/%2"), None);
        assert_eq!(percent_decode("/%+1"), None);
    }

    #[test]
    fn request_paths_become_plain_names_under_the_root() {
        let rel = |p: &[u8]| relative_path(p).map(|r| r.into_os_string().into_vec());
        assert_eq!(rel(b"/"), Some(b".".to_vec()));
        assert_eq!(rel(b"/a//./b/"), Some(b"./a/b".to_vec()));
        assert_eq!(rel(b"/\xff.bin"), Some(b"./\xff.bin".to_vec()));
        assert_eq!(rel(b"/a/../b"), None);
        assert_eq!(rel(b"/.."), None);
        assert_eq!(rel(b"/a\0b"), None);
        assert_eq!(rel(b"/a\\..\\b"), None);
    }

    #[test]
    fn ranges() {
        use super::Range::*;
        assert_eq!(parse_range(b"bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range(b"bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range(b"bytes=90-1000", 100), Part(90, 99));
        assert_eq!(parse_range(b"bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range(b"bytes=-1000", 100), Part(0, 99));
        assert_eq!(parse_range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range(b"bytes=9-1", 100), Whole);
        assert_eq!(parse_range(b"items=0-1", 100), Whole);
        assert_eq!(parse_range(b"bytes=x-1", 100), Whole);
        assert_eq!(parse_range(b"bytes=0-99999999999999999999999", 100), Whole);
        assert_eq!(
            parse_range(b"bytes=18446744073709551615-", u64::MAX),
            Unsatisfiable
        );
    }

    #[test]
    fn the_root_must_be_a_directory() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = StaticFiles::new(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory, "{err}");
        assert!(err.to_string().contains("Cargo.toml"), "{err}");
        let missing = StaticFiles::new("/nonexistent/ufork-static-root").unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let root = StaticFiles::new(env!("CARGO_MANIFEST_DIR")).unwrap();
        let resolved = Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize();
        assert_eq!(root.root(), resolved.unwrap());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
