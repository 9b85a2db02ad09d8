//! The supervisor driven by events on a virtual clock, its effects and its front door
//! recorded: no root, no process, no sleeping.

use super::*;
use crate::core::api::{self, Answer, Request};
use crate::core::effects::{InstanceLoad, Load, Owner, PowerJob, Unavailable};
use crate::core::status::{InstanceStatus, PowerAction, PowerOutcome, PowerReport};

const DONE: PowerOutcome = PowerOutcome::Done;
use cuvisor_common::gpu::GpuUuid;
use cuvisor_common::ledger::{GpuUsage, LedgerError, Snapshot};
use cuvisor_common::size::QuotaSpec;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    Launch(String, u32),
    Signal(i32, Signal),
    Release(String, i32),
    Power(PowerJob),
    Freeze(i32, bool),
    StopLaunching,
    SetQuota(String, QuotaSpec),
    /// A reload readied the host for these models.
    Reconfigure(Vec<String>),
}

/// A worker as the recorder starts it.
#[derive(Debug)]
struct Worker {
    pid: i32,
    port: Option<u16>,
}

impl Worker {
    fn new(pid: i32, port: Option<u16>) -> Worker {
        Worker { pid, port }
    }
}

impl Process for Worker {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn port(&self) -> Option<u16> {
        self.port
    }
}

/// Records what the supervisor does; `exits` are what `reap` will report, `ledgers` the
/// models' ledgers as `snapshot` reads them.
#[derive(Default)]
struct Recorder {
    done: Vec<Done>,
    exits: HashMap<i32, Exit>,
    ledgers: HashMap<String, Snapshot>,
    /// The next `set_quota` fails with this.
    quota_fails: Option<String>,
}

impl Effects for Recorder {
    type Worker = Worker;
    type StartError = String;
    fn launch(&mut self, _model: usize, cfg: &ModelConfig, index: u32) {
        self.done.push(Done::Launch(cfg.name.clone(), index));
    }
    fn stop_launching(&mut self) {
        self.done.push(Done::StopLaunching);
    }
    fn set_quota(&mut self, model: &str, quota: QuotaSpec) -> Result<Option<QuotaSpec>, String> {
        self.done.push(Done::SetQuota(model.to_owned(), quota));
        match self.quota_fails.take() {
            Some(why) => Err(why),
            None => Ok(None),
        }
    }
    fn reconfigure(
        &mut self,
        _config: &Config,
        _plan: Option<&Plan>,
        starting: &[&ModelConfig],
    ) -> Result<Vec<(String, String)>, String> {
        let names = starting.iter().map(|m| m.name.clone()).collect();
        self.done.push(Done::Reconfigure(names));
        Ok(Vec::new())
    }
    fn signal(&mut self, pid: i32, signal: Signal) {
        self.done.push(Done::Signal(pid, signal));
    }
    fn reap(&mut self, worker: &Worker) -> Option<Exit> {
        self.exits.remove(&worker.pid)
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
    fn host_memory(&self, _: &Worker) -> Option<u64> {
        None
    }
    fn snapshot(&self, model: &str) -> Result<Snapshot, LedgerError> {
        self.ledgers
            .get(model)
            .cloned()
            .ok_or_else(|| LedgerError::Damaged {
                path: model.into(),
                what: "no ledger in this test".into(),
            })
    }
}

/// The front door as a test sees it: what is routed, what sleeps, and the load it is
/// told to report.
#[derive(Default)]
struct Front {
    /// (model, index) → (port, ready).
    routed: RefCell<BTreeMap<(String, u32), (u16, bool)>>,
    asleep: RefCell<BTreeSet<String>>,
    /// Requests waiting, per model.
    waiting: RefCell<HashMap<String, usize>>,
    /// How long each model's routed instances have been idle (zero: busy, one in flight).
    idle: RefCell<HashMap<String, Duration>>,
    swaps: RefCell<Vec<(String, bool)>>,
    /// What it was last told of each model that cannot serve.
    unavailable: RefCell<HashMap<String, Unavailable>>,
    /// The instances draining, and the requests each still has in flight.
    draining: RefCell<BTreeMap<(String, u32), usize>>,
    /// The models served (added or changed by a reload), and those hidden.
    served: RefCell<Vec<String>>,
    hidden: RefCell<BTreeSet<String>>,
    /// Models a request reaches between the core's reading of the load and its putting
    /// them to sleep ([`Door::sleep_if_idle`]).
    arriving: RefCell<BTreeSet<String>>,
}

impl Front {
    fn asleep(&self, model: &str) -> bool {
        self.asleep.borrow().contains(model)
    }
    fn ready(&self, model: &str, index: u32) {
        if let Some(r) = self.routed.borrow_mut().get_mut(&(model.to_owned(), index)) {
            r.1 = true;
        }
    }
}

impl Door for Front {
    fn started(&self, model: &str, index: u32, port: u16, _owner: Option<Owner>) {
        self.routed
            .borrow_mut()
            .insert((model.to_owned(), index), (port, false));
    }
    fn gone(&self, model: &str, index: u32) {
        self.routed.borrow_mut().remove(&(model.to_owned(), index));
        self.draining
            .borrow_mut()
            .remove(&(model.to_owned(), index));
    }
    fn drain(&self, model: &str, index: u32) {
        self.draining
            .borrow_mut()
            .entry((model.to_owned(), index))
            .or_insert(0);
    }
    fn serve(&self, model: &str, _serve: &crate::config::Serve) {
        self.served.borrow_mut().push(model.to_owned());
        self.hidden.borrow_mut().remove(model);
    }
    fn hide(&self, model: &str) {
        self.hidden.borrow_mut().insert(model.to_owned());
    }
    fn set_asleep(&self, model: &str, asleep: bool) {
        let mut set = self.asleep.borrow_mut();
        if asleep {
            set.insert(model.to_owned());
        } else {
            set.remove(model);
        }
    }
    fn sleep_if_idle(&self, model: &str) -> bool {
        let busy = self.arriving.borrow().contains(model)
            || self.idle.borrow().get(model).is_some_and(|i| i.is_zero())
            || self.waiting.borrow().get(model).is_some_and(|&w| w > 0);
        if !busy {
            self.set_asleep(model, true);
        }
        !busy
    }
    fn load(&self, model: &str) -> Load {
        let idle = self.idle.borrow().get(model).copied().unwrap_or_default();
        let instances = self
            .routed
            .borrow()
            .iter()
            .filter(|((m, _), _)| m == model)
            .map(|((_, index), &(_, ready))| {
                let busy = idle.is_zero();
                let draining = self
                    .draining
                    .borrow()
                    .get(&(model.to_owned(), *index))
                    .copied();
                let load = InstanceLoad {
                    ready: ready && draining.is_none(),
                    in_flight: draining.unwrap_or(usize::from(busy && ready)),
                    idle,
                };
                (*index, load)
            })
            .collect();
        let waiting = self.waiting.borrow().get(model).copied().unwrap_or(0);
        (waiting, instances)
    }
    fn swapped(&self, model: &str, out: bool, _seconds: f64) {
        self.swaps.borrow_mut().push((model.to_owned(), out));
    }
    fn unavailable(&self, model: &str, why: Option<Unavailable>) {
        let mut told = self.unavailable.borrow_mut();
        match why {
            Some(why) => told.insert(model.to_owned(), why),
            None => told.remove(model),
        };
    }
}

type Sup = Supervisor<Recorder, Front>;

const MS: Duration = Duration::from_millis(1);

fn supervisor(models: &str) -> (Sup, Instant) {
    // The front door's address is only read by the composition root: nothing listens.
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
        Supervisor::new(config, None, Recorder::default(), Front::default()),
        Instant::now(),
    )
}

