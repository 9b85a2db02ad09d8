//! The mailbox protocol: what the servers ask of the supervisor, and its answers.

use super::status::{ModelStatus, PowerReport, Status};
use crate::size::QuotaSpec;

/// What the control API asks of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status(Option<String>),
    Metrics,
    Start(String),
    Stop(String),
    Restart(String),
    /// A model's quota, changed live ([`Answer::Quota`]).
    SetQuota(String, QuotaSpec),
}

/// The supervisor's answer to a [`Request`] (the control API makes HTTP of it).
#[derive(Debug)]
pub enum Answer {
    Status(Status),
    Model(Box<ModelStatus>),
    /// For `GET /metrics`: the status the metrics are made of.
    Metrics(Status),
    /// A hibernate or wake request ended.
    Power(Box<PowerReport>),
    /// The model's instances were asked to start, stop or restart.
    Done {
        model: String,
        action: Action,
    },
    /// A model's quota was changed, from `from`.
    Quota {
        model: String,
        from: Option<QuotaSpec>,
        to: QuotaSpec,
    },
    /// The request cannot be carried out, and why (nothing changed).
    Refused {
        model: String,
        why: String,
    },
    NoSuchModel(String),
    /// A reload was applied: what it changed, a line per model.
    Reloaded(Vec<String>),
    /// A reload was refused, and why (every reason): nothing changed.
    ReloadRefused(Vec<String>),
    /// Shutting down: nothing starts any more.
    ShuttingDown,
}

/// What a request asked of a model's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        })
    }
}

/// Where the answer to a request goes.
pub type Reply = tokio::sync::oneshot::Sender<Answer>;

/// What a server sends the supervisor.
#[derive(Debug)]
pub enum Call {
    /// A control API request, and where its answer goes.
    Control(Request, Reply),
    /// A request to hibernate or wake a model, answered when its processes have
    /// acknowledged.
    Power {
        model: String,
        hibernate: bool,
        reply: Reply,
    },
    /// A request waits at the front door and its model has no ready instance: time to
    /// look at the load.
    Demand,
    /// Read the configuration file again and apply what changed ([`Answer::Reloaded`],
    /// [`Answer::ReloadRefused`]).
    Reload(Reply),
}

/// The supervisor has stopped: a [`Call`] can no longer be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the supervisor has stopped")]
pub struct Closed;

/// How a server reaches the supervisor: the composition root gives each server one.
pub type Mailbox = std::sync::Arc<dyn Fn(Call) -> Result<(), Closed> + Send + Sync>;
