//! The fake GPU's surfaces beyond allocation: driver entry point access, NVML, the
//! FAKE_CUDA_* configuration, the shared device state and the per-process report.

mod common;
use common::*;
use cuvisor::size::parse_size;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

#[test]
fn get_proc_address_selects_the_variant_by_version_and_stream_flag() {
    let out = run_script(
        &mut driver_probe(),
        "procaddr cuMemAlloc 2000 0 procaddr cuMemAlloc 3010 0 procaddr cuMemAlloc 3020 0 \
         procaddr cuMemAlloc 12090 0 procaddr cuMemAlloc 12090 2 \
         procaddr cuMemAllocAsync 11010 0 procaddr cuMemAllocAsync 11020 0 \
         procaddr cuMemAllocAsync 11020 1 procaddr cuMemAllocAsync 12000 2 \
         procaddr cuMemcpyHtoD 12000 2 procaddr cuMemAdvise 12000 0 procaddr cuMemAdvise 12020 0 \
         procaddr cuGetProcAddress 11030 0 procaddr cuGetProcAddress 12000 0 \
         procaddr cuNoSuchFunction 12000 0 procaddr cuMemAlloc_v2 12000 0 \
         procaddr cuMemAlloc 13000 0 procaddr cuMemAlloc 12000 3",
    );
    assert_eq!(
        out,
        [
            "procaddr cuMemAlloc 2000 0 -> 0 status=0 cuMemAlloc@libcuda.so.1", // the 32-bit ABI
            "procaddr cuMemAlloc 3010 0 -> 0 status=0 cuMemAlloc@libcuda.so.1",
            "procaddr cuMemAlloc 3020 0 -> 0 status=0 cuMemAlloc_v2@libcuda.so.1",
            "procaddr cuMemAlloc 12090 0 -> 0 status=0 cuMemAlloc_v2@libcuda.so.1",
            "procaddr cuMemAlloc 12090 2 -> 0 status=0 cuMemAlloc_v2@libcuda.so.1", // no per-thread variant: legacy
            "procaddr cuMemAllocAsync 11010 0 -> 0 status=2 NULL", // VERSION_NOT_SUFFICIENT
            "procaddr cuMemAllocAsync 11020 0 -> 0 status=0 cuMemAllocAsync@libcuda.so.1",
            "procaddr cuMemAllocAsync 11020 1 -> 0 status=0 cuMemAllocAsync@libcuda.so.1",
            "procaddr cuMemAllocAsync 12000 2 -> 0 status=0 cuMemAllocAsync_ptsz@libcuda.so.1",
            "procaddr cuMemcpyHtoD 12000 2 -> 0 status=0 cuMemcpyHtoD_v2_ptds@libcuda.so.1",
            "procaddr cuMemAdvise 12000 0 -> 0 status=0 cuMemAdvise@libcuda.so.1",
            "procaddr cuMemAdvise 12020 0 -> 0 status=0 cuMemAdvise_v2@libcuda.so.1",
            "procaddr cuGetProcAddress 11030 0 -> 0 status=0 cuGetProcAddress@libcuda.so.1",
            "procaddr cuGetProcAddress 12000 0 -> 0 status=0 cuGetProcAddress_v2@libcuda.so.1",
            "procaddr cuNoSuchFunction 12000 0 -> 0 status=1 NULL", // SYMBOL_NOT_FOUND, still success
            "procaddr cuMemAlloc_v2 12000 0 -> 0 status=1 NULL",    // base names only
            "procaddr cuMemAlloc 13000 0 -> 1 status=99 NULL",      // newer than the driver (12.9)
            "procaddr cuMemAlloc 12000 3 -> 1 status=99 NULL",      // unknown flags
        ]
    );
}

/// A real libcuda hands out its own functions from cuGetProcAddress, even when a preloaded
/// library exports the same names: that is why the shim must wrap what the resolver
/// returns. A fake whose table bound to the interposer's exports would hide that.
#[test]
fn get_proc_address_returns_the_drivers_own_functions_whatever_is_preloaded() {
    // The shim in `off` mode exports every cu* name and substitutes nothing.
    let mut cmd = driver_probe_procaddr();
    cmd.env("LD_PRELOAD", shim_path())
        .env("CUVISOR_MODE", "off");
    assert_eq!(
        run_script(
            &mut cmd,
            "procaddr cuMemAlloc 3020 0 procaddr cuMemAllocAsync 11020 2 procaddr cuMemGetInfo 3020 0"
        ),
        [
            "procaddr cuMemAlloc 3020 0 -> 0 status=0 cuMemAlloc_v2@libcuda.so.1",
            "procaddr cuMemAllocAsync 11020 2 -> 0 status=0 cuMemAllocAsync_ptsz@libcuda.so.1",
            "procaddr cuMemGetInfo 3020 0 -> 0 status=0 cuMemGetInfo_v2@libcuda.so.1",
        ]
    );
}

