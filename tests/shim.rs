//! libcuvisor_preload.so as a black box: C programs (direct binding, dlsym, the
//! cuGetProcAddress path of NVIDIA's runtime, the runtime API) and cudarc, under
//! LD_PRELOAD, on the fake GPU. Exact error codes and numbers; the fake GPU's report shows
//! what reached the driver.

mod common;
use common::*;
use std::process::Command;

type Probe = fn() -> Command;
const DRIVER_PATHS: [(&str, Probe); 3] = [
    ("direct binding", driver_probe),
    ("dlsym", driver_probe_dlsym),
    ("cuGetProcAddress", driver_probe_procaddr),
];

/// Runs `script` under the shim with `vars`; returns its lines and its fake-GPU report.
fn under_shim(
    probe: Probe,
    vars: &[(&str, &str)],
    script: &str,
) -> (Vec<String>, serde_json::Value, String) {
    let dir = TempDir::new("shim");
    let report_path = dir.path("report.jsonl");
    let mut cmd = shimmed(probe());
    cmd.env("FAKE_CUDA_DEVICE_MEM", "1GiB")
        .env("FAKE_CUDA_REPORT", &report_path);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = run(cmd.args(script.split_whitespace()));
    assert!(
        out.status.success(),
        "{script}: {}\n{}",
        out.status,
        stderr(&out)
    );
    (lines(&out), report(&report_path), stderr(&out))
}

