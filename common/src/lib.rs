//! What both halves of cuvisor share and nothing more, so that the preload shim (loaded
//! into every inference process) stays small: the size syntax of `CUVISOR_QUOTA`.
//! The fake GPU (`cuda_stubs/fakegpu_config.c`) implements the same syntax for
//! `FAKE_CUDA_DEVICE_MEM`; a test keeps the two in agreement.

pub mod size;