const ONE: &str = "[[model]]\nname = \"a\"\ncommand = \"/bin/true\"\nbackoff_initial = \"100ms\"\n";

fn taken(s: &mut Sup) -> Vec<Done> {
    std::mem::take(&mut s.effects.done)
}

fn instance(s: &Sup, now: Instant) -> InstanceStatus {
    s.status(now).models[0].instances[0].clone()
}

/// An exit with `code`.
fn exited(code: i32) -> Exit {
    Exit {
        code,
        oom_killed: false,
    }
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
    s.launched(1, 1, Err("nope: not found in PATH".into()), t + MS);
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
        matches!(
            answer,
            Answer::Done {
                action: api::Action::Stop,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Term)]);
    s.tick(t + 999 * MS);
    assert_eq!(taken(&mut s), []);
    s.tick(t + 1000 * MS);
    assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Kill)]);
    s.effects.exits.insert(100, exited(137)); // killed by SIGKILL
    s.tick(t + 1001 * MS);
    assert_eq!(taken(&mut s), [Done::Release("a".into(), 100)]);
    let i = instance(&s, t);
    assert_eq!(
        (i.state.as_str(), i.last_exit, i.restarts),
        ("stopped", Some(137), 0)
    );
    assert!(matches!(s.handle(Request::Stop("zz".into()), t), Answer::NoSuchModel(n) if n == "zz"));
}

/// What the node reports when request `generation` of model `a` ended with `outcome`,
/// in 2.5 ms.
fn power_request(generation: u32, hibernated: bool, outcome: PowerOutcome) -> PowerReport {
    power_report("a", generation, hibernated, outcome)
}

/// What the node reports when request `generation` of `model` ended with `outcome`.
fn power_report(
    model: &str,
    generation: u32,
    hibernated: bool,
    outcome: PowerOutcome,
) -> PowerReport {
    let mut report = PowerReport::new(model, hibernated, outcome);
    report.generation = generation;
    report.duration_ms = 2.5;
    report
}

fn failure(hibernated: bool, why: &str) -> PowerReport {
    let mut report = PowerReport::new("a", hibernated, PowerOutcome::Failed);
    report.error = Some(why.into());
    report
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
            timeout: crate::config::DEFAULT_SWAP_TIMEOUT,
        })]
    );
    assert!(
        rx.try_recv().is_err(),
        "not answered before the processes are"
    );
    assert_eq!(s.model_status(0, t).state, "hibernated");
    s.powered(1, power_request(1, true, DONE));
    let report = reported(&mut rx);
    assert_eq!(
        (report.action, report.outcome),
        (PowerAction::Hibernate, DONE)
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
    s.powered(2, power_request(2, false, PowerOutcome::Superseded));
    assert_eq!(reported(&mut rx1).outcome, PowerOutcome::Superseded);
    s.powered(3, failure(true, "ledger /l/a: cannot open: gone"));
    let failed = reported(&mut rx2);
    assert_eq!(failed.outcome, PowerOutcome::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("ledger /l/a: cannot open: gone")
    );
    s.powered(99, failure(true, "an unknown request: ignored"));

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
    let (mut s, t) = supervisor(&ONE.replace("command = ", "freeze_hibernated = true\ncommand = "));
    s.begin(t);
    s.launched(0, 0, Ok(Worker::new(100, None)), t);
    taken(&mut s);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", true, tx);
    taken(&mut s);
    s.powered(1, power_request(1, true, DONE));
    assert_eq!(taken(&mut s), [Done::Freeze(100, true)]);
    assert!(s.model_status(0, t).swap.frozen);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", false, tx);
    let done = taken(&mut s);
    assert_eq!(done[0], Done::Freeze(100, false));
    assert!(matches!(&done[1], Done::Power(j) if !j.hibernate));
    s.powered(2, power_request(2, false, DONE));
    // Frozen again, then stopped: thawed first.
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", true, tx);
    s.powered(3, power_request(3, true, DONE));
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
    s.powered(1, power_request(1, true, DONE));
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
    assert!(s.door.asleep("a"));
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", false, tx);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", true, tx);
    taken(&mut s);
    // The first hibernate ends while the others are under way: no freeze.
    s.powered(1, power_request(1, true, DONE));
    // The wake ends after the second hibernate was sent: still asleep.
    s.powered(2, power_request(2, false, DONE));
    assert!(s.door.asleep("a"));
    assert_eq!(taken(&mut s), []);
    // The last one ends: frozen now.
    s.powered(3, power_request(3, true, DONE));
    assert_eq!(taken(&mut s), [Done::Freeze(100, true)]);
    assert!(s.door.asleep("a"));
}

