//! Each model's own view of the machine: `/proc/meminfo` that reports its host memory
//! limit and its cgroup's usage, and `/proc/cpuinfo`, `/proc/stat` and
//! `/sys/devices/system/cpu/online` that list its CPUs (its cpuset, or as many as its CPU
//! limit), so that programs that size themselves from them (psutil, frameworks, glibc's
//! `sysconf(_SC_NPROCESSORS_ONLN)`, Python's `os.cpu_count()`) see the model's share.
//!
//! The supervisor serves the files from a small FUSE filesystem of its own (the `fuser`
//! crate; no daemon to install or manage, and it goes when the supervisor goes), one
//! directory per worker, and each worker's mount namespace binds them over the host's.
//! A file's content is made when it is opened, from the worker's cgroup, by the pure
//! functions below (the host's files and the cgroup's numbers in, text out).

use crate::cpus::CpuSet;
use std::collections::HashMap;

/// The files a worker's view replaces: (name in the view, path in the worker).
pub const FILES: [(&str, &str); 4] = [
    ("meminfo", "/proc/meminfo"),
    ("cpuinfo", "/proc/cpuinfo"),
    ("stat", "/proc/stat"),
    ("online", "/sys/devices/system/cpu/online"),
];

/// The files of [`FILES`] a worker with these limits is shown its own of: `meminfo`
/// with a memory limit, the CPU files with `cpus` or a CPU limit.
pub fn files_for(
    memory_limit: Option<u64>,
    cpus: Option<&CpuSet>,
    cpu_limit: Option<f64>,
) -> impl Iterator<Item = (&'static str, &'static str)> {
    let cpu = cpus.is_some() || cpu_limit.is_some();
    FILES.into_iter().filter(move |(f, _)| {
        if *f == "meminfo" {
            memory_limit.is_some()
        } else {
            cpu
        }
    })
}

/// Whether any model of `config` is shown its own memory or CPUs: one in its own mount
/// namespace with a memory limit, `cpus` or a CPU limit.
pub fn needed(config: &crate::config::Config) -> bool {
    config.models.iter().any(needed_by)
}

/// Whether model `m` is shown its own memory or CPUs.
pub fn needed_by(m: &crate::config::ModelConfig) -> bool {
    m.isolation.mount
        && files_for(m.memory_limit, m.cpus.as_ref(), m.cpu_limit)
            .next()
            .is_some()
}

/// A cgroup's memory, in bytes: its limit, what it uses, and `memory.stat`'s counters
/// under cgroup v2's names (`file`, `anon`, `shmem`, `active_file`, `inactive_file`,
/// `active_anon`, `inactive_anon`; v1's `total_*` counters are given under these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub limit: u64,
    pub usage: u64,
    pub stat: HashMap<String, u64>,
}

/// `/proc/meminfo` for a cgroup: MemTotal is its limit (at most the host's), MemFree what
/// it does not use, MemAvailable that plus its reclaimable page cache, and the page-cache
/// and anonymous lines its own; the lines that are the host's (swap, huge pages,
/// vmalloc) stay as the host's file has them.
pub fn meminfo(host: &str, memory: &Memory) -> String {
    let stat = |key: &str| memory.stat.get(key).copied().unwrap_or(0);
    let host_total = host
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |k| k.saturating_mul(1024));
    let total = memory.limit.min(host_total);
    let free = total - memory.usage.min(total);
    // Shared memory is on the anonymous lists: not reclaimable page cache.
    let reclaimable = stat("active_file") + stat("inactive_file");
    let ours: [(&str, u64); 17] = [
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", (free + reclaimable).min(total)),
        ("Buffers", 0),
        ("Cached", stat("file")),
        ("SwapCached", 0),
        ("Active", stat("active_anon") + stat("active_file")),
        ("Inactive", stat("inactive_anon") + stat("inactive_file")),
        ("Active(anon)", stat("active_anon")),
        ("Inactive(anon)", stat("inactive_anon")),
        ("Active(file)", stat("active_file")),
        ("Inactive(file)", stat("inactive_file")),
        ("AnonPages", stat("anon")),
        ("Shmem", stat("shmem")),
        (
            "Slab",
            stat("slab_reclaimable") + stat("slab_unreclaimable"),
        ),
        ("SReclaimable", stat("slab_reclaimable")),
        ("SUnreclaim", stat("slab_unreclaimable")),
    ];
    let mut out = String::new();
    for line in host.lines() {
        let key = line.split(':').next().unwrap_or("");
        match ours.iter().find(|(k, _)| *k == key) {
            Some((k, bytes)) => out += &format!("{:<16}{:>8} kB\n", format!("{k}:"), bytes / 1024),
            None => {
                out += line;
                out.push('\n');
            }
        }
    }
    out
}

