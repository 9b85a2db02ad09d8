//! The served models and their instances, as the supervisor keeps them current; how a
//! request gets a place on an instance (the least loaded ready one, or a wait in the
//! model's queue), and each instance's load for the scaler.

use super::bodies::Bodies;
use super::upstream::{Connections, Sender};
use crate::config::{Config, Serve};
use crate::core::effects::{Owner, Unavailable};
use crate::metrics::{FrontDoorMetrics, ModelMetrics};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// One instance the front door may send requests to.
pub(super) struct Upstream {
    pub(super) index: u32,
    /// Draining: it finishes what it has, and gets no new request.
    pub(super) draining: bool,
    /// Its health path answered 200.
    pub(super) ready: Arc<AtomicBool>,
    /// A health check of it is under way.
    pub(super) probing: Arc<AtomicBool>,
    pub(super) started: Instant,
    /// What its requests share (one reference per request).
    pub(super) shared: Arc<Instance>,
}

/// What the requests sent to one instance share.
pub(super) struct Instance {
    pub(super) port: u16,
    /// `127.0.0.1:PORT`, the Host of what is sent to it.
    pub(super) host: hyper::header::HeaderValue,
    /// Requests sent to it whose answers have not ended.
    pub(super) in_flight: AtomicUsize,
    /// When it last had nothing in flight (an answer ended, or it became ready).
    pub(super) idle_since: Mutex<Instant>,
    /// Its idle keep-alive connections.
    pub(super) idle: Connections,
    /// Tells the instance's own listener from another process's on its port.
    pub(super) owner: Option<Owner>,
}

/// A model's queue: the requests waiting for a place on an instance.
#[derive(Default)]
pub(super) struct Queue {
    /// How many wait (counted before they look for a place again, so that a request that
    /// ends sees them: see [`Slot`]'s drop).
    pub(super) waiting: AtomicUsize,
    /// Woken when an instance becomes ready, the model wakes, or a request ends while
    /// some wait.
    pub(super) wake: Notify,
}

/// What a served model's configuration says of its requests; a reload may change it.
pub(super) struct Settings {
    pub(super) aliases: Vec<String>,
    pub(super) health: String,
    pub(super) ready_timeout: Duration,
    pub(super) max_body: u64,
    pub(super) concurrency: usize,
    pub(super) max_queue: usize,
    pub(super) queue_timeout: Duration,
    pub(super) loading_state: bool,
}

impl Settings {
    fn of(s: &Serve) -> Arc<Settings> {
        Arc::new(Settings {
            aliases: s.aliases.clone(),
            health: s.health.clone(),
            ready_timeout: s.ready_timeout,
            max_body: s.max_body,
            concurrency: s.concurrency,
            max_queue: s.max_queue,
            queue_timeout: s.queue_timeout,
            loading_state: s.loading_state,
        })
    }
}

pub(super) struct Served {
    /// Its settings, as the last configuration said (a request reads them once).
    settings: RwLock<Arc<Settings>>,
    /// Removed from the configuration: requests find it no more (404), while its
    /// instances drain.
    hidden: AtomicBool,
    /// Its running instances (the supervisor's starts and exits), under a lock of the
    /// model's own.
    pub(super) instances: Mutex<Vec<Upstream>>,
    /// Requests waiting for an instance.
    pub(super) queue: Arc<Queue>,
    /// Hibernated, or waking: requests wait (as for a cold start) until it is awake.
    pub(super) asleep: AtomicBool,
    /// Round robin among equally loaded instances.
    pub(super) next: AtomicUsize,
    /// Its front-door metrics.
    pub(super) metrics: Arc<ModelMetrics>,
    /// Told when a request waits and no instance is ready ([`Routes::on_demand`]).
    pub(super) demand: Arc<OnceLock<Demand>>,
    /// Why it cannot serve now (the supervisor says): its requests are answered at once.
    pub(super) unavailable: Mutex<Option<Unavailable>>,
    /// With `http_access_log`: its name, for the access log's lines.
    pub(super) access: Option<Arc<str>>,
}

/// What the front door calls when a request finds no ready instance: the supervisor
/// looks at the load at once instead of at its next tick (the cold start is shorter).
pub(super) type Demand = Box<dyn Fn() + Send + Sync>;

