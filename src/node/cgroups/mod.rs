//! Host limits for workers: memory, CPU and pids, through cgroup v2 where the host has it
//! and cgroup v1 where it has that (our CI machines: v1 memory, cpu, pids and freezer
//! controllers on a tmpfs, v2 mounted under `unified` with no controllers); and the
//! freezer, for hibernated workers (`freeze_hibernated`).
//!
//! The hierarchy is detected with `statfs`, never guessed, and controller files are only
//! ever opened without `O_CREAT`: a missing file is an error, never a plain file made in a
//! tmpfs by mistake.
//!
//! `files.rs` reads and writes cgroup files; `cgroup.rs` is one worker's cgroup; this
//! file detects the hierarchy and makes the cgroups.

mod cgroup;
mod files;
#[cfg(test)]
mod tests;

use crate::cpus::CpuSet;
pub use cgroup::Cgroup;
pub use files::CgroupError;
use files::*;
use std::path::{Path, PathBuf};

/// Why the limits asked for cannot be enforced on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// No usable cgroup hierarchy, and why (as its detection found).
    #[error("{0}")]
    NoCgroups(String),
    #[error("the cgroup v1 {controller} controller is {why}")]
    V1Controller {
        controller: &'static str,
        why: &'static str,
    },
}

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

/// One cgroup v1 controller: our parent cgroup in it, or why it cannot be used.
pub type Controller = Result<PathBuf, &'static str>;

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
    pub fn supports(&self, limits: &Limits) -> Result<(), Unsupported> {
        match self {
            Hierarchy::V2 { .. } => Ok(()),
            Hierarchy::None { why } if limits.any() => Err(Unsupported::NoCgroups(why.clone())),
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
                    .find_map(|((controller, c), wanted)| match c {
                        Err(why) if wanted => Some(Unsupported::V1Controller { controller, why }),
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
