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
//! The folders are layers; each imports only the ones below it (`tests/workspace.rs`
//! keeps it so):
//!
//! | layer | what it is |
//! |---|---|
//! | [`run`], [`exec`], the CLI | composition: the only code that knows the node, the servers and the core together |
//! | [`node`] and [`serve`] | effects on the host (processes, cgroups, namespaces, ledgers, NVML, Python environments); the servers (control API, front door, metrics). Neither imports the other |
//! | [`core`] | every decision and none of the effects: the supervisor, an instance's life, scaling, hibernation, placement, the mailbox protocol, the status types. No I/O, no clock, no threads |
//! | [`config`] | declared values only; the host reached through [`config::Host`] |
//! | `cuvisor-common` ([`size`], [`gpu`], [`contract`], the ledger format) | shared with the shim |
//!
//! A Rust program embeds a supervisor with [`run::Running`]. What embedding relies on is
//! [`config`], [`run::Running`], the status types ([`core::status`]), [`exec`] and the
//! ledgers ([`ledger`]); the other modules are public for cuvisor's own binary, tests and
//! tools, and may change between releases. See the README.
//!
//! The modules' paths before this layout stay for one release: [`supervisor`] and the
//! re-exports below.

pub mod cli;
pub mod config;
pub mod core;
pub mod exec;
pub mod log;
pub mod node;
pub mod run;
pub mod serve;
pub use cuvisor_common::{contract, gpu, size};

/// The core's modules at their old paths, for one release.
pub use crate::core::{hibernation, lifecycle, placement, scaling, status};
/// Moved to [`config::caps`]; this path stays for one release.
pub use config::caps;
/// The node's modules at their old paths, for one release.
pub use node::{cgroups, cpus, launch, ledger, nvml, pyenv, system, view};
/// The servers' modules at their old paths, for one release.
pub use serve::{control, gateway, metrics};

/// The supervisor's items at their old paths, for one release: the core's
/// ([`crate::core`]), the composition root's ([`crate::run`]) and the node's.
pub mod supervisor {
    pub use crate::config::DEFAULT_SWAP_TIMEOUT as POWER_TIMEOUT;
    pub use crate::config::RUN_DIR;
    pub use crate::config::exposure::exposure;
    pub use crate::core::api::{Answer, Reply, Request};
    pub use crate::core::supervisor::{Supervisor, backoff_delay};
    pub use crate::node::process::SupervisorLock;
    pub use crate::node::system::{
        Effects, Placement, PowerJob, PowerResult, StartError, System, Worker, worker_spec,
    };
    pub use crate::run::{Error, Event, Running, become_subreaper, place, run};
}

/// The version of this crate (and of the `cuvisor` binary).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
