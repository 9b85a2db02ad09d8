//! The shim's environment contract: the `CUVISOR_*` variables that the supervisor and
//! `cuvisor exec` write and `libcuvisor_preload.so` reads, once, when it is loaded. One
//! type, [`Contract`], written by [`Contract::to_env`] and read by
//! [`Contract::from_lookup`]: no variable name, mode or size is spelled anywhere else.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `CUVISOR_MODEL` | model name: letters, digits, `.`, `_`, `-` (1 to 64) | `default` |
//! | `CUVISOR_QUOTA` | a size, or `NN%` of each GPU (see [`crate::size`]): the limit on each GPU | the ledger's, or none |
//! | `CUVISOR_LEDGER_DIR` | absolute path of the directory of per-model ledgers | `/dev/shm/cuvisor` (root), `/dev/shm/cuvisor-UID` (others) |
//! | `CUVISOR_LEDGER_GROUP` | numeric group id given a ledger this process creates | none (mode 0600) |
//! | `CUVISOR_MODE` | `managed`, `device`, `off` | `managed` |
//! | `CUVISOR_GPUS` | comma-separated GPU UUIDs the model was placed on: NVML shows only these | every GPU |
//! | `CUVISOR_PREFETCH` | `on`, `off` | `off` |
//! | `CUVISOR_HIBERNATE` | `on`, `off`: a thread carries out hibernate and wake requests (see [`crate::ledger::power`]) | `off` |
//! | `CUVISOR_LOG` | `error`, `warn`, `info`, `debug`, `trace` | `warn` |
//!
//! A bad value is an error naming the variable and the accepted forms; the shim then makes
//! CUDA initialization fail rather than run the process without its quota.
//!
//! ```
//! use cuvisor_common::contract::{Contract, Mode};
//! use cuvisor_common::size::QuotaSpec;
//!
//! let mut c = Contract::new("llama");
//! c.quota = Some(QuotaSpec::Percent(40));
//! c.mode = Mode::Device;
//! let env = c.to_env();
//! assert!(env.contains(&("CUVISOR_QUOTA", "40%".to_owned())));
//! let back = Contract::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()));
//! assert_eq!(back, Ok(c));
//! ```

use crate::gpu::GpuUuid;
use crate::ledger::{default_dir, valid_model_name};
use crate::size::{QuotaSpec, parse_quota};
use std::path::PathBuf;

/// What the shim does with allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Charge the quota and place plain device allocations in managed memory.
    Managed,
    /// Charge the quota; allocations stay plain device memory.
    Device,
    /// Forward everything untouched: no accounting, no virtual numbers.
    Off,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Managed, Mode::Device, Mode::Off];
    /// The accepted forms, for messages.
    pub const FORMS: &str = "expected managed, device or off";

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Managed => "managed",
            Mode::Device => "device",
            Mode::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// How much the shim logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    const ALL: [(LogLevel, &str); 5] = [
        (LogLevel::Error, "error"),
        (LogLevel::Warn, "warn"),
        (LogLevel::Info, "info"),
        (LogLevel::Debug, "debug"),
        (LogLevel::Trace, "trace"),
    ];

    pub fn as_str(self) -> &'static str {
        LogLevel::ALL
            .iter()
            .find(|(l, _)| *l == self)
            .map(|(_, s)| *s)
            .expect("every level is listed")
    }
}

/// The variables, by name.
pub const MODEL: &str = "CUVISOR_MODEL";
pub const QUOTA: &str = "CUVISOR_QUOTA";
pub const LEDGER_DIR: &str = "CUVISOR_LEDGER_DIR";
pub const LEDGER_GROUP: &str = "CUVISOR_LEDGER_GROUP";
pub const MODE: &str = "CUVISOR_MODE";
pub const GPUS: &str = "CUVISOR_GPUS";
pub const PREFETCH: &str = "CUVISOR_PREFETCH";
pub const HIBERNATE: &str = "CUVISOR_HIBERNATE";
pub const LOG: &str = "CUVISOR_LOG";

