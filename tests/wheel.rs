//! Issue 27: `pip install .` from a clone. pip builds the wheel with the repository's
//! backend (maturin, zig, for manylinux2014); every ELF file in it needs glibc 2.17 at
//! most; it installs into a fresh virtual environment with no index (uv, which it depends
//! on, from a local wheelhouse); and through its `cuvisor` command a program runs under a
//! quota on the fake GPU, and a supervised model gets a Python environment built by the
//! uv that came with it.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The newest `GLIBC_x.y` version an ELF file asks for.
fn newest_glibc(file: &Path) -> (u32, u32) {
    let out = run(Command::new("objdump").arg("-T").arg(file));
    assert!(out.status.success(), "objdump: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let version: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap_or((0, 0))
}

/// uv's wheel, once, under target/ (PyPI the first time): the environment has no index.
fn wheelhouse() -> PathBuf {
    let dir = target_dir().join("wheelhouse");
    let have = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("uv-"));
    if !have {
        let out = run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary",
                ":all:",
                "uv",
                "-d",
            ])
            .arg(&dir));
        assert!(out.status.success(), "pip download uv: {}", stderr(&out));
    }
    dir
}

#[test]
fn pip_installs_a_manylinux_wheel_that_runs_a_quota_and_a_python_environment() {
    let dir = TempDir::new("wheel");
    // Built as `pip install .` builds it, in a target directory of its own: this test's
    // cargo holds its own.
    let out = run(Command::new("python3")
        .args(["-m", "pip", "wheel", "--no-deps", "--quiet", REPO, "-w"])
        .arg(dir.path("dist"))
        .env("CARGO_TARGET_DIR", Path::new(REPO).join("target/wheel"))
        .env_remove("LD_PRELOAD")
        .env_remove("MATURIN_PEP517_ARGS"));
    assert!(out.status.success(), "pip wheel: {}", stderr(&out));
    let name = format!(
        "cuvisor-{}-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        env!("CARGO_PKG_VERSION")
    );
    let wheel = dir.path("dist").join(&name);
    assert!(
        wheel.is_file(),
        "{name} in {:?}",
        std::fs::read_dir(dir.path("dist"))
            .unwrap()
            .collect::<Vec<_>>()
    );

    // What is in it, and that it runs on glibc 2.17.
    let unpacked = dir.path("unpacked");
    let out = run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked));
    assert!(out.status.success(), "{}", stderr(&out));
    let data = unpacked.join(format!("cuvisor-{}.data", env!("CARGO_PKG_VERSION")));
    for file in ["scripts/cuvisor", "data/lib/cuvisor/libcuvisor_preload.so"] {
        let path = data.join(file);
        assert!(path.is_file(), "{file} in the wheel");
        assert!(
            newest_glibc(&path) <= (2, 17),
            "{file} needs glibc {:?}",
            newest_glibc(&path)
        );
    }

    // Installed with no index: uv from the wheelhouse.
    let venv = dir.path("venv");
    let out = run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
        ])
        .arg(wheelhouse())
        .arg(&wheel));
    assert!(out.status.success(), "{}", stderr(&out));
    let cuvisor = venv.join("bin/cuvisor");
    assert!(venv.join("bin/uv").is_file(), "uv came with it");
    let out = run(Command::new(&cuvisor)
        .arg("shim-path")
        .env_remove("CUVISOR_SHIM"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        venv.join("lib/cuvisor/libcuvisor_preload.so")
            .display()
            .to_string()
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

    // A supervised model with a Python environment, built by the uv beside the installed
    // binary (none on the PATH, none configured).
    let wheels = dir.path("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let out = run(Command::new("python3")
        .arg(Path::new(REPO).join("tests/servers/make_wheel.py"))
        .args(["cvpkg", "1.0"])
        .arg(&wheels));
    assert!(out.status.success(), "{}", stderr(&out));
    let config = dir.path("cuvisor.toml");
    let cgroup = common::supervisor::unique("wheel");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\nsocket = \"{}\"\nledger_dir = \"{}\"\nlogs = \"{}\"\nenvs_dir = \"{}\"\n\
             cgroup_name = \"{cgroup}\"\ngrace_period = \"700ms\"\n\
             [[model]]\nname = \"py\"\ncommand = \"python\"\n\
             args = [\"-u\", \"-c\", \"import cvpkg, time; print('cvpkg', cvpkg.VERSION); time.sleep(600)\"]\n\
             python = {{ packages = [\"cvpkg==1.0\"], find_links = [\"{}\"], offline = true }}\n",
            dir.path("control.sock").display(),
            dir.path("supervisor-ledgers").display(),
            dir.path("logs").display(),
            dir.path("envs").display(),
            wheels.display()
        ),
    )
    .unwrap();
    let mut supervisor = Command::new(&cuvisor)
        .arg("run")
        .arg(&config)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env_remove("CUVISOR_SHIM")
        .env_remove("LD_PRELOAD")
        .stderr(std::fs::File::create(dir.path("supervisor.log")).unwrap())
        .spawn()
        .unwrap();
    let log = dir.path("logs/py-0.log");
    let end = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("cvpkg 1.0")
    {
        if Instant::now() > end || supervisor.try_wait().unwrap().is_some() {
            let _ = supervisor.kill();
            panic!(
                "no cvpkg 1.0 from the model: {}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                std::fs::read_to_string(dir.path("supervisor.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let said = std::fs::read_to_string(dir.path("supervisor.log")).unwrap();
    assert!(
        said.contains("model py: Python environment: uv pip sync: Installed 1 package"),
        "{said}"
    );
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { common::supervisor::libc_kill(supervisor.id() as i32, 15) };
    assert!(supervisor.wait().unwrap().success());
}
