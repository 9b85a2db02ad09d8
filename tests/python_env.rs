//! Issue 14: a Python environment per model, built by uv from local wheels made in the
//! test (no index, no network): each model imports its own version of one package,
//! models with the same requirements share one environment, and a requirement that
//! cannot be met fails that model only, with uv's message.

mod common;
use common::supervisor::*;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn wheels(dir: &Path) {
    for version in ["1.0", "2.0"] {
        let out = run(std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/servers/make_wheel.py"
            ))
            .args(["cvpkg", version])
            .arg(dir));
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

fn model(name: &str, requirement: &str, wheels: &Path) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"python\"\n\
         args = [\"-u\", \"-c\", \"import cvpkg, os\\ntry:\\n  open(cvpkg.__file__, 'a'); w = 'writable'\\nexcept OSError:\\n  w = 'read-only'\\nprint(cvpkg.VERSION, os.environ['VIRTUAL_ENV'], cvpkg.__file__, w)\\nimport time; time.sleep(600)\"]\n\
         restart = \"never\"\n\
         python = {{ packages = [\"{requirement}\"], find_links = [\"{}\"], offline = true }}\n",
        wheels.display()
    )
}

#[test]
fn each_model_imports_its_own_version_and_same_requirements_share_an_environment() {
    let dir = TempDir::new("pyenv");
    let wheel_dir = dir.path("wheels");
    std::fs::create_dir_all(&wheel_dir).unwrap();
    wheels(&wheel_dir);
    let s = Supervisor::start(
        "pyenv",
        &format!(
            "envs_dir = \"{}\"\nuv = \"{}\"\n{}{}{}{}",
            dir.path("envs").display(),
            uv().display(),
            model("one", "cvpkg==1.0", &wheel_dir),
            model("two", "cvpkg==2.0", &wheel_dir),
            model("also-one", "cvpkg==1.0", &wheel_dir),
            model("broken", "cvpkg==9.9", &wheel_dir),
        ),
    );
    let line = |leaf: &str| {
        // The whole line: Python's print writes its arguments one by one, and the log
        // receives each as it comes.
        wait_until(&format!("{leaf}'s line"), Duration::from_secs(60), || {
            s.log(leaf).ends_with('\n')
        });
        let log = s.log(leaf);
        let fields: Vec<String> = log.split_whitespace().map(str::to_owned).collect();
        assert_eq!(fields.len(), 4, "{log}");
        fields
    };
    let (one, two, also) = (line("one-0"), line("two-0"), line("also-one-0"));
    assert_eq!((one[0].as_str(), two[0].as_str()), ("1.0", "2.0"));
    assert_eq!(also[1], one[1], "the same requirements: one environment");
    assert_ne!(two[1], one[1]);
    assert!(Path::new(&one[1]).starts_with(dir.path("envs")), "{one:?}");
    // Installed by hard links from uv's cache, not copies.
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&one[2]).unwrap().nlink() >= 2, "{one:?}");
    // Shared, the environments are read-only to the workers.
    assert_eq!(one[3], "read-only", "{one:?}");
    // The broken one fails alone, with uv's message.
    wait_until("the broken model's error", Duration::from_secs(30), || {
        s.model("broken")["instances"][0]["error"].is_string()
    });
    let error = s.model("broken")["instances"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.starts_with("its Python environment: uv pip compile failed: ")
            && error.contains("cvpkg==9.9"),
        "{error}"
    );
    assert_eq!(s.model("one")["state"], "running");
    // The build's steps and uv's progress are logged as they come, by model.
    let log = s.supervisor_log();
    for line in [
        "model one: Python environment: uv pip compile: Resolved 1 package",
        "model one: Python environment: uv venv: ",
        "model one: Python environment: uv pip sync: Installed 1 package",
        "model two: Python environment: uv pip sync: + cvpkg==2.0",
    ] {
        assert!(log.contains(line), "{line:?} in {log}");
    }
}

