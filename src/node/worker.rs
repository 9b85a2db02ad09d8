//! What a worker is started with: its environment and its arguments as C strings.

use crate::contract::{self, Contract};
use std::ffi::CString;
use std::path::Path;

/// The environment of a worker: this process's, with the model's contract with the shim
/// (every `CUVISOR_*` variable cuvisor decides replaced by `contract`'s) and the shim
/// appended to any LD_PRELOAD already there. `extra` (a model's `env`) comes first.
pub fn worker_env(
    extra: &[(String, String)],
    contract: &Contract,
    shim: &Path,
) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    for (k, v) in extra {
        env.insert(k.clone(), v.clone());
    }
    for k in contract::SET_BY_CUVISOR {
        env.remove(k);
    }
    for (k, v) in contract.to_env() {
        env.insert(k.to_owned(), v);
    }
    let shim = shim.display().to_string();
    let preload = match env.get("LD_PRELOAD") {
        Some(existing) if !existing.is_empty() => format!("{existing}:{shim}"),
        _ => shim,
    };
    env.insert("LD_PRELOAD".into(), preload);
    env.into_iter().collect()
}

/// Arguments or variables as C strings; one with a NUL byte is refused.
pub fn cstrings(
    items: impl IntoIterator<Item = String>,
) -> Result<Vec<CString>, crate::launch::SpecError> {
    items
        .into_iter()
        .map(|s| {
            CString::new(s)
                .map_err(|_| crate::launch::SpecError::Nul("an argument or variable".into()))
        })
        .collect()
}
