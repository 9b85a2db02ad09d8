//! Issue 14: a placed model's mount namespace holds only its GPUs' device nodes
//! (`/dev/nvidiaN`) beside NVIDIA's control nodes, as NVIDIA's container toolkit does.
//! The nodes are fake ones made here (character devices of NVIDIA's major number, with no
//! driver behind them), on a fake node of four GPUs. A file of its own: no other test
//! runs while it adds and removes nodes in the host's /dev.

mod common;
use common::supervisor::*;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// Device nodes made for the test, removed when it ends (those that existed stay).
struct Nodes(Vec<PathBuf>);

impl Nodes {
    fn make(names: &[(&str, u64)]) -> Nodes {
        let mut made = Vec::new();
        for (name, minor) in names {
            let path = PathBuf::from("/dev").join(name);
            if path.exists() {
                continue;
            }
            let out = run(std::process::Command::new("mknod").arg(&path).args([
                "c",
                "195",
                &minor.to_string(),
            ]));
            assert!(out.status.success(), "{}", stderr(&out));
            made.push(path);
        }
        Nodes(made)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn a_placed_worker_sees_only_its_own_gpu_nodes() {
    let _nodes = Nodes::make(&[
        ("nvidia0", 0),
        ("nvidia1", 1),
        ("nvidia2", 2),
        ("nvidia3", 3),
        ("nvidiactl", 255),
    ]);
    let state = TempDir::new("gpu-nodes-state");
    let env = fake_node(4, "16GiB", &state.path("gpu-state"));
    let script = "ls /dev | grep ^nvidia | tr '\\\\n' ' '; echo; ls /dev/null /dev/pts/ptmx >/dev/null && echo rest; python3 -c 'import os; os.openpty(); print(1)' && echo pty; sleep 600";
    let model = |name: &str, gpus: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"sh\"\nargs = [\"-c\", \"{script}\"]\nrestart = \"never\"\n{gpus}\n"
        )
    };
    let s = Supervisor::start_in(
        "gpu-nodes",
        "",
        &env,
        &[
            model("placed", "gpus = [1, 2]"),
            model("unplaced", ""),
            // May make device nodes: in its /dev they are of no use (nodev).
            "[[model]]\nname = \"maker\"\ncommand = \"sh\"\nargs = [\"-c\", \"mknod /dev/again c 1 3 && (echo x > /dev/again) 2>/dev/null && echo opened || echo refused; sleep 600\"]\nrestart = \"never\"\ngpus = [3]\ncapabilities = [\"CAP_MKNOD\"]\n".into(),
        ]
        .concat(),
    );
    let lines = |leaf: &str| {
        wait_until(&format!("{leaf}'s lines"), Duration::from_secs(10), || {
            s.log(leaf).lines().count() >= 4
        });
        s.log(leaf).lines().map(str::to_owned).collect::<Vec<_>>()
    };
    // A pseudo-terminal of its own works (openpty through /dev/ptmx).
    assert_eq!(
        lines("placed-0"),
        ["nvidia1 nvidia2 nvidiactl ", "rest", "1", "pty"]
    );
    // A worker that may make device nodes cannot make a hidden GPU's again.
    wait_until("maker's line", Duration::from_secs(10), || {
        !s.log("maker-0").is_empty()
    });
    assert_eq!(s.log("maker-0"), "refused\n");
    // Not placed: every GPU (CUDA_VISIBLE_DEVICES is not set either).
    assert_eq!(
        lines("unplaced-0"),
        [
            "nvidia0 nvidia1 nvidia2 nvidia3 nvidiactl ",
            "rest",
            "1",
            "pty"
        ]
    );
}
