//! A reload, decided: what a new configuration changes of the running one ([`diff`]), and
//! how a changed model's instances are replaced ([`roll`]). Pure: the supervisor carries
//! it out.
//!
//! * A model in both files, equal, is **unchanged**: its instances are not touched.
//! * A model only in the new file is **added**; one only in the old file is **removed**
//!   (its instances drain, then stop).
//! * A model whose quota alone changed (both set) keeps its instances: the quota is
//!   changed **live** in its ledger.
//! * Any other change (its command, arguments, environment, limits, serving settings, or
//!   the GPUs the placement gives it) **replaces** it by rolling instances ([`roll`]).
//! * A change of `[supervisor]` is refused, each key by name: it takes a restart.

use super::placement::Plan;
use crate::config::{Config, ModelConfig, SupervisorConfig};
use crate::size::QuotaSpec;

/// What a reload does to one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Added,
    Removed,
    /// Its quota alone, changed live.
    Quota {
        from: QuotaSpec,
        to: QuotaSpec,
    },
    /// Replaced by rolling instances.
    Replaced,
}

/// What `new` changes of `old`, model by model (the new file's order, then the removed
/// ones), or every reason it cannot be applied without a restart. `old_plan`, `new_plan`:
/// where each configuration's placed models run.
pub fn diff(
    old: &Config,
    new: &Config,
    old_plan: Option<&Plan>,
    new_plan: Option<&Plan>,
) -> Result<Vec<(String, Change)>, Vec<String>> {
    let refused: Vec<String> = supervisor_changes(&old.supervisor, &new.supervisor)
        .into_iter()
        .map(|key| format!("[supervisor] {key} changed: it takes a restart of the supervisor"))
        .collect();
    if !refused.is_empty() {
        return Err(refused);
    }
    let placed = |plan: Option<&Plan>, name: &str| plan.and_then(|p| p.uuids(name));
    let mut changes: Vec<(String, Change)> = new
        .models
        .iter()
        .map(|m| {
            let change = match old.model(&m.name) {
                None => Change::Added,
                Some(_) if placed(old_plan, &m.name) != placed(new_plan, &m.name) => {
                    Change::Replaced
                }
                Some(was) => compare(was, m),
            };
            (m.name.clone(), change)
        })
        .collect();
    changes.extend(
        old.models
            .iter()
            .filter(|m| new.model(&m.name).is_none())
            .map(|m| (m.name.clone(), Change::Removed)),
    );
    Ok(changes)
}

fn compare(was: &ModelConfig, now: &ModelConfig) -> Change {
    if was == now {
        return Change::Unchanged;
    }
    match (was.gpu_quota, now.gpu_quota) {
        (Some(from), Some(to)) => {
            let same_but_quota = ModelConfig {
                gpu_quota: was.gpu_quota,
                ..now.clone()
            };
            if &same_but_quota == was {
                Change::Quota { from, to }
            } else {
                Change::Replaced
            }
        }
        _ => Change::Replaced,
    }
}

