//! Hibernation: moving a model's memory out of its GPUs and back in bulk, without the
//! model's cooperation.
//!
//! # Protocol
//!
//! * The header's **control word** ([`Power`]) says whether the model should be awake or
//!   hibernated, with a generation that every request increments. A requester changes it
//!   with one compare-and-swap and wakes every waiter (a futex on the shared mapping).
//! * Each process of the model that carries requests out has one thread that waits on the
//!   word (no polling: nothing runs while nothing changes) and marks its slot `listening`.
//!   When the word changes, it moves what it can, then **acknowledges** in its slot: the
//!   numbers first, then the word it carried out with the slot's generation as it claimed
//!   it (Release), then it increments the header's `acks` and wakes the requester. A late
//!   acknowledgement of a process that has left, into a slot another process claimed
//!   since, carries the old generation: it counts for no one.
//! * The requester waits until every live, listening process acknowledged its word, a
//!   newer request replaced it, or its time ran out. A process that dies meanwhile stops
//!   counting: liveness is the slot's lock, as everywhere in the ledger.

use super::{Attachment, LIVE, LedgerFile};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a model should be: awake or hibernated, and the request's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Power {
    /// Incremented by every request (31 bits, wrapping); 0 before the first.
    pub generation: u32,
    pub hibernated: bool,
}

impl Power {
    pub fn word(self) -> u32 {
        (self.generation << 1) | u32::from(self.hibernated)
    }

    pub fn from_word(word: u32) -> Power {
        Power {
            generation: word >> 1,
            hibernated: word & 1 == 1,
        }
    }
}

/// What one process did for the last request it carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerAck {
    /// The request carried out.
    pub power: Power,
    /// Bytes moved (to the host for a hibernate, back to their GPU for a wake).
    pub moved: u64,
    /// Bytes that cannot move: device memory (`device` mode), stream-ordered pools, VMM
    /// handles, arrays.
    pub pinned: u64,
    /// Bytes whose move the driver refused, and its first error code (0: none).
    pub failed: u64,
    pub error: u32,
    /// How long the moves took, copies included.
    pub nanos: u64,
}

/// A slot's part of the protocol (64 bytes).
#[repr(C)]
pub struct SlotPower {
    /// 1 while the process has a thread that carries requests out.
    pub listening: AtomicU32,
    pub pad0: u32,
    /// The control word last carried out (low 32 bits), and the slot's generation of the
    /// process that did (high 32 bits).
    pub acked: AtomicU64,
    pub moved: AtomicU64,
    pub pinned: AtomicU64,
    pub failed: AtomicU64,
    pub error: AtomicU32,
    pub pad: u32,
    pub nanos: AtomicU64,
    pub reserved: [u64; 1],
}

/// The `acked` value of a process of slot generation `generation` that carried out `power`.
fn acked(generation: u64, power: Power) -> u64 {
    (generation << 32) | u64::from(power.word())
}

/// A slot's part, from a copy of its bytes, for the process of slot generation
/// `generation`: an acknowledgement left by an earlier process of the slot is not its.
pub(super) fn parse_slot(raw: &[u8], generation: u64) -> ProcessPower {
    let at = |o: usize| u64::from_ne_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
    let at32 = |o: usize| u32::from_ne_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
    let acked_raw = at(std::mem::offset_of!(SlotPower, acked));
    let ack = if acked_raw >> 32 == generation & u64::from(u32::MAX) {
        PowerAck {
            power: Power::from_word(acked_raw as u32),
            moved: at(std::mem::offset_of!(SlotPower, moved)),
            pinned: at(std::mem::offset_of!(SlotPower, pinned)),
            failed: at(std::mem::offset_of!(SlotPower, failed)),
            error: at32(std::mem::offset_of!(SlotPower, error)),
            nanos: at(std::mem::offset_of!(SlotPower, nanos)),
        }
    } else {
        PowerAck::default()
    };
    ProcessPower {
        listening: at32(std::mem::offset_of!(SlotPower, listening)) == 1,
        ack,
    }
}

const _: () = assert!(std::mem::size_of::<SlotPower>() == 64);

