//! What the shim remembers about each allocation it charged: a map from the pointer (or
//! handle) to its charge. Device pointers, on every allocation's path, live in a
//! lock-free table ([`PointerTable`]); handles and arrays, and what the table cannot
//! hold, in a map split in shards so that threads rarely meet on the same lock.

use cuvisor_common::ledger::GpuIndex;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain device memory (cuMemAlloc_v2, pitch), or stream-ordered memory.
    Device,
    /// Managed memory: the caller's own, or a device allocation the shim redirected.
    Managed { redirected: bool },
    /// A VMM physical handle; its charge goes when it is released and unmapped.
    Vmm { maps: u32, released: bool },
    /// A CUDA array (charged by an estimate from its descriptor).
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The GPU the bytes are charged on.
    pub gpu: GpuIndex,
    pub bytes: u64,
    pub kind: Kind,
}

/// Pointers are already well spread; one multiply is all the hashing they need.
#[derive(Default)]
struct PointerHasher(u64);

impl Hasher for PointerHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Shard = Mutex<HashMap<u64, Record, BuildHasherDefault<PointerHasher>>>;
const SHARDS: usize = 64;

pub struct Records {
    shards: [Shard; SHARDS],
}

impl Default for Records {
    fn default() -> Self {
        Records {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
        }
    }
}

impl Records {
    fn shard(&self, key: u64) -> &Shard {
        // Allocations are at least 256-byte aligned: skip the low bits, mix the rest.
        let mixed = (key >> 8).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(mixed >> 58) as usize]
    }

    pub fn insert(&self, key: u64, record: Record) {
        self.shard(key).lock().insert(key, record);
    }

    pub fn remove(&self, key: u64) -> Option<Record> {
        self.shard(key).lock().remove(&key)
    }

    pub fn get(&self, key: u64) -> Option<Record> {
        self.shard(key).lock().get(&key).copied()
    }

    /// Changes a record in place; returns what `f` returned, or None for an unknown key.
    pub fn update<T>(&self, key: u64, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
        self.shard(key).lock().get_mut(&key).map(f)
    }

    /// Every record, one shard at a time (a record inserted or removed meanwhile may or
    /// may not be seen).
    pub fn for_each(&self, mut f: impl FnMut(u64, Record)) {
        for shard in &self.shards {
            let copy: Vec<(u64, Record)> = shard.lock().iter().map(|(&k, &r)| (k, r)).collect();
            for (k, r) in copy {
                f(k, r);
            }
        }
    }
}

/// A map from a key to its record: the table of device pointers, or a sharded map.
pub trait RecordMap {
    fn insert(&self, key: u64, record: Record);
    fn remove(&self, key: u64) -> Option<Record>;
}

impl RecordMap for Records {
    fn insert(&self, key: u64, record: Record) {
        Records::insert(self, key, record)
    }
    fn remove(&self, key: u64) -> Option<Record> {
        Records::remove(self, key)
    }
}

/// Device pointers and their records, without a lock: open addressing over a fixed
/// table of (key, value) atomics, linear probing over at most [`PROBES`] slots. What
/// does not fit there goes to a sharded map.
///
/// The protocol: a slot's key goes from EMPTY to a pointer (claimed by a compare-and-swap,
/// then its value stored), and from a pointer to TOMBSTONE (by the compare-and-swap that
/// removes it), and a TOMBSTONE is claimed again by a later insert; a slot never becomes
/// EMPTY again, so a lookup stops at the first EMPTY slot. A pointer is in the table at
/// most once: the driver never returns an address that is still allocated, and the shim
/// removes a pointer before the driver frees it. The value is stored (Release) after the
/// key is claimed and before the pointer is handed to the caller, and a remover loads it
/// (Acquire) after finding the key: whoever frees a pointer got it from the allocating
/// thread through the program's own synchronization.
pub struct PointerTable {
    slots: Box<[Slot; TABLE_SIZE]>,
    overflow: Records,
    /// Entries in `overflow`: while 0, a lookup that misses the table takes no lock.
    overflowed: AtomicUsize,
}

struct Slot {
    key: AtomicU64,
    value: AtomicU64,
}

