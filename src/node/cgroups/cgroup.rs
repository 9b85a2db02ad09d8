//! One worker's cgroup: its processes, limits' usage, OOM kills, the freezer, removal.

use super::files::*;
use std::io::{self};
use std::path::{Path, PathBuf};

/// One worker's cgroup (one directory per v1 controller, or one v2 directory).
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub(super) dirs: Vec<PathBuf>,
    pub(super) v2: bool,
}

impl Cgroup {
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The end of its path as `/proc/PID/cgroup` shows it for its processes:
    /// `/<name>/<leaf>` (what comes before depends on the hierarchy's root and the
    /// reader's cgroup namespace).
    pub fn kernel_path(&self) -> Option<String> {
        let dir = self.dirs.first()?;
        let leaf = dir.file_name()?.to_str()?;
        let name = dir.parent()?.file_name()?.to_str()?;
        Some(format!("/{name}/{leaf}"))
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