/// Each allocation family, by each way of reaching the driver: exactly the quota fits,
/// one unit more is refused with CUDA_ERROR_OUT_OF_MEMORY before the driver sees it, and
/// a free gives the quota back.
#[test]
fn quota_boundary_for_every_family_on_every_resolution_path() {
    // (script, the driver entry point that must have been called exactly once)
    let families = [
        ("alloc 8388608 alloc 1 info free 0 info", "cuMemAlloc_v2"),
        (
            "managed 8388608 managed 1 info free 0 info",
            "cuMemAllocManaged",
        ),
        (
            "async 8388608 async 1 info free-async 0 info",
            "cuMemAllocAsync",
        ),
        (
            "pool-alloc 8388608 pool-alloc 1 info free 0 info",
            "cuMemAllocFromPoolAsync",
        ),
        (
            "pitch 1024 8192 pitch 1 1 info free 0 info",
            "cuMemAllocPitch_v2",
        ),
        ("vmm 8M vmm 2M info vmm-free 0 info", "cuMemCreate"),
        (
            "array 1024 2048 array 1 1 info array-free 0 info",
            "cuArrayCreate_v2",
        ),
    ];
    for (path, probe) in DRIVER_PATHS {
        for (script, entry) in families {
            let (out, report, err) = under_shim(
                probe,
                &[
                    ("CUVISOR_QUOTA", "8MiB"),
                    ("CUVISOR_MODE", "device"),
                    ("CUVISOR_MODEL", "m1"),
                ],
                &format!("init {script}"),
            );
            let words: Vec<&str> = script.split_whitespace().collect();
            let first = format!(
                "{} {}",
                words[0],
                words[1..]
                    .iter()
                    .take_while(|w| w.parse::<u64>().is_ok() || w.ends_with('M'))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            assert_eq!(out[0], "init -> 0", "{path}: {script}");
            assert!(
                out[1].starts_with(&format!("{first} -> 0 #0")),
                "{path}: {script}: {out:?}"
            );
            assert!(
                out[2].ends_with("-> 2"),
                "{path}: {script}: one more must be refused: {out:?}"
            );
            assert_eq!(out[3], "info -> 0 0 8388608", "{path}: {script}");
            assert!(out[4].ends_with("-> 0"), "{path}: {script}: {out:?}");
            assert_eq!(out[5], "info -> 0 8388608 8388608", "{path}: {script}");
            assert_eq!(
                calls(&report, entry),
                1,
                "{path}: {script}: the refused call reached the driver"
            );
            assert_eq!(report["oom_errors"], 0, "{path}: {script}");
            assert_eq!(report["leaked"]["count"], 0, "{path}: {script}");
            assert!(
                err.contains("cuvisor: warn: model m1: ")
                    && err.contains(" bytes refused on GPU-")
                    && err.contains(": 8388608 of the quota's 8388608 bytes in use there"),
                "{path}: {script}: {err}"
            );
        }
    }
}

#[test]
fn the_runtime_and_its_entry_points_are_charged_too() {
    let (out, report, _) = under_shim(
        runtime_probe,
        &[("CUVISOR_QUOTA", "8MiB"), ("CUVISOR_MODE", "device")],
        "info props alloc 8388608 alloc 1 free 0 async 8388608 async 1 free-async 1 \
         entry cuMemAlloc entry-alloc 8388608 entry-alloc 8388609 info",
    );
    assert_eq!(
        out,
        [
            "info -> 0 8388608 8388608",
            "props -> 0 8388608",
            "alloc 8388608 -> 0 #0",
            "alloc 1 -> 2", // cudaErrorMemoryAllocation
            "free 0 -> 0",
            "async 8388608 -> 0 #1",
            "async 1 -> 2",
            "free-async 1 -> 0",
            "entry cuMemAlloc -> 0 status=0 cuMemAlloc_v2@libcuvisor_preload.so",
            "entry-alloc 8388608 -> 0 alloc=0 free=0",
            "entry-alloc 8388609 -> 0 alloc=2 free=-1",
            "info -> 0 8388608 8388608",
        ]
    );
    assert_eq!(calls(&report, "cuMemAlloc_v2"), 2);
    assert_eq!(calls(&report, "cuMemAllocAsync"), 1);
}

#[test]
fn get_proc_address_wraps_exactly_the_variant_the_driver_returned() {
    let mut cmd = shimmed(driver_probe());
    let out = run_script(
        cmd.env("CUVISOR_QUOTA", "8MiB"),
        "procaddr cuMemAlloc 3010 0 procaddr cuMemAlloc 12000 0 procaddr cuMemAllocAsync 12000 0 \
         procaddr cuMemAllocAsync 12000 2 procaddr cuMemFreeAsync 12000 2 procaddr cuGetProcAddress 11030 0 \
         procaddr cuGetProcAddress 12000 0 procaddr cuMemcpyHtoD 12000 2 procaddr cuMemGetInfo 2000 0 \
         procaddr cuNoSuchFunction 12000 0 procaddr cuMemAllocAsync 11010 0 procaddr cuMemAlloc 13000 0",
    );
    assert_eq!(
        out,
        [
            "procaddr cuMemAlloc 3010 0 -> 0 status=0 cuMemAlloc@libcuda.so.1", // 32-bit ABI: untouched
            "procaddr cuMemAlloc 12000 0 -> 0 status=0 cuMemAlloc_v2@libcuvisor_preload.so",
            "procaddr cuMemAllocAsync 12000 0 -> 0 status=0 cuMemAllocAsync@libcuvisor_preload.so",
            "procaddr cuMemAllocAsync 12000 2 -> 0 status=0 cuMemAllocAsync_ptsz@libcuvisor_preload.so",
            "procaddr cuMemFreeAsync 12000 2 -> 0 status=0 cuMemFreeAsync_ptsz@libcuvisor_preload.so",
            "procaddr cuGetProcAddress 11030 0 -> 0 status=0 cuGetProcAddress@libcuvisor_preload.so",
            "procaddr cuGetProcAddress 12000 0 -> 0 status=0 cuGetProcAddress_v2@libcuvisor_preload.so",
            "procaddr cuMemcpyHtoD 12000 2 -> 0 status=0 cuMemcpyHtoD_v2_ptds@libcuda.so.1", // not hooked
            "procaddr cuMemGetInfo 2000 0 -> 0 status=0 cuMemGetInfo@libcuvisor_preload.so",
            "procaddr cuNoSuchFunction 12000 0 -> 0 status=1 NULL",
            "procaddr cuMemAllocAsync 11010 0 -> 0 status=2 NULL",
            "procaddr cuMemAlloc 13000 0 -> 1 status=99 NULL",
        ]
    );
}

#[test]
fn managed_mode_redirects_with_advice_visible_to_the_driver() {
    let (out, report, _) = under_shim(
        driver_probe,
        &[("CUVISOR_QUOTA", "64MiB")],
        "init alloc 16M pitch 1000 100 attr 0 roundtrip 0 roundtrip 1 info",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "alloc 16M -> 0 #0",
            "pitch 1000 100 -> 0 #1 pitch=1024",
            "attr 0 -> 0 type=2 managed=1",
            "roundtrip 0 -> 0 ok",
            "roundtrip 1 -> 0 ok",
            "info -> 0 50229248 67108864", // 64 MiB - 16 MiB - 1024 x 100
        ]
    );
    assert_eq!(calls(&report, "cuMemAlloc_v2"), 0);
    assert_eq!(calls(&report, "cuMemAllocPitch_v2"), 0);
    assert_eq!(calls(&report, "cuMemAllocManaged"), 2);
    assert_eq!(report["managed_bytes"]["peak"], 16 * MIB + 102_400);
    assert_eq!(report["device_bytes"]["peak"], 0);
    assert_eq!(
        report["advise_calls"], 4,
        "preferred location + accessed-by, each"
    );
    assert_eq!(calls(&report, "cuMemAdvise_v2"), 4);
    assert_eq!(report["prefetch_calls"], 0, "prefetch is off by default");

    let (_, report, _) = under_shim(
        driver_probe,
        &[("CUVISOR_QUOTA", "64MiB"), ("CUVISOR_PREFETCH", "on")],
        "init alloc 16M",
    );
    assert_eq!(report["prefetch_calls"], 1);
    assert_eq!(report["managed_resident_bytes"], 16 * MIB);
}

