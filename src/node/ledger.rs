//! Per-model ledgers: a quota on each GPU a model uses, shared by every process of the
//! model, safe against any of them dying at any instant.
//!
//! A ledger is a small file (`<dir>/<model>.ledger`, by default in
//! [`DEFAULT_DIR`]) mapped by every process of the model; the preload shim attaches to it
//! when CUDA initializes and charges every allocation there, to the GPU (by UUID) it lands
//! on. The supervisor (or `cuvisor ledger create`) writes the quota before the first
//! worker starts; the quota in the file is authoritative. See `docs/LEDGER.md` for the
//! layout and the protocol.
//!
//! ```
//! use cuvisor::gpu::GpuUuid;
//! use cuvisor::ledger::{CreateOptions, LedgerFile};
//! use cuvisor::size::QuotaSpec;
//!
//! let dir = std::env::temp_dir().join(format!("cuvisor-doc-{}", std::process::id()));
//! let ledger = LedgerFile::create(&dir, "llama", Some(QuotaSpec::Bytes(8 << 30)), CreateOptions::default())?;
//!
//! // A process meets its GPUs (by UUID, with their memory), attaches, and charges its
//! // allocations before making them, each on its GPU.
//! let gpu0: GpuUuid = "GPU-6f2d0e7a-1b3c-4d5e-8f90-a1b2c3d4e5f6".parse().unwrap();
//! let gpu1: GpuUuid = "GPU-0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5".parse().unwrap();
//! let (g0, g1) = (ledger.register_gpu(gpu0, 80 << 30)?, ledger.register_gpu(gpu1, 80 << 30)?);
//! let me = ledger.attach()?;
//! me.try_reserve(g0, 6 << 30).expect("within the quota");
//! let refusal = me.try_reserve(g0, 4 << 30).unwrap_err();
//! assert_eq!((refusal.used, refusal.quota), (6 << 30, 8 << 30));
//! me.try_reserve(g1, 8 << 30).expect("the other GPU has its own quota");
//! me.release(g0, 1 << 30);
//!
//! // Anyone can look, and give back what dead processes held.
//! let snapshot = ledger.snapshot()?;
//! assert_eq!(snapshot.gpu(gpu0).unwrap().used, 5 << 30);
//! assert_eq!(snapshot.used, 13 << 30);
//! assert_eq!(snapshot.processes.len(), 1);
//! assert_eq!(ledger.reclaim_dead().slots, 0); // nobody died
//!
//! me.detach(); // at exit: everything this process held goes back
//! assert_eq!(ledger.used(), 0);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), cuvisor::ledger::LedgerError>(())
//! ```

pub use cuvisor_common::ledger::*;

use crate::core::status::{PowerOutcome, PowerReport, ProcessPower};
use std::path::Path;

/// Makes sure `model` has a ledger with `quota` in `dir`, for a process that must not map
/// a ledger its workers can shrink (the supervisor): an existing one is read from a copy
/// and must have that quota (none asked: any); a missing one is created (its mapping is
/// private until it is published, and dropped right after).
pub fn ensure(
    dir: &Path,
    model: &str,
    quota: Option<crate::size::QuotaSpec>,
    options: CreateOptions,
) -> Result<(), LedgerError> {
    let snapshot = match read_snapshot(dir, model) {
        Err(LedgerError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            match LedgerFile::create(dir, model, quota, options) {
                Ok(_) => return Ok(()),
                Err(LedgerError::Exists { .. }) => read_snapshot(dir, model)?, // another won
                Err(e) => return Err(e),
            }
        }
        other => other?,
    };
    match quota {
        Some(requested) if snapshot.quota != Some(requested) => Err(LedgerError::QuotaMismatch {
            path: LedgerFile::path_for(dir, model),
            model: model.to_owned(),
            ledger: snapshot.quota,
            requested,
        }),
        _ => Ok(()),
    }
}

/// Why work on a ledger in a child process ([`reclaim_isolated`], [`power_isolated`])
/// did not end.
#[derive(Debug, thiserror::Error)]
pub enum IsolatedError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(
        "ledger {path}: the {work} died of signal {signal} (a process of the model shrank or damaged the file)"
    )]
    Died {
        path: String,
        work: &'static str,
        signal: i32,
    },
    #[error("ledger {path}: the {work} did not answer within {seconds} s; killed")]
    TimedOut {
        path: String,
        work: &'static str,
        seconds: u64,
    },
    #[error("cannot run the {work} in a child process: {source}")]
    Os {
        work: &'static str,
        source: std::io::Error,
    },
}