/// The `[supervisor]` keys whose values differ (each key once, as the file spells it).
fn supervisor_changes(a: &SupervisorConfig, b: &SupervisorConfig) -> Vec<&'static str> {
    // Destructured whole: a key added to the supervisor's configuration must be named here.
    let SupervisorConfig {
        socket,
        listen,
        listen_token,
        ledger_dir,
        shim,
        grace_period,
        logs,
        allow_unlimited,
        cgroup_name,
        userns_range,
        http,
        metrics,
        metrics_token,
        dashboard,
        dashboard_token,
        log_level,
        log_json,
        http_access_log,
        api_keys,
        http_max_connections,
        http_body_timeout,
        http_body_budget,
        placement,
        gpu_overcommit,
        swap_protect,
        swap_patience,
        envs,
    } = a;
    let mut changed = Vec::new();
    let mut key = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    key(*socket != b.socket, "socket");
    key(*listen != b.listen, "listen");
    key(*listen_token != b.listen_token, "listen_token");
    key(*ledger_dir != b.ledger_dir, "ledger_dir");
    key(*shim != b.shim, "shim");
    key(*grace_period != b.grace_period, "grace_period");
    key(*logs != b.logs, "logs");
    key(*allow_unlimited != b.allow_unlimited, "allow_unlimited");
    key(*cgroup_name != b.cgroup_name, "cgroup_name");
    key(*userns_range != b.userns_range, "userns_range");
    key(*http != b.http, "http");
    key(*metrics != b.metrics, "metrics");
    key(*metrics_token != b.metrics_token, "metrics_token");
    key(*dashboard != b.dashboard, "dashboard");
    key(*dashboard_token != b.dashboard_token, "dashboard_token");
    key(*log_level != b.log_level, "log_level");
    key(*log_json != b.log_json, "log_format");
    key(*http_access_log != b.http_access_log, "http_access_log");
    key(*api_keys != b.api_keys, "api_keys");
    key(
        *http_max_connections != b.http_max_connections,
        "http_max_connections",
    );
    key(
        *http_body_timeout != b.http_body_timeout,
        "http_body_timeout",
    );
    key(*http_body_budget != b.http_body_budget, "http_body_budget");
    key(*placement != b.placement, "placement");
    key(*gpu_overcommit != b.gpu_overcommit, "gpu_overcommit");
    key(*swap_protect != b.swap_protect, "swap_protect");
    key(*swap_patience != b.swap_patience, "swap_patience");
    key(envs.dir != b.envs.dir, "envs_dir");
    key(envs.uv != b.envs.uv, "uv");
    key(envs.user != b.envs.user, "build_user");
    changed
}

/// A replacement under way, as [`roll`] sees it at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    /// New instances wanted.
    pub wanted: usize,
    /// Whether a new instance may start before an old one has gone: not when the model
    /// has a quota, which its old and new processes share (each may fill it).
    pub surge: bool,
    /// New instances running or starting.
    pub new_alive: usize,
    /// New instances ready (served: their health check passed; others: running).
    pub new_ready: usize,
    /// Old instances still serving (not draining).
    pub old_serving: usize,
    /// Old instances not gone yet (serving, draining or stopping).
    pub old_alive: usize,
}

/// What to do next in a replacement: new instances to start, old ones to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Step {
    pub start: usize,
    pub drain: usize,
}

