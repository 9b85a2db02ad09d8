//! Issue 13: hibernate and wake a model's memory, on a shared fake GPU of 4 GiB seen by an
//! observer outside every model (NVML without the shim, as `nvidia-smi` on the host).

mod common;
use common::supervisor::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// The fake node: one 4 GiB GPU whose state file every process of the test shares.
fn node_env(state: &Path) -> Vec<(String, String)> {
    fake_node(1, "4GiB", state)
}

/// `cuvisor run` on the fake node (its workers inherit the node's environment).
fn supervise(tag: &str, state: &Path, settings: &str, models: &str) -> Supervisor {
    Supervisor::start_in(tag, settings, &node_env(state), models)
}

/// NVML's probe outside every model (no shim), on the fake node.
fn observer(state: &Path) -> std::process::Command {
    let mut cmd = driver_probe();
    cmd.env_remove("LD_PRELOAD").envs(node_env(state));
    cmd
}

/// Waits until worker log `leaf` contains `text`; fails with the logs.
fn wait_for_log(s: &Supervisor, leaf: &str, text: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !s.log(leaf).contains(text) {
        assert!(
            std::time::Instant::now() < end,
            "no {text:?} in {leaf}'s log:\n{}\nsupervisor:\n{}",
            s.log(leaf),
            s.supervisor_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The device's used bytes, as NVML outside every model reports them.
fn observed_used(state: &Path) -> u64 {
    let out = run_script(&mut observer(state), "nvml-info 0");
    let fields: Vec<&str> = out[0]
        .strip_prefix("nvml-info 0 -> 0 ")
        .unwrap_or_else(|| panic!("{out:?}"))
        .split(' ')
        .collect();
    fields[2].parse().unwrap()
}

/// Before anything moves: the fake GPU must see a supervised worker, in its own PID
/// namespace, as alive. An observer outside that namespace once took it for dead and
/// reclaimed its memory.
#[test]
fn an_observer_outside_a_workers_pid_namespace_sees_its_memory() {
    let state = TempDir::new("observer-state");
    let gpu = state.path("gpu-state");
    let probe = stub_dir().join("driver_probe");
    let s = supervise(
        "observer",
        &gpu,
        "",
        &format!(
            "[[model]]\nname = \"a\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"3GiB\", \"sleep\", \"100000\"]\nmode = \"device\"\ngpu_quota = \"3GiB\"\n",
            probe.display()
        ),
    );
    wait_for_log(&s, "a-0", "alloc 3GiB -> 0");
    assert_eq!(observed_used(&gpu), 3 * GIB, "{}", s.log("a-0"));
    // Asked again: the first observer did not reclaim it either.
    assert_eq!(observed_used(&gpu), 3 * GIB);
}

/// The resident bytes of each process on the device, as NVML outside every model lists
/// them, in ascending order. (The fake lists each process by its pid in its own PID
/// namespace: a worker is pid 2 there.)
fn observed_processes(state: &Path) -> Vec<u64> {
    let out = run_script(&mut observer(state), "nvml-procs 0");
    assert!(out[0].starts_with("nvml-procs 0 -> 0 "), "{out:?}");
    let mut resident: Vec<u64> = out[1..]
        .iter()
        .map(|l| l.split(' ').nth(2).unwrap().parse().unwrap())
        .collect();
    resident.sort();
    resident
}

/// `POST /models/NAME/ACTION` (hibernate or wake): the code and the report.
fn power(s: &Supervisor, model: &str, action: &str) -> (u16, serde_json::Value) {
    let (code, body) = cuvisor::control::request_waiting(
        &s.socket,
        "POST",
        &format!("/models/{model}/{action}"),
        Duration::from_secs(60),
    )
    .unwrap();
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}")),
    )
}

/// The pid of the probe whose command line holds `marker` (a number only it has).
fn probe_pid(marker: &str) -> u32 {
    let probe = stub_dir().join("driver_probe");
    let found = pgrep(&format!("^{} .*{marker}", probe.display()));
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].parse().unwrap()
}

