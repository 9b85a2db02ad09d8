//! The node's GPUs, read from NVML loaded at run time (`libnvidia-ml.so.1`, with
//! libloading): the binary starts on machines without an NVIDIA driver, and only a
//! configuration that places models on GPUs needs one.

use crate::gpu::GpuUuid;
use crate::placement::NodeGpu;
use std::ffi::{CStr, c_char, c_uint, c_void};

/// Where the node's GPUs come from: NVML on a real node, a fixed list in tests and in
/// programs that embed the supervisor and know their hardware.
pub trait Inventory {
    fn gpus(&self) -> Result<Vec<NodeGpu>, NvmlError>;
}

/// A fixed list of GPUs.
impl Inventory for Vec<NodeGpu> {
    fn gpus(&self) -> Result<Vec<NodeGpu>, NvmlError> {
        Ok(self.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    #[error(
        "cannot load NVML (libnvidia-ml.so.1): {0}; placing models on GPUs (gpus = ...) needs the \
         NVIDIA driver"
    )]
    Load(String),
    #[error("NVML lacks {0}: the NVIDIA driver is too old")]
    Missing(&'static str),
    #[error("NVML: {call}{on} failed: {message} (error {code})")]
    Call {
        call: &'static str,
        /// " of GPU N", or nothing.
        on: String,
        code: i32,
        message: String,
    },
    #[error("NVML: GPU {index} has a UUID cuvisor cannot read: {text:?}")]
    BadUuid { index: u32, text: String },
}

/// NVML, as the NVIDIA driver installs it.
pub struct Nvml;

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

type Device = *mut c_void;

impl Inventory for Nvml {
    fn gpus(&self) -> Result<Vec<NodeGpu>, NvmlError> {
        // SAFETY: loading NVML runs its initializers, which expect nothing of us.
        let lib = unsafe { libloading::Library::new("libnvidia-ml.so.1") }
            .map_err(|e| NvmlError::Load(e.to_string()))?;
        // SAFETY: each symbol is given the signature nvml.h declares for it.
        let (init, shutdown, count, by_index, uuid, memory, minor) = unsafe {
            (
                sym::<unsafe extern "C" fn() -> i32>(&lib, "nvmlInit_v2")?,
                sym::<unsafe extern "C" fn() -> i32>(&lib, "nvmlShutdown")?,
                sym::<unsafe extern "C" fn(*mut c_uint) -> i32>(&lib, "nvmlDeviceGetCount_v2")?,
                sym::<unsafe extern "C" fn(c_uint, *mut Device) -> i32>(
                    &lib,
                    "nvmlDeviceGetHandleByIndex_v2",
                )?,
                sym::<unsafe extern "C" fn(Device, *mut c_char, c_uint) -> i32>(
                    &lib,
                    "nvmlDeviceGetUUID",
                )?,
                sym::<unsafe extern "C" fn(Device, *mut Memory) -> i32>(
                    &lib,
                    "nvmlDeviceGetMemoryInfo",
                )?,
                sym::<unsafe extern "C" fn(Device, *mut c_uint) -> i32>(
                    &lib,
                    "nvmlDeviceGetMinorNumber",
                )?,
            )
        };
        // SAFETY: nvmlErrorString(nvmlReturn_t) returns a static string.
        let message = unsafe {
            sym::<unsafe extern "C" fn(i32) -> *const c_char>(&lib, "nvmlErrorString").ok()
        };
        let check = |call: &'static str, on: Option<u32>, code: i32| {
            if code == 0 {
                return Ok(());
            }
            let message = message
                // SAFETY: NVML's own static, NUL-terminated string (or null).
                .map(|f| unsafe { f(code) })
                .filter(|p| !p.is_null())
                .map_or_else(
                    || "unknown error".to_owned(),
                    // SAFETY: non-null, NUL-terminated, static.
                    |p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
                );
            Err(NvmlError::Call {
                call,
                on: on.map(|i| format!(" of GPU {i}")).unwrap_or_default(),
                code,
                message,
            })
        };
        // SAFETY: the calls below follow nvml.h: init first, out-pointers to live locals,
        // the UUID buffer's length passed with it, shutdown last.
        check("nvmlInit_v2", None, unsafe { init() })?;
        let result = (|| {
            let mut n: c_uint = 0;
            // SAFETY: after a successful init; `n` is a live local c_uint.
            check("nvmlDeviceGetCount_v2", None, unsafe { count(&mut n) })?;
            let mut gpus = Vec::new();
            for index in 0..n {
                let on = Some(index);
                let mut device: Device = std::ptr::null_mut();
                // SAFETY: `index` is below the count NVML gave; `device` is a live local.
                check("nvmlDeviceGetHandleByIndex_v2", on, unsafe {
                    by_index(index, &mut device)
                })?;
                let mut text = [0 as c_char; 96];
                // SAFETY: a handle NVML returned (its error returned above), and a local
                // buffer passed with its length.
                check("nvmlDeviceGetUUID", on, unsafe {
                    uuid(device, text.as_mut_ptr(), text.len() as c_uint)
                })?;
                text[95] = 0;
                // SAFETY: NUL-terminated by NVML, and by the line above in any case.
                let text = unsafe { CStr::from_ptr(text.as_ptr()) }.to_string_lossy();
                let parsed: GpuUuid = text.parse().map_err(|_| NvmlError::BadUuid {
                    index,
                    text: text.clone().into_owned(),
                })?;
                let mut m = Memory::default();
                // SAFETY: a handle NVML returned; `m` is a live local laid out as nvmlMemory_t.
                check("nvmlDeviceGetMemoryInfo", on, unsafe {
                    memory(device, &mut m)
                })?;
                let mut node: c_uint = 0;
                // SAFETY: a handle NVML returned; `node` is a live local c_uint. A GPU
                // without a minor number (NVML_ERROR_NOT_SUPPORTED) is not an error: its
                // models are shown every GPU node.
                let known = unsafe { minor(device, &mut node) } == 0;
                gpus.push(NodeGpu {
                    index,
                    uuid: parsed,
                    memory: m.total,
                    minor: known.then_some(node),
                });
            }
            Ok(gpus)
        })();
        // SAFETY: balances the successful nvmlInit_v2.
        unsafe { shutdown() };
        result
    }
}

/// A function of NVML, typed.
///
/// # Safety
/// `T` must be the function's signature in nvml.h.
unsafe fn sym<T: Copy>(lib: &libloading::Library, name: &'static str) -> Result<T, NvmlError> {
    // SAFETY: the caller vouches for the signature; the copy outlives no use of `lib`
    // (every caller keeps `lib` alive until its last call).
    unsafe { lib.get::<T>(name) }
        .map(|s| *s)
        .map_err(|_| NvmlError::Missing(name))
}