/// `cuvisor env build` builds ahead of time and says where; a missing uv is named.
#[test]
fn env_build_builds_ahead_and_names_a_missing_uv() {
    let dir = TempDir::new("pyenv-build");
    let wheel_dir = dir.path("wheels");
    std::fs::create_dir_all(&wheel_dir).unwrap();
    wheels(&wheel_dir);
    let config = |uv: &str| {
        let path = dir.path("cuvisor.toml");
        std::fs::write(
            &path,
            format!(
                "[supervisor]\nenvs_dir = \"{}\"\n{uv}{}",
                dir.path("envs").display(),
                model("one", "cvpkg==1.0", &wheel_dir)
            ),
        )
        .unwrap();
        path
    };
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .args(["env", "build"])
        .arg(config(&format!("uv = \"{}\"\n", uv().display()))));
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let env = printed
        .trim()
        .strip_prefix("model one: ")
        .unwrap()
        .to_owned();
    assert!(Path::new(&env).join("bin/python").exists(), "{printed}");
    // A later start asks no index: the resolution is kept (here, the wheels are gone,
    // and the build cache with them).
    std::fs::remove_dir_all(&wheel_dir).unwrap();
    // (uv's cache is the build user's, nobody's by default.)
    std::fs::remove_dir_all(dir.path("envs/cache-65534")).unwrap();
    let envs = cuvisor::pyenv::Envs {
        dir: dir.path("envs"),
        uv: uv().to_owned(),
        user: (65534, 65534),
    };
    let (hierarchy, cancel) = (
        cuvisor::cgroups::Hierarchy::None { why: "test".into() },
        std::sync::atomic::AtomicBool::new(false),
    );
    let sandbox = cuvisor::pyenv::Sandbox {
        hierarchy: &hierarchy,
        limits: Default::default(),
        hidden: Vec::new(),
        cancel: &cancel,
        progress: &|_| {},
    };
    let spec = cuvisor::pyenv::PythonSpec {
        packages: vec!["cvpkg==1.0".into()],
        find_links: vec![wheel_dir.display().to_string()],
        offline: true,
        ..Default::default()
    };
    assert_eq!(envs.build(&spec, false, &sandbox).unwrap(), Path::new(&env));
    assert!(
        matches!(
            envs.build(&spec, true, &sandbox),
            Err(cuvisor::pyenv::EnvError::Uv { .. })
        ),
        "resolving again needs the wheels"
    );
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .args(["env", "build"])
        .arg(config("uv = \"/nonexistent/uv\"\n")));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("cuvisor: model one: cannot run uv (/nonexistent/uv): "),
        "{}",
        stderr(&out)
    );
}

/// Issue 25, finding 10: an index's credentials (`index_url = "http://user:secret@…"`)
/// reach uv, and nothing a worker or another local user can read: no file of the
/// environments' directory (which every worker sees), and not uv's command line (which
/// every local user sees in /proc) but its environment.
#[test]
fn an_index_password_is_written_nowhere_a_worker_can_read() {
    let dir = TempDir::new("pyenv-private");
    let wheel_dir = dir.path("wheels");
    std::fs::create_dir_all(&wheel_dir).unwrap();
    wheels(&wheel_dir);
    let port_file = dir.path("index.port");
    /// The index, stopped however the test ends.
    struct Index(std::process::Child);
    impl Drop for Index {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _index = Index(
        std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/servers/private_index.py"
            ))
            .arg(&port_file)
            .arg(&wheel_dir)
            .args(["builder", "s3cret-pass"])
            .spawn()
            .unwrap(),
    );
    wait_until("the index", Duration::from_secs(10), || port_file.exists());
    let port = std::fs::read_to_string(&port_file).unwrap();
    // uv through a wrapper that notes its command line (where the build user may write).
    use std::os::unix::fs::PermissionsExt;
    let spy = dir.path("spy");
    std::fs::create_dir(&spy).unwrap();
    std::fs::set_permissions(&spy, std::fs::Permissions::from_mode(0o777)).unwrap();
    let argv_log = spy.join("uv-argv.log");
    let wrapper = dir.path("uv-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec {} \"$@\"\n",
            argv_log.display(),
            std::fs::canonicalize(uv())
                .unwrap_or_else(|_| uv().to_owned())
                .display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let model = format!(
        "[[model]]\nname = \"private\"\ncommand = \"python\"\n\
         args = [\"-u\", \"-c\", \"import cvpkg; print(cvpkg.VERSION); import time; time.sleep(600)\"]\n\
         restart = \"never\"\n\
         python = {{ packages = [\"cvpkg==2.0\"], index_url = \"http://builder:s3cret-pass@127.0.0.1:{port}/simple\" }}\n"
    );
    let s = Supervisor::start(
        "pyenv-private",
        &format!(
            "envs_dir = \"{}\"\nuv = \"{}\"\n{model}",
            dir.path("envs").display(),
            wrapper.display()
        ),
    );
    wait_until("the model's line", Duration::from_secs(60), || {
        !s.log("private-0").is_empty() || s.model("private")["instances"][0]["error"].is_string()
    });
    assert_eq!(s.log("private-0").trim(), "2.0", "{}", s.model("private"));
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                files(&p, out);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(&dir.path("envs"), &mut all);
    assert!(!all.is_empty());
    for f in all {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(11).any(|w| w == b"s3cret-pass"),
            "{} holds the index's password",
            f.display()
        );
    }
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(!argv.contains("s3cret-pass"), "uv's command line: {argv}");
    assert!(argv.contains("pip compile"), "{argv}");
}

