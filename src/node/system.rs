//! What the supervisor's decisions do to the system: launching workers (on a thread of
//! their own, so that a slow launch never holds up the supervisor), signalling and
//! reaping them, their cgroups and their ledgers. [`Effects`] (in the core) is the narrow
//! surface the supervisor sees; [`System`] is the real one, and the core's tests put a
//! recording double in its place. What it reports back (a launch's result, a hibernate's)
//! goes to the [`Report`] sink the composition root gives it.

use super::output::{self, Copier};
use crate::cgroups::{Cgroup, CgroupError, Hierarchy, Limits};
use crate::config::{Config, Logs, ModelConfig, SupervisorConfig};
pub use crate::core::effects::{Effects, PowerJob};
use crate::core::effects::{Exit, Owner, Process};
use crate::core::lifecycle::Signal;
use crate::core::placement::Plan;
use crate::core::recent::{Outputs, Recent};
use crate::core::status::PowerReport;
use crate::launch::{self, LaunchError, SpecError};
use crate::ledger::{self, CreateOptions, LedgerError, LedgerFile};
use crate::log::log;
use crate::view::{self, Views};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

/// A worker process that was started.
#[derive(Debug)]
pub struct Worker {
    pub pid: i32,
    /// A served model's instance listens here.
    pub port: Option<u16>,
    /// Its cgroup (None where cgroups are not used).
    pub cgroup: Option<Cgroup>,
    /// The cgroup's OOM kills before it started.
    pub oom_kills_at_start: u64,
    /// Its view of its memory and CPUs is served under this name ([`Views`]).
    pub view: Option<String>,
}

impl Process for Worker {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn port(&self) -> Option<u16> {
        self.port
    }
    /// A socket is the worker's when a process of its cgroup holds it.
    fn owner(&self) -> Option<Owner> {
        let cgroup = self.cgroup.clone()?;
        Some(std::sync::Arc::new(move |inode| {
            let link = format!("socket:[{inode}]");
            cgroup.procs().into_iter().any(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|fd| {
                        std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str())
                    })
            })
        }))
    }
}

impl Worker {
    /// A worker that has no cgroup.
    pub fn new(pid: i32, port: Option<u16>) -> Worker {
        Worker {
            pid,
            port,
            cgroup: None,
            oom_kills_at_start: 0,
            view: None,
        }
    }
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot create a pipe for its output: {0}")]
    Pipe(std::io::Error),
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
    /// Its program, arguments or paths (a program not found, a NUL byte).
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("cannot start the thread that copies its output: {0}")]
    Thread(std::io::Error),
    #[error("the launch panicked (a bug in cuvisor: please report it)")]
    Panicked,
    #[error("its Python environment: {0}")]
    Python(#[from] crate::pyenv::EnvError),
}

/// Why the effects cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "model {model}: its host limits cannot be enforced: {why}; set allow_unlimited = true in [supervisor] to run without them"
    )]
    Unenforced {
        model: String,
        why: crate::cgroups::Unsupported,
    },
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
}

/// What [`System`] reports back to the supervisor, through the sink it was given.
pub enum Report {
    /// The result of [`Effects::launch`].
    Launched {
        model: usize,
        index: u32,
        result: Result<Worker, StartError>,
    },
    /// The result of [`Effects::power`].
    Powered { id: u64, report: PowerReport },
}

/// Where [`System`] sends its reports; false once the supervisor is gone.
pub type Sink = std::sync::Arc<dyn Fn(Report) -> bool + Send + Sync>;

pub use crate::ledger::PowerResult;

/// The real effects. Workers are launched by [`LAUNCHERS`] threads that live as long as
/// this value (a worker's parent-death signal is tied to the thread that started it), so
/// that a launch stuck until its 30 s timeout holds up no other. A model with a Python
/// environment goes to the builder thread first, one build at a time: a build may take
/// minutes, and holds up no launch of another model.
pub struct System {
    jobs: Option<Sender<Job>>,
    builds: Option<Sender<Job>>,
    /// Set when no launch is wanted any more: the build under way is killed.
    cancel: std::sync::Arc<AtomicBool>,
    launchers: Vec<std::thread::JoinHandle<()>>,
    hierarchy: Hierarchy,
    ledger_dir: PathBuf,
    report: Sink,
    views: Option<std::sync::Arc<Views>>,
    /// Where the placed models run (a reload may change it).
    plan: Placed,
    outputs: Outputs,
    allow_unlimited: bool,
}