/// What cuvisor decides for a model's workers from its settings (name, quota, mode,
/// ledger, placement): a model's own `env` may not set them. `CUVISOR_PREFETCH` and
/// `CUVISOR_LOG` are the model's to choose.
pub const SET_BY_CUVISOR: [&str; 7] = [
    MODEL,
    QUOTA,
    LEDGER_DIR,
    LEDGER_GROUP,
    MODE,
    GPUS,
    HIBERNATE,
];

/// The shim's configuration in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    pub model: String,
    /// The limit on each GPU; None: the ledger's, or none.
    pub quota: Option<QuotaSpec>,
    pub ledger_dir: PathBuf,
    pub ledger_group: Option<u32>,
    pub mode: Mode,
    /// The GPUs the model was placed on; None: every GPU.
    pub gpus: Option<Vec<GpuUuid>>,
    pub prefetch: bool,
    /// Whether each process carries out hibernate and wake requests.
    pub hibernate: bool,
    pub log_level: LogLevel,
}

impl Contract {
    /// The defaults, for `model`.
    pub fn new(model: &str) -> Contract {
        Contract {
            model: model.to_owned(),
            quota: None,
            ledger_dir: default_dir(),
            ledger_group: None,
            mode: Mode::Managed,
            gpus: None,
            prefetch: false,
            hibernate: false,
            log_level: LogLevel::Warn,
        }
    }

