//! The life of one instance (a worker process of a model): a pure state machine.
//!
//! [`step`] takes the instance, an [`Event`] and the time now, changes the instance and
//! returns the [`Action`]s the supervisor must carry out. It reads no clock and touches
//! no process: the supervisor turns its actions into effects (a launch, a signal, a
//! cgroup removed), and its tests drive it with a virtual clock.
//!
//! ```text
//!             Start                 Launched                    Exited (policy: restart)
//!   Stopped ─────────▶ Starting ─────────────▶ Running ───────────────────────▶ Backoff
//!      ▲                  │  LaunchFailed ───────────────────────────────────────▲  │
//!      │                  │                       │ Stop: SIGTERM                   │ Tick at
//!      │                  ▼                       ▼ (SIGKILL after the grace)        │ its end
//!      └───────────── Stopping ◀──────────────────┘                                 │
//!         Exited                                                   Starting ◀───────┘
//! ```
//!
//! A running instance asked to leave gracefully (its model removed or replaced by a
//! reload) first drains: `Drain` takes it out of the front door's choice while its
//! requests in flight finish; `Drained` (nothing in flight), or the grace period's end,
//! stops it as above. It is not restarted.
//!
//! An instance that exits is restarted per the model's [`RestartPolicy`], after a delay
//! that doubles from `backoff_initial` up to `backoff_max` while it keeps failing; one
//! that ran longer than `backoff_max` was not crash-looping, and starts over at
//! `backoff_initial`. An operator's stop or restart is not a failure: the policy has no
//! say. A served instance that does not pass its health check within its ready timeout
//! has failed: it is stopped and restarted per the policy.
//!
//! ```
//! use cuvisor::config::RestartPolicy;
//! use cuvisor::lifecycle::{step, Action, Event, Instance, Policy, Signal, State};
//! use std::time::{Duration, Instant};
//!
//! let policy = Policy {
//!     restart: RestartPolicy::OnFailure,
//!     backoff_initial: Duration::from_secs(1),
//!     backoff_max: Duration::from_secs(60),
//!     grace_period: Duration::from_secs(10),
//!     ready_timeout: None,
//! };
//! let t0 = Instant::now(); // the only clock reading: every later time is t0 + something
//! let mut i = Instance::new(&policy);
//! assert_eq!(step(&mut i, &policy, Event::Start, t0), [Action::Launch]);
//! assert_eq!(step(&mut i, &policy, Event::Launched { pid: 42, probe: None }, t0), [Action::Serve]);
//! // It crashes: no more requests, its cgroup and ledger share released; again in 1 s.
//! let crash = Event::Exited { code: 1, oom_killed: false };
//! assert_eq!(step(&mut i, &policy, crash, t0), [Action::Unserve, Action::Release]);
//! assert_eq!(i.state, State::Backoff);
//! let later = t0 + Duration::from_secs(1);
//! assert_eq!(step(&mut i, &policy, Event::Tick, later), [Action::Launch]);
//! ```

use crate::config::RestartPolicy;
use std::time::{Duration, Instant};

/// What the lifecycle of a model's instances follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// From SIGTERM to SIGKILL.
    pub grace_period: Duration,
    /// A served instance must pass its health check this long after it started.
    pub ready_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Stopped,
    /// Being launched: the launch's result has not arrived.
    Starting,
    Running,
    /// Waiting to start again after a failure.
    Backoff,
    /// Sent no new requests while those in flight finish (at most the grace period);
    /// then stopped.
    Draining,
    /// SIGTERM sent (SIGKILL after the grace period), waiting for it to exit.
    Stopping,
    /// Ended with status 0 and the policy does not restart it.
    Exited,
    /// Failed and the policy does not restart it (or it cannot start at all).
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Draining => "draining",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }

    /// Running, or on its way to it: what the scaler counts.
    pub fn alive(self) -> bool {
        matches!(self, State::Running | State::Starting | State::Backoff)
    }

    /// Not running and not about to: what the scaler may start.
    pub fn idle(self) -> bool {
        matches!(self, State::Stopped | State::Exited | State::Failed)
    }
}

/// What an operator (or the scaler) asked of an instance that is still being launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Nothing,
    Stop,
    Restart,
}

/// What a stopping instance does once it has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Stays stopped (an operator's stop, the scaler's, a shutdown).
    Stay,
    /// Starts again at once (an operator's restart).
    Start,
    /// As after a failure: restarted with backoff or not, per the policy (it was stopped
    /// for failing its health check).
    Policy,
}

