//! The control API: HTTP/1.1 on a Unix socket (and, if configured, on a loopback TCP
//! port). Requests are handed to the supervisor's thread and answered from there.
//!
//! | request | answer |
//! |---|---|
//! | `GET /models` | every model's status (JSON) |
//! | `GET /models/NAME` | one model's status |
//! | `POST /models/NAME/start`, `/stop`, `/restart` | act on every instance of the model |
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /healthz` | `ok` |

/// Moved to [`super::client`]; these paths stay for one release.
pub use super::client::{header, request, request_json, request_waiting, request_with_head};
use super::server::{ANSWER_TIMEOUT, PerUser, accept_loop, loopback_peer_uid};
/// Moved to [`super::server`]; these paths stay for one release.
pub use super::server::{ServeError, ServerThread};
use crate::config::SupervisorConfig;
use crate::config::secrets;
/// Moved to [`crate::config::secrets`]; this path stays for one release.
pub use crate::config::secrets::read_token;
use crate::core::api::{Answer, Call, Mailbox, Request};
use crate::core::recent::Outputs;
use crate::gateway::Routes;
use crate::metrics::SwapMetrics;
use crate::size::format_bytes;
use crate::status::{ModelStatus, PowerOutcome, Status};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection (one request: keep-alive is off) ends within this: the longest
/// answer (a hibernate or wake, up to [`POWER_ANSWER_TIMEOUT`]) and a margin. Its head
/// must come within [`HEADER_TIMEOUT`]; every other answer is given within 10 s.
const CONNECTION_TIMEOUT: Duration = POWER_ANSWER_TIMEOUT.saturating_add(Duration::from_secs(10));
/// Request line and headers: at most this many bytes (hyper's smallest buffer).
const MAX_HEAD: usize = 8192;
/// Connections served at once, per listener; more are closed as soon as accepted, so
/// that they hold no descriptor. The Unix socket has its own: TCP clients cannot crowd
/// out the CLI.
const MAX_CONNECTIONS: usize = 32;
/// TCP connections one local user may hold at once (told by the kernel's socket table,
/// before any token is read): a user without the token cannot take every place.
const PER_USER: usize = 4;
/// A hibernate or wake is answered when the model's processes acknowledged, or when the
/// supervisor's wait for them ends: twice, for a wake that first makes room.
pub const POWER_ANSWER_TIMEOUT: Duration =
    Duration::from_secs(2 * crate::config::MAX_SWAP_TIMEOUT.as_secs() + 10);

/// The listening control API; dropped, it stops and its socket file goes.
pub struct Server {
    socket: PathBuf,
    _thread: ServerThread,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Where requests go: the supervisor's mailbox; the front door and the swap times, for
/// the metrics.
#[derive(Clone)]
struct Backend {
    mailbox: Mailbox,
    routes: Option<Arc<Routes>>,
    swaps: SwapMetrics,
    /// Each model's recent output, by name and alias.
    outputs: Outputs,
}

/// An HTTP answer of the control API.
struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

/// Who may use a connection.
#[derive(Clone)]
enum Access {
    /// A Unix-socket peer with the supervisor's user or root.
    Local,
    /// A Unix-socket peer of another user (the socket's mode was loosened).
    Stranger,
    /// TCP: the request must carry the token and name a loopback host.
    Token(Arc<str>),
    /// The metrics listener: `GET /metrics` alone, with the token if there is one.
    Metrics(Option<Arc<str>>),
    /// The dashboard's listener: its page, and the control API's reads; actions and a
    /// model's output with the token (none: read-only).
    Dashboard(Option<Arc<str>>),
}

/// Serves the control API of `cfg` (its Unix socket; `listen` too, if set), handing
/// requests to the supervisor through `mailbox`. The metrics include the swap times
/// `swaps` records and, with the front door's `routes`, its figures.
pub fn serve(
    cfg: &SupervisorConfig,
    mailbox: Mailbox,
    routes: Option<Arc<Routes>>,
    swaps: SwapMetrics,
    outputs: Outputs,
) -> Result<Server, ServeError> {
    let path = &cfg.socket;
    let socket = |source| ServeError::Socket {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(socket)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServeError::SocketInUse { path: path.clone() });
        }
        std::fs::remove_file(path).map_err(socket)?;
    }
    let unix = std::os::unix::net::UnixListener::bind(path).map_err(socket)?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let tcp = match cfg.listen {
        None => None,
        Some(addr) => {
            // The TCP API always asks for its token.
            let file = cfg.listen_token.as_deref().ok_or(ServeError::NoToken)?;
            let (listener, token) = listener(addr, "control API", "listen_token", Some(file))?;
            Some((listener, token.expect("a token file was given")))
        }
    };
    // The listeners that only read (the scrapers', the dashboard's): each with its access.
    let mut readers: Vec<(std::net::TcpListener, &'static str, Access)> = Vec::new();
    if let Some(addr) = cfg.metrics {
        let token = cfg.metrics_token.as_deref();
        let (l, token) = listener(addr, "metrics", "metrics_token", token)?;
        readers.push((l, "metrics", Access::Metrics(token)));
    }
    if let Some(addr) = cfg.dashboard {
        let token = cfg.dashboard_token.as_deref();
        let (l, token) = listener(addr, "dashboard", "dashboard_token", token)?;
        readers.push((l, "dashboard", Access::Dashboard(token)));
    }
    let nonblocking = |e| ServeError::Socket {
        path: path.clone(),
        source: e,
    };
    unix.set_nonblocking(true).map_err(nonblocking)?;
    let tx = Backend {
        mailbox,
        routes,
        swaps,
        outputs,
    };
    let thread = ServerThread::spawn("control-api", move || async move {
        let unix = tokio::net::UnixListener::from_std(unix).expect("a non-blocking socket");
        if let Some((listener, token)) = tcp {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("a non-blocking socket");
            let tx = tx.clone();
            // The TCP listener has its own places: its clients cannot crowd out the CLI.
            let per_user = PerUser::new(PER_USER);
            tokio::spawn(accept_loop(
                listener,
                "control API",
                Some(MAX_CONNECTIONS),
                move |stream: tokio::net::TcpStream| {
                    // Before the token is known: a user without it holds few places.
                    let uid = match (stream.peer_addr(), stream.local_addr()) {
                        (Ok(peer), Ok(local)) => loopback_peer_uid(peer, local),
                        _ => None,
                    };
                    let place = per_user.take(uid)?;
                    let (token, tx) = (token.clone(), tx.clone());
                    Some(async move {
                        connection(stream, Access::Token(token), tx).await;
                        drop(place);
                    })
                },
            ));
        }
        for (listener, what, access) in readers {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("a non-blocking socket");
            let tx = tx.clone();
            // Places of their own: scrapers and browsers cannot crowd out the CLI or the
            // TCP API.
            tokio::spawn(accept_loop(
                listener,
                what,
                Some(MAX_CONNECTIONS),
                move |stream: tokio::net::TcpStream| {
                    Some(connection(stream, access.clone(), tx.clone()))
                },
            ));
        }
        let me = euid();
        accept_loop(
            unix,
            "control API",
            Some(MAX_CONNECTIONS),
            move |stream: tokio::net::UnixStream| {
                let access = match stream.peer_cred() {
                    Ok(c) if c.uid() == 0 || c.uid() == me => Access::Local,
                    _ => Access::Stranger,
                };
                Some(connection(stream, access, tx.clone()))
            },
        )
        .await;
    })?;
    Ok(Server {
        socket: path.clone(),
        _thread: thread,
    })
}

/// A TCP listener of the control API's (`what`, on `addr`, non-blocking for tokio), and
/// the token in the file `token_file` (the key `token_key` names it) if there is one.
fn listener(
    addr: std::net::SocketAddr,
    what: &'static str,
    token_key: &'static str,
    token_file: Option<&std::path::Path>,
) -> Result<(std::net::TcpListener, Option<Arc<str>>), ServeError> {
    let token = token_file
        .map(|file| {
            secrets::read_token(file).map_err(|why| ServeError::Secret {
                key: token_key,
                path: file.to_owned(),
                why,
            })
        })
        .transpose()?;
    let bound = std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    });
    let listener = bound.map_err(|source| ServeError::Listen { what, addr, source })?;
    Ok((listener, token.map(Arc::<str>::from)))
}

/// This process's effective user.
fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// One connection, one request, within the limits above.
async fn connection<S>(stream: S, access: Access, tx: Backend)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let (access, tx) = (access.clone(), tx.clone());
        async move { Ok::<_, std::convert::Infallible>(answer(request, &access, &tx).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .keep_alive(false)
        // A client that closes its half after the request is answered.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, served).await;
}

fn reply(code: u16, content_type: &'static str, body: impl Into<String>) -> Reply {
    Reply {
        code,
        content_type,
        body: body.into(),
    }
}

/// Whether the request carries `token` (`Authorization: Bearer TOKEN`), compared in
/// constant time.
fn bearer_is(request: &hyper::Request<Incoming>, token: &str) -> bool {
    let given = super::server::bearer(request.headers());
    super::server::same_secret(given.as_bytes(), token.as_bytes())
}

/// Whether a request over TCP is allowed: the token, and a Host that names this machine
/// by a loopback name (a web page that resolves its own name to 127.0.0.1 cannot reach
/// the API through a browser).
fn authorized(request: &hyper::Request<Incoming>, token: &str) -> Result<(), Reply> {
    let header = |name: hyper::header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let host = header(hyper::header::HOST);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| host.split(':').next().unwrap_or(""));
    if !(host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
    {
        return Err(reply(
            403,
            "text/plain",
            "the Host must be a loopback address or localhost\n",
        ));
    }
    if bearer_is(request, token) {
        Ok(())
    } else {
        Err(reply(
            401,
            "text/plain",
            "a valid token is needed: Authorization: Bearer TOKEN\n",
        ))
    }
}

/// An answer's body: whole, or streamed (a follow of a model's output).
type AnswerBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    request: hyper::Request<Incoming>,
    access: &Access,
    tx: &Backend,
) -> Response<AnswerBody> {
    let checked = match access {
        Access::Local => Ok(()),
        Access::Stranger => Err(reply(
            403,
            "text/plain",
            "only the supervisor's user may use this socket\n",
        )),
        Access::Token(token) => authorized(&request, token),
        Access::Dashboard(token) => {
            if request.method() == hyper::Method::GET
                && let Some((kind, body)) = super::dashboard::asset(request.uri().path())
            {
                return super::dashboard::page(kind, body);
            }
            super::dashboard::allowed(&request, token.as_deref())
                .map_err(|(code, why)| reply(code, "text/plain", why))
        }
        Access::Metrics(token) => {
            if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
                Err(reply(404, "text/plain", "only GET /metrics here\n"))
            } else {
                match token {
                    Some(token) if !bearer_is(&request, token) => Err(reply(
                        401,
                        "text/plain",
                        "a valid token is needed: Authorization: Bearer TOKEN\n",
                    )),
                    _ => Ok(()),
                }
            }
        }
    };
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    if checked.is_ok()
        && method == hyper::Method::GET
        && let Some(name) = path
            .strip_prefix("/models/")
            .and_then(|p| p.strip_suffix("/logs"))
    {
        return logs(&tx.outputs, name, request.uri().query().unwrap_or(""));
    }
    let reply = match checked {
        Err(refused) => refused,
        // A body (a PATCH's) of a few fields: the control API takes no more.
        Ok(()) => match http_body_util::BodyExt::collect(http_body_util::Limited::new(
            request.into_body(),
            MAX_BODY,
        ))
        .await
        {
            Ok(body) => route(method.as_str(), &path, &body.to_bytes(), tx).await,
            Err(_) => reply(
                413,
                "text/plain",
                format!("a body of at most {MAX_BODY} bytes, JSON\n"),
            ),
        },
    };
    Response::builder()
        .status(StatusCode::from_u16(reply.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(hyper::header::CONTENT_TYPE, reply.content_type)
        .body(http_body_util::BodyExt::boxed(Full::new(Bytes::from(
            reply.body,
        ))))
        .expect("a valid response")
}

/// `GET /models/NAME/logs`: the model's recent output (`[NAME/INSTANCE] line` each),
/// `instance=N` one instance's only, `since=SEQ` from the line numbered SEQ on; the
/// header `X-Cuvisor-Next` is the number to ask from next. With `follow=1`, the answer
/// goes on with each new line as it comes, until the client leaves (or the connection's
/// time is up: ask again `since` the last number).
fn logs(outputs: &Outputs, name: &str, query: &str) -> Response<AnswerBody> {
    let field = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let plain = |code: u16, text: String| {
        Response::builder()
            .status(code)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::BodyExt::boxed(Full::new(Bytes::from(text))))
            .expect("a valid response")
    };
    let Some(recent) = outputs.get(name) else {
        return plain(
            404,
            serde_json::json!({"error": format!("no model {name}")}).to_string(),
        );
    };
    let number = |key: &str| field(key).map(|v| v.parse::<u64>().map_err(|_| key.to_owned()));
    let (since, instance) = match (number("since"), number("instance")) {
        (Some(Err(k)), _) | (_, Some(Err(k))) => {
            let why = format!("{k}: expected a number");
            return plain(400, serde_json::json!({ "error": why }).to_string());
        }
        (since, instance) => (
            since.and_then(Result::ok).unwrap_or(0),
            instance.and_then(Result::ok).map(|i| i as u32),
        ),
    };
    let follow = matches!(field("follow"), Some("1" | "true"));
    let model = name.to_owned();
    let text = move |lines: Vec<(u32, String)>| {
        lines
            .into_iter()
            .map(|(i, line)| format!("[{model}/{i}] {line}\n"))
            .collect::<String>()
    };
    let (lines, next) = recent.since(since, instance);
    let first = text(lines);
    let head = Response::builder()
        .status(200)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-cuvisor-next", next.to_string());
    if !follow {
        return head
            .body(http_body_util::BodyExt::boxed(Full::new(Bytes::from(
                first,
            ))))
            .expect("a valid response");
    }
    // Each new line as it comes: the stream waits on the ring.
    let stream = futures_util::stream::unfold(
        (Some(first), next, recent, text),
        move |(first, mut next, recent, text)| async move {
            if let Some(first) = first.filter(|f| !f.is_empty()) {
                let frame = hyper::body::Frame::data(Bytes::from(first));
                return Some((Ok(frame), (None, next, recent, text)));
            }
            loop {
                let got = {
                    let more = recent.more();
                    tokio::pin!(more);
                    // Created before looking: it sees every line pushed from here on.
                    more.as_mut().enable();
                    let (lines, after) = recent.since(next, instance);
                    if after == next {
                        more.await;
                        None
                    } else {
                        Some((lines, after))
                    }
                };
                match got {
                    // Only other instances' lines: nothing to send (an empty chunk would
                    // end the answer).
                    Some((lines, after)) if lines.is_empty() => next = after,
                    Some((lines, after)) => {
                        let frame = hyper::body::Frame::data(Bytes::from(text(lines)));
                        return Some((Ok(frame), (None, after, recent, text)));
                    }
                    None => {}
                }
            }
        },
    );
    head.body(http_body_util::BodyExt::boxed(
        http_body_util::StreamBody::new(stream),
    ))
    .expect("a valid response")
}

/// The largest request body the control API reads.
const MAX_BODY: usize = 8 << 10;

/// `PATCH /models/NAME`'s body: `{"gpu_quota": "12GiB"}`.
fn quota_change(name: &str, body: &[u8]) -> Result<Request, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Change {
        gpu_quota: String,
    }
    let change: Change = serde_json::from_slice(body).map_err(|e| {
        format!("expected {{\"gpu_quota\": \"12GiB\"}} (or a percentage, \"50%\"): {e}")
    })?;
    match crate::size::parse_quota(&change.gpu_quota) {
        Ok(crate::size::QuotaSpec::Bytes(0)) => Err("a quota must be greater than 0".into()),
        Ok(quota) => Ok(Request::SetQuota(name.to_owned(), quota)),
        Err(e) => Err(format!("gpu_quota \"{}\": {e}", change.gpu_quota)),
    }
}

async fn route(method: &str, path: &str, body: &[u8], tx: &Backend) -> Reply {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let request = match (method, segments.as_slice()) {
        ("GET", ["healthz"]) => return reply(200, "text/plain", "ok\n"),
        ("GET", ["models"]) => Request::Status(None),
        ("GET", ["models", name]) => Request::Status(Some(name.to_string())),
        ("GET", ["metrics"]) => Request::Metrics,
        ("POST", ["models", name, "start"]) => Request::Start(name.to_string()),
        ("POST", ["models", name, "stop"]) => Request::Stop(name.to_string()),
        ("POST", ["models", name, "restart"]) => Request::Restart(name.to_string()),
        ("PATCH", ["models", name]) => match quota_change(name, body) {
            Ok(request) => request,
            Err(why) => {
                let body = serde_json::json!({ "error": why }).to_string();
                return reply(400, "application/json", body);
            }
        },
        ("POST", ["models", name, action @ ("hibernate" | "wake")]) => {
            let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
            let call = Call::Power {
                model: name.to_string(),
                hibernate: *action == "hibernate",
                reply: reply_tx,
            };
            if (tx.mailbox)(call).is_err() {
                return reply(503, "text/plain", "the supervisor is stopping\n");
            }
            return match tokio::time::timeout(POWER_ANSWER_TIMEOUT, reply_rx).await {
                Ok(Ok(answer)) => http(answer, tx),
                _ => reply(503, "text/plain", "the supervisor did not answer\n"),
            };
        }
        ("POST", ["reload"]) => {
            let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
            if (tx.mailbox)(Call::Reload(reply_tx)).is_err() {
                return reply(503, "text/plain", "the supervisor is stopping\n");
            }
            return match tokio::time::timeout(ANSWER_TIMEOUT, reply_rx).await {
                Ok(Ok(answer)) => http(answer, tx),
                _ => reply(503, "text/plain", "the supervisor did not answer\n"),
            };
        }
        (_, ["healthz" | "models" | "metrics" | "reload", ..]) => {
            return reply(405, "text/plain", "method not allowed\n");
        }
        _ => return reply(404, "text/plain", "not found\n"),
    };
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    if (tx.mailbox)(Call::Control(request, reply_tx)).is_err() {
        return reply(503, "text/plain", "the supervisor is stopping\n");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, reply_rx).await {
        Ok(Ok(answer)) => http(answer, tx),
        _ => reply(503, "text/plain", "the supervisor did not answer\n"),
    }
}

/// The HTTP form of the supervisor's answer.
fn http(answer: Answer, backend: &Backend) -> Reply {
    let json = |code, body: String| reply(code, "application/json", body);
    match answer {
        Answer::Status(s) => json(200, serde_json::to_string_pretty(&s).expect("JSON")),
        Answer::Model(m) => json(200, serde_json::to_string_pretty(&m).expect("JSON")),
        Answer::Metrics(s) => reply(
            200,
            crate::metrics::CONTENT_TYPE,
            match backend.routes.as_deref() {
                None => crate::metrics::encode(&s, &backend.swaps),
                Some(r) => {
                    crate::metrics::encode_with_front_door(&s, &backend.swaps, &r.metrics, |m| {
                        r.queue_now(m)
                    })
                }
            },
        ),
        Answer::Power(report) => {
            let code = match report.outcome {
                PowerOutcome::Done => 200,
                PowerOutcome::TimedOut => 504,
                PowerOutcome::Superseded => 409,
                PowerOutcome::Failed => 500,
            };
            json(code, serde_json::to_string_pretty(&report).expect("JSON"))
        }
        Answer::Done { model, action } => json(
            200,
            serde_json::json!({"model": model, "action": action.to_string()}).to_string(),
        ),
        Answer::Quota { model, from, to } => json(
            200,
            serde_json::json!({
                "model": model,
                "gpu_quota": to.to_string(),
                "was": from.map(|q| q.to_string()),
            })
            .to_string(),
        ),
        Answer::Refused { model, why } => json(
            409,
            serde_json::json!({"model": model, "error": why}).to_string(),
        ),
        Answer::NoSuchModel(name) => json(
            404,
            serde_json::json!({"error": format!("no model {name}")}).to_string(),
        ),
        Answer::Reloaded(changes) => {
            json(200, serde_json::json!({ "changes": changes }).to_string())
        }
        Answer::ReloadRefused(errors) => json(
            400,
            serde_json::json!({
                "error": "reload refused: nothing changed",
                "errors": errors,
            })
            .to_string(),
        ),
        Answer::ShuttingDown => json(
            503,
            serde_json::json!({"error": "the supervisor is stopping"}).to_string(),
        ),
    }
}

/// GPU memory used of what the quota allows: the quota holds on each GPU, so a model on
/// several GPUs shows its total against `N×QUOTA` (`6.0 GiB / 2×3.0 GiB`).
fn used_of_quota(m: &ModelStatus) -> String {
    let bytes = |v: Option<u64>| v.map_or("-".to_owned(), format_bytes);
    let gpus = m.gpus.as_ref().map_or(0, Vec::len);
    let quota = match (gpus, m.gpu_quota_bytes) {
        (2.., Some(q)) => format!("{gpus}×{}", format_bytes(q)),
        (_, q) => bytes(q),
    };
    format!("{} / {quota}", bytes(m.gpu_used_bytes))
}

/// The table `cuvisor status` prints, from the status of `GET /models`.
pub fn status_table(status: &Status) -> String {
    use std::fmt::Write as _;
    let bytes = |v: Option<u64>| v.map_or("-".to_owned(), format_bytes);
    let mut out = format!(
        "{:<20} {:<10} {:>9} {:>8} {:>4} {:>21} {:>10} {:>10}  PIDS\n",
        "MODEL",
        "STATE",
        "INSTANCES",
        "RESTARTS",
        "OOM",
        "GPU USED / QUOTA",
        "GPU PEAK",
        "HOST MEM"
    );
    for m in &status.models {
        let pids: Vec<String> = m
            .instances
            .iter()
            .filter_map(|i| i.pid)
            .map(|p| p.to_string())
            .collect();
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:>9} {:>8} {:>4} {:>21} {:>10} {:>10}  {}",
            m.name,
            m.state,
            format!("{}/{}", pids.len(), m.instances.len()),
            m.restarts,
            m.oom_kills,
            used_of_quota(m),
            bytes(m.gpu_peak_bytes),
            format_bytes(m.host_memory_bytes),
            pids.join(",")
        );
        // One line per GPU the model uses: the quota holds on each.
        for g in m.gpus.iter().flatten() {
            let _ = writeln!(
                out,
                "  {:<54} {:>21} {:>10}",
                g.uuid,
                format!("{} / {}", format_bytes(g.used_bytes), bytes(g.quota_bytes)),
                format_bytes(g.peak_bytes),
            );
        }
        if let Some(e) = &m.error {
            let _ = writeln!(out, "  error: {e}");
        }
        for i in &m.instances {
            if let Some(e) = &i.error {
                let _ = writeln!(out, "  instance {}: {e}", i.index);
            }
        }
    }
    out
}
