//! Driver functions the shim calls for its own purposes (current device, device identity,
//! attributes, advice, prefetch) without wrapping them. Each is declared once, with its
//! C signature, and resolved behind the shim on first use; each call returns a typed
//! result (the driver's error code on failure). Functions that are also hooked rows are
//! reached through their wrapper's `real()` instead.

use crate::ffi::*;
use crate::real::{self, Lib};
use cuvisor_common::gpu::GpuUuid;
use std::ffi::{CStr, c_char, c_void};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A library function of type `F` (an `unsafe extern "C" fn`), looked up on first use.
struct Lazy<F> {
    lib: Lib,
    name: &'static CStr,
    ptr: AtomicUsize, // 0: not looked up yet; 1: looked up, absent
    signature: PhantomData<F>,
}

impl<F: Copy> Lazy<F> {
    /// # Safety
    /// `F` must be the C signature of `name` in `lib`.
    const unsafe fn new(lib: Lib, name: &'static CStr) -> Lazy<F> {
        Lazy {
            lib,
            name,
            ptr: AtomicUsize::new(0),
            signature: PhantomData,
        }
    }

    fn get(&self) -> Option<F> {
        let mut p = self.ptr.load(Ordering::Acquire);
        if p == 0 {
            p = (real::lookup(self.lib, self.name) as usize).max(1);
            self.ptr.store(p, Ordering::Release);
        }
        // SAFETY: `p` is the address of `name`, whose signature is `F` (the promise of
        // `new`); F is a function pointer, the size of an address.
        (p != 1).then(|| unsafe { std::mem::transmute_copy::<usize, F>(&p) })
    }
}

/// A driver function as the shim declares it: `static NAME: Lazy<signature> = (lib, "C name")`.
macro_rules! functions {
    ($($id:ident: $lib:ident $name:literal $sig:ty;)*) => {
        // SAFETY: each signature is the C declaration of its name in CUDA's headers
        // (cuda.h, nvml.h, cuda_runtime_api.h).
        $(static $id: Lazy<$sig> = unsafe { Lazy::new(Lib::$lib, $name) };)*
    };
}

functions! {
    CTX_GET_DEVICE: Cuda c"cuCtxGetDevice" unsafe extern "C" fn(*mut CUdevice) -> CUresult;
    DEVICE_GET_COUNT: Cuda c"cuDeviceGetCount" unsafe extern "C" fn(*mut i32) -> CUresult;
    DEVICE_GET_ATTRIBUTE: Cuda c"cuDeviceGetAttribute"
        unsafe extern "C" fn(*mut i32, i32, CUdevice) -> CUresult;
    DEVICE_GET_UUID_V2: Cuda c"cuDeviceGetUuid_v2"
        unsafe extern "C" fn(*mut [u8; 16], CUdevice) -> CUresult;
    DEVICE_GET_UUID: Cuda c"cuDeviceGetUuid"
        unsafe extern "C" fn(*mut [u8; 16], CUdevice) -> CUresult;
    POINTER_GET_ATTRIBUTE: Cuda c"cuPointerGetAttribute"
        unsafe extern "C" fn(*mut c_void, i32, CUdeviceptr) -> CUresult;
    MEM_ADVISE_V2: Cuda c"cuMemAdvise_v2"
        unsafe extern "C" fn(CUdeviceptr, usize, i32, CUmemLocation) -> CUresult;
    MEM_ADVISE: Cuda c"cuMemAdvise"
        unsafe extern "C" fn(CUdeviceptr, usize, i32, CUdevice) -> CUresult;
    PREFETCH_V2: Cuda c"cuMemPrefetchAsync_v2"
        unsafe extern "C" fn(CUdeviceptr, usize, CUmemLocation, u32, CUstream) -> CUresult;
    PREFETCH: Cuda c"cuMemPrefetchAsync"
        unsafe extern "C" fn(CUdeviceptr, usize, CUdevice, CUstream) -> CUresult;
    NVML_DEVICE_GET_UUID: Nvml c"nvmlDeviceGetUUID"
        unsafe extern "C" fn(nvmlDevice_t, *mut c_char, u32) -> nvmlReturn_t;
    STREAM_GET_CTX: Cuda c"cuStreamGetCtx" unsafe extern "C" fn(CUstream, *mut CUcontext) -> CUresult;
    CTX_GET_CURRENT: Cuda c"cuCtxGetCurrent" unsafe extern "C" fn(*mut CUcontext) -> CUresult;
    CTX_PUSH_CURRENT: Cuda c"cuCtxPushCurrent_v2" unsafe extern "C" fn(CUcontext) -> CUresult;
    CTX_POP_CURRENT: Cuda c"cuCtxPopCurrent_v2" unsafe extern "C" fn(*mut CUcontext) -> CUresult;
    RUNTIME_GET_VERSION: Cudart c"cudaRuntimeGetVersion" unsafe extern "C" fn(*mut i32) -> i32;
    PRIMARY_CTX_GET_STATE: Cuda c"cuDevicePrimaryCtxGetState"
        unsafe extern "C" fn(CUdevice, *mut u32, *mut i32) -> CUresult;
    PRIMARY_CTX_RETAIN: Cuda c"cuDevicePrimaryCtxRetain"
        unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult;
    STREAM_CREATE: Cuda c"cuStreamCreate" unsafe extern "C" fn(*mut CUstream, u32) -> CUresult;
    STREAM_SYNCHRONIZE: Cuda c"cuStreamSynchronize" unsafe extern "C" fn(CUstream) -> CUresult;
    STREAM_DESTROY: Cuda c"cuStreamDestroy_v2" unsafe extern "C" fn(CUstream) -> CUresult;
}

