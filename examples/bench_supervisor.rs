//! How fast workers start, for docs/BENCHMARKS.md:
//! `cargo run --release --example bench_supervisor` (as root, on a host with cgroups).
//!
//! 1. `start` to first instruction: the control API's `POST /models/NAME/start` to the
//!    worker's first instruction in its PID, mount, IPC and UTS namespaces with memory,
//!    CPU and pids limits applied;
//! 2. crash to replacement: a worker that exits with status 1 to its replacement's first
//!    instruction (restart on-failure, 1 ms backoff);
//! 3. baseline: `unshare --fork --pid --mount-proc` of the same program, spawned from here.
//!
//! The worker (`cuda_stubs/probes/stamp.c`) prints CLOCK_MONOTONIC at its first
//! instruction; that clock is shared by every PID namespace. Medians of 30 runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const RUNS: usize = 30;

fn now_ns() -> i64 {
    // SAFETY: timespec is plain data; all zeros is a valid value.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime with a valid clock into a live local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn stamps(log: &Path, key: &str) -> Vec<i64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .collect()
}

fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("timed out");
}

/// The supervisor under test; stopped (SIGTERM: workers and cgroups go too) even when a
/// measurement panics.
struct Stopper(std::process::Child);

impl Stopper {
    fn stop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

fn main() {
    supervise::supervise_if_asked();
    let stubs = PathBuf::from(env!("CUDA_STUB_DIR"));
    let stamp = stubs.join("stamp");
    let dir = std::env::temp_dir().join(format!("cuvisor-bench-supervisor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let config = format!(
        "[supervisor]\nsocket = \"{}\"\nledger_dir = \"{}\"\nlogs = \"{}\"\ngrace_period = \"1s\"\ncgroup_name = \"cuvisor-bench\"\n\n\
         [[model]]\nname = \"starter\"\ncommand = \"{}\"\nmemory_limit = \"256MiB\"\ncpu_limit = 1.0\npids_limit = 64\n\n\
         [[model]]\nname = \"crasher\"\ncommand = \"{}\"\nargs = [\"crash\"]\nmemory_limit = \"256MiB\"\ncpu_limit = 1.0\npids_limit = 64\n\
         restart = \"on-failure\"\nbackoff_initial = \"1ms\"\nbackoff_max = \"1ms\"\n",
        socket.display(),
        dir.join("ledgers").display(),
        dir.join("logs").display(),
        stamp.display(),
        stamp.display()
    );
    std::fs::write(dir.join("cuvisor.toml"), config).unwrap();
    let mut sup = Stopper(supervise::spawn_supervisor(
        &dir.join("cuvisor.toml"),
        std::fs::File::create(dir.join("supervisor.log")).unwrap(),
    ));
    wait_for(|| cuvisor::control::request(&socket, "GET", "/healthz").is_ok());
    let starter_log = dir.join("logs/starter-0.log");
    wait_for(|| !stamps(&starter_log, "start").is_empty());

    // 1. start -> first instruction
    let mut start_ms = Vec::new();
    for _ in 0..RUNS {
        let before = stamps(&starter_log, "start").len();
        assert_eq!(
            cuvisor::control::request(&socket, "POST", "/models/starter/stop")
                .unwrap()
                .0,
            200
        );
        wait_for(|| {
            let (_, body) = cuvisor::control::request(&socket, "GET", "/models/starter").unwrap();
            body.contains("\"state\": \"stopped\"")
        });
        let t0 = now_ns();
        assert_eq!(
            cuvisor::control::request(&socket, "POST", "/models/starter/start")
                .unwrap()
                .0,
            200
        );
        wait_for(|| stamps(&starter_log, "start").len() > before);
        let t1 = *stamps(&starter_log, "start").last().unwrap();
        start_ms.push((t1 - t0) as f64 / 1e6);
    }

    // 2. crash -> replacement
    let crasher_log = dir.join("logs/crasher-0.log");
    wait_for(|| stamps(&crasher_log, "start").len() > RUNS + 1);
    let (starts, exits) = (stamps(&crasher_log, "start"), stamps(&crasher_log, "exit"));
    let replace_ms: Vec<f64> = exits
        .iter()
        .zip(starts.iter().skip(1))
        .map(|(e, s)| (s - e) as f64 / 1e6)
        .take(RUNS)
        .collect();
    sup.stop();

    // 3. baseline: unshare
    let mut unshare_ms = Vec::new();
    for _ in 0..RUNS {
        let t0 = now_ns();
        let out = Command::new("unshare")
            .args(["--fork", "--pid", "--mount-proc"])
            .arg(&stamp)
            .arg("once")
            .output()
            .expect("unshare");
        let text = String::from_utf8_lossy(&out.stdout);
        let t1: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("start ")?.parse().ok())
            .expect("a start stamp");
        unshare_ms.push((t1 - t0) as f64 / 1e6);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("| what | median (ms) |");
    println!("|---|---|");
    println!(
        "| cuvisor: POST start to the worker's first instruction (4 namespaces, 3 cgroup limits) | {:.2} |",
        median(start_ms)
    );
    println!(
        "| cuvisor: worker crash to its replacement's first instruction (1 ms backoff) | {:.2} |",
        median(replace_ms)
    );
    println!(
        "| baseline: unshare --fork --pid --mount-proc, spawn to first instruction | {:.2} |",
        median(unshare_ms)
    );
}

#[path = "support/supervise.rs"]
mod supervise;
mod support;
