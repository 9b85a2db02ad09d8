//! The exported wrappers, one per row of the hook table (`hooks.rs`). Each finds its real
//! function, asks `runtime::active()` what to do, and answers as the driver would: no
//! panic crosses this boundary, and unknown pointers are forwarded, never second-guessed.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use crate::driver;
use crate::ffi::*;
use crate::hooks::{self, Id};
use crate::records::{Kind, Record, Records};
use crate::runtime::{Active, NotCharged, Runtime, active};
use cuvisor_common::gpu::GpuUuid;
use cuvisor_common::ledger::GpuIndex;
use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The real function of a row, typed; returns the "not found" code of its library if the
/// library lacks it.
macro_rules! real {
    ($id:ident as $ty:ty) => {
        match hooks::real(Id::$id) {
            // SAFETY: the row's real function has the signature of its wrapper.
            Some(p) => unsafe { std::mem::transmute::<usize, $ty>(p) },
            None => return missing(Id::$id),
        }
    };
}

fn missing(id: Id) -> i32 {
    let h = hooks::hook(id);
    log::error!(
        "{} not found in {}: cannot forward the call",
        h.name(),
        h.lib.name()
    );
    match h.lib {
        crate::real::Lib::Nvml => 13, // NVML_ERROR_FUNCTION_NOT_FOUND
        _ => CUDA_ERROR_NOT_FOUND,    // cudaErrorSymbolNotFound has the same value
    }
}

/// Runs a wrapper body; a panic becomes the "unknown error" of every library (999).
fn guard(body: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log::error!("internal error in the cuvisor shim; the call answers CUDA_ERROR_UNKNOWN");
        CUDA_ERROR_UNKNOWN
    })
}

/// What a call answers when its allocation cannot be charged.
fn refused(why: NotCharged) -> CUresult {
    match why {
        NotCharged::Quota => CUDA_ERROR_OUT_OF_MEMORY,
        NotCharged::NoLedger => CUDA_ERROR_NOT_INITIALIZED,
        NotCharged::Driver(rc) => rc,
    }
}

/// Reserves `bytes` on `gpu`, makes the driver call, rolls the reservation back if it
/// fails.
fn charged(
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
fn uncharged(
    rt: &Runtime,
    records: &Records,
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

const PITCH_ALIGNMENT: u64 = 512;

/// Managed memory in place of device memory, with advice that it lives on `dev`.
fn redirected(
    rt: &Runtime,
    dptr: *mut CUdeviceptr,
    bytes: u64,
    (dev, gpu): (CUdevice, GpuIndex),
    what: &str,
) -> CUresult {
    let managed =
        real!(cuMemAllocManaged as unsafe extern "C" fn(*mut CUdeviceptr, usize, u32) -> CUresult);
    let rc = charged(rt, gpu, bytes, what, || unsafe {
        managed(dptr, bytes as usize, CU_MEM_ATTACH_GLOBAL)
    });
    if rc != CUDA_SUCCESS {
        return rc;
    }
    // SAFETY: the driver just wrote the pointer.
    let ptr = unsafe { *dptr };
    for advice in [
        CU_MEM_ADVISE_SET_PREFERRED_LOCATION,
        CU_MEM_ADVISE_SET_ACCESSED_BY,
    ] {
        let a = driver::advise(ptr, bytes, advice, dev);
        if a != CUDA_SUCCESS {
            log::debug!("advice {advice} on {ptr:#x} failed: {a}");
        }
    }
    if rt.config.prefetch {
        let p = driver::prefetch(ptr, bytes, dev);
        if p != CUDA_SUCCESS {
            log::debug!("prefetch of {ptr:#x} failed: {p}");
        }
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

// ---- initialization and resolvers ---------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: u32) -> CUresult {
    guard(|| {
        let real = real!(cuInit as unsafe extern "C" fn(u32) -> CUresult);
        match active() {
            Active::Failed => return CUDA_ERROR_NOT_INITIALIZED,
            // Join the model's ledger now, so that a missing or damaged one stops CUDA
            // from initializing rather than the first allocation.
            Active::On(rt) if rt.account().is_none() => return CUDA_ERROR_NOT_INITIALIZED,
            _ => {}
        }
        unsafe { real(flags) }
    })
}

unsafe fn substitute_out(
    via: hooks::Via,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: Option<i32>,
    flags: u64,
) {
    if symbol.is_null() || pfn.is_null() {
        return;
    }
    // SAFETY: the resolver succeeded with these arguments, so both are valid.
    unsafe { *pfn = hooks::substitute(via, CStr::from_ptr(symbol), version, flags, *pfn) };
}

/// What both cuGetProcAddress ABIs answer: the real resolver's code, with our wrapper in
/// `pfn` when it succeeded.
unsafe fn proc_address_answer(
    rc: CUresult,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
) -> CUresult {
    if rc == CUDA_SUCCESS {
        let via = hooks::Via::GetProcAddress;
        unsafe { substitute_out(via, symbol, pfn, Some(version), flags) };
    }
    rc
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuGetProcAddress
                as unsafe extern "C" fn(*const c_char, *mut *mut c_void, i32, u64) -> CUresult
        );
        let rc = unsafe { real(symbol, pfn, version, flags) };
        unsafe { proc_address_answer(rc, symbol, pfn, version, flags) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
    status: *mut i32,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuGetProcAddress_v2
                as unsafe extern "C" fn(
                    *const c_char,
                    *mut *mut c_void,
                    i32,
                    u64,
                    *mut i32,
                ) -> CUresult
        );
        let rc = unsafe { real(symbol, pfn, version, flags, status) };
        unsafe { proc_address_answer(rc, symbol, pfn, version, flags) }
    })
}

