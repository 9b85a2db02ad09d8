//! The models of a configuration and their instances, driven by events.
//!
//! [`Supervisor`] turns what happens (a launch's result, an exit, a control request,
//! time passing) into [`lifecycle`] events, and the actions they lead to into calls on
//! its [`Effects`] and its [`Door`]. It reads no clock: every call says what time it is.
//! What it holds is in `state.rs`, the bookkeeping of hibernates and wakes under way in
//! `power.rs`, how its status is made in `report.rs`.

use super::api::{self, Answer, Reply, Request};
use super::effects::{Door, Effects, Exit, PowerJob, Process, Unavailable};
use super::hibernation;
use super::lifecycle::{self, Action, Signal, State};
use super::placement::Plan;
use super::power::Power;
use super::reload::{self, Change};
use super::report;
use super::scaling;
use super::state::{self, Model, Slot};
use super::status::{ModelStatus, PowerOutcome, PowerReport, Status};
use crate::config::{Config, ModelConfig};
use crate::log::log;
use std::time::{Duration, Instant};

/// The models of a configuration and their instances, driven by events.
pub struct Supervisor<E: Effects, D: Door> {
    config: Config,
    /// Which GPUs the models with `gpus` run on; None when no model has `gpus`.
    plan: Option<Plan>,
    /// The front door: where the served models' instances are routed.
    door: D,
    models: Vec<Model<E::Worker>>,
    effects: E,
    shutting_down: bool,
    power: Power,
    /// The host link's rate, as the swaps so far measured it.
    link: hibernation::Link,
}

/// What making room for a model on its GPUs takes ([`Supervisor::pressure`]).
struct Room {
    /// The models to hibernate.
    out: Vec<usize>,
    /// Whether its quota then fits on every GPU it uses.
    fits: bool,
    /// What those of `out` used within `swap_protect` hold there.
    protected_bytes: u64,
    /// The hibernates under way whose bytes must have left before it fits: the room it
    /// counts on is theirs.
    departing: Vec<u64>,
    /// Whether its quota would fit on every GPU it uses once every model that can be
    /// pushed out (a served one, busy or not) were out: if not, waiting for busy ones
    /// would not help.
    possible: bool,
}

/// The delay before the next start of an instance of `cfg` that failed
/// `failures_in_a_row` times ([`lifecycle::backoff_delay`]).
pub fn backoff_delay(cfg: &ModelConfig, failures_in_a_row: u32) -> Duration {
    lifecycle::backoff_delay(&state::policy(cfg, Duration::ZERO), failures_in_a_row)
}
#[cfg(test)]
mod tests;

impl<E: Effects, D: Door> Supervisor<E, D> {
    /// The configuration's models, every instance stopped. `plan` is where the models
    /// with `gpus` run ([`super::placement::plan`]).
    pub fn new(config: Config, plan: Option<Plan>, effects: E, door: D) -> Supervisor<E, D> {
        let grace_period = config.supervisor.grace_period;
        let models = config
            .models
            .iter()
            .map(|cfg| Model::new(cfg, grace_period))
            .collect();
        Supervisor {
            config,
            plan,
            door,
            models,
            effects,
            shutting_down: false,
            power: Power::default(),
            link: hibernation::Link::default(),
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

    /// The front door, as the supervisor drives it.
    pub fn door(&self) -> &D {
        &self.door
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
        result: Result<E::Worker, E::StartError>,
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
                    worker.pid()
                ));
                let pid = worker.pid();
                let probe = self.models[model].cfg.serve.as_ref().zip(worker.port());
                let probe =
                    probe.map(|(s, port)| format!("GET http://127.0.0.1:{port}{}", s.health));
                self.models[model].instances[i].worker = Some(worker);
                self.apply(model, i, lifecycle::Event::Launched { pid, probe }, now);
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
        self.tell_availability();
    }