/// The case: A holds 3 GiB of a 4 GiB GPU; hibernated, its bytes leave the
/// device (an outside observer sees it), and B's 3 GiB fit without evicting anything;
/// woken, A is resident again (B's least recently used memory makes room).
#[test]
fn a_hibernated_model_leaves_the_gpu_and_comes_back() {
    let state = TempDir::new("swap-state");
    let gpu = state.path("gpu-state");
    let probe = stub_dir().join("driver_probe");
    let s = supervise(
        "swap",
        &gpu,
        "",
        &format!(
            "[[model]]\nname = \"a\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"3GiB\", \"memset\", \"0\", \"sleep\", \"100001\"]\ngpu_quota = \"3GiB\"\n",
            probe.display()
        ),
    );
    wait_for_log(&s, "a-0", "memset 0 -> 0");
    let a = probe_pid("100001");
    assert_eq!(observed_used(&gpu), 3 * GIB);
    assert_eq!(observed_processes(&gpu), [3 * GIB]);

    let (code, report) = power(&s, "a", "hibernate");
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["outcome"], "done");
    assert_eq!(report["moved_bytes"], 3 * GIB, "{report}");
    assert_eq!(report["pinned_bytes"], 0);
    assert_eq!(report["failed_bytes"], 0);
    assert_eq!(report["generation"], 1);
    assert_eq!(report["processes"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["processes"][0]["pid"], a);
    assert_eq!(observed_used(&gpu), 0);
    assert_eq!(observed_processes(&gpu), [0]);
    let model = s.model("a");
    assert_eq!(model["state"], "hibernated");
    assert_eq!(model["swap"]["hibernated"], true);
    assert_eq!(model["swap"]["last_out"]["moved_bytes"], 3 * GIB);

    // B, outside the supervisor, takes 3 GiB of the device: it fits beside A's nothing.
    let ledgers = TempDir::new("swap-b");
    let mut b = shimmed(driver_probe());
    b.env("CUVISOR_LEDGER_DIR", &ledgers.0)
        .env("CUVISOR_MODEL", "b")
        .env("CUVISOR_QUOTA", "3GiB");
    b.envs(node_env(&gpu));
    b.args(["init", "alloc", "3GiB", "memset", "0", "wait"]);
    let (mut b, _b_out, seen) = hold(b, 3);
    assert_eq!(seen[2], "memset 0 -> 0 ok", "{seen:?}");
    assert_eq!(
        observed_processes(&gpu),
        [0, 3 * GIB],
        "nothing of A's was evicted: it was on the host"
    );

    let (code, report) = power(&s, "a", "wake");
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["moved_bytes"], 3 * GIB, "{report}");
    assert_eq!(report["generation"], 2);
    assert_eq!(
        observed_processes(&gpu),
        [GIB, 3 * GIB],
        "A is back; B's least recently used memory made room"
    );
    let model = s.model("a");
    assert_eq!(model["state"], "running");
    assert_eq!(model["swap"]["hibernated"], false);
    let (code, metrics) = cuvisor::control::request(&s.socket, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    for line in [
        "cuvisor_hibernated{model=\"a\"} 0".to_owned(),
        format!(
            "cuvisor_swap_moved_bytes{{model=\"a\",direction=\"out\"}} {}",
            3 * GIB
        ),
        format!(
            "cuvisor_swap_moved_bytes{{model=\"a\",direction=\"in\"}} {}",
            3 * GIB
        ),
        "cuvisor_swap_pinned_bytes{model=\"a\"} 0".to_owned(),
        "cuvisor_swap_seconds_count{model=\"a\",direction=\"out\"} 1".to_owned(),
        "cuvisor_swap_seconds_count{model=\"a\",direction=\"in\"} 1".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    drop(b.stdin.take());
    assert!(b.wait().unwrap().success());
}

/// A model of several processes: each acknowledges. One that is stopped and then dies
/// during the hibernate does not hold it up. Device memory (`device` mode) cannot move:
/// it is reported pinned.
#[test]
fn every_process_answers_a_dead_one_is_not_waited_for_and_device_memory_is_pinned() {
    let state = TempDir::new("swap-many-state");
    let gpu = state.path("gpu-state");
    let probe = stub_dir().join("driver_probe");
    let rank = |mem: &str, marker: u32| {
        format!(
            "{} init alloc {mem} memset 0 sleep {marker} | sed -u s/^/{marker}:/",
            probe.display()
        )
    };
    let s = supervise(
        "swap-many",
        &gpu,
        "",
        &format!(
            "[[model]]\nname = \"tp\"\ncommand = \"sh\"\nargs = [\"-c\", \"{} & {} & {} & wait\"]\ngpu_quota = \"1GiB\"\n\
             [[model]]\nname = \"pinned\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"256MiB\", \"sleep\", \"200004\"]\nmode = \"device\"\ngpu_quota = \"1GiB\"\n",
            rank("128MiB", 200001),
            rank("256MiB", 200002),
            rank("64MiB", 200003),
            probe.display()
        ),
    );
    for marker in [200001, 200002, 200003] {
        wait_for_log(&s, "tp-0", &format!("{marker}:memset 0 -> 0"));
    }
    wait_for_log(&s, "pinned-0", "alloc 256MiB -> 0");

    let (code, report) = power(&s, "tp", "hibernate");
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["processes"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(report["moved_bytes"], 448 * MIB, "{report}");
    let mut moved: Vec<u64> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["moved_bytes"].as_u64().unwrap())
        .collect();
    moved.sort();
    assert_eq!(moved, [64 * MIB, 128 * MIB, 256 * MIB]);
    assert_eq!(
        observed_used(&gpu),
        256 * MIB,
        "only the pinned model is resident"
    );

    // One rank stopped: it cannot acknowledge; killed while the wake waits, it is not
    // waited for any more.
    let stopped = probe_pid("200002") as i32;
    // SAFETY: signals to a process of the test's own.
    assert_eq!(unsafe { libc_kill(stopped, libc::SIGSTOP) }, 0);
    let waking = std::thread::spawn({
        let socket = s.socket.clone();
        move || {
            cuvisor::control::request_waiting(
                &socket,
                "POST",
                "/models/tp/wake",
                Duration::from_secs(60),
            )
            .unwrap()
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waking.is_finished(), "the wake waits for the stopped rank");
    // SAFETY: as above.
    assert_eq!(unsafe { libc_kill(stopped, libc::SIGKILL) }, 0);
    let (code, body) = waking.join().unwrap();
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["outcome"], "done");
    assert_eq!(report["processes"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["moved_bytes"], 192 * MIB, "{report}");

    let (code, report) = power(&s, "pinned", "hibernate");
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["moved_bytes"], 0, "{report}");
    assert_eq!(report["pinned_bytes"], 256 * MIB, "{report}");
    assert_eq!(
        observed_used(&gpu),
        448 * MIB,
        "device memory stays on the GPU"
    );

    let (code, body) =
        cuvisor::control::request(&s.socket, "POST", "/models/nobody/hibernate").unwrap();
    assert_eq!(
        (code, body.as_str()),
        (404, "{\"error\":\"no model nobody\"}")
    );
}

/// A served model of two processes: the probe, which takes 3 GiB of the GPU (once
/// `flag` exists, if given) and holds it, and the OpenAI-style test server.
fn served(name: &str, marker: u32, flag: Option<&Path>, serve_extra: &str) -> String {
    let servers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers");
    let wait = flag.map_or(String::new(), |f| {
        format!("while [ ! -e {} ]; do sleep 0.02; done; ", f.display())
    });
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"sh\"\n\
         args = [\"-c\", \"({wait}{probe} init alloc 3GiB memset 0 sleep {marker}) & exec python3 {server} --port $PORT --name {name} --delay 0\"]\n\
         gpu_quota = \"3GiB\"\n[model.serve]\nhealth = \"/health\"\n{serve_extra}\n",
        probe = stub_dir().join("driver_probe").display(),
        server = servers.join("openai_model.py").display(),
    )
}

/// A chat completion for `model` through the front door: the HTTP status.
fn ask(http: u16, model: &str) -> u64 {
    ask_timed(http, model).0
}

/// A chat completion for `model` through the front door: the HTTP status and the
/// answer's `Server-Timing` header.
fn ask_timed(http: u16, model: &str) -> (u64, String) {
    let servers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers");
    let body = format!(
        "{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}"
    );
    let out = run(std::process::Command::new("python3")
        .arg(servers.join("client.py"))
        .args([&http.to_string(), "POST", "/v1/completions", &body]));
    assert!(out.status.success(), "{}", stderr(&out));
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let timing = first["headers"]["server-timing"]
        .as_str()
        .unwrap_or_default();
    (first["status"].as_u64().unwrap(), timing.to_owned())
}

/// The rest of the case, with the front door: A hibernated, B takes the GPU; a
/// request for A wakes it, and B, idle, is hibernated first to make room (in bulk, not
/// evicted page by page under A's faults); the request is answered.
#[test]
fn a_request_wakes_its_model_and_pushes_the_idle_one_out_first() {
    let state = TempDir::new("pressure-state");
    let gpu = state.path("gpu-state");
    let flag = state.path("b-may-allocate");
    let http = cuvisor::node::process::free_port().unwrap();
    let s = supervise(
        "pressure",
        &gpu,
        &format!("http = \"127.0.0.1:{http}\"\n"),
        &format!(
            "{}{}",
            served("a", 300001, None, ""),
            served("b", 300002, Some(&flag), "")
        ),
    );
    wait_for_log(&s, "a-0", "memset 0 -> 0");
    let (code, report) = power(&s, "a", "hibernate");
    assert_eq!((code, report["moved_bytes"].as_u64()), (200, Some(3 * GIB)));
    std::fs::write(&flag, "").unwrap();
    wait_for_log(&s, "b-0", "memset 0 -> 0");
    assert_eq!(observed_processes(&gpu), [0, 3 * GIB]);
    assert_eq!(ask(http, "b"), 200, "B served, then idle");

    assert_eq!(ask(http, "a"), 200);
    assert_eq!(
        observed_processes(&gpu),
        [0, 3 * GIB],
        "B left in bulk before A came back: nothing of B's was evicted\n{}",
        s.supervisor_log()
    );
    let (a, b) = (s.model("a"), s.model("b"));
    assert_eq!(a["swap"]["hibernated"], false, "{a}");
    assert_eq!(a["swap"]["last_in"]["moved_bytes"], 3 * GIB, "{a}");
    assert_eq!(b["state"], "hibernated", "{b}");
    assert_eq!(b["swap"]["last_out"]["moved_bytes"], 3 * GIB, "{b}");
    assert!(
        s.supervisor_log()
            .contains("model b: hibernating to make room for model a"),
        "{}",
        s.supervisor_log()
    );
    // B's next request wakes it in turn, pushing A (now idle) out.
    assert_eq!(ask(http, "b"), 200);
    assert_eq!(s.model("a")["state"], "hibernated");
    assert_eq!(s.model("b")["swap"]["hibernated"], false);
}

/// `serve.hibernate_after`: an idle model hibernates by itself, and its next request
/// wakes it.
#[test]
fn an_idle_model_hibernates_after_its_delay_and_wakes_for_a_request() {
    let state = TempDir::new("idle-state");
    let gpu = state.path("gpu-state");
    let http = cuvisor::node::process::free_port().unwrap();
    let s = supervise(
        "idle",
        &gpu,
        &format!("http = \"127.0.0.1:{http}\"\n"),
        &served("a", 300003, None, "hibernate_after = \"300ms\"\n"),
    );
    wait_for_log(&s, "a-0", "memset 0 -> 0");
    wait_until("the hibernation", Duration::from_secs(20), || {
        s.model("a")["state"] == "hibernated"
            && s.model("a")["swap"]["last_out"]["outcome"] == "done"
    });
    assert_eq!(observed_used(&gpu), 0);
    assert!(
        s.supervisor_log()
            .contains("model a: idle for serve.hibernate_after: hibernating")
    );
    let (code, timing) = ask_timed(http, "a");
    assert_eq!(code, 200);
    // The answer says the request waited for a wake.
    assert!(
        timing.starts_with("cuvisor-queue;dur=") && timing.ends_with(";desc=\"wake\""),
        "{timing}"
    );
    let a = s.model("a");
    assert_eq!(a["swap"]["hibernated"], false, "{a}");
    assert_eq!(a["swap"]["last_in"]["moved_bytes"], 3 * GIB, "{a}");
    assert_eq!(observed_used(&gpu), 3 * GIB);
    let (code, timing) = ask_timed(http, "a");
    assert_eq!(code, 200);
    assert!(timing.ends_with(";desc=\"ready\""), "{timing}");
}

/// Issue 26, defect 5: a manual wake resets the idle clock. A model with
/// `hibernate_after` that an operator wakes stays awake for that long before the policy
/// hibernates it again (before: within a tick, the instances having been idle since long
/// before); a manual hibernate holds until a request or a wake.
#[test]
fn a_manual_wake_resets_the_idle_clock() {
    let state = TempDir::new("manual-wake-state");
    let gpu = state.path("gpu-state");
    let http = cuvisor::node::process::free_port().unwrap();
    let s = supervise(
        "manual-wake",
        &gpu,
        &format!("http = \"127.0.0.1:{http}\"\n"),
        &served("a", 300004, None, "hibernate_after = \"3s\"\n"),
    );
    wait_for_log(&s, "a-0", "memset 0 -> 0");
    wait_until("the first hibernation", Duration::from_secs(20), || {
        s.model("a")["swap"]["last_out"]["outcome"] == "done"
    });
    // Hibernated (by the policy, after 3 s idle) it stays so with no request.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.model("a")["state"], "hibernated");
    let (code, report) = power(&s, "a", "wake");
    assert_eq!((code, report["outcome"].as_str()), (200, Some("done")));
    let woke = std::time::Instant::now();
    // Well inside its 3 s: still awake.
    while woke.elapsed() < Duration::from_millis(1500) {
        let a = s.model("a");
        assert_eq!(
            a["swap"]["hibernated"],
            false,
            "{a}\n{}",
            s.supervisor_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the policy still holds after it.
    wait_until("the next hibernation", Duration::from_secs(20), || {
        s.model("a")["swap"]["hibernated"] == true
    });
    assert!(
        woke.elapsed() >= Duration::from_secs(3),
        "{:?}",
        woke.elapsed()
    );
}

/// `freeze_hibernated`: the hibernated model's workers are frozen (cgroup freezer), and
/// thawed before the wake (a frozen process could not move anything back) and before
/// they are stopped.
#[test]
fn a_hibernated_model_can_be_frozen_and_thawed() {
    let state = TempDir::new("freeze-state");
    let gpu = state.path("gpu-state");
    let probe = stub_dir().join("driver_probe");
    let mut s = supervise(
        "freeze",
        &gpu,
        "",
        &format!(
            "[[model]]\nname = \"a\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"1GiB\", \"memset\", \"0\", \"sleep\", \"400001\"]\ngpu_quota = \"1GiB\"\nfreeze_hibernated = true\n",
            probe.display()
        ),
    );
    wait_for_log(&s, "a-0", "memset 0 -> 0");
    let freezer = s
        .cgroup_dirs()
        .into_iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/freezer"))
        .expect("the freezer cgroup");
    let state_of = || {
        let leaf = std::fs::read_dir(&freezer)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.path().is_dir())
            .expect("the worker's freezer cgroup")
            .path();
        std::fs::read_to_string(leaf.join("freezer.state"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(state_of(), "THAWED");
    let (code, report) = power(&s, "a", "hibernate");
    assert_eq!(code, 200, "{report}");
    assert_eq!(state_of(), "FROZEN");
    assert_eq!(s.model("a")["swap"]["frozen"], true);
    let (code, report) = power(&s, "a", "wake");
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        report["moved_bytes"], GIB,
        "a thawed process moved its memory back"
    );
    assert_eq!(state_of(), "THAWED");
    assert_eq!(s.model("a")["swap"]["frozen"], false);
    // Frozen again, the supervisor still stops it within its grace period.
    power(&s, "a", "hibernate");
    assert_eq!(state_of(), "FROZEN");
    let (code, took) = s.stop();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(pgrep("400001").is_empty(), "the worker is gone");
}

/// The threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == name)
        .count()
}

/// Without a supervisor: a process under the shim with `CUVISOR_HIBERNATE=on` has one
/// thread for it (one without has none), and `cuvisor ledger hibernate` and `wake` move
/// its memory. While hibernated, the process stays correct: its data is intact and it
/// can allocate and use more.
#[test]
fn ledger_hibernate_and_wake_work_without_a_supervisor_and_the_process_stays_correct() {
    let dir = TempDir::new("ledger-power");
    let probe = |model: &str, hibernate: Option<&str>| {
        let mut cmd = shimmed(driver_probe());
        cmd.env("CUVISOR_LEDGER_DIR", &dir.0)
            .env("CUVISOR_MODEL", model)
            .env("FAKE_CUDA_DEVICE_MEM", "4GiB")
            .args(
                "init alloc 64MiB roundtrip 0 wait alloc 64MiB roundtrip 1 roundtrip 0 wait"
                    .split(' '),
            );
        if let Some(h) = hibernate {
            cmd.env("CUVISOR_HIBERNATE", h);
        }
        cmd
    };
    let (mut plain, _plain_out, _) = hold(probe("plain", None), 3);
    assert_eq!(threads_named(plain.id(), "cuvisor-power"), 0);
    let (mut p, mut out, seen) = hold(probe("m", Some("on")), 3);
    assert_eq!(seen[2], "roundtrip 0 -> 0 ok", "{seen:?}");
    // The thread names itself when it runs: soon after the attach.
    wait_until("the thread", Duration::from_secs(5), || {
        threads_named(p.id(), "cuvisor-power") == 1
    });

    let cuvisor = |action: &str, model: &str| {
        run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
            .args(["ledger", action, "--model", model, "--dir"])
            .arg(&dir.0)
            .env_remove("LD_PRELOAD"))
    };
    let out_h = cuvisor("hibernate", "m");
    assert!(out_h.status.success(), "{}", stderr(&out_h));
    let line = String::from_utf8_lossy(&out_h.stdout).into_owned();
    assert!(
        line.starts_with("model m: hibernate done: 64.0 MiB moved, 0 B pinned, 1 process(es), "),
        "{line}"
    );
    // Hibernated, the process goes on: more memory, and what it had, intact.
    use std::io::{BufRead, Write};
    writeln!(p.stdin.as_mut().unwrap()).unwrap();
    let mut next = |expected: &str| {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), expected);
    };
    next("wait -> 0");
    next("alloc 64MiB -> 0 #1");
    next("roundtrip 1 -> 0 ok");
    next("roundtrip 0 -> 0 ok");
    // The wake brings back everything the process holds now.
    let out_w = cuvisor("wake", "m");
    assert!(out_w.status.success(), "{}", stderr(&out_w));
    assert!(
        String::from_utf8_lossy(&out_w.stdout)
            .starts_with("model m: wake done: 128.0 MiB moved, 0 B pinned, 1 process(es), "),
        "{}",
        String::from_utf8_lossy(&out_w.stdout)
    );
    // The process without the thread is not waited for (its model: nobody listens).
    let out_plain = cuvisor("hibernate", "plain");
    assert!(out_plain.status.success(), "{}", stderr(&out_plain));
    assert!(
        String::from_utf8_lossy(&out_plain.stdout)
            .starts_with("model plain: hibernate done: 0 B moved, 0 B pinned, 0 process(es)")
    );
    // A model with no ledger: the error says so, exit status 1.
    let missing = cuvisor("hibernate", "nobody");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("nobody.ledger"),
        "{}",
        stderr(&missing)
    );
    for child in [&mut p, &mut plain] {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}

