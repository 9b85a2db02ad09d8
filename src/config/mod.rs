//! The supervisor's configuration: one TOML file declaring the models to run.
//!
//! Everything is checked at load, before anything starts: unknown keys, wrong types and
//! invalid values are errors that name the file and the line. `docs/OPERATIONS.md`
//! documents every key with an annotated example.

pub mod caps;
pub mod cpus;
pub mod exposure;
pub mod gpus;
pub mod host;
pub mod python;
pub mod secrets;

pub use gpus::{GpuDemand, GpuRef, Policy};
pub use host::{Host, SystemHost};
pub use python::{Envs, PythonSpec};

/// The parent cgroup of `cuvisor exec` programs: not a supervisor's (`cgroup_name`, by
/// default `cuvisor`), whose leftovers a starting supervisor removes; no supervisor may
/// take the name.
pub const EXEC_CGROUP_NAME: &str = "cuvisor-exec";

/// How long a hibernate or wake waits for the model's processes to acknowledge unless the
/// model says otherwise (`swap_timeout`; their copies included: 80 GB at PCIe 4.0's 25 GB/s
/// take about 3 s).
pub const DEFAULT_SWAP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where supervisors keep their locks: one per cgroup parent (`cgroup_name`).
pub const RUN_DIR: &str = "/run/cuvisor";

use crate::contract::{self, Mode};
use crate::gpu::GpuUuid;
use crate::size::{QuotaSpec, parse_quota, parse_size};
use caps::CapSet;
use cuvisor_common::ledger::{self, valid_model_name};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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
    /// A file of API keys (one per line) the front door requires, as `Authorization:
    /// Bearer KEY`; None: no key needed.
    pub api_keys: Option<PathBuf>,
    /// How models with `gpus = N` are placed.
    pub placement: Policy,
    /// The quotas committed to a GPU may reach this many times its memory.
    pub gpu_overcommit: f64,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    supervisor: Option<Spanned<RawSupervisor>>,
    #[serde(default)]
    model: Vec<Spanned<RawModel>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSupervisor {
    socket: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    listen_token: Option<Spanned<String>>,
    ledger_dir: Option<Spanned<String>>,
    shim: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
    logs: Option<Spanned<String>>,
    allow_unlimited: Option<bool>,
    cgroup_name: Option<Spanned<String>>,
    userns_range: Option<Spanned<String>>,
    placement: Option<Spanned<String>>,
    gpu_overcommit: Option<Spanned<toml::Value>>,
    http: Option<Spanned<String>>,
    api_keys: Option<Spanned<String>>,
    envs_dir: Option<Spanned<String>>,
    uv: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    cwd: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    gpu_quota: Option<Spanned<String>>,
    gpus: Option<Spanned<toml::Value>>,
    mode: Option<Spanned<String>>,
    memory_limit: Option<Spanned<String>>,
    cpu_limit: Option<Spanned<f64>>,
    cpus: Option<Spanned<String>>,
    pids_limit: Option<Spanned<i64>>,
    freeze_hibernated: Option<bool>,
    swap_timeout: Option<Spanned<String>>,
    instances: Option<Spanned<i64>>,
    min_instances: Option<Spanned<i64>>,
    max_instances: Option<Spanned<i64>>,
    restart: Option<Spanned<String>>,
    backoff_initial: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    isolation: Option<Spanned<RawIsolation>>,
    python: Option<Spanned<RawPython>>,
    #[serde(default)]
    bind_ro: Vec<Spanned<String>>,
    #[serde(default)]
    capabilities: Vec<Spanned<String>>,
    serve: Option<Spanned<RawServe>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    health: Option<Spanned<String>>,
    ready_timeout: Option<Spanned<String>>,
    #[serde(default)]
    aliases: Vec<Spanned<String>>,
    max_body: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
    max_queue: Option<Spanned<i64>>,
    queue_timeout: Option<Spanned<String>>,
    target: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<String>>,
    hibernate_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPython {
    requirements: Option<Spanned<String>>,
    #[serde(default)]
    packages: Vec<String>,
    version: Option<Spanned<String>>,
    index_url: Option<String>,
    #[serde(default)]
    find_links: Vec<String>,
    offline: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIsolation {
    pid: Option<bool>,
    mount: Option<bool>,
    ipc: Option<bool>,
    uts: Option<bool>,
    network: Option<bool>,
    user: Option<bool>,
}

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

/// The id `setresuid`/`setresgid` read as "leave unchanged": a worker given it would keep
/// the supervisor's (root's) id.
const NO_CHANGE_ID: u32 = u32::MAX;

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
    host: &'a dyn Host,
}

impl Checker<'_> {
    /// A secret's file (`listen_token`, `api_keys`): an absolute path that `read` accepts
    /// on the host.
    fn secret(
        &mut self,
        field: &str,
        v: &Spanned<String>,
        read: impl Fn(&dyn Host, &Path) -> Result<(), String>,
    ) -> Option<PathBuf> {
        let p = self.absolute(field, v)?;
        match read(self.host, &p) {
            Ok(()) => Some(p),
            Err(why) => {
                self.error(v, format!("{field} = \"{}\": {why}", p.display()));
                None
            }
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        let line = self.line_of(spanned.span().start);
        self.errors.push(ConfigError {
            path: self.path.to_owned(),
            line,
            message: message.into(),
        });
    }

    fn error_at(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: self.path.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// A string that becomes a C string (a path, an argument): no NUL byte.
    fn no_nul(&mut self, key: &str, v: &Spanned<String>) -> bool {
        if v.get_ref().contains('\0') {
            self.error(
                v,
                format!("{key}: a NUL byte cannot be passed to the system"),
            );
            false
        } else {
            true
        }
    }

    fn absolute(&mut self, key: &str, v: &Spanned<String>) -> Option<PathBuf> {
        if !self.no_nul(key, v) {
            None
        } else if v.get_ref().starts_with('/') {
            Some(PathBuf::from(v.get_ref()))
        } else {
            self.error(
                v,
                format!("{key} = \"{}\": expected an absolute path", v.get_ref()),
            );
            None
        }
    }

    fn duration(&mut self, key: &str, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Some(d) if d <= MAX_DURATION => d,
                Some(_) => {
                    self.error(s, format!("{key} = \"{}\": at most 24h", s.get_ref()));
                    default
                }
                None => {
                    self.error(s, format!("{key} = \"{}\": {DURATION_FORMS}", s.get_ref()));
                    default
                }
            },
        }
    }
}

