//! `libcuvisor_preload.so`, the shim that cuvisor injects into inference processes with
//! `LD_PRELOAD`: every device-memory allocation is charged to the model's quota and, in
//! the default `managed` mode, placed in CUDA managed memory; memory queries answer with
//! the model's virtual numbers.
//!
//! This is the only crate of the workspace that exports C symbols. The hooks are listed
//! in one table (`hooks.rs`, each row with its C signature) and in
//! `docs/INTERCEPTION.md`; the environment contract is `cuvisor_common::contract`, shared
//! with the supervisor that writes it.
//!
//! The modules are layers; each imports only the ones below it (`tests/workspace.rs`
//! keeps it so):
//!
//! | layer | modules |
//! |---|---|
//! | 5 | `exports/`: every exported function (the wrappers, by family, and `dlsym`) |
//! | 4 | `resolve` (which wrapper a lookup gets), `hibernate` (the power listener, started by the runtime's on-attach callback) |
//! | 3 | `runtime` (the configuration, the ledger, the accounting), `records` (what each pointer and handle holds) |
//! | 2 | `driver`: the driver calls the shim makes for itself, as results |
//! | 1 | `hooks`: the row list; per row its metadata, its signature as types and its real function |
//! | 0 | `ffi` (C types and constants), `real` (glibc's `dlsym`, lookups behind the shim), `logging` |

mod driver;
mod exports;
mod ffi;
mod hibernate;
mod hooks;
mod logging;
mod real;
mod records;
mod resolve;
mod runtime;

/// The shim's version, NUL-terminated, exported as the C symbol
/// `cuvisor_preload_version` so that tools (and tests) can tell which shim a process
/// loaded: `dlsym(handle, "cuvisor_preload_version")`.
#[unsafe(no_mangle)]
pub static cuvisor_preload_version: [u8; VERSION.len() + 1] = nul_terminated();

const VERSION: &str = env!("CARGO_PKG_VERSION");

const fn nul_terminated() -> [u8; VERSION.len() + 1] {
    let mut out = [0u8; VERSION.len() + 1];
    let bytes = VERSION.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Runs when the library is loaded: reads the configuration (libc-level work only; no
/// CUDA call, no thread).
extern "C" fn on_load() {
    real::ensure_real_dlsym();
    runtime::set_on_attach(hibernate::start);
    runtime::load();
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;

/// Runs at normal exit: the process leaves its model's ledger, giving back what it held
/// (the driver frees the memory itself). A process that dies otherwise is reclaimed by
/// the supervisor or by the model's other processes.
extern "C" fn on_exit() {
    resolve::log_resolutions();
    runtime::leave_ledger();
}

#[used]
#[unsafe(link_section = ".fini_array")]
static ON_EXIT: extern "C" fn() = on_exit;

#[cfg(test)]
mod tests {
    #[test]
    fn version_marker_is_the_package_version_nul_terminated() {
        let marker = &super::cuvisor_preload_version;
        assert_eq!(marker.last(), Some(&0));
        assert_eq!(
            &marker[..marker.len() - 1],
            env!("CARGO_PKG_VERSION").as_bytes()
        );
    }
}
