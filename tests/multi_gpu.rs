//! Issue 11: a quota on each GPU a model uses. Tensor-parallel ranks are separate
//! processes on a fake node of four GPUs that share one device state, each selecting its
//! GPU as a rank does (`cuCtxSetCurrent` on its device's primary context, or its own
//! `CUDA_VISIBLE_DEVICES`).

mod common;
use common::*;
use cuvisor::gpu::GpuUuid;
use cuvisor::ledger::LedgerFile;
use std::io::BufReader;
use std::path::Path;
use std::process::{Child, ChildStdout, Command};

const GIB: u64 = 1 << 30;

/// A process of model `m` on a fake node of four 16 GiB GPUs (`state` shared by every
/// process of the test), in device mode, under a 3 GiB quota unless `extra` says otherwise.
fn rank(dir: &Path, state: &Path, extra: &[(&str, &str)]) -> Command {
    let mut cmd = shimmed(driver_probe());
    cmd.env("CUVISOR_LEDGER_DIR", dir)
        .env("CUVISOR_MODEL", "m")
        .env("CUVISOR_MODE", "device")
        .env("CUVISOR_QUOTA", "3GiB")
        .env("FAKE_CUDA_DEVICE_COUNT", "4")
        .env("FAKE_CUDA_DEVICE_MEM", "16GiB")
        .env("FAKE_CUDA_STATE", state);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// A process that holds its memory until its stdin closes, and its stdout (kept open: it
/// prints a last line when it goes on).
type Held = (Child, BufReader<ChildStdout>);

/// Starts `script` (ending in `wait`) and returns once it printed `n` lines.
fn hold_script(mut cmd: Command, script: &str, n: usize) -> (Held, Vec<String>) {
    cmd.args(script.split_whitespace());
    let (child, out, seen) = hold(cmd, n);
    ((child, out), seen)
}

/// Lets a held process go on to its end; asserts it exited 0.
fn release((mut child, _out): Held) {
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// The UUID of the fake node's physical GPU `n`, as the driver names it.
fn uuid_of(state: &Path, n: u32) -> GpuUuid {
    let dir = TempDir::new("uuid");
    let out = run_script(
        &mut rank(&dir.0, state, &[("CUVISOR_MODE", "off")]),
        &format!("device {n} uuid"),
    );
    out[1]
        .strip_prefix("uuid -> 0 ")
        .unwrap_or_else(|| panic!("{out:?}"))
        .parse()
        .unwrap()
}

fn used_on(dir: &Path, gpu: GpuUuid) -> Option<u64> {
    let snap = LedgerFile::open(dir, "m").unwrap().snapshot().unwrap();
    snap.gpu(gpu).map(|g| g.used)
}

/// The first case: two ranks, one per GPU, each holding the whole 3 GiB quota on
/// its own GPU and refused one byte more; each sees 3 GiB in total and its own GPU's free
/// memory; killing one gives its bytes back to its GPU only.
#[test]
fn each_rank_has_the_quota_on_its_own_gpu_and_a_dead_rank_returns_its_bytes_there() {
    let dir = TempDir::new("ranks");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    // NVML numbers every GPU (the ranks are not placed by a supervisor here): each rank
    // asks about its own GPU and the other's, as nvidia-smi would.
    let script =
        |d: u32| format!("device {d} alloc 3GiB alloc 1 info total nvml-info {d} nvml-info 3 wait");
    let (rank0, seen0) = hold_script(rank(&ledgers, &state, &[]), &script(0), 7);
    let ((mut rank1, _out1), seen1) = hold_script(rank(&ledgers, &state, &[]), &script(1), 7);
    for (d, seen) in [(0, &seen0), (1, &seen1)] {
        assert_eq!(
            seen,
            &[
                format!("device {d} -> 0"),
                "alloc 3GiB -> 0 #0".into(),
                "alloc 1 -> 2".into(),
                format!("info -> 0 0 {}", 3 * GIB),
                format!("total -> 0 {}", 3 * GIB),
                format!("nvml-info {d} -> 0 {} 0 {}", 3 * GIB, 3 * GIB),
                format!("nvml-info 3 -> 0 {} {} 0", 3 * GIB, 3 * GIB),
            ],
            "rank {d}"
        );
    }
    let (gpu0, gpu1) = (uuid_of(&state, 0), uuid_of(&state, 1));
    assert_ne!(gpu0, gpu1);
    assert_eq!(
        (used_on(&ledgers, gpu0), used_on(&ledgers, gpu1)),
        (Some(3 * GIB), Some(3 * GIB))
    );
    // Asking about GPU 3 did not make it one of the model's GPUs.
    let snap = LedgerFile::open(&ledgers, "m").unwrap().snapshot().unwrap();
    assert_eq!(snap.gpus.len(), 2, "{snap:?}");
    // A third process on GPU 2 has the whole quota there; on GPU 0, nothing.
    assert_eq!(
        run_script(
            &mut rank(&ledgers, &state, &[]),
            "device 2 info alloc 3GiB device 0 info alloc 1"
        ),
        [
            "device 2 -> 0".to_owned(),
            format!("info -> 0 {} {}", 3 * GIB, 3 * GIB),
            "alloc 3GiB -> 0 #0".into(),
            "device 0 -> 0".into(),
            format!("info -> 0 0 {}", 3 * GIB),
            "alloc 1 -> 2".into(),
        ]
    );
    // Rank 1 dies without a word: its bytes go back to GPU 1, and only there.
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let reclaimed = LedgerFile::open(&ledgers, "m").unwrap().reclaim_dead();
    assert_eq!((reclaimed.slots, reclaimed.bytes), (1, 3 * GIB));
    assert_eq!(
        (used_on(&ledgers, gpu0), used_on(&ledgers, gpu1)),
        (Some(3 * GIB), Some(0))
    );
    assert_eq!(
        run_script(
            &mut rank(&ledgers, &state, &[]),
            "device 1 alloc 3GiB device 0 alloc 1"
        ),
        [
            "device 1 -> 0",
            "alloc 3GiB -> 0 #0",
            "device 0 -> 0",
            "alloc 1 -> 2"
        ]
    );
    release(rank0);
    assert_eq!(used_on(&ledgers, gpu0), Some(0));
}

/// A GPU is named by its UUID: a process that sees physical GPU 2 as its device 0
/// (`CUDA_VISIBLE_DEVICES`) and one that selects device 2 share its quota.
#[test]
fn processes_that_see_a_gpu_under_different_ordinals_share_its_quota() {
    let dir = TempDir::new("ordinals");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    let gpu2 = uuid_of(&state, 2);
    let (narrow, seen) = hold_script(
        rank(
            &ledgers,
            &state,
            &[("CUDA_VISIBLE_DEVICES", &gpu2.to_string())],
        ),
        "device 0 uuid alloc 2GiB wait",
        3,
    );
    assert_eq!(
        seen,
        [
            "device 0 -> 0".to_owned(),
            format!("uuid -> 0 {gpu2}"),
            "alloc 2GiB -> 0 #0".into()
        ]
    );
    assert_eq!(
        run_script(
            &mut rank(&ledgers, &state, &[]),
            "device 2 uuid info alloc 1GiB alloc 1"
        ),
        [
            "device 2 -> 0".to_owned(),
            format!("uuid -> 0 {gpu2}"),
            format!("info -> 0 {} {}", GIB, 3 * GIB),
            "alloc 1GiB -> 0 #0".into(),
            "alloc 1 -> 2".into(),
        ]
    );
    release(narrow);
    let snap = LedgerFile::open(&ledgers, "m").unwrap().snapshot().unwrap();
    assert_eq!(snap.gpus.len(), 1, "one GPU, one entry: {snap:?}");
}

/// `NN%` is resolved against each GPU's own memory.
#[test]
fn a_percentage_is_resolved_against_each_gpus_own_memory() {
    let dir = TempDir::new("percent");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    let mut cmd = rank(
        &ledgers,
        &state,
        &[
            ("CUVISOR_QUOTA", "50%"),
            ("FAKE_CUDA_DEVICE_COUNT", "2"),
            ("FAKE_CUDA_DEVICE_MEM", "8GiB,16GiB"),
        ],
    );
    assert_eq!(
        run_script(
            &mut cmd,
            "device 0 total alloc 4GiB alloc 1 device 1 total alloc 8GiB alloc 1"
        ),
        [
            "device 0 -> 0".to_owned(),
            format!("total -> 0 {}", 4 * GIB),
            "alloc 4GiB -> 0 #0".into(),
            "alloc 1 -> 2".into(),
            "device 1 -> 0".into(),
            format!("total -> 0 {}", 8 * GIB),
            "alloc 8GiB -> 0 #1".into(),
            "alloc 1 -> 2".into(),
        ]
    );
}

/// Inside a placed model (`CUVISOR_GPUS`, with the matching `CUDA_VISIBLE_DEVICES`), NVML
/// shows the model's GPUs only, in its order, and does not find the others.
#[test]
fn nvml_inside_a_placed_model_shows_only_its_gpus() {
    let dir = TempDir::new("nvml");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    let (gpu1, gpu2, gpu3) = (uuid_of(&state, 1), uuid_of(&state, 2), uuid_of(&state, 3));
    let placed = format!("{gpu3},{gpu1}");
    let mut cmd = rank(
        &ledgers,
        &state,
        &[("CUVISOR_GPUS", &placed), ("CUDA_VISIBLE_DEVICES", &placed)],
    );
    let out = run_script(
        &mut cmd,
        &format!(
            "device 1 alloc 1GiB nvml-list nvml-by-uuid {gpu2} nvml-by-uuid {gpu1} devices \
             nvml-by-bus 00000000:12:00.0 nvml-by-bus 00000000:11:00.0 nvml-info 1 nvml-info 2"
        ),
    );
    assert_eq!(out[..2], ["device 1 -> 0", "alloc 1GiB -> 0 #0"]);
    assert_eq!(out[2], "nvml-list -> 0 2", "{out:?}");
    // In the model's order, numbered as CUDA numbers them, each with the quota as total.
    for (line, (index, gpu)) in out[3..5].iter().zip([(0, gpu3), (1, gpu1)]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            [fields[0], fields[1], fields[2], fields[5]],
            [
                "nvml",
                &index.to_string(),
                &gpu.to_string(),
                &(3 * GIB).to_string()
            ],
            "{out:?}"
        );
    }
    assert_eq!(out[5], format!("nvml-by-uuid {gpu2} -> 6 -1"));
    assert_eq!(out[6], format!("nvml-by-uuid {gpu1} -> 0 1"));
    // CUDA agrees: two devices, in the same order.
    assert_eq!(out[7], "devices -> 0 2");
    assert!(
        out[8].starts_with(&format!("ordinal 0 {gpu3} "))
            && out[9].starts_with(&format!("ordinal 1 {gpu1} ")),
        "{out:?}"
    );
    // By PCI bus: GPU 2 (bus 0x12) is not the model's; GPU 1 (bus 0x11) is its second.
    assert_eq!(out[10], "nvml-by-bus 00000000:12:00.0 -> 6 -1");
    assert_eq!(out[11], "nvml-by-bus 00000000:11:00.0 -> 0 1");
    // NVML's index 1 is the model's GPU 1 (CUDA's device 1, where it holds 1 GiB); there
    // is no index 2 (NVML_ERROR_INVALID_ARGUMENT).
    assert_eq!(
        out[12],
        format!("nvml-info 1 -> 0 {} {} {}", 3 * GIB, 2 * GIB, GIB)
    );
    assert_eq!(out[13], "nvml-info 2 -> 2 0 0 0");
    // Without CUVISOR_GPUS, NVML shows every GPU, as NVML does.
    let all = run_script(&mut rank(&ledgers, &state, &[]), "nvml-list");
    assert_eq!(all[0], "nvml-list -> 0 4");
}

/// Inside a placed model, NVML's process lists show only the model's own processes:
/// another model's process on the same GPU (another tenant's pid and memory) is not
/// listed. NVML's count protocol is kept. Without `CUVISOR_GPUS`, NVML's whole list.
#[test]
fn nvml_process_lists_inside_a_placed_model_show_only_its_processes() {
    let dir = TempDir::new("nvml-processes");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    let placed = uuid_of(&state, 1).to_string();
    let of = |model: &str| {
        let mut cmd = rank(
            &ledgers,
            &state,
            &[("CUVISOR_GPUS", &placed), ("CUDA_VISIBLE_DEVICES", &placed)],
        );
        cmd.env("CUVISOR_MODEL", model);
        cmd
    };
    let (other, seen) = hold_script(of("other"), "init alloc 1GiB wait", 2);
    assert_eq!(seen, ["init -> 0", "alloc 1GiB -> 0 #0"]);
    let (sibling, seen) = hold_script(of("m"), "init alloc 512MiB wait", 2);
    assert_eq!(seen, ["init -> 0", "alloc 512MiB -> 0 #0"]);
    let mut out = run_script(&mut of("m"), "init alloc 256MiB nvml-procs 0");
    let own = out.pop().unwrap();
    assert!(own.ends_with(" 268435456 self"), "{own}");
    assert_eq!(
        out,
        [
            "init -> 0".to_owned(),
            "alloc 256MiB -> 0 #0".to_owned(),
            // NVML_ERROR_INSUFFICIENT_SIZE (7) with the count, then the list.
            "nvml-procs 0 -> 0 2 sizing=7".to_owned(),
            format!("pid {} 536870912", sibling.0.id()),
        ]
    );
    // The other model sees only itself.
    assert_eq!(
        run_script(&mut of("other"), "nvml-procs 0"),
        [
            "nvml-procs 0 -> 0 1 sizing=7".to_owned(),
            format!("pid {} 1073741824", other.0.id()),
        ]
    );
    // In a PID namespace of its own, NVML's pids (the initial namespace's) cannot be
    // told from another tenant's: nothing is listed.
    let mut own_namespace = Command::new("unshare");
    let probe = of("m");
    own_namespace
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(probe.get_program())
        .envs(probe.get_envs().filter_map(|(k, v)| Some((k, v?))));
    assert_eq!(
        run_script(&mut own_namespace, "init alloc 64MiB nvml-procs 0"),
        [
            "init -> 0",
            "alloc 64MiB -> 0 #0",
            "nvml-procs 0 -> 0 0 sizing=0"
        ]
    );
    // Not placed: every process on the GPU (physical index 1), as NVML lists them.
    let mut all = run_script(&mut rank(&ledgers, &state, &[]), "nvml-procs 1");
    all[1..].sort();
    let mut expected = vec![
        format!("pid {} 1073741824", other.0.id()),
        format!("pid {} 536870912", sibling.0.id()),
    ];
    expected.sort();
    assert_eq!(all[0], "nvml-procs 1 -> 0 2 sizing=7");
    assert_eq!(all[1..], expected);
    release(other);
    release(sibling);
}

/// Inside a placed model, boards are not found by another GPU's serial number, and the
/// topology lists hold only the model's GPUs; NVML's count protocol is kept.
#[test]
fn nvml_serials_and_topology_inside_a_placed_model_show_only_its_gpus() {
    let dir = TempDir::new("nvml-topology");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    let (gpu1, gpu3) = (uuid_of(&state, 1), uuid_of(&state, 3));
    let placed = format!("{gpu3},{gpu1}");
    let mut cmd = rank(
        &ledgers,
        &state,
        &[("CUVISOR_GPUS", &placed), ("CUDA_VISIBLE_DEVICES", &placed)],
    );
    // The fake's boards have serials 1650924000100 + their physical index.
    let script = "nvml-serial 0 nvml-by-serial 1650924000102 nvml-by-serial 1650924000101 \
                  nvml-nearest 0 50 nvml-nearest 1 50 nvml-nearest 0 40 nvml-gpuset 0";
    assert_eq!(
        run_script(&mut cmd, script),
        [
            "nvml-serial 0 -> 0 1650924000103".to_owned(),
            "nvml-by-serial 1650924000102 -> 6 -".to_owned(), // GPU 2: not the model's
            format!("nvml-by-serial 1650924000101 -> 0 {gpu1}"),
            // Of the three other GPUs, only the model's second one.
            format!("nvml-nearest 0 50 -> 0 1 {gpu1}"),
            format!("nvml-nearest 1 50 -> 0 1 {gpu3}"),
            "nvml-nearest 0 40 -> 0 0".to_owned(),
            // In NVML's order (physical), not the model's.
            format!("nvml-gpuset 0 -> 0 2 {gpu1} {gpu3}"),
        ]
    );
    // Without CUVISOR_GPUS: every GPU.
    let all = run_script(
        &mut rank(&ledgers, &state, &[]),
        "nvml-nearest 0 50 nvml-gpuset 0 nvml-by-serial 1650924000102",
    );
    assert!(all[0].starts_with("nvml-nearest 0 50 -> 0 3 "), "{all:?}");
    assert!(all[1].starts_with("nvml-gpuset 0 -> 0 4 "), "{all:?}");
    assert_eq!(
        all[2],
        format!("nvml-by-serial 1650924000102 -> 0 {}", uuid_of(&state, 2))
    );
}

/// On a node with NVML's S-class units (two here: GPUs 0 and 2 in unit 0, 1 and 3 in
/// unit 1), a unit's GPU list inside a placed model holds only the model's GPUs, under
/// the call's own protocol (too little room: NVML_ERROR_INSUFFICIENT_SIZE and the count).
#[test]
fn nvml_units_inside_a_placed_model_list_only_its_gpus() {
    let dir = TempDir::new("nvml-units");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    let gpu: Vec<GpuUuid> = (0..4).map(|n| uuid_of(&state, n)).collect();
    let units = [("FAKE_CUDA_NVML_UNITS", "2")];
    let placed_on = |gpus: &str| {
        let mut cmd = rank(&ledgers, &state, &units);
        cmd.env("CUVISOR_GPUS", gpus)
            .env("CUDA_VISIBLE_DEVICES", gpus);
        cmd
    };
    assert_eq!(
        run_script(
            &mut placed_on(&format!("{},{}", gpu[3], gpu[1])),
            "nvml-unit 1 nvml-unit 0"
        ),
        [
            // Two of the model's GPUs: the first call's room for one is too little.
            format!("nvml-unit 1 -> 0 2 2 sizing=7 {} {}", gpu[1], gpu[3]),
            "nvml-unit 0 -> 0 2 0 sizing=0".to_owned(),
        ]
    );
    assert_eq!(
        run_script(&mut placed_on(&gpu[3].to_string()), "nvml-unit 1"),
        [format!("nvml-unit 1 -> 0 2 1 sizing=0 {}", gpu[3])]
    );
    // Not placed: NVML's own lists.
    assert_eq!(
        run_script(
            &mut rank(&ledgers, &state, &units),
            "nvml-unit 0 nvml-unit 2"
        ),
        [
            format!("nvml-unit 0 -> 0 2 2 sizing=7 {} {}", gpu[0], gpu[2]),
            "nvml-unit 2 -> 2 2 0 sizing=-1".to_owned(), // no unit 2
        ]
    );
}

/// Memory that lands on another GPU than the current one is charged there, even when
/// the current GPU is full: a VMM handle on the device its properties name, a pool
/// allocation on the pool's device, an allocation on a stream of another device's
/// context. Frees give it back there.
#[test]
fn memory_of_another_device_is_charged_on_that_gpu() {
    let dir = TempDir::new("elsewhere");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    let (gpu0, gpu1) = (uuid_of(&state, 0), uuid_of(&state, 1));
    let (held, seen) = hold_script(
        rank(&ledgers, &state, &[]),
        "device 0 alloc 3GiB vmm-on 1 2MiB pool-on 1 1GiB ptr-device 2 stream-on 1 1GiB \
         ptr-device 3 free-async 3 wait",
        8,
    );
    assert_eq!(
        seen,
        [
            "device 0 -> 0",
            "alloc 3GiB -> 0 #0",
            "vmm-on 1 2MiB -> 0 #1",
            "pool-on 1 1GiB -> 0 #2",
            "ptr-device 2 -> 0 1",
            "stream-on 1 1GiB -> 0 #3",
            "ptr-device 3 -> 0 1",
            "free-async 3 -> 0",
        ]
    );
    assert_eq!(used_on(&ledgers, gpu0), Some(3 * GIB));
    assert_eq!(used_on(&ledgers, gpu1), Some(GIB + (2 << 20)));
    // GPU 1 has 2 MiB less than 2 GiB left for the model: an allocation there that does
    // not fit is refused.
    assert_eq!(
        run_script(
            &mut rank(&ledgers, &state, &[]),
            "device 0 pool-on 1 2GiB stream-on 1 2GiB pool-on 1 1GiB device 1 info"
        ),
        [
            "device 0 -> 0".to_owned(),
            "pool-on 1 2GiB -> 2".into(),
            "stream-on 1 2GiB -> 2".into(),
            "pool-on 1 1GiB -> 0 #0".into(),
            "device 1 -> 0".into(),
            format!("info -> 0 {} {}", GIB - (2 << 20), 3 * GIB),
        ]
    );
    release(held);
    assert_eq!(
        (used_on(&ledgers, gpu0), used_on(&ledgers, gpu1)),
        (Some(0), Some(0))
    );
}

/// A model placed on some GPUs (`CUVISOR_GPUS`) cannot charge any other, even when it
/// sees it (here every GPU is visible to CUDA).
#[test]
fn a_placed_model_cannot_allocate_on_other_gpus() {
    let dir = TempDir::new("fenced");
    let state = dir.path("gpu-state");
    let ledgers = dir.path("ledgers");
    let gpu1 = uuid_of(&state, 1);
    let gpu0 = uuid_of(&state, 0);
    let out = run(
        rank(&ledgers, &state, &[("CUVISOR_GPUS", &gpu1.to_string())])
            .args("device 1 alloc 1M device 0 alloc 1M vmm-on 0 2MiB".split_whitespace()),
    );
    assert_eq!(
        lines(&out),
        [
            "device 1 -> 0",
            "alloc 1M -> 0 #0",
            "device 0 -> 0",
            "alloc 1M -> 2",
            "vmm-on 0 2MiB -> 2"
        ]
    );
    assert!(
        stderr(&out).contains(&format!(
            "device 0 is {gpu0}, which is not one of the GPUs the model was placed on"
        )),
        "{}",
        stderr(&out)
    );
}