/// The CPUs a model is shown: its cpuset, or the host's online CPUs; at most `limit` of
/// them (its CPU limit rounded up), the first ones.
pub fn shown_cpus(host: &CpuSet, cpus: Option<&CpuSet>, limit: Option<usize>) -> CpuSet {
    let from = cpus.unwrap_or(host);
    from.first(limit.map_or(from.len(), |l| l.clamp(1, from.len())))
}

/// `/proc/cpuinfo` with the blocks of the `shown` CPUs only.
pub fn cpuinfo(host: &str, shown: &CpuSet) -> String {
    let mut out = String::new();
    for block in host.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let processor = block.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "processor").then(|| v.trim().parse::<u32>().ok())?
        });
        if processor.is_some_and(|p| shown.contains(p)) {
            out += block.trim_start_matches('\n');
            out += "\n\n";
        }
    }
    out
}

/// `/proc/stat` with the `cpuN` lines of the `shown` CPUs only, and the `cpu` line their
/// sum.
pub fn stat(host: &str, shown: &CpuSet) -> String {
    fn ours<'a>(line: &'a str, shown: &CpuSet) -> Option<&'a str> {
        let (n, fields) = line.strip_prefix("cpu")?.split_once(' ')?;
        shown.contains(n.parse::<u32>().ok()?).then_some(fields)
    }
    let mut sum: Vec<u64> = Vec::new();
    for fields in host.lines().filter_map(|l| ours(l, shown)) {
        let values: Vec<u64> = fields
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        sum.resize(sum.len().max(values.len()), 0);
        for (s, v) in sum.iter_mut().zip(&values) {
            *s += v;
        }
    }
    let mut out = String::new();
    for line in host.lines() {
        if line.starts_with("cpu ") {
            let values: Vec<String> = sum.iter().map(ToString::to_string).collect();
            out += &format!("cpu  {}\n", values.join(" "));
        } else if !line.starts_with("cpu") || ours(line, shown).is_some() {
            out += line;
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:        12000000 kB\nMemAvailable:   14000000 kB\nBuffers:            1000 kB\nCached:          2000000 kB\nSwapCached:            0 kB\nActive:          1000000 kB\nInactive:        1000000 kB\nActive(anon):     500000 kB\nInactive(anon):   500000 kB\nActive(file):     500000 kB\nInactive(file):   500000 kB\nSwapTotal:       2000000 kB\nSwapFree:        2000000 kB\nAnonPages:       1000000 kB\nShmem:             10000 kB\nHugePages_Total:       0\n";

    #[test]
    fn meminfo_shows_the_cgroup_and_keeps_the_hosts_other_lines() {
        let mib = 1 << 20;
        let memory = Memory {
            limit: 512 * mib,
            usage: 128 * mib,
            stat: [
                ("file", 64 * mib),
                ("active_file", 32 * mib),
                ("inactive_file", 32 * mib),
                ("shmem", 8 * mib),
                ("anon", 56 * mib),
                ("active_anon", 50 * mib),
                ("inactive_anon", 6 * mib),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        };
        let text = meminfo(HOST_MEMINFO, &memory);
        let line = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{k}:")))
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("MemTotal"), "MemTotal:         524288 kB");
        assert_eq!(line("MemFree"), "MemFree:          393216 kB");
        // Free, plus the page cache (shared memory is not on its lists).
        assert_eq!(line("MemAvailable"), "MemAvailable:     458752 kB");
        assert_eq!(line("Cached"), "Cached:            65536 kB");
        assert_eq!(line("Active"), "Active:            83968 kB");
        assert_eq!(line("Shmem"), "Shmem:              8192 kB");
        assert_eq!(line("SwapTotal"), "SwapTotal:       2000000 kB");
        assert_eq!(line("HugePages_Total"), "HugePages_Total:       0");
        assert_eq!(text.lines().count(), HOST_MEMINFO.lines().count());
        // A limit above the host's memory: the host's.
        let big = Memory {
            limit: u64::MAX,
            ..memory
        };
        assert!(meminfo(HOST_MEMINFO, &big).starts_with("MemTotal:       16000000 kB\n"));
    }

    #[test]
    fn the_cpu_files_list_the_models_cpus() {
        let host: CpuSet = "0-3".parse().unwrap();
        let set: CpuSet = "1,3".parse().unwrap();
        assert_eq!(shown_cpus(&host, Some(&set), None), set);
        assert_eq!(shown_cpus(&host, None, Some(2)).to_string(), "0-1");
        assert_eq!(shown_cpus(&host, Some(&set), Some(1)).to_string(), "1");
        assert_eq!(shown_cpus(&host, None, None), host);
        let cpuinfo_host = "processor\t: 0\nmodel name\t: X\n\nprocessor\t: 1\nmodel name\t: X\n\nprocessor\t: 2\nmodel name\t: X\n\nprocessor\t: 3\nmodel name\t: X\n\n";
        assert_eq!(
            cpuinfo(cpuinfo_host, &set),
            "processor\t: 1\nmodel name\t: X\n\nprocessor\t: 3\nmodel name\t: X\n\n"
        );
        let stat_host =
            "cpu  10 20 30\ncpu0 1 2 3\ncpu1 2 4 6\ncpu2 3 6 9\ncpu3 4 8 12\nintr 5\nctxt 6\n";
        assert_eq!(
            stat(stat_host, &set),
            "cpu  6 12 18\ncpu1 2 4 6\ncpu3 4 8 12\nintr 5\nctxt 6\n"
        );
    }
}

// ---- where a view's numbers come from ------------------------------------------------

/// What one worker's view is made from, and whose it is.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Its memory: the cgroup's memory directory, whether it is cgroup v2, and its limit
    /// (None: the host's meminfo stands).
    pub memory: Option<(std::path::PathBuf, bool, u64)>,
    /// The CPUs it is shown (None: the host's CPU files stand).
    pub cpus: Option<CpuSet>,
    /// Who may open its files: the processes whose `/proc/PID/cgroup` names a path that
    /// ends with this one (the worker's cgroup, `/<name>/<leaf>`: the slash first, so that
    /// `/x-<name>/<leaf>` is not one); None: whoever the
    /// files' owner and modes let in.
    pub members: Option<String>,
    /// The host user and group its directory and files belong to: the worker's.
    pub owner: (u32, u32),
}

