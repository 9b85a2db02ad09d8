//! The fake libcuda.so.1 as a black box, through a C client that binds it directly and
//! one that finds every function with dlopen + dlsym. Exact error codes and numbers.

mod common;
use common::*;

/// Both ways a program reaches the driver by name must see the same device.
#[test]
fn configured_memory_and_out_of_memory_past_it_direct_and_dlsym() {
    for probe in [
        driver_probe as fn() -> std::process::Command,
        driver_probe_dlsym,
    ] {
        let out = run_script(
            probe().env("FAKE_CUDA_DEVICE_MEM", "4GiB"),
            "init total info alloc 3GiB info alloc 1GiB alloc 1 info free 0 info",
        );
        assert_eq!(
            out,
            [
                "init -> 0",
                "total -> 0 4294967296",
                "info -> 0 4294967296 4294967296",
                "alloc 3GiB -> 0 #0",
                "info -> 0 1073741824 4294967296",
                "alloc 1GiB -> 0 #1",
                "alloc 1 -> 2", // CUDA_ERROR_OUT_OF_MEMORY
                "info -> 0 0 4294967296",
                "free 0 -> 0",
                "info -> 0 3221225472 4294967296",
            ]
        );
    }
}

#[test]
fn default_device_is_16_gib() {
    assert_eq!(
        run_script(&mut driver_probe(), "init total"),
        ["init -> 0", "total -> 0 17179869184"]
    );
}

#[test]
fn calls_before_init_and_without_context_fail_like_the_driver() {
    // CUDA_ERROR_NOT_INITIALIZED before cuInit, CUDA_ERROR_INVALID_CONTEXT without a context
    let out = run_script(
        &mut driver_probe(),
        "alloc 1M info init-only alloc 1M info init alloc 1M",
    );
    assert_eq!(
        out,
        [
            "alloc 1M -> 3",
            "info -> 3 0 0",
            "init-only -> 0",
            "alloc 1M -> 201",
            "info -> 201 0 0",
            "init -> 0",
            "alloc 1M -> 0 #0",
        ]
    );
}

#[test]
fn data_round_trips_through_every_kind_of_memory() {
    let out = run_script(
        &mut driver_probe(),
        "init alloc 3M managed 3M async 3M pitch 1000 7 vmm 4M roundtrip 0 roundtrip 1 roundtrip 2 \
         roundtrip 3 roundtrip 4 memset 0 memset 1",
    );
    for k in 0..5 {
        assert!(out.contains(&format!("roundtrip {k} -> 0 ok")), "{out:?}");
    }
    assert!(
        out.contains(&"memset 0 -> 0 ok".to_owned())
            && out.contains(&"memset 1 -> 0 ok".to_owned()),
        "{out:?}"
    );
}

#[test]
fn zero_bytes_is_invalid_value() {
    let out = run_script(&mut driver_probe(), "init alloc 0 managed 0 async 0");
    assert_eq!(
        out,
        [
            "init -> 0",
            "alloc 0 -> 1",
            "managed 0 -> 1",
            "async 0 -> 1"
        ]
    );
}

#[test]
fn pitch_rounds_rows_to_512_bytes_and_charges_pitch_times_height() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_DEVICE_MEM", "1MiB"),
        "init pitch 100 10 info pitch 513 1 pitch 512 2048",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "pitch 100 10 -> 0 #0 pitch=512",
            "info -> 0 1043456 1048576", // 1 MiB - 512 * 10
            "pitch 513 1 -> 0 #1 pitch=1024",
            "pitch 512 2048 -> 2", // 1 MiB more does not fit any longer
        ]
    );
}

#[test]
fn legacy_32_bit_abi_saturates_and_returns_low_addresses() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_DEVICE_MEM", "8GiB"),
        "init legacy-total legacy-info legacy-alloc 1M alloc 7GiB legacy-info",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "legacy-total -> 0 4294967295",
            "legacy-info -> 0 4294967295 4294967295",
            "legacy-alloc 1M -> 0 #0 low32",
            "alloc 7GiB -> 0 #1",
            "legacy-info -> 0 1072693248 4294967295",
        ]
    );
}

