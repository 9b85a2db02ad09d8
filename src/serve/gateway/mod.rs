//! The front door: one HTTP endpoint (`[supervisor] http`) for every model that has a
//! `[model.serve]` table. OpenAI-style requests go to the model their JSON body's `model`
//! names (its name or an alias); `GET /v1/models` lists the models; `/models/NAME/…`
//! forwards the rest of the path unchanged. Each instance listens on a loopback port the
//! supervisor gave it, and gets traffic once its health path answers 200. Responses
//! stream through as they arrive.
//!
//! The supervisor keeps [`Routes`] current (an instance started, an instance gone); this
//! module only reads it, checks health, and forwards.

use super::server::accept_loop;
/// Moved to [`crate::config::secrets`]; this path stays for one release.
pub use crate::config::secrets::read_keys;
use crate::metrics::Refused;

mod bodies;
mod routes;
mod upstream;

use bodies::NotRead;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use routes::{Finished, NoSlot, Served};
pub use routes::{InstanceLoad, Routes};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use upstream::{Body, connect, send, strip_hop_by_hop};

/// A request's line and headers: at most this many bytes (hyper would take 408 KiB,
/// before any key is checked); more is answered 431.
const MAX_HEAD: usize = 64 << 10;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often instances that are not ready yet are asked for their health.
const HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// In its first seconds an instance is asked this often: a model that loads fast is sent
/// its waiting requests (the cold start) without waiting for the next slow round.
const HEALTH_FAST: Duration = Duration::from_millis(10);
const HEALTH_FAST_FOR: Duration = Duration::from_secs(5);

/// Starts the front door on `addr`, on a thread of its own, serving at most
/// `max_connections` connections at once; dropped, it stops.
pub fn serve(
    addr: SocketAddr,
    routes: Arc<Routes>,
    keys: Option<Vec<String>>,
    max_connections: usize,
) -> Result<super::server::ServerThread, super::server::ServeError> {
    let listen = |source| super::server::ServeError::Listen {
        what: "front door",
        addr,
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let keys: Arc<[String]> = keys.unwrap_or_default().into();
    super::server::ServerThread::spawn("front-door", move || async move {
        tokio::spawn(check_health(routes.clone()));
        let listener = tokio::net::TcpListener::from_std(listener).expect("a non-blocking socket");
        accept_loop(
            listener,
            "front door",
            Some(max_connections),
            move |stream| {
                let (routes, keys) = (routes.clone(), keys.clone());
                Some(async move {
                    let service = service_fn(move |request| {
                        let (routes, keys) = (routes.clone(), keys.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(request, &routes, &keys).await)
                        }
                    });
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .max_header_size(MAX_HEAD)
                        // A client that closes its half after the request is answered.
                        .half_close(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                })
            },
        )
        .await;
    })
}

/// Asks instances that are not ready for their health, until they answer 200: every
/// [`HEALTH_FAST`] in their first [`HEALTH_FAST_FOR`], then every [`HEALTH_INTERVAL`]; one
/// question at a time per instance.
async fn check_health(routes: Arc<Routes>) {
    let slow_every = (HEALTH_INTERVAL.as_millis() / HEALTH_FAST.as_millis()).max(1) as u64;
    for round in 0u64.. {
        for u in routes.unready() {
            if u.age >= HEALTH_FAST_FOR && round % slow_every != 0 {
                continue;
            }
            u.probing.store(true, Ordering::Release);
            let routes = routes.clone();
            tokio::spawn(async move {
                let request = Request::get(u.path)
                    .header(hyper::header::HOST, format!("127.0.0.1:{}", u.port))
                    .body(Full::new(Bytes::new()).map_err(Into::into).boxed())
                    .expect("a valid request");
                let asked = async {
                    let mut c = connect(u.port, u.owner.as_ref()).await?;
                    c.send_request(request).await.map_err(|e| e.to_string())
                };
                let answer = tokio::time::timeout(Duration::from_secs(1), asked).await;
                if let Ok(Ok(response)) = answer
                    && response.status() == StatusCode::OK
                {
                    u.ready.store(true, Ordering::Release);
                    routes.became_ready(u.port);
                }
                u.probing.store(false, Ordering::Release);
            });
        }
        tokio::time::sleep(HEALTH_FAST).await;
    }
}

fn full(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)).map_err(Into::into).boxed())
        .expect("a valid response")
}

/// An error in the shape OpenAI-compatible clients read.
fn error(status: StatusCode, kind: &str, message: String) -> Response<Body> {
    error_with_code(status, kind, None, message)
}