#[test]
fn no_concurrent_managed_access_means_device_memory_and_one_warning() {
    let (out, report, err) = under_shim(
        driver_probe,
        &[("CUVISOR_QUOTA", "64MiB")],
        "init alloc 1M alloc 1M",
    );
    assert_eq!(out, ["init -> 0", "alloc 1M -> 0 #0", "alloc 1M -> 0 #1"]);
    assert_eq!(calls(&report, "cuMemAllocManaged"), 2);
    assert!(err.is_empty(), "nothing to say: {err}");
    let mut cmd = shimmed(driver_probe());
    cmd.env("FAKE_CUDA_MANAGED", "0")
        .env("CUVISOR_QUOTA", "64MiB");
    let out = run(cmd.args(["init", "alloc", "1M", "alloc", "1M", "attr", "0"]));
    assert_eq!(
        lines(&out),
        [
            "init -> 0",
            "alloc 1M -> 0 #0",
            "alloc 1M -> 0 #1",
            "attr 0 -> 0 type=2 managed=0"
        ]
    );
    assert_eq!(
        stderr(&out)
            .matches("has no concurrent managed access")
            .count(),
        1,
        "{}",
        stderr(&out)
    );
}

#[test]
fn ipc_on_redirected_memory_fails_like_the_driver_with_a_hint() {
    let (out, _, err) = under_shim(
        driver_probe,
        &[("CUVISOR_QUOTA", "64MiB")],
        "init alloc 1M ipc 0 ipc 0",
    );
    assert_eq!(
        out,
        ["init -> 0", "alloc 1M -> 0 #0", "ipc 0 -> 1", "ipc 0 -> 1"]
    );
    assert_eq!(
        err.matches("run this model with CUVISOR_MODE=device")
            .count(),
        1,
        "{err}"
    );
    let (out, _, err) = under_shim(
        driver_probe,
        &[("CUVISOR_QUOTA", "64MiB"), ("CUVISOR_MODE", "device")],
        "init alloc 1M ipc 0",
    );
    assert_eq!(out, ["init -> 0", "alloc 1M -> 0 #0", "ipc 0 -> 0"]);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn virtual_memory_numbers_agree_on_every_surface() {
    let script = "init alloc 1GiB info legacy-info total legacy-total nvml";
    let mut cmd = shimmed(driver_probe());
    cmd.env("FAKE_CUDA_DEVICE_MEM", "16GiB")
        .env("CUVISOR_QUOTA", "3GiB");
    assert_eq!(
        run_script(&mut cmd, script),
        [
            "init -> 0",
            "alloc 1GiB -> 0 #0",
            "info -> 0 2147483648 3221225472",
            "legacy-info -> 0 2147483648 3221225472",
            "total -> 0 3221225472",
            "legacy-total -> 0 3221225472",
            "nvml v1 -> 0 3221225472 2147483648 1073741824",
            "nvml v2 -> 0 3221225472 2147483648 1073741824 reserved=0",
            "nvml v2-wrong-version -> 25", // the driver's error stands
        ]
    );
    let mut cmd = shimmed(runtime_probe());
    cmd.env("FAKE_CUDA_DEVICE_MEM", "16GiB")
        .env("CUVISOR_QUOTA", "3GiB");
    assert_eq!(
        run_script(&mut cmd, "alloc 1GiB info props"),
        [
            "alloc 1GiB -> 0 #0",
            "info -> 0 2147483648 3221225472",
            "props -> 0 3221225472"
        ]
    );
    // A percentage of the physical device; a quota above the device; no quota at all.
    for (quota, total) in [
        (Some("25%"), 4 * GIB),
        (Some("64GiB"), 16 * GIB),
        (None, 16 * GIB),
    ] {
        let mut cmd = shimmed(driver_probe());
        // device mode: managed memory would not be resident, and without a quota the
        // driver's own numbers are the answer
        cmd.env("FAKE_CUDA_DEVICE_MEM", "16GiB")
            .env("CUVISOR_MODE", "device");
        if let Some(q) = quota {
            cmd.env("CUVISOR_QUOTA", q);
        }
        let out = run_script(&mut cmd, "init alloc 1GiB info total");
        assert_eq!(
            out[2],
            format!("info -> 0 {} {total}", total - GIB),
            "{quota:?}"
        );
        assert_eq!(out[3], format!("total -> 0 {total}"), "{quota:?}");
    }
    // 25% of 16 GiB is enforced as well as reported.
    let mut cmd = shimmed(driver_probe());
    cmd.env("FAKE_CUDA_DEVICE_MEM", "16GiB")
        .env("CUVISOR_QUOTA", "25%");
    assert_eq!(
        run_script(&mut cmd, "init alloc 4GiB alloc 1"),
        ["init -> 0", "alloc 4GiB -> 0 #0", "alloc 1 -> 2"]
    );
}

#[test]
fn off_mode_forwards_untouched() {
    let (out, report, err) = under_shim(
        driver_probe,
        &[("CUVISOR_QUOTA", "1MiB"), ("CUVISOR_MODE", "off")],
        "init alloc 2M info total",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "alloc 2M -> 0 #0",
            "info -> 0 1071644672 1073741824",
            "total -> 0 1073741824"
        ]
    );
    assert_eq!(calls(&report, "cuMemAlloc_v2"), 1);
    assert_eq!(calls(&report, "cuMemAllocManaged"), 0);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn every_bad_configuration_fails_cuda_initialization_with_a_clear_message() {
    let cases = [
        ("CUVISOR_QUOTA", "lots", "is not a size"),
        ("CUVISOR_QUOTA", "0", "a quota must be greater than 0"),
        ("CUVISOR_QUOTA", "150%", "1% to 100% of the device's memory"),
        ("CUVISOR_QUOTA", "1.5G", "KiB/MiB/GiB/TiB"),
        ("CUVISOR_MODE", "manged", "expected managed, device or off"),
        ("CUVISOR_PREFETCH", "1", "expected on or off"),
        (
            "CUVISOR_LOG",
            "loud",
            "expected error, warn, info, debug or trace",
        ),
        ("CUVISOR_MODEL", "a/b", "letters, digits"),
    ];
    for (var, value, why) in cases {
        for probe in [driver_probe as Probe, driver_probe_procaddr] {
            let mut cmd = shimmed(probe());
            cmd.env(var, value);
            let out = run(cmd.args(["init", "alloc", "1M", "nvml"]));
            assert_eq!(
                lines(&out)[..3],
                ["init -> 3", "alloc 1M -> 3", "nvml v1 -> 999 0 0 0"],
                "{var}={value}"
            );
            let err = stderr(&out);
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(
                err.starts_with(&format!("cuvisor: error: {var}=\"{value}\" is invalid: "))
                    && err.contains(why),
                "{var}={value}: {err}"
            );
        }
    }
    let mut cmd = shimmed(runtime_probe());
    cmd.env("CUVISOR_QUOTA", "lots");
    assert_eq!(
        run_script(&mut cmd, "count alloc 1M"),
        ["count -> 3 0", "alloc 1M -> 3"]
    );
}

#[test]
fn cudarc_runs_unmodified_under_the_shim_on_both_allocation_paths() {
    for pools in ["0", "1"] {
        let dir = TempDir::new("cudarc-shim");
        let report_path = dir.path("report.jsonl");
        let mut cmd = shimmed(on_fake_gpu(example("cudarc_client")));
        cmd.arg("64")
            .env("FAKE_CUDA_DEVICE_MEM", "1GiB")
            .env("FAKE_CUDA_POOLS", pools)
            .env("FAKE_CUDA_REPORT", &report_path)
            .env("CUVISOR_QUOTA", "256MiB");
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            lines(&out),
            [
                "info 268435456 268435456",
                "roundtrip ok",
                "zeros ok",
                "info 268435456 268435456",
                "chunks 4 then DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
                "info 268435456 268435456",
            ],
            "pools={pools}"
        );
        let r = report(&report_path);
        if pools == "0" {
            assert_eq!(
                calls(&r, "cuMemAlloc_v2"),
                0,
                "redirected to managed memory"
            );
            assert_eq!(calls(&r, "cuMemAllocManaged"), 6);
        } else {
            assert_eq!(
                calls(&r, "cuMemAllocAsync"),
                6,
                "stream-ordered memory stays device memory"
            );
        }
        assert_eq!(r["leaked"]["count"], 0);
    }
}

