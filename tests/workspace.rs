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

/// The shim's modules are layers (`preload/src/lib.rs` lists them), each importing only
/// lower ones: so no two of its files import each other, directly or around a circle.
/// `exports/` is one layer, the top one.
#[test]
fn the_shim_imports_only_downward() {
    let rank = |module: &str| match module {
        "ffi" | "real" | "logging" => Some(0),
        "hooks" => Some(1),
        "driver" => Some(2),
        "records" => Some(3),
        "runtime" => Some(4),
        "hibernate" | "resolve" => Some(5),
        "exports" => Some(6),
        _ => None,
    };
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("preload/src");
    let mut bad = Vec::new();
    for path in sources(&src) {
        let relative = path.strip_prefix(&src).unwrap();
        let module = match relative.components().next().unwrap().as_os_str().to_str() {
            Some(f) => f.trim_end_matches(".rs").to_owned(),
            None => continue,
        };
        if module == "lib" {
            continue;
        }
        let mine = rank(&module).unwrap_or_else(|| panic!("{module}: give it a layer"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut imported = crate_modules(&text);
        if relative.components().count() == 1 {
            // At the crate's root, `super::x` is `crate::x`.
            imported.extend(crate_modules(&text.replace("super::", "crate::")));
        }
        // (`super::*` and `super::super::` in nested modules name no module here.)
        imported.retain(|m| !m.is_empty() && m != "crate" && m != "*");
        for m in imported {
            if m != module && rank(&m).is_none_or(|r| r >= mine) {
                bad.push(format!("{}: crate::{m}", relative.display()));
            }
        }
    }
    assert!(bad.is_empty(), "the shim imports up or across: {bad:#?}");
}

/// The module a file of `src/` is (`core/supervisor.rs` → `core::supervisor`,
/// `serve/gateway/mod.rs` → `serve::gateway`, `lib.rs` → the root).
fn module_of(src: &std::path::Path, path: &std::path::Path) -> Vec<String> {
    let relative = path.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// Every path a file names through `crate::` or `super::` (comments and a trailing
/// `mod tests` left out), as module segments from the crate's root.
fn named_paths(module: &[String], text: &str) -> Vec<Vec<String>> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    let mut found = Vec::new();
    let segments = |rest: &str| -> Vec<Vec<String>> {
        let take = |s: &str| -> Vec<String> {
            s.split("::")
                .map(|p| {
                    p.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|p| !p.is_empty())
                .collect()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            group.split(',').map(|g| take(g.trim())).collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            vec![take(&rest[..end])]
        }
    };
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            if line[..at].ends_with('$') {
                continue; // `$crate::` in a macro
            }
            found.extend(segments(&line[at + "crate::".len()..]));
        }
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            if at > 0 && rest[..at].ends_with("::") {
                rest = &rest[at + 7..];
                continue; // counted with the `super::` before it
            }
            let mut ups = 0;
            let mut tail = &rest[at..];
            while let Some(t) = tail.strip_prefix("super::") {
                ups += 1;
                tail = t;
            }
            // `super` is the module's parent (in `a/mod.rs`, module `a`, it is the root).
            let parent = &module[..module.len().saturating_sub(ups)];
            for s in segments(tail) {
                found.push(parent.iter().cloned().chain(s).collect());
            }
            rest = tail;
        }
    }
    found
}

/// No two files of `src/` import each other, directly or around a circle: the layers'
/// guard above keeps the folders in order, this one the files inside them. The old paths
/// kept for one release (`crate::ledger` for `crate::node::ledger`, …) are followed.
#[test]
fn no_file_of_src_imports_itself_around_a_circle() {
    use std::collections::{BTreeMap, BTreeSet};
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    // `pub use node::{cgroups, …};` and the like at the crate's root: alias → module.
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_start_matches("crate::").trim_end_matches(';');
        if let Some((base, group)) = rest.split_once("::{") {
            for name in group.trim_end_matches('}').split(',') {
                let name = name.trim();
                let path = base.split("::").chain(name.split("::"));
                aliases.insert(name.to_owned(), path.map(str::to_owned).collect());
            }
        }
    }
    let files: Vec<std::path::PathBuf> = sources(&src)
        .into_iter()
        .filter(|p| !p.ends_with("tests.rs") && !p.ends_with("main.rs"))
        .collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|p| module_of(&src, p)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for path in &files {
        let me = module_of(&src, path);
        let text = std::fs::read_to_string(path).unwrap();
        // A child module named relatively (`power::Power` in `core/mod.rs`).
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for child in modules
            .iter()
            .filter(|m| m.len() == me.len() + 1 && m.starts_with(&me))
        {
            let name = format!("{}::", child.last().unwrap());
            let named = code.match_indices(&name).any(|(at, _)| {
                !code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            });
            if named {
                edges.entry(me.clone()).or_default().insert(child.clone());
            }
        }
        for mut named in named_paths(&me, &text) {
            if let Some(target) = named.first().and_then(|f| aliases.get(f)) {
                named.splice(0..1, target.iter().cloned());
            }
            // The longest prefix that is a module of a file.
            let target = (1..=named.len())
                .rev()
                .map(|n| named[..n].to_vec())
                .find(|m| modules.contains(m));
            if let Some(t) = target
                && t != me
                && !me.starts_with(&t)
            {
                edges.entry(me.clone()).or_default().insert(t);
            }
        }
    }
    // A circle is an edge a → b with a path back from b to a.
    let reaches = |from: &Vec<String>, to: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(m) = stack.pop() {
            if &m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.extend(edges.get(&m).into_iter().flatten().cloned());
            }
        }
        false
    };
    let mut circles = Vec::new();
    for (a, targets) in &edges {
        for b in targets {
            if reaches(b, a) {
                circles.push(format!("{} -> {}", a.join("::"), b.join("::")));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles between files: {circles:#?}"
    );
    // The scan itself finds what it must.
    let paths = named_paths(
        &["core".into(), "power".into()],
        "use super::api::Reply;\nuse crate::log::log;",
    );
    assert_eq!(paths, [vec!["core", "api", "Reply"], vec!["log", "log"]]);
}
