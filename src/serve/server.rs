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
