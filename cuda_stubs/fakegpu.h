/* Internal interface of libfakegpu_core.so: the fake GPU's device model, shared by the
 * fake libcuda.so.1 and libnvidia-ml.so.1 so that both report the same device.
 *
 * The model: each device has a fixed capacity. Every consumer of device memory is a
 * "range" in one table: FIXED ranges (plain allocations, pitched, arrays, pool
 * reservations, VMM handles) are always resident and never evicted; MANAGED ranges
 * become resident when the device touches them and are evicted least-recently-used
 * first when device memory is needed. The table lives in a shared mapping: private to
 * the process (and its forked children, who share the GPU) by default, or in the file
 * named by FAKE_CUDA_STATE so that several processes share one fake GPU. */
#ifndef CUVISOR_FAKEGPU_H
#define CUVISOR_FAKEGPU_H

#include <stddef.h>
#include <stdint.h>

#define FG_API __attribute__((visibility("default")))
#define FG_MAX_DEVICES 16
#define FG_NO_RANGE UINT32_MAX
/* Residency moves in units of the UVM driver's 2 MiB VA blocks. */
#define FG_BLOCK (2ull << 20)

typedef struct {
    uint64_t device_mem[FG_MAX_DEVICES]; /* bytes of each physical device (0 past the count) */
    int device_count;
    int managed;          /* CONCURRENT_MANAGED_ACCESS */
    int pools;            /* MEMORY_POOLS_SUPPORTED */
    int nvml_units;       /* S-class units (NVML): device i is in unit i % nvml_units */
    double link_gbps;     /* FAKE_CUDA_LINK_GBPS: host<->device bytes take this long; 0: free */
    const char *report_path; /* NULL: no report */
    const char *state_path;  /* NULL: private GPU */
} fg_config_t;

enum fg_kind { FG_FIXED = 1, FG_MANAGED = 2 };

/* Parses FAKE_CUDA_* and attaches the device state, once. Returns 0, or -1 after printing
 * one clear message (then every caller must fail its initialization). */
FG_API int fg_init(void);
FG_API const fg_config_t *fg_config(void);

/* The device-state lock (robust and process-shared). Everything below needs it held.
 * With FAKE_CUDA_LINK_GBPS, fg_unlock then takes the time the bytes moved between host
 * and device under the lock take on that link (migrations, evictions, fg_link_moved):
 * each device has one link, each of its two directions shared by every process, in the
 * order they asked (a move waits for those before it in its direction). */
FG_API void fg_lock(void);
FG_API void fg_unlock(void);
/* Bytes the caller moved over physical device `dev`'s link under the lock, to the device
 * or back (an explicit host<->device copy). */
FG_API void fg_link_moved(int dev, int to_device, uint64_t bytes);
/* Range r's physical device. */
FG_API int fg_range_dev(uint32_t r);

/* Creates a range on `dev`. A FIXED range (and a MANAGED one when the device has no
 * concurrent managed access) must fit in device memory now: managed ranges are evicted
 * and dead processes reclaimed to make room; FG_NO_RANGE means out of memory. */
FG_API uint32_t fg_range_new(int dev, enum fg_kind kind, uint64_t size);
FG_API void fg_range_free(uint32_t r);
/* Grows or shrinks a FIXED range (pool reservations); -1 if growing does not fit. */
FG_API int fg_range_resize(uint32_t r, uint64_t size);
/* The device touched a managed range: make it resident (as much as fits) and most
 * recently used. On access, a range whose preferred location is the host stays there
 * (mapped remotely); an explicit prefetch (`prefetch` = 1) migrates it regardless. */
FG_API void fg_range_touch(uint32_t r, int prefetch);
FG_API void fg_range_evict(uint32_t r); /* migrate to host (prefetch to CPU) */
FG_API void fg_range_prefer_host(uint32_t r, int on);
FG_API uint64_t fg_range_resident(uint32_t r);

/* Device-wide used bytes (all processes sharing the GPU), after reclaiming dead ones. */
FG_API uint64_t fg_device_used(int dev);

/* Devices are *physical* here: indices 0..device_count-1, the same in every process and in
 * NVML. libcuda maps its ordinals (which CUDA_VISIBLE_DEVICES reorders and filters) to
 * these before calling anything above.
 *
 * Identity: a UUID and a PCI location derived from the physical index alone, so that every
 * process and both libraries agree. PCI: domain 0, bus FG_PCI_BUS(phys), device 0. */
#define FG_UUID_TEXT_LEN 41 /* "GPU-" + 36 + NUL: NVML_DEVICE_UUID_ASCII_LEN */
#define FG_PCI_BUS(phys) (0x10 + (phys))
#define FG_PCI_DEVICE_ID 0x2330u /* H100 SXM5 */
#define FG_PCI_VENDOR_ID 0x10deu /* NVIDIA */
#define FG_PCI_SUBSYSTEM_ID 0x16c110deu
FG_API void fg_device_uuid(int phys, unsigned char out[16]);
/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lowercase, as nvidia-smi -L prints it. */
FG_API void fg_device_uuid_text(int phys, char out[FG_UUID_TEXT_LEN]);
/* The physical device whose UUID text starts with `s` (`len` characters, "GPU-" optional,
 * hex digits in either case): -1 if none, -2 if several (an ambiguous prefix). */
FG_API int fg_device_by_uuid_prefix(const char *s, size_t len);
/* The physical device at a PCI bus id in any form NVIDIA accepts, all hex:
 * domain:bus:device.function, domain:bus:device or bus:device.function. -1 if no device
 * is there, -2 if the text is not a PCI bus id. */
FG_API int fg_device_by_pci_bus_id(const char *s);

/* The process has a context on physical device `phys` (lock not held). NVML lists the
 * processes with a context on a device, as the real one does. */
FG_API void fg_note_context(int phys);
/* Processes using physical device `phys`: pid and resident bytes (lock held). Writes at
 * most `max` and returns how many there are. */
typedef struct { int32_t pid; uint64_t used; } fg_proc_usage_t;
FG_API int fg_device_processes(int phys, fg_proc_usage_t *out, int max);

/* Legacy IPC: who owns range r, and whether a range is still the one a handle named. */
FG_API void fg_range_owner(uint32_t r, int32_t *pid, uint64_t *start_time);
FG_API int fg_range_is(uint32_t r, int32_t pid, uint64_t start_time, uint64_t size);

/* Per-process statistics for the report. */
FG_API void fg_count_advise(void);
FG_API void fg_count_prefetch(void);
FG_API void fg_count_oom(void);

/* Each fake library registers its entry-point call counters once; the report names them. */
FG_API void fg_register_calls(const char *const *names, uint64_t *counters, int n);
/* libcuda hands over what the process did not free, just before the report is written. */
FG_API void fg_report_leak(const char *kind, uint64_t ptr, uint64_t bytes);

/* The CUDA version the driver reports (cuDriverGetVersion, NVML) and answers
 * cuGetProcAddress for: FAKE_CUDA_DRIVER_VERSION, read once (works before fg_init, as the
 * runtime asks before cuInit), default CUDA 12.9. -1 when the variable is invalid (said
 * once; fg_init fails too). */
#define FG_DRIVER_VERSION_DEFAULT 12090
FG_API int fg_driver_version(void);

/* Size syntax shared with CUVISOR_QUOTA (without the percent form). 0 on success. */
FG_API int fg_parse_size(const char *s, uint64_t *out);

#define FG_COUNT(counters, idx) __atomic_fetch_add(&(counters)[idx], 1, __ATOMIC_RELAXED)

#endif