#[test]
fn nvml_reports_the_same_device_as_the_driver() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_DEVICE_MEM", "8GiB"),
        "nvml init alloc 3GiB managed 1GiB prefetch 1 gpu nvml",
    );
    assert_eq!(
        out,
        [
            "nvml v1 -> 0 8589934592 8589934592 0",
            "nvml v2 -> 0 8589934592 8589934592 0 reserved=0",
            "nvml v2-wrong-version -> 25", // NVML_ERROR_ARGUMENT_VERSION_MISMATCH
            "init -> 0",
            "alloc 3GiB -> 0 #0",
            "managed 1GiB -> 0 #1",
            "prefetch 1 gpu -> 0",
            "nvml v1 -> 0 8589934592 4294967296 4294967296",
            "nvml v2 -> 0 8589934592 4294967296 4294967296 reserved=0",
            "nvml v2-wrong-version -> 25",
        ]
    );
}

#[test]
fn device_memory_accepts_the_quota_size_syntax_exactly_as_the_rust_parser() {
    for input in [
        "4096", "3K", "3KiB", "3KB", "5M", "5MiB", "5MB", "2G", "2GiB", "2GB", "1T", "1TiB", "1TB",
    ] {
        let expected = parse_size(input).unwrap();
        let out = run_script(
            driver_probe().env("FAKE_CUDA_DEVICE_MEM", input),
            "init total",
        );
        assert_eq!(
            out,
            ["init -> 0".to_owned(), format!("total -> 0 {expected}")],
            "{input}"
        );
    }
    for input in [
        "",
        "0",
        "G",
        "1.5G",
        "1g",
        "1 G",
        "-1",
        "16777217T",
        "99999999999999999999",
    ] {
        assert!(input == "0" || parse_size(input).is_err(), "{input}");
        let out = run(driver_probe()
            .env("FAKE_CUDA_DEVICE_MEM", input)
            .arg("init"));
        assert_eq!(lines(&out), ["init -> 3"], "{input}"); // CUDA_ERROR_NOT_INITIALIZED
        let err = stderr(&out);
        assert!(
            err.contains(&format!("FAKE_CUDA_DEVICE_MEM=\"{input}\" is invalid"))
                && err.contains("KiB/MiB/GiB/TiB"),
            "{input}: {err}"
        );
    }
}

#[test]
fn bad_settings_fail_initialization_with_one_clear_message_each() {
    let cases = [
        (
            "FAKE_CUDA_DEVICE_COUNT",
            "17",
            "expected a device count from 0 to 16",
        ),
        (
            "FAKE_CUDA_DEVICE_COUNT",
            "x",
            "expected a device count from 0 to 16",
        ),
        ("FAKE_CUDA_MANAGED", "yes", "expected 0 or 1"),
        ("FAKE_CUDA_POOLS", "2", "expected 0 or 1"),
        ("FAKE_CUDA_REPORT", "", "expected a file path"),
        ("FAKE_CUDA_STATE", "", "expected a file path"),
    ];
    for (var, value, why) in cases {
        let out = run(driver_probe().env(var, value).args(["init", "nvml"]));
        let err = stderr(&out);
        assert_eq!(lines(&out)[0], "init -> 3", "{var}={value}");
        assert_eq!(err.matches("fake-cuda:").count(), 1, "one message: {err}");
        assert!(
            err.contains(&format!("{var}=\"{value}\" is invalid: {why}")),
            "{var}: {err}"
        );
        // NVML fails to initialize too (NVML_ERROR_DRIVER_NOT_LOADED)
        assert_eq!(lines(&out)[1], "nvml v1 -> 9 0 0 0", "{var}={value}");
    }
}

#[test]
fn zero_devices_and_several_devices() {
    assert_eq!(
        run_script(driver_probe().env("FAKE_CUDA_DEVICE_COUNT", "0"), "init"),
        ["init -> 100"] // CUDA_ERROR_NO_DEVICE
    );
    assert_eq!(
        run_script(runtime_probe().env("FAKE_CUDA_DEVICE_COUNT", "3"), "count"),
        ["count -> 0 3"]
    );
}

#[test]
fn report_counts_calls_and_lists_leaks() {
    let dir = TempDir::new("report");
    let path = dir.path("report.jsonl");
    run_script(
        driver_probe().env("FAKE_CUDA_REPORT", &path),
        "init alloc 1M alloc 2M managed 3M free 0 async 1M",
    );
    run_script(
        runtime_probe().env("FAKE_CUDA_REPORT", &path),
        "alloc 5M free 0",
    );
    let all = reports(&path);
    assert_eq!(all.len(), 2, "one object per process");
    let driver = &all[0];
    assert!(driver["pid"].as_u64().unwrap() > 0);
    assert_eq!(calls(driver, "cuMemAlloc_v2"), 2);
    assert_eq!(calls(driver, "cuMemFree_v2"), 1);
    assert_eq!(calls(driver, "cuMemAllocManaged"), 1);
    // 1 + 2 MiB, the 1 MiB freed, then a 2 MiB pool reservation for the 1 MiB async allocation
    assert_eq!(driver["device_bytes"]["peak"], 4 * MIB);
    assert_eq!(driver["device_bytes"]["final"], 4 * MIB);
    assert_eq!(driver["managed_bytes"]["final"], 3 * MIB);
    assert_eq!(driver["leaked"]["count"], 3);
    assert_eq!(driver["leaked"]["bytes"], 2 * MIB + 3 * MIB + MIB);
    let kinds: Vec<&str> = driver["leaked"]["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"device") && kinds.contains(&"managed") && kinds.contains(&"pool"),
        "{kinds:?}"
    );
    let runtime = &all[1];
    assert_eq!(calls(runtime, "cudaMalloc"), 1);
    assert_eq!(
        calls(runtime, "cuMemAlloc_v2"),
        1,
        "cudart reached the driver"
    );
    // cudart resolved its driver table through the resolver (its self-lookup returned _v2)
    assert!(calls(runtime, "cuGetProcAddress_v2") > 20, "{runtime}");
    assert_eq!(calls(runtime, "cuGetProcAddress"), 0);
    assert_eq!(runtime["leaked"]["count"], 0);
}

