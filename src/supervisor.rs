//! `cuvisor run`: the models of a configuration, each as isolated worker processes with
//! the shim injected, restarted per policy, observed through the control API, served
//! through the front door.
//!
//! Three layers:
//! - each instance's life is a pure state machine ([`crate::lifecycle`]), and how many
//!   instances a served model runs a pure decision ([`crate::scaling`]);
//! - [`Supervisor`] holds the models and their instances, turns what happens (a launch's
//!   result, an exit, a control request, time passing) into lifecycle events, and the
//!   resulting actions into [`Effects`]: the real ones ([`System`]) or a test's recording
//!   double. It reads no clock: every call says what time it is;
//! - [`Running`] is a supervisor at work, on a thread of its own: the binary's
//!   [`run`], or a Rust program that embeds cuvisor (`examples/embed.rs`), starts one
//!   and stops it. Every event reaches its thread through one channel: control requests,
//!   launch results, signals (where the program forwards them) and the stop.

use crate::config::{Config, ModelConfig};
use crate::gateway::{self, Routes};
use crate::hibernation;
use crate::lifecycle::{self, Action, Signal, State};
use crate::nvml::{Inventory, NvmlError};
use crate::placement::{self, Demand, Plan, PlanError};
use crate::scaling;
use crate::status::{
    InstanceStatus, ModelGpu, ModelStatus, NodeGpu, PowerReport, Status, SwapStatus,
};
pub use crate::system::{
    Effects, Placement, PowerJob, PowerResult, StartError, System, Worker, worker_spec,
};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

/// What the control API asks of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status(Option<String>),
    Metrics,
    Start(String),
    Stop(String),
    Restart(String),
}

/// The supervisor's answer to a [`Request`] (the control API makes HTTP of it).
#[derive(Debug)]
pub enum Answer {
    Status(Status),
    Model(Box<ModelStatus>),
    /// For `GET /metrics`: the status the metrics are made of, and the supervisor's
    /// histograms.
    Metrics(Status, crate::metrics::SwapMetrics),
    /// A hibernate or wake request ended.
    Power(Box<PowerReport>),
    /// The model's instances were asked to start, stop or restart.
    Done {
        model: String,
        action: &'static str,
    },
    NoSuchModel(String),
    /// Shutting down: nothing starts any more.
    ShuttingDown,
}

/// What reaches a running supervisor's thread.
pub enum Event {
    /// A signal, where the program forwards them: SIGCHLD to reap at once, SIGTERM or
    /// SIGINT to stop.
    Signal(i32),
    /// A control API request, and where its answer goes.
    Control(Request, tokio::sync::oneshot::Sender<Answer>),
    /// The result of [`Effects::launch`].
    Launched {
        model: usize,
        index: u32,
        result: Result<Worker, StartError>,
    },
    /// Stop every worker and end ([`Running::stop`]).
    Stop,
    /// A request waits at the front door and its model has no ready instance: time to
    /// look at the load.
    Demand,
    /// A control API request to hibernate or wake a model, answered when its processes
    /// have acknowledged.
    Power {
        model: String,
        hibernate: bool,
        reply: Reply,
    },
    /// The result of [`Effects::power`].
    Powered { id: u64, result: PowerResult },
}

/// Where the answer to a control request goes.
pub type Reply = tokio::sync::oneshot::Sender<Answer>;

/// Moved to [`crate::config::DEFAULT_SWAP_TIMEOUT`]; this name stays for one release.
pub use crate::config::DEFAULT_SWAP_TIMEOUT as POWER_TIMEOUT;

