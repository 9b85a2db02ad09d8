//! What stops a configuration's models on this host, beyond the file itself, and what is
//! worth a warning: what `cuvisor check` says, and what a reload checks before it applies
//! a file.

use crate::config::{Config, ModelConfig};
use std::path::Path;

/// Where `model`'s program is, or why it is not found: `command` as a path, or searched
/// in the worker's `PATH` (its `env`'s, else this process's). A model with a Python
/// environment may name a program of the environment, not built yet: not searched.
fn program_missing(m: &ModelConfig) -> Option<String> {
    use crate::launch::SpecError;
    if m.python.is_some() && !m.command.contains('/') {
        return None;
    }
    let path = m
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| crate::launch::DEFAULT_PATH.into());
    // Found as the launch will find it.
    let why = match crate::launch::resolve_program(&m.command, Some(&path)) {
        Ok(_) => return None,
        Err(SpecError::NotFound(_)) => format!("{:?} is not found on PATH ({path})", m.command),
        Err(SpecError::NotExecutable(p)) if !p.exists() => format!("{:?}: no such file", m.command),
        Err(e) => format!("{:?}: {e}", m.command),
    };
    Some(format!("model {}: command {why}", m.name))
}

/// A served model whose arguments never say where to listen: its server would not
/// listen on the port the front door sends its requests to.
fn port_unsaid(m: &ModelConfig) -> Option<String> {
    m.serve.as_ref()?;
    let says = |a: &str| a.contains("{port}") || a.contains("$PORT") || a.contains("${PORT}");
    if says(&m.command) || m.args.iter().any(|a| says(a)) {
        return None;
    }
    Some(format!(
        "model {}: served, and none of its args says {{port}} (or $PORT): its server would not \
         listen where the front door sends requests (add e.g. \"--port\", \"{{port}}\")",
        m.name
    ))
}

/// The front door's address, if another process listens there now.
fn http_in_use(config: &Config) -> Option<String> {
    let addr = config.supervisor.http?;
    match std::net::TcpListener::bind(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some(format!(
            "http = \"{addr}\": another process listens there now; `cuvisor run` cannot \
             open its front door until it leaves"
        )),
        _ => None,
    }
}

/// Whether uv answers `--version`.
fn uv_runs(uv: &Path) -> bool {
    std::process::Command::new(uv)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What stops `c`'s models on this host, and what is worth a warning: what `check` says
/// beyond the file itself (a reload checks the same).
pub fn problems(c: &Config) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    errors.extend(c.models.iter().filter_map(program_missing));
    errors.extend(c.models.iter().filter_map(port_unsaid));
    let needs_uv: Vec<&str> = c
        .models
        .iter()
        .filter(|m| m.python.is_some())
        .map(|m| m.name.as_str())
        .collect();
    let uv = &c.supervisor.envs.uv;
    if !needs_uv.is_empty() && !uv_runs(uv) {
        errors.push(format!(
            "model(s) {} have python, and uv ({}) cannot be run: install it (`pip install uv`), \
             or set uv in [supervisor]",
            needs_uv.join(", "),
            uv.display()
        ));
    } else {
        errors.extend(crate::pyenv::unusable(c));
    }
    if crate::view::needed(c) && !Path::new("/dev/fuse").exists() {
        errors.push(
            "models with memory_limit, cpus or cpu_limit are shown their own /proc/meminfo and \
             CPUs through FUSE, and this host has no /dev/fuse (load the fuse module)"
                .into(),
        );
    }
    warnings.extend(crate::config::exposure::supervisor_exposure(&c.supervisor));
    if let Some(range) = c.supervisor.userns_range {
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            warnings.extend(crate::config::exposure::subid_overlaps(range, file, &text));
        }
    }
    warnings.extend(http_in_use(c));
    warnings.extend(crate::config::exposure::exposures(&c.models));
    (errors, warnings)
}
