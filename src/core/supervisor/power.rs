//! Hibernates and wakes: requests in flight, wakes held back for room, and their answers.

use super::{Door, Effects, Supervisor};
use crate::core::api::{Answer, Reply};
use crate::core::effects::PowerJob;
use crate::core::status::PowerReport;
use crate::log::log;

/// The hibernates and wakes under way.
#[derive(Default)]
pub(super) struct Power {
    waits: Vec<PowerWait>,
    deferred: Vec<Deferred>,
    next_id: u64,
}

impl Power {
    /// Whether a hibernate or wake of model `m` is under way or held back.
    pub(super) fn changing(&self, m: usize) -> bool {
        self.waits.iter().any(|w| w.model == m) || self.deferred.iter().any(|d| d.model == m)
    }
}

/// A hibernate or wake request waiting for its result.
struct PowerWait {
    id: u64,
    model: usize,
    hibernate: bool,
    reply: Option<Reply>,
}

/// A wake held back until the models pushed out to make room for it have hibernated.
struct Deferred {
    model: usize,
    reply: Option<Reply>,
    after: Vec<u64>,
}

impl<E: Effects, D: Door> Supervisor<E, D> {
    /// Asks model `name`'s processes to hibernate or wake; `reply` gets the answer when
    /// they have acknowledged ([`Supervisor::powered`]), or at once if it cannot be asked.
    pub fn power(&mut self, name: &str, hibernate: bool, reply: Reply) {
        let Some(m) = self.model_index(name) else {
            let _ = reply.send(Answer::NoSuchModel(name.to_owned()));
            return;
        };
        if self.shutting_down {
            let _ = reply.send(Answer::ShuttingDown);
            return;
        }
        self.request_power(m, hibernate, Some(reply));
    }

    pub(super) fn request_power(&mut self, m: usize, hibernate: bool, reply: Option<Reply>) {
        // A wake still waiting for room is replaced by this request.
        let (replaced, kept): (Vec<Deferred>, Vec<Deferred>) =
            std::mem::take(&mut self.power.deferred)
                .into_iter()
                .partition(|d| d.model == m);
        self.power.deferred = kept;
        for d in replaced {
            if let Some(reply) = d.reply {
                let report = PowerReport::new(&self.models[m].cfg.name, false, "superseded");
                let _ = reply.send(Answer::Power(Box::new(report)));
            }
        }
        if !hibernate && self.models[m].swap.hibernated {
            // Room first: the least recently used idle models leave in bulk before this
            // one comes back, rather than page by page under its faults.
            let after: Vec<u64> = self
                .pressure_victims(m)
                .into_iter()
                .map(|v| self.send_power(v, true, None))
                .collect();
            if !after.is_empty() {
                self.power.deferred.push(Deferred {
                    model: m,
                    reply,
                    after,
                });
                return;
            }
        }
        self.send_power(m, hibernate, reply);
    }

    /// Sends a hibernate or wake to model `m`'s processes; the request's number.
    pub(super) fn send_power(&mut self, m: usize, hibernate: bool, reply: Option<Reply>) -> u64 {
        self.freeze(m, false); // a frozen process cannot move anything, nor answer
        self.power.next_id += 1;
        let id = self.power.next_id;
        let model = &mut self.models[m];
        model.swap.hibernated = hibernate;
        log(&format!(
            "model {}: {}",
            model.cfg.name,
            if hibernate { "hibernating" } else { "waking" }
        ));
        self.power.waits.push(PowerWait {
            id,
            model: m,
            hibernate,
            reply,
        });
        if hibernate {
            self.door.set_asleep(&model.cfg.name, true);
        }
        self.effects.power(PowerJob {
            id,
            model: model.cfg.name.clone(),
            hibernate,
            timeout: model.cfg.swap_timeout,
        });
        id
    }

    /// A hibernate or wake request ended ([`Effects::power`]'s result): its numbers go to
    /// the model's status and the metrics, its answer to whoever asked.
    pub fn powered(&mut self, id: u64, report: PowerReport) {
        let Some(at) = self.power.waits.iter().position(|w| w.id == id) else {
            return;
        };
        let wait = self.power.waits.remove(at);
        let model = &mut self.models[wait.model];
        log(&format!(
            "model {}: {} {}: {} bytes moved, {} pinned, {} failed, in {:.1} ms{}",
            report.model,
            report.action,
            report.outcome,
            report.moved_bytes,
            report.pinned_bytes,
            report.failed_bytes,
            report.duration_ms,
            report
                .error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        ));
        if report.outcome == "done" {
            let seconds = report.duration_ms / 1000.0;
            self.door.swapped(&model.cfg.name, wait.hibernate, seconds);
        }
        if wait.hibernate {
            model.swap.last_out = Some(report.clone());
        } else {
            model.swap.last_in = Some(report.clone());
        }
        // Frozen once hibernated, unless another request for it is under way (its
        // processes must be able to answer that one).
        let freeze = wait.hibernate
            && report.outcome == "done"
            && model.cfg.freeze_hibernated
            && model.swap.hibernated
            && !self.changing(wait.model);
        if freeze {
            self.freeze(wait.model, true);
        }
        let model = &self.models[wait.model];
        if !wait.hibernate && report.outcome != "superseded" && !model.swap.hibernated {
            // Awake, or as awake as it will get: a wake that failed or timed out still
            // serves (the driver faults the pages back). Not if a hibernate came since.
            self.door.set_asleep(&report.model, false);
        }
        if let Some(reply) = wait.reply {
            let _ = reply.send(Answer::Power(Box::new(report)));
        }
        // Wakes that waited for room: those whose pushed-out models are done.
        let pending: Vec<u64> = self.power.waits.iter().map(|w| w.id).collect();
        let (ready, held): (Vec<Deferred>, Vec<Deferred>) =
            std::mem::take(&mut self.power.deferred)
                .into_iter()
                .partition(|d| d.after.iter().all(|id| !pending.contains(id)));
        self.power.deferred = held;
        for d in ready {
            self.send_power(d.model, false, d.reply);
        }
    }
}
