//! The README's first command: `cargo run --example demo`.
//!
//! Runs small CUDA programs on the fake GPU (no NVIDIA hardware needed) and narrates what
//! they see: the configured device size, out-of-memory past it, managed memory that
//! oversubscribes the device with least-recently-used eviction, the per-process report the
//! test suite reads, and then the same programs under the cuvisor shim with a quota. Each
//! step prints the command line, so it can be replayed by hand.

mod support;
use support::shim_path;

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let stubs = PathBuf::from(env!("CUDA_STUB_DIR"));
    let report = std::env::temp_dir().join(format!("cuvisor-demo-{}.jsonl", std::process::id()));
    println!("cuvisor demo: a fake 8 GiB GPU in {}\n", stubs.display());

    step(
        &stubs,
        "A driver-API program allocates until the device is full: CUDA_ERROR_OUT_OF_MEMORY is 2.",
        "driver_probe",
        &[],
        "init info alloc 6GiB info alloc 3GiB alloc 2GiB info",
    );
    step(
        &stubs,
        "Managed memory may exceed the device. Pages become resident when the device touches\n\
         them, and the least recently used are evicted to the host to make room.",
        "driver_probe",
        &[("FAKE_CUDA_REPORT", report.as_path())],
        "init managed 6GiB managed 6GiB prefetch 0 gpu info prefetch 1 gpu info alloc 4GiB info",
    );
    println!(
        "The fake GPU's report for that process ({}):",
        report.display()
    );
    println!(
        "{}",
        std::fs::read_to_string(&report).unwrap_or_default().trim()
    );
    let _ = std::fs::remove_file(&report);
    step(
        &stubs,
        "A runtime-API program (the fake libcudart reaches the driver through cuGetProcAddress,\n\
         as NVIDIA's does) sees the same device.",
        "runtime_probe",
        &[],
        "count info props alloc 7GiB alloc 2GiB entry cuMemAlloc",
    );
    let shim = shim_path();
    // The model's ledger lives in a directory of the demo's own, removed at the end.
    let ledgers = std::env::temp_dir().join(format!("cuvisor-demo-ledgers-{}", std::process::id()));
    let shim_env = [
        ("LD_PRELOAD", shim.as_path()),
        ("CUVISOR_QUOTA", Path::new("2GiB")),
        ("CUVISOR_LEDGER_DIR", ledgers.as_path()),
    ];
    step(
        &stubs,
        "Now under the cuvisor shim with a 2 GiB quota: the program sees a 2 GiB GPU, is refused\n\
         past it before the driver is asked, and its memory is managed memory (type=2 managed=1).",
        "driver_probe",
        &shim_env,
        "init info alloc 1GiB attr 0 info alloc 1GiB alloc 1 free 0 info",
    );
    step(
        &stubs,
        "The runtime API under the shim: cudaMemGetInfo and cudaGetDeviceProperties agree.",
        "runtime_probe",
        &shim_env,
        "info props alloc 2GiB alloc 1",
    );
    let _ = std::fs::remove_dir_all(&ledgers);
}

fn step(stubs: &Path, what: &str, program: &str, env: &[(&str, &Path)], script: &str) {
    println!("{what}");
    let mut cmd = Command::new(stubs.join(program));
    cmd.env("LD_LIBRARY_PATH", stubs)
        .env("FAKE_CUDA_DEVICE_MEM", "8GiB");
    let mut shown = format!(
        "  $ FAKE_CUDA_DEVICE_MEM=8GiB LD_LIBRARY_PATH={}",
        stubs.display()
    );
    for (k, v) in env {
        cmd.env(k, v);
        shown += &format!(" {k}={}", v.display());
    }
    println!("{shown} {program} {script}");
    let out = cmd
        .args(script.split_whitespace())
        .output()
        .expect("run the probe");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("    (stderr) {line}");
    }
    if !out.status.success() {
        eprintln!(
            "{program} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    println!();
}
