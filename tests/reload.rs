//! Issue 26, defect 3: a running node changed without stopping it. `SIGHUP`, `cuvisor
//! reload` and `POST /reload` read the file again; if it fails its check nothing changes.
//! Otherwise models unchanged keep running untouched, added ones start, removed ones drain
//! (their requests in flight finish) and stop, changed ones are replaced by rolling
//! instances, and a change of quota alone is applied live. Each case with requests in
//! flight, through the front door, from a plain HTTP client (`tests/servers/client.py`).

mod common;
use common::supervisor::*;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

fn servers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/servers")
}

/// A served model running the test server under `name`, answering as `says`.
fn served(name: &str, says: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"python3\"\n\
         args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"{says}\"]\n\
         [model.serve]\nhealth = \"/health\"\naliases = [\"{name}-alias\"]\n",
        servers().join("openai_model.py").display()
    )
}

/// A chat completion for `model` through the front door: (status, body as the client got
/// it). `stream`: that many chunks, 200 ms apart.
fn chat(port: u16, model: &str, stream: Option<u32>) -> (u64, String) {
    let body = match stream {
        Some(n) => format!(r#"{{"model": "{model}", "stream": true, "chunks": {n}}}"#),
        None => format!(r#"{{"model": "{model}"}}"#),
    };
    let events = chat_events(port, &body);
    let text = events.iter().filter_map(|e| e["chunk"].as_str()).collect();
    (events[0]["status"].as_u64().unwrap(), text)
}

fn chat_in_background(port: u16, model: &str, chunks: u32) -> JoinHandle<(u64, String)> {
    let model = model.to_owned();
    std::thread::spawn(move || chat(port, &model, Some(chunks)))
}

/// A stream of `chunks` chunks that came whole: every chunk, then `[DONE]`.
fn whole(answer: &(u64, String), chunks: u32, says: &str) {
    assert_eq!(answer.0, 200, "{answer:?}");
    for i in 0..chunks {
        assert!(answer.1.contains(&format!("chunk {i}")), "{answer:?}");
    }
    assert!(answer.1.contains("[DONE]"), "{answer:?}");
    assert!(
        answer.1.contains(&format!("\"served_by\": \"{says}\"")),
        "{answer:?}"
    );
}

fn served_by(answer: &(u64, String)) -> String {
    let body: Value = serde_json::from_str(&answer.1).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    body["served_by"].as_str().unwrap_or_default().to_owned()
}

/// `cuvisor reload` against `s`: its exit status, stdout and stderr.
fn reload(s: &Supervisor) -> (Option<i32>, String, String) {
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .args(["reload", "--socket"])
        .arg(&s.socket));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

/// The pids of `model`'s instances, by the status.
fn pids(s: &Supervisor, model: &str) -> Vec<u64> {
    let m = s.model(model);
    m["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["pid"].as_u64())
        .collect()
}

fn edit(s: &Supervisor, change: impl FnOnce(String) -> String) {
    let path = s.dir.path("cuvisor.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = change(text.clone());
    assert_ne!(changed, text, "the edit changed nothing");
    std::fs::write(&path, changed).unwrap();
}

fn names(s: &Supervisor) -> Vec<String> {
    s.status()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

/// An unchanged model keeps its process and its request in flight; an added one starts
/// and serves; a removed one finishes its request in flight (it drains), is refused new
/// ones at once (404) and stops.
#[test]
fn a_reload_keeps_unchanged_models_starts_added_ones_and_drains_removed_ones() {
    let http = cuvisor::node::process::free_port().unwrap();
    let s = Supervisor::start_with(
        "reload-diff",
        &format!("http = \"127.0.0.1:{http}\"\ngrace_period = \"5s\"\n"),
        &[],
        &format!("{}{}", served("keep", "keep"), served("gone", "gone")),
    );
    wait_until("both ready", Duration::from_secs(10), || {
        chat(http, "keep", None).0 == 200 && chat(http, "gone", None).0 == 200
    });
    let keep_pids = pids(&s, "keep");
    let gone_pids = pids(&s, "gone");
    let (keep_stream, gone_stream) = (
        chat_in_background(http, "keep", 10),
        chat_in_background(http, "gone", 10),
    );
    std::thread::sleep(Duration::from_millis(500)); // both streams under way
    edit(&s, |text| {
        text.replace(&served("gone", "gone"), &served("new", "new"))
    });
    let (code, out, err) = reload(&s);
    assert_eq!(code, Some(0), "{out}{err}");
    for line in [
        "model new: added",
        "model gone: removed",
        "model keep: unchanged",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    // Removed: no new request goes to it, at once, while its request in flight goes on.
    let refused = chat(http, "gone", None);
    assert_eq!(refused.0, 404, "{refused:?}");
    assert!(
        s.model("gone")["instances"][0]["state"] == "draining",
        "{}",
        s.status()
    );
    whole(&gone_stream.join().unwrap(), 10, "gone");
    whole(&keep_stream.join().unwrap(), 10, "keep");
    wait_until("the added model serves", Duration::from_secs(10), || {
        let answer = chat(http, "new", None);
        answer.0 == 200 && served_by(&answer) == "new"
    });
    assert_eq!(served_by(&chat(http, "new-alias", None)), "new");
    wait_until("the removed model gone", Duration::from_secs(10), || {
        !names(&s).contains(&"gone".to_owned())
    });
    assert_eq!(names(&s), ["keep", "new"]);
    for pid in gone_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} of the removed model"
        );
    }
    assert_eq!(
        pids(&s, "keep"),
        keep_pids,
        "the unchanged model kept its process"
    );
    let log = s.supervisor_log();
    assert!(log.contains("reload: model gone: removed"), "{log}");
    assert!(
        log.contains("model gone: instance 0 drained") && log.contains("stopped by SIGTERM"),
        "{log}"
    );
}

/// A changed model is replaced by rolling instances: the new one is ready before the old
/// one drains, so that requests sent all along are answered (200), first by the old
/// version, then by the new one; the old one's stream in flight finishes.
#[test]
fn a_changed_model_is_replaced_by_rolling_instances_without_a_dropped_request() {
    let http = cuvisor::node::process::free_port().unwrap();
    let s = Supervisor::start_with(
        "reload-roll",
        &format!("http = \"127.0.0.1:{http}\"\ngrace_period = \"5s\"\n"),
        &[],
        &served("chat", "v1"),
    );
    wait_until("ready", Duration::from_secs(10), || {
        chat(http, "chat", None).0 == 200
    });
    let old = pids(&s, "chat");
    let stream = chat_in_background(http, "chat", 10);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                answers.push(chat(http, "chat-alias", None));
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    edit(&s, |text| {
        text.replace("\"--name\", \"v1\"", "\"--name\", \"v2\"")
    });
    let (code, out, err) = reload(&s);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("model chat: replaced"), "{out}");
    wait_until("the new version serves", Duration::from_secs(15), || {
        served_by(&chat(http, "chat", None)) == "v2"
    });
    whole(&stream.join().unwrap(), 10, "v1");
    wait_until("the old instance gone", Duration::from_secs(10), || {
        old.iter()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = client.join().unwrap();
    assert!(answers.len() >= 5, "{answers:?}");
    for answer in &answers {
        assert_eq!(
            answer.0, 200,
            "a request during the replacement: {answer:?}"
        );
    }
    let versions: Vec<String> = answers.iter().map(served_by).collect();
    let first_v2 = versions
        .iter()
        .position(|v| v == "v2")
        .expect("v2 answered");
    assert!(
        versions[..first_v2].iter().all(|v| v == "v1"),
        "{versions:?}"
    );
    assert!(
        versions[first_v2..].iter().all(|v| v == "v2"),
        "{versions:?}"
    );
    let status = s.model("chat");
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{status}");
    assert_ne!(pids(&s, "chat"), old);
}

/// A file that fails its check changes nothing, and the errors come back (every one, with
/// its line); a change of a supervisor-level key is refused by name; a change of quota
/// alone (here by SIGHUP) is applied live to the running process.
#[test]
fn a_reload_refuses_what_fails_and_applies_a_quota_alone_live() {
    let s = Supervisor::start("reload-check", &holder("q", "1MiB", "4MiB"));
    wait_until("the allocation", Duration::from_secs(5), || {
        s.model("q")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    let pid = pids(&s, "q");
    let good = std::fs::read_to_string(s.dir.path("cuvisor.toml")).unwrap();

    // Two errors at once: an unknown key and a bad value. Nothing changes.
    edit(&s, |text| {
        text.replace(
            "gpu_quota = \"4MiB\"",
            "gpu_quota = \"lots\"\ninstancez = 2",
        )
    });
    let (code, out, err) = reload(&s);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("reload refused"), "{err}");
    assert!(
        err.contains("instancez") && err.contains("gpu_quota"),
        "{err}"
    );
    assert!(
        err.contains("cuvisor.toml:"),
        "errors with their lines: {err}"
    );

    // A supervisor-level key: refused by name, nothing changes.
    std::fs::write(
        s.dir.path("cuvisor.toml"),
        good.replace("grace_period = \"700ms\"", "grace_period = \"2s\""),
    )
    .unwrap();
    let (code, out, err) = reload(&s);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("[supervisor] grace_period changed: it takes a restart of the supervisor"),
        "{err}"
    );
    assert_eq!(s.model("q")["gpu_quota_bytes"].as_u64(), Some(4 * MIB));

    // The quota alone, by SIGHUP: the same process, the new quota.
    std::fs::write(
        s.dir.path("cuvisor.toml"),
        good.replace("\"4MiB\"", "\"8MiB\""),
    )
    .unwrap();
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc_kill(s.pid() as i32, 1) };
    wait_until("the quota changed", Duration::from_secs(5), || {
        s.model("q")["gpu_quota_bytes"].as_u64() == Some(8 * MIB)
    });
    assert_eq!(pids(&s, "q"), pid, "{}", s.status());
    let log = s.supervisor_log();
    assert!(log.contains("reload (SIGHUP)"), "{log}");
    assert!(
        log.contains("reload: model q: quota 4.0 MiB/GPU -> 8.0 MiB/GPU (changed live)"),
        "{log}"
    );
}

/// `POST /reload` on the control API answers the changes as JSON, or the errors with 400.
#[test]
fn the_control_api_reloads() {
    let s = Supervisor::start("reload-api", &holder("q", "1MiB", "4MiB"));
    edit(&s, |text| text.replace("\"4MiB\"", "\"6MiB\""));
    let (code, body) = cuvisor::control::request(&s.socket, "POST", "/reload").unwrap();
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["changes"],
        serde_json::json!(["model q: quota 4.0 MiB/GPU -> 6.0 MiB/GPU (changed live)"]),
        "{answer}"
    );
    edit(&s, |text| text.replace("\"6MiB\"", "\"six\""));
    let (code, body) = cuvisor::control::request(&s.socket, "POST", "/reload").unwrap();
    assert_eq!(code, 400, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["errors"][0].as_str().unwrap().contains("gpu_quota"),
        "{answer}"
    );
    assert_eq!(s.model("q")["gpu_quota_bytes"].as_u64(), Some(6 * MIB));
}

/// An added model that needs the view of its memory and CPUs (a `memory_limit` in its
/// own mount namespace) from a supervisor that mounted none is refused by name: the view
/// is mounted at start. Nothing changes.
#[test]
fn a_reload_that_needs_a_view_not_mounted_is_refused() {
    let s = Supervisor::start("reload-view", &holder("q", "1MiB", "4MiB"));
    let pid = pids(&s, "q");
    edit(&s, |text| {
        format!(
            "{text}[[model]]\nname = \"limited\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n\
             memory_limit = \"256MiB\"\n"
        )
    });
    let (code, out, err) = reload(&s);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("model(s) limited have memory_limit, cpus or cpu_limit")
            && err.contains("it takes a restart of the supervisor"),
        "{err}"
    );
    assert_eq!(names(&s), ["q"]);
    assert_eq!(pids(&s, "q"), pid);
}
