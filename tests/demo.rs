//! The README's first command, `cargo run --example demo`, works and shows what it says.

mod common;
use common::*;
use std::process::Command;

#[test]
fn the_demo_runs_two_models_under_the_supervisor() {
    let out = run(Command::new(example("demo")).env_remove("LD_PRELOAD"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for expected in [
        // the shim's quota on a single program
        "alloc 1GiB -> 0",
        // the supervisor's status table: llama 2 GiB of 3, qwen 1 GiB of 2
        " 2.0 GiB / 3.0 GiB ",
        " 1.0 GiB / 2.0 GiB ",
        "[qwen/0] alloc 2GiB -> 2",
        "cuvisor: stopped",
        // two models behind the front door, the supervisor embedded in the demo: the
        // scaled-to-zero one started by its first request, found by its alias
        "\"content\": \"hello from chat\"",
        "\"model\": \"text-embedding-3-small\", \"served_by\": \"embed\"",
        "embed: answered in",
        // reloaded from its file, unchanged: nothing touched
        "model chat: unchanged",
        "model embed: unchanged",
        "running.stop()",
        "the front door is closed: true",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    // The refusal is counted on the GPU (by UUID) where it happened.
    assert!(
        text.lines().any(|l| l
            .trim_start()
            .starts_with("cuvisor_gpu_oom_refusals_total{model=\"qwen\",gpu=\"GPU-")
            && l.ends_with("\"} 1")),
        "{text}"
    );
}
