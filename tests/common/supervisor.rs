//! `cuvisor run` driven from a test: a supervisor with a socket, ledgers, logs and cgroups
//! of its own, asked through its control API.

use super::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Supervisor {
    pub child: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub cgroup_name: String,
}

pub fn unique(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "cvt{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Supervisor {
    /// Starts `cuvisor run` on `models` (TOML of [[model]] tables) with a [supervisor]
    /// section of its own: socket, ledgers, logs and cgroups private to the test.
    pub fn start(tag: &str, models: &str) -> Supervisor {
        Self::start_with(tag, "", &[], models)
    }

    /// `start` with more [supervisor] keys, and `cuvisor run` started through `wrapper`
    /// (a command line that ends by exec'ing its arguments).
    pub fn start_with(tag: &str, settings: &str, wrapper: &[&str], models: &str) -> Supervisor {
        let s = Self::spawn(tag, settings, wrapper, models);
        s.wait_for_launches();
        s
    }

    /// `start_with`, returning once the control socket answers, whatever the launches.
    pub fn spawn(tag: &str, settings: &str, wrapper: &[&str], models: &str) -> Supervisor {
        let dir = TempDir::new(tag);
        let socket = dir.path("control.sock");
        let cgroup_name = unique(tag);
        // 700 ms unless `settings` says.
        let grace = match settings.contains("grace_period") {
            true => "",
            false => "grace_period = \"700ms\"\n",
        };
        let config = format!(
            "[supervisor]\nsocket = \"{}\"\nledger_dir = \"{}\"\nlogs = \"{}\"\n{grace}cgroup_name = \"{cgroup_name}\"\n{settings}\n{models}",
            socket.display(),
            dir.path("ledgers").display(),
            dir.path("logs").display()
        );
        std::fs::write(dir.path("cuvisor.toml"), config).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_cuvisor"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_cuvisor")),
        };
        let child = command
            .arg("run")
            .arg("--shim")
            .arg(shim_path())
            .arg(dir.path("cuvisor.toml"))
            .env_remove("LD_PRELOAD")
            .stderr(std::fs::File::create(dir.path("supervisor.log")).unwrap())
            .spawn()
            .unwrap();
        let mut s = Supervisor {
            child: Some(child),
            dir,
            socket,
            cgroup_name,
        };
        s.wait_for_socket();
        s
    }

    /// Until the control socket answers; a supervisor that exits or never answers fails
    /// the test with its exit status and its log.
    fn wait_for_socket(&mut self) {
        let end = Instant::now() + Duration::from_secs(20);
        while cuvisor::control::request(&self.socket, "GET", "/healthz").is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= end {
                panic!(
                    "the control socket never answered (supervisor {}); its log:\n{}",
                    exited.map_or("still running".into(), |e| format!("exited: {e}")),
                    self.supervisor_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Until the supervisor has launched its first instances: launches run in the
    /// background, so right after start an instance may still be `starting`.
    fn wait_for_launches(&self) {
        wait_until("the first launches", Duration::from_secs(10), || {
            let Ok((200, body)) = cuvisor::control::request(&self.socket, "GET", "/models") else {
                return false;
            };
            let status: Value = serde_json::from_str(&body).unwrap();
            status["models"].as_array().unwrap().iter().all(|m| {
                m["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i["state"] != "starting")
            })
        });
    }

    /// `start_with` with `env` added to the supervisor's environment (and so its
    /// workers'): a fake node ([`fake_node`]).
    pub fn start_in(
        tag: &str,
        settings: &str,
        env: &[(String, String)],
        models: &str,
    ) -> Supervisor {
        let mut wrapper: Vec<String> = vec!["env".into()];
        wrapper.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        Self::start_with(tag, settings, &wrapper, models)
    }

    /// `cuvisor run` on this supervisor's configuration, its stderr appended to the log.
    pub fn command(&self, config: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cuvisor"));
        c.arg("run")
            .arg("--shim")
            .arg(shim_path())
            .arg(config)
            .env_remove("LD_PRELOAD");
        c
    }

    /// Starts the supervisor again on the same configuration (after it was killed).
    pub fn respawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path("supervisor.log"))
            .unwrap();
        self.child = Some(
            self.command(&self.dir.path("cuvisor.toml"))
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        self.wait_for_socket();
        self.wait_for_launches();
    }

    pub fn status(&self) -> Value {
        let (code, body) = cuvisor::control::request(&self.socket, "GET", "/models").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn model(&self, name: &str) -> Value {
        self.status()["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap()
    }

    pub fn log(&self, leaf: &str) -> String {
        std::fs::read_to_string(self.dir.path("logs").join(format!("{leaf}.log")))
            .unwrap_or_default()
    }

    pub fn supervisor_log(&self) -> String {
        std::fs::read_to_string(self.dir.path("supervisor.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then the exit status and how long it took.
    pub fn stop(&mut self) -> (i32, Duration) {
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        // SAFETY: kill(2), declared with its C signature, on our child not yet waited for.
        unsafe { libc_kill(child.id() as i32, 15) };
        let status = child.wait().unwrap();
        (status.code().unwrap_or(-1), t.elapsed())
    }

    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        ["memory", "cpu", "pids", "freezer", "cpuset"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&self.cgroup_name))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Killed, it could not unmount its view filesystem (a real supervisor detaches it
        // at its next start, under the same name).
        let view = std::path::Path::new(cuvisor::config::RUN_DIR)
            .join(format!("{}.view", self.cgroup_name));
        // (A dead FUSE mount answers ENOTCONN to a stat: no test of it first.)
        if std::fs::read_dir(cuvisor::config::RUN_DIR)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path() == view)))
        {
            let _ = run(Command::new("umount").arg("-l").arg(&view));
            let _ = std::fs::remove_dir(&view);
        }
        // The supervisor is gone: its lock file (which a supervisor never removes) can go.
        let _ = std::fs::remove_file(
            std::path::Path::new(cuvisor::config::RUN_DIR)
                .join(format!("{}.lock", self.cgroup_name)),
        );
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn pgrep(pattern: &str) -> Vec<String> {
    let out = run(Command::new("pgrep").args(["-f", pattern]));
    lines(&out)
}

/// A supervisor whose control API also listens on a loopback TCP port, with `token` in a
/// private token file: the supervisor, its port, and the directory of the token.
pub fn with_tcp_api(tag: &str, token: &str, models: &str) -> (Supervisor, u16, TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new(&format!("{tag}-token"));
    let file = dir.path("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = cuvisor::node::process::free_port().unwrap();
    let settings = format!(
        "listen = \"127.0.0.1:{port}\"\nlisten_token = \"{}\"\n",
        file.display()
    );
    let s = Supervisor::start_with(tag, &settings, &[], models);
    (s, port, dir)
}

/// A model whose worker allocates `size` on the fake GPU and holds it, with `quota`.
pub fn holder(name: &str, size: &str, quota: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\ncommand = \"{}\"\nargs = [\"init\", \"alloc\", \"{size}\", \"sleep\", \"100000\"]\n\
         env = {{ LD_LIBRARY_PATH = \"{}\" }}\ngpu_quota = \"{quota}\"\n",
        stub_dir().join("driver_probe").display(),
        stub_dir().display()
    )
}
