//! Issue 11: the supervisor places models on a node's GPUs (read from NVML, here the fake
//! one of four 16 GiB GPUs), refuses what does not fit with the numbers, and runs each
//! placed model's workers on its GPUs only.

mod common;
use common::supervisor::*;
use common::*;
use std::process::Command;
use std::time::Duration;

const GIB: u64 = 1 << 30;

/// Whether the dynamic loader finds an NVML of the host's own (outside the fake's directory).
fn nvml_is_installed() -> bool {
    let out = run(Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q 'libnvidia-ml.so.1 '"])
        .env_remove("LD_LIBRARY_PATH"));
    out.status.success()
}

/// The fake node, for the supervisor and (through its environment) its workers.
fn node_env(state: &std::path::Path) -> Vec<(String, String)> {
    fake_node(4, "16GiB", state)
}

/// `cuvisor check` of `text` on the fake node: (exit code, stdout, stderr).
fn check(text: &str) -> (i32, String, String) {
    let dir = TempDir::new("placement-check");
    let path = dir.path("cuvisor.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cuvisor"));
    cmd.arg("check").arg(&path).env_remove("LD_PRELOAD");
    for (k, v) in node_env(&dir.path("gpu-state")) {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        // Without WARNING lines (every model here runs as root: `check` says so).
        stderr(&out)
            .replace(&format!("{}:", path.display()), "FILE:")
            .lines()
            .filter(|l| !l.starts_with("WARNING: "))
            .map(|l| format!("{l}\n"))
            .collect(),
    )
}

/// Six models asking for GPUs by number (the pure planner's unit tests use the same).
fn six(policy: &str, seventh: bool) -> String {
    let mut text = format!("[supervisor]\nplacement = \"{policy}\"\n");
    let mut models = vec![
        ("a", 2, 8),
        ("b", 1, 6),
        ("c", 1, 4),
        ("d", 1, 10),
        ("e", 2, 4),
        ("f", 1, 8),
    ];
    if seventh {
        models.push(("g", 1, 9));
    }
    for (name, gpus, quota) in models {
        text += &format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"/bin/true\"\ngpus = {gpus}\ngpu_quota = \"{quota}GiB\"\n"
        );
    }
    text
}

fn model_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("model ")).collect()
}

#[test]
fn check_prints_the_plan_by_pack_and_by_spread() {
    let (code, out, err) = check(&six("pack", false));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        model_lines(&out),
        [
            "model a: GPU 0, 1",
            "model b: GPU 0",
            "model c: GPU 1",
            "model d: GPU 2",
            "model e: GPU 1, 2",
            "model f: GPU 3",
        ],
        "{out}"
    );
    let gpu_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("GPU ")).collect();
    assert_eq!(gpu_lines.len(), 4, "{out}");
    assert!(
        gpu_lines[1].starts_with("GPU 1 GPU-")
            && gpu_lines[1]
                .ends_with(": 16.0 GiB committed of 16.0 GiB (16.0 GiB memory): a, c, e"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with(
            "placement: pack, gpu_overcommit 1, host memory for what cannot be resident: 0 B needed of "
        )),
        "{out}"
    );
    let (code, out, err) = check(&six("spread", false));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        model_lines(&out),
        [
            "model a: GPU 0, 1",
            "model b: GPU 2",
            "model c: GPU 3",
            "model d: GPU 3",
            "model e: GPU 0, 2",
            "model f: GPU 1",
        ],
        "{out}"
    );
}