/// A driver call's result: the value, or the driver's error code.
pub type DriverResult<T> = Result<T, CUresult>;

fn check(rc: CUresult) -> DriverResult<()> {
    if rc == CUDA_SUCCESS { Ok(()) } else { Err(rc) }
}

/// The device of the calling thread's current context, or the driver's reason why there
/// is none (`CUDA_ERROR_INVALID_CONTEXT` without a current context).
pub fn current_device() -> DriverResult<CUdevice> {
    let f = CTX_GET_DEVICE.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    let mut dev = 0;
    // SAFETY: an out-pointer to a live local.
    check(unsafe { f(&mut dev) })?;
    Ok(dev)
}

/// How many devices this process sees (fixed from `cuInit` on).
pub fn device_count() -> DriverResult<i32> {
    let f = DEVICE_GET_COUNT.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    let mut n = 0;
    // SAFETY: an out-pointer to a live local.
    check(unsafe { f(&mut n) })?;
    Ok(n)
}

pub fn device_attribute(attribute: i32, dev: CUdevice) -> DriverResult<i32> {
    let f = DEVICE_GET_ATTRIBUTE.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    let mut value = 0;
    // SAFETY: an out-pointer to a live local.
    check(unsafe { f(&mut value, attribute, dev) })?;
    Ok(value)
}

/// The UUID of a device ordinal: what names the GPU in the model's ledger, whatever
/// ordinal this process sees it under.
pub fn device_uuid(dev: CUdevice) -> DriverResult<GpuUuid> {
    let f = DEVICE_GET_UUID_V2
        .get()
        .or_else(|| DEVICE_GET_UUID.get())
        .ok_or(CUDA_ERROR_NOT_FOUND)?;
    let mut bytes = [0u8; 16];
    // SAFETY: an out-pointer to a live 16-byte local (a CUuuid).
    check(unsafe { f(&mut bytes, dev) })?;
    Ok(GpuUuid(bytes))
}

/// Whether `stream` is the legacy or per-thread default stream (`0`, `CU_STREAM_LEGACY`,
/// `CU_STREAM_PER_THREAD`): the current context's.
pub fn is_default_stream(stream: CUstream) -> bool {
    matches!(stream as usize, 0..=2)
}

