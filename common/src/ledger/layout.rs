//! The file's layout (version 4): the header, the GPU table and the slots, `#[repr(C)]`,
//! with their sizes, states and byte offsets.

use super::{gate, power};
use std::sync::atomic::{AtomicU32, AtomicU64};

pub const MAGIC: [u8; 8] = *b"CUVISLDG";
pub const VERSION: u32 = 4;
/// Processes per model.
pub const SLOTS: u32 = 1024;
/// GPUs per model (as many as the largest nodes have, twice over).
pub const MAX_GPUS: usize = 16;
pub(super) const HEADER_SIZE: usize = 256;
pub(super) const GPU_SIZE: usize = 64;
pub(super) const SLOT_SIZE: usize = 512;
pub(super) const SLOTS_START: usize = HEADER_SIZE + MAX_GPUS * GPU_SIZE;

pub(super) const QUOTA_NONE: u32 = 0;
pub(super) const QUOTA_BYTES: u32 = 1;
pub(super) const QUOTA_PERCENT: u32 = 2;

/// The file's header. Every field but the counters and the quota is written once, before
/// the file is published under its name; the quota changes only through
/// [`super::LedgerFile::set_quota`].
#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    pub slot_size: u32,
    pub slot_count: u32,
    pub file_size: u64,
    /// 0: no quota; 1: `quota_bytes` on each GPU; 2: `quota_percent` of each GPU. The
    /// three quota fields change together, under `quota_seq` ([`super::LedgerFile::set_quota`]).
    pub quota_kind: AtomicU32,
    pub quota_percent: AtomicU32,
    /// The quota in bytes on each GPU (kind 1); `u64::MAX` without a quota; 0 for a
    /// percentage (each GPU entry holds its own resolution).
    pub quota_bytes: AtomicU64,
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
    /// Odd while the quota fields are being changed (a sequence lock: a reader reads
    /// them again until it sees the same even number before and after).
    pub quota_seq: AtomicU32,
    pub reserved: [u8; 100],
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

pub(super) const FREE: u32 = 0;
pub(super) const CLAIMING: u32 = 1;
pub(super) const LIVE: u32 = 2;
pub(super) const RECLAIMING: u32 = 3;
/// A GPU entry in use.
pub(super) const READY: u32 = 2;

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<Gpu>() == GPU_SIZE);
const _: () = assert!(std::mem::size_of::<Slot>() == SLOT_SIZE);

/// A GPU's place in a ledger's table (0 to [`MAX_GPUS`] - 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuIndex(pub(super) u8);

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

/// Byte offsets of a slot's fields in the file, for tools that read the file directly.
pub fn slot_offset(index: u32) -> u64 {
    (SLOTS_START + index as usize * SLOT_SIZE) as u64
}

/// The byte offset of GPU entry `index` in the file.
pub(super) fn gpu_offset(index: usize) -> usize {
    HEADER_SIZE + index * GPU_SIZE
}

pub(super) fn file_size(slots: u32) -> usize {
    SLOTS_START + slots as usize * SLOT_SIZE
}