#[test]
fn managed_memory_oversubscribes_and_lru_eviction_makes_room() {
    let dir = TempDir::new("managed");
    let report_path = dir.path("report.jsonl");
    let out = run_script(
        driver_probe()
            .env("FAKE_CUDA_DEVICE_MEM", "4GiB")
            .env("FAKE_CUDA_REPORT", &report_path),
        // two managed ranges of 3 GiB on a 4 GiB device: allocating them never fails
        "init managed 3GiB managed 3GiB info prefetch 0 gpu info prefetch 1 gpu info \
         alloc 2GiB info alloc 2GiB alloc 1 prefetch 0 gpu info free 2 prefetch 0 gpu info",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "managed 3GiB -> 0 #0",
            "managed 3GiB -> 0 #1",
            "info -> 0 4294967296 4294967296", // populated on access, not at allocation
            "prefetch 0 gpu -> 0",
            "info -> 0 1073741824 4294967296",
            "prefetch 1 gpu -> 0", // evicts 2 GiB of #0, the least recently used
            "info -> 0 0 4294967296",
            "alloc 2GiB -> 0 #2", // device memory evicts managed memory: 1 GiB of #0, 1 of #1
            "info -> 0 0 4294967296",
            "alloc 2GiB -> 0 #3",  // the last 2 GiB of #1
            "alloc 1 -> 2",        // only unevictable memory left: out of memory
            "prefetch 0 gpu -> 0", // no room: the range stays on the host, no error
            "info -> 0 0 4294967296",
            "free 2 -> 0",
            "prefetch 0 gpu -> 0", // 2 GiB of its 3 GiB fit now
            "info -> 0 0 4294967296",
        ]
    );
    let r = report(&report_path);
    assert_eq!(r["managed_bytes"]["peak"], 6 * GIB);
    assert_eq!(r["device_bytes"]["peak"], 4 * GIB);
    assert_eq!(r["device_bytes"]["final"], 2 * GIB);
    assert_eq!(r["managed_resident_bytes"], 2 * GIB);
    assert_eq!(r["managed_nonresident_bytes"], 4 * GIB);
    assert_eq!(r["evicted_bytes_total"], 6 * GIB);
    assert_eq!(r["prefetch_calls"], 4);
    assert_eq!(r["oom_errors"], 1);
}

#[test]
fn stream_ordered_pools_retain_until_synchronized() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_DEVICE_MEM", "64MiB"),
        "init async 3M pool-reserved info free-async 0 pool-reserved info sync pool-reserved info \
         async 60M async 5M pool-alloc 1M ptsz-alloc 1M",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "async 3M -> 0 #0",
            "pool-reserved -> 0 4194304", // reservations grow in 2 MiB steps
            "info -> 0 62914560 67108864",
            "free-async 0 -> 0",
            "pool-reserved -> 0 4194304", // freed memory stays in the pool...
            "info -> 0 62914560 67108864",
            "sync -> 0", // ...until a synchronization releases what exceeds the threshold (0)
            "pool-reserved -> 0 0",
            "info -> 0 67108864 67108864",
            "async 60M -> 0 #1",
            "async 5M -> 2",
            "pool-alloc 1M -> 0 #2",
            "ptsz-alloc 1M -> 0",
        ]
    );
}

#[test]
fn pools_unsupported_when_configured_off() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_POOLS", "0"),
        "init attribute 115 async 1M pool-alloc 1M pool-reserved",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "attribute 115 -> 0 0",
            "async 1M -> 801",
            "pool-alloc 1M -> 801",
            "pool-reserved -> 801 0"
        ]
    );
}

