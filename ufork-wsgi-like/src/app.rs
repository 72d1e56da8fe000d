//! The application interface: [`App`], and the [`ResponseBody`] an app returns.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io;

use http::{Request, Response};

use crate::Body;

/// An HTTP application: a function from a request to a response, called on a
/// worker's thread for every request (WSGI's `application(environ, start_response)`).
///
/// Every `Fn(Request<Body>) -> Response<ResponseBody> + Send + Sync + 'static`
/// is an `App`; implement it by hand for a type that carries state, like
/// [`StaticFiles`](crate::static_files::StaticFiles).
///
/// The app runs synchronously: while it runs, its thread serves nothing else.
/// A panic becomes a `500 Internal Server Error` for that request and a log
/// line; the worker goes on serving. So does a response with an interim
/// (1xx) status, which HTTP/1.1 cannot send as a final answer.
pub trait App: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, request: Request<Body>) -> Response<ResponseBody>;
}

impl<F> App for F
where
    F: Fn(Request<Body>) -> Response<ResponseBody> + Send + Sync + 'static,
{
    fn call(&self, request: Request<Body>) -> Response<ResponseBody> {
        self(request)
    }
}

type Chunks = Box<dyn Iterator<Item = io::Result<Vec<u8>>> + Send>;

pub(crate) enum Kind {
    Empty,
    Bytes(Cow<'static, [u8]>),
    File { file: File, len: u64 },
    Stream(Chunks),
}

/// The body of a response: bytes, a file, or an iterator of chunks (WSGI's
/// iterable).
///
/// Bytes and files are sent with a `Content-Length`. A stream is sent with
/// the `Content-Length` the app set, if any; otherwise chunked to HTTP/1.1
/// clients and delimited by closing the connection for HTTP/1.0 clients.
///
/// A body that fails once its head is sent — a stream's error or panic, a
/// file or a stream shorter than its length — resets the connection (TCP
/// RST): the client sees an error, not a truncated body that looks whole. A
/// stream longer than the `Content-Length` the app set is cut to it and the
/// connection closed.
pub struct ResponseBody {
    pub(crate) kind: Kind,
}

impl ResponseBody {
    /// No body (`Content-Length: 0`).
    pub fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    /// A body held in memory. Static data is not copied.
    pub fn bytes(bytes: impl Into<Cow<'static, [u8]>>) -> Self {
        Self {
            kind: Kind::Bytes(bytes.into()),
        }
    }

    /// The contents of a file, sent with its length as it is now.
    ///
    /// # Errors
    ///
    /// Reading the file's metadata fails.
    pub fn file(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self::file_with_len(file, len))
    }

    /// The first `len` bytes of a file, from its current position.
    pub fn file_with_len(file: File, len: u64) -> Self {
        Self {
            kind: Kind::File { file, len },
        }
    }

    /// A body produced piece by piece, as the iterator yields chunks.
    ///
    /// The response head is written before the first chunk is asked for,
    /// and each chunk is written as soon as it is yielded (one write per
    /// chunk, nothing held back): server-sent events, progress output and
    /// long polling reach the client as they are made. Yield chunks of tens
    /// of KiB for bulk data; tiny chunks cost a write each. Once the
    /// client's socket is full, the next chunk is asked for only when the
    /// client has taken more: the iterator runs on the serving thread's
    /// event loop, which serves other connections meanwhile, so a slow
    /// reader holds no thread (a chunk slow to make still does, while it is
    /// made: an iterator that waits for events holds its thread while it
    /// waits, and after such a chunk the thread serves its other
    /// connections before it asks for the next).
    ///
    /// The iterator may own the request's [`Body`] (`std::mem::take` it)
    /// and read it as it yields: an upload transformed or echoed as it
    /// arrives. Such a stream (one that holds the request's body while not
    /// all of it was read) keeps its serving thread until it ends, waiting
    /// for the client as it reads and writes. What it leaves unread is
    /// dropped once it ends if all of it has arrived; otherwise the
    /// connection closes after the response. A client waiting for `100
    /// Continue` is not sent one once the response has begun.
    pub fn stream<I, T>(chunks: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
        T: Into<Vec<u8>>,
    {
        Self {
            kind: Kind::Stream(Box::new(chunks.into_iter().map(|c| Ok(c.into())))),
        }
    }

    /// A body produced piece by piece by an iterator that may fail; an error
    /// (or a panic) ends the response early and resets the connection (TCP
    /// RST), so the client sees an error rather than a body that looks whole
    /// — a close-delimited body could not tell it otherwise.
    pub fn try_stream<I, T>(chunks: I) -> Self
    where
        I: IntoIterator<Item = io::Result<T>>,
        I::IntoIter: Send + 'static,
        T: Into<Vec<u8>>,
    {
        Self {
            kind: Kind::Stream(Box::new(chunks.into_iter().map(|c| c.map(Into::into)))),
        }
    }

    /// The body's length, if known without producing it (`None` for streams).
    pub fn len(&self) -> Option<u64> {
        match &self.kind {
            Kind::Empty => Some(0),
            Kind::Bytes(b) => Some(b.len() as u64),
            Kind::File { len, .. } => Some(*len),
            Kind::Stream(_) => None,
        }
    }

    /// Whether the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Reads a body held in memory (empty, bytes); `None` for files and streams.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Empty => Some(&[]),
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Produces the whole body in memory (reads the file, drains the stream):
    /// handy to test an app without a socket.
    ///
    /// # Errors
    ///
    /// Reading the file or a chunk of the stream fails.
    pub fn into_vec(self) -> io::Result<Vec<u8>> {
        match self.kind {
            Kind::Empty => Ok(Vec::new()),
            Kind::Bytes(b) => Ok(b.into_owned()),
            Kind::File { file, len } => {
                let mut out = Vec::new();
                io::Read::read_to_end(&mut io::Read::take(file, len), &mut out)?;
                Ok(out)
            }
            Kind::Stream(chunks) => {
                let mut out = Vec::new();
                for chunk in chunks {
                    out.extend_from_slice(&chunk?);
                }
                Ok(out)
            }
        }
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Empty => f.write_str("ResponseBody::Empty"),
            Kind::Bytes(b) => write!(f, "ResponseBody::Bytes({} bytes)", b.len()),
            Kind::File { len, .. } => write!(f, "ResponseBody::File({len} bytes)"),
            Kind::Stream(_) => f.write_str("ResponseBody::Stream"),
        }
    }
}

impl From<&'static str> for ResponseBody {
    fn from(text: &'static str) -> Self {
        Self::bytes(text.as_bytes())
    }
}

impl From<&'static [u8]> for ResponseBody {
    fn from(bytes: &'static [u8]) -> Self {
        Self::bytes(bytes)
    }
}

impl From<String> for ResponseBody {
    fn from(text: String) -> Self {
        Self::bytes(text.into_bytes())
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(bytes: Vec<u8>) -> Self {
        Self::bytes(bytes)
    }
}

impl From<Cow<'static, [u8]>> for ResponseBody {
    fn from(bytes: Cow<'static, [u8]>) -> Self {
        Self::bytes(bytes)
    }
}
