//! The thread counts a model's programs get from its CPUs. Sets of CPUs themselves are
//! declared values: [`crate::config::cpus::CpuSet`] (re-exported here for one release).

pub use crate::config::cpus::CpuSet;

/// The thread-pool variables a model's programs read to size themselves (OpenMP, MKL,
/// OpenBLAS, NumExpr, Apple's vecLib, Rayon, as used by PyTorch, NumPy and Hugging
/// Face's tokenizers).
pub const THREAD_VARIABLES: [&str; 7] = [
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMEXPR_MAX_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "RAYON_NUM_THREADS",
];

/// How many threads a model's pools should start: its CPUs (`cpus`), at most its CPU
/// limit rounded up (`cpu_limit`); None for a model with neither (it sees the host's).
pub fn threads(cpus: Option<&CpuSet>, cpu_limit: Option<f64>) -> Option<usize> {
    let by_limit = cpu_limit.map(|c| (c.ceil() as usize).max(1));
    match (cpus.map(CpuSet::len), by_limit) {
        (Some(n), Some(l)) => Some(n.min(l)),
        (n, l) => n.or(l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_follow_the_cpus_and_the_limit() {
        let two: CpuSet = "0-1".parse().unwrap();
        assert_eq!(threads(Some(&two), None), Some(2));
        assert_eq!(threads(None, Some(2.5)), Some(3));
        assert_eq!(threads(None, Some(0.2)), Some(1));
        assert_eq!(threads(Some(&two), Some(1.0)), Some(1));
        assert_eq!(threads(None, None), None);
    }
}