/// OpenAI's error `code` is a string (`model_not_found`) or null.
fn error_with_code(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: String,
) -> Response<Body> {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    full(status, "application/json", body.to_string())
}

fn authorized(request: &Request<Incoming>, keys: &[String]) -> bool {
    if keys.is_empty() {
        return true;
    }
    let given = super::server::bearer(request.headers());
    keys.iter()
        .any(|k| super::server::same_secret(given.as_bytes(), k.as_bytes()))
}

async fn handle(request: Request<Incoming>, routes: &Routes, keys: &[String]) -> Response<Body> {
    let arrived = Instant::now();
    let refused = |reason: Refused, answer: Response<Body>| {
        routes.metrics.refused(reason);
        answer
    };
    // For load balancers and probes: the front door is up. No key needed, nothing told.
    if request.method() == hyper::Method::GET && request.uri().path() == "/health" {
        return full(
            StatusCode::OK,
            "application/json",
            "{\"status\":\"ok\"}".into(),
        );
    }
    if !authorized(&request, keys) {
        let answer = error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "a valid API key is needed: Authorization: Bearer KEY".into(),
        );
        return refused(Refused::Unauthorized, answer);
    }
    let path = request.uri().path().to_owned();
    if request.method() == hyper::Method::GET && path == "/v1/models" {
        let data = routes.listing();
        return full(
            StatusCode::OK,
            "application/json",
            json!({"object": "list", "data": data}).to_string(),
        );
    }
    if let Some(id) = path.strip_prefix("/v1/models/")
        && request.method() == hyper::Method::GET
    {
        return match routes.listing().into_iter().find(|m| m["id"] == id) {
            Some(entry) => full(StatusCode::OK, "application/json", entry.to_string()),
            // A question answered, not a request refused: not counted.
            None => not_found(id),
        };
    }
    if let Some(rest) = path.strip_prefix("/models/") {
        let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let Some((model, served)) = routes.resolve(name) else {
            return refused(Refused::UnknownModel, not_found(name));
        };
        let tail = format!("/{tail}");
        let (parts, body) = request.into_parts();
        // Whole before it takes a place: a slow client holds no place on an instance.
        let held = match routes.bodies.read(body, served.settings().max_body).await {
            Ok(held) => held,
            Err(NotRead::TooLarge) => return finished(&served, arrived, too_large()),
            Err(why) => return refused(why.reason(), not_read(why)),
        };
        let body = Full::new(held.bytes.clone()).map_err(Into::into).boxed();
        let answer = to_instance((&model, &served), parts, tail, body, arrived, false).await;
        drop(held);
        return finished(&served, arrived, answer);
    }
    if path.starts_with("/v1/") && request.method() == hyper::Method::POST {
        let (parts, body) = request.into_parts();
        let held = match routes.bodies.read(body, routes.largest_body()).await {
            Ok(held) => held,
            Err(NotRead::TooLarge) => return refused(Refused::TooLarge, too_large()),
            Err(why) => return refused(why.reason(), not_read(why)),
        };
        let body = held.bytes.clone();
        let kind = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (named, stream) = match named_model(kind, &body).await {
            Ok(named) => named,
            Err(why) => {
                let answer = error(StatusCode::BAD_REQUEST, "invalid_request_error", why);
                return refused(Refused::BadRequest, answer);
            }
        };
        let Some(named) = named else {
            let answer = error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the body names no model (its \"model\" field)".into(),
            );
            return refused(Refused::BadRequest, answer);
        };
        let Some((model, served)) = routes.resolve(&named) else {
            return refused(Refused::UnknownModel, not_found(&named));
        };
        if body.len() as u64 > served.settings().max_body {
            return finished(&served, arrived, too_large());
        }
        let body = Full::new(body).map_err(Into::into).boxed();
        let answer = to_instance((&model, &served), parts, path, body, arrived, stream).await;
        drop(held);
        return finished(&served, arrived, answer);
    }
    let answer = error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no route for {} {path}", parts_method(&request)),
    );
    refused(Refused::NoRoute, answer)
}

/// The answer to a body that was not read: too slow (408), over the budget (503, to try
/// again), or broken (400).
fn not_read(why: NotRead) -> Response<Body> {
    match why {
        NotRead::Timeout(limit) => error(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("the request's body did not arrive within {limit:?} (http_body_timeout)"),
        ),
        NotRead::Budget(total) => {
            let mut busy = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!(
                    "the front door holds {total} bytes of request bodies at once, and they are \
                     taken (http_body_budget): try again"
                ),
            );
            busy.headers_mut()
                .insert(hyper::header::RETRY_AFTER, "1".parse().expect("a header"));
            busy
        }
        NotRead::Broken(e) => error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
        NotRead::TooLarge => too_large(),
    }
}

