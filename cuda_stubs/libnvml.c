/* Fake libnvidia-ml.so.1: device count, names, identity (UUID, PCI), the truth about device
 * memory and the processes using each device, read from the same device state as the fake
 * libcuda (all processes sharing the GPU). NVML knows physical devices only: it ignores
 * CUDA_VISIBLE_DEVICES, as the real one does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_types.h"

#include "fakegpu.h"

typedef int nvmlReturn_t;
typedef struct fg_nvml_device *nvmlDevice_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
#define NVML_STRUCT_VERSION(type, ver) (unsigned int)(sizeof(type) | ((ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(nvmlMemory_v2_t, 2)
/* nvmlPciInfo_t as nvml.h has it since the 32-byte busId; the first 36 bytes are the layout
 * of the oldest one (a 16-byte busId, then the five numbers), which is all that
 * nvmlDeviceGetPciInfo (v1) writes. */
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId; /* 0xFFFFFFFF without MIG */
} nvmlProcessInfo_t; /* also nvmlProcessInfo_v2_t */
#define NVML_DEVICE_UUID_ASCII_LEN 41

#define NVML_ENTRIES(X) X(nvmlInit) X(nvmlInit_v2) X(nvmlInitWithFlags) X(nvmlShutdown) \
    X(nvmlDeviceGetCount) X(nvmlDeviceGetCount_v2) X(nvmlDeviceGetHandleByIndex)          \
    X(nvmlDeviceGetHandleByIndex_v2) X(nvmlDeviceGetName) X(nvmlDeviceGetMemoryInfo)      \
    X(nvmlDeviceGetMemoryInfo_v2) X(nvmlSystemGetDriverVersion) X(nvmlErrorString)            \
    X(nvmlDeviceGetUUID) X(nvmlDeviceGetIndex) X(nvmlDeviceGetHandleByUUID)                   \
    X(nvmlDeviceGetHandleByPciBusId) X(nvmlDeviceGetHandleByPciBusId_v2)                      \
    X(nvmlDeviceGetPciInfo) X(nvmlDeviceGetPciInfo_v2) X(nvmlDeviceGetPciInfo_v3)             \
    X(nvmlDeviceGetCudaComputeCapability) X(nvmlSystemGetCudaDriverVersion)                   \
    X(nvmlSystemGetCudaDriverVersion_v2) X(nvmlDeviceGetComputeRunningProcesses)              \
    X(nvmlDeviceGetComputeRunningProcesses_v2) X(nvmlDeviceGetComputeRunningProcesses_v3)     \
    X(nvmlDeviceGetSerial) X(nvmlDeviceGetHandleBySerial) X(nvmlDeviceGetTopologyNearestGpus)  \
    X(nvmlSystemGetTopologyGpuSet) X(nvmlDeviceGetMinorNumber) X(nvmlUnitGetCount)           \
    X(nvmlUnitGetHandleByIndex) X(nvmlUnitGetDevices) X(nvmlDeviceGetNvLinkRemoteDeviceType)    \
    X(nvmlDeviceGetNvLinkRemotePciInfo_v2) X(nvmlDeviceGetGpuFabricInfoV)
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
    uintptr_t i = (uintptr_t)d - (uintptr_t)device_handles; /* wraps for foreign pointers */
    return i < (uintptr_t)fg_config()->device_count ? (int)i : -1;
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
                     (unsigned long long)(fg_config()->device_mem[i] >> 20));
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
    *total = fg_config()->device_mem[i];
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

/* ---- identity ------------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int len) {
    COUNT(nvmlDeviceGetUUID);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0 || !uuid) return NVML_ERROR_INVALID_ARGUMENT;
    if (len < NVML_DEVICE_UUID_ASCII_LEN) return NVML_ERROR_INSUFFICIENT_SIZE;
    fg_device_uuid_text(i, uuid);
    return NVML_SUCCESS;
}

/* The N of the GPU's /dev/nvidiaN: its physical index, on this fake node. */
EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor) {
    COUNT(nvmlDeviceGetMinorNumber);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0 || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *minor = (unsigned)i;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    COUNT(nvmlDeviceGetIndex);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0 || !index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)i;
    return NVML_SUCCESS;
}