    /// What time passing brings: exited workers reaped, timers (restarts after backoff,
    /// SIGKILL after the grace period, ready timeouts), health checks passed, and the
    /// scaler's decisions.
    pub fn tick(&mut self, now: Instant) {
        self.reap(now);
        for m in 0..self.models.len() {
            let ready = match self.models[m].cfg.serve {
                Some(_) => self.door.load(&self.models[m].cfg.name).1,
                None => Default::default(),
            };
            for i in 0..self.models[m].instances.len() {
                let slot = &self.models[m].instances[i];
                if slot.life.state == State::Running
                    && !slot.life.ready
                    && ready.get(&slot.index).is_some_and(|l| l.ready)
                {
                    let took = slot.life.started.map(|t| now.saturating_duration_since(t));
                    log(&format!(
                        "model {}: instance {} ready after {:.1} s",
                        self.models[m].cfg.name,
                        slot.index,
                        took.unwrap_or_default().as_secs_f64()
                    ));
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
        self.roll(now);
        self.drained(now);
        self.scale(now);
        self.hibernation(now);
        self.tell_availability();
    }

    /// Draining instances with nothing in flight any more are stopped.
    fn drained(&mut self, now: Instant) {
        for m in 0..self.models.len() {
            let draining = |s: &Slot<E::Worker>| s.life.state == State::Draining;
            if !self.models[m].instances.iter().any(draining) {
                continue;
            }
            let (_, load) = self.door.load(&self.models[m].cfg.name);
            for i in 0..self.models[m].instances.len() {
                let slot = &self.models[m].instances[i];
                let busy = load.get(&slot.index).map_or(0, |l| l.in_flight);
                if draining(slot) && busy == 0 {
                    log(&format!(
                        "model {}: instance {} drained: stopping it",
                        self.models[m].cfg.name, slot.index
                    ));
                    self.apply(m, i, lifecycle::Event::Drained, now);
                }
            }
        }
    }

    /// Replaced models: new instances started and old ones drained, a step at a time
    /// ([`reload::roll`]); the old ones gone once stopped.
    fn roll(&mut self, now: Instant) {
        for m in 0..self.models.len() {
            let model = &self.models[m];
            if let Some(wanted) = model.rolling {
                let served = model.cfg.serve.is_some();
                let (old, new): (Vec<_>, Vec<_>) = model.instances.iter().partition(|s| s.retiring);
                let ready = |s: &&Slot<E::Worker>| {
                    s.life.state == State::Running && (s.life.ready || !served)
                };
                let rollout = reload::Rollout {
                    wanted,
                    surge: model.cfg.gpu_quota.is_none(),
                    new_alive: new.iter().filter(|s| s.life.state.alive()).count(),
                    new_ready: new.iter().filter(|s| ready(s)).count(),
                    old_serving: old.iter().filter(|s| s.life.state.alive()).count(),
                    old_alive: old
                        .iter()
                        .filter(|s| s.worker.is_some() || !s.life.state.idle())
                        .count(),
                };
                if rollout.old_alive == 0 && rollout.new_alive >= wanted {
                    log(&format!("model {}: replaced", model.cfg.name));
                    self.models[m].rolling = None;
                    continue;
                }
                let step = reload::roll(&rollout);
                let slots = &self.models[m].instances;
                let start: Vec<usize> = (0..slots.len())
                    .filter(|&i| !slots[i].retiring && slots[i].life.state.idle())
                    .take(step.start)
                    .collect();
                // The old instances that serve least first: backoff or starting, then
                // not ready, then the others.
                let mut drain: Vec<usize> = (0..slots.len())
                    .filter(|&i| slots[i].retiring && slots[i].life.state.alive())
                    .collect();
                drain
                    .sort_by_key(|&i| (slots[i].life.state == State::Running, slots[i].life.ready));
                drain.truncate(step.drain);
                for i in start {
                    self.apply(m, i, lifecycle::Event::Start, now);
                }
                for i in drain {
                    self.apply(m, i, lifecycle::Event::Drain, now);
                }
            }
            let model = &mut self.models[m];
            model
                .instances
                .retain(|s| !(s.retiring && s.worker.is_none() && s.life.state.idle()));
        }
    }

    /// Tells the front door which served models cannot serve, and why, when that changes:
    /// a model whose ledger cannot be used, or with nothing running or starting after a
    /// failure ([`lifecycle::unavailable`]).
    fn tell_availability(&mut self) {
        for model in &mut self.models {
            if model.cfg.serve.is_none() || model.retired {
                continue;
            }
            let why = match &model.ledger_error {
                Some(error) => Some((error.clone(), None)),
                None => lifecycle::unavailable(model.instances.iter().map(|s| &s.life)),
            };
            let why = why.map(|(error, retry_at)| Unavailable { error, retry_at });
            if why != model.unavailable {
                self.door.unavailable(&model.cfg.name, why.clone());
                model.unavailable = why;
            }
        }
    }

    /// Reaps the workers that exited.
    fn reap(&mut self, now: Instant) {
        for m in 0..self.models.len() {
            for i in 0..self.models[m].instances.len() {
                let Some(worker) = &self.models[m].instances[i].worker else {
                    continue;
                };
                let Some(Exit { code, oom_killed }) = self.effects.reap(worker) else {
                    continue;
                };
                // A stop the supervisor asked for is said as one, not as a crash.
                let asked = self.models[m].instances[i].life.state == State::Stopping;
                let how = match (oom_killed, asked, code) {
                    (true, _, _) => "killed by the OOM killer".to_owned(),
                    (false, true, 143) => "stopped by SIGTERM".to_owned(),
                    (false, true, 137) => "stopped by SIGKILL after the grace period".to_owned(),
                    (false, true, code) => format!("stopped: exited with status {code}"),
                    (false, false, code) if code > 128 => {
                        format!("killed by signal {}", code - 128)
                    }
                    (false, false, code) => format!("exited with status {code}"),
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
            s.life.state == State::Starting || s.worker.as_ref().is_some_and(|w| w.pid() == pid)
        })
    }

    fn slots(&self) -> impl Iterator<Item = &Slot<E::Worker>> {
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
        self.effects.stop_launching();
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
        let policy = model.policy_of(i);
        let actions = lifecycle::step(&mut model.instances[i].life, &policy, event, now);
        let mut wake = false;
        for action in actions {
            let Supervisor {
                models,
                effects,
                door,
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
                    if let Some(w) = &slot.worker
                        && let Some(port) = w.port()
                    {
                        door.started(&model.cfg.name, slot.index, port, w.owner());
                    }
                }
                Action::Drain => {
                    log(&format!(
                        "model {}: instance {} draining: no new requests, those in flight finish",
                        model.cfg.name, slot.index
                    ));
                    door.drain(&model.cfg.name, slot.index);
                }
                Action::Unserve => door.gone(&model.cfg.name, slot.index),
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
            if self.models[m].retired || self.models[m].rolling.is_some() {
                continue; // going, or being replaced: the reload's steps decide
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
            let waiting = self.door.load(&cfg.name).0;
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
                        for victim in self.pressure(m, true).out {
                            log(&format!(
                                "model {}: hibernating to make room for model {name}",
                                self.models[victim].cfg.name
                            ));
                            self.hibernate_idle(victim);
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
    /// hibernated ones that have requests ([`hibernation::decide`]) once room can be made
    /// for them without pushing out a model used within `swap_protect`, or once their
    /// requests have waited their patience ([`hibernation::patience`],
    /// [`hibernation::wake_now`]); a wake whose requests have all left before it was made
    /// is abandoned.
    fn hibernation(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        for v in self.overcommitted() {
            log(&format!(
                "model {}: hibernating: the awake models' memory is past its GPU's",
                self.models[v].cfg.name
            ));
            self.hibernate_idle(v);
        }
        for m in 0..self.models.len() {
            let Some(serve) = &self.models[m].cfg.serve else {
                continue;
            };
            if self.models[m].retired || self.models[m].rolling.is_some() {
                continue;
            }
            let after = serve.hibernate_after;
            let instances = self.instance_loads(m);
            let waiting = self.door.load(&self.models[m].cfg.name).0;
            let in_flight: usize = instances.iter().map(|i| i.in_flight).sum();
            let name = self.models[m].cfg.name.clone();
            if waiting == 0 && in_flight == 0 && self.power.held_for_requests(m) {
                // Room was being made for requests that have all left.
                self.power.withdraw(m);
                log(&format!(
                    "model {name}: its requests left before it could wake: the wake is abandoned"
                ));
            }
            let load = hibernation::Load {
                hibernated: self.models[m].swap.hibernated,
                changing: self.changing(m),
                waiting,
                instances: &instances,
            };
            match hibernation::decide(after, &load) {
                hibernation::Decision::Hold => {
                    if self.models[m].swap.hibernated
                        && !self.changing(m)
                        && self.models[m].wake_wanted.take().is_some()
                    {
                        log(&format!(
                            "model {name}: its requests left while it waited for room: not woken"
                        ));
                    }
                }
                hibernation::Decision::Hibernate => {
                    log(&format!(
                        "model {name}: idle for serve.hibernate_after: hibernating"
                    ));
                    self.hibernate_idle(m);
                }
                hibernation::Decision::Wake => {
                    let cold_fits = self.pressure(m, false).fits;
                    // What waiting spares: the models used within swap_protect that the
                    // wake would push out now.
                    let policy = self.policy();
                    let warm = self.pressure(m, true);
                    let patience = hibernation::patience(
                        policy.patience,
                        warm.protected_bytes,
                        self.link.rate(),
                    );
                    let since = *self.models[m].wake_wanted.get_or_insert(now);
                    let waited = now.saturating_duration_since(since);
                    let wake = hibernation::wake_now(
                        cold_fits,
                        warm.fits,
                        warm.possible,
                        waited,
                        patience,
                    );
                    let Some(warm_too) = wake else {
                        if waited.is_zero() {
                            let until = match warm.fits {
                                true => format!("up to {patience:?}"),
                                false => "until busy ones are idle".to_owned(),
                            };
                            log(&format!(
                                "model {name}: requests for it wait for room on its GPUs \
                                 (the models there were used within {:?}, or are busy), {until}",
                                policy.protect
                            ));
                        }
                        continue;
                    };
                    log(&format!("model {name}: a request for it: waking"));
                    if self.wake(m, None, warm_too) {
                        self.models[m].wake_wanted = None;
                    }
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
        self.power.changing(m)
    }

    /// The front door's view of model `m`'s instances that are running or starting.
    fn instance_loads(&self, m: usize) -> Vec<scaling::Instance> {
        let (_, routed) = self.door.load(&self.models[m].cfg.name);
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

    /// The idle models to hibernate on each GPU where the awake models hold more than the
    /// GPU's memory ([`hibernation::make_room`] with nothing more to fit): what they hold
    /// past it would otherwise be paged in and out by the driver under their requests.
    fn overcommitted(&self) -> Vec<usize> {
        let snapshots: Vec<Option<cuvisor_common::ledger::Snapshot>> = self
            .models
            .iter()
            .map(|model| match model.swap.hibernated || model.retired {
                true => None,
                false => self.effects.snapshot(&model.cfg.name).ok(),
            })
            .collect();
        let mut gpus: Vec<(cuvisor_common::gpu::GpuUuid, u64)> = Vec::new();
        for gpu in snapshots.iter().flatten().flat_map(|s| &s.gpus) {
            if !gpus.iter().any(|(u, _)| *u == gpu.uuid) {
                gpus.push((gpu.uuid, gpu.physical));
            }
        }
        let mut victims: Vec<usize> = Vec::new();
        for (uuid, physical) in gpus {
            let resident: Vec<hibernation::Resident> = snapshots
                .iter()
                .enumerate()
                .filter(|&(o, _)| !victims.contains(&o) && !self.changing(o))
                .filter_map(|(o, snap)| {
                    let used = snap.as_ref()?.gpu(uuid)?.used;
                    (used > 0).then(|| hibernation::Resident {
                        model: o,
                        bytes: used,
                        idle: self.idle_for(o),
                    })
                })
                .collect();
            let protect = self.policy().protect;
            victims.extend(hibernation::make_room(
                physical, 0, &resident, protect, true,
            ));
        }
        victims
    }

    /// How long served model `m` has been idle (None: busy, or not served).
    fn idle_for(&self, m: usize) -> Option<Duration> {
        self.models[m].cfg.serve.as_ref()?;
        let instances = self.instance_loads(m);
        hibernation::idle_for(&hibernation::Load {
            hibernated: false,
            changing: false,
            waiting: self.door.load(&self.models[m].cfg.name).0,
            instances: &instances,
        })
    }

    /// The node's push-out policy, from `[supervisor]`.
    fn policy(&self) -> hibernation::Policy {
        let s = &self.config.supervisor;
        hibernation::Policy {
            protect: s.swap_protect,
            patience: s.swap_patience,
        }
    }

    /// The awake models to hibernate so that model `m`'s quota fits on each GPU it uses
    /// beside what stays resident ([`hibernation::make_room`], models used within
    /// `swap_protect` too if `warm_too`), from the ledgers; and whether it then fits on
    /// every one of them. Models whose wake is held back for room count with what they
    /// will hold; models being hibernated count as gone, and a wake that needs their room
    /// waits for them (`departing`): two wakes never count on the same bytes, and no wake
    /// brings its bytes in while those it replaces are still there.
    fn pressure(&self, m: usize, warm_too: bool) -> Room {
        let snapshots: Vec<Option<cuvisor_common::ledger::Snapshot>> = self
            .models
            .iter()
            .map(|model| self.effects.snapshot(&model.cfg.name).ok())
            .collect();
        let mut room = Room {
            out: Vec::new(),
            fits: true,
            protected_bytes: 0,
            departing: Vec::new(),
            possible: true,
        };
        let Some(mine) = &snapshots[m] else {
            return room;
        };
        let protect = self.policy().protect;
        for gpu in &mine.gpus {
            let need = gpu.quota_bytes.unwrap_or(gpu.used).min(gpu.physical);
            let used_here = |o: usize| -> Option<u64> {
                let used = snapshots[o].as_ref()?.gpu(gpu.uuid)?.used;
                (used > 0).then_some(used)
            };
            let awake = |o: usize| !self.models[o].swap.hibernated || self.power.held(o);
            let resident: Vec<hibernation::Resident> = (0..snapshots.len())
                .filter(|&o| o != m && awake(o) && !room.out.contains(&o))
                .filter_map(|o| {
                    Some(hibernation::Resident {
                        model: o,
                        bytes: used_here(o)?,
                        // Held back for requests, or on its way in: never pushed out.
                        idle: match self.power.changing(o) {
                            true => None,
                            false => self.idle_for(o),
                        },
                    })
                })
                .collect();
            let out = hibernation::make_room(gpu.physical, need, &resident, protect, warm_too);
            room.fits &= hibernation::fits(gpu.physical, need, &resident, &out);
            let pinned: u64 = resident
                .iter()
                .filter(|r| self.models[r.model].cfg.serve.is_none())
                .map(|r| r.bytes)
                .sum();
            room.possible &= pinned.saturating_add(need) <= gpu.physical;
            // Still there: the models whose hibernate is under way.
            let leaving: Vec<(u64, u64)> = (0..snapshots.len())
                .filter(|&o| o != m)
                .filter_map(|o| Some((self.power.hibernating(o)?, used_here(o)?)))
                .collect();
            let staying: u64 = resident
                .iter()
                .filter(|r| !out.contains(&r.model))
                .map(|r| r.bytes)
                .sum();
            let left: u64 = leaving.iter().map(|l| l.1).sum();
            if staying.saturating_add(need).saturating_add(left) > gpu.physical {
                room.departing.extend(leaving.iter().map(|l| l.0));
            }
            room.protected_bytes += resident
                .iter()
                .filter(|r| out.contains(&r.model) && r.idle.is_none_or(|i| i < protect))
                .map(|r| r.bytes)
                .sum::<u64>();
            room.out.extend(out);
        }
        room
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
        let action = if hibernate { "hibernate" } else { "wake" };
        log(&format!(
            "model {}: {action} asked (control API)",
            self.models[m].cfg.name
        ));
        self.request_power(m, hibernate, Some(reply));
    }

    fn request_power(&mut self, m: usize, hibernate: bool, reply: Option<Reply>) {
        match hibernate {
            true => {
                self.supersede(m);
                self.send_power(m, true, reply);
            }
            // Asked by hand: now, pushing out whatever idle models it takes.
            false => {
                self.wake(m, reply, true);
            }
        }
    }

    /// Hibernates model `m` for the policy (idle, or to make room), if it is still idle
    /// now that the front door is asked ([`Door::sleep_if_idle`]): its request's number.
    /// A request that came since the load was read keeps it awake.
    fn hibernate_idle(&mut self, m: usize) -> Option<u64> {
        let name = &self.models[m].cfg.name;
        if !self.door.sleep_if_idle(name) {
            log(&format!(
                "model {name}: a request came just as it was to hibernate: it stays awake"
            ));
            return None;
        }
        self.supersede(m);
        Some(self.send_power(m, true, None))
    }

    /// A wake held back for room is replaced by a newer request for the same model.
    fn supersede(&mut self, m: usize) {
        for reply in self.power.withdraw(m).into_iter().flatten() {
            let report =
                PowerReport::new(&self.models[m].cfg.name, false, PowerOutcome::Superseded);
            let _ = reply.send(Answer::Power(Box::new(report)));
        }
    }

    /// Wakes model `m`: if it is hibernated, room first (the models [`Supervisor::pressure`]
    /// names leave in bulk before it comes back, rather than page by page under its
    /// faults), the wake held back until they have. False if a model to push out got a
    /// request just then and stays: a wake for requests (no `reply`) is then not made,
    /// to be weighed again at the next tick; one asked by hand goes on with the room
    /// that was made.
    fn wake(&mut self, m: usize, reply: Option<Reply>, warm_too: bool) -> bool {
        self.supersede(m);
        if self.models[m].swap.hibernated {
            let room = self.pressure(m, warm_too);
            let mut after = Vec::new();
            let mut stayed = false;
            for v in room.out {
                log(&format!(
                    "model {}: hibernating to make room for model {}",
                    self.models[v].cfg.name, self.models[m].cfg.name
                ));
                match self.hibernate_idle(v) {
                    Some(id) => after.push(id),
                    None => stayed = true,
                }
            }
            if stayed && reply.is_none() {
                return false;
            }
            after.extend(room.departing);
            if !after.is_empty() {
                self.power.defer(m, reply, after);
                return true;
            }
        }
        self.send_power(m, false, reply);
        true
    }

    /// Sends a hibernate or wake to model `m`'s processes; the request's number.
    fn send_power(&mut self, m: usize, hibernate: bool, reply: Option<Reply>) -> u64 {
        self.freeze(m, false); // a frozen process cannot move anything, nor answer
        let id = self.power.sent(m, hibernate, reply);
        let model = &mut self.models[m];
        model.swap.hibernated = hibernate;
        log(&format!(
            "model {}: {}",
            model.cfg.name,
            if hibernate { "hibernating" } else { "waking" }
        ));
        if hibernate {
            self.door.set_asleep(&model.cfg.name, true);
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
    pub fn powered(&mut self, id: u64, report: PowerReport) {
        let Some(wait) = self.power.finish(id) else {
            return;
        };
        let model = &mut self.models[wait.model];
        log(&format!(
            "model {}: {} {}: {} moved, {} pinned, {} failed, in {:.1} ms{}",
            report.model,
            report.action,
            report.outcome,
            crate::size::format_bytes(report.moved_bytes),
            crate::size::format_bytes(report.pinned_bytes),
            crate::size::format_bytes(report.failed_bytes),
            report.duration_ms,
            report
                .error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        ));
        if report.outcome == PowerOutcome::Done {
            let seconds = report.duration_ms / 1000.0;
            self.door.swapped(&model.cfg.name, wait.hibernate, seconds);
            self.link.observe(report.moved_bytes, seconds);
        }
        if wait.hibernate {
            model.swap.last_out = Some(report.clone());
        } else {
            model.swap.last_in = Some(report.clone());
        }
        // Frozen once hibernated, unless another request for it is under way (its
        // processes must be able to answer that one).
        let freeze = wait.hibernate
            && report.outcome == PowerOutcome::Done
            && model.cfg.freeze_hibernated
            && model.swap.hibernated
            && !self.changing(wait.model);
        if freeze {
            self.freeze(wait.model, true);
        }
        let model = &self.models[wait.model];
        if !wait.hibernate && report.outcome != PowerOutcome::Superseded && !model.swap.hibernated {
            // Awake, or as awake as it will get: a wake that failed or timed out still
            // serves (the driver faults the pages back). Not if a hibernate came since.
            self.door.set_asleep(&report.model, false);
        }
        if let Some(reply) = wait.reply {
            let _ = reply.send(Answer::Power(Box::new(report)));
        }
        // Wakes that waited for room: those whose pushed-out models are done.
        for (m, reply) in self.power.released() {
            self.send_power(m, false, reply);
        }
    }

    /// Model number `m`'s status, as `GET /models/NAME` gives it.
    fn model_status(&self, m: usize, now: Instant) -> ModelStatus {
        let model = &self.models[m];
        let snapshot = self.effects.snapshot(&model.cfg.name);
        let effects = &self.effects;
        let memory = |w: &E::Worker| effects.host_memory(w);
        report::model_status(model, snapshot, memory, self.plan.as_ref(), now)
    }

    /// Every model, and the node's GPUs when models are placed: one copy of each ledger.
    pub fn status(&self, now: Instant) -> Status {
        Status {
            models: (0..self.models.len())
                .filter(|&m| self.models[m].shown())
                .map(|m| self.model_status(m, now))
                .collect(),
            gpus: self.plan.as_ref().map(report::node_gpus),
        }
    }

    /// The model `name` names: its name, or one of its front door's aliases.
    fn model_index(&self, name: &str) -> Option<usize> {
        let alias = |m: &Model<E::Worker>| {
            m.cfg
                .serve
                .as_ref()
                .is_some_and(|s| s.aliases.iter().any(|a| a == name))
        };
        let current = |m: &Model<E::Worker>| !m.retired;
        (self
            .models
            .iter()
            .position(|m| current(m) && m.cfg.name == name))
        .or_else(|| self.models.iter().position(|m| current(m) && alias(m)))
    }

    /// Answers a control request.
    pub fn handle(&mut self, request: Request, now: Instant) -> Answer {
        let (name, action, event) = match request {
            Request::Status(None) => return Answer::Status(self.status(now)),
            Request::Metrics => return Answer::Metrics(self.status(now)),
            Request::Status(Some(name)) => {
                return match self.model_index(&name) {
                    Some(m) => Answer::Model(Box::new(self.model_status(m, now))),
                    None => Answer::NoSuchModel(name),
                };
            }
            Request::Start(name) => (name, api::Action::Start, lifecycle::Event::Start),
            Request::Stop(name) => {
                let stop = lifecycle::Event::Stop { then_start: false };
                (name, api::Action::Stop, stop)
            }
            Request::Restart(name) => {
                let restart = lifecycle::Event::Stop { then_start: true };
                (name, api::Action::Restart, restart)
            }
            Request::SetQuota(name, quota) => return self.set_quota(name, quota),
        };
        let Some(m) = self.model_index(&name) else {
            return Answer::NoSuchModel(name);
        };
        if self.shutting_down && action != api::Action::Stop {
            return Answer::ShuttingDown;
        }
        let model = self.models[m].cfg.name.clone();
        log(&format!("model {model}: {action} asked (control API)"));
        for i in 0..self.models[m].instances.len() {
            self.apply(m, i, event.clone(), now);
        }
        Answer::Done { model, action }
    }

    /// Changes a model's quota, live: if its GPUs can take it (as a placement would
    /// check), in its ledger (on every GPU it uses, for the next allocation of every
    /// process), and in its configuration (its next starts set it again). Until the
    /// supervisor restarts or reloads: the file's quota holds then.
    fn set_quota(&mut self, name: String, quota: crate::size::QuotaSpec) -> Answer {
        let Some(m) = self.model_index(&name) else {
            return Answer::NoSuchModel(name);
        };
        let name = self.models[m].cfg.name.clone(); // an alias names its model
        if self.shutting_down {
            return Answer::ShuttingDown;
        }
        let from = self.models[m].cfg.gpu_quota;
        let plan = match &self.plan {
            Some(plan) => match plan.requota(&name, from, Some(quota)) {
                Ok(next) => Some(next),
                Err(why) => return Answer::Refused { model: name, why },
            },
            None => None,
        };
        if let Err(why) = self.requota(m, quota) {
            return Answer::Refused { model: name, why };
        }
        if plan.is_some() {
            self.plan = plan;
        }
        log(&format!("model {name}: {}", quota_change(from, quota)));
        Answer::Quota {
            model: name,
            from,
            to: quota,
        }
    }

    /// Model `m`'s quota changed in its ledger and its configuration.
    fn requota(&mut self, m: usize, quota: crate::size::QuotaSpec) -> Result<(), String> {
        self.effects.set_quota(&self.models[m].cfg.name, quota)?;
        self.models[m].cfg.gpu_quota = Some(quota);
        Ok(())
    }

    /// Applies `config` (read again from its file, and checked), placed as `plan` says:
    /// models unchanged keep running untouched, added ones start, removed ones drain and
    /// stop, a quota alone changes live, other changes replace a model by rolling
    /// instances ([`reload::diff`]). Refused (nothing changed) for a change of
    /// `[supervisor]`, or what the host cannot do.
    pub fn reload(&mut self, config: Config, plan: Option<Plan>, now: Instant) -> Answer {
        if self.shutting_down {
            return Answer::ShuttingDown;
        }
        // What runs now: the models not removed, with their live changes (a quota).
        let running = Config {
            models: self
                .models
                .iter()
                .filter(|m| !m.retired)
                .map(|m| m.cfg.clone())
                .collect(),
            ..self.config.clone()
        };
        let changes = match reload::diff(&running, &config, self.plan.as_ref(), plan.as_ref()) {
            Ok(changes) => changes,
            Err(why) => return Answer::ReloadRefused(why),
        };
        let starting: Vec<&ModelConfig> = changes
            .iter()
            .filter(|(_, c)| matches!(c, Change::Added | Change::Replaced))
            .filter_map(|(name, _)| config.model(name))
            .collect();
        let unusable = match self.effects.reconfigure(&config, plan.as_ref(), &starting) {
            Ok(unusable) => unusable,
            Err(why) => return Answer::ReloadRefused(vec![why]),
        };
        self.plan = plan;
        let mut said = Vec::new();
        for (name, change) in changes {
            let cfg = config.model(&name);
            let text = match (change, cfg) {
                (Change::Unchanged, _) => "unchanged".to_owned(),
                (Change::Quota { from, to }, Some(_)) => {
                    let m = self
                        .model_index(&name)
                        .expect("a model of the running file");
                    match self.requota(m, to) {
                        Ok(()) => quota_change(Some(from), to),
                        Err(why) => format!("its quota cannot be changed live: {why}"),
                    }
                }
                (Change::Removed, _) => {
                    self.remove(&name, now);
                    "removed: its instances drain, then stop".to_owned()
                }
                (Change::Added, Some(cfg)) => {
                    self.add(cfg, now);
                    "added".to_owned()
                }
                (_, Some(cfg)) => {
                    let m = self
                        .model_index(&name)
                        .expect("a model of the running file");
                    self.replace(m, cfg, false);
                    "replaced by rolling instances".to_owned()
                }
                (_, None) => continue, // not in the new file: only Removed is
            };
            log(&format!("reload: model {name}: {text}"));
            said.push(format!("model {name}: {text}"));
        }
        for (name, why) in unusable {
            if let Some(m) = self.model_index(&name) {
                self.models[m].ledger_error = Some(why);
            }
        }
        self.config = config;
        self.roll(now);
        self.drained(now);
        self.tell_availability();
        Answer::Reloaded(said)
    }

    /// A model added by a reload: its first instances start (or, where it had been
    /// removed and its instances still drain, they are replaced).
    fn add(&mut self, cfg: &ModelConfig, now: Instant) {
        if let Some(m) = self.models.iter().position(|m| m.cfg.name == cfg.name) {
            return self.replace(m, cfg, true);
        }
        let grace_period = self.config.supervisor.grace_period;
        self.models.push(Model::new(cfg, grace_period));
        if let Some(serve) = &cfg.serve {
            self.door.serve(&cfg.name, serve);
        }
        let m = self.models.len() - 1;
        let first = cfg.min_instances.unwrap_or(cfg.instances) as usize;
        for i in 0..first {
            self.apply(m, i, lifecycle::Event::Start, now);
        }
    }

    /// A model removed by a reload: the front door refuses its name, its instances drain
    /// and stop.
    fn remove(&mut self, name: &str, now: Instant) {
        let Some(m) = self.model_index(name) else {
            return;
        };
        self.models[m].retired = true;
        self.models[m].rolling = None;
        if self.models[m].cfg.serve.is_some() {
            self.door.hide(name);
        }
        for i in 0..self.models[m].instances.len() {
            self.apply(m, i, lifecycle::Event::Drain, now);
        }
    }

    /// Model `m` runs `cfg` from now on: its instances become old ones, and as many new
    /// ones as ran (every one of a fixed model that was not stopped by hand; `revive`: as
    /// at a start) take their places, a step at a time ([`Supervisor::roll`]).
    fn replace(&mut self, m: usize, cfg: &ModelConfig, revive: bool) {
        let grace_period = self.config.supervisor.grace_period;
        let model = &mut self.models[m];
        let alive = model
            .instances
            .iter()
            .filter(|s| s.life.state.alive())
            .count() as u32;
        let stopped = model
            .instances
            .iter()
            .all(|s| s.life.state == State::Stopped);
        let wanted = match (revive, cfg.min_instances) {
            (true, min) => min.unwrap_or(cfg.instances),
            (false, None) if stopped && !model.retired => 0,
            (false, None) => cfg.instances,
            (false, Some(min)) => alive.clamp(min, cfg.instances),
        };
        let next = model
            .instances
            .iter()
            .map(|s| s.index + 1)
            .max()
            .unwrap_or(0);
        for slot in &mut model.instances {
            slot.retiring = true;
        }
        model.policy = state::policy(cfg, grace_period);
        model.cfg = cfg.clone();
        model.retired = false;
        model.ledger_error = None;
        let policy = model.policy;
        model
            .instances
            .extend((0..cfg.instances).map(|k| Slot::new(next + k, &policy)));
        model.rolling = Some(wanted as usize);
        match &cfg.serve {
            Some(serve) => self.door.serve(&cfg.name, serve),
            None => self.door.hide(&cfg.name),
        }
    }
}

/// How a live quota change is said.
fn quota_change(from: Option<crate::size::QuotaSpec>, to: crate::size::QuotaSpec) -> String {
    format!(
        "quota {} -> {} (changed live)",
        crate::size::quota_text(from),
        crate::size::quota_text(Some(to))
    )
}