impl Source {
    /// Whether the view replaces `file` (a name of [`FILES`]).
    pub fn shows(&self, file: &str) -> bool {
        match file {
            "meminfo" => self.memory.is_some(),
            _ => self.cpus.is_some(),
        }
    }

    /// Whether the process (or thread) `pid` may open the files: one of the worker's.
    fn admits(&self, pid: u32) -> bool {
        let Some(path) = &self.members else {
            return true;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false; // gone, or no pid at all (0)
        };
        text.lines().any(|l| {
            l.splitn(3, ':')
                .nth(2)
                .is_some_and(|p| p.ends_with(path.as_str()))
        })
    }

    /// The content of `file` now.
    fn content(&self, file: &str) -> String {
        let host = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        match (file, &self.memory, &self.cpus) {
            ("meminfo", Some((dir, v2, limit)), _) => {
                meminfo(&host("/proc/meminfo"), &read_memory(dir, *v2, *limit))
            }
            ("cpuinfo", _, Some(cpus)) => cpuinfo(&host("/proc/cpuinfo"), cpus),
            ("stat", _, Some(cpus)) => stat(&host("/proc/stat"), cpus),
            ("online", _, Some(cpus)) => format!("{cpus}\n"),
            _ => String::new(),
        }
    }
}

/// A cgroup's memory now (v1's `total_*` counters under v2's names).
fn read_memory(dir: &std::path::Path, v2: bool, limit: u64) -> Memory {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let usage = read(if v2 {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    })
    .trim()
    .parse()
    .unwrap_or(0);
    let names: &[(&str, &str)] = if v2 {
        &[
            ("file", "file"),
            ("anon", "anon"),
            ("shmem", "shmem"),
            ("slab_reclaimable", "slab_reclaimable"),
            ("slab_unreclaimable", "slab_unreclaimable"),
            ("active_file", "active_file"),
            ("inactive_file", "inactive_file"),
            ("active_anon", "active_anon"),
            ("inactive_anon", "inactive_anon"),
        ]
    } else {
        &[
            ("total_cache", "file"),
            ("total_rss", "anon"),
            ("total_shmem", "shmem"),
            ("total_active_file", "active_file"),
            ("total_inactive_file", "inactive_file"),
            ("total_active_anon", "active_anon"),
            ("total_inactive_anon", "inactive_anon"),
        ]
    };
    let stat = read("memory.stat")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            let (_, ours) = names.iter().find(|(theirs, _)| *theirs == k)?;
            Some(((*ours).to_owned(), v.trim().parse().ok()?))
        })
        .collect();
    Memory { limit, usage, stat }
}