#[test]
fn vmm_charges_physical_handles_not_address_space() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_DEVICE_MEM", "64MiB"),
        "init vmm 32M info roundtrip 0 vmm 32M vmm 2M vmm-free 0 info",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "vmm 32M -> 0 #0",
            "info -> 0 33554432 67108864",
            "roundtrip 0 -> 0 ok",
            "vmm 32M -> 0 #1",
            "vmm 2M -> 2",
            "vmm-free 0 -> 0",
            "info -> 0 33554432 67108864",
        ]
    );
}

#[test]
fn arrays_are_charged_by_footprint() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_DEVICE_MEM", "2MiB"),
        "init array 100 100 info array-free 0 info array 512 512 array3d 16 16 16 mipmap 64 64 3 \
         mipmap 64 64 0 array 512 512 array 1 1",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "array 100 100 -> 0 #0", // 100 x 100 floats = 40000 bytes, in whole 64 KiB pages
            "info -> 0 2031616 2097152",
            "array-free 0 -> 0",
            "info -> 0 2097152 2097152",
            "array 512 512 -> 0 #1", // 1 MiB
            "array3d 16 16 16 -> 0", // 16^3 x 4 channels of bytes, created and destroyed
            "mipmap 64 64 3 -> 0",   // three levels, created and destroyed
            "mipmap 64 64 0 -> 1",   // no levels: invalid
            "array 512 512 -> 0 #2", // the second MiB
            "array 1 1 -> 2",        // nothing left
        ]
    );
}

#[test]
fn managed_memory_cannot_be_exported_by_legacy_ipc() {
    let out = run_script(
        &mut driver_probe(),
        "init alloc 1M managed 1M async 1M vmm 2M ipc 0 ipc 1 ipc 2 ipc 3 attr 0 attr 1",
    );
    assert_eq!(
        &out[5..],
        [
            "ipc 0 -> 0",
            "ipc 1 -> 1", // CUDA_ERROR_INVALID_VALUE, as the real driver answers for managed memory
            "ipc 2 -> 1",
            "ipc 3 -> 1",
            "attr 0 -> 0 type=2 managed=0",
            "attr 1 -> 0 type=2 managed=1", // managed memory is device memory with IS_MANAGED
        ]
    );
}

#[test]
fn advice_and_prefetch_need_managed_memory_and_are_counted() {
    let dir = TempDir::new("hints");
    let report_path = dir.path("report.jsonl");
    let out = run_script(
        driver_probe().env("FAKE_CUDA_REPORT", &report_path),
        "init managed 4M alloc 4M advise 0 gpu advise 0 cpu prefetch 0 gpu hints2 0 advise 1 gpu prefetch 1 gpu info",
    );
    assert_eq!(
        &out[3..],
        [
            "advise 0 gpu -> 0",
            "advise 0 cpu -> 0",
            "prefetch 0 gpu -> 0",
            "hints2 0 -> 0",
            "advise 1 gpu -> 1",
            "prefetch 1 gpu -> 1",
            // a host preference steers faults, not prefetches: #0 is resident
            "info -> 0 17171480576 17179869184",
        ]
    );
    let r = report(&report_path);
    assert_eq!(r["advise_calls"], 3);
    assert_eq!(r["prefetch_calls"], 2);
    assert_eq!(calls(&r, "cuMemAdvise_v2"), 1);
    assert_eq!(calls(&r, "cuMemPrefetchAsync_v2"), 1);
}

#[test]
fn concurrent_managed_access_off_means_no_oversubscription() {
    let out = run_script(
        driver_probe()
            .env("FAKE_CUDA_MANAGED", "0")
            .env("FAKE_CUDA_DEVICE_MEM", "1GiB"),
        "init attribute 89 managed 512M info managed 1GiB prefetch 0 gpu",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "attribute 89 -> 0 0",
            "managed 512M -> 0 #0",
            "info -> 0 536870912 1073741824", // resident from the start
            "managed 1GiB -> 2",
            "prefetch 0 gpu -> 101", // CUDA_ERROR_INVALID_DEVICE: no concurrent managed access
        ]
    );
}