impl Config {
    /// Reads and checks a configuration file; every error found, not just the first.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                path: path.to_owned(),
                line: 0,
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Checks a configuration given as text (`path` is for messages) against this host.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
        Self::parse_on(path, text, &SystemHost)
    }

    /// Checks a configuration given as text against `host`'s users, groups, files,
    /// secrets and CPUs (a test's or the fuzz target's own, or [`SystemHost`]).
    pub fn parse_on(path: &Path, text: &str, host: &dyn Host) -> Result<Config, Vec<ConfigError>> {
        let mut c = Checker {
            path,
            text,
            errors: Vec::new(),
            host,
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let line = e.span().map_or(0, |s| c.line_of(s.start));
                return Err(vec![ConfigError {
                    path: path.to_owned(),
                    line,
                    message: e.message().trim().to_owned(),
                }]);
            }
        };
        let supervisor = check_supervisor(
            &mut c,
            raw.supervisor.map(Spanned::into_inner).unwrap_or_default(),
        );
        if raw.model.is_empty() {
            c.error_at(0, "no [[model]]: declare at least one model to run");
        }
        let mut models: Vec<ModelConfig> = Vec::new();
        for spanned in &raw.model {
            let line = c.line_of(spanned.span().start);
            if let Some(mut m) = check_model(&mut c, spanned.get_ref(), line) {
                if models.iter().any(|o| o.name == m.name) {
                    c.error_at(line, format!("model \"{}\" is declared twice", m.name));
                }
                if m.isolation.user {
                    m.host_ids = assign_host_ids(&mut c, &supervisor, &models, line);
                }
                models.push(m);
            }
        }
        check_front_door(&mut c, &supervisor, &models);
        if c.errors.is_empty() {
            Ok(Config {
                path: path.to_owned(),
                supervisor,
                models,
            })
        } else {
            Err(c.errors)
        }
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}

