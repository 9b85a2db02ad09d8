//! Issue 12, the front door (first part: routing, readiness, streaming, errors, keys):
//! `cuvisor run` with `http` serves models that run the OpenAI-compatible test server
//! (`tests/servers/openai_model.py`), queried by a plain HTTP client
//! (`tests/servers/client.py`).

mod common;
use common::supervisor::*;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

fn servers() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/servers")
}

/// A served model running the test server; `extra` goes into its `[model.serve]`.
fn model(name: &str, serve_extra: &str, delay: f64) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"python3\"\n\
         args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"{name}\", \"--delay\", \"{delay}\"]\n\
         restart = \"always\"\nbackoff_initial = \"10ms\"\nbackoff_max = \"10ms\"\n\
         [model.serve]\nhealth = \"/health\"\n{serve_extra}\n",
        servers().join("openai_model.py").display()
    )
}

/// One request through the front door: the client's events (status, chunks, end).
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> Vec<Value> {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(servers().join("client.py"))
        .args([&port.to_string(), method, path]);
    if let Some(b) = body {
        cmd.arg(b);
    }
    if let Some(k) = key {
        cmd.args(["--key", k]);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn status(events: &[Value]) -> u64 {
    events[0]["status"].as_u64().unwrap()
}

fn body(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["chunk"].as_str()).collect()
}

fn json_body(events: &[Value]) -> Value {
    serde_json::from_str(&body(events)).unwrap_or_else(|e| panic!("{e}: {events:?}"))
}

/// `cuvisor run` with the front door on a free port, serving `models`.
fn front_door(tag: &str, settings: &str, models: &str) -> (Supervisor, u16) {
    let http = cuvisor::node::process::free_port().unwrap();
    let settings = format!("http = \"127.0.0.1:{http}\"\n{settings}");
    (Supervisor::start_with(tag, &settings, &[], models), http)
}

/// The supervisor's metrics, as `GET /metrics` answers them.
fn metrics(s: &Supervisor) -> String {
    cuvisor::control::request(&s.socket, "GET", "/metrics")
        .unwrap()
        .1
}

/// Each of `lines` is a line of the supervisor's metrics.
fn assert_metrics(s: &Supervisor, lines: &[&str]) {
    let metrics = metrics(s);
    for line in lines {
        assert!(metrics.lines().any(|l| l == *line), "{line} in\n{metrics}");
    }
}

/// One plain request to `model`, answered 200 (the instance is ready).
fn warm(http: u16, model: &str) {
    let answer = request(http, "POST", "/v1/completions", Some(&chat(model)), None);
    assert_eq!(status(&answer), 200, "{answer:?}");
}

fn chat(model: &str) -> String {
    format!(
        "{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}"
    )
}

/// Requests go to the model their body names (or its alias); `/v1/models` lists the
/// models; `/models/NAME/…` forwards the rest of the path; unknown models, malformed
/// bodies and bodies over `max_body` get OpenAI-style errors.
#[test]
fn requests_are_routed_by_model_and_alias() {
    let (mut s, http) = front_door(
        "route",
        "",
        &format!(
            "{}{}",
            model(
                "alpha",
                "aliases = [\"gpt-small\"]\nmax_body = \"1KiB\"",
                0.0
            ),
            model("beta", "", 0.3)
        ),
    );
    let answer = request(http, "GET", "/v1/models", None, None);
    assert_eq!(status(&answer), 200);
    let listed = json_body(&answer)["data"].as_array().unwrap().clone();
    let ids: Vec<&str> = listed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    // Issue 26, defect 9: aliases are listed (marked), each entry has `created`, and
    // `GET /v1/models/{id}` answers one (the OpenAI SDK's `models.retrieve`).
    assert_eq!(ids, ["alpha", "gpt-small", "beta"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for m in &listed {
        assert_eq!(m["object"], "model", "{m}");
        assert_eq!(m["owned_by"], "cuvisor", "{m}");
        let created = m["created"].as_u64().unwrap();
        assert!(created <= now && created + 600 > now, "{m}");
    }
    assert_eq!(listed[1]["alias_of"], "alpha");
    assert!(listed[0].get("alias_of").is_none());
    let one = request(http, "GET", "/v1/models/gpt-small", None, None);
    assert_eq!(status(&one), 200, "{one:?}");
    assert_eq!(json_body(&one), listed[1]);
    let none = request(http, "GET", "/v1/models/gamma", None, None);
    assert_eq!(status(&none), 404, "{none:?}");
    assert_eq!(json_body(&none)["error"]["code"], "model_not_found");
    // Defect 10: the front door says it is up, without a key and without a model.
    let health = request(http, "GET", "/health", None, None);
    assert_eq!(status(&health), 200, "{health:?}");
    // beta starts listening 0.3 s late: its first request waits until it is healthy.
    for (named, served_by) in [("alpha", "alpha"), ("gpt-small", "alpha"), ("beta", "beta")] {
        let answer = request(
            http,
            "POST",
            "/v1/chat/completions",
            Some(&chat(named)),
            None,
        );
        assert_eq!(status(&answer), 200, "{named}: {answer:?}");
        let v = json_body(&answer);
        assert_eq!(v["served_by"], served_by, "{v}");
        assert_eq!(v["model"], named, "the body reaches the model unchanged");
    }
    let answer = request(http, "GET", "/models/beta/echo/deep?x=1", None, None);
    assert_eq!(status(&answer), 200);
    let v = json_body(&answer);
    assert_eq!(
        (
            v["path"].as_str(),
            v["query"].as_str(),
            v["served_by"].as_str()
        ),
        (Some("/echo/deep"), Some("x=1"), Some("beta"))
    );
    // Errors.
    let answer = request(
        http,
        "POST",
        "/v1/chat/completions",
        Some(&chat("gamma")),
        None,
    );
    assert_eq!(status(&answer), 404);
    let error = &json_body(&answer)["error"];
    assert_eq!(error["message"], "the model `gamma` does not exist");
    // OpenAI's shape: a type, and a code that is a string or null.
    assert_eq!(
        (&error["type"], &error["code"], &error["param"]),
        (
            &Value::from("invalid_request_error"),
            &Value::from("model_not_found"),
            &Value::Null
        )
    );
    let answer = request(
        http,
        "POST",
        "/v1/chat/completions",
        Some("{not json"),
        None,
    );
    assert_eq!(status(&answer), 400);
    assert!(
        json_body(&answer)["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the body is not JSON")
    );
    assert_eq!(json_body(&answer)["error"]["code"], Value::Null);
    let answer = request(
        http,
        "POST",
        "/v1/chat/completions",
        Some("{\"messages\": []}"),
        None,
    );
    assert_eq!(status(&answer), 400);
    let big = format!(
        "{{\"model\": \"alpha\", \"pad\": \"{}\"}}",
        "x".repeat(2000)
    );
    let answer = request(http, "POST", "/v1/completions", Some(&big), None);
    assert_eq!(status(&answer), 413, "alpha takes 1 KiB at most");
    let answer = request(http, "GET", "/v2/nothing", None, None);
    assert_eq!(status(&answer), 404);
    // What the front door counted, by model and code.
    assert_metrics(
        &s,
        &[
            "cuvisor_requests_total{model=\"alpha\",code=\"200\"} 2",
            "cuvisor_requests_total{model=\"alpha\",code=\"413\"} 1",
            "cuvisor_requests_total{model=\"beta\",code=\"200\"} 2",
            "cuvisor_request_duration_seconds_count{model=\"beta\"} 2",
            "cuvisor_time_to_first_byte_seconds_count{model=\"alpha\"} 2",
            "cuvisor_in_flight_requests{model=\"alpha\"} 0",
            "cuvisor_queued_requests{model=\"beta\"} 0",
            "cuvisor_instances{model=\"alpha\",state=\"ready\"} 1",
            // and what it answered itself, for no model
            "cuvisor_front_door_refused_total{reason=\"unknown_model\"} 1",
            "cuvisor_front_door_refused_total{reason=\"bad_request\"} 2",
            "cuvisor_front_door_refused_total{reason=\"no_route\"} 1",
        ],
    );
    assert_eq!(s.stop().0, 0);
}

/// A streamed answer reaches the client chunk by chunk, as the model writes it.
#[test]
fn streamed_answers_arrive_as_they_are_written() {
    let (mut s, http) = front_door("stream", "", &model("alpha", "", 0.0));
    // Warm: the instance is ready.
    warm(http, "alpha");
    let streamed = "{\"model\": \"alpha\", \"stream\": true, \"chunks\": 4, \"interval\": 0.4}";
    let events = request(http, "POST", "/v1/chat/completions", Some(streamed), None);
    assert_eq!(status(&events), 200);
    let chunks: Vec<&Value> = events.iter().filter(|e| e["chunk"].is_string()).collect();
    assert!(chunks.len() >= 3, "{events:?}");
    let first = chunks[0]["t"].as_f64().unwrap();
    let last = chunks[chunks.len() - 1]["t"].as_f64().unwrap();
    assert!(
        first < 1.0 && last - first > 1.0,
        "the first chunk came at {first} s, the last at {last} s: not streamed"
    );
    assert!(body(&events).contains("chunk 0") && body(&events).ends_with("data: [DONE]\n\n"));
    assert_eq!(s.stop().0, 0);
}

/// A worker killed in the middle of a stream cuts that stream; the next request is
/// served by its replacement once that is healthy.
#[test]
fn a_killed_worker_cuts_its_stream_and_its_replacement_serves_the_next() {
    let (mut s, http) = front_door("killed", "", &model("alpha", "", 0.0));
    let warm = request(http, "POST", "/v1/completions", Some(&chat("alpha")), None);
    assert_eq!(status(&warm), 200);
    // The instance's pid as the host sees it (its PID-namespace init), from the status.
    let pid = s.model("alpha")["instances"][0]["pid"].as_i64().unwrap();
    // The client's events are read as they come: the worker is killed once its stream
    // has begun.
    let long = "{\"model\": \"alpha\", \"stream\": true, \"chunks\": 50, \"interval\": 0.1}";
    let mut client = std::process::Command::new("python3")
        .arg(servers().join("client.py"))
        .args([&http.to_string(), "POST", "/v1/chat/completions", long])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(client.stdout.take().unwrap()));
    let mut events: Vec<Value> = Vec::new();
    while !events.iter().any(|e| e["chunk"].is_string()) {
        events.push(serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap());
    }
    // SAFETY: kill(2) of the instance this test's supervisor started.
    assert_eq!(unsafe { libc_kill(pid as i32, 9) }, 0);
    events.extend(lines.map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap()));
    assert!(client.wait().unwrap().success());
    assert_eq!(status(&events), 200);
    assert!(
        !body(&events).contains("[DONE]"),
        "the stream was cut: {events:?}"
    );
    let next = request(http, "POST", "/v1/completions", Some(&chat("alpha")), None);
    assert_eq!(status(&next), 200, "{next:?}");
    let now = s.model("alpha")["instances"][0]["pid"].as_i64().unwrap();
    assert_ne!(now, pid, "served by a new instance");
    assert_eq!(s.model("alpha")["restarts"], 1);
    assert_eq!(s.stop().0, 0);
}

/// With `api_keys`, every request needs one of the keys.
#[test]
fn api_keys_are_required_when_configured() {
    let dir = TempDir::new("keys");
    let keys = dir.path("keys");
    std::fs::write(
        &keys,
        "# the keys\nsk-0123456789abcdef\nsk-fedcba9876543210\n",
    )
    .unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (mut s, http) = front_door(
        "keys",
        &format!("api_keys = \"{}\"\n", keys.display()),
        &model("alpha", "", 0.0),
    );
    let refused = request(http, "GET", "/v1/models", None, None);
    assert_eq!(status(&refused), 401);
    assert_eq!(json_body(&refused)["error"]["type"], "authentication_error");
    for path in ["/v1/models/alpha", "/health/x"] {
        assert_eq!(
            status(&request(http, "GET", path, None, None)),
            401,
            "{path}"
        );
    }
    // A load balancer's probe needs no key, and learns nothing but that the door is up.
    let health = request(http, "GET", "/health", None, None);
    assert_eq!(status(&health), 200);
    assert_eq!(json_body(&health), serde_json::json!({"status": "ok"}));
    assert_eq!(
        status(&request(
            http,
            "GET",
            "/v1/models",
            None,
            Some("sk-wrong-key-000000")
        )),
        401
    );
    let answer = request(
        http,
        "POST",
        "/v1/completions",
        Some(&chat("alpha")),
        Some("sk-fedcba9876543210"),
    );
    assert_eq!(status(&answer), 200);
    assert_metrics(
        &s,
        &["cuvisor_front_door_refused_total{reason=\"unauthorized\"} 4"],
    );
    assert_eq!(s.stop().0, 0);
}

/// At most `concurrency` requests per instance; then up to `max_queue` wait (served in
/// turn), and more get 503 with Retry-After at once; a request that waits longer than
/// `queue_timeout` gets 503 too.
#[test]
fn requests_beyond_the_concurrency_wait_in_a_bounded_queue() {
    let (mut s, http) = front_door(
        "queue",
        "",
        &format!(
            "{}{}",
            model("alpha", "concurrency = 1\nmax_queue = 1", 0.0),
            model("beta", "concurrency = 1\nqueue_timeout = \"300ms\"", 0.0)
        ),
    );
    for m in ["alpha", "beta"] {
        assert_eq!(
            status(&request(
                http,
                "POST",
                "/v1/completions",
                Some(&chat(m)),
                None
            )),
            200
        );
    }
    let long = |m: &str| {
        format!("{{\"model\": \"{m}\", \"stream\": true, \"chunks\": 10, \"interval\": 0.2}}")
    };
    // alpha: one in flight, one waiting, the third refused at once.
    let spawn = |body: String, delay: u64| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            request(http, "POST", "/v1/chat/completions", Some(&body), None)
        })
    };
    let first = spawn(long("alpha"), 0);
    let second = spawn(long("alpha"), 400);
    let third = spawn(long("alpha"), 900);
    let (first, second, third) = (
        first.join().unwrap(),
        second.join().unwrap(),
        third.join().unwrap(),
    );
    assert_eq!((status(&first), status(&second)), (200, 200));
    assert!(
        body(&second).ends_with("data: [DONE]\n\n"),
        "served after the first"
    );
    assert_eq!(status(&third), 503);
    assert!(
        body(&third).contains("too many requests waiting"),
        "{third:?}"
    );
    let last_of_first = first
        .iter()
        .filter_map(|e| e["t"].as_f64())
        .fold(0.0, f64::max);
    let first_of_second = second
        .iter()
        .find(|e| e["chunk"].is_string())
        .and_then(|e| e["t"].as_f64())
        .unwrap();
    // The second started 0.4 s after the first: its first chunk came (on the first's
    // clock) about when the first's answer ended, not before.
    assert!(
        0.4 + first_of_second >= last_of_first - 0.3,
        "the second waited for the first: {first_of_second} (+0.4) vs {last_of_first}"
    );
    // beta: the second waits 300 ms at most.
    let hold = spawn(long("beta"), 0);
    let late = spawn(long("beta"), 600);
    let (hold, late) = (hold.join().unwrap(), late.join().unwrap());
    assert_eq!(status(&hold), 200);
    assert_eq!(status(&late), 503);
    assert!(body(&late).contains("serve.queue_timeout"), "{late:?}");
    assert_eq!(s.stop().0, 0);
}

