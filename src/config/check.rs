//! The checker that collects every error of a file with its line, and the checks of
//! `[supervisor]` and of the front door across models.

use super::gpus::Policy;
use super::host::Host;
use super::python::{BUILD_IDS, BUILD_USER, Envs};
use super::raw::*;
use super::secrets::SecretError;
use super::types::*;
use crate::size::parse_size;
use cuvisor_common::ledger::{self, valid_model_name};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The id `setresuid`/`setresgid` read as "leave unchanged": a worker given it would keep
/// the supervisor's (root's) id.
pub(super) const NO_CHANGE_ID: u32 = u32::MAX;

pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) errors: Vec<ConfigError>,
    pub(super) host: &'a dyn Host,
}

impl Checker<'_> {
    /// A secret's file (`listen_token`, `api_keys`): an absolute path that `read` accepts
    /// on the host.
    pub(super) fn secret(
        &mut self,
        field: &str,
        v: &Spanned<String>,
        read: impl Fn(&dyn Host, &Path) -> Result<(), SecretError>,
    ) -> Option<PathBuf> {
        let p = self.absolute(field, v)?;
        match read(self.host, &p) {
            Ok(()) => Some(p),
            Err(why) => {
                self.error(v, format!("{field} = \"{}\": {why}", p.display()));
                None
            }
        }
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    pub(super) fn error<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        let line = self.line_of(spanned.span().start);
        self.errors.push(ConfigError {
            path: self.path.to_owned(),
            line,
            message: message.into(),
        });
    }

    pub(super) fn error_at(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: self.path.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// A string that becomes a C string (a path, an argument): no NUL byte.
    pub(super) fn no_nul(&mut self, key: &str, v: &Spanned<String>) -> bool {
        if v.get_ref().contains('\0') {
            self.error(
                v,
                format!("{key}: a NUL byte cannot be passed to the system"),
            );
            false
        } else {
            true
        }
    }

    pub(super) fn absolute(&mut self, key: &str, v: &Spanned<String>) -> Option<PathBuf> {
        if !self.no_nul(key, v) {
            None
        } else if v.get_ref().starts_with('/') {
            Some(PathBuf::from(v.get_ref()))
        } else {
            self.error(
                v,
                format!("{key} = \"{}\": expected an absolute path", v.get_ref()),
            );
            None
        }
    }

    /// A size (`16MiB`) within `bounds`; else an error that says what is `expected`
    /// (`a size greater than 0, e.g. 16MiB`) and None.
    pub(super) fn size(
        &mut self,
        key: &str,
        v: &Spanned<String>,
        bounds: std::ops::RangeInclusive<u64>,
        expected: &str,
    ) -> Option<u64> {
        match parse_size(v.get_ref()) {
            Ok(n) if bounds.contains(&n) => Some(n),
            _ => {
                self.error(
                    v,
                    format!("{key} = \"{}\": expected {expected}", v.get_ref()),
                );
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        v: &Option<Spanned<String>>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Some(d) if d <= MAX_DURATION => d,
                Some(_) => {
                    self.error(s, format!("{key} = \"{}\": at most 24h", s.get_ref()));
                    default
                }
                None => {
                    self.error(s, format!("{key} = \"{}\": {DURATION_FORMS}", s.get_ref()));
                    default
                }
            },
        }
    }
}

