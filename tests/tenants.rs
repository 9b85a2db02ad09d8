//! Issue 10: tenants cannot hurt each other or the supervisor. Each test plays a hostile
//! worker (or a hostile local user) against `cuvisor run` or the shim, and shows that
//! the attempt fails while the supervisor and the other models keep running.

mod common;
use common::supervisor::*;
use common::*;
use std::time::Duration;

/// A model that holds 1 MiB of its 4 MiB quota on the fake GPU and then sleeps.
fn holder(name: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"1MiB\", \"sleep\", \"100000\"]\nenv = {{ LD_LIBRARY_PATH = \"{}\" }}\ngpu_quota = \"4MiB\"\n",
        stub_dir().join("driver_probe").display(),
        stub_dir().display()
    )
}

/// Finding 1: a worker truncates its own ledger. The supervisor (which used to map every
/// ledger and died of SIGBUS at the next status request or reap) keeps running; the
/// other model keeps its worker and its numbers; the damaged model says what is wrong.
#[test]
fn a_worker_that_truncates_its_ledger_breaks_only_its_own_model() {
    let go = TempDir::new("truncate-go");
    let mut s = Supervisor::start(
        "truncate",
        &format!(
            "{}\n[[model]]\nname = \"vandal\"\ncommand = \"sh\"\nargs = [\"-c\", \"while [ ! -e go ]; do sleep 0.05; done; : > \\\"$CUVISOR_LEDGER_DIR/vandal.ledger\\\"; echo truncated; exec sleep 100000\"]\ncwd = \"{}\"\nrestart = \"never\"\n",
            holder("steady"),
            go.path("").display()
        ),
    );
    wait_until(
        "the steady model's allocation",
        Duration::from_secs(5),
        || s.model("steady")["gpu_used_bytes"].as_u64() == Some(MIB),
    );
    let steady_pid = s.model("steady")["instances"][0]["pid"].clone();
    // Both models are reported while the ledger is whole.
    assert_eq!(s.model("vandal")["gpu_used_bytes"].as_u64(), Some(0));
    std::fs::write(go.path("go"), "").unwrap();
    wait_until("the truncation", Duration::from_secs(5), || {
        s.log("vandal-0").contains("truncated")
    });
    // Status and metrics read every ledger: the supervisor must survive both.
    let vandal = s.model("vandal");
    assert!(
        vandal["error"]
            .as_str()
            .is_some_and(|e| e.contains("vandal.ledger") && e.contains("shorter than its header")),
        "{vandal}"
    );
    assert_eq!(vandal["gpu_used_bytes"], serde_json::Value::Null);
    let (code, metrics) = cuvisor::control::request(&s.socket, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cuvisor_gpu_used_bytes{model=\"steady\"} 1048576"),
        "{metrics}"
    );
    // The vandal's worker dies: the reap reclaims in the damaged ledger.
    let (code, _) = cuvisor::control::request(&s.socket, "POST", "/models/vandal/stop").unwrap();
    assert_eq!(code, 200);
    wait_until("the vandal's exit", Duration::from_secs(5), || {
        s.model("vandal")["state"] == "stopped"
    });
    // The root truncating the file does the same harm: none.
    let ledger = s.dir.path("ledgers").join("steady.ledger");
    let steady = s.model("steady");
    assert_eq!(steady["instances"][0]["pid"], steady_pid);
    assert_eq!(steady["state"], "running");
    assert_eq!(steady["gpu_used_bytes"].as_u64(), Some(MIB));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ledger)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(s.model("steady")["error"].as_str().is_some());
    assert!(
        s.supervisor_log().contains("model vandal: "),
        "{}",
        s.supervisor_log()
    );
    assert_eq!(s.stop().0, 0, "{}", s.supervisor_log());
}

/// Finding 9: `cuvisor ledger` names a supervised worker by the pid the operator can use
/// (not pid 2 of its namespace), and shows the uncertain bytes.
#[test]
fn the_ledger_listing_shows_host_pids_and_uncertain_bytes() {
    let mut s = Supervisor::start("hostpid", &holder("seen"));
    wait_until("the allocation", Duration::from_secs(5), || {
        s.model("seen")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    let init = s.model("seen")["instances"][0]["pid"].as_u64().unwrap();
    let listing = |args: &[&str]| {
        run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
            .arg("ledger")
            .args(args)
            .arg("--dir")
            .arg(s.dir.path("ledgers")))
    };
    let out = listing(&["--json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = &all["models"][0];
    let process = &model["processes"][0];
    assert_eq!(process["pid_in_namespace"], 2, "{all}");
    let pid = process["pid"].as_u64().expect("a host pid");
    // The worker is the child of the instance's init, as the host sees it.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, init, "{stat}");
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .contains("driver_probe")
    );
    assert_eq!(model["uncertain"], 0);
    let table = String::from_utf8_lossy(&listing(&[]).stdout).into_owned();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "MODEL",
            "QUOTA",
            "USED",
            "PEAK",
            "UNCERTAIN",
            "LIVE",
            "DEAD",
            "PIDS"
        ]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row.first(), Some(&"seen"), "{table}");
    assert_eq!(
        row.last().copied(),
        Some(pid.to_string().as_str()),
        "{table}"
    );
    assert_eq!(s.stop().0, 0);
}
