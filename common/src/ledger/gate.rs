//! The exit gate's process-local half: which threads of this process have a reservation
//! or release under way, kept with plain stores on the allocation path.
//!
//! A thread takes one of [`THREADS`] records the first time it reserves or releases, and
//! gives it back when it exits. Record `i` also names cell `i` of the slot's `threads`
//! array, where the operation writes the bytes it has under way (what a reclaimer counts
//! as uncertain if the process is killed in the middle).
//!
//! An operation marks its record busy, then reads the attachment's `closed`; a detach
//! sets `closed`, then runs [`heavy_fence`], then waits until each record has been idle
//! once. Between the two sides is the asymmetric form of Dekker's pattern: the operation
//! orders its two steps with a fence only the compiler sees ([`light_fence`]), and the
//! detach makes every running thread of the process execute a full memory barrier
//! (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, Linux 4.14). So either the operation
//! sees `closed`, or the detach sees it busy and waits for it. Where the process cannot
//! register for `membarrier` (an older kernel, a seccomp profile that forbids it), each
//! operation pays a full fence instead. A thread beyond the [`THREADS`] records uses the
//! slot's shared `inflight` counter (two atomic read-modify-writes an operation).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering, compiler_fence, fence};

/// Threads per process that get a record (and a cell in the slot).
pub const THREADS: usize = 16;

struct Record {
    /// Held by a live thread of this process.
    owned: AtomicBool,
    /// An operation of its thread is under way.
    busy: AtomicBool,
}

static RECORDS: [Record; THREADS] = [const {
    Record {
        owned: AtomicBool::new(false),
        busy: AtomicBool::new(false),
    }
}; THREADS];

/// How the two sides are ordered: not decided yet (no record has been taken, so no
/// operation relies on it), by `membarrier`, or by a full fence in every operation.
const UNDECIDED: u8 = 0;
const MEMBARRIER: u8 = 1;
const FENCES: u8 = 2;
static ORDERING: AtomicU8 = AtomicU8::new(UNDECIDED);
/// Whether the fork handler is installed.
static FORK_HANDLER: AtomicBool = AtomicBool::new(false);

/// This thread's record: [`NOT_YET`], its index + 1, or [`NONE`] (all were taken when it
/// asked). Its destructor gives the record back when the thread exits.
struct Mine(Cell<u32>);

const NOT_YET: u32 = 0;
const NONE: u32 = u32::MAX;

impl Mine {
    fn index(&self) -> Option<usize> {
        match self.0.get() {
            NOT_YET | NONE => None,
            i => Some(i as usize - 1),
        }
    }
}

impl Drop for Mine {
    fn drop(&mut self) {
        if let Some(i) = self.index() {
            // A thread that exits in the middle of an operation (`pthread_exit` from a
            // signal handler) keeps its record busy for good: a detach then leaves the
            // slot to be reclaimed after the process is gone, as for any operation that
            // never ends.
            if !RECORDS[i].busy.load(Ordering::Relaxed) {
                RECORDS[i].owned.store(false, Ordering::Release);
            }
        }
    }
}

thread_local! {
    static MINE: Mine = const { Mine(Cell::new(NOT_YET)) };
}

/// The calling thread's record, taken the first time; `None` when every record is held
/// by another thread, or while the thread is exiting.
#[inline]
pub fn mine() -> Option<usize> {
    MINE.try_with(|m| match m.0.get() {
        NOT_YET => take(m),
        _ => m.index(),
    })
    .ok()
    .flatten()
}

#[cold]
#[inline(never)]
fn take(m: &Mine) -> Option<usize> {
    prepare();
    let i = RECORDS.iter().position(|r| {
        r.owned
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    });
    m.0.set(i.map_or(NONE, |i| i as u32 + 1));
    i
}

/// Decides the ordering and installs the fork handler, before a thread takes a record
/// and before a detach. Without a lock (a `Once` that a fork caught half-way would stay
/// so in the child): threads that race here all register, which the kernel takes as
/// once, and may all install the handler, which does the same work however many times
/// it runs; the flag is published only once the handler is in place.
pub fn prepare() {
    if ORDERING.load(Ordering::Acquire) == UNDECIDED {
        register();
    }
    if !FORK_HANDLER.load(Ordering::Acquire) {
        // SAFETY: `in_child` is an `extern "C" fn()` that lives as long as the process
        // (this library is never unloaded: the shim is preloaded, the supervisor links
        // it).
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        FORK_HANDLER.store(true, Ordering::Release);
    }
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn register() {
    // SAFETY: membarrier takes no pointers; an unknown command or a forbidden call only
    // returns an error.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
            0,
        )
    };
    let how = if rc == 0 { MEMBARRIER } else { FENCES };
    ORDERING.store(how, Ordering::Release);
}

