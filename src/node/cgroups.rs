//! Host limits for workers: memory, CPU and pids, through cgroup v2 where the host has it
//! and cgroup v1 where it has that (our CI machines: v1 memory, cpu, pids and freezer
//! controllers on a tmpfs, v2 mounted under `unified` with no controllers); and the
//! freezer, for hibernated workers (`freeze_hibernated`).
//!
//! The hierarchy is detected with `statfs`, never guessed, and controller files are only
//! ever opened without `O_CREAT`: a missing file is an error, never a plain file made in a
//! tmpfs by mistake.

use crate::cpus::CpuSet;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
/// CPU quota period: 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

/// Limits for one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpu_cores: Option<f64>,
    pub pids: Option<u64>,
    /// The CPUs it may run on (cpuset).
    pub cpus: Option<CpuSet>,
    /// The worker may be frozen ([`Cgroup::freeze`]).
    pub freeze: bool,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.memory.is_some()
            || self.cpu_cores.is_some()
            || self.pids.is_some()
            || self.cpus.is_some()
            || self.freeze
    }
}

/// A cgroup operation that failed: what, where, why.
#[derive(Debug)]
pub struct CgroupError {
    pub path: PathBuf,
    pub action: String,
    pub source: io::Error,
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cgroup {}: cannot {}: {}",
            self.path.display(),
            self.action,
            self.source
        )
    }
}

impl std::error::Error for CgroupError {}

fn err<'a>(path: &'a Path, action: &'a str) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError {
        path: path.to_owned(),
        action: action.to_owned(),
        source,
    }
}

/// Writes a controller file that must already exist.
fn write_file(path: &Path, value: &str, action: &str) -> Result<(), CgroupError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err(path, action))?;
    f.write_all(value.as_bytes()).map_err(err(path, action))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The `key N` line of a flat-keyed file (memory.events, memory.oom_control).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether we may create cgroups in `dir`: not on a read-only mount (as in many
/// containers), and ours to write.
fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

const NOT_MOUNTED: &str = "not mounted";
const NOT_WRITABLE: &str = "not writable (a read-only mount, or not root)";

/// One cgroup v1 controller: our parent cgroup in it, or why it cannot be used.
pub type Controller = Result<PathBuf, &'static str>;

fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain data; all zeros is a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs with a valid path and buffer.
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0).then_some(s.f_type)
}

/// Where this host's cgroups are, and which kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Hierarchy {
    /// The unified hierarchy: `base` is our parent cgroup (`<root>/<name>`). `delegated`:
    /// `root` is not the host's root cgroup but one given to us (a container's, seen
    /// through its cgroup namespace): its processes must leave it for a leaf before its
    /// controllers can be given to children (the "no internal processes" rule).
    V2 {
        root: PathBuf,
        base: PathBuf,
        delegated: bool,
    },
    /// Per-controller hierarchies.
    V1 {
        memory: Controller,
        cpu: Controller,
        pids: Controller,
        freezer: Controller,
        cpuset: Controller,
    },
    /// No cgroups: none usable here (`why`), or none wanted.
    None { why: String },
}

