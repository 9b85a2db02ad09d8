//! The supervisor's log lines, on stderr with a `cuvisor: ` prefix: one function every
//! layer may call, until a logging facade replaces it.

use std::io::Write;

pub(crate) fn log(line: &str) {
    let _ = writeln!(std::io::stderr(), "cuvisor: {line}");
}