#[test]
fn a_shutdown_waits_for_launches_under_way_and_stops_what_they_started() {
    let (mut s, t) = supervisor(ONE);
    s.begin(t);
    taken(&mut s);
    s.shutdown(t);
    // Launches under way are told to end soon (a build is killed), and still answered.
    assert_eq!(taken(&mut s), [Done::StopLaunching]);
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
    assert!(!s.door().load("a").1[&0].ready, "routed, not ready");
    s.tick(t + 1999 * MS);
    assert_eq!(taken(&mut s), []);
    s.tick(t + 2000 * MS);
    assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Term)]);
    assert!(
        s.door().load("a").1.is_empty(),
        "no request goes to it any more"
    );
    assert!(
        instance(&s, t)
            .error
            .unwrap()
            .contains("serve.ready_timeout")
    );
    s.effects.exits.insert(100, exited(143));
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
    s.effects.exits.insert(100, exited(143));
    s.tick(t + MS);
    assert_eq!(
        taken(&mut s),
        [Done::Release("a".into(), 100), Done::Launch("a".into(), 0)]
    );
}

const GIB: u64 = 1 << 30;
const GPU: GpuUuid = GpuUuid([7; 16]);

/// Model `model`'s ledger on one 10 GiB GPU: a quota of `quota` GiB, `used` GiB charged.
fn ledger(model: &str, quota: u64, used: u64) -> Snapshot {
    let (quota, used) = (quota * GIB, used * GIB);
    Snapshot {
        model: model.into(),
        quota: Some(cuvisor_common::size::QuotaSpec::Bytes(quota)),
        gpus: vec![GpuUsage {
            uuid: GPU,
            quota_bytes: Some(quota),
            physical: 10 * GIB,
            used,
            peak: used,
            refused: 0,
        }],
        used,
        uncertain: 0,
        refused: 0,
        processes: Vec::new(),
        power: Default::default(),
    }
}

/// Three served models on one GPU: `a` and `b` always running, `c` scaled to zero. `a`
/// has been idle for 30 s, `b` for 5 s; each of them holds 4 of the GPU's 10 GiB.
fn crowded() -> (Sup, Instant) {
    let model = |name: &str, quota: u64, scaled: bool| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"/bin/true\"\ngpu_quota = \"{quota}GiB\"\n{}\
             [model.serve]\nhealth = \"/h\"\n",
            if scaled {
                "min_instances = 0\nmax_instances = 1\n"
            } else {
                ""
            }
        )
    };
    let (mut s, t) = supervisor(&format!(
        "{}{}{}",
        model("a", 4, false),
        model("b", 4, false),
        model("c", 6, true)
    ));
    for (name, used) in [("a", 4), ("b", 4), ("c", 0)] {
        let quota = if name == "c" { 6 } else { 4 };
        s.effects
            .ledgers
            .insert(name.into(), ledger(name, quota, used));
    }
    s.begin(t);
    s.launched(0, 0, Ok(Worker::new(100, Some(41000))), t);
    s.launched(1, 0, Ok(Worker::new(101, Some(41001))), t);
    s.door.ready("a", 0);
    s.door.ready("b", 0);
    s.tick(t);
    s.door
        .idle
        .borrow_mut()
        .insert("a".into(), Duration::from_secs(30));
    s.door
        .idle
        .borrow_mut()
        .insert("b".into(), Duration::from_secs(5));
    taken(&mut s);
    (s, t)
}

fn hibernates(done: &[Done]) -> Vec<(u64, String)> {
    done.iter()
        .filter_map(|d| match d {
            Done::Power(j) if j.hibernate => Some((j.id, j.model.clone())),
            _ => None,
        })
        .collect()
}

/// A cold start under pressure: `c`'s 6 GiB do not fit beside `a` and `b` (8 of 10 GiB),
/// so the least recently used idle model (`a`, idle 30 s) is hibernated, and only it:
/// `b` stays, and 4 + 6 GiB fit.
#[test]
fn a_cold_start_pushes_out_the_least_recently_used_idle_model_only() {
    let (mut s, t) = crowded();
    s.door.waiting.borrow_mut().insert("c".into(), 1);
    s.tick(t + MS);
    let done = taken(&mut s);
    assert_eq!(hibernates(&done), [(1, "a".to_owned())], "{done:?}");
    assert!(done.contains(&Done::Launch("c".into(), 0)), "{done:?}");
    assert!(s.door.asleep("a") && !s.door.asleep("b"));
}

