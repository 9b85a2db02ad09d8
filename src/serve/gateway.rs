//! The front door: one HTTP endpoint (`[supervisor] http`) for every model that has a
//! `[model.serve]` table. OpenAI-style requests go to the model their JSON body's `model`
//! names (its name or an alias); `GET /v1/models` lists the models; `/models/NAME/…`
//! forwards the rest of the path unchanged. Each instance listens on a loopback port the
//! supervisor gave it, and gets traffic once its health path answers 200. Responses
//! stream through as they arrive.
//!
//! The supervisor keeps [`Routes`] current (an instance started, an instance gone); this
//! module only reads it, checks health, and forwards.

use crate::config::Config;
/// Moved to [`crate::config::secrets`]; this path stays for one release.
pub use crate::config::secrets::read_keys;
use crate::metrics::{FrontDoorMetrics, ModelMetrics, Refused};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often instances that are not ready yet are asked for their health.
const HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// In its first seconds an instance is asked this often: a model that loads fast is sent
/// its waiting requests (the cold start) without waiting for the next slow round.
const HEALTH_FAST: Duration = Duration::from_millis(10);
const HEALTH_FAST_FOR: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// One instance the front door may send requests to.
struct Upstream {
    index: u32,
    /// Its health path answered 200.
    ready: Arc<AtomicBool>,
    /// A health check of it is under way.
    probing: Arc<AtomicBool>,
    started: Instant,
    /// What its requests share (one reference per request).
    shared: Arc<Instance>,
}

/// What the requests sent to one instance share.
struct Instance {
    port: u16,
    /// `127.0.0.1:PORT`, the Host of what is sent to it.
    host: hyper::header::HeaderValue,
    /// Requests sent to it whose answers have not ended.
    in_flight: AtomicUsize,
    /// When it last had nothing in flight (an answer ended, or it became ready).
    idle_since: Mutex<Instant>,
    /// Its idle keep-alive connections.
    idle: Connections,
}

/// A model's queue: the requests waiting for a place on an instance.
#[derive(Default)]
struct Queue {
    /// How many wait (counted before they look for a place again, so that a request that
    /// ends sees them: see [`Slot`]'s drop).
    waiting: AtomicUsize,
    /// Woken when an instance becomes ready, the model wakes, or a request ends while
    /// some wait.
    wake: Notify,
}

struct Served {
    aliases: Vec<String>,
    health: String,
    ready_timeout: Duration,
    max_body: u64,
    concurrency: usize,
    max_queue: usize,
    queue_timeout: Duration,
    /// Its running instances: the only part that changes (the supervisor's starts and
    /// exits), under a lock of the model's own.
    instances: Mutex<Vec<Upstream>>,
    /// Requests waiting for an instance.
    queue: Arc<Queue>,
    /// Hibernated, or waking: requests wait (as for a cold start) until it is awake.
    asleep: AtomicBool,
    /// Round robin among equally loaded instances.
    next: AtomicUsize,
    /// Its front-door metrics.
    metrics: Arc<ModelMetrics>,
    /// Told when a request waits and no instance is ready ([`Routes::on_demand`]).
    demand: Arc<OnceLock<Demand>>,
}

/// What the front door calls when a request finds no ready instance: the supervisor
/// looks at the load at once instead of at its next tick (the cold start is shorter).
type Demand = Box<dyn Fn() + Send + Sync>;

/// A place in an instance's concurrency, held until the answer has ended; then the
/// connection it was sent on goes back to the instance's idle ones.
///
/// Its end wakes the model's waiting requests only if some wait: it gives the place
/// back, then reads `waiting`; a request that starts to wait counts itself in `waiting`,
/// then looks for a place (both sides sequentially consistent), so either the request
/// finds the place or the end sees it waiting and wakes it.
struct Slot {
    instance: Arc<Instance>,
    queue: Arc<Queue>,
    connection: Option<Sender>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let i = &self.instance;
        if let Some(c) = self.connection.take() {
            i.idle.put(c);
        }
        if i.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *i.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        if self.queue.waiting.load(Ordering::SeqCst) > 0 {
            self.queue.wake.notify_waiters();
        }
    }
}

