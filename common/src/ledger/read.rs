//! Reading ledgers without mapping them, as the supervisor and `cuvisor ledger` do: one
//! model's from a copy ([`read_snapshot`]), and every model of a directory ([`list`]).

use super::dir::{open_dir, reopen_dir};
use super::error::{LedgerError, io_err};
use super::file::LedgerFile;
use super::liveness::held_elsewhere;
use super::snapshot::{Snapshot, parse_snapshot};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The ledger of `model` read from a copy, never mapped: what a process that must not
/// trust the model's processes (the supervisor, `cuvisor ledger`) reads. A process of the
/// model may truncate or rewrite the file at any moment; that makes this fail (or read
/// numbers that are wrong, saturated, never out of range) and harms nothing else.
pub fn read_snapshot(dir: &Path, model: &str) -> Result<Snapshot, LedgerError> {
    let (path, file, size) = LedgerFile::open_validated(dir, model)?;
    let mut raw = vec![0u8; size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut raw, 0).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            LedgerError::Damaged {
                path: path.clone(),
                what: "it shrank while it was read".into(),
            }
        } else {
            io_err(&path, "read")(e)
        }
    })?;
    // The file may have changed since it was opened: everything is checked again.
    parse_snapshot(&raw, model, |index| held_elsewhere(&file, index))
        .map_err(|what| LedgerError::Damaged { path, what })
}

/// One model found by [`list`]: its name, and its snapshot or why it could not be read.
pub type Listed = (String, Result<Snapshot, LedgerError>);

/// Every ledger in `dir`, each read from a copy ([`read_snapshot`]).
pub fn list(dir: &Path) -> Result<Vec<Listed>, LedgerError> {
    let checked = match open_dir(dir, None) {
        Err(LedgerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
        Ok(fd) => fd,
    };
    // The names come from the directory checked, through its descriptor; each ledger is
    // then opened (and checked) on its own.
    let opened = reopen_dir(&checked).map_err(io_err(dir, "list"))?;
    let entries = std::fs::read_dir(format!("/proc/self/fd/{}", opened.as_raw_fd()))
        .map_err(io_err(dir, "list"))?;
    let mut models: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ledger")
                .map(str::to_owned)
        })
        .filter(|m| !m.starts_with('.'))
        .collect();
    models.sort();
    Ok(models
        .into_iter()
        .map(|m| {
            let snap = read_snapshot(dir, &m);
            (m, snap)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testing::fresh;
    use crate::size::QuotaSpec;

    /// A file of the first layout (one quota for all GPUs) is refused with what to do.
    #[test]
    fn a_version_1_file_is_refused_with_what_to_do() {
        let (dir, l) = fresh("v1", QuotaSpec::Bytes(100));
        let path = l.path().to_path_buf();
        drop(l);
        let mut raw = std::fs::read(&path).unwrap();
        raw[8..12].copy_from_slice(&1u32.to_ne_bytes());
        std::fs::write(&path, &raw).unwrap();
        let err = LedgerFile::open(&dir, "m").err().unwrap().to_string();
        assert!(
            err.contains("version 1")
                && err.contains("older cuvisor")
                && err.contains("quota per GPU")
                && err.contains("cuvisor ledger create"),
            "{err}"
        );
        let err = read_snapshot(&dir, "m").unwrap_err().to_string();
        assert!(err.contains("version 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