/// A busy model is never pushed out: with `a` serving a request, `b` goes instead.
#[test]
fn a_busy_model_is_not_pushed_out() {
    let (mut s, t) = crowded();
    s.door.idle.borrow_mut().insert("a".into(), Duration::ZERO); // one in flight
    s.door.waiting.borrow_mut().insert("c".into(), 1);
    s.tick(t + MS);
    assert_eq!(hibernates(&taken(&mut s)), [(1, "b".to_owned())]);
}

/// Nothing is pushed out when the newcomer fits.
#[test]
fn a_cold_start_that_fits_pushes_out_nothing() {
    let (mut s, t) = crowded();
    s.effects.ledgers.insert("c".into(), ledger("c", 2, 0));
    s.door.waiting.borrow_mut().insert("c".into(), 1);
    s.tick(t + MS);
    let done = taken(&mut s);
    assert_eq!(hibernates(&done), [], "{done:?}");
    assert!(done.contains(&Done::Launch("c".into(), 0)));
}

/// [`crowded`], then `c` running with 4 GiB (idle for 60 s) and `a` hibernated: waking
/// `a` needs 4 GiB more, 12 > 10. Nothing recorded so far is left.
fn crowded_with_a_asleep() -> (Sup, Instant) {
    let (mut s, t) = crowded();
    s.effects.ledgers.insert("c".into(), ledger("c", 6, 4));
    s.handle(Request::Start("c".into()), t);
    s.launched(2, 0, Ok(Worker::new(102, Some(41002))), t);
    s.door.ready("c", 0);
    s.door
        .idle
        .borrow_mut()
        .insert("c".into(), Duration::from_secs(60));
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", true, tx);
    s.powered(1, power_request(1, true, DONE));
    taken(&mut s);
    (s, t)
}

/// A wake that needs room waits until the models pushed out for it have hibernated, and
/// is then sent; it is answered when its own processes are done.
#[test]
fn a_wake_waits_for_the_room_made_for_it() {
    let (mut s, t) = crowded_with_a_asleep();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    s.power("a", false, tx);
    // `c`, idle the longest (60 s), goes first; `a`'s wake is held back.
    assert_eq!(
        taken(&mut s),
        [Done::Power(PowerJob {
            id: 2,
            model: "c".into(),
            hibernate: true,
            timeout: crate::config::DEFAULT_SWAP_TIMEOUT,
        })]
    );
    s.tick(t + MS);
    assert_eq!(taken(&mut s), [], "held back: nothing else is sent");
    assert!(rx.try_recv().is_err());
    assert!(s.door.asleep("a"));

    s.powered(2, power_report("c", 2, true, DONE));
    assert_eq!(
        taken(&mut s),
        [Done::Power(PowerJob {
            id: 3,
            model: "a".into(),
            hibernate: false,
            timeout: crate::config::DEFAULT_SWAP_TIMEOUT,
        })]
    );
    assert!(
        rx.try_recv().is_err(),
        "answered when a's processes are done"
    );
    s.powered(3, power_request(3, false, DONE));
    assert_eq!(reported(&mut rx).outcome, DONE);
    assert!(!s.door.asleep("a") && s.door.asleep("c"));
    assert_eq!(
        *s.door.swaps.borrow(),
        [
            ("a".to_owned(), true),
            ("c".to_owned(), true),
            ("a".to_owned(), false)
        ]
    );
}

/// A wake held back for room is replaced by a newer request for the same model: the
/// waiting caller is told so, and the newer request goes out.
#[test]
fn a_wake_held_back_is_superseded_by_a_newer_request() {
    let (mut s, _) = crowded_with_a_asleep();
    let (tx, mut held) = tokio::sync::oneshot::channel();
    s.power("a", false, tx);
    taken(&mut s);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", true, tx);
    assert_eq!(reported(&mut held).outcome, PowerOutcome::Superseded);
    assert_eq!(hibernates(&taken(&mut s)), [(3, "a".to_owned())]);
    // The push-out it asked for ends: no wake follows.
    s.powered(2, power_report("c", 2, true, DONE));
    assert_eq!(taken(&mut s), []);
}

