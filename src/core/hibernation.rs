//! When a served model hibernates and wakes: pure decisions from its load, made by the
//! supervisor at each tick and at each wake. Nothing here reads a clock or a ledger.
//!
//! - **Idle**: a model whose instances have all been idle (nothing in flight, nothing
//!   waiting) for `serve.hibernate_after` hibernates. (Instances above `min_instances`
//!   still stop after `serve.idle_timeout`: a model kept at its minimum sleeps instead of
//!   holding the GPU.)
//! - **Demand**: a hibernated model with a request waiting or in flight wakes.
//! - **Pressure**: before a model wakes, on each GPU it uses, the least recently used
//!   idle models there are hibernated until its quota fits beside what stays resident
//!   ([`make_room`]): Omni's worked example, where a request for C pushes A and B out.
//!
//! ```
//! use cuvisor::hibernation::{make_room, Resident};
//! use std::time::Duration;
//!
//! // A 4 GiB GPU holds A (3 GiB, idle 60 s) and B (1 GiB, idle 5 s); C needs 2 GiB.
//! let gib = 1u64 << 30;
//! let resident = [
//!     Resident { model: 0, bytes: 3 * gib, idle: Some(Duration::from_secs(60)) },
//!     Resident { model: 1, bytes: gib, idle: Some(Duration::from_secs(5)) },
//! ];
//! assert_eq!(make_room(4 * gib, 2 * gib, &resident), vec![0]); // A, the least recently used
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

/// The models to hibernate so that `need` more bytes fit on a GPU of `memory` bytes where
/// `resident` (the awake models there) are: the idle ones, least recently used first,
/// until it fits. If even all of them do not make room, all of them: the rest is left to
/// the driver's eviction.
pub fn make_room(memory: u64, need: u64, resident: &[Resident]) -> Vec<usize> {
    let mut used: u64 = resident.iter().map(|r| r.bytes).sum();
    let mut idle: Vec<&Resident> = resident.iter().filter(|r| r.idle.is_some()).collect();
    idle.sort_by(|a, b| b.idle.cmp(&a.idle).then(a.model.cmp(&b.model)));
    let mut out = Vec::new();
    for r in idle {
        if used.saturating_add(need) <= memory {
            break;
        }
        used -= r.bytes;
        out.push(r.model);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const S: Duration = Duration::from_secs(1);

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

    /// Omni's example: C's request pushes A and B out of a GPU they fill, least recently
    /// used first, and no more than it needs; busy models stay.
    #[test]
    fn pressure_pushes_out_the_least_recently_used_idle_models_first() {
        let a = Resident {
            model: 0,
            bytes: 2 * GIB,
            idle: Some(60 * S),
        };
        let b = Resident {
            model: 1,
            bytes: 2 * GIB,
            idle: Some(10 * S),
        };
        let busy = Resident {
            model: 2,
            bytes: GIB,
            idle: None,
        };
        assert_eq!(
            make_room(8 * GIB, 3 * GIB, &[a, b, busy]),
            Vec::<usize>::new()
        );
        assert_eq!(make_room(6 * GIB, 3 * GIB, &[a, b, busy]), [0]);
        assert_eq!(make_room(6 * GIB, 4 * GIB, &[b, a, busy]), [0, 1]);
        // Not enough even with both out: both go, the busy one stays.
        assert_eq!(make_room(4 * GIB, 4 * GIB, &[a, b, busy]), [0, 1]);
        assert_eq!(make_room(4 * GIB, GIB, &[]), Vec::<usize>::new());
    }
}
