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
//! Every uv run is sandboxed ([`sandbox`]): as the build user, in namespaces and a cgroup
//! of its own, with a time limit, killed when its build is no longer wanted.

mod sandbox;
pub use sandbox::{LIMIT, Sandbox};

/// Declared in the configuration ([`crate::config::python`]); these paths stay for one release.
pub use crate::config::{Envs, PythonSpec};
use sha2::{Digest, Sha256};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
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
    #[error("uv {step}: cannot start it in its sandbox as the build user (uid {user}): {source}")]
    Sandbox {
        step: &'static str,
        user: u32,
        source: crate::launch::LaunchError,
    },
    #[error("uv: {0}")]
    Spec(crate::launch::SpecError),
    #[error("the build's cgroup: {0}")]
    Cgroup(String),
    #[error("cancelled: the supervisor is stopping")]
    Cancelled,
    #[error("the build panicked (a bug in cuvisor: please report it)")]
    Panicked,
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

fn hex(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Envs {
    /// The environment of `spec`: its directory, built first if needed. `resolve_again`:
    /// ask the index again even if the model's input was resolved before (`cuvisor env
    /// build`). uv runs in `sandbox`.
    pub fn build(
        &self,
        spec: &PythonSpec,
        resolve_again: bool,
        sandbox: &Sandbox,
    ) -> Result<PathBuf, EnvError> {
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
        let input = hex(&input.finalize());
        let resolution = resolved_dir.join(&input);
        let pins = match std::fs::read_to_string(&resolution) {
            Ok(text) if !resolve_again => text,
            _ => {
                let leaf = format!(".resolve-{input}");
                let text = self.resolve(spec, requirements.as_deref(), sandbox, &leaf)?;
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
        let name = hex(&hash.finalize());
        let env = self.dir.join(&name);
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
        if std::fs::symlink_metadata(&env).is_ok() {
            std::fs::remove_dir_all(&env).map_err(io(&env))?; // half-built: again
        }
        // The build user's while it is built.
        self.make_owned(&env)?;
        // Not a model's leaf: a model's name does not start with a dot.
        let leaf = format!(".build-{name}");
        let env_text = env.display().to_string();
        let mut venv = vec!["venv", env_text.as_str(), "--quiet"];
        if let Some(v) = &spec.version {
            venv.extend(["--python", v]);
        }
        self.uv(sandbox, &leaf, "venv", &venv, spec, None, None)?;
        let lock_file = env.join("requirements.lock");
        std::fs::write(&lock_file, &pins).map_err(io(&lock_file))?;
        let python = env.join("bin/python").display().to_string();
        let lock_text = lock_file.display().to_string();
        self.uv(
            sandbox,
            &leaf,
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
    fn resolve(
        &self,
        spec: &PythonSpec,
        text: Option<&[u8]>,
        sandbox: &Sandbox,
        leaf: &str,
    ) -> Result<String, EnvError> {
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
            sandbox,
            leaf,
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

    /// Runs `uv ARGS` with the model's index settings, in `sandbox`; its stdout.
    #[allow(clippy::too_many_arguments)]
    fn uv(
        &self,
        sandbox: &Sandbox,
        leaf: &str,
        step: &'static str,
        args: &[&str],
        spec: &PythonSpec,
        stdin: Option<&str>,
        cwd: Option<&Path>,
    ) -> Result<String, EnvError> {
        let mut args: Vec<&str> = args.to_vec();
        let mut env = Vec::new();
        if step != "venv" {
            // In uv's environment, not on its command line: every local user can read
            // a command line in /proc, and the URL may hold the index's credentials.
            if let Some(i) = &spec.index_url {
                env.push(("UV_DEFAULT_INDEX", i.clone()));
            }
            for f in &spec.find_links {
                args.extend(["--find-links", f]);
            }
        }
        if spec.offline {
            args.push("--offline");
        }
        self.run_uv(sandbox, leaf, step, &args, &env, stdin, cwd)
    }
}
