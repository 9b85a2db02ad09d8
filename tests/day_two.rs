//! Issue 26: the second day. A running node changed without stopping it: the quota the
//! supervisor owns, changed in the file or live.

mod common;
use common::supervisor::*;
use common::*;
use std::time::Duration;

/// Defect 1: a model's `gpu_quota` changed in the file holds at the next start. The old
/// ledger takes the new quota (before: the model failed, "the ledger's quota is
/// authoritative", and only deleting the file helped).
#[test]
fn a_quota_changed_in_the_file_holds_at_the_next_start() {
    let mut s = Supervisor::start("quota-file", &holder("q", "1MiB", "4MiB"));
    wait_until("the allocation", Duration::from_secs(5), || {
        s.model("q")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    assert_eq!(s.model("q")["gpu_quota_bytes"].as_u64(), Some(4 * MIB));
    assert_eq!(s.stop().0, 0);
    let config = s.dir.path("cuvisor.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"4MiB\"", "\"8MiB\"")).unwrap();
    s.respawn();
    wait_until("the allocation", Duration::from_secs(5), || {
        s.model("q")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    assert_eq!(s.model("q")["state"], "running", "{}", s.model("q"));
    assert_eq!(s.model("q")["gpu_quota_bytes"].as_u64(), Some(8 * MIB));
    assert!(
        s.supervisor_log().contains(
            "model q: its ledger's quota was 4.0 MiB/GPU; now 8.0 MiB/GPU, as configured"
        ),
        "{}",
        s.supervisor_log()
    );
}

/// `cuvisor set` against `s`: its exit status, stdout and stderr.
fn set(s: &Supervisor, model: &str, quota: &str) -> (Option<i32>, String, String) {
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .args(["set", model, "--quota", quota, "--socket"])
        .arg(&s.socket));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

/// The live quota: `cuvisor set NAME --quota` (`PATCH /models/NAME`) changes a running
/// model's quota in its ledger. A raise holds from the next allocation, for the worker's
/// processes (one started after the change joins the new quota) and for one started by
/// hand; a cut below what is in use refuses allocations until usage falls under it. Bad
/// input is refused with the reason, and changes nothing.
#[test]
fn a_quota_changed_live_holds_from_the_next_allocation() {
    let go = TempDir::new("quota-live-go");
    let probe = stub_dir().join("driver_probe");
    let model = format!(
        "[[model]]\nname = \"live\"\ncommand = \"sh\"\n\
         args = [\"-c\", \"{probe} init alloc 3MiB sleep 100000 & while [ ! -e {go} ]; do sleep 0.05; done; {probe} init alloc 4MiB sleep 100000\"]\n\
         env = {{ LD_LIBRARY_PATH = \"{}\" }}\ngpu_quota = \"4MiB\"\n",
        stub_dir().display(),
        probe = probe.display(),
        go = go.path("GO").display(),
    );
    let s = Supervisor::start("quota-live", &model);
    wait_until("the first allocation", Duration::from_secs(5), || {
        s.model("live")["gpu_used_bytes"].as_u64() == Some(3 * MIB)
    });
    // A process of the model started by hand joins its ledger's quota.
    let by_hand = |size: &str| {
        let mut cmd = shimmed(driver_probe());
        cmd.env("CUVISOR_LEDGER_DIR", s.dir.path("ledgers"))
            .env("CUVISOR_MODEL", "live")
            .args(["init", "alloc", size]);
        lines(&run(&mut cmd))
    };
    assert_eq!(by_hand("2MiB")[1], "alloc 2MiB -> 2", "3 + 2 > 4 MiB");
    let (code, out, err) = set(&s, "live", "8MiB");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "model live: quota 8.0 MiB/GPU (was 4.0 MiB/GPU)\n");
    assert_eq!(by_hand("2MiB")[1], "alloc 2MiB -> 0 #0", "3 + 2 <= 8 MiB");
    assert_eq!(s.model("live")["gpu_quota_bytes"].as_u64(), Some(8 * MIB));
    // The worker's process started after the change: it joins the new quota.
    std::fs::write(go.path("GO"), "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.model("live")["gpu_used_bytes"].as_u64() != Some(7 * MIB) {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker's second allocation: {}\n{}",
            s.log("live-0"),
            s.model("live")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.log("live-0").contains("alloc 4MiB -> 0"),
        "{}",
        s.log("live-0")
    );
    // A cut below what is in use: nothing more until usage falls under it.
    let (code, out, err) = set(&s, "live", "2MiB");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "model live: quota 2.0 MiB/GPU (was 8.0 MiB/GPU)\n");
    assert_eq!(by_hand("1MiB")[1], "alloc 1MiB -> 2");
    assert_eq!(s.model("live")["gpu_quota_bytes"].as_u64(), Some(2 * MIB));
    // Bad input changes nothing.
    let (code, _, err) = set(&s, "live", "lots");
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("cuvisor: model live: gpu_quota \"lots\": "),
        "{err}"
    );
    let (code, _, err) = set(&s, "nosuch", "1GiB");
    assert_eq!(
        (code, err.as_str()),
        (Some(1), "cuvisor: model nosuch: no model nosuch\n")
    );
    let (status, body) = cuvisor::control::request_json(
        &s.socket,
        "PATCH",
        "/models/live",
        &serde_json::json!({"gpu_quota": "1GiB", "memory": 3}),
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.model("live")["gpu_quota_bytes"].as_u64(), Some(2 * MIB));
    assert!(
        s.supervisor_log()
            .contains("model live: quota 8.0 MiB/GPU -> 2.0 MiB/GPU (changed live)"),
        "{}",
        s.supervisor_log()
    );
}

