//! Arrays (charged by their size as the driver lays them out) and IPC handles (forwarded, with a hint when the memory was redirected).

use super::charge::*;
use crate::ffi::*;
use crate::records::{Kind, Record};
use crate::runtime::Runtime;

/// Bytes of one array level from its descriptor (height or depth 0: fewer dimensions).
/// Unknown formats are counted as 4 bytes per channel.
fn array_bytes(width: usize, height: usize, depth: usize, format: u32, channels: u32) -> u64 {
    let element = match array_format_bytes(format) {
        0 => 4,
        n => n,
    };
    [
        width as u64,
        height.max(1) as u64,
        depth.max(1) as u64,
        element,
        channels.max(1) as u64,
    ]
    .into_iter()
    .fold(1u64, u64::saturating_mul)
}

fn array_create(
    rt: &Runtime,
    what: &str,
    array: *mut CUarray,
    bytes: u64,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if array.is_null() || bytes == 0 {
        return call();
    }
    let gpu = match current(rt) {
        Ok((_, gpu)) => gpu,
        Err(rc) => return rc,
    };
    let rc = charged(rt, gpu, bytes, what, call);
    if rc == CUDA_SUCCESS {
        // SAFETY: the driver succeeded: it wrote the array.
        let a = unsafe { written(array) };
        rt.arrays.insert(
            a as u64,
            Record {
                gpu,
                bytes,
                kind: Kind::Array,
            },
        );
    }
    rc
}

hook! {
    cuArrayCreate_v2(array, desc) |forward, rt| {
        // SAFETY: the caller's descriptor, read only if non-null.
        let bytes = match unsafe { desc.as_ref() } {
            Some(d) => array_bytes(d.width, d.height, 0, d.format, d.num_channels),
            None => 0,
        };
        array_create(rt, "cuArrayCreate_v2", array, bytes, forward)
    }
}

hook! {
    cuArray3DCreate_v2(array, desc) |forward, rt| {
        // SAFETY: the caller's descriptor, read only if non-null.
        let bytes = match unsafe { desc.as_ref() } {
            Some(d) => array_bytes(d.width, d.height, d.depth, d.format, d.num_channels),
            None => 0,
        };
        array_create(rt, "cuArray3DCreate_v2", array, bytes, forward)
    }
}

hook! {
    cuMipmappedArrayCreate(array, desc, levels) |forward, rt| {
        // SAFETY: the caller's descriptor, read only if non-null.
        let bytes = match unsafe { desc.as_ref() } {
            Some(d) => (0..levels.min(64))
                .map(|l| {
                    let shrink = |n: usize| if n == 0 { 0 } else { (n >> l).max(1) };
                    array_bytes(
                        shrink(d.width),
                        shrink(d.height),
                        shrink(d.depth),
                        d.format,
                        d.num_channels,
                    )
                })
                .fold(0u64, u64::saturating_add),
            None => 0,
        };
        array_create(rt, "cuMipmappedArrayCreate", array, bytes, forward)
    }
}

hook! {
    cuArrayDestroy(array) |forward, rt| { uncharged(rt, &rt.arrays, array as u64, forward) }
}

hook! {
    cuMipmappedArrayDestroy(array) |forward, rt| { uncharged(rt, &rt.arrays, array as u64, forward) }
}

hook! {
    cuIpcGetMemHandle(_handle, ptr) |forward, rt| {
        let rc = forward();
        if rc != CUDA_SUCCESS
            && let Some(Record { kind: Kind::Managed { redirected: true }, .. }) = rt.ptrs.get(ptr)
        {
            rt.ipc_hint();
        }
        rc
    }
}