/// The sending half of a connection to an instance.
type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// An instance's idle keep-alive connections, reused by the requests sent to it.
#[derive(Default)]
struct Connections(Mutex<Vec<Sender>>);

/// Idle connections kept per instance; more are closed.
const MAX_IDLE: usize = 512;
/// How long an idle connection may take to be ready for the next request.
const REUSE_WAIT: Duration = Duration::from_millis(100);
/// How long a new connection may take to be ready for its first request.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

impl Connections {
    fn take(&self) -> Option<Sender> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keeps `c` for the next request, unless it is closed (an answer not read to its
    /// end closes it: HTTP/1 cannot abandon one answer and go on).
    fn put(&self, c: Sender) {
        if c.is_closed() {
            return;
        }
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }
}

/// One instance's load, for the scaler: the core's type.
pub use crate::core::effects::InstanceLoad;

/// An instance to ask for its health.
struct Unready {
    port: u16,
    path: String,
    ready: Arc<AtomicBool>,
    probing: Arc<AtomicBool>,
    age: Duration,
}

/// A request counted in its model's queue while this lives.
struct Waiting<'a>(&'a Queue);

impl<'a> Waiting<'a> {
    /// Counts a request in; how many were waiting before it.
    fn count(q: &'a Queue) -> (Waiting<'a>, usize) {
        let ahead = q.waiting.fetch_add(1, Ordering::SeqCst);
        (Waiting(q), ahead)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request got no instance.
enum NoSlot {
    QueueFull,
    Timeout(Duration, bool),
}

/// The served models (fixed from the start) and their running instances, kept current
/// by the supervisor.
pub struct Routes {
    models: BTreeMap<String, Served>,
    /// What the front door counts, for `GET /metrics`.
    pub metrics: FrontDoorMetrics,
}

/// Records a request in the metrics when its answer's body ends (or the client leaves).
struct Finished {
    metrics: Arc<ModelMetrics>,
    code: u16,
    arrived: Instant,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let seconds = self.arrived.elapsed().as_secs_f64();
        self.metrics.request(self.code, seconds);
    }
}

impl Routes {
    /// The models of `config` that have `serve`, with no instance yet.
    pub fn new(config: &Config) -> Arc<Routes> {
        let metrics = FrontDoorMetrics::default();
        let demand = Arc::new(OnceLock::new());
        let models = config
            .models
            .iter()
            .filter_map(|m| {
                let s = m.serve.as_ref()?;
                Some((
                    m.name.clone(),
                    Served {
                        aliases: s.aliases.clone(),
                        health: s.health.clone(),
                        ready_timeout: s.ready_timeout,
                        max_body: s.max_body,
                        concurrency: s.concurrency,
                        max_queue: s.max_queue,
                        queue_timeout: s.queue_timeout,
                        instances: Mutex::new(Vec::new()),
                        queue: Arc::default(),
                        asleep: AtomicBool::new(false),
                        next: AtomicUsize::new(0),
                        metrics: Arc::new(metrics.model(&m.name)),
                        demand: demand.clone(),
                    },
                ))
            })
            .collect();
        Arc::new(Routes { models, metrics })
    }

    /// Calls `wake` whenever a request starts waiting while its model has no ready
    /// instance (set once; later calls are ignored).
    pub fn on_demand(&self, wake: impl Fn() + Send + Sync + 'static) {
        if let Some(s) = self.models.values().next() {
            let _ = s.demand.set(Box::new(wake));
        }
    }

