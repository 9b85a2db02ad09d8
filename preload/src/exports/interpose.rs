//! `dlsym`, interposed: what a program that looks a hooked name up gets is our wrapper
//! ([`crate::resolve`] decides; this is only the export).

use super::WRAPPERS;
use crate::real;
use crate::resolve;
use std::ffi::{c_char, c_void};

/// The decision behind our `dlsym`: our wrapper for a hooked name looked up in a handle
/// that has it, or null to let glibc's `dlsym` answer (tail call, caller preserved).
///
/// Called from the naked `dlsym` below: no locks, no CUDA calls, no allocation.
extern "C" fn decide(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    resolve::dlsym_answer(handle, name, &WRAPPERS)
}

/// `dlsym`, interposed. A naked function so that what we do not answer ourselves reaches
/// glibc by a tail jump: glibc then sees the original caller's return address, which is
/// what `dlsym(RTLD_NEXT, …)` is resolved against.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "sub rsp, 8", // 16-byte alignment for the call
        "call {decide}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "jz 2f",
        "ret",
        "2:",
        "jmp qword ptr [rip + {real}]",
        decide = sym decide,
        real = sym real::REAL_DLSYM,
    )
}

#[cfg(not(target_arch = "x86_64"))]
compile_error!("cuvisor-preload's dlsym interposer is written for x86_64 only so far");
