//! Issue 13: hibernate and wake a model's memory, on a shared fake GPU of 4 GiB seen by an
//! observer outside every model (NVML without the shim, as `nvidia-smi` on the host).

mod common;
use common::supervisor::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// The fake node: one 4 GiB GPU whose state file every process of the test shares.
fn node_env(state: &Path) -> Vec<(String, String)> {
    [
        ("LD_LIBRARY_PATH", stub_dir().display().to_string()),
        ("FAKE_CUDA_DEVICE_COUNT", "1".into()),
        ("FAKE_CUDA_DEVICE_MEM", "4GiB".into()),
        ("FAKE_CUDA_STATE", state.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `cuvisor run` on the fake node (its workers inherit the node's environment).
fn supervise(tag: &str, state: &Path, settings: &str, models: &str) -> Supervisor {
    let mut wrapper: Vec<String> = vec!["env".into()];
    wrapper.extend(node_env(state).iter().map(|(k, v)| format!("{k}={v}")));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Supervisor::start_with(tag, settings, &wrapper, models)
}

/// Waits until worker log `leaf` contains `text`; fails with the logs.
fn wait_for_log(s: &Supervisor, leaf: &str, text: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !s.log(leaf).contains(text) {
        assert!(
            std::time::Instant::now() < end,
            "no {text:?} in {leaf}'s log:\n{}\nsupervisor:\n{}",
            s.log(leaf),
            s.supervisor_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The device's used bytes, as NVML outside every model reports them.
fn observed_used(state: &Path) -> u64 {
    let mut cmd = driver_probe();
    cmd.env_remove("LD_PRELOAD");
    for (k, v) in node_env(state) {
        cmd.env(k, v);
    }
    let out = run_script(&mut cmd, "nvml-info 0");
    let fields: Vec<&str> = out[0]
        .strip_prefix("nvml-info 0 -> 0 ")
        .unwrap_or_else(|| panic!("{out:?}"))
        .split(' ')
        .collect();
    fields[2].parse().unwrap()
}

/// Before anything moves: the fake GPU must see a supervised worker, in its own PID
/// namespace, as alive. An observer outside that namespace once took it for dead and
/// reclaimed its memory.
#[test]
fn an_observer_outside_a_workers_pid_namespace_sees_its_memory() {
    let state = TempDir::new("observer-state");
    let gpu = state.path("gpu-state");
    let probe = stub_dir().join("driver_probe");
    let s = supervise(
        "observer",
        &gpu,
        "",
        &format!(
            "[[model]]\nname = \"a\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"3GiB\", \"sleep\", \"100000\"]\nmode = \"device\"\ngpu_quota = \"3GiB\"\n",
            probe.display()
        ),
    );
    wait_for_log(&s, "a-0", "alloc 3GiB -> 0");
    assert_eq!(observed_used(&gpu), 3 * GIB, "{}", s.log("a-0"));
    // Asked again: the first observer did not reclaim it either.
    assert_eq!(observed_used(&gpu), 3 * GIB);
}