type EntryPointFn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, u64, *mut i32) -> cudaError_t;
type EntryPointByVersionFn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, u32, u64, *mut i32) -> cudaError_t;

unsafe fn entry_point(
    real: EntryPointFn,
    symbol: *const c_char,
    f: *mut *mut c_void,
    flags: u64,
    status: *mut i32,
) -> cudaError_t {
    let rc = unsafe { real(symbol, f, flags, status) };
    if rc == 0 {
        unsafe {
            substitute_out(
                hooks::Via::EntryPoint,
                symbol,
                f,
                driver::runtime_version(),
                flags,
            )
        };
    }
    rc
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaGetDriverEntryPoint(
    symbol: *const c_char,
    f: *mut *mut c_void,
    flags: u64,
    status: *mut i32,
) -> cudaError_t {
    guard(|| {
        let real = real!(cudaGetDriverEntryPoint as EntryPointFn);
        unsafe { entry_point(real, symbol, f, flags, status) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaGetDriverEntryPoint_ptsz(
    symbol: *const c_char,
    f: *mut *mut c_void,
    flags: u64,
    status: *mut i32,
) -> cudaError_t {
    guard(|| {
        let real = real!(cudaGetDriverEntryPoint_ptsz as EntryPointFn);
        unsafe { entry_point(real, symbol, f, flags, status) }
    })
}

unsafe fn entry_point_by_version(
    real: EntryPointByVersionFn,
    symbol: *const c_char,
    f: *mut *mut c_void,
    version: u32,
    flags: u64,
    status: *mut i32,
) -> cudaError_t {
    let rc = unsafe { real(symbol, f, version, flags, status) };
    if rc == 0 {
        unsafe {
            substitute_out(
                hooks::Via::EntryPoint,
                symbol,
                f,
                i32::try_from(version).ok(),
                flags,
            )
        };
    }
    rc
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaGetDriverEntryPointByVersion(
    symbol: *const c_char,
    f: *mut *mut c_void,
    version: u32,
    flags: u64,
    status: *mut i32,
) -> cudaError_t {
    guard(|| {
        let real = real!(cudaGetDriverEntryPointByVersion as EntryPointByVersionFn);
        unsafe { entry_point_by_version(real, symbol, f, version, flags, status) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaGetDriverEntryPointByVersion_ptsz(
    symbol: *const c_char,
    f: *mut *mut c_void,
    version: u32,
    flags: u64,
    status: *mut i32,
) -> cudaError_t {
    guard(|| {
        let real = real!(cudaGetDriverEntryPointByVersion_ptsz as EntryPointByVersionFn);
        unsafe { entry_point_by_version(real, symbol, f, version, flags, status) }
    })
}

// ---- device memory -----------------------------------------------------------------------

type AllocFn = unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    guard(|| {
        let real = real!(cuMemAlloc_v2 as AllocFn);
        let rt = match active() {
            Active::On(rt) => rt,
            Active::Off => return unsafe { real(dptr, bytesize) },
            Active::Failed => return CUDA_ERROR_NOT_INITIALIZED,
        };
        if dptr.is_null() || bytesize == 0 {
            return unsafe { real(dptr, bytesize) }; // the driver's own answer to bad arguments
        }
        let bytes = bytesize as u64;
        let (dev, gpu) = match rt.current_gpu() {
            Ok(on) => on,
            Err(why) => return refused(why),
        };
        if rt.redirects(dev) {
            return redirected(rt, dptr, bytes, (dev, gpu), "cuMemAlloc_v2");
        }
        let rc = charged(rt, gpu, bytes, "cuMemAlloc_v2", || unsafe {
            real(dptr, bytesize)
        });
        if rc == CUDA_SUCCESS {
            rt.ptrs.insert(
                unsafe { *dptr },
                Record {
                    gpu,
                    bytes,
                    kind: Kind::Device,
                },
            );
        }
        rc
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    element_size: u32,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuMemAllocPitch_v2
                as unsafe extern "C" fn(
                    *mut CUdeviceptr,
                    *mut usize,
                    usize,
                    usize,
                    u32,
                ) -> CUresult
        );
        let forward = || unsafe { real(dptr, pitch, width, height, element_size) };
        let rt = match active() {
            Active::On(rt) => rt,
            Active::Off => return forward(),
            Active::Failed => return CUDA_ERROR_NOT_INITIALIZED,
        };
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
        let (dev, gpu) = match rt.current_gpu() {
            Ok(on) => on,
            Err(why) => return refused(why),
        };
        if rt.redirects(dev) {
            let rc = redirected(rt, dptr, estimate, (dev, gpu), "cuMemAllocPitch_v2");
            if rc == CUDA_SUCCESS {
                unsafe { *pitch = row as usize };
            }
            return rc;
        }
        let rc = charged(rt, gpu, estimate, "cuMemAllocPitch_v2", forward);
        if rc != CUDA_SUCCESS {
            return rc;
        }
        // Charge what the driver really gave: pitch x height.
        let (ptr, actual) = unsafe { (*dptr, (*pitch as u64).saturating_mul(height as u64)) };
        if actual < estimate {
            rt.release(gpu, estimate - actual);
        } else if actual > estimate
            && rt
                .reserve(gpu, actual - estimate, "cuMemAllocPitch_v2")
                .is_err()
        {
            let free = real!(cuMemFree_v2 as unsafe extern "C" fn(CUdeviceptr) -> CUresult);
            unsafe { free(ptr) };
            rt.release(gpu, estimate);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        rt.ptrs.insert(
            ptr,
            Record {
                gpu,
                bytes: actual,
                kind: Kind::Device,
            },
        );
        CUDA_SUCCESS
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    flags: u32,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuMemAllocManaged as unsafe extern "C" fn(*mut CUdeviceptr, usize, u32) -> CUresult
        );
        let rt = match active() {
            Active::On(rt) => rt,
            Active::Off => return unsafe { real(dptr, bytesize, flags) },
            Active::Failed => return CUDA_ERROR_NOT_INITIALIZED,
        };
        if dptr.is_null() || bytesize == 0 {
            return unsafe { real(dptr, bytesize, flags) };
        }
        let bytes = bytesize as u64;
        let gpu = match rt.current_gpu() {
            Ok((_, gpu)) => gpu,
            Err(why) => return refused(why),
        };
        let rc = charged(rt, gpu, bytes, "cuMemAllocManaged", || unsafe {
            real(dptr, bytesize, flags)
        });
        if rc == CUDA_SUCCESS {
            rt.ptrs.insert(
                unsafe { *dptr },
                Record {
                    gpu,
                    bytes,
                    kind: Kind::Managed { redirected: false },
                },
            );
        }
        rc
    })
}

/// Stream-ordered allocations stay device memory (they may be captured into graphs).
/// They are charged on the current device, where a stream of the current context
/// allocates; a stream or pool of another device moves the charge there once the driver
/// says where the memory is.
fn stream_ordered(
    what: &str,
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let rt = match active() {
        Active::On(rt) => rt,
        Active::Off => return call(),
        Active::Failed => return CUDA_ERROR_NOT_INITIALIZED,
    };
    if dptr.is_null() || bytesize == 0 {
        return call();
    }
    let bytes = bytesize as u64;
    let (dev, mut gpu) = match rt.current_gpu() {
        Ok(on) => on,
        Err(why) => return refused(why),
    };
    let rc = charged(rt, gpu, bytes, what, call);
    if rc != CUDA_SUCCESS {
        return rc;
    }
    let ptr = unsafe { *dptr };
    if let Some(landed) = driver::pointer_device(ptr).filter(|&d| d != dev) {
        let moved = rt
            .gpu(landed)
            .and_then(|to| rt.reserve(to, bytes, what).map(|()| to));
        rt.release(gpu, bytes);
        match moved {
            Ok(to) => gpu = to,
            Err(why) => {
                // The memory is on a GPU where the model has no room: give it back.
                let free = real!(cuMemFree_v2 as unsafe extern "C" fn(CUdeviceptr) -> CUresult);
                unsafe { free(ptr) };
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

type AllocAsyncFn = unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult;
type AllocFromPoolFn =
    unsafe extern "C" fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream) -> CUresult;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    stream: CUstream,
) -> CUresult {
    guard(|| {
        let real = real!(cuMemAllocAsync as AllocAsyncFn);
        stream_ordered("cuMemAllocAsync", dptr, bytesize, || unsafe {
            real(dptr, bytesize, stream)
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    stream: CUstream,
) -> CUresult {
    guard(|| {
        let real = real!(cuMemAllocAsync_ptsz as AllocAsyncFn);
        stream_ordered("cuMemAllocAsync", dptr, bytesize, || unsafe {
            real(dptr, bytesize, stream)
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    guard(|| {
        let real = real!(cuMemAllocFromPoolAsync as AllocFromPoolFn);
        stream_ordered("cuMemAllocFromPoolAsync", dptr, bytesize, || unsafe {
            real(dptr, bytesize, pool, stream)
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    guard(|| {
        let real = real!(cuMemAllocFromPoolAsync_ptsz as AllocFromPoolFn);
        stream_ordered("cuMemAllocFromPoolAsync", dptr, bytesize, || unsafe {
            real(dptr, bytesize, pool, stream)
        })
    })
}

/// A free of device memory: uncharged on success, forwarded as is when unknown.
fn free_pointer(ptr: CUdeviceptr, call: impl FnOnce() -> CUresult) -> CUresult {
    match active() {
        Active::On(rt) => uncharged(rt, &rt.ptrs, ptr, call),
        Active::Off | Active::Failed => call(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(ptr: CUdeviceptr) -> CUresult {
    guard(|| {
        let real = real!(cuMemFree_v2 as unsafe extern "C" fn(CUdeviceptr) -> CUresult);
        free_pointer(ptr, || unsafe { real(ptr) })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(ptr: CUdeviceptr, stream: CUstream) -> CUresult {
    guard(|| {
        let real = real!(cuMemFreeAsync as unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult);
        free_pointer(ptr, || unsafe { real(ptr, stream) })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(ptr: CUdeviceptr, stream: CUstream) -> CUresult {
    guard(|| {
        let real =
            real!(cuMemFreeAsync_ptsz as unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult);
        free_pointer(ptr, || unsafe { real(ptr, stream) })
    })
}

// ---- virtual memory management -----------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuMemCreate
                as unsafe extern "C" fn(
                    *mut CUmemGenericAllocationHandle,
                    usize,
                    *const CUmemAllocationProp,
                    u64,
                ) -> CUresult
        );
        let forward = || unsafe { real(handle, size, prop, flags) };
        let rt = match active() {
            Active::On(rt) => rt,
            Active::Off => return forward(),
            Active::Failed => return CUDA_ERROR_NOT_INITIALIZED,
        };
        // Only device-located physical memory counts; host-located handles are host RAM.
        let on_device =
            !prop.is_null() && unsafe { (*prop).location.type_ } == CU_MEM_LOCATION_TYPE_DEVICE;
        if handle.is_null() || size == 0 || !on_device {
            return forward();
        }
        let bytes = size as u64;
        // The memory is made on the device the properties name, current or not.
        let gpu = match rt.gpu(unsafe { (*prop).location.id }) {
            Ok(gpu) => gpu,
            Err(why) => return refused(why),
        };
        let rc = charged(rt, gpu, bytes, "cuMemCreate", forward);
        if rc == CUDA_SUCCESS {
            rt.handles.insert(
                unsafe { *handle },
                Record {
                    gpu,
                    bytes,
                    kind: Kind::Vmm {
                        maps: 0,
                        released: false,
                    },
                },
            );
        }
        rc
    })
}

/// The driver keeps a released handle's memory until its last mapping goes: so does the
/// charge.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    guard(|| {
        let real =
            real!(cuMemRelease as unsafe extern "C" fn(CUmemGenericAllocationHandle) -> CUresult);
        let rt = match active() {
            Active::On(rt) => rt,
            _ => return unsafe { real(handle) },
        };
        let mapped = match rt.handles.get(handle) {
            Some(Record {
                kind: Kind::Vmm { maps, .. },
                ..
            }) => maps > 0,
            _ => return unsafe { real(handle) },
        };
        if !mapped {
            return uncharged(rt, &rt.handles, handle, || unsafe { real(handle) });
        }
        let set_released = |value: bool| {
            rt.handles.update(handle, |r| {
                if let Kind::Vmm { released, .. } = &mut r.kind {
                    *released = value;
                }
            })
        };
        set_released(true);
        let rc = unsafe { real(handle) };
        if rc != CUDA_SUCCESS {
            set_released(false);
        }
        rc
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: CUmemGenericAllocationHandle,
    flags: u64,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuMemMap
                as unsafe extern "C" fn(
                    CUdeviceptr,
                    usize,
                    usize,
                    CUmemGenericAllocationHandle,
                    u64,
                ) -> CUresult
        );
        let rc = unsafe { real(ptr, size, offset, handle, flags) };
        if let (CUDA_SUCCESS, Active::On(rt)) = (rc, active()) {
            let known = rt.handles.update(handle, |r| {
                if let Kind::Vmm { maps, .. } = &mut r.kind {
                    *maps += 1;
                }
            });
            if known.is_some() {
                rt.mappings.lock().insert(ptr, (size as u64, handle));
            }
        }
        rc
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard(|| {
        let real = real!(cuMemUnmap as unsafe extern "C" fn(CUdeviceptr, usize) -> CUresult);
        let rt = match active() {
            Active::On(rt) => rt,
            _ => return unsafe { real(ptr, size) },
        };
        // Take the mappings in the range out first; put them back if the driver refuses.
        let end = ptr.saturating_add(size as u64);
        let taken: Vec<(u64, (u64, u64))> = {
            let mut m = rt.mappings.lock();
            let keys: Vec<u64> = m.range(ptr..end).map(|(k, _)| *k).collect();
            keys.into_iter()
                .filter_map(|k| m.remove(&k).map(|v| (k, v)))
                .collect()
        };
        let rc = unsafe { real(ptr, size) };
        if rc != CUDA_SUCCESS {
            rt.mappings.lock().extend(taken);
            return rc;
        }
        for (_, (_, handle)) in taken {
            let last = rt.handles.update(handle, |r| match &mut r.kind {
                Kind::Vmm { maps, released } => {
                    *maps = maps.saturating_sub(1);
                    *released && *maps == 0
                }
                _ => false,
            });
            if last == Some(true)
                && let Some(r) = rt.handles.remove(handle)
            {
                rt.release(r.gpu, r.bytes);
            }
        }
        rc
    })
}

// ---- arrays --------------------------------------------------------------------------------

/// Bytes of one array level from its descriptor (height or depth 0: fewer dimensions).
/// Unknown formats are counted as 4 bytes per channel.
fn array_bytes(width: usize, height: usize, depth: usize, format: u32, channels: u32) -> u64 {
    let element = match array_format_bytes(format) {
        0 => 4,
        n => n,
    };
    [
        width as u64,
        height.max(1) as u64,
        depth.max(1) as u64,
        element,
        channels.max(1) as u64,
    ]
    .into_iter()
    .fold(1u64, u64::saturating_mul)
}

fn array_create(
    what: &str,
    array: *mut CUarray,
    bytes: u64,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let rt = match active() {
        Active::On(rt) => rt,
        Active::Off => return call(),
        Active::Failed => return CUDA_ERROR_NOT_INITIALIZED,
    };
    if array.is_null() || bytes == 0 {
        return call();
    }
    let gpu = match rt.current_gpu() {
        Ok((_, gpu)) => gpu,
        Err(why) => return refused(why),
    };
    let rc = charged(rt, gpu, bytes, what, call);
    if rc == CUDA_SUCCESS {
        rt.arrays.insert(
            unsafe { *array } as u64,
            Record {
                gpu,
                bytes,
                kind: Kind::Array,
            },
        );
    }
    rc
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayCreate_v2(
    array: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuArrayCreate_v2
                as unsafe extern "C" fn(*mut CUarray, *const CUDA_ARRAY_DESCRIPTOR) -> CUresult
        );
        let bytes = match unsafe { desc.as_ref() } {
            Some(d) => array_bytes(d.width, d.height, 0, d.format, d.num_channels),
            None => 0,
        };
        array_create("cuArrayCreate_v2", array, bytes, || unsafe {
            real(array, desc)
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArray3DCreate_v2(
    array: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuArray3DCreate_v2
                as unsafe extern "C" fn(*mut CUarray, *const CUDA_ARRAY3D_DESCRIPTOR) -> CUresult
        );
        let bytes = match unsafe { desc.as_ref() } {
            Some(d) => array_bytes(d.width, d.height, d.depth, d.format, d.num_channels),
            None => 0,
        };
        array_create("cuArray3DCreate_v2", array, bytes, || unsafe {
            real(array, desc)
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    array: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: u32,
) -> CUresult {
    guard(|| {
        let real = real!(
            cuMipmappedArrayCreate
                as unsafe extern "C" fn(
                    *mut CUarray,
                    *const CUDA_ARRAY3D_DESCRIPTOR,
                    u32,
                ) -> CUresult
        );
        let bytes = match unsafe { desc.as_ref() } {
            Some(d) => (0..levels.min(64))
                .map(|l| {
                    let shrink = |n: usize| if n == 0 { 0 } else { (n >> l).max(1) };
                    array_bytes(
                        shrink(d.width),
                        shrink(d.height),
                        shrink(d.depth),
                        d.format,
                        d.num_channels,
                    )
                })
                .fold(0u64, u64::saturating_add),
            None => 0,
        };
        array_create("cuMipmappedArrayCreate", array, bytes, || unsafe {
            real(array, desc, levels)
        })
    })
}

fn array_destroy(array: CUarray, call: impl FnOnce() -> CUresult) -> CUresult {
    match active() {
        Active::On(rt) => uncharged(rt, &rt.arrays, array as u64, call),
        _ => call(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayDestroy(array: CUarray) -> CUresult {
    guard(|| {
        let real = real!(cuArrayDestroy as unsafe extern "C" fn(CUarray) -> CUresult);
        array_destroy(array, || unsafe { real(array) })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayDestroy(array: CUarray) -> CUresult {
    guard(|| {
        let real = real!(cuMipmappedArrayDestroy as unsafe extern "C" fn(CUarray) -> CUresult);
        array_destroy(array, || unsafe { real(array) })
    })
}

// ---- IPC -----------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcGetMemHandle(handle: *mut c_void, ptr: CUdeviceptr) -> CUresult {
    guard(|| {
        let real =
            real!(cuIpcGetMemHandle as unsafe extern "C" fn(*mut c_void, CUdeviceptr) -> CUresult);
        let rc = unsafe { real(handle, ptr) };
        if rc != CUDA_SUCCESS
            && let Active::On(rt) = active()
            && let Some(Record {
                kind: Kind::Managed { redirected: true },
                ..
            }) = rt.ptrs.get(ptr)
        {
            rt.ipc_hint();
        }
        rc
    })
}

// ---- memory information --------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    guard(|| {
        let real =
            real!(cuMemGetInfo_v2 as unsafe extern "C" fn(*mut usize, *mut usize) -> CUresult);
        let rc = unsafe { real(free, total) };
        if rc == CUDA_SUCCESS
            && let Active::On(rt) = active()
            && let Ok(dev) = driver::current_device()
            && let Some((f, t)) = rt.device_memory(dev, unsafe { *total } as u64)
        {
            unsafe {
                *free = f as usize;
                *total = t as usize;
            }
        }
        rc
    })
}

fn clamp32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo(free: *mut u32, total: *mut u32) -> CUresult {
    guard(|| {
        let real = real!(cuMemGetInfo as unsafe extern "C" fn(*mut u32, *mut u32) -> CUresult);
        let rc = unsafe { real(free, total) };
        if rc == CUDA_SUCCESS
            && let Active::On(rt) = active()
            && let Ok(dev) = driver::current_device()
        {
            // The 32-bit ABI saturates; the physical size is asked in full.
            let physical = driver::physical_memory(dev).unwrap_or(unsafe { *total } as u64);
            if let Some((f, t)) = rt.device_memory(dev, physical) {
                unsafe {
                    *free = clamp32(f);
                    *total = clamp32(t);
                }
            }
        }
        rc
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard(|| {
        let real =
            real!(cuDeviceTotalMem_v2 as unsafe extern "C" fn(*mut usize, CUdevice) -> CUresult);
        let rc = unsafe { real(bytes, dev) };
        if rc == CUDA_SUCCESS
            && let Active::On(rt) = active()
            && let Some((_, t)) = rt.device_memory(dev, unsafe { *bytes } as u64)
        {
            unsafe { *bytes = t as usize };
        }
        rc
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem(bytes: *mut u32, dev: CUdevice) -> CUresult {
    guard(|| {
        let real = real!(cuDeviceTotalMem as unsafe extern "C" fn(*mut u32, CUdevice) -> CUresult);
        let rc = unsafe { real(bytes, dev) };
        if rc == CUDA_SUCCESS
            && let Active::On(rt) = active()
        {
            let physical = driver::physical_memory(dev).unwrap_or(unsafe { *bytes } as u64);
            if let Some((_, t)) = rt.device_memory(dev, physical) {
                unsafe { *bytes = clamp32(t) };
            }
        }
        rc
    })
}

// ---- NVML ------------------------------------------------------------------------------------

fn nvml_init(call: impl FnOnce() -> nvmlReturn_t) -> nvmlReturn_t {
    match active() {
        Active::Failed => NVML_ERROR_UNKNOWN,
        Active::On(rt) if rt.account().is_none() => NVML_ERROR_UNKNOWN,
        _ => call(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> nvmlReturn_t {
    guard(|| {
        let real = real!(nvmlInit as unsafe extern "C" fn() -> nvmlReturn_t);
        nvml_init(|| unsafe { real() })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    guard(|| {
        let real = real!(nvmlInit_v2 as unsafe extern "C" fn() -> nvmlReturn_t);
        nvml_init(|| unsafe { real() })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(flags: u32) -> nvmlReturn_t {
    guard(|| {
        let real = real!(nvmlInitWithFlags as unsafe extern "C" fn(u32) -> nvmlReturn_t);
        nvml_init(|| unsafe { real(flags) })
    })
}

/// NVML's view of one GPU, made to agree with cuMemGetInfo there: (total, free, used)
/// of the model on it.
fn nvml_virtual(device: nvmlDevice_t, total: u64) -> Option<(u64, u64, u64)> {
    match active() {
        Active::On(rt) => rt.nvml_memory(device, total),
        _ => None,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    guard(|| {
        let real = real!(
            nvmlDeviceGetMemoryInfo
                as unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_t) -> nvmlReturn_t
        );
        let rc = unsafe { real(device, memory) };
        if rc == NVML_SUCCESS
            && let Some(m) = unsafe { memory.as_mut() }
            && let Some((total, free, used)) = nvml_virtual(device, m.total)
        {
            *m = nvmlMemory_t { total, free, used };
        }
        rc
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    guard(|| {
        let real = real!(
            nvmlDeviceGetMemoryInfo_v2
                as unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_v2_t) -> nvmlReturn_t
        );
        let rc = unsafe { real(device, memory) };
        if rc == NVML_SUCCESS
            && let Some(m) = unsafe { memory.as_mut() }
            && let Some((total, free, used)) = nvml_virtual(device, m.total)
        {
            m.total = total;
            m.reserved = 0;
            m.free = free;
            m.used = used;
        }
        rc
    })
}

// ---- NVML placement: only the model's GPUs ----------------------------------------------------

type ByIdFn = unsafe extern "C" fn(*const c_char, *mut nvmlDevice_t) -> nvmlReturn_t;

/// The GPUs the model was placed on (`CUVISOR_GPUS`), when the shim is on and it was.
fn placed() -> Option<&'static [GpuUuid]> {
    match active() {
        Active::On(rt) => rt.config.gpus.as_deref(),
        _ => None,
    }
}

/// The handles of the model's GPUs, in its order: those NVML knows by UUID.
fn placed_handles(gpus: &[GpuUuid]) -> Result<Vec<nvmlDevice_t>, nvmlReturn_t> {
    let Some(by_uuid) = hooks::real(Id::nvmlDeviceGetHandleByUUID) else {
        return Err(missing(Id::nvmlDeviceGetHandleByUUID));
    };
    // SAFETY: the row's real function has the signature of its wrapper.
    let by_uuid = unsafe { std::mem::transmute::<usize, ByIdFn>(by_uuid) };
    let mut handles = Vec::with_capacity(gpus.len());
    for uuid in gpus {
        let text = std::ffi::CString::new(uuid.to_string()).expect("a UUID has no NUL");
        let mut device: nvmlDevice_t = std::ptr::null_mut();
        match unsafe { by_uuid(text.as_ptr(), &mut device) } {
            NVML_SUCCESS => handles.push(device),
            NVML_ERROR_NOT_FOUND => {}
            rc => return Err(rc),
        }
    }
    Ok(handles)
}

/// Whether NVML's `device` is one of the model's GPUs (asked by its UUID).
fn is_placed(gpus: &[GpuUuid], device: nvmlDevice_t) -> bool {
    driver::nvml_uuid(device).is_some_and(|u| gpus.contains(&u))
}

fn nvml_count(count: *mut u32, call: impl FnOnce() -> nvmlReturn_t) -> nvmlReturn_t {
    let Some(gpus) = placed() else {
        return call();
    };
    let rc = call(); // NVML's own answer to bad arguments and an uninitialized library
    if rc != NVML_SUCCESS {
        return rc;
    }
    match placed_handles(gpus) {
        Ok(handles) => {
            unsafe { *count = handles.len() as u32 };
            NVML_SUCCESS
        }
        Err(rc) => rc,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut u32) -> nvmlReturn_t {
    guard(|| {
        let real = real!(nvmlDeviceGetCount as unsafe extern "C" fn(*mut u32) -> nvmlReturn_t);
        nvml_count(count, || unsafe { real(count) })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut u32) -> nvmlReturn_t {
    guard(|| {
        let real = real!(nvmlDeviceGetCount_v2 as unsafe extern "C" fn(*mut u32) -> nvmlReturn_t);
        nvml_count(count, || unsafe { real(count) })
    })
}

type ByIndexFn = unsafe extern "C" fn(u32, *mut nvmlDevice_t) -> nvmlReturn_t;

fn nvml_by_index(index: u32, device: *mut nvmlDevice_t, real: ByIndexFn) -> nvmlReturn_t {
    let Some(gpus) = placed() else {
        return unsafe { real(index, device) };
    };
    if device.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    match placed_handles(gpus) {
        Ok(handles) => match handles.get(index as usize) {
            Some(&h) => {
                unsafe { *device = h };
                NVML_SUCCESS
            }
            None => NVML_ERROR_INVALID_ARGUMENT, // NVML's answer to an index past the count
        },
        Err(rc) => rc,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: u32,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        nvml_by_index(
            index,
            device,
            real!(nvmlDeviceGetHandleByIndex as ByIndexFn),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: u32,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        nvml_by_index(
            index,
            device,
            real!(nvmlDeviceGetHandleByIndex_v2 as ByIndexFn),
        )
    })
}

/// A lookup by UUID or PCI bus id: NVML's answer, unless it found a GPU of another model.
fn nvml_lookup(device: *mut nvmlDevice_t, call: impl FnOnce() -> nvmlReturn_t) -> nvmlReturn_t {
    let rc = call();
    if rc == NVML_SUCCESS
        && let Some(gpus) = placed()
        && !is_placed(gpus, unsafe { *device })
    {
        unsafe { *device = std::ptr::null_mut() };
        return NVML_ERROR_NOT_FOUND;
    }
    rc
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        let real = real!(nvmlDeviceGetHandleByUUID as ByIdFn);
        nvml_lookup(device, || unsafe { real(uuid, device) })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    bus: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        let real = real!(nvmlDeviceGetHandleByPciBusId as ByIdFn);
        nvml_lookup(device, || unsafe { real(bus, device) })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    guard(|| {
        let real = real!(nvmlDeviceGetHandleByPciBusId_v2 as ByIdFn);
        nvml_lookup(device, || unsafe { real(bus, device) })
    })
}

/// A GPU's index among the model's GPUs, as nvmlDeviceGetHandleByIndex numbers them.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut u32) -> nvmlReturn_t {
    guard(|| {
        let real = real!(
            nvmlDeviceGetIndex as unsafe extern "C" fn(nvmlDevice_t, *mut u32) -> nvmlReturn_t
        );
        let rc = unsafe { real(device, index) };
        let Some(gpus) = placed() else {
            return rc;
        };
        if rc != NVML_SUCCESS {
            return rc;
        }
        match placed_handles(gpus).map(|h| h.iter().position(|&d| d == device)) {
            Ok(Some(i)) => {
                unsafe { *index = i as u32 };
                NVML_SUCCESS
            }
            Ok(None) => NVML_ERROR_NOT_FOUND,
            Err(rc) => rc,
        }
    })
}
