//! `libcuvisor_preload.so`, the shim that cuvisor injects into inference processes with
//! `LD_PRELOAD`.
//!
//! This is the only crate of the workspace that exports C symbols. For now it exports
//! only its version marker; the interception of CUDA allocations arrives with the shim
//! issue (see `docs/INTERCEPTION.md` once it exists).

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
