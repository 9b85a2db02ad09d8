//! The per-model ledger: one small file per model, shared by every process of the model,
//! that holds the model's quota and what its processes are charged.
//!
//! # Layout (version 4)
//!
//! A 256-byte [`Header`], then a table of [`MAX_GPUS`] 64-byte [`Gpu`] entries, then
//! [`SLOTS`] 512-byte [`Slot`]s, `#[repr(C)]`, native endianness, every counter an atomic.
//! Slots never move: a process keeps its slot from attach to exit. A GPU entry, once
//! registered, names the same GPU (by UUID) for the life of the file.
//!
//! The quota is a limit on **each GPU** the model uses: a model under 40 GiB whose two
//! tensor-parallel ranks run on two GPUs may hold 40 GiB on each. Usage, peak and
//! refusals are kept per GPU, and per process per GPU, so that a dead process's bytes go
//! back to the GPU they were on.
//!
//! # Protocol
//!
//! * **GPU registration.** The first time a process charges a GPU it looks the GPU's
//!   UUID up in the table, and adds it if it is not there, under a byte-range lock on the
//!   file (held by one process at a time; the kernel drops it if the holder dies). A new
//!   entry gets the GPU's quota in bytes (a percentage is resolved against that GPU's own
//!   memory, by the process that registers it) and is published last, with a release
//!   store of its state. Registration is rare (once per process and GPU) and off the
//!   allocation path.
//! * **Reserve** is one compare-and-add of the GPU's `used` against its quota: there
//!   is no check-then-act window between processes. The process's slot is updated after.
//!   **Release** is one atomic subtraction (the slot first, then the GPU).
//! * **Liveness** is a byte-range lock: a live process holds an open-file-description
//!   lock (`F_OFD_SETLK`) on its slot's byte of the file. The kernel drops it when the
//!   process dies, however it dies, and whatever its PID namespace; a reused PID cannot
//!   look alive. The pid and start time in the slot are for people reading snapshots.
//!   No lock guards any data: a dead process cannot leave anything locked.
//! * **Reclaim**: a dead process's bytes are subtracted by whoever notices first (the
//!   supervisor when a worker exits, or any process of the model before it reports out of
//!   memory). A process killed in the middle of a reservation or release leaves its
//!   in-flight bytes "uncertain": they stay charged (the safe side: the quota is never
//!   exceeded) until the model has no live process left, when the total is reset to zero.
//! * **The quota in the file is authoritative.** A process whose own quota differs is
//!   refused; one with no quota joins the file's.
//! * **Hibernation** ([`power`]): a control word in the header says whether the model
//!   should be awake or hibernated; each process carries it out and acknowledges in its
//!   slot.

use crate::gpu::GpuUuid;
use crate::size::QuotaSpec;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::mem::offset_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

mod gate;
pub mod power;

/// Where ledgers live unless told otherwise (`CUVISOR_LEDGER_DIR`).
pub const DEFAULT_DIR: &str = "/dev/shm/cuvisor";
pub const MAGIC: [u8; 8] = *b"CUVISLDG";
pub const VERSION: u32 = 4;
/// Processes per model.
pub const SLOTS: u32 = 1024;
/// GPUs per model (as many as the largest nodes have, twice over).
pub const MAX_GPUS: usize = 16;
const HEADER_SIZE: usize = 256;
const GPU_SIZE: usize = 64;
const SLOT_SIZE: usize = 512;
const SLOTS_START: usize = HEADER_SIZE + MAX_GPUS * GPU_SIZE;
/// Liveness locks sit far beyond the end of the file, one byte per slot.
const LOCK_BASE: i64 = 1 << 40;
/// The byte whose lock serializes GPU registration.
const REGISTRATION_LOCK: i64 = LOCK_BASE - 1;

const QUOTA_NONE: u32 = 0;
const QUOTA_BYTES: u32 = 1;
const QUOTA_PERCENT: u32 = 2;

/// The file's header. Every field but the counters is written once, before the file is
/// published under its name.
#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    pub slot_size: u32,
    pub slot_count: u32,
    pub file_size: u64,
    /// 0: no quota; 1: `quota_bytes` on each GPU; 2: `quota_percent` of each GPU.
    pub quota_kind: u32,
    pub quota_percent: u32,
    /// The quota in bytes on each GPU (kind 1); `u64::MAX` without a quota; 0 for a
    /// percentage (each GPU entry holds its own resolution).
    pub quota_bytes: u64,
    /// [`MAX_GPUS`] and the size of a GPU entry.
    pub gpu_count: u32,
    pub gpu_size: u32,
    /// Bytes that processes killed mid-operation may or may not have held.
    pub uncertain: AtomicU64,
    /// Incremented by every attach.
    pub attach_seq: AtomicU64,
    pub created_unix: u64,
    /// The model's name, NUL-padded.
    pub model: [u8; 64],
    /// Whether the model should be awake or hibernated ([`power::Power`] as a word): a
    /// 32-bit word, which the processes wait on with a futex.
    pub power: AtomicU32,
    /// Incremented by every acknowledgement of a power request; the requester waits on it.
    pub acks: AtomicU32,
    pub reserved: [u8; 104],
}

/// One GPU the model uses.
#[repr(C)]
pub struct Gpu {
    /// FREE until registered, then READY for good.
    pub state: AtomicU32,
    pub pad: u32,
    /// The GPU's UUID, written before the entry is published.
    pub uuid: [AtomicU64; 2],
    /// The quota on this GPU in bytes (`u64::MAX`: none).
    pub quota_bytes: AtomicU64,
    /// The GPU's physical memory, as the process that registered it saw it.
    pub physical: AtomicU64,
    /// Bytes charged to the model on this GPU: the number every reservation is checked
    /// against.
    pub used: AtomicU64,
    pub peak: AtomicU64,
    /// Reservations refused for the quota.
    pub refused: AtomicU64,
}

/// What one process holds on one GPU.
#[repr(C)]
pub struct SlotGpu {
    pub used: AtomicU64,
    pub peak: AtomicU64,
}

/// One process's place in the ledger.
#[repr(C)]
pub struct Slot {
    /// FREE, CLAIMING, LIVE or RECLAIMING.
    pub state: AtomicU32,
    pub pid: AtomicU32,
    /// Incremented each time the slot is claimed.
    pub generation: AtomicU64,
    /// The process's start time (clock ticks since boot, `/proc/PID/stat` field 22).
    pub start_time: AtomicU64,
    /// Bytes of reservations and releases under way on threads without a cell of their
    /// own in `threads`.
    pub inflight: AtomicU64,
    /// The inode of the process's PID namespace (0: unknown): with `pid` (the pid in that
    /// namespace) it names the process from any other namespace.
    pub pid_ns: AtomicU64,
    pub reserved: [u64; 3],
    /// Per GPU entry of the table: what this process holds there.
    pub gpus: [SlotGpu; MAX_GPUS],
    /// What the process did for the last power request it carried out.
    pub power: power::SlotPower,
    /// Bytes of the reservation or release under way on each of the process's first
    /// threads (0: none), one cell per thread.
    pub threads: [AtomicU64; gate::THREADS],
}

const FREE: u32 = 0;
const CLAIMING: u32 = 1;
const LIVE: u32 = 2;
const RECLAIMING: u32 = 3;
/// A GPU entry in use.
const READY: u32 = 2;

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<Gpu>() == GPU_SIZE);
const _: () = assert!(std::mem::size_of::<Slot>() == SLOT_SIZE);

/// A GPU's place in a ledger's table (0 to [`MAX_GPUS`] - 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuIndex(u8);

impl GpuIndex {
    /// The place `index`, if a ledger has it.
    pub const fn new(index: u8) -> Option<GpuIndex> {
        if (index as usize) < MAX_GPUS {
            Some(GpuIndex(index))
        } else {
            None
        }
    }

    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// Where this user's ledgers live unless told otherwise: [`DEFAULT_DIR`] for root, and
/// `/dev/shm/cuvisor-UID` for anyone else (a directory another user made first could not
/// be trusted, and is refused).
pub fn default_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    match unsafe { libc::geteuid() } {
        0 => PathBuf::from(DEFAULT_DIR),
        uid => PathBuf::from(format!("{DEFAULT_DIR}-{uid}")),
    }
}

/// In a user namespace other than the host's, the uid that files of users outside it show
/// (the overflow uid): the host's root among them. A worker that a supervisor started in a
/// user namespace sees every file the supervisor made so. None in the host's namespace.
fn outside_uid() -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let identity = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if identity {
        return None;
    }
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or(Some(65534))
}

/// Refuses what neither root nor this user owns, and what others may write (a directory
/// with the sticky bit, such as `/tmp` or `/dev/shm`, is fine on the way to the ledger
/// directory: nobody can rename what is not theirs there). Inside a user namespace, what
/// belongs to someone outside it is owned as root's: the namespace's maker chose the path.
fn check_owner(path: &Path, uid: u32, mode: u32, ancestor: bool) -> Result<(), LedgerError> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let why = if uid != 0 && uid != me && Some(uid) != outside_uid() {
        Some("owned by another user")
    } else if mode & 0o002 != 0 && !(ancestor && mode & 0o1000 != 0) {
        Some("writable by every user")
    } else {
        None
    };
    match why {
        Some(why) => Err(LedgerError::Untrusted {
            path: path.to_owned(),
            uid,
            mode,
            why,
        }),
        None => Ok(()),
    }
}

