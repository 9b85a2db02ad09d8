//! `cuvisor run` as a black box: as root, on this host's cgroups (v1 on our CI machines),
//! with small shell programs and the fake GPU as workers.

mod common;
use common::supervisor::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn workers_run_in_their_own_pid_mount_and_uts_namespaces() {
    let mut s = Supervisor::start(
        "ns",
        "[[model]]\nname = \"nsworker\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo pid=$$ host=$(hostname) mnt=$(readlink /proc/self/ns/mnt) pidns=$(readlink /proc/self/ns/pid) procs=$(ls /proc | grep -c '^[0-9]'); exec sleep 1000\"]\n",
    );
    wait_until("the worker's line", Duration::from_secs(5), || {
        !s.log("nsworker-0").is_empty()
    });
    let line = s.log("nsworker-0");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        field("pid"),
        "2",
        "the worker is PID 2 under cuvisor's init: {line}"
    );
    assert_eq!(field("host"), "nsworker");
    assert_ne!(
        field("mnt"),
        std::fs::read_link("/proc/self/ns/mnt")
            .unwrap()
            .to_string_lossy()
    );
    assert_ne!(
        field("pidns"),
        std::fs::read_link("/proc/self/ns/pid")
            .unwrap()
            .to_string_lossy()
    );
    let procs: u32 = field("procs").parse().unwrap();
    assert!(
        procs <= 6,
        "a fresh /proc shows only the namespace's processes: {line}"
    );
    assert_eq!(s.model("nsworker")["state"], "running");
    assert_eq!(s.stop().0, 0);
}

#[test]
fn status_and_metrics_report_a_worker_on_the_fake_gpu() {
    let mut s = Supervisor::start(
        "gpu",
        &format!(
            "[[model]]\nname = \"llama\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"3M\", \"alloc\", \"6M\", \"sleep\", \"100000\"]\nenv = {{ LD_LIBRARY_PATH = \"{}\" }}\ngpu_quota = \"8MiB\"\nmemory_limit = \"512MiB\"\n",
            stub_dir().join("driver_probe").display(),
            stub_dir().display()
        ),
    );
    wait_until("the allocation", Duration::from_secs(5), || {
        s.log("llama-0").contains("alloc 6M -> 2")
    });
    let m = s.model("llama");
    assert_eq!(
        (
            m["state"].as_str(),
            m["gpu_used_bytes"].as_u64(),
            m["gpu_quota_bytes"].as_u64()
        ),
        (Some("running"), Some(3 * MIB), Some(8 * MIB))
    );
    assert_eq!(
        (m["gpu_peak_bytes"].as_u64(), m["gpu_refusals"].as_u64()),
        (Some(3 * MIB), Some(1))
    );
    assert!(m["host_memory_bytes"].as_u64().unwrap() > 0);
    let (code, metrics) = cuvisor::control::request(&s.socket, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    // The one GPU the model met, with the quota, usage and refusal there.
    let gpus = m["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 1, "{m}");
    let uuid = gpus[0]["uuid"].as_str().unwrap();
    assert!(uuid.starts_with("GPU-") && uuid.len() == 40, "{uuid}");
    assert_eq!(
        [
            "quota_bytes",
            "physical_bytes",
            "used_bytes",
            "peak_bytes",
            "refusals"
        ]
        .map(|k| gpus[0][k].as_u64()),
        [
            Some(8 * MIB),
            Some(16 << 30),
            Some(3 * MIB),
            Some(3 * MIB),
            Some(1)
        ]
    );
    for line in [
        &format!("cuvisor_gpu_quota_bytes{{model=\"llama\",gpu=\"{uuid}\"}} 8388608"),
        &format!("cuvisor_gpu_used_bytes{{model=\"llama\",gpu=\"{uuid}\"}} 3145728"),
        &format!("cuvisor_gpu_peak_bytes{{model=\"llama\",gpu=\"{uuid}\"}} 3145728"),
        &format!("cuvisor_gpu_oom_refusals_total{{model=\"llama\",gpu=\"{uuid}\"}} 1"),
        "cuvisor_running_instances{model=\"llama\"} 1",
        "cuvisor_restarts_total{model=\"llama\"} 0",
        "cuvisor_oom_kills_total{model=\"llama\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"));
    let table = run(Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("status")
        .arg("--socket")
        .arg(&s.socket));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("llama ")
            && l.contains("running")
            && l.contains("3.0 MiB / 8.0 MiB")),
        "{table}"
    );
    assert_eq!(s.stop().0, 0);
    assert!(
        s.supervisor_log()
            .contains("model llama: reclaimed 3145728 bytes"),
        "{}",
        s.supervisor_log()
    );
}

