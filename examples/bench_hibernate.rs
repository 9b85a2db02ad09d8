//! The hibernation mechanism's own latency, for docs/BENCHMARKS.md:
//! `cargo run --release --example bench_hibernate`.
//!
//! N processes of one model (the C driver probe under the shim, `CUVISOR_HIBERNATE=on`,
//! each holding one 1 MiB managed allocation on the fake GPU, whose moves cost nothing:
//! copies excluded) wait on the model's control word. This program asks them to
//! hibernate and to wake, alternately, and times each request from the control word's
//! write to the last acknowledgement (`wait_acks` returning), for 1, 2 and 8 processes.
//! The baseline, measured in the same run: a futex round trip to as many processes that
//! do nothing but acknowledge (this program's own threads, attached to the same kind of
//! ledger), which is the floor any such mechanism pays.

mod support;
use support::shim_path;

use cuvisor::ledger::power::{Outcome, Power, PowerAck};
use cuvisor::ledger::{CreateOptions, LedgerFile};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REQUESTS: usize = 400;

fn main() {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures unoptimized code; use --release");
    }
    let dir = support::bench_dir("hibernate");
    println!(
        "| processes | shim processes: median µs | p99 µs | bare threads (baseline): median µs | p99 µs | ratio of medians |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [1usize, 2, 8] {
        let shim = shim_processes(&dir, n);
        let bare = bare_threads(&dir, n);
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            percentile(&shim, 50),
            percentile(&shim, 99),
            percentile(&bare, 50),
            percentile(&bare, 99),
            percentile(&shim, 50) / percentile(&bare, 50)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn percentile(sorted_us: &[f64], p: usize) -> f64 {
    sorted_us[(sorted_us.len() - 1) * p / 100]
}

/// Requests on `ledger` until `REQUESTS` are done: each one's latency in µs, sorted.
fn measure(ledger: &LedgerFile) -> Vec<f64> {
    let mut us: Vec<f64> = (0..REQUESTS)
        .map(|i| {
            let start = Instant::now();
            let request = ledger.request_power(i % 2 == 0);
            let outcome = ledger.wait_acks(request, Duration::from_secs(10));
            assert_eq!(outcome, Outcome::Done);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    us.sort_by(f64::total_cmp);
    us
}

/// `n` driver probes under the shim, each listening; the requests' latencies.
fn shim_processes(dir: &Path, n: usize) -> Vec<f64> {
    let model = format!("shim{n}");
    let stubs = PathBuf::from(env!("CUDA_STUB_DIR"));
    let ledger =
        LedgerFile::create(dir, &model, None, CreateOptions::default()).expect("create the ledger");
    let mut children: Vec<_> = (0..n)
        .map(|_| {
            let mut child = Command::new(stubs.join("driver_probe"))
                .args(["init", "alloc", "1M", "memset", "0", "wait"])
                .env("LD_PRELOAD", shim_path())
                .env("LD_LIBRARY_PATH", &stubs)
                .env("FAKE_CUDA_DEVICE_MEM", "64GiB")
                .env("CUVISOR_LEDGER_DIR", dir)
                .env("CUVISOR_MODEL", &model)
                .env("CUVISOR_HIBERNATE", "on")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a probe");
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            for _ in 0..3 {
                line.clear();
                out.read_line(&mut line).unwrap();
            }
            assert!(line.starts_with("memset 0 -> 0"), "{line}");
            (child, out)
        })
        .collect();
    // Every probe's thread is listening before the first request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger
        .snapshot()
        .unwrap()
        .processes
        .iter()
        .filter(|p| p.power.listening)
        .count()
        < n
    {
        assert!(Instant::now() < deadline, "the probes did not listen");
        std::thread::sleep(Duration::from_millis(5));
    }
    let us = measure(&ledger);
    for (child, _) in &mut children {
        drop(child.stdin.take());
        child.wait().unwrap();
    }
    us
}

/// `n` threads of this program that acknowledge each request at once.
fn bare_threads(dir: &Path, n: usize) -> Vec<f64> {
    let model = format!("bare{n}");
    let ledger =
        LedgerFile::create(dir, &model, None, CreateOptions::default()).expect("create the ledger");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..n {
            let (ledger, stop) = (&ledger, &stop);
            let me = ledger.attach().unwrap();
            me.listen(true);
            scope.spawn(move || {
                let mut done = Power::default();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let now = me.wait_power(done);
                    if now != done {
                        me.acknowledge(&PowerAck {
                            power: now,
                            ..PowerAck::default()
                        });
                        done = now;
                    }
                }
            });
        }
        let us = measure(&ledger);
        stop.store(true, std::sync::atomic::Ordering::Release);
        ledger.request_power(false); // wakes the threads to see `stop`
        us
    })
}
