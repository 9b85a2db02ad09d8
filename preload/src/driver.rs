//! Driver functions the shim calls for its own purposes (current device, device identity,
//! attributes, advice, prefetch) without wrapping them. Resolved behind the shim, once.

use crate::ffi::*;
use crate::real::{self, Lib};
use cuvisor_common::gpu::GpuUuid;
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
static DEVICE_GET_UUID_V2: Lazy = Lazy::new(Lib::Cuda, c"cuDeviceGetUuid_v2");
static DEVICE_GET_UUID: Lazy = Lazy::new(Lib::Cuda, c"cuDeviceGetUuid");
static POINTER_GET_ATTRIBUTE: Lazy = Lazy::new(Lib::Cuda, c"cuPointerGetAttribute");
static NVML_DEVICE_GET_UUID: Lazy = Lazy::new(Lib::Nvml, c"nvmlDeviceGetUUID");
static RUNTIME_GET_VERSION: Lazy = Lazy::new(Lib::Cudart, c"cudaRuntimeGetVersion");

/// The device of the calling thread's current context, or the driver's reason why there
/// is none (`CUDA_ERROR_INVALID_CONTEXT` without a current context).
pub fn current_device() -> Result<CUdevice, CUresult> {
    let f = CTX_GET_DEVICE.get().ok_or(CUDA_ERROR_NOT_FOUND)?;
    // SAFETY: cuCtxGetDevice(CUdevice*).
    let f: unsafe extern "C" fn(*mut CUdevice) -> CUresult = unsafe { std::mem::transmute(f) };
    let mut dev = 0;
    match unsafe { f(&mut dev) } {
        CUDA_SUCCESS => Ok(dev),
        rc => Err(rc),
    }
}

/// The UUID of a device ordinal: what names the GPU in the model's ledger, whatever
/// ordinal this process sees it under.
pub fn device_uuid(dev: CUdevice) -> Option<GpuUuid> {
    let f = DEVICE_GET_UUID_V2.get().or_else(|| DEVICE_GET_UUID.get())?;
    // SAFETY: cuDeviceGetUuid_v2 and cuDeviceGetUuid are both (CUuuid*, CUdevice), CUuuid
    // being 16 bytes.
    let f: unsafe extern "C" fn(*mut [u8; 16], CUdevice) -> CUresult =
        unsafe { std::mem::transmute(f) };
    let mut bytes = [0u8; 16];
    (unsafe { f(&mut bytes, dev) } == CUDA_SUCCESS).then_some(GpuUuid(bytes))
}

/// The device ordinal an allocation of this process lives on.
pub fn pointer_device(ptr: CUdeviceptr) -> Option<CUdevice> {
    let f = POINTER_GET_ATTRIBUTE.get()?;
    // SAFETY: cuPointerGetAttribute(void*, CUpointer_attribute, CUdeviceptr); the device
    // ordinal attribute writes an int.
    let f: unsafe extern "C" fn(*mut c_void, i32, CUdeviceptr) -> CUresult =
        unsafe { std::mem::transmute(f) };
    let mut dev: CUdevice = -1;
    let rc = unsafe {
        f(
            (&raw mut dev).cast(),
            CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            ptr,
        )
    };
    (rc == CUDA_SUCCESS && dev >= 0).then_some(dev)
}

/// The UUID of an NVML device handle.
pub fn nvml_uuid(device: nvmlDevice_t) -> Option<GpuUuid> {
    let f = NVML_DEVICE_GET_UUID.get()?;
    // SAFETY: nvmlDeviceGetUUID(nvmlDevice_t, char*, unsigned int): writes a NUL-terminated
    // string of at most `length` bytes (NVML_DEVICE_UUID_V2_BUFFER_SIZE is 96).
    let f: unsafe extern "C" fn(nvmlDevice_t, *mut std::ffi::c_char, u32) -> nvmlReturn_t =
        unsafe { std::mem::transmute(f) };
    let mut buf = [0 as std::ffi::c_char; 96];
    if unsafe { f(device, buf.as_mut_ptr(), buf.len() as u32) } != NVML_SUCCESS {
        return None;
    }
    // SAFETY: NVML wrote a NUL-terminated string into buf (the last byte stays 0 anyway).
    buf[95] = 0;
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
    text.to_str().ok()?.parse().ok()
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
