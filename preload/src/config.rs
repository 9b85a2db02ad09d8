//! The shim's environment contract, read once when the library is loaded.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `CUVISOR_MODEL` | model name: letters, digits, `.`, `_`, `-` (1 to 64) | `default` |
//! | `CUVISOR_QUOTA` | a size or `NN%` of the device (see `cuvisor_common::size`) | the ledger's, or none |
//! | `CUVISOR_LEDGER_DIR` | absolute path of the directory of per-model ledgers | `/dev/shm/cuvisor` (root), `/dev/shm/cuvisor-UID` (others) |
//! | `CUVISOR_LEDGER_GROUP` | numeric group id given a ledger this process creates | none (mode 0600) |
//! | `CUVISOR_MODE` | `managed`, `device`, `off` | `managed` |
//! | `CUVISOR_PREFETCH` | `on`, `off` | `off` |
//! | `CUVISOR_LOG` | `error`, `warn`, `info`, `debug`, `trace` | `warn` |
//!
//! A bad value is an error naming the variable and the accepted forms; the shim then makes
//! CUDA initialization fail rather than run the process without its quota.

use cuvisor_common::ledger::{default_dir, valid_model_name};
use cuvisor_common::size::{QuotaSpec, parse_quota};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Charge the quota and place plain device allocations in managed memory.
    Managed,
    /// Charge the quota; allocations stay plain device memory.
    Device,
    /// Forward everything untouched: no accounting, no virtual numbers.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub model: String,
    pub quota: Option<QuotaSpec>,
    pub ledger_dir: PathBuf,
    pub ledger_group: Option<u32>,
    pub mode: Mode,
    pub prefetch: bool,
    pub log_level: log::LevelFilter,
}

/// Builds the configuration from a variable lookup (the environment, or a map in tests).
/// On error: every bad variable, one line each.
pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let mut bad = |var: &str, value: &str, accepted: &str| {
        errors.push(format!("{var}=\"{value}\" is invalid: {accepted}"));
    };

    let model = match get("CUVISOR_MODEL") {
        None => "default".to_owned(),
        Some(m) if valid_model_name(&m) => m,
        Some(m) => {
            bad(
                "CUVISOR_MODEL",
                &m,
                "expected 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'",
            );
            String::new()
        }
    };
    let quota = match get("CUVISOR_QUOTA") {
        None => None,
        Some(q) => match parse_quota(&q) {
            Ok(QuotaSpec::Bytes(0)) => {
                bad("CUVISOR_QUOTA", &q, "a quota must be greater than 0");
                None
            }
            Ok(spec) => Some(spec),
            Err(e) => {
                bad("CUVISOR_QUOTA", &q, &format!("{e}"));
                None
            }
        },
    };
    let ledger_dir = match get("CUVISOR_LEDGER_DIR") {
        None => default_dir(),
        Some(d) if d.starts_with('/') => PathBuf::from(d),
        Some(d) => {
            bad("CUVISOR_LEDGER_DIR", &d, "expected an absolute path");
            PathBuf::new()
        }
    };
    let ledger_group = match get("CUVISOR_LEDGER_GROUP") {
        None => None,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) if gid != u32::MAX => Some(gid),
            _ => {
                bad("CUVISOR_LEDGER_GROUP", &g, "expected a numeric group id");
                None
            }
        },
    };
    let mode = match get("CUVISOR_MODE").as_deref() {
        None | Some("managed") => Mode::Managed,
        Some("device") => Mode::Device,
        Some("off") => Mode::Off,
        Some(other) => {
            bad("CUVISOR_MODE", other, "expected managed, device or off");
            Mode::Off
        }
    };
    let prefetch = match get("CUVISOR_PREFETCH").as_deref() {
        None | Some("off") => false,
        Some("on") => true,
        Some(other) => {
            bad("CUVISOR_PREFETCH", other, "expected on or off");
            false
        }
    };
    let log_level = match get("CUVISOR_LOG").as_deref() {
        None | Some("warn") => log::LevelFilter::Warn,
        Some("error") => log::LevelFilter::Error,
        Some("info") => log::LevelFilter::Info,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        Some(other) => {
            bad(
                "CUVISOR_LOG",
                other,
                "expected error, warn, info, debug or trace",
            );
            log::LevelFilter::Warn
        }
    };
    if errors.is_empty() {
        Ok(Config {
            model,
            quota,
            ledger_dir,
            ledger_group,
            mode,
            prefetch,
            log_level,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.model, "default");
        assert_eq!(c.quota, None);
        assert_eq!(c.mode, Mode::Managed);
        assert!(!c.prefetch);
        assert_eq!(c.log_level, log::LevelFilter::Warn);
        assert_eq!(c.ledger_dir, cuvisor_common::ledger::default_dir());
        assert_eq!(c.ledger_group, None);
    }

    #[test]
    fn every_value() {
        let c = parse(&[
            ("CUVISOR_MODEL", "llama-3.1_8b"),
            ("CUVISOR_QUOTA", "40%"),
            ("CUVISOR_MODE", "device"),
            ("CUVISOR_PREFETCH", "on"),
            ("CUVISOR_LOG", "debug"),
            ("CUVISOR_LEDGER_DIR", "/run/cuvisor"),
            ("CUVISOR_LEDGER_GROUP", "1000"),
        ])
        .unwrap();
        assert_eq!(c.ledger_dir, PathBuf::from("/run/cuvisor"));
        assert_eq!(c.ledger_group, Some(1000));
        assert_eq!(c.model, "llama-3.1_8b");
        assert_eq!(c.quota, Some(QuotaSpec::Percent(40)));
        assert_eq!(c.mode, Mode::Device);
        assert!(c.prefetch);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn every_bad_value_is_named_with_its_accepted_forms() {
        let errors = parse(&[
            ("CUVISOR_MODEL", "../etc"),
            ("CUVISOR_QUOTA", "lots"),
            ("CUVISOR_MODE", "Managed"),
            ("CUVISOR_PREFETCH", "yes"),
            ("CUVISOR_LOG", "verbose"),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("CUVISOR_MODEL=\"../etc\" is invalid"));
        assert!(
            errors[1].starts_with("CUVISOR_QUOTA=\"lots\" is invalid") && errors[1].contains("50%")
        );
        assert!(errors[2].contains("expected managed, device or off"));
        assert!(errors[3].contains("expected on or off"));
        assert!(errors[4].contains("expected error, warn, info, debug or trace"));
        assert_eq!(parse(&[("CUVISOR_QUOTA", "0")]).unwrap_err().len(), 1);
        assert_eq!(parse(&[("CUVISOR_MODEL", "")]).unwrap_err().len(), 1);
        assert!(
            parse(&[("CUVISOR_LEDGER_DIR", "relative/dir")]).unwrap_err()[0]
                .contains("absolute path")
        );
        assert!(
            parse(&[("CUVISOR_LEDGER_GROUP", "staff")]).unwrap_err()[0]
                .contains("numeric group id")
        );
    }
}
