//! The status the supervisor reports: one copy of each ledger, its own states.

use super::lifecycle::State;
use super::placement::Plan;
use super::state::Model;
use super::status::{InstanceStatus, ModelGpu, ModelStatus, NodeGpu, SwapStatus};
use cuvisor_common::ledger::{LedgerError, Snapshot};
use std::time::Instant;

/// A model's status, as `GET /models/NAME` gives it, from its ledger's `snapshot`, the
/// host memory of its workers and the `plan` it is placed by.
pub(super) fn model_status<W>(
    model: &Model<W>,
    snapshot: Result<Snapshot, LedgerError>,
    host_memory: impl Fn(&W) -> Option<u64>,
    plan: Option<&Plan>,
    now: Instant,
) -> ModelStatus {
    {
        let error = model
            .ledger_error
            .clone()
            .or_else(|| snapshot.as_ref().err().map(ToString::to_string));
        let snapshot = snapshot.ok();
        let instances = model
            .instances
            .iter()
            .map(|s| {
                let i = &s.life;
                InstanceStatus {
                    index: s.index,
                    state: instance_state(model, i).to_owned(),
                    pid: i.pid,
                    restarts: i.restarts,
                    oom_kills: i.oom_kills,
                    last_exit: i.last_exit,
                    backoff_ms: (i.state == State::Backoff).then_some(i.backoff.as_millis() as u64),
                    uptime_ms: i
                        .started
                        .filter(|_| i.pid.is_some())
                        .map(|s| now.saturating_duration_since(s).as_millis() as u64),
                    host_memory_bytes: s.worker.as_ref().and_then(&host_memory),
                    error: i.error.clone(),
                }
            })
            .collect::<Vec<_>>();
        let state = match summary_state(model.instances.iter().map(|s| s.life.state)) {
            "running" if model.swap.hibernated => "hibernated",
            other => other,
        };
        ModelStatus {
            name: model.cfg.name.clone(),
            state: state.to_owned(),
            restarts: instances.iter().map(|i| i.restarts).sum(),
            oom_kills: instances.iter().map(|i| i.oom_kills).sum(),
            host_memory_bytes: instances.iter().filter_map(|i| i.host_memory_bytes).sum(),
            instances,
            gpu_quota_bytes: snapshot
                .as_ref()
                .and_then(cuvisor_common::ledger::Snapshot::quota_bytes),
            gpu_used_bytes: snapshot.as_ref().map(|s| s.used),
            gpu_peak_bytes: snapshot
                .as_ref()
                .map(|s| s.gpus.iter().map(|g| g.peak).max().unwrap_or(0)),
            gpu_refusals: snapshot.as_ref().map(|s| s.refused),
            gpus: snapshot.as_ref().map(|s| {
                s.gpus
                    .iter()
                    .map(|g| ModelGpu {
                        uuid: g.uuid.to_string(),
                        quota_bytes: g.quota_bytes,
                        physical_bytes: g.physical,
                        used_bytes: g.used,
                        peak_bytes: g.peak,
                        refusals: g.refused,
                    })
                    .collect()
            }),
            placed_on: plan
                .and_then(|p| p.uuids(&model.cfg.name))
                .map(|u| u.iter().map(ToString::to_string).collect()),
            swap: SwapStatus {
                frozen: model.instances.iter().any(|s| s.frozen),
                ..model.swap.clone()
            },
            error,
        }
    }
}

/// An instance's state as the status says it: its lifecycle's, where a running one is
/// `hibernated` with its model, and a served one `loading` until its health check
/// passes, then `ready`.
fn instance_state<W>(model: &Model<W>, i: &super::lifecycle::Instance) -> &'static str {
    match i.state {
        State::Running if model.swap.hibernated => "hibernated",
        State::Running if model.cfg.serve.is_some() && i.ready => "ready",
        State::Running if model.cfg.serve.is_some() => "loading",
        other => other.as_str(),
    }
}

/// The node's GPUs, as the plan places the models on them.
pub(super) fn node_gpus(plan: &Plan) -> Vec<NodeGpu> {
    plan.gpus
        .iter()
        .map(|g| NodeGpu {
            index: g.gpu.index,
            uuid: g.gpu.uuid.to_string(),
            memory_bytes: g.gpu.memory,
            committed_bytes: g.committed,
            capacity_bytes: g.capacity,
            models: g.models.clone(),
        })
        .collect()
}

fn summary_state(states: impl Iterator<Item = State>) -> &'static str {
    let states: Vec<State> = states.collect();
    for s in [
        State::Running,
        State::Starting,
        State::Stopping,
        State::Backoff,
        State::Failed,
        State::Exited,
    ] {
        if states.contains(&s) {
            return s.as_str();
        }
    }
    State::Stopped.as_str()
}