/// A place in an instance's concurrency, held until the answer has ended; then the
/// connection it was sent on goes back to the instance's idle ones.
///
/// Its end wakes the model's waiting requests only if some wait: it gives the place
/// back, then reads `waiting`; a request that starts to wait counts itself in `waiting`,
/// then looks for a place (both sides sequentially consistent), so either the request
/// finds the place or the end sees it waiting and wakes it.
pub(super) struct Slot {
    pub(super) instance: Arc<Instance>,
    pub(super) queue: Arc<Queue>,
    pub(super) connection: Option<Sender>,
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

/// One instance's load, for the scaler: the core's type.
pub use crate::core::effects::InstanceLoad;

/// An instance to ask for its health.
pub(super) struct Unready {
    pub(super) port: u16,
    pub(super) path: String,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) probing: Arc<AtomicBool>,
    pub(super) age: Duration,
    pub(super) owner: Option<Owner>,
}

/// A request counted in its model's queue while this lives.
pub(super) struct Waiting<'a>(&'a Queue);

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
pub(super) enum NoSlot {
    QueueFull,
    Timeout(Duration, bool),
    /// The model cannot serve until something changes ([`Routes::set_unavailable`]).
    Unavailable(Unavailable),
}

/// What a request found of its model when it came: an instance ready, the model
/// hibernated (it waits for a wake), or no instance ready yet (it waits for a start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Ready,
    Asleep,
    Starting,
}

impl Found {
    /// Its word in the `Server-Timing` header's description.
    pub(super) fn word(self) -> &'static str {
        match self {
            Found::Ready => "ready",
            Found::Asleep => "wake",
            Found::Starting => "start",
        }
    }
}

impl Served {
    pub(super) fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The served models and their running instances, kept current by the supervisor (a
/// reload adds, changes and hides models).
pub struct Routes {
    models: RwLock<BTreeMap<String, Arc<Served>>>,
    /// Told when a request waits and no instance is ready ([`Routes::on_demand`]).
    demand: Arc<OnceLock<Demand>>,
    /// With `http_access_log`: each model's requests are logged.
    access_log: bool,
    /// The bodies under way: their budget and deadline.
    pub(super) bodies: Bodies,
    /// What the front door counts, for `GET /metrics`.
    pub metrics: FrontDoorMetrics,
    /// When the models were read (Unix seconds): their `created` in `/v1/models`.
    created: u64,
}

/// Records a request in the metrics when its answer's body ends (or the client leaves),
/// and in the access log if there is one.
pub(super) struct Finished {
    pub(super) metrics: Arc<ModelMetrics>,
    pub(super) code: u16,
    pub(super) arrived: Instant,
    /// With `http_access_log`: the model, for its line.
    pub(super) access: Option<Arc<str>>,
    /// The answer's body bytes sent so far.
    pub(super) bytes: std::sync::atomic::AtomicU64,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let seconds = self.arrived.elapsed().as_secs_f64();
        self.metrics.request(self.code, seconds);
        if let Some(model) = &self.access {
            tracing::info!(
                target: "cuvisor::access",
                model = &**model,
                status = self.code,
                duration_ms = (seconds * 1e6).round() / 1e3,
                bytes = self.bytes.load(Ordering::Relaxed),
                "request"
            );
        }
    }
}

impl Routes {
    /// The models of `config` that have `serve`, with no instance yet.
    pub fn new(config: &Config) -> Arc<Routes> {
        let s = &config.supervisor;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let routes = Routes {
            models: RwLock::default(),
            demand: Arc::new(OnceLock::new()),
            access_log: s.http_access_log,
            bodies: Bodies::new(s.http_body_budget, s.http_body_timeout),
            metrics: FrontDoorMetrics::default(),
            created,
        };
        for m in &config.models {
            if let Some(serve) = &m.serve {
                routes.serve(&m.name, serve);
            }
        }
        Arc::new(routes)
    }

    fn models(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Served>>> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, model: &str) -> Option<Arc<Served>> {
        self.models().get(model).cloned()
    }

    /// `model` is served with `serve`'s settings (a model added, or changed, by a reload):
    /// requests find it again if it was hidden.
    pub fn serve(&self, model: &str, serve: &Serve) {
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        match models.get(model) {
            Some(s) => {
                *s.settings.write().unwrap_or_else(|e| e.into_inner()) = Settings::of(serve);
                s.hidden.store(false, Ordering::Release);
            }
            None => {
                let served = Served {
                    settings: RwLock::new(Settings::of(serve)),
                    hidden: AtomicBool::new(false),
                    instances: Mutex::new(Vec::new()),
                    queue: Arc::default(),
                    asleep: AtomicBool::new(false),
                    next: AtomicUsize::new(0),
                    metrics: Arc::new(self.metrics.model(model)),
                    demand: self.demand.clone(),
                    unavailable: Mutex::new(None),
                    access: self.access_log.then(|| Arc::from(model)),
                };
                models.insert(model.to_owned(), Arc::new(served));
            }
        }
    }

