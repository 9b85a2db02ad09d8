//! The one table of hooks, and the real function behind each row. Everything that decides
//! whether a caller gets one of our wrappers reads it: the exported symbols (each row's
//! wrapper is an exported function of the same name), and the resolution above it
//! ([`crate::resolve`]: the `dlsym` interposer, the `cuGetProcAddress` /
//! `cudaGetDriverEntryPoint` resolvers). `docs/INTERCEPTION.md` is checked against it by a
//! test. It imports nothing of the shim's runtime.

use crate::real::{self, Lib};
use std::ffi::{CStr, c_void};
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

pub struct Wrapper(pub *const c_void);
// SAFETY: the address of a function, never written.
unsafe impl Sync for Wrapper {}

pub struct Hook {
    /// The exported symbol, NUL-terminated.
    symbol: &'static str,
    /// The name cuGetProcAddress knows it by.
    pub base: &'static str,
    /// The CUDA version whose ABI this variant implements (0: not reachable by version).
    pub version: i32,
    pub stream: Stream,
    pub lib: Lib,
    /// What the wrapper does: its prologue (`wrappers::prologue`), and its row in
    /// INTERCEPTION.md.
    pub policy: Policy,
    pub wrapper: Wrapper,
}

impl Hook {
    pub fn name(&self) -> &'static str {
        &self.symbol[..self.symbol.len() - 1]
    }

    pub fn c_name(&self) -> &'static CStr {
        CStr::from_bytes_with_nul(self.symbol.as_bytes()).expect("symbol is NUL-terminated")
    }
}

macro_rules! hook_table {
    ($($sym:ident, $base:literal, $version:literal, $stream:ident, $lib:ident, $policy:ident;)*) => {
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
            wrapper: Wrapper(crate::wrappers::$sym as *const c_void),
        }),*];

        pub(crate) const N_HOOKS: usize = [$(stringify!($sym)),*].len();
    };
}

