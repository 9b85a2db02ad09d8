//! Issue 14: each model's own view of the machine: its CPUs (a cpuset, and thread pools
//! sized to its CPUs), ...

mod common;
use common::supervisor::*;
use common::*;
use std::time::Duration;

/// A model that prints what a program finds out about its CPUs, then sleeps.
fn cpu_reporter(name: &str, keys: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"sh\"\nargs = [\"-c\", \"nproc; grep Cpus_allowed_list /proc/self/status; echo OMP=$OMP_NUM_THREADS MKL=$MKL_NUM_THREADS RAYON=$RAYON_NUM_THREADS; sleep 600\"]\nrestart = \"never\"\n{keys}\n"
    )
}

fn log_of(s: &Supervisor, leaf: &str, lines: usize) -> Vec<String> {
    wait_until(&format!("{leaf}'s output"), Duration::from_secs(10), || {
        s.log(leaf).lines().count() >= lines
    });
    s.log(leaf).lines().map(str::to_owned).collect()
}

#[test]
fn cpus_pin_a_model_and_thread_pools_follow_its_cpus() {
    let s = Supervisor::start(
        "cpus",
        &[
            cpu_reporter("pinned", "cpus = \"0\""),
            cpu_reporter("limited", "cpu_limit = 1.0"),
            cpu_reporter("own", "cpu_limit = 1.0\nenv = { OMP_NUM_THREADS = \"7\" }"),
            cpu_reporter("free", ""),
        ]
        .concat(),
    );
    // The cpuset pins every process of the model: nproc (the affinity) says 1.
    assert_eq!(
        log_of(&s, "pinned-0", 3),
        ["1", "Cpus_allowed_list:\t0", "OMP=1 MKL=1 RAYON=1"]
    );
    // A CPU limit sizes the pools (GNU nproc honours OMP_NUM_THREADS too) but pins
    // nothing.
    let host = cuvisor::cpus::CpuSet::online().unwrap();
    assert_eq!(
        log_of(&s, "limited-0", 3),
        [
            "1".to_owned(),
            format!("Cpus_allowed_list:\t{host}"),
            "OMP=1 MKL=1 RAYON=1".into()
        ]
    );
    // The model's own env wins.
    assert_eq!(log_of(&s, "own-0", 3)[2], "OMP=7 MKL=1 RAYON=1");
    // Without CPUs or a limit, nothing is set.
    assert_eq!(log_of(&s, "free-0", 3)[2], "OMP= MKL= RAYON=");
    // A CPU the host does not have is refused, with the host's; a list that is not one,
    // with the form.
    let dir = TempDir::new("cpus-check");
    let path = dir.path("cuvisor.toml");
    std::fs::write(
        &path,
        [
            cpu_reporter("m", "cpus = \"0-999\""),
            cpu_reporter("n", "cpus = \"0-x\""),
        ]
        .concat(),
    )
    .unwrap();
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("check")
        .arg(&path));
    assert_eq!(out.status.code(), Some(1));
    let file = path.display();
    assert_eq!(
        stderr(&out),
        format!(
            "{file}:6: cpus = \"0-999\": this host's online CPUs are {host}\n\
             {file}:12: cpus = \"0-x\": expected CPU numbers and ranges such as \"0-7,16-23\"\n"
        )
    );
}

/// In its own network namespace a worker gets a sysfs of its own, read-only: its network
/// devices are its own (only `lo`), and the cgroup tree is still there.
#[test]
fn a_worker_in_its_own_network_namespace_sees_its_own_sys() {
    let script = "ls /sys/class/net | tr '\\\\n' ' '; echo; ls /sys/fs/cgroup | grep -cx memory; touch /sys/x 2>/dev/null && echo writable || echo read-only; (echo $$ > /sys/fs/cgroup/memory/cgroup.procs) 2>/dev/null && echo moved || echo stays; sleep 600";
    let model = |name: &str, network: bool| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"sh\"\nargs = [\"-c\", \"{script}\"]\nrestart = \"never\"\nisolation = {{ network = {network} }}\n"
        )
    };
    let s = Supervisor::start(
        "own-sys",
        &[model("boxed", true), model("shared", false)].concat(),
    );
    // The cgroup tree is read-only too: the worker cannot move itself out.
    assert_eq!(log_of(&s, "boxed-0", 4), ["lo ", "1", "read-only", "stays"]);
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let shared = log_of(&s, "shared-0", 4);
    assert_eq!(shared[1..], ["1", "read-only", "stays"]);
    let mut seen: Vec<&str> = shared[0].split_whitespace().collect();
    let mut expected: Vec<&str> = host.iter().map(String::as_str).collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "the host's network: its devices");
}
