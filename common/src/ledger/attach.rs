//! The hot path: a process's [`Attachment`] to a ledger, which reserves and releases
//! bytes against the model's quota on each GPU, and detaches when the process leaves.

use super::error::LedgerError;
use super::file::LedgerFile;
use super::gate;
use super::layout::{Gpu, GpuIndex, Slot};
use super::liveness::monotonic_ns;
use super::slots::{free_slot, saturating_sub};
use super::snapshot::Refusal;
use std::sync::atomic::{AtomicU64, Ordering};

impl LedgerFile {
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
    pub(super) generation: u64,
    pub(super) closed: std::sync::atomic::AtomicBool,
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

fn raise(peak: &AtomicU64, value: u64) {
    if value > peak.load(Ordering::Relaxed) {
        peak.fetch_max(value, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testing::{fresh, temp_dir, uuid};
    use crate::ledger::{CreateOptions, ProcessGpu};
    use crate::size::QuotaSpec;

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

    /// A quota changed live: a raise counts from the next reservation; after a cut below
    /// what is in use, every reservation is refused until usage falls under it; a GPU met
    /// after the change gets the new quota; a percentage is resolved per GPU.
    #[test]
    fn a_quota_changed_live_holds_from_the_next_reservation() {
        let (dir, l) = fresh("live", QuotaSpec::Bytes(100));
        let g = l.register_gpu(uuid(1), 1000).unwrap();
        let a = l.attach().unwrap();
        assert_eq!(a.try_reserve(g, 80), Ok(()));
        assert!(a.try_reserve(g, 40).is_err());
        let before = l.set_quota(Some(QuotaSpec::Bytes(200))).unwrap();
        assert_eq!(before, Some(QuotaSpec::Bytes(100)));
        assert_eq!(l.quota(), Some(QuotaSpec::Bytes(200)));
        assert_eq!(a.try_reserve(g, 40), Ok(()));
        l.set_quota(Some(QuotaSpec::Bytes(50))).unwrap();
        assert_eq!(
            a.try_reserve(g, 1),
            Err(Refusal {
                requested: 1,
                used: 120,
                quota: 50
            })
        );
        a.release(g, 80);
        assert_eq!(a.try_reserve(g, 10), Ok(()), "40 + 10 fit under 50");
        // A percentage: each GPU its own share, the ones met later too.
        l.set_quota(Some(QuotaSpec::Percent(10))).unwrap();
        let g2 = l.register_gpu(uuid(2), 2000).unwrap();
        assert_eq!((l.gpu_quota(g), l.gpu_quota(g2)), (Some(100), Some(200)));
        // None: no limit, everything still counted.
        l.set_quota(None).unwrap();
        assert_eq!((l.quota(), l.gpu_quota(g)), (None, None));
        assert_eq!(a.try_reserve(g, 5000), Ok(()));
        let s = l.snapshot().unwrap();
        assert_eq!(s.quota, None);
        drop(a);
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
}
