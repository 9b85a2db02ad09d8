//! The README's first command: `cargo run --example demo`.
//!
//! Runs small CUDA programs on the fake GPU (no NVIDIA hardware needed) and narrates what
//! they see: the configured device size, out-of-memory past it, managed memory that
//! oversubscribes the device with least-recently-used eviction, the per-process report the
//! test suite reads, then the same programs under the cuvisor shim with a quota, and last
//! two models on one fake GPU under the supervisor (`cuvisor run`), and two models behind
//! the front door, one scaled to zero, with the supervisor embedded in the demo
//! (`support/front_door.rs`). Each step prints the command line, so it can be replayed by
//! hand.

#[path = "support/front_door.rs"]
mod front_door;
#[path = "support/supervise.rs"]
mod supervise;
mod support;
use support::shim_path;

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    supervise::supervise_if_asked();
    // The supervisor's log lines go to `tracing`: print them on stderr.
    cuvisor::log::init(Default::default(), false);
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
    two_models(&stubs);
    let dir = std::env::temp_dir().join(format!("cuvisor-demo-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let served = front_door::two_models_behind_the_front_door(&stubs, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    if !served {
        eprintln!("the front door did not answer as expected");
        std::process::exit(1);
    }
}

/// Two models on one 4 GiB fake GPU under the supervisor; their quotas (3 + 2 GiB) add up
/// to more than the device: managed memory makes that possible.
fn two_models(stubs: &Path) {
    let dir = std::env::temp_dir().join(format!("cuvisor-demo-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    // As root each worker gets its own PID, mount, IPC and UTS namespaces and a host memory
    // limit; otherwise it runs as a plain child process.
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let isolation = if root {
        "memory_limit = \"512MiB\"\n"
    } else {
        "isolation = { pid = false, mount = false, ipc = false, uts = false }\n"
    };
    let probe = stubs.join("driver_probe");
    let env = format!(
        "env = {{ LD_LIBRARY_PATH = \"{}\", FAKE_CUDA_DEVICE_MEM = \"4GiB\", FAKE_CUDA_STATE = \"{}\" }}",
        stubs.display(),
        dir.join("gpu.state").display()
    );
    let config = format!(
        "[supervisor]\nsocket = \"{socket}\"\nledger_dir = \"{ledgers}\"\ngrace_period = \"2s\"\n\n\
         [[model]]\nname = \"llama\"\ncommand = \"{probe}\"\nargs = [\"init\", \"alloc\", \"2GiB\", \"info\", \"sleep\", \"600000\"]\n\
         gpu_quota = \"3GiB\"\n{env}\n{isolation}\n\
         [[model]]\nname = \"qwen\"\ncommand = \"{probe}\"\nargs = [\"init\", \"alloc\", \"1GiB\", \"alloc\", \"2GiB\", \"info\", \"sleep\", \"600000\"]\n\
         gpu_quota = \"2GiB\"\n{env}\n{isolation}",
        socket = dir.join("control.sock").display(),
        ledgers = dir.join("ledgers").display(),
        probe = probe.display(),
    );
    let path = dir.join("cuvisor.toml");
    std::fs::write(&path, &config).expect("write the configuration");
    println!(
        "Two models on one 4 GiB GPU under the supervisor: llama (quota 3 GiB) takes 2 GiB, qwen\n\
         (quota 2 GiB) takes 1 GiB and is refused 2 GiB more. The configuration, {}:\n",
        path.display()
    );
    for line in config.lines() {
        println!("    {line}");
    }
    if !root {
        println!(
            "\n  (not root: without namespaces and cgroups; run the demo as root to see them)"
        );
    }
    println!("\n  $ target/debug/cuvisor run {}", path.display());
    let log = dir.join("supervisor.log");
    let mut supervisor =
        supervise::spawn_supervisor(&path, std::fs::File::create(&log).expect("a log file"));
    let socket = dir.join("control.sock");
    let settled = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let Ok((200, body)) = cuvisor::control::request(&socket, "GET", "/models") else {
            return false;
        };
        let Ok(status) = serde_json::from_str::<cuvisor::status::Status>(&body) else {
            return false;
        };
        status.models.len() == 2
            && status
                .models
                .iter()
                .all(|m| m.gpu_used_bytes.unwrap_or(0) > 0)
            && status.models.iter().any(|m| m.gpu_refusals == Some(1))
    });
    if settled {
        let (_, body) = cuvisor::control::request(&socket, "GET", "/models").expect("status");
        let status: cuvisor::status::Status = serde_json::from_str(&body).expect("JSON");
        println!(
            "  $ target/debug/cuvisor status --socket {}",
            socket.display()
        );
        for line in cuvisor::control::status_table(&status).lines() {
            println!("    {line}");
        }
        let (_, metrics) = cuvisor::control::request(&socket, "GET", "/metrics").expect("metrics");
        println!(
            "  $ curl --unix-socket {} http://cuvisor/metrics | grep gpu_",
            socket.display()
        );
        for line in metrics.lines().filter(|l| l.starts_with("cuvisor_gpu_")) {
            println!("    {line}");
        }
    }
    // SAFETY: SIGTERM to our own child: it stops its workers and exits.
    unsafe { libc::kill(supervisor.id() as i32, libc::SIGTERM) };
    let _ = supervisor.wait();
    println!("  The supervisor's log (workers' lines are prefixed [model/instance]):");
    for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
        println!("    {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !settled {
        eprintln!("the two models did not reach their allocations");
        std::process::exit(1);
    }
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
