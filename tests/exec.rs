//! `cuvisor exec`: one program under the shim, its exit status passed through, the shim's
//! variables set, host limits enforced, nothing left behind.

mod common;
use common::*;
use std::process::Command;

fn exec(dir: &std::path::Path, args: &[&str], command: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cuvisor"));
    cmd.arg("exec")
        .arg("--dir")
        .arg(dir)
        .arg("--shim")
        .arg(shim_path())
        .args(args)
        .arg("--")
        .args(command);
    cmd.env("LD_LIBRARY_PATH", stub_dir())
        .env_remove("LD_PRELOAD");
    run(&mut cmd)
}

#[test]
fn the_exit_status_passes_through() {
    let dir = TempDir::new("exec-status");
    assert_eq!(
        exec(&dir.0, &[], &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(exec(&dir.0, &[], &["true"]).status.code(), Some(0));
    assert_eq!(
        exec(&dir.0, &[], &["sh", "-c", "kill -9 $$"]).status.code(),
        Some(137),
        "128 + SIGKILL"
    );
    let out = exec(&dir.0, &[], &["no-such-command-anywhere"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        stderr(&out),
        "cuvisor: no-such-command-anywhere: not found in PATH\n"
    );
}

#[test]
fn the_shim_and_its_variables_reach_the_program() {
    let dir = TempDir::new("exec-env");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cuvisor"));
    cmd.args([
        "exec", "--model", "llama", "--quota", "8GiB", "--mode", "device", "--dir",
    ])
    .arg(&dir.0)
    .arg("--shim")
    .arg(shim_path())
    .args([
        "--",
        "sh",
        "-c",
        "echo $CUVISOR_MODEL $CUVISOR_QUOTA $CUVISOR_MODE $CUVISOR_LEDGER_DIR; echo $LD_PRELOAD",
    ])
    .env("LD_PRELOAD", "/lib/x86_64-linux-gnu/libc.so.6");
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        [
            format!("llama 8589934592 device {}", dir.0.display()),
            format!("/lib/x86_64-linux-gnu/libc.so.6:{}", shim_path().display()), // appended
        ]
    );
}

#[test]
fn the_quota_holds_for_the_program_on_the_fake_gpu() {
    let dir = TempDir::new("exec-gpu");
    let probe = stub_dir().join("driver_probe");
    let out = exec(
        &dir.0,
        &["--model", "m", "--quota", "8MiB"],
        &[
            probe.to_str().unwrap(),
            "init",
            "alloc",
            "8M",
            "alloc",
            "1",
            "info",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        [
            "init -> 0",
            "alloc 8M -> 0 #0",
            "alloc 1 -> 2",
            "info -> 0 0 8388608"
        ]
    );
    // A quota that disagrees with the model's ledger is refused before anything runs.
    let out = exec(&dir.0, &["--model", "m", "--quota", "4MiB"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("disagrees with the ledger"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_host_memory_limit_oom_kills_and_leaves_no_cgroup() {
    let dir = TempDir::new("exec-mem");
    let out = exec(
        &dir.0,
        &["--model", "hog", "--mem-limit", "64MiB"],
        &["python3", "-c", "b = b'x' * (300 << 20); print('survived')"],
    );
    assert_eq!(
        out.status.code(),
        Some(137),
        "killed by the OOM killer: {}",
        stderr(&out)
    );
    assert!(lines(&out).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/cgroup/memory/cuvisor-exec")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().starts_with("exec-hog-")),
        "{leftovers:?}"
    );
}

/// The program reads what `cuvisor exec` reads, as if it were run directly.
#[test]
fn the_program_gets_the_stdin_of_exec() {
    let dir = TempDir::new("exec-stdin");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cuvisor"));
    cmd.arg("exec")
        .arg("--dir")
        .arg(&dir.0)
        .arg("--shim")
        .arg(shim_path())
        .args(["--", "sh", "-c", "read line; echo got: $line"])
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"a line\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got: a line\n");
    assert!(out.status.success());
}