/// The placement, as the launchers read it at each start.
type Placed = Arc<std::sync::RwLock<Option<Plan>>>;

struct Job {
    model: usize,
    cfg: ModelConfig,
    index: u32,
    /// Its Python environment, once built.
    python: Option<PathBuf>,
}

/// Launches under way at once, at most.
pub const LAUNCHERS: usize = 4;

/// What the launcher threads need to start a worker.
struct Launcher {
    supervisor: SupervisorConfig,
    /// Each model's recent output, which its workers' copies keep.
    outputs: Outputs,
    hierarchy: Hierarchy,
    shim: PathBuf,
    plan: Placed,
    views: Option<std::sync::Arc<Views>>,
}

impl System {
    /// The effects for `config`'s workers, with launch and power results sent to `report`.
    pub fn new(
        config: &Config,
        hierarchy: Hierarchy,
        shim: PathBuf,
        plan: Option<Plan>,
        report: Sink,
        outputs: Outputs,
    ) -> Result<System, SetupError> {
        let views = match view::needed(config) {
            false => None,
            true => {
                let root = Path::new(crate::config::RUN_DIR)
                    .join(format!("{}.view", config.supervisor.cgroup_name));
                let views = Views::mount(&root)
                    .map_err(|source| SetupError::View { path: root, source })?;
                Some(std::sync::Arc::new(views))
            }
        };
        let (jobs, queue) = channel::<Job>();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let plan: Placed = Arc::new(std::sync::RwLock::new(plan));
        let launcher = std::sync::Arc::new(Launcher {
            supervisor: config.supervisor.clone(),
            outputs: outputs.clone(),
            hierarchy: hierarchy.clone(),
            shim,
            plan: plan.clone(),
            views: views.clone(),
        });
        let mut launchers = Vec::with_capacity(LAUNCHERS);
        for _ in 0..LAUNCHERS {
            let (queue, launcher, report) = (queue.clone(), launcher.clone(), report.clone());
            let thread = std::thread::Builder::new()
                .name("launcher".into())
                .spawn(move || {
                    loop {
                        // The lock is held while waiting for a job only, not while launching.
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = job else {
                            return; // the System was dropped: every worker is gone
                        };
                        // Every launch is answered: an instance left Starting would hold
                        // up the shutdown forever.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            launcher.start(&job.cfg, job.index, job.python.as_deref())
                        }))
                        .unwrap_or(Err(StartError::Panicked));
                        let delivered = report(Report::Launched {
                            model: job.model,
                            index: job.index,
                            result,
                        });
                        if !delivered {
                            return; // the supervisor has gone: our workers die with us
                        }
                    }
                })
                .map_err(|e| SetupError::Thread("launcher", e))?;
            launchers.push(thread);
        }
        let (builds, waiting) = channel::<Job>();
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let builder = Builder {
            supervisor: config.supervisor.clone(),
            hierarchy: hierarchy.clone(),
            cancel: cancel.clone(),
        };
        let (ready, report_build) = (jobs.clone(), report.clone());
        let thread = std::thread::Builder::new()
            .name("builder".into())
            .spawn(move || builder.serve(waiting, ready, report_build))
            .map_err(|e| SetupError::Thread("builder", e))?;
        launchers.push(thread);
        Ok(System {
            jobs: Some(jobs),
            builds: Some(builds),
            cancel,
            launchers,
            hierarchy,
            ledger_dir: config.supervisor.ledger_dir.clone(),
            report,
            views,
            plan,
            outputs,
            allow_unlimited: config.supervisor.allow_unlimited,
        })
    }
}