const EMPTY: u64 = 0;
/// Not an address an allocation can have (they are at least 256-byte aligned).
const TOMBSTONE: u64 = 1;
const PROBES: usize = 32;
const TABLE_BITS: u32 = 16;
const TABLE_SIZE: usize = 1 << TABLE_BITS;

/// A record in 64 bits: bytes (56), GPU (4), kind (2). Only device and managed memory
/// go in the table; anything else, or more than 2^56 bytes, goes to the overflow map.
fn encode(r: Record) -> Option<u64> {
    let kind = match r.kind {
        Kind::Device => 0,
        Kind::Managed { redirected: false } => 1,
        Kind::Managed { redirected: true } => 2,
        _ => return None,
    };
    let gpu = u64::try_from(r.gpu.get()).ok().filter(|&g| g < 16)?;
    (r.bytes < 1 << 56).then_some(r.bytes | gpu << 56 | kind << 60)
}

fn decode(v: u64) -> Record {
    Record {
        bytes: v & ((1 << 56) - 1),
        gpu: GpuIndex::new(((v >> 56) & 0xf) as u8).expect("below 16"),
        kind: match v >> 60 {
            0 => Kind::Device,
            1 => Kind::Managed { redirected: false },
            _ => Kind::Managed { redirected: true },
        },
    }
}

impl Default for PointerTable {
    fn default() -> Self {
        PointerTable {
            // 1 MiB per process, written once when the shim starts.
            slots: (0..TABLE_SIZE)
                .map(|_| Slot {
                    key: AtomicU64::new(EMPTY),
                    value: AtomicU64::new(0),
                })
                .collect::<Box<[Slot]>>()
                .try_into()
                .unwrap_or_else(|_| unreachable!("TABLE_SIZE slots")),
            overflow: Records::default(),
            overflowed: AtomicUsize::new(0),
        }
    }
}

impl PointerTable {
    /// The slots a key may be in, in probing order.
    #[inline]
    fn probe(&self, key: u64) -> impl Iterator<Item = &Slot> {
        let start = ((key >> 8).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TABLE_BITS)) as usize;
        (0..PROBES).map(move |i| &self.slots[(start + i) % TABLE_SIZE])
    }

    /// The slot holding `key`, if it is in the table.
    fn find(&self, key: u64) -> Option<&Slot> {
        for slot in self.probe(key) {
            match slot.key.load(Ordering::Acquire) {
                k if k == key => return Some(slot),
                EMPTY => return None,
                _ => {}
            }
        }
        None
    }

    /// Every record in the table and its overflow. A pointer allocated or freed meanwhile
    /// may or may not be seen, and one being inserted at that instant (its key claimed,
    /// its value not stored yet) may be seen with the value of the slot's previous
    /// occupant: callers must treat what they find as a hint the driver checks.
    pub fn for_each(&self, mut f: impl FnMut(u64, Record)) {
        for slot in self.slots.iter() {
            let key = slot.key.load(Ordering::Acquire);
            if key == EMPTY || key == TOMBSTONE {
                continue;
            }
            let value = slot.value.load(Ordering::Acquire);
            if value != 0 {
                f(key, decode(value));
            }
        }
        if self.overflowed.load(Ordering::Acquire) > 0 {
            self.overflow.for_each(f);
        }
    }

    pub fn get(&self, key: u64) -> Option<Record> {
        match self.find(key) {
            Some(slot) => Some(decode(slot.value.load(Ordering::Acquire))),
            None if self.overflowed.load(Ordering::Acquire) > 0 => self.overflow.get(key),
            None => None,
        }
    }
}

impl RecordMap for PointerTable {
    fn insert(&self, key: u64, record: Record) {
        if let Some(value) = encode(record).filter(|_| key > TOMBSTONE) {
            for slot in self.probe(key) {
                let k = slot.key.load(Ordering::Relaxed);
                if (k == EMPTY || k == TOMBSTONE)
                    && slot
                        .key
                        .compare_exchange(k, key, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    slot.value.store(value, Ordering::Release);
                    return;
                }
            }
        }
        self.overflowed.fetch_add(1, Ordering::AcqRel);
        self.overflow.insert(key, record);
    }

