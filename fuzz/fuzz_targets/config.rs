//! Any text as a configuration file: `check` either rejects it with errors that name a
//! line of the file, or accepts it, and then every model turns into a launch plan and
//! backoff delays without panicking (what `run` does with it). The host it is checked
//! against is a fixed one, so that a finding reproduces on any machine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use cuvisor::config::secrets::SecretError;
use std::path::Path;

/// A host with one user and group, a few files, a token, keys and four CPUs.
struct FuzzHost;

impl cuvisor::config::Host for FuzzHost {
    fn user(&self, name: &str) -> Option<(u32, u32)> {
        (name == "nobody").then_some((65534, 65534))
    }
    fn group(&self, name: &str) -> Option<u32> {
        (name == "video").then_some(44)
    }
    fn id_in_use(&self, first: u32, last: u32) -> Option<String> {
        (first..=last).contains(&65534).then(|| "user nobody (uid 65534)".to_owned())
    }
    fn is_file(&self, path: &Path) -> bool {
        path.starts_with("/files")
    }
    fn exists(&self, path: &Path) -> bool {
        path.starts_with("/files") || path == Path::new("/")
    }
    fn read_token(&self, path: &Path) -> Result<String, SecretError> {
        self.is_file(path).then(|| "0123456789abcdef".to_owned()).ok_or(SecretError::NotAFile)
    }
    fn read_keys(&self, path: &Path) -> Result<Vec<String>, SecretError> {
        self.read_token(path).map(|k| vec![k])
    }
    fn online_cpus(&self) -> Option<cuvisor::config::cpus::CpuSet> {
        "0-3".parse().ok()
    }
}

fuzz_target!(|text: &str| {
    match cuvisor::config::Config::parse_on(Path::new("fuzz.toml"), text, &FuzzHost) {
        Err(errors) => {
            assert!(!errors.is_empty());
            let lines = text.lines().count().max(1);
            assert!(errors.iter().all(|e| e.line <= lines + 1), "{errors:?}");
        }
        Ok(config) => {
            let _ = std::time::Instant::now() + config.supervisor.grace_period;
            for m in &config.models {
                let _ = cuvisor::node::worker::worker_spec(m, &config.supervisor, Path::new("/shim.so"), 1, cuvisor::node::worker::Placement::default());
                for failures in [0, 1, 30, u32::MAX] {
                    let _ = std::time::Instant::now() + cuvisor::core::supervisor::backoff_delay(m, failures);
                }
            }
        }
    }
});