/* The whole UUID, as nvmlDeviceGetUUID prints it: NVML takes no prefixes. */
EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *d) {
    COUNT(nvmlDeviceGetHandleByUUID);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !d) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < fg_config()->device_count; i++) {
        char text[FG_UUID_TEXT_LEN];
        fg_device_uuid_text(i, text);
        if (strcmp(text, uuid) == 0) {
            *d = (nvmlDevice_t)&device_handles[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

static nvmlReturn_t by_pci_bus_id(const char *bus_id, nvmlDevice_t *d) {
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!bus_id || !d) return NVML_ERROR_INVALID_ARGUMENT;
    int i = fg_device_by_pci_bus_id(bus_id);
    if (i == -2) return NVML_ERROR_INVALID_ARGUMENT;
    if (i < 0) return NVML_ERROR_NOT_FOUND;
    *d = (nvmlDevice_t)&device_handles[i];
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *b, nvmlDevice_t *d) { COUNT(nvmlDeviceGetHandleByPciBusId); return by_pci_bus_id(b, d); }
EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *b, nvmlDevice_t *d) { COUNT(nvmlDeviceGetHandleByPciBusId_v2); return by_pci_bus_id(b, d); }

static nvmlReturn_t pci_info(nvmlDevice_t d, nvmlPciInfo_t *pci, int v1) {
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0 || !pci) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned bus = FG_PCI_BUS(i) & 0xffu; /* domain 0, device 0, function 0 */
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", bus);
    pci->domain = 0;
    pci->bus = bus;
    pci->device = 0;
    pci->pciDeviceId = (FG_PCI_DEVICE_ID << 16) | FG_PCI_VENDOR_ID;
    pci->pciSubSystemId = FG_PCI_SUBSYSTEM_ID;
    if (!v1) snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", bus);
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *p) { COUNT(nvmlDeviceGetPciInfo); return pci_info(d, p, 1); }
EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *p) { COUNT(nvmlDeviceGetPciInfo_v2); return pci_info(d, p, 0); }
EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) { COUNT(nvmlDeviceGetPciInfo_v3); return pci_info(d, p, 0); }

EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    COUNT(nvmlDeviceGetCudaComputeCapability);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (device_of(d) < 0 || !major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = 9;
    *minor = 0;
    return NVML_SUCCESS;
}

