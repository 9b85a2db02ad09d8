//! Sizes as users write them: `17179869184`, `16G`, `16GiB`, `16GB`, and for quotas `50%`.
//!
//! `K`, `M`, `G`, `T` and `KiB` … `TiB` are powers of 1024 (as GPU memory is sold and as
//! `nvidia-smi` counts); `KB` … `TB` are powers of 1000. Only whole numbers are accepted:
//! a quota is a promise about bytes, and `1.5G` invites rounding arguments.

use std::fmt;

/// A quota as written: an absolute size, or a share of each GPU's physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaSpec {
    Bytes(u64),
    /// 1 to 100 percent of each GPU's physical memory.
    Percent(u8),
}

/// The form [`parse_quota`] reads back: a number of bytes, or `NN%`.
impl fmt::Display for QuotaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaSpec::Bytes(b) => write!(f, "{b}"),
            QuotaSpec::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl QuotaSpec {
    /// The quota in bytes on a device of `physical` bytes.
    ///
    /// ```
    /// use cuvisor_common::size::QuotaSpec;
    /// assert_eq!(QuotaSpec::Percent(25).bytes(80 << 30), 20 << 30);
    /// assert_eq!(QuotaSpec::Bytes(1 << 30).bytes(80 << 30), 1 << 30);
    /// ```
    pub fn bytes(self, physical: u64) -> u64 {
        match self {
            QuotaSpec::Bytes(b) => b,
            QuotaSpec::Percent(p) => (physical as u128 * p as u128 / 100) as u64,
        }
    }
}

/// Why a size did not parse; its message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    input: String,
    percent_allowed: bool,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"{}\" is not a size: expected bytes (e.g. 17179869184), K/M/G/T or KiB/MiB/GiB/TiB \
             (powers of 1024), or KB/MB/GB/TB (powers of 1000), e.g. 16GiB",
            self.input
        )?;
        if self.percent_allowed {
            write!(f, ", or 1% to 100% of the device's memory, e.g. 50%")?;
        }
        Ok(())
    }
}

impl std::error::Error for SizeError {}

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

/// A size for people: `100 B`, `12.0 KiB`, `1.5 GiB` (powers of 1024, one decimal).
///
/// ```
/// use cuvisor_common::size::format_bytes;
/// assert_eq!(format_bytes(100), "100 B");
/// assert_eq!(format_bytes(3 << 29), "1.5 GiB");
/// ```
pub fn format_bytes(bytes: u64) -> String {
    const NAMES: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < NAMES.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", NAMES[unit])
    }
}

/// A model's quota as people read it: `8.0 GiB/GPU`, `50%/GPU`, `none`.
///
/// ```
/// use cuvisor_common::size::{QuotaSpec, quota_text};
/// assert_eq!(quota_text(Some(QuotaSpec::Bytes(8 << 30))), "8.0 GiB/GPU");
/// assert_eq!(quota_text(Some(QuotaSpec::Percent(50))), "50%/GPU");
/// assert_eq!(quota_text(None), "none");
/// ```
pub fn quota_text(quota: Option<QuotaSpec>) -> String {
    match quota {
        None => "none".into(),
        Some(QuotaSpec::Percent(p)) => format!("{p}%/GPU"),
        Some(QuotaSpec::Bytes(b)) => format!("{}/GPU", format_bytes(b)),
    }
}

/// Parses an absolute size in bytes.
///
/// ```
/// use cuvisor_common::size::parse_size;
/// assert_eq!(parse_size("16GiB").unwrap(), 16 << 30);
/// assert_eq!(parse_size("16G").unwrap(), 16 << 30);
/// assert_eq!(parse_size("16GB").unwrap(), 16_000_000_000);
/// assert!(parse_size("1.5G").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    parse_bytes(s).ok_or_else(|| SizeError {
        input: s.to_owned(),
        percent_allowed: false,
    })
}

/// Parses a quota: a size, or `NN%` of the device's physical memory.
///
/// ```
/// use cuvisor_common::size::{parse_quota, QuotaSpec};
/// assert_eq!(parse_quota("40%").unwrap(), QuotaSpec::Percent(40));
/// assert_eq!(parse_quota("8G").unwrap(), QuotaSpec::Bytes(8 << 30));
/// assert!(parse_quota("0%").is_err());
/// ```
pub fn parse_quota(s: &str) -> Result<QuotaSpec, SizeError> {
    let error = || SizeError {
        input: s.to_owned(),
        percent_allowed: true,
    };
    if let Some(number) = s.strip_suffix('%') {
        return match digits(number).and_then(|n| u8::try_from(n).ok()) {
            Some(p @ 1..=100) => Ok(QuotaSpec::Percent(p)),
            _ => Err(error()),
        };
    }
    parse_bytes(s).map(QuotaSpec::Bytes).ok_or_else(error)
}

fn parse_bytes(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let multiplier = UNITS.iter().find(|(u, _)| *u == unit)?.1;
    digits(number)?.checked_mul(multiplier)
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("1K", 1024),
            ("1KiB", 1024),
            ("1KB", 1000),
            ("3M", 3 << 20),
            ("3MiB", 3 << 20),
            ("3MB", 3_000_000),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("2GB", 2_000_000_000),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
            ("1TB", 1_000_000_000_000),
            ("16777215T", 16777215u64 << 40), // the largest whole TiB count below 2^64
        ];
        for (input, bytes) in cases {
            assert_eq!(parse_size(input), Ok(*bytes), "{input}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_whole_size() {
        for input in [
            "",
            "G",
            "-1",
            "+1",
            " 1G",
            "1G ",
            "1.5G",
            "1g",
            "1gib",
            "1Gi",
            "1B",
            "1 G",
            "0x10",
            "16777217T",
            "18446744073709551616",
        ] {
            let err = parse_size(input).unwrap_err();
            assert!(
                err.to_string().contains("KiB/MiB/GiB/TiB"),
                "{input}: {err}"
            );
            assert!(!err.to_string().contains('%'), "{input}: {err}");
        }
    }

    #[test]
    fn quota_percent_forms() {
        assert_eq!(parse_quota("1%"), Ok(QuotaSpec::Percent(1)));
        assert_eq!(parse_quota("100%"), Ok(QuotaSpec::Percent(100)));
        assert_eq!(parse_quota("16GiB"), Ok(QuotaSpec::Bytes(16 << 30)));
        for input in ["0%", "101%", "%", "50.5%", "50 %", "-5%", "1G%"] {
            let err = parse_quota(input).unwrap_err();
            assert!(err.to_string().contains("1% to 100%"), "{input}: {err}");
        }
        assert_eq!(QuotaSpec::Percent(50).bytes(u64::MAX), u64::MAX / 2);
    }
}
