//! Device memory: allocations charged (and redirected to managed memory), frees uncharged, memory pools remembered by device, contexts that take their allocations with them.

use super::charge::*;
use crate::driver;
use crate::ffi::*;
use crate::hooks::row::*;
use crate::records::{Kind, Record, RecordMap};
use crate::runtime::Runtime;

hook! {
    cuMemAlloc_v2(dptr, bytesize) |forward, rt| {
        if dptr.is_null() || bytesize == 0 {
            return forward(); // the driver's own answer to bad arguments
        }
        let bytes = bytesize as u64;
        let (dev, gpu) = match current(rt) {
            Ok(on) => on,
            Err(rc) => return rc,
        };
        if rt.redirects(dev) {
            return redirected(rt, dptr, bytes, (dev, gpu), "cuMemAlloc_v2");
        }
        let rc = charged(rt, gpu, bytes, "cuMemAlloc_v2", forward);
        if rc == CUDA_SUCCESS {
            // SAFETY: the driver succeeded: it wrote the pointer.
            let ptr = unsafe { written(dptr) };
            rt.ptrs.insert(ptr, Record { gpu, bytes, kind: Kind::Device });
        }
        rc
    }
}

hook! {
    cuMemAllocPitch_v2(dptr, pitch, width, height, element_size) |forward, rt| {
        let valid = !dptr.is_null()
            && !pitch.is_null()
            && width > 0
            && height > 0
            && matches!(element_size, 4 | 8 | 16);
        // Rows are padded to the pitch alignment; reserve that before asking the driver.
        let row = (width as u64).div_ceil(PITCH_ALIGNMENT) * PITCH_ALIGNMENT;
        let Some(estimate) = row.checked_mul(height as u64).filter(|_| valid) else {
            return forward();
        };
        let (dev, gpu) = match current(rt) {
            Ok(on) => on,
            Err(rc) => return rc,
        };
        if rt.redirects(dev) {
            let rc = redirected(rt, dptr, estimate, (dev, gpu), "cuMemAllocPitch_v2");
            if rc == CUDA_SUCCESS {
                // SAFETY: checked non-null above; the caller's out-parameter.
                unsafe { answer(pitch, row as usize) };
            }
            return rc;
        }
        let rc = charged(rt, gpu, estimate, "cuMemAllocPitch_v2", forward);
        if rc != CUDA_SUCCESS {
            return rc;
        }
        // Charge what the driver really gave: pitch x height.
        // SAFETY: the driver succeeded: it wrote both.
        let (ptr, actual) = unsafe { (written(dptr), (written(pitch) as u64).saturating_mul(height as u64)) };
        if actual < estimate {
            rt.release(gpu, estimate - actual);
        } else if actual > estimate
            && rt.reserve(gpu, actual - estimate, "cuMemAllocPitch_v2").is_err()
        {
            give_back_to_driver(ptr);
            rt.release(gpu, estimate);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        rt.ptrs.insert(ptr, Record { gpu, bytes: actual, kind: Kind::Device });
        CUDA_SUCCESS
    }
}

hook! {
    cuMemAllocManaged(dptr, bytesize, _flags) |forward, rt| {
        if dptr.is_null() || bytesize == 0 {
            return forward();
        }
        let bytes = bytesize as u64;
        let gpu = match current(rt) {
            Ok((_, gpu)) => gpu,
            Err(rc) => return rc,
        };
        let rc = charged(rt, gpu, bytes, "cuMemAllocManaged", forward);
        if rc == CUDA_SUCCESS {
            // SAFETY: the driver succeeded: it wrote the pointer.
            let ptr = unsafe { written(dptr) };
            rt.ptrs.insert(ptr, Record { gpu, bytes, kind: Kind::Managed { redirected: false } });
        }
        rc
    }
}

/// Where a stream-ordered allocation lands: a pool's device, or the device of the
/// stream's context (the current one for the default streams).
#[derive(Clone, Copy)]
enum Target {
    Stream(CUstream),
    Pool(CUmemoryPool),
}

/// Stream-ordered allocations stay device memory (they may be captured into graphs).
/// They are charged on the device they land on, found before the call: a pool's
/// (remembered when it was created or asked for), or the stream's context's. For a pool
/// the shim has not seen (imported from another process) the current device is charged
/// first, and the charge moves once the driver says where the memory is; if that GPU has
/// no room the memory is given back on the same stream, and the call answers out of
/// memory.
fn stream_ordered(
    rt: &Runtime,
    what: &str,
    (dptr, bytesize, target): (*mut CUdeviceptr, usize, Target),
    free_async: Option<cuMemFreeAsync::Real>,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if dptr.is_null() || bytesize == 0 {
        return call();
    }
    let bytes = bytesize as u64;
    let (stream, known) = match target {
        Target::Stream(s) if driver::is_default_stream(s) => (s, rt.current_device().ok()),
        Target::Stream(s) => (s, driver::stream_device(s).ok()),
        Target::Pool(p) => (
            std::ptr::null_mut(),
            rt.pools.lock().get(&(p as usize)).copied(),
        ),
    };
    let guessed = match known {
        Some(dev) => rt.gpu(dev).map(|gpu| (dev, gpu)).map_err(refused),
        None => current(rt),
    };
    let (dev, mut gpu) = match guessed {
        Ok(on) => on,
        Err(rc) => return rc,
    };
    let rc = charged(rt, gpu, bytes, what, call);
    if rc != CUDA_SUCCESS {
        return rc;
    }
    // SAFETY: the driver succeeded: it wrote the pointer.
    let ptr = unsafe { written(dptr) };
    let landed = match known {
        Some(_) => None,
        None => driver::pointer_device(ptr).ok().filter(|&d| d != dev),
    };
    if let Some(landed) = landed {
        let moved = rt
            .gpu(landed)
            .and_then(|to| rt.reserve(to, bytes, what).map(|()| to));
        rt.release(gpu, bytes);
        match moved {
            Ok(to) => gpu = to,
            Err(why) => {
                // On a GPU where the model has no room: back to the pool, in stream order.
                match free_async {
                    // SAFETY: the pointer the driver just allocated on this stream, never
                    // handed to the caller.
                    Some(free) => unsafe { free(ptr, stream) },
                    None => CUDA_ERROR_NOT_FOUND,
                };
                return refused(why);
            }
        }
    }
    rt.ptrs.insert(
        ptr,
        Record {
            gpu,
            bytes,
            kind: Kind::Device,
        },
    );
    CUDA_SUCCESS
}

hook! {
    cuMemAllocAsync(dptr, bytesize, stream) |forward, rt| {
        let free = cuMemFreeAsync::real();
        let call = (dptr, bytesize, Target::Stream(stream));
        stream_ordered(rt, "cuMemAllocAsync", call, free, forward)
    }
}

hook! {
    cuMemAllocAsync_ptsz(dptr, bytesize, stream) |forward, rt| {
        let free = cuMemFreeAsync_ptsz::real();
        let call = (dptr, bytesize, Target::Stream(stream));
        stream_ordered(rt, "cuMemAllocAsync", call, free, forward)
    }
}

hook! {
    cuMemAllocFromPoolAsync(dptr, bytesize, pool, _stream) |forward, rt| {
        let free = cuMemFreeAsync::real();
        let call = (dptr, bytesize, Target::Pool(pool));
        stream_ordered(rt, "cuMemAllocFromPoolAsync", call, free, forward)
    }
}

hook! {
    cuMemAllocFromPoolAsync_ptsz(dptr, bytesize, pool, _stream) |forward, rt| {
        let free = cuMemFreeAsync_ptsz::real();
        let call = (dptr, bytesize, Target::Pool(pool));
        stream_ordered(rt, "cuMemAllocFromPoolAsync", call, free, forward)
    }
}

/// Remembers the pool a successful call wrote, on `dev`.
fn remember_pool(rt: &Runtime, rc: CUresult, pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult {
    if rc == CUDA_SUCCESS && !pool.is_null() {
        // SAFETY: the driver succeeded: it wrote the pool.
        let p = unsafe { written(pool) };
        rt.pools.lock().insert(p as usize, dev);
    }
    rc
}

hook! {
    cuMemPoolCreate(pool, props) |forward, rt| {
        let rc = forward();
        // SAFETY: the driver accepted the properties: they are readable.
        match unsafe { props.as_ref() } {
            Some(p) if p.location.type_ == CU_MEM_LOCATION_TYPE_DEVICE => {
                remember_pool(rt, rc, pool, p.location.id)
            }
            _ => rc,
        }
    }
}

hook! {
    cuMemPoolDestroy(pool) |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS {
            rt.pools.lock().remove(&(pool as usize));
        }
        rc
    }
}

hook! {
    cuDeviceGetDefaultMemPool(pool, dev) |forward, rt| { remember_pool(rt, forward(), pool, dev) }
}

hook! {
    cuDeviceGetMemPool(pool, dev) |forward, rt| { remember_pool(rt, forward(), pool, dev) }
}

hook! {
    cuMemFree_v2(ptr) |forward, rt| { uncharged(rt, &rt.ptrs, ptr, forward) }
}

hook! {
    /// What `cudaDeviceReset` calls: the driver destroys every allocation of the device's
    /// primary context.
    cuDevicePrimaryCtxReset(dev) |forward, rt| { swept(rt, Some(dev), "reset", forward) }
}

hook! {
    cuDevicePrimaryCtxReset_v2(dev) |forward, rt| { swept(rt, Some(dev), "reset", forward) }
}

hook! {
    /// The last release of a primary context destroys its allocations too.
    cuDevicePrimaryCtxRelease(dev) |forward, rt| { swept(rt, Some(dev), "released", forward) }
}

hook! {
    cuDevicePrimaryCtxRelease_v2(dev) |forward, rt| { swept(rt, Some(dev), "released", forward) }
}

hook! {
    /// A created context's allocations go with it, on whatever device it was.
    cuCtxDestroy_v2(_ctx) |forward, rt| { swept(rt, None, "context destroyed", forward) }
}

/// A context went (reset, last release, destroy) and took its allocations with it behind
/// the shim's back: every pointer charged on `dev` (every device when None) that the
/// driver no longer knows is uncharged. Pointers of another live context, which the
/// driver still knows, stay. (CUDA requires that no other thread use the context while it
/// goes, so no allocation reuses a destroyed address before this sweep.) VMM handles are
/// no context's; arrays it destroyed stay charged until the process exits (noted in
/// INTERCEPTION.md).
fn swept(
    rt: &Runtime,
    dev: Option<CUdevice>,
    what: &str,
    forward: impl FnOnce() -> CUresult,
) -> CUresult {
    let rc = forward();
    if rc != CUDA_SUCCESS {
        return rc;
    }
    // A device the process has not met holds none of its charges: nothing to ask (and
    // meeting it now would register it in the ledger).
    let gpu = match dev.map(|d| rt.cached(d)) {
        Some(None) => return rc,
        Some(known) => known,
        None => None,
    };
    let mut gone = Vec::new();
    rt.ptrs.for_each(|ptr, record| {
        if gpu.is_none_or(|g| record.gpu == g) && driver::pointer_device(ptr).is_err() {
            gone.push(ptr);
        }
    });
    let mut bytes = 0;
    for ptr in gone {
        if let Some(record) = rt.ptrs.remove(ptr) {
            rt.release(record.gpu, record.bytes);
            bytes += record.bytes;
        }
    }
    if bytes > 0 {
        match dev {
            Some(d) => log::info!("device {d} {what}: {bytes} bytes of its allocations uncharged"),
            None => log::info!("{what}: {bytes} bytes of its allocations uncharged"),
        }
    }
    rc
}

hook! {
    cuMemFreeAsync(ptr, _stream) |forward, rt| { uncharged(rt, &rt.ptrs, ptr, forward) }
}

hook! {
    cuMemFreeAsync_ptsz(ptr, _stream) |forward, rt| { uncharged(rt, &rt.ptrs, ptr, forward) }
}
