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
//! Status: the foundation. The size syntax of quotas is here ([`size`]); the ledger, the
//! supervisor and the shim's interception arrive with their issues. See the README.

pub use cuvisor_common::size;

/// The version of this crate (and of the `cuvisor` binary).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
