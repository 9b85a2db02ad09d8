/* Shared between the fake libcuda.so.1's translation units. */
#ifndef CUVISOR_LIBCUDA_INTERNAL_H
#define CUVISOR_LIBCUDA_INTERNAL_H

#include "cuda_types.h"
#include "fakegpu.h"

enum {
#define ENTRY(sym, base, ver, pt) IDX_##sym,
#include "libcuda_entries.h"
#undef ENTRY
    N_CU_ENTRIES
};
extern uint64_t cu_calls[N_CU_ENTRIES];
#define COUNT(sym) FG_COUNT(cu_calls, IDX_##sym)
#define EXPORT __attribute__((visibility("default")))

/* 0 when the driver is initialized in this process (cuInit succeeded, and not in a
 * child forked after that) and the calling thread has a live current context; its
 * device is stored in *dev. Otherwise the error the real driver gives. */
CUresult cu_ready(int *dev);
CUresult cu_initialized(void);
CUcontext cu_current_ctx(void);
int cu_valid_device(CUdevice dev);
/* CUDA_VISIBLE_DEVICES: the physical device behind a valid ordinal, and the ordinal of a
 * physical device in this process (-1 when it is not visible). The device state and NVML
 * know only physical devices; contexts, pointers and every CUdevice here are ordinals. */
int cu_phys(CUdevice dev);
int cu_ordinal(int phys);
int cu_valid_stream(CUstream s);
/* The device ordinal of a valid stream's context (the current one for the legacy and
 * per-thread streams): where cuMemAllocAsync allocates. */
int cu_stream_device(CUstream s, int current);
/* The synchronizing calls release what memory pools hold beyond their threshold. */
void cu_pools_sync(void);
void cu_report_leaks(void);
/* The number of visible devices (after cuInit), and cuDeviceGetAttribute's answer for a
 * valid ordinal and attribute, without counting a call. */
int cu_visible_count(void);
int cu_attribute(int attrib, CUdevice dev);
/* The device's primary context without retaining it (the runtime's private table). */
CUcontext cu_primary_ctx(CUdevice dev);
/* A context's state is gone (reset, last release, destroy): its context-local storage
 * values are removed and their destructors run. */
void cu_cls_context_gone(CUcontext ctx);
/* ...and every allocation made in it is freed (libcuda_memory.c). */
void cu_memory_context_gone(CUcontext ctx);
/* cuCtxGetId without counting a call: NULL is the current context. */
CUresult cu_context_id(CUcontext ctx, unsigned long long *id);
/* FAKE_CUDA_TRACE, read once: 0 off, 1 on, 2 `calls` (libcuda_darkapi.c). */
int cu_trace_level(void);
/* The driver version this process reports (FAKE_CUDA_DRIVER_VERSION, read once). */
int cu_driver_version(void);
/* cuGetProcAddress: base name + cudaVersion + flags -> the variant, with NVIDIA's rules. */
CUresult cu_get_proc_address(const char *symbol, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status);

#endif
