//! Any text as a size or a quota (`CUVISOR_QUOTA`, `gpu_quota`, `memory_limit`): parsed or
//! refused, never a panic; a size parsed is the number of bytes it spells, and formatting
//! and parsing it again agree.
#![no_main]

use cuvisor_common::size::{QuotaSpec, parse_quota, parse_size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(bytes) = parse_size(text) {
        assert_eq!(parse_size(&bytes.to_string()), Ok(bytes));
    }
    match parse_quota(text) {
        Ok(QuotaSpec::Percent(p)) => {
            assert!((1..=100).contains(&p));
            let _ = QuotaSpec::Percent(p).bytes(u64::MAX);
        }
        Ok(QuotaSpec::Bytes(_)) | Err(_) => {}
    }
});