/// Why a supervisor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another supervisor (pid {pid}) runs with cgroup_name = \"{cgroup_name}\" (it holds {}); stop it, or give this one another cgroup_name",
        path.display()
    )]
    Busy {
        pid: String,
        cgroup_name: String,
        path: PathBuf,
    },
    #[error(
        "model {model}: its host limits cannot be enforced: {why}; set allow_unlimited = true in [supervisor] to run without them"
    )]
    Unenforced { model: String, why: String },
    #[error(transparent)]
    Nvml(#[from] NvmlError),
    #[error("cannot read MemTotal from /proc/meminfo")]
    HostMemory,
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Placement(Vec<PlanError>),
    #[error(transparent)]
    Serve(#[from] crate::control::ServeError),
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error(
        "cannot mount the models' view of their memory and CPUs (FUSE) at {}: {source} (it needs /dev/fuse and root)",
        path.display()
    )]
    View {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the supervisor's thread panicked")]
    Panicked,
}

pub(crate) use crate::log::log;

/// One instance: its lifecycle and, while it has one, its worker process.
struct Slot {
    index: u32,
    life: lifecycle::Instance,
    worker: Option<Worker>,
    /// Its worker's processes are frozen (`freeze_hibernated`).
    frozen: bool,
}

/// The supervisor never maps a ledger: its workers can shrink the file under any mapping
/// (SIGBUS at the next access). It reads copies ([`crate::ledger::read_snapshot`]) and
/// reclaims in a child process ([`crate::ledger::reclaim_isolated`]).
struct Model {
    cfg: ModelConfig,
    policy: lifecycle::Policy,
    /// Why the model's ledger could not be created or opened at start: it cannot run.
    ledger_error: Option<String>,
    instances: Vec<Slot>,
    swap: SwapStatus,
}

/// A hibernate or wake request waiting for its result.
struct PowerWait {
    id: u64,
    model: usize,
    hibernate: bool,
    reply: Option<Reply>,
}

/// A wake held back until the models pushed out to make room for it have hibernated.
struct Deferred {
    model: usize,
    reply: Option<Reply>,
    after: Vec<u64>,
}

/// The models of a configuration and their instances, driven by events.
pub struct Supervisor<E: Effects> {
    config: Config,
    /// Which GPUs the models with `gpus` run on; None when no model has `gpus`.
    plan: Option<Plan>,
    /// The served models' instances, for the front door.
    routes: Arc<Routes>,
    models: Vec<Model>,
    effects: E,
    shutting_down: bool,
    power_waits: Vec<PowerWait>,
    deferred_wakes: Vec<Deferred>,
    next_power_id: u64,
    swap_metrics: crate::metrics::SwapMetrics,
}

impl<E: Effects> Supervisor<E> {
    /// The configuration's models, every instance stopped. `plan` comes from [`place`].
    pub fn new(config: Config, plan: Option<Plan>, effects: E) -> Supervisor<E> {
        let grace_period = config.supervisor.grace_period;
        let models = config
            .models
            .iter()
            .map(|cfg| {
                let policy = lifecycle::Policy {
                    restart: cfg.restart,
                    backoff_initial: cfg.backoff_initial,
                    backoff_max: cfg.backoff_max,
                    grace_period,
                    ready_timeout: cfg.serve.as_ref().map(|s| s.ready_timeout),
                };
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
                }
            })
            .collect();
        Supervisor {
            routes: Routes::new(&config),
            config,
            plan,
            models,
            effects,
            shutting_down: false,
            power_waits: Vec::new(),
            deferred_wakes: Vec::new(),
            next_power_id: 0,
            swap_metrics: Default::default(),
        }
    }

    /// Marks model `name` as unable to run (its ledger cannot be used: `why`).
    pub fn unusable(&mut self, name: &str, why: String) {
        if let Some(m) = self.model_index(name) {
            let model = &mut self.models[m];
            for slot in &mut model.instances {
                slot.life.state = State::Failed;
                slot.life.error = Some(why.clone());
            }
            model.ledger_error = Some(why);
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The front door's view of the served models.
    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    pub fn effects(&self) -> &E {
        &self.effects
    }

    /// Starts each model's first instances: `instances`, or a scaled model's minimum.
    pub fn begin(&mut self, now: Instant) {
        for m in 0..self.models.len() {
            let cfg = &self.models[m].cfg;
            let first = cfg.min_instances.unwrap_or(cfg.instances) as usize;
            for i in 0..first {
                self.apply(m, i, lifecycle::Event::Start, now);
            }
        }
    }

    /// A launch ended (its result from [`Effects::launch`]).
    pub fn launched(
        &mut self,
        model: usize,
        index: u32,
        result: Result<Worker, StartError>,
        now: Instant,
    ) {
        let Some(i) = self
            .models
            .get(model)
            .and_then(|m| m.instances.iter().position(|s| s.index == index))
        else {
            return;
        };
        let name = self.models[model].cfg.name.clone();
        match result {
            Ok(worker) => {
                log(&format!(
                    "model {name}: instance {index} started (pid {})",
                    worker.pid
                ));
                let pid = worker.pid;
                self.models[model].instances[i].worker = Some(worker);
                self.apply(model, i, lifecycle::Event::Launched { pid }, now);
            }
            Err(e) => {
                log(&format!("model {name}: instance {index} cannot start: {e}"));
                let failed = lifecycle::Event::LaunchFailed {
                    error: e.to_string(),
                    retry: true,
                };
                self.apply(model, i, failed, now);
            }
        }
    }

    /// What time passing brings: exited workers reaped, timers (restarts after backoff,
    /// SIGKILL after the grace period, ready timeouts), health checks passed, and the
    /// scaler's decisions.
    pub fn tick(&mut self, now: Instant) {
        self.reap(now);
        for m in 0..self.models.len() {
            let ready = match self.models[m].cfg.serve {
                Some(_) => self.routes.load(&self.models[m].cfg.name).1,
                None => Default::default(),
            };
            for i in 0..self.models[m].instances.len() {
                let slot = &self.models[m].instances[i];
                if slot.life.state == State::Running
                    && !slot.life.ready
                    && ready.get(&slot.index).is_some_and(|l| l.ready)
                {
                    self.apply(m, i, lifecycle::Event::Ready, now);
                }
                let state = self.models[m].instances[i].life.state;
                self.apply(m, i, lifecycle::Event::Tick, now);
                let slot = &self.models[m].instances[i];
                if state == State::Running && slot.life.state == State::Stopping {
                    // Its ready timeout: the only timer that stops a running instance.
                    log(&format!(
                        "model {}: instance {} {}: stopped, to be restarted per its policy",
                        self.models[m].cfg.name,
                        slot.index,
                        slot.life.error.as_deref().unwrap_or("")
                    ));
                }
            }
        }
        self.scale(now);
        self.hibernation();
    }

    /// Reaps the workers that exited.
    fn reap(&mut self, now: Instant) {
        for m in 0..self.models.len() {
            for i in 0..self.models[m].instances.len() {
                let Some(worker) = &self.models[m].instances[i].worker else {
                    continue;
                };
                let Some(status) = self.effects.reap(worker.pid) else {
                    continue;
                };
                let oom_killed = self.effects.oom_killed(worker);
                let code = crate::launch::exit_code(status);
                let how = if oom_killed {
                    "killed by the OOM killer".to_owned()
                } else if code > 128 {
                    format!("killed by signal {}", code - 128)
                } else {
                    format!("exited with status {code}")
                };
                let model = &self.models[m];
                log(&format!(
                    "model {}: instance {} {how}",
                    model.cfg.name, model.instances[i].index
                ));
                self.apply(m, i, lifecycle::Event::Exited { code, oom_killed }, now);
            }
        }
    }

    /// Whether `pid` is one of the workers, or may be one whose launch has not been
    /// reported yet.
    pub fn may_be_a_worker(&self, pid: i32) -> bool {
        self.slots().any(|s| {
            s.life.state == State::Starting || s.worker.as_ref().is_some_and(|w| w.pid == pid)
        })
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.models.iter().flat_map(|m| &m.instances)
    }

    /// Stops every worker (SIGTERM, SIGKILL after the grace period); nothing starts any
    /// more. [`Supervisor::done`] says when it is over.
    pub fn shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        log("stopping: SIGTERM to every worker");
        for m in 0..self.models.len() {
            for i in 0..self.models[m].instances.len() {
                self.apply(m, i, lifecycle::Event::Shutdown, now);
            }
        }
    }

    /// Shut down, with no worker left and no launch under way.
    pub fn done(&self) -> bool {
        self.shutting_down
            && self
                .slots()
                .all(|s| s.worker.is_none() && s.life.state != State::Starting)
    }

    /// The next time [`Supervisor::tick`] has a timer to fire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.models
            .iter()
            .flat_map(|m| m.instances.iter().map(|s| s.life.deadline(&m.policy)))
            .flatten()
            .min()
    }

    /// Whether any model's instances follow the front door's traffic.
    pub fn scales(&self) -> bool {
        self.models.iter().any(|m| m.cfg.min_instances.is_some())
    }

    /// Applies a lifecycle event to instance `i` of model `m`, and carries out what it
    /// leads to.
    fn apply(&mut self, m: usize, i: usize, event: lifecycle::Event, now: Instant) {
        let model = &mut self.models[m];
        let actions = lifecycle::step(&mut model.instances[i].life, &model.policy, event, now);
        let mut wake = false;
        for action in actions {
            let Supervisor {
                models,
                effects,
                routes,
                shutting_down,
                ..
            } = self;
            let model = &mut models[m];
            let slot = &mut model.instances[i];
            match action {
                Action::Launch => match &model.ledger_error {
                    Some(why) => {
                        let failed = lifecycle::Event::LaunchFailed {
                            error: why.clone(),
                            retry: false,
                        };
                        self.apply(m, i, failed, now);
                    }
                    None => {
                        effects.launch(m, &model.cfg, slot.index);
                        // A hibernated model with nothing running starts awake: there is
                        // nothing left to keep on the host.
                        let others = model
                            .instances
                            .iter()
                            .enumerate()
                            .any(|(k, s)| k != i && s.life.state.alive());
                        wake = model.swap.hibernated && !others;
                    }
                },
                Action::Signal(pid, signal) => {
                    if model.cfg.freeze_hibernated
                        && let Some(worker) = &slot.worker
                    {
                        // A frozen process would not run its handler (nor, under cgroup
                        // v1, even die) until thawed. Always thawed here, whatever we
                        // believe: a thaw is harmless, a frozen worker never dies.
                        effects.freeze(&model.cfg, worker, false);
                        slot.frozen = false;
                    }
                    if signal == Signal::Kill {
                        log(&if *shutting_down {
                            format!(
                                "grace period over: SIGKILL to model {} instance {}",
                                model.cfg.name, slot.index
                            )
                        } else {
                            format!(
                                "model {}: instance {} still running after the grace period: SIGKILL",
                                model.cfg.name, slot.index
                            )
                        });
                    }
                    effects.signal(pid, signal);
                }
                Action::Serve => {
                    if let Some(port) = slot.worker.as_ref().and_then(|w| w.port) {
                        routes.started(&model.cfg.name, slot.index, port);
                    }
                }
                Action::Unserve => routes.gone(&model.cfg.name, slot.index),
                Action::Release => {
                    slot.frozen = false;
                    if let Some(worker) = slot.worker.take() {
                        effects.release(&model.cfg, worker);
                    }
                }
            }
        }
        if wake && !self.changing(m) {
            self.send_power(m, false, None);
        }
    }

    /// Scaled models: starts or stops instances as the front door's load says
    /// ([`scaling::decide`]).
    fn scale(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        for m in 0..self.models.len() {
            if self.models[m].ledger_error.is_some() {
                continue; // it cannot run: starting it for the load would fail every time
            }
            if self.models[m].swap.hibernated || self.changing(m) {
                continue; // its requests wait for the wake, not for more instances
            }
            let cfg = &self.models[m].cfg;
            let (Some(min), Some(serve)) = (cfg.min_instances, cfg.serve.as_ref()) else {
                continue;
            };
            let policy = scaling::Policy {
                min: min as usize,
                max: cfg.instances as usize,
                target: serve.target,
                idle_timeout: serve.idle_timeout,
            };
            let waiting = self.routes.load(&cfg.name).0;
            let name = cfg.name.clone();
            let instances = self.instance_loads(m);
            match scaling::decide(&policy, &scaling::Load { waiting, instances }) {
                scaling::Decision::Hold => {}
                scaling::Decision::Start(n) => {
                    if !self.models[m]
                        .instances
                        .iter()
                        .any(|s| s.life.state.alive())
                    {
                        // A cold start: its quota must fit beside what is resident.
                        for victim in self.pressure_victims(m) {
                            self.request_power(victim, true, None);
                        }
                    }
                    let idle: Vec<usize> = (0..self.models[m].instances.len())
                        .filter(|&i| self.models[m].instances[i].life.state.idle())
                        .take(n)
                        .collect();
                    for i in idle {
                        log(&format!(
                            "model {name}: instance {i} started for the front door's load"
                        ));
                        self.apply(m, i, lifecycle::Event::Start, now);
                    }
                }
                scaling::Decision::Stop(indices) => {
                    for index in indices {
                        let slots = &self.models[m].instances;
                        if let Some(i) = slots.iter().position(|s| s.index == index) {
                            log(&format!(
                                "model {name}: instance {index} idle for serve.idle_timeout: stopped"
                            ));
                            let stop = lifecycle::Event::Stop { then_start: false };
                            self.apply(m, i, stop, now);
                        }
                    }
                }
            }
        }
    }

    /// Served models: hibernates the idle ones with `serve.hibernate_after`, wakes the
    /// hibernated ones that have requests ([`hibernation::decide`]).
    fn hibernation(&mut self) {
        if self.shutting_down {
            return;
        }
        for m in 0..self.models.len() {
            let Some(serve) = &self.models[m].cfg.serve else {
                continue;
            };
            let after = serve.hibernate_after;
            let instances = self.instance_loads(m);
            let load = hibernation::Load {
                hibernated: self.models[m].swap.hibernated,
                changing: self.changing(m),
                waiting: self.routes.load(&self.models[m].cfg.name).0,
                instances: &instances,
            };
            match hibernation::decide(after, &load) {
                hibernation::Decision::Hold => {}
                hibernation::Decision::Hibernate => {
                    log(&format!(
                        "model {}: idle for serve.hibernate_after: hibernating",
                        self.models[m].cfg.name
                    ));
                    self.request_power(m, true, None);
                }
                hibernation::Decision::Wake => {
                    log(&format!(
                        "model {}: a request for it: waking",
                        self.models[m].cfg.name
                    ));
                    self.request_power(m, false, None);
                }
            }
        }
    }

    /// Freezes (`true`) or thaws model `m`'s workers.
    fn freeze(&mut self, m: usize, frozen: bool) {
        let Supervisor {
            models, effects, ..
        } = self;
        let model = &mut models[m];
        for slot in &mut model.instances {
            if let Some(worker) = &slot.worker
                && slot.frozen != frozen
                && effects.freeze(&model.cfg, worker, frozen)
            {
                slot.frozen = frozen;
            }
        }
    }

    /// Whether a hibernate or wake of model `m` is under way or held back.
    fn changing(&self, m: usize) -> bool {
        self.power_waits.iter().any(|w| w.model == m)
            || self.deferred_wakes.iter().any(|d| d.model == m)
    }

    /// The front door's view of model `m`'s instances that are running or starting.
    fn instance_loads(&self, m: usize) -> Vec<scaling::Instance> {
        let (_, routed) = self.routes.load(&self.models[m].cfg.name);
        self.models[m]
            .instances
            .iter()
            .filter(|s| s.life.state.alive())
            .map(|s| {
                let load = routed.get(&s.index);
                scaling::Instance {
                    index: s.index,
                    ready: load.is_some_and(|l| l.ready),
                    in_flight: load.map_or(0, |l| l.in_flight),
                    idle: load.map_or(Duration::ZERO, |l| l.idle),
                }
            })
            .collect()
    }

    /// The awake models to hibernate so that model `m`'s quota fits on each GPU it uses
    /// beside what stays resident there ([`hibernation::make_room`]), from the ledgers.
    fn pressure_victims(&self, m: usize) -> Vec<usize> {
        let dir = &self.config.supervisor.ledger_dir;
        let snapshots: Vec<Option<crate::ledger::Snapshot>> = self
            .models
            .iter()
            .map(|model| crate::ledger::read_snapshot(dir, &model.cfg.name).ok())
            .collect();
        let Some(mine) = &snapshots[m] else {
            return Vec::new();
        };
        let mut victims: Vec<usize> = Vec::new();
        for gpu in &mine.gpus {
            let need = gpu.quota_bytes.unwrap_or(gpu.used).min(gpu.physical);
            let resident: Vec<hibernation::Resident> = snapshots
                .iter()
                .enumerate()
                .filter(|&(o, _)| o != m && !self.models[o].swap.hibernated)
                .filter(|&(o, _)| !victims.contains(&o))
                .filter_map(|(o, snap)| {
                    let used = snap.as_ref()?.gpu(gpu.uuid)?.used;
                    let idle = match self.models[o].cfg.serve {
                        Some(_) => {
                            let instances = self.instance_loads(o);
                            hibernation::idle_for(&hibernation::Load {
                                hibernated: false,
                                changing: false,
                                waiting: self.routes.load(&self.models[o].cfg.name).0,
                                instances: &instances,
                            })
                        }
                        None => None,
                    };
                    (used > 0).then_some(hibernation::Resident {
                        model: o,
                        bytes: used,
                        idle,
                    })
                })
                .collect();
            victims.extend(hibernation::make_room(gpu.physical, need, &resident));
        }
        for &v in &victims {
            log(&format!(
                "model {}: hibernating to make room for model {}",
                self.models[v].cfg.name, self.models[m].cfg.name
            ));
        }
        victims
    }

    fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.cfg.name == name)
    }

    /// Answers a control request.
    pub fn handle(&mut self, request: Request, now: Instant) -> Answer {
        let (name, action, event) = match request {
            Request::Status(None) => return Answer::Status(self.status(now)),
            Request::Metrics => {
                return Answer::Metrics(self.status(now), self.swap_metrics.clone());
            }
            Request::Status(Some(name)) => {
                return match self.model_index(&name) {
                    Some(m) => Answer::Model(Box::new(self.model_status(m, now))),
                    None => Answer::NoSuchModel(name),
                };
            }
            Request::Start(name) => (name, "start", lifecycle::Event::Start),
            Request::Stop(name) => (name, "stop", lifecycle::Event::Stop { then_start: false }),
            Request::Restart(name) => {
                (name, "restart", lifecycle::Event::Stop { then_start: true })
            }
        };
        let Some(m) = self.model_index(&name) else {
            return Answer::NoSuchModel(name);
        };
        if self.shutting_down && action != "stop" {
            return Answer::ShuttingDown;
        }
        for i in 0..self.models[m].instances.len() {
            self.apply(m, i, event.clone(), now);
        }
        Answer::Done {
            model: name,
            action,
        }
    }

    /// Asks model `name`'s processes to hibernate or wake; `reply` gets the answer when
    /// they have acknowledged ([`Supervisor::powered`]), or at once if it cannot be asked.
    pub fn power(&mut self, name: &str, hibernate: bool, reply: Reply) {
        let Some(m) = self.model_index(name) else {
            let _ = reply.send(Answer::NoSuchModel(name.to_owned()));
            return;
        };
        if self.shutting_down {
            let _ = reply.send(Answer::ShuttingDown);
            return;
        }
        self.request_power(m, hibernate, Some(reply));
    }

    fn request_power(&mut self, m: usize, hibernate: bool, reply: Option<Reply>) {
        // A wake still waiting for room is replaced by this request.
        let (replaced, kept): (Vec<Deferred>, Vec<Deferred>) =
            std::mem::take(&mut self.deferred_wakes)
                .into_iter()
                .partition(|d| d.model == m);
        self.deferred_wakes = kept;
        for d in replaced {
            if let Some(reply) = d.reply {
                let mut report =
                    PowerReport::from_result(&self.models[m].cfg.name, false, Err(String::new()));
                report.outcome = "superseded".into();
                report.error = None;
                let _ = reply.send(Answer::Power(Box::new(report)));
            }
        }
        if !hibernate && self.models[m].swap.hibernated {
            // Room first: the least recently used idle models leave in bulk before this
            // one comes back, rather than page by page under its faults.
            let after: Vec<u64> = self
                .pressure_victims(m)
                .into_iter()
                .map(|v| self.send_power(v, true, None))
                .collect();
            if !after.is_empty() {
                self.deferred_wakes.push(Deferred {
                    model: m,
                    reply,
                    after,
                });
                return;
            }
        }
        self.send_power(m, hibernate, reply);
    }

    /// Sends a hibernate or wake to model `m`'s processes; the request's number.
    fn send_power(&mut self, m: usize, hibernate: bool, reply: Option<Reply>) -> u64 {
        self.freeze(m, false); // a frozen process cannot move anything, nor answer
        self.next_power_id += 1;
        let id = self.next_power_id;
        let model = &mut self.models[m];
        model.swap.hibernated = hibernate;
        log(&format!(
            "model {}: {}",
            model.cfg.name,
            if hibernate { "hibernating" } else { "waking" }
        ));
        self.power_waits.push(PowerWait {
            id,
            model: m,
            hibernate,
            reply,
        });
        if hibernate {
            self.routes.set_asleep(&model.cfg.name, true);
        }
        self.effects.power(PowerJob {
            id,
            model: model.cfg.name.clone(),
            hibernate,
            timeout: model.cfg.swap_timeout,
        });
        id
    }

    /// A hibernate or wake request ended ([`Effects::power`]'s result): its numbers go to
    /// the model's status and the metrics, its answer to whoever asked.
    pub fn powered(&mut self, id: u64, result: PowerResult) {
        let Some(at) = self.power_waits.iter().position(|w| w.id == id) else {
            return;
        };
        let wait = self.power_waits.remove(at);
        let model = &mut self.models[wait.model];
        let report = PowerReport::from_result(&model.cfg.name, wait.hibernate, result);
        log(&format!(
            "model {}: {} {}: {} bytes moved, {} pinned, {} failed, in {:.1} ms{}",
            report.model,
            report.action,
            report.outcome,
            report.moved_bytes,
            report.pinned_bytes,
            report.failed_bytes,
            report.duration_ms,
            report
                .error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        ));
        if report.outcome == "done" {
            self.swap_metrics
                .observe(&report.model, wait.hibernate, report.duration_ms / 1000.0);
        }
        if wait.hibernate {
            model.swap.last_out = Some(report.clone());
        } else {
            model.swap.last_in = Some(report.clone());
        }
        // Frozen once hibernated, unless another request for it is under way (its
        // processes must be able to answer that one).
        let freeze = wait.hibernate
            && report.outcome == "done"
            && model.cfg.freeze_hibernated
            && model.swap.hibernated
            && !self.changing(wait.model);
        if freeze {
            self.freeze(wait.model, true);
        }
        let model = &self.models[wait.model];
        if !wait.hibernate && report.outcome != "superseded" && !model.swap.hibernated {
            // Awake, or as awake as it will get: a wake that failed or timed out still
            // serves (the driver faults the pages back). Not if a hibernate came since.
            self.routes.set_asleep(&report.model, false);
        }
        if let Some(reply) = wait.reply {
            let _ = reply.send(Answer::Power(Box::new(report)));
        }
        // Wakes that waited for room: those whose pushed-out models are done.
        let pending: Vec<u64> = self.power_waits.iter().map(|w| w.id).collect();
        let (ready, held): (Vec<Deferred>, Vec<Deferred>) =
            std::mem::take(&mut self.deferred_wakes)
                .into_iter()
                .partition(|d| d.after.iter().all(|id| !pending.contains(id)));
        self.deferred_wakes = held;
        for d in ready {
            self.send_power(d.model, false, d.reply);
        }
    }

    fn model_status(&self, m: usize, now: Instant) -> ModelStatus {
        let model = &self.models[m];
        let snapshot =
            crate::ledger::read_snapshot(&self.config.supervisor.ledger_dir, &model.cfg.name);
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
                    state: i.state.as_str().to_owned(),
                    pid: i.pid,
                    restarts: i.restarts,
                    oom_kills: i.oom_kills,
                    last_exit: i.last_exit,
                    backoff_ms: (i.state == State::Backoff).then_some(i.backoff.as_millis() as u64),
                    uptime_ms: i
                        .started
                        .filter(|_| i.pid.is_some())
                        .map(|s| now.saturating_duration_since(s).as_millis() as u64),
                    host_memory_bytes: s
                        .worker
                        .as_ref()
                        .and_then(|w| w.cgroup.as_ref())
                        .and_then(crate::cgroups::Cgroup::memory_current),
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
                .and_then(crate::ledger::Snapshot::quota_bytes),
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
            placed_on: self
                .plan
                .as_ref()
                .and_then(|p| p.uuids(&model.cfg.name))
                .map(|u| u.iter().map(ToString::to_string).collect()),
            swap: SwapStatus {
                frozen: model.instances.iter().any(|s| s.frozen),
                ..model.swap.clone()
            },
            error,
        }
    }

    /// Every model, and the node's GPUs when models are placed: one copy of each ledger.
    pub fn status(&self, now: Instant) -> Status {
        Status {
            models: (0..self.models.len())
                .map(|m| self.model_status(m, now))
                .collect(),
            gpus: self.plan.as_ref().map(|p| {
                p.gpus
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
            }),
        }
    }
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

