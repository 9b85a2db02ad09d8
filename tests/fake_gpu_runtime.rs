//! The fake libcudart.so.12 as a black box, through a C client that uses only the runtime
//! API. The runtime reaches the fake driver the way NVIDIA's does (cuGetProcAddress_v2).

mod common;
use common::*;

#[test]
fn runtime_sees_the_configured_memory_and_reports_out_of_memory() {
    let out = run_script(
        runtime_probe().env("FAKE_CUDA_DEVICE_MEM", "2GiB"),
        "count info props alloc 1GiB info roundtrip 0 alloc 1GiB alloc 1 free 0 info",
    );
    assert_eq!(
        out,
        [
            "count -> 0 1",
            "info -> 0 2147483648 2147483648",
            "props -> 0 2147483648",
            "alloc 1GiB -> 0 #0",
            "info -> 0 1073741824 2147483648",
            "roundtrip 0 -> 0 ok",
            "alloc 1GiB -> 0 #1",
            "alloc 1 -> 2", // cudaErrorMemoryAllocation
            "free 0 -> 0",
            "info -> 0 1073741824 2147483648",
        ]
    );
}

#[test]
fn runtime_allocation_families() {
    let out = run_script(
        runtime_probe().env("FAKE_CUDA_DEVICE_MEM", "64MiB"),
        "managed 128M pitch 100 4 async 1M free-async 2 ipc 0 ipc 1 roundtrip 0 roundtrip 1 free 0 free 1",
    );
    assert_eq!(
        out,
        [
            "managed 128M -> 0 #0", // managed memory may exceed the device
            "pitch 100 4 -> 0 #1 pitch=512",
            "async 1M -> 0 #2",
            "free-async 2 -> 0",
            "ipc 0 -> 1", // cudaErrorInvalidValue on managed memory
            "ipc 1 -> 0",
            "roundtrip 0 -> 0 ok",
            "roundtrip 1 -> 0 ok",
            "free 0 -> 0",
            "free 1 -> 0",
        ]
    );
    let off = run_script(runtime_probe().env("FAKE_CUDA_POOLS", "0"), "async 1M");
    assert_eq!(off, ["async 1M -> 801"]); // cudaErrorNotSupported
}

#[test]
fn driver_entry_points_through_the_runtime() {
    let out = run_script(
        &mut runtime_probe(),
        "entry cuMemAlloc entry cuMemAllocAsync entry cuNoSuchFunction \
         entry-version cuMemAlloc 3010 entry-version cuMemAllocAsync 11010 entry-version cuMemAlloc 13000",
    );
    assert_eq!(
        out,
        [
            "entry cuMemAlloc -> 0 status=0 cuMemAlloc_v2@libcuda.so.1",
            "entry cuMemAllocAsync -> 0 status=0 cuMemAllocAsync@libcuda.so.1",
            "entry cuNoSuchFunction -> 500 status=1 NULL", // cudaErrorSymbolNotFound
            "entry-version cuMemAlloc 3010 -> 0 status=0 cuMemAlloc@libcuda.so.1",
            "entry-version cuMemAllocAsync 11010 -> 500 status=2 NULL",
            "entry-version cuMemAlloc 13000 -> 1 status=99 NULL",
        ]
    );
}

#[test]
fn runtime_error_strings_and_missing_driver() {
    assert_eq!(
        run_script(&mut runtime_probe(), "error 0 error 2 error 500"),
        [
            "error 0 -> no error",
            "error 2 -> out of memory",
            "error 500 -> named symbol not found"
        ]
    );
    // With only the runtime on the library path and no driver: cudaErrorInsufficientDriver.
    let dir = TempDir::new("nodriver");
    for lib in ["libcudart.so.12", "libfakegpu_core.so"] {
        std::fs::copy(stub_dir().join(lib), dir.path(lib)).unwrap();
    }
    let out = run_script(
        runtime_probe().env("LD_LIBRARY_PATH", &dir.0),
        "count alloc 1M",
    );
    assert_eq!(out, ["count -> 35 0", "alloc 1M -> 35"]);
}
