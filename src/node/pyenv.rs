//! A Python environment per model, built by uv (the tool Omni uses): `python = {
//! requirements = "…" }` in a model's configuration. Built once, before the model's first
//! start, into a directory named by a hash of the resolved requirements, so that models
//! with the same requirements share one environment; every environment shares uv's cache
//! (in the same directory, so that uv hard-links packages instead of copying them).
//!
//! Building: `uv pip compile` resolves the requirements (for the model's Python version,
//! with its index, find-links and offline settings, the index lines and the hashes of
//! what it chose written into the result) to exact versions. The resolution is kept,
//! named by a hash of the model's input (its requirements file's content, its packages,
//! its settings): a model's later starts reuse it without asking an index, until the
//! input changes or `cuvisor env build` resolves again. A hash of the resolution names
//! the environment; if it is not there yet, `uv venv` makes it and `uv pip sync` installs
//! exactly the resolution, under a lock (two instances starting at once build it once),
//! and a marker file says it is complete (an environment left half-built is built again).
//! Every uv run has a time limit and dies with the thread that started it.

/// Declared in the configuration ([`crate::config::python`]); these paths stay for one release.
pub use crate::config::{Envs, PythonSpec};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why an environment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "cannot run uv ({uv}): {source} (install it: `pip install uv`, or set uv in [supervisor])"
    )]
    NoUv { uv: PathBuf, source: std::io::Error },
    #[error("cannot read the requirements {path}: {source}")]
    Requirements {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the requirements {path}: a symbolic link, not followed (name the file itself), or not a regular file"
    )]
    RequirementsNotAFile { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("uv {step} failed: {message}")]
    Uv { step: &'static str, message: String },
    #[error("uv {step} did not end within {} min: killed", LIMIT.as_secs() / 60)]
    TimedOut { step: &'static str },
}

/// A requirements file's content, read as the supervisor's user would not be fooled into:
/// a symbolic link is not followed (another user who can write its directory could point
/// it at a file only root may read, whose lines uv's errors would quote), and it must be a
/// regular file.
fn read_requirements(path: &Path) -> Result<Vec<u8>, EnvError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refused = || EnvError::RequirementsNotAFile {
        path: path.to_owned(),
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => refused(),
            _ => EnvError::Requirements {
                path: path.to_owned(),
                source,
            },
        })?;
    let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
    if !regular {
        return Err(refused());
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .map_err(|source| EnvError::Requirements {
            path: path.to_owned(),
            source,
        })?;
    Ok(text)
}

/// The marker of a complete environment.
const READY: &str = ".cuvisor-ready";
/// How long one uv run may take (large wheels over a slow link).
const LIMIT: Duration = Duration::from_secs(30 * 60);