#[test]
fn a_child_forked_after_init_cannot_use_the_parents_cuda() {
    let out = run_script(&mut driver_probe(), "fork init init fork alloc fork init");
    assert_eq!(
        out,
        [
            "child init -> 0", // forked before the parent initialized: a fresh start works
            "child alloc 1M -> 0",
            "fork init -> 0",
            "init -> 0",
            "child alloc 1M -> 3", // forked after cuInit: CUDA_ERROR_NOT_INITIALIZED
            "fork alloc -> 0",
            "child init -> 3",
            "child alloc 1M -> 3",
            "fork init -> 0",
        ]
    );
}

#[test]
fn many_threads_allocate_copy_and_free_concurrently() {
    let dir = TempDir::new("threads");
    let report_path = dir.path("report.jsonl");
    let out = run_script(
        driver_probe()
            .env("FAKE_CUDA_DEVICE_MEM", "64MiB")
            .env("FAKE_CUDA_REPORT", &report_path),
        "init threads 8 200 1M info",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "threads 8 200 1M -> 0 failures=0",
            "info -> 0 67108864 67108864"
        ]
    );
    let r = report(&report_path);
    assert_eq!(calls(&r, "cuMemAlloc_v2"), 1600);
    assert_eq!(calls(&r, "cuMemFree_v2"), 1600);
    assert!(r["device_bytes"]["peak"].as_u64().unwrap() <= 8 * MIB);
    assert_eq!(r["leaked"]["count"], 0);
}

/// What NVIDIA's runtime needs of the driver beyond the public allocation calls: its
/// private tables (an unknown one is CUDA_ERROR_NOT_FOUND), context ids, code objects and
/// a launch that checks its configuration and runs nothing, and a primary-context reset
/// that destroys the context's allocations (the driver's documented semantics).
#[test]
fn private_tables_code_objects_launches_and_resets() {
    for probe in [
        driver_probe as fn() -> std::process::Command,
        driver_probe_dlsym,
        driver_probe_procaddr,
    ] {
        let out = run_script(
            &mut probe(),
            "export-table 6bd5fb6c5bf4e74a8987d93912fd9df9 export-table 00112233445566778899aabbccddeeff \
             export-table f8cff95121468b4eb9e2fb469e7c0dd9 driver-version free-null init free-null \
             ctx-id alloc 1GiB \
             managed 1GiB roundtrip 1 info launch 2 128 0 launch 2 2048 0 launch 0 1 0 \
             launch 1 1 49152 launch 1 1 49153 bad-image reset info init ctx-id info",
        );
        assert_eq!(
            out,
            [
                "export-table 6bd5fb6c5bf4e74a8987d93912fd9df9 -> 0 table", // CUDART_INTERFACE
                "export-table 00112233445566778899aabbccddeeff -> 500 null",
                "export-table f8cff95121468b4eb9e2fb469e7c0dd9 -> 500 null", // known, refused
                "driver-version -> 0 12090",
                "free-null -> 3", // before cuInit
                "init -> 0",
                "free-null -> 0", // cudaFree(0), which cuBLAS's runtime forwards
                "ctx-id -> 0 1",
                "alloc 1GiB -> 0 #0",
                "managed 1GiB -> 0 #1",
                "roundtrip 1 -> 0 ok",
                "info -> 0 15032385536 17179869184",
                "launch 2 128 0 -> 0",
                "launch 2 2048 0 -> 1", // more than 1024 threads a block
                "launch 0 1 0 -> 1",    // an empty grid
                "launch 1 1 49152 -> 0",
                "launch 1 1 49153 -> 1", // past 48 KiB of dynamic shared memory
                "bad-image -> 200",      // CUDA_ERROR_INVALID_IMAGE
                "reset -> 0",
                "info -> 201 0 0", // the reset context is no longer current-and-active
                "init -> 0",
                "ctx-id -> 0 2",                     // a new context, with a new id
                "info -> 0 17179869184 17179869184", // the reset destroyed both allocations
            ]
        );
    }
}

