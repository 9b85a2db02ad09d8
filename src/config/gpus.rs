//! What a model declares about its GPUs (`gpus = 2`, `gpus = [0, "GPU-…"]`) and the
//! node's placement policy: declared values, which `placement` decides with.

use crate::gpu::GpuUuid;
use std::fmt;

/// A GPU named in a model's `gpus = [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuRef {
    Index(u32),
    Uuid(GpuUuid),
}

impl fmt::Display for GpuRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuRef::Index(i) => write!(f, "{i}"),
            GpuRef::Uuid(u) => write!(f, "{u}"),
        }
    }
}

/// Where a model wants to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuDemand {
    /// These GPUs (`gpus = [0, 1]`, indices or UUIDs).
    These(Vec<GpuRef>),
    /// This many GPUs, chosen by the policy (`gpus = 2`).
    Count(u32),
}

/// How the supervisor chooses GPUs for `gpus = N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The GPU with the most committed quota that still has room: whole GPUs stay free
    /// for large models.
    Pack,
    /// The GPU with the least committed share of its memory: load is spread.
    Spread,
}
