//! The servers: the control API ([`control`], and its [`client`]), the OpenAI front door
//! ([`gateway`]: its routes and queues in `routes.rs`, its connections to the instances
//! in `upstream.rs`), their metrics ([`metrics`]) and what they share ([`server`]: the event loop on a thread
//! of its own, the one accept loop with its connection limit, start-up errors, the
//! comparison of secrets).
//!
//! They reach the supervisor through the core's protocol (`core::api`) and read the
//! configuration; they never touch the host's effects (`node/`), and the node never
//! touches them: `tests/workspace.rs` keeps it so.

pub mod client;
pub mod control;
pub mod dashboard;
pub mod gateway;
pub mod metrics;
pub mod server;