/// A ledger run without a supervisor: a process asking for another quota is refused, and
/// told how to change it; `cuvisor ledger quota` changes it live (before, the only remedy
/// named, `cuvisor ledger create`, answered "already exists").
#[test]
fn a_ledger_without_a_supervisor_has_its_quota_changed_as_the_refusal_says() {
    let dir = TempDir::new("ledger-quota");
    let cli = |args: &[&str]| {
        run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
            .arg("ledger")
            .args(args)
            .arg("--dir")
            .arg(&dir.0))
    };
    let created = cli(&["create", "--model", "m", "--quota", "4MiB"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let by_hand = || {
        let mut cmd = shimmed(driver_probe());
        cmd.env("CUVISOR_LEDGER_DIR", &dir.0)
            .env("CUVISOR_MODEL", "m")
            .env("CUVISOR_QUOTA", "8MiB")
            .args(["init", "alloc", "6MiB"]);
        run(&mut cmd)
    };
    let refused = by_hand();
    assert!(
        stderr(&refused).contains(
            "or change it (`cuvisor ledger quota --model m --quota Q`; under `cuvisor run`, `cuvisor set m --quota Q`, or its gpu_quota and a restart)"
        ),
        "{}",
        stderr(&refused)
    );
    let changed = cli(&["quota", "--model", "m", "--quota", "8MiB"]);
    assert!(changed.status.success(), "{}", stderr(&changed));
    assert_eq!(
        lines(&changed),
        ["model m: quota 8.0 MiB/GPU (was 4.0 MiB/GPU)"]
    );
    let joined = by_hand();
    assert_eq!(lines(&joined)[..2], ["init -> 0", "alloc 6MiB -> 0 #0"]);
    let missing = cli(&["quota", "--model", "nosuch", "--quota", "1MiB"]);
    assert_eq!(missing.status.code(), Some(1));
}

/// Defect 7: the CLI. `start`, `stop` and `restart` exist; the socket comes from
/// `--socket`, `CUVISOR_SOCKET` or `--config FILE`; an alias names its model everywhere;
/// errors are sentences (before: `hibernate` of no model printed the raw JSON).
#[test]
fn the_cli_starts_stops_and_restarts_by_name_or_alias_wherever_the_socket_is_said() {
    let http = cuvisor::node::process::free_port().unwrap();
    let model = format!(
        "[[model]]\nname = \"chat\"\ncommand = \"python3\"\n\
         args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"chat\"]\n\
         [model.serve]\nhealth = \"/health\"\naliases = [\"gpt-small\"]\n",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/openai_model.py")
    );
    let s = Supervisor::start_with(
        "cli",
        &format!("http = \"127.0.0.1:{http}\"\n"),
        &[],
        &model,
    );
    let cuvisor = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"));
        cmd.args(args).env_remove("CUVISOR_SOCKET");
        cmd
    };
    let said = |mut cmd: std::process::Command| {
        let out = run(&mut cmd);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };
    // Defect 4: the log says when an instance became ready, and how long it took.
    wait_until("ready", Duration::from_secs(10), || {
        s.supervisor_log()
            .contains("model chat: instance 0 ready after ")
    });
    // CUVISOR_SOCKET, and an alias.
    let mut stop = cuvisor(&["stop", "gpt-small"]);
    stop.env("CUVISOR_SOCKET", &s.socket);
    assert_eq!(
        said(stop),
        (Some(0), "model chat: stop asked\n".into(), String::new())
    );
    wait_until("the stop", Duration::from_secs(10), || {
        s.model("chat")["state"] == "stopped"
    });
    // Defect 6: the operator's action is logged, and the stop it asked for is said as
    // one, not as a crash.
    for line in [
        "model chat: stop asked (control API)",
        "model chat: instance 0 stopped by SIGTERM",
    ] {
        assert!(
            s.supervisor_log().contains(line),
            "{line}: {}",
            s.supervisor_log()
        );
    }
    // --config: the file's socket.
    let config = s.dir.path("cuvisor.toml");
    let mut start = cuvisor(&["start", "chat", "--config"]);
    start.arg(&config);
    assert_eq!(
        said(start),
        (Some(0), "model chat: start asked\n".into(), String::new())
    );
    wait_until("the start", Duration::from_secs(10), || {
        s.model("chat")["state"] == "running"
    });
    let pid = s.model("chat")["instances"][0]["pid"].as_u64();
    let mut restart = cuvisor(&["restart", "gpt-small", "--socket"]);
    restart.arg(&s.socket);
    assert_eq!(said(restart).0, Some(0));
    wait_until("the restart", Duration::from_secs(10), || {
        let m = s.model("chat");
        let now = m["instances"][0]["pid"].as_u64();
        now.is_some() && now != pid && m["state"] == "running"
    });
    let mut status = cuvisor(&["status", "--json"]);
    status.env("CUVISOR_SOCKET", &s.socket);
    let (code, out, _) = said(status);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"name\": \"chat\""), "{out}");
    // Errors as sentences.
    for action in ["start", "hibernate"] {
        let mut cmd = cuvisor(&[action, "nosuch", "--socket"]);
        cmd.arg(&s.socket);
        assert_eq!(
            said(cmd),
            (Some(1), String::new(), "cuvisor: no model nosuch\n".into()),
            "{action}"
        );
    }
    let missing = cuvisor(&["status", "--socket", "/nonexistent/cuvisor.sock"]);
    let (code, _, err) = said(missing);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("cuvisor: control socket /nonexistent/cuvisor.sock: ")
            && err.ends_with("(is `cuvisor run` running?)\n"),
        "{err}"
    );
}

