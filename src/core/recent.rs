//! Each model's recent output: the last lines its workers wrote, in a ring of bounded
//! size per model, for `cuvisor logs` and `GET /models/NAME/logs`. The node's output
//! copiers write it; the control API reads it. Lines are numbered in the order they came
//! (a reader asks for those after the last it saw), and those that no longer fit are
//! dropped from the front.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

/// Bytes of output kept per model.
pub const KEPT: usize = 256 << 10;

#[derive(Default)]
struct Ring {
    /// (number, instance, text) of each line kept, oldest first.
    lines: VecDeque<(u64, u32, String)>,
    bytes: usize,
    /// The number the next line gets.
    next: u64,
}

/// One model's recent output.
#[derive(Default)]
pub struct Recent {
    ring: Mutex<Ring>,
    /// Woken at each new line: a follower waits on it.
    more: tokio::sync::Notify,
}

impl Recent {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line instance `instance` wrote (without its newline).
    pub fn push(&self, instance: u32, text: String) {
        let mut ring = self.ring();
        let n = ring.next;
        ring.next += 1;
        ring.bytes += text.len();
        ring.lines.push_back((n, instance, text));
        while ring.bytes > KEPT {
            match ring.lines.pop_front() {
                Some((_, _, old)) => ring.bytes -= old.len(),
                None => break,
            }
        }
        drop(ring);
        self.more.notify_waiters();
    }

    /// The lines kept from number `since` on (of `instance` only, if given), as
    /// (instance, text), and the number to ask from next.
    pub fn since(&self, since: u64, instance: Option<u32>) -> (Vec<(u32, String)>, u64) {
        let ring = self.ring();
        let lines = ring
            .lines
            .iter()
            .filter(|(n, i, _)| *n >= since && instance.is_none_or(|want| *i == want))
            .map(|(_, i, text)| (*i, text.clone()))
            .collect();
        (lines, ring.next)
    }

    /// Resolves at the next line pushed after it was created ([`Recent::push`]).
    pub fn more(&self) -> tokio::sync::futures::Notified<'_> {
        self.more.notified()
    }
}

/// Every model's recent output, by its name and by each of its aliases.
pub type Outputs = Arc<Rings>;

/// The rings of the models (a reload adds those of the models it adds).
#[derive(Default)]
pub struct Rings(RwLock<BTreeMap<String, Arc<Recent>>>);

impl Rings {
    /// Model (or alias) `name`'s recent output.
    pub fn get(&self, name: &str) -> Option<Arc<Recent>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// A ring for each of `models` that has none, found by name or alias (an alias a
    /// reload gave a model finds its ring).
    pub fn add(&self, models: &[crate::config::ModelConfig]) {
        let mut all = self.0.write().unwrap_or_else(|e| e.into_inner());
        for m in models {
            let ring = all.get(&m.name).cloned().unwrap_or_default();
            let aliases = m.serve.iter().flat_map(|s| s.aliases.iter());
            for name in std::iter::once(&m.name).chain(aliases) {
                all.insert(name.clone(), ring.clone());
            }
        }
    }
}

/// An empty ring for each of `models`, found by name or alias.
pub fn outputs(models: &[crate::config::ModelConfig]) -> Outputs {
    let rings = Arc::new(Rings::default());
    rings.add(models);
    rings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_filtered_by_instance_and_dropped_from_the_front() {
        let r = Recent::default();
        r.push(0, "a".into());
        r.push(1, "b".into());
        r.push(0, "c".into());
        assert_eq!(
            r.since(0, None),
            (vec![(0, "a".into()), (1, "b".into()), (0, "c".into())], 3)
        );
        assert_eq!(r.since(1, Some(0)), (vec![(0, "c".into())], 3));
        assert_eq!(r.since(3, None), (vec![], 3));
        // Past its size, the oldest go; the numbers go on.
        let big = "x".repeat(KEPT / 2);
        r.push(2, big.clone());
        r.push(2, big.clone());
        let (lines, next) = r.since(0, None);
        assert_eq!(next, 5);
        assert_eq!(lines, [(2, big.clone()), (2, big)]);
    }
}