impl Hierarchy {
    /// Detects the hierarchy under `fs_root` (normally /sys/fs/cgroup); our cgroups go
    /// under `name` in it.
    pub fn detect(fs_root: &Path, name: &str) -> Hierarchy {
        if fs_magic(fs_root) == Some(CGROUP2_SUPER_MAGIC) {
            return if writable(fs_root) {
                Hierarchy::V2 {
                    root: fs_root.to_owned(),
                    base: fs_root.join(name),
                    // Only a non-root cgroup has cgroup.freeze.
                    delegated: fs_root.join("cgroup.freeze").exists(),
                }
            } else {
                Hierarchy::None {
                    why: format!("cgroup v2 at {} is {NOT_WRITABLE}", fs_root.display()),
                }
            };
        }
        let controller = |c: &str| {
            let dir = fs_root.join(c);
            if fs_magic(&dir) != Some(CGROUP_SUPER_MAGIC) {
                Err(NOT_MOUNTED)
            } else if !writable(&dir) {
                Err(NOT_WRITABLE)
            } else {
                Ok(dir.join(name))
            }
        };
        let (memory, cpu, pids, freezer, cpuset) = (
            controller("memory"),
            controller("cpu"),
            controller("pids"),
            controller("freezer"),
            controller("cpuset"),
        );
        if [&memory, &cpu, &pids, &freezer, &cpuset]
            .iter()
            .all(|c| **c == Err(NOT_MOUNTED))
        {
            Hierarchy::None {
                why: format!("no cgroup controller is mounted at {}", fs_root.display()),
            }
        } else {
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
                cpuset,
            }
        }
    }

    /// Which limits this hierarchy can enforce, for the supervisor's startup message.
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 {
                base, delegated, ..
            } => format!(
                "cgroup v2 at {}{}",
                base.display(),
                if *delegated { " (delegated)" } else { "" }
            ),
            Hierarchy::V1 { .. } => {
                let each: Vec<String> = self
                    .v1_controllers()
                    .into_iter()
                    .map(|(n, c)| match c {
                        Ok(_) => n.to_string(),
                        Err(why) => format!("{n}: {why}"),
                    })
                    .collect();
                format!("cgroup v1 ({})", each.join("; "))
            }
            Hierarchy::None { why } => why.clone(),
        }
    }

    /// Whether every limit in `limits` can be enforced here; if not, why.
    pub fn supports(&self, limits: &Limits) -> Result<(), String> {
        match self {
            Hierarchy::V2 { .. } => Ok(()),
            Hierarchy::None { why } if limits.any() => Err(why.clone()),
            Hierarchy::None { .. } => Ok(()),
            Hierarchy::V1 { .. } => {
                // In the order of `v1_controllers`.
                let wanted = [
                    limits.memory.is_some(),
                    limits.cpu_cores.is_some(),
                    limits.pids.is_some(),
                    limits.freeze,
                    limits.cpus.is_some(),
                ];
                self.v1_controllers()
                    .into_iter()
                    .zip(wanted)
                    .find_map(|((name, c), wanted)| match c {
                        Err(why) if wanted => {
                            Some(format!("the cgroup v1 {name} controller is {why}"))
                        }
                        _ => None,
                    })
                    .map_or(Ok(()), Err)
            }
        }
    }

    /// The v1 controllers, each with its name (none but on cgroup v1).
    fn v1_controllers(&self) -> Vec<(&'static str, &Controller)> {
        match self {
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
                cpuset,
            } => vec![
                ("memory", memory),
                ("cpu", cpu),
                ("pids", pids),
                ("freezer", freezer),
                ("cpuset", cpuset),
            ],
            _ => Vec::new(),
        }
    }

    /// Creates (or reuses) the cgroup `leaf` with `limits` applied. On an error nothing
    /// of it is left behind.
    pub fn create(&self, leaf: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let cpu_quota = limits
            .cpu_cores
            .map(|c| ((c * CPU_PERIOD_US as f64) as u64).max(1000));
        let set = |file: &'static str, value: Option<String>| value.map(|v| (file, v));
        // Each directory to make, and the limit files to write in it.
        let plan: Vec<(PathBuf, Vec<(&'static str, String)>)> = match self {
            Hierarchy::None { .. } => Vec::new(),
            Hierarchy::V2 {
                root,
                base,
                delegated,
            } => {
                if *delegated {
                    enter_leaf(root, base)?;
                }
                std::fs::create_dir_all(base).map_err(err(base, "create"))?;
                // Delegate the controllers down to our cgroups (cpuset only where it is
                // asked for: it pins, and not every host delegates it).
                for parent in [root.as_path(), base.as_path()] {
                    write_file(
                        &parent.join("cgroup.subtree_control"),
                        "+memory +cpu +pids",
                        "enable controllers",
                    )?;
                    if limits.cpus.is_some() {
                        write_file(
                            &parent.join("cgroup.subtree_control"),
                            "+cpuset",
                            "enable the cpuset controller",
                        )?;
                    }
                }
                let files = [
                    set("memory.max", limits.memory.map(|b| b.to_string())),
                    set("cpu.max", cpu_quota.map(|q| format!("{q} {CPU_PERIOD_US}"))),
                    set("pids.max", limits.pids.map(|p| p.to_string())),
                    set("cpuset.cpus", limits.cpus.as_ref().map(ToString::to_string)),
                ];
                vec![(base.join(leaf), files.into_iter().flatten().collect())]
            }
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
                cpuset,
            } => {
                // A cpuset only for workers given CPUs: its memory nodes are its parent's.
                let cpuset_files = match (&limits.cpus, cpuset) {
                    (Some(cpus), Ok(base)) => vec![
                        set("cpuset.mems", Some(v1_cpuset_base(base)?)),
                        set("cpuset.cpus", Some(cpus.to_string())),
                    ],
                    _ => vec![],
                };
                [
                    (
                        memory,
                        vec![set(
                            "memory.limit_in_bytes",
                            limits.memory.map(|b| b.to_string()),
                        )],
                    ),
                    (
                        cpu,
                        vec![
                            set(
                                "cpu.cfs_period_us",
                                cpu_quota.map(|_| CPU_PERIOD_US.to_string()),
                            ),
                            set("cpu.cfs_quota_us", cpu_quota.map(|q| q.to_string())),
                        ],
                    ),
                    (
                        pids,
                        vec![set("pids.max", limits.pids.map(|p| p.to_string()))],
                    ),
                ]
                .into_iter()
                // A freezer cgroup only for workers that may be frozen.
                .chain(limits.freeze.then(|| (freezer, vec![])))
                .chain(limits.cpus.is_some().then_some((cpuset, cpuset_files)))
                .filter_map(|(base, files)| {
                    let dir = base.as_ref().ok()?.join(leaf);
                    Some((dir, files.into_iter().flatten().collect()))
                })
                .collect()
            }
        };
        let mut cg = Cgroup {
            dirs: Vec::new(),
            v2: matches!(self, Hierarchy::V2 { .. }),
        };
        for (dir, files) in plan {
            let made = std::fs::create_dir_all(&dir).map_err(err(&dir, "create"));
            if made.is_ok() {
                cg.dirs.push(dir.clone());
            }
            let written = made.and_then(|()| {
                files.iter().try_for_each(|(file, value)| {
                    write_file(&dir.join(file), value, &format!("set {file}"))
                })
            });
            if let Err(e) = written {
                let _ = cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// Our parent cgroups: one per usable controller (v1), or one (v2).
    fn bases(&self) -> Vec<&PathBuf> {
        match self {
            Hierarchy::V2 { base, .. } => vec![base],
            Hierarchy::V1 { .. } => self
                .v1_controllers()
                .into_iter()
                .filter_map(|(_, c)| c.as_ref().ok())
                .collect(),
            Hierarchy::None { .. } => vec![],
        }
    }

    /// Removes the cgroups under our parent cgroups that `is_ours` recognizes by name: what
    /// a supervisor that died without its shutdown left (called only by the one supervisor
    /// of this parent). Whatever is still in them is killed first. Returns each cgroup
    /// removed, or why it could not be.
    pub fn remove_leftovers(
        &self,
        is_ours: impl Fn(&str) -> bool,
    ) -> Vec<Result<PathBuf, CgroupError>> {
        let v2 = matches!(self, Hierarchy::V2 { .. });
        self.bases()
            .into_iter()
            .filter_map(|b| std::fs::read_dir(b).ok())
            .flatten()
            .filter_map(|e| {
                let e = e.ok()?;
                (e.file_type().ok()?.is_dir() && is_ours(e.file_name().to_str()?)).then(|| e.path())
            })
            .map(|dir| {
                let cg = Cgroup {
                    dirs: vec![dir.clone()],
                    v2,
                };
                cg.remove().map(|()| dir)
            })
            .collect()
    }

    /// Removes our parent cgroups if they are empty (at shutdown).
    pub fn remove_base(&self) {
        for b in self.bases() {
            let _ = std::fs::remove_dir(b);
        }
    }
}

/// Moves every process of the delegated cgroup `root` (this supervisor, and whatever else
/// its container runs there) into the leaf `<base>.supervisor` beside `base`, so that
/// `root` can give its controllers to the workers' cgroups. Nothing to do once it is
/// empty.
fn enter_leaf(root: &Path, base: &Path) -> Result<(), CgroupError> {
    let procs = root.join("cgroup.procs");
    let pids = std::fs::read_to_string(&procs).map_err(err(&procs, "read"))?;
    let pids: Vec<&str> = pids
        .lines()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if pids.is_empty() {
        return Ok(());
    }
    let mut leaf = base.as_os_str().to_owned();
    leaf.push(".supervisor");
    let leaf = PathBuf::from(leaf);
    std::fs::create_dir_all(&leaf).map_err(err(&leaf, "create"))?;
    for pid in pids {
        // One write per process (the kernel takes one pid per write); one that has exited
        // meanwhile is gone from `root` anyway.
        match write_file(
            &leaf.join("cgroup.procs"),
            pid,
            "move the supervisor to a leaf",
        ) {
            Err(e) if e.source.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Our parent cgroup in the v1 cpuset hierarchy, made usable: a v1 cpuset takes no
/// process and no child until its `cpuset.cpus` and `cpuset.mems` are set, so a new one
/// gets its parent's. Returns its memory nodes (for the workers' cpusets).
fn v1_cpuset_base(base: &Path) -> Result<String, CgroupError> {
    std::fs::create_dir_all(base).map_err(err(base, "create"))?;
    let parent = base.parent().unwrap_or(base);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let path = base.join(file);
        let now = std::fs::read_to_string(&path).map_err(err(&path, "read"))?;
        if now.trim().is_empty() {
            let from = parent.join(file);
            let value = std::fs::read_to_string(&from).map_err(err(&from, "read"))?;
            write_file(&path, value.trim(), &format!("set {file}"))?;
        }
    }
    let mems = base.join("cpuset.mems");
    Ok(std::fs::read_to_string(&mems)
        .map_err(err(&mems, "read"))?
        .trim()
        .to_owned())
}

/// One worker's cgroup (one directory per v1 controller, or one v2 directory).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves a process (and so its future children) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write_file(
                &dir.join("cgroup.procs"),
                &pid.to_string(),
                "add the worker",
            )?;
        }
        Ok(())
    }

    /// Its directory of v1 controller `controller` (`<root>/<controller>/<name>/<leaf>`),
    /// or its one v2 directory.
    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| {
                self.v2
                    || d.parent()
                        .and_then(Path::parent)
                        .is_some_and(|p| p.ends_with(controller))
            })
            .map(PathBuf::as_path)
    }

    fn memory_dir(&self) -> Option<&Path> {
        self.dir_of("memory")
    }

    /// Its memory controller's directory, and whether that is cgroup v2.
    pub fn memory_files(&self) -> Option<(PathBuf, bool)> {
        self.memory_dir().map(|d| (d.to_owned(), self.v2))
    }

    /// Freezes (`true`) or thaws every process of the cgroup. A freeze returns once the
    /// kernel says the cgroup is frozen (at most 1 s). A frozen process runs nothing:
    /// it must be thawed before it is asked anything, or signalled (a cgroup v1 freezer
    /// holds even SIGKILL until the thaw).
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let dir = self.dir_of("freezer").ok_or_else(|| CgroupError {
            path: self.dirs.first().cloned().unwrap_or_default(),
            action: "freeze".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "the worker has no freezer cgroup"),
        })?;
        let (file, value, done) = match (self.v2, frozen) {
            (true, _) => ("cgroup.freeze", if frozen { "1" } else { "0" }, None),
            (false, true) => ("freezer.state", "FROZEN", Some("FROZEN")),
            (false, false) => ("freezer.state", "THAWED", None),
        };
        let action = if frozen { "freeze" } else { "thaw" };
        write_file(&dir.join(file), value, action)?;
        let frozen_now = || match done {
            Some(state) => std::fs::read_to_string(dir.join(file)).is_ok_and(|s| s.trim() == state),
            None if self.v2 && frozen => read_key(&dir.join("cgroup.events"), "frozen") == Some(1),
            None => true,
        };
        for _ in 0..100 {
            if frozen_now() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Not frozen in time (a task stuck in the kernel): thawed again, so that nothing
        // is left to freeze later behind the caller's back.
        let thaw = if self.v2 { "0" } else { "THAWED" };
        let _ = write_file(&dir.join(file), thaw, "thaw");
        Err(err(dir, action)(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel did not say it was frozen within 1 s; thawed again",
        )))
    }

    /// Host memory in use by the worker's processes.
    pub fn memory_current(&self) -> Option<u64> {
        let dir = self.memory_dir()?;
        read_u64(&dir.join(if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        }))
    }

    /// How many processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        let dir = self.memory_dir()?;
        read_key(
            &dir.join(if self.v2 {
                "memory.events"
            } else {
                "memory.oom_control"
            }),
            "oom_kill",
        )
    }

    pub fn procs(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// SIGKILLs whatever is left in the cgroup, waits for it to empty, removes it. A
    /// frozen cgroup is thawed first (a cgroup v1 freezer holds even SIGKILL).
    pub fn remove(&self) -> Result<(), CgroupError> {
        if !self.v2
            && let Some(dir) = self.dir_of("freezer")
        {
            let _ = write_file(&dir.join("freezer.state"), "THAWED", "thaw");
        }
        for _ in 0..200 {
            let left = self.procs();
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: kill(2) on a pid read from our own cgroup.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(dir, "remove")(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a cgroup v2 mount (the kernel would create the files).
    fn fake_v2(tag: &str, leaf: &str) -> (PathBuf, Hierarchy) {
        let root = std::env::temp_dir().join(format!("cuvisor-cgv2-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let base = root.join("cuvisor");
        for dir in [&root, &base, &base.join(leaf)] {
            std::fs::create_dir_all(dir).unwrap();
            for f in [
                "cgroup.subtree_control",
                "cgroup.procs",
                "memory.max",
                "cpu.max",
                "pids.max",
            ] {
                std::fs::write(dir.join(f), "").unwrap();
            }
        }
        std::fs::write(base.join(leaf).join("memory.current"), "1234\n").unwrap();
        std::fs::write(
            base.join(leaf).join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
        )
        .unwrap();
        (
            root.clone(),
            Hierarchy::V2 {
                root,
                base,
                delegated: false,
            },
        )
    }

    #[test]
    fn v2_limits_and_counters() {
        let (root, h) = fake_v2("limits", "m-0");
        let limits = Limits {
            memory: Some(1 << 30),
            cpu_cores: Some(2.5),
            pids: Some(64),
            cpus: None,
            freeze: false,
        };
        assert_eq!(h.supports(&limits), Ok(()));
        let cg = h.create("m-0", &limits).unwrap();
        let read = |f: &str| std::fs::read_to_string(root.join("cuvisor/m-0").join(f)).unwrap();
        assert_eq!(read("memory.max"), "1073741824");
        assert_eq!(read("cpu.max"), "250000 100000");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("cuvisor/cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        cg.add(4242).unwrap();
        assert_eq!(read("cgroup.procs"), "4242");
        assert_eq!(cg.memory_current(), Some(1234));
        assert_eq!(cg.oom_kills(), Some(2));
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A v1 cpuset takes nothing until its CPUs and memory nodes are set: our parent
    /// cpuset gets the root's, a worker's its memory nodes and its CPUs.
    #[test]
    fn a_v1_cpuset_is_made_usable_from_its_parent() {
        let root = std::env::temp_dir().join(format!("cuvisor-cgv1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (top, base, leaf) = (
            root.join("cpuset"),
            root.join("cpuset/cuvisor"),
            root.join("cpuset/cuvisor/m-0"),
        );
        for dir in [&top, &base, &leaf] {
            std::fs::create_dir_all(dir).unwrap();
            for f in ["cpuset.cpus", "cpuset.mems", "cgroup.procs"] {
                std::fs::write(dir.join(f), "").unwrap();
            }
        }
        std::fs::write(top.join("cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(top.join("cpuset.mems"), "0\n").unwrap();
        let h = Hierarchy::V1 {
            memory: Err(NOT_MOUNTED),
            cpu: Err(NOT_MOUNTED),
            pids: Err(NOT_MOUNTED),
            freezer: Err(NOT_MOUNTED),
            cpuset: Ok(base.clone()),
        };
        let limits = Limits {
            cpus: Some("1-2".parse().unwrap()),
            ..Limits::default()
        };
        assert_eq!(h.supports(&limits), Ok(()));
        let cg = h.create("m-0", &limits).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&base.join("cpuset.cpus")), "0-3");
        assert_eq!(read(&base.join("cpuset.mems")), "0");
        assert_eq!(read(&leaf.join("cpuset.mems")), "0");
        assert_eq!(read(&leaf.join("cpuset.cpus")), "1-2");
        assert_eq!(cg.dirs(), [leaf]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn freezing_writes_the_freezer_and_waits_for_the_kernel() {
        let (root, h) = fake_v2("freeze", "m-0");
        let dir = root.join("cuvisor/m-0");
        std::fs::write(dir.join("cgroup.freeze"), "").unwrap();
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        let limits = Limits {
            freeze: true,
            ..Limits::default()
        };
        let cg = h.create("m-0", &limits).unwrap();
        cg.freeze(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "1"
        );
        cg.freeze(false).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "0"
        );
        // A kernel that never says frozen: an error, after 1 s.
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let e = cg.freeze(true).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot freeze: the kernel did not say"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    /// In a container's cgroup (delegated, seen through its cgroup namespace) the
    /// supervisor first moves the cgroup's processes into a leaf of their own.
    #[test]
    fn a_delegated_cgroup_is_emptied_into_a_leaf_first() {
        let (root, h) = fake_v2("delegated", "m-0");
        let Hierarchy::V2 { root: r, base, .. } = h else {
            unreachable!()
        };
        let h = Hierarchy::V2 {
            root: r,
            base,
            delegated: true,
        };
        std::fs::write(root.join("cgroup.procs"), "4242\n").unwrap();
        let leaf = root.join("cuvisor.supervisor");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("cgroup.procs"), "").unwrap();
        h.create("m-0", &Limits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap(),
            "4242"
        );
        assert!(
            h.describe().ends_with("cuvisor (delegated)"),
            "{}",
            h.describe()
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_missing_controller_file_is_an_error_not_a_new_file() {
        let (root, h) = fake_v2("missing", "m-0");
        std::fs::remove_file(root.join("cuvisor/m-0/pids.max")).unwrap();
        let e = h
            .create(
                "m-0",
                &Limits {
                    pids: Some(8),
                    ..Limits::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.action, "set pids.max");
        assert!(
            e.to_string()
                .contains("cuvisor/m-0/pids.max: cannot set pids.max: No such file"),
            "{e}"
        );
        assert!(!root.join("cuvisor/m-0/pids.max").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn detection_of_a_plain_directory_finds_no_controllers() {
        let dir = std::env::temp_dir().join(format!("cuvisor-cgnone-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory")).unwrap();
        let h = Hierarchy::detect(&dir, "cuvisor");
        let why = format!("no cgroup controller is mounted at {}", dir.display());
        assert_eq!(h, Hierarchy::None { why: why.clone() });
        assert_eq!(
            h.supports(&Limits {
                memory: Some(1),
                ..Limits::default()
            }),
            Err(why)
        );
        assert_eq!(h.supports(&Limits::default()), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn v1_partial_support_is_reported() {
        let h = Hierarchy::V1 {
            memory: Ok(PathBuf::from("/x/memory/c")),
            cpu: Err(NOT_MOUNTED),
            pids: Err(NOT_WRITABLE),
            freezer: Err(NOT_MOUNTED),
            cpuset: Err(NOT_MOUNTED),
        };
        assert_eq!(
            h.supports(&Limits {
                cpu_cores: Some(1.0),
                ..Limits::default()
            }),
            Err("the cgroup v1 cpu controller is not mounted".to_owned())
        );
        assert_eq!(
            h.supports(&Limits {
                memory: Some(1),
                pids: Some(1),
                ..Limits::default()
            }),
            Err(
                "the cgroup v1 pids controller is not writable (a read-only mount, or not root)"
                    .to_owned()
            )
        );
        assert_eq!(
            h.supports(&Limits {
                memory: Some(1),
                ..Limits::default()
            }),
            Ok(())
        );
        assert_eq!(
            h.supports(&Limits {
                freeze: true,
                ..Limits::default()
            }),
            Err("the cgroup v1 freezer controller is not mounted".to_owned())
        );
        assert_eq!(
            h.describe(),
            "cgroup v1 (memory; cpu: not mounted; pids: not writable (a read-only mount, or not root); freezer: not mounted; cpuset: not mounted)"
        );
    }
}
