//! The servers: the control API ([`control`]), the OpenAI front door ([`gateway`]) and
//! their metrics ([`metrics`]). They speak to the supervisor through its protocol and read
//! the configuration; they never touch the host's effects (`node/`): a test keeps it so.

pub mod control;
pub mod gateway;
pub mod metrics;
