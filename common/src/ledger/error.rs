//! Why a ledger could not be used: [`LedgerError`], and what it says to people.

use super::layout::{MAX_GPUS, SLOTS};
use crate::gpu::GpuUuid;
use crate::size::QuotaSpec;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a ledger could not be used. Every variant names the file.
#[derive(Debug)]
pub enum LedgerError {
    BadModelName {
        model: String,
    },
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    NotARegularFile {
        path: PathBuf,
        what: &'static str,
    },
    Damaged {
        path: PathBuf,
        what: String,
    },
    Exists {
        path: PathBuf,
    },
    QuotaMismatch {
        path: PathBuf,
        model: String,
        ledger: Option<QuotaSpec>,
        requested: QuotaSpec,
    },
    Full {
        path: PathBuf,
    },
    /// The model already uses [`MAX_GPUS`] GPUs and a process met another one.
    TooManyGpus {
        path: PathBuf,
        uuid: GpuUuid,
    },
    /// A directory on the way to the ledger, or the ledger itself, that someone other than
    /// root or this user could change: using it would let them change the quota.
    Untrusted {
        path: PathBuf,
        uid: u32,
        mode: u32,
        why: &'static str,
    },
}

fn exact_quota(q: Option<QuotaSpec>) -> String {
    match q {
        None => "no quota".into(),
        Some(QuotaSpec::Bytes(b)) => format!("{b} bytes on each GPU"),
        Some(QuotaSpec::Percent(p)) => format!("{p}% of each GPU"),
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::BadModelName { model } => write!(
                f,
                "\"{model}\" cannot name a model: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
            ),
            LedgerError::Io {
                path,
                action,
                source,
            } => {
                write!(f, "ledger {}: cannot {action}: {source}", path.display())?;
                if source.kind() == io::ErrorKind::PermissionDenied {
                    write!(
                        f,
                        " (ledgers are private to their owner unless created with a group)"
                    )?;
                }
                Ok(())
            }
            LedgerError::NotARegularFile { path, what } => {
                write!(
                    f,
                    "ledger {}: is {what}, not a ledger file; remove it",
                    path.display()
                )
            }
            LedgerError::Damaged { path, what } => write!(
                f,
                "ledger {}: not a usable cuvisor ledger ({what}); remove it, or recreate it with `cuvisor ledger create`",
                path.display()
            ),
            LedgerError::Exists { path } => write!(f, "ledger {}: already exists", path.display()),
            LedgerError::QuotaMismatch {
                path,
                model,
                ledger,
                requested,
            } => write!(
                f,
                "the quota asked for ({}) disagrees with the ledger {} of model {model} ({}); the ledger's quota \
                 is authoritative: run without CUVISOR_QUOTA to join it, or change it (`cuvisor \
                 ledger quota --model {model} --quota Q`; under `cuvisor run`, `cuvisor set {model} \
                 --quota Q`, or its gpu_quota and a restart)",
                exact_quota(Some(*requested)),
                path.display(),
                exact_quota(*ledger)
            ),
            LedgerError::Untrusted {
                path,
                uid,
                mode,
                why,
            } => write!(
                f,
                "ledger path {}: refused: {why} (owner uid {uid}, mode {:04o}); ledgers are used \
                 only through directories and files that root or this user owns and nobody else \
                 can write, without symbolic links: fix it, remove it, or choose another \
                 CUVISOR_LEDGER_DIR",
                path.display(),
                mode & 0o7777
            ),
            LedgerError::TooManyGpus { path, uuid } => write!(
                f,
                "ledger {}: the model already uses {MAX_GPUS} GPUs, the most a ledger holds; {uuid} \
                 is one more (place the model on fewer GPUs)",
                path.display()
            ),
            LedgerError::Full { path } => {
                write!(
                    f,
                    "ledger {}: all {SLOTS} process slots are taken by live processes",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LedgerError {}

pub(super) fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> LedgerError + 'a {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}