#[test]
fn an_oom_killed_worker_is_reported_as_such_and_restarted() {
    let mut s = Supervisor::start(
        "oom",
        "[[model]]\nname = \"hog\"\ncommand = \"python3\"\nargs = [\"-c\", \"b = b'x' * (300 << 20)\"]\nmemory_limit = \"64MiB\"\nrestart = \"always\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"200ms\"\n",
    );
    wait_until("an OOM kill and a restart", Duration::from_secs(15), || {
        let m = s.model("hog");
        m["oom_kills"].as_u64() >= Some(2) && m["restarts"].as_u64() >= Some(2)
    });
    assert!(
        s.supervisor_log()
            .contains("model hog: instance 0 killed by the OOM killer"),
        "{}",
        s.supervisor_log()
    );
    let (_, metrics) = cuvisor::control::request(&s.socket, "GET", "/metrics").unwrap();
    let kills: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cuvisor_oom_kills_total{model=\"hog\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(kills >= 2, "{metrics}");
    assert_eq!(s.stop().0, 0);
}

#[test]
fn the_pids_limit_holds() {
    let mut s = Supervisor::start(
        "pids",
        // 20 forks asked for; the ones refused are counted, not fatal.
        "[[model]]\nname = \"forker\"\ncommand = \"python3\"\nargs = [\"-c\", \"import os, time\\nn = 0\\nfor i in range(20):\\n    try:\\n        if os.fork() == 0:\\n            time.sleep(1000)\\n            os._exit(0)\\n        n += 1\\n    except OSError:\\n        pass\\nprint('forked', n, flush=True)\\ntime.sleep(1000)\"]\npids_limit = 8\nrestart = \"never\"\n",
    );
    wait_until(
        "the worker to finish forking",
        Duration::from_secs(5),
        || s.log("forker-0").contains("forked"),
    );
    let forked: u32 = s
        .log("forker-0")
        .trim()
        .strip_prefix("forked ")
        .unwrap()
        .parse()
        .unwrap();
    let procs = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/pids")
            .join(&s.cgroup_name)
            .join("forker-0/cgroup.procs"),
    )
    .unwrap();
    let n = procs.lines().count();
    // cuvisor's init, the worker and its children: 8 at most.
    assert_eq!(n, 8, "{n} processes in a cgroup limited to 8");
    assert_eq!(forked, 6, "the other 14 forks were refused");
    assert_eq!(s.stop().0, 0);
}

