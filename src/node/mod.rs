//! Effects on the host: the supervisor's real `Effects` ([`system`]), a worker's
//! namespaces and first steps ([`launch`]), cgroups, the models' view of their memory and
//! CPUs ([`view`]), Python environments, NVML, the ledgers' isolated operations, and the
//! process helpers. It may import the configuration and the pure decisions (`lifecycle`,
//! `placement`); it never imports the servers (the control API, the front door, metrics):
//! a test keeps it so.

pub mod cgroups;
pub mod cpus;
pub mod launch;
pub mod ledger;
pub mod nvml;
pub mod process;
pub mod pyenv;
pub mod system;
pub mod view;
pub mod worker;
