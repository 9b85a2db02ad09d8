//! The composition root: the one place that knows the node, the servers and the core
//! together. [`Running`] is a supervisor at work on a thread of its own: the binary's
//! [`run`], or a Rust program that embeds cuvisor (`examples/embed.rs`), starts one and
//! stops it. Every event reaches its thread through one channel: the servers' calls, the
//! node's reports, signals (where the program forwards them) and the stop; the loop
//! (`supervise`) hands each to the core's [`Supervisor`] with the time.

use crate::config::{Config, RUN_DIR};
use crate::core::Supervisor;
use crate::core::api::{Answer, Call, Closed, Mailbox, Request};
use crate::core::effects::{Door, Load, Owner};
use crate::core::placement::{self, Demand, Plan, PlanError};
use crate::core::status::Status;
use crate::log::log;
use crate::metrics::SwapMetrics;
use crate::node::nvml::{Inventory, NvmlError};
use crate::node::process::{self, LockError, SupervisorLock};
use crate::node::system::{self, Report, SetupError, System};
use crate::serve::gateway::{self, Routes};
use crate::serve::server::{self, ServeError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

pub use crate::node::process::become_subreaper;

/// What reaches a running supervisor's thread.
pub enum Event {
    /// A signal, where the program forwards them: SIGCHLD to reap at once, SIGTERM or
    /// SIGINT to stop.
    Signal(i32),
    /// Stop every worker and end ([`Running::stop`]).
    Stop,
    /// What a server asks: a control request, a hibernate or wake, the front door's demand.
    Call(Call),
    /// What the node reports: a launch's result, a hibernate's or wake's.
    Node(Report),
}

impl From<Call> for Event {
    fn from(call: Call) -> Event {
        Event::Call(call)
    }
}

impl From<Report> for Event {
    fn from(report: Report) -> Event {
        Event::Node(report)
    }
}

/// Why a supervisor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Nvml(#[from] NvmlError),
    #[error("cannot read MemTotal from /proc/meminfo")]
    HostMemory,
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Placement(Vec<PlanError>),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error("the supervisor's thread panicked")]
    Panicked,
}

/// The front door as the core drives it: the routes, and the swap times for the metrics.
pub struct Front {
    routes: Arc<Routes>,
    swaps: SwapMetrics,
}

impl Door for Front {
    fn started(&self, model: &str, index: u32, port: u16, owner: Option<Owner>) {
        self.routes.started(model, index, port, owner);
    }
    fn gone(&self, model: &str, index: u32) {
        self.routes.gone(model, index);
    }
    fn drain(&self, model: &str, index: u32) {
        self.routes.drain(model, index);
    }
    fn serve(&self, model: &str, serve: &crate::config::Serve) {
        self.routes.serve(model, serve);
    }
    fn hide(&self, model: &str) {
        self.routes.hide(model);
    }
    fn set_asleep(&self, model: &str, asleep: bool) {
        self.routes.set_asleep(model, asleep);
    }
    fn sleep_if_idle(&self, model: &str) -> bool {
        self.routes.sleep_if_idle(model)
    }
    fn load(&self, model: &str) -> Load {
        self.routes.load(model)
    }
    fn swapped(&self, model: &str, out: bool, seconds: f64) {
        self.swaps.observe(model, out, seconds);
    }
    fn unavailable(&self, model: &str, why: Option<crate::core::effects::Unavailable>) {
        self.routes.set_unavailable(model, why);
    }
}

/// The mailbox of the supervisor's thread, as a server or the node posts to it.
fn post<T: Into<Event>>(events: &Sender<Event>, message: T) -> Result<(), Closed> {
    events.send(message.into()).map_err(|_| Closed)
}