/// [`LedgerFile::reclaim_dead`] on the ledger of `model`, in a child process.
pub fn reclaim_isolated(dir: &Path, model: &str) -> Result<Reclaimed, IsolatedError> {
    let msg = isolated(dir, model, "reclaim", 5, |ledger| {
        let r = ledger.reclaim_dead();
        [
            u64::from(r.slots),
            r.bytes,
            r.uncertain | (u64::from(r.healed) << 63),
        ]
    })?;
    Ok(Reclaimed {
        slots: msg[0] as u32,
        bytes: msg[1],
        uncertain: msg[2] & !(1 << 63),
        healed: msg[2] >> 63 == 1,
    })
}

/// [`LedgerFile::set_quota`] on the ledger of `model`, in a child process; the quota it
/// replaced.
pub fn set_quota_isolated(
    dir: &Path,
    model: &str,
    quota: Option<crate::size::QuotaSpec>,
) -> Result<Option<crate::size::QuotaSpec>, IsolatedError> {
    use crate::size::QuotaSpec;
    let msg = isolated(dir, model, "quota change", 5, |ledger| {
        match ledger.set_quota(quota) {
            Ok(None) => [1, 0, 0],
            Ok(Some(QuotaSpec::Bytes(b))) => [1, 1, b],
            Ok(Some(QuotaSpec::Percent(p))) => [1, 2, u64::from(p)],
            // Its one failure: the GPU table's lock, told by its errno.
            Err(LedgerError::Io { source, .. }) => {
                [0, source.raw_os_error().unwrap_or(0) as u64, 0]
            }
            Err(_) => [0, 0, 0],
        }
    })?;
    match msg {
        [0, errno, _] => Err(IsolatedError::Ledger(LedgerError::Io {
            path: LedgerFile::path_for(dir, model),
            action: "lock the GPU table",
            source: std::io::Error::from_raw_os_error(errno as i32),
        })),
        [_, 1, b] => Ok(Some(QuotaSpec::Bytes(b))),
        [_, 2, p] => Ok(Some(QuotaSpec::Percent(p as u8))),
        _ => Ok(None),
    }
}

/// How a hibernate or wake request ended ([`power_isolated`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerRequest {
    /// The request, as written in the control word.
    pub power: power::Power,
    pub outcome: power::Outcome,
    /// From the control word written to the last acknowledgement (or to the end of the
    /// wait): the mechanism's latency, copies included.
    pub nanos: u64,
}

/// How a hibernate or wake request ended: the request and the ledger read right after it
/// (for each process's acknowledgement), or why it could not be made.
pub type PowerResult = Result<(PowerRequest, Option<Snapshot>), String>;

/// [`power_isolated`], then the ledger read for each process's acknowledgement.
pub fn power_and_read(
    dir: &Path,
    model: &str,
    hibernated: bool,
    timeout: std::time::Duration,
) -> PowerResult {
    power_isolated(dir, model, hibernated, timeout)
        .map(|request| (request, read_snapshot(dir, model).ok()))
        .map_err(|e| e.to_string())
}

/// Asks every process of `model` to hibernate (`true`) or wake, and waits at most
/// `timeout` for their acknowledgements, in a child process.
pub fn power_isolated(
    dir: &Path,
    model: &str,
    hibernated: bool,
    timeout: std::time::Duration,
) -> Result<PowerRequest, IsolatedError> {
    let work = if hibernated { "hibernate" } else { "wake" };
    let msg = isolated(dir, model, work, timeout.as_secs() + 5, |ledger| {
        let start = std::time::Instant::now();
        let request = ledger.request_power(hibernated);
        let (code, word) = match ledger.wait_acks(request, timeout) {
            power::Outcome::Done => (0, 0),
            power::Outcome::Superseded(now) => (1, u64::from(now.word())),
            power::Outcome::TimedOut(_) => (2, 0),
        };
        [
            u64::from(request.word()) | code << 32,
            word,
            start.elapsed().as_nanos() as u64,
        ]
    })?;
    let power = power::Power::from_word(msg[0] as u32);
    let outcome = match msg[0] >> 32 {
        0 => power::Outcome::Done,
        1 => power::Outcome::Superseded(power::Power::from_word(msg[1] as u32)),
        // Who has not answered, from a copy of the file.
        _ => power::Outcome::TimedOut(
            read_snapshot(dir, model)?
                .processes
                .iter()
                .filter(|p| p.alive && p.power.listening && p.power.ack.power != power)
                .map(|p| p.slot)
                .collect(),
        ),
    };
    Ok(PowerRequest {
        power,
        outcome,
        nanos: msg[2],
    })
}