impl SlotPower {
    /// For a new process: not listening, nothing carried out.
    pub(super) fn reset(&self) {
        self.listening.store(0, Ordering::Relaxed);
        self.acked.store(0, Ordering::Relaxed);
        for n in [&self.moved, &self.pinned, &self.failed, &self.nanos] {
            n.store(0, Ordering::Relaxed);
        }
        self.error.store(0, Ordering::Relaxed);
    }
}

/// How a request ended for the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every live, listening process acknowledged it.
    Done,
    /// A newer request replaced it (the word is now this one).
    Superseded(Power),
    /// These slots had not acknowledged when the time ran out.
    TimedOut(Vec<u32>),
}

/// A process's part, from a copy of the file (see [`super::parse_snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessPower {
    pub listening: bool,
    pub ack: PowerAck,
}

impl LedgerFile {
    /// What the model should be now.
    pub fn power(&self) -> Power {
        Power::from_word(self.header().power.load(Ordering::Acquire))
    }

    /// Asks every process of the model to hibernate (`true`) or wake: a new generation of
    /// the control word, and a wake-up for every process waiting on it.
    pub fn request_power(&self, hibernated: bool) -> Power {
        let word = &self.header().power;
        let mut current = word.load(Ordering::Acquire);
        let next = loop {
            let next = Power {
                generation: (Power::from_word(current).generation + 1) & (u32::MAX >> 1),
                hibernated,
            };
            match word.compare_exchange(current, next.word(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break next,
                Err(actual) => current = actual,
            }
        };
        futex_wake(word);
        next
    }

    /// Waits until every live, listening process acknowledged `request`, a newer request
    /// replaced it, or `timeout` passed.
    pub fn wait_acks(&self, request: Power, timeout: Duration) -> Outcome {
        let h = self.header();
        let deadline = Instant::now() + timeout;
        loop {
            let seen = h.acks.load(Ordering::Acquire);
            let now = Power::from_word(h.power.load(Ordering::Acquire));
            if now != request {
                return Outcome::Superseded(now);
            }
            let pending: Vec<u32> = (0..self.slot_count())
                .filter(|&i| {
                    let s = self.slot(i);
                    s.state.load(Ordering::Acquire) == LIVE
                        && s.power.listening.load(Ordering::Acquire) == 1
                        && s.power.acked.load(Ordering::Acquire)
                            != acked(s.generation.load(Ordering::Acquire), request)
                        && (self.is_own(i) || self.held_elsewhere(i))
                })
                .collect();
            if pending.is_empty() {
                return Outcome::Done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Outcome::TimedOut(pending);
            }
            // A process that dies does not acknowledge: look again at least every 10 ms.
            futex_wait(&h.acks, seen, Some(left.min(Duration::from_millis(10))));
        }
    }
}

impl Attachment<'_> {
    /// Says whether this process carries requests out (it has a thread for them):
    /// requesters wait for the acknowledgements of those that do.
    pub fn listen(&self, on: bool) {
        self.ledger()
            .slot(self.slot_index())
            .power
            .listening
            .store(u32::from(on), Ordering::Release);
    }

    /// Waits until the control word is no longer `seen` (or a signal or spurious wake-up
    /// interrupts: the caller reads the word again), then returns it.
    pub fn wait_power(&self, seen: Power) -> Power {
        let word = &self.ledger().header().power;
        if word.load(Ordering::Acquire) == seen.word() {
            futex_wait(word, seen.word(), None);
        }
        self.ledger().power()
    }