/// A supervisor at work on a thread of its own, with its control API and, if configured,
/// its front door. A Rust program embeds cuvisor with this:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = cuvisor::config::Config::load(std::path::Path::new("cuvisor.toml"))
///     .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
/// let shim = cuvisor::exec::default_shim().ok_or("libcuvisor_preload.so not found")?;
/// let running = cuvisor::supervisor::Running::start(config, shim)?;
/// println!("{} models", running.status()?.models.len());
/// running.stop()?; // every worker stopped, the listeners closed
/// # Ok(()) }
/// ```
///
/// Workers are reaped by pid (the program's other children are left alone), at the
/// latest 50 ms after they exit, at once where the program forwards SIGCHLD
/// ([`Running::sender`], [`Event::Signal`]). A worker's own children that it leaves
/// behind come to the program only if it is a child subreaper
/// ([`become_subreaper`]); then the supervisor reaps every child of the program that is
/// not a worker (a program that is a subreaper for children of its own should not embed
/// a supervisor).
pub struct Running {
    events: Sender<Event>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The supervisor's thread wakes at least this often: to reap without SIGCHLD, and for
/// the scaler to look at the front door's load.
const TICK: Duration = Duration::from_millis(50);

impl Running {
    /// Checks and prepares everything that can fail (the supervisor's lock, the placement
    /// on GPUs, cgroups, ledgers, the control API and the front door), then starts the
    /// models' first instances on the supervisor's thread.
    pub fn start(config: Config, shim: PathBuf) -> Result<Running, Error> {
        Self::start_with(
            config,
            shim,
            &crate::nvml::Nvml,
            Path::new("/sys/fs/cgroup"),
        )
    }

