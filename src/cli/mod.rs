//! What the `cuvisor` command does beyond parsing its command line (`main.rs`, clap):
//! `check` ([`check`]), and the control API's commands (`status`, `start`, `stop`,
//! `restart`, `hibernate`, `wake`, `set`: [`control`]): which supervisor they ask, and how
//! their answers and errors are printed.

pub mod check;
pub mod control;
pub mod problems;
