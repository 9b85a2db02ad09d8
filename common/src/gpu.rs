//! How cuvisor names a GPU: by its UUID, the one identity that every process agrees on
//! whatever ordinal `CUDA_VISIBLE_DEVICES` or `cudaSetDevice` gives the device there. The
//! driver hands out the 16 bytes (`cuDeviceGetUuid_v2`); NVML and `nvidia-smi` print them
//! as `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the form used everywhere in cuvisor.
//!
//! ```
//! use cuvisor_common::gpu::GpuUuid;
//!
//! let text = "GPU-6f1d3c2e-0a4b-4c5d-8e9f-001122334455";
//! let uuid: GpuUuid = text.parse().unwrap();
//! assert_eq!(uuid.to_string(), text);
//! assert_eq!("6F1D3C2E-0A4B-4C5D-8E9F-001122334455".parse::<GpuUuid>(), Ok(uuid));
//! assert!("GPU-6f1d".parse::<GpuUuid>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

/// A GPU's 16-byte UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GpuUuid(pub [u8; 16]);

/// Where the dashes go in the text form (after these many bytes).
const GROUPS: [usize; 5] = [4, 2, 2, 2, 6];

impl fmt::Display for GpuUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GPU-")?;
        let mut at = 0;
        for (k, len) in GROUPS.into_iter().enumerate() {
            if k > 0 {
                f.write_str("-")?;
            }
            for b in &self.0[at..at + len] {
                write!(f, "{b:02x}")?;
            }
            at += len;
        }
        Ok(())
    }
}

/// A text that is not a GPU UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAUuid(pub String);

impl fmt::Display for NotAUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"{}\" is not a GPU UUID: expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (32 hex digits, as nvidia-smi -L prints it)",
            self.0
        )
    }
}

impl std::error::Error for NotAUuid {}

impl FromStr for GpuUuid {
    type Err = NotAUuid;

    /// The text form, with or without the `GPU-` prefix, in either case.
    fn from_str(s: &str) -> Result<GpuUuid, NotAUuid> {
        let bad = || NotAUuid(s.to_owned());
        let body = s.strip_prefix("GPU-").unwrap_or(s);
        let groups: Vec<&str> = body.split('-').collect();
        if groups.len() != GROUPS.len()
            || groups.iter().zip(GROUPS).any(|(g, len)| g.len() != 2 * len)
        {
            return Err(bad());
        }
        let hex: Vec<u8> = groups.concat().into_bytes();
        let mut out = [0u8; 16];
        for (k, pair) in hex.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
            out[k] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(GpuUuid(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_bad_forms_are_refused() {
        let u = GpuUuid(std::array::from_fn(|k| k as u8 * 17));
        assert_eq!(u.to_string(), "GPU-00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(u.to_string().parse(), Ok(u));
        for bad in [
            "",
            "GPU-",
            "GPU-00112233-4455-6677-8899-aabbccddeef",
            "GPU-00112233-4455-6677-8899-aabbccddeefg",
            "GPU-0011223-34455-6677-8899-aabbccddeeff",
            "GPU-00112233-4455-6677-8899-aabbccddeeff-00",
            "MIG-00112233-4455-6677-8899-aabbccddeeff",
        ] {
            assert!(bad.parse::<GpuUuid>().is_err(), "{bad}");
        }
        assert!(
            NotAUuid("x".into())
                .to_string()
                .contains("GPU-xxxxxxxx-xxxx")
        );
    }
}