#[test]
fn sixteen_threads_of_random_allocation_never_exceed_the_quota() {
    for mode in ["managed", "device"] {
        let (out, report, _) = under_shim(
            driver_probe,
            &[
                ("CUVISOR_QUOTA", "64MiB"),
                ("CUVISOR_MODE", mode),
                ("CUVISOR_LOG", "error"),
            ],
            "init stress 16 3000 12M 7 info",
        );
        assert_eq!(
            out,
            [
                "init -> 0",
                "stress 16 3000 12M 7 -> 0 ok=yes oom=yes other=0",
                "info -> 0 67108864 67108864"
            ],
            "{mode}: everything returns to zero"
        );
        let peak = if mode == "managed" {
            &report["managed_bytes"]["peak"]
        } else {
            &report["device_bytes"]["peak"]
        };
        assert!(
            peak.as_u64().unwrap() <= 64 * MIB,
            "{mode}: the driver saw {peak} bytes at once"
        );
        assert!(
            peak.as_u64().unwrap() > 48 * MIB,
            "{mode}: the stress should press on the quota ({peak})"
        );
        assert_eq!(report["leaked"]["count"], 0);
    }
}

#[test]
fn a_forked_child_enforces_its_quota_and_a_child_of_an_initialized_parent_fails_cleanly() {
    // The child (forked before the parent used CUDA) has its own state and the quota.
    let (out, _, _) = under_shim(
        driver_probe,
        &[("CUVISOR_QUOTA", "512KiB")],
        "fork init init alloc 512K alloc 1",
    );
    assert_eq!(
        out,
        [
            "child init -> 0",
            "child alloc 1M -> 2", // over the child's quota
            "fork init -> 0",
            "init -> 0",
            "alloc 512K -> 0 #0",
            "alloc 1 -> 2",
        ]
    );
    // Forked after cuInit and an allocation: the shim's fresh state lets the driver answer.
    let (out, _, _) = under_shim(
        driver_probe,
        &[("CUVISOR_QUOTA", "2MiB")],
        "init alloc 1M fork init info",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "alloc 1M -> 0 #0",
            "child init -> 3", // the driver refuses CUDA in a child of an initialized parent
            "child alloc 1M -> 3",
            "fork init -> 0",
            "info -> 0 1048576 2097152", // the parent's accounting is unchanged
        ]
    );
}

