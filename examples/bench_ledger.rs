//! Reserve+release pairs per second on one model's ledger, with 1, 2 and 8 processes,
//! for docs/BENCHMARKS.md: `cargo run --release --example bench_ledger`.
//!
//! Each process attaches to the same ledger (in a temporary directory on /dev/shm, as
//! in production) and runs 4 KiB reserve+release pairs for the measured time; the rows
//! are the median of 5 rounds. A worker is this same program started with `worker`.

mod support;

use cuvisor::gpu::GpuUuid;
use cuvisor::ledger::{CreateOptions, LedgerFile};
use cuvisor::size::QuotaSpec;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const MEASURE: Duration = Duration::from_millis(500);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        worker(Path::new(&args[2]));
        return;
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures unoptimized code; use --release");
    }
    let dir = support::bench_dir("ledger");
    LedgerFile::create(
        &dir,
        "bench",
        Some(QuotaSpec::Bytes(1 << 40)),
        CreateOptions::default(),
    )
    .expect("create the ledger");
    println!(
        "| processes | pairs per second (all processes) | per process | ns per pair per process |"
    );
    println!("|---|---|---|---|");
    for processes in [1usize, 2, 8] {
        let mut totals: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let children: Vec<_> = (0..processes)
                    .map(|_| {
                        Command::new(std::env::current_exe().unwrap())
                            .arg("worker")
                            .arg(&dir)
                            .stdout(std::process::Stdio::piped())
                            .spawn()
                            .expect("start a worker")
                    })
                    .collect();
                children
                    .into_iter()
                    .map(|c| {
                        let out = c.wait_with_output().expect("worker");
                        String::from_utf8_lossy(&out.stdout)
                            .trim()
                            .parse::<f64>()
                            .expect("pairs per second")
                    })
                    .sum()
            })
            .collect();
        totals.sort_by(f64::total_cmp);
        let total = totals[ROUNDS / 2];
        let per = total / processes as f64;
        println!("| {processes} | {total:.0} | {per:.0} | {:.1} |", 1e9 / per);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn worker(dir: &Path) {
    let ledger = LedgerFile::open(dir, "bench").expect("open the ledger");
    // Every process on the same GPU: the most contended case.
    let gpu = ledger
        .register_gpu(GpuUuid([7; 16]), 80 << 30)
        .expect("register the GPU");
    let me = ledger.attach().expect("attach");
    for _ in 0..10_000 {
        me.try_reserve(gpu, 4096).expect("within the quota");
        me.release(gpu, 4096);
    }
    let start = Instant::now();
    let mut pairs = 0u64;
    while start.elapsed() < MEASURE {
        for _ in 0..1000 {
            me.try_reserve(gpu, 4096).expect("within the quota");
            me.release(gpu, 4096);
        }
        pairs += 1000;
    }
    println!("{}", pairs as f64 / start.elapsed().as_secs_f64());
}
