//! Moved to [`crate::config::caps`]; this path stays for one release.

pub use crate::config::caps::*;
