//! `cuvisor check`: the file checked as `run` reads it ([`Config::load`]: every error of
//! the file at once), then against this host: what would stop a model at its start (its
//! program not found, a served model that is never told its port, uv, the environments'
//! directory, FUSE, the placement on the GPUs) as errors, and what weakens isolation or is
//! in the way (an open front door, a port in use, subordinate ids) as warnings. Every
//! error and warning is printed; the status is 1 if there is an error.

use super::problems::problems;
use crate::config::Config;
use std::path::Path;
use std::process::ExitCode;

/// `cuvisor check FILE`.
pub fn check(path: &Path) -> ExitCode {
    let c = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let (mut errors, warnings) = problems(&c);
    let plan = match crate::run::place(&c, &crate::nvml::Nvml) {
        Ok(plan) => plan,
        Err(why) => {
            errors.extend(why.to_string().lines().map(str::to_owned));
            None
        }
    };
    for why in &warnings {
        eprintln!("WARNING: {why}");
    }
    for why in &errors {
        eprintln!("{}: {why}", path.display());
    }
    if !errors.is_empty() {
        return ExitCode::FAILURE;
    }
    let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
    println!(
        "{}: ok ({} model(s): {})",
        path.display(),
        names.len(),
        names.join(", ")
    );
    if let Some(plan) = plan {
        for line in plan.lines() {
            println!("{line}");
        }
        for m in c.models.iter().filter(|m| m.gpus.is_none()) {
            eprintln!(
                "WARNING: model {}: no gpus: it sees every GPU, and its quota is not counted in the placement",
                m.name
            );
        }
    }
    ExitCode::SUCCESS
}
