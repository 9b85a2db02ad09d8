//! The exported wrappers, one per row of the hook table (`hooks.rs`). Each is declared
//! with [`wrapper!`]: its C signature is written once, its real function is typed from
//! it, and the row's policy decides its prologue. Every wrapper answers as the driver
//! would: no panic crosses this boundary, and unknown pointers are forwarded, never
//! second-guessed.
#![allow(non_snake_case)] // the C names

use crate::driver;
use crate::ffi::*;
use crate::hooks::{self, Id, Policy};
use crate::real::Lib;
use crate::records::{Kind, Record, RecordMap};
use crate::resolve;
use crate::runtime::{Active, NotCharged, Runtime, active};
use cuvisor_common::gpu::GpuUuid;
use cuvisor_common::ledger::GpuIndex;
use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Declares the exported wrapper of a hook-table row from its C signature, written once:
///
/// - the exported `extern "C"` function of that name and signature;
/// - a module of the same name (modules and functions do not share a namespace) with
///   `Real`, the real function's type built from the same signature, and `real()`, the
///   real function of exactly this row: other code reaches a row's real function only
///   through it, never with a signature of its own;
/// - the body runs inside [`guard`], with `$forward()` calling the real function with the
///   caller's own arguments.
///
/// `|$forward, $rt| body`: the row's policy runs [`prologue`] first, and the body runs
/// only when the shim is on, with `$rt` its runtime. `|$forward| body`: no prologue (the
/// resolvers, which decide for themselves what to hand out).
macro_rules! wrapper {
    (
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;
        |$forward:ident $(, $rt:ident)?| $body:block
    ) => {
        pub mod $name {
            use super::*;

            /// The real function's type: the wrapper's signature.
            pub type Real = unsafe extern "C" fn($($ty),*) -> $ret;

            /// The real function behind the wrapper, if its library has it.
            pub fn real() -> Option<Real> {
                // SAFETY: the address is this row's real function (the library's
                // definition of the same C name), whose C signature is the wrapper's.
                hooks::real(Id::$name).map(|p| unsafe { std::mem::transmute::<usize, Real>(p) })
            }
        }

        $(#[$doc])*
        ///
        /// # Safety
        /// The driver's own contract for this function: pointers valid as its
        /// documentation requires.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            guard(|| {
                let Some(real) = $name::real() else {
                    return missing(Id::$name);
                };
                // SAFETY: the real function of this row, of this wrapper's signature,
                // called with the caller's own arguments, under the caller's guarantees.
                let $forward = move || unsafe { real($($arg),*) };
                wrapper!(@body $name, $forward $(, $rt)?, $body)
            })
        }
    };
    (@body $name:ident, $forward:ident, $rt:ident, $body:block) => {
        match prologue(Id::$name) {
            Prologue::Forward => $forward(),
            Prologue::Answer(code) => code,
            Prologue::Run($rt) => $body,
        }
    };
    (@body $name:ident, $forward:ident, $body:block) => {{
        debug_assert_eq!(hooks::hook(Id::$name).policy, Policy::Resolver);
        $body
    }};
}