/// `cuvisor check FILE`: status, stdout, stderr (the file's path written `FILE`).
fn check(dir: &TempDir, text: &str) -> (Option<i32>, String, String) {
    let path = dir.path("cuvisor.toml");
    std::fs::write(&path, text).unwrap();
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("check")
        .arg(&path));
    let file = format!("{}", path.display());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).replace(&file, "FILE"),
        stderr(&out).replace(&file, "FILE"),
    )
}

/// Defect 8: `check` reports every error of a file at once (three typos took three runs),
/// each with its line and the key that was meant, and an alias clash with its line; and
/// it fails a file that cannot run: a command not found, a served model never told its
/// port. A front door's port in use is a warning.
#[test]
fn check_reports_every_error_at_once_and_what_cannot_run() {
    let dir = TempDir::new("check-all");
    let (code, out, err) = check(
        &dir,
        "[supervisor]\ngrace_perod = \"2s\"\nhttp = \"127.0.0.1:9\"\n\n\
         [[model]]\nname = \"a\"\ncommand = \"/bin/true\"\ngpu_qouta = \"1GiB\"\n\
         [model.serve]\nhealth = \"/h\"\naliases = [\"b\"]\nconcurrensy = 2\n\n\
         [[model]]\nname = \"b\"\ncommand = \"/bin/true\"\n",
    );
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert_eq!(
        err,
        "FILE:2: unknown field `grace_perod` in [supervisor] (did you mean `grace_period`?)\n\
         FILE:8: unknown field `gpu_qouta` in [[model]] (did you mean `gpu_quota`?)\n\
         FILE:11: model a: alias \"b\" already names model b\n\
         FILE:12: unknown field `concurrensy` in [model.serve] (did you mean `concurrency`?)\n"
    );
    // Valid, but it cannot run here.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (code, _, err) = check(
        &dir,
        &format!(
            "[supervisor]\nhttp = \"127.0.0.1:{port}\"\n\
             [[model]]\nname = \"a\"\ncommand = \"no-such-engine-7\"\n\
             [[model]]\nname = \"web\"\ncommand = \"/bin/true\"\nargs = [\"serve\"]\n\
             [model.serve]\nhealth = \"/h\"\n"
        ),
    );
    assert_eq!(code, Some(1), "{err}");
    let path = std::env::var("PATH").unwrap();
    for line in [
        format!("WARNING: http = \"127.0.0.1:{port}\": another process listens there now; `cuvisor run` cannot open its front door until it leaves"),
        format!("FILE: model a: command \"no-such-engine-7\" is not found on PATH ({path})"),
        "FILE: model web: served, and none of its args says {port} (or $PORT): its server would not listen where the front door sends requests (add e.g. \"--port\", \"{port}\")".to_owned(),
    ] {
        assert!(err.lines().any(|l| l == line), "{line}\nin\n{err}");
    }
}

