//! # cuvisor
//!
//! Run many AI models on one GPU. cuvisor has two parts:
//!
//! * `libcuvisor_preload.so` (crate `cuvisor-preload`), an `LD_PRELOAD` shim that charges
//!   every device-memory allocation of an unmodified inference process to its model's
//!   quota and places it in CUDA managed memory, so one GPU can be oversubscribed;
//! * this crate: the `cuvisor` supervisor CLI and the library it is built from, for Rust
//!   programs that embed it.
//!
//! The modules, bottom up: the size syntax of quotas ([`size`]), the per-model ledgers
//! ([`ledger`]), the configuration ([`config`]), host limits ([`cgroups`]), starting a
//! worker in its namespaces ([`launch`]), one program under the shim ([`exec`]), and the
//! supervisor ([`supervisor`]) with its control API ([`control`]). See the README.

pub mod caps;
pub mod cgroups;
pub mod config;
pub mod control;
pub mod exec;
pub mod gateway;
pub mod launch;
pub mod ledger;
pub mod metrics;
pub mod nvml;
pub mod placement;
pub mod scaling;
pub mod status;
pub mod supervisor;
pub use cuvisor_common::{contract, gpu, size};

/// The version of this crate (and of the `cuvisor` binary).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
