//! Issue 15: HAMi's contract honoured by the shim (where HAMi injects its `libvgpu.so`,
//! cuvisor's shim reads the same variables): every form of the limits, oversubscription
//! on and off, control disabled, the shared cache naming the container's ledger. On the
//! fake GPU, with no `CUVISOR_*` variable set.

mod common;
use common::*;
use std::process::Command;

/// The driver probe under the shim with HAMi's variables `vars`, on a fake node of
/// `gpus` 4 GiB GPUs; its ledger where `CUDA_DEVICE_MEMORY_SHARED_CACHE` says, in `dir`.
fn pod(dir: &TempDir, gpus: u32, vars: &[(&str, &str)]) -> Command {
    let mut cmd = shimmed(driver_probe());
    // A HAMi pod has no CUVISOR_* variable: the shared cache names the ledger.
    cmd.env_remove("CUVISOR_LEDGER_DIR")
        .env("FAKE_CUDA_DEVICE_COUNT", gpus.to_string())
        .env("FAKE_CUDA_DEVICE_MEM", "4GiB")
        .env(
            "CUDA_DEVICE_MEMORY_SHARED_CACHE",
            dir.path("vgpu/0f3c2a.cache"),
        );
    std::fs::create_dir_all(dir.path("vgpu")).unwrap();
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn a_limit_per_device_index_without_oversubscription_is_a_device_mode_quota() {
    let dir = TempDir::new("hami-index");
    let out = run_script(
        &mut pod(&dir, 1, &[("CUDA_DEVICE_MEMORY_LIMIT_0", "64m")]),
        "init alloc 64M alloc 1 info attr 0 nvml",
    );
    assert_eq!(
        out[..5],
        [
            "init -> 0",
            "alloc 64M -> 0 #0",
            "alloc 1 -> 2",
            &format!("info -> 0 0 {}", 64 * MIB),
            "attr 0 -> 0 type=2 managed=0",
        ],
        "{out:?}"
    );
    // nvidia-smi in the pod agrees with CUDA.
    assert_eq!(out[5], format!("nvml v1 -> 0 {} 0 {}", 64 * MIB, 64 * MIB));
    // The container's ledger is where HAMi's shared cache says.
    assert!(dir.path("vgpu/0f3c2a.ledger").is_file());
}

#[test]
fn the_global_limit_holds_on_each_device_and_oversubscription_means_managed_memory() {
    let dir = TempDir::new("hami-global");
    let out = run_script(
        &mut pod(
            &dir,
            2,
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT", "0x20m"),
                ("CUDA_OVERSUBSCRIBE", "true"),
            ],
        ),
        "init alloc 32M attr 0 alloc 1 device 1 alloc 32M alloc 1",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "alloc 32M -> 0 #0",
            "attr 0 -> 0 type=2 managed=1",
            "alloc 1 -> 2",
            "device 1 -> 0",
            "alloc 32M -> 0 #1",
            "alloc 1 -> 2",
        ]
    );
}

/// Every unit HAMi accepts, and its "no limit".
#[test]
fn every_unit_of_hamis_syntax() {
    for (text, bytes) in [
        ("65536k", 64 * MIB),
        ("64M", 64 * MIB),
        ("67108864", 64 * MIB),
        ("1g", 1024 * MIB),
        ("0X4000000", 64 * MIB),
    ] {
        let dir = TempDir::new("hami-unit");
        let out = run_script(
            &mut pod(&dir, 1, &[("CUDA_DEVICE_MEMORY_LIMIT_0", text)]),
            "init info",
        );
        assert_eq!(out[1], format!("info -> 0 {bytes} {bytes}"), "{text}");
    }
    let dir = TempDir::new("hami-zero");
    let out = run_script(
        &mut pod(&dir, 1, &[("CUDA_DEVICE_MEMORY_LIMIT_0", "0")]),
        "init info",
    );
    assert_eq!(
        out[1],
        format!("info -> 0 {} {}", 4 * GIB, 4 * GIB),
        "0: no limit"
    );
    let dir = TempDir::new("hami-bad");
    let out = run(pod(&dir, 1, &[("CUDA_DEVICE_MEMORY_LIMIT_0", "3000mb")]).args(["init"]));
    assert_eq!(lines(&out), ["init -> 3"]);
    assert!(
        stderr(&out)
            .contains("CUDA_DEVICE_MEMORY_LIMIT_0=\"3000mb\" is invalid: expected HAMi's form"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn control_disabled_turns_the_shim_off_and_each_device_has_its_own_limit() {
    let dir = TempDir::new("hami-off");
    let out = run_script(
        &mut pod(
            &dir,
            1,
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT_0", "1m"),
                ("CUDA_DISABLE_CONTROL", "true"),
            ],
        ),
        "init alloc 64M attr 0",
    );
    assert_eq!(
        out,
        [
            "init -> 0",
            "alloc 64M -> 0 #0",
            "attr 0 -> 0 type=2 managed=0"
        ]
    );
    // Limits that differ between devices: each GPU its own (gpumem-percentage on GPUs
    // of two sizes).
    let dir = TempDir::new("hami-differ");
    let out = run_script(
        &mut pod(
            &dir,
            2,
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT_0", "64m"),
                ("CUDA_DEVICE_MEMORY_LIMIT_1", "32m"),
            ],
        ),
        "init info alloc 64M alloc 1 device 1 info alloc 32M alloc 1 info",
    );
    assert_eq!(
        out,
        [
            "init -> 0".to_owned(),
            format!("info -> 0 {} {}", 64 * MIB, 64 * MIB),
            "alloc 64M -> 0 #0".into(),
            "alloc 1 -> 2".into(),
            "device 1 -> 0".into(),
            format!("info -> 0 {} {}", 32 * MIB, 32 * MIB),
            "alloc 32M -> 0 #1".into(),
            "alloc 1 -> 2".into(),
            format!("info -> 0 0 {}", 32 * MIB),
        ]
    );
}

/// The container's processes share one quota through the ledger HAMi's cache names.
#[test]
fn the_containers_processes_share_one_quota() {
    let dir = TempDir::new("hami-shared");
    let vars = [("CUDA_DEVICE_MEMORY_LIMIT_0", "64m")];
    let mut first = pod(&dir, 1, &vars);
    first.args(["init", "alloc", "48M", "wait"]);
    let (mut holder, _out, seen) = hold(first, 2);
    assert_eq!(seen[1], "alloc 48M -> 0 #0");
    let out = run_script(&mut pod(&dir, 1, &vars), "init alloc 32M alloc 16M");
    assert_eq!(out, ["init -> 0", "alloc 32M -> 2", "alloc 16M -> 0 #0"]);
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
}
