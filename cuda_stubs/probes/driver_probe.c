/* A scripted client of the CUDA driver API, used by the tests as a black box. Built three
 * times: linked against libcuda.so.1 (direct ELF binding); with -DBIND_DLSYM, where it
 * dlopen()s libcuda.so.1 and dlsym()s every function by name; and with -DBIND_PROCADDR,
 * where it finds only cuGetProcAddress_v2 with dlsym, asks it for itself, and fetches
 * everything else by base name and CUDA version, as NVIDIA's runtime does. Each argument is one
 * command; each command prints one line "<command> <args> -> <CUresult> [details]".
 *
 *   init                    cuInit, retain the primary context of device 0, make it current
 *   init-only               cuInit alone (no current context)
 *   device N                cuInit, retain the primary context of device ordinal N, make it
 *                           current: "device N -> 0" (or the first error)
 *   stream-on DEV SIZE      cuMemAllocAsync on a stream of device DEV's primary context, with
 *                           the caller's context current: "stream-on DEV SIZE -> R #K"
 *   uuid                    cuDeviceGetUuid_v2 of the current context's device (cuCtxGetDevice):
 *                           "uuid -> 0 GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
 *   devices                 cuDeviceGetCount: "devices -> 0 N", then per ordinal K one line
 *                           "ordinal K GPU-<uuid> <cuDeviceGetPCIBusId>" ("ordinal K -> ERR")
 *   by-pci BUSID            cuDeviceGetByPCIBusId: "by-pci BUSID -> 0 ORDINAL" (-1 on error)
 *   alloc SIZE              cuMemAlloc_v2          (SIZE: bytes or with K/M/G/KiB/MiB/GiB)
 *   legacy-alloc SIZE       cuMemAlloc (32-bit ABI)
 *   pitch WIDTH HEIGHT      cuMemAllocPitch_v2, prints the pitch
 *   managed SIZE            cuMemAllocManaged(ATTACH_GLOBAL)
 *   async SIZE              cuMemAllocAsync on the legacy stream
 *   free N / free-async N   cuMemFree_v2 / cuMemFreeAsync of the N-th allocation (0-based)
 *   sync                    cuCtxSynchronize
 *   info / legacy-info      cuMemGetInfo_v2 / cuMemGetInfo: "free total"
 *   total                   cuDeviceTotalMem_v2 of the current context's device
 *   roundtrip N             write a pattern to allocation N, read it back, compare
 *   memset N                cuMemsetD32 then read back
 *   attr N                  cuPointerGetAttribute MEMORY_TYPE and IS_MANAGED
 *   ptr-device N            cuPointerGetAttribute DEVICE_ORDINAL of allocation N
 *   ipc N                   cuIpcGetMemHandle
 *   ipc-export N FILE       cuIpcGetMemHandle, the 64 bytes written to FILE
 *   ipc-open FILE           cuIpcOpenMemHandle_v2 of the handle in FILE: "ipc-open FILE -> 0 #K"
 *                           (the mapping becomes allocation K)
 *   ipc-close N             cuIpcCloseMemHandle of allocation N
 *   peek N                  the first 4 bytes of allocation N (cuMemcpyDtoH), as 8 hex digits
 *   stream-ctx              cuStreamGetCtx of the legacy stream (NULL), then cuStreamCreate and
 *                           cuStreamGetCtx and cuStreamGetCtx_v2 (found with cuGetProcAddress_v2
 *                           at 12050) of it: "stream-ctx -> 0 stream=current legacy=current
 *                           v2=current green=null" when all name the current context (only
 *                           "stream-ctx -> ERR" after an error)
 *   advise N cpu|gpu        cuMemAdvise SET_PREFERRED_LOCATION
 *   prefetch N cpu|gpu      cuMemPrefetchAsync
 *   vmm SIZE                cuMemCreate + cuMemAddressReserve + cuMemMap + cuMemSetAccess
 *   vmm-on DEV SIZE         the same with the memory on device ordinal DEV (prop.location.id),
 *                           whatever the current device: "vmm-on DEV SIZE -> R #K"
 *   vmm-free N              cuMemUnmap + cuMemAddressFree + cuMemRelease
 *   array W H               cuArrayCreate_v2 (FLOAT, 1 channel)
 *   array-free N            cuArrayDestroy
 *   pool-reserved           CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT of the default pool
 *   procaddr NAME VER FLAGS cuGetProcAddress_v2: status and the symbol returned, as
 *                           NAME@library (dladdr)
 *   attribute N             cuDeviceGetAttribute(N) of the current context's device
 *   pool-alloc SIZE         cuMemPoolCreate + cuMemAllocFromPoolAsync (the pool is kept)
 *   pool-on DEV SIZE        the same with a pool of device ordinal DEV, on the legacy stream
 *                           of the current context: "pool-on DEV SIZE -> R #K"
 *   ptsz-alloc SIZE         the _ptsz variants, found with cuGetProcAddress_v2(flags=2):
 *                           cuMemAllocAsync_ptsz, cuMemAllocFromPoolAsync_ptsz, then
 *                           cuMemFreeAsync_ptsz of both
 *   array3d W H D / mipmap W H LEVELS   cuArray3DCreate_v2 / cuMipmappedArrayCreate, destroyed
 *   hints2 N                cuMemAdvise_v2 + cuMemPrefetchAsync_v2 to the device
 *   legacy-total            cuDeviceTotalMem (32-bit ABI) of the current context's device
 *   nvml                    libnvidia-ml.so.1 by dlopen: nvmlDeviceGetMemoryInfo and _v2
 *                           ("total free used"), and _v2 with a wrong version field
 *   nvml-list               NVML (all physical devices): "nvml-list -> 0 N", then per index
 *                           "nvml INDEX GPU-<uuid> <busId> <busIdLegacy> TOTAL cc=9.0" (INDEX
 *                           from nvmlDeviceGetIndex, the bus ids from nvmlDeviceGetPciInfo_v3
 *                           and from nvmlDeviceGetPciInfo)
 *   nvml-by-uuid UUID       nvmlDeviceGetHandleByUUID: "nvml-by-uuid UUID -> 0 INDEX" (-1 on error)
 *   nvml-by-bus BUSID       nvmlDeviceGetHandleByPciBusId_v2: "nvml-by-bus BUSID -> 0 INDEX",
 *                           plus " v1-differs" if nvmlDeviceGetHandleByPciBusId disagrees
 *   nvml-procs N            nvmlDeviceGetComputeRunningProcesses_v3 on NVML device N, sized by
 *                           a first call with a count of 0: "nvml-procs N -> 0 COUNT sizing=R",
 *                           then "pid PID USED" per process (" self" for this one)
 *   nvml-serial N           nvmlDeviceGetSerial of NVML device N: "nvml-serial N -> 0 SERIAL"
 *   nvml-by-serial SERIAL   nvmlDeviceGetHandleBySerial: "nvml-by-serial SERIAL -> 0 UUID"
 *                           ("-" on error)
 *   nvml-nearest N LEVEL    nvmlDeviceGetTopologyNearestGpus of NVML device N, sized by a first
 *                           call with a count of 0: "nvml-nearest N LEVEL -> 0 COUNT UUID..."
 *   nvml-gpuset CPU         nvmlSystemGetTopologyGpuSet, the same way:
 *                           "nvml-gpuset CPU -> 0 COUNT UUID..."
 *   nvml-unit U             nvmlUnitGetCount, then nvmlUnitGetDevices of unit U, first with room
 *                           for one device: "nvml-unit U -> RC UNITS COUNT sizing=R UUID..."
 *   nvml-version            nvmlSystemGetCudaDriverVersion and _v2: "nvml-version -> 0 V V2"
 *   nvml-info N             nvmlDeviceGetMemoryInfo of NVML device N (by index):
 *                           "nvml-info N -> 0 TOTAL FREE USED"
 *   fork SCRIPT-COMMAND     fork; the child runs "init alloc 1M" (or only "alloc 1M" when the
 *                           argument is "alloc") and prints its results prefixed "child"
 *   threads N ITERS SIZE    N threads each allocate, write, read back and free SIZE bytes
 *                           ITERS times; prints the number of failures
 *   stress N ITERS MAX SEED N threads each do ITERS random allocations (1 byte to MAX) and
 *                           frees, keeping up to 8 live; then free everything. Prints
 *                           the successes and the out-of-memory refusals
 *   stress-ms N MS MAX SEED  the same, for MS milliseconds instead of a number of operations
 *   fork-keep SIZE          fork; the child runs init + alloc SIZE, reports, and keeps the
 *                           memory until `reap`; the parent goes on once the child holds it
 *   reap                    let the fork-keep children go (they exit normally) and wait
 *   watch-nvml MS           sample NVML's used memory of device 0 for MS milliseconds (as
 *                           an observer outside the model); prints the largest value seen
 *   sleep MS                sleep MS milliseconds (a worker that holds its memory)
 *   export-table UUID       cuGetExportTable of a 32-hex-digit UUID: "export-table UUID -> R table"
 *                           ("null" when no table came back)
 *   driver-version          cuDriverGetVersion: "driver-version -> 0 V"
 *   ctx-id                  cuCtxGetId of the current context: "ctx-id -> 0 ID"
 *   reset                   cuDevicePrimaryCtxReset_v2 of the current context's device (the
 *                           context is inactive afterwards: "init" makes one current again)
 *   free-null               cuMemFree_v2(0)
 *   capture-info            cuStreamGetCaptureInfo_v3 of the legacy stream: "-> R STATUS"
 *   occupancy BLOCK SHMEM   of the function "k" (loaded as by launch): blocks a multiprocessor
 *                           holds, and the dynamic shared memory left to each: "-> R N BYTES"
 *   tensor-map RANK N       cuTensorMapEncodeTiled of allocation N as a RANK-dimensional
 *                           float32 tensor of 64 x 64 x ..., boxes of 32: "-> R"
 *   release                 cuDevicePrimaryCtxRelease_v2 of the current context's device
 *   ctx-create              cuCtxCreate_v2 on the current context's device (pushed current)
 *   ctx-destroy             cuCtxDestroy_v2 of the context ctx-create made (the one under it
 *                           becomes current again)
 *   launch GRID BLOCK SHMEM cuModuleLoadData of a fatbin (once), cuModuleGetFunction "k" and
 *                           cuLaunchKernel(GRID x 1 x 1, BLOCK x 1 x 1, SHMEM bytes): "-> R"
 *   bad-image               cuModuleLoadData of bytes that are no fatbin, cubin or PTX
 *   wait                    block until a line (or end of file) arrives on stdin
 *   exit                    return from main now (the report is written at exit) */