    /// A served model's running instances.
    fn instances(s: &Served) -> std::sync::MutexGuard<'_, Vec<Upstream>> {
        s.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `model` is served (its instances need a port).
    pub fn serves(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// An instance of `model` was started, listening (soon) on `port`: not ready yet.
    pub fn started(&self, model: &str, index: u32, port: u16) {
        if let Some(s) = self.models.get(model) {
            let mut instances = Self::instances(s);
            instances.retain(|u| u.index != index);
            instances.push(Upstream {
                index,
                ready: Arc::new(AtomicBool::new(false)),
                probing: Arc::new(AtomicBool::new(false)),
                started: Instant::now(),
                shared: Arc::new(Instance {
                    port,
                    host: format!("127.0.0.1:{port}").parse().expect("a header value"),
                    in_flight: AtomicUsize::new(0),
                    idle_since: Mutex::new(Instant::now()),
                    idle: Connections::default(),
                }),
            });
        }
    }

    /// `model` hibernates (`true`: new requests wait, and their demand wakes it) or is
    /// awake again (the waiting requests go on).
    pub fn set_asleep(&self, model: &str, asleep: bool) {
        if let Some(s) = self.models.get(model) {
            s.asleep.store(asleep, Ordering::Release);
            if !asleep {
                s.queue.wake.notify_waiters();
            }
        }
    }

    /// Whether `model`'s requests wait for it to wake.
    pub fn asleep(&self, model: &str) -> bool {
        self.models
            .get(model)
            .is_some_and(|s| s.asleep.load(Ordering::Acquire))
    }

    /// An instance of `model` is gone (exited, stopped): no more requests go to it.
    pub fn gone(&self, model: &str, index: u32) {
        if let Some(s) = self.models.get(model) {
            Self::instances(s).retain(|u| u.index != index);
        }
    }

    /// The model a request's `model` field names: a model's name or one of its aliases.
    fn resolve(&self, name: &str) -> Option<(&str, &Served)> {
        if let Some((m, s)) = self.models.get_key_value(name) {
            return Some((m, s));
        }
        self.models
            .iter()
            .find(|(_, s)| s.aliases.iter().any(|a| a == name))
            .map(|(m, s)| (m.as_str(), s))
    }

    /// A place on the ready instance with the fewest requests in flight, if one has
    /// room; whether any instance is ready at all.
    fn try_slot(s: &Served) -> (Option<Slot>, bool) {
        if s.asleep.load(Ordering::Acquire) {
            return (None, false); // none is ready until the model is awake
        }
        let instances = Self::instances(s);
        let ready = || instances.iter().filter(|u| u.ready.load(Ordering::Acquire));
        let count = ready().count();
        if count == 0 {
            return (None, false);
        }
        // Round robin among equally loaded ones: the search starts at the next in turn.
        let turn = s.next.fetch_add(1, Ordering::Relaxed) % count;
        let least = ready()
            .cycle()
            .skip(turn)
            .take(count)
            .map(|u| &u.shared)
            .min_by_key(|i| i.in_flight.load(Ordering::SeqCst));
        let Some(i) = least else {
            return (None, true);
        };
        // Taken by a compare-and-add, tried again while the instance has room (another
        // request may take a place between the choice and the add).
        let mut n = i.in_flight.load(Ordering::SeqCst);
        while n < s.concurrency {
            match i
                .in_flight
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    let slot = Slot {
                        instance: i.clone(),
                        queue: s.queue.clone(),
                        connection: None,
                    };
                    return (Some(slot), true);
                }
                Err(now) => n = now,
            }
        }
        (None, true)
    }

    /// A place on an instance of `model`: at once if one has room, else in the model's
    /// queue (at most `max_queue` waiting) until one does, up to `queue_timeout` (or
    /// `ready_timeout` while no instance is ready).
    async fn slot(s: &Served) -> Result<Slot, NoSlot> {
        let (slot, any_ready) = Self::try_slot(s);
        if let Some(slot) = slot {
            return Ok(slot);
        }
        let start = tokio::time::Instant::now();
        let q = &s.queue;
        // Counted until this request has a place, gives up, or is dropped (its client
        // left while it waited).
        let (_waiting, ahead) = Waiting::count(q);
        if ahead >= s.max_queue {
            return Err(NoSlot::QueueFull);
        }
        // Counted first: the supervisor, woken, sees this request waiting.
        if !any_ready && let Some(wake) = s.demand.get() {
            wake();
        }
        let mut cold = !any_ready;
        loop {
            // Created before looking again: it sees every wake-up from here on.
            let woken = q.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (slot, any_ready) = Self::try_slot(s);
            if let Some(slot) = slot {
                if cold {
                    s.metrics.cold_start(start.elapsed().as_secs_f64());
                }
                break Ok(slot);
            }
            cold |= !any_ready;
            let limit = if any_ready {
                s.queue_timeout
            } else {
                s.ready_timeout
            };
            let deadline = start + limit;
            // Woken by a request that ends or an instance that becomes ready; checked
            // again at least every 100 ms (an instance that exits wakes nobody).
            let next = deadline.min(tokio::time::Instant::now() + Duration::from_millis(100));
            if tokio::time::timeout_at(next, woken).await.is_err() && next >= deadline {
                break Err(NoSlot::Timeout(limit, any_ready));
            }
        }
    }