#[test]
fn the_driver_version_knob() {
    let out = run_script(
        driver_probe().env("FAKE_CUDA_DRIVER_VERSION", "13020"),
        "driver-version nvml-version",
    );
    assert_eq!(
        out,
        ["driver-version -> 0 13020", "nvml-version -> 0 13020 13020"]
    );
    let out = run(driver_probe()
        .env("FAKE_CUDA_DRIVER_VERSION", "13.2")
        .args(["init"]));
    assert_eq!(lines(&out), ["init -> 3"]);
    assert!(
        stderr(&out).contains(
            "fake-cuda: FAKE_CUDA_DRIVER_VERSION=\"13.2\" is invalid: expected a CUDA version as major*1000 + minor*10, from 11000 to 99990"
        ),
        "{}",
        stderr(&out)
    );
}

/// What XLA, cuBLAS and vLLM's kernels ask of the driver besides: capture state (never
/// capturing), occupancy by the H100's limits, and TMA descriptors checked against the
/// documented limits.
#[test]
fn capture_state_occupancy_and_tensor_maps() {
    let out = run_script(
        &mut driver_probe(),
        "init capture-info occupancy 256 0 occupancy 128 100K occupancy 1024 0 alloc 64MiB \
         tensor-map 2 0 tensor-map 5 0 tensor-map 6 0",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "capture-info -> 0 0",              // CU_STREAM_CAPTURE_STATUS_NONE
            "occupancy 256 0 -> 0 8 28160",     // 2048 threads a multiprocessor
            "occupancy 128 100K -> 0 2 115712", // 228 KiB of shared memory
            "occupancy 1024 0 -> 0 2 115712",
            "alloc 64MiB -> 0 #0",
            "tensor-map 2 0 -> 0",
            "tensor-map 5 0 -> 0",
            "tensor-map 6 0 -> 1", // at most 5 dimensions
        ]
    );
}

