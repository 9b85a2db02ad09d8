//! `GET /metrics`: OpenMetrics text made with `prometheus-client` from one [`Status`],
//! so that metrics and the status JSON always agree.

use crate::status::Status;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelGpuLabels {
    model: String,
    gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabel {
    gpu: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;

/// The registry of one scrape: families registered, then filled from `status`.
struct Scrape(Registry);

impl Scrape {
    fn gauge<L>(&mut self, name: &str, help: &str) -> Family<L, U64Gauge>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let family = Family::<L, U64Gauge>::default();
        self.0.register(name, help, family.clone());
        family
    }

    fn counter<L>(&mut self, name: &str, help: &str) -> Family<L, Counter>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let family = Family::<L, Counter>::default();
        self.0.register(name, help, family.clone());
        family
    }
}

/// The metrics of `status`: per GPU of the node (when models are placed), per model and
/// GPU it has met, per model; and the supervisor's histograms.
pub fn encode(status: &Status, swap: &SwapMetrics) -> String {
    let mut scrape = Scrape(Registry::default());
    fill(&mut scrape, status);
    swap.register(&mut scrape.0);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &scrape.0).expect("writing to a String");
    out
}

fn fill(scrape: &mut Scrape, status: &Status) {
    if let Some(gpus) = &status.gpus {
        let memory =
            scrape.gauge::<GpuLabel>("cuvisor_gpu_memory_bytes", "The GPU's physical memory.");
        let committed = scrape.gauge::<GpuLabel>(
            "cuvisor_gpu_committed_bytes",
            "The quotas of the models placed on the GPU.",
        );
        let capacity = scrape.gauge::<GpuLabel>(
            "cuvisor_gpu_capacity_bytes",
            "What the quotas placed on the GPU may reach: gpu_overcommit times its memory.",
        );
        for g in gpus {
            let label = GpuLabel {
                gpu: g.uuid.clone(),
            };
            memory.get_or_create(&label).set(g.memory_bytes);
            committed.get_or_create(&label).set(g.committed_bytes);
            capacity.get_or_create(&label).set(g.capacity_bytes);
        }
    }
    let quota = scrape.gauge::<ModelGpuLabels>(
        "cuvisor_gpu_quota_bytes",
        "The model's memory quota on the GPU.",
    );
    let used = scrape.gauge::<ModelGpuLabels>(
        "cuvisor_gpu_used_bytes",
        "GPU memory charged to the model on the GPU.",
    );
    let peak = scrape.gauge::<ModelGpuLabels>(
        "cuvisor_gpu_peak_bytes",
        "The most memory the model held on the GPU.",
    );
    let refused = scrape.counter::<ModelGpuLabels>(
        "cuvisor_gpu_oom_refusals",
        "Allocations refused for the quota on the GPU.",
    );
    let host = scrape.gauge::<ModelLabel>(
        "cuvisor_host_memory_bytes",
        "Host memory used by the model's workers.",
    );
    let running = scrape.gauge::<ModelLabel>("cuvisor_running_instances", "Instances running.");
    let restarts = scrape.counter::<ModelLabel>("cuvisor_restarts", "Instance restarts.");
    let oom_kills = scrape.counter::<ModelLabel>(
        "cuvisor_oom_kills",
        "Workers killed by the host OOM killer.",
    );
    let hibernated = scrape.gauge::<ModelLabel>(
        "cuvisor_hibernated",
        "1 while the model is asked to be hibernated.",
    );
    let moved = scrape.gauge::<SwapLabels>(
        "cuvisor_swap_moved_bytes",
        "Bytes the last hibernate (direction out) or wake (in) moved.",
    );
    let pinned = scrape.gauge::<ModelLabel>(
        "cuvisor_swap_pinned_bytes",
        "Bytes the last hibernate could not move (not managed memory).",
    );
    let by_state = scrape.gauge::<ModelStateLabels>("cuvisor_instances", "Instances by state.");
    for m in &status.models {
        for i in &m.instances {
            let labels = ModelStateLabels {
                model: m.name.clone(),
                state: i.state.clone(),
            };
            by_state.get_or_create(&labels).inc();
        }
        for g in m.gpus.iter().flatten() {
            let labels = ModelGpuLabels {
                model: m.name.clone(),
                gpu: g.uuid.clone(),
            };
            if let Some(q) = g.quota_bytes {
                quota.get_or_create(&labels).set(q);
            }
            used.get_or_create(&labels).set(g.used_bytes);
            peak.get_or_create(&labels).set(g.peak_bytes);
            refused.get_or_create(&labels).inc_by(g.refusals);
        }
        let label = ModelLabel {
            model: m.name.clone(),
        };
        host.get_or_create(&label).set(m.host_memory_bytes);
        let alive = m.instances.iter().filter(|i| i.pid.is_some()).count();
        running.get_or_create(&label).set(alive as u64);
        restarts.get_or_create(&label).inc_by(m.restarts);
        oom_kills.get_or_create(&label).inc_by(m.oom_kills);
        hibernated
            .get_or_create(&label)
            .set(u64::from(m.swap.hibernated));
        for (direction, last) in [("out", &m.swap.last_out), ("in", &m.swap.last_in)] {
            if let Some(r) = last {
                let labels = SwapLabels {
                    model: m.name.clone(),
                    direction,
                };
                moved.get_or_create(&labels).set(r.moved_bytes);
            }
        }
        if let Some(r) = &m.swap.last_out {
            pinned.get_or_create(&label).set(r.pinned_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{InstanceStatus, ModelGpu, ModelStatus, NodeGpu};

    #[test]
    fn one_placed_model_on_one_gpu() {
        let status = Status {
            models: vec![ModelStatus {
                name: "llama".into(),
                state: "running".into(),
                instances: vec![InstanceStatus {
                    index: 0,
                    state: "running".into(),
                    pid: Some(42),
                    restarts: 2,
                    oom_kills: 0,
                    last_exit: Some(1),
                    backoff_ms: None,
                    uptime_ms: Some(5),
                    host_memory_bytes: Some(1024),
                    error: None,
                }],
                restarts: 2,
                oom_kills: 0,
                gpu_quota_bytes: Some(300),
                gpu_used_bytes: Some(200),
                gpu_peak_bytes: Some(250),
                gpu_refusals: Some(1),
                gpus: Some(vec![ModelGpu {
                    uuid: "GPU-a".into(),
                    quota_bytes: Some(300),
                    physical_bytes: 1000,
                    used_bytes: 200,
                    peak_bytes: 250,
                    refusals: 1,
                }]),
                host_memory_bytes: 1024,
                placed_on: Some(vec!["GPU-a".into()]),
                swap: Default::default(),
                error: None,
            }],
            gpus: Some(vec![NodeGpu {
                index: 0,
                uuid: "GPU-a".into(),
                memory_bytes: 1000,
                committed_bytes: 300,
                capacity_bytes: 1000,
                models: vec!["llama".into()],
            }]),
        };
        let text = encode(&status, &SwapMetrics::default());
        for line in [
            "cuvisor_gpu_memory_bytes{gpu=\"GPU-a\"} 1000",
            "cuvisor_gpu_committed_bytes{gpu=\"GPU-a\"} 300",
            "cuvisor_gpu_quota_bytes{model=\"llama\",gpu=\"GPU-a\"} 300",
            "cuvisor_gpu_used_bytes{model=\"llama\",gpu=\"GPU-a\"} 200",
            "cuvisor_gpu_peak_bytes{model=\"llama\",gpu=\"GPU-a\"} 250",
            "cuvisor_gpu_oom_refusals_total{model=\"llama\",gpu=\"GPU-a\"} 1",
            "# TYPE cuvisor_gpu_oom_refusals counter",
            "cuvisor_host_memory_bytes{model=\"llama\"} 1024",
            "cuvisor_running_instances{model=\"llama\"} 1",
            "cuvisor_restarts_total{model=\"llama\"} 2",
            "cuvisor_oom_kills_total{model=\"llama\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: Refused,
}

/// Why the front door answered a request itself, before it could count it for a model.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refused {
    /// No valid API key (401).
    Unauthorized,
    /// The model it names is not served (404).
    UnknownModel,
    /// Not JSON, no `model` field, or a body that could not be read (400).
    BadRequest,
    /// A body larger than any served model accepts (413).
    TooLarge,
    /// No route for its method and path (404).
    NoRoute,
    /// Its body did not arrive within `http_body_timeout` (408).
    BodyTimeout,
    /// The bodies under way held all of `http_body_budget` (503).
    BodiesBusy,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Unauthorized => "unauthorized",
            Refused::UnknownModel => "unknown_model",
            Refused::BadRequest => "bad_request",
            Refused::TooLarge => "too_large",
            Refused::NoRoute => "no_route",
            Refused::BodyTimeout => "body_timeout",
            Refused::BodiesBusy => "bodies_busy",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Refused {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelStateLabels {
    model: String,
    state: String,
}

type Seconds = Family<ModelLabel, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The front door's counters and histograms, kept for the life of the supervisor (each
/// scrape registers them as they are).
#[derive(Clone)]
pub struct FrontDoorMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Seconds,
    first_byte: Seconds,
    cold_starts: Family<ModelLabel, Counter>,
    cold_start_seconds: Seconds,
    refused: Family<RefusedLabels, Counter>,
}

impl Default for FrontDoorMetrics {
    fn default() -> Self {
        let histograms = || Seconds::new_with_constructor(seconds as fn() -> Histogram);
        FrontDoorMetrics {
            requests: Family::default(),
            duration: histograms(),
            first_byte: histograms(),
            cold_starts: Family::default(),
            cold_start_seconds: histograms(),
            refused: Family::default(),
        }
    }
}

impl FrontDoorMetrics {
    /// The metrics of `model`, to record its requests with.
    pub fn model(&self, model: &str) -> ModelMetrics {
        let l = label(model);
        ModelMetrics {
            model: model.to_owned(),
            requests: self.requests.clone(),
            by_code: std::sync::Mutex::new(Vec::new()),
            duration: self.duration.get_or_create(&l).clone(),
            first_byte: self.first_byte.get_or_create(&l).clone(),
            cold_starts: self.cold_starts.get_or_create(&l).clone(),
            cold_start_seconds: self.cold_start_seconds.get_or_create(&l).clone(),
        }
    }

    /// A request answered by the front door itself, for no model.
    pub fn refused(&self, reason: Refused) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cuvisor_front_door_refused",
            "Front-door requests answered before they reached a model, by reason.",
            self.refused.clone(),
        );
        registry.register(
            "cuvisor_requests",
            "Front-door requests, by model and status code.",
            self.requests.clone(),
        );
        registry.register(
            "cuvisor_request_duration_seconds",
            "Front-door requests, from arrival to the end of the answer's body.",
            self.duration.clone(),
        );
        registry.register(
            "cuvisor_time_to_first_byte_seconds",
            "Front-door requests, from arrival to the instance's first answer.",
            self.first_byte.clone(),
        );
        registry.register(
            "cuvisor_cold_starts",
            "Requests that found no ready instance and waited for one.",
            self.cold_starts.clone(),
        );
        registry.register(
            "cuvisor_cold_start_seconds",
            "How long cold-started requests waited for an instance.",
            self.cold_start_seconds.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabels {
    model: String,
    /// `out` (hibernate) or `in` (wake).
    direction: &'static str,
}

/// How long hibernates and wakes took, kept for the life of the supervisor.
#[derive(Clone, Debug)]
pub struct SwapMetrics {
    seconds: Family<SwapLabels, Histogram, fn() -> Histogram>,
}

impl Default for SwapMetrics {
    fn default() -> Self {
        SwapMetrics {
            seconds: Family::new_with_constructor(swap_seconds as fn() -> Histogram),
        }
    }
}

fn swap_seconds() -> Histogram {
    // 100 µs to about 105 s: a small model's wake to 80 GB over a slow link.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

impl SwapMetrics {
    /// A hibernate (`out`) or wake of `model` that every process acknowledged.
    pub fn observe(&self, model: &str, out: bool, seconds: f64) {
        let labels = SwapLabels {
            model: model.to_owned(),
            direction: if out { "out" } else { "in" },
        };
        self.seconds.get_or_create(&labels).observe(seconds);
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cuvisor_swap_seconds",
            "Hibernates (direction out) and wakes (in), from the request to the last \
             process's acknowledgement, copies included.",
            self.seconds.clone(),
        );
    }
}

fn label(model: &str) -> ModelLabel {
    ModelLabel {
        model: model.to_owned(),
    }
}

/// A served model's requests now, as the front door counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueNow {
    pub in_flight: usize,
    pub waiting: usize,
    /// Its `max_queue`: more waiting are refused.
    pub limit: usize,
}

/// The front door's part of a scrape: its counters and histograms, and per served model
/// the requests in flight and waiting now, and its queue's limit.
pub fn encode_with_front_door(
    status: &Status,
    swap: &SwapMetrics,
    front_door: &FrontDoorMetrics,
    load: impl Fn(&str) -> Option<QueueNow>,
) -> String {
    let mut scrape = Scrape(Registry::default());
    fill(&mut scrape, status);
    swap.register(&mut scrape.0);
    front_door.register(&mut scrape.0);
    let in_flight = scrape.gauge::<ModelLabel>(
        "cuvisor_in_flight_requests",
        "Front-door requests an instance is answering now.",
    );
    let queued = scrape.gauge::<ModelLabel>(
        "cuvisor_queued_requests",
        "Front-door requests waiting for a free instance.",
    );
    let limit = scrape.gauge::<ModelLabel>(
        "cuvisor_queue_limit",
        "Front-door requests that may wait for the model (serve.max_queue); more are refused.",
    );
    for m in &status.models {
        if let Some(now) = load(&m.name) {
            in_flight
                .get_or_create(&label(&m.name))
                .set(now.in_flight as u64);
            queued
                .get_or_create(&label(&m.name))
                .set(now.waiting as u64);
            limit.get_or_create(&label(&m.name)).set(now.limit as u64);
        }
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &scrape.0).expect("writing to a String");
    out
}

/// One served model's front-door metrics, looked up once: a request records without
/// building labels or looking them up (but its status code's counter, found in a short
/// list).
pub struct ModelMetrics {
    model: String,
    requests: Family<RequestLabels, Counter>,
    by_code: std::sync::Mutex<Vec<(u16, Counter)>>,
    duration: Histogram,
    first_byte: Histogram,
    cold_starts: Counter,
    cold_start_seconds: Histogram,
}

impl ModelMetrics {
    /// A request answered `code`, its body ended after `seconds`.
    pub fn request(&self, code: u16, seconds: f64) {
        let counter = {
            let mut codes = self.by_code.lock().unwrap_or_else(|e| e.into_inner());
            match codes.iter().find(|(c, _)| *c == code) {
                Some((_, counter)) => counter.clone(),
                None => {
                    let labels = RequestLabels {
                        model: self.model.clone(),
                        code,
                    };
                    let counter = self.requests.get_or_create(&labels).clone();
                    codes.push((code, counter.clone()));
                    counter
                }
            }
        };
        counter.inc();
        self.duration.observe(seconds);
    }

    /// The instance's answer began `seconds` after the request arrived.
    pub fn first_byte(&self, seconds: f64) {
        self.first_byte.observe(seconds);
    }

    /// A request found no ready instance and waited `seconds` for one.
    pub fn cold_start(&self, seconds: f64) {
        self.cold_starts.inc();
        self.cold_start_seconds.observe(seconds);
    }
}
