//! Any bytes as a copy of a ledger file, as the supervisor and `cuvisor ledger` read one
//! that a model's process may have rewritten: refused with a reason, or parsed into
//! numbers, never a panic.
#![no_main]

use cuvisor_common::ledger::{parse_snapshot, validate_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    let header = validate_header(raw, raw.len() as u64, "m");
    match parse_snapshot(raw, "m", |slot| slot % 2 == 0) {
        Ok(snapshot) => {
            assert!(header.is_ok());
            assert_eq!(snapshot.model, "m");
            assert!(snapshot.processes.len() <= 65536);
        }
        Err(why) => assert!(!why.is_empty()),
    }
});
