/* A scripted client of the CUDA driver API, used by the tests as a black box. Built three
 * times: linked against libcuda.so.1 (direct ELF binding); with -DBIND_DLSYM, where it
 * dlopen()s libcuda.so.1 and dlsym()s every function by name; and with -DBIND_PROCADDR,
 * where it finds only cuGetProcAddress_v2 with dlsym, asks it for itself, and fetches
 * everything else by base name and CUDA version, as NVIDIA's runtime does. Each argument is one
 * command; each command prints one line "<command> <args> -> <CUresult> [details]".
 *
 *   init                    cuInit, retain the primary context of device 0, make it current
 *   init-only               cuInit alone (no current context)
 *   alloc SIZE              cuMemAlloc_v2          (SIZE: bytes or with K/M/G/KiB/MiB/GiB)
 *   legacy-alloc SIZE       cuMemAlloc (32-bit ABI)
 *   pitch WIDTH HEIGHT      cuMemAllocPitch_v2, prints the pitch
 *   managed SIZE            cuMemAllocManaged(ATTACH_GLOBAL)
 *   async SIZE              cuMemAllocAsync on the legacy stream
 *   free N / free-async N   cuMemFree_v2 / cuMemFreeAsync of the N-th allocation (0-based)
 *   sync                    cuCtxSynchronize
 *   info / legacy-info      cuMemGetInfo_v2 / cuMemGetInfo: "free total"
 *   total                   cuDeviceTotalMem_v2
 *   roundtrip N             write a pattern to allocation N, read it back, compare
 *   memset N                cuMemsetD32 then read back
 *   attr N                  cuPointerGetAttribute MEMORY_TYPE and IS_MANAGED
 *   ipc N                   cuIpcGetMemHandle
 *   advise N cpu|gpu        cuMemAdvise SET_PREFERRED_LOCATION
 *   prefetch N cpu|gpu      cuMemPrefetchAsync
 *   vmm SIZE                cuMemCreate + cuMemAddressReserve + cuMemMap + cuMemSetAccess
 *   vmm-free N              cuMemUnmap + cuMemAddressFree + cuMemRelease
 *   array W H               cuArrayCreate_v2 (FLOAT, 1 channel)
 *   array-free N            cuArrayDestroy
 *   pool-reserved           CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT of the default pool
 *   procaddr NAME VER FLAGS cuGetProcAddress_v2: status and the symbol returned, as
 *                           NAME@library (dladdr)
 *   attribute N             cuDeviceGetAttribute(N)
 *   pool-alloc SIZE         cuMemPoolCreate + cuMemAllocFromPoolAsync (the pool is kept)
 *   ptsz-alloc SIZE         the _ptsz variants, found with cuGetProcAddress_v2(flags=2):
 *                           cuMemAllocAsync_ptsz, cuMemAllocFromPoolAsync_ptsz, then
 *                           cuMemFreeAsync_ptsz of both
 *   array3d W H D / mipmap W H LEVELS   cuArray3DCreate_v2 / cuMipmappedArrayCreate, destroyed
 *   hints2 N                cuMemAdvise_v2 + cuMemPrefetchAsync_v2 to the device
 *   legacy-total            cuDeviceTotalMem (32-bit ABI)
 *   nvml                    libnvidia-ml.so.1 by dlopen: nvmlDeviceGetMemoryInfo and _v2
 *                           ("total free used"), and _v2 with a wrong version field
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
    X(cuDeviceTotalMem, (unsigned *, CUdevice))

#define DECLARE(name, args) CUresult name args;
DRIVER_FNS(DECLARE)
static struct {
#define FIELD(name, args) CUresult(*name) args;
    DRIVER_FNS(FIELD)
} d;

/* For BIND_PROCADDR: the base name and CUDA version a runtime would ask for. */
static void base_and_version(const char *name, char *base, size_t len, int *version) {
    snprintf(base, len, "%s", name);
    size_t n = strlen(base);
    int v2 = n > 3 && !strcmp(base + n - 3, "_v2");
    if (v2) base[n - 3] = 0;
    *version = 12000;
    if (!v2 && (!strcmp(name, "cuMemAlloc") || !strcmp(name, "cuMemGetInfo") || !strcmp(name, "cuDeviceTotalMem")))
        *version = 2000; /* the 32-bit ABI */
    if (v2 && (!strcmp(base, "cuMemAdvise") || !strcmp(base, "cuMemPrefetchAsync"))) *version = 12020;
}

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

