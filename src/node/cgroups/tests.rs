//! The hierarchies, as this machine's kind has them and as a fake cgroupfs makes them.

use super::*;

/// A directory laid out like a cgroup v2 mount (the kernel would create the files).
fn fake_v2(tag: &str, leaf: &str) -> (PathBuf, Hierarchy) {
    let root = std::env::temp_dir().join(format!("cuvisor-cgv2-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let base = root.join("cuvisor");
    for dir in [&root, &base, &base.join(leaf)] {
        std::fs::create_dir_all(dir).unwrap();
        for f in [
            "cgroup.subtree_control",
            "cgroup.procs",
            "memory.max",
            "cpu.max",
            "pids.max",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }
    std::fs::write(base.join(leaf).join("memory.current"), "1234\n").unwrap();
    std::fs::write(
        base.join(leaf).join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
    )
    .unwrap();
    (
        root.clone(),
        Hierarchy::V2 {
            root,
            base,
            delegated: false,
        },
    )
}

#[test]
fn v2_limits_and_counters() {
    let (root, h) = fake_v2("limits", "m-0");
    let limits = Limits {
        memory: Some(1 << 30),
        cpu_cores: Some(2.5),
        pids: Some(64),
        cpus: None,
        freeze: false,
    };
    assert_eq!(h.supports(&limits), Ok(()));
    let cg = h.create("m-0", &limits).unwrap();
    let read = |f: &str| std::fs::read_to_string(root.join("cuvisor/m-0").join(f)).unwrap();
    assert_eq!(read("memory.max"), "1073741824");
    assert_eq!(read("cpu.max"), "250000 100000");
    assert_eq!(read("pids.max"), "64");
    assert_eq!(
        std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
        "+memory +cpu +pids"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("cuvisor/cgroup.subtree_control")).unwrap(),
        "+memory +cpu +pids"
    );
    cg.add(4242).unwrap();
    assert_eq!(read("cgroup.procs"), "4242");
    assert_eq!(cg.memory_current(), Some(1234));
    assert_eq!(cg.oom_kills(), Some(2));
    let _ = std::fs::remove_dir_all(&root);
}

/// A v1 cpuset takes nothing until its CPUs and memory nodes are set: our parent
/// cpuset gets the root's, a worker's its memory nodes and its CPUs.
#[test]
fn a_v1_cpuset_is_made_usable_from_its_parent() {
    let root = std::env::temp_dir().join(format!("cuvisor-cgv1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (top, base, leaf) = (
        root.join("cpuset"),
        root.join("cpuset/cuvisor"),
        root.join("cpuset/cuvisor/m-0"),
    );
    for dir in [&top, &base, &leaf] {
        std::fs::create_dir_all(dir).unwrap();
        for f in ["cpuset.cpus", "cpuset.mems", "cgroup.procs"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }
    std::fs::write(top.join("cpuset.cpus"), "0-3\n").unwrap();
    std::fs::write(top.join("cpuset.mems"), "0\n").unwrap();
    let h = Hierarchy::V1 {
        memory: Err(NOT_MOUNTED),
        cpu: Err(NOT_MOUNTED),
        pids: Err(NOT_MOUNTED),
        freezer: Err(NOT_MOUNTED),
        cpuset: Ok(base.clone()),
    };
    let limits = Limits {
        cpus: Some("1-2".parse().unwrap()),
        ..Limits::default()
    };
    assert_eq!(h.supports(&limits), Ok(()));
    let cg = h.create("m-0", &limits).unwrap();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&base.join("cpuset.cpus")), "0-3");
    assert_eq!(read(&base.join("cpuset.mems")), "0");
    assert_eq!(read(&leaf.join("cpuset.mems")), "0");
    assert_eq!(read(&leaf.join("cpuset.cpus")), "1-2");
    assert_eq!(cg.dirs(), [leaf]);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn freezing_writes_the_freezer_and_waits_for_the_kernel() {
    let (root, h) = fake_v2("freeze", "m-0");
    let dir = root.join("cuvisor/m-0");
    std::fs::write(dir.join("cgroup.freeze"), "").unwrap();
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    let limits = Limits {
        freeze: true,
        ..Limits::default()
    };
    let cg = h.create("m-0", &limits).unwrap();
    cg.freeze(true).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
        "1"
    );
    cg.freeze(false).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
        "0"
    );
    // A kernel that never says frozen: an error, after 1 s.
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    let e = cg.freeze(true).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot freeze: the kernel did not say"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// In a container's cgroup (delegated, seen through its cgroup namespace) the
/// supervisor first moves the cgroup's processes into a leaf of their own.
#[test]
fn a_delegated_cgroup_is_emptied_into_a_leaf_first() {
    let (root, h) = fake_v2("delegated", "m-0");
    let Hierarchy::V2 { root: r, base, .. } = h else {
        unreachable!()
    };
    let h = Hierarchy::V2 {
        root: r,
        base,
        delegated: true,
    };
    std::fs::write(root.join("cgroup.procs"), "4242\n").unwrap();
    let leaf = root.join("cuvisor.supervisor");
    std::fs::create_dir_all(&leaf).unwrap();
    std::fs::write(leaf.join("cgroup.procs"), "").unwrap();
    h.create("m-0", &Limits::default()).unwrap();
    assert_eq!(
        std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap(),
        "4242"
    );
    assert!(
        h.describe().ends_with("cuvisor (delegated)"),
        "{}",
        h.describe()
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_missing_controller_file_is_an_error_not_a_new_file() {
    let (root, h) = fake_v2("missing", "m-0");
    std::fs::remove_file(root.join("cuvisor/m-0/pids.max")).unwrap();
    let e = h
        .create(
            "m-0",
            &Limits {
                pids: Some(8),
                ..Limits::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.action, "set pids.max");
    assert!(
        e.to_string()
            .contains("cuvisor/m-0/pids.max: cannot set pids.max: No such file"),
        "{e}"
    );
    assert!(!root.join("cuvisor/m-0/pids.max").exists());
    let _ = std::fs::remove_dir_all(&root);
}

/// What `supports` says, as its message.
fn said(r: Result<(), Unsupported>) -> Result<(), String> {
    r.map_err(|e| e.to_string())
}

#[test]
fn detection_of_a_plain_directory_finds_no_controllers() {
    let dir = std::env::temp_dir().join(format!("cuvisor-cgnone-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("memory")).unwrap();
    let h = Hierarchy::detect(&dir, "cuvisor");
    let why = format!("no cgroup controller is mounted at {}", dir.display());
    assert_eq!(h, Hierarchy::None { why: why.clone() });
    assert_eq!(
        said(h.supports(&Limits {
            memory: Some(1),
            ..Limits::default()
        })),
        Err(why)
    );
    assert_eq!(said(h.supports(&Limits::default())), Ok(()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn v1_partial_support_is_reported() {
    let h = Hierarchy::V1 {
        memory: Ok(PathBuf::from("/x/memory/c")),
        cpu: Err(NOT_MOUNTED),
        pids: Err(NOT_WRITABLE),
        freezer: Err(NOT_MOUNTED),
        cpuset: Err(NOT_MOUNTED),
    };
    assert_eq!(
        said(h.supports(&Limits {
            cpu_cores: Some(1.0),
            ..Limits::default()
        })),
        Err("the cgroup v1 cpu controller is not mounted".to_owned())
    );
    assert_eq!(
        said(h.supports(&Limits {
            memory: Some(1),
            pids: Some(1),
            ..Limits::default()
        })),
        Err(
            "the cgroup v1 pids controller is not writable (a read-only mount, or not root)"
                .to_owned()
        )
    );
    assert_eq!(
        said(h.supports(&Limits {
            memory: Some(1),
            ..Limits::default()
        })),
        Ok(())
    );
    assert_eq!(
        said(h.supports(&Limits {
            freeze: true,
            ..Limits::default()
        })),
        Err("the cgroup v1 freezer controller is not mounted".to_owned())
    );
    assert_eq!(
        h.describe(),
        "cgroup v1 (memory; cpu: not mounted; pids: not writable (a read-only mount, or not root); freezer: not mounted; cpuset: not mounted)"
    );
}