/// The device of a stream's context: where `cuMemAllocAsync` on it allocates.
pub fn stream_device(stream: CUstream) -> DriverResult<CUdevice> {
    if is_default_stream(stream) {
        return current_device();
    }
    let missing = CUDA_ERROR_NOT_FOUND;
    let (get_ctx, get_current) = (
        STREAM_GET_CTX.get().ok_or(missing)?,
        CTX_GET_CURRENT.get().ok_or(missing)?,
    );
    let (push, pop) = (
        CTX_PUSH_CURRENT.get().ok_or(missing)?,
        CTX_POP_CURRENT.get().ok_or(missing)?,
    );
    let (mut ctx, mut current): (CUcontext, CUcontext) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: the caller's stream (the driver checks it) and out-pointers to live locals.
    check(unsafe { get_ctx(stream, &mut ctx) })?;
    // SAFETY: an out-pointer to a live local.
    check(unsafe { get_current(&mut current) })?;
    if ctx == current {
        return current_device();
    }
    // Another context's stream: ask its device with it current, then put ours back.
    // SAFETY: a context the driver just gave us.
    check(unsafe { push(ctx) })?;
    let dev = current_device();
    let mut popped: CUcontext = std::ptr::null_mut();
    // SAFETY: pops what we pushed, into a live local.
    let _ = unsafe { pop(&mut popped) };
    dev
}

/// The device's physical memory, asked of the real driver (not our virtual answer).
pub fn physical_memory(dev: CUdevice) -> DriverResult<u64> {
    let f = crate::hooks::row::cuDeviceTotalMem_v2::real().ok_or(CUDA_ERROR_NOT_FOUND)?;
    let mut bytes = 0usize;
    // SAFETY: an out-pointer to a live local.
    check(unsafe { f(&mut bytes, dev) })?;
    Ok(bytes as u64)
}

/// The device ordinal an allocation of this process lives on.
pub fn pointer_device(ptr: CUdeviceptr) -> DriverResult<CUdevice> {
    let f = POINTER_GET_ATTRIBUTE.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    let mut dev: CUdevice = -1;
    // SAFETY: the device-ordinal attribute writes an int: a live local of that type.
    check(unsafe {
        f(
            (&raw mut dev).cast(),
            CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            ptr,
        )
    })?;
    Ok(dev)
}

/// The UUID of an NVML device handle.
pub fn nvml_uuid(device: nvmlDevice_t) -> Option<GpuUuid> {
    let f = NVML_DEVICE_GET_UUID.get()?;
    // NVML_DEVICE_UUID_V2_BUFFER_SIZE is 96.
    let mut buf = [0 as c_char; 96];
    // SAFETY: a buffer of the length passed with it.
    if unsafe { f(device, buf.as_mut_ptr(), buf.len() as u32) } != NVML_SUCCESS {
        return None;
    }
    buf[95] = 0;
    // SAFETY: NUL-terminated: by NVML, and by the line above in any case.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
    text.to_str().ok()?.parse().ok()
}

/// One piece of advice on a managed range, preferring the CUDA 12.2 location form.
pub fn advise(ptr: CUdeviceptr, bytes: u64, advice: i32, dev: CUdevice) -> DriverResult<()> {
    if let Some(f) = MEM_ADVISE_V2.get() {
        let location = CUmemLocation {
            type_: CU_MEM_LOCATION_TYPE_DEVICE,
            id: dev,
        };
        // SAFETY: plain values; the driver checks the range.
        return check(unsafe { f(ptr, bytes as usize, advice, location) });
    }
    let f = MEM_ADVISE.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    // SAFETY: plain values; the driver checks the range.
    check(unsafe { f(ptr, bytes as usize, advice, dev) })
}

/// Where a prefetch moves managed memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Host,
    Device(CUdevice),
}

