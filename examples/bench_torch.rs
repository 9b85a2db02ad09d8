//! What the shim costs PyTorch's allocations, for docs/BENCHMARKS.md:
//! `cargo run --release --example bench_torch`.
//!
//! PyTorch 2.15 (pinned, from PyPI, installed under `target/frameworks/` on first use,
//! as the framework tests do) on the fake GPU, with `PYTORCH_NO_CUDA_MEMORY_CACHING=1`
//! so that each `torch.empty` + `del` is a `cudaMalloc` + `cudaFree` through NVIDIA's own
//! runtime. The loop is timed inside the process (examples/frameworks/torch_alloc_loop.py),
//! without the shim and with it in `device` and `managed` mode, in interleaved rounds;
//! each configuration's median against the bare fake driver's of the same run.

mod support;
use support::frameworks::{FRAMEWORK_DRIVER_VERSION, TORCH_ENV, framework_python, on_fake_driver};
use support::{bench_dir, shim_path};

use std::path::Path;

const ROUNDS: usize = 7;
const PAIRS: &str = "20000";
const SIZE: &str = "1048576";
const CONFIGS: [(&str, Option<&str>); 3] = [
    ("no shim", None),
    ("shim, device", Some("device")),
    ("shim, managed", Some("managed")),
];

fn main() {
    let python = framework_python(&TORCH_ENV);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/frameworks/torch_alloc_loop.py");
    let ledgers = bench_dir("torch");
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    for round in 0..ROUNDS {
        for (i, (label, mode)) in CONFIGS.iter().enumerate() {
            let mut cmd = on_fake_driver(&python);
            cmd.arg(&script)
                .args([PAIRS, SIZE])
                .env("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
                .env("FAKE_CUDA_DRIVER_VERSION", FRAMEWORK_DRIVER_VERSION)
                .env("FAKE_CUDA_DEVICE_MEM", "64GiB");
            if let Some(mode) = mode {
                cmd.env("LD_PRELOAD", shim_path())
                    .env("CUVISOR_MODE", mode)
                    .env("CUVISOR_MODEL", format!("bench-{round}-{i}"))
                    .env("CUVISOR_QUOTA", "32GiB")
                    .env("CUVISOR_LEDGER_DIR", &ledgers);
            }
            let out = cmd.output().expect("run the loop");
            assert!(
                out.status.success(),
                "{label}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let ns: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("ns per pair");
            samples[i].push(ns);
        }
    }
    let _ = std::fs::remove_dir_all(&ledgers);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut samples[0].clone());
    println!(
        "| configuration | torch.empty + del, 1 MiB (ns, median of {ROUNDS}) | min - max | against no shim |"
    );
    println!("|---|---|---|---|");
    for (i, (label, _)) in CONFIGS.iter().enumerate() {
        let v = &mut samples[i];
        let m = median(v);
        println!(
            "| {label} | {m:.0} | {:.0} - {:.0} | {:.2}x (+{:.0} ns) |",
            v[0],
            v[v.len() - 1],
            m / base,
            m - base
        );
    }
}