#[test]
fn another_preload_wrapping_cuda_malloc_chains_with_the_shim_in_either_order() {
    let other = stub_dir().join("libother_preload.so");
    let shim = shim_path();
    for order in [[&shim, &other], [&other, &shim]] {
        let mut cmd = runtime_probe();
        cmd.env(
            "LD_PRELOAD",
            format!("{}:{}", order[0].display(), order[1].display()),
        )
        .env("CUVISOR_QUOTA", "8MiB")
        .env("CUVISOR_LEDGER_DIR", ledger_dir());
        let out = run(cmd.args(["alloc", "4M", "alloc", "5M", "info"]));
        assert!(out.status.success(), "{order:?}: {}", stderr(&out));
        assert_eq!(
            lines(&out),
            [
                "alloc 4M -> 0 #0",
                "alloc 5M -> 2",
                "info -> 0 4194304 8388608"
            ],
            "{order:?}"
        );
        let err = stderr(&out);
        assert!(
            err.contains("other-preload: cudaMalloc 4194304")
                && err.contains("other-preload: cudaMalloc 5242880"),
            "{order:?}: {err}"
        );
        assert!(
            err.contains("cuMemAlloc_v2 of 5242880 bytes refused"),
            "{order:?}: {err}"
        );
    }
}

/// With CUVISOR_LOG=info a process says at exit which resolution path handed out which of
/// our wrappers, and how often: the real-GPU kit records it per framework.
#[test]
fn the_resolution_paths_used_are_reported_at_exit() {
    let info = [("CUVISOR_QUOTA", "8MiB"), ("CUVISOR_LOG", "info")];
    let line = |err: &str, via: &str| {
        err.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "cuvisor: info: wrappers handed out through {via}: "
                ))
            })
            .map(str::to_owned)
    };
    let (_, _, err) = under_shim(driver_probe_dlsym, &info, "init alloc 4096 free 0");
    let dlsym = line(&err, "dlsym").unwrap_or_else(|| panic!("{err}"));
    assert!(dlsym.contains(" cuMemAlloc_v2=1"), "{dlsym}");
    assert!(dlsym.contains(" cuMemFree_v2=1"), "{dlsym}");
    assert_eq!(line(&err, "cuGetProcAddress"), None, "{err}");

    let (_, _, err) = under_shim(driver_probe_procaddr, &info, "init alloc 4096 free 0");
    let procaddr = line(&err, "cuGetProcAddress").unwrap_or_else(|| panic!("{err}"));
    assert!(procaddr.contains(" cuMemAlloc_v2="), "{procaddr}");

    let (_, _, err) = under_shim(runtime_probe, &info, "entry cuMemAlloc");
    let entry = line(&err, "cudaGetDriverEntryPoint").unwrap_or_else(|| panic!("{err}"));
    assert!(entry.contains(" cuMemAlloc_v2=1"), "{entry}");

    // Direct binding leaves no trace but the absence of every other path.
    let (_, _, err) = under_shim(driver_probe, &info, "init alloc 4096 free 0");
    assert!(
        err.contains("cuvisor: info: no wrapper was handed out through dlsym, cuGetProcAddress or cudaGetDriverEntryPoint"),
        "{err}"
    );
    // Not at the default level.
    let (_, _, err) = under_shim(driver_probe_dlsym, &info[..1], "init alloc 4096 free 0");
    assert!(!err.contains("handed out"), "{err}");
}

