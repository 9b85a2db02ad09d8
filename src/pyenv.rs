//! A Python environment per model, built by uv (the tool Omni uses): `python = {
//! requirements = "…" }` in a model's configuration. Built once, before the model's first
//! start, into a directory named by a hash of the resolved requirements, so that models
//! with the same requirements share one environment; every environment shares uv's cache
//! (in the same directory, so that uv hard-links packages instead of copying them).
//!
//! Building: `uv pip compile` resolves the requirements (the model's index, find-links
//! and offline settings passed through) to exact versions; their hash names the
//! environment; if it is not there yet, `uv venv` makes it and `uv pip sync` installs
//! exactly the resolution, under a lock (two instances starting at once build it once),
//! and a marker file says it is complete (an environment left half-built by a crash is
//! built again).

use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A model's `python` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PythonSpec {
    /// A requirements file (absolute path).
    pub requirements: Option<PathBuf>,
    /// Requirements given inline (`packages = ["torch==2.5.1", …]`).
    pub packages: Vec<String>,
    /// The interpreter version (`uv venv --python`); None: the one uv finds.
    pub version: Option<String>,
    pub index_url: Option<String>,
    pub find_links: Vec<String>,
    /// Resolve and install from uv's cache and `find_links` only.
    pub offline: bool,
}

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("uv {step} failed: {message}")]
    Uv { step: &'static str, message: String },
}

/// Where environments are built, and with which uv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envs {
    pub dir: PathBuf,
    pub uv: PathBuf,
}

/// The marker of a complete environment.
const READY: &str = ".cuvisor-ready";

impl Envs {
    /// The environment of `spec`: its directory, built first if needed.
    pub fn build(&self, spec: &PythonSpec) -> Result<PathBuf, EnvError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| EnvError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let mut wanted = match &spec.requirements {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|source| EnvError::Requirements {
                    path: path.clone(),
                    source,
                })?
            }
            None => String::new(),
        };
        for p in &spec.packages {
            wanted += &format!("\n{p}");
        }
        let resolved = self.uv(
            "pip compile",
            &["pip", "compile", "-", "--quiet"],
            spec,
            Some(&wanted),
        )?;
        let pins: Vec<&str> = resolved
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mut hash = Sha256::new();
        hash.update(format!(
            "python={}\n",
            spec.version.as_deref().unwrap_or("")
        ));
        for p in &pins {
            hash.update(p.as_bytes());
            hash.update(b"\n");
        }
        let key: String = hash.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let env = self.dir.join(&key);
        if env.join(READY).exists() {
            return Ok(env);
        }
        // One builder at a time (a lock the kernel drops if the builder dies).
        let lock_path = self.dir.join(format!("{key}.lock"));
        let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        // SAFETY: flock on a descriptor we own, released when it is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(&lock_path)(std::io::Error::last_os_error()));
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
        self.uv("venv", &venv, spec, None)?;
        let lock_file = env.join("requirements.lock");
        let mut text = pins.join("\n");
        text.push('\n');
        std::fs::write(&lock_file, text).map_err(io(&lock_file))?;
        let python = env.join("bin/python").display().to_string();
        let lock_text = lock_file.display().to_string();
        self.uv(
            "pip sync",
            &["pip", "sync", &lock_text, "--python", &python, "--quiet"],
            spec,
            None,
        )?;
        std::fs::write(env.join(READY), "").map_err(io(&env))?;
        Ok(env)
    }

    /// Runs `uv ARGS` with the model's index settings and our cache; its stdout.
    fn uv(
        &self,
        step: &'static str,
        args: &[&str],
        spec: &PythonSpec,
        stdin: Option<&str>,
    ) -> Result<String, EnvError> {
        let mut cmd = Command::new(&self.uv);
        cmd.args(args)
            .env("UV_CACHE_DIR", self.dir.join("cache"))
            .env("UV_LINK_MODE", "hardlink")
            .env_remove("VIRTUAL_ENV")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if step != "venv" {
            if let Some(i) = &spec.index_url {
                cmd.args(["--index-url", i]);
            }
            for f in &spec.find_links {
                cmd.args(["--find-links", f]);
            }
        }
        if spec.offline {
            cmd.arg("--offline");
        }
        let mut child = cmd.spawn().map_err(|source| EnvError::NoUv {
            uv: self.uv.clone(),
            source,
        })?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            let _ = input.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| EnvError::NoUv {
            uv: self.uv.clone(),
            source,
        })?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(EnvError::Uv { step, message });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
