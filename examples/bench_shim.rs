//! The shim's cost, for docs/BENCHMARKS.md: `cargo run --release --example bench_shim`.
//!
//! Runs the C client `cuda_stubs/probes/bench.c` (driver API by direct binding) on the
//! fake GPU with no shim and with the shim in each mode, and reports what the shim adds
//! to the bare fake driver measured in the same run:
//!
//! 1. instructions per operation under callgrind (deterministic, whatever the machine is
//!    doing; the slope between two iteration counts, so one-off start-up cost cancels),
//!    when valgrind is installed;
//! 2. wall-clock nanoseconds per operation at 1, 2 and 8 threads: the median of
//!    interleaved rounds.
//!
//! Build with --release: the fake GPU and the shim are then optimized as users run them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROUNDS: usize = 9;
const ITERS: u32 = 20_000;
const SIZE: &str = "4K";
const CONFIGS: [(&str, Option<&str>); 4] = [
    ("no shim", None),
    ("shim, off", Some("off")),
    ("shim, device", Some("device")),
    ("shim, managed", Some("managed")),
];

fn main() {
    let stubs = PathBuf::from(env!("CUDA_STUB_DIR"));
    let shim = shim_path();
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures unoptimized code; use --release");
    }
    instruction_counts(&stubs, &shim);
    wall_clock(&stubs, &shim);
}

fn bench(stubs: &Path, shim: &Path, mode: Option<&str>, valgrind_out: Option<&Path>) -> Command {
    let mut cmd = match valgrind_out {
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()));
            c.arg(stubs.join("bench"));
            c
        }
        None => Command::new(stubs.join("bench")),
    };
    cmd.env("LD_LIBRARY_PATH", stubs)
        .env("FAKE_CUDA_DEVICE_MEM", "64GiB")
        .env_remove("LD_PRELOAD");
    if let Some(mode) = mode {
        cmd.env("LD_PRELOAD", shim)
            .env("CUVISOR_MODE", mode)
            .env("CUVISOR_QUOTA", "32GiB");
    }
    cmd
}

fn instruction_counts(stubs: &Path, shim: &Path) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind not installed: no instruction counts\n");
        return;
    }
    let out_file =
        std::env::temp_dir().join(format!("cuvisor-bench-{}.callgrind", std::process::id()));
    let collected = |mode: Option<&str>, what: &str, iters: u32| -> f64 {
        let out = bench(stubs, shim, mode, Some(&out_file))
            .args(["1", &iters.to_string(), SIZE, what])
            .output()
            .expect("run valgrind");
        let _ = std::fs::remove_file(&out_file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "valgrind: {err}");
        err.lines()
            .find_map(|l| {
                l.split("Collected :")
                    .nth(1)?
                    .trim()
                    .replace(',', "")
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no instruction count in {err}"))
    };
    let per_op = |mode: Option<&str>, what: &str| {
        (collected(mode, what, 2 * ITERS / 10) - collected(mode, what, ITERS / 10))
            / f64::from(ITERS / 10)
    };
    println!("Instructions per operation (callgrind, 1 thread):\n");
    println!("| configuration | alloc+free pair | added | cuMemGetInfo_v2 | added |");
    println!("|---|---|---|---|---|");
    let (base_pair, base_info) = (per_op(None, "pairs"), per_op(None, "info"));
    for (name, mode) in CONFIGS {
        let (pair, info) = (per_op(mode, "pairs"), per_op(mode, "info"));
        println!(
            "| {name} | {pair:.0} | {:+.0} | {info:.0} | {:+.0} |",
            pair - base_pair,
            info - base_info
        );
    }
    println!();
}

fn wall_clock(stubs: &Path, shim: &Path) {
    println!(
        "Nanoseconds per operation: {ITERS} operations of {SIZE} per thread, median of {ROUNDS} interleaved rounds:\n"
    );
    println!(
        "| threads | configuration | alloc+free pair (ns) | added (ns) | cuMemGetInfo_v2 (ns) | added (ns) |"
    );
    println!("|---|---|---|---|---|---|");
    for threads in ["1", "2", "8"] {
        let mut samples: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for _ in 0..ROUNDS {
            for (name, mode) in CONFIGS {
                let out = bench(stubs, shim, mode, None)
                    .args([threads, &ITERS.to_string(), SIZE, "both"])
                    .output()
                    .expect("run the bench client");
                assert!(
                    out.status.success(),
                    "{name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout);
                let value = |key: &str| -> f64 {
                    text.lines()
                        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                        .unwrap_or_else(|| panic!("no {key} in {text}"))
                };
                let entry = samples.entry(name).or_default();
                entry.0.push(value("alloc_free_ns"));
                entry.1.push(value("mem_get_info_ns"));
            }
        }
        let (base_pair, base_info) = (median(&samples["no shim"].0), median(&samples["no shim"].1));
        for (name, _) in CONFIGS {
            let (pair, info) = (median(&samples[name].0), median(&samples[name].1));
            println!(
                "| {threads} | {name} | {pair:.0} | {:+.0} | {info:.0} | {:+.0} |",
                pair - base_pair,
                info - base_info
            );
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// libcuvisor_preload.so of this profile (cargo builds it with the workspace).
fn shim_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>");
    [
        profile_dir.join("libcuvisor_preload.so"),
        profile_dir.join("deps/libcuvisor_preload.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("libcuvisor_preload.so: run `cargo build --release` first (it is a workspace member)")
}
