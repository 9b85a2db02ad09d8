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

/// Every `.rs` file under `dir`, its subfolders included.
fn sources(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

/// `src/`'s folders are layers (issue: folders that are layers), each importing only the
/// ones below it: `config` (the leaf) ← `core` (decisions, no effects) ← `node` (effects
/// on the host) and `serve` (the servers), which never import each other ← `run`, `exec`
/// and the CLI. `log` is the one facade every layer may call; `gpu`, `size` and
/// `contract` are `cuvisor-common`'s. The old paths kept for one release (`crate::ledger`
/// for `crate::node::ledger`, …) count as the layer they point into.
#[test]
fn the_layers_import_downward_only() {
    let common = ["gpu", "size", "contract"];
    let core = [
        "core",
        "lifecycle",
        "scaling",
        "hibernation",
        "placement",
        "status",
    ];
    let node = [
        "node", "system", "launch", "cgroups", "view", "pyenv", "nvml", "ledger", "cpus",
    ];
    let serve = ["serve", "control", "gateway", "metrics"];
    let layers: [(&str, Vec<&str>); 4] = [
        ("config", [&["config"][..], &common].concat()),
        ("core", [&["config", "log"][..], &common, &core].concat()),
        (
            "node",
            [&["config", "log"][..], &common, &core, &node].concat(),
        ),
        (
            "serve",
            [&["config", "log"][..], &common, &core, &serve].concat(),
        ),
    ];
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (layer, allowed) in &layers {
        for path in sources(&src.join(layer)) {
            let text = std::fs::read_to_string(&path).unwrap();
            for module in crate_modules(&text) {
                if !allowed.contains(&module.as_str()) {
                    bad.push(format!("{}: crate::{module}", path.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "an import reaches up or across: {bad:#?}");
    // The scan itself finds what it must.
    assert_eq!(
        crate_modules("use crate::x::Y;\n// crate::no\nlet z = crate::{a, b::c};"),
        ["x", "a", "b"]
    );
}

/// The core does nothing to the host: no file, process, clock, thread or socket call in
/// `src/core/` (its tests excepted), so that every decision runs on a virtual clock.
#[test]
fn the_core_has_no_effects() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let effects = [
        "std::fs",
        "std::process",
        "std::thread",
        "std::net",
        "Instant::now",
        "SystemTime::now",
        "libc::",
        "File::open",
        "read_snapshot",
    ];
    let mut bad = Vec::new();
    for path in sources(&src) {
        if path.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Doc examples and unit tests (a `mod tests` at the end of a file) may do anything.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for line in code.lines().filter(|l| {
            let l = l.trim_start();
            !l.starts_with("//")
        }) {
            for e in effects {
                if line.contains(e) {
                    bad.push(format!("{}: {e}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the core does something to the host: {bad:#?}"
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
