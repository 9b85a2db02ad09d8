//! What the supervisor reports: one type, serialized by the control API
//! (`GET /models`, `GET /models/NAME`) and read back by `cuvisor status`; the metrics are
//! made from it too (`crate::metrics`). `docs/OPERATIONS.md` documents every field.

use serde::{Deserialize, Serialize};

/// `GET /models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub models: Vec<ModelStatus>,
    /// The node's GPUs and what is committed to each, when models are placed.
    pub gpus: Option<Vec<NodeGpu>>,
}

/// `GET /models/NAME`: one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    /// The most advanced state of its instances: running, starting, stopping, backoff,
    /// failed, exited, else stopped.
    pub state: String,
    pub instances: Vec<InstanceStatus>,
    pub restarts: u64,
    pub oom_kills: u64,
    /// The quota on each GPU, when it is a size.
    pub gpu_quota_bytes: Option<u64>,
    /// All its GPUs together (None: the ledger could not be read).
    pub gpu_used_bytes: Option<u64>,
    /// The most it held on any one GPU.
    pub gpu_peak_bytes: Option<u64>,
    pub gpu_refusals: Option<u64>,
    /// Per GPU the model has met.
    pub gpus: Option<Vec<ModelGpu>>,
    pub host_memory_bytes: u64,
    /// The UUIDs of the GPUs it was placed on (`gpus` in its configuration).
    pub placed_on: Option<Vec<String>>,
    /// Hibernation: what was asked last, and the last move each way.
    pub swap: SwapStatus,
    /// Why its ledger could not be used.
    pub error: Option<String>,
}

/// A model's hibernation, in its status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwapStatus {
    /// Asked to hibernate (by `POST /models/NAME/hibernate` or the policy), and not woken
    /// since.
    pub hibernated: bool,
    /// Its workers' processes are frozen (`freeze_hibernated`).
    pub frozen: bool,
    /// The last hibernate and the last wake, as they were answered.
    pub last_out: Option<PowerReport>,
    pub last_in: Option<PowerReport>,
}

/// The answer to a hibernate or wake request (`POST /models/NAME/hibernate`, `/wake`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerReport {
    pub model: String,
    pub action: PowerAction,
    pub outcome: PowerOutcome,
    /// The request's generation in the model's control word.
    pub generation: u32,
    /// From the request to the last acknowledgement: the copies and the mechanism.
    pub duration_ms: f64,
    /// Over the processes that acknowledged.
    pub moved_bytes: u64,
    pub pinned_bytes: u64,
    pub failed_bytes: u64,
    pub processes: Vec<ProcessPower>,
    /// The pids (in the supervisor's namespace where it can see them) of the processes
    /// that had not acknowledged when the time ran out.
    pub pending: Vec<u32>,
    pub error: Option<String>,
}

/// What a power request asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Hibernate,
    Wake,
}

/// How a power request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerOutcome {
    /// Every live process acknowledged.
    Done,
    /// Some did not in time (see `pending`).
    TimedOut,
    /// A later request replaced it.
    Superseded,
    /// It could not be made (see `error`).
    Failed,
}

impl std::fmt::Display for PowerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerAction::Hibernate => "hibernate",
            PowerAction::Wake => "wake",
        })
    }
}

impl std::fmt::Display for PowerOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerOutcome::Done => "done",
            PowerOutcome::TimedOut => "timed_out",
            PowerOutcome::Superseded => "superseded",
            PowerOutcome::Failed => "failed",
        })
    }
}

/// One process's acknowledgement of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessPower {
    pub pid: u32,
    pub moved_bytes: u64,
    pub pinned_bytes: u64,
    pub failed_bytes: u64,
    /// The driver's error code for what failed to move.
    pub error_code: Option<u32>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub index: u32,
    pub state: String,
    /// In the supervisor's PID namespace.
    pub pid: Option<i32>,
    pub restarts: u64,
    pub oom_kills: u64,
    /// Exit status, or 128 + signal.
    pub last_exit: Option<i32>,
    pub backoff_ms: Option<u64>,
    pub uptime_ms: Option<u64>,
    pub host_memory_bytes: Option<u64>,
    /// Why its last start failed.
    pub error: Option<String>,
}

/// A model's figures on one GPU, from its ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelGpu {
    pub uuid: String,
    pub quota_bytes: Option<u64>,
    pub physical_bytes: u64,
    pub used_bytes: u64,
    pub peak_bytes: u64,
    pub refusals: u64,
}

/// A GPU of the node, with the quotas placed on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeGpu {
    pub index: u32,
    pub uuid: String,
    pub memory_bytes: u64,
    pub committed_bytes: u64,
    /// `gpu_overcommit` × its memory.
    pub capacity_bytes: u64,
    pub models: Vec<String>,
}

impl PowerReport {
    /// A report of a hibernate (`hibernate`) or wake of `model` that moved nothing yet,
    /// with its `outcome`.
    pub fn new(model: &str, hibernate: bool, outcome: PowerOutcome) -> PowerReport {
        PowerReport {
            model: model.to_owned(),
            action: if hibernate {
                PowerAction::Hibernate
            } else {
                PowerAction::Wake
            },
            outcome,
            generation: 0,
            duration_ms: 0.0,
            moved_bytes: 0,
            pinned_bytes: 0,
            failed_bytes: 0,
            processes: Vec::new(),
            pending: Vec::new(),
            error: None,
        }
    }
}
