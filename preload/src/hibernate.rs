//! Hibernation in each process of a model (`CUVISOR_HIBERNATE=on`): one thread waits on
//! the model's control word in the ledger ([`cuvisor_common::ledger::power`]) and, when it
//! changes, moves every range of managed memory this process holds to the host
//! (hibernate) or back to its GPU (wake), in bulk, then acknowledges in its slot with
//! what it moved, what cannot move, and how long it took.
//!
//! The moves are `cuMemPrefetchAsync` on a stream of the thread's own, in a context of
//! the process's (the device's primary context if it is active, else the one current
//! when the process first charged that device), pushed on this thread only: the
//! process's own threads and their contexts are not touched. What is not managed memory
//! cannot move and is reported pinned: device memory (`device` mode), stream-ordered
//! pools, VMM handles, arrays. The process stays correct whatever its state: a kernel
//! that touches a hibernated range faults its pages back.

use crate::driver::{self, DriverResult, Place};
use crate::ffi::*;
use crate::records::Kind;
use crate::runtime::Runtime;
use cuvisor_common::ledger::power::{Power, PowerAck};
use cuvisor_common::ledger::{Attachment, GpuIndex};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Starts this process's thread, once. The slot says it listens before the thread runs:
/// a request made meanwhile waits for this process too.
pub fn start(rt: &Runtime, account: &Attachment<'_>) {
    if rt.listener.swap(true, Ordering::AcqRel) {
        return;
    }
    account.listen(true);
    let addr = rt as *const Runtime as usize;
    let spawned = std::thread::Builder::new()
        .name("cuvisor-power".into())
        .stack_size(256 << 10)
        .spawn(move || {
            // SAFETY: a Runtime is leaked when it is published, never freed.
            let rt: &'static Runtime = unsafe { &*(addr as *const Runtime) };
            listen(rt)
        });
    if let Err(e) = spawned {
        account.listen(false);
        log::error!(
            "model {}: cannot start the hibernation thread ({e}): this process's memory will not \
             be moved by hibernate and wake",
            rt.config.model
        );
    }
}

fn listen(rt: &'static Runtime) {
    let Some(account) = rt.account() else {
        return;
    };
    let mut done = Power::default();
    // Whether this process's memory was moved out by the last request it carried out.
    let mut moved_out = false;
    loop {
        let now = account.ledger().power();
        if now == done {
            account.wait_power(done);
            continue;
        }
        // Awake is where every process starts: a wake moves only what a hibernate moved.
        let to = match (now.hibernated, moved_out) {
            (true, _) => Some(Move::Out),
            (false, true) => Some(Move::In),
            (false, false) => None,
        };
        let ack = carry_out(rt, now, to);
        log::info!(
            "model {}: {} {} bytes in {} us ({} pinned, {} failed)",
            rt.config.model,
            if now.hibernated {
                "hibernated:"
            } else {
                "woke:"
            },
            ack.moved,
            ack.nanos / 1000,
            ack.pinned,
            ack.failed
        );
        account.acknowledge(&ack);
        moved_out = now.hibernated;
        done = now;
    }
}

/// Which way a request moves managed memory.
#[derive(Clone, Copy)]
enum Move {
    /// To the host.
    Out,
    /// Back to the GPU each range is charged on.
    In,
}

/// Moves this process's managed ranges (None: nothing to move) and says what happened.
fn carry_out(rt: &Runtime, power: Power, to: Option<Move>) -> PowerAck {
    let start = Instant::now();
    let mut ack = PowerAck {
        power,
        ..PowerAck::default()
    };
    let mut ranges: Vec<(GpuIndex, CUdeviceptr, u64)> = Vec::new();
    rt.ptrs.for_each(|ptr, r| match r.kind {
        Kind::Managed { .. } => ranges.push((r.gpu, ptr, r.bytes)),
        _ => ack.pinned += r.bytes,
    });
    rt.handles.for_each(|_, r| ack.pinned += r.bytes);
    rt.arrays.for_each(|_, r| ack.pinned += r.bytes);
    if let Some(to) = to {
        ranges.sort_unstable();
        for on_gpu in ranges.chunk_by(|a, b| a.0 == b.0) {
            let bytes: u64 = on_gpu.iter().map(|r| r.2).sum();
            let moved = match rt.ordinal_of(on_gpu[0].0) {
                Some(dev) => move_ranges(rt, dev, on_gpu, to, &mut ack),
                None => Err(CUDA_ERROR_INVALID_DEVICE),
            };
            if let Err(e) = moved {
                ack.failed += bytes;
                if ack.error == 0 {
                    ack.error = e as u32;
                }
            }
        }
    }
    ack.nanos = start.elapsed().as_nanos() as u64;
    ack
}

/// Prefetches the ranges of one device, on a stream of ours in a context of the process,
/// and waits for the copies. A range the driver refuses counts as failed; an error that
/// stops the whole device's work is returned (all its bytes failed).
fn move_ranges(
    rt: &Runtime,
    dev: CUdevice,
    ranges: &[(GpuIndex, CUdeviceptr, u64)],
    to: Move,
    ack: &mut PowerAck,
) -> DriverResult<()> {
    let to = match to {
        Move::Out => Place::Host,
        Move::In => Place::Device(dev),
    };
    let primary = driver::retain_active_primary_context(dev)?;
    let ctx = primary
        .or_else(|| rt.first_context(dev))
        .ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    let result = driver::push_context(ctx).and_then(|()| {
        let stream = driver::create_stream();
        let done = stream.and_then(|stream| {
            let mut moved = 0;
            for &(_, ptr, bytes) in ranges {
                match driver::prefetch(ptr, bytes, to, stream) {
                    Ok(()) => moved += bytes,
                    Err(e) => {
                        ack.failed += bytes;
                        if ack.error == 0 {
                            ack.error = e as u32;
                        }
                    }
                }
            }
            let synced = driver::synchronize(stream);
            driver::destroy_stream(stream);
            synced.map(|()| ack.moved += moved)
        });
        driver::pop_context();
        done
    });
    if primary.is_some() {
        driver::release_primary_context(dev);
    }
    result
}
