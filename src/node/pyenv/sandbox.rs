//! Where uv runs. An environment's build runs code of the packages it installs (an
//! sdist's build hooks), so it runs as the build user (`[supervisor] build_user`, never
//! root), in PID, mount, IPC and UTS namespaces of its own (the host's network: it
//! fetches packages), with no capability and `no_new_privs`, in a cgroup of its own with
//! its model's host limits, shown neither the ledgers nor the logs nor the control
//! socket, with a clean environment and umask 022 (every worker, whatever its user, reads
//! what it installs). It is killed when its time is up or when it is no longer wanted
//! (the supervisor stops). A supervisor that is not root runs uv as itself.
//!
//! The build user owns what uv writes: each environment while it is built (it stays
//! the build user's), and uv's cache, interpreters and home, kept per build user
//! (`cache-UID`, `python-UID`, `home-UID`), so that no directory ever changes owner.

use super::EnvError;
use crate::cgroups::{Hierarchy, Limits};
use crate::config::{Envs, Isolation, Logs, SupervisorConfig};
use crate::launch::{self, Privileges, Spec};
use crate::node::process::pipe;
use crate::node::worker::cstrings;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long one uv run may take (large wheels over a slow link).
pub const LIMIT: Duration = Duration::from_secs(30 * 60);

/// Where a build runs, besides its user (which is [`Envs::user`]).
pub struct Sandbox<'a> {
    /// Where its cgroup is made.
    pub hierarchy: &'a Hierarchy,
    /// Its host limits: its model's.
    pub limits: Limits,
    /// What it is not shown: directories (the ledgers, the logs) and files (the control
    /// socket).
    pub hidden: Vec<PathBuf>,
    /// Set when the build is no longer wanted: uv is killed, the build fails.
    pub cancel: &'a AtomicBool,
    /// Told each line uv writes on its standard error (its progress), as `STEP: LINE`,
    /// as it comes, credentials in URLs masked.
    pub progress: &'a (dyn Fn(&str) + Sync),
}

impl Sandbox<'_> {
    /// What a build of `supervisor`'s is not shown: its ledgers, its logs, its socket.
    pub fn hidden(supervisor: &SupervisorConfig) -> Vec<PathBuf> {
        let mut hidden = vec![supervisor.ledger_dir.clone(), supervisor.socket.clone()];
        if let Logs::Dir(dir) = &supervisor.logs {
            hidden.push(dir.clone());
        }
        hidden
    }
}

/// Variables of the supervisor's environment uv is given, besides its own (`UV_…`):
/// how to reach an index.
const PASSED: [&str; 12] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "LANG",
    "LC_ALL",
];

/// Whether this process can change its user and make namespaces.
pub(super) fn privileged() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

impl Envs {
    /// A directory of uv's that the build user owns: `NAME-UID` in the environments'
    /// directory, made (and given to the build user) if missing.
    pub(super) fn own_dir(&self, name: &str) -> Result<PathBuf, EnvError> {
        let dir = self.dir.join(format!("{name}-{}", self.user.0));
        self.make_owned(&dir)?;
        Ok(dir)
    }

