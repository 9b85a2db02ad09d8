//! The file as serde reads it, every value with its place in the text (for the line of
//! an error): nothing here is checked yet.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Deserialize)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) supervisor: Option<Spanned<RawSupervisor>>,
    #[serde(default)]
    pub(super) model: Vec<Spanned<RawModel>>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawSupervisor {
    pub(super) socket: Option<Spanned<String>>,
    pub(super) listen: Option<Spanned<String>>,
    pub(super) listen_token: Option<Spanned<String>>,
    pub(super) ledger_dir: Option<Spanned<String>>,
    pub(super) shim: Option<Spanned<String>>,
    pub(super) grace_period: Option<Spanned<String>>,
    pub(super) logs: Option<Spanned<String>>,
    pub(super) allow_unlimited: Option<bool>,
    pub(super) cgroup_name: Option<Spanned<String>>,
    pub(super) userns_range: Option<Spanned<String>>,
    pub(super) placement: Option<Spanned<String>>,
    pub(super) gpu_overcommit: Option<Spanned<toml::Value>>,
    pub(super) swap_protect: Option<Spanned<String>>,
    pub(super) swap_patience: Option<Spanned<String>>,
    pub(super) http: Option<Spanned<String>>,
    pub(super) api_keys: Option<Spanned<String>>,
    pub(super) http_max_connections: Option<Spanned<i64>>,
    pub(super) http_body_timeout: Option<Spanned<String>>,
    pub(super) http_body_budget: Option<Spanned<String>>,
    pub(super) envs_dir: Option<Spanned<String>>,
    pub(super) uv: Option<Spanned<String>>,
    pub(super) build_user: Option<Spanned<String>>,
    pub(super) metrics: Option<Spanned<String>>,
    pub(super) metrics_token: Option<Spanned<String>>,
    pub(super) dashboard: Option<Spanned<String>>,
    pub(super) dashboard_token: Option<Spanned<String>>,
    pub(super) log_level: Option<Spanned<String>>,
    pub(super) log_format: Option<Spanned<String>>,
    pub(super) http_access_log: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RawModel {
    pub(super) name: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) args: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, Spanned<String>>,
    pub(super) cwd: Option<Spanned<String>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) group: Option<Spanned<String>>,
    pub(super) gpu_quota: Option<Spanned<String>>,
    pub(super) gpus: Option<Spanned<toml::Value>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) memory_limit: Option<Spanned<String>>,
    pub(super) cpu_limit: Option<Spanned<f64>>,
    pub(super) cpus: Option<Spanned<String>>,
    pub(super) pids_limit: Option<Spanned<i64>>,
    pub(super) freeze_hibernated: Option<bool>,
    pub(super) swap_timeout: Option<Spanned<String>>,
    pub(super) instances: Option<Spanned<i64>>,
    pub(super) min_instances: Option<Spanned<i64>>,
    pub(super) max_instances: Option<Spanned<i64>>,
    pub(super) restart: Option<Spanned<String>>,
    pub(super) backoff_initial: Option<Spanned<String>>,
    pub(super) backoff_max: Option<Spanned<String>>,
    pub(super) isolation: Option<Spanned<RawIsolation>>,
    pub(super) python: Option<Spanned<RawPython>>,
    #[serde(default)]
    pub(super) bind_ro: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) capabilities: Vec<Spanned<String>>,
    pub(super) serve: Option<Spanned<RawServe>>,
}

#[derive(Deserialize)]
pub(super) struct RawServe {
    pub(super) health: Option<Spanned<String>>,
    pub(super) ready_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) aliases: Vec<Spanned<String>>,
    pub(super) max_body: Option<Spanned<String>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) max_queue: Option<Spanned<i64>>,
    pub(super) queue_timeout: Option<Spanned<String>>,
    pub(super) target: Option<Spanned<i64>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) hibernate_after: Option<Spanned<String>>,
    pub(super) loading_state: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RawPython {
    pub(super) requirements: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) packages: Vec<String>,
    pub(super) version: Option<Spanned<String>>,
    pub(super) index_url: Option<String>,
    #[serde(default)]
    pub(super) find_links: Vec<String>,
    pub(super) offline: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RawIsolation {
    pub(super) pid: Option<bool>,
    pub(super) mount: Option<bool>,
    pub(super) ipc: Option<bool>,
    pub(super) uts: Option<bool>,
    pub(super) network: Option<bool>,
    pub(super) user: Option<bool>,
}