/// A client that leaves while its request waits in the queue leaves the queue: the
/// model's count of waiting requests goes back to zero (it would otherwise creep up
/// until every request that has to wait is refused as if the queue were full).
#[test]
fn a_client_that_leaves_while_queued_leaves_the_queue() {
    let (mut s, http) = front_door(
        "queue-leave",
        "",
        &model("gamma", "concurrency = 1\nmax_queue = 1", 0.0),
    );
    warm(http, "gamma");
    let long = "{\"model\": \"gamma\", \"stream\": true, \"chunks\": 20, \"interval\": 0.1}";
    let hold =
        std::thread::spawn(move || request(http, "POST", "/v1/chat/completions", Some(long), None));
    wait_until("the first in flight", Duration::from_secs(5), || {
        metrics(&s).contains("cuvisor_in_flight_requests{model=\"gamma\"} 1")
    });
    let mut queued = std::process::Command::new("python3")
        .arg(servers().join("client.py"))
        .args([&http.to_string(), "POST", "/v1/completions", &chat("gamma")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the second waiting", Duration::from_secs(5), || {
        metrics(&s).contains("cuvisor_queued_requests{model=\"gamma\"} 1")
    });
    queued.kill().unwrap();
    queued.wait().unwrap();
    wait_until("the queue empty again", Duration::from_secs(5), || {
        metrics(&s).contains("cuvisor_queued_requests{model=\"gamma\"} 0")
    });
    assert_eq!(status(&hold.join().unwrap()), 200);
    assert_eq!(s.stop().0, 0);
}