/// One plain HTTP/1.1 GET over TCP: the status code and the body.
fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: prometheus.example:9100\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let code = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Defect 10: `metrics = "ADDR"` serves `/metrics` alone on a listener of its own, for a
/// Prometheus on another host (any address, any Host header), read-only; with
/// `metrics_token`, only to a scraper with the token. `check` warns of metrics open beyond
/// this host without a token.
#[test]
fn metrics_have_a_listener_of_their_own() {
    let dir = TempDir::new("metrics-listener");
    let token = dir.path("token");
    std::fs::write(&token, "scrape-0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (open, closed) = (
        cuvisor::node::process::free_port().unwrap(),
        cuvisor::node::process::free_port().unwrap(),
    );
    let model = holder("m", "1MiB", "4MiB");
    let s = Supervisor::start_with(
        "metrics-open",
        &format!("metrics = \"127.0.0.1:{open}\"\n"),
        &[],
        &model,
    );
    wait_until("the allocation", Duration::from_secs(5), || {
        s.model("m")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    let (code, body) = http_get(open, "/metrics", None);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("cuvisor_gpu_used_bytes{model=\"m\""),
        "{body}"
    );
    // Nothing else: not the models, not an action.
    for path in ["/models", "/models/m/stop", "/healthz"] {
        assert_eq!(http_get(open, path, None).0, 404, "{path}");
    }
    assert_eq!(s.model("m")["state"], "running");
    let t = Supervisor::start_with(
        "metrics-closed",
        &format!(
            "metrics = \"127.0.0.1:{closed}\"\nmetrics_token = \"{}\"\n",
            token.display()
        ),
        &[],
        &holder("n", "1MiB", "4MiB"),
    );
    assert_eq!(http_get(closed, "/metrics", None).0, 401);
    assert_eq!(
        http_get(closed, "/metrics", Some("wrong-0123456789abcdef")).0,
        401
    );
    let (code, body) = http_get(closed, "/metrics", Some("scrape-0123456789abcdef"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("model=\"n\""), "{body}");
    drop(t);
    let (code, _, err) = check(
        &dir,
        "[supervisor]\nmetrics = \"0.0.0.0:9469\"\n[[model]]\nname = \"m\"\ncommand = \"true\"\nuser = \"nobody\"\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(
            "WARNING: the metrics listen on 0.0.0.0:9469, beyond this host, and ask for no token"
        ),
        "{err}"
    );
}

/// Defect 9: a multipart request (the OpenAI SDK's `audio.transcriptions`) is routed by its
/// `model` form field, its body passed on whole; the front door answers HTTP/1.1 whatever
/// its upstream speaks (the test server speaks HTTP/1.0); a multipart body without a
/// `model` field is a 400 that says so.
#[test]
fn multipart_requests_are_routed_by_their_model_field_and_answered_in_http_1_1() {
    let http = cuvisor::node::process::free_port().unwrap();
    let served = |name: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"python3\"\n\
             args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"{name}\"]\n\
             [model.serve]\nhealth = \"/health\"\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/openai_model.py")
        )
    };
    let _s = Supervisor::start_with(
        "multipart",
        &format!("http = \"127.0.0.1:{http}\"\n"),
        &[],
        &format!("{}{}", served("whisper"), served("other")),
    );
    let upload = |fields: &[(&str, &str)]| {
        let boundary = "----cuvisor-test-7MA4YWxkTrZu0gW";
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(&[0u8, 1, 2, 255, 13, 10, 45, 45]);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut raw = format!(
            "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        c.write_all(&raw).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        (answer, body.len())
    };
    let (answer, sent) = upload(&[("model", "whisper"), ("language", "en")]);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["served_by"], "whisper", "{body}");
    assert_eq!(body["body_bytes"], sent, "{body}");
    let (answer, _) = upload(&[("language", "en")]);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("no model"), "{answer}");
}

