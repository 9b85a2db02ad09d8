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

/// The bearer token a request carries (`Authorization: Bearer TOKEN`), or "".
pub fn bearer(headers: &hyper::HeaderMap) -> &str {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
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
/// connection beyond the limit, or that `serve` refuses (None), is closed as soon as it
/// is accepted, so that it holds no descriptor and no place. A failed accept (out of
/// descriptors, most likely) is logged, and the loop waits a little instead of trying
/// again at once.
pub async fn accept_loop<L, F>(
    listener: L,
    what: &'static str,
    max_connections: Option<usize>,
    serve: impl Fn(L::Stream) -> Option<F> + Send + 'static,
) where
    L: Listener,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let places = max_connections.map(|n| std::sync::Arc::new(tokio::sync::Semaphore::new(n)));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                // Refused, or beyond the limit: dropped here, so closed at once.
                let Some(connection) = serve(stream) else {
                    continue;
                };
                let place = match &places {
                    None => None,
                    Some(p) => match p.clone().try_acquire_owned() {
                        Ok(place) => Some(place),
                        Err(_) => continue,
                    },
                };
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

/// The user of the process at the other end of a loopback TCP connection (`peer` as this
/// side sees it, to `local`): the owner of the peer's socket, asked of the kernel by its
/// addresses (sock_diag over netlink: one socket looked up, whatever the number of
/// connections, where reading `/proc/net/tcp` would cost the whole table each time).
pub fn loopback_peer_uid(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<u32> {
    loopback_socket(peer, local).map(|(uid, _)| uid)
}

/// The socket from `from` to `to` on this host: its owner's uid and its inode, asked of
/// the kernel (sock_diag).
pub fn loopback_socket(from: std::net::SocketAddr, to: std::net::SocketAddr) -> Option<(u32, u64)> {
    let (peer, local) = (from, to);
    use std::net::SocketAddr::{V4, V6};
    let (family, src, dst) = match (peer, local) {
        (V4(p), V4(l)) => (
            libc::AF_INET as u8,
            words(&p.ip().octets()),
            words(&l.ip().octets()),
        ),
        (V6(p), V6(l)) => (
            libc::AF_INET6 as u8,
            words(&p.ip().octets()),
            words(&l.ip().octets()),
        ),
        _ => return None,
    };
    let request = DiagRequest {
        header: NetlinkHeader {
            len: std::mem::size_of::<DiagRequest>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: libc::NLM_F_REQUEST as u16,
            seq: 1,
            pid: 0,
        },
        family,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: u32::MAX,
        id: SocketId {
            sport: peer.port().to_be(),
            dport: local.port().to_be(),
            src,
            dst,
            interface: 0,
            cookie: [u32::MAX; 2], // INET_DIAG_NOCOOKIE
        },
    };
    // SAFETY: a netlink socket of our own, closed below; sendto with a struct of the
    // size given; recv into a local buffer of the size given.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        );
        if fd < 0 {
            return None;
        }
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        let sent = libc::sendto(
            fd,
            (&raw const request).cast(),
            std::mem::size_of::<DiagRequest>(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        let mut answer = [0u8; 512];
        let n = if sent < 0 {
            -1
        } else {
            libc::recv(fd, answer.as_mut_ptr().cast(), answer.len(), 0)
        };
        libc::close(fd);
        diag_socket(&answer[..usize::try_from(n).ok()?])
    }
}

/// The inode of the socket listening on loopback `port` (the one a connection to it
/// would reach), asked of the kernel: a lookup for a connection from a port nobody
/// connects from finds no established socket, and so the listener.
pub fn loopback_listener(port: u16) -> Option<u64> {
    let listening = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let nobody = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    loopback_socket(listening, nobody).map(|(_, inode)| inode)
}

/// An address as sock_diag takes it: four 32-bit words, the bytes in network order.
fn words(octets: &[u8]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (w, chunk) in out.iter_mut().zip(octets.chunks(4)) {
        *w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

/// The uid and inode in the kernel's answer to a sock_diag request: one
/// `inet_diag_msg`, or an error (the socket is gone).
fn diag_socket(answer: &[u8]) -> Option<(u32, u64)> {
    const HEADER: usize = std::mem::size_of::<NetlinkHeader>();
    // inet_diag_msg: family, state, timer, retrans (4 bytes), the socket id (48), then
    // expires, rqueue, wqueue, uid.
    const UID_AT: usize = HEADER + 4 + std::mem::size_of::<SocketId>() + 12;
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY {
        return None; // NLMSG_ERROR: no such socket
    }
    let word = |at: usize| Some(u32::from_ne_bytes(answer.get(at..at + 4)?.try_into().ok()?));
    Some((word(UID_AT)?, u64::from(word(UID_AT + 4)?)))
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;

#[repr(C)]
struct NetlinkHeader {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`.
#[repr(C)]
struct SocketId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// A netlink header and `struct inet_diag_req_v2`.
#[repr(C)]
struct DiagRequest {
    header: NetlinkHeader,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SocketId,
}

/// Places per user: no user holds more than `each` connections at once.
#[derive(Clone)]
pub struct PerUser {
    each: usize,
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>,
}

/// A user's place, given back when dropped.
pub struct UserPlace {
    uid: u32,
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>,
}

impl PerUser {
    pub fn new(each: usize) -> PerUser {
        PerUser {
            each,
            held: Default::default(),
        }
    }

    /// A place for `uid` (None: the user was not found, and shares one count with every
    /// other such connection), if it holds fewer than its share.
    pub fn take(&self, uid: Option<u32>) -> Option<UserPlace> {
        let uid = uid.unwrap_or(u32::MAX);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(uid).or_default();
        if *n >= self.each {
            return None;
        }
        *n += 1;
        Some(UserPlace {
            uid,
            held: self.held.clone(),
        })
    }
}

impl Drop for UserPlace {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn the_peer_of_a_real_loopback_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        // SAFETY: geteuid cannot fail and touches no memory.
        let me = unsafe { libc::geteuid() };
        assert_eq!(
            loopback_peer_uid(peer, server.local_addr().unwrap()),
            Some(me)
        );
        drop(client);
    }

    #[test]
    fn the_listener_on_a_port_is_found_with_its_inode() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        assert_eq!(
            loopback_listener(port).map(|i| format!("socket:[{i}]")),
            Some(link.display().to_string())
        );
        drop(listener);
        assert_eq!(loopback_listener(port), None);
    }

    #[test]
    fn each_user_holds_at_most_its_share() {
        let places = PerUser::new(2);
        let a = [places.take(Some(7)), places.take(Some(7))];
        assert!(a.iter().all(Option::is_some));
        assert!(places.take(Some(7)).is_none());
        assert!(
            places.take(Some(8)).is_some(),
            "another user is not counted with it"
        );
        drop(a);
        assert!(places.take(Some(7)).is_some(), "given back");
    }
}