/// `cuvisor exec --hibernate` gives the program's processes the thread; `cuvisor
/// hibernate` asks a supervisor.
#[test]
fn exec_and_the_supervisor_cli_speak_hibernation() {
    let dir = TempDir::new("exec-power");
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .args(["exec", "--hibernate", "--model", "m", "--shim"])
        .arg(shim_path())
        .arg("--dir")
        .arg(&dir.0)
        .args(["--", "sh", "-c", "echo $CUVISOR_HIBERNATE"])
        .env("CUVISOR_HIBERNATE", "off")
        .env_remove("LD_PRELOAD"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "on\n",
        "{}",
        stderr(&out)
    );

    let state = TempDir::new("cli-power-state");
    let probe = stub_dir().join("driver_probe");
    let s = supervise(
        "cli-power",
        &state.path("gpu-state"),
        "",
        &format!(
            "[[model]]\nname = \"a\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"1GiB\", \"memset\", \"0\", \"sleep\", \"500001\"]\n",
            probe.display()
        ),
    );
    wait_for_log(&s, "a-0", "memset 0 -> 0");
    let cli = |args: &[&str]| {
        run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
            .args(args)
            .arg("--socket")
            .arg(&s.socket)
            .env_remove("LD_PRELOAD"))
    };
    let out = cli(&["hibernate", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("model a: hibernate done: 1.0 GiB moved, 0 B pinned, 1 process(es), "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let status = cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout)
            .lines()
            .any(|l| l.starts_with("a                    hibernated ")),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let out = cli(&["wake", "a", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["moved_bytes"], GIB);
    let out = cli(&["wake", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    // A sentence, not the raw answer (issue 26, defect 7).
    assert_eq!(stderr(&out).trim_end(), "cuvisor: no model nobody");
}

/// The request's child process keeps nothing of its caller's open: a descriptor the
/// caller closes (a launch's pipe, a client's connection) is closed at once, not when the
/// child's wait ends.
#[test]
fn the_request_child_holds_none_of_the_callers_descriptors() {
    let dir = TempDir::new("power-fds");
    let mut cmd = shimmed(driver_probe());
    cmd.env("CUVISOR_LEDGER_DIR", &dir.0)
        .env("CUVISOR_MODEL", "m")
        .env("CUVISOR_HIBERNATE", "on")
        .args(["init", "alloc", "1MiB", "wait"]);
    let (mut p, _out, _) = hold(cmd, 2);
    // Its listener starts beside its first allocation: once it listens, stopped, it
    // cannot acknowledge, and the request waits its whole timeout. (Stopped before it
    // listens, it would not be waited for at all.)
    wait_until("the probe listens", Duration::from_secs(10), || {
        cuvisor::ledger::read_snapshot(&dir.0, "m")
            .is_ok_and(|s| s.processes.iter().any(|p| p.power.listening))
    });
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc_kill(p.id() as i32, libc::SIGSTOP) }, 0);
    let (read_end, write_end) = std::io::pipe().unwrap();
    let ledgers = dir.0.clone();
    let request = std::thread::spawn(move || {
        cuvisor::ledger::power_isolated(&ledgers, "m", true, Duration::from_secs(6))
    });
    std::thread::sleep(Duration::from_millis(300)); // the child is forked and waiting
    let closed_at = std::time::Instant::now();
    drop(write_end);
    let mut rest = Vec::new();
    use std::io::Read;
    (&read_end).read_to_end(&mut rest).unwrap();
    // A child that held the pipe would hold it for its whole wait (6 s); other tests'
    // children, forked at the same moment on a loaded machine, may hold it for an instant.
    assert!(
        closed_at.elapsed() < Duration::from_secs(2),
        "EOF only after {:?}: the child held the pipe",
        closed_at.elapsed()
    );
    let outcome = request.join().unwrap().unwrap().outcome;
    assert!(
        matches!(outcome, cuvisor::ledger::power::Outcome::TimedOut(ref s) if s.len() == 1),
        "{outcome:?}"
    );
    // SAFETY: as above.
    unsafe { libc_kill(p.id() as i32, libc::SIGKILL) };
    let _ = p.wait();
}

/// Model `a` of one probe (its command line marked with `marker`) whose process is
/// stopped, so that it cannot answer, asked to hibernate with `swap_timeout`: the answer,
/// how long it took, and the probe's pid.
fn hibernate_a_stopped_probe(
    tag: &str,
    marker: &str,
    swap_timeout: &str,
) -> (u16, serde_json::Value, Duration, u32) {
    let state = TempDir::new(&format!("{tag}-state"));
    let probe = stub_dir().join("driver_probe");
    let s = supervise(
        tag,
        &state.path("gpu-state"),
        "",
        &format!(
            "[[model]]\nname = \"a\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"64MiB\", \"sleep\", \"{marker}\"]\nswap_timeout = \"{swap_timeout}\"\n",
            probe.display()
        ),
    );
    wait_for_log(&s, "a-0", "alloc 64MiB -> 0");
    let pid = probe_pid(marker);
    // SAFETY: signals to a process of the test's own.
    assert_eq!(unsafe { libc_kill(pid as i32, libc::SIGSTOP) }, 0);
    let started = std::time::Instant::now();
    let (code, report) = power(&s, "a", "hibernate");
    // SAFETY: as above.
    unsafe { libc_kill(pid as i32, libc::SIGCONT) };
    (code, report, started.elapsed(), pid)
}

/// A process that cannot answer (stopped) makes the request time out after the model's
/// `swap_timeout`, and the answer names it (504).
#[test]
fn a_request_that_times_out_names_who_did_not_answer() {
    let (code, report, took, pid) = hibernate_a_stopped_probe("swap-timeout", "600001", "1s");
    assert_eq!(code, 504, "{report}");
    assert_eq!(report["outcome"], "timed_out");
    assert_eq!(report["pending"], serde_json::json!([pid]), "{report}");
    assert!(took < Duration::from_secs(10));
}

/// Issue 25, finding 18: a hibernate answered after the control API's 30 s connection
/// limit (a `swap_timeout` may be 5 minutes) still reaches its caller: here a stopped
/// process makes it wait 32 s, and the caller gets the 504 naming it.
#[test]
fn an_answer_that_takes_longer_than_30_s_reaches_its_caller() {
    let (code, report, took, pid) = hibernate_a_stopped_probe("swap-timeout-long", "600002", "32s");
    assert!(took >= Duration::from_secs(32));
    assert_eq!(code, 504, "{report}");
    assert_eq!(report["outcome"], "timed_out");
    assert_eq!(report["pending"], serde_json::json!([pid]), "{report}");
}