pub(super) fn check_supervisor(c: &mut Checker, s: RawSupervisor) -> SupervisorConfig {
    let socket = s
        .socket
        .as_ref()
        .and_then(|v| c.absolute("socket", v))
        .unwrap_or_else(|| PathBuf::from("/run/cuvisor/control.sock"));
    let listen = s.listen.as_ref().and_then(|v| match v.get_ref().parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Some(a),
        Ok(_) => {
            c.error(v, format!("listen = \"{}\": the control API listens on loopback only (127.0.0.1:PORT or [::1]:PORT)", v.get_ref()));
            None
        }
        Err(_) => {
            c.error(v, format!("listen = \"{}\": expected an address such as 127.0.0.1:9400", v.get_ref()));
            None
        }
    });
    let listen_token = s
        .listen_token
        .as_ref()
        .and_then(|v| c.secret("listen_token", v, |host, p| host.read_token(p).map(drop)));
    if let (Some(l), None) = (&s.listen, &s.listen_token) {
        c.error(
            l,
            "listen: the control API over TCP needs listen_token, a file with the token \
             clients must send (Authorization: Bearer TOKEN)",
        );
    }
    let ledger_dir = s
        .ledger_dir
        .as_ref()
        .and_then(|v| c.absolute("ledger_dir", v))
        .unwrap_or_else(ledger::default_dir);
    let shim = s.shim.as_ref().and_then(|v| {
        let p = c.absolute("shim", v)?;
        if c.host.is_file(&p) {
            Some(p)
        } else {
            c.error(v, format!("shim = \"{}\": no such file", p.display()));
            None
        }
    });
    let grace_period = c.duration("grace_period", &s.grace_period, Duration::from_secs(10));
    let swap_protect = c.duration("swap_protect", &s.swap_protect, Duration::from_secs(10));
    let swap_patience = c.duration("swap_patience", &s.swap_patience, Duration::from_secs(5));
    let logs = match &s.logs {
        None => Logs::Stderr,
        Some(v) if v.get_ref() == "stderr" => Logs::Stderr,
        Some(v) => c.absolute("logs", v).map_or(Logs::Stderr, Logs::Dir),
    };
    let cgroup_name = match &s.cgroup_name {
        None => "cuvisor".to_owned(),
        Some(v)
            if EXEC_CGROUP_NAME == v.get_ref()
                || [".slice", ".scope", ".service", ".mount"]
                    .iter()
                    .any(|suffix| v.get_ref().ends_with(suffix)) =>
        {
            c.error(
                v,
                format!(
                    "cgroup_name = \"{}\": that name belongs to systemd or to cuvisor exec; \
                     give the supervisor a cgroup of its own",
                    v.get_ref()
                ),
            );
            "cuvisor".to_owned()
        }
        Some(v) if valid_model_name(v.get_ref()) => v.get_ref().clone(),
        Some(v) => {
            c.error(
                v,
                format!(
                    "cgroup_name = \"{}\": expected letters, digits, '.', '_' or '-'",
                    v.get_ref()
                ),
            );
            "cuvisor".to_owned()
        }
    };
    let userns_range = s.userns_range.as_ref().and_then(|v| {
        let parsed = v
            .get_ref()
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)));
        match parsed {
            Some((first, last)) if first >= 1 && first <= last && last < u32::MAX => {
                match c.host.id_in_use(first, last) {
                    Some(who) => {
                        c.error(
                            v,
                            format!(
                                "userns_range = \"{}\": {who} has an id in it; choose ids no user or group of the host has",
                                v.get_ref()
                            ),
                        );
                        None
                    }
                    None => Some((first, last)),
                }
            }
            _ => {
                c.error(
                    v,
                    format!(
                        "userns_range = \"{}\": expected FIRST-LAST host ids, e.g. 1000000-1999999 (not 0, at most 4294967294), that no user of the host has",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    });
    let placement = match &s.placement {
        None => Policy::Pack,
        Some(v) if v.get_ref() == "pack" => Policy::Pack,
        Some(v) if v.get_ref() == "spread" => Policy::Spread,
        Some(v) => {
            c.error(
                v,
                format!(
                    "placement = \"{}\": expected \"pack\" or \"spread\"",
                    v.get_ref()
                ),
            );
            Policy::Pack
        }
    };
    let gpu_overcommit = match &s.gpu_overcommit {
        None => 1.0,
        Some(v) => match v.get_ref() {
            toml::Value::Float(f) if f.is_finite() && *f > 0.0 && *f <= 64.0 => *f,
            toml::Value::Integer(i) if (1..=64).contains(i) => *i as f64,
            other => {
                c.error(
                    v,
                    format!(
                        "gpu_overcommit = {other}: expected a factor greater than 0 and at most 64 \
                         (1.0: no GPU committed beyond its memory; Omni runs at about 4.0)"
                    ),
                );
                1.0
            }
        },
    };
    let http = s
        .http
        .as_ref()
        .and_then(|v| match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.error(
                    v,
                    format!(
                        "http = \"{}\": expected an address such as 127.0.0.1:8000",
                        v.get_ref()
                    ),
                );
                None
            }
        });
    let metrics = s
        .metrics
        .as_ref()
        .and_then(|v| match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let why = "expected an address such as 0.0.0.0:9469";
                c.error(v, format!("metrics = \"{}\": {why}", v.get_ref()));
                None
            }
        });
    let metrics_token = s
        .metrics_token
        .as_ref()
        .and_then(|v| c.secret("metrics_token", v, |host, p| host.read_token(p).map(drop)));
    if let (None, Some(t)) = (&s.metrics, &s.metrics_token) {
        c.error(t, "metrics_token: set metrics too (the listener it guards)");
    }
    let dashboard = s
        .dashboard
        .as_ref()
        .and_then(|v| match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let why = "expected an address such as 127.0.0.1:9470";
                c.error(v, format!("dashboard = \"{}\": {why}", v.get_ref()));
                None
            }
        });
    let dashboard_token = s
        .dashboard_token
        .as_ref()
        .and_then(|v| c.secret("dashboard_token", v, |host, p| host.read_token(p).map(drop)));
    if let (None, Some(t)) = (&s.dashboard, &s.dashboard_token) {
        c.error(
            t,
            "dashboard_token: set dashboard too (the listener it guards)",
        );
    }
    let log_level = match s.log_level.as_ref() {
        None => LogLevel::default(),
        Some(v) => match v.get_ref().as_str() {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            other => {
                let why = "expected error, warn, info or debug";
                c.error(v, format!("log_level = \"{other}\": {why}"));
                LogLevel::default()
            }
        },
    };
    let log_json = match s.log_format.as_ref() {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            "text" => false,
            "json" => true,
            other => {
                c.error(
                    v,
                    format!("log_format = \"{other}\": expected text or json"),
                );
                false
            }
        },
    };
    let api_keys = s
        .api_keys
        .as_ref()
        .and_then(|v| c.secret("api_keys", v, |host, p| host.read_keys(p).map(drop)));
    let http_max_connections = match &s.http_max_connections {
        None => DEFAULT_HTTP_MAX_CONNECTIONS,
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n @ 1..=1_000_000) => n,
            _ => {
                c.error(
                    v,
                    format!(
                        "http_max_connections = {}: expected 1 to 1000000",
                        v.get_ref()
                    ),
                );
                DEFAULT_HTTP_MAX_CONNECTIONS
            }
        },
    };
    let http_body_timeout = c.duration(
        "http_body_timeout",
        &s.http_body_timeout,
        DEFAULT_HTTP_BODY_TIMEOUT,
    );
    let http_body_budget = s
        .http_body_budget
        .as_ref()
        .and_then(|v| {
            let expected = "a size from 1KiB to 1TiB, e.g. 256MiB";
            c.size("http_body_budget", v, 1 << 10..=1 << 40, expected)
        })
        .unwrap_or(DEFAULT_HTTP_BODY_BUDGET);
    let envs = Envs {
        dir: s
            .envs_dir
            .as_ref()
            .and_then(|v| c.absolute("envs_dir", v))
            .unwrap_or_else(|| PathBuf::from("/var/lib/cuvisor/envs")),
        uv: s
            .uv
            .as_ref()
            .filter(|v| c.no_nul("uv", v))
            .map(|v| PathBuf::from(v.get_ref()))
            // Not said: the uv beside this binary (where `pip install cuvisor` puts the
            // one it depends on), else uv on the PATH.
            .or_else(|| c.host.beside_me("uv"))
            .unwrap_or_else(|| PathBuf::from("uv")),
        user: match &s.build_user {
            Some(u) => match c.host.user(u.get_ref()) {
                Some((0, _)) => {
                    let name = u.get_ref();
                    let why =
                        "a package's build hooks run as this user: choose one that is not root";
                    c.error(u, format!("build_user = \"{name}\": {why}"));
                    BUILD_IDS
                }
                Some(ids) => ids,
                None => {
                    c.error(u, format!("build_user = \"{}\": no such user", u.get_ref()));
                    BUILD_IDS
                }
            },
            None => c.host.user(BUILD_USER).unwrap_or(BUILD_IDS),
        },
    };
    SupervisorConfig {
        socket,
        listen,
        listen_token,
        http,
        metrics,
        metrics_token,
        dashboard,
        dashboard_token,
        log_level,
        log_json,
        http_access_log: s.http_access_log.unwrap_or(false),
        api_keys,
        http_max_connections,
        http_body_timeout,
        http_body_budget,
        envs,
        ledger_dir,
        shim,
        grace_period,
        logs,
        allow_unlimited: s.allow_unlimited.unwrap_or(false),
        cgroup_name,
        userns_range,
        placement,
        gpu_overcommit,
        swap_protect,
        swap_patience,
    }
}

/// What the front door needs of the whole file: `http` for served models, and names and
/// aliases that name one model each.
pub(super) fn check_front_door(
    c: &mut Checker,
    supervisor: &SupervisorConfig,
    models: &[ModelConfig],
    alias_lines: &BTreeMap<(String, String), usize>,
) {
    let served: Vec<&ModelConfig> = models.iter().filter(|m| m.serve.is_some()).collect();
    if !served.is_empty() && supervisor.http.is_none() {
        c.error_at(
            0,
            format!(
                "model {} has serve: set http in [supervisor] (the front door's address, e.g. 127.0.0.1:8000)",
                served[0].name
            ),
        );
    }
    let mut seen: BTreeMap<&str, &str> = models
        .iter()
        .map(|m| (m.name.as_str(), m.name.as_str()))
        .collect();
    for m in &served {
        for a in &m.serve.as_ref().expect("served").aliases {
            if let Some(other) = seen.insert(a, &m.name) {
                let line = alias_lines.get(&(m.name.clone(), a.clone()));
                c.error_at(
                    line.copied().unwrap_or(0),
                    format!("model {}: alias {a:?} already names model {other}", m.name),
                );
            }
        }
    }
}
