//! Hibernation in each process of a model (`CUVISOR_HIBERNATE=on`): one thread waits on
//! the model's control word in the ledger ([`cuvisor_common::ledger::power`]) and, when it
//! changes, moves every range of managed memory this process holds to the host
//! (hibernate) or back to its GPU (wake), in bulk, then acknowledges in its slot with
//! what it moved, what cannot move, and how long it took.
//!
//! The moves are `cuMemPrefetchAsync` on a stream of the thread's own, in the device's
//! primary context (retained for the move, so it cannot go away meanwhile), pushed on
//! this thread only: the process's own threads and their contexts are not touched. A
//! process whose primary context is not active (one that made contexts of its own with
//! `cuCtxCreate` only) cannot be moved: a context the shim did not retain could be
//! destroyed under it. Its ranges are reported failed (`CUDA_ERROR_INVALID_CONTEXT`). What is not managed memory
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
                Some(dev) => move_ranges(dev, on_gpu, to, &mut ack),
                None => Err(CUDA_ERROR_INVALID_DEVICE),
            };
            if let Err(e) = moved {
                fail(&mut ack, bytes, e);
            }
        }
    }
    ack.nanos = start.elapsed().as_nanos() as u64;
    ack
}

/// Prefetches the ranges of one device, on a stream of ours in its primary context, and
/// waits for the copies. A range the driver refuses counts as failed, and all of them if
/// the wait fails; an error before any move is returned (all the device's bytes failed).
fn move_ranges(
    dev: CUdevice,
    ranges: &[(GpuIndex, CUdeviceptr, u64)],
    to: Move,
    ack: &mut PowerAck,
) -> DriverResult<()> {
    let to = match to {
        Move::Out => Place::Host,
        Move::In => Place::Device(dev),
    };
    let ctx = driver::retain_active_primary_context(dev)?.ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    let result = driver::push_context(ctx).and_then(|()| {
        let stream = driver::create_stream();
        let done = stream.map(|stream| {
            let mut moved = 0;
            for &(_, ptr, bytes) in ranges {
                match driver::prefetch(ptr, bytes, to, stream) {
                    Ok(()) => moved += bytes,
                    Err(e) => fail(ack, bytes, e),
                }
            }
            match driver::synchronize(stream) {
                Ok(()) => ack.moved += moved,
                Err(e) => fail(ack, moved, e),
            }
            driver::destroy_stream(stream);
        });
        driver::pop_context();
        done
    });
    driver::release_primary_context(dev);
    result
}

/// `bytes` did not move, for the driver's reason `e` (the first one is kept).
fn fail(ack: &mut PowerAck, bytes: u64, e: CUresult) {
    ack.failed += bytes;
    if ack.error == 0 {
        ack.error = e as u32;
    }
}
