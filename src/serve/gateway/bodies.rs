//! Reading a request's body before it goes to an instance: whole, within a deadline, at
//! most a size, and held against a budget shared by every request under way, so that
//! neither slow clients nor many half-sent bodies cost the supervisor more than it set.

use crate::metrics::Refused;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bytes of bodies the front door may hold at once, and how long a body may take.
pub struct Bodies {
    budget: Arc<Semaphore>,
    total: u64,
    timeout: Duration,
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRead {
    /// Larger than its limit.
    TooLarge,
    /// Not whole within the deadline.
    Timeout(Duration),
    /// The budget is spent: other bodies hold it.
    Budget(u64),
    /// The client's stream failed (a malformed chunk, a reset).
    Broken(String),
}

impl NotRead {
    /// How the metrics count it.
    pub fn reason(&self) -> Refused {
        match self {
            NotRead::TooLarge => Refused::TooLarge,
            NotRead::Timeout(_) => Refused::BodyTimeout,
            NotRead::Budget(_) => Refused::BodiesBusy,
            NotRead::Broken(_) => Refused::BadRequest,
        }
    }
}

/// A body read whole, and its part of the budget, given back when this is dropped.
pub struct Held {
    pub bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

impl Bodies {
    pub fn new(total: u64, timeout: Duration) -> Bodies {
        let permits = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Bodies {
            budget: Arc::new(Semaphore::new(permits)),
            total,
            timeout,
        }
    }

    /// Reads `body` whole: at most `limit` bytes, within the deadline, each frame counted
    /// against the budget as it arrives (a request never waits for the budget: it is
    /// refused, and may try again).
    pub async fn read(&self, mut body: Incoming, limit: u64) -> Result<Held, NotRead> {
        let read = async {
            let mut bytes = Vec::new();
            let mut held: Option<OwnedSemaphorePermit> = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| NotRead::Broken(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers: not passed on
                };
                if bytes.len() as u64 + data.len() as u64 > limit {
                    return Err(NotRead::TooLarge);
                }
                let n = u32::try_from(data.len()).map_err(|_| NotRead::TooLarge)?;
                let more = self
                    .budget
                    .clone()
                    .try_acquire_many_owned(n)
                    .map_err(|_| NotRead::Budget(self.total))?;
                match &mut held {
                    Some(h) => h.merge(more),
                    None => held = Some(more),
                }
                bytes.extend_from_slice(&data);
            }
            Ok(Held {
                bytes: Bytes::from(bytes),
                _budget: held,
            })
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(NotRead::Timeout(self.timeout)),
        }
    }
}