#include <dlfcn.h>
#include <time.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe_util.h"

#include "../cuda_types.h"

#define DRIVER_FNS(X)                                                                              \
    X(cuInit, (unsigned)) X(cuDeviceGet, (CUdevice *, int))                                        \
    X(cuDevicePrimaryCtxRetain, (CUcontext *, CUdevice)) X(cuCtxSetCurrent, (CUcontext))           \
    X(cuCtxSynchronize, (void)) X(cuMemAlloc_v2, (CUdeviceptr *, size_t))                          \
    X(cuMemAlloc, (CUdeviceptr_v1 *, unsigned))                                                    \
    X(cuMemAllocPitch_v2, (CUdeviceptr *, size_t *, size_t, size_t, unsigned))                     \
    X(cuMemAllocManaged, (CUdeviceptr *, size_t, unsigned))                                        \
    X(cuMemAllocAsync, (CUdeviceptr *, size_t, CUstream)) X(cuMemFree_v2, (CUdeviceptr))           \
    X(cuMemFreeAsync, (CUdeviceptr, CUstream)) X(cuMemGetInfo_v2, (size_t *, size_t *))            \
    X(cuMemGetInfo, (unsigned *, unsigned *)) X(cuDeviceTotalMem_v2, (size_t *, CUdevice))         \
    X(cuMemcpyHtoD_v2, (CUdeviceptr, const void *, size_t))                                        \
    X(cuMemcpyDtoH_v2, (void *, CUdeviceptr, size_t))                                              \
    X(cuMemsetD32_v2, (CUdeviceptr, unsigned, size_t))                                             \
    X(cuPointerGetAttribute, (void *, int, CUdeviceptr))                                           \
    X(cuIpcGetMemHandle, (CUipcMemHandle *, CUdeviceptr))                                          \
    X(cuMemAdvise, (CUdeviceptr, size_t, int, CUdevice))                                           \
    X(cuMemPrefetchAsync, (CUdeviceptr, size_t, CUdevice, CUstream))                               \
    X(cuMemCreate, (CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long)) \
    X(cuMemRelease, (CUmemGenericAllocationHandle))                                                \
    X(cuMemAddressReserve, (CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long))       \
    X(cuMemAddressFree, (CUdeviceptr, size_t))                                                     \
    X(cuMemMap, (CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long))   \
    X(cuMemUnmap, (CUdeviceptr, size_t))                                                           \
    X(cuMemSetAccess, (CUdeviceptr, size_t, const CUmemAccessDesc *, size_t))                      \
    X(cuArrayCreate_v2, (CUarray *, const CUDA_ARRAY_DESCRIPTOR *)) X(cuArrayDestroy, (CUarray))   \
    X(cuDeviceGetDefaultMemPool, (CUmemoryPool *, CUdevice))                                       \
    X(cuMemPoolGetAttribute, (CUmemoryPool, int, void *))                                          \
    X(cuGetProcAddress_v2, (const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *)) \
    X(cuDeviceGetAttribute, (int *, int, CUdevice))                                                \
    X(cuMemPoolCreate, (CUmemoryPool *, const CUmemPoolProps *))                                    \
    X(cuMemAllocFromPoolAsync, (CUdeviceptr *, size_t, CUmemoryPool, CUstream))                     \
    X(cuArray3DCreate_v2, (CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *))                             \
    X(cuMipmappedArrayCreate, (CUmipmappedArray *, const CUDA_ARRAY3D_DESCRIPTOR *, unsigned))      \
    X(cuMipmappedArrayDestroy, (CUmipmappedArray))                                                  \
    X(cuMemAdvise_v2, (CUdeviceptr, size_t, int, CUmemLocation))                                    \
    X(cuMemPrefetchAsync_v2, (CUdeviceptr, size_t, CUmemLocation, unsigned, CUstream))              \
    X(cuDeviceTotalMem, (unsigned *, CUdevice))                                                    \
    X(cuCtxGetDevice, (CUdevice *)) X(cuCtxGetCurrent, (CUcontext *))                              \
    X(cuDeviceGetCount, (int *)) X(cuDeviceGetUuid_v2, (CUuuid *, CUdevice))                       \
    X(cuDeviceGetPCIBusId, (char *, int, CUdevice)) X(cuDeviceGetByPCIBusId, (CUdevice *, const char *)) \
    X(cuIpcOpenMemHandle_v2, (CUdeviceptr *, CUipcMemHandle, unsigned))                            \
    X(cuIpcCloseMemHandle, (CUdeviceptr))                                                          \
    X(cuMemGetAddressRange_v2, (CUdeviceptr *, size_t *, CUdeviceptr))                             \
    X(cuStreamCreate, (CUstream *, unsigned)) X(cuStreamDestroy_v2, (CUstream))                    \
    X(cuStreamGetCtx, (CUstream, CUcontext *))                                                    \
    X(cuGetExportTable, (const void **, const CUuuid *)) X(cuDriverGetVersion, (int *))            \
    X(cuDevicePrimaryCtxReset_v2, (CUdevice)) X(cuCtxGetId, (CUcontext, unsigned long long *))     \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice)) X(cuCtxCreate_v2, (CUcontext *, unsigned, CUdevice)) \
    X(cuCtxDestroy_v2, (CUcontext))                                                                \
    X(cuStreamGetCaptureInfo_v3, (CUstream, int *, cuuint64_t *, void **, const void **, const void **, size_t *)) \
    X(cuOccupancyMaxActiveBlocksPerMultiprocessor, (int *, CUfunction, int, size_t))               \
    X(cuOccupancyAvailableDynamicSMemPerBlock, (size_t *, CUfunction, int, int))                   \
    X(cuTensorMapEncodeTiled, (void *, int, cuuint32_t, void *, const cuuint64_t *, const cuuint64_t *, \
                               const cuuint32_t *, const cuuint32_t *, int, int, int, int))         \
    X(cuModuleLoadData, (CUmodule *, const void *))                                                \
    X(cuModuleGetFunction, (CUfunction *, CUmodule, const char *))                                 \
    X(cuLaunchKernel, (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,    \
                       unsigned, CUstream, void **, void **))