/// Issue 25, finding 9: a requirements file swapped for a link (here to a root-only file
/// whose first line is a secret) is not followed, and no error quotes what it points to.
#[test]
fn a_requirements_file_swapped_for_a_link_is_not_followed() {
    let dir = TempDir::new("pyenv-link");
    let secret = dir.path("secret");
    std::fs::write(&secret, "TOP-SECRET-LINE\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let requirements = dir.path("requirements.txt");
    std::fs::write(&requirements, "cvpkg==1.0\n").unwrap();
    let model = format!(
        "[[model]]\nname = \"linked\"\ncommand = \"python\"\nargs = [\"-c\", \"pass\"]\n\
         restart = \"never\"\n\
         python = {{ requirements = \"{}\", offline = true }}\n",
        requirements.display()
    );
    // And a model whose requirements file is a plain file: it is read, and resolved.
    let wheel_dir = dir.path("wheels");
    std::fs::create_dir_all(&wheel_dir).unwrap();
    wheels(&wheel_dir);
    let plain = dir.path("plain.txt");
    std::fs::write(&plain, "# pinned\ncvpkg==2.0").unwrap();
    let model = format!(
        "{model}[[model]]\nname = \"plain\"\ncommand = \"python\"\n\
         args = [\"-u\", \"-c\", \"import cvpkg; print(cvpkg.VERSION); import time; time.sleep(600)\"]\n\
         restart = \"never\"\n\
         python = {{ requirements = \"{}\", find_links = [\"{}\"], offline = true }}\n",
        plain.display(),
        wheel_dir.display()
    );
    // Swapped for a link after it was written (the configuration's check follows it).
    std::fs::remove_file(&requirements).unwrap();
    std::os::unix::fs::symlink(&secret, &requirements).unwrap();
    let s = Supervisor::start(
        "pyenv-link",
        &format!(
            "envs_dir = \"{}\"\nuv = \"{}\"\n{model}",
            dir.path("envs").display(),
            uv().display()
        ),
    );
    wait_until("the model's error", Duration::from_secs(30), || {
        s.model("linked")["instances"][0]["error"].is_string()
    });
    let error = s.model("linked")["instances"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!error.contains("TOP-SECRET"), "{error}");
    assert!(
        !s.supervisor_log().contains("TOP-SECRET"),
        "{}",
        s.supervisor_log()
    );
    assert!(error.contains("a symbolic link, not followed"), "{error}");
    wait_until("the plain model's line", Duration::from_secs(60), || {
        !s.log("plain-0").is_empty()
    });
    assert_eq!(s.log("plain-0").trim(), "2.0");
}

/// A directory every user may write (for a spy the build user runs).
fn open_dir(dir: &TempDir, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path(name);
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    path
}

/// An executable shell script at `path`.
fn script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Issue 25, findings 5 and 9: an environment's build (whose packages' build hooks are
/// code from an index) runs as the build user, never root: no capability, no way to gain
/// one, in PID and mount namespaces and a cgroup of its own, shown no ledger. A file a
/// requirements file includes (`-r`) is read as that user: a root-only one is refused,
/// and its content quoted nowhere.
#[test]
fn a_build_runs_as_the_build_user_in_a_sandbox() {
    let dir = TempDir::new("pyenv-sandbox");
    let wheel_dir = dir.path("wheels");
    std::fs::create_dir_all(&wheel_dir).unwrap();
    wheels(&wheel_dir);
    let spy = open_dir(&dir, "spy");
    let wrapper = dir.path("uv-spy");
    script(
        &wrapper,
        &format!(
            "#!/bin/sh\nn=$(cat /proc/sys/kernel/random/uuid)\n{{ id -u; grep -E 'CapEff|NoNewPrivs' /proc/self/status; readlink /proc/self/ns/pid; }} > {spy}/who.$n\n\
             cat /proc/self/cgroup > {spy}/cgroup.$n\ncat /proc/self/mountinfo > {spy}/mounts.$n\nexec {} \"$@\"\n",
            std::fs::canonicalize(uv()).unwrap().display(),
            spy = spy.display()
        ),
    );
    // A requirements file that includes a root-only file.
    let reqs = dir.path("reqs");
    std::fs::create_dir(&reqs).unwrap();
    std::fs::write(reqs.join("requirements.txt"), "-r secret.txt\ncvpkg==1.0\n").unwrap();
    std::fs::write(reqs.join("secret.txt"), "TOPSECRET-LINE-7\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        reqs.join("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let includer = format!(
        "[[model]]\nname = \"includer\"\ncommand = \"python\"\nargs = [\"-c\", \"print(1)\"]\n\
         restart = \"never\"\n\
         python = {{ requirements = \"{}\", find_links = [\"{}\"], offline = true }}\n",
        reqs.join("requirements.txt").display(),
        wheel_dir.display()
    );
    let s = Supervisor::start(
        "pyenv-sandbox",
        &format!(
            "envs_dir = \"{}\"\nuv = \"{}\"\n{}{includer}",
            dir.path("envs").display(),
            wrapper.display(),
            model("one", "cvpkg==1.0", &wheel_dir),
        ),
    );
    wait_until("the model's line", Duration::from_secs(60), || {
        s.log("one-0").ends_with('\n') || s.model("one")["instances"][0]["error"].is_string()
    });
    assert!(s.log("one-0").starts_with("1.0 "), "{}", s.model("one"));
    // Every uv run: the build user, nothing of root's, its own PID namespace.
    let own_pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let mut runs = 0;
    for entry in std::fs::read_dir(&spy).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(n) = name.strip_prefix("who.") else {
            continue;
        };
        runs += 1;
        let who = std::fs::read_to_string(&path).unwrap();
        let who: Vec<&str> = who.lines().collect();
        assert_eq!(who[0], "65534", "{who:?}");
        assert_eq!(who[1], "CapEff:\t0000000000000000", "{who:?}");
        assert_eq!(who[2], "NoNewPrivs:\t1", "{who:?}");
        assert_ne!(Path::new(who[3]), own_pidns, "{who:?}");
        let cgroup = std::fs::read_to_string(spy.join(format!("cgroup.{n}"))).unwrap();
        assert!(cgroup.contains(&s.cgroup_name), "{cgroup}");
        // The ledgers are covered: an empty directory is mounted over them.
        let mounts = std::fs::read_to_string(spy.join(format!("mounts.{n}"))).unwrap();
        let ledgers = s.dir.path("ledgers").display().to_string();
        assert!(
            mounts
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(ledgers.as_str())),
            "{mounts}"
        );
    }
    assert!(runs >= 3, "compile, venv and sync: {runs} runs");
    // The include was read as the build user: refused, and not quoted.
    wait_until("the includer's error", Duration::from_secs(60), || {
        s.model("includer")["instances"][0]["error"].is_string()
    });
    let error = s.model("includer")["instances"][0]["error"].to_string();
    assert!(error.contains("secret.txt"), "{error}");
    assert!(!error.contains("TOPSECRET"), "{error}");
    assert!(!s.supervisor_log().contains("TOPSECRET"));
}

