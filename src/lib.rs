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
//! This crate has the size syntax of quotas ([`size`]) and the per-model ledgers
//! ([`ledger`]); the supervisor arrives with its issue. See the README.

pub mod cgroups;
pub mod config;
pub mod exec;
pub mod launch;
pub mod ledger;
pub use cuvisor_common::size;

/// The version of this crate (and of the `cuvisor` binary).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
