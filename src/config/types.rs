//! The configuration's values, typed and checked: what the rest of cuvisor reads.

use super::caps::CapSet;
use super::cpus;
use super::gpus::{GpuDemand, Policy};
use super::python::{Envs, PythonSpec};
use crate::contract::Mode;
use crate::size::QuotaSpec;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The parent cgroup of `cuvisor exec` programs: not a supervisor's (`cgroup_name`, by
/// default `cuvisor`), whose leftovers a starting supervisor removes; no supervisor may
/// take the name.
pub const EXEC_CGROUP_NAME: &str = "cuvisor-exec";

/// How long a hibernate or wake waits for the model's processes to acknowledge unless the
/// model says otherwise (`swap_timeout`; their copies included: 80 GB at PCIe 4.0's 25 GB/s
/// take about 3 s).
pub const DEFAULT_SWAP_TIMEOUT: Duration = Duration::from_secs(30);

/// The front door's connections at once, at most, unless `http_max_connections` says
/// otherwise.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 4096;

/// How long a request's body may take to arrive, unless `http_body_timeout` says otherwise.
pub const DEFAULT_HTTP_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The bytes of bodies the front door holds at once, unless `http_body_budget` says
/// otherwise.
pub const DEFAULT_HTTP_BODY_BUDGET: u64 = 256 << 20;

/// Where supervisors keep their locks: one per cgroup parent (`cgroup_name`).
pub const RUN_DIR: &str = "/run/cuvisor";

/// A configuration error: the file, the line (1-based; 0 when not tied to one), what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        } else {
            write!(f, "{}: {}", self.path.display(), self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    pub pid: bool,
    pub mount: bool,
    pub ipc: bool,
    pub uts: bool,
    pub network: bool,
    /// A user namespace: the worker is root in it, mapped to the model's own block of
    /// unprivileged host ids (`ModelConfig::host_ids`).
    pub user: bool,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            pid: true,
            mount: true,
            ipc: true,
            uts: true,
            network: false,
            user: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub gpu_quota: Option<QuotaSpec>,
    /// The GPUs the model runs on (its workers' `CUDA_VISIBLE_DEVICES`); None: every GPU
    /// of the node, unplaced.
    pub gpus: Option<GpuDemand>,
    pub mode: Mode,
    pub memory_limit: Option<u64>,
    /// CPU cores (fractions allowed).
    pub cpu_limit: Option<f64>,
    /// The CPUs the model's workers may run on (a cpuset).
    pub cpus: Option<cpus::CpuSet>,
    pub pids_limit: Option<u64>,
    /// Freeze a hibernated model's workers (cgroup freezer), thawed before the wake.
    pub freeze_hibernated: bool,
    /// How long a hibernate or wake waits for the model's processes to acknowledge.
    pub swap_timeout: Duration,
    /// Instance slots: the fixed number, or `max_instances` for a scaled model.
    pub instances: u32,
    /// A scaled model (`min_instances`): instances follow the front door's traffic
    /// between this and `instances`; None: all `instances` always run.
    pub min_instances: Option<u32>,
    pub restart: RestartPolicy,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub isolation: Isolation,
    pub bind_ro: Vec<PathBuf>,
    /// Capabilities the worker keeps; none by default.
    pub capabilities: CapSet,
    /// With `isolation.user`: the first host id of the model's block of
    /// [`USERNS_BLOCK`] ids (uid and gid), to which ids 0.. in its namespace map.
    pub host_ids: Option<u32>,
    /// How the front door reaches the model's instances; None: not served.
    pub serve: Option<Serve>,
    /// Its own Python environment, built by uv.
    pub python: Option<PythonSpec>,
}

impl ModelConfig {
    /// The host user and group its workers' processes run as: its `user` (0: root when
    /// none), moved into its block of host ids when it has a user namespace.
    pub fn host_user(&self) -> (u32, u32) {
        let (uid, gid) = (self.uid.unwrap_or(0), self.gid.unwrap_or(0));
        match self.host_ids {
            Some(first) => (first + uid, first + gid),
            None => (uid, gid),
        }
    }
}

