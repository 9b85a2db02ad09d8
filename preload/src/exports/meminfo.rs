//! Memory information, CUDA's and NVML's: each GPU's numbers as the model's quota makes them.

use super::charge::*;
use crate::driver;
use crate::ffi::*;

fn clamp32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

hook! {
    cuMemGetInfo_v2(free, total) |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS
            && let Ok(dev) = rt.current_device()
            // SAFETY: the driver succeeded: both pointers were valid and written.
            && let Some((f, t)) = rt.device_memory(dev, unsafe { written(total) } as u64)
        {
            // SAFETY: as above.
            unsafe {
                answer(free, f as usize);
                answer(total, t as usize);
            }
        }
        rc
    }
}

hook! {
    cuMemGetInfo(free, total) |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS
            && let Ok(dev) = rt.current_device()
        {
            // The 32-bit ABI saturates; the physical size is asked in full.
            // SAFETY: the driver succeeded: both pointers were valid and written.
            let physical = driver::physical_memory(dev).unwrap_or(unsafe { written(total) } as u64);
            if let Some((f, t)) = rt.device_memory(dev, physical) {
                // SAFETY: as above.
                unsafe {
                    answer(free, clamp32(f));
                    answer(total, clamp32(t));
                }
            }
        }
        rc
    }
}

hook! {
    cuDeviceTotalMem_v2(bytes, dev) |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS
            // SAFETY: the driver succeeded: the pointer was valid and written.
            && let Some((_, t)) = rt.device_memory(dev, unsafe { written(bytes) } as u64)
        {
            // SAFETY: as above.
            unsafe { answer(bytes, t as usize) };
        }
        rc
    }
}

hook! {
    cuDeviceTotalMem(bytes, dev) |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS {
            // SAFETY: the driver succeeded: the pointer was valid and written.
            let physical = driver::physical_memory(dev).unwrap_or(unsafe { written(bytes) } as u64);
            if let Some((_, t)) = rt.device_memory(dev, physical) {
                // SAFETY: as above.
                unsafe { answer(bytes, clamp32(t)) };
            }
        }
        rc
    }
}

hook! {
    nvmlDeviceGetMemoryInfo(device, memory) |forward, rt| {
        let rc = forward();
        if rc == NVML_SUCCESS
            // SAFETY: NVML succeeded: the structure was valid and written.
            && let Some(m) = unsafe { memory.as_mut() }
            && let Some((total, free, used)) = rt.nvml_memory(device, m.total)
        {
            *m = nvmlMemory_t { total, free, used };
        }
        rc
    }
}

hook! {
    nvmlDeviceGetMemoryInfo_v2(device, memory) |forward, rt| {
        let rc = forward();
        if rc == NVML_SUCCESS
            // SAFETY: NVML succeeded: the structure was valid and written.
            && let Some(m) = unsafe { memory.as_mut() }
            && let Some((total, free, used)) = rt.nvml_memory(device, m.total)
        {
            m.total = total;
            m.reserved = 0;
            m.free = free;
            m.used = used;
        }
        rc
    }
}
