//! NVML placement: with `CUVISOR_GPUS`, only the model's GPUs, in that order, and only its own processes.

use super::charge::*;
use crate::driver;
use crate::ffi::*;
use crate::hooks::Id;
use crate::hooks::row::*;
use crate::runtime::Runtime;
use cuvisor_common::gpu::GpuUuid;

/// The handles of the model's GPUs (`CUVISOR_GPUS`), in its order, up to the first one
/// NVML does not know (where CUDA's `CUDA_VISIBLE_DEVICES` stops too, so that NVML index
/// N and CUDA ordinal N stay the same GPU).
fn placed_handles(gpus: &[GpuUuid]) -> Result<Vec<nvmlDevice_t>, nvmlReturn_t> {
    let Some(by_uuid) = nvmlDeviceGetHandleByUUID::real() else {
        return Err(missing(Id::nvmlDeviceGetHandleByUUID));
    };
    let mut handles = Vec::with_capacity(gpus.len());
    for uuid in gpus {
        let text = std::ffi::CString::new(uuid.to_string()).expect("a UUID has no NUL");
        let mut device: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: a C string and a live out-pointer.
        match unsafe { by_uuid(text.as_ptr(), &mut device) } {
            NVML_SUCCESS => handles.push(device),
            NVML_ERROR_NOT_FOUND => break,
            rc => return Err(rc),
        }
    }
    Ok(handles)
}

/// NVML's count, or with `CUVISOR_GPUS` the number of the model's GPUs.
fn nvml_count(
    rt: &Runtime,
    count: *mut u32,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let rc = forward(); // NVML's own answer to bad arguments and an uninitialized library
    let Some(gpus) = rt.config.gpus.as_deref() else {
        return rc;
    };
    if rc != NVML_SUCCESS {
        return rc;
    }
    match placed_handles(gpus) {
        Ok(handles) => {
            // SAFETY: NVML succeeded with this pointer: it is valid for a write.
            unsafe { answer(count, handles.len() as u32) };
            NVML_SUCCESS
        }
        Err(rc) => rc,
    }
}

hook! {
    nvmlDeviceGetCount(count) |forward, rt| { nvml_count(rt, count, forward) }
}

hook! {
    nvmlDeviceGetCount_v2(count) |forward, rt| { nvml_count(rt, count, forward) }
}

/// NVML's handle by index, or with `CUVISOR_GPUS` the index among the model's GPUs.
fn nvml_by_index(
    rt: &Runtime,
    index: u32,
    device: *mut nvmlDevice_t,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let Some(gpus) = rt.config.gpus.as_deref() else {
        return forward();
    };
    if device.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    match placed_handles(gpus) {
        Ok(handles) => match handles.get(index as usize) {
            Some(&h) => {
                // SAFETY: checked non-null; the caller's out-parameter.
                unsafe { answer(device, h) };
                NVML_SUCCESS
            }
            None => NVML_ERROR_INVALID_ARGUMENT, // NVML's answer to an index past the count
        },
        Err(rc) => rc,
    }
}

hook! {
    nvmlDeviceGetHandleByIndex(index, device) |forward, rt| { nvml_by_index(rt, index, device, forward) }
}

hook! {
    nvmlDeviceGetHandleByIndex_v2(index, device) |forward, rt| { nvml_by_index(rt, index, device, forward) }
}

/// A lookup by UUID or PCI bus id: NVML's answer, unless it found a GPU of another model.
fn nvml_lookup(
    rt: &Runtime,
    device: *mut nvmlDevice_t,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let rc = forward();
    if rc == NVML_SUCCESS
        && let Some(gpus) = rt.config.gpus.as_deref()
    {
        // SAFETY: NVML succeeded: the pointer was valid and written.
        let found = unsafe { written(device) };
        if !driver::nvml_uuid(found).is_some_and(|u| gpus.contains(&u)) {
            // SAFETY: as above.
            unsafe { answer(device, std::ptr::null_mut()) };
            return NVML_ERROR_NOT_FOUND;
        }
    }
    rc
}