/// Issue 25, finding 8: builds run on a thread of their own, not the launchers': models
/// with slow builds keep no other model waiting, and a SIGTERM kills the build under way
/// (the supervisor ends at once, and no uv is left).
#[test]
fn slow_builds_hold_up_no_other_model_and_end_with_the_supervisor() {
    let dir = TempDir::new("pyenv-slow");
    let slow_uv = dir.path("uv-slow");
    script(&slow_uv, "#!/bin/sh\nexec sleep 1379\n");
    let slow = |name: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"python\"\nargs = [\"-c\", \"print(1)\"]\n\
             restart = \"never\"\npython = {{ packages = [\"{name}\"] }}\n"
        )
    };
    let mut s = Supervisor::spawn(
        "pyenv-slow",
        "",
        &[],
        &format!(
            "envs_dir = \"{}\"\nuv = \"{}\"\n{}{}{}{}{}\
             [[model]]\nname = \"quick\"\ncommand = \"sleep\"\nargs = [\"600\"]\nrestart = \"never\"\n",
            dir.path("envs").display(),
            slow_uv.display(),
            slow("slow1"),
            slow("slow2"),
            slow("slow3"),
            slow("slow4"),
            slow("slow5"),
        ),
    );
    wait_until("a build under way", Duration::from_secs(10), || {
        !pgrep("sleep 1379").is_empty()
    });
    wait_until("the quick model", Duration::from_secs(5), || {
        s.model("quick")["state"] == "running"
    });
    assert_eq!(s.model("slow5")["state"], "starting");
    let (code, took) = s.stop();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    wait_until("no uv left", Duration::from_secs(2), || {
        pgrep("sleep 1379").is_empty()
    });
}
