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

mod attach;
mod dir;
mod error;
mod file;
mod gate;
mod layout;
mod liveness;
pub mod power;
mod read;
mod slots;
mod snapshot;
#[cfg(test)]
mod testing;

pub use attach::Attachment;
pub use dir::{DEFAULT_DIR, default_dir, make_traversable, valid_model_name};
pub use error::LedgerError;
pub use file::{CreateOptions, LedgerFile};
pub use layout::{
    Gpu, GpuIndex, Header, MAGIC, MAX_GPUS, SLOTS, Slot, SlotGpu, VERSION, slot_offset,
};
pub use liveness::{start_time, stat_field};
pub use read::{Listed, list, read_snapshot};
pub use snapshot::{
    GpuUsage, ProcessGpu, ProcessUsage, Reclaimed, Refusal, Snapshot, parse_snapshot,
    validate_header,
};

// The state of a live slot, which `power` names from here (`super::LIVE`).
use layout::LIVE;
