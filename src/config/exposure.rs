//! What a model's settings leave its workers able to reach, and what the supervisor's
//! settings leave open: pure functions of the declared values, which `check` and the
//! supervisor's log both say.

use super::types::{ModelConfig, SupervisorConfig};

/// What of the supervisor is open beyond what its settings say: each a reason to close it.
pub fn supervisor_exposure(s: &SupervisorConfig) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(addr) = s.http
        && !addr.ip().is_loopback()
        && s.api_keys.is_none()
    {
        out.push(format!(
            "the front door listens on {addr}, beyond this host, and asks for no API key: \
             whoever reaches it uses the models (set api_keys, or listen on 127.0.0.1)"
        ));
    }
    out
}

/// What a model's workers can reach outside their model, as its settings leave it: each
/// a reason to isolate it further (docs/SECURITY.md).
pub fn exposure(m: &ModelConfig) -> Vec<&'static str> {
    let host_root = m.uid.is_none_or(|u| u == 0) && !m.isolation.user;
    let mut out = Vec::new();
    if host_root {
        out.push(
            "runs as root of the host: without capabilities, and with the kernel's interfaces, \
             the shim and the other ledgers out of reach, it still owns root's files (/etc, \
             anything shared with it); for code you do not trust set user or isolation.user",
        );
    }
    if host_root && !m.isolation.pid {
        out.push(
            "runs as root without a PID namespace: it can signal and trace the other models' \
             workers (set user, isolation.user, or isolation.pid = true)",
        );
    }
    if host_root && !m.isolation.mount {
        out.push(
            "runs as root without a mount namespace: it can open every model's ledger and \
             write the kernel's interfaces (/sys, /proc/sys) and the Python environments \
             the models share (set user, isolation.user, or isolation.mount = true)",
        );
    }
    if m.capabilities.0 != 0 && !m.isolation.user {
        out.push(
            "keeps capabilities on the host (some, such as CAP_SYS_ADMIN, CAP_DAC_OVERRIDE or \
             CAP_SYS_PTRACE, undo its confinement)",
        );
    }
    out
}