// ---- what a worker's view may cost ----------------------------------------------------

/// Opens a worker may make at once, and then per second: each open makes its file's
/// content (the host's file and the cgroup's read, and formatted) on the supervisor's
/// CPU, outside the worker's limit. Programs read these files when they start and now and
/// then (psutil, `os.cpu_count()`, a monitor each second); a loop is spaced out to this.
pub const OPENS_AT_ONCE: u32 = 100;
pub const OPENS_PER_SECOND: u32 = 100;

/// The spacing of one worker's opens (the generic cell rate algorithm, delaying instead
/// of refusing): [`OPENS_AT_ONCE`] at once, then one each 1/[`OPENS_PER_SECOND`] s.
/// Times are durations since any fixed instant (a virtual clock in the tests).
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// When the next open would be on time if none had come early.
    due: Duration,
}

impl Budget {
    const SPACING: Duration = Duration::from_nanos(1_000_000_000 / OPENS_PER_SECOND as u64);

    /// How long an open made at `now` waits.
    pub fn delay(&mut self, now: Duration) -> Duration {
        let early = Self::SPACING * (OPENS_AT_ONCE - 1);
        let due = self.due.max(now);
        let start = due.saturating_sub(early).max(now);
        self.due = due + Self::SPACING;
        start - now
    }
}

#[cfg(test)]
mod budget {
    use super::*;

    #[test]
    fn opens_go_at_once_up_to_the_burst_then_at_the_rate() {
        let mut b = Budget::default();
        let ms = Duration::from_millis;
        for _ in 0..OPENS_AT_ONCE {
            assert_eq!(b.delay(ms(1000)), Duration::ZERO);
        }
        assert_eq!(b.delay(ms(1000)), ms(10));
        assert_eq!(b.delay(ms(1000)), ms(20));
        // A worker that waits for each open gets one each 10 ms.
        assert_eq!(b.delay(ms(1020)), ms(10));
        assert_eq!(b.delay(ms(1030)), ms(10));
        // After a quiet second, the burst is back whole, and not more than whole.
        let mut fresh = 0;
        while b.delay(ms(5000)).is_zero() {
            fresh += 1;
        }
        assert_eq!(fresh, OPENS_AT_ONCE);
        // Over a long run the rate holds: 10 s of opens as fast as answered.
        let (mut b, mut now, mut n) = (Budget::default(), ms(0), 0);
        while now < ms(10_000) {
            now += b.delay(now);
            n += 1;
        }
        assert_eq!(n, OPENS_AT_ONCE + 10 * OPENS_PER_SECOND);
    }
}

/// Runs each job given to it at its time, on a thread of its own: the view's delayed
/// opens, answered later without holding up the filesystem's thread.
struct Pacer {
    jobs: std::sync::mpsc::Sender<(std::time::Instant, Box<dyn FnOnce() + Send>)>,
}

