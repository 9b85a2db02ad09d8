/* Fake libnvidia-ml.so.1: device count, names and the truth about device memory, read
 * from the same device state as the fake libcuda (all processes sharing the GPU). */
#include <stdio.h>
#include <string.h>

#include "fakegpu.h"

typedef int nvmlReturn_t;
typedef struct fg_nvml_device *nvmlDevice_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
#define NVML_STRUCT_VERSION(type, ver) (unsigned int)(sizeof(type) | ((ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(nvmlMemory_v2_t, 2)

#define NVML_ENTRIES(X) X(nvmlInit) X(nvmlInit_v2) X(nvmlInitWithFlags) X(nvmlShutdown) \
    X(nvmlDeviceGetCount) X(nvmlDeviceGetCount_v2) X(nvmlDeviceGetHandleByIndex)          \
    X(nvmlDeviceGetHandleByIndex_v2) X(nvmlDeviceGetName) X(nvmlDeviceGetMemoryInfo)      \
    X(nvmlDeviceGetMemoryInfo_v2) X(nvmlSystemGetDriverVersion) X(nvmlErrorString)
enum {
#define X(name) IDX_##name,
    NVML_ENTRIES(X)
#undef X
    N_NVML_ENTRIES
};
static uint64_t nvml_calls[N_NVML_ENTRIES];
static const char *const nvml_names[] = {
#define X(name) #name,
    NVML_ENTRIES(X)
#undef X
};
#define COUNT(name) FG_COUNT(nvml_calls, IDX_##name)
#define EXPORT __attribute__((visibility("default")))

__attribute__((constructor)) static void nvml_load(void) {
    fg_register_calls(nvml_names, nvml_calls, N_NVML_ENTRIES);
}

/* Device handles are addresses inside this array. */
static char device_handles[FG_MAX_DEVICES];
static int init_count;

static nvmlReturn_t init(void) {
    if (fg_init() != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    __atomic_fetch_add(&init_count, 1, __ATOMIC_SEQ_CST);
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlInit(void) { COUNT(nvmlInit); return init(); }
EXPORT nvmlReturn_t nvmlInit_v2(void) { COUNT(nvmlInit_v2); return init(); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { COUNT(nvmlInitWithFlags); (void)flags; return init(); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    COUNT(nvmlShutdown);
    int n = __atomic_load_n(&init_count, __ATOMIC_SEQ_CST);
    while (n > 0 && !__atomic_compare_exchange_n(&init_count, &n, n - 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return n > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

static int ready(void) { return __atomic_load_n(&init_count, __ATOMIC_SEQ_CST) > 0; }

/* The device index of a handle, or -1. */
static int device_of(nvmlDevice_t d) {
    long i = (char *)d - device_handles;
    return i >= 0 && i < fg_config()->device_count ? (int)i : -1;
}

static nvmlReturn_t count(unsigned int *n) {
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!n) return NVML_ERROR_INVALID_ARGUMENT;
    *n = (unsigned)fg_config()->device_count;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { COUNT(nvmlDeviceGetCount); return count(n); }
EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { COUNT(nvmlDeviceGetCount_v2); return count(n); }

static nvmlReturn_t by_index(unsigned int i, nvmlDevice_t *d) {
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!d || i >= (unsigned)fg_config()->device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *d = (nvmlDevice_t)&device_handles[i];
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) { COUNT(nvmlDeviceGetHandleByIndex); return by_index(i, d); }
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) { COUNT(nvmlDeviceGetHandleByIndex_v2); return by_index(i, d); }

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int len) {
    COUNT(nvmlDeviceGetName);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0 || !name) return NVML_ERROR_INVALID_ARGUMENT;
    char buf[96];
    int n = snprintf(buf, sizeof buf, "cuvisor fake GPU %d (%llu MiB)", i,
                     (unsigned long long)(fg_config()->device_mem >> 20));
    if ((unsigned)n >= len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(name, buf, (size_t)n + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t memory(nvmlDevice_t d, unsigned long long *total, unsigned long long *used) {
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    fg_lock();
    *used = fg_device_used(i);
    fg_unlock();
    *total = fg_config()->device_mem;
    if (*used > *total) *used = *total;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    COUNT(nvmlDeviceGetMemoryInfo);
    if (!m) return ready() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    unsigned long long total, used;
    nvmlReturn_t rc = memory(d, &total, &used);
    if (rc) return rc;
    *m = (nvmlMemory_t){.total = total, .free = total - used, .used = used};
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    COUNT(nvmlDeviceGetMemoryInfo_v2);
    if (!m) return ready() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    if (m->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long total, used;
    nvmlReturn_t rc = memory(d, &total, &used);
    if (rc) return rc;
    m->total = total;
    m->reserved = 0;
    m->free = total - used;
    m->used = used;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int len) {
    COUNT(nvmlSystemGetDriverVersion);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    if (len < 8) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(version, "575.0.0");
    return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t r) {
    COUNT(nvmlErrorString);
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument Version Mismatch";
    default: return "Unknown Error";
    }
}
