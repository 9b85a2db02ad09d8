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
//! **HAMi's contract** is honoured too, for the shim injected where HAMi injects its own
//! `libvgpu.so` (docs/KUBERNETES.md). Each variable applies only where its `CUVISOR_*`
//! counterpart is not set:
//!
//! | HAMi's variable | becomes |
//! |---|---|
//! | `CUDA_DEVICE_MEMORY_LIMIT_<i>` (device `i` as the container sees it), `CUDA_DEVICE_MEMORY_LIMIT` (every device without its own) | the quota on each GPU; HAMi's syntax: bytes, or a number with `k`, `m` or `g` (KiB, MiB, GiB; either case), decimal or `0x` hexadecimal; `0` is no limit. Limits that differ between devices: each GPU its own ([`Contract::device_quotas`]) |
//! | `CUDA_OVERSUBSCRIBE=true` | `managed` mode (memory past the device is usable); without it, with a HAMi limit, `device` mode |
//! | `CUDA_DISABLE_CONTROL=true` | `off` |
//! | `CUDA_DEVICE_MEMORY_SHARED_CACHE=DIR/NAME.cache` | the ledger `DIR/NAME.ledger` (model `NAME`), shared by the container's processes |
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
    /// What the shim says once at start about how it read the environment.
    pub warnings: Vec<String>,
    /// Per device ordinal, its own quota (HAMi's limits that differ between devices),
    /// given to the GPU when the process registers it; empty: the quota holds.
    pub device_quotas: Vec<Option<u64>>,
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
            warnings: Vec::new(),
            device_quotas: Vec::new(),
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
        hami::apply(&get, &mut c, &mut errors);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    }
}

/// HAMi's variables (HAMi's device plugin sets them; HAMi-core reads them), where the
/// `CUVISOR_*` ones are not set.
mod hami {
    use super::*;

    pub const LIMIT: &str = "CUDA_DEVICE_MEMORY_LIMIT";
    pub const OVERSUBSCRIBE: &str = "CUDA_OVERSUBSCRIBE";
    pub const DISABLE: &str = "CUDA_DISABLE_CONTROL";
    pub const SHARED_CACHE: &str = "CUDA_DEVICE_MEMORY_SHARED_CACHE";
    /// HAMi-core's most devices per container.
    const DEVICES: usize = 16;