#define DECLARE(name, args) CUresult name args;
DRIVER_FNS(DECLARE)
static struct {
#define FIELD(name, args) CUresult(*name) args;
    DRIVER_FNS(FIELD)
} d;

#if defined(BIND_PROCADDR)
/* The base name and CUDA version a runtime would ask for. */
static void base_and_version(const char *name, char *base, size_t len, int *version) {
    snprintf(base, len, "%s", name);
    size_t n = strlen(base);
    int v2 = n > 3 && !strcmp(base + n - 3, "_v2");
    if (v2) base[n - 3] = 0;
    *version = 12000;
    if (!v2 && (!strcmp(name, "cuMemAlloc") || !strcmp(name, "cuMemGetInfo") || !strcmp(name, "cuDeviceTotalMem")))
        *version = 2000; /* the 32-bit ABI */
    if (v2 && (!strcmp(base, "cuMemAdvise") || !strcmp(base, "cuMemPrefetchAsync"))) *version = 12020;
    if (n > 3 && !strcmp(base + n - 3, "_v3")) { /* cuStreamGetCaptureInfo_v3: CUDA 12.3 */
        base[n - 3] = 0;
        *version = 12030;
    }
}
#endif

static void bind(void) {
#if defined(BIND_DLSYM) || defined(BIND_PROCADDR)
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("dlopen libcuda.so.1 failed: %s\n", dlerror());
        exit(2);
    }
#endif
#if defined(BIND_DLSYM)
#define BIND(name, args)                                  \
    *(void **)&d.name = dlsym(h, #name);                  \
    if (!d.name) { printf("dlsym %s failed\n", #name); exit(2); }
#elif defined(BIND_PROCADDR)
    CUresult (*first)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *) =
        (CUresult(*)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *))dlsym(h, "cuGetProcAddress_v2");
    CUresult (*resolve)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *) = NULL;
    if (!first || first("cuGetProcAddress", (void **)&resolve, 12000, 0, NULL) || !resolve) {
        printf("cuGetProcAddress self-lookup failed\n");
        exit(2);
    }
    char base[128];
    int version;
#define BIND(name, args)                                                                   \
    base_and_version(#name, base, sizeof base, &version);                                  \
    if (resolve(base, (void **)&d.name, version, 0, NULL) || !d.name) {                    \
        printf("cuGetProcAddress %s %d failed\n", base, version);                          \
        exit(2);                                                                           \
    }
#else
#define BIND(name, args) d.name = name;
#endif
    DRIVER_FNS(BIND)
}

/* NAME@library of a function pointer, or NULL. */
static const char *where(void *fn) {
    static char buf[256];
    Dl_info info = {0};
    if (!fn || !dladdr(fn, &info) || !info.dli_sname) return "NULL";
    const char *lib = strrchr(info.dli_fname, '/');
    snprintf(buf, sizeof buf, "%s@%s", info.dli_sname, lib ? lib + 1 : info.dli_fname);
    return buf;
}

/* cuInit, then the primary context of device `ordinal` made current ("device N"). */
static CUresult init_device(int ordinal) {
    CUdevice dev;
    CUcontext ctx;
    CUresult r = d.cuInit(0);
    if (!r) r = d.cuDeviceGet(&dev, ordinal);
    if (!r) r = d.cuDevicePrimaryCtxRetain(&ctx, dev);
    if (!r) r = d.cuCtxSetCurrent(ctx);
    return r;
}

/* What "init" means here: device 0. */
static CUresult init_primary(void) { return init_device(0); }

/* The current context's device, and cuCtxGetDevice's answer in *r (device 0 if it fails,
 * for the commands where the call that follows reports the error itself). */
static CUdevice current_device(CUresult *r) {
    CUdevice dev = 0;
    CUresult e = d.cuCtxGetDevice(&dev);
    if (r) *r = e;
    return e ? 0 : dev;
}

/* NVIDIA's text form of a UUID. */
static const char *uuid_text(const CUuuid *u) {
    static char buf[48];
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(buf, sizeof buf, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return buf;
}

/* libnvidia-ml.so.1, by dlopen as pynvml and the supervisor reach it. */
typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvml_pci_t;
typedef struct { unsigned pid; unsigned long long used; unsigned gi, ci; } nvml_proc_t;
#define NVML_FNS(X)                                                                                \
    X(nvmlInit_v2, (void)) X(nvmlDeviceGetCount_v2, (unsigned *))                                  \
    X(nvmlDeviceGetHandleByIndex_v2, (unsigned, void **))                                          \
    X(nvmlDeviceGetUUID, (void *, char *, unsigned)) X(nvmlDeviceGetIndex, (void *, unsigned *))   \
    X(nvmlDeviceGetHandleByUUID, (const char *, void **))                                          \
    X(nvmlDeviceGetHandleByPciBusId, (const char *, void **))                                      \
    X(nvmlDeviceGetHandleByPciBusId_v2, (const char *, void **))                                   \
    X(nvmlDeviceGetPciInfo, (void *, nvml_pci_t *)) X(nvmlDeviceGetPciInfo_v3, (void *, nvml_pci_t *)) \
    X(nvmlDeviceGetCudaComputeCapability, (void *, int *, int *))                                  \
    X(nvmlSystemGetCudaDriverVersion, (int *)) X(nvmlSystemGetCudaDriverVersion_v2, (int *))       \
    X(nvmlDeviceGetMemoryInfo, (void *, unsigned long long *))                                     \
    X(nvmlDeviceGetComputeRunningProcesses_v3, (void *, unsigned *, nvml_proc_t *))           \
    X(nvmlDeviceGetSerial, (void *, char *, unsigned))                                         \
    X(nvmlDeviceGetHandleBySerial, (const char *, void **))                                    \
    X(nvmlDeviceGetTopologyNearestGpus, (void *, int, unsigned *, void **))                    \
    X(nvmlSystemGetTopologyGpuSet, (unsigned, unsigned *, void **))                            \
    X(nvmlUnitGetCount, (unsigned *)) X(nvmlUnitGetHandleByIndex, (unsigned, void **))        \
    X(nvmlUnitGetDevices, (void *, unsigned *, void **))
static struct {
#define NVML_FIELD(name, args) int(*name) args;
    NVML_FNS(NVML_FIELD)
} nv;

/* Loads NVML (once) and initializes it: 0, an nvmlReturn_t, or -1 without the library. */
static int nvml_ready(void) {
    static void *h;
    if (!h) {
        h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!h) return -1;
#define NVML_BIND(name, args) if (!(*(void **)&nv.name = dlsym(h, #name))) return -1;
        NVML_FNS(NVML_BIND)
    }
    return nv.nvmlInit_v2();
}

/* The 64 bytes of an IPC handle to or from a file. */
static int handle_file(const char *path, CUipcMemHandle *h, int write) {
    FILE *f = fopen(path, write ? "wb" : "rb");
    if (!f) return -1;
    size_t n = write ? fwrite(h, sizeof *h, 1, f) : fread(h, sizeof *h, 1, f);
    return fclose(f) == 0 && n == 1 ? 0 : -1;
}

static pid_t keep_pids[64];
static int keep_fds[64], n_keep;

#define MAX 1024
static struct { CUdeviceptr p; size_t size; CUmemGenericAllocationHandle h; CUarray arr; } slot[MAX];
static int n_slots;