fn check_supervisor(c: &mut Checker, s: RawSupervisor) -> SupervisorConfig {
    let socket = s
        .socket
        .as_ref()
        .and_then(|v| c.absolute("socket", v))
        .unwrap_or_else(|| PathBuf::from("/run/cuvisor/control.sock"));
    let listen = s.listen.as_ref().and_then(|v| match v.get_ref().parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(_) => {
            c.error(v, format!("listen = \"{}\": the control API listens on loopback only (127.0.0.1:PORT or [::1]:PORT)", v.get_ref()));
            None
        }
        Err(_) => {
            c.error(v, format!("listen = \"{}\": expected an address such as 127.0.0.1:9400", v.get_ref()));
            None
        }
    });
    let listen_token = s
        .listen_token
        .as_ref()
        .and_then(|v| c.secret("listen_token", v, |host, p| host.read_token(p).map(drop)));
    if let (Some(l), None) = (&s.listen, &s.listen_token) {
        c.error(
            l,
            "listen: the control API over TCP needs listen_token, a file with the token \
             clients must send (Authorization: Bearer TOKEN)",
        );
    }
    let ledger_dir = s
        .ledger_dir
        .as_ref()
        .and_then(|v| c.absolute("ledger_dir", v))
        .unwrap_or_else(ledger::default_dir);
    let shim = s.shim.as_ref().and_then(|v| {
        let p = c.absolute("shim", v)?;
        if c.host.is_file(&p) {
            Some(p)
        } else {
            c.error(v, format!("shim = \"{}\": no such file", p.display()));
            None
        }
    });
    let grace_period = c.duration("grace_period", &s.grace_period, Duration::from_secs(10));
    let logs = match &s.logs {
        None => Logs::Stderr,
        Some(v) if v.get_ref() == "stderr" => Logs::Stderr,
        Some(v) => c.absolute("logs", v).map_or(Logs::Stderr, Logs::Dir),
    };
    let cgroup_name = match &s.cgroup_name {
        None => "cuvisor".to_owned(),
        Some(v)
            if EXEC_CGROUP_NAME == v.get_ref()
                || [".slice", ".scope", ".service", ".mount"]
                    .iter()
                    .any(|suffix| v.get_ref().ends_with(suffix)) =>
        {
            c.error(
                v,
                format!(
                    "cgroup_name = \"{}\": that name belongs to systemd or to cuvisor exec; \
                     give the supervisor a cgroup of its own",
                    v.get_ref()
                ),
            );
            "cuvisor".to_owned()
        }
        Some(v) if valid_model_name(v.get_ref()) => v.get_ref().clone(),
        Some(v) => {
            c.error(
                v,
                format!(
                    "cgroup_name = \"{}\": expected letters, digits, '.', '_' or '-'",
                    v.get_ref()
                ),
            );
            "cuvisor".to_owned()
        }
    };
    let userns_range = s.userns_range.as_ref().and_then(|v| {
        let parsed = v
            .get_ref()
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)));
        match parsed {
            Some((first, last)) if first >= 1 && first <= last && last < u32::MAX => {
                match c.host.id_in_use(first, last) {
                    Some(who) => {
                        c.error(
                            v,
                            format!(
                                "userns_range = \"{}\": {who} has an id in it; choose ids no user or group of the host has",
                                v.get_ref()
                            ),
                        );
                        None
                    }
                    None => Some((first, last)),
                }
            }
            _ => {
                c.error(
                    v,
                    format!(
                        "userns_range = \"{}\": expected FIRST-LAST host ids, e.g. 1000000-1999999 (not 0, at most 4294967294), that no user of the host has",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    });
    let placement = match &s.placement {
        None => Policy::Pack,
        Some(v) if v.get_ref() == "pack" => Policy::Pack,
        Some(v) if v.get_ref() == "spread" => Policy::Spread,
        Some(v) => {
            c.error(
                v,
                format!(
                    "placement = \"{}\": expected \"pack\" or \"spread\"",
                    v.get_ref()
                ),
            );
            Policy::Pack
        }
    };
    let gpu_overcommit = match &s.gpu_overcommit {
        None => 1.0,
        Some(v) => match v.get_ref() {
            toml::Value::Float(f) if f.is_finite() && *f > 0.0 && *f <= 64.0 => *f,
            toml::Value::Integer(i) if (1..=64).contains(i) => *i as f64,
            other => {
                c.error(
                    v,
                    format!(
                        "gpu_overcommit = {other}: expected a factor greater than 0 and at most 64 \
                         (1.0: no GPU committed beyond its memory; Omni runs at about 4.0)"
                    ),
                );
                1.0
            }
        },
    };
    let http = s
        .http
        .as_ref()
        .and_then(|v| match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.error(
                    v,
                    format!(
                        "http = \"{}\": expected an address such as 127.0.0.1:8000",
                        v.get_ref()
                    ),
                );
                None
            }
        });
    let api_keys = s
        .api_keys
        .as_ref()
        .and_then(|v| c.secret("api_keys", v, |host, p| host.read_keys(p).map(drop)));
    let envs = Envs {
        dir: s
            .envs_dir
            .as_ref()
            .and_then(|v| c.absolute("envs_dir", v))
            .unwrap_or_else(|| PathBuf::from("/var/lib/cuvisor/envs")),
        uv: s
            .uv
            .as_ref()
            .filter(|v| c.no_nul("uv", v))
            .map_or_else(|| PathBuf::from("uv"), |v| PathBuf::from(v.get_ref())),
    };
    SupervisorConfig {
        socket,
        listen,
        listen_token,
        http,
        api_keys,
        envs,
        ledger_dir,
        shim,
        grace_period,
        logs,
        allow_unlimited: s.allow_unlimited.unwrap_or(false),
        cgroup_name,
        userns_range,
        placement,
        gpu_overcommit,
    }
}

