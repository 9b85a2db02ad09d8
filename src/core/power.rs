//! The hibernates and wakes under way: each request's number and who waits for its
//! answer, and the wakes held back until the models pushed out to make room for them
//! have hibernated. Bookkeeping only: the supervisor decides and sends.

use super::api::Reply;

/// The hibernates and wakes under way, and the wakes held back.
#[derive(Default)]
pub struct Power {
    waits: Vec<Wait>,
    deferred: Vec<Deferred>,
    next_id: u64,
}

/// A hibernate or wake request waiting for its result.
struct Wait {
    id: u64,
    model: usize,
    hibernate: bool,
    reply: Option<Reply>,
}

/// A wake held back until the requests `after` (the models pushed out for it) are done.
struct Deferred {
    model: usize,
    reply: Option<Reply>,
    after: Vec<u64>,
}

/// A request whose result came back.
pub struct Finished {
    pub model: usize,
    pub hibernate: bool,
    pub reply: Option<Reply>,
}

impl Power {
    /// Whether a hibernate or wake of model `m` is under way or held back.
    pub fn changing(&self, m: usize) -> bool {
        self.waits.iter().any(|w| w.model == m) || self.deferred.iter().any(|d| d.model == m)
    }

    /// Whether a wake of model `m` is held back until room is made for it.
    pub fn held(&self, m: usize) -> bool {
        self.deferred.iter().any(|d| d.model == m)
    }

    /// The number of the hibernate of model `m` under way, if one is.
    pub fn hibernating(&self, m: usize) -> Option<u64> {
        self.waits
            .iter()
            .find(|w| w.model == m && w.hibernate)
            .map(|w| w.id)
    }

    /// A request for model `m` goes out now: its number.
    pub fn sent(&mut self, m: usize, hibernate: bool, reply: Option<Reply>) -> u64 {
        self.next_id += 1;
        self.waits.push(Wait {
            id: self.next_id,
            model: m,
            hibernate,
            reply,
        });
        self.next_id
    }

    /// A wake of model `m` waits for the requests `after`.
    pub fn defer(&mut self, m: usize, reply: Option<Reply>, after: Vec<u64>) {
        self.deferred.push(Deferred {
            model: m,
            reply,
            after,
        });
    }

    /// Whether a wake of model `m` is held back for its requests alone (no one asked for
    /// it by hand, waiting for its answer).
    pub fn held_for_requests(&self, m: usize) -> bool {
        let mut held = self.deferred.iter().filter(|d| d.model == m).peekable();
        held.peek().is_some() && held.all(|d| d.reply.is_none())
    }

    /// Takes back the wakes of model `m` held back: who waited for each, if anyone.
    pub fn withdraw(&mut self, m: usize) -> Vec<Option<Reply>> {
        let (withdrawn, kept): (Vec<Deferred>, Vec<Deferred>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|d| d.model == m);
        self.deferred = kept;
        withdrawn.into_iter().map(|d| d.reply).collect()
    }

    /// Request `id`'s result came: what it was, if it is still awaited.
    pub fn finish(&mut self, id: u64) -> Option<Finished> {
        let at = self.waits.iter().position(|w| w.id == id)?;
        let wait = self.waits.remove(at);
        Some(Finished {
            model: wait.model,
            hibernate: wait.hibernate,
            reply: wait.reply,
        })
    }

    /// The wakes held back whose pushed-out models are all done, taken: (model, reply).
    pub fn released(&mut self) -> Vec<(usize, Option<Reply>)> {
        let pending: Vec<u64> = self.waits.iter().map(|w| w.id).collect();
        let (ready, held): (Vec<Deferred>, Vec<Deferred>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|d| d.after.iter().all(|id| !pending.contains(id)));
        self.deferred = held;
        ready.into_iter().map(|d| (d.model, d.reply)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_back_wake_is_released_once_every_request_it_waits_for_is_done() {
        let mut p = Power::default();
        let a = p.sent(0, true, None);
        let b = p.sent(1, true, None);
        p.defer(2, None, vec![a, b]);
        assert!(p.changing(2) && p.changing(0));
        assert!(p.finish(a).is_some());
        assert!(p.released().is_empty(), "b is still under way");
        let done = p.finish(b).expect("awaited");
        assert_eq!((done.model, done.hibernate), (1, true));
        assert_eq!(p.released().iter().map(|r| r.0).collect::<Vec<_>>(), [2]);
        assert!(!p.changing(2));
        assert!(p.finish(b).is_none(), "answered once");
    }

    #[test]
    fn withdrawn_wakes_are_no_longer_held() {
        let mut p = Power::default();
        let a = p.sent(0, true, None);
        p.defer(1, None, vec![a]);
        assert_eq!(p.withdraw(1).len(), 1);
        p.finish(a);
        assert!(p.released().is_empty());
        assert!(!p.changing(1));
    }
}