/// One instance, as its lifecycle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub state: State,
    pub pid: Option<i32>,
    /// When its process started.
    pub started: Option<Instant>,
    /// What its health check asks (served models: `GET http://127.0.0.1:PORT/PATH`).
    pub probe: Option<String>,
    /// Its health check has passed since it started (served models).
    pub ready: bool,
    /// In backoff: when it starts again.
    pub next_start: Option<Instant>,
    /// Stopping: when SIGTERM turns into SIGKILL (None once SIGKILL is sent).
    pub kill_at: Option<Instant>,
    /// Draining: when it is stopped, whatever it still has in flight.
    pub drain_by: Option<Instant>,
    /// Stopping: what happens once it has exited.
    pub after_exit: AfterExit,
    /// Starting: what was asked meanwhile.
    pub pending: Pending,
    /// The last delay before a restart.
    pub backoff: Duration,
    pub failures_in_a_row: u32,
    pub restarts: u64,
    pub oom_kills: u64,
    pub last_exit: Option<i32>,
    /// Why it last failed to start (or failed its health check).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An operator's start, or the scaler's.
    Start,
    /// An operator's stop (`then_start` false) or restart (true), or the scaler's stop.
    Stop { then_start: bool },
    /// The supervisor is shutting down: stop, and never start again.
    Shutdown,
    /// The launch succeeded: the worker runs as `pid`; `probe`: what its health check
    /// asks, if it is served.
    Launched { pid: i32, probe: Option<String> },
    /// The launch failed; `retry` false: it cannot succeed (restarting is pointless).
    LaunchFailed { error: String, retry: bool },
    /// The health check passed.
    Ready,
    /// Leave gracefully (a model removed or replaced): no new requests; stopped once
    /// those in flight have finished ([`Event::Drained`]) or the grace period is over.
    Drain,
    /// A draining instance has nothing in flight any more.
    Drained,
    /// The worker exited (`code` as a shell says it: 128 + signal), reaped.
    Exited { code: i32, oom_killed: bool },
    /// Time passed: timers that are due fire.
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Launch the worker (in the background: its result comes back as an event).
    Launch,
    /// Send the worker a signal.
    Signal(i32, Signal),
    /// It may receive requests once ready (served models): it listens on its port.
    Serve,
    /// Send it no new requests; those in flight go on.
    Drain,
    /// Send it no more requests.
    Unserve,
    /// Its process is gone: remove its cgroup, give back what it held in the ledger.
    Release,
}

impl Instance {
    pub fn new(policy: &Policy) -> Instance {
        Instance {
            state: State::Stopped,
            pid: None,
            started: None,
            probe: None,
            ready: false,
            next_start: None,
            kill_at: None,
            drain_by: None,
            after_exit: AfterExit::Stay,
            pending: Pending::Nothing,
            backoff: policy.backoff_initial,
            failures_in_a_row: 0,
            restarts: 0,
            oom_kills: 0,
            last_exit: None,
            error: None,
        }
    }