    /// Records what this process did for a request, and tells the requester. Nothing once
    /// the process has left the ledger (its slot may be another's).
    pub fn acknowledge(&self, ack: &PowerAck) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let p = &self.ledger().slot(self.slot_index()).power;
        p.moved.store(ack.moved, Ordering::Relaxed);
        p.pinned.store(ack.pinned, Ordering::Relaxed);
        p.failed.store(ack.failed, Ordering::Relaxed);
        p.error.store(ack.error, Ordering::Relaxed);
        p.nanos.store(ack.nanos, Ordering::Relaxed);
        p.acked
            .store(acked(self.generation, ack.power), Ordering::Release);
        let acks = &self.ledger().header().acks;
        acks.fetch_add(1, Ordering::AcqRel);
        futex_wake(acks);
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout`. The mapping is shared between
/// processes: no FUTEX_PRIVATE_FLAG.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 in memory we keep mapped; the kernel reads it
    // and sleeps (EAGAIN if it already changed, EINTR on a signal: the caller looks again).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
}

/// Wakes every process waiting on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only reads the address to find its waiters.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::CreateOptions;

    fn fresh(tag: &str) -> LedgerFile {
        let dir =
            std::env::temp_dir().join(format!("cuvisor-power-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        LedgerFile::create(&dir, "m", None, CreateOptions::default()).unwrap()
    }

    #[test]
    fn the_word_holds_the_generation_and_the_state() {
        for p in [
            Power::default(),
            Power {
                generation: 1,
                hibernated: true,
            },
            Power {
                generation: u32::MAX >> 1,
                hibernated: false,
            },
        ] {
            assert_eq!(Power::from_word(p.word()), p);
        }
        let l = fresh("word");
        assert_eq!(l.power(), Power::default());
        assert_eq!(
            l.request_power(true),
            Power {
                generation: 1,
                hibernated: true
            }
        );
        assert_eq!(
            l.request_power(false),
            Power {
                generation: 2,
                hibernated: false
            }
        );
        assert_eq!(
            l.power(),
            Power {
                generation: 2,
                hibernated: false
            }
        );
        assert_eq!(l.snapshot().unwrap().power, l.power());
    }

    /// A process that does not listen is not waited for; one that listens is, until it
    /// acknowledges; its numbers reach a snapshot.
    #[test]
    fn the_requester_waits_for_every_listener_and_no_one_else() {
        let l = fresh("listeners");
        let _deaf = l.attach().unwrap();
        assert_eq!(
            l.wait_acks(l.request_power(true), Duration::ZERO),
            Outcome::Done
        );
        let a = l.attach().unwrap();
        a.listen(true);
        let request = l.request_power(false);
        assert_eq!(
            l.wait_acks(request, Duration::from_millis(20)),
            Outcome::TimedOut(vec![a.slot_index()])
        );
        let ack = PowerAck {
            power: request,
            moved: 5,
            pinned: 6,
            failed: 7,
            error: 8,
            nanos: 9,
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                a.acknowledge(&ack);
            });
            assert_eq!(l.wait_acks(request, Duration::from_secs(10)), Outcome::Done);
        });
        let snap = l.snapshot().unwrap();
        let mine = snap
            .processes
            .iter()
            .find(|p| p.slot == a.slot_index())
            .unwrap();
        assert_eq!(
            mine.power,
            ProcessPower {
                listening: true,
                ack
            }
        );
        // A newer request replaces one being waited for.
        let old = l.request_power(true);
        let new = l.request_power(false);
        assert_eq!(l.wait_acks(old, Duration::ZERO), Outcome::Superseded(new));
        // A slot claimed again starts over; a process that has left acknowledges nothing.
        a.detach();
        let b = l.attach().unwrap();
        b.listen(true);
        let request = l.request_power(true);
        a.acknowledge(&PowerAck {
            power: request,
            ..ack
        });
        let snap = l.snapshot().unwrap();
        let fresh = snap
            .processes
            .iter()
            .find(|p| p.slot == b.slot_index())
            .unwrap();
        assert_eq!(fresh.power.ack, PowerAck::default());
        assert_eq!(
            l.wait_acks(request, Duration::ZERO),
            Outcome::TimedOut(vec![b.slot_index()])
        );
        // An acknowledgement of an earlier process of the slot is not the new one's.
        let mut raw = [0u8; 64];
        raw[8..16].copy_from_slice(&((3u64 << 32) | u64::from(request.word())).to_ne_bytes());
        assert_eq!(parse_slot(&raw, 4).ack, PowerAck::default());
        assert_eq!(parse_slot(&raw, 3).ack.power, request);
    }

    /// The listener's wait ends when the word changes: no polling.
    #[test]
    fn a_listener_wakes_when_the_word_changes() {
        let l = fresh("wake");
        let a = l.attach().unwrap();
        let seen = l.power();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let mut now = a.wait_power(seen);
                while now == seen {
                    now = a.wait_power(seen); // a spurious wake-up: wait again
                }
                now
            });
            std::thread::sleep(Duration::from_millis(20));
            let request = l.request_power(true);
            assert_eq!(waiter.join().unwrap(), request);
        });
    }
}