    /// `model` was removed from the configuration: new requests find it no more (404),
    /// those waiting for it are answered (503), those in flight finish on its draining
    /// instances, whose load the supervisor still reads.
    pub fn hide(&self, model: &str) {
        if let Some(s) = self.get(model) {
            s.hidden.store(true, Ordering::Release);
            *s.unavailable.lock().unwrap_or_else(|e| e.into_inner()) = Some(Unavailable {
                error: "it was removed from the configuration".into(),
                retry_at: None,
            });
            s.queue.wake.notify_waiters();
        }
    }

    /// Calls `wake` whenever a request starts waiting while its model has no ready
    /// instance (set once; later calls are ignored).
    pub fn on_demand(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.demand.set(Box::new(wake));
    }

    /// A served model's running instances.
    pub(super) fn instances(s: &Served) -> std::sync::MutexGuard<'_, Vec<Upstream>> {
        s.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `model` is served (its instances need a port).
    pub fn serves(&self, model: &str) -> bool {
        self.get(model)
            .is_some_and(|s| !s.hidden.load(Ordering::Acquire))
    }

    /// An instance of `model` was started, listening (soon) on `port`: not ready yet.
    pub fn started(&self, model: &str, index: u32, port: u16, owner: Option<Owner>) {
        if let Some(s) = self.get(model) {
            let mut instances = Self::instances(&s);
            instances.retain(|u| u.index != index);
            instances.push(Upstream {
                index,
                draining: false,
                ready: Arc::new(AtomicBool::new(false)),
                probing: Arc::new(AtomicBool::new(false)),
                started: Instant::now(),
                shared: Arc::new(Instance {
                    port,
                    host: format!("127.0.0.1:{port}").parse().expect("a header value"),
                    in_flight: AtomicUsize::new(0),
                    idle_since: Mutex::new(Instant::now()),
                    idle: Connections::default(),
                    owner,
                }),
            });
        }
    }

    /// `model` hibernates (`true`: new requests wait, and their demand wakes it) or is
    /// awake again (the waiting requests go on). Waking counts as activity: its
    /// instances' idle clocks start again, so a model woken by hand (with no request)
    /// stays awake for its `hibernate_after` before the policy hibernates it again.
    pub fn set_asleep(&self, model: &str, asleep: bool) {
        if let Some(s) = self.get(model) {
            s.asleep.store(asleep, Ordering::SeqCst);
            if !asleep {
                let now = Instant::now();
                for u in Self::instances(&s).iter() {
                    *u.shared
                        .idle_since
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = now;
                }
                s.queue.wake.notify_waiters();
            }
        }
    }

    /// `model` is hibernated if nothing is in flight on it and nothing waits for it now;
    /// whether it was. The flag is raised first, then the load read, while a request
    /// takes its place first, then reads the flag ([`Routes::try_slot`]), all sequentially
    /// consistent: either this sees the request, or the request sees the flag and gives
    /// its place back.
    pub fn sleep_if_idle(&self, model: &str) -> bool {
        let Some(s) = self.get(model) else {
            return false;
        };
        let was = s.asleep.swap(true, Ordering::SeqCst);
        let busy = s.queue.waiting.load(Ordering::SeqCst) > 0
            || Self::instances(&s)
                .iter()
                .any(|u| u.shared.in_flight.load(Ordering::SeqCst) > 0);
        if busy && !was {
            s.asleep.store(false, Ordering::SeqCst);
            // A request that saw the flag meanwhile waits for a wake: it may go on.
            s.queue.wake.notify_waiters();
        }
        !busy
    }

    /// `model` cannot serve until something changes, and why (None: it may again). The
    /// requests waiting for it are answered at once, and so are new ones while no
    /// instance of it is ready.
    pub fn set_unavailable(&self, model: &str, why: Option<Unavailable>) {
        if let Some(s) = self
            .get(model)
            .filter(|s| !s.hidden.load(Ordering::Acquire))
        {
            *s.unavailable.lock().unwrap_or_else(|e| e.into_inner()) = why;
            s.queue.wake.notify_waiters();
        }
    }

