//! The layout's promises: `cargo test` builds libcuvisor_preload.so, which carries its
//! version marker, and no C hook symbol leaks into the supervisor binary (a `dlsym` or
//! `cu*` export there would interpose on the supervisor itself).

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