    fn start_with(
        config: Config,
        shim: PathBuf,
        inventory: &dyn Inventory,
        cgroup_root: &Path,
    ) -> Result<Running, Error> {
        // First: nothing of another supervisor's may be touched.
        let lock = SupervisorLock::acquire(Path::new(RUN_DIR), &config.supervisor.cgroup_name)?;
        let plan = place(&config, inventory)?;
        if let Some(p) = &plan {
            for line in p.lines() {
                log(&line);
            }
        }
        let (hierarchy, ledgers) = crate::system::prepare(&config, cgroup_root)?;
        let (tx, rx) = channel();
        let effects = System::new(&config, hierarchy, shim, plan.clone(), tx.clone())?;
        let mut sup = Supervisor::new(config, plan, effects);
        for (m, why) in ledgers.into_iter().enumerate() {
            if let Some(why) = why {
                let name = sup.config.models[m].name.clone();
                sup.unusable(&name, why);
            }
        }
        let front_door = match sup.config.supervisor.http {
            Some(_) => Some(sup.routes.clone()),
            None => None,
        };
        let demand = tx.clone();
        sup.routes.on_demand(move || {
            let _ = demand.send(Event::Demand);
        });
        let control = crate::control::serve(&sup.config.supervisor, tx.clone(), front_door)?;
        let door = match sup.config.supervisor.http {
            None => None,
            Some(addr) => {
                let keys = match &sup.config.supervisor.api_keys {
                    Some(path) => Some(crate::config::secrets::read_keys(path).map_err(|why| {
                        crate::control::ServeError::Secret {
                            key: "api_keys",
                            path: path.clone(),
                            why,
                        }
                    })?),
                    None => None,
                };
                let door = gateway::serve(addr, sup.routes.clone(), keys)?;
                log(&format!("front door: listening on {addr}"));
                Some(door)
            }
        };
        let thread = std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || {
                supervise(&mut sup, &rx);
                // In this order: the workers' effects (the launchers end, the cgroups'
                // parent goes), the listeners, and last the lock, so that a supervisor
                // that takes it next finds nothing of this one's.
                drop(sup);
                drop(door);
                drop(control);
                log("stopped");
                drop(lock);
            })
            .map_err(|e| Error::Thread("supervisor", e))?;
        Ok(Running {
            events: tx,
            thread: Some(thread),
        })
    }