    /// Makes `dir` (empty) and gives it to the build user; one that is there is left as
    /// it is if the build user owns it, refused otherwise.
    pub(super) fn make_owned(&self, dir: &Path) -> Result<(), EnvError> {
        use std::os::unix::fs::MetadataExt;
        let io = |source| EnvError::Io {
            path: dir.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() && (m.uid() == self.user.0 || !privileged()) => return Ok(()),
            Ok(_) => {
                return Err(io(std::io::Error::other(format!(
                    "not a directory of the build user (uid {})",
                    self.user.0
                ))));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir(dir).map_err(io)?;
        if privileged() {
            // A directory just made, empty: no link to follow.
            std::os::unix::fs::lchown(dir, Some(self.user.0), Some(self.user.1)).map_err(io)?;
        }
        Ok(())
    }

    /// Runs `uv ARGS` in `sandbox` (its cgroup named `leaf`) with `env` besides the usual,
    /// `stdin` on its input, in `cwd`, for at most [`LIMIT`]; its stdout.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_uv(
        &self,
        sandbox: &Sandbox,
        leaf: &str,
        step: &'static str,
        args: &[&str],
        env: &[(&str, String)],
        stdin: Option<&str>,
        cwd: Option<&Path>,
    ) -> Result<String, EnvError> {
        let root = privileged();
        let path_var = std::env::var("PATH").unwrap_or_else(|_| launch::DEFAULT_PATH.into());
        let mut vars: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("UV_") || PASSED.contains(&k.as_str()))
            .collect();
        let dir = |name| self.own_dir(name).map(|d| d.display().to_string());
        let ours = [
            ("PATH", path_var.clone()),
            ("HOME", dir("home")?),
            ("UV_CACHE_DIR", dir("cache")?),
            // Interpreters uv downloads: read by workers of any user.
            ("UV_PYTHON_INSTALL_DIR", dir("python")?),
            ("UV_LINK_MODE", "hardlink".into()),
        ];
        for (k, v) in ours.iter().chain(env) {
            vars.retain(|(name, _)| name != k);
            vars.push(((*k).to_owned(), v.clone()));
        }
        vars.retain(|(k, _)| k != "VIRTUAL_ENV");
        let not_started = |source| EnvError::Sandbox {
            step,
            user: self.user.0,
            source,
        };
        let uv_text = self.uv.display().to_string();
        let program =
            launch::resolve_program(&uv_text, Some(&path_var)).map_err(|e| EnvError::NoUv {
                uv: self.uv.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()),
            })?;
        let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).ok();
        let piped = |source| {
            not_started(launch::LaunchError::Step {
                step: "create a pipe",
                source,
            })
        };
        let (out_read, out_write) = pipe().map_err(piped)?;
        let (err_read, err_write) = pipe().map_err(piped)?;
        let input = stdin.map(|_| pipe()).transpose().map_err(piped)?;
        let spec = Spec {
            program,
            argv: cstrings(
                std::iter::once("uv".to_owned()).chain(args.iter().map(|a| a.to_string())),
            )
            .map_err(EnvError::Spec)?,
            envp: cstrings(vars.iter().map(|(k, v)| format!("{k}={v}"))).map_err(EnvError::Spec)?,
            cwd: cwd.and_then(c),
            uid: root.then_some(self.user.0),
            gid: root.then_some(self.user.1),
            isolation: Isolation {
                pid: root,
                mount: root,
                ipc: root,
                uts: root,
                network: false,
                user: false,
            },
            hostname: CString::new("cuvisor-build").expect("no NUL in a constant"),
            privileges: if root {
                Privileges::Keep(crate::config::caps::CapSet(0))
            } else {
                Privileges::Inherit
            },
            read_only: if root {
                launch::kernel_interfaces(
                    &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
                    false,
                )
            } else {
                Vec::new()
            },
            cover: if root {
                sandbox.hidden.iter().filter_map(|p| c(p)).collect()
            } else {
                Vec::new()
            },
            ledger: None,
            host_ids: None,
            binds: Vec::new(),
            dev: None,
            hide: None,
            umask: Some(0o022),
            stdin: input.as_ref().map(|(read, _)| read.as_raw_fd()),
            stdout: out_write.as_raw_fd(),
            stderr: err_write.as_raw_fd(),
        };
        let cgroup = sandbox
            .hierarchy
            .create(leaf, &sandbox.limits)
            .map_err(|e| EnvError::Cgroup(e.to_string()))?;
        let launched = launch::launch(&spec, |pid| cgroup.add(pid as u32)).map_err(|e| {
            let _ = cgroup.remove();
            match e {
                launch::LaunchError::Step { step, source }
                    if step == launch::Step::Exec.describe()
                        && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    EnvError::NoUv {
                        uv: self.uv.clone(),
                        source,
                    }
                }
                e => not_started(e),
            }
        })?;
        // Only uv holds the pipes' other ends now: their ends come when it ends.
        drop((out_write, err_write));
        let (out, err, ended) = std::thread::scope(|scope| {
            let out = scope.spawn(|| read_all(out_read));
            let err = scope.spawn(|| {
                // Line by line, each told as it comes.
                use std::io::BufRead;
                let mut all = Vec::new();
                let mut lines = std::io::BufReader::new(std::fs::File::from(err_read));
                let mut line = Vec::new();
                while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim();
                    if !text.is_empty() {
                        (sandbox.progress)(&format!("uv {step}: {}", masked(text)));
                    }
                    all.append(&mut line);
                }
                all
            });
            if let (Some(text), Some((read, write))) = (stdin, input) {
                drop(read);
                let mut write = std::fs::File::from(write);
                let _ = write.write_all(text.as_bytes());
            }
            let ended = wait(launched.pid, sandbox.cancel);
            // Whatever it left running goes, and its cgroup (and so the pipes' ends).
            let _ = cgroup.remove();
            (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
                ended,
            )
        });
        match ended {
            Ended::Exited(0) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Ended::Exited(_) => {
                let message = String::from_utf8_lossy(&err)
                    .lines()
                    .map(|l| masked(l.trim()))
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(EnvError::Uv { step, message })
            }
            Ended::TimedOut => Err(EnvError::TimedOut { step }),
            Ended::Cancelled => Err(EnvError::Cancelled),
        }
    }
}

enum Ended {
    Exited(i32),
    TimedOut,
    Cancelled,
}

/// Waits for our child `pid`: its exit, or [`LIMIT`], or `cancel`; it is killed in the
/// last two cases (its PID namespace, and everything in it, with it).
fn wait(pid: i32, cancel: &AtomicBool) -> Ended {
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waitpid for a child of ours, not blocking.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == pid || got == -1 {
            return Ended::Exited(if got == pid {
                launch::exit_code(status)
            } else {
                255
            });
        }
        let why = if cancel.load(Ordering::Relaxed) {
            Ended::Cancelled
        } else if start.elapsed() > LIMIT {
            Ended::TimedOut
        } else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        // SAFETY: kill and a blocking waitpid on our child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        return why;
    }
}

/// All of a pipe.
fn read_all(pipe: OwnedFd) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    let _ = std::fs::File::from(pipe).read_to_end(&mut buf);
    buf
}

/// `line` with the user and password of every URL in it masked (`https://***@host/`): an
/// index's credentials never reach a log.
pub(super) fn masked(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let host_end = after
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(after.len());
        match after[..host_end].rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                rest = &after[user_end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}
