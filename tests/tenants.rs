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
    // The supervisor keeps no mapping of any ledger.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", s.pid())).unwrap();
    assert!(!maps.contains(".ledger"), "{maps}");
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
    let gpu = s.model("steady")["gpus"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        metrics.contains(&format!(
            "cuvisor_gpu_used_bytes{{model=\"steady\",gpu=\"{gpu}\"}} 1048576"
        )),
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
    let ppid: u64 = cuvisor::ledger::stat_field(&stat, 4)
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
            "REFUSED",
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

/// What a hostile worker script tries, printing one `key=value` per attempt. It waits for
/// the file `target` in its directory (the host pid of another model's worker).
const ATTACKS: &str = r#"grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d ' \t' | sed 's/:/=/'
escaped=no
for f in /sys/fs/cgroup/memory/cgroup.procs /sys/fs/cgroup/pids/cgroup.procs /sys/fs/cgroup/unified/cgroup.procs /sys/fs/cgroup/cgroup.procs; do
  [ -e $f ] && (echo $$ > $f) 2>/dev/null && escaped=$f
done
echo escaped=$escaped
echo cgroup=$(grep -c ':/cvt' /proc/self/cgroup)
echo ledgers=$(ls -A "$CUVISOR_LEDGER_DIR" | tr '\n' ',')
(: > "$CUVISOR_LEDGER_DIR/steady.ledger") 2>/dev/null && echo other_ledger=written || echo other_ledger=refused
(echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null && echo sysctl=written || echo sysctl=refused
(cat /proc/irq/default_smp_affinity > /proc/irq/default_smp_affinity) 2>/dev/null && echo irq=written || echo irq=refused
while [ ! -e target ]; do sleep 0.05; done
kill -9 $(cat target) 2>/dev/null && echo signal=sent || echo signal=refused
echo python=$(python3 -c 'print("ok")' 2>/dev/null || echo missing)
python3 -c "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])" "$(cat socket)" 2>/dev/null && echo control=connected || echo control=refused
python3 -c "import sys; open(sys.argv[1], 'r+b')" "${LD_PRELOAD##*:}" 2>/dev/null && echo shim=writable || echo shim=read-only
(: > "$CUVISOR_LEDGER_DIR/hostile.ledger") 2>/dev/null && echo own_ledger=truncated || echo own_ledger=kept
echo done
exec sleep 100000"#;

fn attacker(name: &str, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"sh\"\nargs = [\"-c\", '''{ATTACKS}''']\ncwd = \"{}\"\nenv = {{ PATH = \"/usr/local/bin:/usr/bin:/bin\" }}\nmemory_limit = \"64MiB\"\npids_limit = 64\nrestart = \"never\"\n{extra}\n",
        dir.display()
    )
}

/// Host ids for models with `isolation.user` in these tests.
const USERNS_RANGE: &str = "userns_range = \"3000000-3999999\"\n";

/// Finding 3 (and 4): a worker, as root in its namespaces, as its own user and as root of
/// its own user namespace, tries to leave its cgroups, write another model's ledger,
/// change a sysctl and kill another model's worker. Every attempt fails; it has no
/// capability and no way to gain one; the other model and the supervisor keep running.
#[test]
fn a_hostile_worker_cannot_leave_its_cgroups_touch_other_ledgers_or_signal_other_models() {
    for (tag, user) in [
        ("root", ""),
        ("nobody", "user = \"nobody\"\n"),
        ("userns", "isolation = { user = true }\n"),
    ] {
        let dir = TempDir::new("attack");
        // The worker as `nobody` must be able to read the file `target` from its cwd.
        std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut s = Supervisor::start_with(
            &format!("attack-{tag}"),
            USERNS_RANGE,
            &[],
            &format!(
                "{}\n{}",
                holder("steady"),
                attacker("hostile", &dir.0, user)
            ),
        );
        wait_until(
            "the steady model's allocation",
            Duration::from_secs(5),
            || s.model("steady")["gpu_used_bytes"].as_u64() == Some(MIB),
        );
        let steady = s.model("steady")["instances"][0]["pid"].as_u64().unwrap();
        std::fs::write(dir.path("socket"), s.socket.to_str().unwrap()).unwrap();
        std::fs::write(dir.path("target"), steady.to_string()).unwrap();
        wait_until("the attacks", Duration::from_secs(5), || {
            s.log("hostile-0").contains("done")
        });
        let log = s.log("hostile-0");
        let field = |k: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{tag}: no {k} in {log}"))
                .to_owned()
        };
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(set), "0000000000000000", "{tag}: {set}\n{log}");
        }
        assert_ne!(
            field("cgroup"),
            "0",
            "{tag}: still in its own cgroups: {log}"
        );
        for (attempt, outcome) in [
            ("NoNewPrivs", "1"),
            ("escaped", "no"),              // its pid into a root cgroup.procs
            ("ledgers", "hostile.ledger,"), // only its own ledger is visible
            ("other_ledger", "refused"),    // writing another model's ledger
            ("sysctl", "refused"),          // /proc/sys
            ("irq", "refused"),             // /proc/irq
            ("control", "refused"),         // the supervisor's control socket
            ("shim", "read-only"),          // what every model preloads
            ("signal", "refused"),          // kill -9 of another model's worker
            ("python", "ok"),               // what the next two attempts run with
            ("own_ledger", "truncated"),    // its own it may break: its model only
        ] {
            assert_eq!(field(attempt), outcome, "{tag}: {attempt}\n{log}");
        }
        let hostile = s.model("hostile");
        assert!(
            hostile["error"]
                .as_str()
                .is_some_and(|e| e.contains("hostile.ledger")),
            "{tag}: {hostile}"
        );
        let m = s.model("steady");
        assert_eq!(
            (
                m["state"].as_str(),
                m["instances"][0]["pid"].as_u64(),
                m["gpu_used_bytes"].as_u64()
            ),
            (Some("running"), Some(steady), Some(MIB)),
            "{tag}"
        );
        assert_eq!(s.model("hostile")["state"], "running", "{tag}");
        assert_eq!(s.stop().0, 0, "{tag}: {}", s.supervisor_log());
    }
}