hook_table! {
    cuInit, "cuInit", 2000, Legacy, Cuda, Init;
    cuGetProcAddress, "cuGetProcAddress", 11030, Legacy, Cuda, Resolver;
    cuGetProcAddress_v2, "cuGetProcAddress", 12000, Legacy, Cuda, Resolver;
    cuMemAlloc_v2, "cuMemAlloc", 3020, Legacy, Cuda, Redirect;
    cuMemAllocPitch_v2, "cuMemAllocPitch", 3020, Legacy, Cuda, Redirect;
    cuMemAllocManaged, "cuMemAllocManaged", 6000, Legacy, Cuda, Charge;
    cuMemAllocAsync, "cuMemAllocAsync", 11020, Legacy, Cuda, Charge;
    cuMemAllocAsync_ptsz, "cuMemAllocAsync", 11020, PerThread, Cuda, Charge;
    cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync", 11020, Legacy, Cuda, Charge;
    cuMemAllocFromPoolAsync_ptsz, "cuMemAllocFromPoolAsync", 11020, PerThread, Cuda, Charge;
    cuMemFree_v2, "cuMemFree", 3020, Legacy, Cuda, Release;
    cuMemFreeAsync, "cuMemFreeAsync", 11020, Legacy, Cuda, Release;
    cuMemFreeAsync_ptsz, "cuMemFreeAsync", 11020, PerThread, Cuda, Release;
    cuMemPoolCreate, "cuMemPoolCreate", 11020, Legacy, Cuda, Pools;
    cuMemPoolDestroy, "cuMemPoolDestroy", 11020, Legacy, Cuda, Pools;
    cuDeviceGetDefaultMemPool, "cuDeviceGetDefaultMemPool", 11020, Legacy, Cuda, Pools;
    cuDeviceGetMemPool, "cuDeviceGetMemPool", 11020, Legacy, Cuda, Pools;
    cuMemCreate, "cuMemCreate", 10020, Legacy, Cuda, Charge;
    cuMemRelease, "cuMemRelease", 10020, Legacy, Cuda, Release;
    cuMemMap, "cuMemMap", 10020, Legacy, Cuda, Track;
    cuMemUnmap, "cuMemUnmap", 10020, Legacy, Cuda, Track;
    cuArrayCreate_v2, "cuArrayCreate", 3020, Legacy, Cuda, Charge;
    cuArray3DCreate_v2, "cuArray3DCreate", 3020, Legacy, Cuda, Charge;
    cuMipmappedArrayCreate, "cuMipmappedArrayCreate", 5000, Legacy, Cuda, Charge;
    cuArrayDestroy, "cuArrayDestroy", 2000, Legacy, Cuda, Release;
    cuMipmappedArrayDestroy, "cuMipmappedArrayDestroy", 5000, Legacy, Cuda, Release;
    cuIpcGetMemHandle, "cuIpcGetMemHandle", 4010, Legacy, Cuda, Ipc;
    cuDevicePrimaryCtxReset, "cuDevicePrimaryCtxReset", 7000, Legacy, Cuda, Reset;
    cuDevicePrimaryCtxReset_v2, "cuDevicePrimaryCtxReset", 11000, Legacy, Cuda, Reset;
    cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease", 7000, Legacy, Cuda, Reset;
    cuDevicePrimaryCtxRelease_v2, "cuDevicePrimaryCtxRelease", 11000, Legacy, Cuda, Reset;
    cuCtxDestroy_v2, "cuCtxDestroy", 4000, Legacy, Cuda, Reset;
    cuMemGetInfo, "cuMemGetInfo", 2000, Legacy, Cuda, Virtualize;
    cuMemGetInfo_v2, "cuMemGetInfo", 3020, Legacy, Cuda, Virtualize;
    cuDeviceTotalMem, "cuDeviceTotalMem", 2000, Legacy, Cuda, Virtualize;
    cuDeviceTotalMem_v2, "cuDeviceTotalMem", 3020, Legacy, Cuda, Virtualize;
    nvmlInit, "nvmlInit", 0, Legacy, Nvml, Init;
    nvmlInit_v2, "nvmlInit_v2", 0, Legacy, Nvml, Init;
    nvmlInitWithFlags, "nvmlInitWithFlags", 0, Legacy, Nvml, Init;
    nvmlDeviceGetMemoryInfo, "nvmlDeviceGetMemoryInfo", 0, Legacy, Nvml, Virtualize;
    nvmlDeviceGetMemoryInfo_v2, "nvmlDeviceGetMemoryInfo_v2", 0, Legacy, Nvml, Virtualize;
    nvmlDeviceGetCount, "nvmlDeviceGetCount", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetCount_v2, "nvmlDeviceGetCount_v2", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetHandleByIndex, "nvmlDeviceGetHandleByIndex", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetHandleByIndex_v2, "nvmlDeviceGetHandleByIndex_v2", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetHandleByUUID, "nvmlDeviceGetHandleByUUID", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetHandleByPciBusId, "nvmlDeviceGetHandleByPciBusId", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetHandleByPciBusId_v2, "nvmlDeviceGetHandleByPciBusId_v2", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetIndex, "nvmlDeviceGetIndex", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetHandleBySerial, "nvmlDeviceGetHandleBySerial", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetTopologyNearestGpus, "nvmlDeviceGetTopologyNearestGpus", 0, Legacy, Nvml, Filter;
    nvmlSystemGetTopologyGpuSet, "nvmlSystemGetTopologyGpuSet", 0, Legacy, Nvml, Filter;
    nvmlUnitGetDevices, "nvmlUnitGetDevices", 0, Legacy, Nvml, Filter;
    nvmlDeviceGetComputeRunningProcesses, "nvmlDeviceGetComputeRunningProcesses", 0, Legacy, Nvml, Processes;
    nvmlDeviceGetComputeRunningProcesses_v2, "nvmlDeviceGetComputeRunningProcesses_v2", 0, Legacy, Nvml, Processes;
    nvmlDeviceGetComputeRunningProcesses_v3, "nvmlDeviceGetComputeRunningProcesses_v3", 0, Legacy, Nvml, Processes;
    cudaGetDriverEntryPoint, "cudaGetDriverEntryPoint", 0, Legacy, Cudart, Resolver;
    cudaGetDriverEntryPoint_ptsz, "cudaGetDriverEntryPoint", 0, PerThread, Cudart, Resolver;
    cudaGetDriverEntryPointByVersion, "cudaGetDriverEntryPointByVersion", 0, Legacy, Cudart, Resolver;
    cudaGetDriverEntryPointByVersion_ptsz, "cudaGetDriverEntryPointByVersion", 0, PerThread, Cudart, Resolver;
}

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
    let found = real::lookup(h.lib, h.c_name(), h.wrapper.0);
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