/// `gpus = N` (1 to 16) or `gpus = [0, "GPU-…"]` (NVML indices or UUIDs).
fn check_gpus(c: &mut Checker, v: &Spanned<toml::Value>) -> Option<GpuDemand> {
    const FORMS: &str = "expected a number of GPUs from 1 to 16, or a list of GPU indices and \
                         UUIDs such as [0, 1] or [\"GPU-6f2d0e7a-1b3c-4d5e-8f90-a1b2c3d4e5f6\"]";
    let max = ledger::MAX_GPUS;
    match v.get_ref() {
        toml::Value::Integer(n) if (1..=max as i64).contains(n) => {
            Some(GpuDemand::Count(*n as u32))
        }
        toml::Value::Array(items) if !items.is_empty() && items.len() <= max => {
            let mut refs = Vec::new();
            for item in items {
                match item {
                    toml::Value::Integer(i) if (0..=u32::MAX as i64).contains(i) => {
                        refs.push(GpuRef::Index(*i as u32))
                    }
                    toml::Value::String(u) => match u.parse::<GpuUuid>() {
                        Ok(uuid) => refs.push(GpuRef::Uuid(uuid)),
                        Err(e) => {
                            c.error(v, format!("gpus: {e}"));
                            return None;
                        }
                    },
                    other => {
                        c.error(v, format!("gpus: {other} is not a GPU: {FORMS}"));
                        return None;
                    }
                }
            }
            Some(GpuDemand::These(refs))
        }
        other => {
            c.error(v, format!("gpus = {other}: {FORMS}"));
            None
        }
    }
}

/// The next block of host ids in the supervisor's `userns_range`.
fn assign_host_ids(
    c: &mut Checker,
    supervisor: &SupervisorConfig,
    earlier: &[ModelConfig],
    line: usize,
) -> Option<u32> {
    let Some((first, last)) = supervisor.userns_range else {
        c.error_at(
            line,
            "isolation.user needs host ids for the namespace: set userns_range in [supervisor]",
        );
        return None;
    };
    let taken = earlier.iter().filter(|m| m.host_ids.is_some()).count() as u64;
    let start = u64::from(first) + taken * u64::from(USERNS_BLOCK);
    if start + u64::from(USERNS_BLOCK) - 1 > u64::from(last) {
        c.error_at(
            line,
            format!(
                "userns_range {first}-{last} has no room for another {USERNS_BLOCK} ids (each model with isolation.user takes that many)"
            ),
        );
        return None;
    }
    Some(start as u32)
}

/// Variables the supervisor sets for every worker; a model cannot set them itself.
/// What cuvisor sets from `gpus`, when the model has it.
const PLACEMENT_ENV: &str = "CUDA_VISIBLE_DEVICES";

