//! Effects on the host: the supervisor's real `Effects` ([`system`]), a worker's launch
//! plan and environment ([`worker`]), its namespaces and first steps ([`launch`]: the
//! code after `clone()` apart, in `launch/child.rs`), cgroups ([`cgroups`]), the models'
//! view of their memory and CPUs ([`view`]), Python environments ([`pyenv`]), NVML
//! ([`nvml`]), the ledgers' isolated operations ([`ledger`]), and the process helpers
//! ([`process`]: the supervisor's lock, subreaping, signals).
//!
//! It may import the configuration and the core (the decisions, the ports it implements,
//! the status types); it never imports the servers (`serve/`), nor they it: a test in
//! `tests/workspace.rs` keeps it so.

pub mod cgroups;
pub mod cpus;
pub mod launch;
pub mod ledger;
pub mod nvml;
pub mod output;
pub mod process;
pub mod pyenv;
pub mod system;
pub mod view;
pub mod worker;
