//! The supervisor's configuration: one TOML file declaring the models to run.
//!
//! Everything is checked at load, before anything starts: unknown keys, wrong types and
//! invalid values are errors that name the file and the line. `docs/OPERATIONS.md`
//! documents every key with an annotated example.
//!
//! The leaf of the crate's layers: it imports nothing of cuvisor but `cuvisor-common`,
//! and reaches the host (users, groups, files, secrets, CPUs) only through [`Host`], so
//! that a check can run against a host of a test's own. The file is read as `raw.rs`
//! says (serde, every value with its place in the text), checked by `check.rs`
//! (`[supervisor]`, the front door) and `model.rs` (each `[[model]]`) into the values of
//! `types.rs`, which the rest of cuvisor reads.

pub mod caps;
pub mod cpus;
pub mod exposure;
pub mod gpus;
pub mod host;
pub mod python;
pub mod secrets;

mod check;
mod keys;
mod model;
mod raw;
mod types;

pub use gpus::{GpuDemand, GpuRef, Policy};
pub use host::{Host, SystemHost};
pub use python::{Envs, PythonSpec};
pub use types::*;

use check::{Checker, check_front_door, check_supervisor};
use model::{assign_host_ids, check_model};
use raw::RawConfig;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

impl Config {
    /// Reads and checks a configuration file; every error found, not just the first.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                path: path.to_owned(),
                line: 0,
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Checks a configuration given as text (`path` is for messages) against this host.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
        Self::parse_on(path, text, &SystemHost)
    }

    /// Checks a configuration given as text against `host`'s users, groups, files,
    /// secrets and CPUs (a test's or the fuzz target's own, or [`SystemHost`]).
    pub fn parse_on(path: &Path, text: &str, host: &dyn Host) -> Result<Config, Vec<ConfigError>> {
        let mut c = Checker {
            path,
            text,
            errors: Vec::new(),
            host,
        };
        // Keys no table takes are collected, not fatal: each is reported with the rest.
        let mut unknown = Vec::new();
        let parsed = toml::Deserializer::parse(text)
            .and_then(|de| serde_ignored::deserialize(de, |path| unknown.push(path.to_string())));
        let raw: RawConfig = match parsed {
            Ok(r) => r,
            Err(e) => {
                let line = e.span().map_or(0, |s| c.line_of(s.start));
                return Err(vec![ConfigError {
                    path: path.to_owned(),
                    line,
                    message: e.message().trim().to_owned(),
                }]);
            }
        };
        for path in &unknown {
            let (line, message) = keys::unknown(text, path);
            c.error_at(line, message);
        }
        let supervisor = check_supervisor(
            &mut c,
            raw.supervisor.map(Spanned::into_inner).unwrap_or_default(),
        );
        if raw.model.is_empty() {
            c.error_at(0, "no [[model]]: declare at least one model to run");
        }
        let mut models: Vec<ModelConfig> = Vec::new();
        for spanned in &raw.model {
            let line = c.line_of(spanned.span().start);
            if let Some(mut m) = check_model(&mut c, spanned.get_ref(), line) {
                if models.iter().any(|o| o.name == m.name) {
                    c.error_at(line, format!("model \"{}\" is declared twice", m.name));
                }
                if m.isolation.user {
                    m.host_ids = assign_host_ids(&mut c, &supervisor, &models, line);
                }
                models.push(m);
            }
        }
        // Where each model's aliases are written, for the errors of the whole file's.
        let alias_lines: BTreeMap<(String, String), usize> = raw
            .model
            .iter()
            .filter_map(|m| {
                let m = m.get_ref();
                let name = m.name.as_ref()?.get_ref().clone();
                let serve = m.serve.as_ref()?.get_ref();
                Some((name, &serve.aliases))
            })
            .flat_map(|(name, aliases)| {
                aliases
                    .iter()
                    .map(move |a| ((name.clone(), a.get_ref().clone()), a.span().start))
            })
            .map(|(k, at)| (k, c.line_of(at)))
            .collect();
        check_front_door(&mut c, &supervisor, &models, &alias_lines);
        if c.errors.is_empty() {
            Ok(Config {
                path: path.to_owned(),
                supervisor,
                models,
            })
        } else {
            // In the order of the file (those of the whole file first).
            c.errors.sort_by_key(|e| e.line);
            Err(c.errors)
        }
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Mode;
    use crate::size::QuotaSpec;
    use std::path::PathBuf;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("cuvisor.toml"), text)
            .map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_minimal_model_gets_the_defaults() {
        let c = parse("[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\n").unwrap();
        let m = &c.models[0];
        assert_eq!(
            (m.instances, m.restart, m.mode),
            (1, RestartPolicy::OnFailure, Mode::Managed)
        );
        assert_eq!(
            m.isolation,
            Isolation {
                pid: true,
                mount: true,
                ipc: true,
                uts: true,
                network: false,
                user: false
            }
        );
        assert_eq!(
            (m.backoff_initial, m.backoff_max),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
        assert_eq!(
            c.supervisor.socket,
            PathBuf::from("/run/cuvisor/control.sock")
        );
        assert_eq!(c.supervisor.grace_period, Duration::from_secs(10));
        assert!(!c.supervisor.allow_unlimited);
        assert_eq!(
            (c.supervisor.swap_protect, c.supervisor.swap_patience),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
    }

    #[test]
    fn every_key() {
        use std::os::unix::fs::PermissionsExt;
        let token = std::env::temp_dir().join(format!("cuvisor-token-{}", std::process::id()));
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&format!(
            r#"
[supervisor]
socket = "/tmp/c.sock"
listen = "127.0.0.1:9400"
listen_token = "{}"
ledger_dir = "/tmp/ledgers"
grace_period = "3s"
logs = "/tmp/logs"
allow_unlimited = true
cgroup_name = "cv"
swap_protect = "0s"
swap_patience = "1500ms"

[[model]]
name = "llama"
command = "python3"
args = ["serve.py", "--port", "8000"]
env = {{ HF_HOME = "/tmp" }}
cwd = "/tmp"
user = "0"
group = "0"
gpu_quota = "20GiB"
mode = "device"
memory_limit = "32GiB"
cpu_limit = 2.5
pids_limit = 512
instances = 2
restart = "always"
backoff_initial = "500ms"
backoff_max = "30s"
isolation = {{ pid = true, mount = true, ipc = false, uts = true, network = true }}
bind_ro = ["/tmp"]
"#,
            token.display()
        ))
        .unwrap();
        assert_eq!(c.supervisor.listen_token.as_deref(), Some(token.as_path()));
        assert_eq!(
            (c.supervisor.swap_protect, c.supervisor.swap_patience),
            (Duration::ZERO, Duration::from_millis(1500))
        );
        let _ = std::fs::remove_file(&token);
        let m = &c.models[0];
        assert_eq!(m.args, ["serve.py", "--port", "8000"]);
        assert_eq!(m.gpu_quota, Some(QuotaSpec::Bytes(20 << 30)));
        assert_eq!((m.uid, m.gid), (Some(0), Some(0)));
        assert_eq!(
            (m.cpu_limit, m.pids_limit, m.instances),
            (Some(2.5), Some(512), 2)
        );
        assert_eq!(m.backoff_initial, Duration::from_millis(500));
        assert!(m.isolation.network && !m.isolation.ipc);
        assert_eq!(c.supervisor.logs, Logs::Dir(PathBuf::from("/tmp/logs")));
        assert_eq!(c.supervisor.listen, Some("127.0.0.1:9400".parse().unwrap()));
    }

    #[test]
    fn hibernate_after_is_a_served_models_choice() {
        let served = |serve: &str| {
            parse(&format!(
                "[supervisor]\nhttp = \"127.0.0.1:8000\"\n[[model]]\nname = \"m\"\ncommand = \"x\"\n[model.serve]\nhealth = \"/h\"\n{serve}"
            ))
        };
        let c = served("hibernate_after = \"30s\"\n").unwrap();
        let serve = c.models[0].serve.as_ref().unwrap();
        assert_eq!(serve.hibernate_after, Some(Duration::from_secs(30)));
        let c = served("").unwrap();
        assert_eq!(c.models[0].serve.as_ref().unwrap().hibernate_after, None);
        assert_eq!(
            served("hibernate_after = \"soon\"\n").unwrap_err(),
            [format!(
                "cuvisor.toml:8: serve.hibernate_after = \"soon\": {DURATION_FORMS}"
            )]
        );
    }

    #[test]
    fn swap_timeout_is_bounded() {
        let model = |t: &str| {
            parse(&format!(
                "[[model]]\nname = \"m\"\ncommand = \"x\"\nswap_timeout = \"{t}\"\n"
            ))
        };
        assert_eq!(
            model("2s").unwrap().models[0].swap_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            model("10m").unwrap_err(),
            ["cuvisor.toml:4: swap_timeout = \"10m\": at most 5m"]
        );
        let default = parse("[[model]]\nname = \"m\"\ncommand = \"x\"\n").unwrap();
        assert_eq!(default.models[0].swap_timeout, DEFAULT_SWAP_TIMEOUT);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "5", "s", "1.5s", "-1s", "10 s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