/// Defect 6: log lines carry an RFC 3339 time and a level (text, or JSON with `log_format
/// = "json"`); `log_level` leaves out what is below it; `http_access_log` writes a line per
/// front-door request: model, status, duration, bytes.
#[test]
fn log_lines_have_times_and_levels_and_requests_an_access_log() {
    let served = |extra: &str| {
        format!(
            "[[model]]\nname = \"chat\"\ncommand = \"python3\"\n\
             args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"chat\"]\n{extra}\
             [model.serve]\nhealth = \"/health\"\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/openai_model.py")
        )
    };
    let http = cuvisor::node::process::free_port().unwrap();
    let s = Supervisor::start_with(
        "log-json",
        &format!("http = \"127.0.0.1:{http}\"\nlog_format = \"json\"\nhttp_access_log = true\n"),
        &[],
        &served(""),
    );
    wait_until("ready", Duration::from_secs(10), || {
        s.supervisor_log().contains("ready after")
    });
    let body = "{\"model\": \"chat\", \"messages\": []}";
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    c.write_all(raw.as_bytes()).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    let sent = answer.len() - answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    wait_until("the access line", Duration::from_secs(5), || {
        s.supervisor_log().contains("cuvisor::access")
    });
    let log = s.supervisor_log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let started = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("model chat: instance 0 started"))
        })
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["target"], "cuvisor");
    assert!(
        started["timestamp"].as_str().unwrap().ends_with('Z'),
        "{started}"
    );
    let access = lines
        .iter()
        .find(|l| l["target"] == "cuvisor::access")
        .unwrap();
    assert_eq!(access["fields"]["model"], "chat", "{access}");
    assert_eq!(access["fields"]["status"], 200, "{access}");
    assert_eq!(access["fields"]["bytes"], sent as u64, "{access}");
    assert!(
        access["fields"]["duration_ms"].as_f64().unwrap() > 0.0,
        "{access}"
    );
    // Text by default, with a time and a level; log_level = "warn" leaves INFO out.
    let t = Supervisor::start_with(
        "log-text",
        "log_level = \"warn\"\n",
        &[],
        &holder("q", "1MiB", "4MiB"),
    );
    wait_until("the allocation", Duration::from_secs(5), || {
        t.model("q")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    let log = t.supervisor_log();
    let warned = log
        .lines()
        .find(|l| l.contains("model q: runs as root of the host"))
        .unwrap_or_else(|| panic!("{log}"));
    let (time, rest) = warned.split_once(' ').unwrap();
    assert!(
        time.len() >= 20 && time.ends_with('Z') && &time[4..5] == "-",
        "{warned}"
    );
    assert!(
        rest.trim_start().starts_with("WARN cuvisor: model q:"),
        "{warned}"
    );
    assert!(!log.contains(" INFO "), "{log}");
}

/// Defect 6: each model keeps its recent output. `cuvisor logs NAME` prints it (one
/// instance's with `--instance`; by an alias too), `-f` goes on with each new line, and
/// `GET /models/NAME/logs?follow=1` streams it.
#[test]
fn a_models_recent_output_is_kept_and_followed() {
    let go = TempDir::new("logs-go");
    let model = format!(
        "[[model]]\nname = \"talk\"\ncommand = \"sh\"\ninstances = 2\n\
         args = [\"-c\", \"echo hello; while [ ! -e {go} ]; do sleep 0.05; done; echo later; sleep 600\"]\n",
        go = go.path("GO").display()
    );
    let s = Supervisor::start("logs", &model);
    let cuvisor = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"));
        cmd.args(args).arg("--socket").arg(&s.socket);
        cmd
    };
    wait_until("both hellos", Duration::from_secs(10), || {
        String::from_utf8_lossy(&run(&mut cuvisor(&["logs", "talk"])).stdout)
            .matches("hello")
            .count()
            == 2
    });
    let mut lines: Vec<String> = lines(&run(&mut cuvisor(&["logs", "talk"])));
    lines.sort();
    assert_eq!(lines, ["[talk/0] hello", "[talk/1] hello"]);
    assert_eq!(
        lines_of(run(&mut cuvisor(&["logs", "talk", "--instance", "1"]))),
        ["[talk/1] hello"]
    );
    // Followed: the new lines come as they are written.
    let mut follow = cuvisor(&["logs", "talk", "-f", "--instance", "0"]);
    follow.stdout(std::process::Stdio::piped());
    let mut follower = follow.spawn().unwrap();
    let stream = std::process::Command::new("curl")
        .args(["-sN", "--unix-socket"])
        .arg(&s.socket)
        .arg("http://cuvisor/models/talk/logs?follow=1&instance=1")
        .stdout(std::process::Stdio::piped())
        .spawn();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(go.path("GO"), "").unwrap();
    use std::io::BufRead;
    let mut read = std::io::BufReader::new(follower.stdout.take().unwrap());
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        read.read_line(&mut line).unwrap();
        got.push(line.trim_end().to_owned());
    }
    assert_eq!(got, ["[talk/0] hello", "[talk/0] later"]);
    let _ = follower.kill();
    let _ = follower.wait();
    // The stream (curl, where the machine has it).
    if let Ok(mut curl) = stream {
        let mut read = std::io::BufReader::new(curl.stdout.take().unwrap());
        let mut got = Vec::new();
        for _ in 0..2 {
            let mut line = String::new();
            read.read_line(&mut line).unwrap();
            got.push(line.trim_end().to_owned());
        }
        assert_eq!(got, ["[talk/1] hello", "[talk/1] later"]);
        let _ = curl.kill();
        let _ = curl.wait();
    }
    let out = run(&mut cuvisor(&["logs", "nosuch"]));
    assert_eq!(
        (out.status.code(), stderr(&out)),
        (Some(1), "cuvisor: no model nosuch\n".into())
    );
}

