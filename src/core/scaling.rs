//! How many instances a scaled model runs (`min_instances`, `max_instances`): a pure
//! decision from the model's load, made by the supervisor at each tick. Nothing here
//! reads a clock; durations come in the [`Load`].
//!
//! - Below `min_instances`, instances are started up to it.
//! - Requests waiting, or more requests in flight than `target` per ready instance, start
//!   instances up to `ceil((in flight + waiting) / target)`, at most `max_instances`,
//!   counting those already starting. A model at zero with a request waiting starts one:
//!   the cold start.
//! - With nothing waiting, instances idle for `idle_timeout` (no request in flight) are
//!   stopped, the longest idle first, down to `min_instances`.
//!
//! ```
//! use cuvisor::scaling::{decide, Decision, Instance, Load, Policy};
//! use std::time::Duration;
//!
//! let policy = Policy { min: 0, max: 4, target: 2, idle_timeout: Duration::from_secs(300) };
//! // Scaled to zero, a request arrives: one instance starts.
//! let cold = Load { waiting: 1, instances: vec![] };
//! assert_eq!(decide(&policy, &cold), Decision::Start(1));
//! ```

use std::time::Duration;

/// A model's scaling knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min: usize,
    pub max: usize,
    /// Requests in flight per ready instance above which another starts.
    pub target: usize,
    pub idle_timeout: Duration,
}

/// One instance that is running or starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub index: u32,
    /// Its health check has passed.
    pub ready: bool,
    pub in_flight: usize,
    /// How long it has had no request in flight (zero while it has some).
    pub idle: Duration,
}

/// A model's load now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Requests waiting for a free instance.
    pub waiting: usize,
    /// The instances running or starting (not those stopped or stopping).
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Hold,
    /// Start this many more instances.
    Start(usize),
    /// Stop these instances (by index).
    Stop(Vec<u32>),
}

pub fn decide(p: &Policy, load: &Load) -> Decision {
    let running = load.instances.len();
    if running < p.min {
        return Decision::Start(p.min - running);
    }
    let in_flight: usize = load.instances.iter().map(|i| i.in_flight).sum();
    let ready = load.instances.iter().filter(|i| i.ready).count();
    let busy = load.waiting > 0 || in_flight > p.target * ready;
    if busy {
        let demand = (in_flight + load.waiting).div_ceil(p.target.max(1)).max(1);
        let want = demand.min(p.max);
        return if want > running {
            Decision::Start(want - running)
        } else {
            Decision::Hold
        };
    }
    let mut idle: Vec<&Instance> = load
        .instances
        .iter()
        .filter(|i| i.ready && i.in_flight == 0 && i.idle >= p.idle_timeout)
        .collect();
    idle.sort_by(|a, b| b.idle.cmp(&a.idle).then(a.index.cmp(&b.index)));
    let stop: Vec<u32> = idle
        .iter()
        .take(running.saturating_sub(p.min))
        .map(|i| i.index)
        .collect();
    if stop.is_empty() {
        Decision::Hold
    } else {
        Decision::Stop(stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        min: 1,
        max: 3,
        target: 2,
        idle_timeout: Duration::from_secs(300),
    };

    fn inst(index: u32, ready: bool, in_flight: usize, idle_s: u64) -> Instance {
        Instance {
            index,
            ready,
            in_flight,
            idle: Duration::from_secs(idle_s),
        }
    }

    fn load(waiting: usize, instances: Vec<Instance>) -> Load {
        Load { waiting, instances }
    }

    #[test]
    fn up_to_the_minimum_first() {
        assert_eq!(decide(&POLICY, &load(0, vec![])), Decision::Start(1));
        let zero = Policy { min: 0, ..POLICY };
        assert_eq!(decide(&zero, &load(0, vec![])), Decision::Hold);
    }

    #[test]
    fn a_waiting_request_at_zero_is_a_cold_start() {
        let zero = Policy { min: 0, ..POLICY };
        assert_eq!(decide(&zero, &load(1, vec![])), Decision::Start(1));
        assert_eq!(
            decide(&zero, &load(5, vec![])),
            Decision::Start(3),
            "at most max"
        );
        // One is already starting: it counts.
        assert_eq!(
            decide(&zero, &load(1, vec![inst(0, false, 0, 0)])),
            Decision::Hold
        );
    }

    #[test]
    fn load_above_the_target_adds_instances_up_to_the_maximum() {
        // 5 in flight on one ready instance, target 2: 3 wanted.
        assert_eq!(
            decide(&POLICY, &load(0, vec![inst(0, true, 5, 0)])),
            Decision::Start(2)
        );
        // At the target exactly: nothing.
        assert_eq!(
            decide(&POLICY, &load(0, vec![inst(0, true, 2, 0)])),
            Decision::Hold
        );
        // At the maximum, whatever waits.
        let full = vec![
            inst(0, true, 2, 0),
            inst(1, true, 2, 0),
            inst(2, true, 2, 0),
        ];
        assert_eq!(decide(&POLICY, &load(40, full)), Decision::Hold);
    }

    #[test]
    fn idle_instances_stop_down_to_the_minimum_longest_idle_first() {
        let three = vec![
            inst(0, true, 0, 400),
            inst(1, true, 0, 900),
            inst(2, true, 0, 301),
        ];
        assert_eq!(decide(&POLICY, &load(0, three)), Decision::Stop(vec![1, 0]));
        // Not idle long enough, busy, or starting: kept.
        let kept = vec![
            inst(0, true, 0, 299),
            inst(1, true, 1, 0),
            inst(2, false, 0, 999),
        ];
        assert_eq!(decide(&POLICY, &load(0, kept)), Decision::Hold);
        // To zero when the minimum is zero.
        let zero = Policy { min: 0, ..POLICY };
        assert_eq!(
            decide(&zero, &load(0, vec![inst(4, true, 0, 300)])),
            Decision::Stop(vec![4])
        );
        // Nothing stops while requests wait.
        assert_eq!(
            decide(&zero, &load(1, vec![inst(4, true, 0, 300)])),
            Decision::Hold
        );
    }
}