impl Pacer {
    fn start() -> std::io::Result<Pacer> {
        type Job = (std::time::Instant, Box<dyn FnOnce() + Send>);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("view-pacer".into())
            .spawn(move || {
                // Jobs by time, then by arrival.
                let mut waiting: std::collections::BTreeMap<(std::time::Instant, u64), _> =
                    Default::default();
                let mut next = 0u64;
                loop {
                    let got = match waiting.keys().next() {
                        Some(&(at, _)) => queue
                            .recv_timeout(at.saturating_duration_since(std::time::Instant::now())),
                        None => queue
                            .recv()
                            .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok((at, job)) => {
                            next += 1;
                            waiting.insert((at, next), job);
                        }
                        // The filesystem is gone: the replies waiting go with it.
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    }
                    let now = std::time::Instant::now();
                    while let Some(entry) = waiting.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        (entry.remove())();
                    }
                }
            })?;
        Ok(Pacer { jobs })
    }

    fn after(&self, delay: Duration, job: impl FnOnce() + Send + 'static) {
        let _ = self
            .jobs
            .send((std::time::Instant::now() + delay, Box::new(job)));
    }
}

// ---- the filesystem --------------------------------------------------------------------

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// Inodes: 1 the root; a worker's directory `2 + 8 × id`, its files the next four.
const PER_WORKER: u64 = 8;

#[derive(Default)]
struct State {
    /// Worker (its cgroup's leaf name) -> (id, source).
    workers: HashMap<String, (u64, Source)>,
    next_id: u64,
    /// Open files: the worker's id, and their content, made when opened (empty while the
    /// open waits for its turn).
    open: HashMap<u64, (u64, Arc<Vec<u8>>)>,
    next_fh: u64,
    /// Each worker's spacing of its opens, by id.
    budgets: HashMap<u64, Budget>,
}

/// Files a worker may hold open at once: their contents live in the supervisor's memory,
/// not the worker's.
const OPEN_PER_WORKER: usize = 64;

impl State {
    fn by_ino(&self, ino: u64) -> Option<(&Source, Option<&'static str>)> {
        let rel = ino.checked_sub(2)?;
        let (id, k) = (rel / PER_WORKER, rel % PER_WORKER);
        let (_, source) = self.workers.values().find(|(i, _)| *i == id)?;
        match k {
            0 => Some((source, None)),
            k if (k as usize) <= FILES.len() => {
                let name = FILES[k as usize - 1].0;
                source.shows(name).then_some((source, Some(name)))
            }
            _ => None,
        }
    }
}

struct ViewFs {
    state: Arc<Mutex<State>>,
    pacer: Pacer,
    /// The budgets' clock starts here.
    epoch: std::time::Instant,
}