fn lines_of(out: std::process::Output) -> Vec<String> {
    lines(&out)
}

/// Defect 4: a client that asked for a stream during a cold start receives, with
/// `serve.loading_state = true`, its answer's head at once and SSE comments while the
/// model loads (a client ignores them), then the stream; without it (the default), or
/// for a request that is not a stream, nothing until the model answers. Served instances
/// say `loading` until their health check passes, then `ready`.
#[test]
fn a_stream_during_a_cold_start_gets_a_loading_state_when_asked() {
    let http = cuvisor::node::process::free_port().unwrap();
    let model = |name: &str, extra: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"python3\"\n\
             args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"{name}\", \"--delay\", \"2.5\"]\n\
             min_instances = 0\nmax_instances = 1\n[model.serve]\nhealth = \"/health\"\n{extra}",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/openai_model.py")
        )
    };
    let s = Supervisor::start_with(
        "loading-state",
        &format!("http = \"127.0.0.1:{http}\"\n"),
        &[],
        &format!(
            "{}{}",
            model("told", "loading_state = true\n"),
            model("silent", "")
        ),
    );
    let stream = r#"{"model": "told", "stream": true, "chunks": 2}"#;
    let watcher = std::thread::spawn({
        let socket = s.socket.clone();
        move || {
            // The instance as the status shows it while the model loads.
            let mut seen = Vec::new();
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < end && !seen.contains(&"ready".to_owned()) {
                let (_, body) = cuvisor::control::request(&socket, "GET", "/models/told").unwrap();
                let m: serde_json::Value = serde_json::from_str(&body).unwrap();
                if let Some(state) = m["instances"][0]["state"].as_str()
                    && seen.last().map(String::as_str) != Some(state)
                {
                    seen.push(state.to_owned());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        }
    });
    let events = chat_events(http, stream);
    let (head, chunks) = (&events[0], &events[1..]);
    assert_eq!(head["status"], 200, "{events:?}");
    assert_eq!(
        head["headers"]["content-type"], "text/event-stream",
        "{events:?}"
    );
    assert!(
        head["t"].as_f64().unwrap() < 1.5,
        "the head at once: {events:?}"
    );
    let text: String = chunks.iter().filter_map(|e| e["chunk"].as_str()).collect();
    let first_comment = text
        .find(": cuvisor: model told is loading")
        .expect("a comment");
    let first_data = text.find("data: ").expect("the stream");
    assert!(first_comment < first_data, "{text}");
    assert!(
        text.contains("chunk 1") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    // The comments came while it loaded, before the model's first byte.
    let commented = chunks
        .iter()
        .filter(|e| {
            e["chunk"]
                .as_str()
                .is_some_and(|c| c.starts_with(": cuvisor"))
        })
        .count();
    assert!(commented >= 2, "{events:?}");
    let states = watcher.join().unwrap();
    assert!(
        states.ends_with(&["loading".to_owned(), "ready".to_owned()]),
        "{states:?}"
    );
    assert_eq!(s.model("told")["state"], "running");

    // Not asked for: the head comes with the model's answer.
    let events = chat_events(http, r#"{"model": "silent", "stream": true, "chunks": 2}"#);
    assert!(events[0]["t"].as_f64().unwrap() >= 2.0, "{events:?}");
    let text: String = events.iter().filter_map(|e| e["chunk"].as_str()).collect();
    assert!(!text.contains(": cuvisor"), "{text}");
}
