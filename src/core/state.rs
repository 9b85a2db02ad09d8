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
    /// Of the model's configuration before a reload replaced it: it drains once a new
    /// instance can take its place, is never restarted, and goes once stopped.
    pub retiring: bool,
}

impl<W> Slot<W> {
    pub fn new(index: u32, policy: &lifecycle::Policy) -> Slot<W> {
        Slot {
            index,
            life: lifecycle::Instance::new(policy),
            worker: None,
            frozen: false,
            retiring: false,
        }
    }
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
    /// Removed by a reload: its instances drain and stop; it is gone from the status once
    /// they have.
    pub retired: bool,
    /// Replaced by a reload: the new instances wanted, while old ones remain.
    pub rolling: Option<usize>,
    /// Hibernated, with requests waiting for room on its GPUs since then (collation).
    pub wake_wanted: Option<std::time::Instant>,
}

impl<W> Model<W> {
    /// `cfg`'s instances, every one stopped.
    pub fn new(cfg: &ModelConfig, grace_period: Duration) -> Model<W> {
        let policy = policy(cfg, grace_period);
        Model {
            instances: (0..cfg.instances)
                .map(|index| Slot::new(index, &policy))
                .collect(),
            cfg: cfg.clone(),
            policy,
            ledger_error: None,
            swap: SwapStatus::default(),
            unavailable: None,
            retired: false,
            rolling: None,
            wake_wanted: None,
        }
    }
}

impl<W> Model<W> {
    /// Whether it is still shown: not removed, or with instances not gone yet.
    pub fn shown(&self) -> bool {
        !self.retired
            || self
                .instances
                .iter()
                .any(|s| s.worker.is_some() || !s.life.state.idle())
    }

    /// The lifecycle policy of instance `i`: an old instance of a replaced model is never
    /// restarted.
    pub fn policy_of(&self, i: usize) -> lifecycle::Policy {
        match self.instances[i].retiring || self.retired {
            true => lifecycle::Policy {
                restart: crate::config::RestartPolicy::Never,
                ..self.policy
            },
            false => self.policy,
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