    fn unavailable(s: &Served) -> Option<Unavailable> {
        s.unavailable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `model`'s requests wait for it to wake.
    pub fn asleep(&self, model: &str) -> bool {
        self.get(model)
            .is_some_and(|s| s.asleep.load(Ordering::Acquire))
    }

    /// An instance of `model` is gone (exited, stopped): no more requests go to it.
    pub fn gone(&self, model: &str, index: u32) {
        if let Some(s) = self.get(model) {
            Self::instances(&s).retain(|u| u.index != index);
        }
    }

    /// An instance of `model` drains: no new request goes to it; those in flight finish,
    /// and its load still counts them.
    pub fn drain(&self, model: &str, index: u32) {
        if let Some(s) = self.get(model) {
            for u in Self::instances(&s).iter_mut().filter(|u| u.index == index) {
                u.draining = true;
            }
        }
    }

    /// The model a request's `model` field names: a model's name or one of its aliases
    /// (none that was removed).
    pub(super) fn resolve(&self, name: &str) -> Option<(String, Arc<Served>)> {
        let models = self.models();
        let shown = |s: &&Arc<Served>| !s.hidden.load(Ordering::Acquire);
        if let Some((m, s)) = models.get_key_value(name)
            && shown(&s)
        {
            return Some((m.clone(), s.clone()));
        }
        models
            .iter()
            .filter(|(_, s)| shown(s))
            .find(|(_, s)| s.settings().aliases.iter().any(|a| a == name))
            .map(|(m, s)| (m.clone(), s.clone()))
    }

    /// Whether `s` has no instance ready (loading or asleep), and may have one: its
    /// requests would wait for a cold start or a wake.
    pub(super) fn cold(s: &Served) -> bool {
        Self::found(s) != Found::Ready && Self::unavailable(s).is_none()
    }

    /// What a request for `s` finds now.
    pub(super) fn found(s: &Served) -> Found {
        if s.asleep.load(Ordering::Acquire) {
            return Found::Asleep;
        }
        let ready = Self::instances(s)
            .iter()
            .any(|u| !u.draining && u.ready.load(Ordering::Acquire));
        match ready {
            true => Found::Ready,
            false => Found::Starting,
        }
    }

    /// A place on the ready instance with the fewest requests in flight, if one has
    /// room; whether any instance is ready at all.
    pub(super) fn try_slot(s: &Served) -> (Option<Slot>, bool) {
        if s.asleep.load(Ordering::SeqCst) {
            return (None, false); // none is ready until the model is awake
        }
        let instances = Self::instances(s);
        let ready = || {
            instances
                .iter()
                .filter(|u| !u.draining && u.ready.load(Ordering::Acquire))
        };
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
        let concurrency = s.settings().concurrency;
        while n < concurrency {
            match i
                .in_flight
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                // Hibernated since it looked ([`Routes::sleep_if_idle`]): the place goes
                // back, and the request waits for the wake.
                Ok(_) if s.asleep.load(Ordering::SeqCst) => {
                    i.in_flight.fetch_sub(1, Ordering::SeqCst);
                    return (None, false);
                }
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
    pub(super) async fn slot(s: &Served) -> Result<Slot, NoSlot> {
        let (slot, any_ready) = Self::try_slot(s);
        if let Some(slot) = slot {
            return Ok(slot);
        }
        if !any_ready && let Some(why) = Self::unavailable(s) {
            return Err(NoSlot::Unavailable(why));
        }
        let start = tokio::time::Instant::now();
        let q = &s.queue;
        // Counted until this request has a place, gives up, or is dropped (its client
        // left while it waited).
        let (_waiting, ahead) = Waiting::count(q);
        let settings = s.settings();
        if ahead >= settings.max_queue {
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
            if !any_ready && let Some(why) = Self::unavailable(s) {
                break Err(NoSlot::Unavailable(why));
            }
            let limit = if any_ready {
                settings.queue_timeout
            } else {
                settings.ready_timeout
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
    pub(super) fn became_ready(&self, port: u16) {
        for s in self.models().values() {
            for u in Self::instances(s).iter().filter(|u| u.shared.port == port) {
                *u.shared
                    .idle_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Instant::now();
                s.queue.wake.notify_waiters();
            }
        }
    }

    /// Requests in flight and waiting now, and the queue's limit, for a served model.
    pub fn queue_now(&self, model: &str) -> Option<crate::metrics::QueueNow> {
        let s = self.get(model)?;
        let in_flight = Self::instances(&s)
            .iter()
            .map(|u| u.shared.in_flight.load(Ordering::Acquire))
            .sum();
        Some(crate::metrics::QueueNow {
            in_flight,
            waiting: s.queue.waiting.load(Ordering::Acquire),
            limit: s.settings().max_queue,
        })
    }

    /// A model's load: requests waiting, and each routed instance's (by index).
    pub fn load(&self, model: &str) -> (usize, BTreeMap<u32, InstanceLoad>) {
        let Some(s) = self.get(model) else {
            return (0, BTreeMap::new());
        };
        let now = Instant::now();
        let instances = Self::instances(&s)
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
    pub(super) fn unready(&self) -> Vec<Unready> {
        self.models()
            .values()
            .flat_map(|s| {
                let health = s.settings().health.clone();
                Self::instances(s)
                    .iter()
                    .filter(|u| !u.draining && !u.ready.load(Ordering::Acquire))
                    .filter(|u| !u.probing.load(Ordering::Acquire))
                    .map(|u| Unready {
                        port: u.shared.port,
                        path: health.clone(),
                        ready: u.ready.clone(),
                        probing: u.probing.clone(),
                        age: u.started.elapsed(),
                        owner: u.shared.owner.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub(super) fn largest_body(&self) -> u64 {
        let models = self.models();
        let shown = models
            .values()
            .filter(|s| !s.hidden.load(Ordering::Acquire));
        shown.map(|s| s.settings().max_body).max().unwrap_or(0)
    }

    /// `GET /v1/models`'s entries, as OpenAI's model objects: each model, then its
    /// aliases (marked `alias_of`), `created` when the supervisor read its configuration.
    pub(super) fn listing(&self) -> Vec<serde_json::Value> {
        let entry = |id: &str| serde_json::json!({"id": id, "object": "model", "created": self.created, "owned_by": "cuvisor"});
        let mut out = Vec::new();
        for (name, s) in self.models().iter() {
            if s.hidden.load(Ordering::Acquire) {
                continue;
            }
            out.push(entry(name));
            for alias in &s.settings().aliases {
                let mut e = entry(alias);
                e["alias_of"] = serde_json::Value::from(name.as_str());
                out.push(e);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes for one served model `a` with one ready instance.
    fn one_ready() -> (Arc<Routes>, Arc<Served>) {
        let text = "[supervisor]\nsocket = \"/nonexistent/s\"\nhttp = \"127.0.0.1:9\"\n\
                    [[model]]\nname = \"a\"\ncommand = \"/bin/true\"\n\
                    [model.serve]\nhealth = \"/h\"\nconcurrency = 4\n";
        let config = Config::parse(std::path::Path::new("t.toml"), text).expect("a config");
        let routes = Routes::new(&config);
        routes.started("a", 0, 9, None);
        let served = routes.get("a").expect("served");
        for u in Routes::instances(&served).iter() {
            u.ready.store(true, Ordering::SeqCst);
        }
        (routes, served)
    }

    /// A model is hibernated for the policy only if nothing is in flight on it; once it
    /// is, no request gets a place until it wakes.
    #[test]
    fn sleep_if_idle_sees_the_requests_in_flight() {
        let (routes, served) = one_ready();
        let slot = Routes::try_slot(&served).0.expect("a place");
        assert!(!routes.sleep_if_idle("a"), "a request is in flight");
        assert!(!served.asleep.load(Ordering::SeqCst));
        drop(slot);
        assert!(routes.sleep_if_idle("a"));
        assert!(Routes::try_slot(&served).0.is_none(), "asleep: it waits");
        routes.set_asleep("a", false);
        assert!(Routes::try_slot(&served).0.is_some());
    }

    /// A model already asleep (hibernated by hand) stays asleep when the policy asks too
    /// and a request waits for it: its wake is the request's to trigger, not this call's.
    #[test]
    fn sleep_if_idle_leaves_a_model_already_asleep_asleep() {
        let (routes, served) = one_ready();
        routes.set_asleep("a", true);
        served.queue.waiting.fetch_add(1, Ordering::SeqCst);
        assert!(!routes.sleep_if_idle("a"), "a request waits");
        assert!(served.asleep.load(Ordering::SeqCst), "still asleep");
        served.queue.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Racing requests never hold a place while the model is hibernated: whenever
    /// `sleep_if_idle` says it was idle, nothing is in flight until it is woken, however
    /// the request's place and the flag interleave.
    #[test]
    fn no_request_holds_a_place_on_a_model_put_to_sleep() {
        let (routes, served) = one_ready();
        let stop = Arc::new(AtomicBool::new(false));
        let requests: Vec<_> = (0..2)
            .map(|_| {
                let (served, stop) = (served.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        drop(Routes::try_slot(&served).0);
                    }
                })
            })
            .collect();
        let in_flight = || {
            Routes::instances(&served)
                .iter()
                .map(|u| u.shared.in_flight.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        let mut slept = 0;
        for _ in 0..100_000 {
            if routes.sleep_if_idle("a") {
                slept += 1;
                for _ in 0..50 {
                    assert_eq!(in_flight(), 0, "a place taken on a model put to sleep");
                }
                routes.set_asleep("a", false);
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in requests {
            r.join().unwrap();
        }
        assert!(slept > 0, "never idle: the test tested nothing");
    }
}