/// The root: every user may pass through it to a directory whose name it knows, none
/// may list it. A worker's directory and files are the worker's own.
fn attr(ino: u64, directory: bool, owner: (u32, u32)) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        // Made when opened: read as a stream (direct I/O), as the kernel's own files are.
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if directory {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: match (ino, directory) {
            (1, _) => 0o711,
            (_, true) => 0o500,
            (_, false) => 0o444,
        },
        nlink: if directory { 2 } else { 1 },
        uid: owner.0,
        gid: owner.1,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

const TTL: Duration = Duration::ZERO;

impl ViewFs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers an open whose turn has come: its content made now, unless its worker has gone.
fn answer_open(state: &Mutex<State>, ino: u64, fh: u64, reply: ReplyOpen) {
    let source = lock(state)
        .by_ino(ino)
        .and_then(|(s, f)| Some((s.clone(), f?)));
    let Some((source, file)) = source else {
        lock(state).open.remove(&fh);
        return reply.error(Errno::ENOENT);
    };
    let content = Arc::new(source.content(file).into_bytes());
    match lock(state).open.get_mut(&fh) {
        Some((_, held)) => *held = content,
        None => return reply.error(Errno::ENOENT),
    }
    reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
}

impl Filesystem for ViewFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        let name = name.to_str().unwrap_or("");
        let found = if parent.0 == 1 {
            state
                .workers
                .get(name)
                .map(|(id, source)| attr(2 + id * PER_WORKER, true, source.owner))
        } else {
            FILES.iter().position(|(f, _)| *f == name).and_then(|k| {
                let ino = parent.0 + 1 + k as u64;
                state.by_ino(ino).map(|(s, _)| attr(ino, false, s.owner))
            })
        };
        match found {
            Some(a) => reply.entry(&TTL, &a, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let state = self.state();
        match (ino.0, state.by_ino(ino.0)) {
            (1, _) => reply.attr(&TTL, &attr(1, true, (0, 0))),
            (ino, Some((s, file))) => reply.attr(&TTL, &attr(ino, file.is_none(), s.owner)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    /// Only the worker's own processes may open its files, [`OPEN_PER_WORKER`] at once,
    /// spaced out by its [`Budget`].
    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        let admitted = match state.by_ino(ino.0) {
            Some((source, Some(_))) => source.admits(req.pid()),
            _ => return reply.error(Errno::ENOENT),
        };
        if !admitted {
            return reply.error(Errno::EACCES);
        }
        let worker = (ino.0 - 2) / PER_WORKER;
        if state.open.values().filter(|(w, _)| *w == worker).count() >= OPEN_PER_WORKER {
            return reply.error(Errno::EMFILE);
        }
        state.next_fh += 1;
        let fh = state.next_fh;
        state.open.insert(fh, (worker, Arc::default()));
        let delay = state
            .budgets
            .entry(worker)
            .or_default()
            .delay(self.epoch.elapsed());
        drop(state);
        if delay.is_zero() {
            answer_open(&self.state, ino.0, fh, reply);
        } else {
            let state = self.state.clone();
            self.pacer
                .after(delay, move || answer_open(&state, ino.0, fh, reply));
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((_, content)) = self.state().open.get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let start = (offset as usize).min(content.len());
        let end = start.saturating_add(size as usize).min(content.len());
        reply.data(&content[start..end]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().open.remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (1, FileType::Directory, "..".into()),
        ];
        if ino.0 == 1 {
            for (name, (id, _)) in &state.workers {
                entries.push((2 + id * PER_WORKER, FileType::Directory, name.clone()));
            }
        } else if let Some((source, None)) = state.by_ino(ino.0) {
            for (k, (name, _)) in FILES.iter().enumerate() {
                if source.shows(name) {
                    entries.push((ino.0 + 1 + k as u64, FileType::RegularFile, (*name).into()));
                }
            }
        } else {
            return reply.error(Errno::ENOENT);
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// The supervisor's view filesystem, mounted while this value lives.
pub struct Views {
    root: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

impl Drop for Views {
    /// Unmounted, and its mount point removed.
    fn drop(&mut self) {
        drop(self.session.take());
        let _ = std::fs::remove_dir(&self.root);
    }
}

impl Views {
    /// Mounts the view filesystem on `root` (made if missing; whatever an earlier
    /// supervisor left mounted there is detached first).
    pub fn mount(root: &Path) -> std::io::Result<Views> {
        if let Ok(c) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid C string; failing (nothing mounted) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        std::fs::create_dir_all(root)?;
        let state = Arc::new(Mutex::new(State::default()));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::RO,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoExec,
            fuser::MountOption::FSName("cuvisor-view".into()),
        ];
        // Workers run as other users (`user`, `isolation.user`).
        config.acl = fuser::SessionACL::All;
        // The kernel checks the modes and owners of `attr` (the root, a worker's
        // directory); `open` checks that the opener is one of the worker's processes.
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
        let fs = ViewFs {
            state: state.clone(),
            pacer: Pacer::start()?,
            epoch: std::time::Instant::now(),
        };
        let session = fuser::spawn_mount(fs, root, &config)?;
        Ok(Views {
            root: root.to_owned(),
            state,
            session: Some(session),
        })
    }

    /// Serves the view of worker `leaf` (its cgroup's name) from `source`, replacing any.
    pub fn add(&self, leaf: &str, source: Source) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let id = match state.workers.get(leaf) {
            Some((id, _)) => *id,
            None => {
                state.next_id += 1;
                state.next_id
            }
        };
        state.workers.insert(leaf.to_owned(), (id, source));
    }

    pub fn remove(&self, leaf: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, _)) = state.workers.remove(leaf) {
            state.budgets.remove(&id);
        }
    }

    /// Where worker `leaf`'s files are served.
    pub fn dir(&self, leaf: &str) -> PathBuf {
        self.root.join(leaf)
    }

    /// Where worker `leaf`'s `file` is served.
    pub fn path(&self, leaf: &str, file: &str) -> PathBuf {
        self.dir(leaf).join(file)
    }
}