#[test]
fn restart_backoff_grows_and_caps() {
    let mut s = Supervisor::start(
        "backoff",
        "[[model]]\nname = \"crashy\"\ncommand = \"false\"\nrestart = \"on-failure\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"400ms\"\n",
    );
    let mut seen = std::collections::BTreeSet::new();
    let end = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < end {
        let m = s.model("crashy");
        if let Some(b) = m["instances"][0]["backoff_ms"].as_u64() {
            seen.insert(b);
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    assert_eq!(
        seen.iter().copied().collect::<Vec<_>>(),
        [100, 200, 400],
        "backoffs seen: {seen:?}"
    );
    let m = s.model("crashy");
    assert!(m["restarts"].as_u64().unwrap() >= 5, "{m}");
    assert_eq!(m["instances"][0]["last_exit"], 1);
    assert_eq!(s.stop().0, 0);
}

#[test]
fn sigterm_leaves_no_process_and_no_cgroup_behind() {
    let marker = format!("{}", 900_000 + std::process::id() % 90_000);
    let mut s = Supervisor::start(
        "term",
        &format!(
            "[[model]]\nname = \"polite\"\ncommand = \"sleep\"\nargs = [\"{marker}1\"]\nmemory_limit = \"64MiB\"\ninstances = 2\n\n\
             [[model]]\nname = \"stubborn\"\ncommand = \"sh\"\nargs = [\"-c\", \"trap '' TERM; sleep {marker}2; sleep {marker}2\"]\nmemory_limit = \"64MiB\"\npids_limit = 16\nisolation = {{ pid = false }}\n"
        ),
    );
    wait_until("three workers", Duration::from_secs(5), || {
        pgrep(&format!("^sleep {marker}")).len() == 3
    });
    assert_eq!(
        s.cgroup_dirs().len(),
        3,
        "a cgroup in each v1 controller while running"
    );
    let (code, took) = s.stop();
    assert_eq!(code, 0);
    assert!(
        took >= Duration::from_millis(600),
        "the stubborn worker holds until the grace period ends ({took:?})"
    );
    assert!(
        pgrep(&format!("sleep {marker}")).is_empty(),
        "no worker is left"
    );
    assert!(pgrep(&format!("^sleep {marker}")).is_empty());
    assert!(
        s.cgroup_dirs().is_empty(),
        "no cgroup is left: {:?}",
        s.cgroup_dirs()
    );
    assert!(!s.socket.exists());
    assert!(s.supervisor_log().contains("grace period over: SIGKILL"));
}

#[test]
fn a_worker_that_double_forks_is_still_reaped() {
    // Without a PID namespace the orphan comes to the supervisor (a subreaper).
    let mut s = Supervisor::start(
        "orphan",
        "[[model]]\nname = \"daemonizer\"\ncommand = \"sh\"\nargs = [\"-c\", \"(sleep 0.3 &); exit 0\"]\nrestart = \"never\"\nisolation = { pid = false }\n",
    );
    wait_until("the worker to exit", Duration::from_secs(5), || {
        s.model("daemonizer")["state"] == "exited"
    });
    std::thread::sleep(Duration::from_millis(800));
    let out = run(Command::new("ps")
        .args(["-o", "pid=,stat=", "--ppid"])
        .arg(s.pid().to_string()));
    let zombies: Vec<String> = lines(&out)
        .into_iter()
        .filter(|l| l.contains('Z'))
        .collect();
    assert!(
        zombies.is_empty(),
        "zombies under the supervisor: {zombies:?}"
    );
    assert_eq!(s.stop().0, 0);
    // With a PID namespace the orphan dies with its namespace when the worker exits.
    let marker = format!("{}", 800_000 + std::process::id() % 90_000);
    let mut s = Supervisor::start(
        "orphan-ns",
        &format!(
            "[[model]]\nname = \"daemonizer\"\ncommand = \"sh\"\nargs = [\"-c\", \"(sleep {marker} &); sleep 0.2; exit 0\"]\nrestart = \"never\"\n"
        ),
    );
    wait_until("the worker to exit", Duration::from_secs(5), || {
        s.model("daemonizer")["state"] == "exited"
    });
    wait_until("the orphan to be gone", Duration::from_secs(2), || {
        pgrep(&format!("sleep {marker}")).is_empty()
    });
    assert_eq!(s.stop().0, 0);
}

#[test]
fn a_broken_model_does_not_take_down_the_others_and_models_can_be_controlled() {
    let mut s = Supervisor::start(
        "control",
        "[[model]]\nname = \"broken\"\ncommand = \"/no/such/binary\"\nrestart = \"never\"\n\n[[model]]\nname = \"fine\"\ncommand = \"sleep\"\nargs = [\"1000\"]\n",
    );
    let broken = s.model("broken");
    assert_eq!(broken["state"], "failed");
    assert!(
        broken["instances"][0]["error"]
            .as_str()
            .unwrap()
            .contains("/no/such/binary: not an executable file"),
        "{broken}"
    );
    assert_eq!(s.model("fine")["state"], "running");
    let (code, _) = cuvisor::control::request(&s.socket, "POST", "/models/fine/stop").unwrap();
    assert_eq!(code, 200);
    wait_until("fine to stop", Duration::from_secs(5), || {
        s.model("fine")["state"] == "stopped"
    });
    let (code, _) = cuvisor::control::request(&s.socket, "POST", "/models/fine/start").unwrap();
    assert_eq!(code, 200);
    wait_until("fine to run", Duration::from_secs(5), || {
        s.model("fine")["state"] == "running"
    });
    let pid = s.model("fine")["instances"][0]["pid"].as_i64();
    let (code, _) = cuvisor::control::request(&s.socket, "POST", "/models/fine/restart").unwrap();
    assert_eq!(code, 200);
    wait_until(
        "fine to be running again with a new process",
        Duration::from_secs(5),
        || {
            let m = s.model("fine");
            m["state"] == "running" && m["instances"][0]["pid"].as_i64() != pid
        },
    );
    assert_eq!(
        cuvisor::control::request(&s.socket, "POST", "/models/nobody/stop")
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        cuvisor::control::request(&s.socket, "DELETE", "/models")
            .unwrap()
            .0,
        405
    );
    // A second supervisor on the same socket (and other cgroups) is refused, clearly.
    let config = std::fs::read_to_string(s.dir.path("cuvisor.toml")).unwrap();
    let other = s.dir.path("other.toml");
    std::fs::write(
        &other,
        config.replace(&s.cgroup_name, &format!("{}-other", s.cgroup_name)),
    )
    .unwrap();
    let out = run(s.command(&other).stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("control.sock: in use by a running supervisor"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_file(
        Path::new(cuvisor::config::RUN_DIR).join(format!("{}-other.lock", s.cgroup_name)),
    );
    assert_eq!(s.stop().0, 0);
    assert!(
        s.cgroup_dirs().is_empty(),
        "a failed start leaves no cgroup: {:?}",
        s.cgroup_dirs()
    );
}

#[test]
fn stop_waits_for_the_worker_escalates_to_sigkill_and_restart_ignores_the_policy() {
    // A worker that ignores SIGTERM, under restart = "never": stop must not report
    // "stopped" while it lives, must SIGKILL it after the grace period (700ms here), and
    // an operator's start or restart must work whatever the restart policy says.
    let mut s = Supervisor::start(
        "stop",
        "[[model]]\nname = \"deaf\"\ncommand = \"sh\"\nargs = [\"-c\", \"trap '' TERM; echo up; while :; do sleep 0.05; done\"]\nrestart = \"never\"\n",
    );
    wait_until("the worker", Duration::from_secs(5), || {
        s.model("deaf")["state"] == "running"
    });
    let first = s.model("deaf")["instances"][0]["pid"].as_i64().unwrap();
    let t = Instant::now();
    assert_eq!(
        cuvisor::control::request(&s.socket, "POST", "/models/deaf/stop")
            .unwrap()
            .0,
        200
    );
    let m = s.model("deaf");
    assert_eq!(m["state"], "stopping", "{m}");
    assert_eq!(m["instances"][0]["pid"].as_i64(), Some(first));
    // Asked to start while it is still stopping: it starts again once the old one is gone.
    assert_eq!(
        cuvisor::control::request(&s.socket, "POST", "/models/deaf/start")
            .unwrap()
            .0,
        200
    );
    wait_until("a new worker", Duration::from_secs(5), || {
        let m = s.model("deaf");
        m["state"] == "running" && m["instances"][0]["pid"].as_i64() != Some(first)
    });
    assert!(
        t.elapsed() >= Duration::from_millis(650),
        "the old worker ignored SIGTERM until the grace period ended ({:?})",
        t.elapsed()
    );
    assert!(
        s.supervisor_log()
            .contains("model deaf: instance 0 still running after the grace period: SIGKILL"),
        "{}",
        s.supervisor_log()
    );
    // A restart replaces the worker although the policy is "never".
    let second = s.model("deaf")["instances"][0]["pid"].as_i64().unwrap();
    assert_eq!(
        cuvisor::control::request(&s.socket, "POST", "/models/deaf/restart")
            .unwrap()
            .0,
        200
    );
    wait_until("a third worker", Duration::from_secs(5), || {
        let m = s.model("deaf");
        m["state"] == "running" && m["instances"][0]["pid"].as_i64() != Some(second)
    });
    let m = s.model("deaf");
    assert_eq!(
        m["restarts"], 0,
        "restarts count the policy's restarts, not an operator's: {m}"
    );
    // A plain stop ends in "stopped", with no process left.
    let third = m["instances"][0]["pid"].as_i64().unwrap();
    cuvisor::control::request(&s.socket, "POST", "/models/deaf/stop").unwrap();
    wait_until("stopped", Duration::from_secs(5), || {
        s.model("deaf")["state"] == "stopped"
    });
    assert!(!Path::new(&format!("/proc/{third}")).exists());
    assert_eq!(s.model("deaf")["instances"][0]["pid"], Value::Null);
    assert_eq!(s.stop().0, 0);
}

#[test]
fn a_worker_runs_as_its_user_and_group() {
    let mut s = Supervisor::start(
        "user",
        "[[model]]\nname = \"unprivileged\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo uid=$(id -u) gid=$(id -g) groups=$(id -G); exec sleep 1000\"]\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
    );
    wait_until("the worker's line", Duration::from_secs(5), || {
        s.log("unprivileged-0").contains("uid=")
    });
    assert_eq!(
        s.log("unprivileged-0").trim(),
        "uid=65534 gid=65534 groups=65534",
        "no supplementary group of root is kept"
    );
    assert_eq!(s.stop().0, 0);
}

#[test]
fn workers_keep_starting_while_the_control_api_is_busy() {
    // The supervisor has threads (control connections, output forwarding) that allocate
    // while the main thread clones workers: the cloned child must take no lock another
    // thread could have held (glibc's fork() takes malloc's), or it hangs forever.
    let mut s = Supervisor::start(
        "busy",
        "[[model]]\nname = \"flappy\"\ncommand = \"true\"\nrestart = \"always\"\nbackoff_initial = \"1ms\"\nbackoff_max = \"1ms\"\n",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let (socket, stop) = (s.socket.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = cuvisor::control::request(&socket, "GET", "/metrics");
                }
            })
        })
        .collect();
    let mut last = 0;
    for _ in 0..6 {
        // Every half second the worker must have been replaced more times.
        std::thread::sleep(Duration::from_millis(500));
        let restarts = s.model("flappy")["restarts"].as_u64().unwrap();
        assert!(
            restarts > last,
            "restarts stuck at {restarts}: a launch hangs\n{}",
            s.supervisor_log()
        );
        last = restarts;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pollers {
        p.join().unwrap();
    }
    assert_eq!(s.stop().0, 0);
}

/// Runs its arguments in a mount namespace of their own where the cgroup controllers are
/// mounted read-only, as in many containers.
const READ_ONLY_CGROUPS: &[&str] = &[
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "for c in memory cpu pids unified; do mount -o remount,bind,ro /sys/fs/cgroup/$c || exit 99; done; exec \"$@\"",
    "sh",
];

#[test]
fn read_only_cgroups_refuse_limits_unless_allowed_and_say_so() {
    let models = "[[model]]\nname = \"limited\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nmemory_limit = \"64MiB\"\n";
    let dir = TempDir::new("rocg");
    std::fs::write(
        dir.path("cuvisor.toml"),
        format!(
            "[supervisor]\nsocket = \"{}\"\nledger_dir = \"{}\"\n\n{models}",
            dir.path("control.sock").display(),
            dir.path("ledgers").display()
        ),
    )
    .unwrap();
    let out = run(Command::new("timeout")
        .arg("20")
        .args(READ_ONLY_CGROUPS)
        .arg(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("run")
        .arg("--shim")
        .arg(shim_path())
        .arg(dir.path("cuvisor.toml")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("model limited: its host limits cannot be enforced: the cgroup v1 memory controller is not writable"),
        "{}",
        stderr(&out)
    );
    // Allowed: it runs, and says loudly that nothing is enforced.
    let mut s = Supervisor::start_with(
        "rocg-allowed",
        "allow_unlimited = true",
        READ_ONLY_CGROUPS,
        models,
    );
    wait_until("the worker", Duration::from_secs(5), || {
        s.model("limited")["state"] == "running"
    });
    assert!(
        s.supervisor_log()
            .contains("WARN cuvisor: model limited: the cgroup v1 memory controller is not writable (a read-only mount, or not root): its host limits are NOT enforced"),
        "{}",
        s.supervisor_log()
    );
    assert_eq!(s.stop().0, 0);
}

#[test]
fn workers_die_with_a_killed_supervisor_even_as_another_user() {
    // SIGKILL leaves cuvisor no chance to stop anything: the parent-death signal must.
    // Changing credentials clears it, so a worker run as another user must get it again.
    // The init of a user namespace changes its credentials too (it becomes the
    // namespace's root) and must get it again as well.
    let marker = format!("{}", 700_000 + std::process::id() % 90_000);
    let mut s = Supervisor::start_with(
        "pdeath",
        "userns_range = \"4000000-4999999\"\n",
        &[],
        &format!(
            "[[model]]\nname = \"plain\"\ncommand = \"sleep\"\nargs = [\"{marker}1\"]\nuser = \"nobody\"\nisolation = {{ pid = false }}\n\n\
             [[model]]\nname = \"namespaced\"\ncommand = \"sleep\"\nargs = [\"{marker}2\"]\nuser = \"nobody\"\n\n\
             [[model]]\nname = \"userns\"\ncommand = \"sleep\"\nargs = [\"{marker}3\"]\nisolation = {{ user = true }}\n"
        ),
    );
    wait_until("the three workers", Duration::from_secs(5), || {
        pgrep(&format!("^sleep {marker}")).len() == 3
    });
    let mut child = s.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the workers to die", Duration::from_secs(3), || {
        pgrep(&format!("^sleep {marker}")).is_empty()
    });
    // What a killed supervisor could not remove: its cgroups, emptied by the kills.
    for base in s.cgroup_dirs() {
        for leaf in std::fs::read_dir(&base).unwrap().flatten() {
            if leaf.path().is_dir() {
                std::fs::remove_dir(leaf.path()).unwrap();
            }
        }
        std::fs::remove_dir(&base).unwrap();
    }
}

#[test]
fn bind_ro_cpu_limit_and_network_isolation_reach_the_worker() {
    let shared = TempDir::new("bindro");
    std::fs::write(shared.path("weights"), "w").unwrap();
    // A mount under the bound path is read-only too.
    std::fs::create_dir(shared.path("cache")).unwrap();
    let mounted = run(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(shared.path("cache")));
    assert!(mounted.status.success(), "{mounted:?}");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = run(Command::new("umount").arg(&self.0));
        }
    }
    let _unmount = Unmount(shared.path("cache"));
    let mut s = Supervisor::start(
        "limits",
        &format!(
            "[[model]]\nname = \"boxed\"\ncommand = \"sh\"\nargs = [\"-c\", \"touch {dir}/new 2>/dev/null && echo writable || echo read-only; touch {dir}/cache/new 2>/dev/null && echo writable || echo read-only; cat {dir}/weights; echo; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; echo; exec sleep 1000\"]\n\
             cpu_limit = 0.5\nbind_ro = [\"{dir}\"]\nisolation = {{ network = true }}\n",
            dir = shared.0.display()
        ),
    );
    wait_until("the worker's lines", Duration::from_secs(5), || {
        s.log("boxed-0").lines().count() >= 4
    });
    let log = s.log("boxed-0");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "read-only", "{log}");
    assert_eq!(lines[1], "read-only", "a mount under the bound path: {log}");
    assert_eq!(lines[2], "w", "the bound path is still readable: {log}");
    assert_eq!(
        lines[3].trim(),
        "lo",
        "a network namespace of its own: {log}"
    );
    assert!(!shared.path("new").exists());
    let cpu = Path::new("/sys/fs/cgroup/cpu")
        .join(&s.cgroup_name)
        .join("boxed-0");
    let read = |f: &str| std::fs::read_to_string(cpu.join(f)).unwrap();
    assert_eq!(
        (
            read("cpu.cfs_quota_us").trim(),
            read("cpu.cfs_period_us").trim()
        ),
        ("50000", "100000")
    );
    assert_eq!(s.stop().0, 0);
}
