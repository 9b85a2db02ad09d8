//! The commands that ask a running supervisor through its control socket. Each prints a
//! sentence (or JSON where asked) and returns the exit status; an error is a sentence on
//! stderr, never the raw answer.

use crate::size::{format_bytes, parse_quota, quota_text};
use crate::status::{PowerOutcome, PowerReport, Status};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the supervisor's socket is when no `--socket`, `CUVISOR_SOCKET` or `--config`
/// says.
pub const DEFAULT_SOCKET: &str = "/run/cuvisor/control.sock";

/// The control socket to ask: `socket` (`--socket`, or `CUVISOR_SOCKET`), else the
/// `socket` of the configuration file `config` (`--config`), else [`DEFAULT_SOCKET`].
pub fn socket(socket: Option<PathBuf>, config: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s);
    }
    match config {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(path) => crate::config::Config::load(path)
            .map(|c| c.supervisor.socket)
            .map_err(|errors| {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                errors.join("\n")
            }),
    }
}

/// The supervisor's error in its answer (`{"error": …}`), or the answer itself.
fn why(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim_end().to_owned())
}

/// Prints a failure as a sentence: the exit status 1.
fn failed(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("cuvisor: {message}");
    ExitCode::FAILURE
}

/// `cuvisor status`: the table, or the JSON of `GET /models`.
pub fn status(socket: &Path, as_json: bool) -> ExitCode {
    let (code, body) = match crate::control::request(socket, "GET", "/models") {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    if code != 200 {
        return failed(why(&body));
    }
    if as_json {
        print!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Status>(&body) {
        Ok(v) => {
            print!("{}", crate::control::status_table(&v));
            ExitCode::SUCCESS
        }
        Err(e) => failed(format!("cannot read the supervisor's answer: {e}")),
    }
}

/// `cuvisor start|stop|restart NAME`: asked at once; `status` shows the progress.
pub fn lifecycle(socket: &Path, model: &str, action: &str) -> ExitCode {
    let path = format!("/models/{model}/{action}");
    match crate::control::request(socket, "POST", &path) {
        Ok((200, body)) => {
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let name = answer["model"].as_str().unwrap_or(model);
            println!("model {name}: {action} asked");
            ExitCode::SUCCESS
        }
        Ok((_, body)) => failed(why(&body)),
        Err(e) => failed(e),
    }
}

/// A hibernate or wake report, as JSON or a line (and what went wrong on stderr); exit
/// status 0 when every process acknowledged.
pub fn print_power(report: &PowerReport, as_json: bool) -> ExitCode {
    if as_json {
        println!("{}", serde_json::to_string_pretty(report).expect("JSON"));
    } else {
        println!(
            "model {}: {} {}: {} moved, {} pinned, {} process(es), {:.1} ms",
            report.model,
            report.action,
            report.outcome,
            format_bytes(report.moved_bytes),
            format_bytes(report.pinned_bytes),
            report.processes.len(),
            report.duration_ms
        );
        if !report.pending.is_empty() {
            let pids: Vec<String> = report.pending.iter().map(ToString::to_string).collect();
            eprintln!(
                "cuvisor: no acknowledgement from pid(s) {}",
                pids.join(", ")
            );
        }
        if let Some(e) = &report.error {
            eprintln!("cuvisor: {e}");
        }
    }
    if report.outcome == PowerOutcome::Done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `cuvisor hibernate` and `cuvisor wake`: exit status 0 when every process of the model
/// acknowledged.
pub fn power(socket: &Path, model: &str, action: &str, as_json: bool) -> ExitCode {
    let path = format!("/models/{model}/{action}");
    let wait = crate::control::POWER_ANSWER_TIMEOUT + std::time::Duration::from_secs(5);
    let (_, body) = match crate::control::request_waiting(socket, "POST", &path, wait) {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    match serde_json::from_str::<PowerReport>(&body) {
        Ok(report) => print_power(&report, as_json),
        Err(_) => failed(why(&body)),
    }
}

/// `cuvisor set NAME --quota Q`: `PATCH /models/NAME`, and what it did as a sentence.
pub fn set_quota(socket: &Path, model: &str, quota: &str) -> ExitCode {
    let path = format!("/models/{model}");
    let body = serde_json::json!({ "gpu_quota": quota });
    let (code, body) = match crate::control::request_json(socket, "PATCH", &path, &body) {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    if code != 200 {
        return failed(format!("model {model}: {}", why(&body)));
    }
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let quota = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|q| parse_quota(q).ok())
            .map_or_else(|| "none".into(), |q| quota_text(Some(q)))
    };
    println!(
        "model {}: quota {} (was {})",
        answer["model"].as_str().unwrap_or(model),
        quota(&answer["gpu_quota"]),
        quota(&answer["was"])
    );
    ExitCode::SUCCESS
}

/// `cuvisor reload`: the supervisor reads its configuration file again and applies what
/// changed; a line per model, or every reason it was refused (exit status 1, nothing
/// changed).
pub fn reload(socket: &Path) -> ExitCode {
    let (code, body) = match crate::control::request(socket, "POST", "/reload") {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let lines = |key: &str| -> Vec<String> {
        let items = answer[key].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    match code {
        200 => {
            for line in lines("changes") {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        400 => failed(format!(
            "reload refused, nothing changed:\n  {}",
            lines("errors").join("\n  ")
        )),
        _ => failed(why(&body)),
    }
}

/// `cuvisor logs NAME [-f] [--instance N]`: the model's recent output; with `follow`,
/// then each new line as it comes (asked again every 250 ms from the last line seen: none
/// is printed twice, none skipped unless the ring dropped it meanwhile), until the
/// supervisor goes or the command is stopped.
pub fn logs(socket: &Path, model: &str, instance: Option<u32>, follow: bool) -> ExitCode {
    use std::io::Write;
    let only = instance.map_or(String::new(), |i| format!("&instance={i}"));
    let mut since = 0u64;
    loop {
        let path = format!("/models/{model}/logs?since={since}{only}");
        match crate::control::request_with_head(socket, "GET", &path) {
            Ok((200, head, body)) => {
                let mut out = std::io::stdout().lock();
                if out
                    .write_all(body.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return ExitCode::SUCCESS; // the reader left (a pipe to head)
                }
                let next = crate::control::header(&head, "x-cuvisor-next");
                since = next.and_then(|n| n.parse().ok()).unwrap_or(since);
            }
            Ok((_, _, body)) => return failed(why(&body)),
            Err(e) => return failed(e),
        }
        if !follow {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
