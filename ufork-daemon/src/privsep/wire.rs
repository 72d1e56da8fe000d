//! The helper's protocol: one request, one answer, each a single
//! `SOCK_SEQPACKET` message (so a message is never split nor merged).
//!
//! A request is an operation byte and a grant number (u32, little-endian):
//! the helper looks the number up in the grants it was forked with, so a
//! path never travels over the channel. An answer is an errno (i32,
//! little-endian; 0 for success) and, for an opened log, its descriptor as
//! `SCM_RIGHTS`.

use std::io;

/// What the arbiter asks the helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Rotate log number N (`path` → `path.1` …) and send a fresh `path`.
    RotateLog(u32),
    /// Send log number N opened (created) again, after a rename by logrotate.
    ReopenLog(u32),
    /// Remove file number N if its path still names the file granted.
    RemoveFile(u32),
    /// Remove the files still granted (see `helper::clean_up`), answer and
    /// exit.
    Finish,
}

/// The size of every request.
pub(crate) const REQUEST_LEN: usize = 5;
/// The size of every answer.
pub(crate) const ANSWER_LEN: usize = 4;

const ROTATE: u8 = b'R';
const REOPEN: u8 = b'O';
const REMOVE: u8 = b'U';
const FINISH: u8 = b'F';

impl Request {
    pub(crate) fn encode(self) -> [u8; REQUEST_LEN] {
        let (op, n) = match self {
            Request::RotateLog(n) => (ROTATE, n),
            Request::ReopenLog(n) => (REOPEN, n),
            Request::RemoveFile(n) => (REMOVE, n),
            Request::Finish => (FINISH, 0),
        };
        let n = n.to_le_bytes();
        [op, n[0], n[1], n[2], n[3]]
    }

    /// `None` for anything but a well-formed request.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Request> {
        let [op, a, b, c, d] = *<&[u8; REQUEST_LEN]>::try_from(bytes).ok()?;
        let n = u32::from_le_bytes([a, b, c, d]);
        match op {
            ROTATE => Some(Request::RotateLog(n)),
            REOPEN => Some(Request::ReopenLog(n)),
            REMOVE => Some(Request::RemoveFile(n)),
            FINISH if n == 0 => Some(Request::Finish),
            _ => None,
        }
    }
}

/// The errno of an outcome, 0 for success. An error without an OS code
/// travels as EIO.
pub(crate) fn encode_answer<T>(outcome: &io::Result<T>) -> [u8; ANSWER_LEN] {
    let errno = match outcome {
        Ok(_) => 0,
        Err(error) => error.raw_os_error().filter(|&e| e > 0).unwrap_or(libc::EIO),
    };
    errno.to_le_bytes()
}

/// The outcome an answer carries.
///
/// # Errors
///
/// The helper's errno, or `InvalidData` for a malformed answer.
pub(crate) fn decode_answer(bytes: &[u8]) -> io::Result<()> {
    let bytes = <[u8; ANSWER_LEN]>::try_from(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed answer from the privileged helper",
        )
    })?;
    match i32::from_le_bytes(bytes) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_nothing_else_decodes() {
        for request in [
            Request::RotateLog(0),
            Request::ReopenLog(7),
            Request::RemoveFile(u32::MAX),
            Request::Finish,
        ] {
            assert_eq!(Request::decode(&request.encode()), Some(request));
        }
        assert_eq!(Request::decode(b""), None);
        assert_eq!(Request::decode(b"R\0\0\0"), None, "short");
        assert_eq!(Request::decode(b"R\0\0\0\0\0"), None, "long");
        assert_eq!(Request::decode(b"X\0\0\0\0"), None, "unknown operation");
        assert_eq!(
            Request::decode(b"F\x01\0\0\0"),
            None,
            "finish takes no grant"
        );
        // A path is never a request.
        assert_eq!(Request::decode(b"/etc/shadow"), None);
    }

    #[test]
    fn answers_carry_the_errno() {
        assert!(decode_answer(&encode_answer(&Ok(()))).is_ok());
        let denied: io::Result<()> = Err(io::Error::from_raw_os_error(libc::EACCES));
        let error = decode_answer(&encode_answer(&denied)).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EACCES));
        let other: io::Result<()> = Err(io::Error::other("no code"));
        let error = decode_answer(&encode_answer(&other)).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EIO));
        assert_eq!(
            decode_answer(b"\0\0").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
