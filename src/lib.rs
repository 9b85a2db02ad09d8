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
//! ([`ledger`]), the configuration ([`config`]: declared values, the leaf of the crate's
//! layers, which reaches the host only through [`config::Host`]), the effects on the host
//! ([`node`], which never reaches the servers; its modules keep their old paths for one
//! release): host limits ([`cgroups`]), starting a
//! worker in its namespaces ([`launch`]), one program under the shim ([`exec`]), placement
//! on a node's GPUs ([`placement`], [`nvml`]), an instance's life ([`lifecycle`]) and a
//! served model's scaling ([`scaling`]) and hibernation ([`hibernation`]) as pure
//! decisions, their effects on the
//! system ([`system`]), and the supervisor ([`supervisor`]) with its status ([`status`])
//! and the servers ([`serve`], which never reach the node; old paths kept for one
//! release): the control API ([`control`]), the front door ([`gateway`]) and metrics
//! ([`metrics`]).
//! A Rust program embeds a supervisor with [`supervisor::Running`]. See the README.

pub mod caps;
pub mod config;
pub mod exec;
pub mod hibernation;
pub mod lifecycle;
mod log;
pub mod node;
pub mod placement;
pub mod scaling;
pub mod serve;
pub mod status;
pub mod supervisor;
pub use cuvisor_common::{contract, gpu, size};
/// The node's modules at their old paths, for one release.
pub use node::{cgroups, cpus, launch, ledger, nvml, pyenv, system, view};
/// The servers' modules at their old paths, for one release.
pub use serve::{control, gateway, metrics};

/// The version of this crate (and of the `cuvisor` binary).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
