//! The supervisor's core: every decision, and none of the effects.
//!
//! Nothing here does I/O, reads a clock or starts a thread: each call says what time it
//! is, the host is reached through [`Effects`] and the front door through [`Door`], and
//! what the core decides comes out as calls on them. So every decision is tested with
//! recording doubles on a virtual clock (`supervisor/tests.rs`), no root, no process.
//!
//! - [`lifecycle`]: one instance's life, a state machine;
//! - [`scaling`] and [`hibernation`]: how many instances a served model runs, and when it
//!   sleeps, from the front door's load;
//! - [`placement`]: which GPUs each model runs on;
//! - [`supervisor`]: the models of a configuration and their instances, driven by events;
//! - [`api`]: what the servers ask of it ([`api::Request`]) and its answers;
//! - [`status`]: what it reports (the control API's JSON, the metrics' source).
//!
//! It imports the configuration and `cuvisor-common` only; `tests/workspace.rs` keeps it so.

pub mod api;
pub mod effects;
pub mod hibernation;
pub mod lifecycle;
pub mod placement;
mod power;
pub mod recent;
pub mod reload;
mod report;
pub mod scaling;
mod state;
pub mod status;
pub mod supervisor;

pub use effects::{Door, Effects, Exit, PowerJob, Process};
pub use supervisor::Supervisor;
