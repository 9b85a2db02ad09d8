//! PyTorch and CuPy, unmodified from PyPI, on the fake GPU under the shim: NVIDIA's own
//! runtime inside them reaches the fake driver (cuda_stubs/libcuda_darkapi.c). The
//! scenarios are in tests/frameworks/checks.py; kernels run as no-ops, so only memory,
//! copies and errors are asserted.

mod common;
use common::frameworks::*;
use common::*;
use cuvisor::ledger::LedgerFile;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const QUOTA: u64 = GIB;

fn checks() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks/checks.py")
}

/// `checks.py SCENARIO` under the shim, as model `model` with a 1 GiB quota on a 16 GiB
/// fake H100 whose driver is CUDA 13.5, with its ledgers in `ledgers`.
fn scenario(name: &str, model: &str, ledgers: &Path) -> Command {
    scenario_in(&TORCH_ENV, name, model, ledgers)
}

/// The two PyTorch builds: 2.15 with NVIDIA's runtime 13.2, 2.9 with 12.8.
const TORCHES: [&PythonEnv; 2] = [&TORCH_ENV, &TORCH_CU12_ENV];

fn scenario_in(env: &PythonEnv, name: &str, model: &str, ledgers: &Path) -> Command {
    let mut cmd = on_fake_driver(framework_python(env));
    cmd.arg(checks())
        .arg(name)
        .env("LD_PRELOAD", shim_path())
        .env("CUVISOR_LEDGER_DIR", ledgers)
        .env("CUVISOR_MODEL", model)
        .env("CUVISOR_QUOTA", QUOTA.to_string())
        .env("FAKE_CUDA_DRIVER_VERSION", FRAMEWORK_DRIVER_VERSION)
        .env("FAKE_CUDA_DEVICE_MEM", "16GiB")
        .env_remove("PYTORCH_CUDA_ALLOC_CONF");
    cmd
}

/// A running scenario, read up to each checkpoint.
struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Running {
            child,
            stdin,
            stdout,
        }
    }

    /// The lines up to `checkpoint NAME` (not included).
    fn until(&mut self, name: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "the scenario ended before checkpoint {name}; it printed {seen:?}"
            );
            let line = line.trim_end().to_owned();
            if line == format!("checkpoint {name}") {
                return seen;
            }
            seen.push(line);
        }
    }

    fn resume(&mut self) {
        writeln!(self.stdin).unwrap();
    }

    /// The remaining lines; the scenario must succeed.
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the scenario failed ({status}); it printed {rest}"
        );
        rest.lines().map(str::to_owned).collect()
    }
}

fn ledger_used(dir: &Path, model: &str) -> u64 {
    LedgerFile::open(dir, model)
        .unwrap()
        .snapshot()
        .unwrap()
        .used
}

#[test]
fn pytorch_sees_the_quota_as_its_device_and_nvml_agrees() {
    if !frameworks_enabled("frameworks") {
        return;
    }
    for torch in TORCHES {
        let ledgers = ledger_dir();
        let out = run(&mut scenario_in(torch, "torch-basics", "basics", &ledgers));
        assert!(out.status.success(), "{}: {}", torch.pins[0], stderr(&out));
        assert_eq!(
            lines(&out),
            [
                "available True devices 1",
                "total_memory 1073741824 capability 9.0 sms 132",
                "mem_get_info 1073741824 1073741824",
                "reserved 20971520 allocated 4194304", // one 20 MiB segment for a 4 MiB tensor
                "roundtrip True",
                "events timed True",
                "seeded",
                // What nvidia-smi's library says inside the model: its own 24 MiB (two
                // segments and a small block), not the device's.
                "nvml device_memory_used 25165824",
            ],
            "{}",
            torch.pins[0]
        );
    }
}

/// The three allocator modes: tensors up to the quota, then `torch.OutOfMemoryError`;
/// `empty_cache()` gives everything back, and the ledger agrees at each step.
#[test]
fn pytorch_allocators_are_held_to_the_quota_and_give_it_back() {
    if !frameworks_enabled("frameworks") {
        return;
    }
    for (mode, conf, tensors, reserved) in [
        // 256 MiB segments, exactly four.
        ("default", "", 4, QUOTA),
        // Mapped in 20 MiB pieces: a 256 MiB tensor takes 260 MiB, so a fourth does not
        // fit in what three leave (as on a real 1 GiB device); its partial mapping is
        // unmapped again.
        ("expandable", "expandable_segments:True", 3, 3 * 260 * MIB),
        // Stream-ordered allocations of 256 MiB each.
        ("cudaMallocAsync", "backend:cudaMallocAsync", 4, QUOTA),
    ] {
        for torch in TORCHES {
            let mode = format!("{mode}, {}", torch.pins[0]);
            let ledgers = ledger_dir();
            let model = "quota";
            let mut cmd = scenario_in(torch, "torch-quota", model, &ledgers);
            if !conf.is_empty() {
                cmd.env("PYTORCH_CUDA_ALLOC_CONF", conf);
            }
            let mut s = Running::start(cmd);
            assert_eq!(
                s.until("full"),
                [
                    "mem_get_info 1073741824 1073741824".to_owned(),
                    format!("tensors {tensors} then OutOfMemoryError"),
                    format!(
                        "reserved {reserved} mem_get_info {} 1073741824",
                        QUOTA - reserved
                    ),
                ],
                "{mode}"
            );
            assert_eq!(ledger_used(&ledgers, model), reserved, "{mode}");
            s.resume();
            assert_eq!(
                s.until("empty"),
                [
                    format!("freed: reserved {reserved}"), // cached until asked
                    "empty_cache: reserved 0 mem_get_info 1073741824 1073741824".to_owned(),
                ],
                "{mode}"
            );
            assert_eq!(ledger_used(&ledgers, model), 0, "{mode}");
            s.resume();
            assert!(s.finish().is_empty());
        }
    }
}

