//! The core's ports: [`Effects`] on the host, [`Door`] towards the front door. The node
//! implements the first (`node::system::System`), the composition root the second over
//! the front door's routes; the core's tests implement both with recording doubles.

use super::lifecycle::Signal;
use super::placement::Plan;
use crate::config::{Config, ModelConfig};
use crate::size::QuotaSpec;
use cuvisor_common::ledger::{LedgerError, Snapshot};
use std::collections::BTreeMap;
use std::time::Duration;

/// Whether a socket (by its inode) is held by one of a worker's processes: how the front
/// door tells the instance's own listener from another process's on its port.
pub type Owner = std::sync::Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// What the core needs to know of a running worker; the rest is the host's.
pub trait Process {
    fn pid(&self) -> i32;
    /// The port its engine serves on, for a served model.
    fn port(&self) -> Option<u16>;
    /// How to tell its sockets from other processes' (None: it cannot be told).
    fn owner(&self) -> Option<Owner> {
        None
    }
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its exit status, or 128 + the signal that killed it.
    pub code: i32,
    /// The OOM killer ended it.
    pub oom_killed: bool,
}

/// The supervisor's effects on the host.
pub trait Effects {
    /// A worker process, while it runs.
    type Worker: Process;
    /// Why a worker could not be started.
    type StartError: std::fmt::Display;

    /// Starts instance `index` of model number `model` without waiting for it: the
    /// result comes back to the supervisor's `launched`.
    fn launch(&mut self, model: usize, cfg: &ModelConfig, index: u32);
    /// The supervisor is stopping: launches under way end as soon as they can (a Python
    /// environment's build is killed); each is still answered.
    fn stop_launching(&mut self);
    /// Changes `model`'s quota in its ledger, live, on every GPU it uses; the quota the
    /// ledger had, or why it could not be changed.
    fn set_quota(&mut self, model: &str, quota: QuotaSpec) -> Result<Option<QuotaSpec>, String>;
    /// A reload: the host made ready for `config`'s models, placed as `plan` says; the
    /// models of `starting` (added or replaced) get what they need before their first
    /// start (their ledgers). Per model of `starting` whose ledger cannot be used, why; or
    /// why the reload cannot be done on this host (then nothing changed).
    fn reconfigure(
        &mut self,
        config: &Config,
        plan: Option<&Plan>,
        starting: &[&ModelConfig],
    ) -> Result<Vec<(String, String)>, String>;
    fn signal(&mut self, pid: i32, signal: Signal);
    /// How the worker ended if it has exited, reaped.
    fn reap(&mut self, worker: &Self::Worker) -> Option<Exit>;
    /// The worker is gone: its cgroup is removed, what it held in the ledger given back.
    fn release(&mut self, cfg: &ModelConfig, worker: Self::Worker);
    /// Asks every process of a model to hibernate or wake, without waiting: the result
    /// comes back to the supervisor's `powered`.
    fn power(&mut self, job: PowerJob);
    /// Freezes (`true`) or thaws the worker's processes (its cgroup's freezer); whether
    /// that was done.
    fn freeze(&mut self, cfg: &ModelConfig, worker: &Self::Worker, frozen: bool) -> bool;
    /// The host memory the worker uses now, where it is measured.
    fn host_memory(&self, worker: &Self::Worker) -> Option<u64>;
    /// A copy of model `model`'s ledger: its GPUs, quotas and usage.
    fn snapshot(&self, model: &str) -> Result<Snapshot, LedgerError>;
}

/// A hibernate or wake request on its way to a model's processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerJob {
    /// Numbers the supervisor's requests, to match the result with the request.
    pub id: u64,
    pub model: String,
    pub hibernate: bool,
    /// How long to wait for every process's acknowledgement.
    pub timeout: Duration,
}

/// The front door's view of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceLoad {
    pub ready: bool,
    pub in_flight: usize,
    /// How long it has had nothing in flight (zero while it has).
    pub idle: Duration,
}

/// The front door's load on a model: requests waiting for an instance, and each routed
/// instance's load by index.
pub type Load = (usize, BTreeMap<u32, InstanceLoad>);

/// The front door, as the core sees it: where it routes, and the load it reports.
pub trait Door {
    /// Instance `index` of `model` serves on `port` (routed once its health check passes),
    /// from a socket `owner` says is its own.
    fn started(&self, model: &str, index: u32, port: u16, owner: Option<Owner>);
    /// Instance `index` of `model` serves no more.
    fn gone(&self, model: &str, index: u32);
    /// Instance `index` of `model` gets no new request; those in flight finish, and
    /// [`Door::load`] still counts them.
    fn drain(&self, model: &str, index: u32);
    /// `model` is served with these settings (added or changed by a reload).
    fn serve(&self, model: &str, serve: &crate::config::Serve);
    /// `model` was removed from the configuration: its name is refused from now on; its
    /// instances drain.
    fn hide(&self, model: &str);
    /// `model` is hibernated (its requests wait) or awake.
    fn set_asleep(&self, model: &str, asleep: bool);
    /// `model` is hibernated if nothing is in flight on it and nothing waits for it at
    /// this moment, after which no request gets a place on it until it is awake: whether
    /// it was. (A load read before may be stale by the time a hibernate is sent: a
    /// request that took its place meanwhile keeps the model awake.)
    fn sleep_if_idle(&self, model: &str) -> bool;
    fn load(&self, model: &str) -> Load;
    /// A hibernate (`out`) or wake of `model` ended, every process done, in `seconds`.
    fn swapped(&self, model: &str, out: bool, seconds: f64);
    /// `model` cannot serve its requests until something changes, and why (None: it
    /// may again): its requests are answered at once instead of waiting.
    fn unavailable(&self, model: &str, why: Option<Unavailable>);
}

/// Why a model cannot serve requests now ([`super::lifecycle::unavailable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub error: String,
    /// When it starts again by itself; None: not until someone starts it.
    pub retry_at: Option<std::time::Instant>,
}
