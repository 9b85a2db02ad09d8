//! A client of the control API over its Unix socket, for the CLI, tests and programs
//! that embed cuvisor: one request, its status code and body.

use super::server::ANSWER_TIMEOUT;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long [`request`] waits for an answer: the supervisor's own limit, and a margin.
const WAIT: Duration = ANSWER_TIMEOUT.saturating_add(Duration::from_secs(5));

/// Why a request to the control API got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control socket {}: {source} (is `cuvisor run` running?)", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: {0}")]
    Malformed(&'static str),
}

/// One request to a supervisor's control socket: (HTTP status, body).
pub fn request(socket: &Path, method: &str, path: &str) -> Result<(u16, String), ClientError> {
    request_waiting(socket, method, path, WAIT)
}

/// [`request`], waiting at most `wait` for the answer (a hibernate or wake is answered
/// when the model's processes have moved their memory).
pub fn request_waiting(
    socket: &Path,
    method: &str,
    path: &str,
    wait: Duration,
) -> Result<(u16, String), ClientError> {
    exchange(socket, method, path, "", wait)
}

/// [`request`] with a JSON body (`PATCH /models/NAME`).
pub fn request_json(
    socket: &Path,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), ClientError> {
    exchange(socket, method, path, &body.to_string(), WAIT)
}

/// [`request`], with the answer's head: (status, head, body).
pub fn request_with_head(
    socket: &Path,
    method: &str,
    path: &str,
) -> Result<(u16, String, String), ClientError> {
    exchange_whole(socket, method, path, "", WAIT)
}

/// The value of header `name` in an answer's `head`, if it has it.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    wait: Duration,
) -> Result<(u16, String), ClientError> {
    exchange_whole(socket, method, path, body, wait).map(|(code, _, body)| (code, body))
}

fn exchange_whole(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    wait: Duration,
) -> Result<(u16, String, String), ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_owned(),
        source,
    })?;
    let _ = stream.set_read_timeout(Some(wait));
    let kind = match body.is_empty() {
        true => "",
        false => "Content-Type: application/json\r\n",
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: cuvisor\r\n{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or(ClientError::Malformed("a malformed answer"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(ClientError::Malformed("a malformed status line"))?;
    Ok((code, head.to_owned(), body.to_owned()))
}
