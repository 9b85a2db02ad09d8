//! One quota per model across all its processes: the shared ledger, black-box, with
//! processes under the shim on the fake GPU, and the `cuvisor ledger` CLI.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    run(Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("ledger")
        .args(args)
        .arg("--dir")
        .arg(dir))
}

fn ledger_json(dir: &Path) -> serde_json::Value {
    let out = cli(dir, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn model_json<'a>(all: &'a serde_json::Value, model: &str) -> &'a serde_json::Value {
    all["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("{model} in {all}"))
}

/// A process of `model` under the shim, running `script`, its stdout piped.
fn worker(dir: &Path, model: &str, extra: &[(&str, &str)], script: &str) -> Command {
    let mut cmd = shimmed(driver_probe());
    cmd.env("CUVISOR_LEDGER_DIR", dir)
        .env("CUVISOR_MODEL", model);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.args(script.split_whitespace());
    cmd
}

#[test]
fn two_processes_of_one_model_hit_the_quota_where_one_alone_would() {
    let dir = TempDir::new("two");
    let quota = [("CUVISOR_QUOTA", "8MiB")];
    let (mut first, _out, seen) = hold(worker(&dir.0, "m", &quota, "init alloc 3M info wait"), 3);
    assert_eq!(
        seen,
        ["init -> 0", "alloc 3M -> 0 #0", "info -> 0 5242880 8388608"]
    );
    // The second process sees the whole model in its virtual numbers, and the quota.
    let second = run_script(
        &mut worker(&dir.0, "m", &[], "init info alloc 5M alloc 1 info nvml"),
        "",
    );
    assert_eq!(
        second[..6],
        [
            "init -> 0",
            "info -> 0 5242880 8388608",
            "alloc 5M -> 0 #0",
            "alloc 1 -> 2",
            "info -> 0 0 8388608",
            "nvml v1 -> 0 8388608 0 8388608",
        ]
    );
    let all = ledger_json(&dir.0);
    let m = model_json(&all, "m");
    assert_eq!(
        (m["used"].as_u64(), m["gpus"][0]["peak"].as_u64()),
        (Some(3 * MIB), Some(8 * MIB)),
        "the second left"
    );
    assert_eq!(m["processes"].as_array().unwrap().len(), 1);
    drop(first.stdin.take());
    assert!(first.wait().unwrap().success());
    assert_eq!(model_json(&ledger_json(&dir.0), "m")["used"], 0);
}

#[test]
fn a_process_without_a_quota_joins_the_ledger_and_a_disagreeing_one_is_refused() {
    let dir = TempDir::new("authority");
    let out = cli(&dir.0, &["create", "--model", "m", "--quota", "4MiB"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        run_script(&mut worker(&dir.0, "m", &[], "init info"), ""),
        ["init -> 0", "info -> 0 4194304 4194304"]
    );
    assert_eq!(
        run_script(
            &mut worker(&dir.0, "m", &[("CUVISOR_QUOTA", "4194304")], "init"),
            ""
        ),
        ["init -> 0"],
        "the same quota written another way agrees"
    );
    let out = run(&mut worker(
        &dir.0,
        "m",
        &[("CUVISOR_QUOTA", "8MiB")],
        "init alloc 1M",
    ));
    assert_eq!(lines(&out), ["init -> 3", "alloc 1M -> 3"]);
    let err = stderr(&out);
    assert!(
        err.contains("the quota asked for (8388608 bytes on each GPU) disagrees with the ledger")
            && err.contains("(4194304 bytes on each GPU)")
            && err.contains("run without CUVISOR_QUOTA to join it"),
        "{err}"
    );
}

#[test]
fn forked_children_share_the_parents_model() {
    let dir = TempDir::new("fork");
    let out = run_script(
        &mut worker(
            &dir.0,
            "m",
            &[("CUVISOR_QUOTA", "8MiB")],
            "fork-keep 3M fork-keep 2M init alloc 3M alloc 1 info reap info",
        ),
        "",
    );
    assert_eq!(
        out,
        [
            "child alloc 3M -> 0",
            "fork-keep 3M -> 0",
            "child alloc 2M -> 0",
            "fork-keep 2M -> 0",
            "init -> 0",
            "alloc 3M -> 0 #0",
            "alloc 1 -> 2",
            "info -> 0 0 8388608",
            "reap -> 0",
            "info -> 0 5242880 8388608",
        ]
    );
}

#[test]
fn two_models_side_by_side_do_not_disturb_each_other() {
    let dir = TempDir::new("models");
    let quota = [("CUVISOR_QUOTA", "4MiB")];
    let (mut a, _ao, seen) = hold(worker(&dir.0, "alpha", &quota, "init alloc 4M wait"), 2);
    assert_eq!(seen[1], "alloc 4M -> 0 #0");
    assert_eq!(
        run_script(
            &mut worker(&dir.0, "beta", &quota, "init info alloc 4M alloc 1"),
            ""
        ),
        [
            "init -> 0",
            "info -> 0 4194304 4194304",
            "alloc 4M -> 0 #0",
            "alloc 1 -> 2"
        ]
    );
    let all = ledger_json(&dir.0);
    assert_eq!(model_json(&all, "alpha")["used"], 4 * MIB);
    assert_eq!(model_json(&all, "beta")["used"], 0);
    drop(a.stdin.take());
    a.wait().unwrap();
}

#[test]
fn a_killed_process_is_reclaimed_and_the_others_can_use_its_bytes() {
    let dir = TempDir::new("kill");
    let quota = [("CUVISOR_QUOTA", "8MiB")];
    let (mut victim, _vo, seen) = hold(worker(&dir.0, "m", &quota, "init alloc 6M wait"), 2);
    assert_eq!(seen[1], "alloc 6M -> 0 #0");
    victim.kill().unwrap();
    victim.wait().unwrap();
    let all = ledger_json(&dir.0);
    let m = model_json(&all, "m");
    assert_eq!(m["used"], 6 * MIB, "still charged until someone reclaims");
    assert_eq!(m["processes"][0]["alive"], false);
    // Another process of the model needs the room: it reclaims before refusing.
    assert_eq!(
        run_script(&mut worker(&dir.0, "m", &[], "init alloc 8M"), ""),
        ["init -> 0", "alloc 8M -> 0 #0"]
    );
    assert_eq!(model_json(&ledger_json(&dir.0), "m")["used"], 0);

    // The supervisor's way: `cuvisor ledger reclaim` after a death.
    let (mut victim, _vo, _) = hold(worker(&dir.0, "m", &[], "init alloc 5M wait"), 2);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let out = cli(&dir.0, &["reclaim", "--model", "m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        ["m: 1 dead process(es), 5.0 MiB given back, 0 B uncertain; 0 B in use"]
    );
}

#[test]
fn a_reused_pid_is_not_mistaken_for_a_live_process() {
    let dir = TempDir::new("pidreuse");
    let (mut victim, _vo, _) = hold(
        worker(
            &dir.0,
            "m",
            &[("CUVISOR_QUOTA", "8MiB")],
            "init alloc 2M wait",
        ),
        2,
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
    let all = ledger_json(&dir.0);
    let slot = model_json(&all, "m")["processes"][0]["slot"]
        .as_u64()
        .unwrap() as u32;
    // Make the dead slot name a live process: this test's own pid and start time.
    let me = std::process::id();
    let path = dir.0.join("m.ledger");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let offset = cuvisor::ledger::slot_offset(slot);
    use std::os::unix::fs::FileExt;
    file.write_all_at(&me.to_ne_bytes(), offset + 4).unwrap();
    file.write_all_at(&cuvisor::ledger::start_time(me).to_ne_bytes(), offset + 16)
        .unwrap();
    let all = ledger_json(&dir.0);
    let process = &model_json(&all, "m")["processes"][0];
    assert_eq!(process["pid"], me);
    assert_eq!(
        process["alive"], false,
        "liveness is the kernel's lock, not the pid"
    );
    let out = cli(&dir.0, &["reclaim"]);
    assert_eq!(
        lines(&out),
        ["m: 1 dead process(es), 2.0 MiB given back, 0 B uncertain; 0 B in use"]
    );
}

/// Every damaged form fails CUDA initialization in the process, with the file named,
/// and shows as an error (exit 1) in `cuvisor ledger`.
#[test]
fn bad_ledger_files_fail_closed() {
    let dir = TempDir::new("bad");
    let good = |model: &str| {
        let out = cli(&dir.0, &["create", "--model", model, "--quota", "1GiB"]);
        assert!(out.status.success(), "{}", stderr(&out));
        dir.0.join(format!("{model}.ledger"))
    };
    let patch = |path: &PathBuf, offset: u64, bytes: &[u8]| {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .write_all_at(bytes, offset)
            .unwrap();
    };
    let magic = good("magic");
    patch(&magic, 0, b"NOTALDGR");
    let version = good("version");
    patch(&version, 8, &7u32.to_ne_bytes());
    let older = good("older");
    patch(&older, 8, &1u32.to_ne_bytes()); // the layout before quotas per GPU
    let size = good("size");
    patch(&size, 20, &2048u32.to_ne_bytes()); // slot count no longer matches the file
    let slots = good("slots");
    patch(&slots, 20, &0u32.to_ne_bytes());
    let truncated = good("truncated");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let short = good("short");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(100)
        .unwrap();
    std::fs::create_dir(dir.0.join("directory.ledger")).unwrap();
    let target = good("target");
    std::os::unix::fs::symlink(&target, dir.0.join("symlink.ledger")).unwrap();
    let cases = [
        ("magic", "wrong magic number"),
        ("version", "layout version 7"),
        (
            "older",
            "layout version 1, made by an older cuvisor (this one reads version 4, with a \
             quota per GPU and hibernation); stop the model's processes first",
        ),
        ("size", "525568 bytes where 1049856 are expected"),
        (
            "slots",
            "header of 256 bytes, 16 GPU entries of 64 bytes, slots of 512 bytes, 0 slots",
        ),
        ("truncated", "1000 bytes where 525568 are expected"),
        ("short", "100 bytes, shorter than its header"),
        ("directory", "is a directory, not a ledger file"),
        ("symlink", "is a symbolic link, not a ledger file"),
    ];
    for (model, why) in cases {
        let out = run(&mut worker(&dir.0, model, &[], "init alloc 1M nvml"));
        assert_eq!(
            lines(&out)[..3],
            ["init -> 3", "alloc 1M -> 3", "nvml v1 -> 999 0 0 0"],
            "{model}"
        );
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{model}: one message: {err}");
        assert!(
            err.contains(&format!(
                "ledger {}",
                dir.0.join(format!("{model}.ledger")).display()
            )) && err.contains(why),
            "{model}: {err}"
        );
    }
    let out = cli(&dir.0, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a damaged ledger makes the listing fail"
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for (model, why) in cases {
        assert!(listing.contains(why), "{model} in {listing}");
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("target ") && l.contains("1.0 GiB")),
        "{listing}"
    );
}

#[test]
fn an_unreadable_ledger_fails_closed_for_another_user() {
    let dir = TempDir::new("perm");
    let out = cli(&dir.0, &["create", "--model", "private", "--quota", "1GiB"]);
    assert!(out.status.success());
    let path = dir.0.join("private.ledger");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: geteuid(2), declared with its C signature in this file, cannot fail.
    if unsafe { libc_geteuid() } != 0 {
        println!("skipped: needs root to run a process as another user");
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut cmd = worker(&dir.0, "private", &[], "init");
    cmd.uid(65534).gid(65534);
    // The probe and the stubs must be reachable for the other user.
    let out = run(&mut cmd);
    assert_eq!(lines(&out), ["init -> 3"]);
    let err = stderr(&out);
    assert!(
        err.contains("cannot open: Permission denied")
            && err.contains("unless created with a group"),
        "{err}"
    );
    // Created for a group, the file is 0660 and belongs to it.
    let out = cli(
        &dir.0,
        &[
            "create", "--model", "shared", "--quota", "1GiB", "--group", "65534",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = std::fs::metadata(dir.0.join("shared.ledger")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o660, 65534)
    );
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// 8 processes x 4 threads allocate and free at random on one model for seconds, on one
/// shared fake GPU. An observer outside the model samples the GPU's used memory through
/// NVML the whole time: it never exceeds the quota. Everything returns to zero.
#[test]
fn eight_processes_never_exceed_the_quota_together() {
    let dir = TempDir::new("stress8");
    let state = dir.path("gpu.state");
    let reports = dir.path("reports.jsonl");
    let quota = 64 * MIB;
    let gpu = |cmd: &mut Command| {
        cmd.env("FAKE_CUDA_STATE", &state)
            .env("FAKE_CUDA_DEVICE_MEM", "64GiB")
            .env("FAKE_CUDA_REPORT", &reports);
    };
    let mut observer = driver_probe();
    gpu(&mut observer);
    let observer = observer
        .args(["watch-nvml", "3500"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let workers: Vec<Child> = (0..8)
        .map(|i| {
            let mut w = worker(
                &dir.0,
                "m",
                &[
                    ("CUVISOR_QUOTA", "64MiB"),
                    ("CUVISOR_MODE", "device"),
                    ("CUVISOR_LOG", "error"),
                ],
                &format!("init stress-ms 4 2500 6M {i}"),
            );
            gpu(&mut w);
            w.stdout(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(
            lines(&out)[1].ends_with("ok=yes oom=yes other=0"),
            "{:?}",
            lines(&out)
        );
    }
    let watched = lines(&observer.wait_with_output().unwrap());
    let max: u64 = watched[0]
        .split("max=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        watched[0].starts_with("watch-nvml 3500 -> 0") && watched[0].ends_with("samples=many"),
        "{watched:?}"
    );
    assert!(
        max <= quota,
        "the GPU held {max} bytes for a model with a quota of {quota}"
    );
    assert!(
        max > quota / 2,
        "the workers should press on the quota ({max})"
    );
    for r in common::reports(&reports)
        .iter()
        .filter(|r| common::calls(r, "cuMemAlloc_v2") > 0)
    {
        assert!(r["device_bytes"]["peak"].as_u64().unwrap() <= quota);
    }
    let m = ledger_json(&dir.0);
    let m = model_json(&m, "m");
    assert_eq!(
        (m["used"].as_u64(), m["uncertain"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(m["gpus"][0]["peak"].as_u64().unwrap() <= quota);
}

/// The same with a third of the workers SIGKILLed at random moments: their bytes come
/// back, the survivors go on using the model's quota, and everything ends at zero.
#[test]
fn workers_killed_at_random_moments_are_reclaimed() {
    let dir = TempDir::new("kill9");
    let extra = [
        ("CUVISOR_QUOTA", "64MiB"),
        ("CUVISOR_MODE", "device"),
        ("CUVISOR_LOG", "error"),
    ];
    let mut workers: Vec<Child> = (0..9)
        .map(|i| {
            worker(
                &dir.0,
                "m",
                &extra,
                &format!("init stress-ms 4 2500 6M {}", 100 + i),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    // Kill three at moments spread over the run (pseudo-random, reproducible).
    let mut seed = 0x9E37_79B9u32;
    for victim in [1usize, 4, 7] {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        std::thread::sleep(Duration::from_millis(200 + (seed % 500) as u64));
        workers[victim].kill().unwrap();
    }
    let mut survivors_ok = 0;
    for (i, w) in workers.into_iter().enumerate() {
        let out = w.wait_with_output().unwrap();
        if [1, 4, 7].contains(&i) {
            continue;
        }
        assert!(out.status.success(), "worker {i}");
        let l = lines(&out);
        assert!(l[1].ends_with("ok=yes oom=yes other=0"), "{l:?}");
        survivors_ok += 1;
    }
    assert_eq!(survivors_ok, 6);
    // All gone: whatever the killed ones held, or had in flight, is back.
    let out = cli(&dir.0, &["reclaim", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = ledger_json(&dir.0);
    let m = model_json(&m, "m");
    assert_eq!(
        (m["used"].as_u64(), m["uncertain"].as_u64()),
        (Some(0), Some(0)),
        "{m}"
    );
    assert!(m["processes"].as_array().unwrap().is_empty());
    // And the whole quota is usable again.
    assert_eq!(
        run_script(&mut worker(&dir.0, "m", &[], "init alloc 64M"), ""),
        ["init -> 0", "alloc 64M -> 0 #0"]
    );
}

/// Issue 10, finding 5: a process that returns from `main` while 8 threads allocate and
/// free must leave its model at exactly zero (the exit detach and the threads' reservations
/// agree). A bounded number of runs here; `examples/soak_exit.rs` runs 10,000.
#[test]
fn a_process_exiting_under_allocating_threads_leaves_its_model_at_zero() {
    let dir = ledger_dir();
    let quota = 1u64 << 30;
    for run_index in 0..150 {
        let out = run(&mut worker(
            &dir,
            "racing",
            &[("CUVISOR_QUOTA", "1GiB")],
            "init exit-racing 8 3 1MiB",
        ));
        assert!(
            lines(&out).iter().any(|l| l == "exit-racing 8 3 1MiB -> 0"),
            "{out:?}"
        );
        let ledger = cuvisor::ledger::LedgerFile::open(&dir, "racing").unwrap();
        let snap = ledger.snapshot().unwrap();
        assert_eq!(
            (
                snap.used,
                snap.uncertain,
                snap.processes.len(),
                snap.gpus.iter().map(|g| g.quota_bytes).collect::<Vec<_>>()
            ),
            (0, 0, 0, vec![Some(quota)]),
            "run {run_index}: the model drifted"
        );
    }
}

/// Issue 10, finding 2: a ledger is used only through directories and a file that root
/// or the caller owns and nobody else can write, never through a symbolic link. A local
/// user who made the ledger directory first (then swapped root's ledger for one with a
/// bigger quota) is refused at the first step, with the path, owner and mode named.
#[test]
fn ledgers_that_another_user_could_change_are_refused() {
    // SAFETY: geteuid(2), declared with its C signature in this file, cannot fail.
    if unsafe { libc_geteuid() } != 0 {
        println!("skipped: needs root to give files to another user");
        return;
    }
    use std::os::unix::fs::{PermissionsExt, symlink};
    let base = TempDir::new("untrusted");
    let refused = |dir: &Path, expect: &[&str]| {
        let out = run(&mut worker(
            dir,
            "victim",
            &[("CUVISOR_QUOTA", "1GiB")],
            "init alloc 2GiB",
        ));
        assert_eq!(lines(&out)[0], "init -> 3", "{out:?}");
        let err = stderr(&out);
        for e in expect {
            assert!(err.contains(e), "expected {e:?} in {err}");
        }
        let listing = cli(dir, &[]);
        assert_eq!(listing.status.code(), Some(1), "{listing:?}");
    };
    // The directory belongs to another user, mode 0777.
    let theirs = base.path("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(
        &theirs,
        &[
            &format!(
                "ledger path {}: refused: owned by another user (owner uid 65534, mode 0777)",
                theirs.display()
            ),
            "CUVISOR_LEDGER_DIR",
        ],
    );
    // Root's own directory, but writable by everyone (no sticky bit).
    let open_dir = base.path("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(
        &open_dir,
        &["refused: writable by every user (owner uid 0, mode 0777)"],
    );
    // Under a world-writable parent without the sticky bit: anyone could rename it.
    let nested = open_dir.join("ledgers");
    refused(
        &nested,
        &[&format!(
            "ledger path {}: refused: writable by every user",
            open_dir.display()
        )],
    );
    // A symbolic link anywhere on the path.
    let real = base.path("real");
    std::fs::create_dir(&real).unwrap();
    symlink(&real, base.path("link")).unwrap();
    refused(
        &base.path("link").join("ledgers"),
        &[&format!(
            "ledger path {}: refused: a symbolic link",
            base.path("link").display()
        )],
    );
    // The ledger file itself: another user's, or writable by everyone.
    let good = base.path("good");
    assert!(
        cli(&good, &["create", "--model", "victim", "--quota", "1GiB"])
            .status
            .success()
    );
    let file = good.join("victim.ledger");
    std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
    refused(
        &good,
        &[&format!(
            "ledger path {}: refused: owned by another user",
            file.display()
        )],
    );
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(
        &good,
        &["refused: writable by every user (owner uid 0, mode 0666)"],
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&mut worker(
        &good,
        "victim",
        &[("CUVISOR_QUOTA", "1GiB")],
        "init alloc 2GiB",
    ));
    assert_eq!(
        lines(&out)[..2],
        ["init -> 0", "alloc 2GiB -> 2"],
        "the repaired ledger is used: {out:?}"
    );
}

/// Finding 2: without CUVISOR_LEDGER_DIR, a user other than root gets a directory of
/// their own, not the shared default that another user could have made first.
#[test]
fn a_user_other_than_root_gets_a_ledger_directory_of_their_own() {
    // SAFETY: geteuid(2), declared with its C signature in this file, cannot fail.
    if unsafe { libc_geteuid() } != 0 {
        println!("skipped: needs root to run a process as another user");
        return;
    }
    use std::os::unix::process::CommandExt;
    let model = format!("peruser-{}", std::process::id());
    let mut cmd = shimmed(driver_probe());
    cmd.env_remove("CUVISOR_LEDGER_DIR")
        .env("CUVISOR_MODEL", &model)
        .env("CUVISOR_QUOTA", "1GiB")
        .args(["init", "alloc", "1MiB"])
        .uid(65534)
        .gid(65534);
    let out = run(&mut cmd);
    assert_eq!(lines(&out)[0], "init -> 0", "{}", stderr(&out));
    assert!(lines(&out)[1].starts_with("alloc 1MiB -> 0"), "{out:?}");
    let file = Path::new("/dev/shm/cuvisor-65534").join(format!("{model}.ledger"));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o600));
    assert!(
        !Path::new("/dev/shm/cuvisor")
            .join(format!("{model}.ledger"))
            .exists()
    );
}