/// A supervisor at work on a thread of its own, with its control API and, if configured,
/// its front door. A Rust program embeds cuvisor with this:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = cuvisor::config::Config::load(std::path::Path::new("cuvisor.toml"))
///     .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
/// let shim = cuvisor::exec::default_shim().ok_or("libcuvisor_preload.so not found")?;
/// let running = cuvisor::run::Running::start(config, shim)?;
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
            &crate::node::nvml::Nvml,
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
        let (hierarchy, ledgers) = system::prepare(&config, cgroup_root)?;
        let (tx, rx) = channel();
        let sink = tx.clone();
        let report: system::Sink = Arc::new(move |r: Report| post(&sink, r).is_ok());
        let outputs = crate::core::recent::outputs(&config.models);
        let effects = System::new(
            &config,
            hierarchy,
            shim,
            plan.clone(),
            report,
            outputs.clone(),
        )?;
        let routes = Routes::new(&config);
        let swaps = SwapMetrics::default();
        let front = Front {
            routes: routes.clone(),
            swaps: swaps.clone(),
        };
        let settings = config.supervisor.clone();
        let mut sup = Supervisor::new(config, plan, effects, front);
        for (m, why) in ledgers.into_iter().enumerate() {
            if let Some(why) = why {
                let name = sup.config().models[m].name.clone();
                sup.unusable(&name, why.to_string());
            }
        }
        let demand = tx.clone();
        routes.on_demand(move || {
            let _ = demand.send(Event::Call(Call::Demand));
        });
        let mailbox = tx.clone();
        let mailbox: Mailbox = Arc::new(move |call: Call| post(&mailbox, call));
        let front_door = settings.http.map(|_| routes.clone());
        let control = crate::serve::control::serve(&settings, mailbox, front_door, swaps, outputs)?;
        let door = match settings.http {
            None => None,
            Some(addr) => {
                let keys = match &settings.api_keys {
                    Some(path) => Some(crate::config::secrets::read_keys(path).map_err(|why| {
                        ServeError::Secret {
                            key: "api_keys",
                            path: path.clone(),
                            why,
                        }
                    })?),
                    None => None,
                };
                let instances = sup.config().models.iter().map(|m| u64::from(m.instances));
                let configured = settings.http_max_connections;
                let limit =
                    server::connection_limit(configured, process::nofile(), instances.sum());
                if limit < configured {
                    log(&format!(
                        "WARNING: front door: {limit} connections at once, not {configured}: \
                         this process may open {} descriptors (raise its limit, or lower \
                         http_max_connections)",
                        process::nofile()
                    ));
                }
                let door = gateway::serve(addr, routes, keys, limit)?;
                log(&format!(
                    "front door: listening on {addr}, at most {limit} connections at once"
                ));
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
        let _ = self
            .events
            .send(Event::Call(Call::Control(Request::Status(None), tx)));
        match rx.blocking_recv() {
            Ok(Answer::Status(s)) => Ok(s),
            _ => Err(Error::Panicked),
        }
    }

    /// Reads the configuration file again and applies what changed, as `cuvisor reload`
    /// does: a line per model, or every reason it was refused (then nothing changed). It
    /// blocks, as [`Running::status`] does.
    pub fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.events.send(Event::Call(Call::Reload(tx)));
        match rx.blocking_recv() {
            Ok(Answer::Reloaded(said)) => Ok(said),
            Ok(Answer::ReloadRefused(why)) => Err(why),
            Ok(Answer::ShuttingDown) => Err(vec!["the supervisor is stopping".into()]),
            _ => Err(vec![Error::Panicked.to_string()]),
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
fn supervise(sup: &mut Supervisor<System, Front>, events: &Receiver<Event>) {
    sup.begin(Instant::now());
    let subreaper = process::is_subreaper();
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
            Ok(Event::Signal(libc::SIGHUP)) => {
                reload(sup, "SIGHUP", now());
            }
            Ok(Event::Call(Call::Reload(reply))) => {
                let _ = reply.send(reload(sup, "asked", now()));
            }
            Ok(Event::Signal(_) | Event::Call(Call::Demand)) => {}
            Ok(Event::Call(Call::Control(request, reply))) => {
                let _ = reply.send(sup.handle(request, now()));
            }
            Ok(Event::Call(Call::Power {
                model,
                hibernate,
                reply,
            })) => sup.power(&model, hibernate, reply),
            Ok(Event::Node(Report::Powered { id, report })) => sup.powered(id, report),
            Ok(Event::Node(Report::Launched {
                model,
                index,
                result,
            })) => sup.launched(model, index, result, now()),
            // Every sender gone: no one can stop it any more but itself.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => sup.shutdown(now()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        sup.tick(now());
        if subreaper {
            process::reap_orphans(|pid| sup.may_be_a_worker(pid));
        }
        if sup.done() {
            return;
        }
    }
}

/// Reads the supervisor's configuration file again and applies it
/// ([`Supervisor::reload`]), asked by `origin`; its answer, logged too.
fn reload(sup: &mut Supervisor<System, Front>, origin: &str, now: Instant) -> Answer {
    let path = sup.config().path.clone();
    log(&format!("reload ({origin}): {}", path.display()));
    let answer = match read_again(&path) {
        Ok((config, plan)) => sup.reload(config, plan, now),
        Err(errors) => Answer::ReloadRefused(errors),
    };
    if let Answer::ReloadRefused(errors) = &answer {
        log(&format!(
            "reload refused, nothing changed:\n  {}",
            errors.join("\n  ")
        ));
    }
    answer
}

/// The configuration file read again and checked as `cuvisor check` does, and placed:
/// every error otherwise.
pub fn read_again(path: &Path) -> Result<(Config, Option<Plan>), Vec<String>> {
    let config =
        Config::load(path).map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let (errors, _) = crate::cli::problems::problems(&config);
    if !errors.is_empty() {
        let at = |e: String| format!("{}: {e}", path.display());
        return Err(errors.into_iter().map(at).collect());
    }
    let plan = place(&config, &crate::node::nvml::Nvml)
        .map_err(|e| e.to_string().lines().map(str::to_owned).collect::<Vec<_>>())?;
    Ok((config, plan))
}

/// `cuvisor run`: the configuration until SIGTERM or SIGINT, as a child subreaper.
/// Returns the process exit status.
pub fn run(config: Config, shim: PathBuf) -> Result<i32, Error> {
    // Before any thread exists: every thread inherits the blocked signals.
    let set = process::block_signals();
    process::become_subreaper();
    // Before any descriptor is opened for clients: every client holds one.
    process::raise_nofile();
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

/// Places the models that have `gpus` on the node's GPUs (from `inventory`), against the
/// host memory left for what cannot be resident: the host's memory less the models'
/// `memory_limit`s (each times its instances). None when no model has `gpus`; every
/// reason it cannot be done otherwise, one per line.
pub fn place(config: &Config, inventory: &dyn Inventory) -> Result<Option<Plan>, Error> {
    if config.models.iter().all(|m| m.gpus.is_none()) {
        return Ok(None);
    }
    let node = inventory.gpus()?;
    let total = process::host_memory().ok_or(Error::HostMemory)?;
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
