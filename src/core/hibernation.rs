//! When a served model hibernates and wakes: pure decisions from its load, made by the
//! supervisor at each tick and at each wake. Nothing here reads a clock or a ledger.
//!
//! - **Idle**: a model whose instances have all been idle (nothing in flight, nothing
//!   waiting) for `serve.hibernate_after` hibernates. (Instances above `min_instances`
//!   still stop after `serve.idle_timeout`: a model kept at its minimum sleeps instead of
//!   holding the GPU.)
//! - **Demand**: a hibernated model with a request waiting or in flight wakes.
//! - **Pressure**: before a model wakes, on each GPU it uses, idle models there are
//!   hibernated until its quota fits beside what stays resident ([`make_room`]): Omni's
//!   worked example, where a request for C pushes A and B out. Of the sets of idle models
//!   that make room, the one that moves the fewest bytes goes (each of its bytes crosses
//!   the link twice: out now, back at its next request), the least recently used on a
//!   tie; and a model used within [`Policy::protect`] is pushed out only when the others
//!   cannot make room (hysteresis: two hot models do not evict each other on every
//!   request).
//! - **Collation**: a wake for requests that would have to push out a model used within
//!   [`Policy::protect`] waits for room to come free otherwise ([`wake_now`]): the busy
//!   model serves its queue, then the waiting one its whole queue, rather than the two
//!   swapping request by request. It waits as long as the models it would push out take
//!   to go out and come back over the link ([`patience`]: waiting longer would cost its
//!   requests more than the swap it spares the others), at most [`Policy::patience`]. A
//!   wake whose requests have all left meanwhile is not made.
//!
//! ```
//! use cuvisor::hibernation::{make_room, Resident};
//! use std::time::Duration;
//!
//! // A 4 GiB GPU holds A (3 GiB, idle 60 s) and B (1 GiB, idle 5 s); C needs 2 GiB.
//! // Models used within 10 s are protected.
//! let (gib, protect) = (1u64 << 30, Duration::from_secs(10));
//! let resident = [
//!     Resident { model: 0, bytes: 3 * gib, idle: Some(Duration::from_secs(60)) },
//!     Resident { model: 1, bytes: gib, idle: Some(Duration::from_secs(5)) },
//! ];
//! assert_eq!(make_room(4 * gib, 2 * gib, &resident, protect, false), vec![0]); // A: B is warm
//! // With a bigger A, the smaller B makes room with fewer bytes moved, once it is cold.
//! let resident = [
//!     Resident { model: 0, bytes: 6 * gib, idle: Some(Duration::from_secs(60)) },
//!     Resident { model: 1, bytes: 2 * gib, idle: Some(Duration::from_secs(30)) },
//! ];
//! assert_eq!(make_room(8 * gib, 2 * gib, &resident, protect, false), vec![1]);
//! ```

use crate::scaling;
use std::time::Duration;

/// A served model's state and load now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load<'a> {
    /// Asked to hibernate, and not woken since.
    pub hibernated: bool,
    /// A hibernate or wake of it is under way.
    pub changing: bool,
    /// Requests waiting for an instance.
    pub waiting: usize,
    /// Its instances running or starting.
    pub instances: &'a [scaling::Instance],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Hold,
    Hibernate,
    Wake,
}

/// What a served model with `hibernate_after` (None: it hibernates only when asked)
/// should do now.
pub fn decide(hibernate_after: Option<Duration>, load: &Load) -> Decision {
    if load.changing {
        return Decision::Hold;
    }
    let in_flight: usize = load.instances.iter().map(|i| i.in_flight).sum();
    if load.hibernated {
        return if load.waiting > 0 || in_flight > 0 {
            Decision::Wake
        } else {
            Decision::Hold
        };
    }
    match (hibernate_after, idle_for(load)) {
        (Some(after), Some(idle)) if idle >= after => Decision::Hibernate,
        _ => Decision::Hold,
    }
}

/// How long every instance of the model has been idle (None: it is busy, has requests
/// waiting, has an instance not ready yet, or has no instance).
pub fn idle_for(load: &Load) -> Option<Duration> {
    if load.waiting > 0 || load.instances.is_empty() {
        return None;
    }
    load.instances
        .iter()
        .map(|i| (i.ready && i.in_flight == 0).then_some(i.idle))
        .min()
        .flatten()
}