impl Drop for System {
    /// Once every worker is gone: the launchers end, and the cgroups' parent goes.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        drop(self.builds.take());
        drop(self.jobs.take());
        for t in self.launchers.drain(..) {
            let _ = t.join();
        }
        self.hierarchy.remove_base();
    }
}

impl Effects for System {
    type Worker = Worker;
    type StartError = StartError;

    fn launch(&mut self, model: usize, cfg: &ModelConfig, index: u32) {
        let job = Job {
            model,
            cfg: cfg.clone(),
            index,
            python: None,
        };
        let queue = match cfg.python {
            Some(_) => &self.builds,
            None => &self.jobs,
        };
        if let Some(queue) = queue {
            // The launchers and the builder end only when this value is dropped.
            let _ = queue.send(job);
        }
    }

    fn stop_launching(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn set_quota(
        &mut self,
        model: &str,
        quota: crate::size::QuotaSpec,
    ) -> Result<Option<crate::size::QuotaSpec>, String> {
        ledger::set_quota_isolated(&self.ledger_dir, model, Some(quota)).map_err(|e| e.to_string())
    }

    fn reconfigure(
        &mut self,
        config: &Config,
        plan: Option<&Plan>,
        starting: &[&ModelConfig],
    ) -> Result<Vec<(String, String)>, String> {
        // First what can refuse it: nothing is changed until all of it can be done.
        let unviewed: Vec<&str> = starting
            .iter()
            .filter(|m| view::needed_by(m) && self.views.is_none())
            .map(|m| m.name.as_str())
            .collect();
        if !unviewed.is_empty() {
            return Err(format!(
                "model(s) {} have memory_limit, cpus or cpu_limit, and are shown their own \
                 /proc/meminfo and CPUs through a view this supervisor did not mount (none \
                 of its models needed one): it takes a restart of the supervisor",
                unviewed.join(", ")
            ));
        }
        if !self.allow_unlimited {
            for m in starting {
                if let Err(why) = self.hierarchy.supports(&limits(m)) {
                    return Err(SetupError::Unenforced {
                        model: m.name.clone(),
                        why,
                    }
                    .to_string());
                }
            }
        }
        *self.plan.write().unwrap_or_else(|e| e.into_inner()) = plan.cloned();
        self.outputs.add(&config.models);
        let dir = &self.ledger_dir;
        Ok(starting
            .iter()
            .filter_map(|cfg| match prepare_ledger(dir, cfg) {
                Ok(()) => None,
                Err(e) => {
                    log(&format!("model {}: {e}", cfg.name));
                    Some((cfg.name.clone(), e.to_string()))
                }
            })
            .collect())
    }

    fn signal(&mut self, pid: i32, signal: Signal) {
        let sig = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: a worker we started and have not reaped (the supervisor signals only
        // the pids of its running instances, and forgets a pid when it reaps it).
        unsafe { libc::kill(pid, sig) };
    }

    fn reap(&mut self, worker: &Worker) -> Option<Exit> {
        let pid = worker.pid;
        let mut status = 0;
        // SAFETY: waitpid for one child of ours, not blocking.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            // Someone else in this process reaped it (an embedding program waiting for
            // any child): it is gone, how is unknown. Reported as status 255.
            log(&format!(
                "worker {pid} was reaped by someone else: its exit status is unknown"
            ));
            status = 255 << 8;
        } else if got != pid {
            return None;
        }
        let oom_kills = worker.cgroup.as_ref().and_then(Cgroup::oom_kills);
        Some(Exit {
            code: launch::exit_code(status),
            oom_killed: oom_kills.unwrap_or(0) > worker.oom_kills_at_start,
        })
    }

    fn host_memory(&self, worker: &Worker) -> Option<u64> {
        worker.cgroup.as_ref().and_then(Cgroup::memory_current)
    }

    fn snapshot(&self, model: &str) -> Result<ledger::Snapshot, LedgerError> {
        ledger::read_snapshot(&self.ledger_dir, model)
    }

    fn release(&mut self, cfg: &ModelConfig, worker: Worker) {
        if let (Some(views), Some(leaf)) = (&self.views, &worker.view) {
            views.remove(leaf);
        }
        if let Some(cg) = worker.cgroup
            && let Err(e) = cg.remove()
        {
            log(&format!("model {}: {e}", cfg.name));
        }
        reclaim_logged(&self.ledger_dir, &cfg.name);
    }

    fn freeze(&mut self, cfg: &ModelConfig, worker: &Worker, frozen: bool) -> bool {
        let Some(cg) = &worker.cgroup else {
            log(&format!(
                "model {}: worker {} has no cgroup to freeze",
                cfg.name, worker.pid
            ));
            return false;
        };
        match cg.freeze(frozen) {
            Ok(()) => true,
            Err(e) => {
                log(&format!("model {}: {e}", cfg.name));
                false
            }
        }
    }

    fn power(&mut self, job: PowerJob) {
        let (dir, sink) = (self.ledger_dir.clone(), self.report.clone());
        let (id, model, hibernate) = (job.id, job.model.clone(), job.hibernate);
        // A thread per request: they are rare, and one waits as long as the copies take.
        let spawned = std::thread::Builder::new()
            .name("power".into())
            .spawn(move || {
                let result = ledger::power_and_read(&dir, &job.model, job.hibernate, job.timeout);
                let report = PowerReport::from_result(&job.model, job.hibernate, result);
                sink(Report::Powered { id, report });
            });
        if let Err(e) = spawned {
            let why = format!("cannot start the request's thread: {e}");
            let report = PowerReport::from_result(&model, hibernate, Err(why));
            (self.report)(Report::Powered { id, report });
        }
    }
}

/// What the builder thread needs to build environments.
struct Builder {
    supervisor: SupervisorConfig,
    hierarchy: Hierarchy,
    cancel: std::sync::Arc<AtomicBool>,
}

impl Builder {
    /// Builds the environment of each job `waiting`, one at a time, and passes the job on
    /// to the launchers (`ready`), or reports why it could not be built. Once launches
    /// are no longer wanted, every job is answered at once.
    fn serve(&self, waiting: Receiver<Job>, ready: Sender<Job>, report: Sink) {
        for mut job in waiting {
            let Some(spec) = &job.cfg.python else {
                let _ = ready.send(job);
                continue;
            };
            let s = &self.supervisor;
            let name = &job.cfg.name;
            let progress = |line: &str| log(&format!("model {name}: Python environment: {line}"));
            let sandbox = crate::pyenv::Sandbox {
                hierarchy: &self.hierarchy,
                limits: limits(&job.cfg),
                hidden: crate::pyenv::Sandbox::hidden(s),
                cancel: &self.cancel,
                progress: &progress,
            };
            let start = std::time::Instant::now();
            let built = match self.cancel.load(Ordering::Relaxed) {
                true => Err(crate::pyenv::EnvError::Cancelled),
                false => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    s.envs.build(spec, false, &sandbox)
                }))
                .unwrap_or(Err(crate::pyenv::EnvError::Panicked)),
            };
            let took = start.elapsed();
            if let Ok(env) = &built
                && took >= std::time::Duration::from_secs(1)
            {
                // One that was there already is not worth a line at every start.
                log(&format!(
                    "model {}: its Python environment was built in {:.1} s: {}",
                    job.cfg.name,
                    took.as_secs_f64(),
                    env.display()
                ));
            }
            // Its workers' user must be able to run what was built.
            let built = built.and_then(|env| {
                let (python, user) = (env.join("bin/python"), job.cfg.host_user());
                match crate::pyenv::runnable_by(&python, user) {
                    Ok(()) => Ok(env),
                    Err(refused) => Err(crate::pyenv::EnvError::NotRunnable {
                        python,
                        uid: user.0,
                        refused,
                    }),
                }
            });
            match built {
                Ok(env) => {
                    job.python = Some(env);
                    let _ = ready.send(job);
                }
                Err(e) => {
                    let delivered = report(Report::Launched {
                        model: job.model,
                        index: job.index,
                        result: Err(StartError::Python(e)),
                    });
                    if !delivered {
                        return;
                    }
                }
            }
        }
    }
}