/// `cudaDeviceReset` (cuDevicePrimaryCtxReset) destroys the context's allocations in the
/// driver: the shim gives their bytes back to the quota, on every way of reaching it.
/// Before the fix, what the process held stayed charged until it exited (found under
/// NVIDIA's runtime: tests/nvidia_runtime.rs).
#[test]
fn a_primary_context_reset_gives_its_allocations_back_to_the_quota() {
    for (path, probe) in DRIVER_PATHS {
        let (out, report, err) = under_shim(
            probe,
            &[("CUVISOR_QUOTA", "1GiB"), ("CUVISOR_LOG", "info")],
            "init alloc 512MiB managed 256MiB async 128MiB info reset init info alloc 1GiB info",
        );
        assert_eq!(
            out,
            [
                "init -> 0",
                "alloc 512MiB -> 0 #0",
                "managed 256MiB -> 0 #1",
                "async 128MiB -> 0 #2",
                "info -> 0 134217728 1073741824",
                "reset -> 0",
                "init -> 0",
                "info -> 0 1073741824 1073741824",
                "alloc 1GiB -> 0 #3",
                "info -> 0 0 1073741824",
            ],
            "{path}"
        );
        assert!(
            err.contains("device 0 reset: 939524096 bytes of its allocations uncharged"),
            "{path}: {err}"
        );
        assert_eq!(calls(&report, "cuDevicePrimaryCtxReset_v2"), 1, "{path}");
    }
}

