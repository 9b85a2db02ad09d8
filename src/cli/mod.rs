//! What the `cuvisor` command does with the answers it gets: the control API's commands
//! (`status`, `start`, `stop`, `restart`, `hibernate`, `wake`, `set`), which supervisor
//! they ask, and how their answers and errors are printed. `main.rs` parses the command
//! line (clap) and calls these.

pub mod control;
