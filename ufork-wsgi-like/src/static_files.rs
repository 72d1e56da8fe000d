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

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use http::header::{ALLOW, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::{App, Body, ResponseBody};

/// Serves the files under a root directory: `GET` and `HEAD` only, the
/// `Content-Type` from the file extension, `index.html` for a directory (a
/// directory without one is 404: no listings), `301` to add the slash to a
/// directory path. Nothing outside the root is reachable: `..` segments are
/// refused and every path is resolved (symbolic links included) and checked
/// to lie under the root, which is itself resolved once at construction.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    root: PathBuf,
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
        Ok(Self { root })
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
        let Some(decoded) = percent_decode(uri_path) else {
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
        let body = match file.metadata() {
            Ok(meta) if meta.is_file() => ResponseBody::file_with_len(file, meta.len()),
            Ok(_) => return status(StatusCode::NOT_FOUND),
            Err(e) => return status(io_status(&e)),
        };
        let mut response = Response::new(body);
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(content_type(&file_path)),
        );
        response
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
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
