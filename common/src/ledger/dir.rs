//! The ledger directory: where it is, whom it is trusted from, and opening it from `/`
//! without following a link; which names can name a model (and so a ledger file).

use super::error::{LedgerError, io_err};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where ledgers live unless told otherwise (`CUVISOR_LEDGER_DIR`).
pub const DEFAULT_DIR: &str = "/dev/shm/cuvisor";

/// Where this user's ledgers live unless told otherwise: [`DEFAULT_DIR`] for root, and
/// `/dev/shm/cuvisor-UID` for anyone else (a directory another user made first could not
/// be trusted, and is refused).
pub fn default_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    match unsafe { libc::geteuid() } {
        0 => PathBuf::from(DEFAULT_DIR),
        uid => PathBuf::from(format!("{DEFAULT_DIR}-{uid}")),
    }
}

/// In a user namespace other than the host's, the uid that files of users outside it show
/// (the overflow uid): the host's root among them. A worker that a supervisor started in a
/// user namespace sees every file the supervisor made so. None in the host's namespace.
fn outside_uid() -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let identity = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if identity {
        return None;
    }
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or(Some(65534))
}

/// Refuses what neither root nor this user owns, and what others may write (a directory
/// with the sticky bit, such as `/tmp` or `/dev/shm`, is fine on the way to the ledger
/// directory: nobody can rename what is not theirs there). Inside a user namespace, what
/// belongs to someone outside it is owned as root's: the namespace's maker chose the path.
pub(super) fn check_owner(
    path: &Path,
    uid: u32,
    mode: u32,
    ancestor: bool,
) -> Result<(), LedgerError> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let why = if uid != 0 && uid != me && Some(uid) != outside_uid() {
        Some("owned by another user")
    } else if mode & 0o002 != 0 && !(ancestor && mode & 0o1000 != 0) {
        Some("writable by every user")
    } else {
        None
    };
    match why {
        Some(why) => Err(LedgerError::Untrusted {
            path: path.to_owned(),
            uid,
            mode,
            why,
        }),
        None => Ok(()),
    }
}

/// Opens the ledger directory from `/`, one component at a time, never following a
/// symbolic link, checking the owner and mode of each ([`check_owner`]). With
/// `create_mode`, missing directories are created (the last with that mode, parents 0755).
/// Everything after is opened relative to the descriptor returned.
pub(super) fn open_dir(dir: &Path, create_mode: Option<u32>) -> Result<OwnedFd, LedgerError> {
    use std::path::Component;
    let untrusted = |why| LedgerError::Untrusted {
        path: dir.to_owned(),
        uid: 0,
        mode: 0,
        why,
    };
    if !dir.is_absolute() {
        return Err(untrusted("not an absolute path"));
    }
    let names: Vec<&std::ffi::OsStr> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::RootDir | Component::CurDir => None,
            _ => Some(Err(())),
        })
        .collect::<Result<_, _>>()
        .map_err(|()| untrusted("a path with '..' in it"))?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: open of a constant path.
    let root = unsafe { libc::open(c"/".as_ptr(), flags) };
    if root < 0 {
        return Err(io_err(Path::new("/"), "open")(io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we just opened and own.
    let mut fd = unsafe { OwnedFd::from_raw_fd(root) };
    let mut so_far = PathBuf::from("/");
    for (k, name) in names.iter().enumerate() {
        so_far.push(name);
        let last = k + 1 == names.len();
        let c_name = CString::new(name.as_encoded_bytes()).map_err(|_| untrusted("a NUL byte"))?;
        let open = |fd: &OwnedFd| {
            // SAFETY: openat relative to a directory we verified.
            let raw = unsafe { libc::openat(fd.as_raw_fd(), c_name.as_ptr(), flags) };
            // SAFETY: a descriptor we just opened and own.
            (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
        };
        let next = match open(&fd) {
            Some(next) => next,
            None => {
                let e = io::Error::last_os_error();
                let mode = if last {
                    create_mode
                } else {
                    create_mode.map(|_| 0o755)
                };
                match (e.raw_os_error(), mode) {
                    (Some(libc::ENOENT), Some(mode)) => {
                        // SAFETY: mkdirat relative to a directory we verified.
                        if unsafe { libc::mkdirat(fd.as_raw_fd(), c_name.as_ptr(), mode) } != 0
                            && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                        {
                            return Err(io_err(&so_far, "create the ledger directory")(
                                io::Error::last_os_error(),
                            ));
                        }
                        open(&fd).ok_or_else(|| {
                            io_err(&so_far, "open the ledger directory")(io::Error::last_os_error())
                        })?
                    }
                    (Some(libc::ELOOP | libc::ENOTDIR), _) => {
                        return Err(LedgerError::Untrusted {
                            path: so_far,
                            uid: 0,
                            mode: 0,
                            why: "a symbolic link or not a directory",
                        });
                    }
                    _ => return Err(io_err(&so_far, "open the ledger directory")(e)),
                }
            }
        };
        // SAFETY: stat is plain data; all zeros is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on our own descriptor into a local struct.
        if unsafe { libc::fstat(next.as_raw_fd(), &mut st) } != 0 {
            return Err(io_err(&so_far, "inspect")(io::Error::last_os_error()));
        }
        check_owner(&so_far, st.st_uid, st.st_mode, !last)?;
        fd = next;
    }
    Ok(fd)
}

/// Lets every user traverse (not list) the ledger directory, as [`LedgerFile::create`] makes
/// it with a group: for a directory made before its models ran as other users. Each file
/// keeps its own mode.
///
/// [`LedgerFile::create`]: super::LedgerFile::create
pub fn make_traversable(dir: &Path) -> Result<(), LedgerError> {
    let opened = reopen_dir(&open_dir(dir, None)?).map_err(io_err(dir, "open"))?;
    let meta = opened.metadata().map_err(io_err(dir, "inspect"))?;
    let mode = meta.mode() & 0o7777;
    // SAFETY: fchmod on the descriptor of the directory we checked.
    if mode & 0o011 != 0o011 && unsafe { libc::fchmod(opened.as_raw_fd(), mode | 0o011) } != 0 {
        return Err(io_err(dir, "let other users traverse")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A readable descriptor of the directory that `checked` (an `O_PATH` descriptor from
/// [`open_dir`]) names: the same directory, not the path looked up again.
pub(super) fn reopen_dir(checked: &OwnedFd) -> io::Result<File> {
    // SAFETY: openat of "." relative to a directory descriptor we own.
    let fd = unsafe {
        libc::openat(
            checked.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether `name` can name a model (and so a ledger file): 1 to 64 letters, digits, `.`,
/// `_` or `-`, not starting with `.`.
pub fn valid_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_checked() {
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_model_name(bad), "{bad}");
        }
        assert!(valid_model_name("llama-3.1_8b"));
    }
}