/// A model with `min_instances = 0` runs nothing until asked: the first request starts an
/// instance and is served once it is healthy (the cold start); load beyond the target
/// adds instances up to `max_instances`; idle ones stop after `idle_timeout`, back to zero.
#[test]
fn instances_follow_the_traffic_down_to_zero() {
    let (mut s, http) = front_door(
        "scale",
        "",
        &model("alpha", "concurrency = 1\nidle_timeout = \"1s\"", 0.3).replace(
            "restart = \"always\"",
            "min_instances = 0\nmax_instances = 2\nrestart = \"always\"",
        ),
    );
    let running = |s: &Supervisor| {
        s.model("alpha")["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["pid"].is_number())
            .count()
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(running(&s), 0, "scaled to zero at start");
    // The cold start: served, after the instance's 0.3 s of loading.
    let cold = request(http, "POST", "/v1/completions", Some(&chat("alpha")), None);
    assert_eq!(status(&cold), 200, "{cold:?}");
    assert!(cold[0]["t"].as_f64().unwrap() >= 0.3, "{cold:?}");
    assert_eq!(running(&s), 1);
    // Its answer says it waited for a start, and how long (the instance's 0.3 s at least).
    let timing = cold[0]["headers"]["server-timing"].as_str().unwrap();
    let waited = server_timing_ms(timing, "start");
    assert!((300.0..30_000.0).contains(&waited), "{timing}");
    // The next one found the instance ready.
    let warm = request(http, "POST", "/v1/completions", Some(&chat("alpha")), None);
    let timing = warm[0]["headers"]["server-timing"].as_str().unwrap();
    assert!(server_timing_ms(timing, "ready") < 300.0, "{timing}");
    // Two long requests at once with concurrency 1: a second instance starts.
    let long = "{\"model\": \"alpha\", \"stream\": true, \"chunks\": 8, \"interval\": 0.25}";
    let both: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                request(http, "POST", "/v1/chat/completions", Some(long), None)
            })
        })
        .collect();
    wait_until("a second instance", Duration::from_secs(5), || {
        running(&s) == 2
    });
    for answer in both {
        let answer = answer.join().unwrap();
        assert_eq!(status(&answer), 200);
        assert!(body(&answer).ends_with("data: [DONE]\n\n"));
    }
    // Idle for 1 s: both stop, down to zero.
    wait_until("scaled back to zero", Duration::from_secs(6), || {
        running(&s) == 0
    });
    let m = s.model("alpha");
    assert_eq!(
        m["restarts"], 0,
        "stops by the scaler are not restarts: {m}"
    );
    assert!(
        s.supervisor_log()
            .contains("idle for serve.idle_timeout: stopped")
    );
    assert_metrics(
        &s,
        &[
            "cuvisor_cold_starts_total{model=\"alpha\"} 1",
            "cuvisor_cold_start_seconds_count{model=\"alpha\"} 1",
            "cuvisor_requests_total{model=\"alpha\",code=\"200\"} 4",
            "cuvisor_instances{model=\"alpha\",state=\"stopped\"} 2",
        ],
    );
    assert_eq!(s.stop().0, 0);
}