impl Launcher {
    /// Starts one worker: its ledger checked, its port chosen, its cgroup made, launched,
    /// with its Python environment (built before) if it has one.
    fn start(
        &self,
        cfg: &ModelConfig,
        index: u32,
        python: Option<&Path>,
    ) -> Result<Worker, StartError> {
        // Again at every start: the worker is shown its ledger, which must be there (made
        // again if someone removed it) and still have the model's quota.
        prepare_ledger(&self.supervisor.ledger_dir, cfg)?;
        let (out_read, out_write) = crate::node::process::pipe().map_err(StartError::Pipe)?;
        let (visible, minors) = {
            let plan = self.plan.read().unwrap_or_else(|e| e.into_inner());
            let plan = plan.as_ref();
            (
                plan.and_then(|p| p.uuids(&cfg.name)),
                plan.and_then(|p| p.minors(&cfg.name)),
            )
        };
        let port = match cfg.serve {
            Some(_) => Some(crate::node::process::free_port().map_err(StartError::Port)?),
            None => None,
        };
        let leaf = format!("{}-{index}", cfg.name);
        let view_dir = self.views.as_ref().map(|v| v.dir(&leaf));
        let mut spec = worker_spec(
            cfg,
            &self.supervisor,
            &self.shim,
            out_write.as_raw_fd(),
            Placement {
                gpus: visible.as_deref(),
                port,
                view: view_dir.as_deref(),
                python,
                gpu_minors: minors.as_deref(),
            },
        )?;
        // Before the worker exists: if the launch fails, the copier sees the end of the
        // pipe (its write end goes with `out_write`) and ends.
        let recent = self.outputs.get(&cfg.name).map(|r| (r, index));
        forward_output(out_read, &self.supervisor.logs, &leaf, recent)
            .map_err(StartError::Thread)?;
        // Last, so that nothing before it can fail and leave the cgroup behind.
        let cgroup = self.hierarchy.create(&leaf, &limits(cfg))?;
        // Its view is served before it starts: its mount namespace binds the files.
        let view = self
            .views
            .as_ref()
            .filter(|_| !spec.binds.is_empty())
            .map(|views| {
                let limit = cfg.cpu_limit.map(|c| (c.ceil() as usize).max(1));
                let host = crate::cpus::CpuSet::online();
                let source = view::Source {
                    memory: cfg
                        .memory_limit
                        .and_then(|l| cgroup.memory_files().map(|(dir, v2)| (dir, v2, l))),
                    cpus: (cfg.cpus.is_some() || limit.is_some())
                        .then(|| host.map(|h| view::shown_cpus(&h, cfg.cpus.as_ref(), limit)))
                        .flatten(),
                    members: cgroup.kernel_path(),
                    owner: cfg.host_user(),
                };
                // Only what it can be shown: a memory limit the host does not enforce is
                // not one to show.
                spec.binds.retain(|(_, target)| {
                    view::FILES
                        .iter()
                        .any(|(f, t)| t.as_bytes() == target.as_bytes() && source.shows(f))
                });
                views.add(&leaf, source);
                leaf.clone()
            });
        let launched = launch::launch(&spec, |pid| cgroup.add(pid as u32)).inspect_err(|_| {
            let _ = cgroup.remove();
            if let (Some(views), Some(leaf)) = (&self.views, &view) {
                views.remove(leaf);
            }
        })?;
        drop(out_write);
        Ok(Worker {
            pid: launched.pid,
            port,
            oom_kills_at_start: cgroup.oom_kills().unwrap_or(0),
            cgroup: Some(cgroup),
            view,
        })
    }
}

