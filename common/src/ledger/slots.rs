//! The slots of an open ledger: their liveness locks, claiming one, reclaiming those of
//! dead processes, resetting an idle model, and snapshots of the mapping.

use super::error::LedgerError;
use super::file::LedgerFile;
use super::layout::{CLAIMING, FREE, GpuIndex, LIVE, RECLAIMING, Slot};
use super::liveness::{held_elsewhere, monotonic_ns, own_pid_namespace, slot_lock, start_time};
use super::snapshot::{Reclaimed, Snapshot, parse_snapshot};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

impl LedgerFile {
    // ---- liveness locks ----------------------------------------------------------------

    fn lock(&self, index: u32, kind: i16, cmd: i32) -> io::Result<libc::flock> {
        slot_lock(&self.file, index, kind, cmd)
    }

    /// Takes the liveness lock of a slot, if no other process holds it.
    fn try_lock(&self, index: u32) -> bool {
        self.lock(index, libc::F_WRLCK as i16, libc::F_OFD_SETLK)
            .is_ok()
    }

    pub(super) fn unlock(&self, index: u32) {
        let _ = self.lock(index, libc::F_UNLCK as i16, libc::F_OFD_SETLK);
    }

    pub(super) fn held_elsewhere(&self, index: u32) -> bool {
        held_elsewhere(&self.file, index)
    }

    pub(super) fn is_own(&self, index: u32) -> bool {
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&index)
    }

    // ---- claim, reclaim, snapshot ---------------------------------------------------------

    /// A free slot, claimed: its index and its new generation.
    pub(super) fn claim(&self) -> Option<(u32, u64)> {
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
    pub(super) fn reclaim_before_refusing(&self) -> Reclaimed {
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
    pub(super) fn give_back(&self, s: &Slot) -> u64 {
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
    pub(super) fn heal_if_idle(&self) -> bool {
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

/// Clears a slot whose charges were settled, and makes it free (last, with Release).
pub(super) fn free_slot(s: &Slot) {
    s.pid.store(0, Ordering::Relaxed);
    s.start_time.store(0, Ordering::Relaxed);
    for g in &s.gpus {
        g.peak.store(0, Ordering::Relaxed);
    }
    s.state.store(FREE, Ordering::Release);
}

pub(super) fn saturating_sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(n))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::gate;
    use crate::ledger::testing::{fresh, uuid};
    use crate::size::QuotaSpec;

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
}