#[test]
fn two_pytorch_processes_of_one_model_share_its_quota() {
    if !frameworks_enabled("frameworks") {
        return;
    }
    for torch in TORCHES {
        let ledgers = ledger_dir();
        let out = run(&mut scenario_in(torch, "torch-share", "shared", &ledgers));
        assert!(out.status.success(), "{}: {}", torch.pins[0], stderr(&out));
        assert_eq!(
            lines(&out),
            [
                "rank 0 2 MiB more: OutOfMemoryError",
                "rank 0 both hold 512 MiB: mem_get_info 0 1073741824",
                "rank 1 both hold 512 MiB: mem_get_info 0 1073741824",
                "exit codes 0 0",
            ],
            "{}",
            torch.pins[0]
        );
    }
}

#[test]
fn a_pytorch_process_keeps_its_tensors_bit_exact_across_hibernate_and_wake() {
    if !frameworks_enabled("frameworks") {
        return;
    }
    for torch in TORCHES {
        let ledgers = ledger_dir();
        let mut cmd = scenario_in(torch, "torch-hibernate", "sleepy", &ledgers);
        cmd.env("CUVISOR_HIBERNATE", "on");
        let mut s = Running::start(cmd);
        assert_eq!(s.until("loaded"), ["loaded 67108864"]);
        let cuvisor = |action: &str| {
            let out = run(Command::new(env!("CARGO_BIN_EXE_cuvisor"))
                .args(["ledger", action, "--model", "sleepy", "--dir"])
                .arg(&ledgers));
            assert!(out.status.success(), "{action}: {}", stderr(&out));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // The caching allocator's 64 MiB segment moves to the host, and back.
        let hibernated = cuvisor("hibernate");
        assert!(
            hibernated.starts_with(
                "model sleepy: hibernate done: 64.0 MiB moved, 0 B pinned, 1 process(es), "
            ),
            "{hibernated}"
        );
        s.resume();
        assert_eq!(s.until("read"), ["while hibernated: intact True"]);
        let woken = cuvisor("wake");
        assert!(
            woken.starts_with(
                "model sleepy: wake done: 64.0 MiB moved, 0 B pinned, 1 process(es), "
            ),
            "{woken}"
        );
        s.resume();
        assert_eq!(s.finish(), ["after wake: intact True"], "{}", torch.pins[0]);
    }
}

#[test]
fn cupy_pool_is_held_to_the_quota_and_nvrtc_kernels_launch() {
    if !frameworks_enabled("frameworks") {
        return;
    }
    let ledgers = ledger_dir();
    let out = run(&mut scenario("cupy", "cupy", &ledgers));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        [
            "runtime 13020 driver 13050",
            "totalGlobalMem 1073741824 sms 132",
            "memGetInfo 1073741824 1073741824",
            "pool used 268435456 total 268435456",
            "roundtrip True",
            "arrays 4 then OutOfMemoryError",
            "memGetInfo 0 1073741824",
            "free_all_blocks: pool total 0 memGetInfo 1073741824 1073741824",
            "nvrtc compile and launch: ok",
        ]
    );
}

/// JAX as far as it goes: its device, XLA's pool sized from the quota (75% of it, with
/// `XLA_PYTHON_CLIENT_PREALLOCATE` on or off), copies, a compiled launch, and
/// `RESOURCE_EXHAUSTED` past the pool.
#[test]
fn jax_sizes_its_pool_to_the_quota() {
    if !frameworks_enabled("frameworks") {
        return;
    }
    for preallocate in ["true", "false"] {
        let ledgers = ledger_dir();
        let mut cmd = scenario_in(&JAX_ENV, "jax", "jax", &ledgers);
        cmd.env("CUVISOR_QUOTA", "4GiB")
            .env("XLA_PYTHON_CLIENT_PREALLOCATE", preallocate)
            .env("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1"); // it wants CUPTI's private table
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            lines(&out),
            [
                "devices ['gpu']",
                "bytes_limit 3221225472 bytes_in_use 4194304",
                "roundtrip True",
                "compiled and launched (1048576,)",
                "3 GiB: RESOURCE_EXHAUSTED",
            ],
            "XLA_PYTHON_CLIENT_PREALLOCATE={preallocate}"
        );
    }
}
