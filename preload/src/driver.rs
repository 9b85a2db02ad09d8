//! Driver functions the shim calls for its own purposes (current device, attributes,
//! advice, prefetch) without wrapping them. Resolved behind the shim, once.

use crate::ffi::*;
use crate::real::{self, Lib};
use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Lazy {
    lib: Lib,
    name: &'static CStr,
    ptr: AtomicUsize, // 0: not looked up yet; 1: looked up, absent
}

impl Lazy {
    const fn new(lib: Lib, name: &'static CStr) -> Lazy {
        Lazy {
            lib,
            name,
            ptr: AtomicUsize::new(0),
        }
    }

    fn get(&self) -> Option<usize> {
        let p = self.ptr.load(Ordering::Acquire);
        if p == 0 {
            let found = real::lookup(self.lib, self.name, std::ptr::null()) as usize;
            self.ptr.store(found.max(1), Ordering::Release);
            return (found != 0).then_some(found);
        }
        (p != 1).then_some(p)
    }
}

static CTX_GET_DEVICE: Lazy = Lazy::new(Lib::Cuda, c"cuCtxGetDevice");
static DEVICE_GET_ATTRIBUTE: Lazy = Lazy::new(Lib::Cuda, c"cuDeviceGetAttribute");
static DEVICE_TOTAL_MEM: Lazy = Lazy::new(Lib::Cuda, c"cuDeviceTotalMem_v2");
static MEM_ADVISE_V2: Lazy = Lazy::new(Lib::Cuda, c"cuMemAdvise_v2");
static MEM_ADVISE: Lazy = Lazy::new(Lib::Cuda, c"cuMemAdvise");
static PREFETCH_V2: Lazy = Lazy::new(Lib::Cuda, c"cuMemPrefetchAsync_v2");
static PREFETCH: Lazy = Lazy::new(Lib::Cuda, c"cuMemPrefetchAsync");
static RUNTIME_GET_VERSION: Lazy = Lazy::new(Lib::Cudart, c"cudaRuntimeGetVersion");

/// The device of the calling thread's current context.
pub fn current_device() -> Option<CUdevice> {
    let f: unsafe extern "C" fn(*mut CUdevice) -> CUresult =
        unsafe { std::mem::transmute(CTX_GET_DEVICE.get()?) };
    let mut dev = 0;
    // SAFETY: cuCtxGetDevice(CUdevice*).
    (unsafe { f(&mut dev) } == CUDA_SUCCESS).then_some(dev)
}

pub fn device_attribute(attribute: i32, dev: CUdevice) -> Option<i32> {
    let f: unsafe extern "C" fn(*mut i32, i32, CUdevice) -> CUresult =
        unsafe { std::mem::transmute(DEVICE_GET_ATTRIBUTE.get()?) };
    let mut value = 0;
    // SAFETY: cuDeviceGetAttribute(int*, CUdevice_attribute, CUdevice).
    (unsafe { f(&mut value, attribute, dev) } == CUDA_SUCCESS).then_some(value)
}

/// The device's physical memory, asked of the real driver (not our virtual answer).
pub fn physical_memory(dev: CUdevice) -> Option<u64> {
    let f: unsafe extern "C" fn(*mut usize, CUdevice) -> CUresult =
        unsafe { std::mem::transmute(DEVICE_TOTAL_MEM.get()?) };
    let mut bytes = 0usize;
    // SAFETY: cuDeviceTotalMem_v2(size_t*, CUdevice).
    (unsafe { f(&mut bytes, dev) } == CUDA_SUCCESS).then_some(bytes as u64)
}

/// One piece of advice on a managed range, preferring the CUDA 12.2 location form.
pub fn advise(ptr: CUdeviceptr, bytes: u64, advice: i32, dev: CUdevice) -> CUresult {
    if let Some(f) = MEM_ADVISE_V2.get() {
        let f: unsafe extern "C" fn(CUdeviceptr, usize, i32, CUmemLocation) -> CUresult =
            unsafe { std::mem::transmute(f) };
        let location = CUmemLocation {
            type_: CU_MEM_LOCATION_TYPE_DEVICE,
            id: dev,
        };
        // SAFETY: cuMemAdvise_v2(CUdeviceptr, size_t, CUmem_advise, CUmemLocation).
        return unsafe { f(ptr, bytes as usize, advice, location) };
    }
    match MEM_ADVISE.get() {
        Some(f) => {
            let f: unsafe extern "C" fn(CUdeviceptr, usize, i32, CUdevice) -> CUresult =
                unsafe { std::mem::transmute(f) };
            // SAFETY: cuMemAdvise(CUdeviceptr, size_t, CUmem_advise, CUdevice).
            unsafe { f(ptr, bytes as usize, advice, dev) }
        }
        None => CUDA_ERROR_NOT_FOUND,
    }
}

/// Prefetches a managed range to the device, on the legacy default stream.
pub fn prefetch(ptr: CUdeviceptr, bytes: u64, dev: CUdevice) -> CUresult {
    let stream: CUstream = std::ptr::null_mut::<c_void>();
    if let Some(f) = PREFETCH_V2.get() {
        let f: unsafe extern "C" fn(CUdeviceptr, usize, CUmemLocation, u32, CUstream) -> CUresult =
            unsafe { std::mem::transmute(f) };
        let location = CUmemLocation {
            type_: CU_MEM_LOCATION_TYPE_DEVICE,
            id: dev,
        };
        // SAFETY: cuMemPrefetchAsync_v2(CUdeviceptr, size_t, CUmemLocation, unsigned, CUstream).
        return unsafe { f(ptr, bytes as usize, location, 0, stream) };
    }
    match PREFETCH.get() {
        Some(f) => {
            let f: unsafe extern "C" fn(CUdeviceptr, usize, CUdevice, CUstream) -> CUresult =
                unsafe { std::mem::transmute(f) };
            // SAFETY: cuMemPrefetchAsync(CUdeviceptr, size_t, CUdevice, CUstream).
            unsafe { f(ptr, bytes as usize, dev, stream) }
        }
        None => CUDA_ERROR_NOT_FOUND,
    }
}

/// The CUDA version of the loaded shared runtime, if there is one.
pub fn runtime_version() -> Option<i32> {
    let f: unsafe extern "C" fn(*mut i32) -> i32 =
        unsafe { std::mem::transmute(RUNTIME_GET_VERSION.get()?) };
    let mut v = 0;
    // SAFETY: cudaRuntimeGetVersion(int*).
    (unsafe { f(&mut v) } == 0).then_some(v)
}
