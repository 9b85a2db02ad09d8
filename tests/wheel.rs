//! Issue 15: `pip install cuvisor`. The wheel made by `packaging/build_wheel.py` from the
//! binaries this build made is installed into a fresh virtual environment (no index), and
//! runs a program on the fake GPU under a quota through its `cuvisor` command.

mod common;
use common::*;
use std::process::Command;

#[test]
fn the_wheel_installs_and_runs_a_program_under_a_quota() {
    let dir = TempDir::new("wheel");
    let out = run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/build_wheel.py"
        ))
        .arg("--cuvisor")
        .arg(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("--shim")
        .arg(shim_path())
        .arg("--out")
        .arg(dir.path("dist")));
    assert!(out.status.success(), "{}", stderr(&out));
    let wheel = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        wheel.ends_with(&format!(
            "cuvisor-{}-py3-none-linux_x86_64.whl",
            env!("CARGO_PKG_VERSION")
        )),
        "{wheel}"
    );
    let venv = dir.path("venv");
    let out = run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--no-index"])
        .arg(&wheel));
    assert!(out.status.success(), "{}", stderr(&out));
    let cuvisor = venv.join("bin/cuvisor");
    // The shim, beside the binary the package carries.
    let out = run(Command::new(&cuvisor)
        .arg("shim-path")
        .env_remove("CUVISOR_SHIM"));
    assert!(out.status.success(), "{}", stderr(&out));
    let shim = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        shim.starts_with(&venv.display().to_string())
            && shim.ends_with("/site-packages/cuvisor/lib/libcuvisor_preload.so"),
        "{shim}"
    );
    let out = run(Command::new(&cuvisor).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("cuvisor {}", env!("CARGO_PKG_VERSION"))
    );
    // A program on the fake GPU under a 64 MiB quota, through the installed command.
    let out = run(Command::new(&cuvisor)
        .args(["exec", "--model", "m", "--quota", "64MiB", "--dir"])
        .arg(dir.path("ledgers"))
        .arg("--")
        .arg(stub_dir().join("driver_probe"))
        .args(["init", "alloc", "64M", "alloc", "1"])
        .env("LD_LIBRARY_PATH", stub_dir())
        .env_remove("CUVISOR_SHIM")
        .env_remove("LD_PRELOAD"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        ["init -> 0", "alloc 64M -> 0 #0", "alloc 1 -> 2"]
    );
}
