//! `cuvisor run`: the models of a configuration, each as isolated worker processes with
//! the shim injected, restarted per policy, observed through the control API.
//!
//! One thread (the one that called [`run`]) starts every worker, so that the workers'
//! parent-death signal is tied to a thread that lives as long as the supervisor. Every
//! event reaches it through one channel: signals (from a `sigwait` thread), control
//! requests (from the control server), and the timers of restarts.

use crate::cgroups::{Cgroup, Hierarchy, Limits};
use crate::config::{Config, Logs, ModelConfig, RestartPolicy, SupervisorConfig};
use crate::contract::Contract;
use crate::exec::{cstrings, worker_env};
use crate::gateway::{self, Routes};
use crate::gpu::GpuUuid;
use crate::launch::{self, Privileges, ReadOnly, Spec};
use crate::ledger::{self, CreateOptions, LedgerFile, Snapshot};
use crate::nvml::Inventory;
use crate::placement::{self, Demand, Plan};
use crate::scaling;
use crate::status::{InstanceStatus, ModelGpu, ModelStatus, NodeGpu, Status};
use serde_json::json;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

/// What the control API asks of the supervisor.
pub enum Request {
    Status(Option<String>),
    Metrics,
    Start(String),
    Stop(String),
    Restart(String),
}

/// The control API's answer: an HTTP status and a body.
pub struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

pub enum Event {
    Signal(i32),
    /// A control API request, and where its answer goes.
    Control(Request, tokio::sync::oneshot::Sender<Reply>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Running,
    Backoff,
    /// Asked to stop (or restart): SIGTERM sent, waiting for it to exit.
    Stopping,
    Stopped,
    Exited,
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }
}

struct Instance {
    index: u32,
    state: State,
    pid: Option<i32>,
    cgroup: Option<Cgroup>,
    oom_kills_at_start: u64,
    started: Option<Instant>,
    next_start: Option<Instant>,
    /// While stopping: when SIGTERM turns into SIGKILL.
    kill_at: Option<Instant>,
    /// While stopping: start again once it has exited (an operator's start or restart).
    start_after_exit: bool,
    backoff: Duration,
    failures_in_a_row: u32,
    restarts: u64,
    oom_kills: u64,
    last_exit: Option<i32>,
    error: Option<String>,
}

/// The supervisor never maps a ledger: its workers can shrink the file under any mapping
/// (SIGBUS at the next access). It reads copies ([`ledger::read_snapshot`]) and reclaims
/// in a child process ([`ledger::reclaim_isolated`]).
struct Model {
    cfg: ModelConfig,
    /// Why the model's ledger could not be created or opened at start: it cannot run.
    ledger_error: Option<String>,
    instances: Vec<Instance>,
}

pub struct Supervisor {
    config: Config,
    hierarchy: Hierarchy,
    shim: PathBuf,
    /// Which GPUs the models with `gpus` run on; None when no model has `gpus`.
    plan: Option<Plan>,
    /// The served models' instances, for the front door.
    routes: Arc<Routes>,
    models: Vec<Model>,
    shutting_down: bool,
}

pub(crate) fn log(line: &str) {
    let _ = writeln!(std::io::stderr(), "cuvisor: {line}");
}