/// The front door's `Server-Timing` value: its wait in ms, once its description is
/// checked to be `found`.
fn server_timing_ms(value: &str, found: &str) -> f64 {
    let rest = value
        .strip_prefix("cuvisor-queue;dur=")
        .unwrap_or_else(|| panic!("{value}"));
    let (ms, desc) = rest.split_once(';').unwrap_or_else(|| panic!("{value}"));
    assert_eq!(desc, format!("desc=\"{found}\""), "{value}");
    ms.parse().unwrap_or_else(|_| panic!("{value}"))
}

/// An instance that dies before answering gives its client 502 (and only that client);
/// a client that goes away in the middle of a stream closes the request to the instance.
#[test]
fn a_dead_instance_is_a_502_and_a_client_that_leaves_cancels_upstream() {
    let (mut s, http) = front_door("cancel", "", &model("alpha", "", 0.0));
    warm(http, "alpha");
    let died = request(
        http,
        "POST",
        "/v1/completions",
        Some("{\"model\": \"alpha\", \"die\": true}"),
        None,
    );
    assert_eq!(status(&died), 502, "{died:?}");
    assert_eq!(json_body(&died)["error"]["type"], "server_error");
    // The replacement serves the next one.
    warm(http, "alpha");
    // A client that reads one chunk of a long stream and hangs up.
    let long = "{\"model\": \"alpha\", \"stream\": true, \"chunks\": 100, \"interval\": 0.05}";
    let mut client = std::process::Command::new("python3")
        .arg(servers().join("client.py"))
        .args([&http.to_string(), "POST", "/v1/chat/completions", long])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(client.stdout.take().unwrap()));
    while !lines.next().unwrap().unwrap().contains("chunk") {}
    client.kill().unwrap();
    client.wait().unwrap();
    wait_until(
        "the instance sees the cancel",
        Duration::from_secs(5),
        || s.log("alpha-0").contains("stream cancelled"),
    );
    assert_eq!(s.stop().0, 0);
}

