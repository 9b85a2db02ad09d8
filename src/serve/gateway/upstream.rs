//! The instances' side of the front door: connections to an instance (kept alive and
//! reused) and sending a request over one.

use crate::core::effects::Owner;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use std::time::Duration;

/// A body sent to an instance or to a client.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The sending half of a connection to an instance.
pub(super) type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// An instance's idle keep-alive connections, reused by the requests sent to it.
#[derive(Default)]
pub(super) struct Connections(Mutex<Vec<Sender>>);

/// Idle connections kept per instance; more are closed.
pub(super) const MAX_IDLE: usize = 512;
/// How long an idle connection may take to be ready for the next request.
pub(super) const REUSE_WAIT: Duration = Duration::from_millis(100);
/// How long a new connection may take to be ready for its first request.
pub(super) const CONNECT_WAIT: Duration = Duration::from_secs(10);

impl Connections {
    pub(super) fn take(&self) -> Option<Sender> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keeps `c` for the next request, unless it is closed (an answer not read to its
    /// end closes it: HTTP/1 cannot abandon one answer and go on).
    pub(super) fn put(&self, c: Sender) {
        if c.is_closed() {
            return;
        }
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }
}

/// A new connection to the instance on `port`, driven by a task of its own, if the
/// socket listening there is the instance's own (`owner`): a port is free while an engine
/// loads, and another process that took it first must not be sent the clients' requests.
pub(super) async fn connect(port: u16, owner: Option<&Owner>) -> Result<Sender, String> {
    if let Some(owner) = owner {
        let owner = owner.clone();
        let ours = tokio::task::spawn_blocking(move || {
            crate::serve::server::loopback_listener(port).is_some_and(|inode| owner(inode))
        })
        .await
        .unwrap_or(false);
        if !ours {
            return Err(format!(
                "port {port} is held by a process that is not the instance's: nothing is sent there"
            ));
        }
    }
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot connect to the instance: {e}"))?;
    // Small writes (a streamed chunk) go out at once: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot connect to the instance: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends `request` (origin-form, with its Host) to the instance on `port` over one of its
/// `idle` connections, or a new one; the response's body streams from it. The connection
/// comes back with the response: it may carry another request once that body has ended.
/// A request that an idle connection could not take (the instance had closed it) goes on
/// the next one.
pub(super) async fn send(
    port: u16,
    idle: &Connections,
    owner: Option<&Owner>,
    mut request: Request<Body>,
) -> Result<(Response<Incoming>, Sender), String> {
    loop {
        let (mut sender, reused) = match idle.take() {
            Some(c) => (c, true),
            None => (connect(port, owner).await?, false),
        };
        // An idle connection is ready at once, unless the instance closed it, or answered
        // before it had read the whole of the last request (the connection is not free
        // until that body is sent): then the next one.
        if !(reused && sender.is_ready()) {
            let wait = if reused { REUSE_WAIT } else { CONNECT_WAIT };
            match tokio::time::timeout(wait, sender.ready()).await {
                Ok(Ok(())) => {}
                _ if reused => continue,
                _ => return Err("the instance's new connection is not ready".into()),
            }
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, sender)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => request = unsent,
                _ => return Err(format!("the instance did not answer: {}", e.into_error())),
            },
        }
    }
}

/// Removes the hop-by-hop headers (RFC 9110, 7.6.1): those of one connection, not of the
/// message, which a proxy must not pass on: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
/// `Trailer`, `Transfer-Encoding` and `Upgrade`. The framing of what is sent on is
/// hyper's own, from the body.
pub(super) fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    use hyper::header::{
        CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING,
        UPGRADE,
    };
    let named: Vec<hyper::header::HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| hyper::header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in [
            ("connection", "close, X-Private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "1"),
            ("content-type", "application/json"),
        ] {
            h.insert(
                hyper::header::HeaderName::from_static(k),
                hyper::header::HeaderValue::from_static(v),
            );
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);
    }
}