/// A quota changed live: in the ledger (the effect), then in the model's configuration
/// (its next starts set it again); a ledger that refuses changes nothing.
#[test]
fn a_quota_changed_live_goes_to_the_ledger_then_the_configuration() {
    let (mut s, t) = supervisor(&format!("{ONE}gpu_quota = \"4MiB\"\n"));
    s.begin(t);
    taken(&mut s);
    let eight = QuotaSpec::Bytes(8 << 20);
    assert!(matches!(
        s.handle(Request::SetQuota("zz".into(), eight), t),
        Answer::NoSuchModel(n) if n == "zz"
    ));
    match s.handle(Request::SetQuota("a".into(), eight), t) {
        Answer::Quota { model, from, to } => {
            assert_eq!(model, "a");
            assert_eq!(from, Some(QuotaSpec::Bytes(4 << 20)));
            assert_eq!(to, eight);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(taken(&mut s), [Done::SetQuota("a".into(), eight)]);
    assert_eq!(s.models[0].cfg.gpu_quota, Some(eight));
    s.effects.quota_fails = Some("ledger /l/a: damaged".into());
    match s.handle(Request::SetQuota("a".into(), QuotaSpec::Bytes(1 << 20)), t) {
        Answer::Refused { why, .. } => assert_eq!(why, "ledger /l/a: damaged"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.models[0].cfg.gpu_quota, Some(eight), "unchanged");
    s.shutdown(t);
    assert!(matches!(
        s.handle(Request::SetQuota("a".into(), eight), t),
        Answer::ShuttingDown
    ));
}

/// A served model that cannot start: the front door is told why, and when it starts
/// again, so its requests are answered at once; told again when it may serve.
#[test]
fn the_front_door_is_told_when_a_model_cannot_serve() {
    let (mut s, t) = supervisor(&format!("{ONE}[model.serve]\nhealth = \"/health\"\n"));
    s.begin(t);
    taken(&mut s);
    s.launched(0, 0, Err("no such program".into()), t);
    let told = s.door.unavailable.borrow().get("a").cloned();
    let retry = t + Duration::from_millis(100);
    assert_eq!(
        told,
        Some(Unavailable {
            error: "no such program".into(),
            retry_at: Some(retry),
        })
    );
    // Its backoff ends: it starts again, and may serve.
    s.tick(retry);
    assert_eq!(taken(&mut s), [Done::Launch("a".into(), 0)]);
    assert!(s.door.unavailable.borrow().is_empty());
}

/// A served model running `/bin/true` (the recorder starts nothing) under `name`.
fn served(name: &str, extra: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"/bin/true\"\nargs = [\"{{port}}\"]\n{extra}[model.serve]\nhealth = \"/h\"\n"
    )
}

fn config_of(models: &str) -> Config {
    let text = format!(
        "[supervisor]\nsocket = \"/nonexistent/s\"\nledger_dir = \"/nonexistent/l\"\n\
         grace_period = \"1s\"\nhttp = \"127.0.0.1:9\"\n{models}"
    );
    Config::parse(Path::new("test.toml"), &text).expect("a valid config")
}

fn reloaded(answer: Answer) -> Vec<String> {
    match answer {
        Answer::Reloaded(said) => said,
        other => panic!("{other:?}"),
    }
}

/// A removed model's instance drains (no new request, its own in flight finish), then
/// is stopped and gone from the status; an unchanged one is not touched; an added one
/// starts at once.
#[test]
fn a_reload_drains_a_removed_model_and_starts_an_added_one() {
    let (mut s, t) = supervisor(&format!("{}{}", served("keep", ""), served("gone", "")));
    s.begin(t);
    s.launched(0, 0, Ok(Worker::new(100, Some(7000))), t);
    s.launched(1, 0, Ok(Worker::new(200, Some(7001))), t);
    s.door().ready("keep", 0);
    s.door().ready("gone", 0);
    s.tick(t);
    taken(&mut s);
    // Two requests in flight on the instance to drain.
    s.door().draining.borrow_mut().insert(("gone".into(), 0), 2);
    let new = config_of(&format!("{}{}", served("keep", ""), served("new", "")));
    let said = reloaded(s.reload(new, None, t + MS));
    assert_eq!(
        said,
        [
            "model keep: unchanged",
            "model new: added",
            "model gone: removed: its instances drain, then stop",
        ]
    );
    assert_eq!(
        taken(&mut s),
        [
            Done::Reconfigure(vec!["new".into()]),
            Done::Launch("new".into(), 0)
        ]
    );
    assert!(s.door().hidden.borrow().contains("gone"));
    // While they are in flight, nothing is signalled.
    s.tick(t + 500 * MS);
    assert_eq!(taken(&mut s), []);
    assert_eq!(s.status(t).models[1].instances[0].state, "draining");
    // They finish: SIGTERM.
    s.door().draining.borrow_mut().insert(("gone".into(), 0), 0);
    s.tick(t + 600 * MS);
    assert_eq!(taken(&mut s), [Done::Signal(200, Signal::Term)]);
    s.effects.exits.insert(200, exited(143));
    s.tick(t + 700 * MS);
    assert_eq!(taken(&mut s), [Done::Release("gone".into(), 200)]);
    let names: Vec<String> = s.status(t).models.into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["keep", "new"]);
    assert!(matches!(
        s.handle(Request::Start("gone".into()), t),
        Answer::NoSuchModel(_)
    ));

    // A drain that does not end in the grace period (1 s) ends all the same.
    let (mut s, t) = supervisor(&served("slow", ""));
    s.begin(t);
    s.launched(0, 0, Ok(Worker::new(300, Some(7002))), t);
    s.door().ready("slow", 0);
    s.tick(t);
    taken(&mut s);
    s.door().draining.borrow_mut().insert(("slow".into(), 0), 1);
    reloaded(s.reload(config_of(&served("other", "")), None, t));
    taken(&mut s);
    s.tick(t + 999 * MS);
    assert_eq!(taken(&mut s), []);
    assert_eq!(s.next_deadline(), Some(t + 1000 * MS));
    s.tick(t + 1000 * MS);
    assert_eq!(taken(&mut s), [Done::Signal(300, Signal::Term)]);
}

/// A changed model: a new instance (a fresh index) starts; the old one drains only once
/// the new one is ready, and is never restarted; with a quota (shared by old and new
/// processes) the old one goes first.
#[test]
fn a_changed_model_rolls_new_before_old_and_old_first_with_a_quota() {
    let (mut s, t) = supervisor(&served("m", "env = { V = \"1\" }\n"));
    s.begin(t);
    s.launched(0, 0, Ok(Worker::new(100, Some(7000))), t);
    s.door().ready("m", 0);
    s.tick(t);
    taken(&mut s);
    let said = reloaded(s.reload(config_of(&served("m", "env = { V = \"2\" }\n")), None, t));
    assert_eq!(said, ["model m: replaced by rolling instances"]);
    assert_eq!(
        taken(&mut s),
        [
            Done::Reconfigure(vec!["m".into()]),
            Done::Launch("m".into(), 1)
        ]
    );
    s.launched(0, 1, Ok(Worker::new(101, Some(7001))), t + MS);
    s.tick(t + 2 * MS);
    assert_eq!(taken(&mut s), [], "the new one is not ready yet");
    s.door().ready("m", 1);
    s.tick(t + 3 * MS);
    assert_eq!(taken(&mut s), [Done::Signal(100, Signal::Term)]);
    // The old one exits: released, not restarted, gone from the status.
    s.effects.exits.insert(100, exited(143));
    s.tick(t + 4 * MS);
    assert_eq!(taken(&mut s), [Done::Release("m".into(), 100)]);
    s.tick(t + 10 * MS);
    assert_eq!(taken(&mut s), []);
    let m = &s.status(t).models[0];
    assert_eq!(m.instances.len(), 1);
    assert_eq!((m.instances[0].index, m.instances[0].pid), (1, Some(101)));

    // With a quota: the old instance drains first; the new one starts once it is gone.
    let (mut s, t) = supervisor(&served("q", "gpu_quota = \"1GiB\"\nenv = { V = \"a\" }\n"));
    s.begin(t);
    s.launched(0, 0, Ok(Worker::new(200, Some(7002))), t);
    s.door().ready("q", 0);
    s.tick(t);
    taken(&mut s);
    let changed = served("q", "gpu_quota = \"1GiB\"\nenv = { V = \"b\" }\n");
    reloaded(s.reload(config_of(&changed), None, t));
    assert_eq!(
        taken(&mut s),
        [
            Done::Reconfigure(vec!["q".into()]),
            Done::Signal(200, Signal::Term)
        ]
    );
    s.effects.exits.insert(200, exited(143));
    s.tick(t + MS);
    assert_eq!(
        taken(&mut s),
        [Done::Release("q".into(), 200), Done::Launch("q".into(), 1)]
    );
}

/// A reload that changes `[supervisor]` changes nothing; a quota alone changes live.
#[test]
fn a_reload_refuses_supervisor_keys_and_changes_a_quota_live() {
    let (mut s, t) = supervisor(&served("q", "gpu_quota = \"1GiB\"\n"));
    s.begin(t);
    s.launched(0, 0, Ok(Worker::new(100, Some(7000))), t);
    taken(&mut s);
    let mut other = config_of(&served("q", "gpu_quota = \"2GiB\"\n"));
    other.supervisor.grace_period = Duration::from_secs(5);
    match s.reload(other, None, t) {
        Answer::ReloadRefused(why) => assert_eq!(
            why,
            ["[supervisor] grace_period changed: it takes a restart of the supervisor"]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(taken(&mut s), []);
    let said = reloaded(s.reload(config_of(&served("q", "gpu_quota = \"2GiB\"\n")), None, t));
    assert_eq!(
        said,
        ["model q: quota 1.0 GiB/GPU -> 2.0 GiB/GPU (changed live)"]
    );
    assert_eq!(
        taken(&mut s),
        [
            Done::Reconfigure(vec![]),
            Done::SetQuota("q".into(), QuotaSpec::Bytes(2 << 30))
        ]
    );
    assert_eq!(s.status(t).models[0].instances[0].pid, Some(100));
}

/// Ticks just before `at`, when nothing may be sent, then at `at`: what is sent then.
fn sent_at(s: &mut Sup, at: Instant) -> Vec<(String, bool)> {
    s.tick(at - MS);
    assert_eq!(powers(&taken(s)), [], "sent before {at:?}");
    s.tick(at);
    powers(&taken(s))
}

/// The wakes and hibernates sent: (model, hibernate).
fn powers(done: &[Done]) -> Vec<(String, bool)> {
    done.iter()
        .filter_map(|d| match d {
            Done::Power(j) => Some((j.model.clone(), j.hibernate)),
            _ => None,
        })
        .collect()
}

/// Collation and hysteresis: `a`'s requests would have to push out `c` or `b`, both used
/// within `swap_protect`; they wait for room rather than evict a model that just served.
/// When `c` has been idle long enough, it goes and `a` wakes; had it not, `a` would have
/// woken at its patience all the same (`swap_patience`, no swap having been measured),
/// pushing out the one that makes room with the fewest bytes, the least recently used on
/// a tie (`b`).
#[test]
fn a_wake_for_requests_waits_for_room_then_patience() {
    let s_ = Duration::from_secs(1);
    // Room comes: c turns cold.
    let (mut s, t) = crowded_with_a_asleep();
    s.door.idle.borrow_mut().insert("c".into(), 2 * s_);
    s.door.waiting.borrow_mut().insert("a".into(), 1);
    s.tick(t);
    assert_eq!(
        powers(&taken(&mut s)),
        [],
        "a waits: c and b were just used"
    );
    s.tick(t + 4 * s_);
    assert_eq!(powers(&taken(&mut s)), []);
    s.door.idle.borrow_mut().insert("c".into(), 60 * s_);
    s.tick(t + 4 * s_ + MS);
    assert_eq!(powers(&taken(&mut s)), [("c".to_owned(), true)]);

    // No room comes: at its patience a wakes, pushing out b (4 GiB, used 5 s ago) rather
    // than c (4 GiB, used 2 s ago).
    let (mut s, t) = crowded_with_a_asleep();
    let patience = s.config().supervisor.swap_patience;
    assert_eq!(patience, 5 * s_, "the default");
    s.door.idle.borrow_mut().insert("c".into(), 2 * s_);
    s.door.waiting.borrow_mut().insert("a".into(), 1);
    s.tick(t);
    assert_eq!(sent_at(&mut s, t + patience), [("b".to_owned(), true)]);
}

/// `crowded_with_a_asleep`, a's hibernate having measured the link at 8 GiB/s (4 GiB in
/// 0.5 s), c awake and 4 GiB used.
fn crowded_on_a_measured_link() -> (Sup, Instant) {
    let (mut s, t) = crowded();
    s.effects.ledgers.insert("c".into(), ledger("c", 6, 4));
    s.handle(Request::Start("c".into()), t);
    s.launched(2, 0, Ok(Worker::new(102, Some(41002))), t);
    s.door.ready("c", 0);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", true, tx);
    let mut report = power_request(1, true, DONE);
    (report.moved_bytes, report.duration_ms) = (4 * GIB, 500.0);
    s.powered(1, report);
    taken(&mut s);
    (s, t)
}

/// Once a swap has measured the link, a wake waits no longer than the models it would
/// push out take to go out and come back over it: pushing out b's 4 GiB costs 1 s both
/// ways at 8 GiB/s, and a's requests wait 1 s, not `swap_patience`'s 5.
#[test]
fn the_patience_is_the_swap_it_spares_on_the_measured_link() {
    let s_ = Duration::from_secs(1);
    let (mut s, t) = crowded_on_a_measured_link();
    s.door.idle.borrow_mut().insert("c".into(), 2 * s_);
    s.door.waiting.borrow_mut().insert("a".into(), 1);
    s.tick(t);
    assert_eq!(sent_at(&mut s, t + s_), [("b".to_owned(), true)]);
}

/// When busy models hold what a wake needs, pushing out every idle one would not make
/// room, and the driver would page the busy ones out under their requests: the wake
/// waits for them to finish, up to `BUSY_LIMIT`, then wakes beside them.
#[test]
fn a_wake_waits_for_busy_models() {
    let s_ = Duration::from_secs(1);
    // b and c both busy (idle for zero), a request for a.
    let busy = || {
        let (mut s, t) = crowded_on_a_measured_link();
        for name in ["b", "c"] {
            s.door.idle.borrow_mut().insert(name.into(), Duration::ZERO);
        }
        s.door.waiting.borrow_mut().insert("a".into(), 1);
        s.tick(t);
        (s, t)
    };
    // Nothing can go. When c finishes (2 s in), c goes (its 4 GiB were used just now: its
    // patience of 1 s has passed), and a wakes after it.
    let (mut s, t) = busy();
    s.tick(t + 2 * s_ - MS);
    assert_eq!(powers(&taken(&mut s)), [], "nothing can make room yet");
    s.door.idle.borrow_mut().insert("c".into(), MS);
    s.tick(t + 2 * s_);
    assert_eq!(powers(&taken(&mut s)), [("c".to_owned(), true)]);

    // Neither finishes: a still waits, long past `swap_patience`, until the limit.
    let (mut s, t) = busy();
    assert_eq!(
        sent_at(&mut s, t + hibernation::BUSY_LIMIT),
        [("a".to_owned(), false)]
    );
}

/// What holds the GPU is a model without `[model.serve]`, never pushed out: waiting would
/// not help, and after its patience (`swap_patience`, no swap measured) a wakes all the
/// same, beside it; the driver pages.
#[test]
fn a_wake_that_nothing_can_make_room_for_goes_after_its_patience() {
    let (mut s, t) = supervisor(
        "[[model]]\nname = \"a\"\ncommand = \"/bin/true\"\ngpu_quota = \"4GiB\"\n\
         [model.serve]\nhealth = \"/h\"\n\
         [[model]]\nname = \"batch\"\ncommand = \"/bin/true\"\ngpu_quota = \"8GiB\"\n",
    );
    s.effects.ledgers.insert("a".into(), ledger("a", 4, 4));
    s.effects
        .ledgers
        .insert("batch".into(), ledger("batch", 8, 8));
    s.begin(t);
    s.launched(0, 0, Ok(Worker::new(100, Some(41000))), t);
    s.launched(1, 0, Ok(Worker::new(101, None)), t);
    s.door.ready("a", 0);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("a", true, tx);
    s.powered(1, power_request(1, true, DONE));
    taken(&mut s);
    let patience = s.config().supervisor.swap_patience;
    s.door.waiting.borrow_mut().insert("a".into(), 1);
    s.tick(t);
    assert_eq!(sent_at(&mut s, t + patience), [("a".to_owned(), false)]);
}

/// A wake whose requests have all left is abandoned: while it waits for room (nothing is
/// sent), and while room is being made for it (the models pushed out stay out, and it is
/// not sent once they are).
#[test]
fn a_wake_whose_requests_left_is_abandoned() {
    let s_ = Duration::from_secs(1);
    let (mut s, t) = crowded_with_a_asleep();
    s.door.idle.borrow_mut().insert("c".into(), 2 * s_);
    s.door.waiting.borrow_mut().insert("a".into(), 1);
    s.tick(t);
    s.door.waiting.borrow_mut().insert("a".into(), 0);
    s.tick(t + s_);
    s.tick(t + 10 * s_);
    assert_eq!(powers(&taken(&mut s)), [], "not woken for no one");
    assert!(s.door.asleep("a"));

    // Held back while c hibernates for it; its requests leave; c's hibernate ends.
    let (mut s, t) = crowded_with_a_asleep();
    s.door.waiting.borrow_mut().insert("a".into(), 1);
    s.tick(t);
    assert_eq!(powers(&taken(&mut s)), [("c".to_owned(), true)]);
    s.door.waiting.borrow_mut().insert("a".into(), 0);
    s.tick(t + s_);
    s.powered(2, power_report("c", 2, true, DONE));
    assert_eq!(powers(&taken(&mut s)), [], "a is not woken once c is out");
    assert!(s.door.asleep("a"));
}

/// The awake models hold more than their GPU (a, b and c: 12 of 10 GiB): the idle one that
/// makes room with the fewest bytes, used longest ago (a, idle 30 s), hibernates, without
/// any wake asking for it; no more than that.
#[test]
fn awake_models_past_their_gpu_are_brought_within_it() {
    let (mut s, t) = crowded();
    s.effects.ledgers.insert("c".into(), ledger("c", 6, 4));
    s.handle(Request::Start("c".into()), t);
    s.launched(2, 0, Ok(Worker::new(102, Some(41002))), t);
    s.door.ready("c", 0);
    taken(&mut s);
    s.tick(t + MS);
    assert_eq!(powers(&taken(&mut s)), [("a".to_owned(), true)]);
    s.tick(t + 2 * MS);
    assert_eq!(
        powers(&taken(&mut s)),
        [],
        "a is on its way out: nothing more"
    );
}

/// Four 4 GiB models on a 10 GiB GPU: b and c awake, a and d hibernated.
fn two_asleep() -> (Sup, Instant) {
    let model = |name: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"/bin/true\"\ngpu_quota = \"4GiB\"\n\
             [model.serve]\nhealth = \"/h\"\n"
        )
    };
    let (mut s, t) = supervisor(&["a", "b", "c", "d"].map(model).concat());
    for name in ["a", "b", "c", "d"] {
        s.effects.ledgers.insert(name.into(), ledger(name, 4, 4));
    }
    s.begin(t);
    for (m, name) in ["a", "b", "c", "d"].iter().enumerate() {
        s.launched(
            m,
            0,
            Ok(Worker::new(100 + m as i32, Some(41000 + m as u16))),
            t,
        );
        s.door.ready(name, 0);
        s.door
            .idle
            .borrow_mut()
            .insert((*name).into(), Duration::from_secs(60 + m as u64));
    }
    for (id, name) in [(1, "a"), (2, "d")] {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        s.power(name, true, tx);
        s.powered(id, power_report(name, id as u32, true, DONE));
    }
    taken(&mut s);
    (s, t)
}

/// Two wakes never count on the same bytes: a's wake is held back while c leaves for it;
/// d's wake then counts a's 4 GiB as taken, and pushes b out for itself rather than
/// bringing its bytes in beside a's (12 GiB on a 10 GiB GPU). Each is sent once what it
/// waits for has left.
#[test]
fn a_held_back_wake_keeps_its_room() {
    let (mut s, _) = two_asleep();
    let wake = |s: &mut Sup, name: &str| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.power(name, false, tx);
        std::mem::forget(rx);
    };
    wake(&mut s, "a");
    // d (idle 63 s) and a are hibernated; c (62 s) is the least recently used of b and c.
    assert_eq!(powers(&taken(&mut s)), [("c".to_owned(), true)]);
    wake(&mut s, "d");
    assert_eq!(powers(&taken(&mut s)), [("b".to_owned(), true)]);
    s.powered(4, power_report("b", 4, true, DONE));
    assert_eq!(powers(&taken(&mut s)), [], "d still waits for c to leave");
    s.powered(3, power_report("c", 3, true, DONE));
    let sent = powers(&taken(&mut s));
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.contains(&("a".to_owned(), false)) && sent.contains(&("d".to_owned(), false)));
}

