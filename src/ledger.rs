//! Per-model ledgers: one quota per model, shared by every process of the model, safe
//! against any of them dying at any instant.
//!
//! A ledger is a small file (`<dir>/<model>.ledger`, by default in
//! [`DEFAULT_DIR`]) mapped by every process of the model; the preload shim attaches to it
//! when CUDA initializes and charges every allocation there. The supervisor (or
//! `cuvisor ledger create`) writes the quota before the first worker starts; the quota in
//! the file is authoritative. See `docs/LEDGER.md` for the layout and the protocol.
//!
//! ```
//! use cuvisor::ledger::{CreateOptions, LedgerFile};
//! use cuvisor::size::QuotaSpec;
//!
//! let dir = std::env::temp_dir().join(format!("cuvisor-doc-{}", std::process::id()));
//! let ledger = LedgerFile::create(&dir, "llama", Some(QuotaSpec::Bytes(8 << 30)), CreateOptions::default())?;
//!
//! // A process attaches, and charges its allocations before making them.
//! let me = ledger.attach()?;
//! me.try_reserve(6 << 30).expect("within the quota");
//! let refusal = me.try_reserve(4 << 30).unwrap_err();
//! assert_eq!((refusal.used, refusal.quota), (6 << 30, 8 << 30));
//! me.release(1 << 30);
//!
//! // Anyone can look, and give back what dead processes held.
//! let snapshot = ledger.snapshot();
//! assert_eq!(snapshot.used, 5 << 30);
//! assert_eq!(snapshot.processes.len(), 1);
//! assert_eq!(ledger.reclaim_dead().slots, 0); // nobody died
//!
//! me.detach(); // at exit: everything this process held goes back
//! assert_eq!(ledger.used(), 0);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), cuvisor::ledger::LedgerError>(())
//! ```

pub use cuvisor_common::ledger::*;