/// Finding 3: `capabilities = [...]` keeps exactly those, in every set but the bounding
/// one's others, across exec, for root and for another user.
#[test]
fn a_model_keeps_exactly_the_capabilities_it_asks_for() {
    for (tag, user) in [("root", ""), ("nobody", "user = \"nobody\"\n")] {
        let mut s = Supervisor::start(
            &format!("caps-{tag}"),
            &format!(
                "[[model]]\nname = \"binder\"\ncommand = \"sh\"\nargs = [\"-c\", \"grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d ' \\\\t'; echo done; exec sleep 100000\"]\ncapabilities = [\"CAP_NET_BIND_SERVICE\", \"CAP_SYS_NICE\"]\n{user}"
            ),
        );
        wait_until("the worker's report", Duration::from_secs(5), || {
            s.log("binder-0").contains("done")
        });
        let log = s.log("binder-0");
        // CAP_NET_BIND_SERVICE is bit 10, CAP_SYS_NICE bit 23.
        let kept = format!("{:016x}", (1u64 << 10) | (1 << 23));
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert!(
                log.contains(&format!("{set}:{kept}")),
                "{tag}: {set}\n{log}"
            );
        }
        assert!(log.contains("NoNewPrivs:1"), "{tag}: {log}");
        assert_eq!(s.stop().0, 0);
    }
}

/// Finding 4: `user = "nobody"` works as documented: the worker reaches its model's
/// ledger (it used to fail closed on a 0750 root directory) and is charged there, with
/// or without a mount namespace.
#[test]
fn a_worker_as_another_user_uses_its_ledger() {
    for (tag, isolation) in [
        ("ns", ""),
        ("plain", "isolation = { pid = false, mount = false }\n"),
    ] {
        let mut s = Supervisor::start(
            &format!("user-{tag}"),
            &format!("{}user = \"nobody\"\n{isolation}", holder("owned")),
        );
        wait_until("the allocation", Duration::from_secs(5), || {
            s.model("owned")["gpu_used_bytes"].as_u64() == Some(MIB)
        });
        // The worker's output reaches its log through the supervisor's forwarding
        // thread, a moment after the ledger shows the charge.
        wait_until(
            &format!("{tag}: the worker's line"),
            Duration::from_secs(5),
            || s.log("owned-0").contains("alloc 1MiB -> 0"),
        );
        let meta = std::fs::metadata(s.dir.path("ledgers").join("owned.ledger")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (0, 65534, 0o660),
            "{tag}"
        );
        assert_eq!(s.stop().0, 0);
    }
}

