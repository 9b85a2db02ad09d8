//! What every server of the supervisor shares: its event loop on a thread of its own,
//! its start-up errors, and the comparison of secrets.

use std::path::PathBuf;
use std::time::Duration;

/// How long the supervisor has to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A server's event loop on a thread of its own. Dropped, it ends: its tasks are
/// cancelled and its listeners closed.
pub struct ServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Runs the future `main` makes (inside the event loop, where sockets can join it) on
    /// a thread called `name`.
    pub fn spawn<F>(
        name: &'static str,
        main: impl FnOnce() -> F + Send + 'static,
    ) -> Result<ServerThread, ServeError>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let start = |source| ServeError::Start { name, source };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(start)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::spawn(main());
                    // Until the ServerThread is dropped (its sender with it).
                    let _ = stopped.await;
                });
            })
            .map_err(start)?;
        Ok(ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a server (the control API, the front door) cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("control socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {}: in use by a running supervisor", path.display())]
    SocketInUse { path: PathBuf },
    #[error("{what} {addr}: cannot listen: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("listen needs listen_token (the configuration check says so)")]
    NoToken,
    #[error("{key} {}: {why}", path.display())]
    Secret {
        key: &'static str,
        path: PathBuf,
        why: crate::config::secrets::SecretError,
    },
    #[error("{name}: cannot start its event loop: {source}")]
    Start {
        name: &'static str,
        source: std::io::Error,
    },
}

/// Whether `given` is `secret`, compared in time that does not depend on where they
/// differ.
pub fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A listening socket of a server: TCP or Unix.
pub trait Listener: Send + 'static {
    type Stream: Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        // Small writes (a streamed chunk) go out at once: no Nagle delay.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// The one accept loop of every server: each connection to `serve` on a task of its own,
/// with a place among `max_connections` (None: no limit) that it holds until it ends; a
/// connection beyond the limit is closed as soon as it is accepted, so that it holds no
/// descriptor. A failed accept (out of descriptors, most likely) is logged, and the loop
/// waits a little instead of trying again at once.
pub async fn accept_loop<L, F>(
    listener: L,
    what: &'static str,
    max_connections: Option<usize>,
    serve: impl Fn(L::Stream) -> F + Send + 'static,
) where
    L: Listener,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let places = max_connections.map(|n| std::sync::Arc::new(tokio::sync::Semaphore::new(n)));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let place = match &places {
                    None => None,
                    Some(p) => match p.clone().try_acquire_owned() {
                        Ok(place) => Some(place),
                        Err(_) => continue, // the stream is dropped here: closed at once
                    },
                };
                let connection = serve(stream);
                tokio::spawn(async move {
                    connection.await;
                    drop(place);
                });
            }
            Err(e) => {
                crate::log::log(&format!("{what}: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Descriptors kept for the supervisor's own work, whatever the front door's clients do:
/// the control API, ledgers, cgroup files, logs, launches.
const RESERVED_DESCRIPTORS: u64 = 256;
/// Descriptors each running instance may hold in the supervisor (its output pipe, its
/// cgroup's files, a launch's pipes, the view's files).
const DESCRIPTORS_PER_INSTANCE: u64 = 16;

/// The front door's connections at once: `configured`, or fewer where the descriptor limit
/// `nofile` would not hold them beside the supervisor's own work for `instances`
/// instances (each client connection may hold a connection to an instance too).
pub fn connection_limit(configured: usize, nofile: u64, instances: u64) -> usize {
    let reserved = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_INSTANCE * instances;
    let room = (nofile.saturating_sub(reserved) / 2).max(1);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_door_leaves_descriptors_for_the_supervisors_own_work() {
        assert_eq!(connection_limit(4096, 1_048_576, 10), 4096);
        // 1,024 descriptors, 4 instances: (1024 - 256 - 64) / 2.
        assert_eq!(connection_limit(4096, 1024, 4), 352);
        assert_eq!(connection_limit(100, 1024, 4), 100);
        assert_eq!(connection_limit(4096, 100, 4), 1);
    }

    #[test]
    fn secrets_are_compared_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"ab", b"abc"));
    }
}