/// What must be true before any worker starts: the models' host limits can be enforced
/// (or `allow_unlimited` says to go without), cgroups left by an earlier supervisor are
/// gone, and each model's ledger exists. Returns the cgroup hierarchy and, per model, why
/// its ledger cannot be used (that model cannot run; the others can).
pub fn prepare(
    config: &Config,
    cgroup_root: &Path,
) -> Result<(Hierarchy, Vec<Option<LedgerError>>), SetupError> {
    let hierarchy = Hierarchy::detect(cgroup_root, &config.supervisor.cgroup_name);
    let mut unenforced = Vec::new();
    for m in &config.models {
        if let Err(why) = hierarchy.supports(&limits(m)) {
            if !config.supervisor.allow_unlimited {
                return Err(SetupError::Unenforced {
                    model: m.name.clone(),
                    why,
                });
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
    for why in crate::config::exposure::supervisor_exposure(&config.supervisor) {
        log(&format!("WARNING: {why}"));
    }
    for why in crate::config::exposure::exposures(&config.models) {
        log(&format!("WARNING: {why}"));
    }
    // Only the cgroups this configuration's instances would have (`<model>-<n>`), and
    // environment builds' (`.build-…`, `.resolve-…`): a cgroup_name shared with anything
    // else never gets its other cgroups killed.
    let is_ours = |leaf: &str| {
        leaf.starts_with(".build-")
            || leaf.starts_with(".resolve-")
            || config.models.iter().any(|m| {
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
    let dir = &config.supervisor.ledger_dir;
    let ledgers = config
        .models
        .iter()
        .map(|cfg| match prepare_ledger(dir, cfg) {
            Ok(()) => {
                // What the workers of an earlier supervisor held when they died.
                reclaim_logged(dir, &cfg.name);
                None
            }
            Err(e) => {
                log(&format!("model {}: {e}", cfg.name));
                Some(e)
            }
        })
        .collect();
    Ok((hierarchy, ledgers))
}

pub use super::worker::{Placement, worker_spec};

/// The ledger of a model, made if missing, checked (its quota included) from a copy, and
/// reachable by the model's user: the supervisor never maps a ledger.
fn prepare_ledger(dir: &Path, cfg: &ModelConfig) -> Result<(), ledger::LedgerError> {
    let group = cfg.gid.filter(|_| cfg.uid.is_some()).or(cfg.host_ids);
    match ledger::ensure(dir, &cfg.name, cfg.gpu_quota, CreateOptions { group }) {
        Ok(()) | Err(LedgerError::QuotaMismatch { .. }) => {}
        Err(e) => return Err(e),
    }
    // The quota is the supervisor's: a ledger that has another (an earlier
    // configuration's, a change made live) takes the model's, at each start.
    let had = ledger::read_snapshot(dir, &cfg.name)?.quota;
    if had != cfg.gpu_quota {
        ledger::set_quota_isolated(dir, &cfg.name, cfg.gpu_quota).map_err(|e| match e {
            ledger::IsolatedError::Ledger(e) => e,
            e => LedgerError::Io {
                path: LedgerFile::path_for(dir, &cfg.name),
                action: "change the quota",
                source: std::io::Error::other(e.to_string()),
            },
        })?;
        log(&format!(
            "model {}: its ledger's quota was {}; now {}, as configured",
            cfg.name,
            crate::size::quota_text(had),
            crate::size::quota_text(cfg.gpu_quota)
        ));
    }
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

fn limits(m: &ModelConfig) -> Limits {
    Limits {
        memory: m.memory_limit,
        cpu_cores: m.cpu_limit,
        pids: m.pids_limit,
        cpus: m.cpus.clone(),
        freeze: m.freeze_hibernated,
    }
}

/// Copies a worker's output to the supervisor's stderr or its log file, in bounded chunks
/// ([`super::output`]).
fn forward_output(
    output: OwnedFd,
    logs: &Logs,
    leaf: &str,
    recent: Option<(Arc<Recent>, u32)>,
) -> std::io::Result<()> {
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
    std::thread::Builder::new()
        .name(format!("output-{leaf}"))
        .spawn(move || {
            let mut file = file;
            let (out, prefix): (Box<dyn std::io::Write>, _) = match target {
                Some(f) => (Box::new(f), None),
                None => (Box::new(std::io::stderr()), Some(prefix)),
            };
            let copier = Copier::new(prefix.clone());
            match recent {
                Some((recent, index)) => {
                    let mut tee = output::Tee::new(out, recent, index, prefix);
                    output::copy(&mut file, copier, &mut tee)
                }
                None => output::copy(&mut file, copier, &mut { out }),
            }
        })
        .map(drop)
}
