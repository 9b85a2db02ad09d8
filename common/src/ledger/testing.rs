//! Fixtures shared by the ledger's unit tests: a ledger of its own, in a directory of
//! its own, and GPU UUIDs.

use super::{CreateOptions, LedgerFile};
use crate::gpu::GpuUuid;
use crate::size::QuotaSpec;
use std::path::PathBuf;

pub(super) fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cuvisor-ledger-unit-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A new ledger of model "m" with `quota`, in a directory of its own.
pub(super) fn fresh(tag: &str, quota: QuotaSpec) -> (PathBuf, LedgerFile) {
    let dir = temp_dir(tag);
    let l = LedgerFile::create(&dir, "m", Some(quota), CreateOptions::default()).unwrap();
    (dir, l)
}

pub(super) fn uuid(n: u8) -> GpuUuid {
    GpuUuid([n; 16])
}