    /// Where to send events: forwarded signals, control requests.
    pub fn sender(&self) -> Sender<Event> {
        self.events.clone()
    }

    /// Every model's status, as `GET /models` gives it. It blocks: not to be called
    /// from inside an async runtime (a Tokio task would panic).
    pub fn status(&self) -> Result<Status, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.events.send(Event::Control(Request::Status(None), tx));
        match rx.blocking_recv() {
            Ok(Answer::Status(s)) => Ok(s),
            _ => Err(Error::Panicked),
        }
    }

    /// Stops every worker (SIGTERM, SIGKILL after the grace period), closes the control
    /// API and the front door, and returns once all of it is done.
    pub fn stop(mut self) -> Result<(), Error> {
        let _ = self.events.send(Event::Stop);
        self.join()
    }

    /// Waits until the supervisor stops (a SIGTERM forwarded to it, or a stop sent).
    pub fn wait(mut self) -> Result<(), Error> {
        self.join()
    }

    fn join(&mut self) -> Result<(), Error> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Error::Panicked),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    /// A supervisor dropped without [`Running::stop`] stops all the same.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.events.send(Event::Stop);
            let _ = self.join();
        }
    }
}

/// The supervisor's loop: events as they come, [`Supervisor::tick`] after each and at
/// least every [`TICK`], until it has shut down.
fn supervise(sup: &mut Supervisor<System>, events: &Receiver<Event>) {
    sup.begin(Instant::now());
    let subreaper = is_subreaper();
    loop {
        let timeout = sup.next_deadline().map_or(TICK, |t| {
            t.saturating_duration_since(Instant::now()).min(TICK)
        });
        let now = || Instant::now();
        match events.recv_timeout(timeout) {
            Ok(Event::Signal(sig)) if sig == libc::SIGTERM || sig == libc::SIGINT => {
                sup.shutdown(now());
            }
            Ok(Event::Stop) => sup.shutdown(now()),
            Ok(Event::Signal(_) | Event::Demand) => {}
            Ok(Event::Control(request, reply)) => {
                let _ = reply.send(sup.handle(request, now()));
            }
            Ok(Event::Power {
                model,
                hibernate,
                reply,
            }) => sup.power(&model, hibernate, reply),
            Ok(Event::Powered { id, result }) => sup.powered(id, result),
            Ok(Event::Launched {
                model,
                index,
                result,
            }) => sup.launched(model, index, result, now()),
            // Every sender gone: no one can stop it any more but itself.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => sup.shutdown(now()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        sup.tick(now());
        if subreaper {
            reap_orphans(sup);
        }
        if sup.done() {
            return;
        }
    }
}

/// As a child subreaper, the workers' orphaned children come to this process: reaped
/// here, except workers (reaped by pid by the supervisor).
fn reap_orphans(sup: &Supervisor<System>) {
    loop {
        // SAFETY: siginfo_t is plain data; all zeros is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with a valid buffer; WNOWAIT leaves the child waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid for the child-state changes waitid reports.
        let pid = unsafe { info.si_pid() };
        if r != 0 || pid == 0 || sup.may_be_a_worker(pid) {
            return;
        }
        // SAFETY: reaping the orphan waitid just reported.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

fn is_subreaper() -> bool {
    let mut on: libc::c_int = 0;
    // SAFETY: prctl writes one int to a local.
    unsafe {
        libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut on as *mut libc::c_int) == 0 && on != 0
    }
}

/// Makes this process a child subreaper: orphans of workers (their children that
/// outlive them, outside a PID namespace) come to it, and the supervisor reaps them.
pub fn become_subreaper() {
    // SAFETY: prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

/// Blocks the signals the binary handles (SIGCHLD, SIGTERM, SIGINT, SIGHUP) in this
/// thread and the threads it starts later: call it before any other thread exists.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; all zeros is a valid value (and emptied below).
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset and sigaddset on a local set of valid signals; pthread_sigmask
    // only changes this thread's mask (threads spawned later inherit it).
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// `cuvisor run`: the configuration until SIGTERM or SIGINT, as a child subreaper.
/// Returns the process exit status.
pub fn run(config: Config, shim: PathBuf) -> Result<i32, Error> {
    // Before any thread exists: every thread inherits the blocked signals.
    let set = block_signals();
    become_subreaper();
    let running = Running::start(config, shim)?;
    let events = running.sender();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: sigwait with the set blocked in every thread.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0
                    && events.send(Event::Signal(sig)).is_err()
                {
                    return;
                }
            }
        })
        .map_err(|e| Error::Thread("signals", e))?;
    running.wait()?;
    Ok(0)
}