hook! {
    nvmlDeviceGetHandleByUUID(_uuid, device) |forward, rt| { nvml_lookup(rt, device, forward) }
}

hook! {
    nvmlDeviceGetHandleByPciBusId(_bus, device) |forward, rt| { nvml_lookup(rt, device, forward) }
}

hook! {
    nvmlDeviceGetHandleByPciBusId_v2(_bus, device) |forward, rt| { nvml_lookup(rt, device, forward) }
}

hook! {
    nvmlDeviceGetHandleBySerial(_serial, device) |forward, rt| { nvml_lookup(rt, device, forward) }
}

/// A list of GPUs (the topology calls): NVML's, or with `CUVISOR_GPUS` only the model's
/// GPUs in it, under NVML's count protocol (a count of 0 asks how many; otherwise up to
/// `*count` handles are written and `*count` says how many). `list` asks NVML.
fn nvml_list(
    rt: &Runtime,
    count: *mut u32,
    array: *mut nvmlDevice_t,
    list: impl Fn(*mut u32, *mut nvmlDevice_t) -> nvmlReturn_t,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let Some(gpus) = rt.config.gpus.as_deref() else {
        return forward();
    };
    if count.is_null() {
        return forward(); // NVML's own answer to a bad argument
    }
    // SAFETY: checked non-null; the caller's in-out count.
    let asked = unsafe { written(count) };
    if asked != 0 && array.is_null() {
        return forward();
    }
    // NVML's whole list first (its size, then its handles).
    let mut n = 0u32;
    let rc = list(&mut n, std::ptr::null_mut());
    if rc != NVML_SUCCESS {
        return rc;
    }
    let mut all: Vec<nvmlDevice_t> = vec![std::ptr::null_mut(); n as usize];
    if n > 0 {
        let rc = list(&mut n, all.as_mut_ptr());
        if rc != NVML_SUCCESS {
            return rc;
        }
        all.truncate(n as usize);
    }
    let placed = match placed_handles(gpus) {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let mine: Vec<nvmlDevice_t> = all.into_iter().filter(|d| placed.contains(d)).collect();
    let written_back = if asked == 0 {
        mine.len()
    } else {
        let k = (asked as usize).min(mine.len());
        for (j, &d) in mine[..k].iter().enumerate() {
            // SAFETY: NVML's contract: a non-zero count is the room in the caller's array,
            // and k is at most that.
            unsafe { answer(array.add(j), d) };
        }
        k
    };
    // SAFETY: checked non-null above.
    unsafe { answer(count, written_back as u32) };
    NVML_SUCCESS
}

hook! {
    nvmlDeviceGetTopologyNearestGpus(device, level, count, array) |forward, rt| {
        let Some(real) = nvmlDeviceGetTopologyNearestGpus::real() else {
            return forward();
        };
        // SAFETY: the caller's device and level, and a count and array of ours.
        nvml_list(rt, count, array, |c, a| unsafe { real(device, level, c, a) }, forward)
    }
}

hook! {
    nvmlSystemGetTopologyGpuSet(cpu, count, array) |forward, rt| {
        let Some(real) = nvmlSystemGetTopologyGpuSet::real() else {
            return forward();
        };
        // SAFETY: the caller's CPU number, and a count and array of ours.
        nvml_list(rt, count, array, |c, a| unsafe { real(cpu, c, a) }, forward)
    }
}

/// An entry of NVML's process lists, made from the `_v2` entry: the one layout the shim
/// asks NVML for (the `_v3` entry's size changed between drivers, 24 or 32 bytes, with the
/// same symbol, so the shim never has NVML write one).
trait ProcessEntry: Copy {
    fn from_v2(e: nvmlProcessInfo_t) -> Self;
}

impl ProcessEntry for nvmlProcessInfo_v1_t {
    fn from_v2(e: nvmlProcessInfo_t) -> Self {
        nvmlProcessInfo_v1_t {
            pid: e.pid,
            used_gpu_memory: e.used_gpu_memory,
        }
    }
}

impl ProcessEntry for nvmlProcessInfo_t {
    fn from_v2(e: nvmlProcessInfo_t) -> Self {
        e
    }
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`): NVML names processes by
/// their pid there.
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// NVML's processes on a GPU, or with `CUVISOR_GPUS` (a model the supervisor placed,
/// perhaps beside other tenants' models) only the model's own: those of its ledger's
/// live processes, when this process is in the initial PID namespace, whose pids NVML
/// reports. In a PID namespace of its own (a worker with `isolation.pid`), NVML's pids
/// cannot be told from others' (a pid there may be another tenant's process in the
/// host's numbering), and the list is empty, as `nvidia-smi` in a container shows it.
/// NVML's count protocol is kept: a count too small (0 asks) answers
/// `NVML_ERROR_INSUFFICIENT_SIZE` with the count needed, and no processes answer success
/// with 0.
fn nvml_processes<T: ProcessEntry>(
    rt: &Runtime,
    device: nvmlDevice_t,
    count: *mut u32,
    infos: *mut T,
    forward: impl FnOnce() -> nvmlReturn_t,
) -> nvmlReturn_t {
    let (Some(_), Some(list)) = (
        rt.config.gpus.as_deref(),
        nvmlDeviceGetComputeRunningProcesses_v2::real(),
    ) else {
        return forward(); // NVML's own list (without _v2: a driver older than R470)
    };
    if count.is_null() {
        return forward(); // NVML's own answer to a bad argument
    }
    // SAFETY: checked non-null; the caller's in-out count.
    let asked = unsafe { written(count) };
    if asked != 0 && infos.is_null() {
        return forward();
    }
    // SAFETY: the caller's device, and a count and array of ours.
    let all = match nvml_process_list(|c, a| unsafe { list(device, c, a) }) {
        Ok(all) => all,
        Err(rc) => return rc,
    };
    let initial = std::fs::metadata("/proc/self/ns/pid")
        .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == INITIAL_PID_NAMESPACE);
    let own = match rt.account() {
        Some(a) if initial => a.ledger().pids_in_own_namespace(),
        _ => Vec::new(),
    };
    let mine: Vec<T> = all
        .into_iter()
        .filter(|e| own.contains(&e.pid))
        .map(T::from_v2)
        .collect();
    // SAFETY: the caller's count (non-null) and array, with NVML's contract for them.
    unsafe { answer_list(&mine, count, infos) }
}

/// Answers `list` under the protocol of NVML's process and unit lists: `*count` is the
/// room in `array`; too little room answers `NVML_ERROR_INSUFFICIENT_SIZE` with the count
/// needed; otherwise the entries are written and `*count` says how many.
///
/// # Safety
/// `count` is non-null and valid for reads and writes; `array` is valid for `*count`
/// writes (or null with `*count` 0).
unsafe fn answer_list<T: Copy>(list: &[T], count: *mut u32, array: *mut T) -> nvmlReturn_t {
    // SAFETY: the caller's guarantee.
    let room = unsafe { written(count) } as usize;
    let n = list.len() as u32;
    if list.len() > room {
        // SAFETY: the caller's guarantee.
        unsafe { answer(count, n) };
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (j, &e) in list.iter().enumerate() {
        // SAFETY: `room` entries fit in `array`, and there are at most that many.
        unsafe { answer(array.add(j), e) };
    }
    // SAFETY: the caller's guarantee.
    unsafe { answer(count, n) };
    NVML_SUCCESS
}

/// NVML's whole list (`_v2` entries): its size first, then the entries (asked again, a
/// few times, while processes start in between).
fn nvml_process_list(
    list: impl Fn(*mut u32, *mut nvmlProcessInfo_t) -> nvmlReturn_t,
) -> Result<Vec<nvmlProcessInfo_t>, nvmlReturn_t> {
    let mut n = 0u32;
    match list(&mut n, std::ptr::null_mut()) {
        NVML_SUCCESS => return Ok(Vec::new()),
        NVML_ERROR_INSUFFICIENT_SIZE => {}
        rc => return Err(rc),
    }
    let blank = nvmlProcessInfo_t {
        pid: 0,
        used_gpu_memory: 0,
        gpu_instance_id: 0,
        compute_instance_id: 0,
    };
    for _ in 0..8 {
        let mut all = vec![blank; n as usize + 8];
        let mut got = all.len() as u32;
        match list(&mut got, all.as_mut_ptr()) {
            NVML_SUCCESS => {
                all.truncate(got as usize);
                return Ok(all);
            }
            NVML_ERROR_INSUFFICIENT_SIZE => n = got.max(n.saturating_mul(2)),
            rc => return Err(rc),
        }
    }
    Err(NVML_ERROR_UNKNOWN)
}

hook! {
    nvmlDeviceGetComputeRunningProcesses(device, count, infos) |forward, rt| { nvml_processes(rt, device, count, infos, forward) }
}

hook! {
    nvmlDeviceGetComputeRunningProcesses_v2(device, count, infos) |forward, rt| { nvml_processes(rt, device, count, infos, forward) }
}

hook! {
    /// The entries written are `_v2`'s (24 bytes, as nvml.h has them since CUDA 12.3;
    /// the 32-byte entry of CUDA 12.2's nvml.h is not written).
    nvmlDeviceGetComputeRunningProcesses_v3(device, count, infos) |forward, rt| { nvml_processes(rt, device, count, infos, forward) }
}

hook! {
    /// The GPUs of an S-class unit: with `CUVISOR_GPUS` only the model's, in NVML's order,
    /// under this call's protocol (the count is the room in the array; too little room
    /// answers NVML_ERROR_INSUFFICIENT_SIZE with the count needed).
    nvmlUnitGetDevices(unit, count, devices) |forward, rt| {
        let (Some(gpus), Some(real)) = (rt.config.gpus.as_deref(), nvmlUnitGetDevices::real())
        else {
            return forward();
        };
        if count.is_null() || devices.is_null() {
            return forward(); // NVML's own answer to a bad argument
        }
        let mut all: Vec<nvmlDevice_t> = vec![std::ptr::null_mut(); 16];
        let mut attempts = 0;
        loop {
            let mut n = all.len() as u32;
            // SAFETY: the caller's unit, and a count and array of ours of that room.
            match unsafe { real(unit, &mut n, all.as_mut_ptr()) } {
                NVML_SUCCESS => {
                    all.truncate(n as usize);
                    break;
                }
                NVML_ERROR_INSUFFICIENT_SIZE if attempts < 4 => {
                    let room = (n as usize).max(2 * all.len());
                    all.resize(room, std::ptr::null_mut());
                    attempts += 1;
                }
                // The list kept growing: nothing the caller could size for.
                NVML_ERROR_INSUFFICIENT_SIZE => return NVML_ERROR_UNKNOWN,
                rc => return rc,
            }
        }
        let placed = match placed_handles(gpus) {
            Ok(h) => h,
            Err(rc) => return rc,
        };
        let mine: Vec<nvmlDevice_t> = all.into_iter().filter(|d| placed.contains(d)).collect();
        // SAFETY: both checked non-null; the caller's count and array, with the call's
        // contract for them.
        unsafe { answer_list(&mine, count, devices) }
    }
}

hook! {
    /// A GPU's index among the model's GPUs, as nvmlDeviceGetHandleByIndex numbers them.
    nvmlDeviceGetIndex(device, index) |forward, rt| {
        let rc = forward();
        let Some(gpus) = rt.config.gpus.as_deref() else {
            return rc;
        };
        if rc != NVML_SUCCESS {
            return rc;
        }
        match placed_handles(gpus).map(|h| h.iter().position(|&d| d == device)) {
            Ok(Some(i)) => {
                // SAFETY: NVML succeeded with this pointer: it is valid for a write.
                unsafe { answer(index, i as u32) };
                NVML_SUCCESS
            }
            // Not a handle the model can have obtained: what NVML answers a bad handle.
            Ok(None) => NVML_ERROR_INVALID_ARGUMENT,
            Err(rc) => rc,
        }
    }
}
