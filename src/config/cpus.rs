//! Sets of CPUs in the kernel's list syntax (`0-7,16-23`, as in `cpuset.cpus` and
//! `/sys/devices/system/cpu/online`), as a model declares them (`cpus = "0-7"`).
//!
//! ```
//! use cuvisor::config::cpus::CpuSet;
//!
//! let set: CpuSet = "16-23,0-7,3".parse().unwrap();
//! assert_eq!(set.to_string(), "0-7,16-23");
//! assert_eq!(set.len(), 16);
//! assert!("0-1".parse::<CpuSet>().unwrap().is_subset(&set));
//! ```

use std::fmt;
use std::str::FromStr;

/// A non-empty set of CPU numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet(Vec<u32>);

/// The highest CPU number accepted (the kernel's `NR_CPUS` is at most 8192).
const MAX_CPU: u32 = 8191;

/// A CPU list that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\": expected CPU numbers and ranges such as \"0-7,16-23\"")]
pub struct NotACpuList(pub String);

impl FromStr for CpuSet {
    type Err = NotACpuList;

    fn from_str(s: &str) -> Result<CpuSet, NotACpuList> {
        let bad = || NotACpuList(s.to_owned());
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let number = |t: &str| {
                (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| t.parse::<u32>().ok())
                    .flatten()
                    .filter(|&n| n <= MAX_CPU)
            };
            let (Some(first), Some(last)) = (number(first), number(last)) else {
                return Err(bad());
            };
            if first > last {
                return Err(bad());
            }
            cpus.extend(first..=last);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuSet(cpus))
    }
}

impl fmt::Display for CpuSet {
    /// Ranges, ascending: the form the kernel writes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            while i + 1 < self.0.len() && self.0[i + 1] == self.0[i] + 1 {
                i += 1;
            }
            if start != self.0[0] {
                f.write_str(",")?;
            }
            match self.0[i] {
                end if end == start => write!(f, "{start}")?,
                end => write!(f, "{start}-{end}")?,
            }
            i += 1;
        }
        Ok(())
    }
}

impl CpuSet {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.binary_search(&cpu).is_ok()
    }

    /// The first `n` CPUs of the set.
    pub fn first(&self, n: usize) -> CpuSet {
        CpuSet(self.0.iter().take(n).copied().collect())
    }

    pub fn is_subset(&self, of: &CpuSet) -> bool {
        self.0.iter().all(|c| of.0.binary_search(c).is_ok())
    }

    /// The CPUs online on this host (`/sys/devices/system/cpu/online`): a host read, which
    /// checking a configuration reaches through [`super::Host`].
    pub fn online() -> Option<CpuSet> {
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_as_the_kernel_does() {
        let set: CpuSet = "3,0-1,2,8-9,11".parse().unwrap();
        assert_eq!(set.to_string(), "0-3,8-9,11");
        assert_eq!(set.len(), 7);
        assert_eq!("5".parse::<CpuSet>().unwrap().to_string(), "5");
        for bad in ["", "a", "1-", "-1", "3-1", "1,,2", "0-8192", " 1", "1 - 2"] {
            assert!(bad.parse::<CpuSet>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "x".parse::<CpuSet>().unwrap_err().to_string(),
            "\"x\": expected CPU numbers and ranges such as \"0-7,16-23\""
        );
    }
}
