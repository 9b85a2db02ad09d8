//! What checking a configuration asks of the host it will run on: users and groups, files,
//! secrets, online CPUs. [`SystemHost`] asks this machine; tests and the fuzz target pass
//! a [`Host`] of their own, so that what a configuration means does not depend on the
//! machine that checks it.

use super::cpus::CpuSet;
use super::secrets::{self, SecretError};
use std::path::{Path, PathBuf};

/// The host lookups of [`super::Config::parse_on`].
pub trait Host {
    /// A user's uid and primary gid.
    fn user(&self, name: &str) -> Option<(u32, u32)>;
    fn group(&self, name: &str) -> Option<u32>;
    /// A user or group whose id is in `first..=last`, as "user NAME (uid N)".
    fn id_in_use(&self, first: u32, last: u32) -> Option<String>;
    fn is_file(&self, path: &Path) -> bool;
    fn exists(&self, path: &Path) -> bool;
    /// `listen_token`'s token ([`secrets::read_token`]).
    fn read_token(&self, path: &Path) -> Result<String, SecretError>;
    /// `api_keys`' keys ([`secrets::read_keys`]).
    fn read_keys(&self, path: &Path) -> Result<Vec<String>, SecretError>;
    fn online_cpus(&self) -> Option<CpuSet>;
    /// The program `name` beside this process's own binary, if there is one there (as
    /// `pip install cuvisor` places uv beside `cuvisor`). None by default.
    fn beside_me(&self, name: &str) -> Option<PathBuf> {
        let _ = name;
        None
    }
}

/// This machine.
pub struct SystemHost;

impl Host for SystemHost {
    fn user(&self, name: &str) -> Option<(u32, u32)> {
        lookup_user(name)
    }
    fn group(&self, name: &str) -> Option<u32> {
        lookup_group(name)
    }
    fn id_in_use(&self, first: u32, last: u32) -> Option<String> {
        id_in_use(first, last)
    }
    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn read_token(&self, path: &Path) -> Result<String, SecretError> {
        secrets::read_token(path)
    }
    fn read_keys(&self, path: &Path) -> Result<Vec<String>, SecretError> {
        secrets::read_keys(path)
    }
    fn online_cpus(&self) -> Option<CpuSet> {
        CpuSet::online()
    }
    fn beside_me(&self, name: &str) -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let found = exe.parent()?.join(name);
        found.is_file().then_some(found)
    }
}

/// Looks a user up by name or number.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = name.parse::<u32>() {
        return Some((uid, uid));
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam with a valid C string; the result is copied at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        None
    } else {
        // SAFETY: non-null passwd entry.
        Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    }
}

fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam with a valid C string; the result is copied at once.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        None
    } else {
        // SAFETY: non-null group entry, read at once.
        Some(unsafe { (*gr).gr_gid })
    }
}

/// A user or group of this host (from `/etc/passwd` and `/etc/group`) whose id is in
/// `first..=last`, as "user NAME (uid N)".
fn id_in_use(first: u32, last: u32) -> Option<String> {
    [
        ("/etc/passwd", "user", "uid"),
        ("/etc/group", "group", "gid"),
    ]
    .into_iter()
    .find_map(|(file, what, id)| {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let n: u32 = fields.nth(1)?.parse().ok()?;
            (first..=last)
                .contains(&n)
                .then(|| format!("{what} {name} ({id} {n})"))
        })
    })
}
