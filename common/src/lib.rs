//! What both halves of cuvisor share and nothing more, so that the preload shim (loaded
//! into every inference process) stays small: the `CUVISOR_*` environment contract, the
//! size syntax of `CUVISOR_QUOTA`, the per-model ledger, and how a GPU is named (its
//! UUID). The fake GPU (`cuda_stubs/fakegpu_config.c`) implements the same size syntax for
//! `FAKE_CUDA_DEVICE_MEM`; a test keeps the two in agreement.

pub mod contract;
pub mod gpu;
pub mod ledger;
pub mod size;
