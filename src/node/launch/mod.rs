//! Starting one worker: `clone()` into new namespaces, join its cgroups, exec.
//!
//! With a PID namespace the cloned child is a tiny init (PID 1 there): it waits until the
//! supervisor has put it in its cgroups, makes `/` private, mounts a fresh `/proc` and the
//! read-only binds, then forks the worker (PID 2), forwards signals to it, reaps every
//! orphan of the namespace, and exits with the worker's status (the kernel then kills
//! whatever is left in the namespace). Without a PID namespace the child is the worker.
//!
//! After `clone()` the child runs only raw system calls on data prepared beforehand. The
//! supervisor has threads, and the child is a copy of it with one thread: a lock another
//! thread held at the instant of the clone stays held forever there. So no allocation, and
//! none of glibc's wrappers that take locks or believe the process still has its threads:
//! `fork()` (it takes malloc's locks for its atfork handlers) and `setuid()`/`setgid()`/
//! `setgroups()` (they signal every thread of the process) are made as raw system calls.
//!
//! The files: `spec.rs` (what a worker is started with, prepared before the clone),
//! `mountinfo.rs` (which mounts become read-only), `parent.rs` (the clone and the
//! supervisor's side), `child.rs` (everything after the clone, and nothing else),
//! `step.rs` (the child's steps, as it reports a failure).

mod child;
mod mountinfo;
mod parent;
mod spec;
mod step;

pub use mountinfo::kernel_interfaces;
pub use parent::{Launched, exit_code, launch};
pub use spec::*;
pub use step::{LaunchError, Step};
