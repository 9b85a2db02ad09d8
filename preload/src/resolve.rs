//! How a caller gets one of our wrappers by name, above the table ([`crate::hooks`]): the
//! decision behind the `dlsym` interposer, the substitution behind the `cuGetProcAddress`
//! and `cudaGetDriverEntryPoint` wrappers, and the count of what each path handed out.
//! The wrappers' addresses are handed to it by the exports above; it asks the runtime only
//! whether the shim is off.

use crate::hooks::{HOOKS, N_HOOKS, REAL, Stream, Wrappers, by_symbol, remember};
use crate::real;
use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicU32, Ordering};

/// How a caller found one of our wrappers. Direct binding to the exported symbols is the
/// fourth way, and leaves no trace here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Dlsym,
    GetProcAddress,
    EntryPoint,
}

const VIAS: [(Via, &str); 3] = [
    (Via::Dlsym, "dlsym"),
    (Via::GetProcAddress, "cuGetProcAddress"),
    (Via::EntryPoint, "cudaGetDriverEntryPoint"),
];

/// How many times each row's wrapper was handed out by each path: lookups are rare, so a
/// relaxed counter costs nothing that matters (and takes no lock, as `dlsym` requires).
static HANDED_OUT: [[AtomicU32; 3]; N_HOOKS] =
    [const { [const { AtomicU32::new(0) }; 3] }; N_HOOKS];

fn handed_out(index: usize, via: Via) {
    HANDED_OUT[index][via as usize].fetch_add(1, Ordering::Relaxed);
}

/// Logs (at info level) which wrappers each path handed out, so that a run on a real
/// stack shows how its framework reached the driver.
pub fn log_resolutions() {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let mut any = false;
    for (via, name) in VIAS {
        let used: Vec<String> = HOOKS
            .iter()
            .zip(&HANDED_OUT)
            .filter_map(|(h, counts)| {
                let n = counts[via as usize].load(Ordering::Relaxed);
                (n > 0).then(|| format!("{}={n}", h.name()))
            })
            .collect();
        if !used.is_empty() {
            any = true;
            log::info!("wrappers handed out through {name}: {}", used.join(" "));
        }
    }
    if !any {
        log::info!(
            "no wrapper was handed out through dlsym, cuGetProcAddress or cudaGetDriverEntryPoint: calls came by direct binding, if at all"
        );
    }
}

fn wrapper_index(p: *mut c_void, wrappers: &Wrappers) -> Option<usize> {
    wrappers.0.iter().position(|&w| std::ptr::eq(w, p))
}

/// A resolver (cuGetProcAddress, cudaGetDriverEntryPoint) returned `ptr` for `base`:
/// answer with our wrapper of exactly that variant, or `ptr` itself if we wrap none.
///
/// The variant is identified by the real pointer when the driver's exported symbol has
/// the same address; otherwise by the driver's documented rule (the newest ABI version at
/// or below `version`; per-thread variants when `flags` ask for them) over our rows. A
/// variant we do not wrap (the 32-bit `cuMemAlloc`, a future `_v3`) is left untouched.
pub fn substitute(
    via: Via,
    base: &CStr,
    version: Option<i32>,
    flags: u64,
    ptr: *mut c_void,
    wrappers: &Wrappers,
) -> *mut c_void {
    if ptr.is_null() || crate::runtime::is_off() {
        return ptr;
    }
    // Already ours: the runtime's entry-point lookup goes through the cuGetProcAddress we
    // wrapped. Counted for this path too, since it is how the caller got it.
    if let Some(i) = wrapper_index(ptr, wrappers) {
        handed_out(i, via);
        return ptr;
    }
    let base = base.to_bytes();
    let rows = || {
        HOOKS
            .iter()
            .enumerate()
            .filter(move |(_, h)| h.version > 0 && h.base.as_bytes() == base)
    };
    for (i, h) in rows() {
        let known = REAL[i].load(Ordering::Acquire);
        let known = if known != 0 {
            known
        } else {
            real::lookup(h.lib, h.c_name()) as usize
        };
        if known == ptr as usize {
            remember(i, ptr);
            handed_out(i, via);
            return wrappers.0[i] as *mut c_void;
        }
    }
    let Some(version) = version else {
        return ptr;
    };
    let newest = |stream: Stream| {
        rows()
            .filter(|(_, h)| h.stream == stream && h.version <= version)
            .max_by_key(|(_, h)| h.version)
    };
    let per_thread = flags == crate::ffi::CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    let chosen = if per_thread {
        newest(Stream::PerThread).or_else(|| newest(Stream::Legacy))
    } else {
        newest(Stream::Legacy)
    };
    match chosen {
        Some((i, _)) => {
            remember(i, ptr);
            handed_out(i, via);
            wrappers.0[i] as *mut c_void
        }
        None => ptr, // a variant older than any we wrap (the 32-bit cuMemAlloc): untouched
    }
}

/// The decision behind our `dlsym` (`exports::interpose`): our wrapper (from
/// `wrappers`) for a hooked name looked up in a handle that has it, or null to let
/// glibc's `dlsym` answer.
///
/// No locks, no CUDA calls, no allocation.
pub fn dlsym_answer(handle: *mut c_void, name: *const c_char, wrappers: &Wrappers) -> *mut c_void {
    if !real::ensure_real_dlsym() || name.is_null() || handle == libc::RTLD_NEXT {
        return std::ptr::null_mut();
    }
    std::panic::catch_unwind(|| {
        // SAFETY: dlsym's contract: a NUL-terminated name.
        let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
        if !(bytes.starts_with(b"cu") || bytes.starts_with(b"nvml")) {
            return std::ptr::null_mut();
        }
        let Some(index) = by_symbol(bytes) else {
            return std::ptr::null_mut();
        };
        let ours = wrappers.0[index];
        // SAFETY: forwarding the caller's own arguments to glibc's dlsym.
        let found = unsafe { real::dlsym(handle, name) };
        if found.is_null() {
            return std::ptr::null_mut(); // not in that handle: let glibc say so (and set dlerror)
        }
        if std::ptr::eq(found, ours) {
            return found; // RTLD_DEFAULT found our export
        }
        remember(index, found);
        if crate::runtime::is_off() {
            found
        } else {
            handed_out(index, Via::Dlsym);
            ours as *mut c_void
        }
    })
    .unwrap_or(std::ptr::null_mut())
}
