//! The supervisor's log: one function every layer may call, [`log`], whose lines go to
//! `tracing` (target `cuvisor`; a line that starts `WARNING: ` at level WARN, the others
//! at INFO), and [`init`], which the `cuvisor` binary calls to print them on stderr with
//! an RFC 3339 time and a level, as text or JSON lines. A program that embeds cuvisor
//! installs the `tracing` subscriber it wants (without one, the lines go nowhere).

use crate::config::LogLevel;

pub(crate) fn log(line: &str) {
    match line.strip_prefix("WARNING: ") {
        Some(rest) => tracing::warn!(target: "cuvisor", "{rest}"),
        None => tracing::info!(target: "cuvisor", "{line}"),
    }
}

/// Prints what is logged at `level` or above on stderr: text (`2026-12-06T16:58:14.123456Z
/// INFO cuvisor: model a: …`) or, with `json`, one JSON object a line. Once per process;
/// a later call changes nothing.
pub fn init(level: LogLevel, json: bool) {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
    };
    let text = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false);
    let _ = match json {
        true => text.json().try_init(),
        false => text.try_init(),
    };
}