/// A wake whose room is still being moved out waits for it: c's hibernate is under way
/// when a's wake is asked, and a, which fits once c has left, is sent only then.
#[test]
fn a_wake_waits_for_the_hibernates_whose_room_it_needs() {
    let (mut s, _) = two_asleep();
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("c", true, tx);
    assert_eq!(powers(&taken(&mut s)), [("c".to_owned(), true)]);
    let (tx, _rx2) = tokio::sync::oneshot::channel();
    s.power("a", false, tx);
    assert_eq!(powers(&taken(&mut s)), [], "b and c still hold 8 of 10 GiB");
    s.powered(3, power_report("c", 3, true, DONE));
    assert_eq!(powers(&taken(&mut s)), [("a".to_owned(), false)]);
}

/// A model to push out that a request reaches just then (after the load was read) stays
/// awake, and the wake for requests that wanted its room is not made: it is weighed again
/// at the next tick, with what has changed.
#[test]
fn a_model_a_request_reaches_as_it_is_pushed_out_stays_awake() {
    let (mut s, t) = two_asleep();
    s.door.waiting.borrow_mut().insert("a".into(), 1);
    s.door.arriving.borrow_mut().insert("c".into());
    s.tick(t);
    assert_eq!(powers(&taken(&mut s)), [], "c stays, a waits");
    assert!(!s.door.asleep("c"));
    assert!(s.door.asleep("a"));
    // The request on c has gone; c is idle again (and still the least recently used).
    s.door.arriving.borrow_mut().clear();
    s.tick(t + MS);
    assert_eq!(powers(&taken(&mut s)), [("c".to_owned(), true)]);
}

/// A model whose wake is under way is never pushed out for another, however long its
/// idle clock says it has been idle: a (idle 100 s by its clock) is being woken by hand
/// when d's wake needs room, and b goes instead.
#[test]
fn a_model_being_woken_is_not_pushed_out() {
    let (mut s, _) = two_asleep();
    let (tx, _rx) = tokio::sync::oneshot::channel();
    s.power("c", true, tx);
    s.powered(3, power_report("c", 3, true, DONE));
    taken(&mut s);
    s.door
        .idle
        .borrow_mut()
        .insert("a".into(), Duration::from_secs(100));
    let (tx, _rx2) = tokio::sync::oneshot::channel();
    s.power("a", false, tx);
    assert_eq!(
        powers(&taken(&mut s)),
        [("a".to_owned(), false)],
        "it fits beside b"
    );
    let (tx, _rx3) = tokio::sync::oneshot::channel();
    s.power("d", false, tx);
    assert_eq!(powers(&taken(&mut s)), [("b".to_owned(), true)]);
}