    /// The next time a [`Event::Tick`] has something to do.
    pub fn deadline(&self, policy: &Policy) -> Option<Instant> {
        let ready_by = match (self.state, self.ready, policy.ready_timeout, self.started) {
            (State::Running, false, Some(limit), Some(started)) => Some(started + limit),
            _ => None,
        };
        [self.next_start, self.kill_at, self.drain_by, ready_by]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Exits in a row after which an instance is in a crash loop: its model's requests no
/// longer wait for its next start.
pub const CRASH_LOOP: u32 = 3;

/// Why a model's requests cannot be served until something changes, if so: none of its
/// instances runs, is starting or stopping, and one has failed for good, could not start
/// (a launch error, a health check never passed) or is in a crash loop ([`CRASH_LOOP`]).
/// Its error, and when the first of them starts again (None: none will by itself). A
/// model with no instance, stopped without a failure (scaled to zero) or restarting after
/// a crash is not: its requests wait for a start.
pub fn unavailable<'a>(
    instances: impl IntoIterator<Item = &'a Instance>,
) -> Option<(String, Option<Instant>)> {
    let mut why = None;
    let mut retry_at: Option<Instant> = None;
    for i in instances {
        let failed = match i.state {
            State::Starting | State::Running | State::Draining | State::Stopping => return None,
            State::Backoff => {
                retry_at = [retry_at, i.next_start].into_iter().flatten().min();
                i.error.is_some() || i.failures_in_a_row >= CRASH_LOOP
            }
            State::Failed => true,
            State::Stopped | State::Exited => false,
        };
        if failed && why.is_none() {
            why = i.error.clone().or_else(|| {
                let code = i.last_exit.unwrap_or(0);
                Some(match i.failures_in_a_row {
                    n @ 2.. => format!("its worker exited with status {code}, {n} times in a row"),
                    _ => format!("its worker exited with status {code}"),
                })
            });
        }
    }
    why.map(|w| (w, retry_at))
}

/// The delay before the next start of an instance that failed `failures_in_a_row` times:
/// doubling from `backoff_initial`, capped at `backoff_max`.
pub fn backoff_delay(policy: &Policy, failures_in_a_row: u32) -> Duration {
    let factor = 1u32 << failures_in_a_row.saturating_sub(1).min(20);
    policy
        .backoff_initial
        .saturating_mul(factor)
        .min(policy.backoff_max)
}

/// Applies `event` to `i` at `now`: the actions to carry out, in order.
pub fn step(i: &mut Instance, p: &Policy, event: Event, now: Instant) -> Vec<Action> {
    use State::*;
    match (i.state, event) {
        (Stopped | Exited | Failed | Backoff, Event::Start) => {
            i.failures_in_a_row = 0;
            launch(i)
        }
        (Starting, Event::Start) => {
            i.pending = Pending::Nothing;
            vec![]
        }
        (Stopping, Event::Start) => {
            i.after_exit = AfterExit::Start;
            vec![]
        }
        (Running, Event::Start) => vec![],
        (Draining, Event::Start) => {
            i.after_exit = AfterExit::Start;
            vec![]
        }

        (_, Event::Stop { then_start }) => {
            i.failures_in_a_row = 0;
            stop(i, p, then_start, now)
        }
        (_, Event::Shutdown) => stop(i, p, false, now),

        (Starting, Event::Launched { pid, probe }) => {
            i.pid = Some(pid);
            i.probe = probe;
            i.started = Some(now);
            i.ready = false;
            i.error = None;
            match std::mem::replace(&mut i.pending, Pending::Nothing) {
                Pending::Nothing => {
                    i.state = Running;
                    vec![Action::Serve]
                }
                then => {
                    i.state = Running;
                    stop(i, p, then == Pending::Restart, now)
                }
            }
        }
        (Starting, Event::LaunchFailed { error, retry }) => {
            i.error = Some(error);
            match std::mem::replace(&mut i.pending, Pending::Nothing) {
                Pending::Nothing if retry => after_failure(i, p, true, now),
                Pending::Nothing => {
                    i.state = Failed;
                    vec![]
                }
                Pending::Stop => {
                    i.state = Stopped;
                    vec![]
                }
                Pending::Restart => launch(i),
            }
        }

        (Running, Event::Ready) => {
            i.ready = true;
            vec![]
        }

        (Running, Event::Drain) => {
            i.state = Draining;
            i.after_exit = AfterExit::Stay;
            i.drain_by = Some(now + p.grace_period);
            vec![Action::Drain]
        }
        (Starting | Backoff, Event::Drain) => stop(i, p, false, now),
        (Draining, Event::Drained) => end_drain(i, p, now),
        (Draining, Event::Tick) if i.drain_by.is_some_and(|t| t <= now) => end_drain(i, p, now),

        (Running | Draining | Stopping, Event::Exited { code, oom_killed }) => {
            i.pid = None;
            i.ready = false;
            i.kill_at = None;
            i.drain_by = None;
            i.last_exit = Some(code);
            if oom_killed {
                i.oom_kills += 1;
            }
            let mut actions = vec![Action::Unserve, Action::Release];
            // Stopped for failing its health check, it failed, whatever its status.
            let (after, failed) = match i.state {
                Stopping | Draining => {
                    (std::mem::replace(&mut i.after_exit, AfterExit::Stay), true)
                }
                _ => (AfterExit::Policy, code != 0 || oom_killed),
            };
            actions.extend(match after {
                AfterExit::Stay => {
                    i.state = Stopped;
                    vec![]
                }
                AfterExit::Start => launch(i),
                AfterExit::Policy => after_failure(i, p, failed, now),
            });
            actions
        }

        (Backoff, Event::Tick) if i.next_start.is_some_and(|t| t <= now) => launch(i),
        (Stopping, Event::Tick) if i.kill_at.is_some_and(|t| t <= now) => {
            i.kill_at = None;
            match i.pid {
                Some(pid) => vec![Action::Signal(pid, Signal::Kill)],
                None => vec![],
            }
        }
        (Running, Event::Tick)
            if !i.ready
                && p.ready_timeout
                    .zip(i.started)
                    .is_some_and(|(limit, started)| started + limit <= now) =>
        {
            let limit = p.ready_timeout.expect("checked");
            let probed = i.probe.as_deref().unwrap_or("its health check");
            i.error = Some(format!(
                "not ready within {limit:?} (serve.ready_timeout): {probed} never answered 200"
            ));
            // Stopped as a failure: once it has exited, restarted (or not) per the policy.
            let actions = stop(i, p, false, now);
            i.after_exit = AfterExit::Policy;
            actions
        }

        // Everything else changes nothing: a late or repeated event.
        _ => vec![],
    }
}

/// A drain is over (nothing in flight, or its time is up): stopped, and started again
/// after if an operator asked for a start meanwhile.
fn end_drain(i: &mut Instance, p: &Policy, now: Instant) -> Vec<Action> {
    i.drain_by = None;
    let then_start = i.after_exit == AfterExit::Start;
    stop(i, p, then_start, now)
}

fn launch(i: &mut Instance) -> Vec<Action> {
    i.state = State::Starting;
    i.next_start = None;
    i.pending = Pending::Nothing;
    // A launch that fails has not run at all: the last run's length says nothing of it.
    i.started = None;
    vec![Action::Launch]
}

/// SIGTERM now and SIGKILL after the grace period; with `then_start` it starts again once
/// it has exited.
fn stop(i: &mut Instance, p: &Policy, then_start: bool, now: Instant) -> Vec<Action> {
    i.next_start = None;
    i.drain_by = None;
    match (i.state, i.pid) {
        (State::Starting, _) => {
            i.pending = if then_start {
                Pending::Restart
            } else {
                Pending::Stop
            };
            vec![]
        }
        (_, Some(pid)) => {
            i.state = State::Stopping;
            i.after_exit = if then_start {
                AfterExit::Start
            } else {
                AfterExit::Stay
            };
            if i.kill_at.is_none() {
                i.kill_at = Some(now + p.grace_period);
            }
            vec![Action::Unserve, Action::Signal(pid, Signal::Term)]
        }
        (_, None) if then_start => launch(i),
        (_, None) => {
            i.state = State::Stopped;
            vec![]
        }
    }
}

/// After a failed launch or an exit: a restart with backoff, or the end, per the policy.
fn after_failure(i: &mut Instance, p: &Policy, failed: bool, now: Instant) -> Vec<Action> {
    let restart = match p.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    if !restart {
        i.state = if failed { State::Failed } else { State::Exited };
        return vec![];
    }
    // A worker that ran longer than the longest backoff was not crash-looping.
    let stable = i
        .started
        .is_some_and(|s| now.duration_since(s) > p.backoff_max);
    i.failures_in_a_row = if stable { 0 } else { i.failures_in_a_row + 1 };
    i.backoff = backoff_delay(p, i.failures_in_a_row);
    i.next_start = Some(now + i.backoff);
    i.state = State::Backoff;
    i.restarts += 1;
    vec![]
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(restart: RestartPolicy) -> Policy {
        Policy {
            restart,
            backoff_initial: S,
            backoff_max: 8 * S,
            grace_period: 10 * S,
            ready_timeout: None,
        }
    }

    /// A virtual clock: t(n) is n seconds after an arbitrary start.
    fn clock() -> impl Fn(u64) -> Instant {
        let t0 = Instant::now();
        move |n| t0 + Duration::from_secs(n)
    }

    fn running(p: &Policy, at: Instant, pid: i32) -> Instance {
        let mut i = Instance::new(p);
        assert_eq!(step(&mut i, p, Event::Start, at), [Action::Launch]);
        assert_eq!(i.state, State::Starting);
        assert_eq!(
            step(&mut i, p, Event::Launched { pid, probe: None }, at),
            [Action::Serve]
        );
        assert_eq!(
            (i.state, i.pid, i.started),
            (State::Running, Some(pid), Some(at))
        );
        i
    }

    fn crash(code: i32) -> Event {
        Event::Exited {
            code,
            oom_killed: false,
        }
    }

    #[test]
    fn a_drain_stops_once_nothing_is_in_flight_or_its_time_is_up() {
        let p = policy(RestartPolicy::Always);
        let t = clock();
        // Drained before its time: stopped then, and not restarted (it was asked to go).
        let mut i = running(&p, t(0), 10);
        assert_eq!(step(&mut i, &p, Event::Drain, t(1)), [Action::Drain]);
        assert_eq!((i.state, i.drain_by), (State::Draining, Some(t(11))));
        assert_eq!(i.deadline(&p), Some(t(11)));
        assert_eq!(step(&mut i, &p, Event::Tick, t(10)), []);
        assert_eq!(step(&mut i, &p, Event::Start, t(2)), []); // not while draining...
        assert_eq!(
            step(&mut i, &p, Event::Drained, t(3)),
            [Action::Unserve, Action::Signal(10, Signal::Term)]
        );
        assert_eq!(
            (i.state, i.kill_at, i.drain_by),
            (State::Stopping, Some(t(13)), None)
        );
        // ...but once it has exited: an operator's start during the drain holds.
        assert_eq!(
            step(&mut i, &p, crash(143), t(4)),
            [Action::Unserve, Action::Release, Action::Launch]
        );

        // Still busy at the end of the grace period: stopped all the same.
        let mut i = running(&p, t(0), 20);
        step(&mut i, &p, Event::Drain, t(0));
        assert_eq!(
            step(&mut i, &p, Event::Tick, t(10)),
            [Action::Unserve, Action::Signal(20, Signal::Term)]
        );
        assert_eq!(
            step(&mut i, &p, crash(143), t(11)),
            [Action::Unserve, Action::Release]
        );
        assert_eq!((i.state, i.restarts), (State::Stopped, 0));

        // A draining instance that exits by itself is stopped, not restarted.
        let mut i = running(&p, t(0), 30);
        step(&mut i, &p, Event::Drain, t(0));
        assert_eq!(
            step(&mut i, &p, crash(1), t(1)),
            [Action::Unserve, Action::Release]
        );
        assert_eq!(i.state, State::Stopped);
        // An operator's stop ends a drain at once.
        let mut i = running(&p, t(0), 40);
        step(&mut i, &p, Event::Drain, t(0));
        let stop = Event::Stop { then_start: false };
        assert_eq!(
            step(&mut i, &p, stop, t(1)),
            [Action::Unserve, Action::Signal(40, Signal::Term)]
        );
        // Nothing runs yet: a drain is a stop.
        let mut i = Instance::new(&p);
        step(&mut i, &p, Event::Start, t(0));
        assert_eq!(step(&mut i, &p, Event::Drain, t(0)), []);
        assert_eq!(i.pending, Pending::Stop);
        // A draining instance still serves what it has: its model is not unavailable.
        let mut i = running(&p, t(0), 50);
        step(&mut i, &p, Event::Drain, t(0));
        assert_eq!(unavailable([&i]), None);
    }

    #[test]
    fn a_crash_loop_backs_off_doubling_up_to_the_maximum() {
        let p = policy(RestartPolicy::OnFailure);
        let t = clock();
        let mut i = running(&p, t(0), 10);
        let mut now = 0;
        for (n, delay) in [1u64, 2, 4, 8, 8, 8].into_iter().enumerate() {
            assert_eq!(
                step(&mut i, &p, crash(1), t(now)),
                [Action::Unserve, Action::Release]
            );
            assert_eq!(i.state, State::Backoff);
            assert_eq!(i.backoff, Duration::from_secs(delay));
            assert_eq!(i.restarts, n as u64 + 1);
            assert_eq!(i.last_exit, Some(1));
            // Not a moment early.
            assert_eq!(
                step(
                    &mut i,
                    &p,
                    Event::Tick,
                    t(now + delay) - Duration::from_millis(1)
                ),
                []
            );
            assert_eq!(i.deadline(&p), Some(t(now + delay)));
            now += delay;
            assert_eq!(step(&mut i, &p, Event::Tick, t(now)), [Action::Launch]);
            assert_eq!(
                step(
                    &mut i,
                    &p,
                    Event::Launched {
                        pid: 11,
                        probe: None
                    },
                    t(now)
                ),
                [Action::Serve]
            );
        }
        // Ran longer than backoff_max: not a crash loop, back to the first delay.
        now += 9;
        step(&mut i, &p, crash(1), t(now));
        assert_eq!((i.failures_in_a_row, i.backoff), (0, S));
    }

    #[test]
    fn the_policy_decides_what_an_exit_leads_to() {
        let t = clock();
        for (restart, code, state) in [
            (RestartPolicy::OnFailure, 0, State::Exited),
            (RestartPolicy::OnFailure, 3, State::Backoff),
            (RestartPolicy::Always, 0, State::Backoff),
            (RestartPolicy::Never, 3, State::Failed),
            (RestartPolicy::Never, 0, State::Exited),
        ] {
            let p = policy(restart);
            let mut i = running(&p, t(0), 10);
            step(&mut i, &p, crash(code), t(1));
            assert_eq!(i.state, state, "{restart:?}, status {code}");
            assert_eq!(i.pid, None);
        }
        // An OOM kill is a failure even when the status says 0.
        let p = policy(RestartPolicy::OnFailure);
        let mut i = running(&p, t(0), 10);
        let oom = Event::Exited {
            code: 0,
            oom_killed: true,
        };
        step(&mut i, &p, oom, t(1));
        assert_eq!((i.state, i.oom_kills), (State::Backoff, 1));
    }

    #[test]
    fn a_stop_terms_then_kills_after_the_grace_period_and_does_not_restart() {
        let p = policy(RestartPolicy::Always);
        let t = clock();
        let mut i = running(&p, t(0), 10);
        let stop = Event::Stop { then_start: false };
        assert_eq!(
            step(&mut i, &p, stop.clone(), t(1)),
            [Action::Unserve, Action::Signal(10, Signal::Term)]
        );
        assert_eq!(i.state, State::Stopping);
        // A second stop sends SIGTERM again but does not move the deadline.
        step(&mut i, &p, stop, t(5));
        assert_eq!(i.kill_at, Some(t(11)));
        assert_eq!(step(&mut i, &p, Event::Tick, t(10)), []);
        assert_eq!(
            step(&mut i, &p, Event::Tick, t(11)),
            [Action::Signal(10, Signal::Kill)]
        );
        assert_eq!(step(&mut i, &p, Event::Tick, t(12)), [], "SIGKILL once");
        assert_eq!(
            step(&mut i, &p, crash(137), t(12)),
            [Action::Unserve, Action::Release]
        );
        assert_eq!((i.state, i.restarts), (State::Stopped, 0));
    }

    #[test]
    fn a_restart_starts_again_at_once_once_it_has_exited() {
        let p = policy(RestartPolicy::Never);
        let t = clock();
        let mut i = running(&p, t(0), 10);
        step(&mut i, &p, Event::Stop { then_start: true }, t(1));
        assert_eq!(
            step(&mut i, &p, crash(143), t(2)),
            [Action::Unserve, Action::Release, Action::Launch]
        );
        assert_eq!(i.state, State::Starting);
        // An operator's start while stopping turns the stop into a restart.
        let mut i = running(&p, t(0), 10);
        step(&mut i, &p, Event::Stop { then_start: false }, t(1));
        assert_eq!(step(&mut i, &p, Event::Start, t(1)), []);
        assert_eq!(
            step(&mut i, &p, crash(143), t(2)),
            [Action::Unserve, Action::Release, Action::Launch]
        );
    }

    #[test]
    fn what_is_asked_during_a_launch_happens_when_it_ends() {
        let p = policy(RestartPolicy::Always);
        let t = clock();
        // A stop while launching: the worker is stopped as soon as it runs.
        let mut i = Instance::new(&p);
        step(&mut i, &p, Event::Start, t(0));
        assert_eq!(
            step(&mut i, &p, Event::Stop { then_start: false }, t(0)),
            []
        );
        assert_eq!(
            step(
                &mut i,
                &p,
                Event::Launched {
                    pid: 7,
                    probe: None
                },
                t(1)
            ),
            [Action::Unserve, Action::Signal(7, Signal::Term)]
        );
        assert_eq!(
            step(&mut i, &p, crash(143), t(2)),
            [Action::Unserve, Action::Release]
        );
        assert_eq!(i.state, State::Stopped);
        // A shutdown while launching, and the launch fails: stopped, no retry.
        let mut i = Instance::new(&p);
        step(&mut i, &p, Event::Start, t(0));
        step(&mut i, &p, Event::Shutdown, t(0));
        let failed = Event::LaunchFailed {
            error: "exec: ENOENT".into(),
            retry: true,
        };
        assert_eq!(step(&mut i, &p, failed.clone(), t(1)), []);
        assert_eq!(i.state, State::Stopped);
        // A restart while launching, and the launch fails: launched again at once.
        let mut i = Instance::new(&p);
        step(&mut i, &p, Event::Start, t(0));
        step(&mut i, &p, Event::Stop { then_start: true }, t(0));
        assert_eq!(step(&mut i, &p, failed.clone(), t(1)), [Action::Launch]);
        // A start cancels a stop asked during the launch.
        step(&mut i, &p, Event::Stop { then_start: false }, t(1));
        step(&mut i, &p, Event::Start, t(1));
        assert_eq!(
            step(
                &mut i,
                &p,
                Event::Launched {
                    pid: 8,
                    probe: None
                },
                t(2)
            ),
            [Action::Serve]
        );
    }

    #[test]
    fn a_failed_launch_retries_with_backoff_unless_it_cannot_succeed() {
        let p = policy(RestartPolicy::OnFailure);
        let t = clock();
        let mut i = Instance::new(&p);
        step(&mut i, &p, Event::Start, t(0));
        let failed = |retry| Event::LaunchFailed {
            error: "cgroup: EACCES".into(),
            retry,
        };
        assert_eq!(step(&mut i, &p, failed(true), t(0)), []);
        assert_eq!((i.state, i.next_start), (State::Backoff, Some(t(1))));
        assert_eq!(i.error.as_deref(), Some("cgroup: EACCES"));
        assert_eq!(step(&mut i, &p, Event::Tick, t(1)), [Action::Launch]);
        assert_eq!(step(&mut i, &p, failed(false), t(1)), []);
        assert_eq!(i.state, State::Failed);
        // An operator's start tries again, from the first delay.
        assert_eq!(step(&mut i, &p, Event::Start, t(2)), [Action::Launch]);
        assert_eq!(i.failures_in_a_row, 0);
        assert_eq!(
            step(
                &mut i,
                &p,
                Event::Launched {
                    pid: 3,
                    probe: None
                },
                t(2)
            ),
            [Action::Serve]
        );
        assert_eq!(i.error, None);
    }

    #[test]
    fn launches_that_keep_failing_after_a_long_run_back_off_all_the_same() {
        let p = policy(RestartPolicy::OnFailure);
        let t = clock();
        let mut i = running(&p, t(0), 10);
        // It ran longer than backoff_max, then crashed: a new series from the first delay.
        step(&mut i, &p, crash(1), t(100));
        assert_eq!(i.backoff, S);
        // Every relaunch fails: the delays double as for any crash loop (before the fix
        // they stayed at 1 s, measured from the long run).
        let failed = Event::LaunchFailed {
            error: "exec: ENOENT".into(),
            retry: true,
        };
        let mut now = 101;
        for delay in [1u64, 2, 4, 8, 8] {
            assert_eq!(step(&mut i, &p, Event::Tick, t(now)), [Action::Launch]);
            step(&mut i, &p, failed.clone(), t(now));
            assert_eq!(i.backoff, Duration::from_secs(delay), "at {now} s");
            now += delay;
        }
    }

    #[test]
    fn a_served_instance_not_ready_in_time_is_stopped_and_restarted_as_a_failure() {
        let p = Policy {
            ready_timeout: Some(30 * S),
            ..policy(RestartPolicy::OnFailure)
        };
        let t = clock();
        let mut i = running(&p, t(0), 10);
        assert_eq!(i.deadline(&p), Some(t(30)));
        assert_eq!(step(&mut i, &p, Event::Tick, t(29)), []);
        assert_eq!(
            step(&mut i, &p, Event::Tick, t(30)),
            [Action::Unserve, Action::Signal(10, Signal::Term)]
        );
        assert!(
            i.error.as_deref().unwrap().contains("serve.ready_timeout"),
            "{:?}",
            i.error
        );
        // It handles SIGTERM and exits 0: a failure all the same, restarted after backoff.
        let clean = crash(0);
        assert_eq!(
            step(&mut i, &p, clean, t(31)),
            [Action::Unserve, Action::Release]
        );
        assert_eq!(
            (i.state, i.next_start, i.restarts),
            (State::Backoff, Some(t(32)), 1)
        );
        // Once ready, the timeout no longer applies.
        let mut i = running(&p, t(0), 10);
        step(&mut i, &p, Event::Ready, t(5));
        assert_eq!(i.deadline(&p), None);
        assert_eq!(step(&mut i, &p, Event::Tick, t(100)), []);
        // With restart = "never" it fails for good.
        let p = Policy {
            restart: RestartPolicy::Never,
            ..p
        };
        let mut i = running(&p, t(0), 10);
        step(&mut i, &p, Event::Tick, t(30));
        step(&mut i, &p, crash(143), t(31));
        assert_eq!(i.state, State::Failed);
    }

    #[test]
    fn late_and_repeated_events_change_nothing() {
        let p = policy(RestartPolicy::Always);
        let t = clock();
        let mut i = Instance::new(&p);
        for e in [
            Event::Tick,
            Event::Ready,
            crash(1),
            Event::Launched {
                pid: 4,
                probe: None,
            },
        ] {
            assert_eq!(step(&mut i, &p, e, t(0)), []);
            assert_eq!(i, Instance::new(&p));
        }
        let mut i = running(&p, t(0), 10);
        let before = i.clone();
        assert_eq!(step(&mut i, &p, Event::Start, t(1)), []);
        assert_eq!(
            step(
                &mut i,
                &p,
                Event::Launched {
                    pid: 99,
                    probe: None
                },
                t(1)
            ),
            []
        );
        assert_eq!(i, before);
    }

    #[test]
    fn a_shutdown_stops_everything_and_starts_nothing() {
        let p = policy(RestartPolicy::Always);
        let t = clock();
        let mut i = running(&p, t(0), 10);
        step(&mut i, &p, crash(1), t(1));
        assert_eq!(i.state, State::Backoff);
        assert_eq!(step(&mut i, &p, Event::Shutdown, t(1)), []);
        assert_eq!((i.state, i.deadline(&p)), (State::Stopped, None));
        let mut i = running(&p, t(0), 10);
        assert_eq!(
            step(&mut i, &p, Event::Shutdown, t(1)),
            [Action::Unserve, Action::Signal(10, Signal::Term)]
        );
        step(&mut i, &p, crash(143), t(2));
        assert_eq!(i.state, State::Stopped);
    }

    /// A model is unavailable only when nothing of it runs or starts and one failed.
    #[test]
    fn a_model_is_unavailable_when_nothing_runs_and_one_failed() {
        let (p, t) = (policy(RestartPolicy::Always), clock());
        let mut a = Instance::new(&p);
        let b = Instance::new(&p);
        assert_eq!(unavailable([&a, &b]), None, "stopped: a request starts it");
        step(&mut a, &p, Event::Start, t(0));
        let failed = Event::LaunchFailed {
            error: "no such program".into(),
            retry: true,
        };
        step(&mut a, &p, failed, t(0));
        assert_eq!(a.state, State::Backoff);
        let retry = a.next_start;
        assert!(retry.is_some());
        assert_eq!(
            unavailable([&a, &b]),
            Some(("no such program".into(), retry))
        );
        // Another instance starting: its requests may yet be served.
        let mut c = Instance::new(&p);
        step(&mut c, &p, Event::Start, t(0));
        assert_eq!(unavailable([&a, &c]), None);
        // Given up: no retry.
        let mut d = Instance::new(&p);
        step(&mut d, &p, Event::Start, t(0));
        let fatal = Event::LaunchFailed {
            error: "bad".into(),
            retry: false,
        };
        step(&mut d, &p, fatal, t(0));
        assert_eq!(d.state, State::Failed);
        assert_eq!(unavailable([&d]), Some(("bad".into(), None)));
        // A crash: its requests wait for the restart; a crash loop: they do not.
        let mut e = running(&p, t(0), 5);
        let crash = Event::Exited {
            code: 1,
            oom_killed: false,
        };
        step(&mut e, &p, crash.clone(), t(1));
        assert_eq!(e.state, State::Backoff);
        assert_eq!(unavailable([&e]), None);
        for n in 2..=CRASH_LOOP {
            let at = e.next_start.unwrap();
            step(&mut e, &p, Event::Tick, at);
            step(
                &mut e,
                &p,
                Event::Launched {
                    pid: 5 + n as i32,
                    probe: None,
                },
                at,
            );
            step(&mut e, &p, crash.clone(), at);
        }
        assert_eq!(
            unavailable([&e]),
            Some((
                "its worker exited with status 1, 3 times in a row".into(),
                e.next_start
            ))
        );
    }
}