/// The last release of a primary context and the destruction of a created one take their
/// allocations too: each gives exactly its own back to the quota.
#[test]
fn a_context_that_goes_gives_its_allocations_back_to_the_quota() {
    for (path, probe) in DRIVER_PATHS {
        let (out, _, err) = under_shim(
            probe,
            &[("CUVISOR_QUOTA", "1GiB"), ("CUVISOR_LOG", "info")],
            "init alloc 256MiB ctx-create alloc 512MiB info ctx-destroy info release init info \
             alloc 1GiB",
        );
        assert_eq!(
            out,
            [
                "init -> 0",
                "alloc 256MiB -> 0 #0",
                "ctx-create -> 0",
                "alloc 512MiB -> 0 #1",
                "info -> 0 268435456 1073741824",
                "ctx-destroy -> 0",
                "info -> 0 805306368 1073741824", // the created context's 512 MiB went
                "release -> 0",
                "init -> 0",
                "info -> 0 1073741824 1073741824", // the primary context's 256 MiB too
                "alloc 1GiB -> 0 #2",
            ],
            "{path}"
        );
        assert!(
            err.contains("context destroyed: 536870912 bytes of its allocations uncharged"),
            "{path}: {err}"
        );
        assert!(
            err.contains("device 0 released: 268435456 bytes of its allocations uncharged"),
            "{path}: {err}"
        );
    }
}

/// A context that goes on a GPU the process never charged leaves the model's ledger as it
/// was: the sweep asks about no GPU the process has not met (it used to register it,
/// which is the first charge's job, at every context release; the runtime releases its
/// primary contexts at exit).
#[test]
fn a_context_that_goes_on_an_unused_gpu_touches_no_ledger_entry() {
    let dir = TempDir::new("sweep-unused");
    let out = run(shimmed(driver_probe())
        .env("CUVISOR_LEDGER_DIR", &dir.0)
        .env("CUVISOR_MODEL", "quiet")
        .env("CUVISOR_QUOTA", "1GiB")
        .args(["init", "release", "init", "reset"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        ["init -> 0", "release -> 0", "init -> 0", "reset -> 0"]
    );
    let snapshot = cuvisor::ledger::LedgerFile::open(&dir.0, "quiet")
        .unwrap()
        .snapshot()
        .unwrap();
    assert!(snapshot.gpus.is_empty(), "{:?}", snapshot.gpus);
}