/// A model's memory on one GPU, for the pressure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// The supervisor's number for the model.
    pub model: usize,
    /// What it holds on the GPU.
    pub bytes: u64,
    /// How long it has been idle; None: busy, or not served (never pushed out).
    pub idle: Option<Duration>,
}

/// The node's push-out policy (`[supervisor]` `swap_protect` and `swap_patience`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A model used within this long is pushed out for another only when the others
    /// cannot make room, or once that other's requests have waited their [`patience`].
    /// Zero: no hysteresis.
    pub protect: Duration,
    /// The longest requests for a hibernated model wait for room before it wakes all the
    /// same, pushing out models used within `protect`. Zero: no collation. (Busy models
    /// are waited for apart from this, up to [`BUSY_LIMIT`].)
    pub patience: Duration,
}

/// How long requests for a hibernated model wait for room before pushing out models used
/// within [`Policy::protect`] that hold `bytes`: as long as those bytes take to go out and
/// come back over the link, at `rate` bytes a second (as the node's swaps so far have
/// measured it), at most `cap`; `cap` while no swap has been measured. Waiting any longer
/// would cost the waiting requests more than the swap it spares the models pushed out (the
/// ski-rental rule: at worst twice the better of the two).
pub fn patience(cap: Duration, bytes: u64, rate: Option<f64>) -> Duration {
    match rate {
        Some(rate) if rate > 0.0 => {
            let both_ways = 2.0 * bytes as f64 / rate;
            Duration::try_from_secs_f64(both_ways).map_or(cap, |d| d.min(cap))
        }
        _ => cap,
    }
}

/// The host link's rate as the node's swaps have measured it: their bytes over their
/// time, in all.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    bytes: u64,
    seconds: f64,
}

impl Link {
    /// A swap that moved `bytes` in `seconds` (one that moved nothing says nothing).
    pub fn observe(&mut self, bytes: u64, seconds: f64) {
        if bytes > 0 && seconds > 0.0 && seconds.is_finite() {
            self.bytes = self.bytes.saturating_add(bytes);
            self.seconds += seconds;
        }
    }

    /// Bytes a second; None before any swap moved anything.
    pub fn rate(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.bytes as f64 / self.seconds)
    }
}

/// The models to hibernate so that `need` more bytes fit on a GPU of `memory` bytes where
/// `resident` (the awake models there) are: of the sets of idle models that make room,
/// the one with the fewest bytes (ties: the least recently used), least recently used
/// first. Among the models idle for `protect` or more; with `warm_too`, among every idle
/// model when those cannot make room. If even all of them do not make room, all of them:
/// the rest is left to the driver's eviction ([`fits`] tells).
pub fn make_room(
    memory: u64,
    need: u64,
    resident: &[Resident],
    protect: Duration,
    warm_too: bool,
) -> Vec<usize> {
    let used: u64 = resident.iter().map(|r| r.bytes).sum();
    let deficit = used.saturating_add(need).saturating_sub(memory);
    if deficit == 0 {
        return Vec::new();
    }
    let idle: Vec<&Resident> = resident.iter().filter(|r| r.idle.is_some()).collect();
    let cold: Vec<&Resident> = idle
        .iter()
        .copied()
        .filter(|r| r.idle >= Some(protect))
        .collect();
    let pools: &[&[&Resident]] = if warm_too { &[&cold, &idle] } else { &[&cold] };
    for pool in pools {
        if let Some(set) = fewest_bytes(pool, deficit) {
            return set;
        }
    }
    let mut all = if warm_too { idle } else { cold };
    all.sort_by(|a, b| b.idle.cmp(&a.idle).then(a.model.cmp(&b.model)));
    all.into_iter().map(|r| r.model).collect()
}

/// Whether `need` more bytes fit on a GPU of `memory` bytes where `resident` are, once
/// the models `out` have left.
pub fn fits(memory: u64, need: u64, resident: &[Resident], out: &[usize]) -> bool {
    let staying: u64 = resident
        .iter()
        .filter(|r| !out.contains(&r.model))
        .map(|r| r.bytes)
        .sum();
    staying.saturating_add(need) <= memory
}

/// The longest a wake waits for busy models to finish before it wakes beside them, the
/// driver paging ([`wake_now`]): long enough for ordinary requests to end, and for the
/// wakes queued on a saturated link before it (models being woken count as busy: 30 s
/// was too short in `bench_node`, whose wakes then over-committed the GPU and paged the
/// warm models), short enough that a model under constant load (streams of minutes)
/// does not starve another for longer than this.
pub const BUSY_LIMIT: Duration = Duration::from_secs(120);

