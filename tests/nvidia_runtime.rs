//! NVIDIA's own CUDA runtime (pinned wheels from PyPI: 12.4, 12.9 and 13.0, shared and
//! static) on the fake GPU, alone and under the shim, through a C client that uses only
//! the runtime API (`cuda_stubs/probes/nvrt_probe.c`). The runtime resolves the driver
//! through cuGetProcAddress_v2 and asks for its private tables (libcuda_darkapi.c).

mod common;
use common::frameworks::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The probe on NVIDIA's shared runtime `label`, on a driver of CUDA 13.0.
fn shared(label: &str) -> Command {
    let (_, _, lib, _) = RUNTIMES.iter().find(|r| r.0 == label).unwrap();
    let mut cmd = on_fake_driver(stub_dir().join("nvrt_probe"));
    cmd.env("NVRT_LIB", nvidia_runtime(label).join(lib))
        .env("FAKE_CUDA_DRIVER_VERSION", "13000");
    cmd
}

/// The probe linked with NVIDIA's static runtime `label` (as CuPy, cuBLAS and NCCL embed
/// it), built here with the C compiler, once per run of this test binary.
fn static_probe(label: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let exe = target_dir().join(format!("nvrt_probe_static_{label}"));
    if built.iter().any(|b| b == label) {
        return exe;
    }
    let (_, _, _, archive) = RUNTIMES.iter().find(|r| r.0 == label).unwrap();
    let archive = nvidia_runtime(label).join(archive.expect("a static archive"));
    let props = if label.starts_with("12.") {
        "cudaGetDeviceProperties_v2"
    } else {
        "cudaGetDeviceProperties"
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda_stubs/probes");
    let out = run(Command::new("cc")
        .args(["-std=gnu11", "-D_GNU_SOURCE", "-DSTATIC_RT"])
        .arg(format!("-DPROPS_FN={props}"))
        .arg("-I")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg(src.join("nvrt_probe.c"))
        .arg(&archive)
        .args(["-ldl", "-lpthread", "-lrt"]));
    assert!(
        out.status.success(),
        "linking the static runtime: {}",
        stderr(&out)
    );
    built.push(label.to_owned());
    exe
}

fn statically_linked(label: &str) -> Command {
    let mut cmd = on_fake_driver(static_probe(label));
    cmd.env("FAKE_CUDA_DRIVER_VERSION", "13000");
    cmd
}

const CHECKS: &str = "version count props info alloc 1GiB roundtrip 0 priority stream event \
                      async 1M free-async 1 launch sync entry cuMemAlloc free 0 info reset info last";

/// What every runtime answers on a 2 GiB fake H100 (13.0 passes an oversized block on to
/// the driver, which answers CUDA_ERROR_INVALID_VALUE; 12.x refuses it itself with
/// cudaErrorInvalidConfiguration, 9).
fn expected(runtime_version: u32) -> Vec<String> {
    let bad_block = if runtime_version >= 13000 { 1 } else { 9 };
    [
        format!("version -> 0 0 {runtime_version} 13000"),
        "count -> 0 1".into(),
        "props -> 0 2147483648 9.0 132".into(),
        "info -> 0 2147483648 2147483648".into(),
        "alloc 1GiB -> 0 #0".into(),
        "roundtrip 0 -> 0 ok".into(),
        "priority -> 0 0 -5".into(),
        "stream -> 0".into(),
        "event -> 0 timed".into(),
        "async 1M -> 0 #1".into(),
        "free-async 1 -> 0".into(),
        format!("launch -> 0, 2048 threads -> {bad_block}, last {bad_block}"),
        "sync -> 0".into(),
        "entry cuMemAlloc -> 0 status=0 found".into(),
        "free 0 -> 0".into(),
        "info -> 0 2147483648 2147483648".into(),
        "reset -> 0".into(),
        "info -> 0 2147483648 2147483648".into(),
        "last -> 0".into(),
    ]
    .into()
}

fn runtime_version(label: &str) -> u32 {
    match label {
        "12.4" => 12040,
        "12.9" => 12090,
        _ => 13000,
    }
}

/// The census: the tables the runtime was served and the slots it called, from the fake's
/// report; a table or slot the fake does not know fails here, loudly, by name.
fn census(report: &serde_json::Value) -> Vec<String> {
    let calls = report["calls"].as_object().expect("calls");
    assert_eq!(
        calls.get("darkapi:unknown_table"),
        None,
        "a runtime asked for a table the fake does not know (FAKE_CUDA_TRACE=1 names it)"
    );
    assert_eq!(
        calls.get("darkapi:trap"),
        None,
        "a runtime called a slot the fake does not know (its stderr names it)"
    );
    calls
        .keys()
        .filter(|k| k.starts_with("darkapi:") && k.contains('['))
        .cloned()
        .collect()
}

#[test]
fn each_runtime_passes_its_checks_on_the_fake_and_the_census_knows_every_call() {
    if !frameworks_enabled("nvidia_runtime") {
        return;
    }
    let dir = TempDir::new("nvrt");
    for (label, ..) in RUNTIMES {
        let report = dir.path(&format!("{label}.json"));
        let out = run_script(
            shared(label)
                .env("FAKE_CUDA_DEVICE_MEM", "2GiB")
                .env("FAKE_CUDA_REPORT", &report),
            CHECKS,
        );
        assert_eq!(out, expected(runtime_version(label)), "runtime {label}");
        let report = common::report(&report);
        let mut slots = census(&report);
        slots.sort();
        assert_eq!(
            slots,
            [
                "darkapi:CONTEXT_CHECKS[2]",
                "darkapi:CONTEXT_CHECKS[3]",
                "darkapi:CONTEXT_LOCAL_STORAGE[0]",
                "darkapi:CONTEXT_LOCAL_STORAGE[1]",
                "darkapi:CONTEXT_LOCAL_STORAGE[2]",
                "darkapi:CUDART_INTERFACE[2]",
                "darkapi:INTEGRITY_CHECK[1]",
                "darkapi:TOOLS_RUNTIME_CALLBACK_HOOKS[2]",
                "darkapi:TOOLS_RUNTIME_CALLBACK_HOOKS[6]",
            ],
            "runtime {label}"
        );
        // The integrity check, once per variant (version + 0, 1, 2); the runtime's
        // context-local values were destroyed by the reset; the kernel came in through
        // the library calls of its version.
        assert_eq!(calls(&report, "darkapi:INTEGRITY_CHECK[1]"), 3, "{label}");
        assert!(
            calls(&report, "darkapi:context_local_storage_destructors") >= 1,
            "{label}: {report}"
        );
        assert_eq!(calls(&report, "cuLibraryLoadData"), 1, "{label}");
        assert_eq!(
            calls(&report, "cuLaunchKernel"),
            if label == "13.0" { 2 } else { 1 },
            "{label}"
        );
        let lookup = if label == "13.0" {
            "cuLibraryGetKernel"
        } else {
            "cuModuleGetFunction"
        };
        assert_eq!(calls(&report, lookup), 1, "{label}");
        // Runtimes from 12.9 on ask for the requirements table first; it is refused.
        let refused = if label == "12.4" { 0 } else { 1 };
        assert_eq!(calls(&report, "darkapi:refused_table"), refused, "{label}");
    }
}

#[test]
fn the_static_runtimes_pass_the_same_checks() {
    if !frameworks_enabled("nvidia_runtime") {
        return;
    }
    for label in ["12.9", "13.0"] {
        let out = run_script(
            statically_linked(label).env("FAKE_CUDA_DEVICE_MEM", "2GiB"),
            CHECKS,
        );
        assert_eq!(
            out,
            expected(runtime_version(label)),
            "static runtime {label}"
        );
    }
}

#[test]
fn a_runtime_newer_than_the_driver_is_refused_as_on_a_real_node() {
    if !frameworks_enabled("nvidia_runtime") {
        return;
    }
    let out = run_script(
        shared("13.0").env_remove("FAKE_CUDA_DRIVER_VERSION"),
        "version count",
    );
    // cudaErrorInsufficientDriver: the fake's default driver is CUDA 12.9.
    assert_eq!(out, ["version -> 0 0 13000 12090", "count -> 35 -1"]);
    let out = run(shared("12.4")
        .env("FAKE_CUDA_DRIVER_VERSION", "13.0")
        .arg("count"));
    assert!(
        stderr(&out).contains("FAKE_CUDA_DRIVER_VERSION=\"13.0\" is invalid: expected a CUDA version as major*1000 + minor*10"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_integrity_answer_or_a_withheld_table_fails_every_call() {
    if !frameworks_enabled("nvidia_runtime") {
        return;
    }
    for (label, ..) in RUNTIMES {
        // cudaErrorSoftwareValidityNotEstablished: "integrity checks failed".
        let out = run_script(
            shared(label).env("FAKE_CUDA_DARKAPI_INTEGRITY", "wrong"),
            "count alloc 1",
        );
        assert_eq!(out, ["count -> 103 -1", "alloc 1 -> 103"], "{label}");
        for table in [
            "CUDART_INTERFACE",
            "TOOLS_RUNTIME_CALLBACK_HOOKS",
            "TOOLS_TLS",
            "CONTEXT_LOCAL_STORAGE",
            "CONTEXT_CHECKS",
            "INTEGRITY_CHECK",
        ] {
            let out = run(shared(label)
                .env("FAKE_CUDA_DARKAPI_WITHHOLD", table)
                .args(["count", "alloc", "1"]));
            // The runtime passes on the driver's CUDA_ERROR_NOT_FOUND (500) for every
            // table, but 12.x runs without the context checks (13.0 needs them); without
            // the thread-local, context-local (or, for 13.0, context-check) tables, its
            // teardown at exit dies of SIGSEGV, as the research recorded.
            let runs = table == "CONTEXT_CHECKS" && label != "13.0";
            let expected = if runs {
                ["count -> 0 1", "alloc 1 -> 0 #0"]
            } else {
                ["count -> 500 -1", "alloc 1 -> 500"]
            };
            assert_eq!(lines(&out), expected, "runtime {label} without {table}");
            let crashes = matches!(table, "TOOLS_TLS" | "CONTEXT_LOCAL_STORAGE")
                || (table == "CONTEXT_CHECKS" && label == "13.0");
            use std::os::unix::process::ExitStatusExt;
            let signal = out.status.signal();
            assert_eq!(
                signal,
                crashes.then_some(11),
                "runtime {label} without {table}: {}",
                out.status
            );
        }
    }
}

#[test]
fn under_the_shim_the_runtime_sees_the_quota_and_its_memory_is_managed() {
    if !frameworks_enabled("nvidia_runtime") {
        return;
    }
    let dir = TempDir::new("nvrt-shim");
    for (label, ..) in RUNTIMES {
        let report = dir.path(&format!("{label}.json"));
        let mut cmd = shimmed(shared(label));
        cmd.env("CUVISOR_MODEL", "rt")
            .env("CUVISOR_QUOTA", "1GiB")
            .env("CUVISOR_LOG", "info")
            .env("FAKE_CUDA_REPORT", &report)
            .args(
                "info alloc 512MiB alloc 512MiB alloc 1 async 1M info free 0 async 1M managed 1M \
                 roundtrip 1 info reset info alloc 1GiB info"
                    .split(' '),
            );
        let out = run(&mut cmd);
        assert!(out.status.success(), "{label}: {}", stderr(&out));
        assert_eq!(
            lines(&out),
            [
                "info -> 0 1073741824 1073741824", // the quota, not the 16 GiB device
                "alloc 512MiB -> 0 #0",
                "alloc 512MiB -> 0 #1",
                "alloc 1 -> 2", // cudaErrorMemoryAllocation
                "async 1M -> 2",
                "info -> 0 0 1073741824",
                "free 0 -> 0",
                "async 1M -> 0 #2",
                "managed 1M -> 0 #3",
                "roundtrip 1 -> 0 ok",
                "info -> 0 534773760 1073741824",
                // cudaDeviceReset destroys the context's allocations: the quota is whole
                // again (before the shim's fix it stayed at 514 MiB used).
                "reset -> 0",
                "info -> 0 1073741824 1073741824",
                "alloc 1GiB -> 0 #4",
                "info -> 0 0 1073741824",
            ],
            "runtime {label}"
        );
        let err = stderr(&out);
        assert!(
            err.contains("device 0 reset: 538968064 bytes of its allocations uncharged"),
            "{label}: {err}"
        );
        // The runtime found the driver through cuGetProcAddress_v2 (by dlsym) and got the
        // wrappers through it; cudaMalloc became managed memory with advice.
        assert!(
            err.contains("wrappers handed out through dlsym: cuGetProcAddress_v2=1"),
            "{label}: {err}"
        );
        let resolved = err
            .lines()
            .find(|l| l.contains("wrappers handed out through cuGetProcAddress:"))
            .unwrap_or_else(|| panic!("{label}: no cuGetProcAddress line in {err}"));
        for wrapper in [
            "cuMemAlloc_v2=1",
            "cuMemAllocAsync=1",
            "cuMemGetInfo_v2=1",
            "cuMemFree_v2=1",
        ] {
            assert!(
                resolved.contains(wrapper),
                "{label}: {wrapper} not in {resolved}"
            );
        }
        let report = common::report(&report);
        assert_eq!(calls(&report, "cuMemAlloc_v2"), 0, "{label}: {report}");
        assert_eq!(calls(&report, "cuMemAllocManaged"), 4, "{label}: {report}");
        assert_eq!(calls(&report, "cuMemAllocAsync"), 1, "{label}: {report}");
    }
}

#[test]
fn the_static_runtime_under_the_shim_is_held_to_the_quota() {
    if !frameworks_enabled("nvidia_runtime") {
        return;
    }
    for label in ["12.9", "13.0"] {
        let mut cmd = shimmed(statically_linked(label));
        cmd.env("CUVISOR_MODEL", "static")
            .env("CUVISOR_QUOTA", "256MiB");
        let out = run_script(
            &mut cmd,
            "info alloc 200MiB alloc 100MiB async 56MiB async 1 info",
        );
        assert_eq!(
            out,
            [
                "info -> 0 268435456 268435456",
                "alloc 200MiB -> 0 #0",
                "alloc 100MiB -> 2",
                "async 56MiB -> 0 #1",
                "async 1 -> 2",
                "info -> 0 0 268435456",
            ],
            "static runtime {label}"
        );
    }
}

#[test]
fn device_mode_keeps_plain_device_memory() {
    if !frameworks_enabled("nvidia_runtime") {
        return;
    }
    let dir = TempDir::new("nvrt-device");
    let report = dir.path("r.json");
    let mut cmd = shimmed(shared("12.9"));
    cmd.env("CUVISOR_MODEL", "dev")
        .env("CUVISOR_QUOTA", "1GiB")
        .env("CUVISOR_MODE", "device")
        .env("FAKE_CUDA_REPORT", &report);
    let out = run_script(&mut cmd, "alloc 1GiB alloc 1 info");
    assert_eq!(
        out,
        [
            "alloc 1GiB -> 0 #0",
            "alloc 1 -> 2",
            "info -> 0 0 1073741824"
        ]
    );
    let report = common::report(&report);
    assert_eq!(calls(&report, "cuMemAlloc_v2"), 1);
    assert_eq!(calls(&report, "cuMemAllocManaged"), 0);
}
