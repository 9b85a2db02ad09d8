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

/// The view filesystem on its own: a worker's files come from its cgroup (a fake one
/// here) and change as it does; only the files its limits call for are there.
#[test]
fn the_view_filesystem_serves_each_workers_files_from_its_cgroup() {
    let dir = TempDir::new("viewfs");
    let cg = dir.path("cgroup");
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("memory.current"), "104857600\n").unwrap();
    std::fs::write(cg.join("memory.stat"), "file 0\nanon 104857600\nshmem 0\n").unwrap();
    let views = cuvisor::view::Views::mount(&dir.path("mnt")).unwrap();
    views.add(
        "m-0",
        cuvisor::view::Source {
            memory: Some((cg.clone(), true, 512 << 20)),
            cpus: Some("0".parse().unwrap()),
            ..Default::default()
        },
    );
    views.add(
        "n-0",
        cuvisor::view::Source {
            memory: None,
            cpus: Some("0".parse().unwrap()),
            ..Default::default()
        },
    );
    let read = |leaf: &str, file: &str| std::fs::read_to_string(views.path(leaf, file));
    let meminfo = read("m-0", "meminfo").unwrap();
    assert!(
        meminfo.starts_with("MemTotal:         524288 kB\nMemFree:          421888 kB\n"),
        "{meminfo}"
    );
    std::fs::write(cg.join("memory.current"), "209715200\n").unwrap();
    assert!(
        read("m-0", "meminfo")
            .unwrap()
            .contains("\nMemFree:          319488 kB\n"),
        "read again, made again"
    );
    assert_eq!(read("m-0", "online").unwrap(), "0\n");
    assert_eq!(
        read("m-0", "cpuinfo").unwrap().matches("processor").count(),
        1
    );
    assert!(
        read("m-0", "stat")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("cpu0 "))
    );
    assert!(
        !read("m-0", "stat")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("cpu1 "))
    );
    // No memory limit: no meminfo of its own.
    assert_eq!(
        read("n-0", "meminfo").unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // Open files are capped per worker: their contents live in the supervisor.
    let held: Vec<std::fs::File> = (0..64)
        .map(|_| std::fs::File::open(views.path("m-0", "cpuinfo")).unwrap())
        .collect();
    let more = std::fs::File::open(views.path("m-0", "cpuinfo")).unwrap_err();
    assert_eq!(more.raw_os_error(), Some(libc::EMFILE), "{more}");
    assert!(
        std::fs::File::open(views.path("n-0", "cpuinfo")).is_ok(),
        "another worker's"
    );
    drop(held);
    assert!(std::fs::File::open(views.path("m-0", "cpuinfo")).is_ok());
    views.remove("m-0");
    assert!(read("m-0", "online").is_err());
    let mut listed: Vec<String> = std::fs::read_dir(dir.path("mnt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["n-0"]);
    drop(views);
}

/// The issue's case: a worker with `memory_limit = "512MiB"` reads 512 MiB in
/// `/proc/meminfo`, and MemAvailable falls as it allocates; with `cpu_limit = 1`,
/// `nproc`, `os.cpu_count()` and `/sys/devices/system/cpu/online` say one CPU. A model
/// without limits sees the host's.
#[test]
fn a_worker_sees_its_own_memory_and_cpus() {
    let script = r#"python3 -c '
import os
def avail():
    return [l for l in open(\"/proc/meminfo\") if l.startswith(\"MemAvailable:\")][0].split()[1]
print(open(\"/proc/meminfo\").readline().strip())
before = int(avail())
b = bytearray(200 * 1024 * 1024)
for i in range(0, len(b), 4096): b[i] = 1
print(\"fell\" if before - int(avail()) >= 190 * 1024 else \"stayed\", before, avail())
print(os.cpu_count())
'; cat /sys/devices/system/cpu/online; nproc; cat /run/cuvisor/*.view/*/meminfo 2>/dev/null | wc -l; sleep 607"#;
    let model = |name: &str, keys: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"sh\"\nargs = [\"-c\", \"{}\"]\nrestart = \"never\"\n{keys}\n",
            script.replace('\n', "\\n")
        )
    };
    let s = Supervisor::start(
        "own-view",
        &[
            model("small", "memory_limit = \"512MiB\"\ncpu_limit = 1.0"),
            model("host", ""),
        ]
        .concat(),
    );
    let small = log_of(&s, "small-0", 6);
    assert_eq!(small[0], "MemTotal:         524288 kB", "{small:?}");
    assert!(small[1].starts_with("fell "), "{small:?}");
    // Its own files only: the view filesystem of every worker is not there.
    assert_eq!(small[2..], ["1", "0", "1", "0"], "{small:?}");
    let host_total = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let host = log_of(&s, "host-0", 6);
    assert_eq!(host[0], host_total);
    let online = cuvisor::cpus::CpuSet::online().unwrap();
    assert_eq!(host[2], online.len().to_string());
    assert_eq!(host[3], online.to_string());
    // Killed, the supervisor leaves its view mounted and dead; the next one of the same
    // name detaches it and serves its own.
    let mut s = s;
    let mut child = s.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the old worker's end", Duration::from_secs(10), || {
        pgrep("sleep 607").is_empty()
    });
    s.respawn();
    let again = log_of(&s, "small-0", 12);
    assert_eq!(again[6], "MemTotal:         524288 kB", "{again:?}");
}

/// The view directory of worker `leaf` of supervisor `s`.
fn view_of(s: &Supervisor, leaf: &str) -> std::path::PathBuf {
    std::path::Path::new(cuvisor::config::RUN_DIR)
        .join(format!("{}.view", s.cgroup_name))
        .join(leaf)
}

/// Issue 25, finding 11: a worker's view opens for its own processes only, so nobody else
/// can hold its open files (it would then get EMFILE reading its own `/proc/meminfo`);
/// and other users cannot list the view.
#[test]
fn a_workers_view_opens_for_its_own_processes_only() {
    let model = |name: &str, keys: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"sh\"\n\
             args = [\"-c\", \"while :; do head -n 1 /proc/meminfo || echo failed; sleep 0.05; done\"]\n\
             restart = \"never\"\nmemory_limit = \"512MiB\"\n{keys}"
        )
    };
    // As root, as another user, and as root of a user namespace: each reads its own.
    let s = Supervisor::start_with(
        "view-owner",
        "userns_range = \"3000000-3999999\"\n",
        &[],
        &[
            model("viewowner", ""),
            model("viewnobody", "user = \"nobody\"\n"),
            model("viewuserns", "isolation = { user = true }\n"),
        ]
        .concat(),
    );
    let leaves = ["viewowner-0", "viewnobody-0", "viewuserns-0"];
    for leaf in leaves {
        log_of(&s, leaf, 1);
    }
    let meminfo = view_of(&s, "viewowner-0").join("meminfo");
    // Root outside the worker's cgroup: refused, every time (nothing is held).
    for _ in 0..70 {
        let e = std::fs::File::open(&meminfo).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    }
    // Another user: cannot list the view, nor open a file, its own user's included.
    use std::os::unix::process::CommandExt;
    let root = meminfo.parent().unwrap().parent().unwrap();
    let out = run(std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ls {} >/dev/null 2>&1 && echo listed; cat {} >/dev/null 2>&1 && echo read; \
             cat {} >/dev/null 2>&1 && echo read nobodys; echo done",
            root.display(),
            meminfo.display(),
            view_of(&s, "viewnobody-0").join("meminfo").display()
        ))
        .uid(65534)
        .gid(65534));
    assert_eq!(lines(&out), ["done"], "{}", stderr(&out));
    // The workers' own reads went on all along.
    for leaf in leaves {
        let before = s.log(leaf).lines().count();
        wait_until("more reads", Duration::from_secs(10), || {
            s.log(leaf).lines().count() >= before + 5
        });
        let log = s.log(leaf);
        assert!(
            log.lines().all(|l| l == "MemTotal:         524288 kB"),
            "{leaf}: {log}"
        );
    }
}

/// Issue 25, finding 17: the supervisor serves a worker's view; a worker that reads its
/// `/proc/meminfo` in a loop has its opens spaced out to a budget (100 at once, then 100
/// a second), so that what it costs the supervisor is bounded per worker.
#[test]
fn a_worker_reading_its_view_in_a_loop_is_held_to_a_budget() {
    let script = "import time\nn = 0\nend = time.monotonic() + 2\nwhile time.monotonic() < end:\n    open('/proc/meminfo').read()\n    n += 1\nprint(n, flush=True)\ntime.sleep(600)\n";
    let s = Supervisor::start(
        "view-budget",
        &format!(
            "[[model]]\nname = \"viewloop\"\ncommand = \"python3\"\nargs = [\"-c\", {script:?}]\n\
             restart = \"never\"\nmemory_limit = \"512MiB\"\n"
        ),
    );
    let n: u64 = log_of(&s, "viewloop-0", 1)[0].parse().unwrap();
    // 100 at once and 100 a second for 2 s (and the opens of Python's own start-up).
    assert!(
        n >= 100,
        "{n} opens: the budget let fewer through than its burst"
    );
    assert!(n <= 310, "{n} opens in 2 s: not held to the budget");
}