fn parts_method(request: &Request<Incoming>) -> String {
    request.method().to_string()
}

fn not_found(model: &str) -> Response<Body> {
    error_with_code(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("model_not_found"),
        format!("the model `{model}` does not exist"),
    )
}

fn too_large() -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "the request body is larger than the model accepts (serve.max_body)".into(),
    )
}

/// Counts `answer` for `model` once its body has ended.
fn finished(served: &Served, arrived: Instant, answer: Response<Body>) -> Response<Body> {
    let record = Finished {
        metrics: served.metrics.clone(),
        code: answer.status().as_u16(),
        arrived,
        access: served.access.clone(),
        bytes: Default::default(),
    };
    answer.map(move |b| {
        b.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                let sent = data.len() as u64;
                record
                    .bytes
                    .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            }
            frame
        })
        .boxed()
    })
}

/// The model a `/v1` request's body names: its JSON's `model` field, or for a
/// `multipart/form-data` upload (`audio.transcriptions`), its `model` form field; None if
/// it names none; why, if the body is neither. And whether it asks for a stream (a JSON
/// body's `"stream": true`).
async fn named_model(content_type: &str, body: &Bytes) -> Result<(Option<String>, bool), String> {
    if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| format!("a multipart body without its boundary: {e}"))?;
        let whole = futures_once(body.clone());
        let mut form = multer::Multipart::new(whole, boundary);
        loop {
            match form.next_field().await {
                Ok(Some(field)) if field.name() == Some("model") => {
                    let text = field
                        .text()
                        .await
                        .map_err(|e| format!("the multipart body's model field: {e}"))?;
                    return Ok((Some(text), false));
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Ok((None, false)),
                Err(e) => return Err(format!("the multipart body: {e}")),
            }
        }
    }
    /// The fields the front door reads of a JSON body.
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        model: Option<std::borrow::Cow<'a, str>>,
        stream: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Named>(body)
        .map(|v| {
            let stream = v.stream == Some(serde_json::Value::Bool(true));
            (v.model.map(std::borrow::Cow::into_owned), stream)
        })
        .map_err(|e| format!("the body is not JSON: {e}"))
}

/// A body held whole, as the one-chunk stream multer reads.
fn futures_once(
    body: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures_util::stream::once(async move { Ok(body) })
}

/// Sends the request to a ready instance of `model` (waiting up to its ready timeout for
/// one), streaming the answer back. A `stream` asked for while no instance is ready, of a
/// model with `serve.loading_state`, is answered at once: SSE comments while it waits
/// ([`loading`]).
async fn to_instance(
    (model, served): (&str, &Arc<Served>),
    parts: hyper::http::request::Parts,
    path: String,
    body: Body,
    arrived: Instant,
    stream: bool,
) -> Response<Body> {
    if stream && served.settings().loading_state && Routes::cold(served) {
        return loading(model, served.clone(), parts, path, body, arrived);
    }
    let found = Routes::found(served);
    match place(model, served).await {
        Ok(slot) => {
            let waited = arrived.elapsed();
            let mut answer = forward((model, served), slot, parts, path, body, arrived).await;
            answer
                .headers_mut()
                .append("server-timing", server_timing(found, waited));
            answer
        }
        Err(refused) => refused,
    }
}

/// The `Server-Timing` header of an answer from an instance: how long the request waited
/// for a place on one (`dur`, in ms) and what it found when it came (`desc`: `ready`, or
/// `wake` or `start`: its model was hibernated, or had no instance ready). A client or a
/// proxy's log tells a slow model from a wait for memory or a cold start by it.
fn server_timing(found: routes::Found, waited: Duration) -> hyper::header::HeaderValue {
    let value = format!(
        "cuvisor-queue;dur={:.1};desc=\"{}\"",
        waited.as_secs_f64() * 1000.0,
        found.word()
    );
    value
        .parse()
        .expect("ASCII digits and words are a header value")
}

/// How often a stream that waits for its model says so.
const LOADING_EVERY: Duration = Duration::from_secs(1);

