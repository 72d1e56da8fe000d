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

use std::fs::{File, Metadata};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use http::header::{
    ACCEPT_RANGES, ALLOW, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, LAST_MODIFIED, LOCATION, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::date::{DATE_LEN, format as format_date, parse as parse_date};
use crate::{App, Body, ResponseBody};

/// Serves the files under a root directory: `GET` and `HEAD` only, the
/// `Content-Type` from the file extension, `index.html` for a directory (a
/// directory without one is 404: no listings), `301` to add the slash to a
/// directory path. Nothing outside the root is reachable: `..` segments are
/// refused and every path is resolved (symbolic links included) and checked
/// to lie under the root, which is itself resolved once at construction.
///
/// Like a file server: every file carries `Last-Modified` and a strong
/// `ETag` (inode, size and modification time), and a request whose
/// `If-None-Match` matches (or, without one, whose `If-Modified-Since` is
/// not older than the file) gets `304 Not Modified`. A single byte range
/// (`Range: bytes=A-B`, `A-`, `-N`) gets `206 Partial Content`, an
/// unsatisfiable one `416`; several ranges, or an `If-Range` that does not
/// match, get the whole file. Bodies go out with `sendfile(2)`.
///
/// [`mount`](Self::mount) serves the tree under a path prefix (`/static`):
/// other paths get 404, and redirects keep the prefix.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    root: PathBuf,
    prefix: String,
}

impl StaticFiles {
    /// Serves the files under `root`.
    ///
    /// # Errors
    ///
    /// `root` cannot be resolved, or is not a directory.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self {
            root,
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

    /// The resolved file for a request path, if it lies under the root.
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let resolved = path.canonicalize().ok()?;
        resolved.starts_with(&self.root).then_some(resolved)
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
        let mut path = self.root.clone();
        for segment in decoded.split('/') {
            match segment {
                "" | "." => {}
                ".." => return status(StatusCode::NOT_FOUND),
                s if s.contains('\0') || s.contains('\\') => {
                    return status(StatusCode::NOT_FOUND);
                }
                s => {
                    // A segment must be a plain name, never a root or prefix.
                    let mut components = Path::new(s).components();
                    if !matches!(
                        (components.next(), components.next()),
                        (Some(Component::Normal(_)), None)
                    ) {
                        return status(StatusCode::NOT_FOUND);
                    }
                    path.push(s);
                }
            }
        }
        let Some(mut file_path) = self.resolve(&path) else {
            return status(StatusCode::NOT_FOUND);
        };
        if file_path.is_dir() {
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
            match self.resolve(&file_path.join("index.html")) {
                Some(index) if index.is_file() => file_path = index,
                _ => return status(StatusCode::NOT_FOUND),
            }
        }
        let file = match File::open(&file_path) {
            Ok(file) => file,
            Err(e) => return status(io_status(&e)),
        };
        let meta = match file.metadata() {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return status(StatusCode::NOT_FOUND),
            Err(e) => return status(io_status(&e)),
        };
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
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(content_type(&file_path)),
        );
        headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        validators.insert(headers);
        response
    }
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
    match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
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

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is
/// not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decode("/%2e%2e/x").as_deref(), Some("/../x"));
        assert_eq!(percent_decode("/%zz"), None);
        assert_eq!(percent_decode("/%2"), None);
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
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