impl Supervisor {
    /// Prepares everything that can fail before any worker starts: cgroups, ledgers. `plan`
    /// comes from [`place`].
    pub fn new(
        config: Config,
        shim: PathBuf,
        cgroup_root: &Path,
        plan: Option<Plan>,
    ) -> Result<Supervisor, String> {
        let hierarchy = Hierarchy::detect(cgroup_root, &config.supervisor.cgroup_name);
        let mut unenforced = Vec::new();
        for m in &config.models {
            if let Err(why) = hierarchy.supports(&limits(m)) {
                if !config.supervisor.allow_unlimited {
                    return Err(format!(
                        "model {}: its host limits cannot be enforced: {why}; set allow_unlimited = true in [supervisor] to run without them",
                        m.name
                    ));
                }
                unenforced.push(format!(
                    "WARNING: model {}: {why}: its host limits are NOT enforced (allow_unlimited = true)",
                    m.name
                ));
            }
        }
        log(&format!("cgroups: {}", hierarchy.describe()));
        for line in &unenforced {
            log(line);
        }
        for m in &config.models {
            for why in exposure(m) {
                log(&format!("WARNING: model {}: {why}", m.name));
            }
        }
        // Only the cgroups this configuration's instances would have (`<model>-<n>`): a
        // cgroup_name shared with anything else never gets its other cgroups killed.
        let is_ours = |leaf: &str| {
            config.models.iter().any(|m| {
                leaf.strip_prefix(m.name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        };
        for left in hierarchy.remove_leftovers(is_ours) {
            match left {
                Ok(dir) => log(&format!(
                    "removed a cgroup left by an earlier supervisor: {}",
                    dir.display()
                )),
                Err(e) => log(&format!(
                    "WARNING: a cgroup left by an earlier supervisor cannot be removed: {e}"
                )),
            }
        }
        let models = config
            .models
            .iter()
            .map(|cfg| {
                let ledger_error = prepare_ledger(&config.supervisor.ledger_dir, cfg)
                    .err()
                    .map(|e| {
                        log(&format!("model {}: {e}", cfg.name));
                        e.to_string()
                    });
                if ledger_error.is_none() {
                    // What the workers of an earlier supervisor held when they died.
                    reclaim_logged(&config.supervisor.ledger_dir, &cfg.name);
                }
                let instances = (0..cfg.instances)
                    .map(|index| Instance {
                        index,
                        state: State::Stopped,
                        pid: None,
                        cgroup: None,
                        oom_kills_at_start: 0,
                        started: None,
                        next_start: None,
                        kill_at: None,
                        start_after_exit: false,
                        backoff: cfg.backoff_initial,
                        failures_in_a_row: 0,
                        restarts: 0,
                        oom_kills: 0,
                        last_exit: None,
                        error: ledger_error.clone(),
                    })
                    .collect();
                Model {
                    cfg: cfg.clone(),
                    ledger_error,
                    instances,
                }
            })
            .collect();
        Ok(Supervisor {
            routes: Routes::new(&config),
            config,
            hierarchy,
            shim,
            plan,
            models,
            shutting_down: false,
        })
    }

    fn start_instance(&mut self, m: usize, i: usize) {
        let model = &mut self.models[m];
        if model.ledger_error.is_some() {
            let inst = &mut model.instances[i];
            inst.state = State::Failed;
            inst.error = model.ledger_error.clone();
            return;
        }
        let cfg = model.cfg.clone();
        let inst = &mut model.instances[i];
        inst.state = State::Starting;
        inst.next_start = None;
        let leaf = format!("{}-{}", cfg.name, inst.index);
        let result = (|| -> Result<(i32, Option<Cgroup>, OwnedFd), String> {
            // Again at every start: the worker is shown its ledger, which must be there
            // (made again if someone removed it) and still have the model's quota.
            prepare_ledger(&self.config.supervisor.ledger_dir, &cfg).map_err(|e| e.to_string())?;
            let (out_read, out_write) = pipe_for_output()?;
            let visible = self.plan.as_ref().and_then(|p| p.uuids(&cfg.name));
            let port = match cfg.serve {
                Some(_) => Some(gateway::free_port()?),
                None => None,
            };
            let spec = worker_spec(
                &cfg,
                &self.config.supervisor,
                &self.shim,
                out_write.as_raw_fd(),
                Placement {
                    gpus: visible.as_deref(),
                    port,
                },
            )?;
            // Last, so that nothing before it can fail and leave the cgroup behind.
            let cgroup = self
                .hierarchy
                .create(&leaf, &limits(&cfg))
                .map_err(|e| e.to_string())?;
            let launched = launch::launch(&spec, |pid| {
                cgroup.add(pid as u32).map_err(|e| e.to_string())
            })
            .map_err(|e| {
                let _ = cgroup.remove();
                e.to_string()
            })?;
            drop(out_write);
            if let Some(port) = port {
                self.routes.started(&cfg.name, inst.index, port);
            }
            Ok((launched.pid, Some(cgroup), out_read))
        })();
        match result {
            Ok((pid, cgroup, output)) => {
                inst.oom_kills_at_start = cgroup.as_ref().and_then(Cgroup::oom_kills).unwrap_or(0);
                inst.cgroup = cgroup;
                inst.pid = Some(pid);
                inst.state = State::Running;
                inst.started = Some(Instant::now());
                inst.error = None;
                forward_output(output, &self.config.supervisor.logs, &leaf);
                log(&format!(
                    "model {}: instance {} started (pid {pid})",
                    cfg.name, inst.index
                ));
            }
            Err(e) => {
                log(&format!(
                    "model {}: instance {} cannot start: {e}",
                    cfg.name, inst.index
                ));
                inst.error = Some(e);
                Self::after_failure(&cfg, inst, true);
            }
        }
    }

    /// Schedules a restart (with backoff) or gives up, per the model's policy.
    fn after_failure(cfg: &ModelConfig, inst: &mut Instance, failed: bool) {
        let restart = match cfg.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if !restart {
            inst.state = if failed { State::Failed } else { State::Exited };
            return;
        }
        // A worker that ran longer than the longest backoff was not crash-looping.
        let stable = inst.started.is_some_and(|s| s.elapsed() > cfg.backoff_max);
        inst.failures_in_a_row = if stable {
            0
        } else {
            inst.failures_in_a_row + 1
        };
        inst.backoff = backoff_delay(cfg, inst.failures_in_a_row);
        inst.next_start = Some(Instant::now() + inst.backoff);
        inst.state = State::Backoff;
        inst.restarts += 1;
    }

    /// A child exited: find its instance, record how, reclaim, restart per policy.
    fn reaped(&mut self, pid: i32, status: i32) {
        let Some((m, i)) = self.find(pid) else {
            return; // an orphan adopted as subreaper: reaped, nothing else to do
        };
        let model = &mut self.models[m];
        let cfg = model.cfg.clone();
        let inst = &mut model.instances[i];
        let code = launch::exit_code(status);
        self.routes.gone(&cfg.name, inst.index);
        inst.pid = None;
        inst.last_exit = Some(code);
        let oom_now = inst
            .cgroup
            .as_ref()
            .and_then(Cgroup::oom_kills)
            .unwrap_or(0);
        let oom_killed = oom_now > inst.oom_kills_at_start;
        if oom_killed {
            inst.oom_kills += 1;
        }
        if let Some(cg) = inst.cgroup.take()
            && let Err(e) = cg.remove()
        {
            log(&format!("model {}: {e}", cfg.name));
        }
        if model.ledger_error.is_none() {
            reclaim_logged(&self.config.supervisor.ledger_dir, &cfg.name);
        }
        let how = if oom_killed {
            "killed by the OOM killer".to_owned()
        } else if code > 128 {
            format!("killed by signal {}", code - 128)
        } else {
            format!("exited with status {code}")
        };
        log(&format!(
            "model {}: instance {} {how}",
            cfg.name, inst.index
        ));
        inst.kill_at = None;
        if self.shutting_down {
            inst.state = State::Stopped;
            return;
        }
        if inst.state == State::Stopping {
            // An operator's stop or restart, not a failure: the policy has no say.
            if std::mem::take(&mut inst.start_after_exit) {
                inst.state = State::Backoff;
                inst.next_start = Some(Instant::now());
            } else {
                inst.state = State::Stopped;
            }
            return;
        }
        Self::after_failure(&cfg, inst, code != 0 || oom_killed);
    }

    fn find(&self, pid: i32) -> Option<(usize, usize)> {
        self.models.iter().enumerate().find_map(|(m, model)| {
            model
                .instances
                .iter()
                .position(|i| i.pid == Some(pid))
                .map(|i| (m, i))
        })
    }

    fn reap_all(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid for any child (workers and adopted orphans).
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            self.reaped(pid, status);
        }
    }

    /// Starts the instances whose backoff is over; SIGKILLs those that outlived their
    /// grace period while stopping.
    fn run_timers(&mut self) {
        let now = Instant::now();
        for m in 0..self.models.len() {
            for i in 0..self.models[m].instances.len() {
                let model = &mut self.models[m];
                let inst = &mut model.instances[i];
                if inst.state == State::Backoff && inst.next_start.is_some_and(|t| t <= now) {
                    self.start_instance(m, i);
                } else if let (Some(pid), Some(at)) = (inst.pid, inst.kill_at)
                    && at <= now
                {
                    inst.kill_at = None;
                    log(&format!(
                        "model {}: instance {} still running after the grace period: SIGKILL",
                        model.cfg.name, inst.index
                    ));
                    // SAFETY: a worker we started and have not reaped yet.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.models
            .iter()
            .flat_map(|m| &m.instances)
            .filter_map(|i| i.next_start.or(i.kill_at))
            .min()
    }

    /// An operator's stop (`then_start` false) or restart (true) of every instance of a
    /// model: running ones get SIGTERM now and SIGKILL after the grace period.
    fn stop_model(&mut self, m: usize, then_start: bool) {
        for i in 0..self.models[m].instances.len() {
            self.stop_instance(m, i, then_start);
        }
    }

    /// Stops one instance (SIGTERM, SIGKILL after the grace period); with `then_start`
    /// it starts again once it has exited. No request is sent to it any more.
    fn stop_instance(&mut self, m: usize, i: usize, then_start: bool) {
        let grace = self.config.supervisor.grace_period;
        let model = &mut self.models[m];
        let inst = &mut model.instances[i];
        self.routes.gone(&model.cfg.name, inst.index);
        inst.next_start = None;
        inst.failures_in_a_row = 0;
        match inst.pid {
            Some(pid) => {
                inst.state = State::Stopping;
                inst.start_after_exit = then_start;
                if inst.kill_at.is_none() {
                    inst.kill_at = Some(Instant::now() + grace);
                }
                // SAFETY: a worker we started and have not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            None if then_start => {
                inst.state = State::Backoff;
                inst.next_start = Some(Instant::now());
            }
            None => inst.state = State::Stopped,
        }
    }

    /// Whether any model's instances follow the front door's traffic.
    fn scales(&self) -> bool {
        self.models.iter().any(|m| m.cfg.min_instances.is_some())
    }

    /// Scaled models: starts or stops instances as the front door's load says
    /// ([`scaling::decide`]).
    fn scale(&mut self) {
        if self.shutting_down {
            return;
        }
        for m in 0..self.models.len() {
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
            let (waiting, routed) = self.routes.load(&cfg.name);
            let alive = |s: State| matches!(s, State::Running | State::Starting | State::Backoff);
            let instances = self.models[m]
                .instances
                .iter()
                .filter(|i| alive(i.state))
                .map(|i| {
                    let load = routed.get(&i.index);
                    scaling::Instance {
                        index: i.index,
                        ready: load.is_some_and(|l| l.ready),
                        in_flight: load.map_or(0, |l| l.in_flight),
                        idle: load.map_or(Duration::ZERO, |l| l.idle),
                    }
                })
                .collect();
            match scaling::decide(&policy, &scaling::Load { waiting, instances }) {
                scaling::Decision::Hold => {}
                scaling::Decision::Start(n) => {
                    let idle: Vec<usize> = (0..self.models[m].instances.len())
                        .filter(|&i| {
                            let s = self.models[m].instances[i].state;
                            matches!(s, State::Stopped | State::Exited | State::Failed)
                        })
                        .take(n)
                        .collect();
                    for i in idle {
                        log(&format!(
                            "model {}: instance {i} started for the front door's load",
                            self.models[m].cfg.name
                        ));
                        self.start_instance(m, i);
                    }
                }
                scaling::Decision::Stop(indices) => {
                    for index in indices {
                        if let Some(i) = self.models[m]
                            .instances
                            .iter()
                            .position(|x| x.index == index)
                        {
                            log(&format!(
                                "model {}: instance {index} idle for serve.idle_timeout: stopped",
                                self.models[m].cfg.name
                            ));
                            self.stop_instance(m, i, false);
                        }
                    }
                }
            }
        }
    }

    fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.cfg.name == name)
    }

    fn signal_instances(&self, m: usize, sig: i32) {
        for inst in &self.models[m].instances {
            if let Some(pid) = inst.pid {
                // SAFETY: a worker we started and have not reaped yet.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    fn handle(&mut self, request: Request) -> Reply {
        let not_found = |name: &str| Reply {
            code: 404,
            content_type: "application/json",
            body: json!({"error": format!("no model {name}")}).to_string(),
        };
        match request {
            Request::Status(None) => Reply {
                code: 200,
                content_type: "application/json",
                body: serde_json::to_string_pretty(&self.status()).expect("JSON"),
            },
            Request::Status(Some(name)) => match self.model_index(&name) {
                Some(m) => Reply {
                    code: 200,
                    content_type: "application/json",
                    body: serde_json::to_string_pretty(&self.model_status(m)).expect("JSON"),
                },
                None => not_found(&name),
            },
            Request::Metrics => Reply {
                code: 200,
                content_type: crate::metrics::CONTENT_TYPE,
                body: match self.config.supervisor.http {
                    None => crate::metrics::encode(&self.status()),
                    Some(_) => crate::metrics::encode_with_front_door(
                        &self.status(),
                        &self.routes.metrics,
                        |m| self.routes.in_flight_and_waiting(m),
                    ),
                },
            },
            Request::Stop(name) => match self.model_index(&name) {
                Some(m) => {
                    self.stop_model(m, false);
                    Reply {
                        code: 200,
                        content_type: "application/json",
                        body: json!({"model": name, "action": "stop"}).to_string(),
                    }
                }
                None => not_found(&name),
            },
            Request::Start(name) | Request::Restart(name) if self.model_index(&name).is_none() => {
                not_found(&name)
            }
            Request::Start(name) => {
                let m = self.model_index(&name).expect("checked");
                for i in 0..self.models[m].instances.len() {
                    let inst = &mut self.models[m].instances[i];
                    if inst.pid.is_none() {
                        inst.failures_in_a_row = 0;
                        self.start_instance(m, i);
                    } else if inst.state == State::Stopping {
                        inst.start_after_exit = true;
                    }
                }
                Reply {
                    code: 200,
                    content_type: "application/json",
                    body: json!({"model": name, "action": "start"}).to_string(),
                }
            }
            Request::Restart(name) => {
                let m = self.model_index(&name).expect("checked");
                self.stop_model(m, true);
                Reply {
                    code: 200,
                    content_type: "application/json",
                    body: json!({"model": name, "action": "restart"}).to_string(),
                }
            }
        }
    }

    /// The model's ledger, read from a copy.
    fn snapshot(&self, m: usize) -> Result<Snapshot, ledger::LedgerError> {
        ledger::read_snapshot(&self.config.supervisor.ledger_dir, &self.models[m].cfg.name)
    }

    fn model_status(&self, m: usize) -> ModelStatus {
        let model = &self.models[m];
        let snapshot = self.snapshot(m);
        let error = model
            .ledger_error
            .clone()
            .or_else(|| snapshot.as_ref().err().map(ToString::to_string));
        let snapshot = snapshot.ok();
        let instances = model
            .instances
            .iter()
            .map(|i| InstanceStatus {
                index: i.index,
                state: i.state.as_str().to_owned(),
                pid: i.pid,
                restarts: i.restarts,
                oom_kills: i.oom_kills,
                last_exit: i.last_exit,
                backoff_ms: (i.state == State::Backoff).then_some(i.backoff.as_millis() as u64),
                uptime_ms: i
                    .started
                    .filter(|_| i.pid.is_some())
                    .map(|s| s.elapsed().as_millis() as u64),
                host_memory_bytes: i.cgroup.as_ref().and_then(Cgroup::memory_current),
                error: i.error.clone(),
            })
            .collect::<Vec<_>>();
        ModelStatus {
            name: model.cfg.name.clone(),
            state: summary_state(&model.instances).to_owned(),
            restarts: instances.iter().map(|i| i.restarts).sum(),
            oom_kills: instances.iter().map(|i| i.oom_kills).sum(),
            host_memory_bytes: instances.iter().filter_map(|i| i.host_memory_bytes).sum(),
            instances,
            gpu_quota_bytes: snapshot.as_ref().and_then(Snapshot::quota_bytes),
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
            error,
        }
    }

    /// Every model, and the node's GPUs when models are placed: one copy of each ledger.
    pub fn status(&self) -> Status {
        Status {
            models: (0..self.models.len())
                .map(|m| self.model_status(m))
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

    /// SIGTERM everywhere, the grace period, SIGKILL, cgroups removed.
    fn shutdown(&mut self, events: &Receiver<Event>) {
        self.shutting_down = true;
        log("stopping: SIGTERM to every worker");
        for m in 0..self.models.len() {
            self.signal_instances(m, libc::SIGTERM);
        }
        let deadline = Instant::now() + self.config.supervisor.grace_period;
        while self.running() > 0 && Instant::now() < deadline {
            let _ = events.recv_timeout(Duration::from_millis(20));
            self.reap_all();
        }
        if self.running() > 0 {
            log("grace period over: SIGKILL");
            for m in 0..self.models.len() {
                self.signal_instances(m, libc::SIGKILL);
            }
            while self.running() > 0 {
                std::thread::sleep(Duration::from_millis(10));
                self.reap_all();
            }
        }
        for model in &mut self.models {
            for inst in &mut model.instances {
                if let Some(cg) = inst.cgroup.take() {
                    let _ = cg.remove();
                }
            }
        }
        self.hierarchy.remove_base();
        self.reap_all();
    }

    fn running(&self) -> usize {
        self.models
            .iter()
            .flat_map(|m| &m.instances)
            .filter(|i| i.pid.is_some())
            .count()
    }
}

/// Where an instance runs: its GPUs (its `CUDA_VISIBLE_DEVICES`, by UUID; None: every
/// GPU) and, for a served model, the loopback port it listens on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement<'a> {
    pub gpus: Option<&'a [GpuUuid]>,
    pub port: Option<u16>,
}

/// How a worker of `cfg` is started (its program, arguments, environment, credentials,
/// namespaces, privileges), with its output going to `output`, where `at` says. Creates
/// nothing: it only looks for the program and reads this process's mount table.
pub fn worker_spec(
    cfg: &ModelConfig,
    supervisor: &SupervisorConfig,
    shim: &Path,
    output: RawFd,
    at: Placement,
) -> Result<Spec, String> {
    let visible = at.gpus;
    let mut extra: Vec<(String, String)> = cfg
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(port) = at.port {
        // The server's port: `PORT`, and `{port}` in its arguments.
        extra.push(("PORT".into(), port.to_string()));
    }
    if let Some(gpus) = visible {
        // CUDA numbers the model's GPUs 0.. in this order; NVML is filtered by the shim.
        let list: Vec<String> = gpus.iter().map(ToString::to_string).collect();
        extra.push(("CUDA_VISIBLE_DEVICES".into(), list.join(",")));
    }
    let contract = Contract {
        quota: cfg.gpu_quota,
        mode: cfg.mode,
        ledger_dir: supervisor.ledger_dir.clone(),
        gpus: visible.map(<[GpuUuid]>::to_vec),
        ..Contract::new(&cfg.name)
    };
    let env = worker_env(&extra, &contract, shim);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let program = launch::resolve_program(&cfg.command, path_var.as_deref())?;
    let mut argv = vec![cfg.command.clone()];
    argv.extend(cfg.args.iter().map(|a| match at.port {
        Some(port) => a.replace("{port}", &port.to_string()),
        None => a.clone(),
    }));
    let path = |p: &PathBuf| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: a NUL byte in a path", p.display()))
    };
    // In its own mount namespace the worker is shown less of the host.
    let (read_only, cover, ledger) = if cfg.isolation.mount {
        // The model's bind_ro (checked by the configuration to exist) first.
        let mut read_only = cfg
            .bind_ro
            .iter()
            .map(|p| {
                Ok(ReadOnly {
                    path: path(p)?,
                    flags: 0,
                    bind: true,
                    optional: false,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        read_only.extend(launch::kernel_interfaces(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        ));
        // What every model runs: a worker that is root must not rewrite them.
        let exe = std::env::current_exe().ok();
        for p in [Some(shim.to_path_buf()), exe].into_iter().flatten() {
            read_only.push(ReadOnly {
                path: path(&p)?,
                flags: 0,
                bind: true,
                optional: false,
            });
        }
        let ledger = (
            path(&supervisor.ledger_dir)?,
            path(&LedgerFile::path_for(&supervisor.ledger_dir, &cfg.name))?,
        );
        (read_only, vec![path(&supervisor.socket)?], Some(ledger))
    } else {
        (Vec::new(), Vec::new(), None)
    };
    Ok(Spec {
        program,
        argv: cstrings(argv)?,
        envp: cstrings(env.iter().map(|(k, v)| format!("{k}={v}")))?,
        cwd: cfg.cwd.as_ref().map(path).transpose()?,
        // In its own user namespace the worker becomes root there (host ids `host_ids`).
        uid: cfg.uid.or(cfg.host_ids.map(|_| 0)),
        gid: cfg.gid.or(cfg.host_ids.map(|_| 0)),
        isolation: cfg.isolation,
        hostname: cstrings([cfg.name.clone()])?.remove(0),
        privileges: Privileges::Keep(cfg.capabilities),
        read_only,
        cover,
        host_ids: cfg.host_ids,
        ledger,
        stdout: output,
        stderr: output,
    })
}

/// The delay before the next start of an instance that failed `failures_in_a_row` times:
/// doubling from `backoff_initial`, capped at `backoff_max`.
pub fn backoff_delay(cfg: &ModelConfig, failures_in_a_row: u32) -> Duration {
    let factor = 1u32 << failures_in_a_row.saturating_sub(1).min(20);
    cfg.backoff_initial
        .saturating_mul(factor)
        .min(cfg.backoff_max)
}

/// What a model's workers can reach outside their model, as its settings leave it: each
/// a reason to isolate it further (docs/SECURITY.md).
pub fn exposure(m: &ModelConfig) -> Vec<&'static str> {
    let host_root = m.uid.is_none_or(|u| u == 0) && !m.isolation.user;
    let mut out = Vec::new();
    if host_root {
        out.push(
            "runs as root of the host: without capabilities, and with the kernel's interfaces, \
             the shim and the other ledgers out of reach, it still owns root's files (/etc, \
             anything shared with it); for code you do not trust set user or isolation.user",
        );
    }
    if host_root && !m.isolation.pid {
        out.push(
            "runs as root without a PID namespace: it can signal and trace the other models' \
             workers (set user, isolation.user, or isolation.pid = true)",
        );
    }
    if host_root && !m.isolation.mount {
        out.push(
            "runs as root without a mount namespace: it can open every model's ledger and \
             write the kernel's interfaces (/sys, /proc/sys) (set user, isolation.user, or \
             isolation.mount = true)",
        );
    }
    if m.capabilities.0 != 0 && !m.isolation.user {
        out.push(
            "keeps capabilities on the host (some, such as CAP_SYS_ADMIN, CAP_DAC_OVERRIDE or \
             CAP_SYS_PTRACE, undo its confinement)",
        );
    }
    out
}

/// The ledger of a model, made if missing, checked (its quota included) from a copy, and
/// reachable by the model's user: the supervisor never maps a ledger.
fn prepare_ledger(dir: &Path, cfg: &ModelConfig) -> Result<(), ledger::LedgerError> {
    let group = cfg.gid.filter(|_| cfg.uid.is_some()).or(cfg.host_ids);
    ledger::ensure(dir, &cfg.name, cfg.gpu_quota, CreateOptions { group })?;
    if let Some(gid) = group {
        LedgerFile::share_with_group(dir, &cfg.name, gid)?;
        ledger::make_traversable(dir)?;
    }
    Ok(())
}

/// Gives back what the model's dead processes held (in a child process: the supervisor
/// never maps a ledger), and says so.
fn reclaim_logged(dir: &Path, model: &str) {
    match ledger::reclaim_isolated(dir, model) {
        Ok(r) if r.bytes > 0 || r.uncertain > 0 => log(&format!(
            "model {model}: reclaimed {} bytes ({} uncertain) of dead processes",
            r.bytes, r.uncertain
        )),
        Ok(_) => {}
        Err(e) => log(&format!("model {model}: {e}")),
    }
}

/// Where supervisors keep their locks: one per cgroup parent (`cgroup_name`).
pub const RUN_DIR: &str = "/run/cuvisor";

/// The one supervisor of a cgroup parent: an exclusive `flock` on
/// `RUN_DIR/<cgroup_name>.lock`, which holds its pid. The kernel releases it when the
/// supervisor dies, however it dies.
pub struct SupervisorLock {
    _file: std::fs::File,
}

impl SupervisorLock {
    pub fn acquire(run_dir: &Path, cgroup_name: &str) -> Result<SupervisorLock, String> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(run_dir)
            .map_err(|e| format!("{}: cannot create: {e}", run_dir.display()))?;
        let path = run_dir.join(format!("{cgroup_name}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
        // SAFETY: flock on our own descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(format!(
                "another supervisor (pid {}) runs with cgroup_name = \"{cgroup_name}\" (it holds {}); \
                 stop it, or give this one another cgroup_name",
                pid.trim(),
                path.display()
            ));
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        Ok(SupervisorLock { _file: file })
    }
}

fn summary_state(instances: &[Instance]) -> &'static str {
    let states: Vec<State> = instances.iter().map(|i| i.state).collect();
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

fn limits(m: &ModelConfig) -> Limits {
    Limits {
        memory: m.memory_limit,
        cpu_cores: m.cpu_limit,
        pids: m.pids_limit,
    }
}

fn pipe_for_output() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we own. The write end is inherited by the
    // worker only through the launch spec (dup2), so it is close-on-exec here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot create a pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: pipe2 succeeded: two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Copies a worker's output, line by line, to the supervisor's stderr or its log file.
fn forward_output(output: OwnedFd, logs: &Logs, leaf: &str) {
    let file = std::fs::File::from(output);
    let target = match logs {
        Logs::Stderr => None,
        Logs::Dir(dir) => {
            let _ = std::fs::create_dir_all(dir);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{leaf}.log")))
                .ok()
        }
    };
    let prefix = format!(
        "[{}] ",
        leaf.rsplit_once('-')
            .map_or(leaf.to_owned(), |(m, i)| format!("{m}/{i}"))
    );
    std::thread::spawn(move || {
        let mut target = target;
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            match &mut target {
                Some(f) => {
                    let _ = writeln!(f, "{line}");
                }
                None => {
                    let _ = writeln!(std::io::stderr(), "{prefix}{line}");
                }
            }
        }
    });
}

/// Blocks the signals we handle in every thread, and turns them into events.
fn signal_thread(tx: Sender<Event>) {
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
    std::thread::spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: sigwait with the set blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 && tx.send(Event::Signal(sig)).is_err()
            {
                return;
            }
        }
    });
}

/// Places the models that have `gpus` on the node's GPUs (from `inventory`), against the
/// host memory left for what cannot be resident: the host's memory less the models'
/// `memory_limit`s (each times its instances). None when no model has `gpus`; every
/// reason it cannot be done otherwise, one per line.
pub fn place(config: &Config, inventory: &dyn Inventory) -> Result<Option<Plan>, String> {
    if config.models.iter().all(|m| m.gpus.is_none()) {
        return Ok(None);
    }
    let node = inventory.gpus().map_err(|e| e.to_string())?;
    let total = host_memory().ok_or("cannot read MemTotal from /proc/meminfo")?;
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
    .map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
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

/// The plan for people: one line per GPU, one per placed model.
pub fn plan_lines(p: &Plan) -> Vec<String> {
    use crate::size::format_bytes as b;
    let mut lines = vec![format!(
        "placement: {}, gpu_overcommit {}, host memory for what cannot be resident: {} needed of {}",
        p.policy.as_str(),
        p.overcommit,
        b(p.host_needed),
        b(p.host_available)
    )];
    for g in &p.gpus {
        lines.push(format!(
            "GPU {} {}: {} committed of {} ({} memory): {}",
            g.gpu.index,
            g.gpu.uuid,
            b(g.committed),
            b(g.capacity),
            b(g.gpu.memory),
            if g.models.is_empty() {
                "-".to_owned()
            } else {
                g.models.join(", ")
            }
        ));
    }
    for m in &p.models {
        let gpus: Vec<String> = m
            .gpus
            .iter()
            .map(|&g| p.gpus[g].gpu.index.to_string())
            .collect();
        lines.push(format!("model {}: GPU {}", m.model, gpus.join(", ")));
    }
    lines
}

/// Runs the configuration until SIGTERM or SIGINT. Returns the process exit status.
pub fn run(config: Config, shim: PathBuf) -> Result<i32, String> {
    // Before any thread exists: every thread inherits the blocked signals.
    let (tx, rx) = channel();
    signal_thread(tx.clone());
    // SAFETY: prctl on ourselves: orphans of workers that left their namespace come to us.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // First: nothing of another supervisor's may be touched.
    let _lock = SupervisorLock::acquire(Path::new(RUN_DIR), &config.supervisor.cgroup_name)?;
    let plan = place(&config, &crate::nvml::Nvml)?;
    if let Some(p) = &plan {
        for line in plan_lines(p) {
            log(&line);
        }
    }
    let mut sup = Supervisor::new(config, shim, Path::new("/sys/fs/cgroup"), plan)?;
    let server = crate::control::serve(&sup.config.supervisor, tx)?;
    if let Some(addr) = sup.config.supervisor.http {
        let keys = match &sup.config.supervisor.api_keys {
            Some(path) => Some(
                gateway::read_keys(path)
                    .map_err(|why| format!("api_keys {}: {why}", path.display()))?,
            ),
            None => None,
        };
        gateway::serve(addr, sup.routes.clone(), keys)?;
        log(&format!("front door: listening on {addr}"));
    }
    for m in 0..sup.models.len() {
        // A scaled model starts with its minimum; the scaler does the rest.
        let first = sup.models[m]
            .cfg
            .min_instances
            .unwrap_or(sup.models[m].cfg.instances);
        for i in 0..first as usize {
            sup.start_instance(m, i);
        }
    }
    // The scaler looks at the front door's load this often.
    let tick = if sup.scales() {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(500)
    };
    loop {
        let timeout = sup.next_deadline().map_or(tick, |t| {
            t.saturating_duration_since(Instant::now()).min(tick)
        });
        match rx.recv_timeout(timeout) {
            Ok(Event::Signal(libc::SIGCHLD)) => sup.reap_all(),
            Ok(Event::Signal(sig)) if sig == libc::SIGTERM || sig == libc::SIGINT => {
                sup.shutdown(&rx);
                drop(server);
                log("stopped");
                return Ok(0);
            }
            Ok(Event::Signal(_)) => {}
            Ok(Event::Control(request, reply)) => {
                let _ = reply.send(sup.handle(request));
            }
            Err(_) => {}
        }
        sup.reap_all();
        sup.run_timers();
        sup.scale();
    }
}