#[test]
fn a_seventh_model_that_does_not_fit_is_refused_by_check_and_run_with_the_numbers() {
    let (code, out, err) = check(&six("pack", true));
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err.trim_end(),
        "FILE: model g: gpus = 1 needs 1 GPU(s) with room for its quota, and 0 have it (GPU 0: \
         14.0 GiB of 16.0 GiB committed, 9.0 GiB needed; GPU 1: 16.0 GiB of 16.0 GiB committed, \
         9.0 GiB needed; GPU 2: 14.0 GiB of 16.0 GiB committed, 9.0 GiB needed; GPU 3: 8.0 GiB \
         of 16.0 GiB committed, 9.0 GiB needed; gpu_overcommit = 1)"
    );
    // Overcommitted 2x and spread, the seventh fits on GPU 2 (19 GiB committed of its
    // 16 GiB): the host must hold the 3 GiB that cannot be resident, and does.
    let overcommitted =
        six("spread", true).replace("[supervisor]\n", "[supervisor]\ngpu_overcommit = 2.0\n");
    let (code, out, err) = check(&overcommitted);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("model g: GPU 2\n"), "{out}");
    assert!(
        out.contains("host memory for what cannot be resident: 3.0 GiB needed of "),
        "{out}"
    );
    // Unless the models' memory limits leave no host memory for it.
    let host = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = host
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let (code, _, err) = check(&format!(
        "{overcommitted}[[model]]\nname = \"h\"\ncommand = \"/bin/true\"\nmemory_limit = \"{}\"\n",
        kib * 1024
    ));
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        "FILE: the GPU memory committed beyond the GPUs' own (3.0 GiB: GPU 2 3.0 GiB) does not fit \
         in the host memory left for it (0 B); lower gpu_overcommit, the quotas, or the models' \
         memory_limit"
    );
    // `run` refuses what `check` refuses, before starting anything.
    let dir = TempDir::new("placement-run");
    let path = dir.path("cuvisor.toml");
    let settings = format!(
        "[supervisor]\nsocket = \"{}\"\nledger_dir = \"{}\"\ncgroup_name = \"{}\"\n",
        dir.path("control.sock").display(),
        dir.path("ledgers").display(),
        unique("placement-run")
    );
    std::fs::write(
        &path,
        six("pack", true).replacen("[supervisor]\n", &settings, 1),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cuvisor"));
    cmd.arg("run")
        .arg("--shim")
        .arg(shim_path())
        .arg(&path)
        .env_remove("LD_PRELOAD");
    for (k, v) in node_env(&dir.path("gpu-state")) {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "cuvisor: model g: gpus = 1 needs 1 GPU(s) with room for its quota, and 0 have it"
        ),
        "{err}"
    );
    assert!(!dir.path("control.sock").exists());
}

#[test]
fn named_gpus_and_bad_names_are_checked_against_the_node() {
    let (code, _, err) = check(
        "[[model]]\nname = \"x\"\ncommand = \"/bin/true\"\ngpus = [3, 4]\ngpu_quota = \"1GiB\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "FILE: model x: gpus names GPU 4, which this node does not have (it has 4 GPU(s): 0 GPU-"
        ),
        "{err}"
    );
    // Without a driver (no NVML to load), a configuration that places models cannot run.
    // On a host that has NVIDIA's NVML this part cannot be shown.
    if nvml_is_installed() {
        println!("skipped the no-driver case: this host has libnvidia-ml.so.1");
        return;
    }
    let dir = TempDir::new("no-nvml");
    let path = dir.path("cuvisor.toml");
    std::fs::write(
        &path,
        "[[model]]\nname = \"x\"\ncommand = \"/bin/true\"\ngpus = 1\n",
    )
    .unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("check")
        .arg(&path)
        .env_remove("LD_LIBRARY_PATH"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot load NVML (libnvidia-ml.so.1)"),
        "{}",
        stderr(&out)
    );
}

