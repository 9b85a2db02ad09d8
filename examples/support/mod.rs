//! Shared by the examples and the integration tests (not an example itself: cargo only
//! discovers `examples/*.rs` and `examples/*/main.rs`).

#![allow(dead_code)] // each example (and test binary) uses its own subset

use std::path::{Path, PathBuf};

pub mod frameworks;

/// libcuvisor_preload.so as cargo built it for the running program (an example in
/// `target/<profile>/examples/` or a test in `target/<profile>/deps/`). `deps/` first:
/// cargo rebuilds it there with every build of the package's tests and examples, while
/// `target/<profile>/` has a copy only after a `cargo build` of the workspace, possibly
/// an old one.
pub fn shim_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    [
        profile_dir.join("deps/libcuvisor_preload.so"),
        profile_dir.join("libcuvisor_preload.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("libcuvisor_preload.so is built with the package's tests and examples (dev-dependency)")
}

/// A directory for a benchmark's ledgers, as in production: on /dev/shm (tmpfs) where the
/// machine has it, else /tmp.
pub fn bench_dir(tag: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm")
    } else {
        Path::new("/tmp")
    };
    base.join(format!("cuvisor-bench-{tag}-{}", std::process::id()))
}

/// A command for a child on the fake GPU that inherits nothing of the fake's, the shim's
/// or a preload's settings from the environment of the test or benchmark run.
pub fn clean_command(program: impl AsRef<Path>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program.as_ref());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("FAKE_CUDA_") || key.starts_with("CUVISOR_") || key == "LD_PRELOAD" {
            cmd.env_remove(key);
        }
    }
    cmd
}
