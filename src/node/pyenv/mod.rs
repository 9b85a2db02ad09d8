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
use std::os::unix::ffi::OsStrExt;
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
    #[error("host uid {uid} cannot run its interpreter {}: it cannot search or execute {}", python.display(), refused.display())]
    NotRunnable {
        python: PathBuf,
        uid: u32,
        refused: PathBuf,
    },
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

/// The cgroups of builds are named with these and a hash (a model's name, and so its
/// instances' cgroups, cannot start with a dot).
const BUILD_LEAF: &str = ".build-";
const RESOLVE_LEAF: &str = ".resolve-";

/// Whether the cgroup `leaf` is a build's.
pub fn is_build_leaf(leaf: &str) -> bool {
    leaf.starts_with(BUILD_LEAF) || leaf.starts_with(RESOLVE_LEAF)
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
                let leaf = format!("{RESOLVE_LEAF}{input}");
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
        let leaf = format!("{BUILD_LEAF}{name}");
        let env_text = env.display().to_string();
        let mut venv = vec!["venv", env_text.as_str()];
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
            &["pip", "sync", &lock_text, "--python", &python],
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
        let mut args = vec!["pip", "compile", "--generate-hashes", "--no-header"];
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

/// What keeps `config`'s Python environments from being built or used, on this host:
/// uv where the build user cannot run it, environments where a model's user cannot reach
/// them. Each a sentence.
pub fn unusable(config: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    let envs = &config.supervisor.envs;
    if !config.models.iter().any(|m| m.python.is_some()) {
        return out;
    }
    let why = |refused: PathBuf| match refused.is_file() {
        true => "it cannot execute it".to_owned(),
        false => format!("it cannot search {}", refused.display()),
    };
    // Found as a build will find it.
    let path = std::env::var("PATH").unwrap_or_else(|_| crate::launch::DEFAULT_PATH.into());
    let uv = crate::launch::resolve_program(&envs.uv.to_string_lossy(), Some(&path))
        .ok()
        .map(|c| PathBuf::from(std::ffi::OsStr::from_bytes(c.as_bytes())));
    let root = sandbox::privileged();
    if let Some(uv) = uv.filter(|_| root)
        && let Err(refused) = runnable_by(&uv, envs.user)
    {
        out.push(format!(
            "uv ({}) cannot be run by the build user (uid {}): {}; install it where every \
             user can run it, or set build_user",
            uv.display(),
            envs.user.0,
            why(refused)
        ));
    }
    if root && let Err(refused) = reachable_by(&envs.dir, envs.user) {
        out.push(format!(
            "the build user (uid {}) cannot search {} on the way to the Python environments \
             ({}): let every user search it, or set envs_dir",
            envs.user.0,
            refused.display(),
            envs.dir.display()
        ));
    }
    for m in config.models.iter().filter(|m| m.python.is_some()) {
        let user = m.host_user();
        if user.0 == 0 {
            continue;
        }
        if let Err(refused) = reachable_by(&envs.dir, user) {
            out.push(format!(
                "model {} runs as host uid {}, which cannot search {} on the way to its \
                 Python environments ({}): let every user search it, or set envs_dir",
                m.name,
                user.0,
                refused.display(),
                envs.dir.display()
            ));
        }
    }
    out
}

/// Whether a user (host uid and gid; supplementary groups aside) may do `want` (the
/// `rwx` bits, as in "others" of a mode: 4 read, 1 execute) to a file of `mode` owned by
/// `owner`. Root may do anything but execute a file no one may execute.
pub fn allows(mode: u32, owner: (u32, u32), user: (u32, u32), want: u32) -> bool {
    let bits = if user.0 == 0 {
        return want & 1 == 0 || mode & 0o111 != 0 || mode & 0o170000 == 0o040000;
    } else if user.0 == owner.0 {
        mode >> 6
    } else if user.1 == owner.1 {
        mode >> 3
    } else {
        mode
    } & 7;
    bits & want == want
}

/// Why `user` cannot run the program at `path` (following links, as exec does): the
/// first directory on its way it may not search (the way as named, and as the links
/// lead), or the file it may not execute.
/// `Ok(())` for a path that does not exist (nothing to say yet).
pub fn runnable_by(path: &Path, user: (u32, u32)) -> Result<(), PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    // The directories as named, then as they really are, then the file.
    for named in [path, &real] {
        reachable_by(named.parent().unwrap_or(named), user)?;
    }
    match std::fs::metadata(&real) {
        Ok(m) if !m.is_file() || !allows(m.mode(), (m.uid(), m.gid()), user, 1) => Err(real),
        _ => Ok(()),
    }
}

/// Why `user` cannot reach `dir` (the first directory on the way it may not search);
/// what does not exist yet is not refused.
pub fn reachable_by(dir: &Path, user: (u32, u32)) -> Result<(), PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut so_far = PathBuf::new();
    for part in dir.components() {
        so_far.push(part);
        match std::fs::metadata(&so_far) {
            Ok(m) if !allows(m.mode(), (m.uid(), m.gid()), user, 1) => return Err(so_far),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(
            sandbox::masked("GET https://me:s3cret@pypi.example/simple/x/ and http://plain/y"),
            "GET https://***@pypi.example/simple/x/ and http://plain/y"
        );
        assert_eq!(sandbox::masked("no url: a@b"), "no url: a@b");
        assert_eq!(sandbox::masked("file://tok@h"), "file://***@h");
    }

    #[test]
    fn who_may_search_or_run_by_the_modes() {
        let (root, me, other) = ((0, 0), (1000, 1000), (2000, 2000));
        let mine = (1000, 1000);
        // A directory only its owner may enter.
        assert!(allows(0o040700, mine, me, 1));
        assert!(!allows(0o040700, mine, other, 1));
        assert!(allows(0o040700, mine, root, 1));
        // Its group's.
        assert!(allows(0o040750, mine, (3000, 1000), 1));
        assert!(
            !allows(0o040705, mine, (3000, 1000), 1),
            "the group's bits, not others'"
        );
        // A program: others may run 0755, not 0750 nor 0644; root runs any with an x.
        assert!(allows(0o100755, mine, other, 1));
        assert!(!allows(0o100750, mine, other, 1));
        assert!(!allows(0o100644, mine, root, 1));
        assert!(allows(0o100700, mine, root, 1));
        assert!(allows(0o100644, mine, other, 4));
    }

    #[test]
    fn the_first_directory_in_the_way_is_named() {
        let dir = std::env::temp_dir().join(format!("cuvisor-reach-{}", std::process::id()));
        let inner = dir.join("private/bin");
        std::fs::create_dir_all(&inner).unwrap();
        let program = inner.join("tool");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(&dir, 0o755).unwrap();
        mode(&program, 0o755).unwrap();
        mode(&dir.join("private"), 0o700).unwrap();
        let nobody = (65534, 65534);
        assert_eq!(runnable_by(&program, nobody), Err(dir.join("private")));
        assert_eq!(reachable_by(&inner, nobody), Err(dir.join("private")));
        assert_eq!(
            reachable_by(&dir.join("private/new/deeper"), (0, 0)),
            Ok(())
        );
        mode(&dir.join("private"), 0o711).unwrap();
        assert_eq!(runnable_by(&program, nobody), Ok(()));
        mode(&program, 0o700).unwrap();
        assert_eq!(runnable_by(&program, nobody), Err(program.clone()));
        assert_eq!(runnable_by(&dir.join("missing"), nobody), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
