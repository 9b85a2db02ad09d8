//! Helpers shared by the integration tests: run a program on the fake GPU as a black-box
//! child process and read what it printed and what the fake GPU reported.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

/// Where build.rs put the fake libcuda.so.1, libnvidia-ml.so.1, libcudart.so.12 and the probes.
pub fn stub_dir() -> PathBuf {
    PathBuf::from(env!("CUDA_STUB_DIR"))
}

/// `target/<profile>/`, found from the running test binary (`target/<profile>/deps/…`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A cargo example of this package. A plain `cargo test` builds them; a test run filtered
/// with `--test NAME` does not, hence the message.
pub fn example(name: &str) -> PathBuf {
    let path = target_dir().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run the whole suite with `cargo test`, or `cargo build --examples` first",
        path.display()
    );
    path
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("cuvisor-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process on the fake GPU: LD_LIBRARY_PATH points at the stubs, and no
/// FAKE_CUDA_*, CUVISOR_* or LD_PRELOAD leaks in from the environment of the test run.
pub fn on_fake_gpu(program: impl AsRef<Path>) -> Command {
    let mut cmd = support::clean_command(program);
    cmd.env("LD_LIBRARY_PATH", stub_dir());
    cmd
}

pub mod supervisor;

#[path = "../../examples/support/mod.rs"]
mod support;
#[allow(unused_imports)] // the framework tier's tests use it
pub use support::frameworks;
pub use support::shim_path;

/// A fresh ledger directory under target/ (so that tests never share a model's ledger
/// by accident, and nothing is left in /dev/shm).
pub fn ledger_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = target_dir()
        .join("test-ledgers")
        .join(format!("{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The command with the shim preloaded, and a ledger directory of its own.
pub fn shimmed(mut cmd: Command) -> Command {
    cmd.env("LD_PRELOAD", shim_path())
        .env("CUVISOR_LEDGER_DIR", ledger_dir());
    cmd
}

pub fn driver_probe_procaddr() -> Command {
    on_fake_gpu(stub_dir().join("driver_probe_procaddr"))
}

pub fn driver_probe() -> Command {
    on_fake_gpu(stub_dir().join("driver_probe"))
}

pub fn driver_probe_dlsym() -> Command {
    on_fake_gpu(stub_dir().join("driver_probe_dlsym"))
}

pub fn runtime_probe() -> Command {
    on_fake_gpu(stub_dir().join("runtime_probe"))
}

/// Runs the command with `script` as its arguments; returns stdout lines, asserting exit 0.
pub fn run_script(cmd: &mut Command, script: &str) -> Vec<String> {
    let out = run(cmd.args(script.split_whitespace()));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        stderr(&out)
    );
    lines(&out)
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON objects the fake GPU appended to a FAKE_CUDA_REPORT file, one per process.
pub fn reports(path: &Path) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad report line {l}: {e}")))
        .collect()
}

/// The single report in `path`.
pub fn report(path: &Path) -> serde_json::Value {
    let mut all = reports(path);
    assert_eq!(all.len(), 1, "expected one report in {}", path.display());
    all.remove(0)
}

pub fn calls(report: &serde_json::Value, entry: &str) -> u64 {
    report["calls"][entry].as_u64().unwrap_or(0)
}

/// The environment of a fake node of `gpus` GPUs of `memory` each (`4GiB`), whose state
/// file `state` every process given it shares: for a supervisor and its workers, or for
/// an observer outside every model.
pub fn fake_node(gpus: u32, memory: &str, state: &Path) -> Vec<(String, String)> {
    [
        ("LD_LIBRARY_PATH", stub_dir().display().to_string()),
        ("FAKE_CUDA_DEVICE_COUNT", gpus.to_string()),
        ("FAKE_CUDA_DEVICE_MEM", memory.to_owned()),
        ("FAKE_CUDA_STATE", state.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// Starts a holder: runs `script` (ending in `wait`) and returns once it printed `lines`.
pub fn hold(mut cmd: Command, lines: usize) -> (Child, BufReader<ChildStdout>, Vec<String>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        seen.push(line.trim().to_owned());
    }
    (child, out, seen)
}

/// uv: the one on the PATH, else one installed for the tests under target/ (PyPI).
pub fn uv() -> &'static Path {
    static UV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    UV.get_or_init(|| {
        let on_path = std::process::Command::new("uv").arg("--version").output();
        if on_path.is_ok_and(|o| o.status.success()) {
            return PathBuf::from("uv");
        }
        let dir = target_dir().join("tools/uv");
        let uv = dir.join("bin/uv");
        if !uv.exists() {
            let out = run(std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&dir)
                .arg("uv"));
            assert!(
                out.status.success() && uv.exists(),
                "no uv on the PATH, and installing it failed (python3 -m pip install uv): {}",
                stderr(&out)
            );
        }
        uv
    })
}

/// A PATH on which `uv` is found ([`uv`]), for a program that looks it up there.
pub fn path_with_uv() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    match uv().parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => format!("{}:{path}", dir.display()),
        None => path,
    }
}

/// `cuvisor check` on a configuration in `dir` with `settings` in `[supervisor]` and one
/// model: its exit status and its errors (the file's path written `FILE`).
pub fn check_settings(dir: &TempDir, settings: &str) -> (Option<i32>, String) {
    let path = dir.path("cuvisor.toml");
    std::fs::write(
        &path,
        format!("[supervisor]\n{settings}\n[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\n"),
    )
    .unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("check")
        .arg(&path));
    (
        out.status.code(),
        stderr(&out).replace(&format!("{}:", path.display()), "FILE:"),
    )
}

/// A number field of `/proc/PID/status` (`VmRSS:` and `VmHWM:` in KiB, `Threads:`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} of {pid}"))
}

/// One chat completion through the front door on `port`, by the test client
/// (`tests/servers/client.py`): its events, each with the time it came (`status` and
/// `headers` first, then each `chunk`, then `end`).
pub fn chat_events(port: u16, body: &str) -> Vec<serde_json::Value> {
    let out = run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/servers/client.py"
        ))
        .args([&port.to_string(), "POST", "/v1/chat/completions", body]));
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