/// The answer of a stream that waits for its model to load or wake: its head (200,
/// `text/event-stream`) at once, then an SSE comment (`: cuvisor: model NAME is loading
/// (N s)`) every [`LOADING_EVERY`] until an instance takes it, then the instance's
/// stream. What would have been an error (no instance ready in time, the model failing)
/// comes as an SSE `error` event in OpenAI's error shape, since the head has gone.
fn loading(
    model: &str,
    served: Arc<Served>,
    parts: hyper::http::request::Parts,
    path: String,
    body: Body,
    arrived: Instant,
) -> Response<Body> {
    use hyper::body::Frame;
    type Piece = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(16);
    let model = model.to_owned();
    tokio::spawn(async move {
        let data = |text: String| Ok(Frame::data(Bytes::from(text)));
        let placed = {
            let place = place(&model, &served);
            tokio::pin!(place);
            let mut every = tokio::time::interval(LOADING_EVERY);
            loop {
                tokio::select! {
                    placed = &mut place => break placed,
                    _ = every.tick() => {
                        let waited = arrived.elapsed().as_secs();
                        let line = format!(": cuvisor: model {model} is loading ({waited} s)\n\n");
                        if tx.send(data(line)).await.is_err() {
                            return; // the client left: its place in the queue goes too
                        }
                    }
                }
            }
        };
        let answer = match placed {
            Ok(slot) => forward((&model, &served), slot, parts, path, body, arrived).await,
            Err(refused) => refused,
        };
        let ok = answer.status() == StatusCode::OK;
        let mut body = answer.into_body();
        if !ok {
            // Its error, whole (a small JSON body), as an event.
            let whole = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&whole);
            let _ = tx
                .send(data(format!("event: error\ndata: {text}\n\n")))
                .await;
            return;
        }
        while let Some(frame) = body.frame().await {
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "text/event-stream")
        .header(hyper::header::CACHE_CONTROL, "no-cache")
        .body(http_body_util::StreamBody::new(stream).boxed())
        .expect("a valid response")
}

/// A place on an instance of `model`, or the answer that says why there is none.
async fn place(model: &str, served: &Served) -> Result<routes::Slot, Response<Body>> {
    match Routes::slot(served).await {
        Ok(slot) => Ok(slot),
        Err(NoSlot::QueueFull) => {
            let mut refused = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("`{model}` has too many requests waiting (serve.max_queue)"),
            );
            refused
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, "1".parse().expect("a header"));
            Err(refused)
        }
        Err(NoSlot::Unavailable(why)) => {
            let mut refused = error_with_code(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("model_unavailable"),
                format!("`{model}` cannot start: {}", why.error),
            );
            if let Some(at) = why.retry_at {
                let secs = at
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    .ceil();
                let value = (secs as u64).max(1).to_string();
                refused.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    value.parse().expect("digits are a header value"),
                );
            }
            Err(refused)
        }
        Err(NoSlot::Timeout(limit, ready)) => {
            let why = if ready {
                format!("waited {limit:?} for a free instance of `{model}` (serve.queue_timeout)")
            } else {
                format!(
                    "no instance of `{model}` became ready within {limit:?} (serve.ready_timeout)"
                )
            };
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "server_error", why))
        }
    }
}

/// Sends the request on the instance of `slot`, streaming its answer back; the place is
/// held until the answer's body has ended.
async fn forward(
    (model, served): (&str, &Served),
    mut slot: routes::Slot,
    mut parts: hyper::http::request::Parts,
    path: String,
    body: Body,
    arrived: Instant,
) -> Response<Body> {
    if parts.uri.path() != path {
        // The prefix route: the rest of the path, the same query.
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        parts.uri = match format!("{path}{query}").parse() {
            Ok(uri) => uri,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("{e}"),
                );
            }
        };
    } else {
        // Origin-form: what an HTTP/1 server is sent.
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .map(hyper::Uri::from)
            .unwrap_or_default();
    }
    let instance = &slot.instance;
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(hyper::header::HOST, instance.host.clone());
    parts.headers.remove(hyper::header::AUTHORIZATION);
    match send(
        instance.port,
        &instance.idle,
        instance.owner.as_ref(),
        Request::from_parts(parts, body),
    )
    .await
    {
        // The place is held until the answer's body has ended (or the client left).
        Ok((mut response, connection)) => {
            slot.connection = Some(connection);
            strip_hop_by_hop(response.headers_mut());
            // The front door speaks HTTP/1.1 to its clients, whatever the instance spoke
            // to it (an HTTP/1.0 server's answer would end the client's keep-alive).
            *response.version_mut() = hyper::Version::HTTP_11;
            served.metrics.first_byte(arrived.elapsed().as_secs_f64());
            response.map(move |b| {
                b.map_frame(move |frame| {
                    let _held = &slot;
                    frame
                })
                .map_err(Into::into)
                .boxed()
            })
        }
        Err(why) => error(
            StatusCode::BAD_GATEWAY,
            "server_error",
            format!("model `{model}`: {why}"),
        ),
    }
}