    fn remove(&self, key: u64) -> Option<Record> {
        if let Some(slot) = self.find(key) {
            let value = slot.value.load(Ordering::Acquire);
            // Only one of two threads freeing the same pointer at once takes it.
            return slot
                .key
                .compare_exchange(key, TOMBSTONE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                .then(|| decode(value));
        }
        if self.overflowed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let found = self.overflow.remove(key);
        if found.is_some() {
            self.overflowed.fetch_sub(1, Ordering::AcqRel);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_update_remove() {
        let r = Records::default();
        let rec = Record {
            gpu: GpuIndex::new(1).unwrap(),
            bytes: 10,
            kind: Kind::Device,
        };
        r.insert(0x7f00_0000_1000, rec);
        assert_eq!(r.get(0x7f00_0000_1000), Some(rec));
        assert_eq!(
            r.update(0x7f00_0000_1000, |x| {
                x.bytes = 11;
                x.bytes
            }),
            Some(11)
        );
        assert_eq!(r.update(1, |x| x.bytes), None);
        assert_eq!(r.remove(0x7f00_0000_1000).map(|x| x.bytes), Some(11));
        assert_eq!(r.remove(0x7f00_0000_1000), None);
    }

    fn rec(bytes: u64, gpu: u8, kind: Kind) -> Record {
        Record {
            gpu: GpuIndex::new(gpu).unwrap(),
            bytes,
            kind,
        }
    }

    #[test]
    fn the_table_keeps_every_record_and_overflows_past_its_size() {
        let t = PointerTable::default();
        let managed = Kind::Managed { redirected: true };
        t.insert(0x7f00_0000_1000, rec(10, 3, managed));
        assert_eq!(t.get(0x7f00_0000_1000), Some(rec(10, 3, managed)));
        // More pointers than the table has slots: the rest overflows to the map.
        let key = |i: u64| 0x7000_0000_0000 + (i << 9);
        let n = TABLE_SIZE as u64 + 4_000;
        for i in 0..n {
            t.insert(key(i), rec(i + 1, (i % 16) as u8, Kind::Device));
        }
        assert!(t.overflowed.load(Ordering::Relaxed) >= 4_000);
        for i in 0..n {
            assert_eq!(t.get(key(i)).map(|r| r.bytes), Some(i + 1), "{i}");
        }
        for i in (0..n).rev() {
            assert_eq!(
                t.remove(key(i)),
                Some(rec(i + 1, (i % 16) as u8, Kind::Device)),
                "{i}"
            );
            assert_eq!(t.remove(key(i)), None, "removed once");
        }
        assert_eq!(t.overflowed.load(Ordering::Relaxed), 0);
        // Records the table cannot encode go to the map.
        let vmm = Kind::Vmm {
            maps: 1,
            released: false,
        };
        t.insert(0x9000, rec(1 << 60, 0, Kind::Device));
        t.insert(0xa000, rec(5, 0, vmm));
        assert_eq!(t.remove(0x9000).map(|r| r.bytes), Some(1 << 60));
        assert_eq!(t.remove(0xa000), Some(rec(5, 0, vmm)));
        assert_eq!(t.remove(0x7f00_0000_1000), Some(rec(10, 3, managed)));
    }

    /// Threads inserting and removing their own pointers at once, reusing tombstones,
    /// never lose or duplicate a record.
    #[test]
    fn concurrent_inserts_and_removes_keep_every_record() {
        let t = PointerTable::default();
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let t = &t;
                scope.spawn(move || {
                    let mut seed = thread + 1;
                    for round in 0..20_000u64 {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        // Few distinct addresses per thread, so slots are reused a lot;
                        // the thread number keeps the threads' addresses apart.
                        let key = (((seed >> 40) & 0x3ff) << 12 | thread << 8) + 0x10000;
                        let r = rec(round + 1, (thread * 4) as u8, Kind::Device);
                        t.insert(key, r);
                        assert_eq!(t.get(key), Some(r));
                        assert_eq!(t.remove(key), Some(r));
                        assert_eq!(t.get(key), None);
                    }
                });
            }
        });
        assert_eq!(t.overflowed.load(Ordering::Relaxed), 0);
    }
}