static nvmlReturn_t cuda_driver_version(int *v) {
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = fg_driver_version() > 0 ? fg_driver_version() : FG_DRIVER_VERSION_DEFAULT;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { COUNT(nvmlSystemGetCudaDriverVersion); return cuda_driver_version(v); }
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { COUNT(nvmlSystemGetCudaDriverVersion_v2); return cuda_driver_version(v); }

/* ---- serial numbers and topology ------------------------------------------------------- */

#define NVML_DEVICE_SERIAL_BUFFER_SIZE 30
#define NVML_TOPOLOGY_SYSTEM 50

/* Each fake board's serial number: 13 digits, as NVIDIA's boards have. */
static void serial_of(int i, char out[NVML_DEVICE_SERIAL_BUFFER_SIZE]) {
    snprintf(out, NVML_DEVICE_SERIAL_BUFFER_SIZE, "16509240%05d", 100 + i);
}

EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t d, char *serial, unsigned int length) {
    COUNT(nvmlDeviceGetSerial);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0 || !serial) return NVML_ERROR_INVALID_ARGUMENT;
    char text[NVML_DEVICE_SERIAL_BUFFER_SIZE];
    serial_of(i, text);
    if (strlen(text) >= length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(serial, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleBySerial(const char *serial, nvmlDevice_t *d) {
    COUNT(nvmlDeviceGetHandleBySerial);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!serial || !d) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < fg_config()->device_count; i++) {
        char text[NVML_DEVICE_SERIAL_BUFFER_SIZE];
        serial_of(i, text);
        if (strcmp(text, serial) == 0) {
            *d = (nvmlDevice_t)&device_handles[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

/* The documented count protocol of the topology lists: a count of 0 asks how many (the
 * array is not touched); otherwise up to *count handles are written and *count says how
 * many. The devices are all but `skip` (-1: none skipped). */
static nvmlReturn_t device_list(int skip, unsigned int *count, nvmlDevice_t *array) {
    unsigned n = 0;
    for (int i = 0; i < fg_config()->device_count; i++) n += i != skip;
    if (*count == 0) {
        *count = n;
        return NVML_SUCCESS;
    }
    if (!array) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned k = 0;
    for (int i = 0; i < fg_config()->device_count && k < *count; i++)
        if (i != skip) array[k++] = (nvmlDevice_t)&device_handles[i];
    *count = k;
    return NVML_SUCCESS;
}

static int valid_level(int level) {
    return level == 0 || level == 10 || level == 20 || level == 30 || level == 40 || level == 50;
}

/* The fake GPUs share no switch or bridge: they meet at the system level
 * (NVML_TOPOLOGY_SYSTEM), and no GPU is nearer to another than that. */
EXPORT nvmlReturn_t nvmlDeviceGetTopologyNearestGpus(nvmlDevice_t d, int level, unsigned int *count,
                                                     nvmlDevice_t *array) {
    COUNT(nvmlDeviceGetTopologyNearestGpus);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0 || !valid_level(level) || !count) return NVML_ERROR_INVALID_ARGUMENT;
    if (level < NVML_TOPOLOGY_SYSTEM) {
        if (*count != 0 && !array) return NVML_ERROR_INVALID_ARGUMENT;
        *count = 0;
        return NVML_SUCCESS;
    }
    return device_list(i, count, array);
}

/* Every fake GPU is as near to every CPU of this machine. */
EXPORT nvmlReturn_t nvmlSystemGetTopologyGpuSet(unsigned int cpu, unsigned int *count, nvmlDevice_t *array) {
    COUNT(nvmlSystemGetTopologyGpuSet);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    long cpus = sysconf(_SC_NPROCESSORS_CONF);
    if (!count || (long)cpu >= cpus) return NVML_ERROR_INVALID_ARGUMENT;
    return device_list(-1, count, array);
}

/* ---- S-class units ---------------------------------------------------------------------- */

/* Units are the enclosures of NVIDIA's S-class systems; other machines have none (the
 * default). With FAKE_CUDA_NVML_UNITS=N, device i is in unit i % N. Unit handles are
 * addresses inside this array. */
typedef struct fg_nvml_unit *nvmlUnit_t;
static char unit_handles[FG_MAX_DEVICES];

static int unit_of(nvmlUnit_t u) {
    uintptr_t i = (uintptr_t)u - (uintptr_t)unit_handles; /* wraps for foreign pointers */
    return i < (uintptr_t)fg_config()->nvml_units ? (int)i : -1;
}

EXPORT nvmlReturn_t nvmlUnitGetCount(unsigned int *n) {
    COUNT(nvmlUnitGetCount);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!n) return NVML_ERROR_INVALID_ARGUMENT;
    *n = (unsigned)fg_config()->nvml_units;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlUnitGetHandleByIndex(unsigned int i, nvmlUnit_t *u) {
    COUNT(nvmlUnitGetHandleByIndex);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (!u || i >= (unsigned)fg_config()->nvml_units) return NVML_ERROR_INVALID_ARGUMENT;
    *u = (nvmlUnit_t)&unit_handles[i];
    return NVML_SUCCESS;
}

/* The documented protocol: *count is the room in `devices`; too little answers
 * NVML_ERROR_INSUFFICIENT_SIZE with the count needed; NULLs are invalid arguments. */
EXPORT nvmlReturn_t nvmlUnitGetDevices(nvmlUnit_t u, unsigned int *count, nvmlDevice_t *devices) {
    COUNT(nvmlUnitGetDevices);
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int unit = unit_of(u);
    if (unit < 0 || !count || !devices) return NVML_ERROR_INVALID_ARGUMENT;
    const fg_config_t *c = fg_config();
    unsigned n = 0;
    for (int i = unit; i < c->device_count; i += c->nvml_units) n++;
    if (*count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    n = 0;
    for (int i = unit; i < c->device_count; i += c->nvml_units) devices[n++] = (nvmlDevice_t)&device_handles[i];
    *count = n;
    return NVML_SUCCESS;
}

/* ---- processes -------------------------------------------------------------------------- */

/* The processes with a context on the device (or memory on it), and the device memory each
 * holds (resident bytes: what counts in nvmlDeviceGetMemoryInfo's `used`). With *count 0
 * and no array this is the documented size query. */
static nvmlReturn_t processes(nvmlDevice_t d, unsigned int *count, void *infos, int v1) {
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    int i = device_of(d);
    if (i < 0 || !count) return NVML_ERROR_INVALID_ARGUMENT;
    fg_lock();
    int n = fg_device_processes(i, NULL, 0);
    fg_proc_usage_t *list = n ? malloc(sizeof *list * (size_t)n) : NULL;
    if (list) {
        int again = fg_device_processes(i, list, n);
        if (again < n) n = again;
    }
    fg_unlock();
    nvmlReturn_t rc = NVML_SUCCESS;
    if (n && !list) {
        rc = NVML_ERROR_UNKNOWN;
    } else if (*count < (unsigned)n) {
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
    } else if (n && !infos) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        for (int k = 0; k < n; k++) {
            if (v1)
                ((nvmlProcessInfo_v1_t *)infos)[k] = (nvmlProcessInfo_v1_t){(unsigned)list[k].pid, list[k].used};
            else
                ((nvmlProcessInfo_t *)infos)[k] =
                    (nvmlProcessInfo_t){(unsigned)list[k].pid, list[k].used, 0xffffffffu, 0xffffffffu};
        }
    }
    if (rc == NVML_SUCCESS || rc == NVML_ERROR_INSUFFICIENT_SIZE) *count = (unsigned)n;
    free(list);
    return rc;
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *n, nvmlProcessInfo_v1_t *p) {
    COUNT(nvmlDeviceGetComputeRunningProcesses);
    return processes(d, n, p, 1);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *n, nvmlProcessInfo_t *p) {
    COUNT(nvmlDeviceGetComputeRunningProcesses_v2);
    return processes(d, n, p, 0);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *n, nvmlProcessInfo_t *p) {
    COUNT(nvmlDeviceGetComputeRunningProcesses_v3);
    return processes(d, n, p, 0);
}

/* ---- NVLink and fabric: the fake GPU has neither (a PCIe H100 answers the same) ------ */

static nvmlReturn_t no_nvlink(nvmlDevice_t d, unsigned link, const void *out) {
    if (!ready()) return NVML_ERROR_UNINITIALIZED;
    if (device_of(d) < 0 || !out || link >= 18 /* NVML_NVLINK_MAX_LINKS */) return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_ERROR_NOT_SUPPORTED;
}
EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t d, unsigned link, int *type) {
    COUNT(nvmlDeviceGetNvLinkRemoteDeviceType);
    return no_nvlink(d, link, type);
}
EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t d, unsigned link, void *pci) {
    COUNT(nvmlDeviceGetNvLinkRemotePciInfo_v2);
    return no_nvlink(d, link, pci);
}
EXPORT nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t d, void *info) {
    COUNT(nvmlDeviceGetGpuFabricInfoV);
    return no_nvlink(d, 0, info);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t r) {
    COUNT(nvmlErrorString);
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument Version Mismatch";
    default: return "Unknown Error";
    }
}