/// Whether a hibernated model whose requests have waited `waited` wakes now, and if so
/// whether models used within [`Policy::protect`] may be pushed out for it (`Some(true)`):
/// - at once, when pushing out idle models used longer ago makes room (`cold_fits`);
/// - once they have waited their `patience` ([`patience`]), when pushing out idle ones
///   used more recently too makes room (`warm_fits`);
/// - or when no model that could leave ever will make room (`possible` false: what holds
///   the GPU is never pushed out), leaving the rest to the driver's paging.
///
/// Otherwise busy models hold what it needs, and it waits for them to finish, up to
/// [`BUSY_LIMIT`]: waking now would have the driver page their memory out under their
/// requests, which makes them slower and busier, and every later wake with them.
pub fn wake_now(
    cold_fits: bool,
    warm_fits: bool,
    possible: bool,
    waited: Duration,
    patience: Duration,
) -> Option<bool> {
    if cold_fits {
        return Some(false);
    }
    (waited >= patience && (warm_fits || !possible || waited >= BUSY_LIMIT)).then_some(true)
}

/// Of the subsets of `pool` whose bytes reach `deficit`, the one with the fewest bytes;
/// on a tie the one whose most recently used member was used longest ago, then the one
/// with fewer models. Least recently used first. None if even all of `pool` do not reach
/// it. Every subset is weighed (a GPU holds a few models: at most 2^16 subsets); past 16
/// idle models, the least recently used ones until the deficit is met.
fn fewest_bytes(pool: &[&Resident], deficit: u64) -> Option<Vec<usize>> {
    let total: u64 = pool.iter().map(|r| r.bytes).sum();
    if total < deficit {
        return None;
    }
    let mut lru: Vec<&Resident> = pool.to_vec();
    lru.sort_by(|a, b| b.idle.cmp(&a.idle).then(a.model.cmp(&b.model)));
    if lru.len() > 16 {
        let mut freed = 0;
        let taken = lru.iter().take_while(|r| {
            let more = freed < deficit;
            freed += r.bytes;
            more
        });
        return Some(taken.map(|r| r.model).collect());
    }
    // (bytes, the most recent member's idle time reversed, members): smallest wins.
    let mut best: Option<(u64, std::cmp::Reverse<Option<Duration>>, u32, u32)> = None;
    for set in 1u32..(1 << lru.len()) {
        let members = || (0..lru.len()).filter(move |i| set & (1 << i) != 0);
        let bytes: u64 = members().map(|i| lru[i].bytes).sum();
        if bytes < deficit {
            continue;
        }
        let freshest = members().map(|i| lru[i].idle).min().flatten();
        let key = (bytes, std::cmp::Reverse(freshest), set.count_ones(), set);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    let (_, _, _, set) = best?;
    Some(
        (0..lru.len())
            .filter(|i| set & (1 << i) != 0)
            .map(|i| lru[i].model)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const S: Duration = Duration::from_secs(1);
    /// The default `swap_protect`.
    const P: Duration = Duration::from_secs(10);

    fn inst(ready: bool, in_flight: usize, idle_s: u64) -> scaling::Instance {
        scaling::Instance {
            index: 0,
            ready,
            in_flight,
            idle: Duration::from_secs(idle_s),
        }
    }

    fn load(hibernated: bool, waiting: usize, instances: &[scaling::Instance]) -> Load<'_> {
        Load {
            hibernated,
            changing: false,
            waiting,
            instances,
        }
    }

    #[test]
    fn an_idle_model_hibernates_after_its_delay_and_only_then() {
        let after = Some(30 * S);
        let idle = [inst(true, 0, 30), inst(true, 0, 45)];
        assert_eq!(decide(after, &load(false, 0, &idle)), Decision::Hibernate);
        let recent = [inst(true, 0, 29), inst(true, 0, 45)];
        assert_eq!(decide(after, &load(false, 0, &recent)), Decision::Hold);
        let busy = [inst(true, 1, 0), inst(true, 0, 45)];
        assert_eq!(decide(after, &load(false, 0, &busy)), Decision::Hold);
        let starting = [inst(false, 0, 100), inst(true, 0, 45)];
        assert_eq!(decide(after, &load(false, 0, &starting)), Decision::Hold);
        assert_eq!(decide(after, &load(false, 1, &idle)), Decision::Hold);
        assert_eq!(
            decide(after, &load(false, 0, &[])),
            Decision::Hold,
            "nothing runs"
        );
        assert_eq!(
            decide(None, &load(false, 0, &idle)),
            Decision::Hold,
            "not asked for"
        );
        assert_eq!(
            decide(after, &load(true, 0, &idle)),
            Decision::Hold,
            "already"
        );
    }

    #[test]
    fn a_hibernated_model_wakes_for_a_request_and_one_change_at_a_time() {
        let idle = [inst(true, 0, 100)];
        assert_eq!(decide(None, &load(true, 1, &idle)), Decision::Wake);
        let serving = [inst(true, 1, 0)];
        assert_eq!(decide(None, &load(true, 0, &serving)), Decision::Wake);
        assert_eq!(decide(None, &load(true, 0, &idle)), Decision::Hold);
        let changing = Load {
            changing: true,
            ..load(true, 1, &idle)
        };
        assert_eq!(decide(None, &changing), Decision::Hold);
    }

    fn resident(model: usize, gib: u64, idle_s: Option<u64>) -> Resident {
        Resident {
            model,
            bytes: gib * GIB,
            idle: idle_s.map(Duration::from_secs),
        }
    }

    /// Omni's example: C's request pushes A and B out of a GPU they fill, no more than it
    /// needs; busy models stay.
    #[test]
    fn pressure_pushes_out_idle_models_and_no_more_than_needed() {
        let (a, b, busy) = (
            resident(0, 2, Some(60)),
            resident(1, 2, Some(20)),
            resident(2, 1, None),
        );
        assert_eq!(
            make_room(8 * GIB, 3 * GIB, &[a, b, busy], P, false),
            Vec::<usize>::new()
        );
        // Equal sizes: the least recently used.
        assert_eq!(make_room(6 * GIB, 3 * GIB, &[a, b, busy], P, false), [0]);
        assert_eq!(make_room(6 * GIB, 4 * GIB, &[b, a, busy], P, false), [0, 1]);
        // Not enough even with both out: both go, the busy one stays.
        assert_eq!(make_room(4 * GIB, 4 * GIB, &[a, b, busy], P, false), [0, 1]);
        assert_eq!(make_room(4 * GIB, GIB, &[], P, false), Vec::<usize>::new());
        assert!(fits(6 * GIB, 3 * GIB, &[a, b, busy], &[0]));
        assert!(!fits(4 * GIB, 4 * GIB, &[a, b, busy], &[0, 1]));
    }

    /// Size: the set that moves the fewest bytes goes, not the least recently used.
    #[test]
    fn pressure_moves_the_fewest_bytes() {
        // 14 GiB, full: a 8 GiB idle 60 s, b 2 GiB idle 30 s, c 4 GiB idle 40 s; 2 more.
        let r = [
            resident(0, 8, Some(60)),
            resident(1, 2, Some(30)),
            resident(2, 4, Some(40)),
        ];
        assert_eq!(make_room(14 * GIB, 2 * GIB, &r, P, false), [1]);
        // 5 more GiB: b and c (6 GiB) rather than a (8 GiB).
        assert_eq!(make_room(14 * GIB, 5 * GIB, &r, P, false), [2, 1]);
        // Equal bytes (a alone, or b and c with 2 more): the set used longest ago.
        let r = [
            resident(0, 6, Some(60)),
            resident(1, 3, Some(30)),
            resident(2, 3, Some(90)),
        ];
        assert_eq!(make_room(12 * GIB, 6 * GIB, &r, P, false), [0]);
    }

    /// Hysteresis: a model used within `protect` is pushed out only when the others cannot
    /// make room, and only if asked (warm_too).
    #[test]
    fn a_recently_used_model_is_pushed_out_last() {
        let (hot, cold) = (resident(0, 2, Some(3)), resident(1, 6, Some(30)));
        // The hot one would move fewer bytes, but it was used 3 s ago.
        assert_eq!(make_room(8 * GIB, 2 * GIB, &[hot, cold], P, false), [1]);
        assert_eq!(make_room(8 * GIB, 2 * GIB, &[hot, cold], P, true), [1]);
        // The cold one alone cannot make room: the hot one goes too, if asked; if not, the
        // cold one goes and the rest does not fit.
        assert_eq!(make_room(8 * GIB, 8 * GIB, &[hot, cold], P, true), [1, 0]);
        assert_eq!(make_room(8 * GIB, 8 * GIB, &[hot, cold], P, false), [1]);
        assert!(!fits(8 * GIB, 8 * GIB, &[hot, cold], &[1]));
        let just_used = resident(0, 2, Some(0));
        assert_eq!(
            make_room(4 * GIB, 4 * GIB, &[just_used], P, false),
            Vec::<usize>::new()
        );
        assert_eq!(make_room(4 * GIB, 4 * GIB, &[just_used], P, true), [0]);
    }

    /// Collation: requests wait for room, up to their patience; for busy models to become
    /// idle, up to BUSY_LIMIT, unless nothing that could leave ever will.
    #[test]
    fn a_wake_waits_for_room_up_to_its_patience() {
        let (patience, ms) = (2 * S, Duration::from_millis(1));
        let zero = Duration::ZERO;
        assert_eq!(wake_now(true, true, true, zero, patience), Some(false));
        assert_eq!(wake_now(true, false, true, zero, patience), Some(false));
        assert_eq!(wake_now(false, true, true, zero, patience), None);
        assert_eq!(wake_now(false, true, true, patience - ms, patience), None);
        assert_eq!(wake_now(false, true, true, patience, patience), Some(true));
        // Not even with the recent ones out: busy ones hold it; wait for them, up to the
        // limit.
        assert_eq!(wake_now(false, false, true, patience, patience), None);
        assert_eq!(
            wake_now(false, false, true, BUSY_LIMIT - ms, patience),
            None
        );
        assert_eq!(
            wake_now(false, false, true, BUSY_LIMIT, patience),
            Some(true)
        );
        // What holds it never leaves: after the patience, the driver pages.
        assert_eq!(wake_now(false, false, false, patience - ms, patience), None);
        assert_eq!(
            wake_now(false, false, false, patience, patience),
            Some(true)
        );
        // No collation: at once when room can be made, or never will.
        assert_eq!(wake_now(false, true, true, zero, zero), Some(true));
        assert_eq!(wake_now(false, false, false, zero, zero), Some(true));
        assert_eq!(
            wake_now(false, false, true, zero, zero),
            None,
            "busy: it waits"
        );
    }

    /// The patience: the protected bytes out and back over the measured link, at most the
    /// cap; the cap before anything was measured.
    #[test]
    fn patience_is_the_swap_it_spares_at_most_the_cap() {
        let cap = 5 * S;
        // 25 GB/s: 10 GiB out and back take 0.859 s.
        let rate = Some(25e9);
        let p = patience(cap, 10 * GIB, rate);
        assert!(
            p > Duration::from_millis(858) && p < Duration::from_millis(860),
            "{p:?}"
        );
        assert_eq!(patience(cap, 100 * GIB, rate), cap);
        assert_eq!(patience(cap, 10 * GIB, None), cap);
        assert_eq!(patience(cap, 10 * GIB, Some(0.0)), cap);
        assert_eq!(patience(Duration::ZERO, 10 * GIB, rate), Duration::ZERO);
        assert_eq!(patience(cap, 0, rate), Duration::ZERO);
    }

    /// The link's rate: every swap's bytes over every swap's time.
    #[test]
    fn the_link_rate_is_measured_by_the_swaps() {
        let mut link = Link::default();
        assert_eq!(link.rate(), None);
        link.observe(0, 0.5); // moved nothing: says nothing
        link.observe(GIB, 0.0);
        assert_eq!(link.rate(), None);
        link.observe(2 * GIB, 1.0);
        link.observe(GIB, 0.5);
        assert_eq!(link.rate(), Some(2.0 * GIB as f64));
    }

    /// Without hysteresis (protect zero) every idle model is fair game at once.
    #[test]
    fn with_no_protection_the_fewest_bytes_go_whatever_their_recency() {
        let (hot, cold) = (resident(0, 2, Some(0)), resident(1, 6, Some(30)));
        assert_eq!(
            make_room(8 * GIB, 2 * GIB, &[hot, cold], Duration::ZERO, false),
            [0]
        );
        assert_eq!(make_room(8 * GIB, 2 * GIB, &[hot, cold], P, false), [1]);
    }
}
