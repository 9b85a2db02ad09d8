//! The exit race, soaked: a process under the shim returns from `main` while 8 threads
//! allocate and free, and its model must end at exactly zero, every time.
//! `cargo run --release --example soak_exit [RUNS]` (default 10,000; the test suite runs
//! 150 of the same in `tests/ledger.rs`). Exits 1 at the first drift, naming the run.

#[path = "support/mod.rs"]
mod support;

use cuvisor::ledger::LedgerFile;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn main() {
    let runs: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RUNS: a whole number"))
        .unwrap_or(10_000);
    let stubs = PathBuf::from(env!("CUDA_STUB_DIR"));
    let dir = std::env::temp_dir().join(format!("cuvisor-soak-exit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let mut drift = 0u32;
    for run in 1..=runs {
        let out = Command::new(stubs.join("driver_probe"))
            .args(["init", "exit-racing", "8", "3", "1MiB"])
            .env("LD_LIBRARY_PATH", &stubs)
            .env("LD_PRELOAD", support::shim_path())
            .env("CUVISOR_LEDGER_DIR", &dir)
            .env("CUVISOR_MODEL", "soak")
            .env("CUVISOR_QUOTA", "1GiB")
            .output()
            .expect("run driver_probe");
        let printed = String::from_utf8_lossy(&out.stdout);
        if !printed.contains("exit-racing 8 3 1MiB -> 0") {
            eprintln!(
                "run {run}: the probe failed: {printed}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::process::exit(1);
        }
        let snap = LedgerFile::open(&dir, "soak")
            .expect("the model's ledger")
            .snapshot()
            .expect("a readable ledger");
        if snap.used != 0 || snap.uncertain != 0 || !snap.processes.is_empty() {
            drift += 1;
            eprintln!(
                "run {run}: used {} uncertain {} live slots {}",
                snap.used,
                snap.uncertain,
                snap.processes.len()
            );
            break;
        }
        if run % 1000 == 0 {
            println!("{run} runs, 0 drift ({:.0?})", started.elapsed());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if drift > 0 {
        std::process::exit(1);
    }
    println!(
        "soak_exit: {runs} runs, 0 drift, in {:.1?}",
        started.elapsed()
    );
}