/// Findings 7 and 8: a second supervisor on the same cgroups refuses to start and names
/// the first; a supervisor killed with SIGKILL leaves cgroups and its dead workers' bytes,
/// and the next one on the same configuration removes and reclaims them before it starts
/// anything.
#[test]
fn one_supervisor_per_cgroup_parent_and_a_successor_cleans_up() {
    let mut s = Supervisor::start(
        "successor",
        &format!("{}memory_limit = \"64MiB\"\n", holder("kept")),
    );
    wait_until("the allocation", Duration::from_secs(5), || {
        s.model("kept")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    let first = s.pid();
    // Another supervisor, its own socket and ledgers, the same cgroup_name.
    let other = s.dir.path("other.toml");
    std::fs::write(
        &other,
        format!(
            "[supervisor]\nsocket = \"{}\"\nledger_dir = \"{}\"\ncgroup_name = \"{}\"\n{}",
            s.dir.path("other.sock").display(),
            s.dir.path("other-ledgers").display(),
            s.cgroup_name,
            holder("kept")
        ),
    )
    .unwrap();
    let mut second = std::process::Command::new("timeout");
    second
        .arg("20")
        .arg(s.command(&other).get_program())
        .args(s.command(&other).get_args());
    let out = run(&mut second);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "another supervisor (pid {first}) runs with cgroup_name = \"{}\"",
            s.cgroup_name
        )),
        "{err}"
    );
    assert!(!s.dir.path("other-ledgers").exists(), "it touched nothing");
    assert_eq!(
        s.model("kept")["state"],
        "running",
        "the first one is unharmed"
    );
    // SIGKILL the supervisor: its workers die with it, and leave what they left.
    let init = s.model("kept")["instances"][0]["pid"].as_u64().unwrap();
    let mut child = s.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the workers' death", Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{init}")).exists()
    });
    let leaves = |s: &Supervisor| -> Vec<String> {
        let mut all: Vec<String> = s
            .cgroup_dirs()
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap())
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_type()
                    .ok()?
                    .is_dir()
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        all.sort();
        all
    };
    assert_eq!(
        leaves(&s),
        ["kept-0", "kept-0", "kept-0"],
        "what a killed supervisor leaves"
    );
    let ledgers = s.dir.path("ledgers");
    assert_eq!(
        cuvisor::ledger::read_snapshot(&ledgers, "kept")
            .unwrap()
            .used,
        MIB
    );
    // A cgroup under the same parent that no instance of this configuration would have
    // (someone else's, or a model no longer configured) is left alone.
    let foreign = s.cgroup_dirs()[0].join("someone-else");
    std::fs::create_dir(&foreign).unwrap();
    s.respawn();
    assert!(
        foreign.exists(),
        "only the configuration's own cgroups are removed"
    );
    std::fs::remove_dir(&foreign).unwrap();
    let log = s.supervisor_log();
    assert!(
        log.contains("removed a cgroup left by an earlier supervisor"),
        "{log}"
    );
    assert!(
        log.contains("model kept: reclaimed 1048576 bytes (0 uncertain) of dead processes"),
        "{log}"
    );
    wait_until("the new allocation", Duration::from_secs(5), || {
        s.model("kept")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    assert_eq!(
        leaves(&s),
        ["kept-0", "kept-0", "kept-0"],
        "the new instance's only"
    );
    assert_eq!(s.stop().0, 0);
    assert!(s.cgroup_dirs().is_empty(), "and nothing after a clean stop");
}

/// `isolation.user`: the worker is root in its own user namespace, which the host sees as
/// the model's own block of unprivileged ids (one block per model, in the order of the
/// file); it reaches its ledger and is charged there.
#[test]
fn a_worker_in_a_user_namespace_is_root_there_and_unprivileged_on_the_host() {
    let mut s = Supervisor::start_with(
        "userns",
        USERNS_RANGE,
        &[],
        &format!(
            "{}isolation = {{ user = true }}\n[[model]]\nname = \"second\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo uid=$(id -u) map=$(cat /proc/self/uid_map | tr -s ' ' ' '); exec sleep 100000\"]\nisolation = {{ user = true }}\n",
            holder("first")
        ),
    );
    wait_until("the allocation", Duration::from_secs(5), || {
        s.model("first")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    wait_until("the second's report", Duration::from_secs(5), || {
        s.log("second-0").contains("uid=")
    });
    assert_eq!(
        s.log("second-0").trim(),
        "uid=0 map= 0 3065536 65536",
        "root inside, the second block of ids outside"
    );
    // The host sees the first model's worker (the init's child) as the block's first id.
    let init = s.model("first")["instances"][0]["pid"].as_u64().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let worker: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "3000000", "3000000", "3000000", "3000000"],
        "{status}"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(s.dir.path("ledgers").join("first.ledger")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, 3000000, 0o660)
    );
    assert_eq!(s.stop().0, 0);
}

/// The worker is shown its own ledger: if it is gone when an instance starts (an operator
/// removed it), it is made again with the model's quota, and the instance starts.
#[test]
fn a_removed_ledger_is_made_again_at_the_next_start() {
    let mut s = Supervisor::start("remade", &holder("again"));
    wait_until("the allocation", Duration::from_secs(5), || {
        s.model("again")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    std::fs::remove_file(s.dir.path("ledgers").join("again.ledger")).unwrap();
    let (code, _) = cuvisor::control::request(&s.socket, "POST", "/models/again/restart").unwrap();
    assert_eq!(code, 200);
    wait_until("the new allocation", Duration::from_secs(5), || {
        let m = s.model("again");
        m["state"] == "running" && m["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    assert_eq!(s.model("again")["gpu_quota_bytes"].as_u64(), Some(4 * MIB));
    assert_eq!(s.stop().0, 0);
}