/// A model the front door serves (`[model.serve]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Serve {
    /// The path that answers 200 once an instance can take requests.
    pub health: String,
    /// How long an instance may take to become healthy before it is restarted.
    pub ready_timeout: Duration,
    /// Other names requests may give in their `model` field.
    pub aliases: Vec<String>,
    /// The largest request body the front door accepts for the model.
    pub max_body: u64,
    /// Requests in flight at once per instance; the rest wait in the model's queue.
    pub concurrency: usize,
    /// Requests that may wait; more are answered 503 at once.
    pub max_queue: usize,
    /// How long a request waits in the queue before 503.
    pub queue_timeout: Duration,
    /// Requests in flight per ready instance above which a scaled model adds one.
    pub target: usize,
    /// How long an instance of a scaled model may go without requests before it stops.
    pub idle_timeout: Duration,
    /// How long every instance may go without requests before the model hibernates
    /// (None: only when asked, or pushed out by another model's wake).
    pub hibernate_after: Option<Duration>,
    /// A stream asked for while no instance is ready (a cold start, a wake) gets its
    /// answer's head at once and SSE comments while it waits (`loading_state`).
    pub loading_state: bool,
}

/// How much the supervisor logs (`log_level`): each level includes those above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

/// Ids each model in a user namespace gets: as many as a container usually has.
pub const USERNS_BLOCK: u32 = 65536;

#[derive(Debug, Clone, PartialEq)]
pub enum Logs {
    /// Lines prefixed `[model/instance]` on the supervisor's stderr.
    Stderr,
    /// One file per model instance in this directory.
    Dir(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    /// The file holding the bearer token that requests over `listen` must carry.
    pub listen_token: Option<PathBuf>,
    pub ledger_dir: PathBuf,
    pub shim: Option<PathBuf>,
    pub grace_period: Duration,
    pub logs: Logs,
    pub allow_unlimited: bool,
    pub cgroup_name: String,
    /// Host ids given to models with `isolation.user`, [`USERNS_BLOCK`] each, in the
    /// order of the file (inclusive bounds).
    pub userns_range: Option<(u32, u32)>,
    /// The front door's address (`http`): one endpoint for every served model.
    pub http: Option<SocketAddr>,
    /// A listener of `/metrics` alone (`metrics`), any address, for a scraper on another
    /// host.
    pub metrics: Option<SocketAddr>,
    /// The file holding the bearer token scrapes of `metrics` must carry; None: none.
    pub metrics_token: Option<PathBuf>,
    /// The dashboard's listener (`dashboard`): a web page of the node, and the read-only
    /// part of the control API it reads.
    pub dashboard: Option<SocketAddr>,
    /// The file holding the token the dashboard's actions (and a model's output) need;
    /// None: the dashboard is read-only.
    pub dashboard_token: Option<PathBuf>,
    /// The least important lines the supervisor logs (`log_level`).
    pub log_level: LogLevel,
    /// Its log lines as text or JSON (`log_format`).
    pub log_json: bool,
    /// A line per front-door request (`http_access_log`): model, status, duration, bytes.
    pub http_access_log: bool,
    /// A file of API keys (one per line) the front door requires, as `Authorization:
    /// Bearer KEY`; None: no key needed.
    pub api_keys: Option<PathBuf>,
    /// The front door's connections at once, at most (`http_max_connections`; lowered at
    /// start to what the supervisor's descriptors allow).
    pub http_max_connections: usize,
    /// A request's body must arrive whole within this of its head (`http_body_timeout`).
    pub http_body_timeout: Duration,
    /// The bytes of request bodies the front door holds at once, in all
    /// (`http_body_budget`).
    pub http_body_budget: u64,
    /// How models with `gpus = N` are placed.
    pub placement: Policy,
    /// The quotas committed to a GPU may reach this many times its memory.
    pub gpu_overcommit: f64,
    /// A served model used within this long is pushed out of its GPU for another only when
    /// idle ones used longer ago cannot make room (`swap_protect`; zero: no hysteresis).
    pub swap_protect: Duration,
    /// The longest a hibernated model's requests wait for room before it pushes out models
    /// used within `swap_protect` (`swap_patience`; zero: no collation).
    pub swap_patience: Duration,
    /// Where models' Python environments are built, and with which uv.
    pub envs: Envs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub supervisor: SupervisorConfig,
    pub models: Vec<ModelConfig>,
}

// ---- the file as written ----------------------------------------------------------------

/// Parses `500ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// The longest a hibernate or wake may wait for a model's processes.
pub const MAX_SWAP_TIMEOUT: Duration = Duration::from_secs(300);

pub const DURATION_FORMS: &str = "expected a duration such as 500ms, 10s, 2m or 1h";

/// The longest duration any key accepts: deadlines computed from it never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