/// Prefetches a managed range to `to`, on `stream` (null: the current context's legacy
/// default stream), preferring the CUDA 12.2 location form.
pub fn prefetch(ptr: CUdeviceptr, bytes: u64, to: Place, stream: CUstream) -> DriverResult<()> {
    if let Some(f) = PREFETCH_V2.get() {
        let location = match to {
            Place::Host => CUmemLocation {
                type_: CU_MEM_LOCATION_TYPE_HOST,
                id: 0,
            },
            Place::Device(dev) => CUmemLocation {
                type_: CU_MEM_LOCATION_TYPE_DEVICE,
                id: dev,
            },
        };
        // SAFETY: plain values and the caller's stream; the driver checks the range.
        return check(unsafe { f(ptr, bytes as usize, location, 0, stream) });
    }
    let f = PREFETCH.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    let dev = match to {
        Place::Host => CU_DEVICE_CPU,
        Place::Device(dev) => dev,
    };
    // SAFETY: plain values and the caller's stream; the driver checks the range.
    check(unsafe { f(ptr, bytes as usize, dev, stream) })
}

/// The primary context of `dev` if it is active, retained: the caller releases it with
/// [`release_primary_context`]. None if the process has not activated it (it would cost
/// the GPU a context the process never asked for).
pub fn retain_active_primary_context(dev: CUdevice) -> DriverResult<Option<CUcontext>> {
    let missing = CUDA_ERROR_NOT_FOUND;
    let (state, retain) = (
        PRIMARY_CTX_GET_STATE.get().ok_or(missing)?,
        PRIMARY_CTX_RETAIN.get().ok_or(missing)?,
    );
    let (mut flags, mut active) = (0u32, 0i32);
    // SAFETY: out-pointers to live locals.
    check(unsafe { state(dev, &mut flags, &mut active) })?;
    if active == 0 {
        return Ok(None);
    }
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: an out-pointer to a live local.
    check(unsafe { retain(&mut ctx, dev) })?;
    Ok(Some(ctx))
}

pub fn release_primary_context(dev: CUdevice) {
    if let Some(f) = crate::hooks::row::cuDevicePrimaryCtxRelease_v2::real() {
        // SAFETY: releases the reference `retain_active_primary_context` took.
        unsafe { f(dev) };
    }
}

/// Makes `ctx` current on the calling thread until [`pop_context`].
pub fn push_context(ctx: CUcontext) -> DriverResult<()> {
    let f = CTX_PUSH_CURRENT.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    // SAFETY: a context the caller holds a reference to (a retained primary context):
    // it cannot be destroyed while pushed.
    check(unsafe { f(ctx) })
}

pub fn pop_context() {
    if let Some(f) = CTX_POP_CURRENT.get() {
        let mut popped: CUcontext = std::ptr::null_mut();
        // SAFETY: an out-pointer to a live local.
        unsafe { f(&mut popped) };
    }
}

/// A new non-blocking stream in the current context.
pub fn create_stream() -> DriverResult<CUstream> {
    let f = STREAM_CREATE.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    let mut stream: CUstream = std::ptr::null_mut();
    // SAFETY: an out-pointer to a live local.
    check(unsafe { f(&mut stream, CU_STREAM_NON_BLOCKING) })?;
    Ok(stream)
}

pub fn synchronize(stream: CUstream) -> DriverResult<()> {
    let f = STREAM_SYNCHRONIZE.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    // SAFETY: a stream we created; the driver checks it.
    check(unsafe { f(stream) })
}

pub fn destroy_stream(stream: CUstream) {
    if let Some(f) = STREAM_DESTROY.get() {
        // SAFETY: a stream we created and use no more.
        unsafe { f(stream) };
    }
}

/// The CUDA version of the loaded shared runtime, if there is one.
pub fn runtime_version() -> Option<i32> {
    let f = RUNTIME_GET_VERSION.get()?;
    let mut v = 0;
    // SAFETY: an out-pointer to a live local.
    (unsafe { f(&mut v) } == 0).then_some(v)
}
