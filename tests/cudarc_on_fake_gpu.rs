//! Code no one here wrote, cudarc's driver API, runs unmodified on the fake GPU, through
//! both of its allocation paths.

mod common;
use common::*;

fn run_client(pools: &str) -> (Vec<String>, serde_json::Value) {
    let dir = TempDir::new("cudarc");
    let report_path = dir.path("report.jsonl");
    let out = run(on_fake_gpu(example("cudarc_client"))
        .arg("64")
        .env("FAKE_CUDA_DEVICE_MEM", "1GiB")
        .env("FAKE_CUDA_POOLS", pools)
        .env("FAKE_CUDA_REPORT", &report_path));
    assert!(
        out.status.success(),
        "cudarc_client failed: {}\n{}",
        out.status,
        stderr(&out)
    );
    (lines(&out), report(&report_path))
}

#[test]
fn cudarc_plain_allocation_path() {
    let (out, report) = run_client("0");
    assert_eq!(
        out,
        [
            "info 1073741824 1073741824",
            "roundtrip ok",
            "zeros ok",
            "info 1073741824 1073741824",
            "chunks 16 then DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")", // 16 x 64 MiB = 1 GiB
            "info 1073741824 1073741824",
        ]
    );
    assert_eq!(calls(&report, "cuMemAlloc_v2"), 19);
    assert_eq!(calls(&report, "cuMemAllocAsync"), 0);
    assert_eq!(report["device_bytes"]["peak"], GIB);
    assert_eq!(report["leaked"]["count"], 0);
}

#[test]
fn cudarc_stream_ordered_pool_path() {
    let (out, report) = run_client("1");
    assert_eq!(
        out,
        [
            "info 1073741824 1073741824",
            "roundtrip ok",
            "zeros ok",
            "info 1073741824 1073741824", // the pool gave its memory back at the synchronization
            "chunks 16 then DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "info 1073741824 1073741824",
        ]
    );
    assert_eq!(calls(&report, "cuMemAllocAsync"), 19);
    assert_eq!(calls(&report, "cuMemAlloc_v2"), 0);
    assert_eq!(report["leaked"]["count"], 0);
}
