//! What a worker is started with: its program, arguments, environment, credentials,
//! namespaces, read-only paths and device nodes, prepared in the supervisor before the
//! clone (the host probed here: PATH, /dev).

use crate::config::Isolation;
use crate::config::caps::CapSet;
use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

/// Everything the child needs, prepared before `clone()`.
pub struct Spec {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub isolation: Isolation,
    pub hostname: CString,
    /// What the worker keeps of the supervisor's privileges.
    pub privileges: Privileges,
    /// With a mount namespace: what becomes read-only in it (the model's `bind_ro`, the
    /// kernel's interfaces, the shim, the supervisor's binary).
    pub read_only: Vec<ReadOnly>,
    /// With a mount namespace: paths covered in it, a file with `/dev/null` (the
    /// supervisor's control socket), a directory with an empty read-only one (the
    /// ledgers and logs, for an environment's build).
    pub cover: Vec<CString>,
    /// With a mount namespace: the ledger directory, and the model's ledger in it, the one
    /// file the worker sees there.
    pub ledger: Option<(CString, CString)>,
    /// With `isolation.user`: the first of the [`USERNS_BLOCK`](crate::config::USERNS_BLOCK) host ids that ids 0.. in
    /// the worker's user namespace map to (uids and gids alike).
    pub host_ids: Option<u32>,
    /// With a mount namespace: files bound over others (source, target), each read-only:
    /// the model's view of its memory and CPUs.
    pub binds: Vec<(CString, CString)>,
    /// With a mount namespace: the entries of `/dev` the worker is shown (a new `/dev`
    /// with these of the host's bound into it); None: the host's `/dev` whole.
    pub dev: Option<Vec<DevEntry>>,
    /// With a mount namespace: a mount detached once the binds are made (the supervisor's
    /// view filesystem: the worker keeps its own files, and sees no other worker's).
    pub hide: Option<CString>,
    /// The file mode creation mask it runs with (None: the supervisor's).
    pub umask: Option<libc::mode_t>,
    /// The worker's stdin (None: /dev/null, as for a supervised worker), stdout and
    /// stderr.
    pub stdin: Option<RawFd>,
    pub stdout: RawFd,
    pub stderr: RawFd,
}

/// What a worker keeps of the supervisor's (root's) privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    /// Everything (`cuvisor exec`: the operator's own program, as if run directly).
    Inherit,
    /// These capabilities only, in every set (bounding, permitted, effective, inheritable,
    /// ambient), and `no_new_privs`: exec can never give more back.
    Keep(CapSet),
}

/// A path made read-only in the worker's mount namespace, with every mount under it: a
/// mount point, or (`bind`) a path bound onto itself first. `flags` are the mount's own
/// (kept by the remount of kernels without mount_setattr). A path that is `optional`
/// and missing is skipped.
#[derive(Debug, Clone)]
pub struct ReadOnly {
    pub path: CString,
    pub flags: libc::c_ulong,
    pub bind: bool,
    pub optional: bool,
}

/// An entry of the host's `/dev` to show a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevEntry {
    pub name: CString,
    pub kind: DevKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevKind {
    /// A directory (bound with every mount under it: `/dev/pts`, `/dev/shm`, …).
    Dir,
    /// A symbolic link, made again with this target.
    Link(CString),
    /// A device node or any other file, bound.
    Node,
}

/// The entries of `/dev` (as listed in `dir`) a worker is shown: all but the GPU nodes
/// `nvidiaN` whose N is not in `gpus` (NVIDIA's control nodes, `nvidiactl`,
/// `nvidia-uvm`, …, stay), and but `pts` and `ptmx`: the worker gets a pseudo-terminal
/// filesystem of its own (a `ptmx` bound alone could not find its `pts`).
pub fn dev_entries(dir: &std::path::Path, gpus: &[u32]) -> io::Result<Vec<DevEntry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(text) = name.to_str() else { continue };
        if text == "pts" || text == "ptmx" {
            continue;
        }
        if let Some(n) = text.strip_prefix("nvidia")
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && !n.parse::<u32>().is_ok_and(|n| gpus.contains(&n))
        {
            continue; // another GPU's node
        }
        let Ok(name) = CString::new(text) else {
            continue;
        };
        let kind = entry.file_type()?;
        let kind = if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            match CString::new(target.as_os_str().as_encoded_bytes()) {
                Ok(t) => DevKind::Link(t),
                Err(_) => continue,
            }
        } else if kind.is_dir() {
            DevKind::Dir
        } else {
            DevKind::Node
        };
        out.push(DevEntry { name, kind });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Why a launch [`Spec`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("cannot list /dev for the worker's GPUs: {0}")]
    Dev(String),
    #[error("{}: not an executable file", .0.display())]
    NotExecutable(std::path::PathBuf),
    #[error("{0}: not found in PATH")]
    NotFound(String),
    /// A NUL byte in what it names (a C string cannot hold one).
    #[error("a NUL byte in {0}")]
    Nul(String),
}

/// The search path of a process whose environment has no `PATH` (as a shell's default).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Finds `command` the way a shell would: as a path if it has a slash, else in PATH.
pub fn resolve_program(command: &str, path_var: Option<&str>) -> Result<CString, SpecError> {
    let found = if command.contains('/') {
        Some(std::path::PathBuf::from(command))
    } else {
        path_var
            .unwrap_or(DEFAULT_PATH)
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| std::path::Path::new(d).join(command))
            .find(|p| is_executable(p))
    };
    match found {
        Some(p) if is_executable(&p) => CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| SpecError::Nul("the command".into())),
        Some(p) => Err(SpecError::NotExecutable(p)),
        None => Err(SpecError::NotFound(command.to_owned())),
    }
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
