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
    /// Why its ledger could not be used.
    pub error: Option<String>,
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