/// Runs `work` on the ledger of `model` in a short-lived child process, which answers
/// three numbers: the only way to change a ledger is to map it, and a process of the
/// model can shrink the file under any mapping (a later access is a SIGBUS). The child
/// takes that risk instead of the caller, which never maps a ledger.
fn isolated(
    dir: &Path,
    model: &str,
    work: &'static str,
    seconds: u64,
    run: impl FnOnce(&LedgerFile) -> [u64; 3],
) -> Result<[u64; 3], IsolatedError> {
    let path = LedgerFile::path_for(dir, model).display().to_string();
    let os = |source| IsolatedError::Os { work, source };
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we close below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os(std::io::Error::last_os_error()));
    }
    let [read_end, write_end] = fds;
    // glibc's fork: it takes and resets malloc's locks around the fork, so the child may
    // allocate. The child does nothing else that another thread could hold a lock of
    // (no stdio, no logging, no panic formatting: a failure is a code on the pipe).
    // SAFETY: see above; the child ends with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: fork failed: both ends of the pipe are still ours alone, used no more.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
        return Err(os(e));
    }
    if pid == 0 {
        // Nothing of the caller's stays open here but the pipe: a copy of a launch's
        // pipe end would hold up its report, a copy of a connection would keep it open
        // after the caller closed it, for as long as this child waits.
        // SAFETY: close_range on descriptors this process will not use (3.. but the
        // write end of its pipe); stdin, stdout and stderr stay.
        unsafe {
            if write_end > 3 {
                libc::syscall(libc::SYS_close_range, 3u32, (write_end - 1) as u32, 0u32);
            }
            libc::syscall(
                libc::SYS_close_range,
                (write_end + 1) as u32,
                u32::MAX,
                0u32,
            );
        }
        // A SIGBUS here is expected of a damaged ledger: no core file for it.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit on ourselves with a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        let mut msg = [0u64; 4];
        match LedgerFile::open(dir, model) {
            Ok(ledger) => msg[1..].copy_from_slice(&run(&ledger)),
            Err(LedgerError::Io { source, .. }) => {
                msg[0] = 1;
                msg[1] = source.raw_os_error().unwrap_or(0) as u64;
            }
            Err(_) => msg[0] = 2,
        }
        // SAFETY: 32 bytes from the stack to our pipe, then leave without running
        // anything of the parent's (atexit handlers, destructors).
        unsafe {
            libc::write(write_end, msg.as_ptr().cast(), 32);
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end.
    unsafe { libc::close(write_end) };
    let mut msg = [0u64; 4];
    let mut ready = libc::pollfd {
        fd: read_end,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    // SAFETY: poll and read on our own descriptor, into a local buffer.
    let n = unsafe {
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let rc = libc::poll(&mut ready, 1, left.as_millis() as i32);
            if rc >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                break;
            }
        }
        if ready.revents == 0 {
            libc::kill(pid, libc::SIGKILL);
            -2
        } else {
            libc::read(read_end, msg.as_mut_ptr().cast(), 32)
        }
    };
    let mut status = 0;
    // SAFETY: our own child; the read end is ours.
    unsafe {
        libc::close(read_end);
        while libc::waitpid(pid, &mut status, 0) < 0
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
    }
    if n == -2 {
        return Err(IsolatedError::TimedOut {
            path,
            work,
            seconds,
        });
    }
    if libc::WIFSIGNALED(status) {
        return Err(IsolatedError::Died {
            path,
            work,
            signal: libc::WTERMSIG(status),
        });
    }
    match (n, msg[0]) {
        (32, 0) => Ok([msg[1], msg[2], msg[3]]),
        (32, 1) => Err(IsolatedError::Ledger(LedgerError::Io {
            path: LedgerFile::path_for(dir, model),
            action: "open",
            source: std::io::Error::from_raw_os_error(msg[1] as i32),
        })),
        // The file did not validate in the child: read it here for the message (from a
        // copy; never mapped).
        _ => Err(match read_snapshot(dir, model) {
            Err(e) => IsolatedError::Ledger(e),
            Ok(_) => IsolatedError::Ledger(LedgerError::Damaged {
                path: LedgerFile::path_for(dir, model),
                what: format!("it changed during the {work}"),
            }),
        }),
    }
}

