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
    if let Some(addr) = s.metrics
        && !addr.ip().is_loopback()
        && s.metrics_token.is_none()
    {
        out.push(format!(
            "the metrics listen on {addr}, beyond this host, and ask for no token: whoever \
             reaches them reads the models' names and use (set metrics_token, or firewall it)"
        ));
    }
    if let Some(addr) = s.dashboard
        && !addr.ip().is_loopback()
    {
        out.push(format!(
            "the dashboard listens on {addr}, beyond this host: whoever reaches it sees the \
             models' names, states and use{} (listen on 127.0.0.1 behind an authenticating \
             proxy, or firewall it)",
            match s.dashboard_token {
                Some(_) => "",
                None => ", and no token guards its actions: it is read-only",
            }
        ));
    }
    out
}

/// [`exposure`] of every model, each reason said once for all the models it concerns
/// (`models a, b: runs as root of the host: …`), in the order they first appear.
pub fn exposures(models: &[ModelConfig]) -> Vec<String> {
    let mut reasons: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for m in models {
        for why in exposure(m) {
            match reasons.iter_mut().find(|(w, _)| *w == why) {
                Some((_, names)) => names.push(&m.name),
                None => reasons.push((why, vec![&m.name])),
            }
        }
    }
    reasons
        .into_iter()
        .map(|(why, names)| match names.as_slice() {
            [one] => format!("model {one}: {why}"),
            many => format!("models {}: {why}", many.join(", ")),
        })
        .collect()
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

/// Where `userns_range` overlaps the subordinate ids `text` (the content of `/etc/subuid`
/// or `/etc/subgid`, named `file`) gives users for their own user namespaces: a process
/// in such a namespace could then share ids with a model's workers.
pub fn subid_overlaps(range: (u32, u32), file: &str, text: &str) -> Vec<String> {
    let (first, last) = range;
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (name, start, count) = (f.next()?, f.next()?, f.next()?);
            let start: u64 = start.parse().ok()?;
            let count: u64 = count.parse().ok()?;
            let end = (start + count).checked_sub(1)?;
            (start <= u64::from(last) && u64::from(first) <= end).then(|| {
                format!(
                    "userns_range {first}-{last} overlaps the ids {file} gives {name} \
                     ({start}-{end}): a process in {name}'s user namespaces could share ids with \
                     a model's workers (choose a range outside {file}'s)"
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_userns_range_is_checked_against_the_subordinate_ids() {
        let text = "alice:100000:65536\nbob:1000000:65536\n# comment\nbad line\n";
        let found = subid_overlaps((1_000_000, 1_999_999), "/etc/subuid", text);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("gives bob (1000000-1065535)"),
            "{found:?}"
        );
        assert!(subid_overlaps((2_000_000, 2_999_999), "/etc/subuid", text).is_empty());
        // The last id of alice's range touches the first of the model's.
        assert_eq!(
            subid_overlaps((165_535, 200_000), "/etc/subuid", text).len(),
            1
        );
        assert!(subid_overlaps((165_536, 200_000), "/etc/subuid", text).is_empty());
    }
}
