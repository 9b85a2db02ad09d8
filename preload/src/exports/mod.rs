//! The exported functions: every wrapper of the hook table, and the `dlsym` interposer.
//! The only place, with `lib.rs`'s version marker, that exports a symbol.
//!
//! Each row of the hook table (`for_each_hook!` in `hooks.rs`) becomes, here, an exported
//! `extern "C"` function of its name and signature, which runs inside [`guard`], decides
//! by the row's policy what to do first ([`prologue`]), and calls the row's body with a
//! `forward` closure (the real function with the caller's own arguments). The bodies are
//! written with [`hook!`], by family: `init.rs` (initialization and resolvers),
//! `alloc.rs` (device memory, pools, contexts), `vmm.rs`, `arrays.rs` (and IPC),
//! `meminfo.rs` and `nvml.rs` (placement); what they share is in `charge.rs`. Their
//! signatures come from the table: a body names its arguments, never their types.

use crate::ffi::*;
use crate::hooks::row;
use crate::hooks::{Id, Policy, Wrappers, for_each_hook, hook};
use crate::runtime::{Active, Runtime, active};
use charge::{init_failure, missing};
use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The body of a row's wrapper: `NAME(arg, …) |forward, rt| { … }`, or
/// `resolver NAME(arg, …) |forward, wrappers| { … }` for the resolvers (which decide for
/// themselves what to hand out, with no prologue). The arguments are the row's, in its
/// order, typed by the table; `forward()` calls the real function with the caller's own
/// arguments; `rt` is the shim's runtime, when it is on; `wrappers` our wrappers'
/// addresses, which a resolver hands out.
macro_rules! hook {
    (
        $(#[$doc:meta])*
        resolver $name:ident($($arg:ident),* $(,)?) |$forward:ident, $wrappers:ident| $body:block
    ) => {
        $(#[$doc])*
        #[allow(non_snake_case)]
        #[inline(always)] // into its export: a body is called from there only
        pub(crate) fn $name(
            $forward: impl FnOnce() -> $crate::hooks::row::$name::Ret,
            $wrappers: &$crate::hooks::Wrappers,
            ($($arg,)*): $crate::hooks::row::$name::Args,
        ) -> $crate::hooks::row::$name::Ret $body
    };
    (
        $(#[$doc:meta])*
        $name:ident($($arg:ident),* $(,)?) |$forward:ident, $rt:ident| $body:block
    ) => {
        $(#[$doc])*
        #[allow(non_snake_case)]
        #[inline(always)] // into its export: a body is called from there only
        pub(crate) fn $name(
            $forward: impl FnOnce() -> $crate::hooks::row::$name::Ret,
            $rt: &'static $crate::runtime::Runtime,
            ($($arg,)*): $crate::hooks::row::$name::Args,
        ) -> $crate::hooks::row::$name::Ret $body
    };
}

mod alloc;
mod arrays;
mod charge;
mod init;
mod interpose;
mod meminfo;
mod nvml;
mod vmm;

/// Every row's body, under one name.
mod bodies {
    pub(super) use super::alloc::*;
    pub(super) use super::arrays::*;
    pub(super) use super::init::*;
    pub(super) use super::meminfo::*;
    pub(super) use super::nvml::*;
    pub(super) use super::vmm::*;
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
            let h = hook(id);
            match h.policy {
                Policy::Init => Prologue::Answer(init_failure(h.lib)),
                Policy::Charge | Policy::Redirect => Prologue::Answer(CUDA_ERROR_NOT_INITIALIZED),
                _ => Prologue::Forward,
            }
        }
    }
}

/// Runs a wrapper body; a panic becomes the "unknown error" of every library (999).
fn guard(body: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log::error!("internal error in the cuvisor shim; the call answers CUDA_ERROR_UNKNOWN");
        CUDA_ERROR_UNKNOWN
    })
}

/// Row `$sym`'s body, after its prologue (none for a resolver).
macro_rules! dispatch {
    (Resolver, $sym:ident, $forward:ident, $args:expr) => {{
        debug_assert_eq!(hook(Id::$sym).policy, Policy::Resolver);
        bodies::$sym($forward, &WRAPPERS, $args)
    }};
    ($policy:ident, $sym:ident, $forward:ident, $args:expr) => {
        match prologue(Id::$sym) {
            Prologue::Forward => $forward(),
            Prologue::Answer(code) => code,
            Prologue::Run(rt) => bodies::$sym($forward, rt, $args),
        }
    };
}

/// The exported wrapper of every row, and the table of their addresses.
macro_rules! exports {
    ($(
        $sym:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty,
        $base:literal, $version:literal, $stream:ident, $lib:ident, $policy:ident;
    )*) => {
        $(
            /// The wrapper of this row of the hook table (its body is in `exports/`).
            ///
            /// # Safety
            /// The driver's own contract for this function: pointers valid as its
            /// documentation requires.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $sym($($arg: $ty),*) -> $ret {
                guard(|| {
                    let Some(real) = row::$sym::real() else {
                        return missing(Id::$sym);
                    };
                    // SAFETY: the real function of this row, of this row's signature,
                    // called with the caller's own arguments, under the caller's
                    // guarantees.
                    let forward = move || unsafe { real($($arg),*) };
                    dispatch!($policy, $sym, forward, ($($arg,)*))
                })
            }
        )*

        /// Our wrappers' addresses, row by row: what the resolvers hand out.
        pub static WRAPPERS: Wrappers = Wrappers([$($sym as *const c_void),*]);
    };
}

for_each_hook!(exports);