/// Opens the ledger directory from `/`, one component at a time, never following a
/// symbolic link, checking the owner and mode of each ([`check_owner`]). With
/// `create_mode`, missing directories are created (the last with that mode, parents 0755).
/// Everything after is opened relative to the descriptor returned.
fn open_dir(dir: &Path, create_mode: Option<u32>) -> Result<OwnedFd, LedgerError> {
    use std::path::Component;
    let untrusted = |why| LedgerError::Untrusted {
        path: dir.to_owned(),
        uid: 0,
        mode: 0,
        why,
    };
    if !dir.is_absolute() {
        return Err(untrusted("not an absolute path"));
    }
    let names: Vec<&std::ffi::OsStr> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::RootDir | Component::CurDir => None,
            _ => Some(Err(())),
        })
        .collect::<Result<_, _>>()
        .map_err(|()| untrusted("a path with '..' in it"))?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: open of a constant path.
    let root = unsafe { libc::open(c"/".as_ptr(), flags) };
    if root < 0 {
        return Err(io_err(Path::new("/"), "open")(io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we just opened and own.
    let mut fd = unsafe { OwnedFd::from_raw_fd(root) };
    let mut so_far = PathBuf::from("/");
    for (k, name) in names.iter().enumerate() {
        so_far.push(name);
        let last = k + 1 == names.len();
        let c_name = CString::new(name.as_encoded_bytes()).map_err(|_| untrusted("a NUL byte"))?;
        let open = |fd: &OwnedFd| {
            // SAFETY: openat relative to a directory we verified.
            let raw = unsafe { libc::openat(fd.as_raw_fd(), c_name.as_ptr(), flags) };
            // SAFETY: a descriptor we just opened and own.
            (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
        };
        let next = match open(&fd) {
            Some(next) => next,
            None => {
                let e = io::Error::last_os_error();
                let mode = if last {
                    create_mode
                } else {
                    create_mode.map(|_| 0o755)
                };
                match (e.raw_os_error(), mode) {
                    (Some(libc::ENOENT), Some(mode)) => {
                        // SAFETY: mkdirat relative to a directory we verified.
                        if unsafe { libc::mkdirat(fd.as_raw_fd(), c_name.as_ptr(), mode) } != 0
                            && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                        {
                            return Err(io_err(&so_far, "create the ledger directory")(
                                io::Error::last_os_error(),
                            ));
                        }
                        open(&fd).ok_or_else(|| {
                            io_err(&so_far, "open the ledger directory")(io::Error::last_os_error())
                        })?
                    }
                    (Some(libc::ELOOP | libc::ENOTDIR), _) => {
                        return Err(LedgerError::Untrusted {
                            path: so_far,
                            uid: 0,
                            mode: 0,
                            why: "a symbolic link or not a directory",
                        });
                    }
                    _ => return Err(io_err(&so_far, "open the ledger directory")(e)),
                }
            }
        };
        // SAFETY: stat is plain data; all zeros is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on our own descriptor into a local struct.
        if unsafe { libc::fstat(next.as_raw_fd(), &mut st) } != 0 {
            return Err(io_err(&so_far, "inspect")(io::Error::last_os_error()));
        }
        check_owner(&so_far, st.st_uid, st.st_mode, !last)?;
        fd = next;
    }
    Ok(fd)
}

/// Lets every user traverse (not list) the ledger directory, as [`LedgerFile::create`] makes
/// it with a group: for a directory made before its models ran as other users. Each file
/// keeps its own mode.
pub fn make_traversable(dir: &Path) -> Result<(), LedgerError> {
    let opened = reopen_dir(&open_dir(dir, None)?).map_err(io_err(dir, "open"))?;
    let meta = opened.metadata().map_err(io_err(dir, "inspect"))?;
    let mode = meta.mode() & 0o7777;
    // SAFETY: fchmod on the descriptor of the directory we checked.
    if mode & 0o011 != 0o011 && unsafe { libc::fchmod(opened.as_raw_fd(), mode | 0o011) } != 0 {
        return Err(io_err(dir, "let other users traverse")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A readable descriptor of the directory that `checked` (an `O_PATH` descriptor from
/// [`open_dir`]) names: the same directory, not the path looked up again.
fn reopen_dir(checked: &OwnedFd) -> io::Result<File> {
    // SAFETY: openat of "." relative to a directory descriptor we own.
    let fd = unsafe {
        libc::openat(
            checked.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Byte offsets of a slot's fields in the file, for tools that read the file directly.
pub fn slot_offset(index: u32) -> u64 {
    (SLOTS_START + index as usize * SLOT_SIZE) as u64
}

/// The byte offset of GPU entry `index` in the file.
fn gpu_offset(index: usize) -> usize {
    HEADER_SIZE + index * GPU_SIZE
}

/// Whether `name` can name a model (and so a ledger file): 1 to 64 letters, digits, `.`,
/// `_` or `-`, not starting with `.`.
pub fn valid_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Why a ledger could not be used. Every variant names the file.
#[derive(Debug)]
pub enum LedgerError {
    BadModelName {
        model: String,
    },
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    NotARegularFile {
        path: PathBuf,
        what: &'static str,
    },
    Damaged {
        path: PathBuf,
        what: String,
    },
    Exists {
        path: PathBuf,
    },
    QuotaMismatch {
        path: PathBuf,
        model: String,
        ledger: Option<QuotaSpec>,
        requested: QuotaSpec,
    },
    Full {
        path: PathBuf,
    },
    /// The model already uses [`MAX_GPUS`] GPUs and a process met another one.
    TooManyGpus {
        path: PathBuf,
        uuid: GpuUuid,
    },
    /// A directory on the way to the ledger, or the ledger itself, that someone other than
    /// root or this user could change: using it would let them change the quota.
    Untrusted {
        path: PathBuf,
        uid: u32,
        mode: u32,
        why: &'static str,
    },
}

fn quota_text(q: Option<QuotaSpec>) -> String {
    match q {
        None => "no quota".into(),
        Some(QuotaSpec::Bytes(b)) => format!("{b} bytes on each GPU"),
        Some(QuotaSpec::Percent(p)) => format!("{p}% of each GPU"),
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::BadModelName { model } => write!(
                f,
                "\"{model}\" cannot name a model: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
            ),
            LedgerError::Io {
                path,
                action,
                source,
            } => {
                write!(f, "ledger {}: cannot {action}: {source}", path.display())?;
                if source.kind() == io::ErrorKind::PermissionDenied {
                    write!(
                        f,
                        " (ledgers are private to their owner unless created with a group)"
                    )?;
                }
                Ok(())
            }
            LedgerError::NotARegularFile { path, what } => {
                write!(
                    f,
                    "ledger {}: is {what}, not a ledger file; remove it",
                    path.display()
                )
            }
            LedgerError::Damaged { path, what } => write!(
                f,
                "ledger {}: not a usable cuvisor ledger ({what}); remove it, or recreate it with `cuvisor ledger create`",
                path.display()
            ),
            LedgerError::Exists { path } => write!(f, "ledger {}: already exists", path.display()),
            LedgerError::QuotaMismatch {
                path,
                model,
                ledger,
                requested,
            } => write!(
                f,
                "the quota asked for ({}) disagrees with the ledger {} of model {model} ({}); the ledger's quota \
                 is authoritative: run without CUVISOR_QUOTA to join it, or recreate the ledger with \
                 `cuvisor ledger create`",
                quota_text(Some(*requested)),
                path.display(),
                quota_text(*ledger)
            ),
            LedgerError::Untrusted {
                path,
                uid,
                mode,
                why,
            } => write!(
                f,
                "ledger path {}: refused: {why} (owner uid {uid}, mode {:04o}); ledgers are used \
                 only through directories and files that root or this user owns and nobody else \
                 can write, without symbolic links: fix it, remove it, or choose another \
                 CUVISOR_LEDGER_DIR",
                path.display(),
                mode & 0o7777
            ),
            LedgerError::TooManyGpus { path, uuid } => write!(
                f,
                "ledger {}: the model already uses {MAX_GPUS} GPUs, the most a ledger holds; {uuid} \
                 is one more (place the model on fewer GPUs)",
                path.display()
            ),
            LedgerError::Full { path } => {
                write!(
                    f,
                    "ledger {}: all {SLOTS} process slots are taken by live processes",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LedgerError {}

/// A refused reservation: what was asked, what the model holds, its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub requested: u64,
    pub used: u64,
    pub quota: u64,
}

/// What a reclaim found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Slots of dead processes freed.
    pub slots: u32,
    /// Bytes they held, given back to the model.
    pub bytes: u64,
    /// Bytes they had in flight, left charged until the model is idle.
    pub uncertain: u64,
    /// Whether the model was found idle and its total reset to zero.
    pub healed: bool,
}

/// What a process holds on one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGpu {
    pub gpu: GpuUuid,
    pub used: u64,
    pub peak: u64,
}

/// One process of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUsage {
    pub slot: u32,
    pub pid: u32,
    pub start_time: u64,
    pub generation: u64,
    /// Bytes it holds on all its GPUs together.
    pub used: u64,
    /// Per GPU it ever charged.
    pub gpus: Vec<ProcessGpu>,
    /// The inode of its PID namespace, in which it has `pid` (0: unknown).
    pub pid_ns: u64,
    /// False for a process that died and has not been reclaimed yet.
    pub alive: bool,
    /// Its part in hibernation.
    pub power: power::ProcessPower,
}

/// One GPU of a model, in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuUsage {
    pub uuid: GpuUuid,
    /// The quota on this GPU in bytes (None: no quota).
    pub quota_bytes: Option<u64>,
    /// The GPU's physical memory, as the process that registered it saw it.
    pub physical: u64,
    pub used: u64,
    pub peak: u64,
    /// Reservations refused for the quota, ever.
    pub refused: u64,
}

/// A model's ledger at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub model: String,
    /// The quota on each GPU, as written at creation.
    pub quota: Option<QuotaSpec>,
    /// The GPUs its processes charged, in the order they were first met.
    pub gpus: Vec<GpuUsage>,
    /// Bytes charged on all GPUs together.
    pub used: u64,
    pub uncertain: u64,
    /// Reservations refused for the quota, ever, on all GPUs.
    pub refused: u64,
    pub processes: Vec<ProcessUsage>,
    /// What the model should be: awake or hibernated.
    pub power: power::Power,
}

impl Snapshot {
    /// The quota in bytes on each GPU, where that is one number: a quota in bytes (a
    /// percentage has one per GPU, in [`GpuUsage::quota_bytes`]).
    pub fn quota_bytes(&self) -> Option<u64> {
        match self.quota {
            Some(QuotaSpec::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    /// The model's usage of `uuid`, if its processes ever charged that GPU.
    pub fn gpu(&self, uuid: GpuUuid) -> Option<&GpuUsage> {
        self.gpus.iter().find(|g| g.uuid == uuid)
    }
}

/// How a ledger file is created.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Share the ledger with this group (mode 0660 instead of 0600), for workers that run
    /// as another user in the same group.
    pub group: Option<u32>,
}

/// An open ledger file, mapped into this process.
pub struct LedgerFile {
    path: PathBuf,
    model: String,
    /// The open file description that carries this process's liveness locks.
    file: File,
    map: *mut u8,
    len: usize,
    /// Slots attached through this handle (our own locks do not show in lock tests).
    own: Mutex<Vec<u32>>,
    /// Serializes this process's threads in GPU registration (the file lock does not:
    /// they share its open file description).
    registering: Mutex<()>,
    /// When this process last scanned for dead processes because a reservation failed.
    last_reclaim_ns: AtomicU64,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for LedgerFile {}
// SAFETY: the other fields are Sync; threads change the shared mapping only through atomics
// (its plain header fields are written once, in `create`, before the handle is returned).
unsafe impl Sync for LedgerFile {}

impl Drop for LedgerFile {
    fn drop(&mut self) {
        // SAFETY: unmapping what we mapped; the file closes after.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> LedgerError + 'a {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

fn file_size(slots: u32) -> usize {
    SLOTS_START + slots as usize * SLOT_SIZE
}

impl LedgerFile {
    /// The ledger file of `model` in `dir`.
    pub fn path_for(dir: &Path, model: &str) -> PathBuf {
        dir.join(format!("{model}.ledger"))
    }

    /// Creates the ledger of `model` with `quota`; fails if it exists.
    pub fn create(
        dir: &Path,
        model: &str,
        quota: Option<QuotaSpec>,
        options: CreateOptions,
    ) -> Result<LedgerFile, LedgerError> {
        if !valid_model_name(model) {
            return Err(LedgerError::BadModelName {
                model: model.to_owned(),
            });
        }
        let path = Self::path_for(dir, model);
        // With a group, workers of another user must reach their file: the directory is
        // traversable (not listable, not writable) by everyone.
        let mode = if options.group.is_some() {
            0o711
        } else {
            0o700
        };
        let dir_fd = open_dir(dir, Some(mode))?;
        // Build the whole file under a temporary name, then publish it with link(): a
        // reader never sees a half-written header, and of two creators exactly one wins.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let temp_name = format!(".{model}.ledger.{}.{nanos}", std::process::id());
        let temp = dir.join(&temp_name);
        let c_temp = CString::new(temp_name).expect("no NUL in a model name");
        let c_name = CString::new(format!("{model}.ledger")).expect("no NUL in a model name");
        // SAFETY: openat relative to the verified directory, never following a link.
        let fd = unsafe {
            libc::openat(
                dir_fd.as_raw_fd(),
                c_temp.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io_err(&temp, "create")(io::Error::last_os_error()));
        }
        // SAFETY: a descriptor we just opened and own.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let result = (|| {
            let file_mode = if let Some(gid) = options.group {
                // SAFETY: fchown on our own fd.
                if unsafe { libc::fchown(file.as_raw_fd(), u32::MAX, gid) } != 0 {
                    return Err(io_err(&temp, "give the ledger to its group")(
                        io::Error::last_os_error(),
                    ));
                }
                0o660
            } else {
                0o600
            };
            // Explicit, whatever the umask.
            // SAFETY: fchmod on our own fd.
            unsafe { libc::fchmod(file.as_raw_fd(), file_mode) };
            file.set_len(file_size(SLOTS) as u64)
                .map_err(io_err(&temp, "size"))?;
            let ledger = Self::map(path.clone(), model.to_owned(), file, file_size(SLOTS))?;
            ledger.init_header(model, quota);
            // SAFETY: two valid C strings, both relative to the verified directory.
            if unsafe {
                libc::linkat(
                    dir_fd.as_raw_fd(),
                    c_temp.as_ptr(),
                    dir_fd.as_raw_fd(),
                    c_name.as_ptr(),
                    0,
                )
            } != 0
            {
                let e = io::Error::last_os_error();
                return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                    LedgerError::Exists { path: path.clone() }
                } else {
                    io_err(&path, "create")(e)
                });
            }
            Ok(ledger)
        })();
        // SAFETY: unlinkat of the temporary name in the verified directory.
        unsafe { libc::unlinkat(dir_fd.as_raw_fd(), c_temp.as_ptr(), 0) };
        result
    }

    /// Opens the existing ledger of `model`, validating everything about it.
    pub fn open(dir: &Path, model: &str) -> Result<LedgerFile, LedgerError> {
        let (path, file, size) = Self::open_validated(dir, model)?;
        Self::map(path, model.to_owned(), file, size as usize)
    }

    /// Opens the ledger of `model` and validates its header from a copy: the path, the
    /// open file and its size.
    fn open_validated(dir: &Path, model: &str) -> Result<(PathBuf, File, u64), LedgerError> {
        if !valid_model_name(model) {
            return Err(LedgerError::BadModelName {
                model: model.to_owned(),
            });
        }
        let path = Self::path_for(dir, model);
        let dir_fd = open_dir(dir, None)?;
        let c_name = CString::new(format!("{model}.ledger")).expect("no NUL in a model name");
        // SAFETY: openat relative to the verified directory, never following a link.
        let fd = unsafe {
            libc::openat(
                dir_fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        let opened = if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a descriptor we just opened and own.
            Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(LedgerError::NotARegularFile {
                    path,
                    what: "a symbolic link",
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                return Err(LedgerError::NotARegularFile {
                    path,
                    what: "a directory",
                });
            }
            Err(e) => return Err(io_err(&path, "open")(e)),
        };
        let meta = file.metadata().map_err(io_err(&path, "inspect"))?;
        if !meta.file_type().is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else if meta.file_type().is_fifo() {
                "a FIFO"
            } else {
                "not a regular file"
            };
            return Err(LedgerError::NotARegularFile { path, what });
        }
        check_owner(&path, meta.uid(), meta.mode(), false)?;
        let damaged = |what: String| LedgerError::Damaged {
            path: path.clone(),
            what,
        };
        let size = meta.size();
        if size < HEADER_SIZE as u64 {
            return Err(damaged(format!("{size} bytes, shorter than its header")));
        }
        // Check the header from a copy before mapping anything.
        let mut raw = [0u8; HEADER_SIZE];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut raw, 0)
            .map_err(io_err(&path, "read"))?;
        validate_header(&raw, size, model).map_err(damaged)?;
        Ok((path, file, size))
    }

    /// Opens the ledger of `model`, creating it with `quota` if there is none. A ledger
    /// that exists keeps its quota: asking for a different one is an error; asking for
    /// none joins it.
    pub fn open_or_create(
        dir: &Path,
        model: &str,
        quota: Option<QuotaSpec>,
        options: CreateOptions,
    ) -> Result<LedgerFile, LedgerError> {
        let ledger = match Self::open(dir, model) {
            Ok(l) => l,
            Err(LedgerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                match Self::create(dir, model, quota, options) {
                    Err(LedgerError::Exists { .. }) => Self::open(dir, model)?, // another process won
                    other => return other,
                }
            }
            Err(e) => return Err(e),
        };
        if let Some(requested) = quota
            && ledger.quota() != Some(requested)
        {
            return Err(LedgerError::QuotaMismatch {
                path: ledger.path.clone(),
                model: model.to_owned(),
                ledger: ledger.quota(),
                requested,
            });
        }
        Ok(ledger)
    }

    fn map(
        path: PathBuf,
        model: String,
        file: File,
        len: usize,
    ) -> Result<LedgerFile, LedgerError> {
        // SAFETY: mapping `len` bytes of a file we checked is that long.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io_err(&path, "map")(io::Error::last_os_error()));
        }
        Ok(LedgerFile {
            path,
            model,
            file,
            map: map.cast(),
            len,
            own: Mutex::new(Vec::new()),
            registering: Mutex::new(()),
            last_reclaim_ns: AtomicU64::new(0),
        })
    }

    fn init_header(&self, model: &str, quota: Option<QuotaSpec>) {
        // SAFETY: a fresh, private (not yet linked) mapping of at least the header size.
        let h = unsafe { &mut *(self.map as *mut Header) };
        h.magic = MAGIC;
        h.version = VERSION;
        h.header_size = HEADER_SIZE as u32;
        h.slot_size = SLOT_SIZE as u32;
        h.slot_count = SLOTS;
        h.file_size = file_size(SLOTS) as u64;
        let (kind, percent, bytes) = match quota {
            None => (QUOTA_NONE, 0, u64::MAX),
            Some(QuotaSpec::Bytes(b)) => (QUOTA_BYTES, 0, b),
            Some(QuotaSpec::Percent(p)) => (QUOTA_PERCENT, p as u32, 0),
        };
        h.quota_kind = kind;
        h.quota_percent = percent;
        h.quota_bytes = bytes;
        h.gpu_count = MAX_GPUS as u32;
        h.gpu_size = GPU_SIZE as u32;
        h.created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        h.model = [0; 64];
        h.model[..model.len()].copy_from_slice(model.as_bytes());
    }

    fn header(&self) -> &Header {
        // SAFETY: validated size; the fields read as plain values were checked at open and
        // are never written after publication.
        unsafe { &*(self.map as *const Header) }
    }

    fn slot_count(&self) -> u32 {
        ((self.len - SLOTS_START) / SLOT_SIZE) as u32
    }

    fn slot(&self, index: u32) -> &Slot {
        assert!(index < self.slot_count());
        // SAFETY: within the mapping (checked above); slots are only accessed atomically.
        unsafe { &*(self.map.add(slot_offset(index) as usize) as *const Slot) }
    }

    fn gpu(&self, index: GpuIndex) -> &Gpu {
        // SAFETY: a GpuIndex is below MAX_GPUS, and the table lies within every validated
        // file; its fields are only accessed atomically.
        unsafe { &*(self.map.add(gpu_offset(index.get())) as *const Gpu) }
    }

    /// The GPU entries in use, in table order.
    fn ready_gpus(&self) -> impl Iterator<Item = GpuIndex> + '_ {
        (0..MAX_GPUS as u8)
            .map(GpuIndex)
            .take_while(|&g| self.gpu(g).state.load(Ordering::Acquire) == READY)
    }

    /// The whole file, read word by word with atomic loads (the mapping is shared with
    /// other processes and threads that write it).
    fn copy(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for at in (0..self.len).step_by(8) {
            // SAFETY: within the mapping, 8-byte aligned (a page-aligned map; every
            // structure is a multiple of 8 bytes).
            let word = unsafe { &*(self.map.add(at) as *const AtomicU64) };
            out.extend_from_slice(&word.load(Ordering::Acquire).to_ne_bytes());
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the processes of group `gid` use the ledger of `model` (mode 0660, the file's
    /// group `gid`), as [`CreateOptions::group`] does at creation: for a ledger made
    /// before its model ran as another user. The file is checked, never mapped.
    pub fn share_with_group(dir: &Path, model: &str, gid: u32) -> Result<(), LedgerError> {
        let (path, file, _) = Self::open_validated(dir, model)?;
        let fd = file.as_raw_fd();
        // SAFETY: fchown and fchmod on our own descriptor.
        if unsafe { libc::fchown(fd, u32::MAX, gid) } != 0
            // SAFETY: fchmod on the same descriptor, which we own.
            || unsafe { libc::fchmod(fd, 0o660) } != 0
        {
            return Err(io_err(&path, "give the ledger to its group")(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The quota on each GPU, as written at creation.
    pub fn quota(&self) -> Option<QuotaSpec> {
        let h = self.header();
        match h.quota_kind {
            QUOTA_BYTES => Some(QuotaSpec::Bytes(h.quota_bytes)),
            QUOTA_PERCENT => Some(QuotaSpec::Percent(h.quota_percent as u8)),
            _ => None,
        }
    }

    /// The entry of the GPU `uuid`, registered if this is the first time the model meets
    /// it, with its quota in bytes resolved against `physical` (the GPU's memory). See the
    /// protocol in the module's documentation.
    pub fn register_gpu(&self, uuid: GpuUuid, physical: u64) -> Result<GpuIndex, LedgerError> {
        self.register_gpu_with_quota(uuid, physical, None)
    }

    /// [`LedgerFile::register_gpu`], the GPU's quota given by its registrant (`quota`:
    /// HAMi's limit of that device, which may differ between devices) instead of the
    /// file's. The first registrant of a GPU fixes it, as for a percentage.
    pub fn register_gpu_with_quota(
        &self,
        uuid: GpuUuid,
        physical: u64,
        quota: Option<u64>,
    ) -> Result<GpuIndex, LedgerError> {
        if let Some(found) = self.find_gpu(uuid) {
            return Ok(found);
        }
        let _threads = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        let _processes =
            RegistrationLock::take(&self.file).map_err(io_err(&self.path, "lock the GPU table"))?;
        if let Some(found) = self.find_gpu(uuid) {
            return Ok(found);
        }
        let index = (0..MAX_GPUS as u8)
            .map(GpuIndex)
            .find(|&g| self.gpu(g).state.load(Ordering::Acquire) != READY)
            .ok_or_else(|| LedgerError::TooManyGpus {
                path: self.path.clone(),
                uuid,
            })?;
        let g = self.gpu(index);
        let quota = match (quota, self.quota()) {
            (Some(q), _) => q.max(1),
            (None, None) => u64::MAX,
            (None, Some(spec)) => spec.bytes(physical).max(1),
        };
        for (word, bytes) in g.uuid.iter().zip(uuid.0.chunks(8)) {
            word.store(
                u64::from_ne_bytes(bytes.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
        g.quota_bytes.store(quota, Ordering::Relaxed);
        g.physical.store(physical, Ordering::Relaxed);
        g.used.store(0, Ordering::Relaxed);
        g.peak.store(0, Ordering::Relaxed);
        g.refused.store(0, Ordering::Relaxed);
        g.state.store(READY, Ordering::Release);
        Ok(index)
    }

    /// The entry of the GPU `uuid`, if the model has met it.
    pub fn find_gpu(&self, uuid: GpuUuid) -> Option<GpuIndex> {
        self.ready_gpus().find(|&g| self.gpu_uuid(g) == uuid)
    }

    /// The UUID of a registered GPU entry.
    pub fn gpu_uuid(&self, index: GpuIndex) -> GpuUuid {
        let g = self.gpu(index);
        let mut out = [0u8; 16];
        for (bytes, word) in out.chunks_mut(8).zip(&g.uuid) {
            bytes.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        GpuUuid(out)
    }

    /// The quota on a registered GPU in bytes; None without a quota.
    pub fn gpu_quota(&self, index: GpuIndex) -> Option<u64> {
        match self.gpu(index).quota_bytes.load(Ordering::Acquire) {
            u64::MAX => None,
            b => Some(b),
        }
    }

    /// Bytes charged to the model on a registered GPU now.
    pub fn gpu_used(&self, index: GpuIndex) -> u64 {
        self.gpu(index).used.load(Ordering::Acquire)
    }

    /// Bytes charged to the model now, on all its GPUs together.
    pub fn used(&self) -> u64 {
        self.ready_gpus().map(|g| self.gpu_used(g)).sum()
    }

    // ---- liveness locks ----------------------------------------------------------------

    fn lock(&self, index: u32, kind: i16, cmd: i32) -> io::Result<libc::flock> {
        slot_lock(&self.file, index, kind, cmd)
    }

    /// Takes the liveness lock of a slot, if no other process holds it.
    fn try_lock(&self, index: u32) -> bool {
        self.lock(index, libc::F_WRLCK as i16, libc::F_OFD_SETLK)
            .is_ok()
    }

    fn unlock(&self, index: u32) {
        let _ = self.lock(index, libc::F_UNLCK as i16, libc::F_OFD_SETLK);
    }

    fn held_elsewhere(&self, index: u32) -> bool {
        held_elsewhere(&self.file, index)
    }

    fn is_own(&self, index: u32) -> bool {
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&index)
    }

    // ---- attach, reclaim, snapshot --------------------------------------------------------

    /// Claims a slot for this process: its charges live there until `detach` (or until
    /// the process dies and someone reclaims them).
    pub fn attach(&self) -> Result<Attachment<'_>, LedgerError> {
        for pass in 0..2 {
            if let Some((index, generation)) = self.claim() {
                return Ok(Attachment {
                    file: self,
                    index,
                    generation,
                    closed: std::sync::atomic::AtomicBool::new(false),
                    unrecorded: AtomicU64::new(0),
                });
            }
            if pass == 0 {
                self.reclaim_dead();
            }
        }
        Err(LedgerError::Full {
            path: self.path.clone(),
        })
    }

    /// A free slot, claimed: its index and its new generation.
    fn claim(&self) -> Option<(u32, u64)> {
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let n = self.slot_count();
        for k in 0..n {
            let index = (pid.wrapping_add(k)) % n;
            if own.contains(&index) {
                continue;
            }
            let s = self.slot(index);
            if s.state.load(Ordering::Acquire) != FREE || !self.try_lock(index) {
                continue;
            }
            if s.state
                .compare_exchange(FREE, CLAIMING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                self.unlock(index);
                continue;
            }
            s.pid.store(pid, Ordering::Relaxed);
            s.start_time.store(start_time(pid), Ordering::Relaxed);
            s.pid_ns.store(own_pid_namespace(), Ordering::Relaxed);
            for g in &s.gpus {
                g.used.store(0, Ordering::Relaxed);
                g.peak.store(0, Ordering::Relaxed);
            }
            s.inflight.store(0, Ordering::Relaxed);
            for t in &s.threads {
                t.store(0, Ordering::Relaxed);
            }
            s.power.reset();
            let generation = s.generation.fetch_add(1, Ordering::Relaxed) + 1;
            s.state.store(LIVE, Ordering::Release);
            self.header().attach_seq.fetch_add(1, Ordering::AcqRel);
            own.push(index);
            return Some((index, generation));
        }
        None
    }

    /// The pids of the model's live processes in this process's PID namespace, as that
    /// namespace numbers them (this process included once it has attached).
    pub fn pids_in_own_namespace(&self) -> Vec<u32> {
        let ns = own_pid_namespace();
        (0..self.slot_count())
            .map(|i| self.slot(i))
            .filter(|s| {
                ns != 0
                    && s.state.load(Ordering::Acquire) == LIVE
                    && s.pid_ns.load(Ordering::Relaxed) == ns
            })
            .map(|s| s.pid.load(Ordering::Relaxed))
            .collect()
    }

    /// Frees the slots of processes that died without detaching and gives their bytes
    /// back to the model. Safe to run from any number of processes at once.
    pub fn reclaim_dead(&self) -> Reclaimed {
        let mut found = Reclaimed::default();
        let _serial = self.own.lock().unwrap_or_else(|e| e.into_inner()); // one thread of ours at a time
        let h = self.header();
        for index in 0..self.slot_count() {
            if _serial.contains(&index) {
                continue;
            }
            let s = self.slot(index);
            let state = s.state.load(Ordering::Acquire);
            if state == FREE {
                continue;
            }
            // Taking the slot's lock succeeds only if its process (or a reclaimer that
            // died half-way) is gone; holding it keeps other reclaimers out.
            if !self.try_lock(index) {
                continue;
            }
            if s.state
                .compare_exchange(state, RECLAIMING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let used = self.give_back(s);
                let inflight = s
                    .threads
                    .iter()
                    .fold(s.inflight.swap(0, Ordering::AcqRel), |sum, t| {
                        sum.saturating_add(t.swap(0, Ordering::AcqRel))
                    });
                h.uncertain.fetch_add(inflight, Ordering::AcqRel);
                free_slot(s);
                found.slots += u32::from(state != CLAIMING);
                found.bytes += used;
                found.uncertain += inflight;
            }
            self.unlock(index);
        }
        drop(_serial);
        found.healed = self.heal_if_idle();
        found
    }

    /// A reclaim before refusing a reservation, at most every 10 ms per process: a dead
    /// process is noticed within that time, and threads that all hit the quota at once do
    /// not all scan the slots.
    fn reclaim_before_refusing(&self) -> Reclaimed {
        const INTERVAL_NS: u64 = 10_000_000;
        let now = monotonic_ns();
        let last = self.last_reclaim_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) < INTERVAL_NS
            || self
                .last_reclaim_ns
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return Reclaimed::default();
        }
        self.reclaim_dead()
    }

    /// Gives everything a slot holds back to the GPUs it was charged on; returns how much.
    fn give_back(&self, s: &Slot) -> u64 {
        let mut total = 0;
        for g in self.ready_gpus() {
            let used = s.gpus[g.get()].used.swap(0, Ordering::AcqRel);
            saturating_sub(&self.gpu(g).used, used);
            total += used;
        }
        total
    }

    /// With no process left in the model, nothing can be charged: reset what was left
    /// uncertain. Lock-free: a process that attaches and reserves meanwhile changes a
    /// GPU's `used`, and the reset of that GPU does not happen.
    fn heal_if_idle(&self) -> bool {
        let h = self.header();
        let charged: Vec<(GpuIndex, u64)> = self
            .ready_gpus()
            .map(|g| (g, self.gpu_used(g)))
            .filter(|&(_, used)| used != 0)
            .collect();
        if charged.is_empty() && h.uncertain.load(Ordering::Acquire) == 0 {
            return false;
        }
        if (0..self.slot_count()).any(|i| self.slot(i).state.load(Ordering::Acquire) != FREE) {
            return false;
        }
        let mut healed = true;
        for (g, used) in charged {
            healed &= self
                .gpu(g)
                .used
                .compare_exchange(used, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        }
        if healed {
            h.uncertain.store(0, Ordering::Release);
        }
        healed
    }

    /// The model's usage and every process in it, from a copy of the mapping: checked
    /// again, since any process of the model may have rewritten the file since it was
    /// opened.
    pub fn snapshot(&self) -> Result<Snapshot, LedgerError> {
        parse_snapshot(&self.copy(), &self.model, |index| {
            self.is_own(index) || self.held_elsewhere(index)
        })
        .map_err(|what| LedgerError::Damaged {
            path: self.path.clone(),
            what,
        })
    }

    /// In a child just forked from a process that had this ledger open: let go of the
    /// parent's open file description, so that the parent's liveness locks follow the
    /// parent alone. The handle must not be used afterwards.
    pub fn forget_in_forked_child(&self) {
        // SAFETY: closes this process's copy of the descriptor; the parent keeps its own.
        // The File's later drop would close a number that may be reused: callers leak
        // the handle instead of dropping it.
        unsafe { libc::close(self.file.as_raw_fd()) };
    }
}

/// The ledger of `model` read from a copy, never mapped: what a process that must not
/// trust the model's processes (the supervisor, `cuvisor ledger`) reads. A process of the
/// model may truncate or rewrite the file at any moment; that makes this fail (or read
/// numbers that are wrong, saturated, never out of range) and harms nothing else.
pub fn read_snapshot(dir: &Path, model: &str) -> Result<Snapshot, LedgerError> {
    let (path, file, size) = LedgerFile::open_validated(dir, model)?;
    let mut raw = vec![0u8; size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut raw, 0).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            LedgerError::Damaged {
                path: path.clone(),
                what: "it shrank while it was read".into(),
            }
        } else {
            io_err(&path, "read")(e)
        }
    })?;
    // The file may have changed since it was opened: everything is checked again.
    parse_snapshot(&raw, model, |index| held_elsewhere(&file, index))
        .map_err(|what| LedgerError::Damaged { path, what })
}

/// Checks a ledger's header (`raw`, at least its first `HEADER_SIZE` (256) bytes, of a file
/// of `size` bytes) for `model`: what is wrong, if anything.
pub fn validate_header(raw: &[u8], size: u64, model: &str) -> Result<(), String> {
    if raw.len() < HEADER_SIZE || size < HEADER_SIZE as u64 {
        return Err(format!("{size} bytes, shorter than its header"));
    }
    let u32_at = |o| u32_at(raw, o);
    let u64_at = |o| u64_at(raw, o);
    if raw[..8] != MAGIC {
        return Err("wrong magic number".into());
    }
    match u32_at(8) {
        VERSION => {}
        old @ 1..VERSION => {
            return Err(format!(
                "layout version {old}, made by an older cuvisor (this one reads version \
                 {VERSION}, with a quota per GPU and hibernation); stop the model's processes \
                 first"
            ));
        }
        other => {
            return Err(format!(
                "layout version {other}, this cuvisor reads version {VERSION}"
            ));
        }
    }
    let (header_size, slot_size, slot_count, declared) =
        (u32_at(12), u32_at(16), u32_at(20), u64_at(24));
    let (gpu_count, gpu_size) = (
        u32_at(offset_of!(Header, gpu_count)),
        u32_at(offset_of!(Header, gpu_size)),
    );
    if header_size as usize != HEADER_SIZE
        || slot_size as usize != SLOT_SIZE
        || gpu_count as usize != MAX_GPUS
        || gpu_size as usize != GPU_SIZE
        || slot_count == 0
        || slot_count > 65536
    {
        return Err(format!(
            "header of {header_size} bytes, {gpu_count} GPU entries of {gpu_size} bytes, \
             slots of {slot_size} bytes, {slot_count} slots"
        ));
    }
    if declared != file_size(slot_count) as u64 || size != declared {
        return Err(format!(
            "{size} bytes where {} are expected",
            file_size(slot_count)
        ));
    }
    let (kind, percent) = (
        u32_at(offset_of!(Header, quota_kind)),
        u32_at(offset_of!(Header, quota_percent)),
    );
    if kind > QUOTA_PERCENT || (kind == QUOTA_PERCENT && !(1..=100).contains(&percent)) {
        return Err("invalid quota".into());
    }
    let name_bytes = &raw[offset_of!(Header, model)..offset_of!(Header, model) + 64];
    let name_len = name_bytes.iter().position(|&b| b == 0).unwrap_or(64);
    if &name_bytes[..name_len] != model.as_bytes() {
        return Err(format!(
            "it belongs to model \"{}\"",
            String::from_utf8_lossy(&name_bytes[..name_len])
        ));
    }
    Ok(())
}

/// A snapshot of `model` from a copy of its whole ledger file, validated first; `alive`
/// tells whether the process of a slot lives. Whatever the bytes, this returns an error
/// or numbers (any value a counter can hold), never panics.
pub fn parse_snapshot(
    raw: &[u8],
    model: &str,
    alive: impl Fn(u32) -> bool,
) -> Result<Snapshot, String> {
    validate_header(raw, raw.len() as u64, model)?;
    let u32_at = |o| u32_at(raw, o);
    let u64_at = |o| u64_at(raw, o);
    let quota = match (
        u32_at(offset_of!(Header, quota_kind)),
        u32_at(offset_of!(Header, quota_percent)),
    ) {
        (QUOTA_BYTES, _) => Some(QuotaSpec::Bytes(u64_at(offset_of!(Header, quota_bytes)))),
        (QUOTA_PERCENT, p @ 1..=100) => Some(QuotaSpec::Percent(p as u8)),
        _ => None,
    };
    let gpus: Vec<GpuUsage> = (0..MAX_GPUS)
        .map(gpu_offset)
        .take_while(|&o| u32_at(o + offset_of!(Gpu, state)) == READY)
        .map(|o| {
            let at = |field| u64_at(o + field);
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(&raw[o + offset_of!(Gpu, uuid)..][..16]);
            GpuUsage {
                uuid: GpuUuid(uuid),
                quota_bytes: match at(offset_of!(Gpu, quota_bytes)) {
                    u64::MAX => None,
                    b => Some(b),
                },
                physical: at(offset_of!(Gpu, physical)),
                used: at(offset_of!(Gpu, used)),
                peak: at(offset_of!(Gpu, peak)),
                refused: at(offset_of!(Gpu, refused)),
            }
        })
        .collect();
    let slot_count = ((raw.len() - SLOTS_START) / SLOT_SIZE) as u32;
    let processes = (0..slot_count)
        .filter_map(|index| {
            let o = slot_offset(index) as usize;
            if u32_at(o + offset_of!(Slot, state)) != LIVE {
                return None;
            }
            let per_gpu: Vec<ProcessGpu> = gpus
                .iter()
                .enumerate()
                .map(|(g, gpu)| {
                    let at = o + offset_of!(Slot, gpus) + g * std::mem::size_of::<SlotGpu>();
                    ProcessGpu {
                        gpu: gpu.uuid,
                        used: u64_at(at + offset_of!(SlotGpu, used)),
                        peak: u64_at(at + offset_of!(SlotGpu, peak)),
                    }
                })
                .filter(|p| p.peak != 0 || p.used != 0)
                .collect();
            Some(ProcessUsage {
                slot: index,
                pid: u32_at(o + offset_of!(Slot, pid)),
                generation: u64_at(o + offset_of!(Slot, generation)),
                start_time: u64_at(o + offset_of!(Slot, start_time)),
                used: per_gpu.iter().fold(0, |sum, p| sum.saturating_add(p.used)),
                gpus: per_gpu,
                pid_ns: u64_at(o + offset_of!(Slot, pid_ns)),
                alive: alive(index),
                power: power::parse_slot(
                    &raw[o + offset_of!(Slot, power)..][..std::mem::size_of::<power::SlotPower>()],
                    u64_at(o + offset_of!(Slot, generation)),
                ),
            })
        })
        .collect();
    Ok(Snapshot {
        model: model.to_owned(),
        quota,
        used: gpus.iter().fold(0, |sum, g| sum.saturating_add(g.used)),
        refused: gpus.iter().fold(0, |sum, g| sum.saturating_add(g.refused)),
        gpus,
        uncertain: u64_at(offset_of!(Header, uncertain)),
        processes,
        power: power::Power::from_word(u32_at(offset_of!(Header, power))),
    })
}

/// The lock that serializes GPU registration between processes, held until dropped.
struct RegistrationLock<'a>(&'a File);

/// How long a registration waits for another process's: registration takes
/// microseconds, so a holder this slow is stopped (SIGSTOP, a debugger, a frozen cgroup).
const REGISTRATION_WAIT_NS: u64 = 2_000_000_000;

impl<'a> RegistrationLock<'a> {
    /// Takes the lock, trying again every millisecond (a signal does not interrupt the
    /// wait), for at most [`REGISTRATION_WAIT_NS`].
    fn take(file: &'a File) -> io::Result<RegistrationLock<'a>> {
        let start = monotonic_ns();
        loop {
            match lock_byte(
                file,
                REGISTRATION_LOCK,
                libc::F_WRLCK as i16,
                libc::F_OFD_SETLK,
            ) {
                Ok(_) => return Ok(RegistrationLock(file)),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EACCES | libc::EINTR)
                    ) => {}
                Err(e) => return Err(e),
            }
            if monotonic_ns().saturating_sub(start) > REGISTRATION_WAIT_NS {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "another process of the model has held the GPU table's lock for 2 s \
                     (is it stopped?)",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for RegistrationLock<'_> {
    fn drop(&mut self) {
        let _ = lock_byte(
            self.0,
            REGISTRATION_LOCK,
            libc::F_UNLCK as i16,
            libc::F_OFD_SETLK,
        );
    }
}

/// The liveness lock of slot `index` in `file`: `cmd` (`F_OFD_SETLK`, `F_OFD_GETLK`) with
/// lock type `kind`.
fn slot_lock(file: &File, index: u32, kind: i16, cmd: i32) -> io::Result<libc::flock> {
    lock_byte(file, LOCK_BASE + index as i64, kind, cmd)
}

/// An open-file-description lock `cmd` of type `kind` on the byte at `at` of `file`.
fn lock_byte(file: &File, at: i64, kind: i16, cmd: i32) -> io::Result<libc::flock> {
    // SAFETY: flock is plain data; all zeros is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = at;
    fl.l_len = 1;
    // SAFETY: fcntl with a valid flock on an open file.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(fl)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description (another live process) holds the slot's lock.
fn held_elsewhere(file: &File, index: u32) -> bool {
    match slot_lock(file, index, libc::F_WRLCK as i16, libc::F_OFD_GETLK) {
        Ok(fl) => fl.l_type != libc::F_UNLCK as i16,
        Err(_) => true, // cannot tell: assume alive (never reclaim what might be live)
    }
}

/// The native-endian `u32` and `u64` at byte `o` of `raw` (checked by the caller to hold
/// them).
fn u32_at(raw: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(raw[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(raw: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(raw[o..o + 8].try_into().expect("8 bytes"))
}

/// Clears a slot whose charges were settled, and makes it free (last, with Release).
fn free_slot(s: &Slot) {
    s.pid.store(0, Ordering::Relaxed);
    s.start_time.store(0, Ordering::Relaxed);
    for g in &s.gpus {
        g.peak.store(0, Ordering::Relaxed);
    }
    s.state.store(FREE, Ordering::Release);
}

fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; all zeros is a valid value.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime with a valid timespec (served by the vDSO, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn saturating_sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(n))
    });
}

fn raise(peak: &AtomicU64, value: u64) {
    if value > peak.load(Ordering::Relaxed) {
        peak.fetch_max(value, Ordering::Relaxed);
    }
}

/// The inode of this process's PID namespace (0 if unknown).
fn own_pid_namespace() -> u64 {
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// A process's start time in clock ticks since boot (0 if unknown).
pub fn start_time(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_field(&stat, 22)?.parse().ok())
        .unwrap_or(0)
}

/// Field `n` (numbered from 1, as proc(5) numbers them; 3 or more) of the text of a
/// `/proc/PID/stat` or `/proc/PID/task/TID/stat`. The command name (field 2) may contain
/// spaces and parentheses: fields are counted after its last `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n.checked_sub(3)?)
}

/// A process's place in a ledger: reserve and release bytes against the model's quota.
///
/// Reservations and releases may run on any number of threads while another thread
/// detaches (a process returning from `main` while its threads still allocate). Each
/// operation first marks itself under way and then checks `closed`; `detach` first sets
/// `closed` and then waits until no operation is under way ([`gate`]: each side sees the
/// other's first step): the detach settles the slot only once no operation is under way,
/// and every later operation sees `closed`, unmarks itself, and is refused (a
/// reservation) or ignored (a release: the detach gave everything back). An operation
/// also writes its bytes in its thread's cell of the slot, for a reclaimer to count as
/// uncertain should the process be killed in the middle. On the process's first
/// [`gate::THREADS`] threads that costs plain stores; other threads count themselves in
/// `unrecorded` (process memory) and then use the slot's shared `inflight`.
pub struct Attachment<'a> {
    file: &'a LedgerFile,
    index: u32,
    /// The slot's generation when this process claimed it.
    generation: u64,
    closed: std::sync::atomic::AtomicBool,
    /// Operations under way on threads without a record: counted here, in process
    /// memory, before they touch the slot's shared `inflight` (which, once the detach has
    /// freed the slot, may be another process's).
    unrecorded: AtomicU64,
}

/// An operation under way, as [`Attachment::enter`] marked it.
enum UnderWay {
    /// In the calling thread's record and cell; what they held before (an operation a
    /// signal handler interrupted).
    Thread {
        thread: usize,
        was_busy: bool,
        before: u64,
    },
    /// In the slot's shared `inflight`.
    Shared { bytes: u64 },
}

/// How long `detach` waits for operations under way before it leaves the slot to be
/// reclaimed after this process's death instead (a thread stopped forever in the middle
/// of one, e.g. by a signal handler that called `exit`).
const DETACH_WAIT_NS: u64 = 2_000_000_000;

impl Attachment<'_> {
    pub fn ledger(&self) -> &LedgerFile {
        self.file
    }

    pub fn slot_index(&self) -> u32 {
        self.index
    }

    /// Starts an operation on `bytes`: marks it under way, unless the attachment is
    /// detaching or detached.
    #[inline]
    fn enter(&self, s: &Slot, bytes: u64) -> Option<UnderWay> {
        let Some(thread) = gate::mine() else {
            self.unrecorded.fetch_add(1, Ordering::SeqCst);
            if self.closed.load(Ordering::SeqCst) {
                self.unrecorded.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
            s.inflight.fetch_add(bytes, Ordering::SeqCst);
            return Some(UnderWay::Shared { bytes });
        };
        let was_busy = gate::busy(thread);
        if self.closed.load(Ordering::Relaxed) {
            gate::idle(thread, was_busy);
            return None;
        }
        let cell = &s.threads[thread];
        // What an operation this one interrupted (a signal handler's) had under way stays.
        let before = cell.load(Ordering::Relaxed);
        cell.store(before.saturating_add(bytes), Ordering::Relaxed);
        Some(UnderWay::Thread {
            thread,
            was_busy,
            before,
        })
    }

    #[inline]
    fn leave(&self, s: &Slot, op: UnderWay) {
        match op {
            UnderWay::Thread {
                thread,
                was_busy,
                before,
            } => {
                s.threads[thread].store(before, Ordering::Release);
                gate::idle(thread, was_busy);
            }
            UnderWay::Shared { bytes } => {
                s.inflight.fetch_sub(bytes, Ordering::SeqCst);
                self.unrecorded.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Charges `bytes` on GPU `gpu` (an entry of [`LedgerFile::register_gpu`]) if the
    /// model stays within its quota there: one compare-and-add on the GPU's total. Before
    /// refusing, dead processes of the model are reclaimed (at most every 10 ms per
    /// process) and the reservation is tried once more.
    pub fn try_reserve(&self, gpu: GpuIndex, bytes: u64) -> Result<(), Refusal> {
        let g = self.file.gpu(gpu);
        let s = self.file.slot(self.index);
        let Some(op) = self.enter(s, bytes) else {
            return Err(Refusal {
                requested: bytes,
                used: g.used.load(Ordering::Acquire),
                quota: 0,
            });
        };
        let mut result = commit(g, bytes);
        if result.is_err() && self.file.reclaim_before_refusing().bytes > 0 {
            result = commit(g, bytes);
        }
        if let Ok(total) = result {
            // The GPU is charged first, the slot after: a death in between leaves the
            // bytes charged (safe), and the thread's cell says they are uncertain.
            let mine = &s.gpus[gpu.get()];
            let held = mine.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
            raise(&mine.peak, held);
            raise(&g.peak, total);
        }
        self.leave(s, op);
        if result.is_err() {
            g.refused.fetch_add(1, Ordering::Relaxed);
        }
        result.map(|_| ())
    }

    /// Gives back what `try_reserve` charged on `gpu`: the slot first, then the GPU (a
    /// death in between leaves the model over-charged, the safe side).
    pub fn release(&self, gpu: GpuIndex, bytes: u64) {
        let s = self.file.slot(self.index);
        let Some(op) = self.enter(s, bytes) else {
            return;
        };
        saturating_sub(&s.gpus[gpu.get()].used, bytes);
        // Exact, one instruction: a detach does not settle the slot while this runs, so
        // the GPU's total cannot be subtracted from twice.
        self.file.gpu(gpu).used.fetch_sub(bytes, Ordering::AcqRel);
        self.leave(s, op);
    }

    /// Bytes this process holds on all GPUs.
    pub fn held(&self) -> u64 {
        let s = self.file.slot(self.index);
        s.gpus.iter().map(|g| g.used.load(Ordering::Acquire)).sum()
    }

    /// Leaves the ledger: gives back everything this process holds and frees its slot.
    /// Later reservations are refused and releases ignored. Idempotent. Waits for the
    /// reservations and releases other threads have under way; if they do not end within
    /// 2 s, the slot is left as it is, for a reclaimer to settle after this process dies.
    pub fn detach(&self) {
        gate::prepare();
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if !gate::heavy_fence() {
            return; // whether operations are under way cannot be known: left to reclaim
        }
        let s = self.file.slot(self.index);
        let start = monotonic_ns();
        // Until `busy` answers false, at most until the deadline.
        let waited = |busy: &dyn Fn() -> bool| {
            while busy() {
                if monotonic_ns().saturating_sub(start) > DETACH_WAIT_NS {
                    return false;
                }
                std::thread::yield_now();
            }
            true
        };
        // Each thread's record idle once is enough: an operation that starts afterwards
        // sees `closed`.
        let settled = (0..gate::THREADS).all(|t| waited(&|| gate::is_busy(t)))
            && waited(&|| self.unrecorded.load(Ordering::SeqCst) != 0);
        if !settled {
            return;
        }
        self.file.give_back(s);
        free_slot(s);
        self.file.unlock(self.index);
        self.file
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&i| i != self.index);
        self.file.heal_if_idle();
    }
}

/// Adds `bytes` to a GPU's total if it stays within the GPU's quota; the new total.
fn commit(g: &Gpu, bytes: u64) -> Result<u64, Refusal> {
    let quota = g.quota_bytes.load(Ordering::Acquire);
    let mut used = g.used.load(Ordering::Acquire);
    loop {
        let next = match used.checked_add(bytes) {
            Some(n) if n <= quota => n,
            _ => {
                return Err(Refusal {
                    requested: bytes,
                    used,
                    quota,
                });
            }
        };
        match g
            .used
            .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Ok(next),
            Err(actual) => used = actual,
        }
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        self.detach();
    }
}

/// One model found by [`list`]: its name, and its snapshot or why it could not be read.
pub type Listed = (String, Result<Snapshot, LedgerError>);

/// Every ledger in `dir`, each read from a copy ([`read_snapshot`]).
pub fn list(dir: &Path) -> Result<Vec<Listed>, LedgerError> {
    let checked = match open_dir(dir, None) {
        Err(LedgerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
        Ok(fd) => fd,
    };
    // The names come from the directory checked, through its descriptor; each ledger is
    // then opened (and checked) on its own.
    let opened = reopen_dir(&checked).map_err(io_err(dir, "list"))?;
    let entries = std::fs::read_dir(format!("/proc/self/fd/{}", opened.as_raw_fd()))
        .map_err(io_err(dir, "list"))?;
    let mut models: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ledger")
                .map(str::to_owned)
        })
        .filter(|m| !m.starts_with('.'))
        .collect();
    models.sort();
    Ok(models
        .into_iter()
        .map(|m| {
            let snap = read_snapshot(dir, &m);
            (m, snap)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("cuvisor-ledger-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A new ledger of model "m" with `quota`, in a directory of its own.
    fn fresh(tag: &str, quota: QuotaSpec) -> (PathBuf, LedgerFile) {
        let dir = temp_dir(tag);
        let l = LedgerFile::create(&dir, "m", Some(quota), CreateOptions::default()).unwrap();
        (dir, l)
    }

    fn uuid(n: u8) -> GpuUuid {
        GpuUuid([n; 16])
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis_of_the_name() {
        let stat = "42 (a) (b c) S 7 42 42 0 -1 4194560 1 2 3 4 150 25 0 0 20 0 1 0 9001 0";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 4), Some("7"));
        assert_eq!(
            (
                stat_field(stat, 14),
                stat_field(stat, 15),
                stat_field(stat, 22)
            ),
            (Some("150"), Some("25"), Some("9001"))
        );
        assert_eq!(stat_field(stat, 2), None);
        assert_eq!(stat_field("no name here", 3), None);
    }

    #[test]
    fn reserve_to_the_quota_exactly_and_release() {
        let (dir, l) = fresh("basic", QuotaSpec::Bytes(100));
        let g = l.register_gpu(uuid(1), 1000).unwrap();
        let a = l.attach().unwrap();
        assert_eq!(a.try_reserve(g, 60), Ok(()));
        assert_eq!(a.try_reserve(g, 40), Ok(()));
        assert_eq!(
            a.try_reserve(g, 1),
            Err(Refusal {
                requested: 1,
                used: 100,
                quota: 100
            })
        );
        a.release(g, 40);
        let s = l.snapshot().unwrap();
        assert_eq!((s.used, s.refused, s.processes.len()), (60, 1, 1));
        let gpu = s.gpu(uuid(1)).unwrap();
        assert_eq!(
            (
                gpu.used,
                gpu.peak,
                gpu.quota_bytes,
                gpu.physical,
                gpu.refused
            ),
            (60, 100, Some(100), 1000, 1)
        );
        assert_eq!(s.processes[0].used, 60);
        assert!(s.processes[0].alive);
        drop(a);
        assert_eq!(l.used(), 0);
        assert!(l.snapshot().unwrap().processes.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The quota holds on each GPU on its own: two GPUs hold the quota each, and a
    /// process's bytes go back to the GPU they were charged on.
    #[test]
    fn each_gpu_has_the_whole_quota_and_gets_its_own_bytes_back() {
        let (dir, l) = fresh("per-gpu", QuotaSpec::Bytes(100));
        let g0 = l.register_gpu(uuid(1), 1000).unwrap();
        let g1 = l.register_gpu(uuid(2), 1000).unwrap();
        assert_ne!(g0, g1);
        assert_eq!(l.register_gpu(uuid(2), 5).unwrap(), g1, "found, not again");
        let a = l.attach().unwrap();
        let b = l.attach().unwrap();
        assert_eq!(a.try_reserve(g0, 100), Ok(()));
        assert_eq!(b.try_reserve(g1, 70), Ok(()));
        assert_eq!(
            b.try_reserve(g0, 1),
            Err(Refusal {
                requested: 1,
                used: 100,
                quota: 100
            })
        );
        assert_eq!(a.try_reserve(g1, 30), Ok(()));
        assert_eq!((l.gpu_used(g0), l.gpu_used(g1), l.used()), (100, 100, 200));
        let s = l.snapshot().unwrap();
        let pa = s
            .processes
            .iter()
            .find(|p| p.slot == a.slot_index())
            .unwrap();
        assert_eq!(pa.used, 130);
        assert_eq!(
            pa.gpus,
            vec![
                ProcessGpu {
                    gpu: uuid(1),
                    used: 100,
                    peak: 100
                },
                ProcessGpu {
                    gpu: uuid(2),
                    used: 30,
                    peak: 30
                }
            ]
        );
        drop(a);
        assert_eq!((l.gpu_used(g0), l.gpu_used(g1)), (0, 70));
        assert_eq!(b.try_reserve(g0, 100), Ok(()));
        drop(b);
        let s = l.snapshot().unwrap();
        assert_eq!(
            s.gpus.iter().map(|g| (g.used, g.peak)).collect::<Vec<_>>(),
            [(0, 100), (0, 100)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Processes registering the same GPUs at once (here: threads with open file
    /// descriptions of their own, which the registration lock excludes as it does
    /// processes) agree on one entry per GPU.
    #[test]
    fn concurrent_registrations_give_one_entry_per_gpu() {
        for round in 0..40 {
            let (dir, l) = fresh(&format!("race-{round}"), QuotaSpec::Bytes(100));
            let seen: Vec<Vec<GpuIndex>> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..6)
                    .map(|t| {
                        let dir = &dir;
                        scope.spawn(move || {
                            let mine = LedgerFile::open(dir, "m").unwrap();
                            (0..4u8)
                                .map(|n| mine.register_gpu(uuid((n + t) % 4), 1000).unwrap())
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            let snap = l.snapshot().unwrap();
            assert_eq!(snap.gpus.len(), 4, "round {round}: {snap:?}");
            for (t, indices) in seen.iter().enumerate() {
                for (n, index) in indices.iter().enumerate() {
                    let u = uuid((n as u8 + t as u8) % 4);
                    assert_eq!(l.find_gpu(u), Some(*index), "round {round}");
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_sixteenth_gpu_fits_and_a_seventeenth_is_refused() {
        let (dir, l) = fresh("many", QuotaSpec::Bytes(100));
        for n in 0..MAX_GPUS as u8 {
            assert_eq!(l.register_gpu(uuid(n), 1000).unwrap().get(), n as usize);
        }
        let err = l.register_gpu(uuid(200), 1000).unwrap_err();
        assert!(matches!(err, LedgerError::TooManyGpus { .. }), "{err}");
        assert!(err.to_string().contains(&uuid(200).to_string()), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_percentage_is_resolved_against_each_gpu() {
        let (dir, l) = fresh("percent", QuotaSpec::Percent(25));
        let small = l.register_gpu(uuid(1), 400).unwrap();
        let big = l.register_gpu(uuid(2), 800).unwrap();
        assert_eq!(
            (l.gpu_quota(small), l.gpu_quota(big)),
            (Some(100), Some(200))
        );
        let again = LedgerFile::open(&dir, "m").unwrap();
        assert_eq!(
            again.register_gpu(uuid(1), 4000).unwrap(),
            small,
            "the first resolution stands"
        );
        assert_eq!(again.gpu_quota(small), Some(100));
        let a = l.attach().unwrap();
        assert_eq!(a.try_reserve(big, 200), Ok(()));
        assert!(a.try_reserve(small, 101).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_quota_nothing_is_refused_but_everything_is_counted() {
        let dir = temp_dir("none");
        let l = LedgerFile::create(&dir, "m", None, CreateOptions::default()).unwrap();
        let g = l.register_gpu(uuid(1), 1000).unwrap();
        assert_eq!(l.gpu_quota(g), None);
        let a = l.attach().unwrap();
        assert_eq!(a.try_reserve(g, 1 << 50), Ok(()));
        assert_eq!(l.snapshot().unwrap().gpus[0].quota_bytes, None);
        assert_eq!(l.used(), 1 << 50);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_quota_in_the_file_is_authoritative() {
        let dir = temp_dir("quota");
        LedgerFile::create(
            &dir,
            "m",
            Some(QuotaSpec::Bytes(1 << 30)),
            CreateOptions::default(),
        )
        .unwrap();
        assert!(LedgerFile::open_or_create(&dir, "m", None, CreateOptions::default()).is_ok());
        assert!(
            LedgerFile::open_or_create(
                &dir,
                "m",
                Some(QuotaSpec::Bytes(1 << 30)),
                CreateOptions::default()
            )
            .is_ok()
        );
        let err = LedgerFile::open_or_create(
            &dir,
            "m",
            Some(QuotaSpec::Bytes(2 << 30)),
            CreateOptions::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, LedgerError::QuotaMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("2147483648 bytes")
                && err.to_string().contains("1073741824 bytes"),
            "{err}"
        );
        assert!(matches!(
            LedgerFile::create(&dir, "m", None, CreateOptions::default()),
            Err(LedgerError::Exists { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file of the first layout (one quota for all GPUs) is refused with what to do.
    #[test]
    fn a_version_1_file_is_refused_with_what_to_do() {
        let (dir, l) = fresh("v1", QuotaSpec::Bytes(100));
        let path = l.path().to_path_buf();
        drop(l);
        let mut raw = std::fs::read(&path).unwrap();
        raw[8..12].copy_from_slice(&1u32.to_ne_bytes());
        std::fs::write(&path, &raw).unwrap();
        let err = LedgerFile::open(&dir, "m").err().unwrap().to_string();
        assert!(
            err.contains("version 1")
                && err.contains("older cuvisor")
                && err.contains("quota per GPU")
                && err.contains("cuvisor ledger create"),
            "{err}"
        );
        let err = read_snapshot(&dir, "m").unwrap_err().to_string();
        assert!(err.contains("version 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The process-exit detach runs while other threads of the process still reserve
    /// and release: whatever they do, the model ends at exactly zero.
    #[test]
    fn detach_while_other_threads_reserve_and_release_leaves_exactly_zero() {
        let (dir, l) = fresh("exit-race", QuotaSpec::Bytes(1 << 40));
        let g = l.register_gpu(uuid(1), 1 << 40).unwrap();
        for round in 0..300 {
            let a = l.attach().unwrap();
            std::thread::scope(|scope| {
                for t in 0..4u64 {
                    let a = &a;
                    scope.spawn(move || {
                        let size = (t + 1) << 20;
                        for _ in 0..2_000 {
                            if a.try_reserve(g, size).is_ok() {
                                a.release(g, size);
                            }
                        }
                    });
                }
                std::thread::yield_now();
                a.detach();
            });
            assert_eq!(l.used(), 0, "round {round}: the model's total drifted");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The same with more threads than the process has records for: some operations
    /// are marked in their threads' records and cells, the others in the slot's shared
    /// `inflight`, and the detach waits for both.
    #[test]
    fn detach_with_more_threads_than_records_leaves_exactly_zero() {
        let (dir, l) = fresh("exit-race-many", QuotaSpec::Bytes(1 << 40));
        let g = l.register_gpu(uuid(1), 1 << 40).unwrap();
        let threads = gate::THREADS as u64 + 4;
        for round in 0..40 {
            let a = l.attach().unwrap();
            let started = std::sync::Barrier::new(threads as usize + 1);
            std::thread::scope(|scope| {
                for t in 0..threads {
                    let (a, started) = (&a, &started);
                    scope.spawn(move || {
                        let size = (t + 1) << 12;
                        // Every thread holds a record or found none before the detach.
                        let _ = a.try_reserve(g, size).map(|()| a.release(g, size));
                        started.wait();
                        for _ in 0..500 {
                            if a.try_reserve(g, size).is_ok() {
                                a.release(g, size);
                            }
                        }
                    });
                }
                started.wait();
                a.detach();
            });
            assert_eq!(l.used(), 0, "round {round}: the model's total drifted");
            let s = l.slot(a.slot_index());
            assert_eq!(s.inflight.load(Ordering::Acquire), 0);
            assert!(s.threads.iter().all(|c| c.load(Ordering::Acquire) == 0));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A process killed in the middle of operations (here: its slot left as such a
    /// process leaves it) has its in-flight bytes, in its threads' cells and in the
    /// shared counter, counted as uncertain by the reclaim, and the rest given back.
    #[test]
    fn reclaim_counts_the_threads_in_flight_bytes_as_uncertain() {
        let (dir, l) = fresh("uncertain", QuotaSpec::Bytes(1 << 30));
        let g = l.register_gpu(uuid(1), 1 << 30).unwrap();
        let a = l.attach().unwrap();
        a.try_reserve(g, 1000).unwrap();
        let index = a.slot_index();
        let s = l.slot(index);
        s.threads[0].store(300, Ordering::Release);
        s.threads[gate::THREADS - 1].store(20, Ordering::Release);
        s.inflight.store(4, Ordering::Release);
        // The process "dies": its slot stays as it was, and its lock goes.
        std::mem::forget(a);
        l.own.lock().unwrap().retain(|&i| i != index);
        l.unlock(index);
        let found = l.reclaim_dead();
        assert_eq!((found.slots, found.bytes, found.uncertain), (1, 1000, 324));
        assert!(
            found.healed,
            "no process left: the model starts again from zero"
        );
        assert_eq!(l.used(), 0);
        assert!(s.threads.iter().all(|c| c.load(Ordering::Acquire) == 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What the supervisor reads is a copy that a model's process may have rewritten in
    /// any way: every damaged form is an error or numbers, never a panic.
    #[test]
    fn a_copy_of_any_bytes_parses_or_is_refused() {
        let (dir, l) = fresh("parse", QuotaSpec::Bytes(100));
        let g = l.register_gpu(uuid(1), 1000).unwrap();
        let a = l.attach().unwrap();
        a.try_reserve(g, 60).unwrap();
        let raw = std::fs::read(l.path()).unwrap();
        let s = parse_snapshot(&raw, "m", |_| true).unwrap();
        assert_eq!(
            (s.used, s.quota_bytes(), s.gpus.len(), s.processes.len()),
            (60, Some(100), 1, 1)
        );
        assert_eq!(s.processes[0].pid, std::process::id());
        assert!(
            parse_snapshot(&raw, "other", |_| true)
                .unwrap_err()
                .contains("model \"m\"")
        );
        for len in [0, 7, HEADER_SIZE - 1, HEADER_SIZE, raw.len() - 1] {
            assert!(parse_snapshot(&raw[..len], "m", |_| true).is_err(), "{len}");
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert!(parse_snapshot(&longer, "m", |_| true).is_err());
        // Every byte of the header flipped in turn; slot bytes are plain numbers.
        for at in 0..SLOTS_START + SLOT_SIZE {
            let mut bad = raw.clone();
            bad[at] ^= 0xff;
            let _ = parse_snapshot(&bad, "m", |_| true);
        }
        let mut seed = 1u64;
        for _ in 0..200 {
            let mut bad = raw.clone();
            for _ in 0..16 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % bad.len();
                bad[at] = (seed >> 24) as u8;
            }
            let _ = parse_snapshot(&bad, "m", |_| false);
        }
        drop(a);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn model_names_are_checked() {
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_model_name(bad), "{bad}");
        }
        assert!(valid_model_name("llama-3.1_8b"));
    }
}
