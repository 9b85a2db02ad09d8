//! Initialization (the ledger joined, or CUDA refuses to start) and the resolvers, which hand out our wrappers in place of the real functions.

use super::charge::*;
use crate::driver;
use crate::ffi::*;
use crate::hooks::Wrappers;
use crate::real::Lib;
use crate::resolve;
use crate::runtime::Runtime;
use std::ffi::{CStr, c_char, c_void};

/// Joins the model's ledger now, so that a missing or damaged one stops CUDA from
/// initializing rather than the first allocation.
fn initialize(rt: &Runtime, lib: Lib, forward: impl FnOnce() -> i32) -> i32 {
    if rt.account().is_none() {
        return init_failure(lib);
    }
    forward()
}

hook! {
    cuInit(_flags) |forward, rt| { initialize(rt, Lib::Cuda, forward) }
}

hook! {
    nvmlInit() |forward, rt| { initialize(rt, Lib::Nvml, forward) }
}

hook! {
    nvmlInit_v2() |forward, rt| { initialize(rt, Lib::Nvml, forward) }
}

hook! {
    nvmlInitWithFlags(_flags) |forward, rt| { initialize(rt, Lib::Nvml, forward) }
}

/// Puts our wrapper of exactly the variant a resolver returned in `pfn`.
///
/// # Safety
/// `symbol` and `pfn` are what the caller gave a resolver that succeeded with them.
unsafe fn substitute_out(
    wrappers: &Wrappers,
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
        *pfn = resolve::substitute(via, CStr::from_ptr(symbol), version, flags, found, wrappers);
    }
}

/// What both cuGetProcAddress ABIs answer: the real resolver's code, with our wrapper in
/// `pfn` when it succeeded.
fn proc_address_answer(
    rc: CUresult,
    wrappers: &Wrappers,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
) -> CUresult {
    if rc == CUDA_SUCCESS {
        let via = resolve::Via::GetProcAddress;
        // SAFETY: the real resolver succeeded with these arguments.
        unsafe { substitute_out(wrappers, via, symbol, pfn, Some(version), flags) };
    }
    rc
}

hook! {
    resolver cuGetProcAddress(symbol, pfn, version, flags) |forward, wrappers| { proc_address_answer(forward(), wrappers, symbol, pfn, version, flags) }
}

hook! {
    resolver cuGetProcAddress_v2(symbol, pfn, version, flags, _status) |forward, wrappers| { proc_address_answer(forward(), wrappers, symbol, pfn, version, flags) }
}

/// What the runtime's entry-point lookups answer: the real code, with our wrapper in `f`
/// when it succeeded. `version` is the CUDA version asked for, or the runtime's own.
fn entry_point_answer(
    rc: cudaError_t,
    wrappers: &Wrappers,
    symbol: *const c_char,
    f: *mut *mut c_void,
    version: Option<i32>,
    flags: u64,
) -> cudaError_t {
    if rc == 0 {
        let via = resolve::Via::EntryPoint;
        // SAFETY: the real lookup succeeded with these arguments.
        unsafe { substitute_out(wrappers, via, symbol, f, version, flags) };
    }
    rc
}

hook! {
    resolver cudaGetDriverEntryPoint(symbol, f, flags, _status) |forward, wrappers| { entry_point_answer(forward(), wrappers, symbol, f, driver::runtime_version(), flags) }
}

hook! {
    resolver cudaGetDriverEntryPoint_ptsz(symbol, f, flags, _status) |forward, wrappers| { entry_point_answer(forward(), wrappers, symbol, f, driver::runtime_version(), flags) }
}

hook! {
    resolver cudaGetDriverEntryPointByVersion(symbol, f, version, flags, _status) |forward, wrappers| { entry_point_answer(forward(), wrappers, symbol, f, i32::try_from(version).ok(), flags) }
}

hook! {
    resolver cudaGetDriverEntryPointByVersion_ptsz(symbol, f, version, flags, _status) |forward, wrappers| { entry_point_answer(forward(), wrappers, symbol, f, i32::try_from(version).ok(), flags) }
}
