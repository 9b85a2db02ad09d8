//! Any text as a configuration file: `check` either rejects it with errors that name a
//! line of the file, or accepts it, and then every model turns into a launch plan and
//! backoff delays without panicking (what `run` does with it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    match cuvisor::config::Config::parse(Path::new("fuzz.toml"), text) {
        Err(errors) => {
            assert!(!errors.is_empty());
            let lines = text.lines().count().max(1);
            assert!(errors.iter().all(|e| e.line <= lines + 1), "{errors:?}");
        }
        Ok(config) => {
            let _ = std::time::Instant::now() + config.supervisor.grace_period;
            for m in &config.models {
                let _ = cuvisor::supervisor::worker_spec(m, &config.supervisor, Path::new("/shim.so"), 1, cuvisor::supervisor::Placement::default());
                for failures in [0, 1, 30, u32::MAX] {
                    let _ = std::time::Instant::now() + cuvisor::supervisor::backoff_delay(m, failures);
                }
            }
        }
    }
});
