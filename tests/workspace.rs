//! The layout's promises: `cargo test` builds libcuvisor_preload.so, which carries its
//! version marker, and no C hook symbol leaks into the supervisor binary (a `dlsym` or
//! `cu*` export there would interpose on the supervisor itself); the configuration is the
//! leaf of the supervisor's layers.

mod common;
use common::*;
use std::process::Command;

fn dynamic_symbols(path: &std::path::Path) -> Vec<String> {
    let out = run(Command::new("nm").args(["-D", "--defined-only"]).arg(path));
    assert!(
        out.status.success(),
        "nm {}: {}",
        path.display(),
        stderr(&out)
    );
    lines(&out)
        .iter()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect()
}

#[test]
fn the_shim_is_built_and_exports_its_version_marker() {
    let target = target_dir();
    let shim = [
        target.join("deps/libcuvisor_preload.so"),
        target.join("libcuvisor_preload.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("libcuvisor_preload.so built next to the tests");
    let symbols = dynamic_symbols(&shim);
    assert!(
        symbols.iter().any(|s| s == "cuvisor_preload_version"),
        "{symbols:?}"
    );
}

#[test]
fn the_cuvisor_binary_exports_no_hook_symbols() {
    let symbols = dynamic_symbols(env!("CARGO_BIN_EXE_cuvisor").as_ref());
    let hooks: Vec<_> = symbols
        .iter()
        .filter(|s| {
            s.starts_with("cu")
                || s.starts_with("nvml")
                || s.starts_with("dl")
                || s.starts_with("cuda")
        })
        .collect();
    assert!(hooks.is_empty(), "the supervisor binary exports {hooks:?}");
}

#[test]
fn cuvisor_cli_answers_version_and_rejects_unknown_commands() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_cuvisor")).arg("--version"));
    assert!(out.status.success());
    assert_eq!(
        lines(&out),
        [format!("cuvisor {}", env!("CARGO_PKG_VERSION"))]
    );
    let out = run(Command::new(env!("CARGO_BIN_EXE_cuvisor")).arg("launch"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unrecognized subcommand 'launch'"),
        "{}",
        stderr(&out)
    );
}

/// The modules of this crate a file names (`crate::NAME`), outside comments.
fn crate_modules(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '{')
                .collect();
            if name.starts_with('{') {
                // `crate::{a, b::c}`: every name of the group.
                let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
                found.extend(
                    group
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or("").to_owned()),
                );
            } else {
                found.push(name);
            }
        }
    }
    found
}

/// `src/config/` is the leaf (issue: folders that are layers): declared values, which
/// import no module of the supervisor but the configuration itself and what is
/// `cuvisor-common`'s (`gpu`, `size`, `contract`).
#[test]
fn the_configuration_imports_nothing_above_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src/config") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for module in crate_modules(&text) {
            if !["config", "gpu", "size", "contract"].contains(&module.as_str()) {
                bad.push(format!("{}: crate::{module}", path.display()));
            }
        }
    }
    assert!(bad.is_empty(), "src/config/ reaches up: {bad:#?}");
    // The scan itself finds what it must.
    assert_eq!(
        crate_modules("use crate::x::Y;\n// crate::no\nlet z = crate::{a, b::c};"),
        ["x", "a", "b"]
    );
}

/// The shim's layers, as far as they are cut (issue: folders that are layers): the
/// runtime names neither the hibernation listener (an on-attach callback starts it) nor
/// the resolution or the wrappers above it, and the hook table does not ask the runtime.
/// What is still to cut: the wrappers' addresses in the table, and the driver helpers'
/// use of a wrapper's real function.
#[test]
fn the_shim_imports_only_downward_where_it_is_cut() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("preload/src");
    for (file, never) in [
        (
            "runtime.rs",
            &["hibernate", "resolve", "wrappers", "hooks"][..],
        ),
        ("hooks.rs", &["runtime", "hibernate"][..]),
        ("resolve.rs", &["wrappers", "hibernate"][..]),
        (
            "records.rs",
            &["runtime", "wrappers", "hooks", "driver"][..],
        ),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let imported = crate_modules(&text);
        for m in never {
            assert!(
                !imported.iter().any(|i| i == m),
                "preload/src/{file} imports crate::{m}"
            );
        }
    }
}

/// `src/node/` (effects on the host) never reaches the servers: the control API, the
/// front door, their metrics. (Its one edge up, to the supervisor's protocol, goes when
/// the protocol moves below both.)
#[test]
fn the_node_never_imports_the_servers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/node");
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src/node") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for module in crate_modules(&text) {
            if ["gateway", "control", "metrics", "exec"].contains(&module.as_str()) {
                bad.push(format!("{}: crate::{module}", path.display()));
            }
        }
    }
    assert!(bad.is_empty(), "src/node/ reaches the servers: {bad:#?}");
}

/// `src/serve/` (the control API, the front door, metrics) never reaches the host's
/// effects: nothing of `node/`.
#[test]
fn the_servers_never_import_the_node() {
    let node = [
        "node", "system", "launch", "cgroups", "view", "pyenv", "nvml", "ledger", "cpus",
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/serve");
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src/serve") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for module in crate_modules(&text) {
            if node.contains(&module.as_str()) {
                bad.push(format!("{}: crate::{module}", path.display()));
            }
        }
    }
    assert!(bad.is_empty(), "src/serve/ reaches the node: {bad:#?}");
}