/// In a forked child: only the forking thread exists. Every other record is free and no
/// operation is under way; the child registers for `membarrier` on its own (its memory
/// is a new one for the kernel).
extern "C" fn in_child() {
    let me = MINE.try_with(Mine::index).ok().flatten();
    for (i, r) in RECORDS.iter().enumerate() {
        r.busy.store(false, Ordering::Relaxed);
        if Some(i) != me {
            r.owned.store(false, Ordering::Relaxed);
        }
    }
    register();
}

/// The operation's side of the pattern, between marking the record and reading `closed`.
#[inline]
fn light_fence() {
    if ORDERING.load(Ordering::Relaxed) == MEMBARRIER {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The detach's side, between setting `closed` and looking at the records (after
/// [`prepare`]): afterwards every operation that has not seen `closed` is seen busy.
/// False if that cannot be known (`membarrier` refused, e.g. by a seccomp filter
/// installed after the registration): the caller must not settle anything then.
#[must_use]
pub fn heavy_fence() -> bool {
    let ok = ORDERING.load(Ordering::Acquire) != MEMBARRIER || {
        // SAFETY: membarrier takes no pointers; a refusal only returns an error.
        let rc =
            unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
        rc == 0
    };
    fence(Ordering::SeqCst);
    ok
}

/// Marks record `i` busy (the calling thread's own) and orders that before what the
/// operation reads next; returns whether it was busy already (an operation that a signal
/// handler interrupted to run one of its own).
#[inline]
pub fn busy(i: usize) -> bool {
    let r = &RECORDS[i];
    let was = r.busy.load(Ordering::Relaxed);
    r.busy.store(true, Ordering::Relaxed);
    light_fence();
    was
}

/// Ends what [`busy`] started: everything the operation wrote before is visible to a
/// detach that sees the record idle.
#[inline]
pub fn idle(i: usize, was: bool) {
    RECORDS[i].busy.store(was, Ordering::Release);
}

/// Whether record `i` has an operation under way.
pub fn is_busy(i: usize) -> bool {
    RECORDS[i].busy.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_record_and_gives_it_back_when_it_exits() {
        // Three times as many threads as records, one after another: each finds one free
        // only if those before gave theirs back.
        for _ in 0..3 * THREADS {
            let (first, again) = std::thread::spawn(|| (mine(), mine())).join().unwrap();
            assert!(first.is_some(), "a record");
            assert_eq!(again, first);
        }
    }

    /// A forked child has only the forking thread: the records of the others, even one
    /// busy at the fork, are free and idle in the child; the forking thread keeps its own.
    #[test]
    fn a_forked_child_keeps_only_the_forking_threads_record() {
        let mine_here = mine().expect("a record");
        let (held, release) = std::sync::mpsc::channel::<()>();
        let (taken, busy_record) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            let i = mine().expect("a record");
            let was = busy(i);
            taken.send(i).unwrap();
            let _ = release.recv();
            idle(i, was);
        });
        let theirs = busy_record.recv().unwrap();
        assert!(is_busy(theirs));
        // SAFETY: the child only reads atomics and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = !is_busy(theirs)
                && !RECORDS[theirs].owned.load(Ordering::Acquire)
                && RECORDS[mine_here].owned.load(Ordering::Acquire)
                && mine() == Some(mine_here);
            // SAFETY: leaves the child at once, without running the parent's handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        drop(held);
        other.join().unwrap();
        let mut status = 0;
        // SAFETY: waits for the child just forked, with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "in the child: the other thread's record is still held or busy ({status:#x})"
        );
    }

    #[test]
    fn busy_nests_for_an_interrupting_operation() {
        std::thread::spawn(|| {
            let i = mine().expect("a record");
            let outer = busy(i);
            let inner = busy(i);
            assert!(!outer && inner);
            idle(i, inner);
            assert!(is_busy(i), "the interrupted operation is still under way");
            idle(i, outer);
            assert!(!is_busy(i));
        })
        .join()
        .unwrap();
    }
}
