//! What the shim remembers about each allocation it charged: a map from the pointer (or
//! handle) to its charge, split in shards so that threads allocating at once rarely meet
//! on the same lock.

use cuvisor_common::ledger::GpuIndex;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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
}
