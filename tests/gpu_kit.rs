//! The real-GPU kit (examples/gpu/) tested here without a GPU: its checks run against the
//! fake GPU and must pass there, and without a GPU its entry command says so and skips.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

fn records(dir: &std::path::Path, part: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("{part}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs the kit's `part` against the fake GPU, its records in `out`; it must succeed.
fn kit_on_fake_gpu(part: &str, out: &std::path::Path) {
    let run_out = run(Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gpu/kit.py"))
        .arg(part)
        .arg("--out")
        .arg(out)
        .arg("--fake")
        .arg(stub_dir())
        .arg("--shim")
        .arg(shim_path())
        .arg("--cuvisor")
        .arg(env!("CARGO_BIN_EXE_cuvisor"))
        .env_remove("LD_PRELOAD"));
    assert!(run_out.status.success(), "{}", stderr(&run_out));
}

#[test]
fn the_interception_checks_pass_on_the_fake_gpu_and_name_the_paths_used() {
    let dir = TempDir::new("kit");
    kit_on_fake_gpu("interception", &dir.0);
    let recs = records(&dir.0, "interception");
    let case = |name: &str| {
        recs.iter()
            .find(|r| r["case"] == name)
            .unwrap_or_else(|| panic!("no record for {name}: {recs:?}"))
            .clone()
    };
    for (name, path) in [
        ("driver-api-direct", "direct binding only"),
        ("driver-api-dlsym", "dlsym"),
        ("driver-api-cuGetProcAddress", "cuGetProcAddress"),
        ("runtime-shared-cudart", "cuGetProcAddress"),
    ] {
        let r = case(name);
        assert_eq!(r["ok"], true, "{r}");
        // 64 MiB quota, 4 MiB at a time: 16 fit, the 17th is refused with 2.
        assert_eq!(
            (&r["allocated"], &r["refusal_code"]),
            (&Value::from(64 << 20), &Value::from(2)),
            "{r}"
        );
        assert_eq!(r["info_after"], serde_json::json!([0, 64 << 20]), "{r}");
        assert!(r["paths"][path].is_object(), "{name} used {path}: {r}");
    }
    assert!(case("driver-api-dlsym")["paths"]["dlsym"]["cuMemAlloc_v2"] == "1");
    for name in [
        "runtime-static-cudart",
        "torch-native",
        "cupy",
        "jax-default-preallocation",
    ] {
        let r = case(name);
        assert_eq!(r["ok"], Value::Null, "{r}");
        assert!(r["skipped"].is_string(), "{r}");
    }
    // The summary turns the records into a table.
    let out = run(Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gpu/kit.py"))
        .args(["summary", "--out"])
        .arg(&dir.0)
        .arg("--shim")
        .arg(shim_path())
        .arg("--cuvisor")
        .arg(env!("CARGO_BIN_EXE_cuvisor")));
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = std::fs::read_to_string(dir.path("results.md")).unwrap();
    assert_eq!(summary.matches("\nPASS ").count(), 4, "{summary}");
    assert!(!summary.contains("\nFAIL "), "{summary}");
}

#[test]
fn without_a_gpu_the_kit_skips_with_its_reason() {
    if Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("skipped: this machine has an NVIDIA GPU");
        return;
    }
    let dir = TempDir::new("kit-nogpu");
    let out = run(Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gpu/run.sh"))
        .arg(&dir.0));
    assert_eq!(out.status.code(), Some(77));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("kit: skipped: no NVIDIA GPU here"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_framework_workers_are_valid_python() {
    // Parsed only: nothing written next to the sources.
    let out = run(Command::new("python3").args([
        "-c",
        "import ast, sys\nfor f in sys.argv[1:]: ast.parse(open(f).read(), f)",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gpu/workers.py"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gpu/kit.py"),
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The kit's hibernate part, on the fake GPU: a model of 64 MiB under `cuvisor exec
/// --hibernate` is moved out and back in whole by `cuvisor ledger hibernate` and `wake`.
#[test]
fn the_hibernate_part_moves_the_model_out_and_back_on_the_fake_gpu() {
    let dir = TempDir::new("kit-hibernate");
    kit_on_fake_gpu("hibernate", &dir.0);
    let recs = records(&dir.0, "hibernate");
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    assert_eq!(r["ok"], true, "{r}");
    for (action, generation) in [("hibernate", 1), ("wake", 2)] {
        let report = &r[action];
        assert_eq!(report["outcome"], "done", "{r}");
        assert_eq!(report["generation"], generation, "{r}");
        assert_eq!(report["moved_bytes"], 64 << 20, "{r}");
        assert_eq!(report["processes"].as_array().unwrap().len(), 1, "{r}");
    }
}