/// The next step of a replacement. With `surge` (no quota), one new instance more than
/// wanted may run, and an old one drains only once a new one is ready in its place: the
/// model serves at full strength throughout. Without, one instance may be missing: an old
/// one drains first, and a new one starts once it has gone.
pub fn roll(r: &Rollout) -> Step {
    let (surge, unavailable) = if r.surge { (1, 0) } else { (0, 1) };
    let room = (r.wanted + surge).saturating_sub(r.new_alive + r.old_alive);
    let start = room.min(r.wanted.saturating_sub(r.new_alive));
    // Serving after the drain: at least `wanted` less the one that may be missing.
    let floor = r.wanted.saturating_sub(unavailable);
    let drain = (r.new_ready + r.old_serving)
        .saturating_sub(floor)
        .min(r.old_serving);
    Step { start, drain }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(supervisor: &str, models: &str) -> Config {
        let text = format!(
            "[supervisor]\nsocket = \"/nonexistent/s\"\nledger_dir = \"/nonexistent/l\"\n{supervisor}{models}"
        );
        Config::parse(Path::new("test.toml"), &text).expect("a valid config")
    }

    fn model(name: &str, extra: &str) -> String {
        format!("[[model]]\nname = \"{name}\"\ncommand = \"/bin/sleep\"\n{extra}\n")
    }

    #[test]
    fn each_model_is_unchanged_added_removed_requota_or_replaced() {
        let old = config(
            "",
            &[
                model("same", ""),
                model("gone", ""),
                model("quota", "gpu_quota = \"4GiB\""),
                model("args", "args = [\"1\"]"),
                model("unquota", "gpu_quota = \"4GiB\""),
            ]
            .concat(),
        );
        let new = config(
            "",
            &[
                model("new", ""),
                model("same", ""),
                model("quota", "gpu_quota = \"8GiB\""),
                model("args", "args = [\"2\"]"),
                model("unquota", ""),
            ]
            .concat(),
        );
        let gib = |n: u64| QuotaSpec::Bytes(n << 30);
        assert_eq!(
            diff(&old, &new, None, None).unwrap(),
            [
                ("new".into(), Change::Added),
                ("same".into(), Change::Unchanged),
                (
                    "quota".into(),
                    Change::Quota {
                        from: gib(4),
                        to: gib(8)
                    }
                ),
                ("args".into(), Change::Replaced),
                ("unquota".into(), Change::Replaced),
                ("gone".into(), Change::Removed),
            ]
        );
        // A quota and anything else: replaced.
        let both = config(
            "",
            &model("quota", "gpu_quota = \"8GiB\"\nenv = { A = \"1\" }"),
        );
        assert_eq!(
            diff(&old, &both, None, None).unwrap()[0],
            ("quota".into(), Change::Replaced)
        );
    }

    #[test]
    fn supervisor_keys_are_refused_by_name() {
        let old = config("grace_period = \"1s\"\n", &model("a", ""));
        let new = config(
            "grace_period = \"2s\"\ncgroup_name = \"other\"\nlog_format = \"json\"\n\
             swap_patience = \"1s\"\n",
            &model("a", ""),
        );
        assert_eq!(
            diff(&old, &new, None, None).unwrap_err(),
            [
                "[supervisor] grace_period changed: it takes a restart of the supervisor",
                "[supervisor] cgroup_name changed: it takes a restart of the supervisor",
                "[supervisor] log_format changed: it takes a restart of the supervisor",
                "[supervisor] swap_patience changed: it takes a restart of the supervisor",
            ]
        );
        assert_eq!(
            diff(&old, &old, None, None).unwrap(),
            [("a".into(), Change::Unchanged)]
        );
    }

    fn at(wanted: usize, surge: bool, new: (usize, usize), old: (usize, usize)) -> Step {
        roll(&Rollout {
            wanted,
            surge,
            new_alive: new.0,
            new_ready: new.1,
            old_serving: old.0,
            old_alive: old.1,
        })
    }

    #[test]
    fn with_surge_a_new_instance_is_ready_before_an_old_one_drains() {
        let step = |start, drain| Step { start, drain };
        // One instance: the new one starts, the old one drains once it is ready.
        assert_eq!(at(1, true, (0, 0), (1, 1)), step(1, 0));
        assert_eq!(at(1, true, (1, 0), (1, 1)), step(0, 0));
        assert_eq!(at(1, true, (1, 1), (1, 1)), step(0, 1));
        assert_eq!(at(1, true, (1, 1), (0, 1)), step(0, 0));
        assert_eq!(at(1, true, (1, 1), (0, 0)), step(0, 0));
        // Two: one at a time, never fewer than two serving.
        assert_eq!(at(2, true, (0, 0), (2, 2)), step(1, 0));
        assert_eq!(at(2, true, (1, 1), (2, 2)), step(0, 1));
        assert_eq!(at(2, true, (1, 1), (1, 2)), step(0, 0)); // the drained one still there
        assert_eq!(at(2, true, (1, 1), (1, 1)), step(1, 0));
        assert_eq!(at(2, true, (2, 2), (1, 1)), step(0, 1));
        // A new instance that never becomes ready: the old ones go on serving.
        assert_eq!(at(1, true, (1, 0), (1, 1)), step(0, 0));
        assert_eq!(at(1, true, (0, 0), (1, 1)), step(1, 0));
    }

    #[test]
    fn without_surge_an_old_instance_goes_first() {
        let step = |start, drain| Step { start, drain };
        assert_eq!(at(1, false, (0, 0), (1, 1)), step(0, 1));
        assert_eq!(at(1, false, (0, 0), (0, 1)), step(0, 0)); // until it has exited
        assert_eq!(at(1, false, (0, 0), (0, 0)), step(1, 0));
        assert_eq!(at(2, false, (0, 0), (2, 2)), step(0, 1));
        assert_eq!(at(2, false, (0, 0), (1, 1)), step(1, 0));
        assert_eq!(at(2, false, (1, 0), (1, 1)), step(0, 0));
        assert_eq!(at(2, false, (1, 1), (1, 1)), step(0, 1));
        assert_eq!(at(2, false, (1, 1), (0, 0)), step(1, 0));
    }
}
