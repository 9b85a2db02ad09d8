//! What the supervisor holds per model and per instance.

use super::lifecycle;
use super::status::SwapStatus;
use crate::config::ModelConfig;
use std::time::Duration;

/// One instance: its lifecycle and, while it has one, its worker process.
pub(super) struct Slot<W> {
    pub index: u32,
    pub life: lifecycle::Instance,
    pub worker: Option<W>,
    /// Its worker's processes are frozen (`freeze_hibernated`).
    pub frozen: bool,
}

/// A model of the configuration and its instances.
///
/// The supervisor never maps a ledger: its workers can shrink the file under any mapping
/// (SIGBUS at the next access). It reads copies (`Effects::snapshot`) and the node
/// reclaims in a child process.
pub(super) struct Model<W> {
    pub cfg: ModelConfig,
    pub policy: lifecycle::Policy,
    /// Why the model's ledger could not be created or opened at start: it cannot run.
    pub ledger_error: Option<String>,
    pub instances: Vec<Slot<W>>,
    pub swap: SwapStatus,
    /// What the front door was last told of why the model cannot serve.
    pub unavailable: Option<super::effects::Unavailable>,
}

impl<W> Model<W> {
    /// `cfg`'s instances, every one stopped.
    pub fn new(cfg: &ModelConfig, grace_period: Duration) -> Model<W> {
        let policy = policy(cfg, grace_period);
        Model {
            instances: (0..cfg.instances)
                .map(|index| Slot {
                    index,
                    life: lifecycle::Instance::new(&policy),
                    worker: None,
                    frozen: false,
                })
                .collect(),
            cfg: cfg.clone(),
            policy,
            ledger_error: None,
            swap: SwapStatus::default(),
            unavailable: None,
        }
    }
}

/// The lifecycle policy of `cfg`'s instances.
pub(super) fn policy(cfg: &ModelConfig, grace_period: Duration) -> lifecycle::Policy {
    lifecycle::Policy {
        restart: cfg.restart,
        backoff_initial: cfg.backoff_initial,
        backoff_max: cfg.backoff_max,
        grace_period,
        ready_timeout: cfg.serve.as_ref().map(|s| s.ready_timeout),
    }
}
