//! What a ledger reports (snapshots, refusals, reclaims), and the decoding of a copy of a
//! ledger file into a snapshot: pure functions of its bytes, which the fuzzer drives.

use super::layout::{
    GPU_SIZE, Gpu, HEADER_SIZE, Header, LIVE, MAGIC, MAX_GPUS, QUOTA_BYTES, QUOTA_PERCENT, READY,
    SLOT_SIZE, SLOTS_START, Slot, SlotGpu, VERSION, file_size, gpu_offset, slot_offset,
};
use super::power;
use crate::gpu::GpuUuid;
use crate::size::QuotaSpec;
use std::mem::offset_of;

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

/// The native-endian `u32` and `u64` at byte `o` of `raw` (checked by the caller to hold
/// them).
fn u32_at(raw: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(raw[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(raw: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(raw[o..o + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testing::{fresh, uuid};

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
}