fn check_model(c: &mut Checker, m: &RawModel, line: usize) -> Option<ModelConfig> {
    let errors_before = c.errors.len();
    let name = match &m.name {
        None => {
            c.error_at(line, "a [[model]] needs a name");
            String::new()
        }
        Some(n) if valid_model_name(n.get_ref()) => n.get_ref().clone(),
        Some(n) => {
            c.error(n, format!("name = \"{}\": expected 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'", n.get_ref()));
            String::new()
        }
    };
    let command = match &m.command {
        Some(cmd) if !c.no_nul("command", cmd) => String::new(),
        Some(cmd) if !cmd.get_ref().trim().is_empty() => cmd.get_ref().clone(),
        Some(cmd) => {
            c.error(cmd, "command is empty");
            String::new()
        }
        None => {
            c.error_at(line, format!("model \"{name}\" needs a command"));
            String::new()
        }
    };
    for a in &m.args {
        c.no_nul("args", a);
    }
    let mut env = BTreeMap::new();
    for (k, v) in &m.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.get_ref().contains('\0') {
            c.error(v, format!("env {k:?}: not a valid environment variable"));
        } else if contract::SET_BY_CUVISOR.contains(&k.as_str()) {
            c.error(
                v,
                format!(
                    "env {k}: set by cuvisor from this model's settings (name, gpu_quota, mode, gpus)"
                ),
            );
        } else if k == PLACEMENT_ENV && m.gpus.is_some() {
            c.error(
                v,
                format!("env {k}: set by cuvisor from this model's gpus; remove one of the two"),
            );
        } else {
            env.insert(k.clone(), v.get_ref().clone());
        }
    }
    let cwd = m.cwd.as_ref().and_then(|v| c.absolute("cwd", v));
    let (mut uid, mut gid) = (None, None);
    if let Some(u) = &m.user {
        match c.host.user(u.get_ref()) {
            Some((id, _)) if id == NO_CHANGE_ID => c.error(
                u,
                format!(
                    "user = \"{}\": {NO_CHANGE_ID} is not a usable id (setresuid reads it as \"no change\")",
                    u.get_ref()
                ),
            ),
            Some((id, primary)) => {
                uid = Some(id);
                gid = Some(primary);
            }
            None => c.error(u, format!("user = \"{}\": no such user", u.get_ref())),
        }
    }
    if let Some(g) = &m.group {
        match c.host.group(g.get_ref()) {
            Some(id) if id == NO_CHANGE_ID => c.error(
                g,
                format!(
                    "group = \"{}\": {NO_CHANGE_ID} is not a usable id (setresgid reads it as \"no change\")",
                    g.get_ref()
                ),
            ),
            Some(id) => gid = Some(id),
            None => c.error(g, format!("group = \"{}\": no such group", g.get_ref())),
        }
    }
    let gpu_quota = m
        .gpu_quota
        .as_ref()
        .and_then(|q| match parse_quota(q.get_ref()) {
            Ok(QuotaSpec::Bytes(0)) => {
                c.error(q, "gpu_quota = \"0\": a quota must be greater than 0");
                None
            }
            Ok(spec) => Some(spec),
            Err(e) => {
                c.error(q, format!("gpu_quota: {e}"));
                None
            }
        });
    let mode = match &m.mode {
        None => Mode::Managed,
        Some(v) => Mode::parse(v.get_ref()).unwrap_or_else(|| {
            c.error(v, format!("mode = \"{}\": {}", v.get_ref(), Mode::FORMS));
            Mode::Managed
        }),
    };
    let memory_limit = m
        .memory_limit
        .as_ref()
        .and_then(|v| match parse_size(v.get_ref()) {
            Ok(0) | Err(_) => {
                c.error(
                    v,
                    format!(
                        "memory_limit = \"{}\": expected a size greater than 0, e.g. 32GiB",
                        v.get_ref()
                    ),
                );
                None
            }
            Ok(b) => Some(b),
        });
    let cpu_limit = m.cpu_limit.as_ref().and_then(|v| {
        let cores = *v.get_ref();
        if (0.01..=4096.0).contains(&cores) {
            Some(cores)
        } else {
            c.error(v, format!("cpu_limit = {cores}: expected a number of CPU cores from 0.01 to 4096, e.g. 2.5"));
            None
        }
    });
    let swap_timeout = c.duration("swap_timeout", &m.swap_timeout, DEFAULT_SWAP_TIMEOUT);
    if let Some(v) = &m.swap_timeout
        && swap_timeout > MAX_SWAP_TIMEOUT
    {
        c.error(v, format!("swap_timeout = \"{}\": at most 5m", v.get_ref()));
    }
    let cpus = m
        .cpus
        .as_ref()
        .and_then(|v| match v.get_ref().parse::<cpus::CpuSet>() {
            Err(why) => {
                c.error(v, format!("cpus = {why}"));
                None
            }
            Ok(set) => match c.host.online_cpus() {
                Some(host) if !set.is_subset(&host) => {
                    c.error(
                        v,
                        format!(
                            "cpus = \"{}\": this host's online CPUs are {host}",
                            v.get_ref()
                        ),
                    );
                    None
                }
                _ => Some(set),
            },
        });
    let pids_limit = m.pids_limit.as_ref().and_then(|v| {
        if *v.get_ref() >= 1 {
            Some(*v.get_ref() as u64)
        } else {
            c.error(
                v,
                format!("pids_limit = {}: expected at least 1", v.get_ref()),
            );
            None
        }
    });
    let mut instances = match &m.instances {
        None => 1,
        Some(v) if (1..=64).contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => {
            c.error(v, format!("instances = {}: expected 1 to 64", v.get_ref()));
            1
        }
    };
    let mut min_instances = None;
    if m.min_instances.is_some() || m.max_instances.is_some() {
        if let Some(v) = &m.instances {
            c.error(
                v,
                "instances is the fixed case: with min_instances and max_instances, leave it out",
            );
        }
        if m.serve.is_none() {
            c.error_at(line, "min_instances and max_instances follow the front door's traffic: the model needs [model.serve]");
        }
        let max = match &m.max_instances {
            None => 1,
            Some(v) if (1..=64).contains(v.get_ref()) => *v.get_ref() as u32,
            Some(v) => {
                c.error(
                    v,
                    format!("max_instances = {}: expected 1 to 64", v.get_ref()),
                );
                1
            }
        };
        let min = match &m.min_instances {
            None => 0,
            Some(v) if (0..=i64::from(max)).contains(v.get_ref()) => *v.get_ref() as u32,
            Some(v) => {
                c.error(
                    v,
                    format!(
                        "min_instances = {}: expected 0 (scale to zero) to max_instances ({max})",
                        v.get_ref()
                    ),
                );
                0
            }
        };
        instances = max;
        min_instances = Some(min);
    }
    let restart = match m.restart.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "on-failure")) => RestartPolicy::OnFailure,
        Some((_, "always")) => RestartPolicy::Always,
        Some((_, "never")) => RestartPolicy::Never,
        Some((v, other)) => {
            c.error(
                v,
                format!("restart = \"{other}\": expected always, on-failure or never"),
            );
            RestartPolicy::OnFailure
        }
    };
    let backoff_initial = c.duration(
        "backoff_initial",
        &m.backoff_initial,
        Duration::from_secs(1),
    );
    let backoff_max = c.duration("backoff_max", &m.backoff_max, Duration::from_secs(60));
    if backoff_initial.is_zero() || backoff_initial > backoff_max {
        let at = m.backoff_initial.as_ref().or(m.backoff_max.as_ref());
        let msg = "backoff_initial must be greater than 0 and at most backoff_max";
        match at {
            Some(v) => c.error(v, msg),
            None => c.error_at(line, msg),
        }
    }
    let isolation = m.isolation.as_ref().map_or_else(Isolation::default, |i| {
        let r = i.get_ref();
        let d = Isolation::default();
        Isolation {
            pid: r.pid.unwrap_or(d.pid),
            mount: r.mount.unwrap_or(d.mount),
            ipc: r.ipc.unwrap_or(d.ipc),
            uts: r.uts.unwrap_or(d.uts),
            network: r.network.unwrap_or(d.network),
            user: r.user.unwrap_or(d.user),
        }
    });
    if isolation.user && (m.user.is_some() || m.group.is_some()) {
        c.error_at(
            line,
            "isolation.user runs the worker as root in its own user namespace: remove user and group",
        );
    }
    let mut bind_ro = Vec::new();
    for b in &m.bind_ro {
        if let Some(p) = c.absolute("bind_ro", b) {
            if !c.host.exists(&p) {
                c.error(
                    b,
                    format!("bind_ro \"{}\": no such file or directory", p.display()),
                );
            } else if !isolation.mount {
                c.error(b, "bind_ro needs isolation.mount = true");
            } else {
                bind_ro.push(p);
            }
        }
    }
    let mut capabilities = CapSet::default();
    for cap in &m.capabilities {
        match caps::by_name(cap.get_ref()) {
            Some(n) => capabilities.0 |= 1 << n,
            None => c.error(
                cap,
                format!(
                    "capabilities: \"{}\" is not a capability (expected a name such as CAP_NET_BIND_SERVICE)",
                    cap.get_ref()
                ),
            ),
        }
    }
    let gpus = m.gpus.as_ref().and_then(|v| check_gpus(c, v));
    let serve = m.serve.as_ref().and_then(|v| check_serve(c, v, &isolation));
    let python = m.python.as_ref().and_then(|v| check_python(c, v));
    (c.errors.len() == errors_before).then_some(ModelConfig {
        name,
        command,
        args: m.args.iter().map(|a| a.get_ref().clone()).collect(),
        env,
        cwd,
        uid,
        gid,
        gpu_quota,
        gpus,
        mode,
        memory_limit,
        cpu_limit,
        cpus,
        pids_limit,
        freeze_hibernated: m.freeze_hibernated.unwrap_or(false),
        swap_timeout,
        instances,
        min_instances,
        restart,
        backoff_initial,
        backoff_max,
        isolation,
        bind_ro,
        capabilities,
        host_ids: None,
        serve,
        python,
    })
}