/// The delay before the next start of an instance of `cfg` that failed
/// `failures_in_a_row` times ([`lifecycle::backoff_delay`]).
pub fn backoff_delay(cfg: &ModelConfig, failures_in_a_row: u32) -> Duration {
    let policy = lifecycle::Policy {
        restart: cfg.restart,
        backoff_initial: cfg.backoff_initial,
        backoff_max: cfg.backoff_max,
        grace_period: Duration::ZERO,
        ready_timeout: None,
    };
    lifecycle::backoff_delay(&policy, failures_in_a_row)
}

/// Moved to [`crate::config::exposure`]; this path stays for one release.
pub use crate::config::exposure::exposure;

/// Moved to [`crate::config::RUN_DIR`]; this path stays for one release.
pub use crate::config::RUN_DIR;

/// The one supervisor of a cgroup parent: an exclusive `flock` on
/// `RUN_DIR/<cgroup_name>.lock`, which holds its pid. The kernel releases it when the
/// supervisor dies, however it dies.
pub struct SupervisorLock {
    _file: std::fs::File,
}

impl SupervisorLock {
    pub fn acquire(run_dir: &Path, cgroup_name: &str) -> Result<SupervisorLock, Error> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(run_dir)
            .map_err(|source| Error::RunDir {
                path: run_dir.to_owned(),
                source,
            })?;
        let path = run_dir.join(format!("{cgroup_name}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| Error::RunDir {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on our own descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(Error::Busy {
                pid: pid.trim().to_owned(),
                cgroup_name: cgroup_name.to_owned(),
                path,
            });
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(|source| Error::RunDir { path, source })?;
        Ok(SupervisorLock { _file: file })
    }
}

/// Places the models that have `gpus` on the node's GPUs (from `inventory`), against the
/// host memory left for what cannot be resident: the host's memory less the models'
/// `memory_limit`s (each times its instances). None when no model has `gpus`; every
/// reason it cannot be done otherwise, one per line.
pub fn place(config: &Config, inventory: &dyn Inventory) -> Result<Option<Plan>, Error> {
    if config.models.iter().all(|m| m.gpus.is_none()) {
        return Ok(None);
    }
    let node = inventory.gpus()?;
    let total = host_memory().ok_or(Error::HostMemory)?;
    let limits: u64 = config
        .models
        .iter()
        .filter_map(|m| {
            m.memory_limit
                .map(|l| l.saturating_mul(u64::from(m.instances)))
        })
        .fold(0, u64::saturating_add);
    let demands: Vec<Demand> = config
        .models
        .iter()
        .filter_map(|m| {
            Some(Demand {
                model: &m.name,
                gpus: m.gpus.as_ref()?,
                quota: m.gpu_quota,
            })
        })
        .collect();
    let s = &config.supervisor;
    placement::plan(
        &node,
        &demands,
        s.placement,
        s.gpu_overcommit,
        total.saturating_sub(limits),
    )
    .map(Some)
    .map_err(Error::Placement)
}

fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    //! The supervisor driven by events on a virtual clock, its effects recorded: no root,
    //! no process, no sleeping.
    use super::*;
    use crate::ledger::power::{Outcome, Power};
    use std::collections::HashMap;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Done {
        Launch(String, u32),
        Signal(i32, Signal),
        Release(String, i32),
        Power(PowerJob),
        Freeze(i32, bool),
    }

    /// Records what the supervisor does; `exits` are the statuses `reap` will report.
    #[derive(Default)]
    struct Recorder {
        done: Vec<Done>,
        exits: HashMap<i32, i32>,
    }

    impl Effects for Recorder {
        fn launch(&mut self, _model: usize, cfg: &ModelConfig, index: u32) {
            self.done.push(Done::Launch(cfg.name.clone(), index));
        }
        fn signal(&mut self, pid: i32, signal: Signal) {
            self.done.push(Done::Signal(pid, signal));
        }
        fn reap(&mut self, pid: i32) -> Option<i32> {
            self.exits.remove(&pid)
        }
        fn oom_killed(&self, _: &Worker) -> bool {
            false
        }
        fn release(&mut self, cfg: &ModelConfig, worker: Worker) {
            self.done.push(Done::Release(cfg.name.clone(), worker.pid));
        }
        fn power(&mut self, job: PowerJob) {
            self.done.push(Done::Power(job));
        }
        fn freeze(&mut self, _: &ModelConfig, worker: &Worker, frozen: bool) -> bool {
            self.done.push(Done::Freeze(worker.pid, frozen));
            true
        }
    }

    const MS: Duration = Duration::from_millis(1);

    fn supervisor(models: &str) -> (Supervisor<Recorder>, Instant) {
        // The front door's address is only read by `Running`: nothing listens here.
        let http = if models.contains("[model.serve]") {
            "http = \"127.0.0.1:9\"\n"
        } else {
            ""
        };
        let text = format!(
            "[supervisor]\nsocket = \"/nonexistent/s\"\nledger_dir = \"/nonexistent/l\"\n\
             grace_period = \"1s\"\n{http}{models}"
        );
        let config = Config::parse(Path::new("test.toml"), &text).expect("a valid config");
        (
            Supervisor::new(config, None, Recorder::default()),
            Instant::now(),
        )
    }

    const ONE: &str =
        "[[model]]\nname = \"a\"\ncommand = \"/bin/true\"\nbackoff_initial = \"100ms\"\n";

    fn taken(s: &mut Supervisor<Recorder>) -> Vec<Done> {
        std::mem::take(&mut s.effects.done)
    }

    fn instance(s: &Supervisor<Recorder>, now: Instant) -> InstanceStatus {
        s.status(now).models[0].instances[0].clone()
    }

    /// A wait status for an exit with `code`.
    fn exited(code: i32) -> i32 {
        code << 8
    }

    #[test]
    fn launches_do_not_wait_and_their_results_arrive_as_events() {
        let (mut s, t) = supervisor(&format!(
            "{ONE}[[model]]\nname = \"b\"\ncommand = \"/bin/true\"\ninstances = 2\n"
        ));
        s.begin(t);
        // Three launches asked for at once: none has finished.
        assert_eq!(
            taken(&mut s),
            [
                Done::Launch("a".into(), 0),
                Done::Launch("b".into(), 0),
                Done::Launch("b".into(), 1)
            ]
        );
        // The supervisor answers while they are under way.
        assert_eq!(instance(&s, t).state, "starting");
        s.launched(0, 0, Ok(Worker::new(100, None)), t + MS);
        let i = instance(&s, t + 5 * MS);
        assert_eq!(
            (i.state.as_str(), i.pid, i.uptime_ms),
            ("running", Some(100), Some(4))
        );
        let failed = StartError::Spec(crate::launch::SpecError::NotFound("nope".into()));
        s.launched(1, 1, Err(failed), t + MS);
        let b = &s.status(t).models[1].instances[1];
        assert_eq!(b.state, "backoff");
        assert_eq!(b.error.as_deref(), Some("nope: not found in PATH"));
    }

    #[test]
    fn a_crash_is_reaped_released_and_restarted_after_its_backoff() {
        let (mut s, t) = supervisor(ONE);
        s.begin(t);
        s.launched(0, 0, Ok(Worker::new(100, None)), t);
        taken(&mut s);
        s.effects.exits.insert(100, exited(3));
        s.tick(t + MS);
        assert_eq!(taken(&mut s), [Done::Release("a".into(), 100)]);
        let i = instance(&s, t + MS);
        assert_eq!(
            (i.state.as_str(), i.last_exit, i.restarts),
            ("backoff", Some(3), 1)
        );
        assert_eq!(s.next_deadline(), Some(t + 101 * MS));
        s.tick(t + 100 * MS);
        assert_eq!(taken(&mut s), []);
        s.tick(t + 101 * MS);
        assert_eq!(taken(&mut s), [Done::Launch("a".into(), 0)]);
    }

    #[test]
    fn a_stop_terms_kills_after_the_grace_period_and_starts_nothing() {
        let (mut s, t) = supervisor(ONE);
        s.begin(t);
        s.launched(0, 0, Ok(Worker::new(100, None)), t);
        taken(&mut s);
        let answer = s.handle(Request::Stop("a".into()), t);
        assert!(
            matches!(answer, Answer::Done { action: "stop", .. }),
            "{answer:?}"
        );
        assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Term)]);
        s.tick(t + 999 * MS);
        assert_eq!(taken(&mut s), []);
        s.tick(t + 1000 * MS);
        assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Kill)]);
        s.effects.exits.insert(100, 9); // killed by SIGKILL
        s.tick(t + 1001 * MS);
        assert_eq!(taken(&mut s), [Done::Release("a".into(), 100)]);
        let i = instance(&s, t);
        assert_eq!(
            (i.state.as_str(), i.last_exit, i.restarts),
            ("stopped", Some(137), 0)
        );
        assert!(
            matches!(s.handle(Request::Stop("zz".into()), t), Answer::NoSuchModel(n) if n == "zz")
        );
    }

    fn power_request(generation: u32, hibernated: bool, outcome: Outcome) -> PowerResult {
        let request = crate::ledger::PowerRequest {
            power: Power {
                generation,
                hibernated,
            },
            outcome,
            nanos: 2_500_000,
        };
        Ok((request, None))
    }

    fn reported(rx: &mut tokio::sync::oneshot::Receiver<Answer>) -> PowerReport {
        match rx.try_recv() {
            Ok(Answer::Power(report)) => *report,
            other => panic!("{other:?}"),
        }
    }

    /// A hibernate is sent to the model's processes and answered when they have
    /// acknowledged; the model shows hibernated from the request on; a request replaced
    /// by a later one says so; one that could not be made says why.
    #[test]
    fn hibernate_and_wake_are_answered_when_the_processes_are_done() {
        let (mut s, t) = supervisor(ONE);
        s.begin(t);
        s.launched(0, 0, Ok(Worker::new(100, None)), t);
        taken(&mut s);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        s.power("a", true, tx);
        assert_eq!(
            taken(&mut s),
            [Done::Power(PowerJob {
                id: 1,
                model: "a".into(),
                hibernate: true,
                timeout: POWER_TIMEOUT,
            })]
        );
        assert!(
            rx.try_recv().is_err(),
            "not answered before the processes are"
        );
        assert_eq!(s.model_status(0, t).state, "hibernated");
        s.powered(1, power_request(1, true, Outcome::Done));
        let report = reported(&mut rx);
        assert_eq!(
            (report.action.as_str(), report.outcome.as_str()),
            ("hibernate", "done")
        );
        assert_eq!((report.generation, report.duration_ms), (1, 2.5));
        let swap = s.model_status(0, t).swap;
        assert!(swap.hibernated && !swap.frozen);
        assert_eq!(swap.last_out, Some(report));
        assert_eq!(swap.last_in, None);

        // A wake replaced by a hibernate before its processes answered.
        let (tx1, mut rx1) = tokio::sync::oneshot::channel();
        let (tx2, mut rx2) = tokio::sync::oneshot::channel();
        s.power("a", false, tx1);
        s.power("a", true, tx2);
        assert_eq!(taken(&mut s).len(), 2);
        let newer = Power {
            generation: 3,
            hibernated: true,
        };
        s.powered(2, power_request(2, false, Outcome::Superseded(newer)));
        assert_eq!(reported(&mut rx1).outcome, "superseded");
        s.powered(3, Err("ledger /l/a: cannot open: gone".into()));
        let failed = reported(&mut rx2);
        assert_eq!(failed.outcome, "failed");
        assert_eq!(
            failed.error.as_deref(),
            Some("ledger /l/a: cannot open: gone")
        );
        s.powered(99, Err("an unknown request: ignored".into()));

        let (tx, mut rx) = tokio::sync::oneshot::channel();
        s.power("zz", true, tx);
        assert!(matches!(rx.try_recv(), Ok(Answer::NoSuchModel(n)) if n == "zz"));
        s.shutdown(t);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        s.power("a", false, tx);
        assert!(matches!(rx.try_recv(), Ok(Answer::ShuttingDown)));
    }

    /// `freeze_hibernated`: frozen once the hibernate is done, thawed before the wake is
    /// sent and before a signal.
    #[test]
    fn a_frozen_model_is_thawed_before_its_wake_and_before_a_signal() {
        let (mut s, t) =
            supervisor(&ONE.replace("command = ", "freeze_hibernated = true\ncommand = "));
        s.begin(t);
        s.launched(0, 0, Ok(Worker::new(100, None)), t);
        taken(&mut s);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        s.power("a", true, tx);
        taken(&mut s);
        s.powered(1, power_request(1, true, Outcome::Done));
        assert_eq!(taken(&mut s), [Done::Freeze(100, true)]);
        assert!(s.model_status(0, t).swap.frozen);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        s.power("a", false, tx);
        let done = taken(&mut s);
        assert_eq!(done[0], Done::Freeze(100, false));
        assert!(matches!(&done[1], Done::Power(j) if !j.hibernate));
        s.powered(2, power_request(2, false, Outcome::Done));
        // Frozen again, then stopped: thawed first.
        let (tx, _rx) = tokio::sync::oneshot::channel();
        s.power("a", true, tx);
        s.powered(3, power_request(3, true, Outcome::Done));
        taken(&mut s);
        s.handle(Request::Stop("a".into()), t);
        assert_eq!(
            taken(&mut s),
            [Done::Freeze(100, false), Done::Signal(100, Signal::Term)]
        );
    }

    /// Results that come late do not undo a later request: a wake's result after a newer
    /// hibernate leaves the front door asleep, and a hibernate's result while another
    /// request is under way does not freeze the workers that must answer it.
    /// A hibernated model whose last worker exited starts its next one awake.
    #[test]
    fn a_hibernated_model_with_nothing_running_starts_awake() {
        let (mut s, t) = supervisor(ONE);
        s.begin(t);
        s.launched(0, 0, Ok(Worker::new(100, None)), t);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        s.power("a", true, tx);
        s.powered(1, power_request(1, true, Outcome::Done));
        taken(&mut s);
        s.effects.exits.insert(100, exited(1)); // it crashed
        s.tick(t + MS);
        s.tick(t + 200 * MS); // after the backoff: started again
        let done = taken(&mut s);
        assert!(done.contains(&Done::Launch("a".into(), 0)), "{done:?}");
        assert!(
            done.iter()
                .any(|d| matches!(d, Done::Power(j) if !j.hibernate && j.model == "a")),
            "{done:?}"
        );
        assert!(!s.model_status(0, t).swap.hibernated);
    }

    #[test]
    fn a_late_result_does_not_undo_a_newer_request() {
        let served = "[[model]]\nname = \"a\"\ncommand = \"/bin/true\"\nfreeze_hibernated = true\n\
                      [model.serve]\nhealth = \"/h\"\n";
        let (mut s, t) = supervisor(served);
        s.begin(t);
        s.launched(0, 0, Ok(Worker::new(100, None)), t);
        taken(&mut s);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        s.power("a", true, tx);
        assert!(s.routes.asleep("a"));
        let (tx, _rx) = tokio::sync::oneshot::channel();
        s.power("a", false, tx);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        s.power("a", true, tx);
        taken(&mut s);
        // The first hibernate ends while the others are under way: no freeze.
        s.powered(1, power_request(1, true, Outcome::Done));
        // The wake ends after the second hibernate was sent: still asleep.
        s.powered(2, power_request(2, false, Outcome::Done));
        assert!(s.routes.asleep("a"));
        assert_eq!(taken(&mut s), []);
        // The last one ends: frozen now.
        s.powered(3, power_request(3, true, Outcome::Done));
        assert_eq!(taken(&mut s), [Done::Freeze(100, true)]);
        assert!(s.routes.asleep("a"));
    }

    #[test]
    fn a_shutdown_waits_for_launches_under_way_and_stops_what_they_started() {
        let (mut s, t) = supervisor(ONE);
        s.begin(t);
        taken(&mut s);
        s.shutdown(t);
        assert!(!s.done(), "a launch is under way");
        assert!(matches!(
            s.handle(Request::Start("a".into()), t),
            Answer::ShuttingDown
        ));
        s.launched(0, 0, Ok(Worker::new(100, None)), t + MS);
        assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Term)]);
        assert!(!s.done());
        s.effects.exits.insert(100, exited(0));
        s.tick(t + 2 * MS);
        assert_eq!(taken(&mut s), [Done::Release("a".into(), 100)]);
        assert!(s.done());
        // Nothing restarts after it.
        s.tick(t + Duration::from_secs(60));
        assert_eq!(taken(&mut s), []);
    }

    #[test]
    fn a_model_whose_ledger_cannot_be_used_never_launches() {
        let (mut s, t) = supervisor(ONE);
        s.unusable("a", "ledger /l/a: layout version 1".into());
        s.begin(t);
        assert_eq!(taken(&mut s), []);
        s.handle(Request::Start("a".into()), t);
        assert_eq!(taken(&mut s), []);
        let i = instance(&s, t);
        assert_eq!(i.state, "failed");
        assert_eq!(i.error.as_deref(), Some("ledger /l/a: layout version 1"));
    }

    #[test]
    fn a_served_instance_never_ready_is_restarted_and_is_never_routed() {
        let (mut s, t) = supervisor(&format!(
            "{ONE}[model.serve]\nhealth = \"/health\"\nready_timeout = \"2s\"\n"
        ));
        s.begin(t);
        s.launched(0, 0, Ok(Worker::new(100, Some(41000))), t);
        taken(&mut s);
        assert!(!s.routes().load("a").1[&0].ready, "routed, not ready");
        s.tick(t + 1999 * MS);
        assert_eq!(taken(&mut s), []);
        s.tick(t + 2000 * MS);
        assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Term)]);
        assert!(
            s.routes().load("a").1.is_empty(),
            "no request goes to it any more"
        );
        assert!(
            instance(&s, t)
                .error
                .unwrap()
                .contains("serve.ready_timeout")
        );
        s.effects.exits.insert(100, 15);
        s.tick(t + 2001 * MS);
        assert_eq!(taken(&mut s), [Done::Release("a".into(), 100)]);
        s.tick(t + 2101 * MS);
        assert_eq!(taken(&mut s), [Done::Launch("a".into(), 0)]);
    }

    #[test]
    fn a_restart_starts_again_once_the_old_worker_has_exited() {
        let (mut s, t) = supervisor(ONE);
        s.begin(t);
        s.launched(0, 0, Ok(Worker::new(100, None)), t);
        taken(&mut s);
        s.handle(Request::Restart("a".into()), t);
        assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Term)]);
        s.effects.exits.insert(100, 15);
        s.tick(t + MS);
        assert_eq!(
            taken(&mut s),
            [Done::Release("a".into(), 100), Done::Launch("a".into(), 0)]
        );
    }
}