    /// An instance became ready: its idle clock starts, and waiting requests look again.
    fn became_ready(&self, port: u16) {
        for s in self.models.values() {
            for u in Self::instances(s).iter().filter(|u| u.shared.port == port) {
                *u.shared
                    .idle_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Instant::now();
                s.queue.wake.notify_waiters();
            }
        }
    }

    /// Requests in flight and waiting now, for a served model.
    pub fn in_flight_and_waiting(&self, model: &str) -> Option<(usize, usize)> {
        let s = self.models.get(model)?;
        let flying = Self::instances(s)
            .iter()
            .map(|u| u.shared.in_flight.load(Ordering::Acquire))
            .sum();
        Some((flying, s.queue.waiting.load(Ordering::Acquire)))
    }

    /// A model's load: requests waiting, and each routed instance's (by index).
    pub fn load(&self, model: &str) -> (usize, BTreeMap<u32, InstanceLoad>) {
        let Some(s) = self.models.get(model) else {
            return (0, BTreeMap::new());
        };
        let now = Instant::now();
        let instances = Self::instances(s)
            .iter()
            .map(|u| {
                let in_flight = u.shared.in_flight.load(Ordering::Acquire);
                let since = *u
                    .shared
                    .idle_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let idle = if in_flight == 0 {
                    now.saturating_duration_since(since)
                } else {
                    Duration::ZERO
                };
                let ready = u.ready.load(Ordering::Acquire);
                (
                    u.index,
                    InstanceLoad {
                        ready,
                        in_flight,
                        idle,
                    },
                )
            })
            .collect();
        (s.queue.waiting.load(Ordering::Acquire), instances)
    }