/// What the front door needs of the whole file: `http` for served models, and names and
/// aliases that name one model each.
fn check_front_door(c: &mut Checker, supervisor: &SupervisorConfig, models: &[ModelConfig]) {
    let served: Vec<&ModelConfig> = models.iter().filter(|m| m.serve.is_some()).collect();
    if !served.is_empty() && supervisor.http.is_none() {
        c.error_at(
            0,
            format!(
                "model {} has serve: set http in [supervisor] (the front door's address, e.g. 127.0.0.1:8000)",
                served[0].name
            ),
        );
    }
    let mut seen: BTreeMap<&str, &str> = models
        .iter()
        .map(|m| (m.name.as_str(), m.name.as_str()))
        .collect();
    for m in &served {
        for a in &m.serve.as_ref().expect("served").aliases {
            if let Some(other) = seen.insert(a, &m.name) {
                c.error_at(
                    0,
                    format!("model {}: alias {a:?} already names model {other}", m.name),
                );
            }
        }
    }
}

/// `[model.serve]`: a path for health, a start-up timeout, aliases, a body limit.
fn check_python(c: &mut Checker, v: &Spanned<RawPython>) -> Option<PythonSpec> {
    let r = v.get_ref();
    let requirements = r.requirements.as_ref().and_then(|p| {
        let path = c.absolute("python.requirements", p)?;
        if c.host.is_file(&path) {
            Some(path)
        } else {
            c.error(
                p,
                format!("python.requirements = \"{}\": no such file", path.display()),
            );
            None
        }
    });
    if r.requirements.is_none() && r.packages.is_empty() {
        c.error(
            v,
            "python needs requirements (a requirements file) or packages (a list)",
        );
        return None;
    }
    let version = r.version.as_ref().and_then(|ver| {
        let ok = !ver.get_ref().is_empty()
            && ver
                .get_ref()
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if ok {
            Some(ver.get_ref().clone())
        } else {
            c.error(
                ver,
                format!(
                    "python.version = \"{}\": expected a version such as 3.11",
                    ver.get_ref()
                ),
            );
            None
        }
    });
    Some(PythonSpec {
        requirements,
        packages: r.packages.clone(),
        version,
        index_url: r.index_url.clone(),
        find_links: r.find_links.clone(),
        offline: r.offline.unwrap_or(false),
    })
}

