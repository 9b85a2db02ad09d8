//! What the wrappers share: charging, uncharging and refusing an allocation, managed
//! memory in place of device memory, and reading and writing the caller's out-pointers.

use crate::driver;
use crate::ffi::*;
use crate::hooks::row::*;
use crate::hooks::{Id, hook};
use crate::real::Lib;
use crate::records::{Kind, Record, RecordMap};
use crate::runtime::{NotCharged, Runtime};
use cuvisor_common::ledger::GpuIndex;

/// What a call answers when its allocation cannot be charged.
#[inline] // on the hot path, from the wrappers' modules
pub(super) fn refused(why: NotCharged) -> CUresult {
    match why {
        NotCharged::Quota => CUDA_ERROR_OUT_OF_MEMORY,
        NotCharged::NoLedger => CUDA_ERROR_NOT_INITIALIZED,
        NotCharged::Driver(rc) => rc,
    }
}

/// Reserves `bytes` on `gpu`, makes the driver call, rolls the reservation back if it
/// fails.
#[inline] // on the hot path, from the wrappers' modules
pub(super) fn charged(
    rt: &Runtime,
    gpu: GpuIndex,
    bytes: u64,
    what: &str,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if let Err(why) = rt.reserve(gpu, bytes, what) {
        return refused(why);
    }
    let rc = call();
    if rc != CUDA_SUCCESS {
        rt.release(gpu, bytes);
    }
    rc
}

/// Forgets `key` before the driver frees it (so that a concurrent allocation reusing the
/// address is never confused with it), then uncharges on success or restores on failure.
#[inline] // on the hot path, from the wrappers' modules
pub(super) fn uncharged(
    rt: &Runtime,
    records: &impl RecordMap,
    key: u64,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let record = records.remove(key);
    let rc = call();
    match record {
        Some(r) if rc == CUDA_SUCCESS => rt.release(r.gpu, r.bytes),
        Some(r) => records.insert(key, r),
        None => {}
    }
    rc
}

/// Frees device memory the shim allocated and cannot keep (the driver's own free).
pub(super) fn give_back_to_driver(ptr: CUdeviceptr) {
    if let Some(free) = cuMemFree_v2::real() {
        // SAFETY: `ptr` came from the driver's allocation just now and was never handed
        // to the caller.
        let rc = unsafe { free(ptr) };
        if rc != CUDA_SUCCESS {
            log::error!("the driver did not free {ptr:#x} (error {rc}): it stays allocated");
        }
    }
}

/// The value a successful driver call wrote through an out-pointer.
///
/// # Safety
/// `out` is non-null and the driver just wrote it (its call answered success).
pub(super) unsafe fn written<T: Copy>(out: *const T) -> T {
    // SAFETY: the caller's guarantee.
    unsafe { *out }
}

/// Writes an answer through the caller's out-pointer.
///
/// # Safety
/// `out` is non-null and valid for a write (the driver accepted it in this call).
pub(super) unsafe fn answer<T>(out: *mut T, value: T) {
    // SAFETY: the caller's guarantee.
    unsafe { *out = value }
}

pub(super) const PITCH_ALIGNMENT: u64 = 512;

/// The ledger entry of the calling thread's current device, or the answer to give.
#[inline] // on the hot path, from the wrappers' modules
pub(super) fn current(rt: &Runtime) -> Result<(CUdevice, GpuIndex), CUresult> {
    rt.current_gpu().map_err(refused)
}

/// Managed memory in place of device memory, with advice that it lives on `dev`.
pub(super) fn redirected(
    rt: &Runtime,
    dptr: *mut CUdeviceptr,
    bytes: u64,
    (dev, gpu): (CUdevice, GpuIndex),
    what: &str,
) -> CUresult {
    let Some(managed) = cuMemAllocManaged::real() else {
        return missing(Id::cuMemAllocManaged);
    };
    let rc = charged(rt, gpu, bytes, what, || {
        // SAFETY: cuMemAllocManaged with the caller's non-null out-pointer and a size.
        unsafe { managed(dptr, bytes as usize, CU_MEM_ATTACH_GLOBAL) }
    });
    if rc != CUDA_SUCCESS {
        return rc;
    }
    // SAFETY: the driver succeeded: it wrote the pointer.
    let ptr = unsafe { written(dptr) };
    for advice in [
        CU_MEM_ADVISE_SET_PREFERRED_LOCATION,
        CU_MEM_ADVISE_SET_ACCESSED_BY,
    ] {
        if let Err(a) = driver::advise(ptr, bytes, advice, dev) {
            log::debug!("advice {advice} on {ptr:#x} failed: {a}");
        }
    }
    if rt.config.prefetch
        && let Err(p) =
            driver::prefetch(ptr, bytes, driver::Place::Device(dev), std::ptr::null_mut())
    {
        log::debug!("prefetch of {ptr:#x} failed: {p}");
    }
    rt.ptrs.insert(
        ptr,
        Record {
            gpu,
            bytes,
            kind: Kind::Managed { redirected: true },
        },
    );
    CUDA_SUCCESS
}

/// What an initialization answers when the process must not run.
pub(super) fn init_failure(lib: Lib) -> i32 {
    match lib {
        Lib::Nvml => NVML_ERROR_UNKNOWN,
        Lib::Cuda | Lib::Cudart => CUDA_ERROR_NOT_INITIALIZED,
    }
}

/// What a row answers when its library does not have the real function.
pub(super) fn missing(id: Id) -> i32 {
    let h = hook(id);
    log::error!(
        "{} not found in {}: cannot forward the call",
        h.name(),
        h.lib.name()
    );
    match h.lib {
        Lib::Nvml => 13,           // NVML_ERROR_FUNCTION_NOT_FOUND
        _ => CUDA_ERROR_NOT_FOUND, // cudaErrorSymbolNotFound has the same value
    }
}