    /// HAMi-core's size syntax: an unsigned number (decimal, or `0x` hexadecimal) with an
    /// optional `k`, `m` or `g` (binary multiples, either case). None: not one.
    pub fn size(text: &str) -> Option<u64> {
        let (digits, scale) = match text.as_bytes().last()? {
            b'k' | b'K' => (&text[..text.len() - 1], 1u64 << 10),
            b'm' | b'M' => (&text[..text.len() - 1], 1 << 20),
            b'g' | b'G' => (&text[..text.len() - 1], 1 << 30),
            _ => (text, 1),
        };
        let n = match digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
        {
            Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok()?,
            Some(_) => return None,
            None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse().ok()?
            }
            None => return None,
        };
        n.checked_mul(scale)
    }

    pub fn apply(
        get: &impl Fn(&str) -> Option<String>,
        c: &mut Contract,
        errors: &mut Vec<String>,
    ) {
        let set = |name: &str| get(name).is_some();
        if !set(MODE) && get(DISABLE).as_deref() == Some("true") {
            c.mode = Mode::Off;
            return;
        }
        // None: not set; Some(None): HAMi's 0 (no limit); Some(Some(bytes)).
        let mut read = |name: &str| -> Option<Option<u64>> {
            let text = get(name)?;
            match size(&text) {
                Some(0) => Some(None),
                Some(bytes) => Some(Some(bytes)),
                None => {
                    errors.push(format!(
                        "{name}=\"{text}\" is invalid: expected HAMi's form, bytes or a number \
                         with k, m or g (e.g. 3000m)"
                    ));
                    None
                }
            }
        };
        let global = read(LIMIT);
        let own: Vec<Option<Option<u64>>> = (0..DEVICES)
            .map(|i| read(&format!("{LIMIT}_{i}")))
            .collect();
        // Each device's: its own, else the global one (HAMi-core's rule).
        let per_device: Vec<Option<u64>> =
            own.iter().map(|o| o.unwrap_or(global.flatten())).collect();
        if !set(QUOTA) && per_device.iter().any(Option::is_some) {
            let first = per_device[0];
            if per_device.iter().all(|d| *d == first) {
                c.quota = first.map(QuotaSpec::Bytes); // one limit on each GPU
            } else {
                c.device_quotas = per_device; // each GPU its own
            }
            if !set(MODE) {
                c.mode = if get(OVERSUBSCRIBE).as_deref() == Some("true") {
                    Mode::Managed
                } else {
                    Mode::Device
                };
            }
        }
        if let Some(cache) = get(SHARED_CACHE).filter(|_| !set(LEDGER_DIR) && !set(MODEL)) {
            let path = std::path::Path::new(&cache);
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            match path.parent().filter(|d| d.is_absolute()) {
                Some(dir) if valid_model_name(stem) => {
                    c.ledger_dir = dir.to_owned();
                    c.model = stem.to_owned();
                }
                _ => errors.push(format!(
                    "{SHARED_CACHE}=\"{cache}\" is invalid: expected an absolute path DIR/NAME.cache, \
                     NAME of letters, digits, '.', '_' or '-'"
                )),
            }
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
    fn hamis_sizes_are_read_as_hami_core_reads_them() {
        for (text, bytes) in [
            ("3000m", 3000 << 20),
            ("3000M", 3000 << 20),
            ("2g", 2 << 30),
            ("64k", 64 << 10),
            ("1024", 1024),
            ("0x400m", 1024 << 20),
            ("0", 0),
        ] {
            assert_eq!(hami::size(text), Some(bytes), "{text}");
        }
        for bad in ["", "m", "3 g", "1.5g", "-1", "0x", "3000mb", "g2"] {
            assert_eq!(hami::size(bad), None, "{bad:?}");
        }
    }

    /// Each of HAMi's variables, and that CUVISOR_* ones win over them.
    #[test]
    fn hamis_variables_become_the_contract() {
        // Device 0's limit; the others (if the container sees any) have none.
        let c = parse(&[("CUDA_DEVICE_MEMORY_LIMIT_0", "3000m")]).unwrap();
        assert_eq!(c.quota, None);
        assert_eq!(c.device_quotas[..2], [Some(3000 << 20), None]);
        assert_eq!(c.mode, Mode::Device, "no oversubscription asked for");
        let c = parse(&[
            ("CUDA_DEVICE_MEMORY_LIMIT", "2g"),
            ("CUDA_OVERSUBSCRIBE", "true"),
        ])
        .unwrap();
        assert_eq!(
            (c.quota, c.mode),
            (Some(QuotaSpec::Bytes(2 << 30)), Mode::Managed)
        );
        // A device's own limit, with the global one for the others: each its own.
        let c = parse(&[
            ("CUDA_DEVICE_MEMORY_LIMIT", "4g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "1g"),
        ])
        .unwrap();
        assert_eq!(c.quota, None);
        assert_eq!(
            c.device_quotas[..3],
            [Some(4 << 30), Some(1 << 30), Some(4 << 30)]
        );
        assert_eq!(c.device_quotas.len(), 16);
        // One device named, no global limit: the others have none (HAMi-core's rule).
        let c = parse(&[("CUDA_DEVICE_MEMORY_LIMIT_1", "1g")]).unwrap();
        assert_eq!(c.device_quotas[..3], [None, Some(1 << 30), None]);
        // 0 is HAMi's "no limit".
        let c = parse(&[("CUDA_DEVICE_MEMORY_LIMIT_0", "0")]).unwrap();
        assert_eq!((c.quota, c.mode), (None, Mode::Managed));
        assert_eq!(
            parse(&[("CUDA_DISABLE_CONTROL", "true")]).unwrap().mode,
            Mode::Off
        );
        let c = parse(&[(
            "CUDA_DEVICE_MEMORY_SHARED_CACHE",
            "/usr/local/vgpu/ab-12.cache",
        )])
        .unwrap();
        assert_eq!(
            (c.ledger_dir, c.model.as_str()),
            (PathBuf::from("/usr/local/vgpu"), "ab-12")
        );
        // CUVISOR_* first.
        let c = parse(&[
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "3000m"),
            (QUOTA, "1GiB"),
            (MODE, "managed"),
            ("CUDA_DISABLE_CONTROL", "true"),
        ])
        .unwrap();
        assert_eq!(
            (c.quota, c.mode),
            (Some(QuotaSpec::Bytes(1 << 30)), Mode::Managed)
        );
        // Bad values, named.
        let errors = parse(&[
            ("CUDA_DEVICE_MEMORY_LIMIT_2", "lots"),
            ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "relative.cache"),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "CUDA_DEVICE_MEMORY_LIMIT_2=\"lots\" is invalid: expected HAMi's form"
            )
        );
        assert!(
            errors[1].starts_with("CUDA_DEVICE_MEMORY_SHARED_CACHE=\"relative.cache\" is invalid")
        );
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
