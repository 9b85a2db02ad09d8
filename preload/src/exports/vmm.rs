//! Virtual memory management: physical allocations charged, their mappings tracked so that a released handle is uncharged at its last unmap.

use super::charge::*;
use crate::ffi::*;
use crate::records::{Kind, Record};

hook! {
    cuMemCreate(handle, size, prop, _flags) |forward, rt| {
        // SAFETY: the caller's properties, read only if non-null.
        let Some(prop) = (unsafe { prop.as_ref() }) else {
            return forward();
        };
        // Only device-located physical memory counts; host-located handles are host RAM.
        if handle.is_null() || size == 0 || prop.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
            return forward();
        }
        let bytes = size as u64;
        // The memory is made on the device the properties name, current or not.
        let gpu = match rt.gpu(prop.location.id) {
            Ok(gpu) => gpu,
            Err(why) => return refused(why),
        };
        let rc = charged(rt, gpu, bytes, "cuMemCreate", forward);
        if rc == CUDA_SUCCESS {
            // SAFETY: the driver succeeded: it wrote the handle.
            let h = unsafe { written(handle) };
            rt.handles.insert(h, Record { gpu, bytes, kind: Kind::Vmm { maps: 0, released: false } });
        }
        rc
    }
}

hook! {
    /// The driver keeps a released handle's memory until its last mapping goes: so does
    /// the charge.
    cuMemRelease(handle) |forward, rt| {
        let mapped = match rt.handles.get(handle) {
            Some(Record { kind: Kind::Vmm { maps, .. }, .. }) => maps > 0,
            _ => return forward(),
        };
        if !mapped {
            return uncharged(rt, &rt.handles, handle, forward);
        }
        let set_released = |value: bool| {
            rt.handles.update(handle, |r| {
                if let Kind::Vmm { released, .. } = &mut r.kind {
                    *released = value;
                }
            })
        };
        set_released(true);
        let rc = forward();
        if rc != CUDA_SUCCESS {
            set_released(false);
        }
        rc
    }
}

hook! {
    cuMemMap(ptr, size, _offset, handle, _flags) |forward, rt| {
        let rc = forward();
        if rc == CUDA_SUCCESS {
            let known = rt.handles.update(handle, |r| {
                if let Kind::Vmm { maps, .. } = &mut r.kind {
                    *maps += 1;
                }
            });
            if known.is_some() {
                rt.mappings.lock().insert(ptr, (size as u64, handle));
            }
        }
        rc
    }
}

hook! {
    cuMemUnmap(ptr, size) |forward, rt| {
        // Take the mappings in the range out first; put them back if the driver refuses.
        let end = ptr.saturating_add(size as u64);
        let taken: Vec<(u64, (u64, u64))> = {
            let mut m = rt.mappings.lock();
            let keys: Vec<u64> = m.range(ptr..end).map(|(k, _)| *k).collect();
            keys.into_iter()
                .filter_map(|k| m.remove(&k).map(|v| (k, v)))
                .collect()
        };
        let rc = forward();
        if rc != CUDA_SUCCESS {
            rt.mappings.lock().extend(taken);
            return rc;
        }
        for (_, (_, handle)) in taken {
            let last = rt.handles.update(handle, |r| match &mut r.kind {
                Kind::Vmm { maps, released } => {
                    *maps = maps.saturating_sub(1);
                    *released && *maps == 0
                }
                _ => false,
            });
            if last == Some(true)
                && let Some(r) = rt.handles.remove(handle)
            {
                rt.release(r.gpu, r.bytes);
            }
        }
        rc
    }
}