/// Every entry point of the brief's allocation table, and every memory-information
/// surface, is implemented by the fake and exercised here.
#[test]
fn every_allocation_family_of_the_brief_is_exercised() {
    let dir = TempDir::new("coverage");
    let path = dir.path("report.jsonl");
    run_script(
        driver_probe().env("FAKE_CUDA_REPORT", &path),
        "init alloc 1M pitch 100 10 managed 1M async 1M pool-alloc 1M ptsz-alloc 1M free 0 free 1 \
         free 2 free-async 3 vmm 2M vmm-free 5 array 10 10 array-free 6 array3d 4 4 4 mipmap 8 8 2 \
         ipc 4 info legacy-info total legacy-total nvml legacy-alloc 1M",
    );
    run_script(
        runtime_probe().env("FAKE_CUDA_REPORT", &path),
        "info alloc 1M free 0 props",
    );
    let all = reports(&path);
    let required = [
        "cuMemAlloc_v2",
        "cuMemAllocPitch_v2",
        "cuMemAllocManaged",
        "cuMemAllocAsync",
        "cuMemAllocAsync_ptsz",
        "cuMemAllocFromPoolAsync",
        "cuMemAllocFromPoolAsync_ptsz",
        "cuMemFree_v2",
        "cuMemFreeAsync",
        "cuMemFreeAsync_ptsz",
        "cuMemCreate",
        "cuMemRelease",
        "cuMemAddressReserve",
        "cuMemAddressFree",
        "cuMemMap",
        "cuMemUnmap",
        "cuMemSetAccess",
        "cuArrayCreate_v2",
        "cuArray3DCreate_v2",
        "cuMipmappedArrayCreate",
        "cuArrayDestroy",
        "cuMipmappedArrayDestroy",
        "cuIpcGetMemHandle",
        "cuMemGetInfo",
        "cuMemGetInfo_v2",
        "cuDeviceTotalMem",
        "cuDeviceTotalMem_v2",
        "cuMemAlloc",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetMemoryInfo_v2",
        "cudaMemGetInfo",
        "cudaMalloc",
        "cudaFree",
        "cudaGetDeviceProperties_v2",
    ];
    for name in required {
        assert!(
            all.iter().any(|r| calls(r, name) > 0),
            "{name} was not exercised"
        );
    }
}

#[test]
fn processes_naming_one_state_file_share_one_gpu_and_dead_ones_are_reclaimed() {
    let dir = TempDir::new("shared");
    let state = dir.path("gpu.state");
    let gpu = |cmd: &mut std::process::Command| {
        cmd.env("FAKE_CUDA_STATE", &state)
            .env("FAKE_CUDA_DEVICE_MEM", "4GiB");
    };
    let spawn_holder = || {
        let mut holder = driver_probe();
        gpu(&mut holder);
        let mut child = holder
            .args(["init", "alloc", "3GiB", "wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        for expected in ["init -> 0", "alloc 3GiB -> 0 #0"] {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), expected);
        }
        (child, stdout) // the pipe stays open until the holder is done
    };
    let info_now = || {
        let mut cmd = driver_probe();
        gpu(&mut cmd);
        run_script(&mut cmd, "init info")
    };
    let full = ["init -> 0", "info -> 0 4294967296 4294967296"];

    // A second process sees the first one's memory in use.
    let (mut holder, _out) = spawn_holder();
    assert_eq!(info_now(), ["init -> 0", "info -> 0 1073741824 4294967296"]);
    // The holder exits normally: its memory goes back to the GPU.
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert_eq!(info_now(), full);

    // SIGKILLed while holding memory: reclaimed by the next process that looks.
    let (mut holder, _out) = spawn_holder();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(info_now(), full);

    // A process asking for another GPU shape is refused clearly.
    let mut other = driver_probe();
    other
        .env("FAKE_CUDA_STATE", &state)
        .env("FAKE_CUDA_DEVICE_MEM", "8GiB");
    let out = run(other.arg("init"));
    assert_eq!(lines(&out), ["init -> 3"]);
    assert!(stderr(&out).contains("settings differ"), "{}", stderr(&out));
}