#[test]
fn an_instance_that_never_becomes_ready_is_restarted_as_a_failure() {
    // It would listen after 60 s: its health check never answers within the 1 s allowed.
    let (s, http) = front_door(
        "never-ready",
        "",
        &model("slow", "ready_timeout = \"1s\"", 60.0),
    );
    let first = s.model("slow")["instances"][0]["pid"].as_i64().unwrap();
    wait_until("a replacement", Duration::from_secs(10), || {
        let m = s.model("slow");
        let i = &m["instances"][0];
        i["restarts"].as_u64().unwrap() >= 1 && i["pid"].as_i64().is_some_and(|p| p != first)
    });
    let log = s.supervisor_log();
    // Issue 26, defect 2: the error says which URL was probed.
    let probed = log
        .lines()
        .find(|l| l.contains("not ready within"))
        .unwrap_or_else(|| panic!("{log}"));
    let port = probed
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no URL in {probed}"));
    for line in [
        format!(
            "model slow: instance 0 not ready within 1s (serve.ready_timeout): GET http://127.0.0.1:{port}/health never answered 200: stopped, to be restarted per its policy"
        ),
        // A stop the supervisor asked for, said as one (issue 26, defect 6).
        "model slow: instance 0 stopped by SIGTERM".to_owned(),
    ] {
        assert!(log.contains(&line), "{line} in\n{log}");
    }
    // A request waits for a ready instance up to the same timeout, then 503.
    let answer = request(http, "POST", "/v1/completions", Some(&chat("slow")), None);
    assert_eq!(status(&answer), 503, "{answer:?}");
}