static int add(CUdeviceptr p, size_t size) {
    slot[n_slots].p = p;
    slot[n_slots].size = size;
    return n_slots++;
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* When the probe started (`clock`). */
static double start_ns;

static unsigned long long stress_max;
static int stress_iters;
static double stress_deadline_ns; /* 0: run stress_iters operations */
static unsigned stress_seed;
static long stress_ok, stress_oom, stress_other;

static void *stress_main(void *arg) {
    CUcontext ctx = arg;
    unsigned seed = __atomic_fetch_add(&stress_seed, 7919, __ATOMIC_RELAXED);
    CUdeviceptr live[8] = {0};
    long ok = 0, oom = 0, other = 0;
    if (d.cuCtxSetCurrent(ctx)) return NULL;
    for (int k = 0; stress_deadline_ns ? now_ns() < stress_deadline_ns : k < stress_iters; k++) {
        int slot = rand_r(&seed) % 8;
        if (live[slot]) {
            if (d.cuMemFree_v2(live[slot])) other++;
            live[slot] = 0;
        } else {
            size_t n = 1 + (size_t)((((unsigned long long)rand_r(&seed) << 31) ^ (unsigned long long)rand_r(&seed)) % stress_max);
            CUresult e = d.cuMemAlloc_v2(&live[slot], n);
            if (e == CUDA_SUCCESS) ok++;
            else if (e == CUDA_ERROR_OUT_OF_MEMORY) oom++, live[slot] = 0;
            else other++, live[slot] = 0;
        }
    }
    for (int slot = 0; slot < 8; slot++)
        if (live[slot] && d.cuMemFree_v2(live[slot])) other++;
    __atomic_fetch_add(&stress_ok, ok, __ATOMIC_RELAXED);
    __atomic_fetch_add(&stress_oom, oom, __ATOMIC_RELAXED);
    __atomic_fetch_add(&stress_other, other, __ATOMIC_RELAXED);
    return NULL;
}

static size_t thread_size;
static int thread_iters;

/* exit-racing: allocate and free forever, until the process exits under the thread. */
static size_t racing_size;
static void *racing_main(void *arg) {
    CUcontext ctx = arg;
    if (d.cuCtxSetCurrent(ctx)) return NULL;
    for (;;) {
        CUdeviceptr p;
        if (d.cuMemAlloc_v2(&p, racing_size) == CUDA_SUCCESS) d.cuMemFree_v2(p);
    }
    return NULL;
}

static void *thread_main(void *arg) {
    CUcontext ctx = arg;
    long failures = 0;
    unsigned char *buf = malloc(thread_size), *back = malloc(thread_size);
    if (d.cuCtxSetCurrent(ctx)) return (void *)1;
    for (int k = 0; k < thread_iters; k++) {
        CUdeviceptr p;
        memset(buf, k & 0xff, thread_size);
        if (d.cuMemAlloc_v2(&p, thread_size) || d.cuMemcpyHtoD_v2(p, buf, thread_size) ||
            d.cuMemcpyDtoH_v2(back, p, thread_size) || memcmp(buf, back, thread_size) || d.cuMemFree_v2(p))
            failures++;
    }
    free(buf);
    free(back);
    return (void *)failures;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    start_ns = now_ns();
    bind();
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        const char *a1 = i + 1 < argc ? argv[i + 1] : "0", *a2 = i + 2 < argc ? argv[i + 2] : "0";
        CUresult r;
        if (!strcmp(c, "init-only")) {
            printf("init-only -> %d\n", d.cuInit(0));
        } else if (!strcmp(c, "init")) {
            printf("init -> %d\n", init_primary());
        } else if (!strcmp(c, "device")) {
            printf("device %s -> %d\n", a1, init_device(atoi(a1)));
            i++;
        } else if (!strcmp(c, "stream-on")) {
            /* A stream of device DEV's primary context, made with that context current,
             * then cuMemAllocAsync on it with the caller's context current again. */
            CUcontext mine = NULL, other = NULL;
            CUstream s = NULL;
            CUdeviceptr p = 0;
            size_t n = size_arg(a2);
            r = d.cuCtxGetCurrent(&mine);
            if (!r) r = d.cuDevicePrimaryCtxRetain(&other, atoi(a1));
            if (!r) r = d.cuCtxSetCurrent(other);
            if (!r) r = d.cuStreamCreate(&s, 0);
            if (mine) d.cuCtxSetCurrent(mine);
            if (!r) r = d.cuMemAllocAsync(&p, n, s);
            printf("stream-on %s %s -> %d", a1, a2, r);
            if (!r) printf(" #%d", add(p, n));
            printf("\n");
            i += 2;
        } else if (!strcmp(c, "uuid")) {
            CUuuid u;
            CUdevice dev = current_device(&r);
            if (!r) r = d.cuDeviceGetUuid_v2(&u, dev);
            printf("uuid -> %d%s%s\n", r, r ? "" : " ", r ? "" : uuid_text(&u));
        } else if (!strcmp(c, "devices")) {
            int n = 0;
            r = d.cuDeviceGetCount(&n);
            printf("devices -> %d %d\n", r, n);
            for (int k = 0; !r && k < n; k++) {
                CUdevice dev;
                CUuuid u;
                char bus[32] = "";
                CUresult e = d.cuDeviceGet(&dev, k);
                if (!e) e = d.cuDeviceGetUuid_v2(&u, dev);
                if (!e) e = d.cuDeviceGetPCIBusId(bus, sizeof bus, dev);
                if (e) printf("ordinal %d -> %d\n", k, e);
                else printf("ordinal %d %s %s\n", k, uuid_text(&u), bus);
            }
        } else if (!strcmp(c, "by-pci")) {
            CUdevice dev = -1;
            r = d.cuDeviceGetByPCIBusId(&dev, a1);
            printf("by-pci %s -> %d %d\n", a1, r, r ? -1 : dev);
            i++;
        } else if (!strcmp(c, "alloc") || !strcmp(c, "managed") || !strcmp(c, "async") ||
                   !strcmp(c, "legacy-alloc")) {
            CUdeviceptr p = 0;
            size_t n = size_arg(a1);
            if (c[0] == 'a' && c[1] == 'l') r = d.cuMemAlloc_v2(&p, n);
            else if (c[0] == 'm') r = d.cuMemAllocManaged(&p, n, CU_MEM_ATTACH_GLOBAL);
            else if (c[0] == 'l') {
                CUdeviceptr_v1 p1 = 0;
                r = d.cuMemAlloc(&p1, (unsigned)n);
                p = p1;
            } else r = d.cuMemAllocAsync(&p, n, NULL);
            printf("%s %s -> %d", c, a1, r);
            if (!r) printf(" #%d%s", add(p, n), p >> 32 ? "" : " low32");
            printf("\n");
            i++;
        } else if (!strcmp(c, "pitch")) {
            CUdeviceptr p = 0;
            size_t pitch = 0, h = size_arg(a2);
            r = d.cuMemAllocPitch_v2(&p, &pitch, size_arg(a1), h, 4);
            printf("pitch %s %s -> %d", a1, a2, r);
            if (!r) printf(" #%d pitch=%zu", add(p, pitch * h), pitch);
            printf("\n");
            i += 2;
        } else if (!strcmp(c, "free") || !strcmp(c, "free-async")) {
            int k = atoi(a1);
            r = c[4] ? d.cuMemFreeAsync(slot[k].p, NULL) : d.cuMemFree_v2(slot[k].p);
            printf("%s %s -> %d\n", c, a1, r);
            i++;
        } else if (!strcmp(c, "sync")) {
            printf("sync -> %d\n", d.cuCtxSynchronize());
        } else if (!strcmp(c, "info")) {
            size_t f = 0, t = 0;
            r = d.cuMemGetInfo_v2(&f, &t);
            printf("info -> %d %zu %zu\n", r, f, t);
        } else if (!strcmp(c, "legacy-info")) {
            unsigned f = 0, t = 0;
            r = d.cuMemGetInfo(&f, &t);
            printf("legacy-info -> %d %u %u\n", r, f, t);
        } else if (!strcmp(c, "total")) {
            size_t t = 0;
            CUdevice dev = current_device(&r);
            if (!r) r = d.cuDeviceTotalMem_v2(&t, dev);
            printf("total -> %d %zu\n", r, t);
        } else if (!strcmp(c, "roundtrip") || !strcmp(c, "memset")) {
            int k = atoi(a1);
            size_t n = slot[k].size < (1u << 20) ? slot[k].size : (1u << 20);
            unsigned *in = malloc(n), *out = calloc(1, n);
            for (size_t j = 0; j < n / 4; j++) in[j] = c[0] == 'r' ? (unsigned)(j * 2654435761u) : 0xabcdef01u;
            r = c[0] == 'r' ? d.cuMemcpyHtoD_v2(slot[k].p, in, n) : d.cuMemsetD32_v2(slot[k].p, 0xabcdef01u, n / 4);
            if (!r) r = d.cuMemcpyDtoH_v2(out, slot[k].p, n);
            printf("%s %s -> %d%s\n", c, a1, r, r ? "" : memcmp(in, out, n) ? " mismatch" : " ok");
            free(in);
            free(out);
            i++;
        } else if (!strcmp(c, "attr")) {
            unsigned type = 0, managed = 0;
            int k = atoi(a1);
            r = d.cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, slot[k].p);
            if (!r) r = d.cuPointerGetAttribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, slot[k].p);
            printf("attr %s -> %d type=%u managed=%u\n", a1, r, type, managed);
            i++;
        } else if (!strcmp(c, "ptr-device")) {
            int ord = -1;
            r = d.cuPointerGetAttribute(&ord, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, slot[atoi(a1)].p);
            printf("ptr-device %s -> %d %d\n", a1, r, ord);
            i++;
        } else if (!strcmp(c, "ipc")) {
            CUipcMemHandle h;
            printf("ipc %s -> %d\n", a1, d.cuIpcGetMemHandle(&h, slot[atoi(a1)].p));
            i++;
        } else if (!strcmp(c, "ipc-export")) {
            CUipcMemHandle h;
            r = d.cuIpcGetMemHandle(&h, slot[atoi(a1)].p);
            if (!r && handle_file(a2, &h, 1) != 0) r = -1;
            printf("ipc-export %s %s -> %d\n", a1, a2, r);
            i += 2;
        } else if (!strcmp(c, "ipc-open")) {
            CUipcMemHandle h;
            CUdeviceptr p = 0, base = 0;
            size_t n = 0;
            if (handle_file(a1, &h, 0) != 0) {
                printf("ipc-open %s -> cannot read the handle\n", a1);
                return 2;
            }
            r = d.cuIpcOpenMemHandle_v2(&p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
            if (!r) r = d.cuMemGetAddressRange_v2(&base, &n, p);
            printf("ipc-open %s -> %d", a1, r);
            if (!r) printf(" #%d", add(p, n));
            printf("\n");
            i++;
        } else if (!strcmp(c, "ipc-close")) {
            printf("ipc-close %s -> %d\n", a1, d.cuIpcCloseMemHandle(slot[atoi(a1)].p));
            i++;
        } else if (!strcmp(c, "peek")) {
            unsigned v = 0;
            r = d.cuMemcpyDtoH_v2(&v, slot[atoi(a1)].p, sizeof v);
            printf("peek %s -> %d %08x\n", a1, r, v);
            i++;
        } else if (!strcmp(c, "stream-ctx")) {
            CUresult (*get_v2)(CUstream, CUcontext *, void **) = NULL;
            CUstream s = NULL;
            CUcontext cur = NULL, of_stream = NULL, of_legacy = NULL, of_v2 = NULL;
            void *green = &green;
            r = d.cuCtxGetCurrent(&cur);
            if (!r) r = d.cuStreamGetCtx(NULL, &of_legacy);
            if (!r) r = d.cuGetProcAddress_v2("cuStreamGetCtx", (void **)&get_v2, 12050, 0, NULL);
            if (!r && !get_v2) r = -1;
            if (!r) r = d.cuStreamCreate(&s, 0);
            if (!r) r = d.cuStreamGetCtx(s, &of_stream);
            if (!r) r = get_v2(s, &of_v2, &green);
            if (s) d.cuStreamDestroy_v2(s);
            printf("stream-ctx -> %d", r);
            if (!r)
                printf(" stream=%s legacy=%s v2=%s green=%s", of_stream == cur ? "current" : "other",
                       of_legacy == cur ? "current" : "other", of_v2 == cur ? "current" : "other",
                       green ? "set" : "null");
            printf("\n");
        } else if (!strcmp(c, "advise") || !strcmp(c, "prefetch")) {
            int k = atoi(a1);
            CUdevice to = strcmp(a2, "cpu") ? current_device(NULL) : CU_DEVICE_CPU;
            r = c[0] == 'a' ? d.cuMemAdvise(slot[k].p, slot[k].size, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, to)
                            : d.cuMemPrefetchAsync(slot[k].p, slot[k].size, to, NULL);
            printf("%s %s %s -> %d\n", c, a1, a2, r);
            i += 2;
        } else if (!strcmp(c, "vmm") || !strcmp(c, "vmm-on")) {
            int on = c[3] == '-'; /* vmm-on DEV SIZE: memory of another device */
            const char *size = on ? a2 : a1;
            size_t n = size_arg(size);
            CUdevice dev = on ? atoi(a1) : current_device(NULL);
            CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                        .location = {CU_MEM_LOCATION_TYPE_DEVICE, dev}};
            CUmemAccessDesc acc = {{CU_MEM_LOCATION_TYPE_DEVICE, dev}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
            CUmemGenericAllocationHandle h = 0;
            CUdeviceptr p = 0;
            r = d.cuMemCreate(&h, n, &prop, 0);
            if (!r) r = d.cuMemAddressReserve(&p, n, 0, 0, 0);
            if (!r) r = d.cuMemMap(p, n, 0, h, 0);
            if (!r) r = d.cuMemSetAccess(p, n, &acc, 1);
            if (on) printf("vmm-on %s %s -> %d", a1, size, r);
            else printf("vmm %s -> %d", a1, r);
            if (!r) {
                int k = add(p, n);
                slot[k].h = h;
                printf(" #%d", k);
            }
            printf("\n");
            i += on ? 2 : 1;
        } else if (!strcmp(c, "vmm-free")) {
            int k = atoi(a1);
            r = d.cuMemUnmap(slot[k].p, slot[k].size);
            if (!r) r = d.cuMemAddressFree(slot[k].p, slot[k].size);
            if (!r) r = d.cuMemRelease(slot[k].h);
            printf("vmm-free %s -> %d\n", a1, r);
            i++;
        } else if (!strcmp(c, "array")) {
            CUDA_ARRAY_DESCRIPTOR desc = {size_arg(a1), size_arg(a2), CU_AD_FORMAT_FLOAT, 1};
            CUarray arr = NULL;
            r = d.cuArrayCreate_v2(&arr, &desc);
            printf("array %s %s -> %d", a1, a2, r);
            if (!r) {
                int k = add(0, 0);
                slot[k].arr = arr;
                printf(" #%d", k);
            }
            printf("\n");
            i += 2;
        } else if (!strcmp(c, "array-free")) {
            printf("array-free %s -> %d\n", a1, d.cuArrayDestroy(slot[atoi(a1)].arr));
            i++;
        } else if (!strcmp(c, "pool-reserved")) {
            CUmemoryPool pool;
            cuuint64_t v = 0;
            CUdevice dev = current_device(&r);
            if (!r) r = d.cuDeviceGetDefaultMemPool(&pool, dev);
            if (!r) r = d.cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v);
            printf("pool-reserved -> %d %llu\n", r, v);
        } else if (!strcmp(c, "procaddr")) {
            const char *a3 = i + 3 < argc ? argv[i + 3] : "0";
            void *fn = NULL;
            CUdriverProcAddressQueryResult st = 99;
            r = d.cuGetProcAddress_v2(a1, &fn, atoi(a2), strtoull(a3, NULL, 10), &st);
            printf("procaddr %s %s %s -> %d status=%d %s\n", a1, a2, a3, r, st, where(fn));
            i += 3;
        } else if (!strcmp(c, "attribute")) {
            int v = -1;
            CUdevice dev = current_device(&r);
            if (!r) r = d.cuDeviceGetAttribute(&v, atoi(a1), dev);
            printf("attribute %s -> %d %d\n", a1, r, v);
            i++;
        } else if (!strcmp(c, "pool-alloc") || !strcmp(c, "pool-on")) {
            int on = c[5] == 'o'; /* pool-on DEV SIZE: a pool of another device */
            const char *size = on ? a2 : a1;
            CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                    .location = {CU_MEM_LOCATION_TYPE_DEVICE,
                                                 on ? atoi(a1) : current_device(NULL)}};
            CUmemoryPool pool;
            CUdeviceptr p = 0;
            size_t n = size_arg(size);
            r = d.cuMemPoolCreate(&pool, &props);
            if (!r) r = d.cuMemAllocFromPoolAsync(&p, n, pool, NULL);
            if (on) printf("pool-on %s %s -> %d", a1, size, r);
            else printf("pool-alloc %s -> %d", a1, r);
            if (!r) printf(" #%d", add(p, n));
            printf("\n");
            i += on ? 2 : 1;
        } else if (!strcmp(c, "ptsz-alloc")) {
            CUresult (*alloc)(CUdeviceptr *, size_t, CUstream) = NULL;
            CUresult (*from_pool)(CUdeviceptr *, size_t, CUmemoryPool, CUstream) = NULL;
            CUresult (*free_async)(CUdeviceptr, CUstream) = NULL;
            CUmemoryPool pool;
            CUdeviceptr p1 = 0, p2 = 0;
            size_t n = size_arg(a1);
            r = d.cuGetProcAddress_v2("cuMemAllocAsync", (void **)&alloc, 12000, 2, NULL);
            if (!r) r = d.cuGetProcAddress_v2("cuMemAllocFromPoolAsync", (void **)&from_pool, 12000, 2, NULL);
            if (!r) r = d.cuGetProcAddress_v2("cuMemFreeAsync", (void **)&free_async, 12000, 2, NULL);
            if (!r) r = d.cuDeviceGetDefaultMemPool(&pool, current_device(NULL));
            if (!r) r = alloc(&p1, n, CU_STREAM_PER_THREAD);
            if (!r) r = from_pool(&p2, n, pool, CU_STREAM_PER_THREAD);
            if (!r) r = free_async(p1, CU_STREAM_PER_THREAD);
            if (!r) r = free_async(p2, CU_STREAM_PER_THREAD);
            printf("ptsz-alloc %s -> %d\n", a1, r);
            i++;
        } else if (!strcmp(c, "array3d") || !strcmp(c, "mipmap")) {
            const char *a3 = i + 3 < argc ? argv[i + 3] : "0";
            CUDA_ARRAY3D_DESCRIPTOR desc = {size_arg(a1), size_arg(a2), c[0] == 'a' ? size_arg(a3) : 0,
                                            CU_AD_FORMAT_UNSIGNED_INT8, 4, 0};
            CUarray arr = NULL;
            if (c[0] == 'a') {
                r = d.cuArray3DCreate_v2(&arr, &desc);
                if (!r) r = d.cuArrayDestroy(arr);
            } else {
                r = d.cuMipmappedArrayCreate(&arr, &desc, (unsigned)atoi(a3));
                if (!r) r = d.cuMipmappedArrayDestroy(arr);
            }
            printf("%s %s %s %s -> %d\n", c, a1, a2, a3, r);
            i += 3;
        } else if (!strcmp(c, "hints2")) {
            int k = atoi(a1);
            CUmemLocation gpu = {CU_MEM_LOCATION_TYPE_DEVICE, current_device(NULL)};
            r = d.cuMemAdvise_v2(slot[k].p, slot[k].size, CU_MEM_ADVISE_SET_ACCESSED_BY, gpu);
            if (!r) r = d.cuMemPrefetchAsync_v2(slot[k].p, slot[k].size, gpu, 0, NULL);
            printf("hints2 %s -> %d\n", a1, r);
            i++;
        } else if (!strcmp(c, "legacy-total")) {
            unsigned t = 0;
            CUdevice dev = current_device(&r);
            if (!r) r = d.cuDeviceTotalMem(&t, dev);
            printf("legacy-total -> %d %u\n", r, t);
        } else if (!strcmp(c, "nvml")) {
            void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                printf("nvml -> dlopen failed\n");
                continue;
            }
            int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
            int (*get)(unsigned, void **) = (int (*)(unsigned, void **))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
            int (*info1)(void *, unsigned long long *) = (int (*)(void *, unsigned long long *))dlsym(h, "nvmlDeviceGetMemoryInfo");
            int (*info2)(void *, void *) = (int (*)(void *, void *))dlsym(h, "nvmlDeviceGetMemoryInfo_v2");
            void *dev = NULL;
            unsigned long long m1[3] = {0};
            struct { unsigned version; unsigned long long total, reserved, free, used; } m2 = {0};
            int e = init();
            if (!e) e = get(0, &dev);
            if (!e) e = info1(dev, m1);
            printf("nvml v1 -> %d %llu %llu %llu\n", e, m1[0], m1[1], m1[2]);
            m2.version = (unsigned)sizeof m2 | (2u << 24);
            e = info2(dev, &m2);
            printf("nvml v2 -> %d %llu %llu %llu reserved=%llu\n", e, m2.total, m2.free, m2.used, m2.reserved);
            m2.version = (unsigned)sizeof m2 | (1u << 24);
            printf("nvml v2-wrong-version -> %d\n", info2(dev, &m2));
        } else if (!strcmp(c, "nvml-list")) {
            unsigned n = 0;
            int e = nvml_ready();
            if (!e) e = nv.nvmlDeviceGetCount_v2(&n);
            printf("nvml-list -> %d %u\n", e, n);
            for (unsigned k = 0; !e && k < n; k++) {
                void *dev = NULL;
                char uuid[96] = "";
                nvml_pci_t pci = {0}, pci1 = {0};
                unsigned long long mem[3] = {0};
                unsigned index = 0;
                int major = 0, minor = 0;
                int e2 = nv.nvmlDeviceGetHandleByIndex_v2(k, &dev);
                if (!e2) e2 = nv.nvmlDeviceGetIndex(dev, &index);
                if (!e2) e2 = nv.nvmlDeviceGetUUID(dev, uuid, sizeof uuid);
                if (!e2) e2 = nv.nvmlDeviceGetPciInfo_v3(dev, &pci);
                if (!e2) e2 = nv.nvmlDeviceGetPciInfo(dev, &pci1);
                if (!e2) e2 = nv.nvmlDeviceGetMemoryInfo(dev, mem);
                if (!e2) e2 = nv.nvmlDeviceGetCudaComputeCapability(dev, &major, &minor);
                if (e2) printf("nvml %u -> %d\n", k, e2);
                else printf("nvml %u %s %s %s %llu cc=%d.%d\n", index, uuid, pci.busId, pci1.busIdLegacy,
                            mem[0], major, minor);
            }
        } else if (!strcmp(c, "nvml-by-uuid") || !strcmp(c, "nvml-by-bus")) {
            void *dev = NULL, *dev1 = NULL;
            unsigned index = 0;
            int by_uuid = c[8] == 'u', differs = 0;
            int e = nvml_ready();
            if (!e) e = by_uuid ? nv.nvmlDeviceGetHandleByUUID(a1, &dev) : nv.nvmlDeviceGetHandleByPciBusId_v2(a1, &dev);
            if (!by_uuid) differs = nv.nvmlDeviceGetHandleByPciBusId(a1, &dev1) != e || dev1 != dev;
            if (!e) e = nv.nvmlDeviceGetIndex(dev, &index);
            printf("%s %s -> %d %d%s\n", c, a1, e, e ? -1 : (int)index, differs ? " v1-differs" : "");
            i++;
        } else if (!strcmp(c, "nvml-procs")) {
            void *dev = NULL;
            unsigned n = 0;
            nvml_proc_t *procs = NULL;
            int sizing = -1;
            int e = nvml_ready();
            if (!e) e = nv.nvmlDeviceGetHandleByIndex_v2((unsigned)atoi(a1), &dev);
            if (!e) {
                sizing = e = nv.nvmlDeviceGetComputeRunningProcesses_v3(dev, &n, NULL);
                if (e == 7) { /* NVML_ERROR_INSUFFICIENT_SIZE: n says how many */
                    procs = calloc(n, sizeof *procs);
                    e = nv.nvmlDeviceGetComputeRunningProcesses_v3(dev, &n, procs);
                }
            }
            printf("nvml-procs %s -> %d %u sizing=%d\n", a1, e, n, sizing);
            for (unsigned k = 0; !e && k < n; k++)
                printf("pid %u %llu%s\n", procs[k].pid, procs[k].used,
                       procs[k].pid == (unsigned)getpid() ? " self" : "");
            free(procs);
            i++;
        } else if (!strcmp(c, "nvml-info")) {
            void *dev = NULL;
            unsigned long long m[3] = {0};
            int e = nvml_ready();
            if (!e) e = nv.nvmlDeviceGetHandleByIndex_v2((unsigned)atoi(a1), &dev);
            if (!e) e = nv.nvmlDeviceGetMemoryInfo(dev, m);
            printf("nvml-info %s -> %d %llu %llu %llu\n", a1, e, m[0], m[1], m[2]);
            i++;
        } else if (!strcmp(c, "nvml-serial")) {
            void *dev = NULL;
            char serial[64] = "";
            int e = nvml_ready();
            if (!e) e = nv.nvmlDeviceGetHandleByIndex_v2((unsigned)atoi(a1), &dev);
            if (!e) e = nv.nvmlDeviceGetSerial(dev, serial, sizeof serial);
            printf("nvml-serial %s -> %d %s\n", a1, e, e ? "-" : serial);
            i++;
        } else if (!strcmp(c, "nvml-by-serial")) {
            void *dev = NULL;
            char uuid[96] = "";
            int e = nvml_ready();
            if (!e) e = nv.nvmlDeviceGetHandleBySerial(a1, &dev);
            if (!e) e = nv.nvmlDeviceGetUUID(dev, uuid, sizeof uuid);
            printf("nvml-by-serial %s -> %d %s\n", a1, e, e ? "-" : uuid);
            i++;
        } else if (!strcmp(c, "nvml-unit")) {
            void *unit = NULL, *list[64];
            unsigned units = 0, n = 1;
            int sizing = -1;
            int e = nvml_ready();
            if (!e) e = nv.nvmlUnitGetCount(&units);
            if (!e) e = nv.nvmlUnitGetHandleByIndex((unsigned)atoi(a1), &unit);
            if (!e) {
                sizing = e = nv.nvmlUnitGetDevices(unit, &n, list);
                if (e == 7 && n <= 64) e = nv.nvmlUnitGetDevices(unit, &n, list);
            }
            printf("nvml-unit %s -> %d %u %u sizing=%d", a1, e, units, e ? 0 : n, sizing);
            for (unsigned k = 0; !e && k < n; k++) {
                char uuid[96] = "";
                nv.nvmlDeviceGetUUID(list[k], uuid, sizeof uuid);
                printf(" %s", uuid);
            }
            printf("\n");
            i++;
        } else if (!strcmp(c, "nvml-nearest") || !strcmp(c, "nvml-gpuset")) {
            int nearest = c[5] == 'n';
            void *dev = NULL, *list[64];
            unsigned n = 0;
            int e = nvml_ready();
            if (!e && nearest) e = nv.nvmlDeviceGetHandleByIndex_v2((unsigned)atoi(a1), &dev);
            if (!e) e = nearest ? nv.nvmlDeviceGetTopologyNearestGpus(dev, atoi(a2), &n, NULL)
                                : nv.nvmlSystemGetTopologyGpuSet((unsigned)atoi(a1), &n, NULL);
            if (!e && n > 64) n = 64;
            if (!e && n) e = nearest ? nv.nvmlDeviceGetTopologyNearestGpus(dev, atoi(a2), &n, list)
                                     : nv.nvmlSystemGetTopologyGpuSet((unsigned)atoi(a1), &n, list);
            if (nearest) printf("nvml-nearest %s %s -> %d %u", a1, a2, e, n);
            else printf("nvml-gpuset %s -> %d %u", a1, e, n);
            for (unsigned k = 0; !e && k < n; k++) {
                char uuid[96] = "";
                nv.nvmlDeviceGetUUID(list[k], uuid, sizeof uuid);
                printf(" %s", uuid);
            }
            printf("\n");
            i += nearest ? 2 : 1;
        } else if (!strcmp(c, "nvml-version")) {
            int v = 0, v2 = 0;
            int e = nvml_ready();
            if (!e) e = nv.nvmlSystemGetCudaDriverVersion(&v);
            if (!e) e = nv.nvmlSystemGetCudaDriverVersion_v2(&v2);
            printf("nvml-version -> %d %d %d\n", e, v, v2);
        } else if (!strcmp(c, "fork")) {
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                CUdeviceptr p;
                if (strcmp(a1, "alloc") != 0) printf("child init -> %d\n", init_primary());
                printf("child alloc 1M -> %d\n", d.cuMemAlloc_v2(&p, 1 << 20));
                fflush(stdout);
                _exit(0);
            }
            int status;
            waitpid(pid, &status, 0);
            printf("fork %s -> %d\n", a1, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
            i++;
        } else if (!strcmp(c, "threads")) {
            const char *a3 = i + 3 < argc ? argv[i + 3] : "0";
            int n = atoi(a1);
            pthread_t t[64];
            CUcontext ctx;
            long failures = 0;
            thread_iters = atoi(a2);
            thread_size = size_arg(a3);
            r = d.cuDevicePrimaryCtxRetain(&ctx, current_device(NULL));
            for (int k = 0; k < n && k < 64; k++) pthread_create(&t[k], NULL, thread_main, ctx);
            for (int k = 0; k < n && k < 64; k++) {
                void *ret;
                pthread_join(t[k], &ret);
                failures += (long)ret;
            }
            printf("threads %s %s %s -> %d failures=%ld\n", a1, a2, a3, r, failures);
            i += 3;
        } else if (!strcmp(c, "stress") || !strcmp(c, "stress-ms")) {
            const char *a3 = i + 3 < argc ? argv[i + 3] : "1", *a4 = i + 4 < argc ? argv[i + 4] : "1";
            int n = atoi(a1);
            pthread_t t[64];
            CUcontext ctx;
            stress_iters = atoi(a2);
            stress_deadline_ns = c[6] ? now_ns() + atof(a2) * 1e6 : 0;
            stress_max = size_arg(a3);
            stress_seed = (unsigned)atoi(a4);
            r = d.cuDevicePrimaryCtxRetain(&ctx, current_device(NULL));
            for (int k = 0; k < n && k < 64; k++) pthread_create(&t[k], NULL, stress_main, ctx);
            for (int k = 0; k < n && k < 64; k++) pthread_join(t[k], NULL);
            printf("%s %s %s %s %s -> %d ok=%s oom=%s other=%ld\n", c, a1, a2, a3, a4, r,
                   stress_ok > 0 ? "yes" : "no", stress_oom > 0 ? "yes" : "no", stress_other);
            i += 4;
        } else if (!strcmp(c, "exit-racing")) {
            /* exit-racing N MS SIZE: N threads allocate and free SIZE in a loop; after MS
               milliseconds main returns, so exit runs while they still do. */
            const char *a3 = i + 3 < argc ? argv[i + 3] : "1MiB";
            pthread_t t;
            CUcontext ctx;
            racing_size = size_arg(a3);
            r = d.cuDevicePrimaryCtxRetain(&ctx, current_device(NULL));
            for (int k = 0; k < atoi(a1); k++) pthread_create(&t, NULL, racing_main, ctx);
            usleep((useconds_t)atoi(a2) * 1000);
            printf("exit-racing %s %s %s -> %d\n", a1, a2, a3, r);
            return 0;
        } else if (!strcmp(c, "fork-keep")) {
            int ready[2], hold[2];
            if (pipe(ready) || pipe(hold)) return 2;
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                CUdeviceptr p;
                char b;
                close(ready[0]);
                close(hold[1]);
                for (int k = 0; k < n_keep; k++) close(keep_fds[k]); /* the earlier children's */
                r = init_primary();
                if (!r) r = d.cuMemAlloc_v2(&p, size_arg(a1));
                printf("child alloc %s -> %d\n", a1, r);
                fflush(stdout);
                if (write(ready[1], "x", 1) != 1) _exit(3);
                while (read(hold[0], &b, 1) > 0) {}
                exit(0); /* a normal exit: the shim leaves the ledger */
            }
            char b;
            close(ready[1]);
            close(hold[0]);
            keep_pids[n_keep] = pid;
            keep_fds[n_keep++] = hold[1];
            printf("fork-keep %s -> %d\n", a1, read(ready[0], &b, 1) == 1 ? 0 : -1);
            close(ready[0]);
            i++;
        } else if (!strcmp(c, "reap")) {
            int failures = 0;
            for (int k = 0; k < n_keep; k++) {
                int status;
                close(keep_fds[k]);
                waitpid(keep_pids[k], &status, 0);
                failures += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
            }
            n_keep = 0;
            printf("reap -> %d\n", failures);
        } else if (!strcmp(c, "watch-nvml")) {
            void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
            int (*init)(void) = h ? (int (*)(void))dlsym(h, "nvmlInit_v2") : NULL;
            int (*get)(unsigned, void **) = h ? (int (*)(unsigned, void **))dlsym(h, "nvmlDeviceGetHandleByIndex_v2") : NULL;
            int (*info)(void *, unsigned long long *) = h ? (int (*)(void *, unsigned long long *))dlsym(h, "nvmlDeviceGetMemoryInfo") : NULL;
            void *dev = NULL;
            unsigned long long m[3], max = 0;
            long samples = 0;
            int e = init ? init() : -1;
            if (!e) e = get(0, &dev);
            double end = now_ns() + atof(a1) * 1e6;
            while (!e && now_ns() < end) {
                e = info(dev, m);
                if (!e && m[2] > max) max = m[2];
                samples++;
            }
            printf("watch-nvml %s -> %d max=%llu samples=%s\n", a1, e, max, samples > 100 ? "many" : "few");
            i++;
        } else if (!strcmp(c, "clock")) {
            /* Milliseconds since the last clock (or the probe's start): how long what is
             * between two of them took. */
            static double last;
            double t = now_ns();
            if (last == 0) last = start_ns;
            printf("clock %.3f\n", (t - last) / 1e6);
            last = t;
        } else if (!strcmp(c, "sleep")) {
            usleep((useconds_t)atoi(a1) * 1000);
            printf("sleep %s -> 0\n", a1);
            i++;
        } else if (!strcmp(c, "export-table")) {
            CUuuid id;
            for (int k = 0; k < 16; k++) {
                unsigned byte = 0;
                sscanf(a1 + 2 * k, "%2x", &byte);
                id.bytes[k] = (char)byte;
            }
            const void *table = NULL;
            r = d.cuGetExportTable(&table, &id);
            printf("export-table %s -> %d %s\n", a1, r, table ? "table" : "null");
            i++;
        } else if (!strcmp(c, "driver-version")) {
            int v = -1;
            r = d.cuDriverGetVersion(&v);
            printf("driver-version -> %d %d\n", r, v);
        } else if (!strcmp(c, "ctx-id")) {
            unsigned long long id = 0;
            r = d.cuCtxGetId(NULL, &id);
            printf("ctx-id -> %d %llu\n", r, id);
        } else if (!strcmp(c, "reset")) {
            CUdevice dev = -1;
            r = d.cuCtxGetDevice(&dev);
            if (!r) r = d.cuDevicePrimaryCtxReset_v2(dev);
            printf("reset -> %d\n", r);
        } else if (!strcmp(c, "capture-info")) {
            int status = -1;
            cuuint64_t id = 0;
            r = d.cuStreamGetCaptureInfo_v3(NULL, &status, &id, NULL, NULL, NULL, NULL);
            printf("capture-info -> %d %d\n", r, status);
        } else if (!strcmp(c, "occupancy")) {
            static const struct { unsigned magic; unsigned short version, header; unsigned long long size; }
                fatbin = {0xba55ed50u, 1, 16, 0};
            CUmodule mod = NULL;
            CUfunction f = NULL;
            int blocks = -1;
            size_t smem = 0;
            r = d.cuModuleLoadData(&mod, &fatbin);
            if (!r) r = d.cuModuleGetFunction(&f, mod, "k");
            if (!r) r = d.cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, f, atoi(a1), size_arg(a2));
            if (!r) r = d.cuOccupancyAvailableDynamicSMemPerBlock(&smem, f, blocks, atoi(a1));
            printf("occupancy %s %s -> %d %d %zu\n", a1, a2, r, blocks, smem);
            i += 2;
        } else if (!strcmp(c, "tensor-map")) {
            static __attribute__((aligned(64))) unsigned char map[128];
            cuuint64_t dims[5], strides[4];
            cuuint32_t box[5], elem[5];
            cuuint32_t rank = (cuuint32_t)atoi(a1);
            for (int k = 0; k < 5; k++) {
                dims[k] = 64, box[k] = 32, elem[k] = 1;
                if (k < 4) strides[k] = 256ull << (6 * k); /* 64 floats a row, and so on */
            }
            r = d.cuTensorMapEncodeTiled(map, 7 /* FLOAT32 */, rank, (void *)(uintptr_t)slot[atoi(a2)].p, dims,
                                         strides, box, elem, 0, 0, 0, 0);
            printf("tensor-map %s %s -> %d\n", a1, a2, r);
            i += 2;
        } else if (!strcmp(c, "free-null")) {
            printf("free-null -> %d\n", d.cuMemFree_v2(0));
        } else if (!strcmp(c, "release")) {
            CUdevice dev = -1;
            r = d.cuCtxGetDevice(&dev);
            if (!r) r = d.cuDevicePrimaryCtxRelease_v2(dev);
            printf("release -> %d\n", r);
        } else if (!strcmp(c, "ctx-create") || !strcmp(c, "ctx-destroy")) {
            static CUcontext created;
            CUdevice dev = 0;
            if (c[4] == 'c') {
                r = d.cuCtxGetDevice(&dev);
                if (!r) r = d.cuCtxCreate_v2(&created, 0, dev);
            } else {
                r = d.cuCtxDestroy_v2(created);
            }
            printf("%s -> %d\n", c, r);
        } else if (!strcmp(c, "launch")) {
            static const struct { unsigned magic; unsigned short version, header; unsigned long long size; }
                fatbin = {0xba55ed50u, 1, 16, 0};
            static CUmodule mod;
            CUfunction f = NULL;
            r = mod ? 0 : d.cuModuleLoadData(&mod, &fatbin);
            if (!r) r = d.cuModuleGetFunction(&f, mod, "k");
            if (!r)
                r = d.cuLaunchKernel(f, (unsigned)atoi(a1), 1, 1, (unsigned)atoi(a2), 1, 1,
                                     (unsigned)atoi(i + 3 < argc ? argv[i + 3] : "0"), NULL, NULL, NULL);
            printf("launch %s %s %s -> %d\n", a1, a2, i + 3 < argc ? argv[i + 3] : "0", r);
            i += 3;
        } else if (!strcmp(c, "bad-image")) {
            static const unsigned char junk[16] = {1, 2, 3, 4, 5, 6, 7, 8};
            CUmodule m = NULL;
            printf("bad-image -> %d\n", d.cuModuleLoadData(&m, junk));
        } else if (!strcmp(c, "wait")) {
            int ch;
            while ((ch = getchar()) != EOF && ch != '\n') {}
            printf("wait -> 0\n");
        } else if (!strcmp(c, "exit")) {
            return 0;
        } else {
            printf("unknown command %s\n", c);
            return 2;
        }
    }
    return 0;
}