/// The processes this process can see, by how a ledger's slot names them: the pid in
/// their own PID namespace, that namespace's inode and their start time. Built once (one
/// pass over `/proc`), then asked for each slot.
pub struct HostPids {
    by_slot_identity: std::collections::HashMap<(u32, u64, u64), u32>,
}

impl HostPids {
    pub fn scan() -> HostPids {
        use std::os::unix::fs::MetadataExt;
        let mut by_slot_identity = std::collections::HashMap::new();
        for pid in std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        {
            // NSpid: the pid in each namespace from this one down to the process's own.
            let inner = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
                    line.split_whitespace().last()?.parse::<u32>().ok()
                });
            let ns = std::fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| m.ino());
            if let (Some(inner), Ok(ns)) = (inner, ns) {
                by_slot_identity.insert((inner, ns, start_time(pid)), pid);
            }
        }
        HostPids { by_slot_identity }
    }

    /// The pid, in this process's PID namespace, of the process of a ledger's slot; None
    /// if it is not visible from here (gone, or in a namespace this one cannot see), or
    /// if the slot does not say its namespace (what a slot says is the model's word: a
    /// pid alone could name any process).
    pub fn of(&self, p: &ProcessUsage) -> Option<u32> {
        if p.pid_ns == 0 || p.start_time == 0 {
            return None;
        }
        self.by_slot_identity
            .get(&(p.pid, p.pid_ns, p.start_time))
            .copied()
    }
}

/// The answer to a hibernate or wake request, made here because the pids are translated
/// to this process's view of them (one pass over `/proc`).
impl PowerReport {
    /// The answer to a hibernate (`hibernate`) or wake request of `model`, from its
    /// result.
    pub fn from_result(model: &str, hibernate: bool, result: PowerResult) -> PowerReport {
        let mut report = PowerReport::new(model, hibernate, PowerOutcome::Failed);
        let (request, snapshot) = match result {
            Ok(r) => r,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        report.generation = request.power.generation;
        report.duration_ms = request.nanos as f64 / 1e6;
        let processes = snapshot.map(|s| s.processes).unwrap_or_default();
        // The pids as this process sees them (one pass over /proc, where there is anyone).
        let host_pids = (!processes.is_empty()).then(HostPids::scan);
        let pid = |p: &ProcessUsage| host_pids.as_ref().and_then(|h| h.of(p)).unwrap_or(p.pid);
        for p in processes.iter().filter(|p| p.power.listening) {
            let ack = p.power.ack;
            if ack.power == request.power {
                report.moved_bytes += ack.moved;
                report.pinned_bytes += ack.pinned;
                report.failed_bytes += ack.failed;
                report.processes.push(ProcessPower {
                    pid: pid(p),
                    moved_bytes: ack.moved,
                    pinned_bytes: ack.pinned,
                    failed_bytes: ack.failed,
                    error_code: (ack.error != 0).then_some(ack.error),
                    duration_ms: ack.nanos as f64 / 1e6,
                });
            }
        }
        report.outcome = match request.outcome {
            power::Outcome::Done => PowerOutcome::Done,
            power::Outcome::Superseded(_) => PowerOutcome::Superseded,
            power::Outcome::TimedOut(slots) => {
                report.pending = processes
                    .iter()
                    .filter(|p| slots.contains(&p.slot))
                    .map(pid)
                    .collect();
                PowerOutcome::TimedOut
            }
        };
        if report.failed_bytes > 0 {
            report.error = Some(format!(
                "{} bytes could not be moved (the driver's error codes are per process)",
                report.failed_bytes
            ));
        }
        report
    }
}