/// Issue 26, defect 2: a request for a model that cannot start is answered at once (not
/// after `ready_timeout`), 503 with the cause in OpenAI's shape, and `Retry-After` while
/// a restart is scheduled; none once the model has given up.
#[test]
fn a_model_that_cannot_start_fails_its_requests_at_once_with_the_cause() {
    let broken = |name: &str, restart: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"/nonexistent/engine-{name}\"\n\
             args = [\"--port\", \"{{port}}\"]\n{restart}backoff_initial = \"30s\"\n\
             backoff_max = \"30s\"\n[model.serve]\nhealth = \"/health\"\nready_timeout = \"60s\"\n"
        )
    };
    let (_s, http) = front_door(
        "cannot-start",
        "",
        &format!(
            "{}{}",
            broken("retrying", "restart = \"always\"\n"),
            broken("given-up", "restart = \"never\"\n")
        ),
    );
    for (model, retry) in [("retrying", true), ("given-up", false)] {
        let asked = std::time::Instant::now();
        let answer = request(
            http,
            "POST",
            "/v1/chat/completions",
            Some(&chat(model)),
            None,
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{model}: {answer:?}"
        );
        assert_eq!(status(&answer), 503, "{model}: {answer:?}");
        let error = &json_body(&answer)["error"];
        assert_eq!(error["type"], "server_error", "{error}");
        assert_eq!(error["code"], "model_unavailable", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("`{model}` cannot start: "))
                && message.contains(&format!("/nonexistent/engine-{model}")),
            "{message}"
        );
        let after = answer[0]["headers"]["retry-after"].as_str();
        match retry {
            true => {
                let secs: u64 = after.expect("Retry-After").parse().unwrap();
                assert!((1..=30).contains(&secs), "{secs}");
            }
            false => assert_eq!(after, None, "{answer:?}"),
        }
    }
}
