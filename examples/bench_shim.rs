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
//!
//! `-- --baseline PATH` adds rows for another build of the shim (e.g. one from an older
//! commit), measured in the same run.

mod support;
use support::shim_path;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROUNDS: usize = 9;
const ITERS: u32 = 20_000;
const SIZE: &str = "4K";
/// (label, shim mode, use the baseline shim, GPUs on the fake node). Each row's
/// "added" is against the row without a shim on as many GPUs.
type Config = (&'static str, Option<&'static str>, bool, u32);
const CONFIGS: [Config; 8] = [
    ("no shim", None, false, 1),
    ("shim, off", Some("off"), false, 1),
    ("shim, device", Some("device"), false, 1),
    ("shim, managed", Some("managed"), false, 1),
    ("no shim, 4 GPUs", None, false, 4),
    ("shim, device, 4 GPUs", Some("device"), false, 4),
    ("baseline shim, device", Some("device"), true, 1),
    ("baseline shim, managed", Some("managed"), true, 1),
];

/// The row without a shim on as many GPUs as `config`.
fn bare(config: Config) -> Config {
    CONFIGS
        .into_iter()
        .find(|c| c.1.is_none() && c.3 == config.3)
        .expect("a bare row per GPU count")
}

struct Shims {
    current: PathBuf,
    baseline: Option<PathBuf>,
}

impl Shims {
    fn configs(&self) -> impl Iterator<Item = Config> + '_ {
        CONFIGS
            .into_iter()
            .filter(|c| !c.2 || self.baseline.is_some())
    }
}

fn main() {
    let stubs = PathBuf::from(env!("CUDA_STUB_DIR"));
    let args: Vec<String> = std::env::args().collect();
    let baseline = args
        .iter()
        .position(|a| a == "--baseline")
        .map(|i| PathBuf::from(args.get(i + 1).expect("--baseline PATH")));
    let shims = Shims {
        current: shim_path(),
        baseline,
    };
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures unoptimized code; use --release");
    }
    instruction_counts(&stubs, &shims);
    wall_clock(&stubs, &shims);
    for baseline in [false, true] {
        let _ = std::fs::remove_dir_all(ledger_dir(baseline));
    }
}

fn bench(stubs: &Path, shims: &Shims, config: Config, valgrind_out: Option<&Path>) -> Command {
    let (_, mode, baseline, gpus) = config;
    let shim = if baseline {
        shims.baseline.as_deref().expect("baseline")
    } else {
        &shims.current
    };
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
        .env("FAKE_CUDA_DEVICE_COUNT", gpus.to_string())
        .env_remove("LD_PRELOAD");
    if let Some(mode) = mode {
        cmd.env("LD_PRELOAD", shim)
            .env("CUVISOR_MODE", mode)
            .env("CUVISOR_QUOTA", "32GiB")
            .env("CUVISOR_LEDGER_DIR", ledger_dir(baseline));
    }
    cmd
}

/// The run's own ledger directory, on /dev/shm like the default one, one per shim build
/// (another build may read another ledger layout); removed at the end.
fn ledger_dir(baseline: bool) -> PathBuf {
    let which = if baseline { "baseline" } else { "current" };
    Path::new("/dev/shm").join(format!("cuvisor-bench-{}-{which}", std::process::id()))
}

fn instruction_counts(stubs: &Path, shims: &Shims) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind not installed: no instruction counts\n");
        return;
    }
    let out_file =
        std::env::temp_dir().join(format!("cuvisor-bench-{}.callgrind", std::process::id()));
    let collected = |config: Config, what: &str, iters: u32| -> f64 {
        let out = bench(stubs, shims, config, Some(&out_file))
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
    let per_op = |config: Config, what: &str| {
        (collected(config, what, 2 * ITERS / 10) - collected(config, what, ITERS / 10))
            / f64::from(ITERS / 10)
    };
    println!("Instructions per operation (callgrind, 1 thread):\n");
    println!("| configuration | alloc+free pair | added | cuMemGetInfo_v2 | added |");
    println!("|---|---|---|---|---|");
    for config in shims.configs() {
        let name = config.0;
        let (pair, info) = (per_op(config, "pairs"), per_op(config, "info"));
        let (base_pair, base_info) = (per_op(bare(config), "pairs"), per_op(bare(config), "info"));
        println!(
            "| {name} | {pair:.0} | {:+.0} | {info:.0} | {:+.0} |",
            pair - base_pair,
            info - base_info
        );
    }
    println!();
}

fn wall_clock(stubs: &Path, shims: &Shims) {
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
            for config in shims.configs() {
                let name = config.0;
                let out = bench(stubs, shims, config, None)
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
        for config in shims.configs() {
            let (name, base) = (config.0, bare(config).0);
            let (base_pair, base_info) = (median(&samples[base].0), median(&samples[base].1));
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
