//! Finding the real functions behind ours.
//!
//! Every lookup the shim makes goes through glibc's own `dlsym`, found with `dlvsym`: a
//! plain `dlsym` call from here would come back into our hook.

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

/// glibc's `dlsym`. Read by the naked `dlsym` hook, which jumps to it.
pub static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// Resolves glibc's `dlsym` once (it moved to libc 2.34 with a compat version beside it).
pub fn ensure_real_dlsym() -> bool {
    if REAL_DLSYM.load(Ordering::Acquire) != 0 {
        return true;
    }
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: dlvsym with constant strings; RTLD_NEXT from the shim is libc's dlsym.
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !p.is_null() {
            REAL_DLSYM.store(p as usize, Ordering::Release);
            return true;
        }
    }
    false
}

/// glibc's `dlsym(handle, name)`.
///
/// # Safety
/// `name` must be a NUL-terminated string; `handle` a handle or pseudo-handle.
pub unsafe fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    if !ensure_real_dlsym() {
        return std::ptr::null_mut();
    }
    // SAFETY: REAL_DLSYM holds glibc's dlsym.
    let f: DlsymFn = unsafe { std::mem::transmute(REAL_DLSYM.load(Ordering::Acquire)) };
    // SAFETY: the caller's handle and name, as glibc's dlsym requires them.
    unsafe { f(handle, name) }
}

/// The libraries whose functions the shim wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    Cuda,
    Nvml,
    Cudart,
}

impl Lib {
    pub fn sonames(self) -> &'static [&'static CStr] {
        match self {
            Lib::Cuda => &[c"libcuda.so.1"],
            Lib::Nvml => &[c"libnvidia-ml.so.1"],
            Lib::Cudart => &[c"libcudart.so.12", c"libcudart.so.13"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Lib::Cuda => "libcuda",
            Lib::Nvml => "NVML",
            Lib::Cudart => "libcudart",
        }
    }
}

/// Looks `name` up behind the shim: first the next object in the global scope (another
/// preload chained after us, or the library itself when linked), then the library
/// already loaded under its soname (a library the program dlopen()ed privately).
/// Null if neither has it, or if what was found is ours (the shim found itself).
pub fn lookup(lib: Lib, name: &CStr) -> *mut c_void {
    // SAFETY: constant NUL-terminated names and pseudo-handles.
    let next = unsafe { dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if !next.is_null() && !is_ours(next) {
        return next;
    }
    for soname in lib.sonames() {
        // SAFETY: RTLD_NOLOAD never loads anything; it only finds what is loaded.
        let handle = unsafe { libc::dlopen(soname.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            continue;
        }
        // SAFETY: a handle dlopen just gave us, and a C string.
        let p = unsafe { dlsym(handle, name.as_ptr()) };
        // SAFETY: balances the dlopen above; the library stays loaded by its other users.
        unsafe { libc::dlclose(handle) };
        if !p.is_null() && !is_ours(p) {
            return p;
        }
    }
    std::ptr::null_mut()
}

/// Whether `p` is an address in the shim's own object (one of our exports).
pub fn is_ours(p: *const c_void) -> bool {
    /// The shim's load address: `dladdr` of one of its own functions.
    fn base_of(p: *const c_void) -> Option<usize> {
        // SAFETY: Dl_info is plain data; all zeros is a valid value.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: dladdr only reads the loader's maps and writes `info`.
        let found = unsafe { libc::dladdr(p, &mut info) } != 0;
        (found && !info.dli_fbase.is_null()).then_some(info.dli_fbase as usize)
    }
    let ours = base_of(is_ours as *const c_void);
    ours.is_some() && base_of(p) == ours
}