/// All of a pipe, read on a thread of its own.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn hex(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Envs {
    /// The environment of `spec`: its directory, built first if needed. `resolve_again`:
    /// ask the index again even if the model's input was resolved before (`cuvisor env
    /// build`).
    pub fn build(&self, spec: &PythonSpec, resolve_again: bool) -> Result<PathBuf, EnvError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| EnvError::Io { path, source }
        };
        let resolved_dir = self.dir.join("resolved");
        std::fs::create_dir_all(&resolved_dir).map_err(io(&resolved_dir))?;
        // The model's input, all of it: what it asks for and where from.
        let mut input = Sha256::new();
        let requirements = match &spec.requirements {
            Some(path) => Some(read_requirements(path)?),
            None => None,
        };
        if let (Some(path), Some(text)) = (&spec.requirements, &requirements) {
            input.update(path.as_os_str().as_encoded_bytes());
            input.update(text);
        }
        input.update(format!("{spec:?}"));
        let resolution = resolved_dir.join(hex(&input.finalize()));
        let pins = match std::fs::read_to_string(&resolution) {
            Ok(text) if !resolve_again => text,
            _ => {
                let text = self.resolve(spec, requirements.as_deref())?;
                std::fs::write(&resolution, &text).map_err(io(&resolution))?;
                text
            }
        };
        let mut hash = Sha256::new();
        hash.update(format!(
            "python={}\n",
            spec.version.as_deref().unwrap_or("")
        ));
        hash.update(&pins);
        let env = self.dir.join(hex(&hash.finalize()));
        if env.join(READY).exists() {
            return Ok(env);
        }
        // One builder at a time (a lock the kernel drops if the builder dies).
        let lock_path = env.with_extension("lock");
        let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        let start = Instant::now();
        // SAFETY: flock on a descriptor we own, released when it is closed.
        while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if start.elapsed() > LIMIT {
                return Err(EnvError::TimedOut {
                    step: "build by another instance",
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if env.join(READY).exists() {
            return Ok(env); // another built it meanwhile
        }
        if env.exists() {
            std::fs::remove_dir_all(&env).map_err(io(&env))?; // half-built: again
        }
        let env_text = env.display().to_string();
        let mut venv = vec!["venv", env_text.as_str(), "--quiet"];
        if let Some(v) = &spec.version {
            venv.extend(["--python", v]);
        }
        self.uv("venv", &venv, spec, None, None)?;
        let lock_file = env.join("requirements.lock");
        std::fs::write(&lock_file, &pins).map_err(io(&lock_file))?;
        let python = env.join("bin/python").display().to_string();
        let lock_text = lock_file.display().to_string();
        self.uv(
            "pip sync",
            &["pip", "sync", &lock_text, "--python", &python, "--quiet"],
            spec,
            None,
            None,
        )?;
        std::fs::write(env.join(READY), "").map_err(io(&env))?;
        Ok(env)
    }

    /// `uv pip compile` of the model's requirements: the pinned list, with the hashes of
    /// what was chosen (so that a wheel rebuilt under the same version, from this index
    /// or another, makes another resolution). The index is not written in it: its URL
    /// may hold credentials, and every worker can read the environments' directory.
    ///
    /// The requirements file's `text`, read by [`read_requirements`], goes to uv on its
    /// standard input with the packages: uv never opens the path itself.
    fn resolve(&self, spec: &PythonSpec, text: Option<&[u8]>) -> Result<String, EnvError> {
        let mut args = vec!["pip", "compile", "--quiet", "--generate-hashes"];
        args.push("--emit-find-links");
        if let Some(v) = &spec.version {
            args.extend(["--python-version", v]);
        }
        let mut inline = text
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        if !inline.is_empty() && !inline.ends_with('\n') {
            inline.push('\n');
        }
        inline.push_str(&spec.packages.join("\n"));
        if !inline.is_empty() {
            args.push("-");
        }
        // Relative paths in a requirements file are its directory's.
        let cwd = spec.requirements.as_deref().and_then(Path::parent);
        let out = self.uv(
            "pip compile",
            &args,
            spec,
            (!inline.is_empty()).then_some(inline.as_str()),
            cwd,
        )?;
        Ok(out
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect())
    }

    /// Runs `uv ARGS` with the model's index settings and our cache and interpreters, for
    /// at most [`LIMIT`]; its stdout.
    fn uv(
        &self,
        step: &'static str,
        args: &[&str],
        spec: &PythonSpec,
        stdin: Option<&str>,
        cwd: Option<&Path>,
    ) -> Result<String, EnvError> {
        let mut cmd = Command::new(&self.uv);
        cmd.args(args)
            .env("UV_CACHE_DIR", self.dir.join("cache"))
            // Interpreters uv downloads go here too: readable by workers of any user.
            .env("UV_PYTHON_INSTALL_DIR", self.dir.join("python"))
            .env("UV_LINK_MODE", "hardlink")
            .env_remove("VIRTUAL_ENV")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        if step != "venv" {
            // In uv's environment, not on its command line: every local user can read
            // a command line in /proc, and the URL may hold the index's credentials.
            if let Some(i) = &spec.index_url {
                cmd.env("UV_DEFAULT_INDEX", i);
            }
            for f in &spec.find_links {
                cmd.args(["--find-links", f]);
            }
        }
        if spec.offline {
            cmd.arg("--offline");
        }
        // SAFETY: prctl in the child between fork and exec, async-signal-safe: uv dies
        // with the thread that started it (a supervisor killed mid-build leaves no uv
        // writing into an environment the next one builds again).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let no_uv = |source| EnvError::NoUv {
            uv: self.uv.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(no_uv)?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            let _ = input.write_all(text.as_bytes());
        }
        // Both pipes read on threads while waiting with a limit.
        let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(no_uv)? {
                break status;
            }
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(EnvError::TimedOut { step });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        if !status.success() {
            let message = String::from_utf8_lossy(&err)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(EnvError::Uv { step, message });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
