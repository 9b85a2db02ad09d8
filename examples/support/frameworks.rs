//! NVIDIA's own runtime and the frameworks (PyTorch, CuPy) on the fake GPU: pinned wheels
//! from PyPI, installed as users install them and cached under `target/frameworks/`
//! (never committed). A test that cannot fetch them fails with the reason;
//! `CUVISOR_SKIP_FRAMEWORKS=1` skips this tier, loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// NVIDIA's runtime wheels the tests pin: (label, pip requirement, the shared library and
/// the static archive inside the wheel; 12.4's wheel has no static archive).
pub const RUNTIMES: [(&str, &str, &str, Option<&str>); 3] = [
    (
        "12.4",
        "nvidia-cuda-runtime-cu12==12.4.127",
        "nvidia/cuda_runtime/lib/libcudart.so.12",
        None,
    ),
    (
        "12.9",
        "nvidia-cuda-runtime-cu12==12.9.79",
        "nvidia/cuda_runtime/lib/libcudart.so.12",
        Some("nvidia/cuda_runtime/lib/libcudart_static.a"),
    ),
    (
        "13.0",
        "nvidia-cuda-runtime==13.0.96",
        "nvidia/cu13/lib/libcudart.so.13",
        Some("nvidia/cu13/lib/libcudart_static.a"),
    ),
];

/// A virtual environment of pinned frameworks, installed from PyPI on first use.
pub struct PythonEnv {
    pub name: &'static str,
    pub pins: &'static [&'static str],
}

/// PyTorch 2.15.0 (the PyPI default build, CUDA 13.2 inside), CuPy 14.2.0 for CUDA 13,
/// the numpy they share, and NVML's Python binding (what `torch.cuda.device_memory_used`
/// asks, as nvidia-smi does).
pub const TORCH_ENV: PythonEnv = PythonEnv {
    name: "venv",
    pins: &[
        "torch==2.15.0",
        "cupy-cuda13x==14.2.0",
        "numpy==2.4.6",
        "nvidia-ml-py==13.615.71",
    ],
};

/// PyTorch 2.9.1, the last PyPI default build for CUDA 12 (NVIDIA's runtime 12.8 inside).
pub const TORCH_CU12_ENV: PythonEnv = PythonEnv {
    name: "torch-cu12-venv",
    pins: &["torch==2.9.1", "numpy==2.4.6", "nvidia-ml-py==13.615.71"],
};

/// JAX 0.10.2 with its CUDA 13 plugin (NVIDIA's runtime 13.5 and XLA's static copies).
pub const JAX_ENV: PythonEnv = PythonEnv {
    name: "jax-venv",
    pins: &["jax[cuda13]==0.10.2", "numpy==2.4.6"],
};

/// The driver version the frameworks' runtimes need: PyTorch's and CuPy's are 13.2,
/// JAX's 13.5.
pub const FRAMEWORK_DRIVER_VERSION: &str = "13050";

/// False (after saying so on stderr) when the framework tier is switched off.
pub fn frameworks_enabled(test: &str) -> bool {
    if std::env::var_os("CUVISOR_SKIP_FRAMEWORKS").is_some_and(|v| v == "1") {
        eprintln!(
            "\n*** SKIPPED {test}: CUVISOR_SKIP_FRAMEWORKS=1 switches off the tests of NVIDIA's runtime, PyTorch and CuPy on the fake GPU ***\n"
        );
        return false;
    }
    true
}

/// `target/frameworks/`, found from the running program (`target/<profile>/deps/…` for a
/// test, `target/<profile>/examples/…` for an example).
fn root() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target/").join("frameworks")
}

/// Where build.rs put the fake GPU.
fn stub_dir() -> PathBuf {
    PathBuf::from(env!("CUDA_STUB_DIR"))
}

/// One installation at a time in this test binary.
static INSTALL: Mutex<()> = Mutex::new(());

fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n{}\n{}\nThe framework tier needs PyPI; CUVISOR_SKIP_FRAMEWORKS=1 skips it.",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unpacked wheel of one pinned runtime (downloaded once).
pub fn nvidia_runtime(label: &str) -> PathBuf {
    let (_, requirement, _, _) = RUNTIMES
        .iter()
        .find(|r| r.0 == label)
        .unwrap_or_else(|| panic!("no pinned runtime {label}"));
    let dir = root().join("runtimes").join(label);
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let marker = dir.join(".complete");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == *requirement) {
        return dir;
    }
    let download = root().join("download").join(label);
    let _ = std::fs::remove_dir_all(&download);
    run_checked(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .arg("--dest")
            .arg(&download)
            .arg(requirement),
        &format!("downloading {requirement}"),
    );
    let wheel = std::fs::read_dir(&download)
        .expect("download dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .unwrap_or_else(|| panic!("pip downloaded no wheel for {requirement}"));
    let _ = std::fs::remove_dir_all(&dir);
    run_checked(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&dir),
        &format!("unpacking {}", wheel.display()),
    );
    let _ = std::fs::remove_dir_all(&download);
    std::fs::write(&marker, requirement).expect("mark complete");
    dir
}

/// A directory holding only the fake driver (libcuda, NVML and their core), for
/// `LD_LIBRARY_PATH`: the fake's own libcudart must not shadow NVIDIA's.
pub fn driver_only_dir() -> PathBuf {
    // Named after the build's stub directory; made once and never changed, so that no
    // process of a parallel test finds it half-made.
    let stubs = stub_dir();
    let tag = stubs
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = root().join(format!("driver-{tag}"));
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if dir.exists() {
        return dir;
    }
    let partial = root().join(format!("driver-{tag}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).expect("driver dir");
    for lib in ["libcuda.so.1", "libnvidia-ml.so.1", "libfakegpu_core.so"] {
        std::os::unix::fs::symlink(stubs.join(lib), partial.join(lib))
            .expect("link a driver library");
    }
    if std::fs::rename(&partial, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial); // another test binary made it first
    }
    dir
}

/// The Python of `env`, installed once (PyTorch's environments are about 5.6 and 6.8 GB,
/// JAX's about 3.8 GB: a minute and a half each from a nearby index).
pub fn framework_python(env: &PythonEnv) -> PathBuf {
    let venv = root().join(env.name);
    let python = venv.join("bin").join("python");
    let marker = venv.join(".cuvisor-pins");
    let pins = env.pins.join(" ");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == pins) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run_checked(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        &format!("creating the virtual environment {}", venv.display()),
    );
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--only-binary=:all:"])
            .args(env.pins),
        &format!("installing {pins}"),
    );
    std::fs::write(&marker, &pins).expect("mark the environment");
    python
}

/// A command on the fake GPU that loads NVIDIA's runtime, not the fake's: the driver-only
/// directory on `LD_LIBRARY_PATH`, nothing inherited from the test run's environment.
pub fn on_fake_driver(program: impl AsRef<Path>) -> Command {
    let mut cmd = super::clean_command(program);
    cmd.env("LD_LIBRARY_PATH", driver_only_dir());
    cmd
}
