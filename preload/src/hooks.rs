//! The one list of hooked C functions, and the real function behind each row.
//!
//! Each row of [`for_each_hook!`] says everything about one exported symbol, once: its
//! C signature, the name `cuGetProcAddress` knows it by, the CUDA version whose ABI it
//! implements, its stream variant, its library and its policy (docs/INTERCEPTION.md,
//! checked against it by a test). From that list come, here, the row identifiers
//! ([`Id`]), the metadata ([`HOOKS`]), the real function of each row, typed by its
//! signature (`row::NAME::real()`), and, in `exports/`, the exported wrapper of each
//! row and the table of their addresses. Nothing here knows the wrappers.

use super::ffi::*;
use super::real::{self, Lib};
use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a hook does; the words are those of docs/INTERCEPTION.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Initialization: fails when the CUVISOR_* configuration is invalid.
    Init,
    /// Resolver: asks the real one first, then substitutes our wrapper for exactly the
    /// variant it returned.
    Resolver,
    /// Charge, and in `managed` mode allocate managed memory instead, with advice.
    Redirect,
    /// Charge before the driver call, roll back if it fails.
    Charge,
    /// Uncharge what was charged; unknown pointers and handles are only forwarded.
    Release,
    /// Never charged; tracked so that a released VMM handle is uncharged at its last unmap.
    Track,
    /// Memory information: total = min(quota, physical), free = total - used by the model.
    Virtualize,
    /// Forwarded; a failure on redirected memory logs how to run the model instead.
    Ipc,
    /// With `CUVISOR_GPUS`: only the model's GPUs, in that order; others are not found.
    Filter,
    /// Not charged; remembers which device a memory pool allocates on.
    Pools,
    /// With `CUVISOR_GPUS`: only the model's own processes.
    Processes,
    /// After it succeeds, uncharges what the driver destroyed with the context.
    Reset,
}

impl Policy {
    /// The policy column of docs/INTERCEPTION.md.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn describe(self) -> &'static str {
        match self {
            Policy::Init => "init: fails if the CUVISOR_* configuration is invalid",
            Policy::Resolver => "resolver: wraps exactly the variant the real resolver returned",
            Policy::Redirect => "charge; managed mode: cuMemAllocManaged + advice",
            Policy::Charge => "charge before the call, roll back on failure",
            Policy::Release => "uncharge on success; unknown pointers forwarded",
            Policy::Track => "not charged; tracks mappings of VMM handles",
            Policy::Virtualize => {
                "virtual numbers of that GPU: min(quota, physical), quota - used there"
            }
            Policy::Ipc => "forwarded; failure on redirected memory logs a hint",
            Policy::Filter => "placement: only the model's GPUs (CUVISOR_GPUS), in order",
            Policy::Pools => "not charged; remembers the device of each memory pool",
            Policy::Processes => "placement: only the model's own processes (CUVISOR_GPUS)",
            Policy::Reset => {
                "on success, uncharges the allocations the driver destroyed with the context"
            }
        }
    }
}

/// Whether a row is the legacy-stream or the per-thread-default-stream variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Legacy,
    PerThread,
}

pub struct Hook {
    /// The exported symbol, NUL-terminated.
    symbol: &'static str,
    /// The name cuGetProcAddress knows it by.
    pub base: &'static str,
    /// The CUDA version whose ABI this variant implements (0: not reachable by version).
    pub version: i32,
    pub stream: Stream,
    pub lib: Lib,
    /// What the wrapper does: its prologue (`exports::prologue`), and its row in
    /// INTERCEPTION.md.
    pub policy: Policy,
}

impl Hook {
    pub fn name(&self) -> &'static str {
        &self.symbol[..self.symbol.len() - 1]
    }

    pub fn c_name(&self) -> &'static CStr {
        CStr::from_bytes_with_nul(self.symbol.as_bytes()).expect("symbol is NUL-terminated")
    }
}

/// Our wrappers' addresses, row by row (made by the exports, which are above this table;
/// the resolution is handed it).
pub struct Wrappers(pub [*const c_void; N_HOOKS]);
// SAFETY: the addresses of functions, never written.
unsafe impl Sync for Wrappers {}