fn check_serve(c: &mut Checker, v: &Spanned<RawServe>, isolation: &Isolation) -> Option<Serve> {
    let r = v.get_ref();
    let health = match &r.health {
        Some(h) if h.get_ref().starts_with('/') && !h.get_ref().contains(char::is_whitespace) => {
            h.get_ref().clone()
        }
        Some(h) => {
            c.error(
                h,
                format!(
                    "serve.health = \"{}\": expected a path such as /health",
                    h.get_ref()
                ),
            );
            return None;
        }
        None => {
            c.error(v, "serve needs health: the path that answers 200 once the server is ready, e.g. /health");
            return None;
        }
    };
    if isolation.network {
        c.error(
            v,
            "serve: the front door reaches the model on loopback, which isolation.network = true hides: set it to false",
        );
    }
    let ready_timeout = c.duration(
        "serve.ready_timeout",
        &r.ready_timeout,
        Duration::from_secs(600),
    );
    let mut aliases = Vec::new();
    for a in &r.aliases {
        if valid_model_name(a.get_ref())
            || (!a.get_ref().is_empty()
                && a.get_ref().len() <= 128
                && !a.get_ref().contains(char::is_control))
        {
            aliases.push(a.get_ref().clone());
        } else {
            c.error(
                a,
                format!("serve.aliases: {:?} is not a model name", a.get_ref()),
            );
        }
    }
    let max_body = match &r.max_body {
        None => 16 << 20,
        Some(b) => match parse_size(b.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                c.error(
                    b,
                    format!(
                        "serve.max_body = \"{}\": expected a size greater than 0, e.g. 16MiB",
                        b.get_ref()
                    ),
                );
                16 << 20
            }
        },
    };
    let mut count = |key: &str,
                     v: &Option<Spanned<i64>>,
                     range: std::ops::RangeInclusive<i64>,
                     default: usize| match v {
        None => default,
        Some(n) if range.contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            c.error(
                n,
                format!(
                    "serve.{key} = {}: expected {} to {}",
                    n.get_ref(),
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    };
    let concurrency = count("concurrency", &r.concurrency, 1..=4096, 10);
    let max_queue = count("max_queue", &r.max_queue, 0..=1_000_000, 512);
    let target = count("target", &r.target, 1..=4096, concurrency);
    let queue_timeout = c.duration(
        "serve.queue_timeout",
        &r.queue_timeout,
        Duration::from_secs(60),
    );
    let idle_timeout = c.duration(
        "serve.idle_timeout",
        &r.idle_timeout,
        Duration::from_secs(300),
    );
    let hibernate_after = r
        .hibernate_after
        .as_ref()
        .map(|_| c.duration("serve.hibernate_after", &r.hibernate_after, Duration::ZERO));
    Some(Serve {
        health,
        ready_timeout,
        aliases,
        max_body,
        concurrency,
        max_queue,
        queue_timeout,
        target,
        idle_timeout,
        hibernate_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("cuvisor.toml"), text)
            .map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_minimal_model_gets_the_defaults() {
        let c = parse("[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\n").unwrap();
        let m = &c.models[0];
        assert_eq!(
            (m.instances, m.restart, m.mode),
            (1, RestartPolicy::OnFailure, Mode::Managed)
        );
        assert_eq!(
            m.isolation,
            Isolation {
                pid: true,
                mount: true,
                ipc: true,
                uts: true,
                network: false,
                user: false
            }
        );
        assert_eq!(
            (m.backoff_initial, m.backoff_max),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
        assert_eq!(
            c.supervisor.socket,
            PathBuf::from("/run/cuvisor/control.sock")
        );
        assert_eq!(c.supervisor.grace_period, Duration::from_secs(10));
        assert!(!c.supervisor.allow_unlimited);
    }

    #[test]
    fn every_key() {
        use std::os::unix::fs::PermissionsExt;
        let token = std::env::temp_dir().join(format!("cuvisor-token-{}", std::process::id()));
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&format!(
            r#"
[supervisor]
socket = "/tmp/c.sock"
listen = "127.0.0.1:9400"
listen_token = "{}"
ledger_dir = "/tmp/ledgers"
grace_period = "3s"
logs = "/tmp/logs"
allow_unlimited = true
cgroup_name = "cv"

[[model]]
name = "llama"
command = "python3"
args = ["serve.py", "--port", "8000"]
env = {{ HF_HOME = "/tmp" }}
cwd = "/tmp"
user = "0"
group = "0"
gpu_quota = "20GiB"
mode = "device"
memory_limit = "32GiB"
cpu_limit = 2.5
pids_limit = 512
instances = 2
restart = "always"
backoff_initial = "500ms"
backoff_max = "30s"
isolation = {{ pid = true, mount = true, ipc = false, uts = true, network = true }}
bind_ro = ["/tmp"]
"#,
            token.display()
        ))
        .unwrap();
        assert_eq!(c.supervisor.listen_token.as_deref(), Some(token.as_path()));
        let _ = std::fs::remove_file(&token);
        let m = &c.models[0];
        assert_eq!(m.args, ["serve.py", "--port", "8000"]);
        assert_eq!(m.gpu_quota, Some(QuotaSpec::Bytes(20 << 30)));
        assert_eq!((m.uid, m.gid), (Some(0), Some(0)));
        assert_eq!(
            (m.cpu_limit, m.pids_limit, m.instances),
            (Some(2.5), Some(512), 2)
        );
        assert_eq!(m.backoff_initial, Duration::from_millis(500));
        assert!(m.isolation.network && !m.isolation.ipc);
        assert_eq!(c.supervisor.logs, Logs::Dir(PathBuf::from("/tmp/logs")));
        assert_eq!(c.supervisor.listen, Some("127.0.0.1:9400".parse().unwrap()));
    }

    #[test]
    fn hibernate_after_is_a_served_models_choice() {
        let served = |serve: &str| {
            parse(&format!(
                "[supervisor]\nhttp = \"127.0.0.1:8000\"\n[[model]]\nname = \"m\"\ncommand = \"x\"\n[model.serve]\nhealth = \"/h\"\n{serve}"
            ))
        };
        let c = served("hibernate_after = \"30s\"\n").unwrap();
        let serve = c.models[0].serve.as_ref().unwrap();
        assert_eq!(serve.hibernate_after, Some(Duration::from_secs(30)));
        let c = served("").unwrap();
        assert_eq!(c.models[0].serve.as_ref().unwrap().hibernate_after, None);
        assert_eq!(
            served("hibernate_after = \"soon\"\n").unwrap_err(),
            [format!(
                "cuvisor.toml:8: serve.hibernate_after = \"soon\": {DURATION_FORMS}"
            )]
        );
    }

    #[test]
    fn swap_timeout_is_bounded() {
        let model = |t: &str| {
            parse(&format!(
                "[[model]]\nname = \"m\"\ncommand = \"x\"\nswap_timeout = \"{t}\"\n"
            ))
        };
        assert_eq!(
            model("2s").unwrap().models[0].swap_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            model("10m").unwrap_err(),
            ["cuvisor.toml:4: swap_timeout = \"10m\": at most 5m"]
        );
        let default = parse("[[model]]\nname = \"m\"\ncommand = \"x\"\n").unwrap();
        assert_eq!(default.models[0].swap_timeout, DEFAULT_SWAP_TIMEOUT);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "5", "s", "1.5s", "-1s", "10 s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