/// FAKE_CUDA_TRACE=calls: a name the fake lacks still resolves, to a function that names
/// itself when called (to find what a framework needs).
#[test]
fn the_trace_knob_names_what_the_fake_lacks() {
    let out = run(driver_probe_procaddr()
        .env("FAKE_CUDA_TRACE", "calls")
        .args(["procaddr", "cuNoSuchThing", "12000", "0"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let line = &lines(&out)[0];
    assert!(
        line.starts_with("procaddr cuNoSuchThing 12000 0 -> 0 status=0 "),
        "{line}"
    );
    assert!(
        stderr(&out).contains(
            "fake-cuda: cuGetProcAddress: cuNoSuchThing (version 12000) is not in the fake"
        ),
        "{}",
        stderr(&out)
    );
}

/// Issue 28: `FAKE_CUDA_LINK_GBPS` makes bytes moved between host and device take the time
/// they take on that link: 1 GiB at 25 GB/s is 42.9 ms, each way (a prefetch in, one out,
/// a copy to the device), while what stays put is as quick as without it. Only a lower
/// bound is exact (a sleep is never shorter); the upper one is generous for a loaded
/// machine. Without the knob nothing waits, and a bad value is refused by name.
#[test]
fn a_link_speed_makes_moved_bytes_take_their_time() {
    let ms = |line: &str| -> f64 {
        line.strip_prefix("clock ")
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap()
    };
    let script = "init managed 1GiB clock prefetch 0 gpu clock prefetch 0 gpu clock \
                  prefetch 0 cpu clock alloc 1GiB clock roundtrip 1 clock";
    let out = run_script(
        driver_probe()
            .env("FAKE_CUDA_LINK_GBPS", "25")
            .env("FAKE_CUDA_DEVICE_MEM", "4GiB"),
        script,
    );
    let expected = 1073741824.0 / 25e9 * 1000.0; // 42.95 ms
    let (into, again, out_of, roundtrip) = (ms(&out[4]), ms(&out[6]), ms(&out[8]), ms(&out[12]));
    assert_eq!(out[3], "prefetch 0 gpu -> 0", "{out:?}");
    assert!(
        into >= expected && into < expected + 1000.0,
        "in: {into} ms, {out:?}"
    );
    assert!(again < expected / 4.0, "already resident: {again} ms");
    assert!(
        out_of >= expected && out_of < expected + 1000.0,
        "out: {out_of} ms"
    );
    // A round trip copies 1 MiB each way: 2 MiB at 25 GB/s, 84 µs.
    assert!(
        roundtrip >= 2.0 * 1048576.0 / 25e9 * 1000.0,
        "{roundtrip} ms"
    );

    let quick = run_script(driver_probe().env("FAKE_CUDA_DEVICE_MEM", "4GiB"), script);
    assert!(ms(&quick[4]) < expected, "without a link speed: {quick:?}");

    let out = run(driver_probe()
        .env("FAKE_CUDA_LINK_GBPS", "fast")
        .args(["init"]));
    assert!(
        stderr(&out)
            .contains("FAKE_CUDA_LINK_GBPS=\"fast\" is invalid: expected the link's speed in GB/s"),
        "{}",
        stderr(&out)
    );
}

/// The link is the device's, not each process's: each direction is shared, in the order
/// moves were asked. A moves 8 GiB in (344 ms at 25 GB/s); 150 ms later B's 1 GiB in
/// waits for the rest of A's (about 194 ms) before its own 43 ms, while C's 1 GiB out, the
/// other direction, takes its 43 ms alone (PCIe is full duplex).
#[test]
fn processes_share_the_link_each_direction_in_turn() {
    use std::io::Write;
    use std::time::Duration;
    let state = TempDir::new("shared-link");
    let probe = |script: &str| {
        driver_probe()
            .env("FAKE_CUDA_LINK_GBPS", "25")
            .env("FAKE_CUDA_DEVICE_MEM", "16GiB")
            .env("FAKE_CUDA_STATE", state.path("gpu-state"))
            .args(script.split_whitespace())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut a = probe("init managed 8GiB wait prefetch 0 gpu");
    let mut b = probe("init managed 1GiB wait clock prefetch 0 gpu clock");
    let mut c = probe("init managed 1GiB prefetch 0 gpu wait clock prefetch 0 cpu clock");
    // Every probe ready (C's memory in) before A starts.
    std::thread::sleep(Duration::from_millis(500));
    let go = |p: &mut std::process::Child| p.stdin.take().unwrap().write_all(b"go\n").unwrap();
    go(&mut a);
    std::thread::sleep(Duration::from_millis(150));
    go(&mut b);
    go(&mut c);
    let took = |p: std::process::Child| -> f64 {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = text.lines().rfind(|l| l.starts_with("clock ")).unwrap();
        last["clock ".len()..].parse().unwrap()
    };
    let (one_gib, a_ms) = (
        1073741824.0 / 25e9 * 1000.0,
        8.0 * 1073741824.0 / 25e9 * 1000.0,
    );
    let (b_ms, c_ms) = (took(b), took(c));
    assert!(a.wait().unwrap().success());
    // B waited behind A: at least A's rest (less the gap, and the probes' start-up slack).
    assert!(
        b_ms >= one_gib + (a_ms - 150.0) * 0.75,
        "B took {b_ms} ms: it did not wait for A's move"
    );
    assert!(c_ms >= one_gib, "C took {c_ms} ms");
    assert!(
        c_ms < one_gib + 120.0,
        "C took {c_ms} ms: it waited for the other direction"
    );
}