/// What a wrapper does before its own work.
enum Prologue {
    /// Call the real function and return its answer untouched.
    Forward,
    /// Answer this code without calling anything.
    Answer(i32),
    /// The shim is on: do the wrapper's work.
    Run(&'static Runtime),
}

/// The prologue of a row, decided by its policy (docs/INTERCEPTION.md): with
/// `CUVISOR_MODE=off` everything is forwarded; with an invalid configuration,
/// initialization fails with its library's code and allocations answer
/// `CUDA_ERROR_NOT_INITIALIZED` (a model never runs without its quota), while frees,
/// queries and the rest are forwarded.
fn prologue(id: Id) -> Prologue {
    match active() {
        Active::On(rt) => Prologue::Run(rt),
        Active::Off => Prologue::Forward,
        Active::Failed => {
            let h = hooks::hook(id);
            match h.policy {
                Policy::Init => Prologue::Answer(init_failure(h.lib)),
                Policy::Charge | Policy::Redirect => Prologue::Answer(CUDA_ERROR_NOT_INITIALIZED),
                _ => Prologue::Forward,
            }
        }
    }
}

/// What an initialization answers when the process must not run.
fn init_failure(lib: Lib) -> i32 {
    match lib {
        Lib::Nvml => NVML_ERROR_UNKNOWN,
        Lib::Cuda | Lib::Cudart => CUDA_ERROR_NOT_INITIALIZED,
    }
}

fn missing(id: Id) -> i32 {
    let h = hooks::hook(id);
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
fn give_back_to_driver(ptr: CUdeviceptr) {
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
unsafe fn written<T: Copy>(out: *const T) -> T {
    // SAFETY: the caller's guarantee.
    unsafe { *out }
}

/// Writes an answer through the caller's out-pointer.
///
/// # Safety
/// `out` is non-null and valid for a write (the driver accepted it in this call).
unsafe fn answer<T>(out: *mut T, value: T) {
    // SAFETY: the caller's guarantee.
    unsafe { *out = value }
}

const PITCH_ALIGNMENT: u64 = 512;

/// The ledger entry of the calling thread's current device, or the answer to give.
fn current(rt: &Runtime) -> Result<(CUdevice, GpuIndex), CUresult> {
    rt.current_gpu().map_err(refused)
}

/// Managed memory in place of device memory, with advice that it lives on `dev`.
fn redirected(
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

// ---- initialization and resolvers ---------------------------------------------------------

/// Joins the model's ledger now, so that a missing or damaged one stops CUDA from
/// initializing rather than the first allocation.
fn initialize(rt: &Runtime, lib: Lib, forward: impl FnOnce() -> i32) -> i32 {
    if rt.account().is_none() {
        return init_failure(lib);
    }
    forward()
}

wrapper! {
    fn cuInit(flags: u32) -> CUresult;
    |forward, rt| { initialize(rt, Lib::Cuda, forward) }
}

/// Puts our wrapper of exactly the variant a resolver returned in `pfn`.
///
/// # Safety
/// `symbol` and `pfn` are what the caller gave a resolver that succeeded with them.
unsafe fn substitute_out(
    via: resolve::Via,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: Option<i32>,
    flags: u64,
) {
    if symbol.is_null() || pfn.is_null() {
        return;
    }
    // SAFETY: the resolver succeeded with these arguments, so the name is a C string and
    // `pfn` holds the function it wrote.
    unsafe {
        let found = *pfn;
        *pfn = resolve::substitute(via, CStr::from_ptr(symbol), version, flags, found);
    }
}

/// What both cuGetProcAddress ABIs answer: the real resolver's code, with our wrapper in
/// `pfn` when it succeeded.
fn proc_address_answer(
    rc: CUresult,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
) -> CUresult {
    if rc == CUDA_SUCCESS {
        let via = resolve::Via::GetProcAddress;
        // SAFETY: the real resolver succeeded with these arguments.
        unsafe { substitute_out(via, symbol, pfn, Some(version), flags) };
    }
    rc
}

wrapper! {
    fn cuGetProcAddress(
        symbol: *const c_char,
        pfn: *mut *mut c_void,
        version: i32,
        flags: u64,
    ) -> CUresult;
    |forward| { proc_address_answer(forward(), symbol, pfn, version, flags) }
}

wrapper! {
    fn cuGetProcAddress_v2(
        symbol: *const c_char,
        pfn: *mut *mut c_void,
        version: i32,
        flags: u64,
        status: *mut i32,
    ) -> CUresult;
    |forward| { proc_address_answer(forward(), symbol, pfn, version, flags) }
}

/// What the runtime's entry-point lookups answer: the real code, with our wrapper in `f`
/// when it succeeded. `version` is the CUDA version asked for, or the runtime's own.
fn entry_point_answer(
    rc: cudaError_t,
    symbol: *const c_char,
    f: *mut *mut c_void,
    version: Option<i32>,
    flags: u64,
) -> cudaError_t {
    if rc == 0 {
        let via = resolve::Via::EntryPoint;
        // SAFETY: the real lookup succeeded with these arguments.
        unsafe { substitute_out(via, symbol, f, version, flags) };
    }
    rc
}

wrapper! {
    fn cudaGetDriverEntryPoint(
        symbol: *const c_char,
        f: *mut *mut c_void,
        flags: u64,
        status: *mut i32,
    ) -> cudaError_t;
    |forward| { entry_point_answer(forward(), symbol, f, driver::runtime_version(), flags) }
}

wrapper! {
    fn cudaGetDriverEntryPoint_ptsz(
        symbol: *const c_char,
        f: *mut *mut c_void,
        flags: u64,
        status: *mut i32,
    ) -> cudaError_t;
    |forward| { entry_point_answer(forward(), symbol, f, driver::runtime_version(), flags) }
}

wrapper! {
    fn cudaGetDriverEntryPointByVersion(
        symbol: *const c_char,
        f: *mut *mut c_void,
        version: u32,
        flags: u64,
        status: *mut i32,
    ) -> cudaError_t;
    |forward| { entry_point_answer(forward(), symbol, f, i32::try_from(version).ok(), flags) }
}

wrapper! {
    fn cudaGetDriverEntryPointByVersion_ptsz(
        symbol: *const c_char,
        f: *mut *mut c_void,
        version: u32,
        flags: u64,
        status: *mut i32,
    ) -> cudaError_t;
    |forward| { entry_point_answer(forward(), symbol, f, i32::try_from(version).ok(), flags) }
}

// ---- device memory -----------------------------------------------------------------------

wrapper! {
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult;
    |forward, rt| {
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

wrapper! {
    fn cuMemAllocPitch_v2(
        dptr: *mut CUdeviceptr,
        pitch: *mut usize,
        width: usize,
        height: usize,
        element_size: u32,
    ) -> CUresult;
    |forward, rt| {
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

wrapper! {
    fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytesize: usize, flags: u32) -> CUresult;
    |forward, rt| {
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

wrapper! {
    fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytesize: usize, stream: CUstream) -> CUresult;
    |forward, rt| {
        let free = cuMemFreeAsync::real();
        let call = (dptr, bytesize, Target::Stream(stream));
        stream_ordered(rt, "cuMemAllocAsync", call, free, forward)
    }
}

wrapper! {
    fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize, stream: CUstream) -> CUresult;
    |forward, rt| {
        let free = cuMemFreeAsync_ptsz::real();
        let call = (dptr, bytesize, Target::Stream(stream));
        stream_ordered(rt, "cuMemAllocAsync", call, free, forward)
    }
}

wrapper! {
    fn cuMemAllocFromPoolAsync(
        dptr: *mut CUdeviceptr,
        bytesize: usize,
        pool: CUmemoryPool,
        stream: CUstream,
    ) -> CUresult;
    |forward, rt| {
        let free = cuMemFreeAsync::real();
        let call = (dptr, bytesize, Target::Pool(pool));
        stream_ordered(rt, "cuMemAllocFromPoolAsync", call, free, forward)
    }
}

wrapper! {
    fn cuMemAllocFromPoolAsync_ptsz(
        dptr: *mut CUdeviceptr,
        bytesize: usize,
        pool: CUmemoryPool,
        stream: CUstream,
    ) -> CUresult;
    |forward, rt| {
        let free = cuMemFreeAsync_ptsz::real();
        let call = (dptr, bytesize, Target::Pool(pool));
        stream_ordered(rt, "cuMemAllocFromPoolAsync", call, free, forward)
    }
}

// ---- memory pools: which device each allocates on ----------------------------------------------

/// Remembers the pool a successful call wrote, on `dev`.
fn remember_pool(rt: &Runtime, rc: CUresult, pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult {
    if rc == CUDA_SUCCESS && !pool.is_null() {
        // SAFETY: the driver succeeded: it wrote the pool.
        let p = unsafe { written(pool) };
        rt.pools.lock().insert(p as usize, dev);
    }
    rc
}

wrapper! {
    fn cuMemPoolCreate(pool: *mut CUmemoryPool, props: *const CUmemPoolPropsHead) -> CUresult;
    |forward, rt| {
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

wrapper! {
    fn cuMemPoolDestroy(pool: CUmemoryPool) -> CUresult;
    |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS {
            rt.pools.lock().remove(&(pool as usize));
        }
        rc
    }
}

wrapper! {
    fn cuDeviceGetDefaultMemPool(pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult;
    |forward, rt| { remember_pool(rt, forward(), pool, dev) }
}

wrapper! {
    fn cuDeviceGetMemPool(pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult;
    |forward, rt| { remember_pool(rt, forward(), pool, dev) }
}

wrapper! {
    fn cuMemFree_v2(ptr: CUdeviceptr) -> CUresult;
    |forward, rt| { uncharged(rt, &rt.ptrs, ptr, forward) }
}

wrapper! {
    /// What `cudaDeviceReset` calls: the driver destroys every allocation of the device's
    /// primary context.
    fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult;
    |forward, rt| { swept(rt, Some(dev), "reset", forward) }
}

wrapper! {
    fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult;
    |forward, rt| { swept(rt, Some(dev), "reset", forward) }
}

wrapper! {
    /// The last release of a primary context destroys its allocations too.
    fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult;
    |forward, rt| { swept(rt, Some(dev), "released", forward) }
}

wrapper! {
    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult;
    |forward, rt| { swept(rt, Some(dev), "released", forward) }
}

wrapper! {
    /// A created context's allocations go with it, on whatever device it was.
    fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult;
    |forward, rt| { swept(rt, None, "context destroyed", forward) }
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

wrapper! {
    fn cuMemFreeAsync(ptr: CUdeviceptr, stream: CUstream) -> CUresult;
    |forward, rt| { uncharged(rt, &rt.ptrs, ptr, forward) }
}

wrapper! {
    fn cuMemFreeAsync_ptsz(ptr: CUdeviceptr, stream: CUstream) -> CUresult;
    |forward, rt| { uncharged(rt, &rt.ptrs, ptr, forward) }
}

// ---- virtual memory management -----------------------------------------------------------

wrapper! {
    fn cuMemCreate(
        handle: *mut CUmemGenericAllocationHandle,
        size: usize,
        prop: *const CUmemAllocationProp,
        flags: u64,
    ) -> CUresult;
    |forward, rt| {
        // SAFETY: the caller's properties, read only if non-null.
        let Some(prop) = (unsafe { prop.as_ref() }) else {
            return forward();
        };
        // Only device-located physical memory counts; host-located handles are host RAM.
        if handle.is_null() || size == 0 || prop.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
            return forward();
        }
        let bytes = size as u64;
        // The memory is made on the device the properties name, current or not.
        let gpu = match rt.gpu(prop.location.id) {
            Ok(gpu) => gpu,
            Err(why) => return refused(why),
        };
        let rc = charged(rt, gpu, bytes, "cuMemCreate", forward);
        if rc == CUDA_SUCCESS {
            // SAFETY: the driver succeeded: it wrote the handle.
            let h = unsafe { written(handle) };
            rt.handles.insert(h, Record { gpu, bytes, kind: Kind::Vmm { maps: 0, released: false } });
        }
        rc
    }
}

wrapper! {
    /// The driver keeps a released handle's memory until its last mapping goes: so does
    /// the charge.
    fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult;
    |forward, rt| {
        let mapped = match rt.handles.get(handle) {
            Some(Record { kind: Kind::Vmm { maps, .. }, .. }) => maps > 0,
            _ => return forward(),
        };
        if !mapped {
            return uncharged(rt, &rt.handles, handle, forward);
        }
        let set_released = |value: bool| {
            rt.handles.update(handle, |r| {
                if let Kind::Vmm { released, .. } = &mut r.kind {
                    *released = value;
                }
            })
        };
        set_released(true);
        let rc = forward();
        if rc != CUDA_SUCCESS {
            set_released(false);
        }
        rc
    }
}

wrapper! {
    fn cuMemMap(
        ptr: CUdeviceptr,
        size: usize,
        offset: usize,
        handle: CUmemGenericAllocationHandle,
        flags: u64,
    ) -> CUresult;
    |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS {
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
    }
}

wrapper! {
    fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult;
    |forward, rt| {
        // Take the mappings in the range out first; put them back if the driver refuses.
        let end = ptr.saturating_add(size as u64);
        let taken: Vec<(u64, (u64, u64))> = {
            let mut m = rt.mappings.lock();
            let keys: Vec<u64> = m.range(ptr..end).map(|(k, _)| *k).collect();
            keys.into_iter()
                .filter_map(|k| m.remove(&k).map(|v| (k, v)))
                .collect()
        };
        let rc = forward();
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
    }
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
    rt: &Runtime,
    what: &str,
    array: *mut CUarray,
    bytes: u64,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if array.is_null() || bytes == 0 {
        return call();
    }
    let gpu = match current(rt) {
        Ok((_, gpu)) => gpu,
        Err(rc) => return rc,
    };
    let rc = charged(rt, gpu, bytes, what, call);
    if rc == CUDA_SUCCESS {
        // SAFETY: the driver succeeded: it wrote the array.
        let a = unsafe { written(array) };
        rt.arrays.insert(
            a as u64,
            Record {
                gpu,
                bytes,
                kind: Kind::Array,
            },
        );
    }
    rc
}

wrapper! {
    fn cuArrayCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) -> CUresult;
    |forward, rt| {
        // SAFETY: the caller's descriptor, read only if non-null.
        let bytes = match unsafe { desc.as_ref() } {
            Some(d) => array_bytes(d.width, d.height, 0, d.format, d.num_channels),
            None => 0,
        };
        array_create(rt, "cuArrayCreate_v2", array, bytes, forward)
    }
}

wrapper! {
    fn cuArray3DCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) -> CUresult;
    |forward, rt| {
        // SAFETY: the caller's descriptor, read only if non-null.
        let bytes = match unsafe { desc.as_ref() } {
            Some(d) => array_bytes(d.width, d.height, d.depth, d.format, d.num_channels),
            None => 0,
        };
        array_create(rt, "cuArray3DCreate_v2", array, bytes, forward)
    }
}

wrapper! {
    fn cuMipmappedArrayCreate(
        array: *mut CUarray,
        desc: *const CUDA_ARRAY3D_DESCRIPTOR,
        levels: u32,
    ) -> CUresult;
    |forward, rt| {
        // SAFETY: the caller's descriptor, read only if non-null.
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
        array_create(rt, "cuMipmappedArrayCreate", array, bytes, forward)
    }
}

wrapper! {
    fn cuArrayDestroy(array: CUarray) -> CUresult;
    |forward, rt| { uncharged(rt, &rt.arrays, array as u64, forward) }
}

wrapper! {
    fn cuMipmappedArrayDestroy(array: CUarray) -> CUresult;
    |forward, rt| { uncharged(rt, &rt.arrays, array as u64, forward) }
}

// ---- IPC -----------------------------------------------------------------------------------

wrapper! {
    fn cuIpcGetMemHandle(handle: *mut c_void, ptr: CUdeviceptr) -> CUresult;
    |forward, rt| {
        let rc = forward();
        if rc != CUDA_SUCCESS
            && let Some(Record { kind: Kind::Managed { redirected: true }, .. }) = rt.ptrs.get(ptr)
        {
            rt.ipc_hint();
        }
        rc
    }
}

// ---- memory information --------------------------------------------------------------------

fn clamp32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

wrapper! {
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult;
    |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS
            && let Ok(dev) = rt.current_device()
            // SAFETY: the driver succeeded: both pointers were valid and written.
            && let Some((f, t)) = rt.device_memory(dev, unsafe { written(total) } as u64)
        {
            // SAFETY: as above.
            unsafe {
                answer(free, f as usize);
                answer(total, t as usize);
            }
        }
        rc
    }
}

wrapper! {
    fn cuMemGetInfo(free: *mut u32, total: *mut u32) -> CUresult;
    |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS
            && let Ok(dev) = rt.current_device()
        {
            // The 32-bit ABI saturates; the physical size is asked in full.
            // SAFETY: the driver succeeded: both pointers were valid and written.
            let physical = driver::physical_memory(dev).unwrap_or(unsafe { written(total) } as u64);
            if let Some((f, t)) = rt.device_memory(dev, physical) {
                // SAFETY: as above.
                unsafe {
                    answer(free, clamp32(f));
                    answer(total, clamp32(t));
                }
            }
        }
        rc
    }
}

wrapper! {
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult;
    |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS
            // SAFETY: the driver succeeded: the pointer was valid and written.
            && let Some((_, t)) = rt.device_memory(dev, unsafe { written(bytes) } as u64)
        {
            // SAFETY: as above.
            unsafe { answer(bytes, t as usize) };
        }
        rc
    }
}

wrapper! {
    fn cuDeviceTotalMem(bytes: *mut u32, dev: CUdevice) -> CUresult;
    |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS {
            // SAFETY: the driver succeeded: the pointer was valid and written.
            let physical = driver::physical_memory(dev).unwrap_or(unsafe { written(bytes) } as u64);
            if let Some((_, t)) = rt.device_memory(dev, physical) {
                // SAFETY: as above.
                unsafe { answer(bytes, clamp32(t)) };
            }
        }
        rc
    }
}

// ---- NVML ------------------------------------------------------------------------------------

wrapper! {
    fn nvmlInit() -> nvmlReturn_t;
    |forward, rt| { initialize(rt, Lib::Nvml, forward) }
}

wrapper! {
    fn nvmlInit_v2() -> nvmlReturn_t;
    |forward, rt| { initialize(rt, Lib::Nvml, forward) }
}

wrapper! {
    fn nvmlInitWithFlags(flags: u32) -> nvmlReturn_t;
    |forward, rt| { initialize(rt, Lib::Nvml, forward) }
}

wrapper! {
    fn nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t) -> nvmlReturn_t;
    |forward, rt| {
        let rc = forward();
        if rc == NVML_SUCCESS
            // SAFETY: NVML succeeded: the structure was valid and written.
            && let Some(m) = unsafe { memory.as_mut() }
            && let Some((total, free, used)) = rt.nvml_memory(device, m.total)
        {
            *m = nvmlMemory_t { total, free, used };
        }
        rc
    }
}

wrapper! {
    fn nvmlDeviceGetMemoryInfo_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t) -> nvmlReturn_t;
    |forward, rt| {
        let rc = forward();
        if rc == NVML_SUCCESS
            // SAFETY: NVML succeeded: the structure was valid and written.
            && let Some(m) = unsafe { memory.as_mut() }
            && let Some((total, free, used)) = rt.nvml_memory(device, m.total)
        {
            m.total = total;
            m.reserved = 0;
            m.free = free;
            m.used = used;
        }
        rc
    }
}

// ---- NVML placement: only the model's GPUs ----------------------------------------------------

/// The handles of the model's GPUs (`CUVISOR_GPUS`), in its order, up to the first one
/// NVML does not know (where CUDA's `CUDA_VISIBLE_DEVICES` stops too, so that NVML index
/// N and CUDA ordinal N stay the same GPU).
fn placed_handles(gpus: &[GpuUuid]) -> Result<Vec<nvmlDevice_t>, nvmlReturn_t> {
    let Some(by_uuid) = nvmlDeviceGetHandleByUUID::real() else {
        return Err(missing(Id::nvmlDeviceGetHandleByUUID));
    };
    let mut handles = Vec::with_capacity(gpus.len());
    for uuid in gpus {
        let text = std::ffi::CString::new(uuid.to_string()).expect("a UUID has no NUL");
        let mut device: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: a C string and a live out-pointer.
        match unsafe { by_uuid(text.as_ptr(), &mut device) } {
            NVML_SUCCESS => handles.push(device),
            NVML_ERROR_NOT_FOUND => break,
            rc => return Err(rc),
        }
    }
    Ok(handles)
}

/// NVML's count, or with `CUVISOR_GPUS` the number of the model's GPUs.
fn nvml_count(
    rt: &Runtime,
    count: *mut u32,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let rc = forward(); // NVML's own answer to bad arguments and an uninitialized library
    let Some(gpus) = rt.config.gpus.as_deref() else {
        return rc;
    };
    if rc != NVML_SUCCESS {
        return rc;
    }
    match placed_handles(gpus) {
        Ok(handles) => {
            // SAFETY: NVML succeeded with this pointer: it is valid for a write.
            unsafe { answer(count, handles.len() as u32) };
            NVML_SUCCESS
        }
        Err(rc) => rc,
    }
}

wrapper! {
    fn nvmlDeviceGetCount(count: *mut u32) -> nvmlReturn_t;
    |forward, rt| { nvml_count(rt, count, forward) }
}

wrapper! {
    fn nvmlDeviceGetCount_v2(count: *mut u32) -> nvmlReturn_t;
    |forward, rt| { nvml_count(rt, count, forward) }
}

/// NVML's handle by index, or with `CUVISOR_GPUS` the index among the model's GPUs.
fn nvml_by_index(
    rt: &Runtime,
    index: u32,
    device: *mut nvmlDevice_t,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let Some(gpus) = rt.config.gpus.as_deref() else {
        return forward();
    };
    if device.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    match placed_handles(gpus) {
        Ok(handles) => match handles.get(index as usize) {
            Some(&h) => {
                // SAFETY: checked non-null; the caller's out-parameter.
                unsafe { answer(device, h) };
                NVML_SUCCESS
            }
            None => NVML_ERROR_INVALID_ARGUMENT, // NVML's answer to an index past the count
        },
        Err(rc) => rc,
    }
}

wrapper! {
    fn nvmlDeviceGetHandleByIndex(index: u32, device: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| { nvml_by_index(rt, index, device, forward) }
}

wrapper! {
    fn nvmlDeviceGetHandleByIndex_v2(index: u32, device: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| { nvml_by_index(rt, index, device, forward) }
}

/// A lookup by UUID or PCI bus id: NVML's answer, unless it found a GPU of another model.
fn nvml_lookup(
    rt: &Runtime,
    device: *mut nvmlDevice_t,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let rc = forward();
    if rc == NVML_SUCCESS
        && let Some(gpus) = rt.config.gpus.as_deref()
    {
        // SAFETY: NVML succeeded: the pointer was valid and written.
        let found = unsafe { written(device) };
        if !driver::nvml_uuid(found).is_some_and(|u| gpus.contains(&u)) {
            // SAFETY: as above.
            unsafe { answer(device, std::ptr::null_mut()) };
            return NVML_ERROR_NOT_FOUND;
        }
    }
    rc
}

wrapper! {
    fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| { nvml_lookup(rt, device, forward) }
}

wrapper! {
    fn nvmlDeviceGetHandleByPciBusId(bus: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| { nvml_lookup(rt, device, forward) }
}

wrapper! {
    fn nvmlDeviceGetHandleByPciBusId_v2(bus: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| { nvml_lookup(rt, device, forward) }
}

wrapper! {
    fn nvmlDeviceGetHandleBySerial(serial: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| { nvml_lookup(rt, device, forward) }
}

/// A list of GPUs (the topology calls): NVML's, or with `CUVISOR_GPUS` only the model's
/// GPUs in it, under NVML's count protocol (a count of 0 asks how many; otherwise up to
/// `*count` handles are written and `*count` says how many). `list` asks NVML.
fn nvml_list(
    rt: &Runtime,
    count: *mut u32,
    array: *mut nvmlDevice_t,
    list: impl Fn(*mut u32, *mut nvmlDevice_t) -> nvmlReturn_t,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let Some(gpus) = rt.config.gpus.as_deref() else {
        return forward();
    };
    if count.is_null() {
        return forward(); // NVML's own answer to a bad argument
    }
    // SAFETY: checked non-null; the caller's in-out count.
    let asked = unsafe { written(count) };
    if asked != 0 && array.is_null() {
        return forward();
    }
    // NVML's whole list first (its size, then its handles).
    let mut n = 0u32;
    let rc = list(&mut n, std::ptr::null_mut());
    if rc != NVML_SUCCESS {
        return rc;
    }
    let mut all: Vec<nvmlDevice_t> = vec![std::ptr::null_mut(); n as usize];
    if n > 0 {
        let rc = list(&mut n, all.as_mut_ptr());
        if rc != NVML_SUCCESS {
            return rc;
        }
        all.truncate(n as usize);
    }
    let placed = match placed_handles(gpus) {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let mine: Vec<nvmlDevice_t> = all.into_iter().filter(|d| placed.contains(d)).collect();
    let written_back = if asked == 0 {
        mine.len()
    } else {
        let k = (asked as usize).min(mine.len());
        for (j, &d) in mine[..k].iter().enumerate() {
            // SAFETY: NVML's contract: a non-zero count is the room in the caller's array,
            // and k is at most that.
            unsafe { answer(array.add(j), d) };
        }
        k
    };
    // SAFETY: checked non-null above.
    unsafe { answer(count, written_back as u32) };
    NVML_SUCCESS
}

wrapper! {
    fn nvmlDeviceGetTopologyNearestGpus(device: nvmlDevice_t, level: i32, count: *mut u32, array: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| {
        let Some(real) = nvmlDeviceGetTopologyNearestGpus::real() else {
            return forward();
        };
        // SAFETY: the caller's device and level, and a count and array of ours.
        nvml_list(rt, count, array, |c, a| unsafe { real(device, level, c, a) }, forward)
    }
}

wrapper! {
    fn nvmlSystemGetTopologyGpuSet(cpu: u32, count: *mut u32, array: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| {
        let Some(real) = nvmlSystemGetTopologyGpuSet::real() else {
            return forward();
        };
        // SAFETY: the caller's CPU number, and a count and array of ours.
        nvml_list(rt, count, array, |c, a| unsafe { real(cpu, c, a) }, forward)
    }
}

/// An entry of NVML's process lists, made from the `_v2` entry: the one layout the shim
/// asks NVML for (the `_v3` entry's size changed between drivers, 24 or 32 bytes, with the
/// same symbol, so the shim never has NVML write one).
trait ProcessEntry: Copy {
    fn from_v2(e: nvmlProcessInfo_t) -> Self;
}

impl ProcessEntry for nvmlProcessInfo_v1_t {
    fn from_v2(e: nvmlProcessInfo_t) -> Self {
        nvmlProcessInfo_v1_t {
            pid: e.pid,
            used_gpu_memory: e.used_gpu_memory,
        }
    }
}

impl ProcessEntry for nvmlProcessInfo_t {
    fn from_v2(e: nvmlProcessInfo_t) -> Self {
        e
    }
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`): NVML names processes by
/// their pid there.
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// NVML's processes on a GPU, or with `CUVISOR_GPUS` (a model the supervisor placed,
/// perhaps beside other tenants' models) only the model's own: those of its ledger's
/// live processes, when this process is in the initial PID namespace, whose pids NVML
/// reports. In a PID namespace of its own (a worker with `isolation.pid`), NVML's pids
/// cannot be told from others' (a pid there may be another tenant's process in the
/// host's numbering), and the list is empty, as `nvidia-smi` in a container shows it.
/// NVML's count protocol is kept: a count too small (0 asks) answers
/// `NVML_ERROR_INSUFFICIENT_SIZE` with the count needed, and no processes answer success
/// with 0.
fn nvml_processes<T: ProcessEntry>(
    rt: &Runtime,
    device: nvmlDevice_t,
    count: *mut u32,
    infos: *mut T,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let (Some(_), Some(list)) = (
        rt.config.gpus.as_deref(),
        nvmlDeviceGetComputeRunningProcesses_v2::real(),
    ) else {
        return forward(); // NVML's own list (without _v2: a driver older than R470)
    };
    if count.is_null() {
        return forward(); // NVML's own answer to a bad argument
    }
    // SAFETY: checked non-null; the caller's in-out count.
    let asked = unsafe { written(count) };
    if asked != 0 && infos.is_null() {
        return forward();
    }
    // SAFETY: the caller's device, and a count and array of ours.
    let all = match nvml_process_list(|c, a| unsafe { list(device, c, a) }) {
        Ok(all) => all,
        Err(rc) => return rc,
    };
    let initial = std::fs::metadata("/proc/self/ns/pid")
        .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == INITIAL_PID_NAMESPACE);
    let own = match rt.account() {
        Some(a) if initial => a.ledger().pids_in_own_namespace(),
        _ => Vec::new(),
    };
    let mine: Vec<T> = all
        .into_iter()
        .filter(|e| own.contains(&e.pid))
        .map(T::from_v2)
        .collect();
    // SAFETY: the caller's count (non-null) and array, with NVML's contract for them.
    unsafe { answer_list(&mine, count, infos) }
}

/// Answers `list` under the protocol of NVML's process and unit lists: `*count` is the
/// room in `array`; too little room answers `NVML_ERROR_INSUFFICIENT_SIZE` with the count
/// needed; otherwise the entries are written and `*count` says how many.
///
/// # Safety
/// `count` is non-null and valid for reads and writes; `array` is valid for `*count`
/// writes (or null with `*count` 0).
unsafe fn answer_list<T: Copy>(list: &[T], count: *mut u32, array: *mut T) -> nvmlReturn_t {
    // SAFETY: the caller's guarantee.
    let room = unsafe { written(count) } as usize;
    let n = list.len() as u32;
    if list.len() > room {
        // SAFETY: the caller's guarantee.
        unsafe { answer(count, n) };
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (j, &e) in list.iter().enumerate() {
        // SAFETY: `room` entries fit in `array`, and there are at most that many.
        unsafe { answer(array.add(j), e) };
    }
    // SAFETY: the caller's guarantee.
    unsafe { answer(count, n) };
    NVML_SUCCESS
}

/// NVML's whole list (`_v2` entries): its size first, then the entries (asked again, a
/// few times, while processes start in between).
fn nvml_process_list(
    list: impl Fn(*mut u32, *mut nvmlProcessInfo_t) -> nvmlReturn_t,
) -> Result<Vec<nvmlProcessInfo_t>, nvmlReturn_t> {
    let mut n = 0u32;
    match list(&mut n, std::ptr::null_mut()) {
        NVML_SUCCESS => return Ok(Vec::new()),
        NVML_ERROR_INSUFFICIENT_SIZE => {}
        rc => return Err(rc),
    }
    let blank = nvmlProcessInfo_t {
        pid: 0,
        used_gpu_memory: 0,
        gpu_instance_id: 0,
        compute_instance_id: 0,
    };
    for _ in 0..8 {
        let mut all = vec![blank; n as usize + 8];
        let mut got = all.len() as u32;
        match list(&mut got, all.as_mut_ptr()) {
            NVML_SUCCESS => {
                all.truncate(got as usize);
                return Ok(all);
            }
            NVML_ERROR_INSUFFICIENT_SIZE => n = got.max(n.saturating_mul(2)),
            rc => return Err(rc),
        }
    }
    Err(NVML_ERROR_UNKNOWN)
}

wrapper! {
    fn nvmlDeviceGetComputeRunningProcesses(
        device: nvmlDevice_t,
        count: *mut u32,
        infos: *mut nvmlProcessInfo_v1_t,
    ) -> nvmlReturn_t;
    |forward, rt| { nvml_processes(rt, device, count, infos, forward) }
}

wrapper! {
    fn nvmlDeviceGetComputeRunningProcesses_v2(
        device: nvmlDevice_t,
        count: *mut u32,
        infos: *mut nvmlProcessInfo_t,
    ) -> nvmlReturn_t;
    |forward, rt| { nvml_processes(rt, device, count, infos, forward) }
}

wrapper! {
    /// The entries written are `_v2`'s (24 bytes, as nvml.h has them since CUDA 12.3;
    /// the 32-byte entry of CUDA 12.2's nvml.h is not written).
    fn nvmlDeviceGetComputeRunningProcesses_v3(
        device: nvmlDevice_t,
        count: *mut u32,
        infos: *mut nvmlProcessInfo_t,
    ) -> nvmlReturn_t;
    |forward, rt| { nvml_processes(rt, device, count, infos, forward) }
}

wrapper! {
    /// The GPUs of an S-class unit: with `CUVISOR_GPUS` only the model's, in NVML's order,
    /// under this call's protocol (the count is the room in the array; too little room
    /// answers NVML_ERROR_INSUFFICIENT_SIZE with the count needed).
    fn nvmlUnitGetDevices(unit: nvmlUnit_t, count: *mut u32, devices: *mut nvmlDevice_t) -> nvmlReturn_t;
    |forward, rt| {
        let (Some(gpus), Some(real)) = (rt.config.gpus.as_deref(), nvmlUnitGetDevices::real())
        else {
            return forward();
        };
        if count.is_null() || devices.is_null() {
            return forward(); // NVML's own answer to a bad argument
        }
        let mut all: Vec<nvmlDevice_t> = vec![std::ptr::null_mut(); 16];
        let mut attempts = 0;
        loop {
            let mut n = all.len() as u32;
            // SAFETY: the caller's unit, and a count and array of ours of that room.
            match unsafe { real(unit, &mut n, all.as_mut_ptr()) } {
                NVML_SUCCESS => {
                    all.truncate(n as usize);
                    break;
                }
                NVML_ERROR_INSUFFICIENT_SIZE if attempts < 4 => {
                    let room = (n as usize).max(2 * all.len());
                    all.resize(room, std::ptr::null_mut());
                    attempts += 1;
                }
                // The list kept growing: nothing the caller could size for.
                NVML_ERROR_INSUFFICIENT_SIZE => return NVML_ERROR_UNKNOWN,
                rc => return rc,
            }
        }
        let placed = match placed_handles(gpus) {
            Ok(h) => h,
            Err(rc) => return rc,
        };
        let mine: Vec<nvmlDevice_t> = all.into_iter().filter(|d| placed.contains(d)).collect();
        // SAFETY: both checked non-null; the caller's count and array, with the call's
        // contract for them.
        unsafe { answer_list(&mine, count, devices) }
    }
}

wrapper! {
    /// A GPU's index among the model's GPUs, as nvmlDeviceGetHandleByIndex numbers them.
    fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut u32) -> nvmlReturn_t;
    |forward, rt| {
        let rc = forward();
        let Some(gpus) = rt.config.gpus.as_deref() else {
            return rc;
        };
        if rc != NVML_SUCCESS {
            return rc;
        }
        match placed_handles(gpus).map(|h| h.iter().position(|&d| d == device)) {
            Ok(Some(i)) => {
                // SAFETY: NVML succeeded with this pointer: it is valid for a write.
                unsafe { answer(index, i as u32) };
                NVML_SUCCESS
            }
            // Not a handle the model can have obtained: what NVML answers a bad handle.
            Ok(None) => NVML_ERROR_INVALID_ARGUMENT,
            Err(rc) => rc,
        }
    }
}