/// The case under `cuvisor run`: a model with `gpus = 2` and a 3 GiB quota runs
/// two ranks, one per GPU; each may allocate exactly 3 GiB on its own GPU; CUDA and NVML
/// in each show only the model's two GPUs; status and metrics show the placement.
#[test]
fn a_placed_model_runs_its_ranks_on_its_gpus() {
    let state = TempDir::new("placed-state");
    let env = node_env(&state.path("gpu-state"));
    let probe = stub_dir().join("driver_probe");
    let rank = |d: u32| {
        format!(
            "{} device {d} alloc 3GiB alloc 1 info devices nvml-list nvml-info {d} sleep 100000 | sed -u s/^/rank{d}:/",
            probe.display()
        )
    };
    let mut s = Supervisor::start_in(
        "placed",
        "placement = \"spread\"\n",
        &env,
        &format!(
            "[[model]]\nname = \"filler\"\ncommand = \"sleep\"\nargs = [\"100000\"]\ngpus = [0]\ngpu_quota = \"8GiB\"\n\
             [[model]]\nname = \"tp\"\ncommand = \"sh\"\nargs = [\"-c\", \"{} & {} & wait\"]\ngpus = 2\ngpu_quota = \"3GiB\"\nmode = \"device\"\n",
            rank(0),
            rank(1)
        ),
    );
    wait_until("both ranks", Duration::from_secs(10), || {
        let log = s.log("tp-0");
        log.contains("rank0:nvml-info") && log.contains("rank1:nvml-info")
    });
    let status = s.status();
    let uuids: Vec<String> = status["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(uuids.len(), 4, "{status}");
    assert_eq!(
        status["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["committed_bytes"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [8 * GIB, 3 * GIB, 3 * GIB, 0]
    );
    let tp = s.model("tp");
    assert_eq!(tp["placed_on"], serde_json::json!([uuids[1], uuids[2]]));
    let log = s.log("tp-0");
    for (d, gpu) in [(0, &uuids[1]), (1, &uuids[2])] {
        let lines: Vec<&str> = log
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("rank{d}:")))
            .collect();
        assert_eq!(
            lines[..5],
            [
                format!("device {d} -> 0"),
                "alloc 3GiB -> 0 #0".to_owned(),
                "alloc 1 -> 2".into(),
                format!("info -> 0 0 {}", 3 * GIB),
                "devices -> 0 2".into(),
            ],
            "{log}"
        );
        assert!(
            lines[5].starts_with(&format!("ordinal 0 {} ", uuids[1])),
            "{log}"
        );
        assert!(
            lines[6].starts_with(&format!("ordinal 1 {} ", uuids[2])),
            "{log}"
        );
        assert_eq!(lines[7], "nvml-list -> 0 2", "{log}");
        assert!(
            lines[8].starts_with(&format!("nvml 0 {} ", uuids[1])),
            "{log}"
        );
        assert!(
            lines[9].starts_with(&format!("nvml 1 {} ", uuids[2])),
            "{log}"
        );
        // NVML numbers the model's GPUs as CUDA does: the rank's own GPU, full.
        assert_eq!(
            lines[10],
            format!("nvml-info {d} -> 0 {} 0 {}", 3 * GIB, 3 * GIB),
            "{log}"
        );
        // The shim's refusal names the rank's own GPU.
        assert!(
            log.contains(&format!("cuMemAlloc_v2 of 1 bytes refused on {gpu}: ")),
            "{log}"
        );
    }
    let used: Vec<(String, u64)> = tp["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["uuid"].as_str().unwrap().to_owned(),
                g["used_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(used.len(), 2, "{tp}");
    for gpu in [&uuids[1], &uuids[2]] {
        assert!(used.contains(&(gpu.clone(), 3 * GIB)), "{tp}");
    }
    let (code, metrics) = cuvisor::control::request(&s.socket, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    for line in [
        format!(
            "cuvisor_gpu_committed_bytes{{gpu=\"{}\"}} {}",
            uuids[0],
            8 * GIB
        ),
        format!(
            "cuvisor_gpu_memory_bytes{{gpu=\"{}\"}} {}",
            uuids[3],
            16 * GIB
        ),
        format!(
            "cuvisor_gpu_used_bytes{{model=\"tp\",gpu=\"{}\"}} {}",
            uuids[2],
            3 * GIB
        ),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert_eq!(s.stop().0, 0);
}
