//! Issue 15: the node mode's manifests (deploy/kubernetes/) validated against the
//! Kubernetes API schemas offline (`kubernetes-validate`, which bundles them, pinned and
//! installed from PyPI under target/tools once), and the configuration they carry checked
//! by `cuvisor check` on a fake GPU node.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const VALIDATOR: &str = "kubernetes-validate==1.37.0";

/// The validator's install directory (its `bin/` and its Python packages).
fn validator() -> PathBuf {
    let dir = target_dir().join("tools/kubernetes-validate-1.37.0");
    if !dir.join("bin/kubernetes-validate").exists() {
        let out = run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .arg(VALIDATOR));
        assert!(
            out.status.success(),
            "installing {VALIDATOR} failed: {}",
            stderr(&out)
        );
    }
    dir
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

#[test]
fn the_manifests_are_valid_kubernetes_and_carry_a_valid_configuration() {
    let tools = validator();
    // The resources the kustomization lists, each validated strictly.
    let kustomization = std::fs::read_to_string(manifests().join("kustomization.yaml")).unwrap();
    let resources: Vec<PathBuf> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|f| manifests().join(f.trim()))
        .collect();
    assert_eq!(resources.len(), 4, "{kustomization}");
    let out = run(Command::new(tools.join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.34.0"])
        .args(&resources)
        .env("PYTHONPATH", &tools));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    // The ConfigMap's cuvisor.toml, as `cuvisor check` reads it.
    let dir = TempDir::new("k8s-config");
    let config = dir.path("cuvisor.toml");
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); open(sys.argv[2], 'w').write(d['data']['cuvisor.toml'])",
        ])
        .arg(manifests().join("configmap.yaml"))
        .arg(&config)
        .env("PYTHONPATH", &tools));
    assert!(out.status.success(), "{}", stderr(&out));
    // Its model has a Python environment: `check` asks for uv, as the image has it.
    let out = run(Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("check")
        .arg(&config)
        .env("PATH", path_with_uv())
        .env("LD_LIBRARY_PATH", stub_dir())
        .env("FAKE_CUDA_DEVICE_MEM", "80GiB"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("model qwen: GPU 0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