    /// The variables that say this contract, for a worker's environment. `PREFETCH` and
    /// `LOG` only when they differ from the defaults (a model's `env` may set them).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (MODEL, self.model.clone()),
            (LEDGER_DIR, self.ledger_dir.display().to_string()),
            (MODE, self.mode.as_str().to_owned()),
        ];
        if let Some(q) = self.quota {
            env.push((QUOTA, q.to_string()));
        }
        if let Some(g) = self.ledger_group {
            env.push((LEDGER_GROUP, g.to_string()));
        }
        if let Some(gpus) = &self.gpus {
            let list: Vec<String> = gpus.iter().map(ToString::to_string).collect();
            env.push((GPUS, list.join(",")));
        }
        if self.prefetch {
            env.push((PREFETCH, "on".to_owned()));
        }
        if self.hibernate {
            env.push((HIBERNATE, "on".to_owned()));
        }
        if self.log_level != LogLevel::Warn {
            env.push((LOG, self.log_level.as_str().to_owned()));
        }
        env
    }

    /// Reads the contract from a variable lookup (the environment, or a map in tests).
    /// On error: every bad variable, one line each.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Contract, Vec<String>> {
        let mut errors = Vec::new();
        let mut bad = |var: &str, value: &str, accepted: &str| {
            errors.push(format!("{var}=\"{value}\" is invalid: {accepted}"));
        };
        let mut c = Contract::new("default");
        if let Some(m) = get(MODEL) {
            if valid_model_name(&m) {
                c.model = m;
            } else {
                bad(
                    MODEL,
                    &m,
                    "expected 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'",
                );
            }
        }
        if let Some(q) = get(QUOTA) {
            match parse_quota(&q) {
                Ok(QuotaSpec::Bytes(0)) => bad(QUOTA, &q, "a quota must be greater than 0"),
                Ok(spec) => c.quota = Some(spec),
                Err(e) => bad(QUOTA, &q, &e.to_string()),
            }
        }
        if let Some(d) = get(LEDGER_DIR) {
            if d.starts_with('/') {
                c.ledger_dir = PathBuf::from(d);
            } else {
                bad(LEDGER_DIR, &d, "expected an absolute path");
            }
        }
        if let Some(g) = get(LEDGER_GROUP) {
            match g.parse::<u32>() {
                Ok(gid) if gid != u32::MAX => c.ledger_group = Some(gid),
                _ => bad(LEDGER_GROUP, &g, "expected a numeric group id"),
            }
        }
        if let Some(m) = get(MODE) {
            match Mode::parse(&m) {
                Some(mode) => c.mode = mode,
                None => bad(MODE, &m, Mode::FORMS),
            }
        }
        if let Some(list) = get(GPUS) {
            let parsed: Result<Vec<GpuUuid>, _> = list.split(',').map(str::parse).collect();
            match parsed {
                Ok(gpus) if !gpus.is_empty() => c.gpus = Some(gpus),
                Ok(_) => bad(GPUS, &list, "expected GPU UUIDs separated by commas"),
                Err(e) => bad(
                    GPUS,
                    &list,
                    &format!("expected GPU UUIDs separated by commas: {e}"),
                ),
            }
        }
        if let Some(p) = get(PREFETCH) {
            match p.as_str() {
                "off" => {}
                "on" => c.prefetch = true,
                _ => bad(PREFETCH, &p, "expected on or off"),
            }
        }
        if let Some(h) = get(HIBERNATE) {
            match h.as_str() {
                "off" => {}
                "on" => c.hibernate = true,
                _ => bad(HIBERNATE, &h, "expected on or off"),
            }
        }
        if let Some(l) = get(LOG) {
            match LogLevel::ALL.iter().find(|(_, s)| *s == l) {
                Some((level, _)) => c.log_level = *level,
                None => bad(LOG, &l, "expected error, warn, info, debug or trace"),
            }
        }
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Contract, Vec<String>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Contract::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c, Contract::new("default"));
        assert_eq!(c.quota, None);
        assert_eq!(c.mode, Mode::Managed);
        assert!(!c.prefetch);
        assert!(!c.hibernate);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.ledger_dir, default_dir());
        assert_eq!((c.ledger_group, c.gpus), (None, None));
    }

    #[test]
    fn every_value_and_back() {
        let gpu0 = "GPU-6f2d0e7a-1b3c-4d5e-8f90-a1b2c3d4e5f6";
        let gpu1 = "GPU-0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5";
        let gpus = format!("{gpu0},{gpu1}");
        let vars = [
            (MODEL, "llama-3.1_8b"),
            (QUOTA, "40%"),
            (MODE, "device"),
            (PREFETCH, "on"),
            (HIBERNATE, "on"),
            (LOG, "debug"),
            (LEDGER_DIR, "/run/cuvisor"),
            (LEDGER_GROUP, "1000"),
            (GPUS, gpus.as_str()),
        ];
        let c = parse(&vars).unwrap();
        assert_eq!(c.ledger_dir, PathBuf::from("/run/cuvisor"));
        assert_eq!(c.ledger_group, Some(1000));
        assert_eq!(c.model, "llama-3.1_8b");
        assert_eq!(c.quota, Some(QuotaSpec::Percent(40)));
        assert_eq!(c.mode, Mode::Device);
        assert!(c.prefetch);
        assert!(c.hibernate);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(
            c.gpus,
            Some(vec![gpu0.parse().unwrap(), gpu1.parse().unwrap()])
        );
        let mut written = c.to_env();
        written.sort();
        let mut expected: Vec<(&str, String)> =
            vars.iter().map(|&(k, v)| (k, v.to_owned())).collect();
        expected.sort();
        assert_eq!(written, expected);
    }

    #[test]
    fn every_bad_value_is_named_with_its_accepted_forms() {
        let errors = parse(&[
            (MODEL, "../etc"),
            (QUOTA, "lots"),
            (MODE, "Managed"),
            (GPUS, "GPU-1,"),
            (PREFETCH, "yes"),
            (LOG, "verbose"),
            (HIBERNATE, "1"),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 7, "{errors:?}");
        assert!(errors[0].starts_with("CUVISOR_MODEL=\"../etc\" is invalid"));
        assert!(
            errors[1].starts_with("CUVISOR_QUOTA=\"lots\" is invalid") && errors[1].contains("50%")
        );
        assert!(errors[2].contains("expected managed, device or off"));
        assert!(errors[3].starts_with("CUVISOR_GPUS=\"GPU-1,\" is invalid: expected GPU UUIDs"));
        assert!(errors[4].contains("expected on or off"));
        assert!(errors[5].starts_with("CUVISOR_HIBERNATE=\"1\" is invalid: expected on or off"));
        assert!(errors[6].contains("expected error, warn, info, debug or trace"));
        assert_eq!(parse(&[(QUOTA, "0")]).unwrap_err().len(), 1);
        assert_eq!(parse(&[(MODEL, "")]).unwrap_err().len(), 1);
        assert!(parse(&[(LEDGER_DIR, "relative/dir")]).unwrap_err()[0].contains("absolute path"));
        assert!(parse(&[(LEDGER_GROUP, "staff")]).unwrap_err()[0].contains("numeric group id"));
    }
}