/* cuInit, then the primary context of device 0 made current: what "init" means here. */
static CUresult init_primary(void) {
    CUdevice dev;
    CUcontext ctx;
    CUresult r = d.cuInit(0);
    if (!r) r = d.cuDeviceGet(&dev, 0);
    if (!r) r = d.cuDevicePrimaryCtxRetain(&ctx, dev);
    if (!r) r = d.cuCtxSetCurrent(ctx);
    return r;
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
    bind();
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        const char *a1 = i + 1 < argc ? argv[i + 1] : "0", *a2 = i + 2 < argc ? argv[i + 2] : "0";
        CUresult r;
        if (!strcmp(c, "init-only")) {
            printf("init-only -> %d\n", d.cuInit(0));
        } else if (!strcmp(c, "init")) {
            printf("init -> %d\n", init_primary());
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
            r = d.cuDeviceTotalMem_v2(&t, 0);
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
        } else if (!strcmp(c, "ipc")) {
            CUipcMemHandle h;
            printf("ipc %s -> %d\n", a1, d.cuIpcGetMemHandle(&h, slot[atoi(a1)].p));
            i++;
        } else if (!strcmp(c, "advise") || !strcmp(c, "prefetch")) {
            int k = atoi(a1);
            CUdevice to = strcmp(a2, "cpu") ? 0 : CU_DEVICE_CPU;
            r = c[0] == 'a' ? d.cuMemAdvise(slot[k].p, slot[k].size, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, to)
                            : d.cuMemPrefetchAsync(slot[k].p, slot[k].size, to, NULL);
            printf("%s %s %s -> %d\n", c, a1, a2, r);
            i += 2;
        } else if (!strcmp(c, "vmm")) {
            size_t n = size_arg(a1);
            CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                        .location = {CU_MEM_LOCATION_TYPE_DEVICE, 0}};
            CUmemAccessDesc acc = {{CU_MEM_LOCATION_TYPE_DEVICE, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
            CUmemGenericAllocationHandle h = 0;
            CUdeviceptr p = 0;
            r = d.cuMemCreate(&h, n, &prop, 0);
            if (!r) r = d.cuMemAddressReserve(&p, n, 0, 0, 0);
            if (!r) r = d.cuMemMap(p, n, 0, h, 0);
            if (!r) r = d.cuMemSetAccess(p, n, &acc, 1);
            printf("vmm %s -> %d", a1, r);
            if (!r) {
                int k = add(p, n);
                slot[k].h = h;
                printf(" #%d", k);
            }
            printf("\n");
            i++;
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
            r = d.cuDeviceGetDefaultMemPool(&pool, 0);
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
            r = d.cuDeviceGetAttribute(&v, atoi(a1), 0);
            printf("attribute %s -> %d %d\n", a1, r, v);
            i++;
        } else if (!strcmp(c, "pool-alloc")) {
            CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                    .location = {CU_MEM_LOCATION_TYPE_DEVICE, 0}};
            CUmemoryPool pool;
            CUdeviceptr p = 0;
            size_t n = size_arg(a1);
            r = d.cuMemPoolCreate(&pool, &props);
            if (!r) r = d.cuMemAllocFromPoolAsync(&p, n, pool, NULL);
            printf("pool-alloc %s -> %d", a1, r);
            if (!r) printf(" #%d", add(p, n));
            printf("\n");
            i++;
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
            if (!r) r = d.cuDeviceGetDefaultMemPool(&pool, 0);
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
            CUmemLocation gpu = {CU_MEM_LOCATION_TYPE_DEVICE, 0};
            r = d.cuMemAdvise_v2(slot[k].p, slot[k].size, CU_MEM_ADVISE_SET_ACCESSED_BY, gpu);
            if (!r) r = d.cuMemPrefetchAsync_v2(slot[k].p, slot[k].size, gpu, 0, NULL);
            printf("hints2 %s -> %d\n", a1, r);
            i++;
        } else if (!strcmp(c, "legacy-total")) {
            unsigned t = 0;
            r = d.cuDeviceTotalMem(&t, 0);
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
            r = d.cuDevicePrimaryCtxRetain(&ctx, 0);
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
            r = d.cuDevicePrimaryCtxRetain(&ctx, 0);
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
            r = d.cuDevicePrimaryCtxRetain(&ctx, 0);
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
        } else if (!strcmp(c, "sleep")) {
            usleep((useconds_t)atoi(a1) * 1000);
            printf("sleep %s -> 0\n", a1);
            i++;
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