/// Hands the list of hooked functions to `$callback!`, one row per exported symbol:
/// `symbol(arg: type, …) -> return type, "base name", version, stream, library, policy;`.
macro_rules! for_each_hook {
    ($callback:ident) => {
        $callback! {
            cuInit(flags: u32) -> CUresult, "cuInit", 2000, Legacy, Cuda, Init;
            cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64) -> CUresult, "cuGetProcAddress", 11030, Legacy, Cuda, Resolver;
            cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: i32, flags: u64, status: *mut i32) -> CUresult, "cuGetProcAddress", 12000, Legacy, Cuda, Resolver;
            cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult, "cuMemAlloc", 3020, Legacy, Cuda, Redirect;
            cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, element_size: u32) -> CUresult, "cuMemAllocPitch", 3020, Legacy, Cuda, Redirect;
            cuMemAllocManaged(dptr: *mut CUdeviceptr, bytesize: usize, flags: u32) -> CUresult, "cuMemAllocManaged", 6000, Legacy, Cuda, Charge;
            cuMemAllocAsync(dptr: *mut CUdeviceptr, bytesize: usize, stream: CUstream) -> CUresult, "cuMemAllocAsync", 11020, Legacy, Cuda, Charge;
            cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize, stream: CUstream) -> CUresult, "cuMemAllocAsync", 11020, PerThread, Cuda, Charge;
            cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytesize: usize, pool: CUmemoryPool, stream: CUstream) -> CUresult, "cuMemAllocFromPoolAsync", 11020, Legacy, Cuda, Charge;
            cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize, pool: CUmemoryPool, stream: CUstream) -> CUresult, "cuMemAllocFromPoolAsync", 11020, PerThread, Cuda, Charge;
            cuMemFree_v2(ptr: CUdeviceptr) -> CUresult, "cuMemFree", 3020, Legacy, Cuda, Release;
            cuMemFreeAsync(ptr: CUdeviceptr, stream: CUstream) -> CUresult, "cuMemFreeAsync", 11020, Legacy, Cuda, Release;
            cuMemFreeAsync_ptsz(ptr: CUdeviceptr, stream: CUstream) -> CUresult, "cuMemFreeAsync", 11020, PerThread, Cuda, Release;
            cuMemPoolCreate(pool: *mut CUmemoryPool, props: *const CUmemPoolPropsHead) -> CUresult, "cuMemPoolCreate", 11020, Legacy, Cuda, Pools;
            cuMemPoolDestroy(pool: CUmemoryPool) -> CUresult, "cuMemPoolDestroy", 11020, Legacy, Cuda, Pools;
            cuDeviceGetDefaultMemPool(pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult, "cuDeviceGetDefaultMemPool", 11020, Legacy, Cuda, Pools;
            cuDeviceGetMemPool(pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult, "cuDeviceGetMemPool", 11020, Legacy, Cuda, Pools;
            cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: u64) -> CUresult, "cuMemCreate", 10020, Legacy, Cuda, Charge;
            cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult, "cuMemRelease", 10020, Legacy, Cuda, Release;
            cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64) -> CUresult, "cuMemMap", 10020, Legacy, Cuda, Track;
            cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult, "cuMemUnmap", 10020, Legacy, Cuda, Track;
            cuArrayCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) -> CUresult, "cuArrayCreate", 3020, Legacy, Cuda, Charge;
            cuArray3DCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) -> CUresult, "cuArray3DCreate", 3020, Legacy, Cuda, Charge;
            cuMipmappedArrayCreate(array: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR, levels: u32) -> CUresult, "cuMipmappedArrayCreate", 5000, Legacy, Cuda, Charge;
            cuArrayDestroy(array: CUarray) -> CUresult, "cuArrayDestroy", 2000, Legacy, Cuda, Release;
            cuMipmappedArrayDestroy(array: CUarray) -> CUresult, "cuMipmappedArrayDestroy", 5000, Legacy, Cuda, Release;
            cuIpcGetMemHandle(handle: *mut c_void, ptr: CUdeviceptr) -> CUresult, "cuIpcGetMemHandle", 4010, Legacy, Cuda, Ipc;
            cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult, "cuDevicePrimaryCtxReset", 7000, Legacy, Cuda, Reset;
            cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult, "cuDevicePrimaryCtxReset", 11000, Legacy, Cuda, Reset;
            cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult, "cuDevicePrimaryCtxRelease", 7000, Legacy, Cuda, Reset;
            cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult, "cuDevicePrimaryCtxRelease", 11000, Legacy, Cuda, Reset;
            cuCtxDestroy_v2(ctx: CUcontext) -> CUresult, "cuCtxDestroy", 4000, Legacy, Cuda, Reset;
            cuMemGetInfo(free: *mut u32, total: *mut u32) -> CUresult, "cuMemGetInfo", 2000, Legacy, Cuda, Virtualize;
            cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult, "cuMemGetInfo", 3020, Legacy, Cuda, Virtualize;
            cuDeviceTotalMem(bytes: *mut u32, dev: CUdevice) -> CUresult, "cuDeviceTotalMem", 2000, Legacy, Cuda, Virtualize;
            cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult, "cuDeviceTotalMem", 3020, Legacy, Cuda, Virtualize;
            nvmlInit() -> nvmlReturn_t, "nvmlInit", 0, Legacy, Nvml, Init;
            nvmlInit_v2() -> nvmlReturn_t, "nvmlInit_v2", 0, Legacy, Nvml, Init;
            nvmlInitWithFlags(flags: u32) -> nvmlReturn_t, "nvmlInitWithFlags", 0, Legacy, Nvml, Init;
            nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t) -> nvmlReturn_t, "nvmlDeviceGetMemoryInfo", 0, Legacy, Nvml, Virtualize;
            nvmlDeviceGetMemoryInfo_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t) -> nvmlReturn_t, "nvmlDeviceGetMemoryInfo_v2", 0, Legacy, Nvml, Virtualize;
            nvmlDeviceGetCount(count: *mut u32) -> nvmlReturn_t, "nvmlDeviceGetCount", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetCount_v2(count: *mut u32) -> nvmlReturn_t, "nvmlDeviceGetCount_v2", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetHandleByIndex(index: u32, device: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlDeviceGetHandleByIndex", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetHandleByIndex_v2(index: u32, device: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlDeviceGetHandleByIndex_v2", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlDeviceGetHandleByUUID", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetHandleByPciBusId(bus: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlDeviceGetHandleByPciBusId", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetHandleByPciBusId_v2(bus: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlDeviceGetHandleByPciBusId_v2", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut u32) -> nvmlReturn_t, "nvmlDeviceGetIndex", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetHandleBySerial(serial: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlDeviceGetHandleBySerial", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetTopologyNearestGpus(device: nvmlDevice_t, level: i32, count: *mut u32, array: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlDeviceGetTopologyNearestGpus", 0, Legacy, Nvml, Filter;
            nvmlSystemGetTopologyGpuSet(cpu: u32, count: *mut u32, array: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlSystemGetTopologyGpuSet", 0, Legacy, Nvml, Filter;
            nvmlUnitGetDevices(unit: nvmlUnit_t, count: *mut u32, devices: *mut nvmlDevice_t) -> nvmlReturn_t, "nvmlUnitGetDevices", 0, Legacy, Nvml, Filter;
            nvmlDeviceGetComputeRunningProcesses(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_v1_t) -> nvmlReturn_t, "nvmlDeviceGetComputeRunningProcesses", 0, Legacy, Nvml, Processes;
            nvmlDeviceGetComputeRunningProcesses_v2(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_t) -> nvmlReturn_t, "nvmlDeviceGetComputeRunningProcesses_v2", 0, Legacy, Nvml, Processes;
            nvmlDeviceGetComputeRunningProcesses_v3(device: nvmlDevice_t, count: *mut u32, infos: *mut nvmlProcessInfo_t) -> nvmlReturn_t, "nvmlDeviceGetComputeRunningProcesses_v3", 0, Legacy, Nvml, Processes;
            cudaGetDriverEntryPoint(symbol: *const c_char, f: *mut *mut c_void, flags: u64, status: *mut i32) -> cudaError_t, "cudaGetDriverEntryPoint", 0, Legacy, Cudart, Resolver;
            cudaGetDriverEntryPoint_ptsz(symbol: *const c_char, f: *mut *mut c_void, flags: u64, status: *mut i32) -> cudaError_t, "cudaGetDriverEntryPoint", 0, PerThread, Cudart, Resolver;
            cudaGetDriverEntryPointByVersion(symbol: *const c_char, f: *mut *mut c_void, version: u32, flags: u64, status: *mut i32) -> cudaError_t, "cudaGetDriverEntryPointByVersion", 0, Legacy, Cudart, Resolver;
            cudaGetDriverEntryPointByVersion_ptsz(symbol: *const c_char, f: *mut *mut c_void, version: u32, flags: u64, status: *mut i32) -> cudaError_t, "cudaGetDriverEntryPointByVersion", 0, PerThread, Cudart, Resolver;
        }
    };
}
pub(crate) use for_each_hook;

macro_rules! hook_table {
    ($(
        $sym:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty,
        $base:literal, $version:literal, $stream:ident, $lib:ident, $policy:ident;
    )*) => {
        /// One identifier per row of the table, named after its symbol.
        // Named as the C symbols are (`nvmlDeviceGetHandleByPciBusId` ends in "Id").
        #[allow(non_camel_case_types, clippy::enum_variant_names)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Id { $($sym),* }

        pub static HOOKS: &[Hook] = &[$(Hook {
            symbol: concat!(stringify!($sym), "\0"),
            base: $base,
            version: $version,
            stream: Stream::$stream,
            lib: Lib::$lib,
            policy: Policy::$policy,
        }),*];

        pub(crate) const N_HOOKS: usize = [$(stringify!($sym)),*].len();

        /// Per row, its C signature as types: `Args` (the arguments as a tuple), `Ret`,
        /// `Real` (the function), and `real()`, the real function of exactly this row.
        /// Other code reaches a hooked function's real one only through it.
        #[allow(non_snake_case)]
        pub mod row {
            use super::*;
            $(
                pub mod $sym {
                    use super::*;
                    pub type Args = ($($ty,)*);
                    pub type Ret = $ret;
                    pub type Real = unsafe extern "C" fn($($ty),*) -> $ret;

                    /// The real function behind the row, if its library has it.
                    pub fn real() -> Option<Real> {
                        super::super::real(Id::$sym).map(|p| {
                            // SAFETY: the address is this row's real function (the
                            // library's definition of the same C name), whose C
                            // signature is the row's.
                            unsafe { std::mem::transmute::<usize, Real>(p) }
                        })
                    }
                }
            )*
        }
    };
}

for_each_hook!(hook_table);

/// The real function behind each row, found on first use or handed to us by a `dlsym`
/// or resolver call that we answered with the wrapper.
pub(crate) static REAL: [AtomicUsize; N_HOOKS] = [const { AtomicUsize::new(0) }; N_HOOKS];

pub fn hook(id: Id) -> &'static Hook {
    &HOOKS[id as usize]
}

