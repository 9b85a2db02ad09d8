//! Reading and writing cgroup files (never created: a missing file is an error), and
//! the errors they give.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(super) const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
pub(super) const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
/// CPU quota period: 100 ms.
pub(super) const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup operation that failed: what, where, why.
#[derive(Debug)]
pub struct CgroupError {
    pub path: PathBuf,
    pub action: String,
    pub source: io::Error,
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cgroup {}: cannot {}: {}",
            self.path.display(),
            self.action,
            self.source
        )
    }
}

impl std::error::Error for CgroupError {}

pub(super) fn err<'a>(
    path: &'a Path,
    action: &'a str,
) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError {
        path: path.to_owned(),
        action: action.to_owned(),
        source,
    }
}

/// Writes a controller file that must already exist.
pub(super) fn write_file(path: &Path, value: &str, action: &str) -> Result<(), CgroupError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err(path, action))?;
    f.write_all(value.as_bytes()).map_err(err(path, action))
}

pub(super) fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The `key N` line of a flat-keyed file (memory.events, memory.oom_control).
pub(super) fn read_key(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether we may create cgroups in `dir`: not on a read-only mount (as in many
/// containers), and ours to write.
pub(super) fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

pub(super) const NOT_MOUNTED: &str = "not mounted";
pub(super) const NOT_WRITABLE: &str = "not writable (a read-only mount, or not root)";

pub(super) fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain data; all zeros is a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs with a valid path and buffer.
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0).then_some(s.f_type)
}