    /// (port, health path, ready flag) of every instance not ready yet.
    /// The instances that are not ready and not being asked: (port, health path, ready,
    /// probing, age).
    fn unready(&self) -> Vec<Unready> {
        self.models
            .values()
            .flat_map(|s| {
                Self::instances(s)
                    .iter()
                    .filter(|u| !u.ready.load(Ordering::Acquire))
                    .filter(|u| !u.probing.load(Ordering::Acquire))
                    .map(|u| Unready {
                        port: u.shared.port,
                        path: s.health.clone(),
                        ready: u.ready.clone(),
                        probing: u.probing.clone(),
                        age: u.started.elapsed(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn largest_body(&self) -> u64 {
        self.models.values().map(|s| s.max_body).max().unwrap_or(0)
    }

    fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }
}

/// Starts the front door on `addr`, on a thread of its own; dropped, it stops.
pub fn serve(
    addr: SocketAddr,
    routes: Arc<Routes>,
    keys: Option<Vec<String>>,
) -> Result<crate::control::ServerThread, crate::control::ServeError> {
    let listen = |source| crate::control::ServeError::Listen {
        what: "front door",
        addr,
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let keys: Arc<[String]> = keys.unwrap_or_default().into();
    crate::control::ServerThread::spawn("front-door", move || async move {
        tokio::spawn(check_health(routes.clone()));
        let listener = tokio::net::TcpListener::from_std(listener).expect("a non-blocking socket");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Streamed chunks go to the client at once: no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    let (routes, keys) = (routes.clone(), keys.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            let (routes, keys) = (routes.clone(), keys.clone());
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    handle(request, &routes, &keys).await,
                                )
                            }
                        });
                        let _ = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    crate::log::log(&format!("front door: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
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
                    let mut c = connect(u.port).await?;
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

/// A new connection to the instance on `port`, driven by a task of its own.
async fn connect(port: u16) -> Result<Sender, String> {
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
async fn send(
    port: u16,
    idle: &Connections,
    mut request: Request<Body>,
) -> Result<(Response<Incoming>, Sender), String> {
    loop {
        let (mut sender, reused) = match idle.take() {
            Some(c) => (c, true),
            None => (connect(port).await?, false),
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
    let given = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    keys.iter().any(|k| {
        k.len() == given.len()
            && k.bytes()
                .zip(given.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

async fn handle(request: Request<Incoming>, routes: &Routes, keys: &[String]) -> Response<Body> {
    let arrived = Instant::now();
    let refused = |reason: Refused, answer: Response<Body>| {
        routes.metrics.refused(reason);
        answer
    };
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
        let data: Vec<_> = routes
            .names()
            .into_iter()
            .map(|id| json!({"id": id, "object": "model", "owned_by": "cuvisor"}))
            .collect();
        return full(
            StatusCode::OK,
            "application/json",
            json!({"object": "list", "data": data}).to_string(),
        );
    }
    if let Some(rest) = path.strip_prefix("/models/") {
        let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let Some((model, served)) = routes.resolve(name) else {
            return refused(Refused::UnknownModel, not_found(name));
        };
        let tail = format!("/{tail}");
        let (parts, body) = request.into_parts();
        let body = Limited::new(body, served.max_body as usize).boxed();
        let answer = to_instance((model, served), parts, tail, body, arrived).await;
        return finished(served, arrived, answer);
    }
    if path.starts_with("/v1/") && request.method() == hyper::Method::POST {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, routes.largest_body() as usize)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return refused(Refused::TooLarge, too_large());
            }
            Err(e) => {
                let answer = error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("{e}"),
                );
                return refused(Refused::BadRequest, answer);
            }
        };
        /// The one field the front door reads of a request's body.
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            model: Option<std::borrow::Cow<'a, str>>,
        }
        let named = match serde_json::from_slice::<Named>(&body) {
            Ok(v) => v.model.map(std::borrow::Cow::into_owned),
            Err(e) => {
                let answer = error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("the body is not JSON: {e}"),
                );
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
        if body.len() as u64 > served.max_body {
            return finished(served, arrived, too_large());
        }
        let body = Full::new(body).map_err(Into::into).boxed();
        let answer = to_instance((model, served), parts, path, body, arrived).await;
        return finished(served, arrived, answer);
    }
    let answer = error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no route for {} {path}", parts_method(&request)),
    );
    refused(Refused::NoRoute, answer)
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
    };
    answer.map(move |b| {
        b.map_frame(move |frame| {
            let _until_the_end = &record;
            frame
        })
        .boxed()
    })
}

/// Sends the request to a ready instance of `model` (waiting up to its ready timeout for
/// one), streaming the answer back.
async fn to_instance(
    (model, served): (&str, &Served),
    mut parts: hyper::http::request::Parts,
    path: String,
    body: Body,
    arrived: Instant,
) -> Response<Body> {
    let mut slot = match Routes::slot(served).await {
        Ok(slot) => slot,
        Err(NoSlot::QueueFull) => {
            let mut refused = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("`{model}` has too many requests waiting (serve.max_queue)"),
            );
            refused
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, "1".parse().expect("a header"));
            return refused;
        }
        Err(NoSlot::Timeout(limit, ready)) => {
            let why = if ready {
                format!("waited {limit:?} for a free instance of `{model}` (serve.queue_timeout)")
            } else {
                format!(
                    "no instance of `{model}` became ready within {limit:?} (serve.ready_timeout)"
                )
            };
            return error(StatusCode::SERVICE_UNAVAILABLE, "server_error", why);
        }
    };
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
    parts
        .headers
        .insert(hyper::header::HOST, instance.host.clone());
    parts.headers.remove(hyper::header::AUTHORIZATION);
    match send(
        instance.port,
        &instance.idle,
        Request::from_parts(parts, body),
    )
    .await
    {
        // The place is held until the answer's body has ended (or the client left).
        Ok((response, connection)) => {
            slot.connection = Some(connection);
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