/// The real function of a row, or None if the library does not have it.
pub fn real(id: Id) -> Option<usize> {
    let slot = &REAL[id as usize];
    let p = slot.load(Ordering::Acquire);
    if p != 0 {
        return Some(p);
    }
    let h = hook(id);
    let found = real::lookup(h.lib, h.c_name());
    if found.is_null() {
        return None;
    }
    remember(id as usize, found);
    Some(slot.load(Ordering::Acquire))
}

/// Keeps the first real pointer learned for a row (later ones are the same function).
pub(crate) fn remember(index: usize, real: *mut c_void) {
    let _ = REAL[index].compare_exchange(0, real as usize, Ordering::AcqRel, Ordering::Acquire);
}

pub fn by_symbol(name: &[u8]) -> Option<usize> {
    HOOKS.iter().position(|h| h.name().as_bytes() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_unique_and_versions_ordered_within_a_base_name() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert_eq!(
                by_symbol(h.name().as_bytes()),
                Some(i),
                "{} appears twice",
                h.name()
            );
            assert!(
                h.name().starts_with(h.base) || h.lib != Lib::Cuda,
                "{}",
                h.name()
            );
        }
    }

    #[test]
    fn interception_doc_lists_exactly_the_table() {
        let doc = include_str!("../../docs/INTERCEPTION.md");
        let rows: Vec<String> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let expected: Vec<String> = HOOKS.iter().map(doc_row).collect();
        assert_eq!(
            rows,
            expected,
            "docs/INTERCEPTION.md is out of date; its table must be:\n{}",
            expected.join("\n")
        );
    }

    /// The documentation row of a hook, whitespace-normalized.
    fn doc_row(h: &Hook) -> String {
        let version = if h.version > 0 {
            h.version.to_string()
        } else {
            "-".into()
        };
        let stream = match h.stream {
            Stream::Legacy => "legacy",
            Stream::PerThread => "per-thread",
        };
        format!(
            "| `{}` | `{}` | {version} | {stream} | {} | {} |",
            h.name(),
            h.base,
            h.lib.name(),
            h.policy.describe()
        )
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
    }
}
