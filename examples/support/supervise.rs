//! The supervisor embedded in an example (demo, bench_supervisor); included with
//! `#[path]` by those two only, next to `mod support`.

use std::path::Path;

/// The supervisor for the examples: `cuvisor run CONFIG` through the library, in a child
/// process of the example's own (it takes over signals and becomes a subreaper).
pub fn spawn_supervisor(config: &Path, stderr: std::fs::File) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .arg(SUPERVISE)
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start the supervisor")
}

const SUPERVISE: &str = "--supervise";

/// In the child that `spawn_supervisor` started: runs the supervisor and exits.
pub fn supervise_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(SUPERVISE) {
        return;
    }
    let config = cuvisor::config::Config::load(Path::new(&args[2])).unwrap_or_else(|errors| {
        errors.iter().for_each(|e| eprintln!("{e}"));
        std::process::exit(1)
    });
    let s = &config.supervisor;
    cuvisor::log::init(s.log_level, s.log_json);
    match cuvisor::run::run(config, crate::support::shim_path()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cuvisor: {e}");
            std::process::exit(1)
        }
    }
}
